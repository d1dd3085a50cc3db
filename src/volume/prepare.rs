//! The volume stage as the worker and the command line run it: series files -> HU on the
//! acquired grid -> 1 mm isotropic -> lung mask, with the time each step took.

use crate::volume::Volume;
use crate::volume::lung::{LungMask, lung_mask};
use crate::volume::resample::{Interpolation, resample_isotropic};
use crate::volume::series::{AcquiredSeries, SeriesError, load_series};
use std::path::PathBuf;
use std::time::Instant;

/// Spacing of the grid JNSC works on (paper, section IV.B).
pub const NETWORK_SPACING_MM: f64 = 1.0;

/// A series ready for inference.
#[derive(Debug)]
pub struct PreparedVolume {
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
    let series = load_series(files)?;
    let loaded = started.elapsed();
    let hu = resample_isotropic(&series, NETWORK_SPACING_MM, interpolation);
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
