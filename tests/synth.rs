//! The phantom generator: valid DICOM, the geometry asked for, ground truth that matches the
//! voxels, bit-for-bit reproducibility, and malignancy statistics that follow LIDC-IDRI.

mod common;

use jnsc::malignancy::score as median;
use jnsc::random::Rng;
use jnsc::synth::calibration::Calibration;
use jnsc::synth::render::Physics;
use jnsc::synth::series::SeriesSpec;
use jnsc::synth::study::{StudyOptions, Truth, render_training_volume, write_study};
use jnsc::volume::series::{files_in, load_series};
use std::path::{Path, PathBuf};

fn study(dir: &Path, spec: SeriesSpec, nodules: Option<usize>) -> Truth {
    let options = StudyOptions {
        series: spec,
        nodules,
        physics: Physics::default(),
    };
    write_study(&options, &Calibration::lidc(), dir).unwrap()
}

fn scratch() -> PathBuf {
    tempfile::Builder::new()
        .prefix("jnsc-synth-")
        .tempdir()
        .unwrap()
        .keep()
}

/// A whole-chest study at reduced resolution: 384 x 1 mm pixels, 120 slices of 2.5 mm.
fn chest_spec(seed: u64) -> SeriesSpec {
    SeriesSpec {
        slices: 120,
        rows: 384,
        columns: 384,
        pixel_spacing_mm: 1.0,
        slice_spacing_mm: 2.5,
        seed,
        ..SeriesSpec::default()
    }
}

#[test]
fn slices_pass_dciodvfy() {
    let dir = scratch();
    study(
        &dir,
        SeriesSpec {
            slices: 12,
            rows: 128,
            columns: 128,
            ..chest_spec(1)
        },
        Some(1),
    );
    for name in ["CT000001.dcm", "CT000006.dcm"] {
        let out = std::process::Command::new("/usr/bin/dciodvfy")
            .arg(dir.join("dicom").join(name))
            .output()
            .expect("dciodvfy runs (apt-get install dicom3tools)");
        let text = String::from_utf8_lossy(&out.stderr) + String::from_utf8_lossy(&out.stdout);
        assert!(!text.contains("Error"), "{name}: {text}");
    }
}

#[test]
fn the_node_reads_back_the_requested_geometry_supine_and_prone() {
    for (position, row, column) in [
        ("FFS", [1.0, 0.0, 0.0], [0.0, 1.0, 0.0]),
        ("HFP", [-1.0, 0.0, 0.0], [0.0, -1.0, 0.0]),
    ] {
        let dir = scratch();
        let spec = SeriesSpec {
            slices: 24,
            rows: 160,
            columns: 192,
            pixel_spacing_mm: 0.8,
            slice_spacing_mm: 2.0,
            row_direction: row,
            column_direction: column,
            patient_position: position.into(),
            seed: 9,
            ..SeriesSpec::default()
        };
        study(&dir, spec, Some(0));
        let series = load_series(&files_in(&dir.join("dicom")).unwrap()).unwrap();
        assert_eq!((series.rows, series.columns), (160, 192));
        assert_eq!(series.slices.len(), 24);
        assert!((series.column_spacing_mm - 0.8).abs() < 1e-9);
        assert!((series.median_slice_spacing() - 2.0).abs() < 1e-4);
        assert_eq!(series.row_direction, row);
        assert_eq!(series.column_direction, column);
        // Air outside the body, soft tissue inside.
        // Mediastinum in the middle, lungs on either side.
        let slice = &series.hu[12 * 160 * 192..13 * 160 * 192];
        let centre = slice[80 * 192 + 96];
        let lung = slice
            .iter()
            .filter(|v| (-950.0..-750.0).contains(*v))
            .count();
        assert!(centre > -200.0, "{position}: centre {centre}");
        assert!(lung > 5000, "{position}: {lung} lung pixels");
    }
}

/// Reads a MetaImage header value.
fn header(text: &str, key: &str) -> Vec<f64> {
    text.lines()
        .find_map(|l| l.strip_prefix(&format!("{key} = ")))
        .unwrap()
        .split_whitespace()
        .map(|v| v.parse().unwrap())
        .collect()
}

#[test]
fn truth_centres_lie_inside_their_masks_and_match_the_csv() {
    let dir = scratch();
    let truth = study(&dir, chest_spec(11), Some(4));
    assert_eq!(truth.nodules.len(), 4, "four nodules placed");
    let mhd = std::fs::read_to_string(dir.join("truth_mask.mhd")).unwrap();
    let (origin, spacing, size) = (
        header(&mhd, "Offset"),
        header(&mhd, "ElementSpacing"),
        header(&mhd, "DimSize"),
    );
    let mask = std::fs::read(dir.join("truth_mask.raw")).unwrap();
    let [ni, nj] = [size[0] as usize, size[1] as usize];
    for n in &truth.nodules {
        // Axial supine: the grid axes are patient x, y, z.
        let ijk: Vec<usize> = (0..3)
            .map(|a| ((n.center_mm[a] - origin[a]) / spacing[a]).round() as usize)
            .collect();
        let label = mask[(ijk[2] * nj + ijk[1]) * ni + ijk[0]];
        assert_eq!(
            label, n.label,
            "centre of nodule {} not in its mask",
            n.label
        );
        let voxels = mask.iter().filter(|&&l| l == n.label).count() as f64;
        let volume = voxels * spacing.iter().product::<f64>();
        assert!(
            (volume - n.volume_mm3).abs() < 0.35 * n.volume_mm3 + 30.0,
            "nodule {}: mask {volume:.0} mm3 vs truth {:.0} mm3",
            n.label,
            n.volume_mm3
        );
        assert!((3.0..=40.0).contains(&n.diameter_mm), "{}", n.diameter_mm);
        assert_eq!(n.malignancy_median, median(&n.ratings));
        assert_eq!(
            n.marginal,
            n.ratings.len() <= 2 && (2.0..=4.0).contains(&n.malignancy_median)
        );
    }
    let csv = std::fs::read_to_string(dir.join("annotations.csv")).unwrap();
    assert_eq!(csv.lines().count(), 1 + truth.nodules.len());
    assert!(csv.lines().nth(1).unwrap().starts_with(&truth.series_uid));
}

#[test]
fn the_seed_reproduces_the_study_bit_for_bit() {
    let spec = SeriesSpec {
        slices: 16,
        rows: 96,
        columns: 96,
        ..chest_spec(21)
    };
    let (a, b) = (scratch(), scratch());
    study(&a, spec.clone(), Some(2));
    study(&b, spec, Some(2));
    let mut files = files_in(&a.join("dicom")).unwrap();
    files.extend(["truth.json", "truth_mask.raw", "annotations.csv"].map(|f| a.join(f)));
    for file in files {
        let other = b.join(file.strip_prefix(&a).unwrap());
        assert!(
            std::fs::read(&file).unwrap() == std::fs::read(&other).unwrap(),
            "{} differs",
            file.display()
        );
    }
    let c = scratch();
    study(
        &c,
        SeriesSpec {
            slices: 16,
            rows: 96,
            columns: 96,
            ..chest_spec(22)
        },
        Some(2),
    );
    assert_ne!(
        std::fs::read(a.join("dicom/CT000008.dcm")).unwrap(),
        std::fs::read(c.join("dicom/CT000008.dcm")).unwrap()
    );
}

/// Tolerances: the smallest size bin tested holds ~5 % of 4000 draws (~230 nodules), whose
/// fraction has a standard error of at most 0.033; 0.08 is about 2.5 standard errors, and P(M>3)
/// moves by 0.4-0.8 between size bins, so a generator ignoring size fails.
#[test]
fn malignancy_and_readers_follow_the_lidc_calibration() {
    let calibration = Calibration::lidc();
    let json: serde_json::Value =
        serde_json::from_str(include_str!("../src/synth/lidc_calibration.json")).unwrap();
    let mut rng = Rng::new(5);
    let draws: Vec<(f64, Vec<u8>)> = (0..4000)
        .map(|_| {
            let (f, class) = calibration.draw_nodule(&mut rng);
            (f.diameter_mm, calibration.draw_ratings(class, &mut rng))
        })
        .collect();
    for (bin, lo, hi) in [
        ("3-6", 3.0, 6.0),
        ("6-10", 6.0, 10.0),
        ("10-20", 10.0, 20.0),
        ("20-30", 20.0, 30.0),
    ] {
        let group: Vec<f64> = draws
            .iter()
            .filter(|(d, _)| (lo..hi).contains(d))
            .map(|(_, r)| median(r))
            .collect();
        let p_malignant = group.iter().filter(|&&m| m > 3.0).count() as f64 / group.len() as f64;
        let expected = json
            .pointer(&format!(
                "/malignancy_by_feature/diameter_bin_mm/{bin}/P_M_gt_3"
            ))
            .and_then(serde_json::Value::as_f64)
            .unwrap();
        assert!(
            (p_malignant - expected).abs() < 0.08,
            "{bin} mm: P(M>3) {p_malignant:.3} vs LIDC {expected:.3}"
        );
    }
    for k in 1..=4 {
        let fraction = draws.iter().filter(|(_, r)| r.len() == k).count() as f64 / 4000.0;
        let expected = calibration.reader_count_fractions[k - 1];
        assert!(
            (fraction - expected).abs() < 0.03,
            "{k} readers: {fraction} vs {expected}"
        );
    }
    let marginal = draws
        .iter()
        .filter(|(_, r)| r.len() <= 2 && (2.0..=4.0).contains(&median(r)))
        .count() as f64
        / 4000.0;
    let expected = json
        .pointer("/malignancy/marginal_fraction")
        .and_then(serde_json::Value::as_f64)
        .unwrap();
    assert!(
        (marginal - expected).abs() < 0.06,
        "marginal {marginal} vs LIDC {expected}"
    );
}

#[test]
fn training_volumes_come_without_dicom_and_label_their_nodules() {
    let (hu, labels, truth) = render_training_volume(
        31,
        [160, 160, 160],
        None,
        &Calibration::lidc(),
        &Physics::default(),
    );
    assert_eq!(hu.geometry.spacing, [1.0; 3]);
    assert_eq!(hu.data.len(), 160 * 160 * 160);
    for n in &truth {
        if let Some(label) = labels.nearest(n.center_mm) {
            assert_eq!(label, n.label);
        }
    }
    let lung = hu
        .data
        .iter()
        .filter(|v| (-950.0..-750.0).contains(*v))
        .count();
    assert!(lung > 100_000, "lung voxels: {lung}");
}

#[test]
fn nodules_inserted_into_a_real_series_are_where_the_truth_says() {
    let real = shared_or_skip!("data/ct/pancreatic-ct-cbct-seg");
    let out = scratch();
    let truth = jnsc::synth::insert::insert_nodules(&real, &out, 2, 8, &Calibration::lidc(), false)
        .unwrap();
    assert_eq!(truth.nodules.len(), 2);
    let original = load_series(&files_in(&real).unwrap()).unwrap();
    let inserted = load_series(&files_in(&out.join("dicom")).unwrap()).unwrap();
    assert_eq!(inserted.series_uid, truth.series_uid);
    assert_ne!(inserted.series_uid, original.series_uid);
    assert_eq!(inserted.geometry(), original.geometry());
    let g = inserted.geometry();
    let mut changed = 0usize;
    for (a, b) in original.hu.iter().zip(&inserted.hu) {
        if (a - b).abs() > 0.5 {
            changed += 1;
        }
    }
    // Only the nodules (and their blurred rims) changed: a few thousand pixels at most.
    assert!(
        changed > 20 && changed < 200_000,
        "{changed} pixels changed"
    );
    for n in &truth.nodules {
        let ijk = g.patient_to_index(n.center_mm).map(|v| v.round() as usize);
        let v = g.offset(ijk[0], ijk[1], ijk[2]);
        assert!(
            inserted.hu[v] > original.hu[v] + 100.0,
            "nodule {} at {:?}: {} HU was {} HU",
            n.label,
            n.center_mm,
            inserted.hu[v],
            original.hu[v]
        );
    }
}
