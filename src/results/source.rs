//! What the result objects take from the analysed CT: the patient and study attributes (copied
//! exactly, element by element), the frame of reference, and every source image's identity.

use crate::attributes::text;
use crate::volume::series::AcquiredSeries;
use dicom_core::{Tag, VR};
use dicom_dictionary_std::tags;
use dicom_object::{InMemDicomObject, OpenFileOptions};
use std::path::Path;

/// Patient module attributes that must be present (Type 2), copied or written empty.
pub const PATIENT_TYPE2: &[(Tag, VR)] = &[
    (tags::PATIENT_NAME, VR::PN),
    (tags::PATIENT_ID, VR::LO),
    (tags::PATIENT_BIRTH_DATE, VR::DA),
    (tags::PATIENT_SEX, VR::CS),
];

/// Patient attributes copied when the CT has them.
pub const PATIENT_OPTIONAL: &[(Tag, VR)] = &[
    (tags::ISSUER_OF_PATIENT_ID, VR::LO),
    (tags::ISSUER_OF_PATIENT_ID_QUALIFIERS_SEQUENCE, VR::SQ),
    (tags::OTHER_PATIENT_I_DS_SEQUENCE, VR::SQ),
    (tags::PATIENT_AGE, VR::AS),
    (tags::PATIENT_SIZE, VR::DS),
    (tags::PATIENT_WEIGHT, VR::DS),
    (tags::PATIENT_IDENTITY_REMOVED, VR::CS),
    (tags::DEIDENTIFICATION_METHOD, VR::LO),
];

/// General Study module attributes that must be present (Type 2).
pub const STUDY_TYPE2: &[(Tag, VR)] = &[
    (tags::STUDY_DATE, VR::DA),
    (tags::STUDY_TIME, VR::TM),
    (tags::REFERRING_PHYSICIAN_NAME, VR::PN),
    (tags::STUDY_ID, VR::SH),
    (tags::ACCESSION_NUMBER, VR::SH),
];

/// Study attributes copied when the CT has them.
pub const STUDY_OPTIONAL: &[(Tag, VR)] = &[
    (tags::STUDY_DESCRIPTION, VR::LO),
    (tags::ISSUER_OF_ACCESSION_NUMBER_SEQUENCE, VR::SQ),
];

/// One source image (a file; multi-frame files are referenced frame by frame in SEG).
#[derive(Debug, Clone, PartialEq)]
pub struct SourceImage {
    pub sop_class_uid: String,
    pub sop_instance_uid: String,
}

/// The analysed CT as the result objects see it.
#[derive(Debug, Clone)]
pub struct SourceStudy {
    /// Header of the first image (no pixel data): where patient and study attributes come from.
    pub header: InMemDicomObject,
    pub study_uid: String,
    pub series_uid: String,
    pub frame_of_reference_uid: String,
    pub sop_class_uid: String,
    /// Every source image of the series, once each, in slice order.
    pub images: Vec<SourceImage>,
}

/// A CT whose header lacks what the result objects must reference.
#[derive(Debug, thiserror::Error)]
pub enum SourceError {
    #[error("cannot read the CT header of {path}: {message}")]
    Read { path: String, message: String },
    #[error("the CT lacks {0}, which the results must reference")]
    Missing(&'static str),
}

impl SourceStudy {
    /// Every source image as a reference item (Referenced SOP Class and Instance UID).
    pub fn image_references(&self) -> Vec<super::dataset::DataSet> {
        self.images
            .iter()
            .map(|image| {
                super::dataset::DataSet::new()
                    .uid(tags::REFERENCED_SOP_CLASS_UID, &image.sop_class_uid)
                    .uid(tags::REFERENCED_SOP_INSTANCE_UID, &image.sop_instance_uid)
            })
            .collect()
    }

    /// Reads the header of `first_file` (any image of the series) and the image list of `series`.
    pub fn read(first_file: &Path, series: &AcquiredSeries) -> Result<Self, SourceError> {
        let file = OpenFileOptions::new()
            .read_until(tags::PIXEL_DATA)
            .open_file(first_file)
            .map_err(|e| SourceError::Read {
                path: first_file.display().to_string(),
                message: e.to_string(),
            })?;
        let header = file.into_inner();
        let need = |tag, name| text(&header, tag).ok_or(SourceError::Missing(name));
        let study_uid = need(tags::STUDY_INSTANCE_UID, "Study Instance UID")?;
        let frame_of_reference_uid = need(tags::FRAME_OF_REFERENCE_UID, "Frame of Reference UID")?;
        let sop_class_uid = need(tags::SOP_CLASS_UID, "SOP Class UID")?;
        let mut seen = std::collections::HashSet::new();
        let images = series
            .slices
            .iter()
            .filter(|slice| seen.insert(slice.sop_instance_uid.as_str()))
            .map(|slice| SourceImage {
                sop_class_uid: sop_class_uid.clone(),
                sop_instance_uid: slice.sop_instance_uid.clone(),
            })
            .collect();
        Ok(Self {
            header,
            study_uid,
            series_uid: series.series_uid.clone(),
            frame_of_reference_uid,
            sop_class_uid,
            images,
        })
    }
}
