//! Whole-scan inference: a CT series folder -> 1 mm volume and lung mask -> sliding-window
//! nodule probability map over the lungs' bounding box (`tiles`) -> findings (`findings`) ->
//! class probabilities from the classification path on a 64^3 window centred on each finding
//! (windows batched), for the findings whose location probability is at least
//! `classify_min_p_location`, mirrored where the setting says (`classify_mirrors`, from
//! `classify_mirrors_from`) -> p(nodule) = location probability x (1 - p(non-nodule)), most
//! probable first. The `jnsc analyze` command and the node's worker both call
//! [`Analyzer::analyze`].

pub mod command;
pub mod findings;
pub mod tiles;

use crate::jnsc::device::Precision;
use crate::jnsc::model_file::{
    AnalysisSetting, ModelFileError, ModelInfo, ModelSource, load_networks,
};
use crate::jnsc::network::{Candidate, Jnsc};
use crate::volume::prepare::{PreparedVolume, prepare};
use crate::volume::resample::Interpolation;
use crate::volume::series::SeriesError;
use crate::volume::{MIRROR_SETS, Volume, mirror_cubes};
use candle_core::{Device, Tensor};
use findings::{Detection, PostProcessing, detect};
use serde::{Deserialize, Serialize};
use std::path::PathBuf;
use std::time::Instant;
use tiles::Tiling;

/// Side of the window the classification path sees around each finding.
pub const CLASSIFICATION_WINDOW: usize = 64;
/// Classification windows per network call.
const CLASSIFICATION_BATCH: usize = 4;
/// The classification's test-time mirrors the node and the commands run by default: chosen
/// on validation by rule 23 of docs/model-rules/2026-12-05-session-33.md (model card, "Test-time
/// mirroring"); the model file carries the operating point for it.
pub const DEFAULT_CLASSIFY_MIRRORS: usize = 8;
/// Of which one-pass p(nodule) on the classification is mirrored by default (0: every finding).
pub const DEFAULT_CLASSIFY_MIRRORS_FROM: f64 = 0.05;

/// p(nodule) of a finding: its location probability times the classification path's nodule
/// classes, 1 - p(non-nodule) of its class probabilities.
fn p_nodule(p_location: f64, classes: [f32; 3]) -> f64 {
    p_location * f64::from(1.0 - classes[0])
}

/// Why a series could not be analysed.
#[derive(Debug, thiserror::Error)]
pub enum AnalyzeError {
    #[error(transparent)]
    Series(#[from] SeriesError),
    #[error("no lungs found in the series (not a chest CT, or no air-filled lung)")]
    NoLungs,
    #[error("network failed: {0}")]
    Network(#[from] candle_core::Error),
}

impl AnalyzeError {
    /// A short stable code for the index and the status endpoint.
    pub fn code(&self) -> &'static str {
        match self {
            AnalyzeError::Series(e) => e.code(),
            AnalyzeError::NoLungs => "no-lungs",
            AnalyzeError::Network(_) => "network",
        }
    }
}

/// One nodule finding as reported (JSON keys are part of the `analyze` interface).
#[derive(Debug, Clone, Serialize)]
pub struct Finding {
    /// Centre of mass of the measured extent (`findings::Detection::measured`), patient
    /// coordinates (LPS), mm.
    pub center_mm: [f64; 3],
    /// Equivalent-sphere diameter of the measured extent (`findings::Detection::measured`), mm.
    pub diameter_mm: f64,
    /// Largest extent of the measured extent, mm.
    pub max_diameter_mm: f64,
    /// Volume of the measured extent, mm^3.
    pub volume_mm3: f64,
    /// Volume of the detected region (the location map above its threshold, which contains the
    /// measured extent), mm^3: non-maximum suppression and the 3 mm minimum use its size, and
    /// the classification path its box and voxel count.
    pub region_volume_mm3: f64,
    /// Probability that the finding is a nodule: `p_location` x (1 - `p_non_nodule`), the
    /// location map and the classification path's false-positive reduction together. A finding
    /// that was not classified (location probability under the analyzer's
    /// `classify_min_p_location`) has its location probability here, an upper bound.
    pub p_nodule: f64,
    /// Highest voxel probability of the segmentation (the nodule location map) inside it.
    pub p_location: f64,
    /// Classification path (None where the finding was not classified): probability of the
    /// malignant, benign and non-nodule classes. Where the model file has a malignancy network,
    /// the malignant and benign classes are that network's (its softmax) and the non-nodule
    /// class the detecting network's, so the three need not sum to 1.
    pub p_malignant: Option<f64>,
    pub p_benign: Option<f64>,
    pub p_non_nodule: Option<f64>,
    /// Probability of cancer given that the finding is a nodule: p(malignant) / (p(benign) +
    /// p(malignant)), calibrated where the model file carries a calibration (None when not
    /// classified). The calibration was fitted on true nodules, which is what it is conditional on.
    pub p_cancer: Option<f64>,
    /// `p_nodule` calibrated: the probability that the finding is a nodule, by the Platt
    /// scaling the model file's operating point for this analysis setting carries (fitted on
    /// validation findings at or above it; None where it carries none).
    pub p_nodule_calibrated: Option<f64>,
    /// Probability that the finding is a cancer: `p_nodule_calibrated` (`p_nodule` where there
    /// is none) x `p_cancer` (None when not classified). This is what the SR reports as the
    /// probability of cancer and what the call is made on, so that a finding that may well not
    /// be a nodule is not called malignant for what it would be if it were one (rules log
    /// 2026-12-04, rules 12 and 14).
    pub p_cancer_finding: Option<f64>,
    /// The call: malignant when `p_cancer_finding` reaches the model's calibrated threshold
    /// ([`Analyzer::is_malignant`]); false when not classified.
    pub malignant: bool,
    /// The patient's side, from the centre's position against the lungs' midline.
    pub lung_side: LungSide,
}

/// The patient's side of the chest a finding lies on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LungSide {
    Left,
    Right,
}

impl std::fmt::Display for LungSide {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            LungSide::Left => "left",
            LungSide::Right => "right",
        })
    }
}

/// Milliseconds per stage.
#[derive(Debug, Clone, Copy, Default, Serialize)]
pub struct Timings {
    pub load: f64,
    pub resample: f64,
    pub lung_mask: f64,
    pub segmentation: f64,
    pub detection: f64,
    pub classification: f64,
    pub total: f64,
}

/// What `analyze` returns as JSON.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    pub series_uid: String,
    pub model: ModelSummary,
    pub device: String,
    /// The number format the segmentation ran in (the classification always runs in f32).
    pub precision: Precision,
    pub tiling: Tiling,
    /// Mirrored windows averaged per classified finding (1: none).
    pub classify_mirrors: usize,
    /// Only findings of this one-pass p(nodule) or more were mirrored (0: all of them).
    #[serde(skip_serializing_if = "crate::jnsc::model_file::mirrors_every_finding")]
    pub classify_mirrors_from: f64,
    /// The fraction of its peak at which each finding is measured (0: its whole region).
    pub measure_fraction: f32,
    pub volume_size: [usize; 3],
    pub lung_volume_ml: f64,
    pub findings: Vec<Finding>,
    pub timings_ms: Timings,
    /// Peak resident memory of the process so far, MiB (Linux; absent elsewhere).
    pub peak_memory_mib: Option<f64>,
}

/// The model a report came from.
#[derive(Debug, Clone, Serialize)]
pub struct ModelSummary {
    pub name: String,
    pub version: String,
}

/// A report with what the result objects need beside it: the prepared volume (source geometry,
/// 1 mm grid) and each finding's voxels on the 1 mm grid.
#[derive(Debug)]
pub struct Analysis {
    pub report: Report,
    pub volume: PreparedVolume,
    pub detections: Vec<Detection>,
    /// The nodule location map over the lung region: p(nodule) per voxel; its grid is the one
    /// of the detections' voxel offsets.
    pub map: Volume<f32>,
}

/// A loaded model on a device, with the inference settings.
pub struct Analyzer {
    /// The network in f32, as trained: it classifies the findings.
    net: Jnsc,
    /// The model file's malignancy network, where it has one (f32): it gives the findings'
    /// benign and malignant classes in place of `net`'s.
    malignancy_net: Option<Jnsc>,
    /// The same network with its backbone in `precision`: it runs the segmentation's windows.
    segmenter: Jnsc,
    info: ModelInfo,
    device: Device,
    precision: Precision,
    pub tiling: Tiling,
    pub post: PostProcessing,
    /// Findings whose location probability is below this are not classified (0: all are).
    /// Since p(nodule) never exceeds the location probability, a threshold at or below the
    /// reporting threshold reports exactly what classifying every finding would.
    pub classify_min_p_location: f64,
    /// Test-time mirrors of each classification window (1: off; see `Tiling::mirrors`): the
    /// class probabilities are averaged over the mirrored windows, their boxes mirrored too.
    pub classify_mirrors: usize,
    /// Findings whose one-pass p(nodule) (location probability x (1 - p(non-nodule)) of the
    /// unmirrored window) is below this keep their one-pass classes; the others get all
    /// `classify_mirrors` (0: every finding does). The mirrors cost a classification each, and
    /// a finding far under the reporting threshold cannot be raised to it by them.
    pub classify_mirrors_from: f64,
}

impl Analyzer {
    /// Loads a model, the embedded one or a file, onto `device`; the segmentation runs in
    /// `precision`, the classification of findings in f32.
    pub fn new(
        model: &ModelSource,
        device: Device,
        precision: Precision,
        tiling: Tiling,
    ) -> Result<Self, ModelFileError> {
        let (networks, info) = load_networks(model, &device)?;
        let net = networks.detection;
        let segmenter =
            net.with_backbone_dtype(precision.dtype())
                .map_err(|e| ModelFileError::Convert {
                    path: model.label(),
                    precision,
                    reason: e.to_string(),
                })?;
        let post = PostProcessing {
            threshold: info.config.threshold as f32,
            measure_fraction: info.measure_fraction.unwrap_or(0.0),
            ..PostProcessing::default()
        };
        Ok(Self {
            net,
            malignancy_net: networks.malignancy,
            segmenter,
            info,
            device,
            precision,
            tiling,
            post,
            classify_min_p_location: 0.0,
            classify_mirrors: 1,
            classify_mirrors_from: 0.0,
        })
    }

    pub fn model_info(&self) -> &ModelInfo {
        &self.info
    }

    /// What of this analyzer's settings moves p(nodule) or the findings' centres (an operating
    /// point holds for one setting).
    pub fn setting(&self) -> AnalysisSetting {
        AnalysisSetting {
            window: self.tiling.window,
            stride: self.tiling.stride,
            mirrors: self.tiling.mirrors,
            classify_mirrors: self.classify_mirrors,
            classify_mirrors_from: self.classify_mirrors_from(),
            measure_fraction: self.post.measure_fraction,
        }
    }

    /// Analyses one series.
    pub fn analyze(&self, files: &[PathBuf]) -> Result<Analysis, AnalyzeError> {
        let started = Instant::now();
        let volume = prepare(files, Interpolation::BSpline)?;
        let region = volume.lungs.bounding_box.ok_or(AnalyzeError::NoLungs)?;
        let t = Instant::now();
        let map = tiles::probability_map(
            &self.segmenter,
            &volume.hu,
            region,
            &self.info.normalization,
            &self.tiling,
            &self.device,
        )?;
        let segmentation = t.elapsed();
        let t = Instant::now();
        let detections = detect(&map, &self.post);
        let detection = t.elapsed();
        let t = Instant::now();
        let classified = detections
            .iter()
            .take_while(|d| f64::from(d.p_nodule) >= self.classify_min_p_location)
            .count();
        let mut classes: Vec<Option<[f32; 3]>> = self
            .classify(&volume.hu, &map, &detections[..classified])?
            .into_iter()
            .map(Some)
            .collect();
        classes.resize(detections.len(), None);
        let classification = t.elapsed();
        let nodule_calibration = self
            .info
            .operating_point(self.setting())
            .and_then(|o| o.p_nodule_calibration.as_ref());
        let midline_x = {
            let g = volume.hu.geometry;
            let centre = [0, 1, 2].map(|a| (region.min[a] + region.max[a]) as f64 / 2.0);
            g.index_to_patient(centre)[0]
        };
        let mut findings: Vec<(Finding, Detection)> = detections
            .into_iter()
            .zip(&classes)
            .map(|(d, p)| {
                let p_location = f64::from(d.p_nodule);
                let p_nodule = p.map_or(p_location, |p| p_nodule(p_location, p));
                let p_nodule_calibrated = nodule_calibration.map(|c| c.apply(p_nodule));
                let p_cancer = p.map(|p| self.malignancy(p));
                let p_cancer_finding =
                    p_cancer.map(|c| p_nodule_calibrated.unwrap_or(p_nodule) * c);
                let finding = Finding {
                    center_mm: d.measured.center_mm,
                    diameter_mm: d.measured.equivalent_diameter_mm,
                    max_diameter_mm: d.measured.max_diameter_mm,
                    volume_mm3: d.measured.volume_mm3,
                    region_volume_mm3: d.region.volume_mm3,
                    p_nodule,
                    p_location,
                    p_non_nodule: p.map(|p| f64::from(p[0])),
                    p_benign: p.map(|p| f64::from(p[1])),
                    p_malignant: p.map(|p| f64::from(p[2])),
                    p_nodule_calibrated,
                    p_cancer,
                    p_cancer_finding,
                    malignant: p_cancer_finding.is_some_and(|c| self.is_malignant(c)),
                    // LPS: +x is the patient's left.
                    lung_side: if d.measured.center_mm[0] > midline_x {
                        LungSide::Left
                    } else {
                        LungSide::Right
                    },
                };
                (finding, d)
            })
            .collect();
        findings.sort_by(|a, b| b.0.p_nodule.total_cmp(&a.0.p_nodule));
        let (findings, detections): (Vec<Finding>, Vec<Detection>) = findings.into_iter().unzip();
        let ms = |d: std::time::Duration| d.as_secs_f64() * 1000.0;
        let report = Report {
            series_uid: volume.series.series_uid.clone(),
            model: ModelSummary {
                name: self.info.name.clone(),
                version: self.info.version.clone(),
            },
            device: format!("{:?}", self.device.location()),
            precision: self.precision,
            tiling: self.tiling,
            classify_mirrors: self.classify_mirrors,
            classify_mirrors_from: self.classify_mirrors_from(),
            measure_fraction: self.post.measure_fraction,
            volume_size: volume.hu.geometry.size,
            lung_volume_ml: volume.lungs.lung_volume_ml,
            findings,
            timings_ms: Timings {
                load: volume.timings_ms.load,
                resample: volume.timings_ms.resample,
                lung_mask: volume.timings_ms.lung_mask,
                segmentation: ms(segmentation),
                detection: ms(detection),
                classification: ms(classification),
                total: ms(started.elapsed()),
            },
            peak_memory_mib: peak_memory_mib(),
        };
        Ok(Analysis {
            report,
            volume,
            detections,
            map,
        })
    }

    /// Class probabilities (non-nodule, benign, malignant) of each detection, from a window
    /// centred on it (clamped to the volume where it fits).
    fn classify(
        &self,
        hu: &Volume<f32>,
        map: &Volume<f32>,
        detections: &[Detection],
    ) -> candle_core::Result<Vec<[f32; 3]>> {
        // The map is a sub-grid of the volume: its first voxel's index there.
        let offset = hu
            .geometry
            .patient_to_index(map.geometry.origin)
            .map(|v| v.round() as i64);
        let boxes: Vec<ObjectBox> = detections
            .iter()
            .map(|d| ObjectBox {
                lo: [0, 1, 2].map(|a| d.bounding_box.min[a] as i64 + offset[a]),
                hi: [0, 1, 2].map(|a| d.bounding_box.max[a] as i64 + offset[a]),
                voxels: d.region.voxels.len(),
            })
            .collect();
        let p_location: Vec<f64> = detections.iter().map(|d| f64::from(d.p_nodule)).collect();
        self.classify_objects(hu, &boxes, &p_location)
    }

    /// The floor of the classification's mirrors as it acts (0 where nothing is mirrored).
    fn classify_mirrors_from(&self) -> f64 {
        if self.classify_mirrors > 1 {
            self.classify_mirrors_from
        } else {
            0.0
        }
    }

    /// Class probabilities of objects of location probabilities `p_location`, mirrored as the
    /// analyzer's setting says: every object in all `classify_mirrors`, or, with a floor
    /// (`classify_mirrors_from`), every object once and the other mirrors only for those whose
    /// one-pass p(nodule) reaches it. The latter get exactly what `classify_boxes` gives them
    /// (the same sums in the same order), the others exactly its one-pass classes.
    pub fn classify_objects(
        &self,
        hu: &Volume<f32>,
        boxes: &[ObjectBox],
        p_location: &[f64],
    ) -> candle_core::Result<Vec<[f32; 3]>> {
        let from = self.classify_mirrors_from();
        if from <= 0.0 {
            return self.classify_boxes(hu, boxes);
        }
        let mut sums = vec![[0f32; 3]; boxes.len()];
        self.add_mirrored_classes(hu, boxes, &MIRROR_SETS[..1], &mut sums)?;
        let mirrored: Vec<usize> = (0..boxes.len())
            .filter(|&i| p_nodule(p_location[i], sums[i]) >= from)
            .collect();
        let chosen: Vec<ObjectBox> = mirrored.iter().map(|&i| boxes[i]).collect();
        let mut chosen_sums: Vec<[f32; 3]> = mirrored.iter().map(|&i| sums[i]).collect();
        let others = &MIRROR_SETS[1..self.classify_mirrors];
        self.add_mirrored_classes(hu, &chosen, others, &mut chosen_sums)?;
        let scale = 1.0 / self.classify_mirrors as f32;
        for (&i, s) in mirrored.iter().zip(chosen_sums) {
            sums[i] = s.map(|v| v * scale);
        }
        Ok(sums)
    }

    /// p(non-nodule), p(benign), p(malignant) of each object, averaged over the analyzer's
    /// `classify_mirrors` mirrored windows (`add_mirrored_classes`).
    pub fn classify_boxes(
        &self,
        hu: &Volume<f32>,
        boxes: &[ObjectBox],
    ) -> candle_core::Result<Vec<[f32; 3]>> {
        let mut sums = vec![[0f32; 3]; boxes.len()];
        self.add_mirrored_classes(hu, boxes, &MIRROR_SETS[..self.classify_mirrors], &mut sums)?;
        let scale = 1.0 / self.classify_mirrors as f32;
        Ok(sums.into_iter().map(|s| s.map(|v| v * scale)).collect())
    }

    /// Adds each object's p(non-nodule), p(benign), p(malignant) in each of the mirrored
    /// windows `mirror_sets` to its `sums`, `CLASSIFICATION_BATCH` windows per network call
    /// (see `classify_box`). Only the encoder runs on these windows: the classification path
    /// reads its features, never the decoder's. Where the model has a malignancy network,
    /// p(non-nodule) is the network's and p(benign), p(malignant) are the malignancy network's
    /// (from its own softmax, so the three need not sum to 1).
    fn add_mirrored_classes(
        &self,
        hu: &Volume<f32>,
        boxes: &[ObjectBox],
        mirror_sets: &[&[usize]],
        sums: &mut [[f32; 3]],
    ) -> candle_core::Result<()> {
        let w = CLASSIFICATION_WINDOW;
        for (chunk, chunk_sums) in boxes
            .chunks(CLASSIFICATION_BATCH)
            .zip(sums.chunks_mut(CLASSIFICATION_BATCH))
        {
            let mut input = Vec::with_capacity(chunk.len() * w * w * w);
            let mut candidates = Vec::with_capacity(chunk.len());
            for (batch, b) in chunk.iter().enumerate() {
                let start = [0, 1, 2].map(|a| {
                    let centre = (b.lo[a] + b.hi[a]) / 2;
                    let s = centre - (w / 2) as i64;
                    let limit = hu.geometry.size[a] as i64 - w as i64;
                    if limit < 0 { s } else { s.clamp(0, limit) }
                });
                input.extend(tiles::window(hu, start, w, &self.info.normalization));
                let in_window = |v: i64| (v.clamp(0, w as i64 - 1)) as usize;
                // Candidate boxes are [D, H, W] = (k, j, i) on the window.
                candidates.push(Candidate {
                    batch,
                    min: [2, 1, 0].map(|a| in_window(b.lo[a] - start[a])),
                    max: [2, 1, 0].map(|a| in_window(b.hi[a] - start[a])),
                    voxels: b.voxels,
                });
            }
            for axes in mirror_sets {
                mirror_cubes(&mut input, w, axes);
                let x = Tensor::from_slice(&input, (chunk.len(), 1, w, w, w), &self.device)?;
                mirror_cubes(&mut input, w, axes);
                let mut mirrored = candidates.clone();
                for c in &mut mirrored {
                    for &axis in *axes {
                        // Volume axis i, j, k is candidate index 2, 1, 0.
                        let d = 2 - axis;
                        (c.min[d], c.max[d]) = (w - 1 - c.max[d], w - 1 - c.min[d]);
                    }
                }
                let p = class_probabilities(&self.net, &x, &mirrored)?;
                let p = match &self.malignancy_net {
                    None => p,
                    Some(m) => {
                        let q = class_probabilities(m, &x, &mirrored)?;
                        p.into_iter()
                            .zip(q)
                            .map(|(p, q)| vec![p[0], q[1], q[2]])
                            .collect()
                    }
                };
                for (s, p) in chunk_sums.iter_mut().zip(p) {
                    for c in 0..3 {
                        s[c] += p[c];
                    }
                }
            }
        }
        Ok(())
    }

    /// p(cancer | nodule) of class probabilities (non-nodule, benign, malignant), calibrated
    /// where the model carries a calibration.
    pub fn malignancy(&self, p: [f32; 3]) -> f64 {
        let raw = f64::from(p[2]) / f64::from(p[1] + p[2]).max(1e-12);
        match &self.info.malignancy_calibration {
            Some(c) => c.apply(raw),
            None => raw,
        }
    }

    /// The benign/malignant call on a probability of cancer: malignant at the model's calibrated
    /// threshold or above, or over 0.5 without a calibration (for a known nodule's
    /// p(cancer | nodule), p(malignant) > p(benign)).
    pub fn is_malignant(&self, p_cancer: f64) -> bool {
        match &self.info.malignancy_calibration {
            Some(c) => p_cancer >= c.threshold,
            None => p_cancer > 0.5,
        }
    }

    /// p(non-nodule), p(benign), p(malignant) of the object in the box `lo..=hi` (voxel indices
    /// i, j, k of `hu`, a 1 mm volume) holding `voxels` voxels: the network encodes the
    /// classification window centred on the box (clamped to the volume where it fits) and
    /// classifies the box from the encoder's features.
    pub fn classify_box(
        &self,
        hu: &Volume<f32>,
        lo: [i64; 3],
        hi: [i64; 3],
        voxels: usize,
    ) -> candle_core::Result<[f32; 3]> {
        Ok(self.classify_boxes(hu, &[ObjectBox { lo, hi, voxels }])?[0])
    }
}

/// The softmax of `net`'s classification path over the windows `x` for `candidates`: one row
/// of (non-nodule, benign, malignant) per candidate.
fn class_probabilities(
    net: &Jnsc,
    x: &Tensor,
    candidates: &[Candidate],
) -> candle_core::Result<Vec<Vec<f32>>> {
    let encoder = net.encode(x, None)?;
    let logits = net.classify(&encoder, candidates)?;
    candle_nn::ops::softmax(&logits, 1)?.to_vec2::<f32>()
}

/// An object to classify: its box `lo..=hi` (voxel indices i, j, k of a 1 mm volume) and its
/// voxel count.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ObjectBox {
    pub lo: [i64; 3],
    pub hi: [i64; 3],
    pub voxels: usize,
}

/// The process's peak resident set size (VmHWM), MiB.
pub fn peak_memory_mib() -> Option<f64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let kib: f64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))?
        .trim()
        .trim_end_matches("kB")
        .trim()
        .parse()
        .ok()?;
    Some(kib / 1024.0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::volume::Geometry;

    /// A 64^3 1 mm volume of lung-like noise with a 6 mm blob off-centre, and the blob's box.
    fn volume_with_blob() -> (Volume<f32>, ObjectBox) {
        let w = CLASSIFICATION_WINDOW;
        let noise = crate::jnsc::testing::values(w * w * w, 11);
        let geometry = Geometry {
            origin: [0.0; 3],
            spacing: [1.0; 3],
            direction: [[1.0, 0.0, 0.0], [0.0, 1.0, 0.0], [0.0, 0.0, 1.0]],
            size: [w; 3],
        };
        let centre = [24.0, 36.0, 30.0];
        let mut data = Vec::with_capacity(w * w * w);
        for k in 0..w {
            for j in 0..w {
                for i in 0..w {
                    let d2: f64 = [i, j, k]
                        .iter()
                        .zip(centre)
                        .map(|(&v, c)| (v as f64 - c).powi(2))
                        .sum();
                    let base = if d2 <= 9.0 { 20.0 } else { -850.0 };
                    data.push(base + 40.0 * noise[(k * w + j) * w + i]);
                }
            }
        }
        let b = ObjectBox {
            lo: [21, 33, 27],
            hi: [27, 39, 33],
            voxels: 113,
        };
        (Volume { geometry, data }, b)
    }

    /// The shipped model on the CPU, one classification pass.
    fn shipped() -> Analyzer {
        Analyzer::new(
            &ModelSource::Embedded,
            Device::Cpu,
            Precision::F32,
            Tiling::fast(),
        )
        .unwrap()
    }

    #[test]
    fn all_eight_classification_mirrors_make_the_classes_mirror_invariant() {
        let mut analyzer = shipped();
        analyzer.classify_mirrors = MIRROR_SETS.len();
        let (hu, b) = volume_with_blob();
        let w = CLASSIFICATION_WINDOW as i64;
        let p = analyzer.classify_boxes(&hu, &[b]).unwrap()[0];
        for axis in 0..3 {
            let mut mirrored = hu.clone();
            mirror_cubes(&mut mirrored.data, hu.geometry.size[0], &[axis]);
            let mut m = b;
            (m.lo[axis], m.hi[axis]) = (w - 1 - b.hi[axis], w - 1 - b.lo[axis]);
            let q = analyzer.classify_boxes(&mirrored, &[m]).unwrap()[0];
            for c in 0..3 {
                assert!((p[c] - q[c]).abs() < 1e-5, "axis {axis}: {p:?} vs {q:?}");
            }
            // Without mirroring the shipped network is not symmetric, so the check has teeth.
            analyzer.classify_mirrors = 1;
            let single = analyzer.classify_boxes(&mirrored, &[m]).unwrap()[0];
            let plain = analyzer.classify_boxes(&hu, &[b]).unwrap()[0];
            assert!(
                (0..3).any(|c| (single[c] - plain[c]).abs() > 1e-6),
                "axis {axis}"
            );
            analyzer.classify_mirrors = MIRROR_SETS.len();
        }
    }

    #[test]
    fn only_findings_at_the_floor_get_the_classification_s_mirrors() {
        let mut analyzer = shipped();
        let (hu, b) = volume_with_blob();
        let once = analyzer.classify_boxes(&hu, &[b]).unwrap()[0];
        analyzer.classify_mirrors = MIRROR_SETS.len();
        let all = analyzer.classify_boxes(&hu, &[b]).unwrap()[0];
        assert_ne!(once, all, "the shipped network is not mirror-symmetric");
        // The same object twice: at location probability 1 its one-pass p(nodule) is over the
        // floor, at 0.25 under it.
        let one_pass = f64::from(1.0 - once[0]);
        analyzer.classify_mirrors_from = 0.5 * one_pass;
        let p = analyzer
            .classify_objects(&hu, &[b, b], &[1.0, 0.25])
            .unwrap();
        assert_eq!(p, vec![all, once]);
        assert_eq!(analyzer.setting().classify_mirrors_from, 0.5 * one_pass);
        // Without a floor, or without mirrors, every object is classified alike.
        analyzer.classify_mirrors_from = 0.0;
        let p = analyzer
            .classify_objects(&hu, &[b, b], &[1.0, 0.25])
            .unwrap();
        assert_eq!(p, vec![all, all]);
        analyzer.classify_mirrors = 1;
        analyzer.classify_mirrors_from = 0.5 * one_pass;
        let p = analyzer
            .classify_objects(&hu, &[b, b], &[1.0, 0.25])
            .unwrap();
        assert_eq!(p, vec![once, once]);
        assert_eq!(analyzer.setting().classify_mirrors_from, 0.0);
    }

    #[test]
    fn a_combined_model_takes_non_nodule_from_its_detector_and_malignancy_from_its_classifier() {
        let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
        let detector = root.join("models/jnsc-real-shapes-joint.safetensors");
        let classifier = root.join("models/jnsc-real-stage1.safetensors");
        let dir = tempfile::tempdir().unwrap();
        let combined = dir.path().join("combined.safetensors");
        crate::jnsc::model_file::combine(&detector, &classifier, &combined, "both", "0", None)
            .unwrap();
        let analyzer = |path: &std::path::Path| {
            Analyzer::new(
                &ModelSource::File(path.to_owned()),
                Device::Cpu,
                Precision::F32,
                Tiling::fast(),
            )
            .unwrap()
        };
        let (hu, b) = volume_with_blob();
        let [d, c, both] = [&detector, &classifier, &combined]
            .map(|p| analyzer(p).classify_boxes(&hu, &[b]).unwrap()[0]);
        assert_eq!(both, [d[0], c[1], c[2]]);
        assert!((0..3).all(|k| d[k] != c[k]), "{d:?} {c:?}");
    }
}
