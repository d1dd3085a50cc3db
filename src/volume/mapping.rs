//! The way back: a mask on the 1 mm grid, carried onto the pixel grid of the original slices
//! (what a DICOM Segmentation references). Each source pixel takes the trilinear interpolation
//! of the mask at its centre, thresholded at one half.

use crate::volume::Volume;
use crate::volume::geometry::Vec3;
use crate::volume::series::AcquiredSeries;
use rayon::prelude::*;

/// One frame per source slice (in the series' slice order), rows x columns, 1 inside.
pub fn mask_to_source_slices(mask: &Volume<u8>, series: &AcquiredSeries) -> Vec<Vec<u8>> {
    let g = mask.geometry;
    series
        .slices
        .par_iter()
        .map(|slice| {
            // Continuous mask index of pixel (0, 0) and its change per column and per row.
            let origin = g.patient_to_index(slice.position);
            let step = |direction: Vec3, spacing: f64| -> Vec3 {
                let moved = g.patient_to_index([
                    slice.position[0] + direction[0] * spacing,
                    slice.position[1] + direction[1] * spacing,
                    slice.position[2] + direction[2] * spacing,
                ]);
                [0, 1, 2].map(|a| moved[a] - origin[a])
            };
            let per_column = step(series.row_direction, series.column_spacing_mm);
            let per_row = step(series.column_direction, series.row_spacing_mm);
            let mut frame = vec![0u8; series.rows * series.columns];
            for r in 0..series.rows {
                for c in 0..series.columns {
                    let x: Vec3 = [0, 1, 2]
                        .map(|a| origin[a] + per_column[a] * c as f64 + per_row[a] * r as f64);
                    if trilinear(mask, x) >= 0.5 {
                        frame[r * series.columns + c] = 1;
                    }
                }
            }
            frame
        })
        .collect()
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
