//! Stored CT slices -> Hounsfield units on the acquired grid.
//!
//! Slices are ordered along the slice normal by Image Position (Patient), never by Instance
//! Number or file name. Single-frame CT and enhanced (multi-frame) CT are read; rescale and pixel
//! padding are applied per slice. Each reason to refuse a series is a `SeriesError` whose message
//! tells an operator what is wrong with the data. Tilted acquisitions are refused rather than
//! corrected; irregular spacing up to a limit is kept and resampled on the true positions.
//! Files are read twice: headers first (every check above), then pixels, decoded straight into
//! the volume, so a series is never held twice in memory.

use crate::attributes::{first_item, integer, items, numbers, text};
use crate::volume::geometry::{Geometry, Vec3, cross, dot, norm, sub};
use dicom_core::Tag;
use dicom_dictionary_std::tags;
use dicom_object::DefaultDicomObject;
use dicom_pixeldata::PixelDecoder;
use rayon::prelude::*;
use std::path::{Path, PathBuf};

/// Fewer slices than this cannot hold a chest.
pub const MIN_SLICES: usize = 10;
/// Largest accepted gap between neighbouring slices, as a multiple of the median spacing.
pub const MAX_GAP_FACTOR: f64 = 2.5;
/// Coarsest slice spacing accepted (the real 8 mm series in shared/data must still work).
pub const MAX_SLICE_SPACING_MM: f64 = 10.0;
/// Slices whose in-plane offset drifts by more than this angle from the normal are tilted.
pub const MAX_TILT_DEGREES: f64 = 0.5;
/// Value given to padding pixels (outside the reconstructed field of view): air.
pub const PADDING_HU: f32 = -1000.0;
/// Orientation groups this small are treated as localizers even without the LOCALIZER type.
const MAX_STRAY_FRAMES: usize = 2;

/// Why a series cannot be turned into a volume.
#[derive(Debug, thiserror::Error)]
pub enum SeriesError {
    #[error("the series has no image")]
    NoImages,
    #[error("cannot read {file}: {reason}")]
    Unreadable { file: String, reason: String },
    #[error("{file} lacks {name} {tag}")]
    MissingAttribute {
        file: String,
        name: &'static str,
        tag: Tag,
    },
    #[error("modality is {0}, not CT: only CT series are analysed")]
    NotCt(String),
    #[error(
        "the series mixes {groups} slice orientations; it must be one stack of parallel slices"
    )]
    MixedOrientation { groups: usize },
    #[error(
        "slices differ in {what} ({first} vs {other}): the series mixes images of different geometry"
    )]
    InconsistentGeometry {
        what: &'static str,
        first: String,
        other: String,
    },
    #[error(
        "two slices share the position {position_mm:.2} mm along the slice normal (duplicate or overlapping reconstructions)"
    )]
    DuplicatePosition { position_mm: f64 },
    #[error(
        "gantry tilt of {degrees:.1} degrees: tilted acquisitions are refused; send a reconstruction without tilt"
    )]
    GantryTilt { degrees: f64 },
    #[error("{found} slices: at least {min} are needed")]
    TooFewSlices { found: usize, min: usize },
    #[error(
        "slices are missing: a gap of {gap_mm:.1} mm at {at_mm:.1} mm along the normal, more than {factor}x the usual spacing of {spacing_mm:.2} mm"
    )]
    MissingSlices {
        gap_mm: f64,
        at_mm: f64,
        spacing_mm: f64,
        factor: f64,
    },
    #[error(
        "slice spacing of {spacing_mm:.1} mm is coarser than the {max_mm} mm the analysis supports"
    )]
    TooCoarse { spacing_mm: f64, max_mm: f64 },
    #[error("unsupported pixel data in {file}: {reason}")]
    UnsupportedPixels { file: String, reason: String },
    #[error("{file}: {name} {tag} is invalid: {reason}")]
    InvalidAttribute {
        file: String,
        name: &'static str,
        tag: Tag,
        reason: String,
    },
    #[error(
        "the series spans {extent_mm:?} mm: {voxels} voxels at 1 mm, more than the {max} a chest CT needs"
    )]
    TooLarge {
        extent_mm: [f64; 3],
        voxels: u64,
        max: u64,
    },
}

impl SeriesError {
    /// A short stable code for the database and metrics.
    pub fn code(&self) -> &'static str {
        match self {
            Self::NoImages => "no_images",
            Self::Unreadable { .. } => "unreadable",
            Self::MissingAttribute { .. } => "missing_attribute",
            Self::NotCt(_) => "not_ct",
            Self::MixedOrientation { .. } => "mixed_orientation",
            Self::InconsistentGeometry { .. } => "inconsistent_geometry",
            Self::DuplicatePosition { .. } => "duplicate_position",
            Self::GantryTilt { .. } => "gantry_tilt",
            Self::TooFewSlices { .. } => "too_few_slices",
            Self::MissingSlices { .. } => "missing_slices",
            Self::TooCoarse { .. } => "too_coarse",
            Self::UnsupportedPixels { .. } => "unsupported_pixels",
            Self::InvalidAttribute { .. } => "invalid_attribute",
            Self::TooLarge { .. } => "too_large",
        }
    }
}

/// One original slice (a file, or a frame of a multi-frame file), in volume order.
#[derive(Debug, Clone, PartialEq)]
pub struct SourceSlice {
    pub sop_instance_uid: String,
    /// 1-based frame number for multi-frame images, `None` for single-frame ones.
    pub frame: Option<u32>,
    /// Image Position (Patient) of its first pixel.
    pub position: Vec3,
}

/// A series in Hounsfield units on its acquired grid.
#[derive(Debug, Clone)]
pub struct AcquiredSeries {
    pub series_uid: String,
    pub rows: usize,
    pub columns: usize,
    /// Distance between columns (along the row direction) and between rows, mm.
    pub column_spacing_mm: f64,
    pub row_spacing_mm: f64,
    /// Direction of increasing column index, and of increasing row index.
    pub row_direction: Vec3,
    pub column_direction: Vec3,
    /// Slice normal (row x column direction); slices are sorted along it.
    pub normal: Vec3,
    /// Offsets of the slices along the normal from the first one, ascending, mm.
    pub slice_offsets_mm: Vec<f64>,
    pub slices: Vec<SourceSlice>,
    /// HU, column index fastest, then row, then slice. Empty once `release_pixels` ran, as in
    /// a `PreparedVolume`, whose series serves only for its geometry after resampling.
    pub hu: Vec<f32>,
    /// What was noticed and handled (skipped localizers, irregular spacing...), for the log.
    pub notes: Vec<String>,
}

impl AcquiredSeries {
    /// Frees the acquired pixels (`hu` becomes empty), keeping the geometry, the slices and the
    /// notes: a 600-slice 512x512 series holds 600 MiB of them.
    pub fn release_pixels(&mut self) {
        self.hu = Vec::new();
    }

    /// Median distance between neighbouring slices, mm.
    pub fn median_slice_spacing(&self) -> f64 {
        let mut gaps: Vec<f64> = self
            .slice_offsets_mm
            .windows(2)
            .map(|w| w[1] - w[0])
            .collect();
        gaps.sort_by(f64::total_cmp);
        gaps.get(gaps.len() / 2).copied().unwrap_or(1.0)
    }

    /// A regular volume (e.g. a LUNA16 MetaImage) seen as an acquired series, so that it goes
    /// through the same resampling as DICOM series. Slices are the volume's k planes.
    pub fn from_volume(id: &str, volume: &crate::volume::Volume<f32>) -> Self {
        let g = volume.geometry;
        let [columns, rows, count] = g.size;
        let slices = (0..count)
            .map(|k| SourceSlice {
                sop_instance_uid: format!("{id}#{k}"),
                frame: None,
                position: g.index_to_patient([0.0, 0.0, k as f64]),
            })
            .collect();
        Self {
            series_uid: id.to_owned(),
            rows,
            columns,
            column_spacing_mm: g.spacing[0],
            row_spacing_mm: g.spacing[1],
            row_direction: g.direction[0],
            column_direction: g.direction[1],
            normal: g.direction[2],
            slice_offsets_mm: (0..count).map(|k| k as f64 * g.spacing[2]).collect(),
            slices,
            hu: volume.data.clone(),
            notes: Vec::new(),
        }
    }

    /// The acquired grid as a regular geometry (nominal slice spacing = median spacing).
    pub fn geometry(&self) -> Geometry {
        Geometry {
            origin: self.slices[0].position,
            spacing: [
                self.column_spacing_mm,
                self.row_spacing_mm,
                self.median_slice_spacing(),
            ],
            direction: [self.row_direction, self.column_direction, self.normal],
            size: [self.columns, self.rows, self.slices.len()],
        }
    }
}

/// One frame read from a file, before the series-level checks.
struct Frame {
    sop_instance_uid: String,
    frame: Option<u32>,
    series_uid: String,
    modality: String,
    localizer: bool,
    orientation: [f64; 6],
    position: Vec3,
    pixel_spacing: [f64; 2],
    rows: usize,
    columns: usize,
    /// Where its pixels are: the file (index into the paths read) and the frame in it (0-based).
    file: usize,
    n: u32,
    slope: f32,
    intercept: f32,
}

/// Reads the image files of one series and builds its acquired grid, in two passes: the
/// headers of every file first (no pixel data read), which place each frame; then each file's
/// pixels, decoded straight into its slices of the volume. Peak memory is the volume plus one
/// decoded file per thread, never a second copy of the volume.
pub fn load_series(paths: &[PathBuf]) -> Result<AcquiredSeries, SeriesError> {
    let per_file: Vec<Result<Vec<Frame>, SeriesError>> = paths
        .par_iter()
        .enumerate()
        .map(|(i, p)| read_frames(p, i))
        .collect();
    let mut frames = Vec::new();
    for result in per_file {
        frames.extend(result?);
    }
    let (mut series, frames) = assemble(frames)?;
    let slice = series.rows * series.columns;
    let mut hu = vec![0f32; slice * frames.len()];
    // Each slice of the volume handed to the file that holds it.
    let mut targets: Vec<Vec<(&Frame, &mut [f32])>> = paths.iter().map(|_| Vec::new()).collect();
    for (frame, target) in frames.iter().zip(hu.chunks_exact_mut(slice)) {
        targets[frame.file].push((frame, target));
    }
    targets
        .into_par_iter()
        .enumerate()
        .filter(|(_, t)| !t.is_empty())
        .try_for_each(|(file, targets)| decode_into(&paths[file], targets))?;
    series.hu = hu;
    Ok(series)
}

/// Decodes one file's pixels into the slices `targets` (each frame of it the series keeps).
fn decode_into(path: &Path, targets: Vec<(&Frame, &mut [f32])>) -> Result<(), SeriesError> {
    let file = path.display().to_string();
    let object = open(path, &file, false)?;
    let ctx = FileContext {
        file: &file,
        object: &object,
    };
    let pixels = PixelSource::decode(&ctx)?;
    for (frame, target) in targets {
        pixels.frame_hu(&ctx, frame.n, frame.slope, frame.intercept, target)?;
    }
    Ok(())
}

fn open(path: &Path, file: &str, headers_only: bool) -> Result<DefaultDicomObject, SeriesError> {
    let options = dicom_object::OpenFileOptions::new();
    let options = if headers_only {
        options.read_until(tags::PIXEL_DATA)
    } else {
        options
    };
    options
        .open_file(path)
        .map_err(|e| SeriesError::Unreadable {
            file: file.to_owned(),
            reason: e.to_string(),
        })
}

/// Every `.dcm` (or extension-less) file in a directory, for tools that read a folder.
pub fn files_in(dir: &Path) -> std::io::Result<Vec<PathBuf>> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)?
        .filter_map(|e| e.ok())
        .map(|e| e.path())
        .filter(|p| p.is_file())
        .filter(|p| {
            p.extension()
                .is_none_or(|x| x.eq_ignore_ascii_case("dcm") || x.eq_ignore_ascii_case("ima"))
        })
        .collect();
    files.sort();
    Ok(files)
}

/// Every file below `dir` at any depth, sorted (folders that cannot be read are skipped).
pub fn files_under(dir: &Path) -> Vec<PathBuf> {
    let mut files = Vec::new();
    let mut pending = vec![dir.to_owned()];
    while let Some(dir) = pending.pop() {
        let Ok(entries) = std::fs::read_dir(&dir) else {
            continue;
        };
        for entry in entries.flatten() {
            let path = entry.path();
            if path.is_dir() {
                pending.push(path);
            } else {
                files.push(path);
            }
        }
    }
    files.sort();
    files
}

/// HU of every frame of one image file (single-frame files give one frame), as stored: no
/// geometry checks. For tools and tests that look at single images.
pub fn decode_hu(path: &Path) -> Result<Vec<Vec<f32>>, SeriesError> {
    let frames = read_frames(path, 0)?;
    let mut hu: Vec<Vec<f32>> = frames
        .iter()
        .map(|f| vec![0f32; f.rows * f.columns])
        .collect();
    decode_into(
        path,
        frames
            .iter()
            .zip(hu.iter_mut().map(|h| &mut h[..]))
            .collect(),
    )?;
    Ok(hu)
}

/// Checks and sorts the frames of a series: its grid, with the frames in slice order (the
/// volume's pixels are not read yet: `hu` is empty).
fn assemble(mut frames: Vec<Frame>) -> Result<(AcquiredSeries, Vec<Frame>), SeriesError> {
    let mut notes = Vec::new();
    if frames.is_empty() {
        return Err(SeriesError::NoImages);
    }
    if let Some(other) = frames.iter().find(|f| f.modality != "CT") {
        return Err(SeriesError::NotCt(if other.modality.is_empty() {
            "absent".into()
        } else {
            other.modality.clone()
        }));
    }
    let localizers = frames.iter().filter(|f| f.localizer).count();
    if localizers > 0 {
        frames.retain(|f| !f.localizer);
        notes.push(format!("skipped {localizers} localizer image(s)"));
    }
    // Group by orientation; tiny stray groups are localizers without the LOCALIZER type.
    let mut groups: Vec<(usize, [f64; 6])> = Vec::new();
    for f in &frames {
        match groups
            .iter_mut()
            .find(|(_, o)| same_orientation(o, &f.orientation))
        {
            Some((n, _)) => *n += 1,
            None => groups.push((1, f.orientation)),
        }
    }
    groups.sort_by_key(|&(n, _)| std::cmp::Reverse(n));
    let Some(&(_, main)) = groups.first() else {
        return Err(SeriesError::NoImages);
    };
    if groups.len() > 1 {
        if groups[1..].iter().any(|(n, _)| *n > MAX_STRAY_FRAMES) {
            return Err(SeriesError::MixedOrientation {
                groups: groups.len(),
            });
        }
        let stray: usize = groups[1..].iter().map(|(n, _)| n).sum();
        frames.retain(|f| same_orientation(&f.orientation, &main));
        notes.push(format!(
            "skipped {stray} image(s) of another orientation (scout)"
        ));
    }
    let first = &frames[0];
    for f in &frames[1..] {
        if (f.rows, f.columns) != (first.rows, first.columns) {
            return Err(SeriesError::InconsistentGeometry {
                what: "rows/columns",
                first: format!("{}x{}", first.rows, first.columns),
                other: format!("{}x{}", f.rows, f.columns),
            });
        }
        if (f.pixel_spacing[0] - first.pixel_spacing[0]).abs() > 1e-4
            || (f.pixel_spacing[1] - first.pixel_spacing[1]).abs() > 1e-4
        {
            return Err(SeriesError::InconsistentGeometry {
                what: "pixel spacing",
                first: format!("{:?}", first.pixel_spacing),
                other: format!("{:?}", f.pixel_spacing),
            });
        }
        if f.series_uid != first.series_uid {
            return Err(SeriesError::InconsistentGeometry {
                what: "Series Instance UID",
                first: first.series_uid.clone(),
                other: f.series_uid.clone(),
            });
        }
    }
    if frames.len() < MIN_SLICES {
        return Err(SeriesError::TooFewSlices {
            found: frames.len(),
            min: MIN_SLICES,
        });
    }

    let (rows, columns) = (first.rows, first.columns);
    let pixel_spacing = first.pixel_spacing;
    let series_uid = first.series_uid.clone();
    let row_direction = unit([main[0], main[1], main[2]]);
    let column_direction = unit([main[3], main[4], main[5]]);
    let normal = unit(cross(row_direction, column_direction));
    frames.sort_by(|a, b| dot(a.position, normal).total_cmp(&dot(b.position, normal)));
    let base = dot(frames[0].position, normal);
    let offsets: Vec<f64> = frames
        .iter()
        .map(|f| dot(f.position, normal) - base)
        .collect();
    for (w, f) in offsets.windows(2).zip(&frames[1..]) {
        if w[1] - w[0] < 0.01 {
            return Err(SeriesError::DuplicatePosition {
                position_mm: dot(f.position, normal),
            });
        }
    }
    // Tilt: the stack must advance along the normal, not sideways.
    let last = frames.last().expect("at least MIN_SLICES frames");
    let travel = sub(last.position, frames[0].position);
    let along = dot(travel, normal);
    let sideways = norm(sub(travel, scale(normal, along)));
    let degrees = sideways.atan2(along).to_degrees();
    if degrees > MAX_TILT_DEGREES {
        return Err(SeriesError::GantryTilt { degrees });
    }
    let mut gaps: Vec<f64> = offsets.windows(2).map(|w| w[1] - w[0]).collect();
    gaps.sort_by(f64::total_cmp);
    let spacing = gaps[gaps.len() / 2];
    if spacing > MAX_SLICE_SPACING_MM {
        return Err(SeriesError::TooCoarse {
            spacing_mm: spacing,
            max_mm: MAX_SLICE_SPACING_MM,
        });
    }
    if let Some(w) = offsets
        .windows(2)
        .find(|w| w[1] - w[0] > MAX_GAP_FACTOR * spacing)
    {
        return Err(SeriesError::MissingSlices {
            gap_mm: w[1] - w[0],
            at_mm: base + w[0],
            spacing_mm: spacing,
            factor: MAX_GAP_FACTOR,
        });
    }
    let (min_gap, max_gap) = (gaps[0], gaps[gaps.len() - 1]);
    if max_gap - min_gap > 0.05 * spacing {
        notes.push(format!(
            "irregular slice spacing ({min_gap:.2} to {max_gap:.2} mm): resampled on the true positions"
        ));
    }

    let slices = frames
        .iter()
        .map(|f| SourceSlice {
            sop_instance_uid: f.sop_instance_uid.clone(),
            frame: f.frame,
            position: f.position,
        })
        .collect();
    let series = AcquiredSeries {
        series_uid,
        rows,
        columns,
        column_spacing_mm: pixel_spacing[1],
        row_spacing_mm: pixel_spacing[0],
        row_direction,
        column_direction,
        normal,
        slice_offsets_mm: offsets,
        slices,
        hu: Vec::new(),
        notes,
    };
    Ok((series, frames))
}

fn same_orientation(a: &[f64; 6], b: &[f64; 6]) -> bool {
    a.iter().zip(b).all(|(x, y)| (x - y).abs() < 1e-3)
}

fn unit(v: Vec3) -> Vec3 {
    let n = norm(v);
    if n == 0.0 {
        v
    } else {
        [v[0] / n, v[1] / n, v[2] / n]
    }
}

fn scale(v: Vec3, s: f64) -> Vec3 {
    [v[0] * s, v[1] * s, v[2] * s]
}

/// Reads the headers of one file (`file`: its index in the paths read): every image frame in
/// it, placed, with how to turn its stored values into HU; the pixels are not read.
fn read_frames(path: &Path, file_index: usize) -> Result<Vec<Frame>, SeriesError> {
    let file = path.display().to_string();
    let object = open(path, &file, true)?;
    let ctx = FileContext {
        file: &file,
        object: &object,
    };
    let sop_instance_uid = ctx.required_text(tags::SOP_INSTANCE_UID, "SOP Instance UID")?;
    let series_uid = ctx.required_text(tags::SERIES_INSTANCE_UID, "Series Instance UID")?;
    let modality = text(&object, tags::MODALITY).unwrap_or_default();
    let rows = ctx.required_number(tags::ROWS, "Rows")?;
    let columns = ctx.required_number(tags::COLUMNS, "Columns")?;
    let frame_count = integer(&object, tags::NUMBER_OF_FRAMES).unwrap_or(1).max(1);
    let bits_allocated = integer(&object, tags::BITS_ALLOCATED).unwrap_or(16);
    let samples = integer(&object, tags::SAMPLES_PER_PIXEL).unwrap_or(1);
    // Before anything is decoded or reserved: the size the pixels claim.
    let (rows, columns, frame_count) =
        decoded_size_within_limits(&ctx, [rows, columns, frame_count, samples, bits_allocated])?;
    let image_type_localizer = text(&object, tags::IMAGE_TYPE)
        .is_some_and(|t| t.split('\\').any(|v| v.trim() == "LOCALIZER"));
    let shared = first_item(&object, tags::SHARED_FUNCTIONAL_GROUPS_SEQUENCE);
    let per_frame = items(&object, tags::PER_FRAME_FUNCTIONAL_GROUPS_SEQUENCE);
    let multi_frame = per_frame.is_some();

    let mut frames = Vec::with_capacity(frame_count as usize);
    for n in 0..frame_count {
        let frame_groups = per_frame.and_then(|items| items.get(n as usize));
        // A functional group is looked up in the frame's item, then in the shared item, then
        // (single-frame images) at the top level.
        let lookup = |sequence: Tag, tag: Tag| -> Option<Vec<f64>> {
            [frame_groups, shared]
                .into_iter()
                .flatten()
                .find_map(|groups| first_item(groups, sequence).and_then(|i| numbers(i, tag)))
                .or_else(|| (!multi_frame).then(|| numbers(&object, tag)).flatten())
        };
        let orientation = lookup(
            tags::PLANE_ORIENTATION_SEQUENCE,
            tags::IMAGE_ORIENTATION_PATIENT,
        )
        .filter(|v| v.len() == 6)
        .ok_or_else(|| {
            ctx.missing(
                "Image Orientation (Patient)",
                tags::IMAGE_ORIENTATION_PATIENT,
            )
        })?;
        let position = lookup(tags::PLANE_POSITION_SEQUENCE, tags::IMAGE_POSITION_PATIENT)
            .filter(|v| v.len() == 3)
            .ok_or_else(|| ctx.missing("Image Position (Patient)", tags::IMAGE_POSITION_PATIENT))?;
        let pixel_spacing = lookup(tags::PIXEL_MEASURES_SEQUENCE, tags::PIXEL_SPACING)
            .filter(|v| v.len() == 2)
            .ok_or_else(|| ctx.missing("Pixel Spacing", tags::PIXEL_SPACING))?;
        check_geometry(&ctx, &orientation, &position, &pixel_spacing)?;
        let slope = lookup(
            tags::PIXEL_VALUE_TRANSFORMATION_SEQUENCE,
            tags::RESCALE_SLOPE,
        )
        .and_then(|v| v.first().copied())
        .unwrap_or(1.0);
        let intercept = lookup(
            tags::PIXEL_VALUE_TRANSFORMATION_SEQUENCE,
            tags::RESCALE_INTERCEPT,
        )
        .and_then(|v| v.first().copied())
        .unwrap_or(0.0);
        if !slope.is_finite() || !intercept.is_finite() {
            return Err(ctx.invalid(
                "Rescale Slope/Intercept",
                tags::RESCALE_SLOPE,
                format!("{slope} / {intercept}"),
            ));
        }
        let frame_localizer = [frame_groups, shared]
            .into_iter()
            .flatten()
            .find_map(|g| first_item(g, tags::CT_IMAGE_FRAME_TYPE_SEQUENCE))
            .and_then(|i| text(i, tags::FRAME_TYPE))
            .is_some_and(|t| t.split('\\').any(|v| v.trim() == "LOCALIZER"));
        frames.push(Frame {
            sop_instance_uid: sop_instance_uid.clone(),
            frame: multi_frame.then_some(n + 1),
            series_uid: series_uid.clone(),
            modality: modality.clone(),
            localizer: image_type_localizer || frame_localizer,
            orientation: [
                orientation[0],
                orientation[1],
                orientation[2],
                orientation[3],
                orientation[4],
                orientation[5],
            ],
            position: [position[0], position[1], position[2]],
            pixel_spacing: [pixel_spacing[0], pixel_spacing[1]],
            rows,
            columns,
            file: file_index,
            n,
            slope: slope as f32,
            intercept: intercept as f32,
        });
    }
    Ok(frames)
}

/// Coarsest in-plane pixel spacing accepted, mm.
pub const MAX_PIXEL_SPACING_MM: f64 = 10.0;

/// Orientation, position and pixel spacing of a frame: finite, two orthogonal unit vectors,
/// spacing in (0, [`MAX_PIXEL_SPACING_MM`]].
fn check_geometry(
    ctx: &FileContext<'_>,
    orientation: &[f64],
    position: &[f64],
    pixel_spacing: &[f64],
) -> Result<(), SeriesError> {
    let finite = |v: &[f64]| v.iter().all(|x| x.is_finite());
    let (row, column) = (
        [orientation[0], orientation[1], orientation[2]],
        [orientation[3], orientation[4], orientation[5]],
    );
    let unit = |v: Vec3| (norm(v) - 1.0).abs() < 0.01;
    if !finite(orientation) || !unit(row) || !unit(column) || dot(row, column).abs() > 0.01 {
        return Err(ctx.invalid(
            "Image Orientation (Patient)",
            tags::IMAGE_ORIENTATION_PATIENT,
            format!("{orientation:?} is not two orthogonal unit vectors"),
        ));
    }
    if !finite(position) {
        return Err(ctx.invalid(
            "Image Position (Patient)",
            tags::IMAGE_POSITION_PATIENT,
            format!("{position:?} is not finite"),
        ));
    }
    if !pixel_spacing
        .iter()
        .all(|&s| s > 0.0 && s <= MAX_PIXEL_SPACING_MM)
    {
        return Err(ctx.invalid(
            "Pixel Spacing",
            tags::PIXEL_SPACING,
            format!("{pixel_spacing:?} is not in (0, {MAX_PIXEL_SPACING_MM}] mm"),
        ));
    }
    Ok(())
}

/// Most frames a file may hold (an enhanced CT of a whole body at 0.5 mm has about 4,000).
pub const MAX_FRAMES: i64 = 10_000;
/// Most bytes a file's pixels may decode to (2,000 frames of 512x512 at 16 bits is 1 GiB).
pub const MAX_DECODED_BYTES: i64 = 4 << 30;

/// Rows, columns and frames of a file (with its samples per pixel and bits allocated), checked
/// before anything is decoded or reserved: each positive, at most [`MAX_FRAMES`] frames, at most
/// [`MAX_DECODED_BYTES`] in all. Values from a file are never trusted as allocation sizes.
fn decoded_size_within_limits(
    ctx: &FileContext<'_>,
    [rows, columns, frames, samples, bits]: [i64; 5],
) -> Result<(usize, usize, u32), SeriesError> {
    if rows <= 0 || columns <= 0 || samples <= 0 || bits <= 0 {
        return Err(ctx.unsupported(format!(
            "{rows} rows, {columns} columns, {samples} samples per pixel, {bits} bits allocated"
        )));
    }
    if frames > MAX_FRAMES {
        return Err(ctx.unsupported(format!("{frames} frames (at most {MAX_FRAMES} per file)")));
    }
    let bytes = [rows, columns, frames, samples, (bits + 7) / 8]
        .into_iter()
        .try_fold(1i64, i64::checked_mul)
        .filter(|&b| b <= MAX_DECODED_BYTES);
    if bytes.is_none() {
        return Err(ctx.unsupported(format!(
            "{rows} x {columns} x {frames} frames would decode to more than {MAX_DECODED_BYTES} \
             bytes"
        )));
    }
    Ok((rows as usize, columns as usize, frames as u32))
}

/// The file being read, for error messages.
struct FileContext<'a> {
    file: &'a str,
    object: &'a DefaultDicomObject,
}

impl FileContext<'_> {
    fn missing(&self, name: &'static str, tag: Tag) -> SeriesError {
        SeriesError::MissingAttribute {
            file: self.file.to_owned(),
            name,
            tag,
        }
    }

    fn required_text(&self, tag: Tag, name: &'static str) -> Result<String, SeriesError> {
        text(self.object, tag).ok_or_else(|| self.missing(name, tag))
    }

    fn required_number(&self, tag: Tag, name: &'static str) -> Result<i64, SeriesError> {
        integer(self.object, tag).ok_or_else(|| self.missing(name, tag))
    }

    fn invalid(&self, name: &'static str, tag: Tag, reason: String) -> SeriesError {
        SeriesError::InvalidAttribute {
            file: self.file.to_owned(),
            name,
            tag,
            reason,
        }
    }

    fn unsupported(&self, reason: String) -> SeriesError {
        SeriesError::UnsupportedPixels {
            file: self.file.to_owned(),
            reason,
        }
    }
}

/// Decoded stored values of every frame, and how to read them.
struct PixelSource<'a> {
    decoded: dicom_pixeldata::DecodedPixelData<'a>,
    bits_allocated: u16,
    bits_stored: u16,
    signed: bool,
    padding: Option<(i32, i32)>,
}

impl<'a> PixelSource<'a> {
    fn decode(ctx: &FileContext<'a>) -> Result<Self, SeriesError> {
        let decoded = ctx
            .object
            .decode_pixel_data()
            .map_err(|e| ctx.unsupported(e.to_string()))?;
        if decoded.samples_per_pixel() != 1 {
            return Err(ctx.unsupported(format!(
                "{} samples per pixel (CT is monochrome)",
                decoded.samples_per_pixel()
            )));
        }
        let photometric = decoded.photometric_interpretation().as_str().to_owned();
        if photometric != "MONOCHROME2" {
            return Err(ctx.unsupported(format!("photometric interpretation {photometric}")));
        }
        let bits_allocated = decoded.bits_allocated();
        if bits_allocated != 8 && bits_allocated != 16 {
            return Err(ctx.unsupported(format!("{bits_allocated} bits allocated")));
        }
        let signed = decoded.pixel_representation() == dicom_pixeldata::PixelRepresentation::Signed;
        let padding_value = integer(ctx.object, tags::PIXEL_PADDING_VALUE).map(|v| v as i32);
        let padding_limit = integer(ctx.object, tags::PIXEL_PADDING_RANGE_LIMIT).map(|v| v as i32);
        let padding = padding_value.map(|v| {
            let w = padding_limit.unwrap_or(v);
            (v.min(w), v.max(w))
        });
        Ok(Self {
            bits_stored: decoded.bits_stored().clamp(1, bits_allocated),
            bits_allocated,
            signed,
            padding,
            decoded,
        })
    }

    /// HU of frame `n` (0-based) into `out` (one value per pixel).
    fn frame_hu(
        &self,
        ctx: &FileContext<'_>,
        n: u32,
        slope: f32,
        intercept: f32,
        out: &mut [f32],
    ) -> Result<(), SeriesError> {
        let bytes_per_pixel = usize::from(self.bits_allocated / 8);
        let frame_bytes = out.len() * bytes_per_pixel;
        let start = n as usize * frame_bytes;
        let raw = self
            .decoded
            .data()
            .get(start..start + frame_bytes)
            .ok_or_else(|| ctx.unsupported(format!("frame {} is missing or short", n + 1)))?;
        let shift = 32 - u32::from(self.bits_stored);
        let value = |word: u32| -> i32 {
            if self.signed {
                ((word << shift) as i32) >> shift
            } else {
                ((word << shift) >> shift) as i32
            }
        };
        let to_hu = |stored: i32| -> f32 {
            match self.padding {
                Some((lo, hi)) if stored >= lo && stored <= hi => PADDING_HU,
                _ => stored as f32 * slope + intercept,
            }
        };
        if bytes_per_pixel == 2 {
            for (o, b) in out.iter_mut().zip(raw.chunks_exact(2)) {
                *o = to_hu(value(u32::from(u16::from_le_bytes([b[0], b[1]]))));
            }
        } else {
            for (o, &b) in out.iter_mut().zip(raw) {
                *o = to_hu(value(u32::from(b)));
            }
        }
        Ok(())
    }
}
