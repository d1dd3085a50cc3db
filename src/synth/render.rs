//! Renders the phantom onto the slices of a series: every output pixel integrates the scene
//! over the slice thickness (sub-planes at most 1.25 mm apart: partial volume from thick
//! slices), then each slice is blurred with the in-plane point-spread function and gets
//! correlated noise at a dose-like level. Slices are independent, so they render in parallel,
//! each with its own random stream: the result does not depend on the thread count.

use crate::random::Rng;
use crate::synth::anatomy::{Anatomy, Capsule};
use crate::synth::nodules::Nodule;
use crate::synth::series::SeriesSpec;
use crate::volume::geometry::Vec3;
use rayon::prelude::*;
use std::collections::HashMap;

/// Image physics of the simulated scanner.
#[derive(Debug, Clone, Copy)]
pub struct Physics {
    /// Gaussian sigma of the in-plane point-spread function, mm.
    pub psf_sigma_mm: f64,
    /// Noise standard deviation at 1.25 mm slices, HU (scales with 1/sqrt(thickness)).
    pub noise_hu: f64,
    /// Correlation length of the noise (Gaussian sigma), mm.
    pub noise_grain_mm: f64,
}

impl Default for Physics {
    fn default() -> Self {
        Self {
            psf_sigma_mm: 0.45,
            noise_hu: 22.0,
            noise_grain_mm: 0.5,
        }
    }
}

/// Finds the capsules near a point quickly (uniform grid of cells).
struct CapsuleIndex<'a> {
    capsules: &'a [Capsule],
    cell: f64,
    cells: HashMap<[i32; 3], Vec<u32>>,
}

impl<'a> CapsuleIndex<'a> {
    fn new(capsules: &'a [Capsule], cell: f64, margin: f64) -> Self {
        let mut cells: HashMap<[i32; 3], Vec<u32>> = HashMap::new();
        for (n, c) in capsules.iter().enumerate() {
            let (lo, hi) = c.bounds(margin);
            let lo = lo.map(|v| (v / cell).floor() as i32);
            let hi = hi.map(|v| (v / cell).floor() as i32);
            for i in lo[0]..=hi[0] {
                for j in lo[1]..=hi[1] {
                    for k in lo[2]..=hi[2] {
                        cells.entry([i, j, k]).or_default().push(n as u32);
                    }
                }
            }
        }
        Self {
            capsules,
            cell,
            cells,
        }
    }

    /// Smallest (distance to axis - radius) over nearby capsules, if any is within range.
    fn nearest(&self, p: Vec3) -> Option<(f64, &Capsule)> {
        let key = p.map(|v| (v / self.cell).floor() as i32);
        self.cells.get(&key)?.iter().fold(None, |best, &n| {
            let c = &self.capsules[n as usize];
            let d = c.axis_distance(p) - c.radius;
            match best {
                Some((bd, _)) if bd <= d => best,
                _ => Some((d, c)),
            }
        })
    }
}

/// Smooth 3-D value noise in [-1, 1] with lattice spacing `cell` mm.
fn value_noise(p: Vec3, cell: f64, seed: u64) -> f64 {
    let g = p.map(|v| v / cell);
    let base = g.map(|v| v.floor());
    let t = [0, 1, 2].map(|a| {
        let f = g[a] - base[a];
        f * f * (3.0 - 2.0 * f)
    });
    let lattice = |i: i64, j: i64, k: i64| -> f64 {
        let mut h = (i as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15)
            ^ (j as u64).wrapping_mul(0xC2B2_AE3D_27D4_EB4F)
            ^ (k as u64).wrapping_mul(0x1656_67B1_9E37_79F9)
            ^ seed;
        h ^= h >> 33;
        h = h.wrapping_mul(0xFF51_AFD7_ED55_8CCD);
        h ^= h >> 33;
        (h >> 11) as f64 / (1u64 << 52) as f64 - 1.0
    };
    let (i, j, k) = (base[0] as i64, base[1] as i64, base[2] as i64);
    let mut sum = 0.0;
    for corner in 0..8 {
        let o = [corner & 1, (corner >> 1) & 1, (corner >> 2) & 1];
        let w: f64 = (0..3)
            .map(|a| if o[a] == 1 { t[a] } else { 1.0 - t[a] })
            .product();
        sum += w * lattice(i + o[0] as i64, j + o[1] as i64, k + o[2] as i64);
    }
    sum
}

/// The scene: anatomy plus nodules, and the lookup structures to sample it.
pub struct Scene<'a> {
    anatomy: &'a Anatomy,
    nodules: &'a [Nodule],
    vessels: CapsuleIndex<'a>,
    airways: CapsuleIndex<'a>,
    ribs: CapsuleIndex<'a>,
    texture_seed: u64,
}

impl<'a> Scene<'a> {
    pub fn new(anatomy: &'a Anatomy, nodules: &'a [Nodule], texture_seed: u64) -> Self {
        Self {
            anatomy,
            nodules,
            vessels: CapsuleIndex::new(&anatomy.vessels, 12.0, 0.0),
            airways: CapsuleIndex::new(&anatomy.airways, 12.0, 1.5),
            ribs: CapsuleIndex::new(&anatomy.ribs, 12.0, 0.0),
            texture_seed,
        }
    }

    /// Index of the nodule at `p` (in the lung), if any.
    pub fn nodule_at(&self, p: Vec3) -> Option<usize> {
        if !self.anatomy.in_lung(p) {
            return None;
        }
        self.nodules.iter().position(|n| n.contains(p))
    }

    /// HU of the noiseless scene at a patient position.
    pub fn hu(&self, p: Vec3) -> f64 {
        let a = self.anatomy;
        let [bx, by] = a.body_at(p[2]);
        let outline = (p[0] / bx).powi(2) + (p[1] / by).powi(2);
        if outline > 1.0 {
            return -1000.0;
        }
        let in_lung = a.in_lung(p);
        if in_lung && let Some(n) = self.nodules.iter().find(|n| n.contains(p)) {
            return n.hu_at(p);
        }
        if let Some((d, _)) = self.airways.nearest(p) {
            if d <= 0.0 {
                return -990.0;
            }
            if d <= 1.2 {
                return 30.0;
            }
        }
        if in_lung {
            if let Some((d, _)) = self.vessels.nearest(p)
                && d <= 0.0
            {
                return 40.0;
            }
            let texture = 28.0 * value_noise(p, 4.0, self.texture_seed)
                + 14.0 * value_noise(p, 1.7, self.texture_seed ^ 0xABCD);
            return -865.0 + texture;
        }
        if let Some(hu) = self.bone_hu(p) {
            return hu;
        }
        if a.heart.contains(p) || a.aorta.axis_distance(p) <= a.aorta.radius {
            return 42.0;
        }
        let below_lungs = p[2] < a.lungs[0].base_z.min(a.lungs[1].base_z) + 10.0;
        if below_lungs && a.liver.contains(p) {
            return 58.0;
        }
        // Fat under the skin: within fat_mm of the outline (approximately, along the radius).
        let depth = (1.0 - outline.sqrt()) * bx.min(by);
        if depth < a.fat_mm { -95.0 } else { 38.0 }
    }

    fn bone_hu(&self, p: Vec3) -> Option<f64> {
        let a = self.anatomy;
        // Vertebral bodies with discs every 26 mm.
        let dx = p[0] - a.spine_centre[0];
        let dy = p[1] - a.spine_centre[1];
        let r = (dx * dx + dy * dy).sqrt();
        if r <= a.vertebra_radius {
            let phase = p[2].rem_euclid(26.0);
            if phase < 5.0 {
                return Some(85.0);
            }
            return Some(if r > a.vertebra_radius - 2.0 {
                650.0
            } else {
                230.0
            });
        }
        let (lo, hi) = a.sternum;
        if (0..3).all(|i| p[i] >= lo[i] && p[i] <= hi[i]) {
            return Some(380.0);
        }
        if let Some((d, _)) = self.ribs.nearest(p)
            && d <= 0.0
        {
            return Some(if d > -1.5 { 700.0 } else { 260.0 });
        }
        None
    }
}

/// A rendered series: HU planes and nodule label planes (0 = none, n = nodule n), in the
/// spec's file order.
pub struct Rendered {
    pub planes: Vec<Vec<f32>>,
    pub labels: Vec<Vec<u8>>,
}

/// Renders every slice of `spec`.
pub fn render(scene: &Scene<'_>, spec: &SeriesSpec, physics: &Physics, rng: &Rng) -> Rendered {
    let (rows, cols) = (usize::from(spec.rows), usize::from(spec.columns));
    let thickness = spec.slice_spacing_mm;
    let sub = (thickness / 1.25).ceil().max(1.0) as usize;
    let offsets = spec.offsets();
    let normal = spec.normal();
    let results: Vec<(Vec<f32>, Vec<u8>)> = offsets
        .par_iter()
        .enumerate()
        .map(|(s, &offset)| {
            let mut plane = vec![0f32; rows * cols];
            let mut labels = vec![0u8; rows * cols];
            let centre = spec.position(offset);
            let pixel = |r: usize, c: usize, dz: f64| -> Vec3 {
                [0, 1, 2].map(|a| {
                    centre[a]
                        + spec.row_direction[a] * c as f64 * spec.pixel_spacing_mm
                        + spec.column_direction[a] * r as f64 * spec.pixel_spacing_mm
                        + normal[a] * dz
                })
            };
            for r in 0..rows {
                for c in 0..cols {
                    let mut sum = 0.0;
                    for j in 0..sub {
                        let dz = thickness * ((j as f64 + 0.5) / sub as f64 - 0.5);
                        sum += scene.hu(pixel(r, c, dz));
                    }
                    plane[r * cols + c] = (sum / sub as f64) as f32;
                    if let Some(n) = scene.nodule_at(pixel(r, c, 0.0)) {
                        labels[r * cols + c] = (n + 1) as u8;
                    }
                }
            }
            gaussian_blur(
                &mut plane,
                rows,
                cols,
                physics.psf_sigma_mm / spec.pixel_spacing_mm,
            );
            let mut noise_rng = rng.fork(s as u64 + 1);
            let mut noise: Vec<f32> = (0..rows * cols)
                .map(|_| noise_rng.normal() as f32)
                .collect();
            let grain = physics.noise_grain_mm / spec.pixel_spacing_mm;
            gaussian_blur(&mut noise, rows, cols, grain);
            // Blurring white noise with sigma g (pixels) divides its std by ~2 g sqrt(pi).
            let gain = if grain > 0.0 {
                2.0 * grain * std::f64::consts::PI.sqrt()
            } else {
                1.0
            };
            let level = physics.noise_hu * (1.25 / thickness).sqrt() * gain.max(1.0);
            for (v, n) in plane.iter_mut().zip(&noise) {
                *v += (f64::from(*n) * level) as f32;
            }
            (plane, labels)
        })
        .collect();
    let (planes, labels) = results.into_iter().unzip();
    Rendered { planes, labels }
}

/// Separable Gaussian blur of one image, sigma in pixels (nothing for sigma < 0.05).
pub fn gaussian_blur(image: &mut [f32], rows: usize, cols: usize, sigma: f64) {
    if sigma < 0.05 {
        return;
    }
    let radius = (3.0 * sigma).ceil() as isize;
    let kernel: Vec<f32> = (-radius..=radius)
        .map(|i| (-(i * i) as f64 / (2.0 * sigma * sigma)).exp() as f32)
        .collect();
    let total: f32 = kernel.iter().sum();
    let kernel: Vec<f32> = kernel.iter().map(|k| k / total).collect();
    let mut tmp = vec![0f32; image.len()];
    convolve_axis(image, &mut tmp, rows, cols, &kernel, false);
    convolve_axis(&tmp, image, rows, cols, &kernel, true);
}

/// One pass of a separable filter: along the columns of each row, or (`vertical`) along the
/// rows of each column, with edge clamping.
fn convolve_axis(
    input: &[f32],
    output: &mut [f32],
    rows: usize,
    cols: usize,
    kernel: &[f32],
    vertical: bool,
) {
    let radius = (kernel.len() / 2) as isize;
    let (length, stride) = if vertical { (rows, cols) } else { (cols, 1) };
    for r in 0..rows {
        for c in 0..cols {
            let (position, base) = if vertical { (r, c) } else { (c, r * cols) };
            let mut s = 0.0;
            for (t, k) in kernel.iter().enumerate() {
                let q = (position as isize + t as isize - radius).clamp(0, length as isize - 1);
                s += k * input[base + q as usize * stride];
            }
            output[r * cols + c] = s;
        }
    }
}
