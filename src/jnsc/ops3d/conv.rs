//! 3-D convolution: k x k x k, stride 1, "same" zero padding, no bias, f32, on
//! [N, C, D, H, W] inputs and [O, C, k, k, k] weights.
//!
//! The CPU kernel never builds a whole-volume im2col: positions are cut into tiles of `TILE`
//! output voxels, each tile's im2col block (C k^3 x TILE) is built and multiplied by the
//! weights with the `gemm` crate, tiles run in parallel with rayon (see ../shared/DESIGN.md for
//! the measurements behind this). Layers of at most 16 output channels and 432 im2col rows run
//! the forward without im2col where the CPU has AVX2 (`direct`, the same bits). Backward: the
//! input gradient is the same convolution of the output gradient with the weights transposed
//! (O <-> C) and flipped; the weight gradient is a tiled im2col product with its own kernel
//! (`Conv3dWeightGrad`). Other devices and dtypes run the same convolution as Candle operations
//! (`conv3d_composite`).

use super::{Output, f32_slice, written_vec};
use candle_core::{CpuStorage, CustomOp2, Layout, Result, Shape, Tensor, bail};
use rayon::prelude::*;

mod direct;

/// Output voxels per im2col tile (a tile's block stays in the L2 cache for C k^3 <= ~1000).
const TILE: usize = 256;

/// Shape of a convolution problem.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Dims {
    batch: usize,
    channels: usize,
    depth: usize,
    height: usize,
    width: usize,
    kernel: usize,
}

impl Dims {
    fn positions(&self) -> usize {
        self.depth * self.height * self.width
    }

    /// Rows of an im2col block: channels x kernel^3.
    fn patch(&self) -> usize {
        self.channels * self.kernel * self.kernel * self.kernel
    }

    /// Fills `block` (patch x `len`) with the input voxels seen by output positions
    /// `start..start + len` of batch item `input` (one item, C x D x H x W).
    fn im2col(&self, input: &[f32], start: usize, len: usize, block: &mut [f32]) {
        let k = self.kernel;
        let pad = (k / 2) as isize;
        let (d, h, w) = (
            self.depth as isize,
            self.height as isize,
            self.width as isize,
        );
        let plane = self.height * self.width;
        let volume = self.depth * plane;
        // The tile's positions as runs along x within one (z, y) row: for each kernel offset a
        // run maps to a contiguous source segment, copied whole, with zeros where it leaves
        // the volume.
        let mut runs: Vec<(usize, isize, isize, isize, usize)> = Vec::new(); // (col, z, y, x0, n)
        let mut p = start;
        while p < start + len {
            let (z, y, x) = (p / plane, (p / self.width) % self.height, p % self.width);
            let n = (self.width - x).min(start + len - p);
            runs.push((p - start, z as isize, y as isize, x as isize, n));
            p += n;
        }
        let mut row = 0;
        for c in 0..self.channels {
            let source = &input[c * volume..(c + 1) * volume];
            for kz in -pad..=pad {
                for ky in -pad..=pad {
                    for kx in -pad..=pad {
                        let out = &mut block[row * len..(row + 1) * len];
                        for &(col, z, y, x0, n) in &runs {
                            let target = &mut out[col..col + n];
                            let (zz, yy) = (z + kz, y + ky);
                            if zz < 0 || zz >= d || yy < 0 || yy >= h {
                                target.fill(0.0);
                                continue;
                            }
                            // Source x range for this run, clipped to the volume.
                            let first = x0 + kx;
                            let lo = (-first).clamp(0, n as isize) as usize;
                            let hi = (w - first).clamp(0, n as isize) as usize;
                            target[..lo].fill(0.0);
                            if hi > lo {
                                let from = ((zz * h + yy) * w + first + lo as isize) as usize;
                                target[lo..hi].copy_from_slice(&source[from..from + (hi - lo)]);
                            }
                            target[hi.max(lo)..].fill(0.0);
                        }
                        row += 1;
                    }
                }
            }
        }
    }
}

/// `dst (m x n) = lhs (m x k) x rhs`, row-major; `rhs` is k x n, or n x k when
/// `rhs_transposed`. With `accumulate`, adds to `dst` instead.
#[allow(clippy::too_many_arguments)]
fn matmul(
    dst: &mut [f32],
    lhs: &[f32],
    rhs: &[f32],
    m: usize,
    n: usize,
    k: usize,
    rhs_transposed: bool,
    accumulate: bool,
) {
    assert!(dst.len() >= m * n && lhs.len() >= m * k && rhs.len() >= k * n);
    // SAFETY: the assert keeps every row of dst, n apart, in the slice.
    unsafe {
        matmul_raw(
            dst.as_mut_ptr(),
            n,
            lhs,
            rhs,
            [m, n, k],
            rhs_transposed,
            accumulate,
        )
    }
}

/// `matmul` into the m rows of n values at `dst`, row `r` at `dst + r * dst_row_stride`.
///
/// # Safety
/// Those m x n values must be valid for writes and not accessed elsewhere meanwhile.
unsafe fn matmul_raw(
    dst: *mut f32,
    dst_row_stride: usize,
    lhs: &[f32],
    rhs: &[f32],
    [m, n, k]: [usize; 3],
    rhs_transposed: bool,
    accumulate: bool,
) {
    assert!(lhs.len() >= m * k && rhs.len() >= k * n);
    let (rhs_rs, rhs_cs) = if rhs_transposed {
        (1, k as isize)
    } else {
        (n as isize, 1)
    };
    // SAFETY: lhs and rhs are in bounds by the assert; dst by the caller's contract.
    unsafe {
        gemm::gemm(
            m,
            n,
            k,
            dst,
            1,
            dst_row_stride as isize,
            accumulate,
            lhs.as_ptr(),
            1,
            k as isize,
            rhs.as_ptr(),
            rhs_cs,
            rhs_rs,
            if accumulate { 1.0 } else { 0.0 },
            1.0,
            false,
            false,
            false,
            gemm::Parallelism::None,
        );
    }
}

fn input_dims(layout: &Layout, kernel: usize) -> Result<Dims> {
    let &[batch, channels, depth, height, width] = layout.shape().dims() else {
        bail!(
            "conv3d: input must be [N, C, D, H, W], got {:?}",
            layout.shape()
        );
    };
    Ok(Dims {
        batch,
        channels,
        depth,
        height,
        width,
        kernel,
    })
}

/// The forward convolution (also the input gradient, with transposed flipped weights).
struct Conv3d;

impl CustomOp2 for Conv3d {
    fn name(&self) -> &'static str {
        "conv3d"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let &[outputs, channels, k, k2, k3] = l2.shape().dims() else {
            bail!(
                "conv3d: weight must be [O, C, k, k, k], got {:?}",
                l2.shape()
            );
        };
        if k != k2 || k != k3 || k % 2 == 0 {
            bail!("conv3d: kernel must be cubic with an odd size, got {k}x{k2}x{k3}");
        }
        let dims = input_dims(l1, k)?;
        if dims.channels != channels {
            bail!(
                "conv3d: input has {} channels, weight expects {channels}",
                dims.channels
            );
        }
        let input = f32_slice(s1, l1, "conv3d: input")?;
        let weight = f32_slice(s2, l2, "conv3d: weight")?;
        let shape = Shape::from(vec![
            dims.batch,
            outputs,
            dims.depth,
            dims.height,
            dims.width,
        ]);
        let output = if direct::applies(&dims, outputs) {
            direct::forward(&dims, outputs, input, weight)
        } else {
            tiled_forward(&dims, outputs, input, weight)
        };
        Ok((CpuStorage::F32(output), shape))
    }

    fn bwd(
        &self,
        input: &Tensor,
        weight: &Tensor,
        _result: &Tensor,
        grad: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>)> {
        let grad = grad.contiguous()?;
        let grad_input = conv3d(&grad, &transposed_flipped(weight)?)?;
        let grad_weight = input.contiguous()?.apply_op2_no_bwd(
            &grad,
            &Conv3dWeightGrad {
                kernel: weight.dim(2)?,
            },
        )?;
        Ok((Some(grad_input), Some(grad_weight)))
    }
}

/// The forward convolution as im2col tiles multiplied by the weights with gemm: output
/// [N, O, D, H, W] of `input` [N, C, D, H, W] and `weight` [O, C k^3].
fn tiled_forward(dims: &Dims, outputs: usize, input: &[f32], weight: &[f32]) -> Vec<f32> {
    let positions = dims.positions();
    let volume_in = dims.channels * positions;
    let patch = dims.patch();
    let tiles: Vec<(usize, usize)> = (0..dims.batch)
        .flat_map(|n| (0..positions).step_by(TILE).map(move |s| (n, s)))
        .collect();
    let fill = |output: &mut [std::mem::MaybeUninit<f32>]| {
        let out = Output(output.as_mut_ptr().cast());
        tiles.par_iter().for_each_init(
            || vec![0f32; patch * TILE],
            |block, &(n, start)| {
                let len = TILE.min(positions - start);
                let item = &input[n * volume_in..(n + 1) * volume_in];
                dims.im2col(item, start, len, &mut block[..patch * len]);
                // SAFETY: the tile writes (gemm without reading them) positions
                // start..start + len of each of item n's output channels, row o at
                // (n * outputs + o) * positions + start: inside `output`, and no other tile
                // writes them.
                unsafe {
                    matmul_raw(
                        out.at(n * outputs * positions + start),
                        positions,
                        weight,
                        &block[..patch * len],
                        [outputs, len, patch],
                        false,
                        false,
                    )
                };
            },
        );
    };
    // SAFETY: the tiles cover every position of every item and output channel.
    unsafe { written_vec(dims.batch * outputs * positions, fill) }
}

/// Tiles whose weight-gradient contributions one partial sum holds.
const WEIGHT_GRAD_TILES_PER_PARTIAL: usize = 8;

/// Weight gradient: dW[o, c, kz, ky, kx] = sum over batch and positions of
/// grad[n, o, p] * input[n, c, p + (kz, ky, kx) - pad]. Arguments: input, output gradient.
struct Conv3dWeightGrad {
    kernel: usize,
}

impl CustomOp2 for Conv3dWeightGrad {
    fn name(&self) -> &'static str {
        "conv3d-weight-grad"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let dims = input_dims(l1, self.kernel)?;
        let &[batch, outputs, ..] = l2.shape().dims() else {
            bail!("conv3d: gradient must be [N, O, D, H, W]");
        };
        if batch != dims.batch || l2.shape().dims()[2..] != l1.shape().dims()[2..] {
            bail!(
                "conv3d: gradient {:?} does not match input {:?}",
                l2.shape(),
                l1.shape()
            );
        }
        let input = f32_slice(s1, l1, "conv3d: input")?;
        let grad = f32_slice(s2, l2, "conv3d: gradient")?;
        let positions = dims.positions();
        let patch = dims.patch();
        let volume_in = dims.channels * positions;
        let tiles: Vec<(usize, usize)> = (0..dims.batch)
            .flat_map(|n| (0..positions).step_by(TILE).map(move |s| (n, s)))
            .collect();
        // Partial sums over fixed groups of tiles, added in order: the same bits for any thread
        // count or schedule (training runs resume and reproduce exactly).
        // Each thread's im2col block and gradient rows are reused from group to group (both
        // are overwritten before they are read).
        let partials: Vec<Vec<f32>> = tiles
            .par_chunks(WEIGHT_GRAD_TILES_PER_PARTIAL)
            .map_init(
                || (vec![0f32; patch * TILE], vec![0f32; outputs * TILE]),
                |(block, g), group| {
                    let mut acc = vec![0f32; outputs * patch];
                    for &(n, start) in group {
                        let len = TILE.min(positions - start);
                        dims.im2col(
                            &input[n * volume_in..(n + 1) * volume_in],
                            start,
                            len,
                            &mut block[..patch * len],
                        );
                        for o in 0..outputs {
                            let at = (n * outputs + o) * positions + start;
                            g[o * len..(o + 1) * len].copy_from_slice(&grad[at..at + len]);
                        }
                        // acc^T (patch x O) += block (patch x len) x g^T (len x O): the long
                        // dimension (patch) where gemm's microkernel has its many rows, O where it
                        // has its few columns. Each element is the same sum, in the same order, as
                        // acc (O x patch) += g x block^T.
                        matmul(
                            &mut acc,
                            &block[..patch * len],
                            &g[..outputs * len],
                            patch,
                            outputs,
                            len,
                            true,
                            true,
                        );
                    }
                    acc
                },
            )
            .collect();
        let mut sum = vec![0f32; patch * outputs];
        for partial in &partials {
            sum.iter_mut().zip(partial).for_each(|(t, p)| *t += p);
        }
        // patch x O -> O x patch.
        let mut total = vec![0f32; outputs * patch];
        for (row, values) in sum.chunks(outputs).enumerate() {
            for (o, &v) in values.iter().enumerate() {
                total[o * patch + row] = v;
            }
        }
        let k = self.kernel;
        Ok((
            CpuStorage::F32(total),
            Shape::from(vec![outputs, dims.channels, k, k, k]),
        ))
    }
}

/// [O, C, k, k, k] -> [C, O, k, k, k] with every spatial axis reversed: the weights whose
/// convolution with the output gradient gives the input gradient. Reversing the three axes of a
/// k x k x k kernel stored in order reverses its k^3 values, so each kernel is copied backwards
/// (Candle's three `index_select`s took 7% of a `paper` training step).
fn transposed_flipped(weight: &Tensor) -> Result<Tensor> {
    let (outputs, channels, k, k2, k3) = weight.dims5()?;
    let cube = k * k2 * k3;
    let values = weight.flatten_all()?.to_vec1::<f32>()?;
    let mut flipped = vec![0f32; values.len()];
    for (at, kernel) in values.chunks_exact(cube).enumerate() {
        let (o, c) = (at / channels, at % channels);
        let target = &mut flipped[(c * outputs + o) * cube..][..cube];
        target
            .iter_mut()
            .zip(kernel.iter().rev())
            .for_each(|(t, &v)| *t = v);
    }
    Tensor::from_vec(flipped, (channels, outputs, k, k2, k3), weight.device())
}

/// 3-D convolution, stride 1, same zero padding, no bias: x [N, C, D, H, W], w [O, C, k, k, k]
/// (k odd) -> [N, O, D, H, W]. Differentiable in both arguments. f32 on the CPU runs the tiled
/// custom op, and so does f16 on the CPU ([`super::f16_through_f32`]); every other device and
/// dtype (CUDA, f64) runs [`conv3d_composite`].
pub fn conv3d(x: &Tensor, w: &Tensor) -> Result<Tensor> {
    if let Some(y) = super::f16_through_f32(x, w, conv3d)? {
        return Ok(y);
    }
    if x.device().is_cpu() && x.dtype() == candle_core::DType::F32 {
        x.contiguous()?.apply_op2(&w.contiguous()?, Conv3d)
    } else {
        conv3d_composite(x, w)
    }
}

/// Elements of one im2col block of [`conv3d_composite`] (256 Mi f32 = 1 GiB).
const COLUMN_BLOCK_ELEMENTS: usize = 1 << 28;

/// The same convolution as Candle operations, for devices without the custom op (on CUDA the
/// matrix product is one cuBLAS call per item and block): depth slabs of the output, each from
/// the k^3 shifted views of the zero-padded input stacked into im2col columns
/// [N, C k^3, slab H W] and multiplied by the weights [O, C k^3]. A slab's columns hold at most
/// [`COLUMN_BLOCK_ELEMENTS`] (never a whole-volume im2col). Candle's autograd gives both
/// gradients.
fn conv3d_composite(x: &Tensor, w: &Tensor) -> Result<Tensor> {
    conv3d_in_slabs(x, w, COLUMN_BLOCK_ELEMENTS)
}

fn conv3d_in_slabs(x: &Tensor, w: &Tensor, block_elements: usize) -> Result<Tensor> {
    let (n, c, d, h, wd) = x.dims5()?;
    let (o, wc, k, k2, k3) = w.dims5()?;
    if k != k2 || k != k3 || k % 2 == 0 {
        bail!("conv3d: kernel must be cubic with an odd size, got {k}x{k2}x{k3}");
    }
    if wc != c {
        bail!("conv3d: input has {c} channels, weight expects {wc}");
    }
    let pad = k / 2;
    let patch = c * k * k * k;
    let padded = x
        .pad_with_zeros(2, pad, pad)?
        .pad_with_zeros(3, pad, pad)?
        .pad_with_zeros(4, pad, pad)?;
    let weights = w.reshape((o, patch))?;
    let slab = (block_elements / (n * patch * h * wd).max(1)).clamp(1, d);
    let mut slabs = Vec::with_capacity(d.div_ceil(slab));
    for z0 in (0..d).step_by(slab) {
        let depth = slab.min(d - z0);
        let mut shifted = Vec::with_capacity(k * k * k);
        for z in 0..k {
            for y in 0..k {
                for xo in 0..k {
                    shifted.push(
                        padded
                            .narrow(2, z0 + z, depth)?
                            .narrow(3, y, h)?
                            .narrow(4, xo, wd)?,
                    );
                }
            }
        }
        let columns = Tensor::stack(&shifted, 2)?.reshape((n, patch, depth * h * wd))?;
        slabs.push(
            weights
                .broadcast_matmul(&columns)?
                .reshape((n, o, depth, h, wd))?,
        );
    }
    if slabs.len() == 1 {
        return Ok(slabs.remove(0));
    }
    Tensor::cat(&slabs, 2)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::jnsc::testing::values;
    use candle_core::{DType, Device, Var};

    struct Case {
        n: usize,
        c: usize,
        o: usize,
        d: usize,
        h: usize,
        w: usize,
        k: usize,
    }

    /// Naive f64 convolution: out[n, o, z, y, x].
    fn naive(case: &Case, x: &[f32], w: &[f32]) -> Vec<f64> {
        let Case {
            n,
            c,
            o,
            d,
            h,
            w: wd,
            k,
        } = *case;
        let pad = (k / 2) as isize;
        let mut out = vec![0f64; n * o * d * h * wd];
        for b in 0..n {
            for oc in 0..o {
                for z in 0..d {
                    for y in 0..h {
                        for xx in 0..wd {
                            let mut s = 0f64;
                            for ic in 0..c {
                                for kz in 0..k {
                                    for ky in 0..k {
                                        for kx in 0..k {
                                            let (zz, yy, xs) = (
                                                z as isize + kz as isize - pad,
                                                y as isize + ky as isize - pad,
                                                xx as isize + kx as isize - pad,
                                            );
                                            if zz < 0
                                                || yy < 0
                                                || xs < 0
                                                || zz >= d as isize
                                                || yy >= h as isize
                                                || xs >= wd as isize
                                            {
                                                continue;
                                            }
                                            let xi = (((b * c + ic) * d + zz as usize) * h
                                                + yy as usize)
                                                * wd
                                                + xs as usize;
                                            let wi = (((oc * c + ic) * k + kz) * k + ky) * k + kx;
                                            s += f64::from(x[xi]) * f64::from(w[wi]);
                                        }
                                    }
                                }
                            }
                            out[(((b * o + oc) * d + z) * h + y) * wd + xx] = s;
                        }
                    }
                }
            }
        }
        out
    }

    fn cases() -> Vec<Case> {
        vec![
            Case {
                n: 1,
                c: 1,
                o: 1,
                d: 4,
                h: 4,
                w: 4,
                k: 3,
            },
            Case {
                n: 2,
                c: 3,
                o: 5,
                d: 5,
                h: 6,
                w: 7,
                k: 3,
            },
            Case {
                n: 1,
                c: 4,
                o: 2,
                d: 9,
                h: 3,
                w: 11,
                k: 1,
            },
            Case {
                n: 2,
                c: 2,
                o: 3,
                d: 7,
                h: 8,
                w: 5,
                k: 5,
            },
            // More positions than one tile, with a partial last tile.
            Case {
                n: 1,
                c: 2,
                o: 3,
                d: 7,
                h: 9,
                w: 11,
                k: 3,
            },
            // Multiples of 4 output channels: the direct kernel where the CPU has AVX2 (rows of
            // two vectors, one vector and a remainder; k = 1 and 5; the input gradient too).
            Case {
                n: 2,
                c: 3,
                o: 8,
                d: 5,
                h: 4,
                w: 27,
                k: 3,
            },
            Case {
                n: 1,
                c: 2,
                o: 4,
                d: 3,
                h: 5,
                w: 9,
                k: 5,
            },
            Case {
                n: 1,
                c: 5,
                o: 12,
                d: 4,
                h: 3,
                w: 8,
                k: 1,
            },
            Case {
                n: 1,
                c: 4,
                o: 4,
                d: 4,
                h: 5,
                w: 17,
                k: 3,
            },
        ]
    }

    fn max_diff(a: &[f32], b: &[f64]) -> f64 {
        a.iter()
            .zip(b)
            .map(|(x, y)| (f64::from(*x) - y).abs())
            .fold(0.0, f64::max)
    }

    /// The tiled custom op and the Candle-operations version (the one CUDA runs).
    type Conv = fn(&Tensor, &Tensor) -> Result<Tensor>;
    /// The composite in slabs of a few output planes (most cases need several).
    fn conv3d_small_slabs(x: &Tensor, w: &Tensor) -> Result<Tensor> {
        conv3d_in_slabs(x, w, 2000)
    }
    const CONVOLUTIONS: [(&str, Conv); 3] = [
        ("custom op", conv3d),
        ("composite", conv3d_composite),
        ("composite in slabs", conv3d_small_slabs),
    ];

    #[test]
    fn forward_matches_the_naive_convolution() {
        for (i, case) in cases().iter().enumerate() {
            for (variant, conv3d) in CONVOLUTIONS {
                let xs = values(case.n * case.c * case.d * case.h * case.w, 2 * i as u64 + 1);
                let ws = values(case.o * case.c * case.k.pow(3), 2 * i as u64 + 2);
                let x =
                    Tensor::from_slice(&xs, (case.n, case.c, case.d, case.h, case.w), &Device::Cpu)
                        .unwrap();
                let w =
                    Tensor::from_slice(&ws, (case.o, case.c, case.k, case.k, case.k), &Device::Cpu)
                        .unwrap();
                let y = conv3d(&x, &w).unwrap();
                assert_eq!(y.dims(), [case.n, case.o, case.d, case.h, case.w]);
                let got = y.flatten_all().unwrap().to_vec1::<f32>().unwrap();
                let diff = max_diff(&got, &naive(case, &xs, &ws));
                assert!(diff < 1e-4, "{variant} case {i}: max diff {diff}");
            }
        }
    }

    /// Gradients against the naive convolution's exact gradients: with loss = sum(g * y),
    /// dL/dx and dL/dw are sums over the same products the forward makes.
    #[test]
    fn gradients_match_the_naive_gradients() {
        for (i, case) in cases().iter().enumerate() {
            for (variant, conv3d) in CONVOLUTIONS {
                let xs = values(case.n * case.c * case.d * case.h * case.w, 10 + i as u64);
                let ws = values(case.o * case.c * case.k.pow(3), 20 + i as u64);
                let gs = values(case.n * case.o * case.d * case.h * case.w, 30 + i as u64);
                let x = Var::from_tensor(
                    &Tensor::from_slice(
                        &xs,
                        (case.n, case.c, case.d, case.h, case.w),
                        &Device::Cpu,
                    )
                    .unwrap(),
                )
                .unwrap();
                let w = Var::from_tensor(
                    &Tensor::from_slice(
                        &ws,
                        (case.o, case.c, case.k, case.k, case.k),
                        &Device::Cpu,
                    )
                    .unwrap(),
                )
                .unwrap();
                let g =
                    Tensor::from_slice(&gs, (case.n, case.o, case.d, case.h, case.w), &Device::Cpu)
                        .unwrap();
                let loss = (conv3d(x.as_tensor(), w.as_tensor()).unwrap() * &g)
                    .unwrap()
                    .sum_all()
                    .unwrap();
                let grads = loss.backward().unwrap();
                let gx = grads
                    .get(x.as_tensor())
                    .unwrap()
                    .flatten_all()
                    .unwrap()
                    .to_vec1::<f32>()
                    .unwrap();
                let gw = grads
                    .get(w.as_tensor())
                    .unwrap()
                    .flatten_all()
                    .unwrap()
                    .to_vec1::<f32>()
                    .unwrap();
                // Exact gradients by perturbing one coordinate at a time is O(n^2); instead use
                // linearity: dL/dx[j] = L(e_j) for the naive convolution with x = e_j, and likewise
                // for w. Check a spread of coordinates.
                let loss_of = |x: &[f32], w: &[f32]| -> f64 {
                    naive(case, x, w)
                        .iter()
                        .zip(&gs)
                        .map(|(y, g)| y * f64::from(*g))
                        .sum()
                };
                for j in (0..xs.len()).step_by(xs.len() / 17 + 1) {
                    let mut e = vec![0f32; xs.len()];
                    e[j] = 1.0;
                    let expected = loss_of(&e, &ws);
                    assert!(
                        (f64::from(gx[j]) - expected).abs() < 1e-4,
                        "{variant} case {i} dx[{j}]: {} vs {expected}",
                        gx[j]
                    );
                }
                for j in (0..ws.len()).step_by(ws.len() / 13 + 1) {
                    let mut e = vec![0f32; ws.len()];
                    e[j] = 1.0;
                    let expected = loss_of(&xs, &e);
                    assert!(
                        (f64::from(gw[j]) - expected).abs() < 1e-3,
                        "{variant} case {i} dw[{j}]: {} vs {expected}",
                        gw[j]
                    );
                }
            }
        }
    }

    #[test]
    fn gradients_match_finite_differences() {
        let case = Case {
            n: 1,
            c: 2,
            o: 2,
            d: 5,
            h: 4,
            w: 6,
            k: 3,
        };
        let xs = values(case.c * 5 * 4 * 6, 41);
        let ws = values(case.o * case.c * 27, 42);
        let loss = |x: &[f32], w: &[f32]| -> f64 {
            let x = Tensor::from_slice(x, (1, 2, 5, 4, 6), &Device::Cpu).unwrap();
            let w = Tensor::from_slice(w, (2, 2, 3, 3, 3), &Device::Cpu).unwrap();
            let y = conv3d(&x, &w).unwrap();
            f64::from(
                y.sqr()
                    .unwrap()
                    .sum_all()
                    .unwrap()
                    .to_scalar::<f32>()
                    .unwrap(),
            )
        };
        let x = Var::from_tensor(&Tensor::from_slice(&xs, (1, 2, 5, 4, 6), &Device::Cpu).unwrap())
            .unwrap();
        let w = Var::from_tensor(&Tensor::from_slice(&ws, (2, 2, 3, 3, 3), &Device::Cpu).unwrap())
            .unwrap();
        let grads = conv3d(x.as_tensor(), w.as_tensor())
            .unwrap()
            .sqr()
            .unwrap()
            .sum_all()
            .unwrap()
            .backward()
            .unwrap();
        let gw = grads
            .get(w.as_tensor())
            .unwrap()
            .flatten_all()
            .unwrap()
            .to_vec1::<f32>()
            .unwrap();
        let eps = 1e-2f32;
        for j in [0usize, 13, 50, 107] {
            let (mut up, mut down) = (ws.clone(), ws.clone());
            up[j] += eps;
            down[j] -= eps;
            let numeric = (loss(&xs, &up) - loss(&xs, &down)) / (2.0 * f64::from(eps));
            assert!(
                (numeric - f64::from(gw[j])).abs() < 2e-2 * numeric.abs().max(1.0),
                "dw[{j}]: {numeric} vs {}",
                gw[j]
            );
        }
    }

    #[test]
    fn wrong_shapes_are_clear_errors() {
        for (variant, conv3d) in CONVOLUTIONS {
            let x = Tensor::zeros((1, 2, 4, 4, 4), DType::F32, &Device::Cpu).unwrap();
            let w = Tensor::zeros((3, 5, 3, 3, 3), DType::F32, &Device::Cpu).unwrap();
            let e = conv3d(&x, &w).unwrap_err().to_string();
            assert!(e.contains("channels"), "{variant}: {e}");
            let w = Tensor::zeros((3, 2, 2, 2, 2), DType::F32, &Device::Cpu).unwrap();
            let e = conv3d(&x, &w).unwrap_err().to_string();
            assert!(e.contains("odd"), "{variant}: {e}");
        }
        // The custom op itself is f32-only; other dtypes go to the composite.
        let x64 = Tensor::zeros((1, 2, 4, 4, 4), DType::F64, &Device::Cpu).unwrap();
        let w = Tensor::zeros((3, 2, 3, 3, 3), DType::F64, &Device::Cpu).unwrap();
        let e = x64.apply_op2(&w, Conv3d).unwrap_err().to_string();
        assert!(e.contains("f32"), "{e}");
        assert_eq!(conv3d(&x64, &w).unwrap().dims(), [1, 3, 4, 4, 4]);
    }
}
