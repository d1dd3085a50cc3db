//! Pooling: the encoder's 2x2x2 max-pooling, and the classification path's crop of a candidate's
//! box and adaptive max-pooling to a fixed size (PyTorch's bins), as Candle operations.

use super::even_spatial;
use candle_core::{Result, Tensor, bail};

/// 2x2x2 max-pooling with stride 2: [N, C, D, H, W] (even sizes) -> [N, C, D/2, H/2, W/2].
pub fn max_pool2(x: &Tensor) -> Result<Tensor> {
    let (n, c, d, h, w) = even_spatial(x, "max_pool2")?;
    x.reshape(vec![n, c, d / 2, 2, h / 2, 2, w / 2, 2])?
        .max(7)?
        .max(5)?
        .max(3)
}

/// Crops [N, C, D, H, W] to the box `start..=end` (inclusive, per spatial axis).
pub fn crop(x: &Tensor, start: [usize; 3], end: [usize; 3]) -> Result<Tensor> {
    let mut region = x.clone();
    for axis in 0..3 {
        if end[axis] < start[axis] || end[axis] >= x.dim(axis + 2)? {
            bail!("crop: box {start:?}..={end:?} outside {:?}", x.dims());
        }
        region = region.narrow(axis + 2, start[axis], end[axis] - start[axis] + 1)?;
    }
    Ok(region)
}

/// Max-pools [N, C, D, H, W] to `size`^3 with PyTorch's adaptive bins (bin i of an axis of
/// length L covers floor(i L / size) .. ceil((i + 1) L / size)).
pub fn adaptive_max_pool(x: &Tensor, size: usize) -> Result<Tensor> {
    let mut pooled = x.clone();
    for axis in 0..3 {
        let dim = axis + 2;
        let length = pooled.dim(dim)?;
        let bins = (0..size)
            .map(|i| {
                let lo = i * length / size;
                let hi = ((i + 1) * length).div_ceil(size);
                pooled.narrow(dim, lo, hi - lo)?.max_keepdim(dim)
            })
            .collect::<Result<Vec<_>>>()?;
        pooled = Tensor::cat(&bins, dim)?;
    }
    Ok(pooled)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::jnsc::testing::{flat, tensor, values};

    #[test]
    fn max_pool_matches_the_naive_reference() {
        let (n, c, d, h, w) = (2, 3, 4, 2, 6);
        let xs = values(n * c * d * h * w, 71);
        let x = tensor(&xs, &[n, c, d, h, w]);
        let pooled = flat(&max_pool2(&x).unwrap());
        for (i, got) in pooled.iter().enumerate() {
            // Pooled shape [2, 3, 2, 1, 3]: x fastest, one row, two slices per item-channel.
            let (x2, z2, ch) = (i % 3, (i / 3) % 2, i / 6);
            let mut best = f32::MIN;
            for k in 0..8 {
                let (kz, ky, kx) = (k / 4, (k / 2) % 2, k % 2);
                best = best.max(xs[((ch * d + 2 * z2 + kz) * h + ky) * w + 2 * x2 + kx]);
            }
            assert_eq!(*got, best);
        }
    }

    #[test]
    fn crop_and_adaptive_pool_use_pytorch_bins() {
        let (d, h, w) = (5, 6, 7);
        let xs = values(2 * d * h * w, 81);
        let x = tensor(&xs, &[1, 2, d, h, w]);
        let (start, end) = ([1, 0, 2], [3, 4, 6]);
        let pooled = flat(&adaptive_max_pool(&crop(&x, start, end).unwrap(), 2).unwrap());
        let bins = |lo: usize, hi: usize| {
            let len = hi - lo + 1;
            [(lo, lo + len.div_ceil(2)), (lo + len / 2, hi + 1)]
        };
        let (bz, by, bx) = (bins(1, 3), bins(0, 4), bins(2, 6));
        let mut i = 0;
        for ch in 0..2 {
            for z in bz {
                for y in by {
                    for xr in bx {
                        let mut best = f32::MIN;
                        for zz in z.0..z.1 {
                            for yy in y.0..y.1 {
                                for xx in xr.0..xr.1 {
                                    best = best.max(xs[((ch * d + zz) * h + yy) * w + xx]);
                                }
                            }
                        }
                        assert_eq!(pooled[i], best);
                        i += 1;
                    }
                }
            }
        }
        let single = flat(&adaptive_max_pool(&crop(&x, [2, 2, 2], [2, 2, 2]).unwrap(), 2).unwrap());
        assert!(single[..8].iter().all(|v| *v == xs[(2 * h + 2) * w + 2]));
        assert!(crop(&x, [0, 0, 0], [5, 1, 1]).is_err());
    }
}
