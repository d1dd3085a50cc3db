//! Writes CT series with known geometry and content: single-frame CT Image Storage (one Part 10
//! file per slice) or one Enhanced CT Image Storage file, explicit or implicit VR little endian,
//! with
//! consistent patient/study/series modules. Everything is derived from a seed, so the same spec
//! always gives the same files and UIDs. Used by tests, benchmarks and `jnsc synth`.

use crate::attributes::decimal_string;
use crate::random::Rng;
use crate::volume::geometry::{Vec3, cross, dot};
use dicom_core::value::DataSetSequence;
use dicom_core::{DataElement, Length, PrimitiveValue, Tag, VR};
use dicom_dictionary_std::{tags, uids};
use dicom_object::InMemDicomObject;
use std::path::{Path, PathBuf};

/// What the voxels hold.
#[derive(Debug, Clone, PartialEq)]
pub enum Content {
    /// A simple chest-like phantom: air, an elliptic body, two lungs, a spine, with noise.
    Phantom,
    /// HU = gradient . position (mm) + offset, exactly (no noise): a known value everywhere.
    Ramp { gradient: Vec3, offset: f64 },
    /// Given HU, one plane (rows x columns, column index fastest) per slice in file order.
    Planes(std::sync::Arc<Vec<Vec<f32>>>),
}

/// What series to make.
#[derive(Debug, Clone)]
pub struct SeriesSpec {
    pub slices: usize,
    pub rows: u16,
    pub columns: u16,
    /// In-plane pixel spacing, mm.
    pub pixel_spacing_mm: f64,
    /// Distance between slice centres (and slice thickness), mm.
    pub slice_spacing_mm: f64,
    /// Image Orientation (Patient): direction of the rows, then of the columns.
    pub row_direction: Vec3,
    pub column_direction: Vec3,
    /// Slice offsets along the normal (mm from the centre) in file order; `None`: evenly spaced,
    /// written from the highest offset down, as scanners usually do.
    pub slice_offsets_mm: Option<Vec<f64>>,
    pub content: Content,
    /// Also write a lateral localizer (scout) image into the series.
    pub with_localizer: bool,
    /// Patient Position (0018,5100): HFS, FFS, HFP or FFP.
    pub patient_position: String,
    /// Transfer syntax UID of the files (explicit or implicit VR little endian).
    pub transfer_syntax: String,
    pub seed: u64,
    pub patient_id: String,
}

impl Default for SeriesSpec {
    fn default() -> Self {
        Self {
            slices: 20,
            rows: 64,
            columns: 64,
            pixel_spacing_mm: 0.7,
            slice_spacing_mm: 1.25,
            row_direction: [1.0, 0.0, 0.0],
            column_direction: [0.0, 1.0, 0.0],
            slice_offsets_mm: None,
            content: Content::Phantom,
            with_localizer: false,
            patient_position: "FFS".into(),
            transfer_syntax: uids::EXPLICIT_VR_LITTLE_ENDIAN.into(),
            seed: 1,
            patient_id: "SYNTH0001".into(),
        }
    }
}

impl SeriesSpec {
    pub fn normal(&self) -> Vec3 {
        cross(self.row_direction, self.column_direction)
    }

    /// Slice offsets along the normal, in file order.
    pub fn offsets(&self) -> Vec<f64> {
        self.slice_offsets_mm.clone().unwrap_or_else(|| {
            let half = (self.slices as f64 - 1.0) / 2.0;
            (0..self.slices)
                .map(|k| (half - k as f64) * self.slice_spacing_mm)
                .collect()
        })
    }

    /// Image Position (Patient) of a slice at `offset` along the normal: the slice is centred
    /// on the normal through the patient origin.
    pub fn position(&self, offset: f64) -> Vec3 {
        let n = self.normal();
        let half_w = (f64::from(self.columns) - 1.0) / 2.0 * self.pixel_spacing_mm;
        let half_h = (f64::from(self.rows) - 1.0) / 2.0 * self.pixel_spacing_mm;
        [0, 1, 2].map(|a| {
            n[a] * offset - self.row_direction[a] * half_w - self.column_direction[a] * half_h
        })
    }
}

/// UIDs and files of a written series.
#[derive(Debug, Clone)]
pub struct WrittenSeries {
    pub study_uid: String,
    pub series_uid: String,
    pub sop_instance_uids: Vec<String>,
    pub files: Vec<PathBuf>,
}

/// The UIDs shared by every image of a series.
struct SeriesIds {
    study: String,
    series: String,
    frame_of_reference: String,
}

fn put(object: &mut InMemDicomObject, tag: Tag, vr: VR, value: PrimitiveValue) {
    object.put(DataElement::new(tag, vr, value));
}

fn strs<const N: usize>(values: [&str; N]) -> PrimitiveValue {
    PrimitiveValue::Strs(values.iter().map(|s| s.to_string()).collect())
}

fn decimals(values: &[f64]) -> PrimitiveValue {
    PrimitiveValue::Strs(values.iter().map(|&v| decimal_string(v)).collect())
}

fn sequence(tag: Tag, items: Vec<InMemDicomObject>) -> DataElement<InMemDicomObject> {
    DataElement::new(tag, VR::SQ, DataSetSequence::new(items, Length::UNDEFINED))
}

fn item(elements: Vec<(Tag, VR, PrimitiveValue)>) -> InMemDicomObject {
    InMemDicomObject::from_element_iter(
        elements
            .into_iter()
            .map(|(tag, vr, value)| DataElement::new(tag, vr, value)),
    )
}

/// Patient, study, series, equipment and image-pixel attributes common to both writers.
fn common_attributes(spec: &SeriesSpec, ids: &SeriesIds, sop_class: &str) -> InMemDicomObject {
    let mut o = InMemDicomObject::new_empty();
    let s = |v: &str| PrimitiveValue::from(v);
    put(
        &mut o,
        tags::SPECIFIC_CHARACTER_SET,
        VR::CS,
        s("ISO_IR 100"),
    );
    put(&mut o, tags::SOP_CLASS_UID, VR::UI, s(sop_class));
    put(&mut o, tags::STUDY_DATE, VR::DA, s("20260101"));
    put(&mut o, tags::SERIES_DATE, VR::DA, s("20260101"));
    put(&mut o, tags::CONTENT_DATE, VR::DA, s("20260101"));
    put(&mut o, tags::STUDY_TIME, VR::TM, s("090000"));
    put(&mut o, tags::CONTENT_TIME, VR::TM, s("090000"));
    put(&mut o, tags::ACCESSION_NUMBER, VR::SH, s("SYN0001"));
    put(&mut o, tags::MODALITY, VR::CS, s("CT"));
    put(&mut o, tags::MANUFACTURER, VR::LO, s("JNSC synthetic"));
    put(&mut o, tags::REFERRING_PHYSICIAN_NAME, VR::PN, s(""));
    put(
        &mut o,
        tags::STUDY_DESCRIPTION,
        VR::LO,
        s("CT CHEST LOW DOSE"),
    );
    put(
        &mut o,
        tags::SERIES_DESCRIPTION,
        VR::LO,
        s("SYNTHETIC AXIAL"),
    );
    put(&mut o, tags::PATIENT_NAME, VR::PN, s("SYNTHETIC^PHANTOM"));
    put(&mut o, tags::PATIENT_ID, VR::LO, s(&spec.patient_id));
    put(&mut o, tags::PATIENT_BIRTH_DATE, VR::DA, s("19600101"));
    put(&mut o, tags::PATIENT_SEX, VR::CS, s("O"));
    put(&mut o, tags::BODY_PART_EXAMINED, VR::CS, s("CHEST"));
    put(
        &mut o,
        tags::SLICE_THICKNESS,
        VR::DS,
        decimals(&[spec.slice_spacing_mm]),
    );
    put(&mut o, tags::KVP, VR::DS, s("120"));
    put(
        &mut o,
        tags::PATIENT_POSITION,
        VR::CS,
        s(&spec.patient_position),
    );
    put(&mut o, tags::STUDY_INSTANCE_UID, VR::UI, s(&ids.study));
    put(&mut o, tags::SERIES_INSTANCE_UID, VR::UI, s(&ids.series));
    put(&mut o, tags::STUDY_ID, VR::SH, s("1"));
    put(&mut o, tags::SERIES_NUMBER, VR::IS, s("2"));
    put(
        &mut o,
        tags::FRAME_OF_REFERENCE_UID,
        VR::UI,
        s(&ids.frame_of_reference),
    );
    put(&mut o, tags::POSITION_REFERENCE_INDICATOR, VR::LO, s(""));
    put(
        &mut o,
        tags::SAMPLES_PER_PIXEL,
        VR::US,
        PrimitiveValue::from(1u16),
    );
    put(
        &mut o,
        tags::PHOTOMETRIC_INTERPRETATION,
        VR::CS,
        s("MONOCHROME2"),
    );
    put(&mut o, tags::ROWS, VR::US, PrimitiveValue::from(spec.rows));
    put(
        &mut o,
        tags::COLUMNS,
        VR::US,
        PrimitiveValue::from(spec.columns),
    );
    put(
        &mut o,
        tags::BITS_ALLOCATED,
        VR::US,
        PrimitiveValue::from(16u16),
    );
    put(
        &mut o,
        tags::BITS_STORED,
        VR::US,
        PrimitiveValue::from(12u16),
    );
    put(&mut o, tags::HIGH_BIT, VR::US, PrimitiveValue::from(11u16));
    put(
        &mut o,
        tags::PIXEL_REPRESENTATION,
        VR::US,
        PrimitiveValue::from(0u16),
    );
    o
}

fn write_part10(
    object: InMemDicomObject,
    spec: &SeriesSpec,
    sop_class: &str,
    sop_uid: &str,
    path: &Path,
) -> std::io::Result<()> {
    let meta = crate::write::file_meta(sop_class, sop_uid, spec.transfer_syntax.as_str());
    let file = object.with_meta(meta).map_err(std::io::Error::other)?;
    file.write_to_file(path).map_err(std::io::Error::other)
}

fn ids(rng: &mut Rng) -> SeriesIds {
    SeriesIds {
        study: rng.uid(),
        series: rng.uid(),
        frame_of_reference: rng.uid(),
    }
}

/// Writes the series into `dir` as `CT000001.dcm`, ... (one file per slice).
pub fn write_ct_series(spec: &SeriesSpec, dir: &Path) -> std::io::Result<WrittenSeries> {
    std::fs::create_dir_all(dir)?;
    let mut rng = Rng::new(spec.seed);
    let ids = ids(&mut rng);
    let mut written = WrittenSeries {
        study_uid: ids.study.clone(),
        series_uid: ids.series.clone(),
        sop_instance_uids: Vec::new(),
        files: Vec::new(),
    };
    let s = |v: &str| PrimitiveValue::from(v);
    for (index, offset) in spec.offsets().into_iter().enumerate() {
        let sop_uid = rng.uid();
        let mut o = common_attributes(spec, &ids, uids::CT_IMAGE_STORAGE);
        let position = spec.position(offset);
        put(
            &mut o,
            tags::IMAGE_TYPE,
            VR::CS,
            strs(["ORIGINAL", "PRIMARY", "AXIAL"]),
        );
        put(&mut o, tags::SOP_INSTANCE_UID, VR::UI, s(&sop_uid));
        put(
            &mut o,
            tags::INSTANCE_NUMBER,
            VR::IS,
            s(&(index + 1).to_string()),
        );
        put(
            &mut o,
            tags::IMAGE_POSITION_PATIENT,
            VR::DS,
            decimals(&position),
        );
        put(
            &mut o,
            tags::IMAGE_ORIENTATION_PATIENT,
            VR::DS,
            orientation(spec),
        );
        put(
            &mut o,
            tags::SLICE_LOCATION,
            VR::DS,
            decimals(&[dot(position, spec.normal())]),
        );
        put(
            &mut o,
            tags::PIXEL_SPACING,
            VR::DS,
            decimals(&[spec.pixel_spacing_mm; 2]),
        );
        put(&mut o, tags::ACQUISITION_NUMBER, VR::IS, s("1"));
        put(&mut o, tags::WINDOW_CENTER, VR::DS, s("-600"));
        put(&mut o, tags::WINDOW_WIDTH, VR::DS, s("1500"));
        put(&mut o, tags::RESCALE_INTERCEPT, VR::DS, s("-1024"));
        put(&mut o, tags::RESCALE_SLOPE, VR::DS, s("1"));
        put(&mut o, tags::RESCALE_TYPE, VR::LO, s("HU"));
        let pixels = slice_pixels(spec, index, offset, &mut rng);
        put(
            &mut o,
            tags::PIXEL_DATA,
            VR::OW,
            PrimitiveValue::U16(pixels.into()),
        );
        let path = dir.join(format!("CT{:06}.dcm", index + 1));
        write_part10(o, spec, uids::CT_IMAGE_STORAGE, &sop_uid, &path)?;
        written.sop_instance_uids.push(sop_uid);
        written.files.push(path);
    }
    if spec.with_localizer {
        let (uid, path) = write_localizer(spec, &ids, &mut rng, dir)?;
        written.sop_instance_uids.push(uid);
        written.files.push(path);
    }
    Ok(written)
}

/// A lateral scout of the same series: another orientation, ImageType LOCALIZER.
fn write_localizer(
    spec: &SeriesSpec,
    ids: &SeriesIds,
    rng: &mut Rng,
    dir: &Path,
) -> std::io::Result<(String, PathBuf)> {
    let sop_uid = rng.uid();
    let s = |v: &str| PrimitiveValue::from(v);
    let mut o = common_attributes(spec, ids, uids::CT_IMAGE_STORAGE);
    put(
        &mut o,
        tags::IMAGE_TYPE,
        VR::CS,
        strs(["ORIGINAL", "PRIMARY", "LOCALIZER"]),
    );
    put(&mut o, tags::SOP_INSTANCE_UID, VR::UI, s(&sop_uid));
    put(&mut o, tags::INSTANCE_NUMBER, VR::IS, s("999"));
    put(
        &mut o,
        tags::IMAGE_POSITION_PATIENT,
        VR::DS,
        decimals(&[0.0, -200.0, 200.0]),
    );
    put(
        &mut o,
        tags::IMAGE_ORIENTATION_PATIENT,
        VR::DS,
        decimals(&[0.0, 1.0, 0.0, 0.0, 0.0, -1.0]),
    );
    put(&mut o, tags::PIXEL_SPACING, VR::DS, decimals(&[1.0, 1.0]));
    put(&mut o, tags::RESCALE_INTERCEPT, VR::DS, s("-1024"));
    put(&mut o, tags::RESCALE_SLOPE, VR::DS, s("1"));
    let pixels = vec![1024u16; usize::from(spec.rows) * usize::from(spec.columns)];
    put(
        &mut o,
        tags::PIXEL_DATA,
        VR::OW,
        PrimitiveValue::U16(pixels.into()),
    );
    let path = dir.join("SCOUT.dcm");
    write_part10(o, spec, uids::CT_IMAGE_STORAGE, &sop_uid, &path)?;
    Ok((sop_uid, path))
}

/// Writes the series as one Enhanced CT Image Storage file (one frame per slice, in spec
/// order), with shared pixel measures, orientation and rescale, and per-frame positions.
pub fn write_enhanced_ct(spec: &SeriesSpec, path: &Path) -> std::io::Result<WrittenSeries> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    let mut rng = Rng::new(spec.seed);
    let ids = ids(&mut rng);
    let sop_uid = rng.uid();
    let s = |v: &str| PrimitiveValue::from(v);
    let mut o = common_attributes(spec, &ids, uids::ENHANCED_CT_IMAGE_STORAGE);
    let offsets = spec.offsets();
    put(
        &mut o,
        tags::IMAGE_TYPE,
        VR::CS,
        strs(["ORIGINAL", "PRIMARY", "AXIAL", "NONE"]),
    );
    put(&mut o, tags::SOP_INSTANCE_UID, VR::UI, s(&sop_uid));
    put(&mut o, tags::INSTANCE_NUMBER, VR::IS, s("1"));
    put(
        &mut o,
        tags::NUMBER_OF_FRAMES,
        VR::IS,
        s(&offsets.len().to_string()),
    );
    put(&mut o, tags::CONTENT_QUALIFICATION, VR::CS, s("RESEARCH"));
    put(&mut o, tags::IMAGE_COMMENTS, VR::LT, s("synthetic"));
    let mut shared = item(vec![]);
    shared.put(sequence(
        tags::PIXEL_MEASURES_SEQUENCE,
        vec![item(vec![
            (
                tags::PIXEL_SPACING,
                VR::DS,
                decimals(&[spec.pixel_spacing_mm; 2]),
            ),
            (
                tags::SLICE_THICKNESS,
                VR::DS,
                decimals(&[spec.slice_spacing_mm]),
            ),
        ])],
    ));
    shared.put(sequence(
        tags::PLANE_ORIENTATION_SEQUENCE,
        vec![item(vec![(
            tags::IMAGE_ORIENTATION_PATIENT,
            VR::DS,
            orientation(spec),
        )])],
    ));
    shared.put(sequence(
        tags::PIXEL_VALUE_TRANSFORMATION_SEQUENCE,
        vec![item(vec![
            (tags::RESCALE_INTERCEPT, VR::DS, s("-1024")),
            (tags::RESCALE_SLOPE, VR::DS, s("1")),
            (tags::RESCALE_TYPE, VR::LO, s("HU")),
        ])],
    ));
    shared.put(sequence(
        tags::CT_IMAGE_FRAME_TYPE_SEQUENCE,
        vec![item(vec![(
            tags::FRAME_TYPE,
            VR::CS,
            strs(["ORIGINAL", "PRIMARY", "AXIAL", "NONE"]),
        )])],
    ));
    o.put(sequence(
        tags::SHARED_FUNCTIONAL_GROUPS_SEQUENCE,
        vec![shared],
    ));
    let mut per_frame = Vec::with_capacity(offsets.len());
    let mut pixels = Vec::new();
    for (n, &offset) in offsets.iter().enumerate() {
        let mut frame = item(vec![]);
        frame.put(sequence(
            tags::PLANE_POSITION_SEQUENCE,
            vec![item(vec![(
                tags::IMAGE_POSITION_PATIENT,
                VR::DS,
                decimals(&spec.position(offset)),
            )])],
        ));
        frame.put(sequence(
            tags::FRAME_CONTENT_SEQUENCE,
            vec![item(vec![(
                tags::IN_STACK_POSITION_NUMBER,
                VR::UL,
                PrimitiveValue::from(n as u32 + 1),
            )])],
        ));
        per_frame.push(frame);
        pixels.extend(slice_pixels(spec, n, offset, &mut rng));
    }
    o.put(sequence(
        tags::PER_FRAME_FUNCTIONAL_GROUPS_SEQUENCE,
        per_frame,
    ));
    put(
        &mut o,
        tags::PIXEL_DATA,
        VR::OW,
        PrimitiveValue::U16(pixels.into()),
    );
    write_part10(o, spec, uids::ENHANCED_CT_IMAGE_STORAGE, &sop_uid, path)?;
    Ok(WrittenSeries {
        study_uid: ids.study,
        series_uid: ids.series,
        sop_instance_uids: vec![sop_uid],
        files: vec![path.to_owned()],
    })
}

fn orientation(spec: &SeriesSpec) -> PrimitiveValue {
    let (r, c) = (spec.row_direction, spec.column_direction);
    decimals(&[r[0], r[1], r[2], c[0], c[1], c[2]])
}

/// Stored values (HU + 1024) of slice `index` (file order), at `offset` along the normal.
fn slice_pixels(spec: &SeriesSpec, index: usize, offset: f64, rng: &mut Rng) -> Vec<u16> {
    let (rows, cols) = (usize::from(spec.rows), usize::from(spec.columns));
    let origin = spec.position(offset);
    let mut pixels = Vec::with_capacity(rows * cols);
    for r in 0..rows {
        for c in 0..cols {
            let hu = match &spec.content {
                Content::Phantom => {
                    let y = (r as f64 + 0.5) / rows as f64 * 2.0 - 1.0;
                    let x = (c as f64 + 0.5) / cols as f64 * 2.0 - 1.0;
                    phantom_hu(x, y, offset, spec) + 15.0 * rng.normal()
                }
                Content::Planes(planes) => f64::from(planes[index][r * cols + c]),
                Content::Ramp {
                    gradient,
                    offset: at_zero,
                } => {
                    let p: Vec3 = [0, 1, 2].map(|a| {
                        origin[a]
                            + spec.row_direction[a] * c as f64 * spec.pixel_spacing_mm
                            + spec.column_direction[a] * r as f64 * spec.pixel_spacing_mm
                    });
                    dot(*gradient, p) + at_zero
                }
            };
            pixels.push((hu + 1024.0).round().clamp(0.0, 4095.0) as u16);
        }
    }
    pixels
}

/// HU of the phantom at normalised in-plane coordinates (-1..1) of a slice at `offset`.
fn phantom_hu(x: f64, y: f64, offset: f64, spec: &SeriesSpec) -> f64 {
    let extent = (spec.slices.max(2) as f64 - 1.0) * spec.slice_spacing_mm;
    let taper = 1.0 - 0.2 * (0.5 - offset / extent.max(1.0)).clamp(0.0, 1.0);
    let in_ellipse = |cx: f64, cy: f64, ax: f64, ay: f64| {
        ((x - cx) / ax).powi(2) + ((y - cy) / ay).powi(2) <= 1.0
    };
    if !in_ellipse(0.0, 0.0, 0.9, 0.65) {
        -1000.0
    } else if in_ellipse(0.0, 0.45, 0.08, 0.08) {
        700.0
    } else if in_ellipse(-0.42, -0.05, 0.3 * taper, 0.45 * taper)
        || in_ellipse(0.42, -0.05, 0.3 * taper, 0.45 * taper)
    {
        -850.0
    } else {
        40.0
    }
}
