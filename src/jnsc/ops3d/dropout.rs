//! Spatial dropout (whole channels), seeded from the training run's generator so that a run
//! is reproducible. On the CPU in f32 it is one custom op (`ChannelScale`) whose backward
//! scales the gradient only: as a Candle `broadcast_mul`, the backward also computed, zeroed
//! and summed a full-size gradient for the constant mask (about 2% of a `paper` training step).

use super::{f32_slice, written_vec};
use candle_core::{CpuStorage, CustomOp1, Layout, Result, Shape, Tensor, bail};
use rayon::prelude::*;

/// Spatial dropout: whole channels zeroed with probability `p`, the rest scaled by 1/(1-p). The
/// mask comes from `rng`, so a training run is reproducible from its seed.
pub fn spatial_dropout(x: &Tensor, p: f64, rng: &mut crate::random::Rng) -> Result<Tensor> {
    if p <= 0.0 {
        return Ok(x.clone());
    }
    let (n, c, ..) = x.dims5()?;
    let scale = (1.0 / (1.0 - p)) as f32;
    let keep: Vec<f32> = (0..n * c)
        .map(|_| if rng.uniform() >= p { scale } else { 0.0 })
        .collect();
    if x.device().is_cpu() && x.dtype() == candle_core::DType::F32 {
        return x.contiguous()?.apply_op1(ChannelScale { factors: keep });
    }
    let keep = Tensor::from_vec(keep, (n, c, 1, 1, 1), x.device())?.to_dtype(x.dtype())?;
    x.broadcast_mul(&keep)
}

/// Multiplies each item-channel of an [N, C, D, H, W] tensor by its factor (N x C of them);
/// its gradient is the output gradient scaled the same way.
struct ChannelScale {
    factors: Vec<f32>,
}

impl CustomOp1 for ChannelScale {
    fn name(&self) -> &'static str {
        "channel-scale"
    }

    fn cpu_fwd(&self, storage: &CpuStorage, layout: &Layout) -> Result<(CpuStorage, Shape)> {
        let x = f32_slice(storage, layout, "spatial dropout: input")?;
        let &[n, c, ..] = layout.shape().dims() else {
            bail!("spatial dropout: input must be [N, C, D, H, W]");
        };
        if n * c != self.factors.len() || x.is_empty() {
            bail!(
                "spatial dropout: {} factors for {:?}",
                self.factors.len(),
                layout.shape()
            );
        }
        let spatial = x.len() / self.factors.len();
        let fill = |y: &mut [std::mem::MaybeUninit<f32>]| {
            y.par_chunks_mut(spatial)
                .zip(x.par_chunks(spatial))
                .zip(&self.factors)
                .for_each(|((out, values), &factor)| {
                    for (o, &v) in out.iter_mut().zip(values) {
                        o.write(v * factor);
                    }
                });
        };
        // SAFETY: the chunks of x and y pair up one to one, each element written.
        let y = unsafe { written_vec(x.len(), fill) };
        Ok((CpuStorage::F32(y), layout.shape().clone()))
    }

    fn bwd(&self, _x: &Tensor, _y: &Tensor, grad: &Tensor) -> Result<Option<Tensor>> {
        let scaled = grad.contiguous()?.apply_op1_no_bwd(&ChannelScale {
            factors: self.factors.clone(),
        })?;
        Ok(Some(scaled))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::jnsc::testing::flat;
    use candle_core::{DType, Device};

    #[test]
    fn spatial_dropout_drops_whole_channels() {
        let x = Tensor::ones((2, 16, 2, 2, 2), DType::F32, &Device::Cpu).unwrap();
        let rng = &mut crate::random::Rng::new(4);
        let y = flat(&spatial_dropout(&x, 0.5, rng).unwrap());
        for channel in y.chunks(8) {
            assert!(channel.iter().all(|v| *v == 0.0) || channel.iter().all(|v| *v == 2.0));
        }
        let dropped = y.chunks(8).filter(|c| c[0] == 0.0).count();
        assert!(
            (4..=28).contains(&dropped),
            "{dropped} of 32 channels dropped"
        );
        // The same seed gives the same mask.
        let again = flat(&spatial_dropout(&x, 0.5, &mut crate::random::Rng::new(4)).unwrap());
        assert_eq!(again, y);
        assert_eq!(flat(&spatial_dropout(&x, 0.0, rng).unwrap()), flat(&x));
    }

    /// The CPU op gives the bits of Candle's `broadcast_mul` by the same mask, forward and
    /// backward (training reproduces runs made before it).
    #[test]
    fn the_cpu_op_is_candles_broadcast_mul_bit_for_bit() {
        let (n, c) = (2, 5);
        let shape = (n, c, 3, 2, 4);
        let values = crate::jnsc::testing::values(n * c * 24, 31);
        let x = candle_core::Var::from_vec(values, shape, &Device::Cpu).unwrap();
        let g = Tensor::randn(0f32, 1.0, shape, &Device::Cpu).unwrap();
        let p = 0.4;
        let mut rng = crate::random::Rng::new(8);
        let y = spatial_dropout(x.as_tensor(), p, &mut rng).unwrap();
        let dx = (&y * &g).unwrap().sum_all().unwrap().backward().unwrap();
        let mut rng = crate::random::Rng::new(8);
        let scale = (1.0 / (1.0 - p)) as f32;
        let keep: Vec<f32> = (0..n * c)
            .map(|_| if rng.uniform() >= p { scale } else { 0.0 })
            .collect();
        let keep = Tensor::from_vec(keep, (n, c, 1, 1, 1), &Device::Cpu).unwrap();
        let reference = x.as_tensor().broadcast_mul(&keep).unwrap();
        let reference_dx = (&reference * &g)
            .unwrap()
            .sum_all()
            .unwrap()
            .backward()
            .unwrap();
        let bits = |t: &Tensor| flat(t).iter().map(|v| v.to_bits()).collect::<Vec<_>>();
        assert_eq!(bits(&y), bits(&reference));
        assert_eq!(
            bits(dx.get(x.as_tensor()).unwrap()),
            bits(reference_dx.get(x.as_tensor()).unwrap())
        );
    }
}
