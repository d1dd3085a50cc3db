//! Classical lung segmentation on the 1 mm volume, so that inference can skip everything
//! outside the lungs.
//!
//! 1. Body: the largest connected region above -500 HU, with holes filled slice by slice (so
//!    the air around the patient is outside and the lungs are inside).
//! 2. Lung candidates: voxels below -400 HU inside the body; 3-D connected components (6-
//!    connectivity). Components smaller than 20 ml, made of pure gas (mean below -960 HU: bowel
//!    gas, an isolated airway), or thinner than 30 mm in any direction (the hollow of the
//!    patient table, which the body encloses where the patient lies on it) are dropped; the
//!    largest component is kept, and the second largest too when it is at least 5 % of it
//!    (left and right lung, when not joined).
//! 3. Airways: bronchi inside the lung field stay in the mask (endobronchial nodules exist);
//!    the trachea above the apices is trimmed: from the top, slices whose mask is a single
//!    midline blob smaller than 6 cm^2 are cleared.
//! 4. Holes (vessels, nodules) are filled slice by slice, the mask is dilated by 3 mm so that
//!    juxta-pleural nodules stay inside, and it is clipped to the body.

use crate::volume::Volume;
use crate::volume::geometry::Vec3;
use crate::volume::morphology::{components, dilate, fill_holes_per_slice};
use rayon::prelude::*;

const BODY_MIN_HU: f32 = -500.0;
const AIR_MAX_HU: f32 = -400.0;
const MIN_COMPONENT_ML: f64 = 20.0;
const GAS_MEAN_HU: f64 = -960.0;
const SECOND_LUNG_FRACTION: f64 = 0.05;
const MIN_LUNG_EXTENT_MM: f64 = 30.0;
const TRACHEA_MAX_AREA_MM2: f64 = 600.0;
const TRACHEA_MIDLINE_MM: f64 = 25.0;
const DILATION_MM: f64 = 3.0;

/// Inclusive voxel index bounds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BoundingBox {
    pub min: [usize; 3],
    pub max: [usize; 3],
}

impl BoundingBox {
    pub fn size(&self) -> [usize; 3] {
        [0, 1, 2].map(|a| self.max[a] - self.min[a] + 1)
    }
}

/// The lung mask (1 inside) and what describes it.
#[derive(Debug, Clone)]
pub struct LungMask {
    pub mask: Volume<u8>,
    /// The body (1 inside), holes filled: the mask never leaves it.
    pub body: Volume<u8>,
    pub bounding_box: Option<BoundingBox>,
    /// Lung volume before dilation, ml.
    pub lung_volume_ml: f64,
}

/// Segments the lungs of a volume in HU.
pub fn lung_mask(hu: &Volume<f32>) -> LungMask {
    let g = hu.geometry;
    let size = g.size;
    let voxel_ml = g.spacing.iter().product::<f64>() / 1000.0;

    let above: Vec<u8> = hu
        .data
        .par_iter()
        .map(|&v| u8::from(v > BODY_MIN_HU))
        .collect();
    let (labels, sizes) = components(&above, size);
    let body_label = largest(&sizes);
    let mut body: Vec<u8> = labels
        .par_iter()
        .map(|&l| u8::from(body_label.is_some_and(|b| l == b)))
        .collect();
    fill_holes_per_slice(&mut body, size);

    let candidates: Vec<u8> = hu
        .data
        .par_iter()
        .zip(&body)
        .map(|(&v, &b)| u8::from(b == 1 && v < AIR_MAX_HU))
        .collect();
    let (labels, sizes) = components(&candidates, size);
    let (hu_sums, extents) = component_statistics(&labels, &hu.data, size, sizes.len());
    let thick = |l: usize| {
        let extent = extents[l].size();
        (0..3).all(|a| extent[a] as f64 * g.spacing[a] >= MIN_LUNG_EXTENT_MM)
    };
    let mut lungs: Vec<(u32, usize)> = sizes
        .iter()
        .enumerate()
        .skip(1)
        .filter(|&(l, &n)| {
            n as f64 * voxel_ml >= MIN_COMPONENT_ML
                && hu_sums[l] / n as f64 > GAS_MEAN_HU
                && thick(l)
        })
        .map(|(l, &n)| (l as u32, n))
        .collect();
    lungs.sort_by_key(|&(_, n)| std::cmp::Reverse(n));
    if lungs.len() > 1 && (lungs[1].1 as f64) < SECOND_LUNG_FRACTION * lungs[0].1 as f64 {
        lungs.truncate(1);
    }
    lungs.truncate(2);
    let keep: Vec<u32> = lungs.iter().map(|(l, _)| *l).collect();
    let mut mask: Vec<u8> = labels
        .par_iter()
        .map(|l| u8::from(*l > 0 && keep.contains(l)))
        .collect();
    trim_trachea(&mut mask, &body, hu);
    fill_holes_per_slice(&mut mask, size);
    let lung_volume_ml = mask.iter().filter(|&&m| m == 1).count() as f64 * voxel_ml;
    let radius = (DILATION_MM / g.spacing[0].min(g.spacing[1]).min(g.spacing[2])).round() as usize;
    dilate(&mut mask, size, radius);
    mask.par_iter_mut().zip(&body).for_each(|(m, &b)| *m &= b);

    let bounding_box = bounding_box(&mask, size);
    LungMask {
        mask: Volume {
            geometry: g,
            data: mask,
        },
        body: Volume {
            geometry: g,
            data: body,
        },
        bounding_box,
        lung_volume_ml,
    }
}

/// The HU sum and the bounding box of each of `count` component labels (index 0 unused), over
/// slabs of k-slices in parallel, the slabs' partial results merged in order.
fn component_statistics(
    labels: &[u32],
    hu: &[f32],
    size: [usize; 3],
    count: usize,
) -> (Vec<f64>, Vec<BoundingBox>) {
    let plane = size[0] * size[1];
    let empty = BoundingBox {
        min: [usize::MAX; 3],
        max: [0; 3],
    };
    let slab_planes = size[2].div_ceil(rayon::current_num_threads() * 4).max(1);
    let partial: Vec<(Vec<f64>, Vec<BoundingBox>)> = labels
        .par_chunks(slab_planes * plane)
        .zip(hu.par_chunks(slab_planes * plane))
        .enumerate()
        .map(|(slab, (labels, hu))| {
            let mut sums = vec![0f64; count];
            let mut extents = vec![empty; count];
            let first = slab * slab_planes * plane;
            for (offset, (&l, &value)) in labels.iter().zip(hu).enumerate() {
                if l > 0 {
                    let v = first + offset;
                    sums[l as usize] += f64::from(value);
                    let ijk = [v % size[0], (v / size[0]) % size[1], v / plane];
                    let b = &mut extents[l as usize];
                    for a in 0..3 {
                        b.min[a] = b.min[a].min(ijk[a]);
                        b.max[a] = b.max[a].max(ijk[a]);
                    }
                }
            }
            (sums, extents)
        })
        .collect();
    let mut sums = vec![0f64; count];
    let mut extents = vec![empty; count];
    for (slab_sums, slab_extents) in partial {
        for l in 0..count {
            sums[l] += slab_sums[l];
            for a in 0..3 {
                extents[l].min[a] = extents[l].min[a].min(slab_extents[l].min[a]);
                extents[l].max[a] = extents[l].max[a].max(slab_extents[l].max[a]);
            }
        }
    }
    (sums, extents)
}

fn largest(sizes: &[usize]) -> Option<u32> {
    sizes
        .iter()
        .enumerate()
        .skip(1)
        .max_by_key(|&(_, &n)| n)
        .map(|(l, _)| l as u32)
}

fn bounding_box(mask: &[u8], size: [usize; 3]) -> Option<BoundingBox> {
    let [ni, nj, _] = size;
    let mut min = [usize::MAX; 3];
    let mut max = [0usize; 3];
    let mut any = false;
    for (v, _) in mask.iter().enumerate().filter(|(_, m)| **m == 1) {
        let ijk = [v % ni, (v / ni) % nj, v / (ni * nj)];
        for a in 0..3 {
            min[a] = min[a].min(ijk[a]);
            max[a] = max[a].max(ijk[a]);
        }
        any = true;
    }
    any.then_some(BoundingBox { min, max })
}

/// Clears trachea-only slices above the lung apices (see the module doc).
fn trim_trachea(mask: &mut [u8], body: &[u8], hu: &Volume<f32>) {
    let g = hu.geometry;
    let [ni, nj, nk] = g.size;
    let plane = ni * nj;
    let area_mm2 = g.spacing[0] * g.spacing[1];
    // Which end of the k axis is superior (patient +z in LPS)?
    let superior_first = g.direction[2][2] > 0.0;
    let order: Vec<usize> = if superior_first {
        (0..nk).rev().collect()
    } else {
        (0..nk).collect()
    };
    let centroid_x = |slice: &[u8], k: usize| -> Option<f64> {
        let (mut sum, mut n) = ([0.0; 2], 0usize);
        for (p, _) in slice.iter().enumerate().filter(|(_, m)| **m == 1) {
            sum[0] += (p % ni) as f64;
            sum[1] += (p / ni) as f64;
            n += 1;
        }
        (n > 0).then(|| {
            let centre: Vec3 = [sum[0] / n as f64, sum[1] / n as f64, k as f64];
            g.index_to_patient(centre)[0]
        })
    };
    for k in order {
        let slice = &mask[k * plane..(k + 1) * plane];
        let voxels = slice.iter().filter(|&&m| m == 1).count();
        if voxels == 0 {
            continue;
        }
        let (_, sizes) = components(slice, [ni, nj, 1]);
        let midline = centroid_x(&body[k * plane..(k + 1) * plane], k);
        let blob = centroid_x(slice, k);
        let is_trachea = sizes.len() == 2
            && voxels as f64 * area_mm2 < TRACHEA_MAX_AREA_MM2
            && matches!((midline, blob), (Some(m), Some(b)) if (m - b).abs() < TRACHEA_MIDLINE_MM);
        if !is_trachea {
            break;
        }
        mask[k * plane..(k + 1) * plane].fill(0);
    }
}
