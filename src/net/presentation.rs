//! The one list of what the node negotiates: as SCP, abstract syntaxes (SOP classes) and the
//! transfer syntaxes the code can really decode; as SCU, the result SOP classes and the transfer
//! syntaxes proposed for them. conformance.md is checked against these tables.

use dicom_dictionary_std::uids;

/// Verification (C-ECHO).
pub const VERIFICATION: &str = uids::VERIFICATION;

/// Storage SOP classes accepted for C-STORE, with the name used in logs and the conformance
/// statement. CT is what the node analyses; SEG and SR are accepted so that the node's own
/// results (or a peer's) can be received back, e.g. in end-to-end tests.
pub const STORAGE_SOP_CLASSES: &[(&str, &str)] = &[
    (uids::CT_IMAGE_STORAGE, "CT Image Storage"),
    (uids::ENHANCED_CT_IMAGE_STORAGE, "Enhanced CT Image Storage"),
    (
        uids::LEGACY_CONVERTED_ENHANCED_CT_IMAGE_STORAGE,
        "Legacy Converted Enhanced CT Image Storage",
    ),
    (uids::SEGMENTATION_STORAGE, "Segmentation Storage"),
    (
        uids::COMPREHENSIVE3_DSR_STORAGE,
        "Comprehensive 3D SR Storage",
    ),
    (uids::COMPREHENSIVE_SR_STORAGE, "Comprehensive SR Storage"),
];

/// Transfer syntaxes accepted, in our order of preference (the SCU's proposal order decides
/// among those it offers). Each one decodes to the uncompressed file's HU in tests/volume.rs
/// (JPEG-LS through CharLS, built from source; the rest in Rust). Deliberately absent: JPEG
/// extended 12-bit (fails to decode), HTJ2K (decodes negative stored values wrongly; see
/// tests/volume.rs), explicit VR big endian (retired), JPEG XL (no decoder).
pub const TRANSFER_SYNTAXES: &[(&str, &str)] = &[
    (uids::EXPLICIT_VR_LITTLE_ENDIAN, "Explicit VR Little Endian"),
    (uids::IMPLICIT_VR_LITTLE_ENDIAN, "Implicit VR Little Endian"),
    (
        uids::DEFLATED_EXPLICIT_VR_LITTLE_ENDIAN,
        "Deflated Explicit VR Little Endian",
    ),
    (uids::RLE_LOSSLESS, "RLE Lossless"),
    (uids::JPEG_BASELINE8_BIT, "JPEG Baseline (Process 1)"),
    (
        uids::JPEG_LOSSLESS_SV1,
        "JPEG Lossless, Non-Hierarchical, First-Order Prediction (Process 14, SV1)",
    ),
    (
        uids::JPEG_LOSSLESS,
        "JPEG Lossless, Non-Hierarchical (Process 14)",
    ),
    (
        uids::JPEG2000_LOSSLESS,
        "JPEG 2000 Image Compression (Lossless Only)",
    ),
    (uids::JPEG2000, "JPEG 2000 Image Compression"),
    (uids::JPEGLS_LOSSLESS, "JPEG-LS Lossless Image Compression"),
    (
        uids::JPEGLS_NEAR_LOSSLESS,
        "JPEG-LS Lossy (Near-Lossless) Image Compression",
    ),
];

/// Storage SOP classes the node sends as SCU: its result objects.
pub const RESULT_SOP_CLASSES: &[(&str, &str)] = &[
    (uids::SEGMENTATION_STORAGE, "Segmentation Storage"),
    (
        uids::COMPREHENSIVE3_DSR_STORAGE,
        "Comprehensive 3D SR Storage",
    ),
];

/// Transfer syntaxes proposed with each result SOP class, in our order of preference.
pub const PROPOSED_TRANSFER_SYNTAXES: &[(&str, &str)] = &[
    (uids::EXPLICIT_VR_LITTLE_ENDIAN, "Explicit VR Little Endian"),
    (uids::IMPLICIT_VR_LITTLE_ENDIAN, "Implicit VR Little Endian"),
];

/// Whether `uid` is one of the storage SOP classes we accept.
pub fn is_accepted_storage_class(uid: &str) -> bool {
    STORAGE_SOP_CLASSES.iter().any(|(u, _)| *u == uid)
}

#[cfg(test)]
mod tests {
    use super::*;
    use dicom_encoding::TransferSyntaxIndex;
    use dicom_transfer_syntax_registry::TransferSyntaxRegistry;

    #[test]
    fn every_accepted_transfer_syntax_really_decodes() {
        for (uid, name) in TRANSFER_SYNTAXES {
            let ts = TransferSyntaxRegistry
                .get(uid)
                .unwrap_or_else(|| panic!("{name} ({uid}) is not in the registry"));
            assert!(
                ts.can_decode_all(),
                "{name} ({uid}) has no decoder compiled in"
            );
        }
    }
}
