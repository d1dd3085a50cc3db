//! How the analyzer is chosen: `ModelArgs` (model file, device) and `AnalyzerArgs` (with the
//! tiling), shared by `jnsc analyze`, `jnsc eval` and, from `[model]`, the node.

use super::Analyzer;
use super::tiles::{Tiling, TilingName};
use crate::jnsc::device::{DeviceSpec, Precision};
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
    pub device: DeviceSpec,
    /// The number format of the segmentation: f32 (as trained), or f16 for a GPU's tensor
    /// cores (on a CPU computed in f32 and rounded, about twice f32's time; for checking a
    /// GPU's findings against).
    #[arg(long, value_enum, default_value_t = Precision::F32)]
    pub precision: Precision,
    /// Cut each finding's measured extent (its reported centre, size and segment) at this
    /// fraction of its peak instead of the model file's fraction (0: the whole detected region).
    /// For choosing the fraction on validation data.
    #[arg(long)]
    pub measure_fraction: Option<f32>,
}

impl ModelArgs {
    pub fn source(&self) -> ModelSource {
        ModelSource::from_option(self.model.clone())
    }

    /// The analyzer of this model on this device, with `tiling`.
    pub fn load(&self, tiling: Tiling) -> anyhow::Result<Analyzer> {
        let device = self.device.open()?;
        let source = self.source();
        let mut analyzer = Analyzer::new(&source, device, self.precision, tiling)
            .map_err(|e| anyhow::anyhow!("cannot load the model {source}: {e}"))?;
        if let Some(f) = self.measure_fraction {
            crate::jnsc::model_file::check_measure_fraction(f)
                .map_err(|e| anyhow::anyhow!("--measure-fraction: {e}"))?;
            analyzer.post.measure_fraction = f;
        }
        Ok(analyzer)
    }
}

/// Which model, on which device, with which sliding window.
#[derive(clap::Args, Debug, Clone)]
pub struct AnalyzerArgs {
    #[command(flatten)]
    pub model: ModelArgs,
    /// fast (128^3 windows, 16-voxel margins) or paper (64^3 windows shifted by 32, averaged).
    #[arg(long, value_enum, default_value_t = TilingName::Fast)]
    pub tiling: TilingName,
    /// Windows per network call (more is faster on a GPU).
    #[arg(long, default_value_t = 1)]
    pub batch: usize,
    /// Test-time mirroring: 1 (off) to 8 passes per window (identity, then x, y, z, xy, xz, yz,
    /// xyz mirrored), averaged. Each pass costs one segmentation.
    #[arg(long, default_value_t = 1)]
    pub mirrors: usize,
    /// Test-time mirroring of the classification path: 1 (off) to 8 mirrored windows per
    /// finding (identity, then x, y, z, xy, xz, yz, xyz), class probabilities averaged.
    #[arg(long, default_value_t = super::DEFAULT_CLASSIFY_MIRRORS)]
    pub classify_mirrors: usize,
    /// Mirror the classification only of findings whose one-pass p(nodule) is at least this;
    /// the others keep their one-pass classes (0: every finding is mirrored).
    #[arg(long, default_value_t = super::DEFAULT_CLASSIFY_MIRRORS_FROM)]
    pub classify_mirrors_from: f64,
}

impl AnalyzerArgs {
    pub fn load(&self) -> anyhow::Result<Analyzer> {
        let mut tiling = Tiling::named(self.tiling);
        tiling.batch = self.batch;
        tiling.mirrors = self.mirrors;
        tiling.validate().map_err(anyhow::Error::msg)?;
        super::tiles::check_mirrors(self.classify_mirrors).map_err(anyhow::Error::msg)?;
        crate::jnsc::model_file::check_min_p_nodule(self.classify_mirrors_from)
            .map_err(|e| anyhow::anyhow!("--classify-mirrors-from: {e}"))?;
        let mut analyzer = self.model.load(tiling)?;
        analyzer.classify_mirrors = self.classify_mirrors;
        analyzer.classify_mirrors_from = self.classify_mirrors_from;
        Ok(analyzer)
    }
}
