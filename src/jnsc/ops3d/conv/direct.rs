//! The forward convolution of `conv` computed directly, without im2col, for layers with few
//! channels (the encoder's and decoder's full- and half-resolution levels): AVX2 + FMA, chosen
//! at run time.
//!
//! With 8 output channels, gemm's microkernel (16 x 6 values) runs a third empty, and the
//! im2col block moves more bytes than the products take. Here each output row is computed from
//! a zero-padded copy of the input: four output channels at once, two vectors of eight
//! positions along x, each input vector loaded once for the four channels and each weight
//! once for the two vectors; the rows the next output row reads are prefetched (the hardware
//! prefetchers do not follow the channels x kernel rows one output row reads at once).
//!
//! Each value is summed over (channel, kz, ky, kx) in the order of im2col's rows, one fused
//! multiply-add at a time from zero: the order gemm's AVX2 microkernel sums one block of k in.
//! So, up to [`MAX_PATCH`] rows, where gemm sums in one block, the two give the same bits
//! (`the_direct_kernel_gives_gemm_s_bits`), training stays reproducible and the shipped
//! models are reproduced exactly. Wider layers keep gemm.

use super::{Dims, Output, written_vec};
use rayon::prelude::*;

/// Output channels computed together.
const GROUP: usize = 4;
/// f32 values in an AVX2 vector.
const LANES: usize = 8;
/// The most output channels the direct kernel takes (at 32 and more, gemm's microkernel is full
/// and was as fast).
const MAX_OUTPUTS: usize = 16;
/// The most im2col rows (C k^3) the direct kernel takes: 16 channels of 3^3, which gemm's AVX2
/// kernels sum in one block of k.
const MAX_PATCH: usize = 432;

/// Whether the direct kernel runs this problem here: a CPU with AVX2 and FMA, output channels
/// a multiple of 4 up to 16, at most 432 im2col rows, rows of at least one vector.
pub(super) fn applies(dims: &Dims, outputs: usize) -> bool {
    outputs.is_multiple_of(GROUP)
        && outputs <= MAX_OUTPUTS
        && dims.patch() <= MAX_PATCH
        && dims.width >= LANES
        && has_avx2_fma()
}

#[cfg(target_arch = "x86_64")]
fn has_avx2_fma() -> bool {
    std::arch::is_x86_feature_detected!("avx2") && std::arch::is_x86_feature_detected!("fma")
}

#[cfg(not(target_arch = "x86_64"))]
fn has_avx2_fma() -> bool {
    false
}

/// The convolution's output [N, O, D, H, W] of `input` [N, C, D, H, W] and `weight`
/// [O, C k^3]. Callers check `applies` first.
pub(super) fn forward(dims: &Dims, outputs: usize, input: &[f32], weight: &[f32]) -> Vec<f32> {
    let (depth, height, width) = (dims.depth, dims.height, dims.width);
    let positions = dims.positions();
    let rows = dims.patch();
    assert!(input.len() == dims.batch * dims.channels * positions);
    assert!(weight.len() == outputs * rows);
    assert!(applies(dims, outputs));
    let padded = Padded::new(dims, input);
    // Weights by group of four channels, then by im2col row: one row's four weights adjacent.
    let mut grouped = vec![0f32; outputs * rows];
    for o in 0..outputs {
        let (group, lane) = (o / GROUP, o % GROUP);
        for r in 0..rows {
            grouped[(group * rows + r) * GROUP + lane] = weight[o * rows + r];
        }
    }
    let planes: Vec<(usize, usize)> = (0..dims.batch)
        .flat_map(|n| (0..depth).map(move |z| (n, z)))
        .collect();
    let fill = |output: &mut [std::mem::MaybeUninit<f32>]| {
        let out = Output(output.as_mut_ptr().cast());
        planes.par_iter().for_each(|&(n, z)| {
            for y in 0..height {
                padded.prefetch_next(n, z, y);
                for group in 0..outputs / GROUP {
                    let weights = &grouped[group * rows * GROUP..(group + 1) * rows * GROUP];
                    // Row y of plane z of output channel group * 4 + j of item n.
                    let targets: [*mut f32; GROUP] = std::array::from_fn(|j| {
                        let channel = n * outputs + group * GROUP + j;
                        out.at(((channel * depth + z) * height + y) * width)
                    });
                    // SAFETY: `applies` found AVX2 and FMA; each target row holds `width`
                    // values that only this (n, z) task writes.
                    unsafe { output_row(&padded, n, z, y, weights, targets) };
                }
            }
        });
    };
    // SAFETY: the tasks write every row of every (item, channel, plane).
    unsafe { written_vec(dims.batch * outputs * positions, fill) }
}

/// The input with `kernel / 2` zeros around each channel's volume.
struct Padded {
    values: Vec<f32>,
    channels: usize,
    depth: usize,
    height: usize,
    width: usize,
    /// Values from one plane to the next: the plane's, and a gap (see [`plane_stride`]).
    plane: usize,
    kernel: usize,
}

/// The distance between planes of `values` values: whole cache lines, an odd number of them.
/// An output row reads 3 x 3 rows of each channel at once (144 rows for 16 channels). Planes of
/// 130 x 130 values (a 128^3 window) are 1056.25 lines apart and channels an even number of
/// lines too, so those rows fell in a few of the L1 cache's 64 sets and evicted each other. The
/// gap spreads them: the decoder's 16 -> 8 convolution on 128^3 took 370-410 ms before, 295-332
/// ms after (2 cores, three alternating runs each), with the same bits.
fn plane_stride(values: usize) -> usize {
    const LINE: usize = 16;
    let lines = values.div_ceil(LINE);
    (lines + 1 - lines % 2) * LINE
}

impl Padded {
    fn new(dims: &Dims, input: &[f32]) -> Self {
        let pad = dims.kernel / 2;
        let (depth, height, width) = (
            dims.depth + 2 * pad,
            dims.height + 2 * pad,
            dims.width + 2 * pad,
        );
        let plane = plane_stride(height * width);
        let source_plane = dims.height * dims.width;
        let fill = |values: &mut [std::mem::MaybeUninit<f32>]| {
            let zero = std::mem::MaybeUninit::new(0f32);
            values
                .par_chunks_mut(plane)
                .enumerate()
                .for_each(|(at, target)| {
                    let (volume, z) = (at / depth, at % depth);
                    if z < pad || z >= pad + dims.depth {
                        target.fill(zero);
                        return;
                    }
                    let source =
                        &input[(volume * dims.depth + z - pad) * source_plane..][..source_plane];
                    let (rows, gap) = target.split_at_mut(height * width);
                    gap.fill(zero);
                    for (y, row) in rows.chunks_exact_mut(width).enumerate() {
                        if y < pad || y >= pad + dims.height {
                            row.fill(zero);
                            continue;
                        }
                        let from = &source[(y - pad) * dims.width..][..dims.width];
                        row[..pad].fill(zero);
                        for (t, &v) in row[pad..pad + dims.width].iter_mut().zip(from) {
                            *t = std::mem::MaybeUninit::new(v);
                        }
                        row[pad + dims.width..].fill(zero);
                    }
                });
        };
        // SAFETY: every plane is either all zeros or rows of zeros and copied values.
        let values = unsafe { written_vec(dims.batch * dims.channels * depth * plane, fill) };
        Self {
            values,
            channels: dims.channels,
            depth,
            height,
            width,
            plane,
            kernel: dims.kernel,
        }
    }

    /// Asks for the rows that output row (z, y + 1) reads and (z, y) does not.
    fn prefetch_next(&self, n: usize, z: usize, y: usize) {
        #[cfg(target_arch = "x86_64")]
        {
            use std::arch::x86_64::{_MM_HINT_T0, _mm_prefetch};
            if y + self.kernel >= self.height {
                return;
            }
            for c in 0..self.channels {
                for dz in 0..self.kernel {
                    let row = self.row(n, c, z + dz, y + self.kernel);
                    for line in row.chunks(16) {
                        // SAFETY: a prefetch of an address inside the row.
                        unsafe { _mm_prefetch::<_MM_HINT_T0>(line.as_ptr().cast()) };
                    }
                }
            }
        }
    }

    /// Row y of plane z (padded coordinates) of channel c of item n.
    fn row(&self, n: usize, c: usize, z: usize, y: usize) -> &[f32] {
        let at = ((n * self.channels + c) * self.depth + z) * self.plane + y * self.width;
        &self.values[at..at + self.width]
    }
}

/// One output row (`width` values) of four output channels: chunks of 16 positions (two vectors:
/// 8 accumulators), then of 8, then one at a time.
///
/// # Safety
/// The CPU has AVX2 and FMA; each target points at `width` writable values.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn output_row(
    padded: &Padded,
    n: usize,
    z: usize,
    y: usize,
    weights: &[f32],
    targets: [*mut f32; GROUP],
) {
    let width = padded.width + 1 - padded.kernel;
    let mut x = 0;
    while x + 2 * LANES <= width {
        // SAFETY: as this function's, with x + 16 <= width.
        unsafe { chunk::<2>(padded, n, z, y, x, weights, targets) };
        x += 2 * LANES;
    }
    while x + LANES <= width {
        // SAFETY: as this function's, with x + 8 <= width.
        unsafe { chunk::<1>(padded, n, z, y, x, weights, targets) };
        x += LANES;
    }
    // The last width % 8 positions, one at a time, summed in the same order.
    let k = padded.kernel;
    for x in x..width {
        let mut acc = [0f32; GROUP];
        let mut r = 0;
        for c in 0..padded.channels {
            for dz in 0..k {
                for dy in 0..k {
                    let source = &padded.row(n, c, z + dz, y + dy)[x..x + k];
                    for &value in source {
                        for (j, a) in acc.iter_mut().enumerate() {
                            *a = weights[r * GROUP + j].mul_add(value, *a);
                        }
                        r += 1;
                    }
                }
            }
        }
        for (j, a) in acc.iter().enumerate() {
            // SAFETY: x < width, inside target j's row.
            unsafe { *targets[j].add(x) = *a };
        }
    }
}

/// Positions x..x + 8 V of one output row, for the `GROUP` channels of `weights`.
///
/// # Safety
/// The CPU has AVX2 and FMA; x + 8 V <= the output width; each target points at the row's
/// writable values.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
#[inline]
unsafe fn chunk<const V: usize>(
    padded: &Padded,
    n: usize,
    z: usize,
    y: usize,
    x: usize,
    weights: &[f32],
    targets: [*mut f32; GROUP],
) {
    use std::arch::x86_64::*;
    let k = padded.kernel;
    let mut acc = [[_mm256_setzero_ps(); V]; GROUP];
    let mut w = weights.as_ptr();
    for c in 0..padded.channels {
        for dz in 0..k {
            for dy in 0..k {
                let source = padded.row(n, c, z + dz, y + dy)[x..x + V * LANES - 1 + k].as_ptr();
                for dx in 0..k {
                    // SAFETY: the loads end at x + dx + 8 V <= x + 8 V - 1 + k, inside the
                    // slice above; `w` walks the group's rows x GROUP weights, which `weights`
                    // holds exactly.
                    unsafe {
                        let values: [__m256; V] =
                            std::array::from_fn(|v| _mm256_loadu_ps(source.add(dx + v * LANES)));
                        for (j, row) in acc.iter_mut().enumerate() {
                            let weight = _mm256_broadcast_ss(&*w.add(j));
                            for (a, &value) in row.iter_mut().zip(&values) {
                                *a = _mm256_fmadd_ps(weight, value, *a);
                            }
                        }
                        w = w.add(GROUP);
                    }
                }
            }
        }
    }
    for (j, row) in acc.iter().enumerate() {
        for (v, a) in row.iter().enumerate() {
            // SAFETY: x + 8 V <= width, inside target j's row.
            unsafe { _mm256_storeu_ps(targets[j].add(x + v * LANES), *a) };
        }
    }
}

#[cfg(not(target_arch = "x86_64"))]
unsafe fn output_row(
    _padded: &Padded,
    _n: usize,
    _z: usize,
    _y: usize,
    _weights: &[f32],
    _targets: [*mut f32; GROUP],
) {
    unreachable!("the direct convolution needs AVX2 and FMA (see `applies`)")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::jnsc::ops3d::GemmKernels;
    use crate::jnsc::testing::values;

    /// Against the im2col + gemm path on the network's layer shapes (reduced in size): the same
    /// bits where gemm runs its AVX2 kernels; within rounding where it runs AVX-512's.
    #[test]
    fn the_direct_kernel_gives_gemm_s_bits() {
        if !has_avx2_fma() {
            eprintln!("no AVX2 + FMA here: the direct kernel never runs");
            return;
        }
        // (channels, outputs, size, kernel): the first level's encoder and decoder and their
        // input gradients, the second level's, a 1 x 1 x 1 layer.
        let layers = [
            (1, 8, 24, 3),
            (16, 8, 20, 3),
            (8, 16, 20, 3),
            (8, 8, 18, 3),
            (16, 16, 12, 3),
            (12, 4, 10, 1),
        ];
        let same_kernels = GemmKernels::here() != GemmKernels::Avx512;
        for (i, &(channels, outputs, size, kernel)) in layers.iter().enumerate() {
            let dims = Dims {
                batch: 2,
                channels,
                depth: size - 2,
                height: size - 1,
                width: size + 3,
                kernel,
            };
            assert!(applies(&dims, outputs), "layer {i}");
            let input = values(dims.batch * channels * dims.positions(), 10 + i as u64);
            let weight = values(outputs * dims.patch(), 20 + i as u64);
            let direct = forward(&dims, outputs, &input, &weight);
            let gemm = super::super::tiled_forward(&dims, outputs, &input, &weight);
            assert_eq!(direct.len(), gemm.len());
            for (at, (d, g)) in direct.iter().zip(&gemm).enumerate() {
                if same_kernels {
                    assert_eq!(
                        d.to_bits(),
                        g.to_bits(),
                        "layer {i}, value {at}: {d} vs {g}"
                    );
                } else {
                    assert!(
                        (d - g).abs() <= 1e-5 * (1.0 + g.abs()),
                        "layer {i}, value {at}"
                    );
                }
            }
        }
    }

    #[test]
    fn planes_are_an_odd_number_of_cache_lines_apart() {
        for values in [1, 16, 17, 4356, 16900, 16916] {
            let stride = plane_stride(values);
            assert!(
                stride >= values && stride < values + 32,
                "{values}: {stride}"
            );
            assert_eq!(stride % 16, 0);
            assert_eq!(stride / 16 % 2, 1, "{values}: {stride}");
        }
    }

    #[test]
    fn wide_layers_and_short_rows_keep_gemm() {
        let dims = |channels, width| Dims {
            batch: 1,
            channels,
            depth: 4,
            height: 4,
            width,
            kernel: 3,
        };
        assert!(!applies(&dims(32, 16), 16), "864 im2col rows");
        assert!(!applies(&dims(8, 16), 32), "32 outputs");
        assert!(!applies(&dims(8, 16), 6), "not a multiple of 4");
        assert!(!applies(&dims(8, 7), 8), "rows shorter than a vector");
    }
}
