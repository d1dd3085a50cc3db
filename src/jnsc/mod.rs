//! JNSC, the joint nodule detection, segmentation and classification network, in Candle:
//! `ops3d` holds the 3-D operators Candle lacks (convolution, norm, resize, pool: custom ops with
//! CPU kernels where speed needs them), `network` the architecture and the nodule location map.

pub mod device;
pub mod model_file;
pub mod network;
pub mod ops3d;
#[cfg(test)]
pub(crate) mod testing;
