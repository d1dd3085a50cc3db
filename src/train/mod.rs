//! Training JNSC the paper's way (section IV.B, D-F): data sources and sampling (`data`),
//! losses (`loss`), the pseudo-labels of marginal nodules (`pseudo`), Adam with gradient
//! clipping (`adam`) and the training loop with checkpoints and metrics (`trainer`).

pub mod adam;
pub mod data;
pub mod loss;
pub mod pseudo;
