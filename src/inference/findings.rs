//! Detection post-processing on the aggregated probability map (paper section V.A): voxels
//! above the threshold, 3-D connected components (6-connected; components that touch are one
//! finding), centre of mass, non-maximum suppression of findings whose centre lies inside a
//! stronger finding's sphere, and findings under the minimum diameter dropped. Each finding
//! carries two extents on the map's grid, each with its centre and size in mm: its region (what
//! detection works with) and its measured extent, the region's voxels whose probability reaches
//! `measure_fraction` of the region's peak: what is reported (centre and size) and segmented, so
//! that the SR's centre, its measurements and the SEG segment describe the same voxels. The map
//! runs wide of a nodule's edge (its nodule voxels weighed 50 in training; the region is cut at
//! 0.4); the fraction, chosen on validation data to undo that, is the model file's (model card,
//! "Sizes").

use crate::volume::Volume;
use crate::volume::geometry::Vec3;
use crate::volume::lung::BoundingBox;
use crate::volume::morphology::components;

/// The post-processing's parameters.
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize)]
pub struct PostProcessing {
    /// Voxel probability above which a voxel belongs to the nodule location map.
    pub threshold: f32,
    /// Findings with a smaller equivalent diameter are dropped (LUNA16 counts nodules >= 3 mm).
    pub min_diameter_mm: f64,
    /// At most this many findings are kept, strongest first (LUNA16 scores 100 per scan).
    pub max_findings: usize,
    /// A finding's measured extent: its voxels at or above this fraction of its peak (0: all of
    /// them, the region). The model file says which fraction suits its map.
    pub measure_fraction: f32,
}

impl Default for PostProcessing {
    fn default() -> Self {
        Self {
            threshold: 0.4,
            min_diameter_mm: 3.0,
            max_findings: 100,
            measure_fraction: 0.0,
        }
    }
}

/// A set of voxels of the map, its centre and its size.
#[derive(Debug, Clone, PartialEq)]
pub struct Extent {
    /// Offsets into the map.
    pub voxels: Vec<usize>,
    /// Centre of mass in voxel indices (i, j, k) of the map.
    pub center_index: Vec3,
    /// Centre of mass in patient coordinates (LPS, mm).
    pub center_mm: Vec3,
    pub volume_mm3: f64,
    /// Diameter of the sphere of the same volume.
    pub equivalent_diameter_mm: f64,
    /// Largest distance between two of its voxels, plus one voxel.
    pub max_diameter_mm: f64,
}

impl Extent {
    /// The extent of `voxels` (not empty) on the map's `geometry`.
    fn new(voxels: Vec<usize>, geometry: &crate::volume::geometry::Geometry) -> Self {
        let s = geometry.spacing;
        let mut sum = [0.0; 3];
        for &v in &voxels {
            let idx = voxel_index(v, geometry.size);
            for a in 0..3 {
                sum[a] += idx[a] as f64;
            }
        }
        let center_index = sum.map(|c| c / voxels.len().max(1) as f64);
        let volume_mm3 = voxels.len() as f64 * s[0] * s[1] * s[2];
        Self {
            center_index,
            center_mm: geometry.index_to_patient(center_index),
            volume_mm3,
            equivalent_diameter_mm: (6.0 * volume_mm3 / std::f64::consts::PI).cbrt(),
            max_diameter_mm: max_extent_mm(&voxels, geometry.size, s),
            voxels,
        }
    }
}

/// One connected region of the location map.
#[derive(Debug, Clone, PartialEq)]
pub struct Detection {
    /// The connected region above the threshold: non-maximum suppression uses its centre and
    /// size, the minimum diameter its size, and the classification path its box and voxel count.
    pub region: Extent,
    /// The region's voxels at or above `measure_fraction` of `p_nodule` (never empty: the peak
    /// voxel is one): the centre, the size and the segment that are reported.
    pub measured: Extent,
    /// Highest voxel probability inside.
    pub p_nodule: f32,
    /// The region's bounding box.
    pub bounding_box: BoundingBox,
}

/// Finds the detections of a probability map, strongest first.
pub fn detect(probability: &Volume<f32>, settings: &PostProcessing) -> Vec<Detection> {
    let g = probability.geometry;
    let mask: Vec<u8> = probability
        .data
        .iter()
        .map(|&p| u8::from(p > settings.threshold))
        .collect();
    let (labels, sizes) = components(&mask, g.size);
    let mut members: Vec<Vec<usize>> = sizes.iter().map(|&n| Vec::with_capacity(n)).collect();
    for (v, &l) in labels.iter().enumerate() {
        if l != 0 {
            members[l as usize].push(v);
        }
    }
    let mut found: Vec<Detection> = members
        .into_iter()
        .skip(1)
        .map(|voxels| {
            let mut lo = [usize::MAX; 3];
            let mut hi = [0; 3];
            let mut p_max = 0f32;
            for &v in &voxels {
                let idx = voxel_index(v, g.size);
                for a in 0..3 {
                    lo[a] = lo[a].min(idx[a]);
                    hi[a] = hi[a].max(idx[a]);
                }
                p_max = p_max.max(probability.data[v]);
            }
            let cut = settings.measure_fraction * p_max;
            let measured: Vec<usize> = voxels
                .iter()
                .copied()
                .filter(|&v| probability.data[v] >= cut)
                .collect();
            let all = measured.len() == voxels.len();
            let region = Extent::new(voxels, &g);
            Detection {
                // The whole region (a flat map, or the fraction 0): measured once.
                measured: if all {
                    region.clone()
                } else {
                    Extent::new(measured, &g)
                },
                region,
                p_nodule: p_max,
                bounding_box: BoundingBox { min: lo, max: hi },
            }
        })
        .filter(|d| d.region.equivalent_diameter_mm >= settings.min_diameter_mm)
        .collect();
    found.sort_by(|a, b| b.p_nodule.total_cmp(&a.p_nodule));
    let mut kept = suppress(found);
    kept.truncate(settings.max_findings);
    kept
}

/// Non-maximum suppression: drops a detection whose centre lies within the equivalent radius
/// of a stronger detection kept before it.
fn suppress(sorted: Vec<Detection>) -> Vec<Detection> {
    let mut kept: Vec<Detection> = Vec::new();
    for d in sorted {
        let inside = kept.iter().any(|k| {
            let dist: f64 = (0..3)
                .map(|a| (k.region.center_mm[a] - d.region.center_mm[a]).powi(2))
                .sum::<f64>()
                .sqrt();
            dist < k.region.equivalent_diameter_mm / 2.0
        });
        if !inside {
            kept.push(d);
        }
    }
    kept
}

/// The voxel indices (i, j, k) of the offset `v` into a map of `size`.
fn voxel_index(v: usize, size: [usize; 3]) -> [usize; 3] {
    let [ni, nj, _] = size;
    [v % ni, (v / ni) % nj, v / (ni * nj)]
}

/// The largest extent of the voxels (centre to centre, plus one voxel so a single voxel
/// measures one voxel across) over 49 directions spread over the half-sphere: within about 1% of
/// the true maximum diameter for compact shapes, and linear in the voxel count.
fn max_extent_mm(voxels: &[usize], size: [usize; 3], spacing: Vec3) -> f64 {
    let directions = half_sphere_directions();
    let mut lo = vec![f64::INFINITY; directions.len()];
    let mut hi = vec![f64::NEG_INFINITY; directions.len()];
    for &v in voxels {
        let idx = voxel_index(v, size);
        let p = [0, 1, 2].map(|a| idx[a] as f64 * spacing[a]);
        for (n, d) in directions.iter().enumerate() {
            let t = p[0] * d[0] + p[1] * d[1] + p[2] * d[2];
            lo[n] = lo[n].min(t);
            hi[n] = hi[n].max(t);
        }
    }
    let extent = lo.iter().zip(&hi).map(|(l, h)| h - l).fold(0.0, f64::max);
    extent + spacing[0].min(spacing[1]).min(spacing[2])
}

/// Unit vectors (x, y, z), z >= 0: the 13 axis, face- and body-diagonal directions of the voxel
/// grid and 36 more on a spiral.
fn half_sphere_directions() -> Vec<Vec3> {
    let mut out: Vec<Vec3> = Vec::with_capacity(49);
    for d in [-1.0f64, 0.0, 1.0] {
        for e in [-1.0f64, 0.0, 1.0] {
            for f in [0.0f64, 1.0] {
                let v = [d, e, f];
                let first_nonzero = v.iter().rev().find(|c| **c != 0.0);
                // One of each +-pair: the last non-zero coordinate positive.
                if first_nonzero.is_some_and(|c| *c > 0.0) {
                    let n = (d * d + e * e + f * f).sqrt();
                    out.push([d / n, e / n, f / n]);
                }
            }
        }
    }
    let golden = std::f64::consts::PI * (3.0 - 5f64.sqrt());
    for n in 0..36 {
        let z = (n as f64 + 0.5) / 36.0;
        let r = (1.0 - z * z).sqrt();
        let a = golden * n as f64;
        out.push([r * a.cos(), r * a.sin(), z]);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::volume::geometry::Geometry;

    fn map(size: [usize; 3]) -> Volume<f32> {
        Volume::filled(
            Geometry {
                origin: [-10.0, 20.0, -30.0],
                spacing: [1.0; 3],
                direction: [[1.0, 0.0, 0.0], [0.0, 1.0, 0.0], [0.0, 0.0, 1.0]],
                size,
            },
            0.0,
        )
    }

    /// Paints a ball of `radius` voxels with probability `p` (keeps the higher value).
    fn ball(v: &mut Volume<f32>, center: [f64; 3], radius: f64, p: f32) {
        let [ni, nj, nk] = v.geometry.size;
        for k in 0..nk {
            for j in 0..nj {
                for i in 0..ni {
                    let d2 = (i as f64 - center[0]).powi(2)
                        + (j as f64 - center[1]).powi(2)
                        + (k as f64 - center[2]).powi(2);
                    if d2 <= radius * radius {
                        let at = v.geometry.offset(i, j, k);
                        v.data[at] = v.data[at].max(p);
                    }
                }
            }
        }
    }

    #[test]
    fn separate_blobs_are_separate_findings_with_their_measures() {
        let mut v = map([40, 40, 40]);
        ball(&mut v, [10.0, 10.0, 10.0], 4.0, 0.9);
        ball(&mut v, [28.0, 28.0, 28.0], 3.0, 0.6);
        let found = detect(&v, &PostProcessing::default());
        assert_eq!(found.len(), 2);
        assert_eq!(found[0].p_nodule, 0.9, "strongest first");
        assert_eq!(found[0].region.center_index, [10.0, 10.0, 10.0]);
        assert_eq!(found[0].region.center_mm, [0.0, 30.0, -20.0]);
        // A digital ball of radius 4 has 257 voxels.
        let region = &found[0].region;
        assert_eq!(region.voxels.len(), 257);
        assert!((region.volume_mm3 - 257.0).abs() < 1e-9);
        assert!((region.equivalent_diameter_mm - 7.886).abs() < 0.01);
        assert_eq!(region.max_diameter_mm, 9.0);
        // A flat blob measures what its region measures.
        assert_eq!(&found[0].measured, region);
        assert_eq!(found[0].bounding_box.min, [6, 6, 6]);
        assert_eq!(found[1].region.center_mm, [18.0, 48.0, -2.0]);
    }

    /// Measured extents at 0.9 of the peak.
    const MEASURING: PostProcessing = PostProcessing {
        threshold: 0.4,
        min_diameter_mm: 3.0,
        max_findings: 100,
        measure_fraction: 0.9,
    };

    #[test]
    fn touching_blobs_are_one_finding() {
        let mut v = map([40, 30, 30]);
        ball(&mut v, [12.0, 15.0, 15.0], 4.0, 0.8);
        ball(&mut v, [20.0, 15.0, 15.0], 4.0, 0.95);
        let found = detect(&v, &MEASURING);
        assert_eq!(found.len(), 1);
        assert_eq!(found[0].p_nodule, 0.95);
        assert!((found[0].region.center_index[0] - 16.0).abs() < 1e-9);
        assert_eq!(found[0].region.max_diameter_mm, 17.0);
        // Measured: the stronger ball's voxels only (0.8 < 0.9 x 0.95), centred on it.
        assert_eq!(found[0].measured.max_diameter_mm, 9.0);
        assert_eq!(found[0].measured.center_index, [20.0, 15.0, 15.0]);
    }

    #[test]
    fn the_measured_extent_is_the_region_s_core_above_the_peak_fraction() {
        let mut v = map([30, 30, 30]);
        ball(&mut v, [15.0, 15.0, 15.0], 5.0, 0.6); // the map's wide margin
        ball(&mut v, [15.0, 15.0, 15.0], 3.0, 0.97);
        ball(&mut v, [15.0, 15.0, 15.0], 1.0, 1.0);
        let found = detect(&v, &MEASURING);
        assert_eq!(found.len(), 1);
        let (region, measured) = (&found[0].region, &found[0].measured);
        // Digital balls of radius 5 and 3: 515 and 123 voxels.
        assert_eq!(region.voxels.len(), 515);
        assert_eq!(measured.voxels.len(), 123);
        assert!(measured.voxels.iter().all(|v| region.voxels.contains(v)));
        assert_eq!(measured.max_diameter_mm, 7.0);
        assert!(measured.equivalent_diameter_mm < region.equivalent_diameter_mm);
        // At the fraction 0.5 the margin counts too; at 1 only the peak voxels are left.
        let at = |measure_fraction: f32| {
            detect(
                &v,
                &PostProcessing {
                    measure_fraction,
                    ..PostProcessing::default()
                },
            )[0]
            .measured
            .voxels
            .len()
        };
        assert_eq!(at(0.5), 515);
        assert_eq!(at(1.0), 7);
        // The default, 0, is the region (a model file without a fraction reports its regions).
        let plain = &detect(&v, &PostProcessing::default())[0];
        assert_eq!(plain.measured, plain.region);
    }

    #[test]
    fn small_and_faint_blobs_are_dropped() {
        let mut v = map([30, 30, 30]);
        ball(&mut v, [5.0, 5.0, 5.0], 1.0, 0.99); // 7 voxels: 2.4 mm
        ball(&mut v, [20.0, 20.0, 20.0], 4.0, 0.39); // below the threshold
        assert!(detect(&v, &PostProcessing::default()).is_empty());
        let lenient = PostProcessing {
            threshold: 0.3,
            min_diameter_mm: 2.0,
            ..PostProcessing::default()
        };
        assert_eq!(detect(&v, &lenient).len(), 2);
        let capped = PostProcessing {
            max_findings: 1,
            ..lenient
        };
        assert_eq!(detect(&v, &capped)[0].p_nodule, 0.99);
    }

    #[test]
    fn a_weaker_finding_centred_inside_a_stronger_one_is_suppressed() {
        let extent = Extent {
            voxels: vec![],
            center_index: [0.0; 3],
            center_mm: [0.0; 3],
            volume_mm3: 1000.0,
            equivalent_diameter_mm: 12.4,
            max_diameter_mm: 13.0,
        };
        let at = |center_mm: Vec3| Extent {
            center_mm,
            ..extent.clone()
        };
        // Suppression goes by the region's centre and size, not the measured extent's.
        let strong = Detection {
            region: extent.clone(),
            measured: Extent {
                equivalent_diameter_mm: 2.0,
                ..at([20.0, 0.0, 0.0])
            },
            p_nodule: 0.9,
            bounding_box: BoundingBox {
                min: [0; 3],
                max: [0; 3],
            },
        };
        let inside = Detection {
            region: at([3.0, 4.0, 0.0]),
            p_nodule: 0.5,
            ..strong.clone()
        };
        let outside = Detection {
            region: at([9.0, 0.0, 0.0]),
            p_nodule: 0.4,
            ..strong.clone()
        };
        let kept = suppress(vec![strong, inside, outside]);
        assert_eq!(
            kept.iter().map(|d| d.p_nodule).collect::<Vec<_>>(),
            [0.9, 0.4]
        );
    }
}
