//! JNSC node: a DICOM node for lung cancer screening. It receives chest CT series (C-STORE SCP),
//! stores and indexes every instance durably, and queues complete series for analysis.
//!
//! Module map: `attributes` (reading data set values), `config` (TOML configuration), `net` (DICOM networking), `store` (files + SQLite
//! index), `pipeline` (series completion and jobs), `node` (the `serve` command), `synth`
//! (synthetic CT series), `bench` (benchmark commands),
//! `eval` (FROC/CPM and classification metrics), `inference` (whole-scan
//! analysis: findings from a series), `results` (the DICOM SEG and TID 1500 SR sent back), `status` (HTTP status endpoint and
//! metrics).

/// The model file the node and `analyze` use unless told otherwise.
pub const DEFAULT_MODEL: &str = "models/jnsc.safetensors";

pub mod attributes;
pub mod bench;
pub mod config;
pub mod eval;
pub mod inference;
pub mod jnsc;
pub mod malignancy;
pub mod net;
pub mod node;
pub mod pipeline;
pub mod results;
pub mod status;
pub mod store;
pub mod synth;
pub mod train;
pub mod volume;
