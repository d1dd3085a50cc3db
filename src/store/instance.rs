//! A received composite instance: the data set's structure checked whole, then parsed once up to
//! its Pixel Data to validate it and to read the attributes the index needs (the pixels are
//! never parsed or copied here). The encoded bytes are kept as received, so what is stored is
//! bit for bit what the sender sent.

use crate::attributes::{integer, text};
use crate::store::uid::{Uid, UidError};
use dicom_core::Tag;
use dicom_dictionary_std::tags;
use dicom_encoding::TransferSyntaxIndex;
use dicom_object::InMemDicomObject;
use dicom_transfer_syntax_registry::TransferSyntaxRegistry;

/// Why a received data set cannot be stored. Each maps to a C-STORE failure status.
#[derive(Debug, thiserror::Error)]
pub enum InstanceError {
    #[error("transfer syntax {0} is not supported")]
    UnsupportedTransferSyntax(String),
    #[error("data set cannot be parsed (not DICOM, or truncated): {0}")]
    Unparseable(String),
    #[error("data set is malformed: {0}")]
    Structure(#[from] crate::encoding::StructureError),
    #[error(
        "native pixel data holds {found} bytes; rows x columns x frames x samples x bits give {expected}"
    )]
    PixelDataLength { expected: u64, found: u64 },
    #[error("required attribute {name} {tag} is missing")]
    MissingAttribute { name: &'static str, tag: Tag },
    #[error("{name} {tag} is not a valid UID: {problem}")]
    InvalidUid {
        name: &'static str,
        tag: Tag,
        problem: UidError,
    },
    #[error("SOP Class UID in the data set ({found}) does not match the request ({expected})")]
    SopClassMismatch { expected: String, found: String },
    #[error("SOP Instance UID in the data set ({found}) does not match the request ({expected})")]
    SopInstanceMismatch { expected: String, found: String },
}

/// What the index records about one instance (and its patient, study and series).
#[derive(Debug, Clone, PartialEq)]
pub struct InstanceAttributes {
    pub sop_class_uid: Uid,
    pub sop_instance_uid: Uid,
    pub study_uid: Uid,
    pub series_uid: Uid,
    pub patient_id: String,
    pub issuer_of_patient_id: String,
    pub patient_birth_date: Option<String>,
    pub patient_sex: Option<String>,
    pub study_date: Option<String>,
    pub study_time: Option<String>,
    pub accession_number: Option<String>,
    pub study_id: Option<String>,
    pub study_description: Option<String>,
    pub modality: Option<String>,
    pub series_number: Option<i64>,
    pub series_description: Option<String>,
    pub body_part: Option<String>,
    pub frame_of_reference_uid: Option<String>,
    pub instance_number: Option<i64>,
    pub rows: Option<i64>,
    pub columns: Option<i64>,
    pub number_of_frames: Option<i64>,
}

/// Largest data set accepted once inflated (Deflated Explicit VR Little Endian): no real CT
/// image comes near it, and a decompression bomb stops there.
const MAX_INFLATED_BYTES: u64 = 1 << 30;

/// Checks the structure of `data_set` (encoded in `transfer_syntax`: `encoding::layout`), checks
/// native pixel data against the image's size, and reads the index attributes. Only the elements
/// before the top-level Pixel Data are parsed: the pixels are never copied or decoded here.
pub fn parse_data_set(
    data_set: &[u8],
    transfer_syntax: &str,
) -> Result<InstanceAttributes, InstanceError> {
    use crate::encoding::layout;
    use dicom_dictionary_std::uids;
    let ts = TransferSyntaxRegistry
        .get(transfer_syntax)
        .ok_or_else(|| InstanceError::UnsupportedTransferSyntax(transfer_syntax.to_owned()))?;
    let encoding = header_encoding(ts);
    // A deflated data set is checked and parsed inflated, as the explicit VR little endian
    // data set it is.
    let inflated;
    let (bytes, parse_ts) = if ts.uid() == uids::DEFLATED_EXPLICIT_VR_LITTLE_ENDIAN {
        inflated = inflate(data_set)?;
        let explicit = TransferSyntaxRegistry
            .get(uids::EXPLICIT_VR_LITTLE_ENDIAN)
            .expect("explicit VR little endian is built in");
        (inflated.as_slice(), explicit)
    } else {
        (data_set, ts)
    };
    // Encapsulated pixel data included: its items and delimiter.
    let found = layout(bytes, encoding)?;
    let head = &bytes[..found.pixel_data.map_or(bytes.len(), |p| p.offset)];
    let object = InMemDicomObject::read_dataset_with_ts(head, parse_ts)
        .map_err(|e| InstanceError::Unparseable(e.to_string()))?;
    if let Some(pixels) = found.pixel_data
        && !ts.is_encapsulated_pixel_data()
    {
        check_native_pixel_data(&object, pixels.length)?;
    }
    InstanceAttributes::from_object(&object)
}

/// How the element headers of a data set in `ts` are encoded: every transfer syntax negotiated
/// but implicit VR little endian is explicit VR little endian (deflated: once inflated).
fn header_encoding(ts: &dicom_encoding::TransferSyntax) -> crate::encoding::Encoding {
    use crate::encoding::Encoding;
    if ts.uid() == dicom_dictionary_std::uids::IMPLICIT_VR_LITTLE_ENDIAN {
        Encoding::ImplicitLittle
    } else {
        Encoding::ExplicitLittle
    }
}

/// Deflated data sets, inflated up to [`MAX_INFLATED_BYTES`].
fn inflate(data_set: &[u8]) -> Result<Vec<u8>, InstanceError> {
    use std::io::Read;
    let mut inflated = Vec::new();
    flate2::read::DeflateDecoder::new(data_set)
        .take(MAX_INFLATED_BYTES + 1)
        .read_to_end(&mut inflated)
        .map_err(|e| InstanceError::Unparseable(format!("cannot inflate: {e}")))?;
    if inflated.len() as u64 > MAX_INFLATED_BYTES {
        return Err(InstanceError::Unparseable(format!(
            "inflates to more than {MAX_INFLATED_BYTES} bytes"
        )));
    }
    Ok(inflated)
}

/// Native (uncompressed) Pixel Data of declared `length` (`None`: undefined) must hold rows x
/// columns x frames x samples x bits allocated bits, rounded up to whole bytes and to an even
/// length; `object` holds the image attributes.
fn check_native_pixel_data(
    object: &InMemDicomObject,
    length: Option<u32>,
) -> Result<(), InstanceError> {
    let found = length.map_or(0, u64::from);
    let number = |tag| integer(object, tag).and_then(|v| u64::try_from(v).ok());
    let (Some(rows), Some(columns), Some(bits)) = (
        number(tags::ROWS),
        number(tags::COLUMNS),
        number(tags::BITS_ALLOCATED),
    ) else {
        return Err(InstanceError::PixelDataLength { expected: 0, found });
    };
    let frames = number(tags::NUMBER_OF_FRAMES).unwrap_or(1).max(1);
    let samples = number(tags::SAMPLES_PER_PIXEL).unwrap_or(1).max(1);
    let bits_total = rows
        .saturating_mul(columns)
        .saturating_mul(frames)
        .saturating_mul(samples)
        .saturating_mul(bits);
    let expected = bits_total.div_ceil(8);
    if found == expected || found == expected + expected % 2 {
        Ok(())
    } else {
        Err(InstanceError::PixelDataLength { expected, found })
    }
}

/// Where an instance's file belongs: the UIDs of its study, series and SOP instance.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FileKey {
    pub study_uid: Uid,
    pub series_uid: Uid,
    pub sop_instance_uid: Uid,
}

/// The file key of a data set still arriving, from its first bytes: once everything before
/// Study ID (0020,0010) is in `prefix` and sound (`encoding::head_before`), those elements are
/// parsed and their UIDs read. `None` while they are not all there, for a deflated data set,
/// and when a UID is missing or invalid (the whole data set's parse then says why).
pub fn file_key_from_head(prefix: &[u8], transfer_syntax: &str) -> Option<FileKey> {
    use crate::encoding::head_before;
    use dicom_dictionary_std::uids;
    let ts = TransferSyntaxRegistry
        .get(transfer_syntax)
        .filter(|ts| ts.uid() != uids::DEFLATED_EXPLICIT_VR_LITTLE_ENDIAN)?;
    let end = head_before(prefix, header_encoding(ts), tags::STUDY_ID)?;
    let object = InMemDicomObject::read_dataset_with_ts(&prefix[..end], ts).ok()?;
    let uid = |tag| text(&object, tag).and_then(|raw| Uid::parse(&raw).ok());
    Some(FileKey {
        study_uid: uid(tags::STUDY_INSTANCE_UID)?,
        series_uid: uid(tags::SERIES_INSTANCE_UID)?,
        sop_instance_uid: uid(tags::SOP_INSTANCE_UID)?,
    })
}

impl InstanceAttributes {
    /// Where this instance's file belongs.
    pub fn file_key(&self) -> FileKey {
        FileKey {
            study_uid: self.study_uid.clone(),
            series_uid: self.series_uid.clone(),
            sop_instance_uid: self.sop_instance_uid.clone(),
        }
    }

    /// Reads the attributes; the four identifying UIDs are required and validated.
    pub fn from_object(object: &InMemDicomObject) -> Result<Self, InstanceError> {
        let uid = |tag: Tag, name: &'static str| -> Result<Uid, InstanceError> {
            let raw = text(object, tag).ok_or(InstanceError::MissingAttribute { name, tag })?;
            Uid::parse(&raw).map_err(|problem| InstanceError::InvalidUid { name, tag, problem })
        };
        Ok(Self {
            sop_class_uid: uid(tags::SOP_CLASS_UID, "SOP Class UID")?,
            sop_instance_uid: uid(tags::SOP_INSTANCE_UID, "SOP Instance UID")?,
            study_uid: uid(tags::STUDY_INSTANCE_UID, "Study Instance UID")?,
            series_uid: uid(tags::SERIES_INSTANCE_UID, "Series Instance UID")?,
            patient_id: text(object, tags::PATIENT_ID).unwrap_or_default(),
            issuer_of_patient_id: text(object, tags::ISSUER_OF_PATIENT_ID).unwrap_or_default(),
            patient_birth_date: text(object, tags::PATIENT_BIRTH_DATE),
            patient_sex: text(object, tags::PATIENT_SEX),
            study_date: text(object, tags::STUDY_DATE),
            study_time: text(object, tags::STUDY_TIME),
            accession_number: text(object, tags::ACCESSION_NUMBER),
            study_id: text(object, tags::STUDY_ID),
            study_description: text(object, tags::STUDY_DESCRIPTION),
            modality: text(object, tags::MODALITY),
            series_number: integer(object, tags::SERIES_NUMBER),
            series_description: text(object, tags::SERIES_DESCRIPTION),
            body_part: text(object, tags::BODY_PART_EXAMINED),
            frame_of_reference_uid: text(object, tags::FRAME_OF_REFERENCE_UID),
            instance_number: integer(object, tags::INSTANCE_NUMBER),
            rows: integer(object, tags::ROWS),
            columns: integer(object, tags::COLUMNS),
            number_of_frames: integer(object, tags::NUMBER_OF_FRAMES),
        })
    }

    /// Checks the data set against the SOP class and instance the C-STORE request announced.
    pub fn check_matches_request(
        &self,
        sop_class_uid: &str,
        sop_instance_uid: &str,
    ) -> Result<(), InstanceError> {
        let trim = |s: &str| s.trim_end_matches(['\0', ' ']).to_owned();
        if self.sop_class_uid.as_str() != trim(sop_class_uid) {
            return Err(InstanceError::SopClassMismatch {
                expected: trim(sop_class_uid),
                found: self.sop_class_uid.to_string(),
            });
        }
        if self.sop_instance_uid.as_str() != trim(sop_instance_uid) {
            return Err(InstanceError::SopInstanceMismatch {
                expected: trim(sop_instance_uid),
                found: self.sop_instance_uid.to_string(),
            });
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use dicom_core::{DataElement, PrimitiveValue, VR};
    use dicom_dictionary_std::uids;

    /// A 4 x 4 CT image of 16-bit pixels whose Pixel Data holds `pixel_bytes` bytes.
    fn ct(pixel_bytes: usize) -> InMemDicomObject {
        let mut object = InMemDicomObject::new_empty();
        for (tag, vr, value) in [
            (tags::SOP_CLASS_UID, VR::UI, uids::CT_IMAGE_STORAGE),
            (tags::SOP_INSTANCE_UID, VR::UI, "1.2.826.0.1.5"),
            (tags::STUDY_INSTANCE_UID, VR::UI, "1.2.826.0.1.3"),
            (tags::SERIES_INSTANCE_UID, VR::UI, "1.2.826.0.1.4"),
            (tags::MODALITY, VR::CS, "CT"),
        ] {
            object.put(DataElement::new(tag, vr, PrimitiveValue::from(value)));
        }
        for (tag, value) in [
            (tags::ROWS, 4u16),
            (tags::COLUMNS, 4),
            (tags::BITS_ALLOCATED, 16),
        ] {
            object.put(DataElement::new(tag, VR::US, PrimitiveValue::from(value)));
        }
        object.put(DataElement::new(
            tags::PIXEL_DATA,
            VR::OB,
            PrimitiveValue::from(vec![7u8; pixel_bytes]),
        ));
        object
    }

    fn encode(object: &InMemDicomObject, transfer_syntax: &str) -> Vec<u8> {
        let ts = TransferSyntaxRegistry.get(transfer_syntax).unwrap();
        let mut bytes = Vec::new();
        object.write_dataset_with_ts(&mut bytes, ts).unwrap();
        bytes
    }

    fn deflate(bytes: &[u8]) -> Vec<u8> {
        use std::io::Write;
        let mut encoder =
            flate2::write::DeflateEncoder::new(Vec::new(), flate2::Compression::default());
        encoder.write_all(bytes).unwrap();
        encoder.finish().unwrap()
    }

    #[test]
    fn the_index_attributes_are_read_without_the_pixels_in_every_encoding() {
        let explicit = encode(&ct(32), uids::EXPLICIT_VR_LITTLE_ENDIAN);
        let implicit = encode(&ct(32), uids::IMPLICIT_VR_LITTLE_ENDIAN);
        for (bytes, ts) in [
            (explicit.clone(), uids::EXPLICIT_VR_LITTLE_ENDIAN),
            (implicit, uids::IMPLICIT_VR_LITTLE_ENDIAN),
            (deflate(&explicit), uids::DEFLATED_EXPLICIT_VR_LITTLE_ENDIAN),
        ] {
            let attributes = parse_data_set(&bytes, ts).unwrap();
            assert_eq!(
                attributes.sop_instance_uid.as_str(),
                "1.2.826.0.1.5",
                "{ts}"
            );
            assert_eq!((attributes.rows, attributes.columns), (Some(4), Some(4)));
        }
        // Elements after Pixel Data (trailing padding) are checked, not needed.
        let mut padded = explicit.clone();
        padded.extend([0xFC, 0xFF, 0xFC, 0xFF, b'O', b'B', 0, 0, 2, 0, 0, 0, 0, 0]);
        assert!(parse_data_set(&padded, uids::EXPLICIT_VR_LITTLE_ENDIAN).is_ok());
        // ... and structurally: one declaring more than is left is refused.
        let mut beyond = explicit;
        beyond.extend([0xFC, 0xFF, 0xFC, 0xFF, b'O', b'B', 0, 0, 200, 0, 0, 0, 0, 0]);
        assert!(matches!(
            parse_data_set(&beyond, uids::EXPLICIT_VR_LITTLE_ENDIAN),
            Err(InstanceError::Structure(_))
        ));
    }

    #[test]
    fn native_pixel_data_must_hold_the_image_in_every_encoding() {
        let short = encode(&ct(30), uids::EXPLICIT_VR_LITTLE_ENDIAN);
        for (bytes, ts) in [
            (short.clone(), uids::EXPLICIT_VR_LITTLE_ENDIAN),
            (deflate(&short), uids::DEFLATED_EXPLICIT_VR_LITTLE_ENDIAN),
            (
                encode(&ct(30), uids::IMPLICIT_VR_LITTLE_ENDIAN),
                uids::IMPLICIT_VR_LITTLE_ENDIAN,
            ),
        ] {
            assert!(
                matches!(
                    parse_data_set(&bytes, ts),
                    Err(InstanceError::PixelDataLength {
                        expected: 32,
                        found: 30
                    })
                ),
                "{ts}"
            );
        }
    }
}
