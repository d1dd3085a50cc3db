//! One synthetic chest CT study with ground truth: anatomy and nodules drawn from a seed,
//! rendered onto a series, written as DICOM (`dicom/`), with `truth.json`, a nodule label mask
//! (`truth_mask.mhd`, label n = nodule n) and LUNA16-style `annotations.csv`. The same seed
//! gives the same study bit for bit. `render_training_volume` gives the same kind of data on a
//! 1 mm grid in memory, for training without writing DICOM.

use crate::random::Rng;
use crate::synth::anatomy::Anatomy;
use crate::synth::calibration::Calibration;
use crate::synth::nodules::{Location, Lungs, Margin, Nodule, NoduleType, draw_nodules, measure};
use crate::synth::preview::write_preview;
use crate::synth::render::{Physics, Scene, render};
use crate::synth::series::{Content, SeriesSpec, write_ct_series};
use crate::volume::geometry::Vec3;
use crate::volume::{Geometry, Volume, metaimage};
use serde::Serialize;
use std::path::Path;
use std::sync::Arc;

/// What study to make.
#[derive(Debug, Clone)]
pub struct StudyOptions {
    /// Geometry, orientation and identifiers of the series (its `content` is ignored).
    pub series: SeriesSpec,
    /// Number of nodules; `None` draws 0-4 as screening studies have.
    pub nodules: Option<usize>,
    pub physics: Physics,
}

/// Ground truth of one nodule (the keys of truth.json).
#[derive(Debug, Clone, Serialize)]
pub struct TruthNodule {
    /// Label of the nodule in the truth mask.
    pub label: u8,
    /// Centre of mass, patient LPS mm.
    pub center_mm: Vec3,
    /// Equivalent-sphere diameter of its volume, mm.
    pub diameter_mm: f64,
    pub volume_mm3: f64,
    #[serde(rename = "type")]
    pub kind: NoduleType,
    pub margin: Margin,
    pub location: Location,
    pub ratings: Vec<u8>,
    pub malignancy_median: f64,
    pub marginal: bool,
    /// The calibrated model's probability of malignancy the ratings were drawn around.
    pub p_malignant: f64,
}

/// Ground truth of a study (truth.json).
#[derive(Debug, Clone, Serialize)]
pub struct Truth {
    pub series_uid: String,
    pub study_uid: String,
    pub seed: u64,
    pub nodules: Vec<TruthNodule>,
    /// Nodules the background of an insertion already held (`jnsc synth --into` a study folder
    /// with a truth.json): part of the reference standard, not of the mask.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub known_nodules: Vec<KnownNodule>,
}

/// A nodule a real background is known to hold.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct KnownNodule {
    pub center_mm: Vec3,
    pub diameter_mm: f64,
    #[serde(default)]
    pub ratings: Vec<u8>,
}

/// Anatomy and nodules of a study, before rendering.
pub struct Phantom {
    pub anatomy: Anatomy,
    pub nodules: Vec<Nodule>,
    texture_seed: u64,
}

impl Phantom {
    pub fn generate(seed: u64, nodules: Option<usize>, calibration: &Calibration) -> Self {
        let rng = Rng::new(seed);
        let anatomy = Anatomy::generate(&mut rng.fork(1));
        let mut nodule_rng = rng.fork(2);
        let count = nodules.unwrap_or_else(|| nodule_rng.weighted(&[0.2, 0.35, 0.25, 0.12, 0.08]));
        let nodules = draw_nodules(&anatomy, calibration, count, &mut nodule_rng);
        Self {
            anatomy,
            nodules,
            texture_seed: rng.fork(3).next_u64(),
        }
    }

    fn truth(&self) -> Vec<TruthNodule> {
        truth_of(&self.nodules, &self.anatomy)
    }
}

/// Ground truth of nodules, measured on their voxels inside `lungs`.
pub fn truth_of(nodules: &[Nodule], lungs: &impl Lungs) -> Vec<TruthNodule> {
    nodules
        .iter()
        .enumerate()
        .map(|(n, nodule)| {
            let (centre, volume, diameter) = measure(nodule, lungs);
            TruthNodule {
                label: (n + 1) as u8,
                center_mm: centre,
                diameter_mm: diameter,
                volume_mm3: volume,
                kind: nodule.kind,
                margin: nodule.margin,
                location: nodule.location,
                ratings: nodule.ratings.clone(),
                malignancy_median: nodule.malignancy_median(),
                marginal: nodule.marginal(),
                p_malignant: nodule.p_malignant,
            }
        })
        .collect()
}

/// Writes a study into `out`: `dicom/CT*.dcm`, `truth.json`, `truth_mask.mhd/.raw`,
/// `annotations.csv`.
pub fn write_study(
    options: &StudyOptions,
    calibration: &Calibration,
    out: &Path,
) -> anyhow::Result<Truth> {
    let spec = &options.series;
    let phantom = Phantom::generate(spec.seed, options.nodules, calibration);
    let scene = Scene::new(&phantom.anatomy, &phantom.nodules, phantom.texture_seed);
    let rendered = render(&scene, spec, &options.physics, &Rng::new(spec.seed).fork(4));
    std::fs::create_dir_all(out)?;
    let hu = sorted_volume(spec, &rendered.planes);
    let mask = sorted_volume(spec, &rendered.labels);
    let series_spec = SeriesSpec {
        content: Content::Planes(Arc::new(rendered.planes)),
        ..spec.clone()
    };
    let written = write_ct_series(&series_spec, &out.join("dicom"))?;
    let truth = Truth {
        known_nodules: Vec::new(),
        series_uid: written.series_uid.clone(),
        study_uid: written.study_uid.clone(),
        seed: spec.seed,
        nodules: phantom.truth(),
    };
    write_ground_truth(out, &truth, &mask, &hu)?;
    Ok(truth)
}

/// Writes `truth.json`, `truth_mask.mhd/.raw`, `annotations.csv` and `preview.png` into `out`.
pub fn write_ground_truth(
    out: &Path,
    truth: &Truth,
    mask: &Volume<u8>,
    hu: &Volume<f32>,
) -> anyhow::Result<()> {
    std::fs::write(out.join("truth.json"), serde_json::to_vec_pretty(truth)?)?;
    metaimage::write(&out.join("truth_mask.mhd"), mask)?;
    let mut csv = String::from("seriesuid,coordX,coordY,coordZ,diameter_mm\n");
    let known = truth
        .known_nodules
        .iter()
        .map(|k| (k.center_mm, k.diameter_mm));
    for (c, d) in truth
        .nodules
        .iter()
        .map(|n| (n.center_mm, n.diameter_mm))
        .chain(known)
    {
        csv.push_str(&format!(
            "{},{:.3},{:.3},{:.3},{:.3}\n",
            truth.series_uid, c[0], c[1], c[2], d
        ));
    }
    std::fs::write(out.join("annotations.csv"), csv)?;
    write_preview(&out.join("preview.png"), hu, mask, preview_point(mask))?;
    Ok(())
}

/// Planes in file order as a volume sorted along the slice normal.
fn sorted_volume<T: Copy>(spec: &SeriesSpec, planes: &[Vec<T>]) -> Volume<T> {
    let offsets = spec.offsets();
    let mut order: Vec<usize> = (0..offsets.len()).collect();
    order.sort_by(|&a, &b| offsets[a].total_cmp(&offsets[b]));
    let geometry = Geometry {
        origin: spec.position(offsets[order[0]]),
        spacing: [
            spec.pixel_spacing_mm,
            spec.pixel_spacing_mm,
            spec.slice_spacing_mm,
        ],
        direction: [spec.row_direction, spec.column_direction, spec.normal()],
        size: [
            usize::from(spec.columns),
            usize::from(spec.rows),
            offsets.len(),
        ],
    };
    Volume {
        geometry,
        data: order
            .iter()
            .flat_map(|&k| planes[k].iter().copied())
            .collect(),
    }
}

/// The centre of the first nodule's voxels, or the centre of the volume.
fn preview_point(mask: &Volume<u8>) -> [usize; 3] {
    let [ni, nj, nk] = mask.geometry.size;
    let (mut sum, mut n) = ([0usize; 3], 0usize);
    for (v, _) in mask.data.iter().enumerate().filter(|(_, l)| **l == 1) {
        sum[0] += v % ni;
        sum[1] += (v / ni) % nj;
        sum[2] += v / (ni * nj);
        n += 1;
    }
    if n == 0 {
        [ni / 2, nj / 2, nk / 2]
    } else {
        sum.map(|s| s / n)
    }
}

/// A training volume: HU on an axial 1 mm grid of `size` voxels centred on the chest, its
/// nodule labels, and the truth, all in memory. `nodules`: how many (None: 0-4 as screening
/// studies have).
pub fn render_training_volume(
    seed: u64,
    size: [usize; 3],
    nodules: Option<usize>,
    calibration: &Calibration,
    physics: &Physics,
) -> (Volume<f32>, Volume<u8>, Vec<TruthNodule>) {
    let spec = SeriesSpec {
        slices: size[2],
        rows: size[1] as u16,
        columns: size[0] as u16,
        pixel_spacing_mm: 1.0,
        slice_spacing_mm: 1.0,
        slice_offsets_mm: Some(
            (0..size[2])
                .map(|k| k as f64 - (size[2] as f64 - 1.0) / 2.0)
                .collect(),
        ),
        seed,
        ..SeriesSpec::default()
    };
    let phantom = Phantom::generate(seed, nodules, calibration);
    let scene = Scene::new(&phantom.anatomy, &phantom.nodules, phantom.texture_seed);
    let rendered = render(&scene, &spec, physics, &Rng::new(seed).fork(4));
    let labels = sorted_volume(&spec, &rendered.labels);
    let hu = sorted_volume(&spec, &rendered.planes);
    (hu, labels, phantom.truth())
}
