//! Evaluation of the malignancy classifier alone: held-out synthetic scans are rendered on the
//! training grid (1 mm) from seeds no training run uses by default, and every reference nodule
//! they show is classified with its true box, as the analyzer classifies a detection. Unlike
//! `eval studies`, which rates only the nodules a model detected, every model is measured on the
//! same nodules, so label modes can be compared apart from detection. Reports the metrics of
//! `classification` (M = 3 excluded; the AUC ranks p(malignant | nodule)) over all nodules and
//! over the marginal ones (1-2 readers, 2 <= M <= 4), and writes one CSV row per nodule.

use super::classification::{Metrics, Rated, metrics};
use crate::datasets::{Source, SyntheticSource, nodule_boxes};
use crate::inference::Analyzer;
use crate::malignancy;
use crate::train::trainer::TrainConfig;
use anyhow::Context;
use serde::Serialize;
use std::path::PathBuf;

/// `jnsc eval nodules`.
#[derive(Debug, clap::Args)]
pub struct NodulesArgs {
    /// Write metrics.json and nodules.csv here.
    #[arg(long)]
    pub out: PathBuf,
    #[command(flatten)]
    pub model: crate::inference::command::ModelArgs,
    /// Held-out scans to render (1-4 nodules each).
    #[arg(long, default_value_t = 60)]
    pub scans: usize,
    /// Seed of the first scan (scan n uses seed + n). Training runs use their own seed + n, with
    /// seeds near 1: keep this far from them.
    #[arg(long, default_value_t = 100_001)]
    pub seed: u64,
    /// Scan size in 1 mm voxels (the training default).
    #[arg(long, num_args = 3, default_values_t = TrainConfig::default().scan_size)]
    pub size: Vec<usize>,
}

/// What metrics.json holds.
#[derive(Debug, Serialize)]
pub struct Summary {
    pub model: String,
    pub scans: usize,
    pub first_seed: u64,
    /// Reference nodules classified (those the scans show).
    pub nodules: usize,
    pub classification: Metrics,
    /// The same over the marginal nodules only.
    pub marginal_classification: Metrics,
}

/// The first columns of a nodules.csv (`eval nodules`, `eval shapes`; `eval calibrate` reads
/// them).
pub const CSV_COLUMNS: &str =
    "scan,label,ratings,median_rating,marginal,p_non_nodule,p_benign,p_malignant,called_malignant";

/// Classified reference nodules: their metrics inputs, all and marginal, and their CSV rows.
#[derive(Default)]
pub struct Classified {
    pub all: Vec<Rated>,
    pub marginal: Vec<Rated>,
}

impl Classified {
    /// Records one nodule classified as `p` (non-nodule, benign, malignant) and returns its CSV
    /// columns (`CSV_COLUMNS`): the call and p(cancer | nodule) are the analyzer's (calibrated
    /// where the model is).
    pub fn add(
        &mut self,
        analyzer: &Analyzer,
        scan: &str,
        label: impl std::fmt::Display,
        ratings: &[u8],
        p: [f32; 3],
    ) -> String {
        let median = malignancy::score(ratings);
        let is_marginal = malignancy::is_marginal(ratings);
        let p_cancer = analyzer.malignancy(p);
        let called_malignant = analyzer.is_malignant(p_cancer);
        let rated = Rated {
            median_rating: median,
            p_malignant: p_cancer,
            called_malignant,
        };
        self.all.push(rated);
        if is_marginal {
            self.marginal.push(rated);
        }
        let listed: Vec<String> = ratings.iter().map(u8::to_string).collect();
        format!(
            "{scan},{label},{},{median},{is_marginal},{:.6},{:.6},{:.6},{called_malignant}",
            listed.join(" "),
            p[0],
            p[1],
            p[2],
        )
    }
}

/// Writes `nodules.csv` and `metrics.json` into `out` (created).
pub fn write_outputs(
    out: &std::path::Path,
    csv: &str,
    summary: &impl Serialize,
) -> anyhow::Result<()> {
    std::fs::create_dir_all(out).with_context(|| format!("cannot create {}", out.display()))?;
    std::fs::write(out.join("nodules.csv"), csv)?;
    std::fs::write(
        out.join("metrics.json"),
        serde_json::to_vec_pretty(summary)?,
    )?;
    Ok(())
}

/// Runs `jnsc eval nodules`.
pub fn run(args: &NodulesArgs) -> anyhow::Result<()> {
    let size: [usize; 3] = args
        .size
        .clone()
        .try_into()
        .map_err(|_| anyhow::anyhow!("--size takes three numbers"))?;
    let analyzer = args.model.load(crate::inference::tiles::Tiling::fast())?;
    let source = SyntheticSource::new(args.seed, args.scans, size);
    let mut csv = format!("{CSV_COLUMNS}\n");
    let mut classified = Classified::default();
    for index in 0..source.len() {
        let scan = source.scan(index)?;
        let boxes = nodule_boxes(&scan);
        for nodule in &scan.nodules {
            let Some(b) = boxes.get(&u32::from(nodule.label)) else {
                continue; // outside the rendered grid
            };
            let p = analyzer
                .classify_box(
                    &scan.hu,
                    b.min.map(|v| v as i64),
                    b.max.map(|v| v as i64),
                    b.voxels,
                )
                .with_context(|| format!("classifying nodule {} of {}", nodule.label, scan.id))?;
            let row = classified.add(&analyzer, &scan.id, nodule.label, &nodule.ratings, p);
            csv.push_str(&row);
            csv.push('\n');
        }
        eprint!(
            "\rscan {}/{}: {} nodules   ",
            index + 1,
            source.len(),
            classified.all.len()
        );
    }
    eprintln!();
    let summary = Summary {
        model: args.model.source().to_string(),
        scans: args.scans,
        first_seed: args.seed,
        nodules: classified.all.len(),
        classification: metrics(&classified.all),
        marginal_classification: metrics(&classified.marginal),
    };
    write_outputs(&args.out, &csv, &summary)?;
    let c = &summary.classification;
    let f = |x: Option<f64>| x.map_or("n/a".to_owned(), |v| format!("{v:.3}"));
    println!(
        "{} nodules ({} benign, {} malignant, {} with M = 3): accuracy {}, sensitivity {}, \
         specificity {}, balanced accuracy {}, AUC {}; marginal: balanced accuracy {} ({} nodules)",
        summary.nodules,
        c.benign,
        c.malignant,
        c.uncertain_excluded,
        f(c.accuracy),
        f(c.sensitivity),
        f(c.specificity),
        f(c.balanced_accuracy),
        f(c.auc),
        f(summary.marginal_classification.balanced_accuracy),
        classified.marginal.len()
    );
    Ok(())
}
