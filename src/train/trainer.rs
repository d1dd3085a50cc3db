//! The training loop: segmentation pre-training, then joint training (segmentation +
//! classification of the candidates found in each patch and of every labelled nodule), with the
//! marginal nodules' pseudo-labels frozen for a warm-up and then updated once per epoch. Adam with
//! step decay and gradient clipping; a checkpoint after every epoch (weights, optimizer, sampling
//! state, pseudo-labels) from which a run resumes exactly; per-epoch metrics as CSV; a progress
//! line with the losses and the ETA.

use super::adam::Adam;
use super::loss::{
    ClassTarget, classification_loss, conditional_malignancy, segmentation_loss,
    soft_segmentation_loss,
};
use super::prepared::{PreparedScans, ScanStorage, ScanSummary};
use super::pseudo::{LabelMode, update_pseudo_label};
use crate::datasets::{Source, SyntheticSource};
use crate::jnsc::model_file::{ModelInfo, save};
use crate::jnsc::network::{Candidate, Config, Jnsc, candidates};
use crate::malignancy;
use crate::random::Rng;
use crate::train::sampling::{Augment, Patch, sample_patches};
use crate::volume::Normalization;
use crate::volume::morphology::label_boxes;
use anyhow::Context;
use candle_core::{DType, Device, Tensor};
use candle_nn::{VarBuilder, VarMap};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::time::Instant;

/// Everything a run is made of (TOML; every key has a default).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct TrainConfig {
    /// Network preset: cpu or paper.
    pub preset: crate::jnsc::network::Preset,
    pub seed: u64,
    /// Start from this model file's weights (fine-tuning; its preset must match) instead of the
    /// seeded initialisation. Relative to the working directory.
    pub init_from: Option<PathBuf>,
    /// Channels of the network's refine unit (`network::Config::refine_width`); 0: none, as the
    /// preset. Started from a file without one, the unit is added to it (`init_vars`).
    #[serde(skip_serializing_if = "crate::jnsc::network::no_refine")]
    pub refine_width: usize,
    /// Where the scans come from (`[data]`; synthetic by default).
    pub data: DataConfig,
    /// Synthetic training scans (rendered once at the start) and their size in 1 mm voxels.
    pub scans: usize,
    pub scan_size: [usize; 3],
    /// Where the prepared scans are held: memory (all at once) or disk (under the run
    /// directory, one at a time; for data sets larger than memory). It does not change the
    /// result, so a run may resume with the other.
    pub scan_storage: ScanStorage,
    /// Side of the training patches (the paper: 64).
    pub patch: usize,
    /// Scans per optimisation step (two patches each).
    pub scans_per_step: usize,
    pub epochs: usize,
    /// Epochs of segmentation only, before joint training.
    pub segmentation_epochs: usize,
    /// Joint epochs with the pseudo-labels frozen, before they are updated once per epoch.
    pub pseudo_warmup_epochs: usize,
    pub learning_rate: f64,
    /// The learning rate is multiplied by `lr_decay` every `lr_step_epochs`.
    pub lr_step_epochs: usize,
    pub lr_decay: f64,
    pub clip_norm: f64,
    /// Labels of marginal nodules: hard, soft or pseudo.
    pub labels: LabelMode,
    /// false: segmentation only (the ablation's baseline; no classification loss).
    pub joint: bool,
    /// Pseudo-label regularisation alpha and learning rate r2.
    pub alpha: f64,
    pub pseudo_rate: f64,
    /// Weight of nodule voxels in the segmentation loss (background 1).
    pub nodule_voxel_weight: f64,
    /// Class weights: non-nodule, benign, malignant.
    pub class_weights: [f64; 3],
    /// Predicted candidates per patch that match no nodule and are trained as non-nodules
    /// (the largest first).
    pub max_false_candidates: usize,
    /// After the segmentation epochs: joint (segmentation and classification losses through
    /// the whole network, the paper's) or staged (the classification path alone, on the
    /// segmentation network's features, which no longer change).
    pub schedule: Schedule,
    /// Augmentation of the patches beyond the quarter turns (`[augment]`; all off by default).
    pub augment: Augment,
    /// Self-distillation of the segmentation from a frozen teacher (`[distill]`; none by
    /// default).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub distill: Option<Distill>,
}

/// Self-distillation of the segmentation (`[distill]`): each voxel's segmentation target is
/// (1 - `weight`) x its label + `weight` x the teacher's location probability averaged over
/// `mirrors` mirrored passes (inference's test-time mirroring, `tiles::segment_mirrored`), so
/// that one pass of the student learns what the teacher's mirrored ensemble outputs. Voxels
/// keep the weights of their labels. The teacher (a model file) is frozen; the classification
/// loss is unchanged.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Distill {
    /// The teacher's model file (its preset need not match). Relative to the working directory.
    pub teacher: PathBuf,
    /// 1 to 8 mirrored passes of the teacher per patch.
    pub mirrors: usize,
    /// Share of the teacher in the target, 0 to 1.
    pub weight: f64,
}

/// What trains after the segmentation epochs.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Schedule {
    /// Both losses through the whole network (the paper).
    #[default]
    Joint,
    /// The classification path only; the encoder and decoder are frozen.
    Staged,
}

/// The training data (`[data]` in the TOML, `kind` = synthetic, luna16 or lidc).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "lowercase", deny_unknown_fields)]
pub enum DataConfig {
    /// Phantoms rendered from `seed` (`scans` of `scan_size`).
    #[default]
    Synthetic,
    /// LUNA16: `root` holds annotations.csv and subset0..subset9; train on `subsets` (the
    /// official folds: leave the test fold out).
    Luna16 { root: PathBuf, subsets: Vec<usize> },
    /// LIDC-IDRI: every reader XML under `root`, with its DICOM series beside it.
    Lidc { root: PathBuf },
    /// Phantoms (`phantom_fraction` of `scans`, of `scan_size`) and real chest CT backgrounds
    /// with inserted nodules (the rest, `backgrounds` in turn; see `datasets::real`). `validation`
    /// lists backgrounds kept out of training, for the record and for evaluation scripts. With
    /// `lidc_shapes` (a library of `tools/export_lidc_shapes.py`), a `shape_fraction` of the
    /// inserted lesions are real LIDC-IDRI outlines of the patients that
    /// `shape_validation_percent` does not hold out (`datasets::real::TrainingShapes`); at the
    /// defaults (none, 0) training is what it was without these keys.
    #[serde(rename = "real-backgrounds")]
    RealBackgrounds {
        backgrounds: Vec<PathBuf>,
        #[serde(default)]
        validation: Vec<PathBuf>,
        phantom_fraction: f64,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        lidc_shapes: Option<PathBuf>,
        #[serde(default, skip_serializing_if = "crate::datasets::real::is_zero")]
        shape_fraction: f64,
        #[serde(
            default = "crate::datasets::real::default_shape_validation_percent",
            skip_serializing_if = "crate::datasets::real::is_default_shape_validation_percent"
        )]
        shape_validation_percent: u32,
        /// Probability that a solid, uncalcified inserted shape is made cavitary
        /// (`TrainingShapes::with_cavities`).
        #[serde(default, skip_serializing_if = "crate::datasets::real::is_zero")]
        cavity_fraction: f64,
        /// Whether the backgrounds' vessels are offered to juxta-vascular phantom nodules
        /// (`RealBackgroundSource::with_juxta_vascular`); off, training is what it was before.
        #[serde(default, skip_serializing_if = "std::ops::Not::not")]
        juxta_vascular: bool,
    },
}

impl DataConfig {
    /// The source this configuration names.
    pub fn source(&self, config: &TrainConfig) -> anyhow::Result<Box<dyn Source>> {
        Ok(match self {
            DataConfig::Synthetic => Box::new(SyntheticSource::new(
                config.seed,
                config.scans,
                config.scan_size,
            )),
            DataConfig::Luna16 { root, subsets } => {
                Box::new(crate::datasets::luna16::Luna16Source::open(root, subsets)?)
            }
            DataConfig::Lidc { root } => Box::new(crate::datasets::lidc::LidcSource::open(root)?),
            DataConfig::RealBackgrounds {
                backgrounds,
                validation,
                phantom_fraction,
                lidc_shapes,
                shape_fraction,
                shape_validation_percent,
                cavity_fraction,
                juxta_vascular,
            } => {
                anyhow::ensure!(
                    backgrounds.iter().all(|b| !validation.contains(b)),
                    "a validation background is also listed for training"
                );
                let shapes = match lidc_shapes {
                    Some(path) => Some(
                        crate::datasets::real::TrainingShapes::load(
                            path,
                            *shape_fraction,
                            *shape_validation_percent,
                        )?
                        .with_cavities(*cavity_fraction)?,
                    ),
                    None => {
                        anyhow::ensure!(
                            *shape_fraction == 0.0 && *cavity_fraction == 0.0,
                            "shape_fraction or cavity_fraction without lidc_shapes"
                        );
                        None
                    }
                };
                Box::new(
                    crate::datasets::real::RealBackgroundSource::open(
                        config.seed,
                        config.scans,
                        *phantom_fraction,
                        config.scan_size,
                        backgrounds,
                        shapes,
                    )?
                    .with_juxta_vascular(*juxta_vascular),
                )
            }
        })
    }

    /// What the data is, in words, for the exported model's provenance.
    pub fn description(&self) -> &'static str {
        match self {
            DataConfig::Synthetic => "synthetic chest CT phantoms (crate::synth), not patient data",
            DataConfig::Luna16 { .. } => "LUNA16 (LIDC-IDRI subset, MetaImage), patient data",
            DataConfig::Lidc { .. } => "LIDC-IDRI (DICOM and reader XML), patient data",
            DataConfig::RealBackgrounds { .. } => {
                "synthetic phantoms and real chest CT (LIDC-IDRI, TCIA) with inserted synthetic \
                 nodules and their known real nodules"
            }
        }
    }
}

impl TrainConfig {
    /// Whether a run made with `other` can be resumed with this configuration: everything but
    /// where the scans are held must match.
    fn same_run(&self, other: &TrainConfig) -> bool {
        let held_alike = TrainConfig {
            scan_storage: self.scan_storage,
            ..other.clone()
        };
        *self == held_alike
    }

    /// What the scans are prepared from: a disk cache prepared from anything else is redone.
    /// The seed, count and size matter to synthetic scans only.
    fn scan_origin(&self) -> serde_json::Value {
        match self.data {
            DataConfig::Synthetic | DataConfig::RealBackgrounds { .. } => serde_json::json!({
                "data": self.data,
                "seed": self.seed,
                "scans": self.scans,
                "scan_size": self.scan_size,
            }),
            _ => serde_json::json!({ "data": self.data }),
        }
    }
}

impl Default for TrainConfig {
    fn default() -> Self {
        Self {
            preset: crate::jnsc::network::Preset::Cpu,
            seed: 1,
            init_from: None,
            refine_width: 0,
            data: DataConfig::Synthetic,
            scans: 32,
            scan_size: [192, 192, 160],
            scan_storage: ScanStorage::Memory,
            patch: 64,
            scans_per_step: 1,
            epochs: 40,
            segmentation_epochs: 10,
            pseudo_warmup_epochs: 10,
            learning_rate: 1e-3,
            lr_step_epochs: 15,
            lr_decay: 0.2,
            clip_norm: 1.0,
            labels: LabelMode::Pseudo,
            joint: true,
            alpha: 10.0,
            pseudo_rate: 0.1,
            nodule_voxel_weight: 50.0,
            class_weights: [0.1, 0.55, 0.35],
            max_false_candidates: 4,
            schedule: Schedule::Joint,
            augment: Augment::default(),
            distill: None,
        }
    }
}

/// A marginal nodule's pseudo-label.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct PseudoLabel {
    pub soft_target: f64,
    pub q: f64,
    /// The latest p(malignant | nodule) the network gave it (None before it was seen).
    pub last_p: Option<f64>,
}

/// What a checkpoint holds besides the weights and the optimizer.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct RunState {
    config: TrainConfig,
    /// Epochs done.
    epochs_done: usize,
    rng_state: u64,
    /// Keyed "scan/label".
    pseudo_labels: BTreeMap<String, PseudoLabel>,
}

/// Per-epoch metrics (a row of metrics.csv).
#[derive(Debug, Clone, Default, Serialize)]
pub struct EpochMetrics {
    pub epoch: usize,
    pub learning_rate: f64,
    pub segmentation_loss: f64,
    pub classification_loss: f64,
    /// Dice of the thresholded (0.5) segmentation on the positive patches.
    pub dice: f64,
    /// Soft Dice (2 sum(p t) / (sum p + sum t)) on the positive patches: moves before any voxel
    /// crosses 0.5.
    pub soft_dice: f64,
    pub candidates: usize,
    pub seconds: f64,
}

const CHECKPOINT_WEIGHTS: &str = "checkpoint.safetensors";
const CHECKPOINT_OPTIMIZER: &str = "optimizer.safetensors";
const CHECKPOINT_STATE: &str = "state.json";
const METRICS: &str = "metrics.csv";
/// Where `scan_storage = "disk"` keeps the prepared scans, under the run directory.
const PREPARED: &str = "prepared";

/// What one epoch trains, and at which learning rate.
#[derive(Debug, Clone, Copy)]
struct Phase {
    learning_rate: f64,
    /// The classification path trains (after the segmentation epochs).
    joint: bool,
    /// Only the classification path trains (staged schedule): the segmentation network is
    /// frozen and its loss not back-propagated.
    classify_only: bool,
}

/// An epoch's running sums: losses, and the Dice of the positive patches (thresholded at 0.5
/// and soft).
#[derive(Debug, Default)]
struct EpochSums {
    segmentation: f64,
    classification: f64,
    steps: usize,
    classification_steps: usize,
    dice: (f64, f64),
    soft_dice: (f64, f64),
}

impl EpochSums {
    /// Adds the Dice terms of the positive patches (`p3` voxels each).
    fn add_dice(
        &mut self,
        patches: &[(usize, Patch, bool)],
        probability: &[f32],
        target: &[f32],
        p3: usize,
    ) {
        for (i, (_, _, positive)) in patches.iter().enumerate() {
            if *positive {
                for v in i * p3..(i + 1) * p3 {
                    let (p, t) = (f64::from(probability[v]), f64::from(target[v]));
                    let pred = f64::from(u8::from(p > 0.5));
                    self.dice.0 += 2.0 * pred * t;
                    self.dice.1 += pred + t;
                    self.soft_dice.0 += 2.0 * p * t;
                    self.soft_dice.1 += p + t;
                }
            }
        }
    }

    fn segmentation_loss(&self) -> f64 {
        self.segmentation / self.steps.max(1) as f64
    }

    fn classification_loss(&self) -> f64 {
        self.classification / self.classification_steps.max(1) as f64
    }

    fn finish(&self, metrics: &mut EpochMetrics) {
        let ratio = |(num, den): (f64, f64)| if den > 0.0 { num / den } else { 0.0 };
        metrics.segmentation_loss = self.segmentation_loss();
        metrics.classification_loss = self.classification_loss();
        metrics.dice = ratio(self.dice);
        metrics.soft_dice = ratio(self.soft_dice);
    }
}

/// A training run in a directory.
pub struct Trainer {
    config: TrainConfig,
    dir: PathBuf,
    vars: VarMap,
    net: Jnsc,
    /// The frozen teacher of `[distill]`.
    teacher: Option<Jnsc>,
    adam: Adam,
    scans: PreparedScans,
    state: RunState,
    normalization: Normalization,
    device: Device,
}

impl Trainer {
    /// Starts a run in `dir` (created) on the CPU, or resumes the one whose checkpoint is there.
    pub fn open(dir: &Path, config: TrainConfig, quiet: bool) -> anyhow::Result<Self> {
        Self::open_on(dir, config, quiet, Device::Cpu)
    }

    /// As `open`, training on `device` (checkpoints are device-independent: a run may resume
    /// on another device, though not bit for bit).
    pub fn open_on(
        dir: &Path,
        config: TrainConfig,
        quiet: bool,
        device: Device,
    ) -> anyhow::Result<Self> {
        std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
        let state_path = dir.join(CHECKPOINT_STATE);
        let resumed: Option<RunState> = if state_path.exists() {
            let state: RunState = serde_json::from_slice(&std::fs::read(&state_path)?)
                .with_context(|| format!("{}", state_path.display()))?;
            anyhow::ensure!(
                config.same_run(&state.config),
                "{} holds a run with another configuration; use a new directory",
                dir.display()
            );
            Some(RunState {
                config: config.clone(),
                ..state
            })
        } else {
            None
        };
        let net_config = Config {
            refine_width: config.refine_width,
            ..Config::preset(config.preset)
        };
        let mut vars = VarMap::new();
        let net = Jnsc::new(
            &net_config,
            VarBuilder::from_varmap(&vars, DType::F32, &device),
        )?;
        let mut adam = Adam::new(&vars, config.learning_rate)?;
        if resumed.is_some() {
            vars.load(dir.join(CHECKPOINT_WEIGHTS))?;
            adam.load(&dir.join(CHECKPOINT_OPTIMIZER))?;
        } else if let Some(init) = &config.init_from {
            // What the file does not hold (a refine unit it is given) starts seeded.
            crate::jnsc::network::seeded_init(&vars, config.seed)?;
            crate::jnsc::model_file::init_vars(&vars, init, &net_config)
                .with_context(|| format!("cannot start from {}", init.display()))?;
        } else {
            crate::jnsc::network::seeded_init(&vars, config.seed)?;
        }
        let teacher = match &config.distill {
            Some(d) => {
                crate::inference::tiles::check_mirrors(d.mirrors)
                    .map_err(|e| anyhow::anyhow!("distill.mirrors: {e}"))?;
                anyhow::ensure!(
                    (0.0..=1.0).contains(&d.weight),
                    "distill.weight must be between 0 and 1, got {}",
                    d.weight
                );
                let (teacher, _) = crate::jnsc::model_file::load(&d.teacher, &device)
                    .with_context(|| format!("distill.teacher {}", d.teacher.display()))?;
                Some(teacher)
            }
            None => None,
        };
        let source = config.data.source(&config)?;
        let started = Instant::now();
        let scans = PreparedScans::prepare(
            source.as_ref(),
            config.scan_storage,
            &dir.join(PREPARED),
            &config.scan_origin(),
            |i| {
                if !quiet {
                    eprint!("\rpreparing scan {}/{}   ", i + 1, source.len());
                }
            },
        )?;
        if !quiet {
            eprintln!(
                "\rprepared {} {:?} scans in {:.1} s ({:?})",
                scans.len(),
                config.data,
                started.elapsed().as_secs_f64(),
                config.scan_storage
            );
        }
        let state = match resumed {
            Some(s) => s,
            None => RunState {
                config: config.clone(),
                epochs_done: 0,
                rng_state: Rng::new(config.seed).fork(99).state(),
                pseudo_labels: initial_pseudo_labels(scans.summaries()),
            },
        };
        Ok(Self {
            config,
            dir: dir.to_owned(),
            vars,
            net,
            teacher,
            adam,
            scans,
            state,
            normalization: Normalization::default(),
            device,
        })
    }

    pub fn epochs_done(&self) -> usize {
        self.state.epochs_done
    }

    pub fn pseudo_labels(&self) -> &BTreeMap<String, PseudoLabel> {
        &self.state.pseudo_labels
    }

    pub fn vars(&self) -> &VarMap {
        &self.vars
    }

    /// Trains up to `until` epochs (at most the configured number), checkpointing after each.
    pub fn run(&mut self, until: usize, quiet: bool) -> anyhow::Result<Vec<EpochMetrics>> {
        let until = until.min(self.config.epochs);
        let mut all = Vec::new();
        let run_start = Instant::now();
        let first = self.state.epochs_done;
        while self.state.epochs_done < until {
            let m = self.epoch(quiet, run_start, first, until)?;
            self.append_metrics(&m)?;
            self.checkpoint()?;
            all.push(m);
        }
        if !quiet {
            eprintln!();
        }
        Ok(all)
    }

    fn epoch(
        &mut self,
        quiet: bool,
        run_start: Instant,
        first: usize,
        until: usize,
    ) -> anyhow::Result<EpochMetrics> {
        let epoch = self.state.epochs_done;
        let phase = self.phase(epoch);
        self.adam.learning_rate = phase.learning_rate;
        let started = Instant::now();
        let mut rng = Rng::new(self.state.rng_state);
        let groups = self.shuffled_groups(&mut rng);
        let mut metrics = EpochMetrics {
            epoch: epoch + 1,
            learning_rate: phase.learning_rate,
            ..EpochMetrics::default()
        };
        let mut sums = EpochSums::default();
        for (g, group) in groups.iter().enumerate() {
            let patches = self.sample_group(group, &mut rng)?;
            if patches.is_empty() {
                continue;
            }
            self.step(&patches, phase, &mut rng, &mut sums, &mut metrics)?;
            if !quiet {
                let done = (epoch - first) as f64 + (g + 1) as f64 / groups.len() as f64;
                let elapsed = run_start.elapsed().as_secs_f64();
                let eta = elapsed / done * ((until - first) as f64 - done);
                eprint!(
                    "\repoch {}/{} step {}/{} seg {:.4} cls {:.4} | {:.0} s, ETA {:.0} s   ",
                    epoch + 1,
                    until,
                    g + 1,
                    groups.len(),
                    sums.segmentation_loss(),
                    sums.classification_loss(),
                    elapsed,
                    eta
                );
            }
        }
        self.update_pseudo_labels(epoch, phase);
        self.state.rng_state = rng.state();
        self.state.epochs_done += 1;
        sums.finish(&mut metrics);
        metrics.seconds = started.elapsed().as_secs_f64();
        Ok(metrics)
    }

    /// What trains in `epoch`, and at which learning rate.
    fn phase(&self, epoch: usize) -> Phase {
        let c = &self.config;
        // Staged: the classification path starts its own learning-rate schedule.
        let schedule_epoch = match c.schedule {
            Schedule::Staged if c.joint && epoch >= c.segmentation_epochs => {
                epoch - c.segmentation_epochs
            }
            _ => epoch,
        };
        let learning_rate = c.learning_rate
            * c.lr_decay
                .powi((schedule_epoch / c.lr_step_epochs.max(1)) as i32);
        let joint = c.joint && epoch >= c.segmentation_epochs;
        Phase {
            learning_rate,
            joint,
            // Staged: the segmentation network is frozen once the classification path trains.
            classify_only: joint && c.schedule == Schedule::Staged,
        }
    }

    /// The epoch's scans in a shuffled order (Fisher-Yates), `scans_per_step` per step.
    fn shuffled_groups(&self, rng: &mut Rng) -> Vec<Vec<usize>> {
        let mut order: Vec<usize> = (0..self.scans.len()).collect();
        for i in (1..order.len()).rev() {
            order.swap(i, rng.below(i + 1));
        }
        order
            .chunks(self.config.scans_per_step.max(1))
            .map(<[usize]>::to_vec)
            .collect()
    }

    /// The patches of one step: each scan's positive and negative patches, augmented, with the
    /// scan they came from and whether they are positive.
    fn sample_group(
        &mut self,
        group: &[usize],
        rng: &mut Rng,
    ) -> anyhow::Result<Vec<(usize, Patch, bool)>> {
        let c = &self.config;
        let mut patches = Vec::new();
        for &s in group {
            let scan = self.scans.scan(s)?;
            let (pos, neg) = sample_patches(&scan, c.patch, &self.normalization, &c.augment, rng);
            patches.extend(pos.map(|p| (s, p, true)));
            patches.extend(neg.map(|p| (s, p, false)));
        }
        Ok(patches)
    }

    /// One optimisation step on `patches`: segmentation loss (unless the phase trains the
    /// classification path only), classification loss of the candidates in joint phases, one
    /// Adam step on their sum.
    fn step(
        &mut self,
        patches: &[(usize, Patch, bool)],
        phase: Phase,
        rng: &mut Rng,
        sums: &mut EpochSums,
        metrics: &mut EpochMetrics,
    ) -> anyhow::Result<()> {
        let TrainConfig {
            patch,
            nodule_voxel_weight,
            class_weights,
            clip_norm,
            ..
        } = self.config;
        let n = patches.len();
        let input: Vec<f32> = patches
            .iter()
            .flat_map(|(_, p, _)| p.input.iter().copied())
            .collect();
        let target: Vec<f32> = patches
            .iter()
            .flat_map(|(_, p, _)| p.labels.iter().map(|&l| f32::from(u8::from(l > 0))))
            .collect();
        let shape = (n, 1, patch, patch, patch);
        let taught = match (&self.teacher, &self.config.distill) {
            (Some(teacher), Some(d)) if !phase.classify_only => {
                let p = crate::inference::tiles::segment_mirrored(
                    teacher,
                    input.clone(),
                    n,
                    patch,
                    d.mirrors,
                    &self.device,
                )?;
                let w = d.weight as f32;
                let soft: Vec<f32> = target
                    .iter()
                    .zip(p)
                    .map(|(t, p)| (1.0 - w) * t + w * p)
                    .collect();
                Some(Tensor::from_vec(soft, shape, &self.device)?)
            }
            _ => None,
        };
        let x = Tensor::from_vec(input, shape, &self.device)?;
        let t = Tensor::from_vec(target.clone(), shape, &self.device)?;
        let out = self.net.segment(&x, Some(rng))?;
        let seg_loss = match &taught {
            Some(soft) => soft_segmentation_loss(&out.logits, soft, &t, nodule_voxel_weight)?,
            None => segmentation_loss(&out.logits, &t, nodule_voxel_weight)?,
        };
        let probability = candle_nn::ops::sigmoid(&out.logits.detach())?;
        let p_values = probability.flatten_all()?.to_vec1::<f32>()?;
        sums.add_dice(patches, &p_values, &target, patch.pow(3));
        let mut loss = (!phase.classify_only).then(|| seg_loss.clone());
        sums.segmentation += f64::from(seg_loss.to_scalar::<f32>()?);
        sums.steps += 1;
        if phase.joint {
            let (items, keys) = self.class_items(patches, &probability)?;
            if !items.is_empty() {
                let boxes: Vec<Candidate> = items.iter().map(|(b, _)| *b).collect();
                let targets: Vec<ClassTarget> = items.iter().map(|(_, t)| *t).collect();
                let encoder: Vec<Tensor> = if phase.classify_only {
                    out.encoder.iter().map(Tensor::detach).collect()
                } else {
                    out.encoder.clone()
                };
                let logits = self.net.classify(&encoder, &boxes)?;
                let cls_loss = classification_loss(&logits, &targets, class_weights)?;
                sums.classification += f64::from(cls_loss.to_scalar::<f32>()?);
                sums.classification_steps += 1;
                metrics.candidates += items.len();
                // Remember p for the marginal nodules' pseudo-label update.
                let p = conditional_malignancy(&logits.detach())?;
                for (key, p) in keys.iter().zip(p) {
                    if let Some(k) = key
                        && let Some(label) = self.state.pseudo_labels.get_mut(k)
                    {
                        label.last_p = Some(p);
                    }
                }
                loss = Some(match loss {
                    Some(l) => (l + cls_loss)?,
                    None => cls_loss,
                });
            }
        }
        if let Some(loss) = loss {
            let grads = loss.backward()?;
            self.adam.step(&grads, clip_norm)?;
        }
        Ok(())
    }

    /// Pseudo-labels: once per epoch, after the warm-up of joint training.
    fn update_pseudo_labels(&mut self, epoch: usize, phase: Phase) {
        let c = &self.config;
        if c.labels == LabelMode::Pseudo
            && phase.joint
            && epoch >= c.segmentation_epochs + c.pseudo_warmup_epochs
        {
            for label in self.state.pseudo_labels.values_mut() {
                if let Some(p) = label.last_p {
                    label.q =
                        update_pseudo_label(label.q, p, label.soft_target, c.alpha, c.pseudo_rate);
                }
            }
        }
    }

    /// The classification items of a batch: every labelled nodule's box (its target from the
    /// label mode) and up to `max_false_candidates` predicted candidates per patch that touch no
    /// nodule (non-nodule). Returns the items and, per item, the pseudo-label key of a marginal
    /// nodule.
    #[allow(clippy::type_complexity)]
    fn class_items(
        &self,
        patches: &[(usize, Patch, bool)],
        probability: &Tensor,
    ) -> anyhow::Result<(Vec<(Candidate, ClassTarget)>, Vec<Option<String>>)> {
        let c = &self.config;
        let predicted = candidates(probability, self.net.config().threshold)?;
        let mut items = Vec::new();
        let mut keys = Vec::new();
        for (batch, (scan, patch, _)) in patches.iter().enumerate() {
            let p = patch.size;
            // Labelled nodules in this patch; boxes come as (x, y, z), candidates are [D, H, W].
            for (label, b) in label_boxes(&patch.labels, [p, p, p]) {
                let label = label as u8;
                let nodule = self.scans.summaries()[*scan]
                    .nodules
                    .iter()
                    .find(|n| n.label == label);
                let ratings = nodule.map_or(&[][..], |n| &n.ratings[..]);
                let key = format!("{scan}/{label}");
                let (target, pseudo_key) = self.nodule_target(ratings, &key);
                items.push((
                    Candidate {
                        batch,
                        min: [b.min[2], b.min[1], b.min[0]],
                        max: [b.max[2], b.max[1], b.max[0]],
                        voxels: b.voxels,
                    },
                    target,
                ));
                keys.push(pseudo_key);
            }
            // Predicted candidates that touch no labelled voxel: non-nodules, largest first.
            let mut false_ones: Vec<Candidate> = predicted
                .iter()
                .filter(|cand| cand.batch == batch)
                .filter(|cand| !touches_label(cand, &patch.labels, p))
                .copied()
                .collect();
            false_ones.sort_by_key(|c| std::cmp::Reverse(c.voxels));
            for cand in false_ones.into_iter().take(c.max_false_candidates) {
                items.push((cand, ClassTarget::NonNodule));
                keys.push(None);
            }
        }
        Ok((items, keys))
    }

    /// A nodule's classification target under the label mode, and its pseudo-label key if the
    /// pseudo-label is what sets the target.
    fn nodule_target(&self, ratings: &[u8], key: &str) -> (ClassTarget, Option<String>) {
        if ratings.is_empty() {
            return (ClassTarget::NoduleOnly, None);
        }
        let score = malignancy::score(ratings);
        match self.config.labels {
            LabelMode::Hard => match malignancy::class(score) {
                Some(m) => (
                    ClassTarget::Nodule {
                        malignancy: f64::from(u8::from(m)),
                    },
                    None,
                ),
                None => (ClassTarget::NoduleOnly, None),
            },
            LabelMode::Soft => (
                ClassTarget::Nodule {
                    malignancy: malignancy::soft_label(score),
                },
                None,
            ),
            LabelMode::Pseudo => match self.state.pseudo_labels.get(key) {
                Some(label) => (
                    ClassTarget::Nodule {
                        malignancy: label.q,
                    },
                    Some(key.to_owned()),
                ),
                None => (
                    ClassTarget::Nodule {
                        malignancy: malignancy::soft_label(score),
                    },
                    None,
                ),
            },
        }
    }

    fn checkpoint(&self) -> anyhow::Result<()> {
        // Write beside, then rename: a crash leaves the previous checkpoint whole.
        let tmp = |name: &str| self.dir.join(format!("{name}.tmp"));
        self.vars.save(tmp(CHECKPOINT_WEIGHTS))?;
        self.adam.save(&tmp(CHECKPOINT_OPTIMIZER))?;
        std::fs::write(
            tmp(CHECKPOINT_STATE),
            serde_json::to_vec_pretty(&self.state)?,
        )?;
        for name in [CHECKPOINT_WEIGHTS, CHECKPOINT_OPTIMIZER, CHECKPOINT_STATE] {
            crate::write::replace(&tmp(name), &self.dir.join(name))?;
        }
        Ok(())
    }

    fn append_metrics(&self, m: &EpochMetrics) -> anyhow::Result<()> {
        let path = self.dir.join(METRICS);
        let new = !path.exists();
        let mut f = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&path)?;
        if new {
            writeln!(
                f,
                "epoch,learning_rate,segmentation_loss,classification_loss,dice,soft_dice,candidates,seconds"
            )?;
        }
        writeln!(
            f,
            "{},{},{:.6},{:.6},{:.4},{:.4},{},{:.1}",
            m.epoch,
            m.learning_rate,
            m.segmentation_loss,
            m.classification_loss,
            m.dice,
            m.soft_dice,
            m.candidates,
            m.seconds
        )?;
        Ok(())
    }

    /// Writes the trained model file with its provenance.
    pub fn export(&self, path: &Path, name: &str, version: &str) -> anyhow::Result<()> {
        let info = ModelInfo {
            malignancy_calibration: None,
            malignancy_network: None,
            measure_fraction: None,
            operating_points: Vec::new(),
            name: name.into(),
            version: version.into(),
            config: self.net.config().clone(),
            normalization: self.normalization,
            provenance: serde_json::json!({
                "data": self.config.data.description(),
                "training": self.config,
                "epochs_done": self.state.epochs_done,
                "command": "jnsc train",
            }),
        };
        save(path, &self.vars, &info)?;
        Ok(())
    }
}

/// Whether a candidate box holds any labelled voxel of the patch.
fn touches_label(c: &Candidate, labels: &[u8], p: usize) -> bool {
    (c.min[0]..=c.max[0]).any(|z| {
        (c.min[1]..=c.max[1])
            .any(|y| (c.min[2]..=c.max[2]).any(|x| labels[(z * p + y) * p + x] != 0))
    })
}

/// Every visible marginal nodule's pseudo-label, initialised to its soft label.
fn initial_pseudo_labels(scans: &[ScanSummary]) -> BTreeMap<String, PseudoLabel> {
    let mut out = BTreeMap::new();
    for (s, scan) in scans.iter().enumerate() {
        // Only nodules the scan shows can be seen by the network.
        for n in &scan.nodules {
            if malignancy::is_marginal(&n.ratings) && scan.visible.contains(&n.label) {
                let t = malignancy::soft_label(malignancy::score(&n.ratings));
                out.insert(
                    format!("{s}/{}", n.label),
                    PseudoLabel {
                        soft_target: t,
                        q: t,
                        last_p: None,
                    },
                );
            }
        }
    }
    out
}

#[cfg(all(test, feature = "cuda"))]
mod cuda_tests {
    use super::*;

    /// `jnsc train --device cuda` follows CPU training: the same seed, scans and patches give
    /// the same losses within float tolerance over a few steps (run by scripts/gpu-check.sh).
    #[test]
    fn cuda_training_follows_cpu_training() {
        let gpu = Device::new_cuda(0).expect("a CUDA build's tests need a GPU");
        let config = TrainConfig {
            scans: 2,
            patch: 32,
            epochs: 2,
            segmentation_epochs: 1,
            pseudo_warmup_epochs: 0,
            ..TrainConfig::default()
        };
        let run = |device: Device| {
            let dir = tempfile::tempdir().unwrap();
            let mut trainer = Trainer::open_on(dir.path(), config.clone(), true, device).unwrap();
            trainer.run(2, true).unwrap()
        };
        let (cpu, cuda) = (run(Device::Cpu), run(gpu));
        for (a, b) in cpu.iter().zip(&cuda) {
            let diff = (a.segmentation_loss - b.segmentation_loss).abs();
            println!(
                "training epoch {}: CPU vs CUDA segmentation loss {:.6} vs {:.6} (diff {diff:.2e}), \
                 classification loss {:.6} vs {:.6}",
                a.epoch,
                a.segmentation_loss,
                b.segmentation_loss,
                a.classification_loss,
                b.classification_loss
            );
            assert!(
                diff < 1e-2 * a.segmentation_loss.max(1e-3),
                "epoch {}",
                a.epoch
            );
        }
    }
}
