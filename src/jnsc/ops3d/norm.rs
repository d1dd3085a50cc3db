//! Instance normalisation followed by ReLU, the network's norm layer: one fused custom op with
//! its own CPU forward and backward (`InstanceNormRelu`, `InstanceNormReluGrad`); other devices
//! and dtypes run the same arithmetic composed of Candle operations.

use super::{f32_slice, written_vec};
use candle_core::{CpuStorage, Layout, Result, Shape, Tensor, bail};
use rayon::prelude::*;

/// Instance normalisation (per item and channel, over the spatial axes, biased variance) with
/// a per-channel scale and shift, followed by ReLU. `gamma`, `beta`: [C]. On the CPU in f32 it
/// runs as one fused custom op (one pass for the statistics, one for the output; a fused
/// backward); elsewhere as Candle operations. Half-precision inputs are normalised in f32 (the
/// moments of a 64^3 channel summed in f16 or bf16 would lose most of their digits) and the
/// result converted back.
pub fn instance_norm_relu(x: &Tensor, gamma: &Tensor, beta: &Tensor, eps: f64) -> Result<Tensor> {
    use candle_core::DType;
    if matches!(x.dtype(), DType::F16 | DType::BF16) {
        let f32 = |t: &Tensor| t.to_dtype(DType::F32);
        return instance_norm_relu(&f32(x)?, &f32(gamma)?, &f32(beta)?, eps)?.to_dtype(x.dtype());
    }
    if x.device().is_cpu() && x.dtype() == DType::F32 {
        return x.contiguous()?.apply_op3(
            &gamma.contiguous()?,
            &beta.contiguous()?,
            InstanceNormRelu { eps },
        );
    }
    let c = x.dim(1)?;
    let mean = x.mean_keepdim((2, 3, 4))?;
    let centred = x.broadcast_sub(&mean)?;
    let variance = centred.sqr()?.mean_keepdim((2, 3, 4))?;
    let normalised = centred.broadcast_div(&(variance + eps)?.sqrt()?)?;
    normalised
        .broadcast_mul(&gamma.reshape((1, c, 1, 1, 1))?)?
        .broadcast_add(&beta.reshape((1, c, 1, 1, 1))?)?
        .relu()
}

/// Item-channels whose moments are summed in lock-step (see `all_moments`).
const MOMENT_LANES: usize = 4;

/// Mean and 1/sqrt(variance + eps) of each item-channel of `x` (`spatial` values each), the
/// same bits as `moments` on each. The sums are sequential chains of f64 additions, so one
/// channel at a time waits on each addition; here four channels' chains run in lock-step,
/// each in its own unchanged order, and the CPU overlaps them.
fn all_moments(x: &[f32], spatial: usize, eps: f64) -> Vec<(f32, f32)> {
    let groups: Vec<Vec<(f32, f32)>> = x
        .par_chunks(spatial * MOMENT_LANES)
        .map(|group| {
            let lanes: Vec<&[f32]> = group.chunks(spatial).collect();
            let &[a, b, c, d] = lanes.as_slice() else {
                return lanes.iter().map(|v| moments(v, eps)).collect();
            };
            let n = spatial as f64;
            let mut sums = [-0.0f64; MOMENT_LANES];
            for (((&a, &b), &c), &d) in a.iter().zip(b).zip(c).zip(d) {
                sums[0] += f64::from(a);
                sums[1] += f64::from(b);
                sums[2] += f64::from(c);
                sums[3] += f64::from(d);
            }
            let means = sums.map(|s| s / n);
            let mut squares = [-0.0f64; MOMENT_LANES];
            for (((&a, &b), &c), &d) in a.iter().zip(b).zip(c).zip(d) {
                squares[0] += (f64::from(a) - means[0]).powi(2);
                squares[1] += (f64::from(b) - means[1]).powi(2);
                squares[2] += (f64::from(c) - means[2]).powi(2);
                squares[3] += (f64::from(d) - means[3]).powi(2);
            }
            (0..MOMENT_LANES)
                .map(|l| {
                    let inv = 1.0 / (squares[l] / n + eps).sqrt();
                    (means[l] as f32, inv as f32)
                })
                .collect()
        })
        .collect();
    groups.concat()
}

/// Mean and 1/sqrt(variance + eps) of one item-channel.
fn moments(values: &[f32], eps: f64) -> (f32, f32) {
    let n = values.len() as f64;
    let mean = values.iter().map(|&v| f64::from(v)).sum::<f64>() / n;
    let variance = values
        .iter()
        .map(|&v| (f64::from(v) - mean).powi(2))
        .sum::<f64>()
        / n;
    (mean as f32, (1.0 / (variance + eps).sqrt()) as f32)
}

/// Channels and voxels per item-channel of an [N, C, D, H, W] layout.
fn channels_and_spatial(layout: &Layout) -> Result<(usize, usize)> {
    let &[n, c, d, h, w] = layout.shape().dims() else {
        bail!(
            "instance norm: input must be [N, C, D, H, W], got {:?}",
            layout.shape()
        );
    };
    if n * c == 0 {
        bail!("instance norm: empty input {:?}", layout.shape());
    }
    Ok((c, d * h * w))
}

/// The fused forward: x [N, C, D, H, W], gamma [C], beta [C].
struct InstanceNormRelu {
    eps: f64,
}

impl candle_core::CustomOp3 for InstanceNormRelu {
    fn name(&self) -> &'static str {
        "instance-norm-relu"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
        s3: &CpuStorage,
        l3: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let x = f32_slice(s1, l1, "instance_norm_relu: input")?;
        let gamma = f32_slice(s2, l2, "instance_norm_relu: gamma")?;
        let beta = f32_slice(s3, l3, "instance_norm_relu: beta")?;
        let (channels, spatial) = channels_and_spatial(l1)?;
        let stats = all_moments(x, spatial, self.eps);
        let fill = |y: &mut [std::mem::MaybeUninit<f32>]| {
            y.par_chunks_mut(spatial)
                .zip(x.par_chunks(spatial))
                .enumerate()
                .for_each(|(item, (out, values))| {
                    let c = item % channels;
                    let (mean, inv) = stats[item];
                    let (scale, shift) = (gamma[c] * inv, beta[c] - gamma[c] * inv * mean);
                    for (o, &v) in out.iter_mut().zip(values) {
                        o.write((v * scale + shift).max(0.0));
                    }
                });
        };
        // SAFETY: the chunks of x and y pair up one to one, each element written.
        let y = unsafe { written_vec(x.len(), fill) };
        Ok((CpuStorage::F32(y), l1.shape().clone()))
    }

    fn bwd(
        &self,
        x: &Tensor,
        gamma: &Tensor,
        beta: &Tensor,
        _y: &Tensor,
        grad: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let channels = gamma.dim(0)?;
        let scale_shift = Tensor::stack(&[gamma, beta], 0)?;
        let packed = x.apply_op3_no_bwd(
            &scale_shift,
            &grad.contiguous()?,
            &InstanceNormReluGrad { eps: self.eps },
        )?;
        let n = x.elem_count();
        let grad_x = packed.narrow(0, 0, n)?.reshape(x.shape())?;
        let grad_gamma = packed.narrow(0, n, channels)?;
        let grad_beta = packed.narrow(0, n + channels, channels)?;
        Ok((Some(grad_x), Some(grad_gamma), Some(grad_beta)))
    }
}

/// The fused backward. Inputs: x, [gamma; beta] ([2, C]), output gradient. Output, flat:
/// dx (as x), then dgamma [C], then dbeta [C].
struct InstanceNormReluGrad {
    eps: f64,
}

impl candle_core::CustomOp3 for InstanceNormReluGrad {
    fn name(&self) -> &'static str {
        "instance-norm-relu-grad"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
        s3: &CpuStorage,
        l3: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let x = f32_slice(s1, l1, "instance_norm_relu: input")?;
        let scale_shift = f32_slice(s2, l2, "instance_norm_relu: gamma and beta")?;
        let grad = f32_slice(s3, l3, "instance_norm_relu: gradient")?;
        let (channels, spatial) = channels_and_spatial(l1)?;
        let (gamma, beta) = scale_shift.split_at(channels);
        let stats = all_moments(x, spatial, self.eps);
        // dx, then dgamma and dbeta: allocated once at its final length, each value written.
        let fill = |packed: &mut [std::mem::MaybeUninit<f32>]| {
            let (dx, tail) = packed.split_at_mut(x.len());
            // Per item-channel: dx, and its contributions to dgamma and dbeta.
            let partial: Vec<(f64, f64)> = dx
                .par_chunks_mut(spatial)
                .zip(x.par_chunks(spatial))
                .zip(grad.par_chunks(spatial))
                .enumerate()
                .map(|(item, ((out, values), g))| {
                    let c = item % channels;
                    let (mean, inv) = stats[item];
                    // g through the ReLU, then through the affine step.
                    let (mut sum_g, mut sum_g_hat, mut sum_dhat, mut sum_dhat_hat) =
                        (0f64, 0f64, 0f64, 0f64);
                    for (&v, &gv) in values.iter().zip(g) {
                        let hat = (v - mean) * inv;
                        let through = if hat * gamma[c] + beta[c] > 0.0 {
                            gv
                        } else {
                            0.0
                        };
                        let dhat = through * gamma[c];
                        sum_g += f64::from(through);
                        sum_g_hat += f64::from(through * hat);
                        sum_dhat += f64::from(dhat);
                        sum_dhat_hat += f64::from(dhat * hat);
                    }
                    let n = spatial as f64;
                    let (mean_dhat, mean_dhat_hat) =
                        ((sum_dhat / n) as f32, (sum_dhat_hat / n) as f32);
                    for ((o, &v), &gv) in out.iter_mut().zip(values).zip(g) {
                        let hat = (v - mean) * inv;
                        let through = if hat * gamma[c] + beta[c] > 0.0 {
                            gv
                        } else {
                            0.0
                        };
                        o.write(inv * (through * gamma[c] - mean_dhat - hat * mean_dhat_hat));
                    }
                    (sum_g_hat, sum_g)
                })
                .collect();
            let mut dgamma = vec![0f64; channels];
            let mut dbeta = vec![0f64; channels];
            for (item, (g_hat, g)) in partial.iter().enumerate() {
                dgamma[item % channels] += g_hat;
                dbeta[item % channels] += g;
            }
            for (t, v) in tail.iter_mut().zip(dgamma.iter().chain(&dbeta)) {
                t.write(*v as f32);
            }
        };
        // SAFETY: every item-channel's chunk of dx is written, then the 2C values after it.
        let packed = unsafe { written_vec(x.len() + 2 * channels, fill) };
        let len = packed.len();
        Ok((CpuStorage::F32(packed), Shape::from(len)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::jnsc::testing::{flat, tensor, values};
    use candle_core::{DType, Var};

    #[test]
    fn moments_in_lock_step_are_the_bits_of_one_channel_at_a_time() {
        let spatial = 1000;
        // 11 channels: two groups of four and a remainder; one all zero, one constant.
        let mut x = values(11 * spatial, 9);
        x[3 * spatial..4 * spatial].fill(0.0);
        x[5 * spatial..6 * spatial].fill(-2.5);
        let lock_step = all_moments(&x, spatial, 1e-5);
        let one_at_a_time: Vec<(f32, f32)> = x.chunks(spatial).map(|c| moments(c, 1e-5)).collect();
        let bits = |v: &[(f32, f32)]| -> Vec<(u32, u32)> {
            v.iter().map(|(m, i)| (m.to_bits(), i.to_bits())).collect()
        };
        assert_eq!(bits(&lock_step), bits(&one_at_a_time));
    }

    /// The fused f32 CPU op against the composite (f64) version, values and gradients.
    #[test]
    fn fused_instance_norm_matches_the_composite() {
        let (n, c, d, h, w) = (2, 3, 3, 4, 5);
        let xs = values(n * c * d * h * w, 101);
        let gs = values(n * c * d * h * w, 102);
        let gamma = [1.3f32, -0.7, 0.9];
        let beta = [0.2f32, 0.1, -0.4];
        let run = |dtype: DType| {
            let x =
                Var::from_tensor(&tensor(&xs, &[n, c, d, h, w]).to_dtype(dtype).unwrap()).unwrap();
            let ga = Var::from_tensor(&tensor(&gamma, &[c]).to_dtype(dtype).unwrap()).unwrap();
            let be = Var::from_tensor(&tensor(&beta, &[c]).to_dtype(dtype).unwrap()).unwrap();
            let y =
                instance_norm_relu(x.as_tensor(), ga.as_tensor(), be.as_tensor(), 1e-5).unwrap();
            let g = tensor(&gs, &[n, c, d, h, w]).to_dtype(dtype).unwrap();
            let grads = (&y * &g).unwrap().sum_all().unwrap().backward().unwrap();
            let as_f32 = |t: &Tensor| flat(&t.to_dtype(DType::F32).unwrap());
            [
                as_f32(&y),
                as_f32(grads.get(x.as_tensor()).unwrap()),
                as_f32(grads.get(ga.as_tensor()).unwrap()),
                as_f32(grads.get(be.as_tensor()).unwrap()),
            ]
        };
        let fused = run(DType::F32);
        let composite = run(DType::F64);
        for (what, (a, b)) in ["y", "dx", "dgamma", "dbeta"]
            .iter()
            .zip(fused.iter().zip(&composite))
        {
            let diff = a
                .iter()
                .zip(b)
                .map(|(p, q)| (p - q).abs())
                .fold(0f32, f32::max);
            assert!(diff < 1e-4, "{what}: max diff {diff}");
        }
    }

    #[test]
    fn instance_norm_relu_matches_the_naive_reference() {
        let (n, c, d, h, w) = (2, 3, 4, 2, 6);
        let xs = values(n * c * d * h * w, 71);
        let x = tensor(&xs, &[n, c, d, h, w]);
        let gamma = values(c, 72);
        let beta = values(c, 73);
        let y = flat(
            &instance_norm_relu(&x, &tensor(&gamma, &[c]), &tensor(&beta, &[c]), 1e-5).unwrap(),
        );
        let m = d * h * w;
        for item in 0..n * c {
            let v: Vec<f64> = xs[item * m..(item + 1) * m]
                .iter()
                .map(|&v| f64::from(v))
                .collect();
            let mean = v.iter().sum::<f64>() / m as f64;
            let var = v.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / m as f64;
            let ch = item % c;
            for (j, x) in v.iter().enumerate() {
                let expected = ((x - mean) / (var + 1e-5).sqrt() * f64::from(gamma[ch])
                    + f64::from(beta[ch]))
                .max(0.0);
                assert!((f64::from(y[item * m + j]) - expected).abs() < 1e-4);
            }
        }
    }
}
