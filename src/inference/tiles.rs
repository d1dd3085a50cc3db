//! Sliding-window segmentation of a whole 1 mm volume, restricted to a region (the lung mask's
//! bounding box): network windows at a stride, blended into one probability map.
//!
//! Two blendings: `Average` (the paper: 64^3 windows shifted by 32, each voxel the mean of every
//! window covering it) and `Core` (larger windows with a margin; each voxel taken from the
//! centre part of the window(s) holding it, so the margin gives every kept voxel context on all
//! sides). Instance normalisation makes a window's output depend on the whole window, so the two
//! give close but not identical maps. Voxels outside the volume read as air (-1000 HU).

use crate::jnsc::network::Jnsc;
use crate::volume::lung::BoundingBox;
use crate::volume::{MIRROR_SETS, Normalization, Volume, mirror_cubes};
use candle_core::{DType, Device, Tensor};

/// How windows are blended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Blend {
    /// Every window counts over its whole extent (the paper).
    Average,
    /// Only a window's centre (window minus (window - stride) / 2 on each side) counts, except at
    /// the region's border.
    Core,
}

/// Window size, stride and blending.
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize)]
pub struct Tiling {
    pub window: usize,
    pub stride: usize,
    pub blend: Blend,
    /// Windows per network call.
    pub batch: usize,
    /// Test-time mirroring: each window is run mirrored along the first `mirrors` axis sets of
    /// `MIRROR_SETS` (none, x, y, z, xy, ...), and the outputs, mirrored back, averaged (1:
    /// off). The training augmentation mirrors along every axis, so each is in its data.
    pub mirrors: usize,
}

impl Tiling {
    /// The paper's setting: 64^3 windows shifted by 32, averaged.
    pub fn paper() -> Self {
        Self {
            window: 64,
            stride: 32,
            blend: Blend::Average,
            batch: 1,
            mirrors: 1,
        }
    }

    /// The fast setting: 128^3 windows with a 16-voxel margin (stride 96), centre parts kept.
    pub fn fast() -> Self {
        Self {
            window: 128,
            stride: 96,
            blend: Blend::Core,
            batch: 1,
            mirrors: 1,
        }
    }

    /// The setting a name stands for.
    pub fn named(name: TilingName) -> Self {
        match name {
            TilingName::Fast => Self::fast(),
            TilingName::Paper => Self::paper(),
        }
    }

    /// Checks the setting against the network's constraints.
    pub fn validate(&self) -> Result<(), String> {
        if self.window == 0 || !self.window.is_multiple_of(16) {
            return Err(format!("window {} must be a multiple of 16", self.window));
        }
        if self.stride == 0 || self.stride > self.window {
            return Err(format!(
                "stride {} must be between 1 and the window {}",
                self.stride, self.window
            ));
        }
        if self.batch == 0 {
            return Err("batch must be at least 1".into());
        }
        check_mirrors(self.mirrors)
    }
}

/// Checks a count of test-time mirrors.
pub fn check_mirrors(mirrors: usize) -> Result<(), String> {
    if (1..=MIRROR_SETS.len()).contains(&mirrors) {
        Ok(())
    } else {
        Err(format!(
            "mirrors {mirrors} must be 1 to {}",
            MIRROR_SETS.len()
        ))
    }
}

/// Window starts along an axis of `length` (>= window): every `stride`, the last one flush with
/// the end.
pub fn window_starts(length: usize, window: usize, stride: usize) -> Vec<usize> {
    let last = length.saturating_sub(window);
    let mut starts: Vec<usize> = (0..=last).step_by(stride).collect();
    if starts.last() != Some(&last) {
        starts.push(last);
    }
    starts
}

/// The weight (1 or 0) of position `p` (0..window) of a window starting at `start` along an
/// axis of `length`.
fn counts(tiling: &Tiling, start: usize, length: usize, p: usize) -> bool {
    if tiling.blend == Blend::Average {
        return true;
    }
    let margin = (tiling.window - tiling.stride) / 2;
    let lo = if start == 0 { 0 } else { margin };
    let hi = if start + tiling.window >= length {
        tiling.window
    } else {
        tiling.window - margin
    };
    (lo..hi).contains(&p)
}

/// The region a map covers: `region` grown to at least one window per axis (it may reach past
/// the volume; those voxels read as air).
fn covered(region: BoundingBox, window: usize) -> ([i64; 3], [usize; 3]) {
    let mut start = [0i64; 3];
    let mut size = [0usize; 3];
    for a in 0..3 {
        let len = region.max[a] - region.min[a] + 1;
        size[a] = len.max(window);
        start[a] = region.min[a] as i64 - ((size[a] - len) / 2) as i64;
    }
    (start, size)
}

/// Runs the network over `region` of `hu` and returns the blended probability map on the
/// covered grid (the region, grown to at least one window per axis).
pub fn probability_map(
    net: &Jnsc,
    hu: &Volume<f32>,
    region: BoundingBox,
    normalization: &Normalization,
    tiling: &Tiling,
    device: &Device,
) -> candle_core::Result<Volume<f32>> {
    let w = tiling.window;
    let (origin, size) = covered(region, w);
    let [si, sj, sk] = size;
    let mut sum = vec![0f32; si * sj * sk];
    let mut weight = vec![0u16; si * sj * sk];
    let starts: Vec<[usize; 3]> = {
        let (i, j, k) = (
            window_starts(si, w, tiling.stride),
            window_starts(sj, w, tiling.stride),
            window_starts(sk, w, tiling.stride),
        );
        k.iter()
            .flat_map(|&z| {
                let i = &i;
                j.iter()
                    .flat_map(move |&y| i.iter().map(move |&x| [x, y, z]))
            })
            .collect()
    };
    let g = hu.geometry;
    for group in starts.chunks(tiling.batch) {
        let mut input = Vec::with_capacity(group.len() * w * w * w);
        for s in group {
            let at = [0, 1, 2].map(|a| origin[a] + s[a] as i64);
            input.extend(window(hu, at, w, normalization));
        }
        let p = segment_mirrored(net, input, group.len(), w, tiling.mirrors, device)?;
        for (n, s) in group.iter().enumerate() {
            let item = &p[n * w * w * w..(n + 1) * w * w * w];
            for z in (0..w).filter(|&z| counts(tiling, s[2], sk, z)) {
                for y in (0..w).filter(|&y| counts(tiling, s[1], sj, y)) {
                    let row = ((s[2] + z) * sj + s[1] + y) * si + s[0];
                    let from = (z * w + y) * w;
                    for x in (0..w).filter(|&x| counts(tiling, s[0], si, x)) {
                        sum[row + x] += item[from + x];
                        weight[row + x] += 1;
                    }
                }
            }
        }
    }
    let data = sum
        .iter()
        .zip(&weight)
        .map(|(&s, &n)| if n == 0 { 0.0 } else { s / f32::from(n) })
        .collect();
    let origin_mm = g.index_to_patient(origin.map(|v| v as f64));
    Ok(Volume {
        geometry: crate::volume::geometry::Geometry {
            origin: origin_mm,
            size,
            ..g
        },
        data,
    })
}

/// Location probabilities of `n` windows of w^3 (concatenated), each the mean over the
/// first `mirrors` axis sets of `MIRROR_SETS` (mirrored in, mirrored back out). With one
/// (no mirroring) the result is the network's output as is.
pub(crate) fn segment_mirrored(
    net: &Jnsc,
    mut input: Vec<f32>,
    n: usize,
    w: usize,
    mirrors: usize,
    device: &Device,
) -> candle_core::Result<Vec<f32>> {
    let mut sum = vec![0f32; input.len()];
    for axes in &MIRROR_SETS[..mirrors] {
        mirror_cubes(&mut input, w, axes);
        let x = Tensor::from_slice(&input, (n, 1, w, w, w), device)?;
        mirror_cubes(&mut input, w, axes);
        let logits = net.segment(&x, None)?.logits.to_dtype(DType::F32)?;
        let mut p = candle_nn::ops::sigmoid(&logits)?
            .flatten_all()?
            .to_vec1::<f32>()?;
        mirror_cubes(&mut p, w, axes);
        for (s, v) in sum.iter_mut().zip(p) {
            *s += v;
        }
    }
    let scale = 1.0 / mirrors as f32;
    sum.iter_mut().for_each(|s| *s *= scale);
    Ok(sum)
}

/// The normalised values of the w^3 window of `hu` whose first voxel is `start` (k slowest, i
/// fastest: the network's [D, H, W]); voxels outside the volume read as air.
pub fn window(
    hu: &Volume<f32>,
    start: [i64; 3],
    w: usize,
    normalization: &Normalization,
) -> Vec<f32> {
    hu.block(start, w, -1000.0)
        .into_iter()
        .map(|v| normalization.apply(v))
        .collect()
}

/// The named sliding-window settings (`[model] tiling`, `--tiling`).
#[derive(
    Debug,
    Clone,
    Copy,
    PartialEq,
    Eq,
    Default,
    serde::Serialize,
    serde::Deserialize,
    clap::ValueEnum,
)]
#[serde(rename_all = "lowercase")]
pub enum TilingName {
    /// 128^3 windows with 16-voxel margins, each voxel predicted once.
    #[default]
    Fast,
    /// The paper's: 64^3 windows shifted by 32, predictions averaged.
    Paper,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn windows_cover_the_axis_and_end_flush() {
        assert_eq!(window_starts(64, 64, 32), [0]);
        assert_eq!(window_starts(100, 64, 32), [0, 32, 36]);
        assert_eq!(window_starts(128, 64, 32), [0, 32, 64]);
        assert_eq!(window_starts(300, 128, 96), [0, 96, 172]);
    }

    #[test]
    fn core_blending_covers_every_voxel() {
        for (length, tiling) in [(300, Tiling::fast()), (100, Tiling::paper())] {
            let mut covered = vec![0; length];
            for s in window_starts(length, tiling.window, tiling.stride) {
                for p in 0..tiling.window {
                    if counts(&tiling, s, length, p) {
                        covered[s + p] += 1;
                    }
                }
            }
            assert!(covered.iter().all(|&c| c > 0), "{tiling:?}");
        }
    }

    #[test]
    fn all_eight_mirrors_make_the_map_mirror_equivariant() {
        // Averaged over every axis set, the output of a mirrored window is the mirrored output
        // of the window, whatever the (untrained, asymmetric) network; a mirror undone along
        // the wrong axis breaks this.
        use crate::jnsc::network::{Config, Preset};
        use candle_core::DType;
        use candle_nn::{VarBuilder, VarMap};
        let vars = VarMap::new();
        let net = Jnsc::new(
            &Config::preset(Preset::Cpu),
            VarBuilder::from_varmap(&vars, DType::F32, &Device::Cpu),
        )
        .unwrap();
        crate::jnsc::network::seeded_init(&vars, 3).unwrap();
        let w = 16;
        let input = crate::jnsc::testing::values(w * w * w, 5);
        let run = |x: Vec<f32>, m| segment_mirrored(&net, x, 1, w, m, &Device::Cpu).unwrap();
        let plain = run(input.clone(), 1);
        let averaged = run(input.clone(), 8);
        for axis in 0..3 {
            let mut mirrored = input.clone();
            crate::volume::mirror_cube(&mut mirrored, w, axis);
            let mut back = run(mirrored.clone(), 8);
            crate::volume::mirror_cube(&mut back, w, axis);
            let largest = back
                .iter()
                .zip(&averaged)
                .map(|(a, b)| (a - b).abs())
                .fold(0f32, f32::max);
            assert!(largest < 1e-5, "axis {axis}: {largest}");
            // Without mirroring, the network is not symmetric: the check above is not empty.
            let mut single = run(mirrored, 1);
            crate::volume::mirror_cube(&mut single, w, axis);
            assert!(single.iter().zip(&plain).any(|(a, b)| (a - b).abs() > 1e-3));
        }
    }

    #[test]
    fn a_small_region_grows_to_one_window_around_its_centre() {
        let region = BoundingBox {
            min: [10, 20, 30],
            max: [59, 119, 30],
        };
        let (start, size) = covered(region, 64);
        assert_eq!(size, [64, 100, 64]);
        assert_eq!(start, [3, 20, -1]);
    }
}
