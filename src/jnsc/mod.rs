//! JNSC, the joint nodule detection, segmentation and classification network, in Candle:
//! `ops3d` holds the 3-D operators Candle lacks (custom ops with CPU kernels), `norm` the fused
//! instance norm + ReLU, `permute` a fast CPU axis permutation, `network` the architecture and
//! the nodule location map.

pub mod device;
pub mod model_file;
pub mod network;
pub mod norm;
pub mod ops3d;
pub mod permute;
#[cfg(test)]
mod testing;
