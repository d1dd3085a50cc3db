//! V-Net's resolution changes: the 2x2x2 stride-2 down-convolution and the 2x2x2 stride-2
//! transposed up-convolution, each a permutation (`permuted_as`), a matmul and another
//! permutation, so Candle derives their gradients. f16 on the CPU computes in f32
//! (`super::f16_through_f32`).

use super::even_spatial;
use super::permuted_as;
use candle_core::{Result, Tensor};

/// 2x2x2 convolution with stride 2 (V-Net's down-convolution): x [N, C, D, H, W] (even sizes),
/// w [O, C, 2, 2, 2] -> [N, O, D/2, H/2, W/2].
pub fn down_conv(x: &Tensor, w: &Tensor) -> Result<Tensor> {
    if let Some(y) = super::f16_through_f32(x, w, down_conv)? {
        return Ok(y);
    }
    let (n, c, d, h, wd) = even_spatial(x, "down_conv")?;
    let o = w.dim(0)?;
    let (d2, h2, w2) = (d / 2, h / 2, wd / 2);
    // Each output voxel's 2x2x2 input block as a row.
    let patches = permuted_as(
        x,
        &[n, c, d2, 2, h2, 2, w2, 2],
        &[0, 2, 4, 6, 1, 3, 5, 7],
        &[n * d2 * h2 * w2, c * 8],
    )?;
    let y = patches.matmul(&w.reshape((o, c * 8))?.t()?)?;
    permuted_as(
        &y,
        &[n, d2, h2, w2, o],
        &[0, 4, 1, 2, 3],
        &[n, o, d2, h2, w2],
    )
}

/// 2x2x2 transposed convolution with stride 2 (V-Net's up-convolution): x [N, C, D, H, W],
/// w [C, O, 2, 2, 2] (PyTorch's ConvTranspose3d layout) -> [N, O, 2D, 2H, 2W].
pub fn up_conv(x: &Tensor, w: &Tensor) -> Result<Tensor> {
    if let Some(y) = super::f16_through_f32(x, w, up_conv)? {
        return Ok(y);
    }
    let (n, c, d, h, wd) = x.dims5()?;
    let o = w.dim(1)?;
    let y = permuted_as(x, &[n, c, d, h, wd], &[0, 2, 3, 4, 1], &[n * d * h * wd, c])?
        .matmul(&w.reshape((c, o * 8))?)?;
    permuted_as(
        &y,
        &[n, d, h, wd, o, 2, 2, 2],
        &[0, 4, 1, 5, 2, 6, 3, 7],
        &[n, o, 2 * d, 2 * h, 2 * wd],
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::jnsc::testing::{flat, tensor, values};

    #[test]
    fn down_conv_matches_the_naive_strided_convolution() {
        let (n, c, o, d, h, w) = (2, 3, 4, 4, 6, 2);
        let xs = values(n * c * d * h * w, 51);
        let ws = values(o * c * 8, 52);
        let y = flat(
            &down_conv(
                &tensor(&xs, &[n, c, d, h, w]),
                &tensor(&ws, &[o, c, 2, 2, 2]),
            )
            .unwrap(),
        );
        let (d2, h2, w2) = (d / 2, h / 2, w / 2);
        for b in 0..n {
            for oc in 0..o {
                for z in 0..d2 {
                    for yy in 0..h2 {
                        for x in 0..w2 {
                            let mut s = 0f64;
                            for ic in 0..c {
                                for k in 0..8 {
                                    let (kz, ky, kx) = (k / 4, (k / 2) % 2, k % 2);
                                    let xi = (((b * c + ic) * d + 2 * z + kz) * h + 2 * yy + ky)
                                        * w
                                        + 2 * x
                                        + kx;
                                    s += f64::from(xs[xi]) * f64::from(ws[(oc * c + ic) * 8 + k]);
                                }
                            }
                            let got = y[(((b * o + oc) * d2 + z) * h2 + yy) * w2 + x];
                            assert!((f64::from(got) - s).abs() < 1e-5, "{got} vs {s}");
                        }
                    }
                }
            }
        }
        assert!(
            down_conv(
                &tensor(&values(27, 1), &[1, 1, 3, 3, 3]),
                &tensor(&ws[..8], &[1, 1, 2, 2, 2])
            )
            .is_err()
        );
    }

    #[test]
    fn up_conv_matches_the_naive_transposed_convolution() {
        let (n, c, o, d, h, w) = (2, 3, 2, 3, 2, 5);
        let xs = values(n * c * d * h * w, 61);
        let ws = values(c * o * 8, 62);
        let y = flat(
            &up_conv(
                &tensor(&xs, &[n, c, d, h, w]),
                &tensor(&ws, &[c, o, 2, 2, 2]),
            )
            .unwrap(),
        );
        let (dd, hh, ww) = (2 * d, 2 * h, 2 * w);
        for b in 0..n {
            for oc in 0..o {
                for z in 0..dd {
                    for yy in 0..hh {
                        for x in 0..ww {
                            let k = (z % 2) * 4 + (yy % 2) * 2 + x % 2;
                            let s: f64 = (0..c)
                                .map(|ic| {
                                    let xi = (((b * c + ic) * d + z / 2) * h + yy / 2) * w + x / 2;
                                    f64::from(xs[xi]) * f64::from(ws[(ic * o + oc) * 8 + k])
                                })
                                .sum();
                            let got = y[(((b * o + oc) * dd + z) * hh + yy) * ww + x];
                            assert!((f64::from(got) - s).abs() < 1e-5, "{got} vs {s}");
                        }
                    }
                }
            }
        }
    }
}
