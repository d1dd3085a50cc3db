//! The Comprehensive 3D SR: a TID 1500 Imaging Measurement Report with, per finding, one TID 1411
//! volumetric group (tracking identifier and UID, finding Nodule, finding site, the SEG segment
//! and its source series, diameter, volume, probability of cancer, a benign/malignant
//! evaluation), one TID 1410 group with the same tracking UID holding its centre as a SCOORD3D
//! point, and one TID 1410 group on the axial slice where it is largest, with its own tracking
//! UID: its SEG frame there as the region, the long and short axis each a NUM inferred from a
//! 2-point POLYLINE on that image (what viewers draw and label), and their mean (Lung-RADS'
//! mean diameter). A study without findings gets a complete report that says so. An SR that
//! replaces an earlier one names it in the Predecessor Documents Sequence.

use super::codes::{self, Code};
use super::dataset::DataSet;
use super::{Context, SegmentedFinding, common_modules};
use dicom_core::VR;
use dicom_dictionary_std::{tags, uids};

/// Series number of the SR series.
pub const SERIES_NUMBER: i64 = 7002;

/// Relationship types used in the content tree (PS3.3 C.17.3.2.4).
#[derive(Debug, Clone, Copy)]
enum Relationship {
    Contains,
    HasObsContext,
    HasConceptMod,
    InferredFrom,
    SelectedFrom,
}

impl Relationship {
    fn as_str(self) -> &'static str {
        match self {
            Relationship::Contains => "CONTAINS",
            Relationship::HasObsContext => "HAS OBS CONTEXT",
            Relationship::HasConceptMod => "HAS CONCEPT MOD",
            Relationship::InferredFrom => "INFERRED FROM",
            Relationship::SelectedFrom => "SELECTED FROM",
        }
    }
}

use Relationship::{Contains, HasConceptMod, HasObsContext, InferredFrom, SelectedFrom};

/// A content item with its relationship, value type and concept name.
fn content(relationship: Relationship, value_type: &str, name: Code) -> DataSet {
    DataSet::new()
        .text(tags::RELATIONSHIP_TYPE, VR::CS, relationship.as_str())
        .text(tags::VALUE_TYPE, VR::CS, value_type)
        .sequence(tags::CONCEPT_NAME_CODE_SEQUENCE, vec![name.item()])
}

fn text(relationship: Relationship, name: Code, value: &str) -> DataSet {
    content(relationship, "TEXT", name).text(tags::TEXT_VALUE, VR::UT, value)
}

fn coded(relationship: Relationship, name: Code, value: Code) -> DataSet {
    content(relationship, "CODE", name).sequence(tags::CONCEPT_CODE_SEQUENCE, vec![value.item()])
}

fn uid_reference(relationship: Relationship, name: Code, uid: &str) -> DataSet {
    content(relationship, "UIDREF", name).uid(tags::UID, uid)
}

fn number(name: Code, value: f64, unit: Code) -> DataSet {
    content(Contains, "NUM", name).sequence(
        tags::MEASURED_VALUE_SEQUENCE,
        vec![
            DataSet::new()
                .decimals(tags::NUMERIC_VALUE, &[value])
                .sequence(tags::MEASUREMENT_UNITS_CODE_SEQUENCE, vec![unit.item()]),
        ],
    )
}

fn container(
    relationship: Relationship,
    name: Code,
    template: Option<&str>,
    children: Vec<DataSet>,
) -> DataSet {
    let mut item = content(relationship, "CONTAINER", name).text(
        tags::CONTINUITY_OF_CONTENT,
        VR::CS,
        "SEPARATE",
    );
    if let Some(template) = template {
        item = item.sequence(
            tags::CONTENT_TEMPLATE_SEQUENCE,
            vec![
                DataSet::new()
                    .text(tags::MAPPING_RESOURCE, VR::CS, "DCMR")
                    .text(tags::TEMPLATE_IDENTIFIER, VR::CS, template),
            ],
        );
    }
    // An empty Content Sequence is not allowed (Type 1C): a container without children has none.
    if children.is_empty() {
        item
    } else {
        item.sequence(tags::CONTENT_SEQUENCE, children)
    }
}

/// Finding site: lung, with the side as a laterality modifier.
fn finding_site(finding: &SegmentedFinding) -> DataSet {
    coded(HasConceptMod, codes::FINDING_SITE, codes::LUNG).sequence(
        tags::CONTENT_SEQUENCE,
        vec![coded(
            HasConceptMod,
            codes::LATERALITY,
            finding.laterality(),
        )],
    )
}

/// Tracking identifier and UID: the same as its SEG segment's.
fn tracking(finding: &SegmentedFinding) -> [DataSet; 2] {
    [
        text(HasObsContext, codes::TRACKING_IDENTIFIER, &finding.label()),
        uid_reference(HasObsContext, codes::TRACKING_UID, &finding.tracking_uid),
    ]
}

/// A Referenced SOP Sequence of one item: an instance, and its frame where it has frames.
fn sop_reference(class: &str, instance: &str, frame: Option<u32>) -> Vec<DataSet> {
    let mut item = DataSet::new()
        .uid(tags::REFERENCED_SOP_CLASS_UID, class)
        .uid(tags::REFERENCED_SOP_INSTANCE_UID, instance);
    if let Some(frame) = frame {
        item = item.integer(tags::REFERENCED_FRAME_NUMBER, i64::from(frame));
    }
    vec![item]
}

/// TID 1410 on the finding's largest axial slice: the SEG frame of its segment there, the long
/// and short axis as 2-point polylines on the CT image, and the mean diameter. `seg_frame` is
/// the SEG's frame number of that slice of this segment.
fn axial_group(ctx: &Context, finding: &SegmentedFinding, seg_frame: usize) -> Option<DataSet> {
    let axial = finding.axial.as_ref()?;
    let image = || {
        content(SelectedFrom, "IMAGE", codes::SOURCE).sequence(
            tags::REFERENCED_SOP_SEQUENCE,
            sop_reference(
                &ctx.source.sop_class_uid,
                &axial.sop_instance_uid,
                axial.frame,
            ),
        )
    };
    let axis = |name: Code, axis: &super::axes::Axis| {
        let line: Vec<f32> = [axis.from, axis.to]
            .concat()
            .iter()
            .map(|&v| v as f32)
            .collect();
        number(name, axis.length_mm, codes::MILLIMETER).sequence(
            tags::CONTENT_SEQUENCE,
            vec![
                content(InferredFrom, "SCOORD", codes::SOURCE)
                    .text(tags::GRAPHIC_TYPE, VR::CS, "POLYLINE")
                    .floats(tags::GRAPHIC_DATA, &line)
                    .sequence(tags::CONTENT_SEQUENCE, vec![image()]),
            ],
        )
    };
    let region = [
        content(Contains, "IMAGE", codes::REFERENCED_SEGMENTATION_FRAME).sequence(
            tags::REFERENCED_SOP_SEQUENCE,
            vec![
                DataSet::new()
                    .uid(tags::REFERENCED_SOP_CLASS_UID, uids::SEGMENTATION_STORAGE)
                    .uid(tags::REFERENCED_SOP_INSTANCE_UID, &ctx.uids.seg_instance)
                    // The frame implies the segment (frames are per segment); the
                    // SOP Instance Reference Macro forbids naming both.
                    .integer(tags::REFERENCED_FRAME_NUMBER, seg_frame as i64),
            ],
        ),
        content(
            Contains,
            "IMAGE",
            codes::SOURCE_IMAGE_FOR_SEGMENTATION_FRAME,
        )
        .sequence(
            tags::REFERENCED_SOP_SEQUENCE,
            sop_reference(
                &ctx.source.sop_class_uid,
                &axial.sop_instance_uid,
                axial.frame,
            ),
        ),
    ];
    let mut children = vec![
        text(
            HasObsContext,
            codes::TRACKING_IDENTIFIER,
            &format!("{} (axial)", finding.label()),
        ),
        uid_reference(
            HasObsContext,
            codes::TRACKING_UID,
            &finding.axial_tracking_uid,
        ),
        coded(Contains, codes::FINDING, codes::NODULE),
        finding_site(finding),
    ];
    children.extend(region);
    children.extend([
        axis(codes::LONG_AXIS, &axial.axes.long),
        axis(codes::SHORT_AXIS, &axial.axes.short),
        number(
            codes::DIAMETER,
            axial.axes.mean_diameter_mm(),
            codes::MILLIMETER,
        )
        .sequence(
            tags::CONTENT_SEQUENCE,
            vec![coded(HasConceptMod, codes::DERIVATION, codes::MEAN)],
        ),
    ]);
    Some(container(
        Contains,
        codes::MEASUREMENT_GROUP,
        Some("1410"),
        children,
    ))
}

/// TID 1411: the finding's measurements, tied to its SEG segment.
fn volumetric_group(ctx: &Context, finding: &SegmentedFinding) -> DataSet {
    let f = &finding.finding;
    let segment = content(Contains, "IMAGE", codes::REFERENCED_SEGMENT).sequence(
        tags::REFERENCED_SOP_SEQUENCE,
        vec![
            DataSet::new()
                .uid(tags::REFERENCED_SOP_CLASS_UID, uids::SEGMENTATION_STORAGE)
                .uid(tags::REFERENCED_SOP_INSTANCE_UID, &ctx.uids.seg_instance)
                .us(tags::REFERENCED_SEGMENT_NUMBER, &[finding.number as u16]),
        ],
    );
    let diameter = number(codes::DIAMETER, f.max_diameter_mm, codes::MILLIMETER).sequence(
        tags::CONTENT_SEQUENCE,
        vec![coded(HasConceptMod, codes::DERIVATION, codes::MAXIMUM)],
    );
    let diagnosis = if f.malignant {
        codes::MALIGNANT_NEOPLASM
    } else {
        codes::BENIGN_NEOPLASM
    };
    let mut children: Vec<DataSet> = tracking(finding).into();
    children.extend([
        coded(Contains, codes::FINDING, codes::NODULE),
        finding_site(finding),
        segment,
        uid_reference(
            Contains,
            codes::SOURCE_SERIES_FOR_SEGMENTATION,
            &ctx.source.series_uid,
        ),
        diameter,
        number(codes::VOLUME, f.volume_mm3, codes::CUBIC_MILLIMETER),
        number(
            codes::PROBABILITY_OF_CANCER,
            finding.p_cancer,
            codes::NO_UNITS,
        ),
        coded(Contains, codes::DIAGNOSIS, diagnosis),
    ]);
    container(Contains, codes::MEASUREMENT_GROUP, Some("1411"), children)
}

/// TID 1410: the finding's centre as a 3-D point in the CT's frame of reference, under the same
/// tracking UID (TID 1411 allows one ROI reference, and it is the segment). OHIF merges groups by
/// tracking UID and draws this point.
fn centre_group(ctx: &Context, finding: &SegmentedFinding) -> DataSet {
    let point = content(Contains, "SCOORD3D", codes::IMAGE_REGION)
        .text(tags::GRAPHIC_TYPE, VR::CS, "POINT")
        .floats(
            tags::GRAPHIC_DATA,
            &finding.finding.center_mm.map(|v| v as f32),
        )
        .uid(
            tags::REFERENCED_FRAME_OF_REFERENCE_UID,
            &ctx.source.frame_of_reference_uid,
        );
    let mut children: Vec<DataSet> = tracking(finding).into();
    children.extend([
        coded(Contains, codes::FINDING, codes::NODULE),
        finding_site(finding),
        point,
    ]);
    container(Contains, codes::MEASUREMENT_GROUP, Some("1410"), children)
}

/// Builds the SR data set for the reported findings (possibly none).
pub fn build(ctx: &Context, findings: &[SegmentedFinding]) -> DataSet {
    let source = ctx.source;
    let language = coded(HasConceptMod, codes::LANGUAGE_OF_CONTENT, codes::ENGLISH_US).sequence(
        tags::CONTENT_SEQUENCE,
        vec![coded(
            HasConceptMod,
            codes::COUNTRY_OF_LANGUAGE,
            codes::UNITED_STATES,
        )],
    );
    let observer = [
        coded(HasObsContext, codes::OBSERVER_TYPE, codes::DEVICE),
        uid_reference(
            HasObsContext,
            codes::DEVICE_OBSERVER_UID,
            &ctx.equipment.device_uid,
        ),
        text(
            HasObsContext,
            codes::DEVICE_OBSERVER_NAME,
            &ctx.equipment.device_name,
        ),
        text(
            HasObsContext,
            codes::DEVICE_OBSERVER_MANUFACTURER,
            ctx.equipment.manufacturer,
        ),
        text(
            HasObsContext,
            codes::DEVICE_OBSERVER_MODEL_NAME,
            ctx.equipment.model_name,
        ),
    ];
    let mut measurements = Vec::new();
    // The SEG's frames: by segment, then by slice (`seg::build`).
    let mut first_frame = 1;
    for f in findings {
        measurements.extend([volumetric_group(ctx, f), centre_group(ctx, f)]);
        let seg_frame = f.axial.as_ref().map_or(0, |a| a.axes.footprint_index) + first_frame;
        measurements.extend(axial_group(ctx, f, seg_frame));
        first_frame += f.slices.len();
    }
    let mut root_children = vec![language];
    root_children.extend(observer);
    root_children.push(coded(
        HasConceptMod,
        codes::PROCEDURE_REPORTED,
        codes::CT_UNSPECIFIED_BODY_REGION,
    ));
    if findings.is_empty() {
        // No Imaging Measurements container (it may not be empty): the report says "no nodule".
        root_children.push(container(
            Contains,
            codes::QUALITATIVE_EVALUATIONS,
            None,
            vec![coded(Contains, codes::FINDING, codes::FINDING_ABSENT)],
        ));
    } else {
        root_children.push(container(
            Contains,
            codes::IMAGING_MEASUREMENTS,
            None,
            measurements,
        ));
    }

    // Evidence: every CT image, and the SEG when there is one.
    let mut evidence_series = vec![
        DataSet::new()
            .uid(tags::SERIES_INSTANCE_UID, &source.series_uid)
            .sequence(tags::REFERENCED_SOP_SEQUENCE, source.image_references()),
    ];
    if !findings.is_empty() {
        evidence_series.push(
            DataSet::new()
                .uid(tags::SERIES_INSTANCE_UID, &ctx.uids.seg_series)
                .sequence(
                    tags::REFERENCED_SOP_SEQUENCE,
                    vec![
                        DataSet::new()
                            .uid(tags::REFERENCED_SOP_CLASS_UID, uids::SEGMENTATION_STORAGE)
                            .uid(tags::REFERENCED_SOP_INSTANCE_UID, &ctx.uids.seg_instance),
                    ],
                ),
        );
    }

    let report = common_modules(
        ctx,
        uids::COMPREHENSIVE3_DSR_STORAGE,
        &ctx.uids.sr_instance,
        &ctx.uids.sr_series,
        SERIES_NUMBER,
        "SR",
        "JNSC lung nodule report",
    )
    // SR Document Series module.
    .sequence(tags::REFERENCED_PERFORMED_PROCEDURE_STEP_SEQUENCE, vec![])
    // SR Document General module.
    .text(tags::COMPLETION_FLAG, VR::CS, "COMPLETE")
    .text(tags::VERIFICATION_FLAG, VR::CS, "UNVERIFIED")
    .text(tags::PRELIMINARY_FLAG, VR::CS, "PRELIMINARY")
    .sequence(tags::PERFORMED_PROCEDURE_CODE_SEQUENCE, vec![])
    .sequence(
        tags::CURRENT_REQUESTED_PROCEDURE_EVIDENCE_SEQUENCE,
        vec![
            DataSet::new()
                .uid(tags::STUDY_INSTANCE_UID, &source.study_uid)
                .sequence(tags::REFERENCED_SERIES_SEQUENCE, evidence_series),
        ],
    )
    // SR Document Content module: the root container.
    .text(tags::VALUE_TYPE, VR::CS, "CONTAINER")
    .sequence(
        tags::CONCEPT_NAME_CODE_SEQUENCE,
        vec![codes::IMAGING_MEASUREMENT_REPORT.item()],
    )
    .text(tags::CONTINUITY_OF_CONTENT, VR::CS, "SEPARATE")
    .sequence(
        tags::CONTENT_TEMPLATE_SEQUENCE,
        vec![
            DataSet::new()
                .text(tags::MAPPING_RESOURCE, VR::CS, "DCMR")
                .text(tags::TEMPLATE_IDENTIFIER, VR::CS, "1500"),
        ],
    )
    .sequence(tags::CONTENT_SEQUENCE, root_children);
    // Type 1C: present only when this SR replaces one.
    match &ctx.predecessor {
        None => report,
        Some(p) => report.sequence(
            tags::PREDECESSOR_DOCUMENTS_SEQUENCE,
            vec![
                DataSet::new()
                    .uid(tags::STUDY_INSTANCE_UID, &source.study_uid)
                    .sequence(
                        tags::REFERENCED_SERIES_SEQUENCE,
                        vec![
                            DataSet::new()
                                .uid(tags::SERIES_INSTANCE_UID, &p.series_uid)
                                .sequence(
                                    tags::REFERENCED_SOP_SEQUENCE,
                                    sop_reference(&p.sop_class_uid, &p.sop_instance_uid, None),
                                ),
                        ],
                    ),
            ],
        ),
    }
}
