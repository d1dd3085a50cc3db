//! Spatial dropout (whole channels), seeded from the training run's generator so that a run
//! is reproducible.

use candle_core::{Result, Tensor};

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
    let keep = Tensor::from_vec(keep, (n, c, 1, 1, 1), x.device())?.to_dtype(x.dtype())?;
    x.broadcast_mul(&keep)
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
}
