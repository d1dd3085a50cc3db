//! Training JNSC the paper's way (section IV.B, D-F), on the scans of `datasets`: sampling
//! (`sampling`), the
//! prepared scans held in memory or on disk (`prepared`), losses (`loss`), the pseudo-labels of marginal nodules (`pseudo`), Adam with gradient
//! clipping (`adam`) and the training loop with checkpoints and metrics (`trainer`), behind
//! `jnsc train`.

pub mod adam;
pub mod loss;
pub mod prepared;
pub mod pseudo;
pub mod sampling;
pub mod trainer;

use anyhow::Context;
use std::path::PathBuf;
use trainer::{TrainConfig, Trainer};

/// `jnsc train`.
#[derive(Debug, clap::Args)]
pub struct TrainArgs {
    /// The run's directory: checkpoint, metrics.csv, config. An existing run there resumes.
    #[arg(long)]
    pub dir: PathBuf,
    /// Training configuration (TOML, keys of `TrainConfig`; all have defaults).
    #[arg(long)]
    pub config: Option<PathBuf>,
    /// Override: labels of marginal nodules (hard, soft, pseudo).
    #[arg(long)]
    pub labels: Option<pseudo::LabelMode>,
    /// Override: start from this model file (`init_from`), e.g. another stage 1 for an ablation.
    #[arg(long)]
    pub init_from: Option<PathBuf>,
    /// Override: segmentation only (no classification loss).
    #[arg(long)]
    pub segmentation_only: bool,
    /// Stop after this many epochs in total (the run can be resumed later).
    #[arg(long)]
    pub until: Option<usize>,
    /// Write the trained model here when the run is complete.
    #[arg(long)]
    pub export: Option<PathBuf>,
    /// Model name and version for the exported file.
    #[arg(long, default_value = "jnsc-synthetic")]
    pub name: String,
    #[arg(long, default_value = "0.1.0")]
    pub version: String,
    /// Where to train: cpu (bit-for-bit reproducible), cuda or cuda:N (a CUDA build).
    #[arg(long, default_value = "cpu")]
    pub device: crate::jnsc::device::DeviceSpec,
}

/// Runs `jnsc train`.
pub fn run(args: &TrainArgs) -> anyhow::Result<()> {
    let mut config: TrainConfig = match &args.config {
        Some(path) => toml::from_str(
            &std::fs::read_to_string(path)
                .with_context(|| format!("cannot read {}", path.display()))?,
        )
        .with_context(|| format!("{}", path.display()))?,
        None => TrainConfig::default(),
    };
    if let Some(labels) = args.labels {
        config.labels = labels;
    }
    if let Some(init) = &args.init_from {
        config.init_from = Some(init.clone());
    }
    if args.segmentation_only {
        config.joint = false;
    }
    let device = args.device.open()?;
    let mut trainer = Trainer::open_on(&args.dir, config.clone(), false, device)?;
    if trainer.epochs_done() > 0 {
        eprintln!(
            "resuming {} after epoch {}",
            args.dir.display(),
            trainer.epochs_done()
        );
    }
    let until = args.until.unwrap_or(config.epochs);
    let metrics = trainer.run(until, false)?;
    if let Some(last) = metrics.last() {
        eprintln!(
            "epoch {}: segmentation loss {:.4}, classification loss {:.4}, Dice {:.3}",
            last.epoch, last.segmentation_loss, last.classification_loss, last.dice
        );
    }
    if let Some(path) = &args.export {
        anyhow::ensure!(
            trainer.epochs_done() >= config.epochs,
            "the run has {} of {} epochs: not exported",
            trainer.epochs_done(),
            config.epochs
        );
        trainer.export(path, &args.name, &args.version)?;
        eprintln!("wrote {}", path.display());
    }
    Ok(())
}
