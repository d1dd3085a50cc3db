//! The result objects sent back to the PACS: a DICOM Segmentation (`seg`) and a TID 1500
//! Comprehensive 3D SR (`sr`) of the reported findings, with the coded concepts in `codes`,
//! deterministic UIDs in `uids`, and what they copy from the CT in `source`.
//!
//! Which findings are reported is decided here, once: the analysis keeps every candidate (up to
//! 100, as the LUNA16 evaluation wants), the report keeps those at or above the configured
//! nodule probability, most probable first, up to a configured count. Each reported finding is
//! also measured on its largest axial slice (`axes`).
//!
//! Re-analysis: the objects of a series' earlier analysis are read from its `results.json`. The
//! same content gives the same objects (same UIDs); changed content gives a new revision: new
//! SOP Instance UIDs in the same series, the Instance Number counting revisions, and an SR that
//! names the one it replaces (Predecessor Documents Sequence). The earlier SEG stays valid for
//! the earlier SR; the new SR references the new SEG.

pub mod axes;
pub mod codes;
pub mod dataset;
pub mod seg;
pub mod source;
pub mod sr;
pub mod uids;

use crate::inference::findings::{Detection, Extent};
use crate::inference::{Analysis, Analyzer, Finding, LungSide};
use crate::jnsc::model_file::AnalysisSetting;
use crate::volume::Volume;
use crate::volume::geometry::Geometry;
use crate::volume::mapping::{SliceMask, mask_footprint};
use crate::volume::series::AcquiredSeries;
use crate::write::{file_meta, write_bytes_whole, write_whole};
use axes::{PixelGrid, PlanarAxes};
use codes::Code;
use dataset::DataSet;
use dicom_core::VR;
use dicom_dictionary_std::{tags, uids as sop};
use dicom_object::InMemDicomObject;
use serde::{Deserialize, Serialize};
use source::{PATIENT_OPTIONAL, PATIENT_TYPE2, STUDY_OPTIONAL, STUDY_TYPE2, SourceStudy};
use std::path::{Path, PathBuf};
use uids::ResultUids;

/// Which findings go into the report.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct ReportPolicy {
    /// Lowest nodule probability reported: p(nodule) of the finding (the location map's peak
    /// inside it times 1 - p(non-nodule) of the classification path).
    pub min_p_nodule: f64,
    /// Most findings reported, the most probable first.
    pub max_findings: usize,
}

/// `[results]`: which findings go into the report, as configured. The threshold is the model's
/// own operating point unless one is given here.
#[derive(Debug, Clone, Copy, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ResultsConfig {
    /// Lowest p(nodule) reported. Default: the model file's operating point, chosen for its
    /// weights on validation data (`jnsc eval operating-point`; the shipped model's 0.465, the
    /// lowest threshold with at most one reported false positive per scan on a real chest CT
    /// background held out of training; see models/README.md): a screening operating point, not
    /// the FROC's 100 marks.
    pub min_p_nodule: Option<f64>,
    /// Most findings reported, the most probable first.
    pub max_findings: usize,
}

impl Default for ResultsConfig {
    fn default() -> Self {
        Self {
            min_p_nodule: None,
            max_findings: DEFAULT_MAX_FINDINGS,
        }
    }
}

/// Most findings reported by default.
pub const DEFAULT_MAX_FINDINGS: usize = 20;

impl ResultsConfig {
    /// The policy for `analyzer`: the configured threshold, else its model's operating point.
    pub fn policy(&self, analyzer: &Analyzer) -> Result<ReportPolicy, NoThreshold> {
        Ok(ReportPolicy {
            min_p_nodule: min_p_nodule(self.min_p_nodule, analyzer)?,
            max_findings: self.max_findings,
        })
    }
}

/// The lowest p(nodule) reported: `given` (a configuration key or a command-line option) where
/// there is one, else the operating point of `analyzer`'s model, which holds only for the
/// analysis setting it was chosen with.
pub fn min_p_nodule(given: Option<f64>, analyzer: &Analyzer) -> Result<f64, NoThreshold> {
    if let Some(p) = given {
        return Ok(p);
    }
    let info = analyzer.model_info();
    let model = format!("{} {}", info.name, info.version);
    if info.operating_points.is_empty() {
        return Err(NoThreshold::NoOperatingPoint { model });
    }
    let running = analyzer.setting();
    match info.operating_point(running) {
        Some(o) => Ok(o.min_p_nodule),
        None => Err(NoThreshold::OtherSetting {
            model,
            chosen: info
                .operating_points
                .iter()
                .map(|o| format!("p(nodule) >= {} with {}", o.min_p_nodule, o.analysis))
                .collect::<Vec<_>>()
                .join("; "),
            running,
        }),
    }
}

/// No threshold given, and none of the model's that holds.
#[derive(Debug, Clone, thiserror::Error)]
pub enum NoThreshold {
    #[error(
        "the model {model} carries no operating point: give the lowest p(nodule) to report \
         ([results] min_p_nodule, or --min-p-nodule), or write one into the model file, chosen \
         on validation studies (jnsc eval operating-point)"
    )]
    NoOperatingPoint { model: String },
    #[error(
        "the model {model} carries operating points for other analysis settings only ({chosen}); \
         this analysis runs {running}, whose p(nodule) differs: give the lowest p(nodule) to \
         report for it ([results] min_p_nodule, or --min-p-nodule; see the model card)"
    )]
    OtherSetting {
        model: String,
        /// The model's operating points and their settings, in words.
        chosen: String,
        running: AnalysisSetting,
    },
}

/// Who made the objects (General and Enhanced General Equipment, SR device observer).
#[derive(Debug, Clone)]
pub struct Equipment {
    pub manufacturer: &'static str,
    pub model_name: &'static str,
    pub software_version: &'static str,
    /// This node's AE title: the device observer name and the serial number.
    pub device_name: String,
    /// Derived from the AE title, so it is stable across restarts.
    pub device_uid: String,
}

impl Equipment {
    pub fn new(ae_title: &str) -> Self {
        Self {
            manufacturer: "JNSC project",
            model_name: "JNSC node",
            software_version: env!("CARGO_PKG_VERSION"),
            device_name: ae_title.to_owned(),
            device_uid: uids::derived_uid(&format!("device|{ae_title}")),
        }
    }
}

/// The algorithm that produced the findings (the model file's name and version).
#[derive(Debug, Clone, Serialize)]
pub struct Algorithm {
    pub name: String,
    pub version: String,
}

/// What both builders share.
pub struct Context<'a> {
    pub source: &'a SourceStudy,
    pub uids: ResultUids,
    /// Revision of the series' results, from 1: the objects' Instance Number.
    pub revision: u32,
    /// The SR these results replace, when the content changed.
    pub predecessor: Option<ObjectIds>,
    pub equipment: &'a Equipment,
    pub algorithm: Algorithm,
    /// Content date and time (UTC), DA and TM.
    pub date: String,
    pub time: String,
}

/// A reported finding with its mask on the source slices.
#[derive(Debug, Clone)]
pub struct SegmentedFinding {
    /// Segment number and report order, from 1.
    pub number: usize,
    pub finding: Finding,
    /// Probability that the finding is a cancer, which the SR and SEG report
    /// (`Finding::p_cancer_finding`; only classified findings are reported).
    pub p_cancer: f64,
    pub tracking_uid: String,
    /// Tracking UID of its axial measurement group (`ResultUids::axial_tracking`).
    pub axial_tracking_uid: String,
    /// The source slices it touches, with its pixels there.
    pub slices: Vec<SliceMask>,
    /// Long and short axis on the slice where it is largest.
    pub axial: Option<AxialMeasurement>,
}

/// A finding's axes on one source image.
#[derive(Debug, Clone)]
pub struct AxialMeasurement {
    pub axes: PlanarAxes,
    pub sop_instance_uid: String,
    /// 1-based frame of a multi-frame source image.
    pub frame: Option<u32>,
}

impl SegmentedFinding {
    pub fn label(&self) -> String {
        format!("Nodule {}", self.number)
    }

    pub fn laterality(&self) -> Code {
        match self.finding.lung_side {
            LungSide::Left => codes::LEFT,
            LungSide::Right => codes::RIGHT,
        }
    }

    /// Its pixels on the source grid.
    pub fn source_pixels(&self) -> usize {
        self.slices
            .iter()
            .map(|s| s.pixels.iter().filter(|&&p| p != 0).count())
            .sum()
    }
}

/// What was produced, as recorded beside the objects (`results.json`).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ResultSummary {
    pub study_uid: String,
    pub series_uid: String,
    pub model: String,
    pub model_version: String,
    /// Findings the analysis produced, and those reported.
    pub candidates: usize,
    /// Digest of the reported content (findings, measurements, masks): the same digest means
    /// the same objects. Absent in results written before it existed.
    #[serde(default)]
    pub content_digest: Option<String>,
    /// Revision of the series' results (the objects' Instance Number), from 1.
    #[serde(default = "first_revision")]
    pub revision: u32,
    /// The SR this report replaced.
    #[serde(default)]
    pub predecessor: Option<ObjectIds>,
    pub seg: Option<ObjectIds>,
    pub sr: ObjectIds,
    pub findings: Vec<ReportedFinding>,
}

fn first_revision() -> u32 {
    1
}

/// Identity of one result object.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ObjectIds {
    pub sop_class_uid: String,
    pub sop_instance_uid: String,
    pub series_uid: String,
}

/// One reported finding as recorded.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ReportedFinding {
    pub number: usize,
    pub tracking_uid: String,
    pub center_mm: [f64; 3],
    pub max_diameter_mm: f64,
    /// Long and short axis on its largest axial slice, and their mean (Lung-RADS).
    #[serde(default)]
    pub long_axis_mm: Option<f64>,
    #[serde(default)]
    pub short_axis_mm: Option<f64>,
    #[serde(default)]
    pub mean_diameter_mm: Option<f64>,
    pub volume_mm3: f64,
    pub p_nodule: f64,
    /// Probability of cancer as the SR reports it: p(nodule) x p(cancer | nodule), the call's
    /// (`Finding::p_cancer_finding`).
    pub p_malignant: f64,
    pub malignant: bool,
    pub lung_side: LungSide,
    /// Pixels of its segment on the source slices, and the number of those slices.
    pub source_pixels: usize,
    pub source_slices: usize,
}

/// The objects of one analysis.
pub struct ResultObjects {
    pub seg: Option<InMemDicomObject>,
    pub sr: InMemDicomObject,
    pub summary: ResultSummary,
}

/// Builds SEG (when something is reported) and SR for an analysis. `previous` is what the
/// series' last analysis produced (`read_summary`), if any.
pub fn build(
    analysis: &Analysis,
    source: &SourceStudy,
    policy: &ReportPolicy,
    equipment: &Equipment,
    previous: Option<&ResultSummary>,
) -> ResultObjects {
    let report = &analysis.report;
    let (model, version) = (&report.model.name, &report.model.version);
    let mut findings = reported_findings(analysis, policy);
    let digest = content_digest(&findings);
    let (revision, predecessor) = match previous {
        None => (1, None),
        // The same content from the same model: the same objects, UIDs included.
        Some(p)
            if &p.model == model
                && &p.model_version == version
                && p.content_digest.as_deref() == Some(digest.as_str()) =>
        {
            (p.revision, p.predecessor.clone())
        }
        Some(p) => (p.revision + 1, Some(p.sr.clone())),
    };
    let uids = ResultUids::new(
        &source.series_uid,
        model,
        version,
        &digest,
        predecessor.as_ref().map(|p| p.sop_instance_uid.as_str()),
    );
    for f in &mut findings {
        f.tracking_uid = uids.tracking(f.number);
        f.axial_tracking_uid = uids.axial_tracking(f.number);
    }
    let now = time::OffsetDateTime::now_utc();
    let ctx = Context {
        source,
        uids,
        revision,
        predecessor,
        equipment,
        algorithm: Algorithm {
            name: report.model.name.clone(),
            version: report.model.version.clone(),
        },
        date: format!(
            "{:04}{:02}{:02}",
            now.year(),
            u8::from(now.month()),
            now.day()
        ),
        time: format!("{:02}{:02}{:02}", now.hour(), now.minute(), now.second()),
    };
    let seg = (!findings.is_empty())
        .then(|| seg::build(&ctx, &analysis.volume.series, &findings).into_inner());
    let sr = sr::build(&ctx, &findings).into_inner();
    let summary = ResultSummary {
        study_uid: source.study_uid.clone(),
        series_uid: source.series_uid.clone(),
        model: ctx.algorithm.name.clone(),
        model_version: ctx.algorithm.version.clone(),
        candidates: report.findings.len(),
        content_digest: Some(digest),
        revision: ctx.revision,
        predecessor: ctx.predecessor.clone(),
        seg: seg.as_ref().map(|_| ObjectIds {
            sop_class_uid: sop::SEGMENTATION_STORAGE.into(),
            sop_instance_uid: ctx.uids.seg_instance.clone(),
            series_uid: ctx.uids.seg_series.clone(),
        }),
        sr: ObjectIds {
            sop_class_uid: sop::COMPREHENSIVE3_DSR_STORAGE.into(),
            sop_instance_uid: ctx.uids.sr_instance.clone(),
            series_uid: ctx.uids.sr_series.clone(),
        },
        findings: findings
            .iter()
            .map(|f| ReportedFinding {
                number: f.number,
                tracking_uid: f.tracking_uid.clone(),
                center_mm: f.finding.center_mm,
                max_diameter_mm: f.finding.max_diameter_mm,
                long_axis_mm: f.axial.as_ref().map(|a| a.axes.long.length_mm),
                short_axis_mm: f.axial.as_ref().map(|a| a.axes.short.length_mm),
                mean_diameter_mm: f.axial.as_ref().map(|a| a.axes.mean_diameter_mm()),
                volume_mm3: f.finding.volume_mm3,
                p_nodule: f.finding.p_nodule,
                p_malignant: f.p_cancer,
                malignant: f.finding.malignant,
                lung_side: f.finding.lung_side,
                source_pixels: f.source_pixels(),
                source_slices: f.slices.len(),
            })
            .collect(),
    };
    ResultObjects { seg, sr, summary }
}

/// The findings the policy reports, numbered, each with its mask carried onto the source slices.
/// A finding whose mask covers no source pixel centre (thinner than the slices) is left out, and
/// so is one the analyzer did not classify (its location probability was under the analyzer's
/// `classify_min_p_location`, which the node keeps at or below the reporting threshold).
/// Tracking UIDs are filled in by the caller, once the UIDs are known.
fn reported_findings(analysis: &Analysis, policy: &ReportPolicy) -> Vec<SegmentedFinding> {
    let series = &analysis.volume.series;
    let grid = PixelGrid {
        columns: series.columns,
        column_spacing_mm: series.column_spacing_mm,
        row_spacing_mm: series.row_spacing_mm,
    };
    let mut order: Vec<usize> = (0..analysis.report.findings.len())
        .filter(|&i| analysis.report.findings[i].p_nodule >= policy.min_p_nodule)
        .collect();
    order.sort_by(|&a, &b| {
        let (fa, fb) = (&analysis.report.findings[a], &analysis.report.findings[b]);
        fb.p_nodule.total_cmp(&fa.p_nodule)
    });
    let mut reported = Vec::new();
    for i in order {
        if reported.len() == policy.max_findings {
            break;
        }
        let slices = segment_slices(
            &analysis.map.geometry,
            &analysis.volume.series,
            &analysis.detections[i],
        );
        if slices.is_empty() {
            continue;
        }
        let Some(p_cancer) = analysis.report.findings[i].p_cancer_finding else {
            continue;
        };
        let axial = axes::measure(&slices, grid).map(|axes| {
            let image = &series.slices[axes.series_slice];
            AxialMeasurement {
                axes,
                sop_instance_uid: image.sop_instance_uid.clone(),
                frame: image.frame,
            }
        });
        reported.push(SegmentedFinding {
            number: reported.len() + 1,
            p_cancer,
            finding: analysis.report.findings[i].clone(),
            tracking_uid: String::new(),
            axial_tracking_uid: String::new(),
            slices,
            axial,
        });
    }
    reported
}

/// A digest of everything the objects say about the findings (not the creation time).
fn content_digest(findings: &[SegmentedFinding]) -> String {
    let mut content = Vec::new();
    for f in findings {
        let d = &f.finding;
        let axes = f.axial.as_ref().map(|a| (a.axes, &a.sop_instance_uid));
        content.extend(
            format!(
                "{}|{:?}|{}|{}|{}|{}|{}|{}|{:?}|",
                f.number,
                d.center_mm,
                d.max_diameter_mm,
                d.volume_mm3,
                d.p_nodule,
                f.p_cancer,
                d.malignant,
                d.lung_side,
                axes
            )
            .bytes(),
        );
        for slice in &f.slices {
            content.extend((slice.slice as u64).to_le_bytes());
            content.extend(&slice.pixels);
        }
    }
    uids::digest(&content)
}

/// The summary an earlier analysis left in `dir` (`None` when there is none or it cannot be
/// read: the results are then a first revision).
pub fn read_summary(dir: &Path) -> Option<ResultSummary> {
    let bytes = std::fs::read(dir.join("results.json")).ok()?;
    serde_json::from_slice(&bytes).ok()
}

/// A detection's segment on the source slices: its measured extent, or its region where the
/// measured extent is too small to cover a pixel of the source grid (a few voxels of 1 mm
/// between thick slices), so that no finding is lost for its size.
fn segment_slices(
    map: &Geometry,
    series: &AcquiredSeries,
    detection: &Detection,
) -> Vec<SliceMask> {
    let footprint =
        |extent: &Extent| mask_footprint(&detection_mask(map, detection, extent), series);
    let measured = footprint(&detection.measured);
    if measured.is_empty() {
        footprint(&detection.region)
    } else {
        measured
    }
}

/// Voxels of a detection (its measured extent, what its size reports, or its region) as a mask
/// on a small grid around its region (one voxel of margin).
fn detection_mask(map: &Geometry, detection: &Detection, extent: &Extent) -> Volume<u8> {
    let bounds = detection.bounding_box;
    let start = [0, 1, 2].map(|a| bounds.min[a] as i64 - 1);
    let size = [0, 1, 2].map(|a| bounds.max[a] - bounds.min[a] + 3);
    let grid = Geometry {
        origin: map.index_to_patient(start.map(|v| v as f64)),
        size,
        ..*map
    };
    let mut mask = Volume::filled(grid, 0u8);
    let [nx, ny, _] = map.size;
    for &offset in &extent.voxels {
        let (i, j, k) = (offset % nx, (offset / nx) % ny, offset / (nx * ny));
        let at = grid.offset(
            (i as i64 - start[0]) as usize,
            (j as i64 - start[1]) as usize,
            (k as i64 - start[2]) as usize,
        );
        mask.data[at] = 1;
    }
    mask
}

/// The modules both objects share: SOP Common, Patient, General Study, the series' identity,
/// General and Enhanced General Equipment, and the content date and time.
fn common_modules(
    ctx: &Context,
    sop_class_uid: &str,
    sop_instance_uid: &str,
    series_uid: &str,
    series_number: i64,
    modality: &str,
    series_description: &str,
) -> DataSet {
    let source = &ctx.source.header;
    let equipment = ctx.equipment;
    DataSet::new()
        .copy(source, &[(tags::SPECIFIC_CHARACTER_SET, VR::CS)], false)
        .uid(tags::SOP_CLASS_UID, sop_class_uid)
        .uid(tags::SOP_INSTANCE_UID, sop_instance_uid)
        .text(tags::INSTANCE_CREATION_DATE, VR::DA, &ctx.date)
        .text(tags::INSTANCE_CREATION_TIME, VR::TM, &ctx.time)
        .text(tags::TIMEZONE_OFFSET_FROM_UTC, VR::SH, "+0000")
        .copy(source, PATIENT_TYPE2, true)
        .copy(source, PATIENT_OPTIONAL, false)
        .uid(tags::STUDY_INSTANCE_UID, &ctx.source.study_uid)
        .copy(source, STUDY_TYPE2, true)
        .copy(source, STUDY_OPTIONAL, false)
        .text(tags::MODALITY, VR::CS, modality)
        .uid(tags::SERIES_INSTANCE_UID, series_uid)
        .integer(tags::SERIES_NUMBER, series_number)
        .text(tags::SERIES_DESCRIPTION, VR::LO, series_description)
        .text(tags::SERIES_DATE, VR::DA, &ctx.date)
        .text(tags::SERIES_TIME, VR::TM, &ctx.time)
        .text(tags::MANUFACTURER, VR::LO, equipment.manufacturer)
        .text(tags::MANUFACTURER_MODEL_NAME, VR::LO, equipment.model_name)
        .text(tags::DEVICE_SERIAL_NUMBER, VR::LO, &equipment.device_name)
        .text(tags::SOFTWARE_VERSIONS, VR::LO, equipment.software_version)
        .integer(tags::INSTANCE_NUMBER, i64::from(ctx.revision))
        .text(tags::CONTENT_DATE, VR::DA, &ctx.date)
        .text(tags::CONTENT_TIME, VR::TM, &ctx.time)
}

/// Where one analysis' results were written.
#[derive(Debug, Clone)]
pub struct WrittenResults {
    pub seg: Option<PathBuf>,
    pub sr: PathBuf,
    pub summary: PathBuf,
}

/// Writes the objects as Part 10 files (explicit VR little endian) and the summary as JSON into
/// `dir`, each through a temporary file renamed into place, so a reader never sees half a file
/// and a re-analysis replaces the previous results.
pub fn write(objects: &ResultObjects, dir: &Path) -> std::io::Result<WrittenResults> {
    std::fs::create_dir_all(dir)?;
    let seg = match &objects.seg {
        Some(seg) => Some(write_part10(seg, &dir.join("seg.dcm"))?),
        None => {
            // A previous analysis may have found something: its SEG no longer belongs here.
            let stale = dir.join("seg.dcm");
            if stale.exists() {
                std::fs::remove_file(&stale)?;
            }
            None
        }
    };
    let sr = write_part10(&objects.sr, &dir.join("sr.dcm"))?;
    let summary = dir.join("results.json");
    let json = serde_json::to_vec_pretty(&objects.summary).map_err(std::io::Error::other)?;
    write_bytes_whole(&summary, &json)?;
    Ok(WrittenResults { seg, sr, summary })
}

fn write_part10(object: &InMemDicomObject, path: &Path) -> std::io::Result<PathBuf> {
    let text = |tag| crate::attributes::text(object, tag).unwrap_or_default();
    let meta = file_meta(
        &text(tags::SOP_CLASS_UID),
        &text(tags::SOP_INSTANCE_UID),
        sop::EXPLICIT_VR_LITTLE_ENDIAN,
    );
    let file = object
        .clone()
        .with_meta(meta)
        .map_err(std::io::Error::other)?;
    write_whole(path, |out| {
        file.write_all(out).map_err(std::io::Error::other)
    })?;
    Ok(path.to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::inference::findings::{PostProcessing, detect};
    use crate::volume::series::SourceSlice;

    /// A 1 mm map and a series of 5 mm slices over it (one pixel per mm, 40 x 40).
    fn grids() -> (Volume<f32>, AcquiredSeries) {
        let identity = [[1.0, 0.0, 0.0], [0.0, 1.0, 0.0], [0.0, 0.0, 1.0]];
        let map = Volume::filled(
            Geometry {
                origin: [0.0; 3],
                spacing: [1.0; 3],
                direction: identity,
                size: [40, 40, 40],
            },
            0f32,
        );
        let series = AcquiredSeries {
            series_uid: "1.2.3".into(),
            rows: 40,
            columns: 40,
            column_spacing_mm: 1.0,
            row_spacing_mm: 1.0,
            row_direction: [1.0, 0.0, 0.0],
            column_direction: [0.0, 1.0, 0.0],
            normal: [0.0, 0.0, 1.0],
            slice_offsets_mm: (0..8).map(|k| 5.0 * k as f64).collect(),
            slices: (0..8)
                .map(|k| SourceSlice {
                    sop_instance_uid: format!("1.2.3.{k}"),
                    frame: None,
                    position: [0.0, 0.0, 5.0 * k as f64],
                })
                .collect(),
            hu: Vec::new(),
            notes: Vec::new(),
        };
        (map, series)
    }

    #[test]
    fn a_finding_is_segmented_by_its_measured_extent_or_else_its_region() {
        let (mut map, series) = grids();
        // A 7 mm cube of 0.6 with a one-voxel peak between two slices (z = 12, slices at 10
        // and 15): the measured extent is that voxel, which covers no source pixel.
        for z in 9..16 {
            for y in 17..24 {
                for x in 17..24 {
                    let at = map.geometry.offset(x, y, z);
                    map.data[at] = 0.6;
                }
            }
        }
        let peak = map.geometry.offset(20, 20, 12);
        map.data[peak] = 1.0;
        let measuring = PostProcessing {
            measure_fraction: 0.9,
            ..PostProcessing::default()
        };
        let found = detect(&map, &measuring);
        assert_eq!(found.len(), 1);
        assert_eq!(found[0].measured.voxels, [peak]);
        let measured_only = mask_footprint(
            &detection_mask(&map.geometry, &found[0], &found[0].measured),
            &series,
        );
        assert!(measured_only.is_empty());
        let slices = segment_slices(&map.geometry, &series, &found[0]);
        assert_eq!(slices.len(), 2, "the region's slices (z 10 and 15)");

        // Where the measured extent reaches a slice, it is the segment.
        for x in 18..23 {
            let at = map.geometry.offset(x, 20, 10);
            map.data[at] = 0.95;
        }
        let found = detect(&map, &measuring);
        let slices = segment_slices(&map.geometry, &series, &found[0]);
        assert_eq!(slices.len(), 1, "slice z = 10 only");
    }
}
