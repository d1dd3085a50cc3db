//! Lesion insertion into real CT (`synth::insert`) and the real-background training source
//! (`datasets::real`): the point-spread function is measured, an inserted nodule keeps the
//! background's noise, a background's known nodules are labelled as nodules, and juxta-vascular
//! nodules sit on the background's own vessels when they are offered.

mod common;

use jnsc::datasets::real::insert_training_scan;
use jnsc::random::Rng;
use jnsc::synth::calibration::Calibration;
use jnsc::synth::insert::{Background, add_lesions, background_folder, estimate_psf_sigma_mm};
use jnsc::synth::lesion::Lesion;
use jnsc::synth::nodules::{Location, Lungs, NoduleType, SegmentedLungs, draw_nodules};
use jnsc::synth::render::Physics;
use jnsc::synth::series::SeriesSpec;
use jnsc::synth::study::{StudyOptions, write_study};
use jnsc::volume::geometry::Vec3;
use jnsc::volume::series::{files_in, load_series};

#[test]
fn psf_is_measured_from_the_body_edge() {
    let _data = shared_or_skip!("data/real-ct");
    let mut estimates = Vec::new();
    for psf in [0.45, 0.9] {
        let dir = tempfile::tempdir().unwrap();
        let options = StudyOptions {
            series: SeriesSpec {
                slices: 24,
                rows: 512,
                columns: 512,
                pixel_spacing_mm: 0.7,
                slice_spacing_mm: 2.5,
                seed: 3,
                ..SeriesSpec::default()
            },
            nodules: Some(0),
            physics: Physics {
                psf_sigma_mm: psf,
                ..Physics::default()
            },
        };
        write_study(&options, &Calibration::lidc(), dir.path()).unwrap();
        let series = load_series(&files_in(&dir.path().join("dicom")).unwrap()).unwrap();
        let estimate = estimate_psf_sigma_mm(&series).expect("the body edge is in view");
        eprintln!("phantom rendered with PSF sigma {psf} mm: measured {estimate:.3} mm");
        estimates.push(estimate);
        assert!(
            (estimate - psf).abs() < 0.25 * psf + 0.1,
            "PSF {psf} mm measured as {estimate:.3} mm"
        );
    }
    assert!(estimates[1] > estimates[0] * 1.4, "{estimates:?}");
    // Real scanners: every real chest series gives a plausible PSF.
    for name in ["lidc-idri-0002", "lidc-idri-0063", "lidc-idri-0314"] {
        let series = load_series(&files_in(&common::real_ct(name).join("dicom")).unwrap()).unwrap();
        let estimate = estimate_psf_sigma_mm(&series);
        eprintln!("{name}: PSF sigma {estimate:?} mm");
        assert!(
            estimate.is_some_and(|s| (0.2..1.6).contains(&s)),
            "{name}: {estimate:?}"
        );
    }
}

/// High-pass noise power (pixel minus the mean of its 3x3 neighbourhood, squared) over pixels.
fn noise_power(plane: &[f32], cols: usize, pixels: &[usize]) -> f64 {
    let residual = |v: usize| {
        let (r, c) = (v / cols, v % cols);
        let mut sum = 0.0;
        for dr in [-1i64, 0, 1] {
            for dc in [-1i64, 0, 1] {
                let q = (r as i64 + dr) as usize * cols + (c as i64 + dc) as usize;
                sum += f64::from(plane[q]);
            }
        }
        f64::from(plane[v]) - sum / 9.0
    };
    pixels.iter().map(|&v| residual(v).powi(2)).sum::<f64>() / pixels.len() as f64
}

#[test]
fn an_inserted_nodule_keeps_the_background_noise() {
    let _data = shared_or_skip!("data/real-ct");
    let background = Background::load(&common::real_ct("lidc-idri-0314").join("dicom")).unwrap();
    assert!(background.psf_measured);
    let lungs = background.segmented_lungs();
    let mut rng = Rng::new(11);
    // A solid nodule of at least 14 mm, so that its interior holds enough pixels.
    let nodule = std::iter::from_fn(|| {
        draw_nodules(&lungs, &Calibration::lidc(), 1, &mut rng)
            .into_iter()
            .next()
    })
    .take(500)
    .find(|n| n.kind == NoduleType::Solid && n.nominal_diameter_mm >= 14.0)
    .expect("a solid nodule of 14 mm or more");
    let mut series = background.series.clone();
    let labels = add_lesions(
        &mut series,
        &[&nodule as &dyn Lesion],
        &|p| lungs.in_lung(p),
        background.parenchyma_hu,
        background.psf_sigma_mm,
    );
    let (rows, cols) = (series.rows, series.columns);
    let plane = rows * cols;
    // Interior pixels: labelled, with every pixel within 2 labelled (the blurred edge excluded).
    let (mut before, mut after, mut pasted, mut lift) = (0.0, 0.0, 0.0, 0.0);
    let mut counted = 0usize;
    for k in 0..series.slices.len() {
        let l = &labels[k * plane..(k + 1) * plane];
        let interior: Vec<usize> = (0..plane)
            .filter(|&v| {
                let (r, c) = (v / cols, v % cols);
                r >= 4
                    && c >= 4
                    && r + 4 < rows
                    && c + 4 < cols
                    && (-2i64..=2).all(|dr| {
                        (-2i64..=2).all(|dc| {
                            l[(r as i64 + dr) as usize * cols + (c as i64 + dc) as usize] != 0
                        })
                    })
            })
            .collect();
        if interior.len() < 10 {
            continue;
        }
        let original = &background.series.hu[k * plane..(k + 1) * plane];
        let inserted = &series.hu[k * plane..(k + 1) * plane];
        // A nodule pasted in without noise (what insertion must not do): the control.
        let mut naive = original.to_vec();
        for v in (0..plane).filter(|&v| l[v] != 0) {
            naive[v] = nodule.hu_at([0.0; 3]) as f32;
        }
        let n = interior.len() as f64;
        before += noise_power(original, cols, &interior) * n;
        after += noise_power(inserted, cols, &interior) * n;
        pasted += noise_power(&naive, cols, &interior) * n;
        lift += interior
            .iter()
            .map(|&v| f64::from(inserted[v] - original[v]))
            .sum::<f64>();
        counted += interior.len();
    }
    assert!(counted >= 150, "only {counted} interior pixels");
    let n = counted as f64;
    let (before, after, pasted, lift) = (before / n, after / n, pasted / n, lift / n);
    eprintln!(
        "{counted} interior pixels: noise power {before:.1} HU^2 before, {after:.1} after \
         insertion ({:.3}), {pasted:.1} pasted; mean lift {lift:.0} HU",
        after / before
    );
    assert!(
        lift > 400.0,
        "the nodule was inserted: mean lift {lift:.0} HU"
    );
    assert!(
        (after / before - 1.0).abs() <= 0.10,
        "noise power inside the nodule {after:.1} against {before:.1} outside"
    );
    assert!(
        pasted / before < 0.5,
        "the control (a pasted nodule) must fail the check"
    );
}

#[test]
fn known_nodules_are_labelled_never_background() {
    let _data = shared_or_skip!("data/real-ct");
    let (dicom, known) = background_folder(&common::real_ct("lidc-idri-0063")).unwrap();
    assert_eq!(known.len(), 4);
    let background = Background::load(&dicom).unwrap();
    let scan =
        insert_training_scan(&background, &known, &Calibration::lidc(), 7, "0063+7").unwrap();
    let g = scan.labels.geometry;
    for (n, k) in known.iter().enumerate() {
        let label = scan.labels.nearest(k.center_mm);
        assert_eq!(label, Some((n + 1) as u8), "known nodule {n} at its centre");
        let voxels = scan
            .labels
            .data
            .iter()
            .filter(|&&l| l == (n + 1) as u8)
            .count() as f64;
        let sphere = std::f64::consts::PI / 6.0 * k.diameter_mm.powi(3);
        assert!(
            (voxels - sphere).abs() < 0.25 * sphere + 20.0,
            "known nodule {n}: {voxels} voxels, sphere {sphere:.0} mm3"
        );
        assert_eq!(scan.nodules[n].ratings, k.ratings);
    }
    // Inserted nodules follow with their own ratings, clear of the known ones.
    assert!(scan.nodules.len() > known.len());
    assert!(
        scan.nodules[known.len()..]
            .iter()
            .all(|n| !n.ratings.is_empty())
    );
    // Negative patches never hold a labelled voxel, so never a known nodule.
    let mut rng = Rng::new(3);
    let norm = jnsc::volume::Normalization::default();
    let augment = jnsc::train::sampling::Augment::default();
    let mut negatives = 0;
    for _ in 0..40 {
        let (_, negative) =
            jnsc::train::sampling::sample_patches(&scan, 64, &norm, &augment, &mut rng);
        if let Some(p) = negative {
            assert!(p.labels.iter().all(|&l| l == 0));
            negatives += 1;
        }
    }
    assert!(negatives > 30, "{negatives} negatives of 40 ({:?})", g.size);
}

#[test]
fn juxta_vascular_nodules_sit_on_a_real_vessel_only_when_vessels_are_offered() {
    let _data = shared_or_skip!("data/real-ct");
    let background = Background::load(&common::real_ct("lidc-idri-0314").join("dicom")).unwrap();
    let draw = |lungs: &SegmentedLungs<'_>, seed: u64| {
        let mut rng = Rng::new(seed);
        (0..60)
            .flat_map(|_| draw_nodules(lungs, &Calibration::lidc(), 1, &mut rng))
            .collect::<Vec<_>>()
    };
    // Without vessels (what every set made before them drew): none is juxta-vascular.
    let plain = draw(&background.segmented_lungs(), 5);
    assert!(plain.len() > 50);
    assert!(plain.iter().all(|n| n.location != Location::JuxtaVascular));

    let lungs = background.insertion_lungs(true);
    let drawn = draw(&lungs, 5);
    let juxta: Vec<_> = drawn
        .iter()
        .filter(|n| n.location == Location::JuxtaVascular)
        .collect();
    assert!(
        juxta.len() >= 8,
        "{} juxta-vascular of {}",
        juxta.len(),
        drawn.len()
    );
    let hu = &background.hu_1mm;
    let vessel = |p: Vec3| {
        background.lungs.nearest(p) == Some(1) && hu.nearest(p).is_some_and(|h| h >= -300.0)
    };
    for n in juxta {
        let c = n.centre;
        let r = n.nominal_diameter_mm / 2.0;
        assert!(lungs.in_lung(c), "centre {c:?} in the parenchyma");
        // The vessel's surface lies 0.6 r from the centre: some vessel voxel within 0.6 r + 1.5 mm.
        let reach = 0.6 * r + 1.5;
        let steps = (reach / 0.5).ceil() as i64;
        let touches = (-steps..=steps).any(|i| {
            (-steps..=steps).any(|j| {
                (-steps..=steps).any(|k| {
                    let d = [i, j, k].map(|x| x as f64 * 0.5);
                    d.iter().map(|x| x * x).sum::<f64>() <= reach * reach
                        && vessel([0, 1, 2].map(|a| c[a] + d[a]))
                })
            })
        });
        assert!(
            touches,
            "a {:.1} mm nodule at {c:?} touches no vessel",
            2.0 * r
        );
    }
}
