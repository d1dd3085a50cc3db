//! A second source of candidates beside the location map: bright blobs inside the lungs, found
//! by a multi-scale, scale-normalised Laplacian of Gaussian and kept where the Hessian at the
//! blob's scale says "ball", not "tube" or "sheet" (all three eigenvalues negative, the smallest
//! in magnitude a sizeable fraction of the largest). It is the classical CAD "dot filter"; the
//! classification path then decides what each blob is. It exists for the nodules the network's
//! map does not mark (on the validation phantoms, mostly ones attached to a vessel or the
//! pleura, see models/README.md).

use crate::volume::Volume;
use rayon::prelude::*;

/// Scales (Gaussian sigma, voxels of the 1 mm grid) searched: a ball of radius about
/// sigma x sqrt(3) answers most strongly at sigma, so these cover diameters of about 4-17 mm.
const SIGMAS: [f64; 5] = [1.2, 1.8, 2.6, 3.6, 5.0];
/// HU window the filter sees: air to soft tissue (bone and contrast do not make brighter blobs).
const HU_RANGE: (f32, f32) = (-1000.0, 100.0);
/// Weakest scale-normalised response kept (HU): a faint ground-glass blob of 3-4 mm still
/// passes, noise does not.
const MIN_RESPONSE: f32 = 40.0;
/// Least ratio of the Hessian's smallest to largest eigenvalue magnitude: 1 for a ball, 0 for a
/// tube or a sheet.
const MIN_DOTNESS: f32 = 0.2;

/// Whether blobs join the findings, and how they are scored.
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize)]
pub struct BlobSearch {
    /// Blobs classified per scan, best first, among those no map finding already covers
    /// (0: the map's findings only).
    pub candidates: usize,
    /// A blob finding's p(nodule) is this x (1 - p(non-nodule)): the map, which does not mark
    /// it, has no say.
    pub weight: f64,
}

impl Default for BlobSearch {
    fn default() -> Self {
        Self {
            candidates: 0,
            weight: 0.5,
        }
    }
}

/// One blob: its centre (voxel index of the grid searched), scale and strength.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Blob {
    pub center: [usize; 3],
    /// Radius of the ball the blob's scale answers to, in voxels (sigma x sqrt(3)).
    pub radius: f64,
    /// Scale-normalised LoG response (HU).
    pub response: f32,
    /// Smallest over largest Hessian eigenvalue magnitude (0..1).
    pub dotness: f32,
}

impl Blob {
    /// What blobs are ranked by: strong and round first.
    pub fn score(&self) -> f32 {
        self.response * self.dotness
    }
}

/// The blobs of `hu` (an isotropic volume) whose centres lie where `mask` is non-zero, best
/// first (by [`Blob::score`]), at most `limit`.
pub fn find(hu: &Volume<f32>, mask: &Volume<u8>, limit: usize) -> Vec<Blob> {
    let size = hu.geometry.size;
    let [ni, nj, nk] = size;
    if ni < 5 || nj < 5 || nk < 5 || limit == 0 {
        return Vec::new();
    }
    let image: Vec<f32> = hu
        .data
        .iter()
        .map(|v| v.clamp(HU_RANGE.0, HU_RANGE.1))
        .collect();
    let plane = ni * nj;
    // Each voxel's strongest response over the scales, and at which scale.
    let mut best = vec![0f32; image.len()];
    let mut best_scale = vec![0u8; image.len()];
    for (scale, &sigma) in SIGMAS.iter().enumerate() {
        let g = gaussian(&image, size, sigma);
        let norm = (sigma * sigma) as f32;
        best.par_chunks_mut(plane)
            .zip(best_scale.par_chunks_mut(plane))
            .enumerate()
            .filter(|(z, _)| *z >= 1 && *z + 1 < nk)
            .for_each(|(z, (best, best_scale))| {
                for y in 1..nj - 1 {
                    for x in 1..ni - 1 {
                        let i = x + y * ni + z * plane;
                        if mask.data[i] == 0 {
                            continue;
                        }
                        let laplacian = g[i + 1] + g[i - 1] + g[i + ni] + g[i - ni] + g[i + plane]
                            - 6.0 * g[i]
                            + g[i - plane];
                        let response = -norm * laplacian;
                        let o = x + y * ni;
                        if response > best[o] {
                            best[o] = response;
                            best_scale[o] = scale as u8;
                        }
                    }
                }
            });
    }
    // Local maxima of that response, then the shape at each one's own scale (the smoothed
    // volumes are made again rather than all kept: one at a time bounds the memory).
    let maxima: Vec<(usize, [usize; 3])> = (2..nk.saturating_sub(2))
        .into_par_iter()
        .flat_map_iter(|z| {
            let best = &best;
            (2..nj - 2).flat_map(move |y| {
                (2..ni - 2).filter_map(move |x| {
                    let i = x + y * ni + z * plane;
                    (best[i] >= MIN_RESPONSE && is_local_maximum(best, size, [x, y, z]))
                        .then_some((i, [x, y, z]))
                })
            })
        })
        .collect();
    let mut blobs = Vec::new();
    for (scale, &sigma) in SIGMAS.iter().enumerate() {
        let here: Vec<&(usize, [usize; 3])> = maxima
            .iter()
            .filter(|(i, _)| usize::from(best_scale[*i]) == scale)
            .collect();
        if here.is_empty() {
            continue;
        }
        let g = gaussian(&image, size, sigma);
        blobs.extend(here.into_iter().filter_map(|&(i, center)| {
            let [e1, _, e3] = hessian_eigenvalues(&g, size, center);
            // e1 >= e2 >= e3: a bright ball has all three negative.
            let dotness = if e1 < 0.0 { (e1 / e3) as f32 } else { 0.0 };
            (dotness >= MIN_DOTNESS).then_some(Blob {
                center,
                radius: sigma * 3f64.sqrt(),
                response: best[i],
                dotness,
            })
        }));
    }
    blobs.sort_by(|a, b| b.score().total_cmp(&a.score()));
    blobs.truncate(limit);
    blobs
}

/// Whether `best` at `c` is at least its 5x5x5 neighbourhood (`c` at least 2 from each face).
fn is_local_maximum(best: &[f32], size: [usize; 3], c: [usize; 3]) -> bool {
    let [ni, nj, _] = size;
    let v = best[c[0] + c[1] * ni + c[2] * ni * nj];
    for z in c[2] - 2..=c[2] + 2 {
        for y in c[1] - 2..=c[1] + 2 {
            let row = y * ni + z * ni * nj;
            if best[row + c[0] - 2..=row + c[0] + 2].iter().any(|&b| b > v) {
                return false;
            }
        }
    }
    true
}

/// `data` smoothed by a Gaussian of `sigma` voxels (separable; edges replicated).
fn gaussian(data: &[f32], size: [usize; 3], sigma: f64) -> Vec<f32> {
    let radius = (3.0 * sigma).ceil() as usize;
    let mut kernel: Vec<f32> = (0..=2 * radius)
        .map(|t| {
            let x = t as f64 - radius as f64;
            (-(x * x) / (2.0 * sigma * sigma)).exp() as f32
        })
        .collect();
    let sum: f32 = kernel.iter().sum();
    kernel.iter_mut().for_each(|w| *w /= sum);
    let [ni, nj, nk] = size;
    let plane = ni * nj;
    // Along i: within each row.
    let mut along_i = vec![0f32; data.len()];
    along_i
        .par_chunks_mut(ni)
        .zip(data.par_chunks(ni))
        .for_each(|(out, row)| {
            for (x, o) in out.iter_mut().enumerate() {
                *o = kernel
                    .iter()
                    .enumerate()
                    .map(|(t, w)| w * row[(x + t).saturating_sub(radius).min(ni - 1)])
                    .sum();
            }
        });
    // Along j and k: whole rows at a time (rows of one plane, or of neighbouring planes).
    let mut along_j = vec![0f32; data.len()];
    along_j
        .par_chunks_mut(plane)
        .zip(along_i.par_chunks(plane))
        .for_each(|(out, input)| {
            for y in 0..nj {
                let out_row = &mut out[y * ni..(y + 1) * ni];
                for (t, &w) in kernel.iter().enumerate() {
                    let source = (y + t).saturating_sub(radius).min(nj - 1);
                    let in_row = &input[source * ni..(source + 1) * ni];
                    out_row
                        .iter_mut()
                        .zip(in_row)
                        .for_each(|(o, v)| *o += w * v);
                }
            }
        });
    drop(along_i);
    let mut along_k = vec![0f32; data.len()];
    along_k
        .par_chunks_mut(plane)
        .enumerate()
        .for_each(|(z, out)| {
            for (t, &w) in kernel.iter().enumerate() {
                let source = (z + t).saturating_sub(radius).min(nk - 1);
                let input = &along_j[source * plane..(source + 1) * plane];
                out.iter_mut().zip(input).for_each(|(o, v)| *o += w * v);
            }
        });
    along_k
}

/// Eigenvalues of the Hessian of `g` at `c` (central differences; `c` at least 1 from each
/// face), largest first.
fn hessian_eigenvalues(g: &[f32], size: [usize; 3], c: [usize; 3]) -> [f64; 3] {
    let [ni, nj, _] = size;
    let at = |dx: isize, dy: isize, dz: isize| {
        let x = c[0].wrapping_add_signed(dx);
        let y = c[1].wrapping_add_signed(dy);
        let z = c[2].wrapping_add_signed(dz);
        f64::from(g[x + y * ni + z * ni * nj])
    };
    let f = at(0, 0, 0);
    let xx = at(1, 0, 0) - 2.0 * f + at(-1, 0, 0);
    let yy = at(0, 1, 0) - 2.0 * f + at(0, -1, 0);
    let zz = at(0, 0, 1) - 2.0 * f + at(0, 0, -1);
    let xy = (at(1, 1, 0) - at(1, -1, 0) - at(-1, 1, 0) + at(-1, -1, 0)) / 4.0;
    let xz = (at(1, 0, 1) - at(1, 0, -1) - at(-1, 0, 1) + at(-1, 0, -1)) / 4.0;
    let yz = (at(0, 1, 1) - at(0, 1, -1) - at(0, -1, 1) + at(0, -1, -1)) / 4.0;
    symmetric_eigenvalues([[xx, xy, xz], [xy, yy, yz], [xz, yz, zz]])
}

/// Eigenvalues of a symmetric 3x3 matrix, largest first (the trigonometric closed form).
fn symmetric_eigenvalues(m: [[f64; 3]; 3]) -> [f64; 3] {
    let off = m[0][1].powi(2) + m[0][2].powi(2) + m[1][2].powi(2);
    let q = (m[0][0] + m[1][1] + m[2][2]) / 3.0;
    let p2 = (m[0][0] - q).powi(2) + (m[1][1] - q).powi(2) + (m[2][2] - q).powi(2) + 2.0 * off;
    let p = (p2 / 6.0).sqrt();
    if p < 1e-12 {
        return [q; 3];
    }
    let b = |r: usize, c: usize| (m[r][c] - if r == c { q } else { 0.0 }) / p;
    let det = b(0, 0) * (b(1, 1) * b(2, 2) - b(1, 2) * b(2, 1))
        - b(0, 1) * (b(1, 0) * b(2, 2) - b(1, 2) * b(2, 0))
        + b(0, 2) * (b(1, 0) * b(2, 1) - b(1, 1) * b(2, 0));
    let phi = (det / 2.0).clamp(-1.0, 1.0).acos() / 3.0;
    let largest = q + 2.0 * p * phi.cos();
    let smallest = q + 2.0 * p * (phi + 2.0 * std::f64::consts::PI / 3.0).cos();
    [largest, 3.0 * q - largest - smallest, smallest]
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::volume::geometry::Geometry;

    /// A 1 mm volume of lung (-850 HU) with the mask everywhere.
    fn lung(n: usize) -> (Volume<f32>, Volume<u8>) {
        let geometry = Geometry {
            origin: [0.0; 3],
            spacing: [1.0; 3],
            direction: [[1.0, 0.0, 0.0], [0.0, 1.0, 0.0], [0.0, 0.0, 1.0]],
            size: [n; 3],
        };
        (
            Volume {
                geometry,
                data: vec![-850.0; n * n * n],
            },
            Volume {
                geometry,
                data: vec![1; n * n * n],
            },
        )
    }

    fn paint(v: &mut Volume<f32>, inside: impl Fn([f64; 3]) -> bool, hu: f32) {
        let [ni, nj, nk] = v.geometry.size;
        for z in 0..nk {
            for y in 0..nj {
                for x in 0..ni {
                    if inside([x as f64, y as f64, z as f64]) {
                        v.data[x + y * ni + z * ni * nj] = hu;
                    }
                }
            }
        }
    }

    #[test]
    fn eigenvalues_of_a_known_matrix() {
        // diag(3, -1, 2) rotated about z by 30 degrees keeps its eigenvalues.
        let (s, c) = (0.5f64, 3f64.sqrt() / 2.0);
        let m = [
            [3.0 * c * c - s * s, 4.0 * c * s, 0.0],
            [4.0 * c * s, 3.0 * s * s - c * c, 0.0],
            [0.0, 0.0, 2.0],
        ];
        let e = symmetric_eigenvalues(m);
        for (got, want) in e.iter().zip([3.0, 2.0, -1.0]) {
            assert!((got - want).abs() < 1e-9, "{e:?}");
        }
    }

    /// A solid ball beside a vessel of the same attenuation and width: the ball is the best
    /// blob, centred within a voxel, at about its own radius; the vessel yields no blob near its
    /// middle.
    #[test]
    fn a_ball_is_found_and_a_vessel_is_not() {
        let (mut hu, mask) = lung(48);
        let ball = [14.0, 24.0, 24.0];
        let dist = |p: [f64; 3], q: [f64; 3]| {
            ((p[0] - q[0]).powi(2) + (p[1] - q[1]).powi(2) + (p[2] - q[2]).powi(2)).sqrt()
        };
        paint(&mut hu, |p| dist(p, ball) <= 4.0, 30.0);
        // A vessel of radius 2.5 along z at x = 34.
        paint(
            &mut hu,
            |p| ((p[0] - 34.0).powi(2) + (p[1] - 24.0).powi(2)).sqrt() <= 2.5,
            30.0,
        );
        let blobs = find(&hu, &mask, 10);
        let first = blobs.first().expect("the ball");
        assert!(
            dist(first.center.map(|v| v as f64), ball) <= 1.0,
            "{first:?}"
        );
        assert!((3.0..=6.5).contains(&first.radius), "{first:?}");
        assert!(
            blobs
                .iter()
                .all(|b| (b.center[0] as f64 - 34.0).abs() > 4.0
                    || !(12..=36).contains(&b.center[2])),
            "a blob on the vessel's straight part: {blobs:?}"
        );
    }

    /// Nothing outside the mask, and nothing in uniform lung.
    #[test]
    fn only_inside_the_mask_and_not_in_uniform_lung() {
        let (mut hu, mut mask) = lung(32);
        assert!(find(&hu, &mask, 10).is_empty());
        paint(
            &mut hu,
            |p| ((p[0] - 16.0).powi(2) + (p[1] - 16.0).powi(2) + (p[2] - 16.0).powi(2)) <= 9.0,
            0.0,
        );
        assert_eq!(find(&hu, &mask, 10).len(), 1);
        mask.data.iter_mut().for_each(|m| *m = 0);
        assert!(find(&hu, &mask, 10).is_empty());
    }
}
