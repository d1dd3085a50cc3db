//! Evaluation of a model on studies with ground truth, as `jnsc synth` writes them
//! (DIR/<study>/dicom/ + truth.json): the analyzer runs on every study, its findings and the
//! truth are written as LUNA16 CSVs, and the detection FROC/CPM and the malignancy metrics of
//! the detected nodules (M = 3 excluded) are reported.

use super::classification::{Metrics, Rated, metrics};
use super::froc::{self, Finding, Mark, Reference};
use crate::inference::Report;
use anyhow::Context;
use serde::{Deserialize, Serialize};
use std::fmt::Write as _;
use std::path::{Path, PathBuf};

/// `jnsc eval studies`.
#[derive(Debug, clap::Args)]
pub struct StudiesArgs {
    /// Folder whose sub-folders are studies (dicom/ and truth.json each).
    pub dir: PathBuf,
    /// Write the CSVs, the script's outputs, froc.svg, metrics.json and each study's report
    /// (reports/STUDY.json) here.
    #[arg(long)]
    pub out: PathBuf,
    #[command(flatten)]
    pub analyzer: crate::inference::command::AnalyzerArgs,
    /// The reporting threshold on p(nodule) at which the operating point is measured (which
    /// nodules a reported finding hits, false positives reported per scan). Default: the model
    /// file's operating point.
    #[arg(long)]
    pub min_p_nodule: Option<f64>,
}

/// The parts of truth.json the evaluation reads.
#[derive(Debug, Deserialize)]
struct TruthFile {
    series_uid: String,
    nodules: Vec<TruthNodule>,
    /// The background's own nodules in an insertion study: part of the reference too.
    #[serde(default)]
    known_nodules: Vec<crate::synth::study::KnownNodule>,
}

impl TruthFile {
    /// Every nodule of the reference standard.
    fn reference(&self) -> Vec<TruthNodule> {
        let known = self.known_nodules.iter().map(|k| TruthNodule {
            center_mm: k.center_mm,
            diameter_mm: k.diameter_mm,
            malignancy_median: crate::malignancy::score(&k.ratings),
        });
        self.nodules.iter().cloned().chain(known).collect()
    }
}

#[derive(Debug, Clone, Deserialize)]
struct TruthNodule {
    center_mm: [f64; 3],
    diameter_mm: f64,
    malignancy_median: f64,
}

/// What metrics.json holds.
#[derive(Debug, Serialize)]
pub struct Summary {
    pub studies: usize,
    pub nodules: usize,
    pub findings: usize,
    pub cpm: f64,
    pub sensitivity_at_fps: Vec<(f64, f64)>,
    /// The classification of the detected nodules (each reference nodule's strongest hit, at
    /// any p(nodule)): p(cancer | nodule) and the call on it, i.e. the malignancy path given
    /// that the finding is a nodule.
    pub classification: Metrics,
    pub operating_point: OperatingPoint,
    /// The calls the report carries at the operating point.
    pub reported_calls: ReportedCalls,
    pub mean_analyze_seconds: f64,
}

/// What the node would report at a threshold on p(nodule).
#[derive(Debug, Serialize)]
pub struct OperatingPoint {
    pub min_p_nodule: f64,
    /// Reported findings that hit no reference nodule, per scan (mean).
    pub false_positives_per_scan: f64,
    pub reported_per_scan: f64,
    /// Reference nodules of 8 mm or more, and how many a reported finding hits.
    pub nodules_8mm: usize,
    pub nodules_8mm_reported: usize,
    /// Every reference nodule: whether a reported finding hits it, and the best p(nodule) of
    /// any finding that hits it.
    pub nodules: Vec<NoduleOutcome>,
}

/// The benign/malignant calls of the reported findings (p(nodule) at or above the operating
/// point), as the SR carries them: on p(nodule) x p(cancer | nodule) (`Finding::malignant`).
#[derive(Debug, Serialize)]
pub struct ReportedCalls {
    /// Reported findings that hit no reference nodule, and how many of them are called
    /// malignant.
    pub false_positives: usize,
    pub false_positives_called_malignant: usize,
    /// Reported findings that hit a reference nodule, each with that nodule's rating (a
    /// nodule hit twice counts twice); the AUC is of p(nodule) x p(cancer | nodule).
    pub on_nodules: Metrics,
    /// Balanced accuracy over every reported finding, false positives counted as not
    /// malignant.
    pub balanced_accuracy_with_false_positives: Option<f64>,
}

#[derive(Debug, Serialize)]
pub struct NoduleOutcome {
    pub series_uid: String,
    pub center_mm: [f64; 3],
    pub diameter_mm: f64,
    pub malignancy_median: f64,
    pub reported: bool,
    pub best_p_nodule: Option<f64>,
    /// Rank of that finding among the scan's findings (1: the most probable).
    pub rank: Option<usize>,
}

/// The study folders under `dir` (those with a truth.json), sorted.
pub fn study_dirs(dir: &Path) -> anyhow::Result<Vec<PathBuf>> {
    let mut dirs: Vec<PathBuf> = std::fs::read_dir(dir)
        .with_context(|| format!("cannot read {}", dir.display()))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.join("truth.json").is_file())
        .collect();
    dirs.sort();
    Ok(dirs)
}

/// Runs `jnsc eval studies`.
pub fn run(args: &StudiesArgs) -> anyhow::Result<()> {
    let analyzer = args.analyzer.load()?;
    let min_p_nodule = crate::results::min_p_nodule(args.min_p_nodule, &analyzer)?;
    let dirs = study_dirs(&args.dir)?;
    anyhow::ensure!(
        !dirs.is_empty(),
        "no studies (sub-folders with truth.json) in {}",
        args.dir.display()
    );
    let mut reports = Vec::new();
    let mut truths = Vec::new();
    let reports_dir = args.out.join("reports");
    std::fs::create_dir_all(&reports_dir)
        .with_context(|| format!("cannot create {}", reports_dir.display()))?;
    for (n, dir) in dirs.iter().enumerate() {
        let truth: TruthFile = serde_json::from_slice(
            &std::fs::read(dir.join("truth.json"))
                .with_context(|| format!("cannot read {}/truth.json", dir.display()))?,
        )
        .with_context(|| format!("{}/truth.json", dir.display()))?;
        let files = crate::volume::series::files_in(&dir.join("dicom"))?;
        let report = analyzer
            .analyze(&files)
            .with_context(|| format!("analysing {}", dir.display()))?
            .report;
        eprintln!(
            "[{}/{}] {}: {} findings, {} nodules in truth, {:.1} s",
            n + 1,
            dirs.len(),
            dir.display(),
            report.findings.len(),
            truth.reference().len(),
            report.timings_ms.total / 1000.0
        );
        // Each study's whole report (every finding's p(location) and class probabilities), so
        // that choices on the findings can be studied without analysing the studies again.
        let name = dir.file_name().map_or_else(
            || format!("study-{n}"),
            |s| s.to_string_lossy().into_owned(),
        );
        let path = reports_dir.join(format!("{name}.json"));
        std::fs::write(&path, serde_json::to_vec_pretty(&report)?)
            .with_context(|| format!("cannot write {}", path.display()))?;
        reports.push(report);
        truths.push(truth);
    }
    let call = |p_cancer: f64| analyzer.is_malignant(p_cancer);
    let summary = evaluate(&reports, &truths, min_p_nodule, &call, &args.out)?;
    let json = serde_json::to_string_pretty(&summary)?;
    std::fs::write(args.out.join("metrics.json"), &json)?;
    println!("{json}");
    Ok(())
}

/// Writes the LUNA16 CSVs and the script's outputs into `out`, and returns the summary. `call`
/// is the model's benign/malignant call on a probability of cancer.
fn evaluate(
    reports: &[Report],
    truths: &[TruthFile],
    min_p_nodule: f64,
    call: &dyn Fn(f64) -> bool,
    out: &Path,
) -> anyhow::Result<Summary> {
    std::fs::create_dir_all(out)?;
    let mut reference = Reference::default();
    let mut marks = Vec::new();
    let mut rated = Vec::new();
    let mut outcomes = Vec::new();
    let mut false_positives = 0usize;
    let mut false_positives_called_malignant = 0usize;
    let mut reported_on_nodules = Vec::new();
    let mut reported_count = 0usize;
    for (report, truth) in reports.iter().zip(truths) {
        reference.series.push(truth.series_uid.clone());
        for f in &report.findings {
            marks.push(Mark {
                series: truth.series_uid.clone(),
                center: f.center_mm,
                probability: f.p_nodule,
            });
        }
        let nodules: Vec<(TruthNodule, Finding)> = truth
            .reference()
            .into_iter()
            .map(|n| {
                let finding = Finding {
                    series: truth.series_uid.clone(),
                    center: n.center_mm,
                    diameter_mm: n.diameter_mm,
                    center_text: n.center_mm.map(|c| format!("{c:.3}")),
                };
                (n, finding)
            })
            .collect();
        for f in report
            .findings
            .iter()
            .filter(|f| f.p_nodule >= min_p_nodule)
        {
            reported_count += 1;
            match nodules.iter().find(|(_, n)| froc::hits(n, &f.center_mm)) {
                Some((n, _)) => {
                    if let Some(p_malignant) = f.p_cancer_finding {
                        reported_on_nodules.push(Rated {
                            median_rating: n.malignancy_median,
                            p_malignant,
                            called_malignant: f.malignant,
                        });
                    }
                }
                None => {
                    false_positives += 1;
                    false_positives_called_malignant += usize::from(f.malignant);
                }
            }
        }
        for (n, finding) in nodules {
            // The classification of a detected nodule is that of its strongest hit.
            let best = report
                .findings
                .iter()
                .filter(|f| froc::hits(&finding, &f.center_mm))
                .max_by(|a, b| a.p_nodule.total_cmp(&b.p_nodule));
            outcomes.push(NoduleOutcome {
                series_uid: truth.series_uid.clone(),
                center_mm: n.center_mm,
                diameter_mm: n.diameter_mm,
                malignancy_median: n.malignancy_median,
                reported: best.is_some_and(|f| f.p_nodule >= min_p_nodule),
                best_p_nodule: best.map(|f| f.p_nodule),
                rank: best.and_then(|b| {
                    report
                        .findings
                        .iter()
                        .position(|f| std::ptr::eq(f, b))
                        .map(|r| r + 1)
                }),
            });
            if let Some(p_malignant) = best.and_then(|f| f.p_cancer) {
                rated.push(Rated {
                    median_rating: n.malignancy_median,
                    p_malignant,
                    called_malignant: call(p_malignant),
                });
            }
            reference.nodules.push(finding);
        }
    }
    write_csvs(&reference, &marks, out)?;
    let analysis = froc::evaluate(&reference, &marks, froc::MAX_MARKS_PER_SCAN);
    let (at, cpm) = super::print_and_write(&analysis, "jnsc", Some(out))?;
    Ok(Summary {
        studies: reports.len(),
        nodules: reference.nodules.len(),
        findings: marks.len(),
        cpm,
        sensitivity_at_fps: froc::CPM_RATES.iter().copied().zip(at).collect(),
        classification: metrics(&rated),
        reported_calls: reported_calls(
            false_positives,
            false_positives_called_malignant,
            &reported_on_nodules,
        ),
        operating_point: OperatingPoint {
            min_p_nodule,
            false_positives_per_scan: false_positives as f64 / reports.len().max(1) as f64,
            reported_per_scan: reported_count as f64 / reports.len().max(1) as f64,
            nodules_8mm: outcomes.iter().filter(|o| o.diameter_mm >= 8.0).count(),
            nodules_8mm_reported: outcomes
                .iter()
                .filter(|o| o.diameter_mm >= 8.0 && o.reported)
                .count(),
            nodules: outcomes,
        },
        mean_analyze_seconds: reports.iter().map(|r| r.timings_ms.total).sum::<f64>()
            / 1000.0
            / reports.len().max(1) as f64,
    })
}

/// The reported calls' figures from the reported findings on nodules and the false positives.
fn reported_calls(
    false_positives: usize,
    false_positives_called_malignant: usize,
    on_nodules: &[Rated],
) -> ReportedCalls {
    // With the false positives among the negatives: specificity over benign nodules and false
    // positives together.
    let benign: Vec<&Rated> = on_nodules
        .iter()
        .filter(|r| crate::malignancy::class(r.median_rating) == Some(false))
        .collect();
    let true_negatives = benign.iter().filter(|r| !r.called_malignant).count() + false_positives
        - false_positives_called_malignant;
    let negatives = benign.len() + false_positives;
    let on_nodules = metrics(on_nodules);
    let balanced_accuracy_with_false_positives = on_nodules
        .sensitivity
        .filter(|_| negatives > 0)
        .map(|sensitivity| (sensitivity + true_negatives as f64 / negatives as f64) / 2.0);
    ReportedCalls {
        false_positives,
        false_positives_called_malignant,
        on_nodules,
        balanced_accuracy_with_false_positives,
    }
}

/// annotations.csv, annotations_excluded.csv (empty), seriesuids.csv and submission.csv, so
/// that the official script can be run on the same inputs.
fn write_csvs(reference: &Reference, marks: &[Mark], out: &Path) -> std::io::Result<()> {
    let header = "seriesuid,coordX,coordY,coordZ,diameter_mm\n";
    let mut annotations = String::from(header);
    for n in &reference.nodules {
        let _ = writeln!(
            annotations,
            "{},{},{},{},{:.3}",
            n.series, n.center_text[0], n.center_text[1], n.center_text[2], n.diameter_mm
        );
    }
    let mut submission = String::from("seriesuid,coordX,coordY,coordZ,probability\n");
    for m in marks {
        let _ = writeln!(
            submission,
            "{},{:.3},{:.3},{:.3},{:.6}",
            m.series, m.center[0], m.center[1], m.center[2], m.probability
        );
    }
    std::fs::write(out.join("annotations.csv"), annotations)?;
    std::fs::write(out.join("annotations_excluded.csv"), header)?;
    std::fs::write(
        out.join("seriesuids.csv"),
        reference.series.join("\n") + "\n",
    )?;
    std::fs::write(out.join("submission.csv"), submission)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reported_calls_count_false_positives_among_the_negatives() {
        let rated = |median_rating: f64, called_malignant: bool| Rated {
            median_rating,
            p_malignant: if called_malignant { 0.9 } else { 0.1 },
            called_malignant,
        };
        // Two malignant nodules (one called), two benign (one called malignant), one rated 3.
        let on_nodules = [
            rated(4.5, true),
            rated(4.0, false),
            rated(1.0, true),
            rated(2.0, false),
            rated(3.0, true),
        ];
        // Four false positives, one called malignant.
        let calls = reported_calls(4, 1, &on_nodules);
        assert_eq!(
            (
                calls.false_positives,
                calls.false_positives_called_malignant
            ),
            (4, 1)
        );
        assert_eq!(
            (calls.on_nodules.malignant, calls.on_nodules.benign),
            (2, 2)
        );
        assert_eq!(calls.on_nodules.balanced_accuracy, Some(0.5));
        // Sensitivity 1/2; negatives: 2 benign and 4 false positives, 1 + 3 not called.
        let expected = (0.5 + 4.0 / 6.0) / 2.0;
        let got = calls.balanced_accuracy_with_false_positives.unwrap();
        assert!((got - expected).abs() < 1e-12, "{got}");
        // No malignant nodule reported: no sensitivity, no balanced accuracy.
        let none = reported_calls(2, 0, &on_nodules[2..4]);
        assert_eq!(none.balanced_accuracy_with_false_positives, None);
    }
}
