//! The paper's sampling of training patches from the scans of any `datasets::Source`
//! (section IV.B): per scan and epoch, one 64^3
//! patch holding a nodule at a random (not centred) position and one from a nodule-free region,
//! each rotated by a multiple of 90 degrees in a random plane, and, where configured
//! (`Augment`), flipped, rescaled in intensity, given extra noise and blurred or sharpened.

use crate::datasets::{Scan, nodule_boxes};
use crate::random::Rng;
use crate::volume::{Normalization, mirror_cube};

/// A training patch: normalised input and nodule labels (label n = nodule n), both p^3, k
/// slowest (the network's [D, H, W]).
#[derive(Debug, Clone, PartialEq)]
pub struct Patch {
    pub input: Vec<f32>,
    pub labels: Vec<u8>,
    pub size: usize,
}

/// Copies the p^3 block of `scan` whose first voxel is `start` (outside the scan: air, label 0).
fn cut(scan: &Scan, start: [i64; 3], p: usize, norm: &Normalization) -> Patch {
    Patch {
        input: crate::inference::tiles::window(&scan.hu, start, p, norm),
        labels: scan.labels.block(start, p, 0),
        size: p,
    }
}

/// Augmentation of training patches beyond the quarter turns (`[augment]` of the training
/// configuration). Every amount is a maximum, drawn uniformly per patch; zero turns it off, and
/// a configuration with all of them off draws nothing from the random stream, so it trains
/// exactly as before they existed.
#[derive(Debug, Clone, Copy, Default, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Augment {
    /// Mirror each axis with probability 1/2.
    pub flips: bool,
    /// Relative change of the HU scale (0.05: x0.95-1.05), and shift of the HU level (HU).
    pub intensity_scale: f64,
    pub intensity_shift_hu: f64,
    /// Extra white noise, standard deviation in HU.
    pub noise_hu: f64,
    /// Kernel sharpness: a Gaussian blur of up to this sigma (voxels) or an unsharp mask of up to
    /// this amount, one or the other at random.
    pub sharpness: f64,
}

impl Augment {
    fn is_off(&self) -> bool {
        !self.flips
            && self.intensity_scale == 0.0
            && self.intensity_shift_hu == 0.0
            && self.noise_hu == 0.0
            && self.sharpness == 0.0
    }

    /// Applies the augmentation to a patch (normalised input; labels follow flips).
    pub fn apply(&self, patch: &mut Patch, norm: &Normalization, rng: &mut Rng) {
        if self.is_off() {
            return;
        }
        let p = patch.size;
        if self.flips {
            for axis in 0..3 {
                if rng.below(2) == 1 {
                    flip(patch, axis);
                }
            }
        }
        // HU' = HU (1 + a) + b, in normalised units x = (HU - mean) / std.
        let std = f64::from(norm.std);
        let a = rng.range(-1.0, 1.0) * self.intensity_scale;
        let b = rng.range(-1.0, 1.0) * self.intensity_shift_hu;
        let noise = rng.uniform() * self.noise_hu / std;
        let sharp = rng.range(-1.0, 1.0) * self.sharpness;
        let offset = f64::from(norm.mean) / std;
        for x in &mut patch.input {
            let v = f64::from(*x);
            *x = ((v + offset) * (1.0 + a) - offset + b / std) as f32;
        }
        if noise > 0.0 {
            for x in &mut patch.input {
                *x += (rng.normal() * noise) as f32;
            }
        }
        if sharp.abs() > 0.05 {
            let mut blurred = patch.input.clone();
            blur3(&mut blurred, p, sharp.abs().max(0.5));
            if sharp > 0.0 {
                patch.input = blurred;
            } else {
                for (x, b) in patch.input.iter_mut().zip(blurred) {
                    *x += (-sharp) as f32 * (*x - b);
                }
            }
        }
    }
}

/// Mirrors a patch, input and labels, along axis 0 (x), 1 (y) or 2 (z).
fn flip(patch: &mut Patch, axis: usize) {
    mirror_cube(&mut patch.input, patch.size, axis);
    mirror_cube(&mut patch.labels, patch.size, axis);
}

/// Separable Gaussian blur of a p^3 block, sigma in voxels, edges clamped.
fn blur3(data: &mut [f32], p: usize, sigma: f64) {
    let radius = (2.5 * sigma).ceil() as isize;
    let kernel: Vec<f32> = (-radius..=radius)
        .map(|i| (-(i * i) as f64 / (2.0 * sigma * sigma)).exp() as f32)
        .collect();
    let total: f32 = kernel.iter().sum();
    let kernel: Vec<f32> = kernel.iter().map(|k| k / total).collect();
    for stride in [1, p, p * p] {
        let source = data.to_vec();
        for (v, out) in data.iter_mut().enumerate() {
            let position = (v / stride) % p;
            let base = v - position * stride;
            let mut s = 0.0;
            for (t, k) in kernel.iter().enumerate() {
                let q = (position as isize + t as isize - radius).clamp(0, p as isize - 1);
                s += k * source[base + q as usize * stride];
            }
            *out = s;
        }
    }
}

/// The two patches of one scan for one epoch: one with a nodule at a random position (None when
/// the scan shows no nodule), one without any nodule voxel (None when 20 tries find none).
pub fn sample_patches(
    scan: &Scan,
    p: usize,
    norm: &Normalization,
    augment: &Augment,
    rng: &mut Rng,
) -> (Option<Patch>, Option<Patch>) {
    let boxes = nodule_boxes(scan);
    let size = scan.hu.geometry.size;
    let chosen = (!boxes.is_empty()).then(|| rng.below(boxes.len()));
    let positive = chosen.and_then(|n| boxes.values().nth(n)).map(|b| {
        let (lo, hi) = (b.min, b.max);
        // Any start that keeps the nodule's box inside the patch (a margin of 4 voxels where
        // the box allows), so its position in the patch varies.
        let start = [0, 1, 2].map(|a| {
            let extent = (hi[a] - lo[a] + 1) as i64;
            let room = p as i64 - extent - 8;
            if room < 0 {
                lo[a] as i64 - (p as i64 - extent) / 2
            } else {
                lo[a] as i64 - 4 - rng.below(room as usize + 1) as i64
            }
        });
        let mut patch = rotate(&cut(scan, start, p, norm), rng);
        augment.apply(&mut patch, norm, rng);
        patch
    });
    let mut negative = None;
    for _ in 0..20 {
        let start = [0, 1, 2].map(|a| rng.below(size[a].saturating_sub(p) + 1) as i64);
        let patch = cut(scan, start, p, norm);
        if patch.labels.iter().all(|&l| l == 0) {
            let mut patch = rotate(&patch, rng);
            augment.apply(&mut patch, norm, rng);
            negative = Some(patch);
            break;
        }
    }
    (positive, negative)
}

/// Rotates a patch by 0, 90, 180 or 270 degrees in one of the three axis planes, at random.
pub fn rotate(patch: &Patch, rng: &mut Rng) -> Patch {
    let turns = rng.below(4);
    let plane = rng.below(3);
    let mut out = patch.clone();
    for _ in 0..turns {
        out = rotate_once(&out, plane);
    }
    out
}

/// One quarter turn in `plane` (0: the (x, y) plane, 1: (y, z), 2: (x, z)).
fn rotate_once(patch: &Patch, plane: usize) -> Patch {
    let p = patch.size;
    let at = |x: usize, y: usize, z: usize| (z * p + y) * p + x;
    let mut input = vec![0f32; p * p * p];
    let mut labels = vec![0u8; p * p * p];
    for z in 0..p {
        for y in 0..p {
            for x in 0..p {
                let (nx, ny, nz) = match plane {
                    0 => (p - 1 - y, x, z),
                    1 => (x, p - 1 - z, y),
                    _ => (p - 1 - z, y, x),
                };
                input[at(nx, ny, nz)] = patch.input[at(x, y, z)];
                labels[at(nx, ny, nz)] = patch.labels[at(x, y, z)];
            }
        }
    }
    Patch {
        input,
        labels,
        size: p,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::datasets::{NoduleLabel, Source, SyntheticSource};
    use crate::volume::Volume;
    use crate::volume::geometry::Geometry;

    fn scan_with_cube() -> Scan {
        let g = Geometry {
            origin: [0.0; 3],
            spacing: [1.0; 3],
            direction: [[1.0, 0.0, 0.0], [0.0, 1.0, 0.0], [0.0, 0.0, 1.0]],
            size: [100, 90, 80],
        };
        let mut labels = Volume::filled(g, 0u8);
        let mut hu = Volume::filled(g, -850f32);
        for k in 40..46 {
            for j in 30..35 {
                for i in 60..64 {
                    let at = g.offset(i, j, k);
                    labels.data[at] = 1;
                    hu.data[at] = 30.0;
                }
            }
        }
        Scan {
            id: "cube".into(),
            hu,
            labels,
            nodules: vec![NoduleLabel {
                label: 1,
                ratings: vec![4],
            }],
        }
    }

    #[test]
    fn positive_patches_hold_the_whole_nodule_negatives_none() {
        let scan = scan_with_cube();
        let mut rng = Rng::new(5);
        let mut offsets = std::collections::HashSet::new();
        for _ in 0..30 {
            let (pos, neg) = sample_patches(
                &scan,
                32,
                &Normalization::default(),
                &Augment::default(),
                &mut rng,
            );
            let pos = pos.unwrap();
            // Rotation keeps the voxel count.
            assert_eq!(pos.labels.iter().filter(|&&l| l == 1).count(), 6 * 5 * 4);
            offsets.insert(pos.labels.iter().position(|&l| l == 1));
            assert!(neg.unwrap().labels.iter().all(|&l| l == 0));
        }
        assert!(offsets.len() > 5, "nodule positions vary: {offsets:?}");
    }

    #[test]
    fn four_quarter_turns_are_the_identity_and_one_moves_voxels() {
        let mut rng = Rng::new(1);
        let patch = Patch {
            input: (0..4 * 4 * 4).map(|_| rng.uniform() as f32).collect(),
            labels: (0..64).map(|v| (v % 3) as u8).collect(),
            size: 4,
        };
        for plane in 0..3 {
            let mut r = patch.clone();
            for _ in 0..4 {
                r = rotate_once(&r, plane);
            }
            assert_eq!(r, patch, "plane {plane}");
            assert_ne!(rotate_once(&patch, plane), patch);
        }
    }

    #[test]
    fn synthetic_scans_have_rated_nodules_in_view() {
        let source = SyntheticSource::new(40, 2, [128, 128, 96]);
        let scan = source.scan(1).unwrap();
        assert_eq!(scan.hu.geometry.size, [128, 128, 96]);
        assert!(!scan.nodules.is_empty() && scan.nodules.len() <= 4);
        assert!(scan.nodules.iter().all(|n| !n.ratings.is_empty()));
        // The same index gives the same scan.
        assert_eq!(source.scan(1).unwrap().labels.data, scan.labels.data);
    }
}
