//! The way back: a mask on the 1 mm grid, carried onto the pixel grid of the original slices
//! (what a DICOM Segmentation references). Each source pixel takes the trilinear interpolation
//! of the mask at its centre, thresholded at one half.

use crate::volume::Volume;
use crate::volume::geometry::Vec3;
use crate::volume::series::AcquiredSeries;
use rayon::prelude::*;

/// The mask on one source slice: rows x columns, 1 inside.
#[derive(Debug, Clone, PartialEq)]
pub struct SliceMask {
    /// Index of the slice in the series' slice order.
    pub slice: usize,
    pub pixels: Vec<u8>,
}

/// The source slices the mask touches, each with its pixels, in slice order. Only the pixels
/// whose centre can fall inside the mask's grid are evaluated, so the cost follows the mask's
/// size, not the series'.
pub fn mask_footprint(mask: &Volume<u8>, series: &AcquiredSeries) -> Vec<SliceMask> {
    let g = mask.geometry;
    // Corners of the mask grid's extent (voxel edges), in patient coordinates.
    let corners: Vec<Vec3> = (0..8)
        .map(|corner| {
            let index = [0, 1, 2].map(|a| {
                if (corner >> a) & 1 == 1 {
                    g.size[a] as f64 - 0.5
                } else {
                    -0.5
                }
            });
            g.index_to_patient(index)
        })
        .collect();
    let along = |p: Vec3, origin: Vec3, direction: Vec3| -> f64 {
        (0..3).map(|a| (p[a] - origin[a]) * direction[a]).sum()
    };
    let first = series.slices[0].position;
    let normal_range = span(corners.iter().map(|&p| along(p, first, series.normal)));
    series
        .slices
        .par_iter()
        .enumerate()
        .filter_map(|(index, slice)| {
            let offset = along(slice.position, first, series.normal);
            if offset < normal_range.0 || offset > normal_range.1 {
                return None;
            }
            let pixel_range = |direction: Vec3, spacing: f64, count: usize| {
                let (lo, hi) = span(
                    corners
                        .iter()
                        .map(|&p| along(p, slice.position, direction) / spacing),
                );
                let lo = lo.floor().max(0.0) as usize;
                let hi = (hi.ceil().max(-1.0) as i64).min(count as i64 - 1);
                lo..(hi + 1).max(lo as i64) as usize
            };
            let columns = pixel_range(
                series.row_direction,
                series.column_spacing_mm,
                series.columns,
            );
            let rows = pixel_range(series.column_direction, series.row_spacing_mm, series.rows);
            let origin = g.patient_to_index(slice.position);
            let step = |direction: Vec3, spacing: f64| -> Vec3 {
                let moved = g.patient_to_index(
                    [0, 1, 2].map(|a| slice.position[a] + direction[a] * spacing),
                );
                [0, 1, 2].map(|a| moved[a] - origin[a])
            };
            let per_column = step(series.row_direction, series.column_spacing_mm);
            let per_row = step(series.column_direction, series.row_spacing_mm);
            let mut pixels = vec![0u8; series.rows * series.columns];
            let mut any = false;
            for r in rows {
                for c in columns.clone() {
                    let x: Vec3 = [0, 1, 2]
                        .map(|a| origin[a] + per_column[a] * c as f64 + per_row[a] * r as f64);
                    if trilinear(mask, x) >= 0.5 {
                        pixels[r * series.columns + c] = 1;
                        any = true;
                    }
                }
            }
            any.then_some(SliceMask {
                slice: index,
                pixels,
            })
        })
        .collect()
}

/// One frame per source slice (in the series' slice order), rows x columns, 1 inside.
pub fn mask_to_source_slices(mask: &Volume<u8>, series: &AcquiredSeries) -> Vec<Vec<u8>> {
    let mut frames = vec![vec![0u8; series.rows * series.columns]; series.slices.len()];
    for touched in mask_footprint(mask, series) {
        frames[touched.slice] = touched.pixels;
    }
    frames
}

/// Smallest and largest of some values.
fn span(values: impl Iterator<Item = f64>) -> (f64, f64) {
    values.fold((f64::INFINITY, f64::NEG_INFINITY), |(lo, hi), v| {
        (lo.min(v), hi.max(v))
    })
}

/// Trilinear interpolation of a 0/1 mask at a continuous index (0 outside the grid).
fn trilinear(mask: &Volume<u8>, x: Vec3) -> f64 {
    let size = mask.geometry.size;
    let mut base = [0i64; 3];
    let mut t = [0f64; 3];
    for a in 0..3 {
        if x[a] < -0.5 || x[a] > size[a] as f64 - 0.5 {
            return 0.0;
        }
        base[a] = x[a].floor() as i64;
        t[a] = x[a] - base[a] as f64;
    }
    let mut sum = 0.0;
    for corner in 0..8 {
        let offset = [corner & 1, (corner >> 1) & 1, (corner >> 2) & 1];
        let mut weight = 1.0;
        let mut index = [0usize; 3];
        for a in 0..3 {
            let i = base[a] + offset[a] as i64;
            weight *= if offset[a] == 1 { t[a] } else { 1.0 - t[a] };
            index[a] = i.clamp(0, size[a] as i64 - 1) as usize;
        }
        if weight > 0.0 {
            sum += weight * f64::from(mask.at(index[0], index[1], index[2]));
        }
    }
    sum
}
