//! JNSC node: a DICOM node for lung cancer screening. It receives chest CT series (C-STORE SCP),
//! stores and indexes every instance durably, and queues complete series for analysis.
//!
//! Module map, from the bottom up:
//! - `alloc` (the allocator every binary of the crate uses), `attributes` (reading data set values), `encoding` (the structure of received data sets,
//!   checked before parsing), `write` (Part 10 file meta, files written whole), `metrics` (the
//!   counters every service bumps), `random` (the seeded generator of phantoms, sampling and
//!   dropout), `config` (TOML configuration), `luna16_csv` (the LUNA16 challenge's CSV files);
//! - `store` (files + SQLite index), `net` (DICOM networking), `volume` (series -> HU volume ->
//!   1 mm grid -> lung mask), `jnsc` (the network, its model file and devices);
//! - `inference` (whole-scan analysis: findings from a series), `malignancy`, `results` (the DICOM
//!   SEG and TID 1500 SR sent back), `pipeline` (series completion, jobs, delivery);
//! - `status` (HTTP status endpoint, serving `metrics`), `node` (the `serve` command);
//! - `synth` (synthetic and inserted CT studies), `train`, `eval` (FROC/CPM, classification,
//!   calibration), `fuzz` (mutation fuzzing of what the network parses), `bench` (benchmark
//!   commands).

/// The model file the node and `analyze` use unless told otherwise.
pub const DEFAULT_MODEL: &str = "models/jnsc.safetensors";

pub mod alloc;
pub mod attributes;
pub mod bench;
pub mod config;
pub mod datasets;
pub mod encoding;
pub mod eval;
pub mod fuzz;
pub mod inference;
pub mod jnsc;
pub mod luna16_csv;
pub mod malignancy;
pub mod metrics;
pub mod net;
pub mod node;
pub mod pipeline;
pub mod random;
pub mod results;
pub mod status;
pub mod store;
pub mod synth;
pub mod test_data;
pub mod train;
pub mod volume;
pub mod write;
