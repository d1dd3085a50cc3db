//! The shipped model file and the files it was made from are what the model card says: each
//! loads, is the `cpu` preset with the default normalisation, and its provenance is the run of its
//! training configuration, each starting from the one before. The shipped file (0.6.0) is two
//! networks combined (`jnsc model combine`): its detector is the mean (`jnsc model average`) of
//! chain S's third stage and the fourth stage trained on from it (models/train-segmentation.toml
//! -> models/train-real-joint.toml -> models/train-real-shapes-joint.toml ->
//! models/train-real-more-scans.toml -> models/train-real-fourth-stage.toml), its malignancy
//! network 0.3.0 (models/train.toml -> models/train-real-joint.toml ->
//! models/train-real-shapes.toml), whose calibration it carries, with the measured extent's
//! fraction and its own operating point.

use jnsc::jnsc::model_file::{ModelInfo, load};
use jnsc::jnsc::network::Config;
use jnsc::train::trainer::TrainConfig;
use jnsc::volume::Normalization;
use std::path::{Path, PathBuf};

fn root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

/// Loads a model file and checks it against the training configuration it names.
fn trained_by(model: &str, config: &str) -> ModelInfo {
    trained_by_from(model, config, None)
}

/// The same, for a run of `config` whose `--init-from` named another file (`init_from`).
fn trained_by_from(model: &str, config: &str, init_from: Option<&str>) -> ModelInfo {
    let (_, info) = load(&root().join(model), &candle_core::Device::Cpu).unwrap();
    assert_eq!(info.config, Config::cpu(), "{model}");
    assert_eq!(info.normalization, Normalization::default(), "{model}");
    let trained: TrainConfig = serde_json::from_value(info.provenance["training"].clone()).unwrap();
    let mut documented: TrainConfig =
        toml::from_str(&std::fs::read_to_string(root().join(config)).unwrap()).unwrap();
    if let Some(init_from) = init_from {
        documented.init_from = Some(PathBuf::from(init_from));
    }
    assert_eq!(trained, documented, "{model} was trained by {config}");
    assert_eq!(info.provenance["epochs_done"], documented.epochs, "{model}");
    info
}

/// The model file a model's training started from (`init_from` of its provenance).
fn started_from(info: &ModelInfo) -> Option<PathBuf> {
    let trained: TrainConfig = serde_json::from_value(info.provenance["training"].clone()).unwrap();
    trained.init_from
}

/// A stage of the detector's chain: trained by `config` from the file `from`, holding the LIDC
/// test patients out of its shapes.
fn detector_stage(model: &str, config: &str, from: &str) -> ModelInfo {
    let stage = trained_by(model, config);
    assert_eq!(started_from(&stage), Some(PathBuf::from(from)), "{model}");
    assert_eq!(
        jnsc::eval::shapes::trained_shape_held_out_percent(&stage.provenance),
        Some(jnsc::synth::lidc_shapes::TEST_PERCENT),
        "{model}: the detector held the test set out"
    );
    stage
}

/// The shipped model's operating point (model card).
const OPERATING_POINT: f64 = 0.465;
/// Its operating point with `--mirrors 8 --classify-mirrors 8` (model card).
const MIRRORED_OPERATING_POINT: f64 = 0.428;
/// Its operating point for the node's default analysis (model card, rule 23).
const DEFAULT_OPERATING_POINT: f64 = 0.351;

/// A safetensors file's f32 tensors by name (`prefix.` stripped; others left out).
fn weights(path: &Path, prefix: &str) -> std::collections::BTreeMap<String, Vec<f32>> {
    let bytes = std::fs::read(path).unwrap();
    let tensors = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    tensors
        .tensors()
        .into_iter()
        .filter_map(|(name, view)| {
            let name = name.strip_prefix(prefix)?.to_owned();
            let values = view
                .data()
                .chunks_exact(4)
                .map(|c| f32::from_le_bytes(c.try_into().unwrap()))
                .collect();
            Some((name, values))
        })
        .collect()
}

/// The shipped file's detector tensors.
fn shipped_detector_weights() -> std::collections::BTreeMap<String, Vec<f32>> {
    weights(&root().join(jnsc::DEFAULT_MODEL), "detection.")
}

/// The element-wise mean of two single-network files' tensors, as `jnsc model average` takes it.
fn mean_weights(files: &[&str; 2]) -> std::collections::BTreeMap<String, Vec<f32>> {
    let [a, b] = files.map(|f| weights(&root().join(f), ""));
    assert_eq!(a.len(), b.len());
    a.into_iter()
        .map(|(name, x)| {
            let m = x
                .iter()
                .zip(&b[&name])
                .map(|(x, y)| (x + y) * 0.5)
                .collect();
            (name, m)
        })
        .collect()
}

#[test]
fn the_shipped_model_matches_its_card() {
    let phantoms = trained_by("models/jnsc-synthetic.safetensors", "models/train.toml");
    assert_eq!(
        (phantoms.name.as_str(), phantoms.version.as_str()),
        ("jnsc-synthetic", "0.1.0")
    );
    assert!(
        phantoms.provenance["data"]
            .as_str()
            .unwrap()
            .contains("not patient data")
    );
    // The segmentation-only stage 0 of the candidate chain (model card, "Ablation").
    let segmentation = trained_by(
        "models/jnsc-segmentation.safetensors",
        "models/train-segmentation.toml",
    );
    assert_eq!(
        (segmentation.name.as_str(), segmentation.version.as_str()),
        ("jnsc-segmentation", "0.1.0")
    );
    let stage1 = trained_by(
        "models/jnsc-real-stage1.safetensors",
        "models/train-real-joint.toml",
    );
    assert_eq!(
        started_from(&stage1),
        Some(PathBuf::from("models/jnsc-synthetic.safetensors"))
    );
    let malignancy = trained_by(
        "models/jnsc-real-shapes.safetensors",
        "models/train-real-shapes.toml",
    );
    assert_eq!(
        (malignancy.name.as_str(), malignancy.version.as_str()),
        ("jnsc-real-backgrounds", "0.3.0")
    );
    assert_eq!(
        started_from(&malignancy),
        Some(PathBuf::from("models/jnsc-real-stage1.safetensors"))
    );
    let calibration = malignancy
        .malignancy_calibration
        .clone()
        .expect("the malignancy network's file carries its calibration");
    assert!(calibration.a > 0.0 && (0.0..1.0).contains(&calibration.threshold));
    assert!(
        calibration
            .fitted_on
            .contains("held-out LIDC-IDRI patients")
    );
    assert_eq!(
        jnsc::eval::shapes::trained_shape_held_out_percent(&malignancy.provenance),
        Some(jnsc::synth::lidc_shapes::CALIBRATION_PERCENT)
    );
    // Chain S's stage 1 (the shipped stage-1 configuration from the segmentation-only stage 0)
    // and its joint stage 2, the detector, kept uncalibrated.
    trained_by_from(
        "models/jnsc-real-stage1-seg.safetensors",
        "models/train-real-joint.toml",
        Some("models/jnsc-segmentation.safetensors"),
    );
    let detector = detector_stage(
        "models/jnsc-real-shapes-joint.safetensors",
        "models/train-real-shapes-joint.toml",
        "models/jnsc-real-stage1-seg.safetensors",
    );
    assert!(detector.malignancy_calibration.is_none());
    // Its third stage, on 240 scans (rule 7 of session 26), and the fourth, on 360 more (rule 8
    // of session 27), each from the one before.
    let detector = detector_stage(
        "models/jnsc-real-more-scans.safetensors",
        "models/train-real-more-scans.toml",
        "models/jnsc-real-shapes-joint.safetensors",
    );
    let fourth = detector_stage(
        "models/jnsc-real-fourth-stage.safetensors",
        "models/train-real-fourth-stage.toml",
        "models/jnsc-real-more-scans.safetensors",
    );

    // The shipped file: the mean of the third and fourth stages' networks (rule 9), with the
    // third's provenance and the fourth's beside it, and the malignancy network's
    // configuration, provenance and calibration.
    let shipped = trained_by(jnsc::DEFAULT_MODEL, "models/train-real-more-scans.toml");
    assert_eq!(
        (shipped.name.as_str(), shipped.version.as_str()),
        ("jnsc-real-backgrounds", "0.6.0")
    );
    assert_eq!(
        shipped.provenance["training"],
        detector.provenance["training"]
    );
    let average = &shipped.provenance["average_of"];
    assert_eq!(average["weights"], serde_json::json!([0.5, 0.5]));
    assert_eq!(average["first"]["version"], detector.version.as_str());
    assert_eq!(average["second"]["version"], fourth.version.as_str());
    assert_eq!(average["second_provenance"], fourth.provenance);
    assert_eq!(
        shipped_detector_weights(),
        mean_weights(&[
            "models/jnsc-real-more-scans.safetensors",
            "models/jnsc-real-fourth-stage.safetensors"
        ]),
        "the shipped detector is the mean of the two stages"
    );
    // Sizes: the measured extent's fraction chosen for the detector's map (model card, "Sizes").
    assert_eq!(shipped.measure_fraction, Some(0.8));
    assert_eq!(detector.measure_fraction, None);
    assert_eq!(shipped.malignancy_calibration.as_ref(), Some(&calibration));
    // The operating point: chosen on the validation insertions (`jnsc eval operating-point`),
    // the detector's p(nodule) being what it thresholds; 0.3.0's own on the same studies.
    let operating_point = &shipped.operating_points[0];
    assert_eq!(operating_point.min_p_nodule, OPERATING_POINT);
    assert_eq!(operating_point.max_false_positives_per_scan, 1.0);
    assert!(operating_point.chosen_on.contains("LIDC-IDRI-0063"));
    assert!(operating_point.false_positives_per_scan <= 1.0);
    // It holds for the analysis without test-time mirrors (what p(nodule) depends on).
    let analyzer = jnsc::inference::Analyzer::new(
        &jnsc::jnsc::model_file::ModelSource::Embedded,
        candle_core::Device::Cpu,
        jnsc::jnsc::device::Precision::F32,
        jnsc::inference::tiles::Tiling::fast(),
    )
    .unwrap();
    assert_eq!(operating_point.analysis, analyzer.setting());
    // Its calibration of p(nodule) among reported findings (rule 14 of 2026-12-04): fitted on
    // other validation insertions than the threshold; it raises confident findings and lowers
    // marginal ones.
    let nodule_calibration = operating_point.p_nodule_calibration.as_ref().unwrap();
    assert!(nodule_calibration.fitted_on.contains("2601-2624"));
    assert!(nodule_calibration.apply(OPERATING_POINT) < OPERATING_POINT);
    assert!(nodule_calibration.apply(0.99) > 0.99);
    assert_eq!(
        jnsc::results::min_p_nodule(None, &analyzer).unwrap(),
        OPERATING_POINT
    );
    // With 8 segmentation and 8 classification mirrors (the option for sites with the time),
    // p(nodule) moves and so does the threshold: chosen on the same studies by the same rule
    // (model card, "Test-time mirroring"); the node picks it for that setting.
    assert_eq!(shipped.operating_points.len(), 3);
    let mut mirrored = analyzer;
    mirrored.tiling.mirrors = 8;
    mirrored.classify_mirrors = 8;
    assert_eq!(
        jnsc::results::min_p_nodule(None, &mirrored).unwrap(),
        MIRRORED_OPERATING_POINT
    );
    assert!(
        shipped.operating_points[1]
            .chosen_on
            .contains("LIDC-IDRI-0063")
    );
    // Any other setting has none: the node refuses rather than use another setting's.
    mirrored.classify_mirrors = 1;
    let e = jnsc::results::min_p_nodule(None, &mirrored)
        .unwrap_err()
        .to_string();
    assert!(e.contains("other analysis settings only"), "{e}");
    // The node's default (rule 23 of 2026-12-05): the classification mirrored where it can
    // matter, with its own operating point and calibration, chosen and fitted as the first's.
    mirrored.tiling.mirrors = 1;
    mirrored.classify_mirrors = jnsc::inference::DEFAULT_CLASSIFY_MIRRORS;
    mirrored.classify_mirrors_from = jnsc::inference::DEFAULT_CLASSIFY_MIRRORS_FROM;
    assert_eq!(
        jnsc::results::min_p_nodule(None, &mirrored).unwrap(),
        DEFAULT_OPERATING_POINT
    );
    let default_point = shipped.operating_point(mirrored.setting()).unwrap();
    assert!(default_point.chosen_on.contains("LIDC-IDRI-0063"));
    let default_calibration = default_point.p_nodule_calibration.as_ref().unwrap();
    assert!(default_calibration.fitted_on.contains("2601-2624"));
    assert!(default_calibration.apply(0.99) > 0.99);
    // That setting is what the node runs when nothing is configured.
    let node_default = jnsc::config::Config::default().model;
    assert_eq!(
        (
            node_default.mirrors,
            node_default.classify_mirrors,
            node_default.classify_mirrors_from
        ),
        (1, mirrored.classify_mirrors, mirrored.classify_mirrors_from)
    );
    assert_eq!(
        malignancy.operating_points.first().map(|o| o.min_p_nodule),
        Some(0.466)
    );
    let network = shipped.malignancy_network.as_ref().unwrap();
    assert_eq!(
        (network.name.as_str(), network.version.as_str()),
        ("jnsc-real-backgrounds", "0.3.0")
    );
    assert_eq!(network.config, malignancy.config);
    assert_eq!(network.provenance, malignancy.provenance);
    assert_eq!(shipped.malignancy_provenance(), &malignancy.provenance);
    let (networks, _) = jnsc::jnsc::model_file::load_networks(
        &jnsc::jnsc::model_file::ModelSource::Embedded,
        &candle_core::Device::Cpu,
    )
    .unwrap();
    assert!(networks.malignancy.is_some());

    let card = std::fs::read_to_string(root().join("models/README.md")).unwrap();
    assert!(card.contains("Not for clinical use"));
    assert!(card.contains(&format!("{:.3}", calibration.threshold)));
    assert!(card.contains(&format!(
        "Operating point p(nodule) >= {}",
        operating_point.min_p_nodule
    )));
}
