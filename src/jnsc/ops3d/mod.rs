//! 3-D operators Candle lacks, for the network (`super::network`). Weight layouts are PyTorch's,
//! so a PyTorch model's weights load unchanged.
//!
//! - `conv`: k x k x k convolution, stride 1, "same" padding: a custom op with its own tiled CPU
//!   kernels (forward, input and weight gradients; `conv/direct.rs`, the forward of layers with
//!   few channels without im2col), Candle operations elsewhere.
//! - `norm`: instance normalisation + ReLU, one fused custom op on the CPU.
//! - `resize`: V-Net's 2x2x2 stride-2 down-convolution and transposed up-convolution.
//! - `pool`: 2x2x2 max-pooling, and the crop and adaptive max-pooling of the classification path.
//! - `dropout`: spatial dropout, seeded; one CPU op whose backward scales the gradient.
//! - `permute`: a fast CPU axis permutation, with the reshapes around it as one op
//!   (`permuted_as`: `resize` is a permutation, a matmul and another).
//!
//! The kernels are hand-written on purpose: Candle has no 3-D convolution with gradients, and
//! training must stay bit-for-bit reproducible, so their summation order is fixed here. The
//! operators that are compositions of Candle operations get their gradients from Candle.
//! Each file's tests check its operator against a naive reference; the tests below check them
//! together (finite differences, and CUDA against the CPU).

mod conv;
mod dropout;
mod norm;
mod permute;
mod pool;
mod resize;

pub use conv::conv3d;
pub use dropout::spatial_dropout;
pub use norm::instance_norm_relu;
pub use permute::permuted_as;
pub use pool::{adaptive_max_pool, crop, max_pool2};
pub use resize::{down_conv, up_conv};

use candle_core::backend::BackendStorage;
use candle_core::{CpuStorage, Layout, Result, Tensor, bail};

/// A vector of `len` values written by `fill`, without zeroing them first (zeroing the
/// network's large outputs, then overwriting them, was 7% of an analysis).
///
/// # Safety
/// `fill` must write every element of the slice it is given.
pub(crate) unsafe fn written_vec(
    len: usize,
    fill: impl FnOnce(&mut [std::mem::MaybeUninit<f32>]),
) -> Vec<f32> {
    let mut v: Vec<f32> = Vec::with_capacity(len);
    fill(&mut v.spare_capacity_mut()[..len]);
    // SAFETY: the caller's `fill` wrote all `len` elements.
    unsafe { v.set_len(len) };
    v
}

/// Which of gemm's kernels the convolutions' matrix products run here. Their sums round
/// differently, so trained weights depend on which.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GemmKernels {
    /// AVX-512: this build has them (the `avx512` feature) and the CPU does (what gemm's
    /// run-time dispatch checks for).
    Avx512,
    /// AVX2 + FMA: the kernels the shipped models were trained with.
    Avx2Fma,
    /// Neither.
    Portable,
}

impl GemmKernels {
    /// The kernels gemm dispatches to on this CPU, in this build.
    pub fn here() -> Self {
        #[cfg(target_arch = "x86_64")]
        {
            use std::arch::is_x86_feature_detected as has;
            let avx512 = has!("avx512f")
                && has!("avx512bw")
                && has!("avx512cd")
                && has!("avx512dq")
                && has!("avx512vl");
            if cfg!(feature = "avx512") && avx512 {
                return Self::Avx512;
            }
            if has!("avx2") && has!("fma") {
                return Self::Avx2Fma;
            }
        }
        Self::Portable
    }
}

impl std::fmt::Display for GemmKernels {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::Avx512 => "AVX-512 (gemm's x86-v4 microkernels)",
            Self::Avx2Fma if cfg!(feature = "avx512") => "AVX2 + FMA (this CPU has no AVX-512)",
            Self::Avx2Fma => "AVX2 + FMA (built without the avx512 feature)",
            Self::Portable => "portable (no AVX2)",
        })
    }
}

/// An output buffer that parallel tasks write into at disjoint places (each kernel says which).
pub(crate) struct Output(pub(crate) *mut f32);

// SAFETY: shared only while tasks write disjoint parts of the buffer, which outlives them.
unsafe impl Send for Output {}
unsafe impl Sync for Output {}

impl Output {
    pub(crate) fn at(&self, offset: usize) -> *mut f32 {
        // SAFETY: callers pass offsets inside the buffer.
        unsafe { self.0.add(offset) }
    }
}

/// A contiguous f32 slice of a CPU tensor argument, or an error saying why not.
pub(crate) fn f32_slice<'a>(
    storage: &'a CpuStorage,
    layout: &Layout,
    what: &str,
) -> Result<&'a [f32]> {
    let CpuStorage::F32(data) = storage else {
        bail!("{what} must be f32, got {:?}", storage.dtype());
    };
    let Some((start, end)) = layout.contiguous_offsets() else {
        bail!("{what} must be contiguous");
    };
    Ok(&data[start..end])
}

/// Half precision on the CPU: `op` on the f16 values (exact in f32) computed by its f32 kernels,
/// its result rounded to f16; `None` for any other dtype or device. That is an f16 product
/// computed in f32 (as gemm's f16 product on the CPU computes, and a GPU's with f32
/// accumulation), in another order of summation, at about f32's speed: Candle's generic f16
/// operators on the CPU (strided copies, then gemm's f16 product) took 3-30 times as long. The
/// CPU's f16 is there to check a GPU's findings against.
pub(crate) fn f16_through_f32(
    x: &Tensor,
    w: &Tensor,
    op: fn(&Tensor, &Tensor) -> Result<Tensor>,
) -> Result<Option<Tensor>> {
    use candle_core::DType;
    if !(x.device().is_cpu() && x.dtype() == DType::F16) {
        return Ok(None);
    }
    let y = op(&x.to_dtype(DType::F32)?, &w.to_dtype(DType::F32)?)?;
    Ok(Some(y.to_dtype(DType::F16)?))
}

/// The three spatial sizes of an [N, C, D, H, W] tensor, which must all be even.
pub(crate) fn even_spatial(x: &Tensor, op: &str) -> Result<(usize, usize, usize, usize, usize)> {
    let (n, c, d, h, w) = x.dims5()?;
    if d % 2 != 0 || h % 2 != 0 || w % 2 != 0 {
        bail!("{op}: spatial size {d}x{h}x{w} must be even");
    }
    Ok((n, c, d, h, w))
}

#[cfg(test)]
mod tests {
    use super::*;
    #[cfg(feature = "cuda")]
    use crate::jnsc::testing::flat;
    use crate::jnsc::testing::values;
    use candle_core::{Device, Var};

    /// Autograd of the composite ops against central differences, in f64.
    #[test]
    fn composite_op_gradients_match_finite_differences() {
        let xs: Vec<f64> = values(2 * 2 * 4 * 4 * 4, 91)
            .iter()
            .map(|&v| f64::from(v))
            .collect();
        let wd: Vec<f64> = values(3 * 2 * 8, 92)
            .iter()
            .map(|&v| f64::from(v))
            .collect();
        let wu: Vec<f64> = values(3 * 2 * 8, 93)
            .iter()
            .map(|&v| f64::from(v))
            .collect();
        let gamma = Tensor::new(&[1.2f64, 0.7, 1.0], &Device::Cpu).unwrap();
        let beta = Tensor::new(&[0.1f64, -0.2, 0.3], &Device::Cpu).unwrap();
        let loss = |x: &Tensor| -> Tensor {
            let w1 = Tensor::from_slice(&wd, (3, 2, 2, 2, 2), &Device::Cpu).unwrap();
            let w2 = Tensor::from_slice(&wu, (3, 2, 2, 2, 2), &Device::Cpu).unwrap();
            let down = down_conv(x, &w1).unwrap();
            let normed = instance_norm_relu(&down, &gamma, &beta, 1e-5).unwrap();
            let up = up_conv(&normed, &w2).unwrap();
            let pooled = max_pool2(&up).unwrap();
            let feature = adaptive_max_pool(&crop(&up, [0, 1, 0], [2, 3, 3]).unwrap(), 2).unwrap();
            (pooled.sqr().unwrap().sum_all().unwrap() + feature.sum_all().unwrap()).unwrap()
        };
        let x = Var::from_tensor(&Tensor::from_slice(&xs, (2, 2, 4, 4, 4), &Device::Cpu).unwrap())
            .unwrap();
        let grads = loss(x.as_tensor()).backward().unwrap();
        let g = grads
            .get(x.as_tensor())
            .unwrap()
            .flatten_all()
            .unwrap()
            .to_vec1::<f64>()
            .unwrap();
        let eps = 1e-6;
        for j in (0..xs.len()).step_by(19) {
            let at = |delta: f64| {
                let mut v = xs.clone();
                v[j] += delta;
                loss(&Tensor::from_slice(&v, (2, 2, 4, 4, 4), &Device::Cpu).unwrap())
                    .to_scalar::<f64>()
                    .unwrap()
            };
            let numeric = (at(eps) - at(-eps)) / (2.0 * eps);
            assert!(
                (numeric - g[j]).abs() < 1e-4 * numeric.abs().max(1.0),
                "x[{j}]: {numeric} vs {}",
                g[j]
            );
        }
    }

    /// With `--features cuda` (run on a machine with a GPU): every operator's output and
    /// gradients on CUDA match the CPU's on the same random inputs.
    #[cfg(feature = "cuda")]
    #[test]
    fn cuda_matches_the_cpu_forward_and_backward() {
        let gpu = Device::new_cuda(0).expect("a CUDA build's tests need a GPU");
        let random = |shape: &[usize], seed: u64| {
            let n = shape.iter().product();
            Tensor::from_vec(values(n, seed), shape, &Device::Cpu).unwrap()
        };
        let x = random(&[2, 3, 6, 10, 8], 1);
        let w3 = random(&[4, 3, 3, 3, 3], 2);
        let wd = random(&[5, 4, 2, 2, 2], 3);
        let wu = random(&[5, 4, 2, 2, 2], 4);
        let gamma = random(&[5], 5);
        let beta = random(&[5], 6);
        let g = random(&[2, 4, 6, 10, 8], 7);
        // One loss through every operator; its value and the gradients of all inputs.
        let run = |device: &Device| -> Vec<Vec<f32>> {
            let vars: Vec<Var> = [&x, &w3, &wd, &wu, &gamma, &beta]
                .iter()
                .map(|t| Var::from_tensor(&t.to_device(device).unwrap()).unwrap())
                .collect();
            let t: Vec<&Tensor> = vars.iter().map(Var::as_tensor).collect();
            let conv = conv3d(t[0], t[1]).unwrap();
            let down = down_conv(&conv, t[2]).unwrap();
            let normed = instance_norm_relu(&down, t[4], t[5], 1e-5).unwrap();
            let up = up_conv(&normed, t[3]).unwrap();
            let pooled = max_pool2(&up).unwrap();
            let feature = adaptive_max_pool(&crop(&up, [1, 2, 0], [4, 7, 5]).unwrap(), 2).unwrap();
            let loss = ((conv * g.to_device(device).unwrap())
                .unwrap()
                .sum_all()
                .unwrap()
                + pooled.sqr().unwrap().sum_all().unwrap()
                + feature.sum_all().unwrap())
            .unwrap();
            let grads = loss.backward().unwrap();
            let mut out = vec![flat(&loss.to_device(&Device::Cpu).unwrap())];
            for v in &vars {
                out.push(flat(
                    &grads
                        .get(v.as_tensor())
                        .unwrap()
                        .to_device(&Device::Cpu)
                        .unwrap(),
                ));
            }
            out
        };
        let (cpu, cuda) = (run(&Device::Cpu), run(&gpu));
        for (i, (a, b)) in cpu.iter().zip(&cuda).enumerate() {
            let scale = a.iter().fold(1f32, |m, v| m.max(v.abs()));
            let diff = a.iter().zip(b).fold(0f32, |m, (p, q)| m.max((p - q).abs()));
            assert!(
                diff <= 1e-4 * scale,
                "output {i}: CPU vs CUDA max diff {diff} (scale {scale})"
            );
        }
    }
}
