//! Axis permutation into a new contiguous tensor, fast on the CPU.
//!
//! The network's 2x2x2 down- and up-convolutions (`resize`) are a layout change, a matmul and
//! another layout change. Candle materialises a permuted tensor element by element through a
//! generic strided index, about 9% of an analysis on 2 cores. [`permuted_as`] does the same
//! gather with the strides worked out once per block, blocks in parallel, and takes the reshapes
//! around the permutation into the same op: one node of the autograd graph instead of three
//! (Candle's backward zeroes and adds a gradient of every node's size, so a reshape cost as much
//! in training as the permutation). It only moves values, so every result (inference and
//! training) is unchanged. Its gradient is the inverse permutation. Other devices and dtypes use
//! Candle's `reshape`, `permute` and `contiguous`.

use super::written_vec;
use candle_core::backend::BackendStorage;
use candle_core::{CpuStorage, CustomOp1, DType, Layout, Result, Shape, Tensor, bail};
use rayon::prelude::*;
use std::mem::MaybeUninit;

/// Output elements per parallel task (at least one row).
const TASK_ELEMENTS: usize = 1 << 16;

/// `x.reshape(view).permute(dims).reshape(shape)`, contiguous, as one operation (output axis i
/// of the permutation is axis `dims[i]` of the view).
pub fn permuted_as(x: &Tensor, view: &[usize], dims: &[usize], shape: &[usize]) -> Result<Tensor> {
    if x.device().is_cpu() && x.dtype() == DType::F32 {
        x.contiguous()?.apply_op1(Permute {
            view: view.to_vec(),
            dims: dims.to_vec(),
            shape: shape.to_vec(),
        })
    } else {
        x.reshape(view)?.permute(dims)?.contiguous()?.reshape(shape)
    }
}

/// A contiguous input `view`ed with these sizes, its axes permuted, the result given `shape`
/// (the same number of elements).
struct Permute {
    view: Vec<usize>,
    dims: Vec<usize>,
    shape: Vec<usize>,
}

impl Permute {
    /// The permuted sizes, and the input's strides in that order, for an input of `layout`.
    fn sizes_and_strides(&self, layout: &Layout) -> Result<(Vec<usize>, Vec<usize>)> {
        let view = &self.view;
        if !layout.is_contiguous() || view.iter().product::<usize>() != layout.shape().elem_count()
        {
            bail!("permute: cannot view {:?} as {view:?}", layout.shape());
        }
        let strides = Layout::contiguous(view.clone()).stride().to_vec();
        let mut seen = vec![false; view.len()];
        for &d in &self.dims {
            if d >= view.len() || std::mem::replace(&mut seen[d], true) {
                bail!(
                    "permute: {:?} is not a permutation of {view:?}'s axes",
                    self.dims
                );
            }
        }
        if self.dims.len() != view.len() {
            bail!(
                "permute: {:?} is not a permutation of {view:?}'s axes",
                self.dims
            );
        }
        Ok((
            self.dims.iter().map(|&d| view[d]).collect(),
            self.dims.iter().map(|&d| strides[d]).collect(),
        ))
    }
}

impl CustomOp1 for Permute {
    fn name(&self) -> &'static str {
        "permute"
    }

    fn cpu_fwd(&self, storage: &CpuStorage, layout: &Layout) -> Result<(CpuStorage, Shape)> {
        let CpuStorage::F32(data) = storage else {
            bail!("permute: expected f32, got {:?}", storage.dtype());
        };
        let (sizes, strides) = self.sizes_and_strides(layout)?;
        if self.shape.iter().product::<usize>() != sizes.iter().product::<usize>() {
            bail!("permute: cannot give {sizes:?} the shape {:?}", self.shape);
        }
        let out = gather(data, layout.start_offset(), &sizes, &strides);
        Ok((CpuStorage::F32(out), Shape::from(self.shape.clone())))
    }

    fn bwd(&self, arg: &Tensor, _res: &Tensor, grad_res: &Tensor) -> Result<Option<Tensor>> {
        let mut inverse = vec![0; self.dims.len()];
        for (i, &d) in self.dims.iter().enumerate() {
            inverse[d] = i;
        }
        let sizes: Vec<usize> = self.dims.iter().map(|&d| self.view[d]).collect();
        Ok(Some(permuted_as(grad_res, &sizes, &inverse, arg.dims())?))
    }
}

/// The contiguous array of `sizes` whose element at index (i0, i1, ...) is
/// `source[start + i0 * strides[0] + i1 * strides[1] + ...]`.
fn gather(source: &[f32], start: usize, sizes: &[usize], strides: &[usize]) -> Vec<f32> {
    let total: usize = sizes.iter().product();
    if total == 0 {
        return Vec::new();
    }
    // Blocks are the last `BLOCK_AXES` axes (padded in front with size-1 axes), copied by nested
    // loops; the axes before them are walked like an odometer, once per block. The network's
    // permutations end in axes of 2 (the 2x2x2 blocks of its down- and up-convolutions), so a
    // block of two axes was 4 values, and the walk, not the copy, took the time.
    let r = sizes.len();
    let outer = r.saturating_sub(BLOCK_AXES);
    let mut block = ([1usize; BLOCK_AXES], [0usize; BLOCK_AXES]);
    for (k, a) in (outer..r).enumerate() {
        let at = BLOCK_AXES - (r - outer) + k;
        block.0[at] = sizes[a];
        block.1[at] = strides[a];
    }
    let block_len: usize = block.0.iter().product();
    let (outer_sizes, outer_strides) = (&sizes[..outer], &strides[..outer]);
    let blocks_per_task = (TASK_ELEMENTS / block_len).max(1);
    let fill = |out: &mut [MaybeUninit<f32>]| {
        out.par_chunks_mut(block_len * blocks_per_task)
            .enumerate()
            .for_each(|(task, chunk)| {
                let mut index = vec![0usize; outer];
                let mut rest = task * blocks_per_task;
                for a in (0..outer).rev() {
                    index[a] = rest % outer_sizes[a];
                    rest /= outer_sizes[a];
                }
                let mut base = start
                    + index
                        .iter()
                        .zip(outer_strides)
                        .map(|(i, s)| i * s)
                        .sum::<usize>();
                for out_block in chunk.chunks_mut(block_len) {
                    copy_block(out_block, source, base, block);
                    for a in (0..outer).rev() {
                        index[a] += 1;
                        base += outer_strides[a];
                        if index[a] < outer_sizes[a] {
                            break;
                        }
                        base -= outer_strides[a] * outer_sizes[a];
                        index[a] = 0;
                    }
                }
            });
    };
    // SAFETY: the chunks cover the output, and `copy_block` writes every value of each block (or
    // a source index panics before set_len).
    unsafe { written_vec(total, fill) }
}

/// Axes copied by the nested loops of `copy_block`.
const BLOCK_AXES: usize = 4;

/// Writes `out` (one block: `sizes` in order, the last axis fastest) from `source` at `at` plus
/// `strides`.
fn copy_block(
    out: &mut [MaybeUninit<f32>],
    source: &[f32],
    at: usize,
    (sizes, strides): ([usize; BLOCK_AXES], [usize; BLOCK_AXES]),
) {
    let [n3, n2, n1, n0] = sizes;
    let [s3, s2, s1, s0] = strides;
    let mut lines = out.chunks_exact_mut(n0);
    for i3 in 0..n3 {
        for i2 in 0..n2 {
            for i1 in 0..n1 {
                let from = at + i3 * s3 + i2 * s2 + i1 * s1;
                let line = lines.next().expect("the block has n3 x n2 x n1 lines");
                match (n0, s0) {
                    (2, 1) => {
                        let pair = &source[from..from + 2];
                        line[0].write(pair[0]);
                        line[1].write(pair[1]);
                    }
                    (_, 1) => {
                        for (v, &x) in line.iter_mut().zip(&source[from..from + n0]) {
                            v.write(x);
                        }
                    }
                    _ => {
                        for (j, v) in line.iter_mut().enumerate() {
                            v.write(source[from + j * s0]);
                        }
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{Device, Var};

    fn values(n: usize) -> Vec<f32> {
        (0..n).map(|i| (i as f32 * 0.37).sin()).collect()
    }

    /// `x` with its axes in the order `dims`, its shape unchanged otherwise.
    fn permuted(x: &Tensor, dims: &[usize]) -> Result<Tensor> {
        let sizes: Vec<usize> = dims.iter().map(|&d| x.dim(d).unwrap_or(0)).collect();
        permuted_as(x, x.dims(), dims, &sizes)
    }

    #[test]
    fn matches_candles_permute_on_every_shape_the_network_uses() {
        let cases: [(&[usize], &[usize]); 5] = [
            (&[2, 3, 4, 6, 2], &[0, 2, 3, 4, 1]),
            (&[2, 4, 6, 2, 3], &[0, 4, 1, 2, 3]),
            (&[1, 3, 2, 2, 3, 2, 2, 2], &[0, 2, 4, 6, 1, 3, 5, 7]),
            (&[2, 2, 3, 1, 3, 2, 2, 2], &[0, 4, 1, 5, 2, 6, 3, 7]),
            (&[5], &[0]),
        ];
        for (shape, dims) in cases {
            let n = shape.iter().product();
            let x = Tensor::from_vec(values(n), shape, &Device::Cpu).unwrap();
            let ours = permuted(&x, dims).unwrap();
            let candle = x.permute(dims).unwrap().contiguous().unwrap();
            assert_eq!(ours.dims(), candle.dims());
            assert_eq!(
                ours.flatten_all().unwrap().to_vec1::<f32>().unwrap(),
                candle.flatten_all().unwrap().to_vec1::<f32>().unwrap(),
                "{shape:?} {dims:?}"
            );
        }
    }

    #[test]
    fn takes_transposed_views_and_large_inputs_across_tasks() {
        // A transposed (non-contiguous) view, made contiguous before the op, and enough
        // elements for several tasks.
        let x = Tensor::from_vec(values(3 * 70 * 700), (3, 70, 700), &Device::Cpu).unwrap();
        let view = x.transpose(1, 2).unwrap();
        let ours = permuted(&view, &[2, 0, 1]).unwrap();
        let candle = view.permute((2, 0, 1)).unwrap().contiguous().unwrap();
        assert_eq!(
            ours.flatten_all().unwrap().to_vec1::<f32>().unwrap(),
            candle.flatten_all().unwrap().to_vec1::<f32>().unwrap()
        );
    }

    #[test]
    fn the_gradient_is_the_inverse_permutation() {
        let x = Var::from_vec(values(24), (2, 3, 4), &Device::Cpu).unwrap();
        let weights = Tensor::from_vec(values(24), (4, 2, 3), &Device::Cpu)
            .unwrap()
            .affine(2.0, 1.0)
            .unwrap();
        let ours = permuted(x.as_tensor(), &[2, 0, 1]).unwrap();
        let loss = (ours * &weights).unwrap().sum_all().unwrap();
        let grad = loss.backward().unwrap();
        let expected = weights.permute((1, 2, 0)).unwrap().contiguous().unwrap();
        assert_eq!(
            grad.get(&x)
                .unwrap()
                .flatten_all()
                .unwrap()
                .to_vec1::<f32>()
                .unwrap(),
            expected.flatten_all().unwrap().to_vec1::<f32>().unwrap()
        );
    }

    #[test]
    fn permuted_as_is_reshape_permute_reshape_and_so_is_its_gradient() {
        let (view, dims, shape) = ([2, 3, 2, 2], [0, 2, 1, 3], [4, 6]);
        let x = Var::from_vec(values(24), (2, 6, 2), &Device::Cpu).unwrap();
        let weights = Tensor::from_vec(values(24), (4, 6), &Device::Cpu)
            .unwrap()
            .affine(3.0, -1.0)
            .unwrap();
        let reference = |t: &Tensor| {
            t.reshape(&view[..])
                .unwrap()
                .permute(&dims[..])
                .unwrap()
                .contiguous()
                .unwrap()
                .reshape(&shape[..])
                .unwrap()
        };
        let ours = permuted_as(x.as_tensor(), &view, &dims, &shape).unwrap();
        let theirs = reference(x.as_tensor());
        assert_eq!(ours.dims(), theirs.dims());
        let flat = |t: &Tensor| t.flatten_all().unwrap().to_vec1::<f32>().unwrap();
        assert_eq!(flat(&ours), flat(&theirs));
        let grad = |y: Tensor| {
            let g = (y * &weights)
                .unwrap()
                .sum_all()
                .unwrap()
                .backward()
                .unwrap();
            flat(g.get(&x).unwrap())
        };
        assert_eq!(grad(ours), grad(theirs));
        assert!(permuted_as(x.as_tensor(), &[5, 5], &[1, 0], &[25]).is_err());
        assert!(permuted_as(x.as_tensor(), &view, &dims, &[5, 5]).is_err());
    }

    #[test]
    fn a_wrong_permutation_is_an_error() {
        let x = Tensor::zeros((2, 3), DType::F32, &Device::Cpu).unwrap();
        assert!(permuted(&x, &[0, 0]).is_err());
        assert!(permuted(&x, &[0]).is_err());
    }
}
