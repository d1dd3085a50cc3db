//! The one table of coded concepts the result objects use (DCM, SCT, LN, UCUM, RFC5646), each
//! with the meaning the standard's context groups give it. conformance.md lists the same codes.

use super::dataset::DataSet;
use dicom_core::VR;
use dicom_dictionary_std::tags;

/// A coded concept: (value, scheme designator, meaning).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Code {
    pub value: &'static str,
    pub scheme: &'static str,
    pub meaning: &'static str,
}

const fn code(value: &'static str, scheme: &'static str, meaning: &'static str) -> Code {
    Code {
        value,
        scheme,
        meaning,
    }
}

impl Code {
    /// The code as a sequence item (Basic Code Sequence Macro).
    pub fn item(&self) -> DataSet {
        DataSet::new()
            .text(tags::CODE_VALUE, VR::SH, self.value)
            .text(tags::CODING_SCHEME_DESIGNATOR, VR::SH, self.scheme)
            .text(tags::CODE_MEANING, VR::LO, self.meaning)
    }
}

// Document titles, templates and containers (TID 1500).
pub const IMAGING_MEASUREMENT_REPORT: Code = code("126000", "DCM", "Imaging Measurement Report");
pub const IMAGING_MEASUREMENTS: Code = code("126010", "DCM", "Imaging Measurements");
pub const QUALITATIVE_EVALUATIONS: Code = code("C0034375", "UMLS", "Qualitative Evaluations");
pub const MEASUREMENT_GROUP: Code = code("125007", "DCM", "Measurement Group");
pub const PROCEDURE_REPORTED: Code = code("121058", "DCM", "Procedure reported");
pub const CT_UNSPECIFIED_BODY_REGION: Code = code("25045-6", "LN", "CT unspecified body region");

// Language (TID 1204).
pub const LANGUAGE_OF_CONTENT: Code =
    code("121049", "DCM", "Language of Content Item and Descendants");
pub const ENGLISH_US: Code = code("en-US", "RFC5646", "English (United States)");
pub const COUNTRY_OF_LANGUAGE: Code = code("121046", "DCM", "Country of Language");
pub const UNITED_STATES: Code = code("US", "ISO3166_1", "United States");

// Observer context (TID 1001, 1004).
pub const OBSERVER_TYPE: Code = code("121005", "DCM", "Observer Type");
pub const DEVICE: Code = code("121007", "DCM", "Device");
pub const DEVICE_OBSERVER_UID: Code = code("121012", "DCM", "Device Observer UID");
pub const DEVICE_OBSERVER_NAME: Code = code("121013", "DCM", "Device Observer Name");
pub const DEVICE_OBSERVER_MANUFACTURER: Code =
    code("121014", "DCM", "Device Observer Manufacturer");
pub const DEVICE_OBSERVER_MODEL_NAME: Code = code("121015", "DCM", "Device Observer Model Name");

// Measurement groups (TID 1410, 1411).
pub const TRACKING_IDENTIFIER: Code = code("112039", "DCM", "Tracking Identifier");
pub const TRACKING_UID: Code = code("112040", "DCM", "Tracking Unique Identifier");
pub const FINDING: Code = code("121071", "DCM", "Finding");
pub const NODULE: Code = code("27925004", "SCT", "Nodule");
pub const FINDING_SITE: Code = code("363698007", "SCT", "Finding Site");
pub const LUNG: Code = code("39607008", "SCT", "Lung");
pub const LATERALITY: Code = code("272741003", "SCT", "Laterality");
pub const RIGHT: Code = code("24028007", "SCT", "Right");
pub const LEFT: Code = code("7771000", "SCT", "Left");
pub const REFERENCED_SEGMENT: Code = code("121191", "DCM", "Referenced Segment");
pub const SOURCE_SERIES_FOR_SEGMENTATION: Code =
    code("121232", "DCM", "Source series for segmentation");
pub const IMAGE_REGION: Code = code("111030", "DCM", "Image Region");
pub const DIAMETER: Code = code("81827009", "SCT", "Diameter");
pub const DERIVATION: Code = code("121401", "DCM", "Derivation");
pub const MAXIMUM: Code = code("56851009", "SCT", "Maximum");
pub const VOLUME: Code = code("118565006", "SCT", "Volume");
pub const LONG_AXIS: Code = code("103339001", "SCT", "Long Axis");
pub const SHORT_AXIS: Code = code("103340004", "SCT", "Short Axis");
pub const MEAN: Code = code("373098007", "SCT", "Mean");
/// Concept of a SCOORD a measurement is inferred from, and of the image it is selected from.
pub const SOURCE: Code = code("260753009", "SCT", "Source");
pub const REFERENCED_SEGMENTATION_FRAME: Code =
    code("121214", "DCM", "Referenced Segmentation Frame");
pub const SOURCE_IMAGE_FOR_SEGMENTATION_FRAME: Code =
    code("121233", "DCM", "Source image for segmentation");
pub const PROBABILITY_OF_CANCER: Code = code("111047", "DCM", "Probability of cancer");
pub const DIAGNOSIS: Code = code("439401001", "SCT", "Diagnosis");
pub const BENIGN_NEOPLASM: Code = code("3898006", "SCT", "Benign neoplasm");
pub const MALIGNANT_NEOPLASM: Code = code("363346000", "SCT", "Malignant neoplastic disease");
/// The report's statement when no nodule was found.
pub const FINDING_ABSENT: Code = code("373572006", "SCT", "Clinical finding absent");

// Units (UCUM).
pub const MILLIMETER: Code = code("mm", "UCUM", "millimeter");
pub const CUBIC_MILLIMETER: Code = code("mm3", "UCUM", "cubic millimeter");
pub const NO_UNITS: Code = code("1", "UCUM", "no units");

// Segmentation (SEG) properties and references.
pub const MORPHOLOGICALLY_ABNORMAL_STRUCTURE: Code =
    code("49755003", "SCT", "Morphologically Altered Structure");
pub const ARTIFICIAL_INTELLIGENCE: Code = code("123110", "DCM", "Artificial Intelligence");
pub const SOURCE_IMAGE_FOR_SEGMENTATION: Code = code(
    "121322",
    "DCM",
    "Source image for image processing operation",
);
pub const SEGMENTATION_DERIVATION: Code = code("113076", "DCM", "Segmentation");
