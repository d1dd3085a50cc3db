//! CT series as 3-D volumes a network can trust: `series` turns stored slices into Hounsfield
//! units on their acquired grid (with every check an operator needs), `resample` brings them to
//! 1 mm isotropic, `lung` finds the lungs, `mapping` carries a 1 mm mask back onto the original
//! slices, and `metaimage` writes volumes for 3D Slicer / ITK-SNAP. A `Volume` never travels
//! without its `Geometry`.

// Geometry code indexes three axes at once (index[a], spacing[a], size[a]): ranges read better.
#![allow(clippy::needless_range_loop)]

pub mod command;
pub mod geometry;
pub mod lung;
pub mod mapping;
pub mod metaimage;
pub mod morphology;
pub mod prepare;
pub mod resample;
pub mod series;

pub use geometry::Geometry;

/// Voxels (i fastest, then j, then k) with the geometry that places them in the patient.
#[derive(Debug, Clone, PartialEq)]
pub struct Volume<T> {
    pub geometry: Geometry,
    pub data: Vec<T>,
}

impl<T: Copy> Volume<T> {
    /// A volume filled with `value`.
    pub fn filled(geometry: Geometry, value: T) -> Self {
        Self {
            data: vec![value; geometry.len()],
            geometry,
        }
    }

    /// The voxel at (i, j, k).
    pub fn at(&self, i: usize, j: usize, k: usize) -> T {
        self.data[self.geometry.offset(i, j, k)]
    }

    /// The cube of `side`^3 voxels whose first voxel is `start` (i fastest, then j, then k;
    /// the network's [D, H, W] order); voxels outside the grid read as `outside`.
    pub fn block(&self, start: [i64; 3], side: usize, outside: T) -> Vec<T> {
        let size = self.geometry.size;
        let mut out = Vec::with_capacity(side * side * side);
        for z in 0..side as i64 {
            for y in 0..side as i64 {
                for x in 0..side as i64 {
                    let idx = [start[0] + x, start[1] + y, start[2] + z];
                    out.push(
                        if (0..3).all(|a| idx[a] >= 0 && (idx[a] as usize) < size[a]) {
                            self.at(idx[0] as usize, idx[1] as usize, idx[2] as usize)
                        } else {
                            outside
                        },
                    );
                }
            }
        }
        out
    }

    /// The voxel nearest to a patient position, if inside the grid.
    pub fn nearest(&self, point: geometry::Vec3) -> Option<T> {
        let index = self.geometry.patient_to_index(point);
        let mut ijk = [0usize; 3];
        for axis in 0..3 {
            let r = index[axis].round();
            if r < 0.0 || r >= self.geometry.size[axis] as f64 {
                return None;
            }
            ijk[axis] = r as usize;
        }
        Some(self.at(ijk[0], ijk[1], ijk[2]))
    }
}

/// The axis sets of test-time mirroring (0: i, 1: j, 2: k), in the order they are added: a run
/// with `n` mirrors averages the first `n` (the first is no mirroring).
pub const MIRROR_SETS: [&[usize]; 8] =
    [&[], &[0], &[1], &[2], &[0, 1], &[0, 2], &[1, 2], &[0, 1, 2]];

/// Mirrors a `side`^3 cube (i fastest, then j, then k) in place along axis 0 (i), 1 (j) or 2 (k).
pub fn mirror_cube<T>(data: &mut [T], side: usize, axis: usize) {
    let at = |x: usize, y: usize, z: usize| (z * side + y) * side + x;
    for z in 0..side {
        for y in 0..side {
            for x in 0..side {
                let (a, b) = match axis {
                    0 if x < side / 2 => (at(x, y, z), at(side - 1 - x, y, z)),
                    1 if y < side / 2 => (at(x, y, z), at(x, side - 1 - y, z)),
                    2 if z < side / 2 => (at(x, y, z), at(x, y, side - 1 - z)),
                    _ => continue,
                };
                data.swap(a, b);
            }
        }
    }
}

/// Mirrors every `side`^3 cube of `data` (cubes one after another, as in a network batch) along
/// each axis of `axes`; mirroring twice along the same axes undoes it.
pub fn mirror_cubes<T>(data: &mut [T], side: usize, axes: &[usize]) {
    for cube in data.chunks_mut(side * side * side) {
        for &axis in axes {
            mirror_cube(cube, side, axis);
        }
    }
}

/// How Hounsfield units are turned into network input: clip, then standardise. The model file
/// carries these numbers; the paper clips to [-1000, 400].
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Normalization {
    pub clip_min_hu: f32,
    pub clip_max_hu: f32,
    pub mean: f32,
    pub std: f32,
}

impl Default for Normalization {
    fn default() -> Self {
        Self {
            clip_min_hu: -1000.0,
            clip_max_hu: 400.0,
            mean: -600.0,
            std: 450.0,
        }
    }
}

impl Normalization {
    /// The network input value of one voxel in HU.
    pub fn apply(&self, hu: f32) -> f32 {
        (hu.clamp(self.clip_min_hu, self.clip_max_hu) - self.mean) / self.std
    }

    /// Normalises a whole volume, keeping its geometry.
    pub fn volume(&self, hu: &Volume<f32>) -> Volume<f32> {
        Volume {
            geometry: hu.geometry,
            data: hu.data.iter().map(|&v| self.apply(v)).collect(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn normalization_clips_then_standardises() {
        let n = Normalization {
            clip_min_hu: -1000.0,
            clip_max_hu: 400.0,
            mean: -300.0,
            std: 700.0,
        };
        assert_eq!(n.apply(-3000.0), -1.0);
        assert_eq!(n.apply(2000.0), 1.0);
        assert_eq!(n.apply(-300.0), 0.0);
    }
}
