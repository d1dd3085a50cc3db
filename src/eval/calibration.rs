//! Calibration of the malignancy output (`jnsc eval calibrate`): Platt scaling of p(malignant |
//! nodule) fitted by logistic regression on one set of held-out nodules (the `nodules.csv` of
//! `jnsc eval nodules`; M > 3 malignant, M < 3 benign, M = 3 left out), the call's threshold
//! chosen there for balanced accuracy, and both checked on a second, disjoint set: reliability
//! (observed malignant fraction per bin of predicted probability) before and after, expected
//! calibration error, Brier score and balanced accuracy. Writes a copy of the model with the
//! calibration in its metadata.

use super::classification::{Rated, metrics};
use crate::jnsc::model_file::{MalignancyCalibration, platt, write_calibrated};
use crate::malignancy;
use anyhow::Context;
use serde::Serialize;
use std::path::{Path, PathBuf};

/// Bins of the reliability diagram.
pub const BINS: usize = 10;

/// `jnsc eval calibrate`.
#[derive(Debug, clap::Args)]
pub struct CalibrateArgs {
    /// nodules.csv of `jnsc eval nodules` to fit on.
    #[arg(long)]
    pub fit: PathBuf,
    /// nodules.csv of a disjoint held-out set to check on.
    #[arg(long)]
    pub check: PathBuf,
    /// The model the CSVs were made with.
    #[arg(long)]
    pub model: PathBuf,
    /// Write the calibrated model here.
    #[arg(long)]
    pub write_model: PathBuf,
    /// What the fit set is, in words (stored in the model file).
    #[arg(long)]
    pub fitted_on: String,
    /// Write calibration.json and reliability.svg here.
    #[arg(long)]
    pub out: PathBuf,
}

/// One labelled sample: a raw probability and whether its class is the positive one (a
/// nodule's raw p(malignant | nodule) and whether it is malignant; a reported finding's
/// p(nodule) and whether it is a nodule).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Labelled {
    pub p: f64,
    pub positive: bool,
}

/// Reads the labelled nodules (M = 3 left out) of a nodules.csv.
pub fn read_nodules(path: &Path) -> anyhow::Result<Vec<Labelled>> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))?;
    let mut lines = text.lines();
    let header: Vec<&str> = lines.next().context("empty CSV")?.split(',').collect();
    let column = |name: &str| {
        header
            .iter()
            .position(|h| *h == name)
            .with_context(|| format!("{}: no column {name}", path.display()))
    };
    let (median, benign, malignant) = (
        column("median_rating")?,
        column("p_benign")?,
        column("p_malignant")?,
    );
    let mut out = Vec::new();
    for (n, line) in lines.enumerate() {
        let fields: Vec<&str> = line.split(',').collect();
        let number = |i: usize| -> anyhow::Result<f64> {
            fields
                .get(i)
                .and_then(|v| v.parse().ok())
                .with_context(|| format!("{} line {}: bad number", path.display(), n + 2))
        };
        let Some(class) = malignancy::class(number(median)?) else {
            continue;
        };
        let (b, m) = (number(benign)?, number(malignant)?);
        out.push(Labelled {
            p: m / (b + m).max(1e-12),
            positive: class,
        });
    }
    Ok(out)
}

fn logit(p: f64) -> f64 {
    let p = p.clamp(1e-6, 1.0 - 1e-6);
    (p / (1.0 - p)).ln()
}

fn sigmoid(z: f64) -> f64 {
    1.0 / (1.0 + (-z).exp())
}

/// Platt's a and b: logistic regression of the label on logit(p), by Newton's method; with
/// `smoothed`, on Platt's smoothed targets ((N+ + 1) / (N+ + 2), 1 / (N- + 2)) against
/// overconfidence, else on the labels themselves (plain maximum likelihood).
pub fn fit_platt(nodules: &[Labelled], smoothed: bool) -> (f64, f64) {
    let positives = nodules.iter().filter(|n| n.positive).count() as f64;
    let negatives = nodules.len() as f64 - positives;
    let (hi, lo) = if smoothed {
        (
            (positives + 1.0) / (positives + 2.0),
            1.0 / (negatives + 2.0),
        )
    } else {
        (1.0, 0.0)
    };
    let (mut a, mut b) = (1.0, 0.0);
    for _ in 0..100 {
        let (mut ga, mut gb, mut haa, mut hab, mut hbb) = (0.0, 0.0, 1e-9, 0.0, 1e-9);
        for n in nodules {
            let x = logit(n.p);
            let t = if n.positive { hi } else { lo };
            let q = sigmoid(a * x + b);
            let w = q * (1.0 - q);
            ga += (q - t) * x;
            gb += q - t;
            haa += w * x * x;
            hab += w * x;
            hbb += w;
        }
        let det = haa * hbb - hab * hab;
        if det.abs() < 1e-12 {
            break;
        }
        let (da, db) = ((hbb * ga - hab * gb) / det, (haa * gb - hab * ga) / det);
        a -= da;
        b -= db;
        if da.abs() + db.abs() < 1e-10 {
            break;
        }
    }
    (a, b)
}

/// The threshold on `p` that gives the best balanced accuracy (midpoints between sorted values).
pub fn balanced_threshold(nodules: &[(f64, bool)]) -> f64 {
    let mut values: Vec<f64> = nodules.iter().map(|n| n.0).collect();
    values.sort_by(f64::total_cmp);
    values.dedup();
    let mut best = (f64::MIN, 0.5);
    for w in values.windows(2) {
        let t = (w[0] + w[1]) / 2.0;
        let ba = balanced_accuracy(nodules, t);
        if ba > best.0 {
            best = (ba, t);
        }
    }
    best.1
}

fn balanced_accuracy(nodules: &[(f64, bool)], threshold: f64) -> f64 {
    let rate = |class: bool| {
        let of: Vec<_> = nodules.iter().filter(|n| n.1 == class).collect();
        let right = of.iter().filter(|n| (n.0 >= threshold) == class).count();
        right as f64 / of.len().max(1) as f64
    };
    (rate(true) + rate(false)) / 2.0
}

/// One bin of a reliability diagram.
#[derive(Debug, Clone, Copy, Serialize)]
pub struct Bin {
    pub count: usize,
    pub mean_predicted: f64,
    pub observed: f64,
}

/// Reliability bins of (predicted, malignant) pairs, and the expected calibration error.
pub fn reliability(pairs: &[(f64, bool)]) -> (Vec<Bin>, f64) {
    let mut bins = vec![(0usize, 0.0, 0.0); BINS];
    for &(p, m) in pairs {
        let b = ((p * BINS as f64) as usize).min(BINS - 1);
        bins[b].0 += 1;
        bins[b].1 += p;
        bins[b].2 += f64::from(u8::from(m));
    }
    let mut ece = 0.0;
    let bins = bins
        .into_iter()
        .map(|(count, sum_p, sum_m)| {
            let n = count.max(1) as f64;
            ece += count as f64 / pairs.len().max(1) as f64 * (sum_p / n - sum_m / n).abs();
            Bin {
                count,
                mean_predicted: sum_p / n,
                observed: sum_m / n,
            }
        })
        .collect();
    (bins, ece)
}

/// The Brier score of (predicted, outcome) pairs.
pub fn brier(pairs: &[(f64, bool)]) -> f64 {
    pairs
        .iter()
        .map(|&(p, m)| (p - f64::from(u8::from(m))).powi(2))
        .sum::<f64>()
        / pairs.len().max(1) as f64
}

/// How the calibration does on the check set.
#[derive(Debug, Serialize)]
pub struct Check {
    pub nodules: usize,
    pub malignant: usize,
    pub ece_before: f64,
    pub ece_after: f64,
    pub brier_before: f64,
    pub brier_after: f64,
    pub balanced_accuracy_at_0_5_before: Option<f64>,
    pub balanced_accuracy_after: Option<f64>,
    pub auc: Option<f64>,
    pub bins_before: Vec<Bin>,
    pub bins_after: Vec<Bin>,
}

/// Runs `jnsc eval calibrate`.
pub fn run(args: &CalibrateArgs) -> anyhow::Result<()> {
    let fit = read_nodules(&args.fit)?;
    let check = read_nodules(&args.check)?;
    anyhow::ensure!(
        fit.iter().any(|n| n.positive) && fit.iter().any(|n| !n.positive),
        "the fit set needs benign and malignant nodules"
    );
    let (a, b) = fit_platt(&fit, true);
    let calibrate = |p: f64| platt(a, b, p);
    let fitted: Vec<(f64, bool)> = fit.iter().map(|n| (calibrate(n.p), n.positive)).collect();
    let calibration = MalignancyCalibration {
        a,
        b,
        threshold: balanced_threshold(&fitted),
        fitted_on: args.fitted_on.clone(),
    };
    let before: Vec<(f64, bool)> = check.iter().map(|n| (n.p, n.positive)).collect();
    let after: Vec<(f64, bool)> = check
        .iter()
        .map(|n| (calibration.apply(n.p), n.positive))
        .collect();
    let rated = |pairs: &[(f64, bool)], threshold: f64| -> Vec<Rated> {
        pairs
            .iter()
            .map(|&(p, m)| Rated {
                median_rating: if m { 5.0 } else { 1.0 },
                p_malignant: p,
                called_malignant: p >= threshold,
            })
            .collect()
    };
    let metrics_before = metrics(&rated(&before, 0.5));
    let metrics_after = metrics(&rated(&after, calibration.threshold));
    let (bins_before, ece_before) = reliability(&before);
    let (bins_after, ece_after) = reliability(&after);
    let result = Check {
        nodules: check.len(),
        malignant: check.iter().filter(|n| n.positive).count(),
        ece_before,
        ece_after,
        brier_before: brier(&before),
        brier_after: brier(&after),
        balanced_accuracy_at_0_5_before: metrics_before.balanced_accuracy,
        balanced_accuracy_after: metrics_after.balanced_accuracy,
        auc: metrics_after.auc,
        bins_before,
        bins_after,
    };
    std::fs::create_dir_all(&args.out)?;
    std::fs::write(
        args.out.join("calibration.json"),
        serde_json::to_vec_pretty(&serde_json::json!({
            "calibration": calibration,
            "fit_nodules": fit.len(),
            "check": result,
        }))?,
    )?;
    super::plot::write_reliability_svg(
        &args.out.join("reliability.svg"),
        &result.bins_before,
        &result.bins_after,
    )?;
    write_calibrated(&args.model, &args.write_model, &calibration)?;
    println!(
        "Platt a {a:.3} b {b:.3}, threshold {:.3} (fitted on {} nodules); check set ({} nodules, \
         {} malignant): ECE {:.3} -> {:.3}, Brier {:.3} -> {:.3}, balanced accuracy {:?} -> {:?}, \
         AUC {:?}",
        calibration.threshold,
        fit.len(),
        result.nodules,
        result.malignant,
        result.ece_before,
        result.ece_after,
        result.brier_before,
        result.brier_after,
        result.balanced_accuracy_at_0_5_before,
        result.balanced_accuracy_after,
        result.auc
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn platt_scaling_recovers_a_known_distortion() {
        // True probability q; the model reports p = sigmoid(2 logit(q) - 1): overconfident and
        // shifted. Platt must find a ~ 0.5, b ~ 0.5.
        let mut rng = crate::random::Rng::new(4);
        let nodules: Vec<Labelled> = (0..20_000)
            .map(|_| {
                let q = rng.range(0.02, 0.98);
                Labelled {
                    p: sigmoid(2.0 * logit(q) - 1.0),
                    positive: rng.uniform() < q,
                }
            })
            .collect();
        let (a, b) = fit_platt(&nodules, true);
        assert!((a - 0.5).abs() < 0.05 && (b - 0.5).abs() < 0.08, "{a} {b}");
        let pairs: Vec<(f64, bool)> = nodules
            .iter()
            .map(|n| (platt(a, b, n.p), n.positive))
            .collect();
        let raw: Vec<(f64, bool)> = nodules.iter().map(|n| (n.p, n.positive)).collect();
        assert!(reliability(&pairs).1 < 0.02);
        assert!(reliability(&raw).1 > 0.05);
    }

    #[test]
    fn threshold_balances_the_classes() {
        let nodules = [
            (0.1, false),
            (0.2, false),
            (0.3, true),
            (0.35, false),
            (0.8, true),
        ];
        let t = balanced_threshold(&nodules);
        assert!((0.2..0.3).contains(&t), "{t}");
    }
}
