//! Writes a CT Image Storage series (one Part 10 file per slice, explicit VR little endian) with
//! consistent patient/study/series modules and axial geometry. Everything is derived from a seed,
//! so the same spec always gives the same files and UIDs.

use dicom_core::{DataElement, PrimitiveValue, Tag, VR};
use dicom_dictionary_std::{tags, uids};
use dicom_object::InMemDicomObject;
use dicom_object::meta::FileMetaTableBuilder;
use std::path::{Path, PathBuf};

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
            seed: 1,
            patient_id: "SYNTH0001".into(),
        }
    }
}

/// UIDs of a written series.
#[derive(Debug, Clone)]
pub struct WrittenSeries {
    pub study_uid: String,
    pub series_uid: String,
    pub sop_instance_uids: Vec<String>,
    pub files: Vec<PathBuf>,
}

/// Small deterministic generator (SplitMix64); good enough for UIDs and noise.
struct SplitMix(u64);

impl SplitMix {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// A `2.25.<128-bit decimal>` UID (PS3.5 B.2).
    fn uid(&mut self) -> String {
        let value = (u128::from(self.next()) << 64) | u128::from(self.next());
        format!("2.25.{value}")
    }

    /// Roughly normal noise (sum of uniforms), unit variance.
    fn noise(&mut self) -> f64 {
        (0..4)
            .map(|_| (self.next() >> 11) as f64 / (1u64 << 53) as f64)
            .sum::<f64>()
            * 1.732
            - 3.464
    }
}

/// Writes the series into `dir` as `CT000001.dcm`, ... and returns its UIDs.
pub fn write_ct_series(spec: &SeriesSpec, dir: &Path) -> std::io::Result<WrittenSeries> {
    std::fs::create_dir_all(dir)?;
    let mut rng = SplitMix(spec.seed);
    let study_uid = rng.uid();
    let series_uid = rng.uid();
    let frame_of_reference_uid = rng.uid();
    let mut written = WrittenSeries {
        study_uid: study_uid.clone(),
        series_uid: series_uid.clone(),
        sop_instance_uids: Vec::new(),
        files: Vec::new(),
    };
    for index in 0..spec.slices {
        let sop_uid = rng.uid();
        let z = -(index as f64) * spec.slice_spacing_mm;
        let mut object = InMemDicomObject::new_empty();
        let mut put = |tag: Tag, vr: VR, value: PrimitiveValue| {
            object.put(DataElement::new(tag, vr, value));
        };
        let s = |v: &str| PrimitiveValue::from(v);
        put(tags::SPECIFIC_CHARACTER_SET, VR::CS, s("ISO_IR 100"));
        put(
            tags::IMAGE_TYPE,
            VR::CS,
            PrimitiveValue::Strs(
                ["ORIGINAL", "PRIMARY", "AXIAL"]
                    .map(String::from)
                    .into_iter()
                    .collect(),
            ),
        );
        put(tags::SOP_CLASS_UID, VR::UI, s(uids::CT_IMAGE_STORAGE));
        put(tags::SOP_INSTANCE_UID, VR::UI, s(&sop_uid));
        put(tags::STUDY_DATE, VR::DA, s("20260101"));
        put(tags::SERIES_DATE, VR::DA, s("20260101"));
        put(tags::STUDY_TIME, VR::TM, s("090000"));
        put(tags::ACCESSION_NUMBER, VR::SH, s("SYN0001"));
        put(tags::MODALITY, VR::CS, s("CT"));
        put(tags::MANUFACTURER, VR::LO, s("JNSC synthetic"));
        put(tags::REFERRING_PHYSICIAN_NAME, VR::PN, s(""));
        put(tags::STUDY_DESCRIPTION, VR::LO, s("CT CHEST LOW DOSE"));
        put(tags::SERIES_DESCRIPTION, VR::LO, s("SYNTHETIC AXIAL"));
        put(tags::PATIENT_NAME, VR::PN, s("SYNTHETIC^PHANTOM"));
        put(tags::PATIENT_ID, VR::LO, s(&spec.patient_id));
        put(tags::PATIENT_BIRTH_DATE, VR::DA, s("19600101"));
        put(tags::PATIENT_SEX, VR::CS, s("O"));
        put(tags::BODY_PART_EXAMINED, VR::CS, s("CHEST"));
        put(
            tags::SLICE_THICKNESS,
            VR::DS,
            s(&format!("{}", spec.slice_spacing_mm)),
        );
        put(tags::KVP, VR::DS, s("120"));
        put(tags::PATIENT_POSITION, VR::CS, s("FFS"));
        put(tags::STUDY_INSTANCE_UID, VR::UI, s(&study_uid));
        put(tags::SERIES_INSTANCE_UID, VR::UI, s(&series_uid));
        put(tags::STUDY_ID, VR::SH, s("1"));
        put(tags::SERIES_NUMBER, VR::IS, s("2"));
        put(tags::INSTANCE_NUMBER, VR::IS, s(&(index + 1).to_string()));
        let origin = [
            -(f64::from(spec.columns) * spec.pixel_spacing_mm) / 2.0,
            -(f64::from(spec.rows) * spec.pixel_spacing_mm) / 2.0,
            z,
        ];
        put(
            tags::IMAGE_POSITION_PATIENT,
            VR::DS,
            PrimitiveValue::Strs(origin.iter().map(|v| format!("{v:.4}")).collect()),
        );
        put(
            tags::IMAGE_ORIENTATION_PATIENT,
            VR::DS,
            PrimitiveValue::Strs(
                ["1", "0", "0", "0", "1", "0"]
                    .map(String::from)
                    .into_iter()
                    .collect(),
            ),
        );
        put(
            tags::FRAME_OF_REFERENCE_UID,
            VR::UI,
            s(&frame_of_reference_uid),
        );
        put(tags::POSITION_REFERENCE_INDICATOR, VR::LO, s(""));
        put(tags::SLICE_LOCATION, VR::DS, s(&format!("{z:.4}")));
        put(tags::SAMPLES_PER_PIXEL, VR::US, PrimitiveValue::from(1u16));
        put(tags::PHOTOMETRIC_INTERPRETATION, VR::CS, s("MONOCHROME2"));
        put(tags::ROWS, VR::US, PrimitiveValue::from(spec.rows));
        put(tags::COLUMNS, VR::US, PrimitiveValue::from(spec.columns));
        put(
            tags::PIXEL_SPACING,
            VR::DS,
            PrimitiveValue::Strs(
                [spec.pixel_spacing_mm, spec.pixel_spacing_mm]
                    .iter()
                    .map(|v| format!("{v}"))
                    .collect(),
            ),
        );
        put(tags::BITS_ALLOCATED, VR::US, PrimitiveValue::from(16u16));
        put(tags::BITS_STORED, VR::US, PrimitiveValue::from(12u16));
        put(tags::HIGH_BIT, VR::US, PrimitiveValue::from(11u16));
        put(
            tags::PIXEL_REPRESENTATION,
            VR::US,
            PrimitiveValue::from(0u16),
        );
        put(tags::WINDOW_CENTER, VR::DS, s("-600"));
        put(tags::WINDOW_WIDTH, VR::DS, s("1500"));
        put(tags::RESCALE_INTERCEPT, VR::DS, s("-1024"));
        put(tags::RESCALE_SLOPE, VR::DS, s("1"));
        put(tags::RESCALE_TYPE, VR::LO, s("HU"));
        let pixels = phantom_slice(spec, index, &mut rng);
        put(tags::PIXEL_DATA, VR::OW, PrimitiveValue::U16(pixels.into()));

        let meta = FileMetaTableBuilder::new()
            .media_storage_sop_class_uid(uids::CT_IMAGE_STORAGE)
            .media_storage_sop_instance_uid(sop_uid.as_str())
            .transfer_syntax(uids::EXPLICIT_VR_LITTLE_ENDIAN)
            .implementation_class_uid(crate::store::IMPLEMENTATION_CLASS_UID)
            .implementation_version_name(crate::store::IMPLEMENTATION_VERSION_NAME);
        let file = object.with_meta(meta).map_err(std::io::Error::other)?;
        let path = dir.join(format!("CT{:06}.dcm", index + 1));
        file.write_to_file(&path).map_err(std::io::Error::other)?;
        written.sop_instance_uids.push(sop_uid);
        written.files.push(path);
    }
    Ok(written)
}

/// Stored values (HU + 1024) of one slice: air, an elliptic body of soft tissue, two lungs at
/// about -850 HU and a spine, with noise.
fn phantom_slice(spec: &SeriesSpec, slice: usize, rng: &mut SplitMix) -> Vec<u16> {
    let (rows, cols) = (usize::from(spec.rows), usize::from(spec.columns));
    let taper = 1.0 - 0.2 * (slice as f64 / spec.slices.max(1) as f64);
    let mut pixels = Vec::with_capacity(rows * cols);
    for r in 0..rows {
        let y = (r as f64 + 0.5) / rows as f64 * 2.0 - 1.0;
        for c in 0..cols {
            let x = (c as f64 + 0.5) / cols as f64 * 2.0 - 1.0;
            let in_ellipse = |cx: f64, cy: f64, ax: f64, ay: f64| {
                ((x - cx) / ax).powi(2) + ((y - cy) / ay).powi(2) <= 1.0
            };
            let hu = if !in_ellipse(0.0, 0.0, 0.9, 0.65) {
                -1000.0
            } else if in_ellipse(0.0, 0.45, 0.08, 0.08) {
                700.0
            } else if in_ellipse(-0.42, -0.05, 0.3 * taper, 0.45 * taper)
                || in_ellipse(0.42, -0.05, 0.3 * taper, 0.45 * taper)
            {
                -850.0
            } else {
                40.0
            };
            let value = hu + 1024.0 + 15.0 * rng.noise();
            pixels.push(value.clamp(0.0, 4095.0) as u16);
        }
    }
    pixels
}
