//! The analyzer on the command line: `ModelArgs` (model file, device) and `AnalyzerArgs` (with
//! the tiling), shared by `jnsc analyze`, `jnsc eval` and, from `[model]`, the node; and the body
//! of `jnsc analyze` (findings as JSON, optionally the result objects the node would send).

use super::Analyzer;
use super::tiles::Tiling;
use crate::jnsc::model_file::ModelSource;
use std::path::PathBuf;

/// Which model, on which device.
#[derive(clap::Args, Debug, Clone)]
pub struct ModelArgs {
    /// The model file (default: the shipped model embedded in this binary).
    #[arg(long)]
    pub model: Option<PathBuf>,
    /// cpu, cuda or cuda:N.
    #[arg(long, default_value = "cpu")]
    pub device: String,
}

impl ModelArgs {
    pub fn source(&self) -> ModelSource {
        ModelSource::from_option(self.model.clone())
    }

    /// The analyzer of this model on this device, with `tiling`.
    pub fn load(&self, tiling: Tiling) -> anyhow::Result<Analyzer> {
        let device = crate::jnsc::device::select(&self.device)?;
        let source = self.source();
        Analyzer::new(&source, device, tiling)
            .map_err(|e| anyhow::anyhow!("cannot load the model {source}: {e}"))
    }
}

/// Which model, on which device, with which sliding window.
#[derive(clap::Args, Debug, Clone)]
pub struct AnalyzerArgs {
    #[command(flatten)]
    pub model: ModelArgs,
    /// fast (128^3 windows, 16-voxel margins) or paper (64^3 windows shifted by 32, averaged).
    #[arg(long, default_value = "fast")]
    pub tiling: String,
    /// Windows per network call (more is faster on a GPU).
    #[arg(long, default_value_t = 1)]
    pub batch: usize,
}

impl AnalyzerArgs {
    /// The node's analyzer, from `[model]`.
    pub fn from_config(config: &crate::config::ModelConfig) -> Self {
        Self {
            model: ModelArgs {
                model: config.path.clone(),
                device: config.device.clone(),
            },
            tiling: config.tiling.clone(),
            batch: 1,
        }
    }

    pub fn load(&self) -> anyhow::Result<Analyzer> {
        let mut tiling = Tiling::named(&self.tiling).map_err(anyhow::Error::msg)?;
        tiling.batch = self.batch;
        tiling.validate().map_err(anyhow::Error::msg)?;
        self.model.load(tiling)
    }
}

/// Options of `jnsc analyze`.
#[derive(clap::Args, Debug)]
pub struct AnalyzeArgs {
    /// Folder with the series' DICOM files.
    pub dir: PathBuf,
    /// Write the JSON here instead of stdout.
    #[arg(long)]
    pub json: Option<PathBuf>,
    #[command(flatten)]
    pub analyzer: AnalyzerArgs,
    /// Also write the result objects the node would send (seg.dcm, sr.dcm, results.json) here.
    #[arg(long)]
    pub results: Option<PathBuf>,
    /// Lowest nodule probability reported in the result objects.
    #[arg(long, default_value_t = crate::results::ReportPolicy::default().min_p_nodule)]
    pub min_p_nodule: f64,
    /// Most findings reported in the result objects.
    #[arg(long, default_value_t = crate::results::ReportPolicy::default().max_findings)]
    pub max_findings: usize,
    /// AE title named as the device observer in the results.
    #[arg(long, default_value = "JNSC")]
    pub ae_title: String,
    /// Classify every finding (default: only those whose location probability reaches
    /// --min-p-nodule, the only ones that can be reported).
    #[arg(long)]
    pub classify_all: bool,
}

/// Runs `jnsc analyze`.
pub fn run(args: &AnalyzeArgs) -> anyhow::Result<()> {
    let mut analyzer = args.analyzer.load()?;
    if !args.classify_all {
        analyzer.classify_min_p_location = args.min_p_nodule;
    }
    let files = crate::volume::series::files_in(&args.dir)?;
    let analysis = analyzer.analyze(&files)?;
    let json = serde_json::to_string_pretty(&analysis.report)?;
    match &args.json {
        Some(path) => std::fs::write(path, json + "\n")?,
        None => println!("{json}"),
    }
    if let Some(dir) = &args.results {
        use crate::results::{
            Equipment, ReportPolicy, build, read_summary, source::SourceStudy, write,
        };
        use anyhow::Context;
        let first = files.first().context("the folder has no DICOM file")?;
        let source = SourceStudy::read(first, &analysis.volume.series)?;
        let policy = ReportPolicy {
            min_p_nodule: args.min_p_nodule,
            max_findings: args.max_findings,
        };
        let previous = read_summary(dir);
        let equipment = Equipment::new(&args.ae_title);
        let objects = build(&analysis, &source, &policy, &equipment, previous.as_ref());
        let written = write(&objects, dir)?;
        eprintln!(
            "jnsc: {} of {} findings reported; wrote {}{}",
            objects.summary.findings.len(),
            objects.summary.candidates,
            written.sr.display(),
            written
                .seg
                .map(|p| format!(" and {}", p.display()))
                .unwrap_or_default()
        );
    }
    Ok(())
}
