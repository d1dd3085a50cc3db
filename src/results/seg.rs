//! The DICOM Segmentation (binary) of the reported findings, on the original CT grid: one segment
//! per finding, one frame per (segment, source slice) the segment touches, bit-packed
//! continuously. Modules and functional groups follow the Segmentation IOD (PS3.3 A.51) the way
//! highdicom writes them, which is what dciodvfy and viewers (OHIF, Slicer) check and read.

use super::codes::{self, Code};
use super::dataset::DataSet;
use super::{Context, SegmentedFinding, common_modules};
use crate::volume::series::AcquiredSeries;
use dicom_core::VR;
use dicom_dictionary_std::{tags, uids};
use std::collections::HashMap;

/// Label of the whole segmentation (Content Label: uppercase CS).
const CONTENT_LABEL: &str = "NODULES";
/// Series number of the SEG series.
pub const SERIES_NUMBER: i64 = 7001;

/// Builds the Segmentation data set. `findings` must not be empty (a SEG needs a segment).
pub fn build(ctx: &Context, series: &AcquiredSeries, findings: &[SegmentedFinding]) -> DataSet {
    let source = ctx.source;
    // Frames in order: by segment, then by slice.
    let mut frames: Vec<(&SegmentedFinding, usize)> = Vec::new();
    for finding in findings {
        for slice in &finding.slices {
            frames.push((finding, slice.slice));
        }
    }
    let pixels_per_frame = series.rows * series.columns;
    let mut packer = BitPacker::with_capacity(frames.len() * pixels_per_frame);
    for finding in findings {
        for slice in &finding.slices {
            packer.extend(&slice.pixels);
        }
    }

    let per_frame: Vec<DataSet> = frames
        .iter()
        .map(|&(finding, slice_index)| {
            let slice = &series.slices[slice_index];
            let mut source_image = DataSet::new()
                .uid(tags::REFERENCED_SOP_CLASS_UID, &source.sop_class_uid)
                .uid(tags::REFERENCED_SOP_INSTANCE_UID, &slice.sop_instance_uid);
            if let Some(frame) = slice.frame {
                source_image =
                    source_image.integer(tags::REFERENCED_FRAME_NUMBER, i64::from(frame));
            }
            // Same grid as the CT: each frame's pixels sit exactly on the source image's.
            source_image = source_image
                .text(tags::SPATIAL_LOCATIONS_PRESERVED, VR::CS, "YES")
                .sequence(
                    tags::PURPOSE_OF_REFERENCE_CODE_SEQUENCE,
                    vec![codes::SOURCE_IMAGE_FOR_SEGMENTATION.item()],
                );
            DataSet::new()
                .sequence(
                    tags::DERIVATION_IMAGE_SEQUENCE,
                    vec![
                        DataSet::new()
                            .sequence(tags::SOURCE_IMAGE_SEQUENCE, vec![source_image])
                            .sequence(
                                tags::DERIVATION_CODE_SEQUENCE,
                                vec![codes::SEGMENTATION_DERIVATION.item()],
                            ),
                    ],
                )
                .sequence(
                    tags::FRAME_CONTENT_SEQUENCE,
                    vec![DataSet::new().ul(
                        tags::DIMENSION_INDEX_VALUES,
                        &[finding.number as u32, slice_index as u32 + 1],
                    )],
                )
                .sequence(
                    tags::PLANE_POSITION_SEQUENCE,
                    vec![DataSet::new().decimals(tags::IMAGE_POSITION_PATIENT, &slice.position)],
                )
                .sequence(
                    tags::SEGMENT_IDENTIFICATION_SEQUENCE,
                    vec![
                        DataSet::new()
                            .us(tags::REFERENCED_SEGMENT_NUMBER, &[finding.number as u16]),
                    ],
                )
        })
        .collect();

    let orientation = [series.row_direction, series.column_direction].concat();
    let slice_thickness = crate::attributes::numbers(&source.header, tags::SLICE_THICKNESS)
        .and_then(|v| v.first().copied())
        .unwrap_or_else(|| series.median_slice_spacing());
    let shared = DataSet::new()
        .sequence(
            tags::PLANE_ORIENTATION_SEQUENCE,
            vec![DataSet::new().decimals(tags::IMAGE_ORIENTATION_PATIENT, &orientation)],
        )
        .sequence(
            tags::PIXEL_MEASURES_SEQUENCE,
            vec![
                DataSet::new()
                    .decimals(
                        tags::PIXEL_SPACING,
                        &[series.row_spacing_mm, series.column_spacing_mm],
                    )
                    .decimals(tags::SLICE_THICKNESS, &[slice_thickness]),
            ],
        );

    let dimension_index = |pointer, group, label: &str| {
        DataSet::new()
            .uid(
                tags::DIMENSION_ORGANIZATION_UID,
                &ctx.uids.dimension_organization,
            )
            .tag(tags::DIMENSION_INDEX_POINTER, pointer)
            .tag(tags::FUNCTIONAL_GROUP_POINTER, group)
            .text(tags::DIMENSION_DESCRIPTION_LABEL, VR::LO, label)
    };

    common_modules(
        ctx,
        uids::SEGMENTATION_STORAGE,
        &ctx.uids.seg_instance,
        &ctx.uids.seg_series,
        SERIES_NUMBER,
        "SEG",
        "JNSC lung nodule segmentation",
    )
    // Frame of Reference: the CT's.
    .uid(tags::FRAME_OF_REFERENCE_UID, &source.frame_of_reference_uid)
    .copy(
        &source.header,
        &[(tags::POSITION_REFERENCE_INDICATOR, VR::LO)],
        true,
    )
    // Segmentation Image module.
    .texts(tags::IMAGE_TYPE, VR::CS, &["DERIVED", "PRIMARY"])
    .text(tags::CONTENT_LABEL, VR::CS, CONTENT_LABEL)
    .text(
        tags::CONTENT_DESCRIPTION,
        VR::LO,
        "Lung nodules found by JNSC (automatic, unverified)",
    )
    .empty(tags::CONTENT_CREATOR_NAME, VR::PN)
    .text(tags::SEGMENTATION_TYPE, VR::CS, "BINARY")
    .text(
        tags::SEGMENTS_OVERLAP,
        VR::CS,
        if overlapping(findings) { "YES" } else { "NO" },
    )
    .sequence(
        tags::SEGMENT_SEQUENCE,
        findings.iter().map(|f| segment_item(ctx, f)).collect(),
    )
    .text(tags::LOSSY_IMAGE_COMPRESSION, VR::CS, "00")
    // Image Pixel module.
    .us(tags::SAMPLES_PER_PIXEL, &[1])
    .text(tags::PHOTOMETRIC_INTERPRETATION, VR::CS, "MONOCHROME2")
    .us(tags::ROWS, &[series.rows as u16])
    .us(tags::COLUMNS, &[series.columns as u16])
    .us(tags::BITS_ALLOCATED, &[1])
    .us(tags::BITS_STORED, &[1])
    .us(tags::HIGH_BIT, &[0])
    .us(tags::PIXEL_REPRESENTATION, &[0])
    // Multi-frame Functional Groups and Dimension modules.
    .integer(tags::NUMBER_OF_FRAMES, frames.len() as i64)
    .sequence(tags::SHARED_FUNCTIONAL_GROUPS_SEQUENCE, vec![shared])
    .sequence(tags::PER_FRAME_FUNCTIONAL_GROUPS_SEQUENCE, per_frame)
    .sequence(
        tags::DIMENSION_ORGANIZATION_SEQUENCE,
        vec![DataSet::new().uid(
            tags::DIMENSION_ORGANIZATION_UID,
            &ctx.uids.dimension_organization,
        )],
    )
    .sequence(
        tags::DIMENSION_INDEX_SEQUENCE,
        vec![
            dimension_index(
                tags::REFERENCED_SEGMENT_NUMBER,
                tags::SEGMENT_IDENTIFICATION_SEQUENCE,
                "Segment Number",
            ),
            dimension_index(
                tags::IMAGE_POSITION_PATIENT,
                tags::PLANE_POSITION_SEQUENCE,
                "Image Position Patient",
            ),
        ],
    )
    // Common Instance Reference module: every source image (viewers find the CT through it).
    .sequence(
        tags::REFERENCED_SERIES_SEQUENCE,
        vec![
            DataSet::new()
                .uid(tags::SERIES_INSTANCE_UID, &source.series_uid)
                .sequence(
                    tags::REFERENCED_INSTANCE_SEQUENCE,
                    source.image_references(),
                ),
        ],
    )
    .bytes(tags::PIXEL_DATA, packer.finish())
}

/// Distinct sRGB colours for segments 1, 2, ... (then again from the first).
const PALETTE: [[u8; 3]; 8] = [
    [230, 25, 75],
    [60, 180, 75],
    [255, 225, 25],
    [0, 130, 200],
    [245, 130, 48],
    [145, 30, 180],
    [70, 240, 240],
    [240, 50, 230],
];

/// Recommended Display CIELab Value of segment `number`: its palette colour as CIE L*a*b* (D65),
/// scaled as PS3.3 C.10.7.1.1 wants (L* 0-100 and a*, b* -128-127 onto 0-65535).
fn display_colour(number: usize) -> [u16; 3] {
    let [r, g, b] = PALETTE[(number.max(1) - 1) % PALETTE.len()].map(|c| {
        let c = f64::from(c) / 255.0;
        if c <= 0.04045 {
            c / 12.92
        } else {
            ((c + 0.055) / 1.055).powf(2.4)
        }
    });
    // sRGB (D65) to XYZ, relative to the D65 white.
    let x = (0.4124 * r + 0.3576 * g + 0.1805 * b) / 0.95047;
    let y = 0.2126 * r + 0.7152 * g + 0.0722 * b;
    let z = (0.0193 * r + 0.1192 * g + 0.9505 * b) / 1.08883;
    let f = |t: f64| {
        if t > 216.0 / 24389.0 {
            t.cbrt()
        } else {
            (24389.0 / 27.0 * t + 16.0) / 116.0
        }
    };
    let (fx, fy, fz) = (f(x), f(y), f(z));
    let lab = [116.0 * fy - 16.0, 500.0 * (fx - fy), 200.0 * (fy - fz)];
    let scale = |v: f64, low: f64, high: f64| {
        ((v - low) / (high - low) * 65535.0)
            .round()
            .clamp(0.0, 65535.0) as u16
    };
    [
        scale(lab[0], 0.0, 100.0),
        scale(lab[1], -128.0, 127.0),
        scale(lab[2], -128.0, 127.0),
    ]
}

/// One Segment Sequence item.
fn segment_item(ctx: &Context, finding: &SegmentedFinding) -> DataSet {
    let f = &finding.finding;
    let algorithm = DataSet::new()
        .sequence(
            tags::ALGORITHM_FAMILY_CODE_SEQUENCE,
            vec![codes::ARTIFICIAL_INTELLIGENCE.item()],
        )
        .text(tags::ALGORITHM_NAME, VR::LO, &ctx.algorithm.name)
        .text(tags::ALGORITHM_VERSION, VR::LO, &ctx.algorithm.version);
    let laterality: Code = finding.laterality();
    DataSet::new()
        .us(tags::SEGMENT_NUMBER, &[finding.number as u16])
        .text(tags::SEGMENT_LABEL, VR::LO, &finding.label())
        .text(
            tags::SEGMENT_DESCRIPTION,
            VR::ST,
            &format!(
                "{:.1} mm, {:.0} mm3, probability of cancer {:.2}",
                f.max_diameter_mm, f.volume_mm3, finding.p_cancer
            ),
        )
        .us(
            tags::RECOMMENDED_DISPLAY_CIE_LAB_VALUE,
            &display_colour(finding.number),
        )
        .text(tags::SEGMENT_ALGORITHM_TYPE, VR::CS, "AUTOMATIC")
        .text(tags::SEGMENT_ALGORITHM_NAME, VR::LO, &ctx.algorithm.name)
        .sequence(
            tags::SEGMENTATION_ALGORITHM_IDENTIFICATION_SEQUENCE,
            vec![algorithm],
        )
        .sequence(
            tags::SEGMENTED_PROPERTY_CATEGORY_CODE_SEQUENCE,
            vec![codes::MORPHOLOGICALLY_ABNORMAL_STRUCTURE.item()],
        )
        .sequence(
            tags::SEGMENTED_PROPERTY_TYPE_CODE_SEQUENCE,
            vec![codes::NODULE.item()],
        )
        .sequence(
            tags::ANATOMIC_REGION_SEQUENCE,
            vec![codes::LUNG.item().sequence(
                tags::ANATOMIC_REGION_MODIFIER_SEQUENCE,
                vec![laterality.item()],
            )],
        )
        .text(tags::TRACKING_ID, VR::UT, &finding.label())
        .uid(tags::TRACKING_UID, &finding.tracking_uid)
}

/// Whether two segments claim the same pixel of the same slice.
fn overlapping(findings: &[SegmentedFinding]) -> bool {
    let mut by_slice: HashMap<usize, Vec<&[u8]>> = HashMap::new();
    for finding in findings {
        for slice in &finding.slices {
            by_slice.entry(slice.slice).or_default().push(&slice.pixels);
        }
    }
    by_slice.values().any(|frames| {
        frames.len() > 1
            && (0..frames[0].len()).any(|p| frames.iter().filter(|f| f[p] != 0).count() > 1)
    })
}

/// Packs 0/1 pixels into bits, first pixel in the least significant bit, frames continuous
/// (PS3.5 8.1.1: only the whole element is padded to even length).
struct BitPacker {
    bytes: Vec<u8>,
    bits: usize,
}

impl BitPacker {
    fn with_capacity(pixels: usize) -> Self {
        Self {
            bytes: Vec::with_capacity(pixels.div_ceil(8)),
            bits: 0,
        }
    }

    fn extend(&mut self, pixels: &[u8]) {
        for &p in pixels {
            if self.bits.is_multiple_of(8) {
                self.bytes.push(0);
            }
            if p != 0 {
                *self.bytes.last_mut().expect("pushed above") |= 1 << (self.bits % 8);
            }
            self.bits += 1;
        }
    }

    fn finish(mut self) -> Vec<u8> {
        if self.bytes.len() % 2 == 1 {
            self.bytes.push(0);
        }
        self.bytes
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn segment_colours_are_distinct_cielab_values() {
        // Red is light-ish with a strongly positive a*; blue has a negative b*.
        let red = display_colour(1);
        assert!(red[1] > 40000 && red[0] > 25000, "{red:?}");
        let blue = display_colour(4);
        assert!(blue[2] < 32896, "{blue:?}");
        let all: Vec<[u16; 3]> = (1..=8).map(display_colour).collect();
        for (i, a) in all.iter().enumerate() {
            assert!(all[i + 1..].iter().all(|b| b != a));
        }
        assert_eq!(display_colour(9), display_colour(1));
    }

    #[test]
    fn bits_pack_continuously_across_frames() {
        let mut packer = BitPacker::with_capacity(10);
        // Two frames of 5 pixels: the second starts at bit 5 of the first byte.
        packer.extend(&[1, 0, 0, 0, 1]);
        packer.extend(&[1, 1, 0, 0, 1]);
        assert_eq!(packer.finish(), vec![0b0111_0001, 0b0000_0010]);
        let mut odd = BitPacker::with_capacity(3);
        odd.extend(&[0, 0, 1]);
        assert_eq!(odd.finish(), vec![0b100, 0], "padded to even length");
    }
}
