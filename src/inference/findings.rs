//! Detection post-processing on the aggregated probability map (paper section V.A): voxels
//! above the threshold, 3-D connected components (6-connected; components that touch are one
//! finding), centre of mass, non-maximum suppression of findings whose centre lies inside a
//! stronger finding's sphere, and findings under the minimum diameter dropped. Each finding
//! carries its size measures in mm on the map's grid.

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
}

impl Default for PostProcessing {
    fn default() -> Self {
        Self {
            threshold: 0.4,
            min_diameter_mm: 3.0,
        }
    }
}

/// One connected region of the location map.
#[derive(Debug, Clone, PartialEq)]
pub struct Detection {
    /// Centre of mass, continuous voxel index (i, j, k) of the map's grid.
    pub center_index: Vec3,
    /// Centre of mass in patient coordinates (LPS, mm).
    pub center_mm: Vec3,
    pub volume_mm3: f64,
    /// Diameter of the sphere of the same volume.
    pub equivalent_diameter_mm: f64,
    /// Largest distance between two of its voxels, plus one voxel.
    pub max_diameter_mm: f64,
    /// Highest voxel probability inside.
    pub p_nodule: f32,
    pub bounding_box: BoundingBox,
    /// Its voxels (offsets into the map).
    pub voxels: Vec<usize>,
}

/// Finds the detections of a probability map, strongest first.
pub fn detect(probability: &Volume<f32>, settings: &PostProcessing) -> Vec<Detection> {
    let g = probability.geometry;
    let [ni, nj, _] = g.size;
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
    let voxel_mm3 = g.spacing[0] * g.spacing[1] * g.spacing[2];
    let index_of = |v: usize| [v % ni, (v / ni) % nj, v / (ni * nj)];
    let mut found: Vec<Detection> = members
        .into_iter()
        .skip(1)
        .map(|voxels| {
            let mut sum = [0.0; 3];
            let mut lo = [usize::MAX; 3];
            let mut hi = [0; 3];
            let mut p_max = 0f32;
            for &v in &voxels {
                let idx = index_of(v);
                for a in 0..3 {
                    sum[a] += idx[a] as f64;
                    lo[a] = lo[a].min(idx[a]);
                    hi[a] = hi[a].max(idx[a]);
                }
                p_max = p_max.max(probability.data[v]);
            }
            let n = voxels.len() as f64;
            let center_index = sum.map(|s| s / n);
            let volume_mm3 = n * voxel_mm3;
            Detection {
                center_index,
                center_mm: g.index_to_patient(center_index),
                volume_mm3,
                equivalent_diameter_mm: (6.0 * volume_mm3 / std::f64::consts::PI).cbrt(),
                max_diameter_mm: max_extent_mm(&voxels, &mask, g.size, g.spacing),
                p_nodule: p_max,
                bounding_box: BoundingBox { min: lo, max: hi },
                voxels,
            }
        })
        .filter(|d| d.equivalent_diameter_mm >= settings.min_diameter_mm)
        .collect();
    found.sort_by(|a, b| b.p_nodule.total_cmp(&a.p_nodule));
    suppress(found)
}

/// Non-maximum suppression: drops a detection whose centre lies within the equivalent radius
/// of a stronger detection kept before it.
fn suppress(sorted: Vec<Detection>) -> Vec<Detection> {
    let mut kept: Vec<Detection> = Vec::new();
    for d in sorted {
        let inside = kept.iter().any(|k| {
            let dist: f64 = (0..3)
                .map(|a| (k.center_mm[a] - d.center_mm[a]).powi(2))
                .sum::<f64>()
                .sqrt();
            dist < k.equivalent_diameter_mm / 2.0
        });
        if !inside {
            kept.push(d);
        }
    }
    kept
}

/// The largest centre-to-centre distance between two surface voxels, plus one voxel spacing
/// (so a single voxel measures one voxel across).
fn max_extent_mm(voxels: &[usize], mask: &[u8], size: [usize; 3], spacing: Vec3) -> f64 {
    let [ni, nj, nk] = size;
    let index_of = |v: usize| [v % ni, (v / ni) % nj, v / (ni * nj)];
    let on_surface = |v: usize| {
        let [i, j, k] = index_of(v);
        i == 0
            || j == 0
            || k == 0
            || i + 1 == ni
            || j + 1 == nj
            || k + 1 == nk
            || mask[v - 1] == 0
            || mask[v + 1] == 0
            || mask[v - ni] == 0
            || mask[v + ni] == 0
            || mask[v - ni * nj] == 0
            || mask[v + ni * nj] == 0
    };
    let surface: Vec<Vec3> = voxels
        .iter()
        .filter(|&&v| on_surface(v))
        .map(|&v| {
            let idx = index_of(v);
            [0, 1, 2].map(|a| idx[a] as f64 * spacing[a])
        })
        .collect();
    let mut best = 0f64;
    for (n, a) in surface.iter().enumerate() {
        for b in &surface[n + 1..] {
            let d2 = (a[0] - b[0]).powi(2) + (a[1] - b[1]).powi(2) + (a[2] - b[2]).powi(2);
            best = best.max(d2);
        }
    }
    best.sqrt() + spacing[0].min(spacing[1]).min(spacing[2])
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
        assert_eq!(found[0].center_index, [10.0, 10.0, 10.0]);
        assert_eq!(found[0].center_mm, [0.0, 30.0, -20.0]);
        // A digital ball of radius 4 has 257 voxels.
        assert_eq!(found[0].voxels.len(), 257);
        assert!((found[0].volume_mm3 - 257.0).abs() < 1e-9);
        assert!((found[0].equivalent_diameter_mm - 7.886).abs() < 0.01);
        assert_eq!(found[0].max_diameter_mm, 9.0);
        assert_eq!(found[0].bounding_box.min, [6, 6, 6]);
        assert_eq!(found[1].center_mm, [18.0, 48.0, -2.0]);
    }

    #[test]
    fn touching_blobs_are_one_finding() {
        let mut v = map([40, 30, 30]);
        ball(&mut v, [12.0, 15.0, 15.0], 4.0, 0.8);
        ball(&mut v, [20.0, 15.0, 15.0], 4.0, 0.95);
        let found = detect(&v, &PostProcessing::default());
        assert_eq!(found.len(), 1);
        assert_eq!(found[0].p_nodule, 0.95);
        assert!((found[0].center_index[0] - 16.0).abs() < 1e-9);
        assert_eq!(found[0].max_diameter_mm, 17.0);
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
        };
        assert_eq!(detect(&v, &lenient).len(), 2);
    }

    #[test]
    fn a_weaker_finding_centred_inside_a_stronger_one_is_suppressed() {
        let strong = Detection {
            center_index: [0.0; 3],
            center_mm: [0.0; 3],
            volume_mm3: 1000.0,
            equivalent_diameter_mm: 12.4,
            max_diameter_mm: 13.0,
            p_nodule: 0.9,
            bounding_box: BoundingBox {
                min: [0; 3],
                max: [0; 3],
            },
            voxels: vec![],
        };
        let inside = Detection {
            center_mm: [3.0, 4.0, 0.0],
            p_nodule: 0.5,
            ..strong.clone()
        };
        let outside = Detection {
            center_mm: [9.0, 0.0, 0.0],
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
