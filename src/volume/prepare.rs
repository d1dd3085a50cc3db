//! The volume stage as the worker and the command line run it: series files -> HU on the
//! acquired grid -> 1 mm isotropic -> lung mask, with the time each step took. The acquired
//! pixels are freed once resampled, so the lung mask and inference do not hold them.

use crate::volume::Volume;
use crate::volume::lung::{LungMask, lung_mask};
use crate::volume::resample::{Interpolation, isotropic_geometry, resample_isotropic};
use crate::volume::series::{AcquiredSeries, SeriesError, load_series};
use std::path::PathBuf;
use std::time::Instant;

/// Spacing of the grid JNSC works on (paper, section IV.B).
pub const NETWORK_SPACING_MM: f64 = 1.0;
/// Most voxels of the 1 mm grid: 600 x 600 x 1100 mm, far beyond a chest. Larger series are
/// refused before anything is allocated for them.
pub const MAX_GRID_VOXELS: u64 = 400_000_000;

/// A series ready for inference.
#[derive(Debug)]
pub struct PreparedVolume {
    /// The acquired series' geometry and slices, its pixels released (`hu` is empty): what
    /// follows maps findings back to its slices and never reads its pixels.
    pub series: AcquiredSeries,
    /// HU on the isotropic grid.
    pub hu: Volume<f32>,
    pub lungs: LungMask,
    pub timings_ms: StageTimings,
}

/// Milliseconds per step.
#[derive(Debug, Clone, Copy, Default, serde::Serialize)]
pub struct StageTimings {
    pub load: f64,
    pub resample: f64,
    pub lung_mask: f64,
}

/// Loads, resamples and segments the lungs of one series.
pub fn prepare(
    files: &[PathBuf],
    interpolation: Interpolation,
) -> Result<PreparedVolume, SeriesError> {
    let started = Instant::now();
    let mut series = load_series(files)?;
    let grid = isotropic_geometry(&series, NETWORK_SPACING_MM);
    let voxels = grid
        .size
        .iter()
        .try_fold(1u64, |n, &s| n.checked_mul(s as u64))
        .unwrap_or(u64::MAX);
    if voxels > MAX_GRID_VOXELS {
        return Err(SeriesError::TooLarge {
            extent_mm: grid.size.map(|s| s as f64 * NETWORK_SPACING_MM),
            voxels,
            max: MAX_GRID_VOXELS,
        });
    }
    let loaded = started.elapsed();
    let hu = resample_isotropic(&series, NETWORK_SPACING_MM, interpolation);
    series.release_pixels();
    let resampled = started.elapsed();
    let lungs = lung_mask(&hu);
    let done = started.elapsed();
    let ms = |d: std::time::Duration| d.as_secs_f64() * 1000.0;
    Ok(PreparedVolume {
        series,
        hu,
        lungs,
        timings_ms: StageTimings {
            load: ms(loaded),
            resample: ms(resampled - loaded),
            lung_mask: ms(done - resampled),
        },
    })
}
