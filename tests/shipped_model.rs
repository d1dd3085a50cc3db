//! The shipped model file is what its model card says: it loads, it is the `cpu` preset with the
//! default normalisation, and its provenance is the run of models/train.toml on synthetic data.

use jnsc::jnsc::model_file::load;
use jnsc::jnsc::network::Config;
use jnsc::train::trainer::TrainConfig;
use jnsc::volume::Normalization;
use std::path::Path;

#[test]
fn the_shipped_model_matches_its_card() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let (_, info) = load(&root.join(jnsc::DEFAULT_MODEL), &candle_core::Device::Cpu).unwrap();
    assert_eq!(info.name, "jnsc-synthetic");
    assert_eq!(info.version, "0.1.0");
    assert_eq!(info.config, Config::cpu());
    assert_eq!(info.normalization, Normalization::default());
    assert!(
        info.provenance["data"]
            .as_str()
            .unwrap()
            .contains("not patient data")
    );
    let trained: TrainConfig = serde_json::from_value(info.provenance["training"].clone()).unwrap();
    let documented: TrainConfig =
        toml::from_str(&std::fs::read_to_string(root.join("models/train.toml")).unwrap()).unwrap();
    assert_eq!(trained, documented);
    assert_eq!(info.provenance["epochs_done"], documented.epochs);
    let card = std::fs::read_to_string(root.join("models/README.md")).unwrap();
    assert!(card.contains("Not for clinical use"));
}
