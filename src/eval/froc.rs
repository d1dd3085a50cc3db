//! Detection evaluation exactly as the LUNA16 challenge's official script
//! (noduleCADEvaluationLUNA16.py) computes it: candidate-to-nodule matching, the CAD analysis
//! counts, the raw FROC curve (scikit-learn's `roc_curve` with its default dropping of collinear
//! points) and the CPM (mean sensitivity at 1/8 .. 8 false positives per scan).
//!
//! The script's rules, reproduced here:
//! - per scan, at most `max_marks` candidates are kept: those strictly above the
//!   (`max_marks` + 1)-th highest probability;
//! - a candidate hits a finding when its squared distance is strictly below (diameter / 2)^2, and
//!   a diameter below 0 means 10 mm;
//! - included nodules are matched first; a hit nodule scores the highest probability of its
//!   candidates, the others are double detections (neither TP nor FP);
//! - candidates on an excluded finding are ignored; every other candidate is a false positive;
//! - missed nodules count in the sensitivity's denominator.

pub use crate::luna16_csv::{
    CsvError, Finding, Mark, parse_findings, parse_marks, parse_series_list,
};
use std::fmt::Write as _;

/// Everything one evaluation needs.
#[derive(Debug, Clone, Default)]
pub struct Reference {
    /// Every scan evaluated, in order; marks and findings of other scans are ignored.
    pub series: Vec<String>,
    pub nodules: Vec<Finding>,
    pub excluded: Vec<Finding>,
}

/// One point of the raw FROC curve.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct FrocPoint {
    pub fps_per_scan: f64,
    pub sensitivity: f64,
    pub threshold: f64,
}

/// The outcome: the script's CAD analysis counts, missed nodules and the FROC curve.
#[derive(Debug, Clone)]
pub struct Analysis {
    pub true_positives: usize,
    pub false_positives: usize,
    pub false_negatives: usize,
    pub candidates: usize,
    pub nodules: usize,
    pub ignored_on_excluded: usize,
    pub double_detections: usize,
    pub scans: usize,
    pub missed: Vec<Finding>,
    pub curve: Vec<FrocPoint>,
    /// Per scored sample (detected nodules and false positives): (is nodule, probability).
    pub samples: Vec<(bool, f64)>,
}

/// The false-positive rates per scan at which the CPM reads the sensitivity.
pub const CPM_RATES: [f64; 7] = [0.125, 0.25, 0.5, 1.0, 2.0, 4.0, 8.0];

/// The LUNA16 default: at most 100 marks per scan.
pub const MAX_MARKS_PER_SCAN: usize = 100;

/// A scan's marks after the per-scan cap, in file order.
fn capped_marks<'a>(marks: &[&'a Mark], max_marks: usize) -> Vec<&'a Mark> {
    if max_marks == 0 || marks.len() <= max_marks {
        return marks.to_vec();
    }
    let mut probabilities: Vec<f64> = marks.iter().map(|m| m.probability).collect();
    probabilities.sort_by(|a, b| b.total_cmp(a));
    let threshold = probabilities[max_marks];
    marks
        .iter()
        .filter(|m| m.probability > threshold)
        .take(max_marks)
        .copied()
        .collect()
}

/// Whether `point` lies strictly inside `finding`'s sphere (a diameter below 0 means 10 mm).
pub fn hits(finding: &Finding, point: &[f64; 3]) -> bool {
    let diameter = if finding.diameter_mm < 0.0 {
        10.0
    } else {
        finding.diameter_mm
    };
    let radius_squared = (diameter / 2.0).powi(2);
    let distance_squared: f64 = (0..3).map(|a| (finding.center[a] - point[a]).powi(2)).sum();
    distance_squared < radius_squared
}

/// Runs the evaluation.
pub fn evaluate(reference: &Reference, marks: &[Mark], max_marks: usize) -> Analysis {
    let mut analysis = Analysis {
        true_positives: 0,
        false_positives: 0,
        false_negatives: 0,
        candidates: 0,
        nodules: 0,
        ignored_on_excluded: 0,
        double_detections: 0,
        scans: reference.series.len(),
        missed: Vec::new(),
        curve: Vec::new(),
        samples: Vec::new(),
    };
    for series in &reference.series {
        let in_scan: Vec<&Mark> = marks.iter().filter(|m| &m.series == series).collect();
        let kept = capped_marks(&in_scan, max_marks);
        analysis.candidates += kept.len();
        let mut remaining = vec![true; kept.len()];
        for nodule in reference.nodules.iter().filter(|f| &f.series == series) {
            analysis.nodules += 1;
            let matches: Vec<usize> = (0..kept.len())
                .filter(|&i| hits(nodule, &kept[i].center))
                .collect();
            for &i in &matches {
                remaining[i] = false;
            }
            analysis.double_detections += matches.len().saturating_sub(1);
            match matches
                .iter()
                .map(|&i| kept[i].probability)
                .reduce(f64::max)
            {
                Some(best) => {
                    analysis.true_positives += 1;
                    analysis.samples.push((true, best));
                }
                None => {
                    analysis.false_negatives += 1;
                    analysis.missed.push(nodule.clone());
                }
            }
        }
        for finding in reference.excluded.iter().filter(|f| &f.series == series) {
            for (i, mark) in kept.iter().enumerate() {
                if remaining[i] && hits(finding, &mark.center) {
                    remaining[i] = false;
                    analysis.ignored_on_excluded += 1;
                }
            }
        }
        for (i, mark) in kept.iter().enumerate() {
            if remaining[i] {
                analysis.false_positives += 1;
                analysis.samples.push((false, mark.probability));
            }
        }
    }
    analysis.curve = froc_curve(&analysis);
    analysis
}

/// scikit-learn's `roc_curve(drop_intermediate=True)` over the scored samples, scaled as the
/// script does: fps = fpr * #FP / #scans, sensitivity = tpr * #detected / #nodules.
fn froc_curve(analysis: &Analysis) -> Vec<FrocPoint> {
    let mut samples = analysis.samples.clone();
    samples.sort_by(|a, b| b.1.total_cmp(&a.1));
    // Cumulative counts at the last sample of each distinct score.
    let mut counts: Vec<(f64, f64, f64)> = Vec::new(); // (fp, tp, threshold)
    let (mut tp, mut fp) = (0.0, 0.0);
    for (i, &(positive, score)) in samples.iter().enumerate() {
        if positive {
            tp += 1.0;
        } else {
            fp += 1.0;
        }
        if i + 1 == samples.len() || samples[i + 1].1 != score {
            counts.push((fp, tp, score));
        }
    }
    if counts.len() > 2 {
        let keep: Vec<bool> = (0..counts.len())
            .map(|i| {
                i == 0
                    || i + 1 == counts.len()
                    || counts[i - 1].0 - 2.0 * counts[i].0 + counts[i + 1].0 != 0.0
                    || counts[i - 1].1 - 2.0 * counts[i].1 + counts[i + 1].1 != 0.0
            })
            .collect();
        counts = counts
            .into_iter()
            .zip(keep)
            .filter_map(|(c, k)| k.then_some(c))
            .collect();
    }
    counts.insert(0, (0.0, 0.0, f64::INFINITY));
    let (fp_total, tp_total) = counts.last().map_or((0.0, 0.0), |c| (c.0, c.1));
    let detected = analysis.true_positives as f64;
    let scans = analysis.scans.max(1) as f64;
    counts
        .into_iter()
        .map(|(fp, tp, threshold)| FrocPoint {
            fps_per_scan: if analysis.false_positives == 0 {
                0.0
            } else {
                fp / fp_total * analysis.false_positives as f64 / scans
            },
            sensitivity: if tp_total == 0.0 || analysis.nodules == 0 {
                0.0
            } else {
                tp / tp_total * detected / analysis.nodules as f64
            },
            threshold,
        })
        .collect()
}

/// `numpy.interp(x, xp, fp)` over a curve whose fps never decrease: below the first point its
/// sensitivity, above the last the last's, on a run of equal fps the last of the run.
pub fn sensitivity_at(curve: &[FrocPoint], fps: f64) -> f64 {
    let Some(first) = curve.first() else {
        return 0.0;
    };
    let last = curve[curve.len() - 1];
    if fps < first.fps_per_scan {
        return first.sensitivity;
    }
    if fps > last.fps_per_scan {
        return last.sensitivity;
    }
    let j = curve.partition_point(|p| p.fps_per_scan <= fps) - 1;
    if j + 1 == curve.len() || curve[j].fps_per_scan == fps {
        return curve[j].sensitivity;
    }
    let (a, b) = (curve[j], curve[j + 1]);
    a.sensitivity
        + (b.sensitivity - a.sensitivity) / (b.fps_per_scan - a.fps_per_scan)
            * (fps - a.fps_per_scan)
}

/// The sensitivities at [`CPM_RATES`] and their mean, the CPM.
pub fn cpm(curve: &[FrocPoint]) -> ([f64; 7], f64) {
    let at = CPM_RATES.map(|r| sensitivity_at(curve, r));
    (at, at.iter().sum::<f64>() / at.len() as f64)
}

impl Analysis {
    /// The script's CADAnalysis.txt.
    pub fn report(&self, system_name: &str) -> String {
        let stars = "*".repeat(60);
        let mut s = String::new();
        let _ = writeln!(s, "\n{stars}\nCAD Analysis: {system_name}\n{stars}\n");
        let _ = writeln!(s, "Candidate detection results:");
        let lines = [
            ("True positives", self.true_positives.to_string()),
            ("False positives", self.false_positives.to_string()),
            ("False negatives", self.false_negatives.to_string()),
            ("True negatives", "0".to_owned()),
            ("Total number of candidates", self.candidates.to_string()),
            ("Total number of nodules", self.nodules.to_string()),
            (
                "Ignored candidates on excluded nodules",
                self.ignored_on_excluded.to_string(),
            ),
            (
                "Ignored candidates which were double detections on a nodule",
                self.double_detections.to_string(),
            ),
            (
                "Sensitivity",
                format!(
                    "{:.9}",
                    self.true_positives as f64 / self.nodules.max(1) as f64
                ),
            ),
            (
                "Average number of candidates per scan",
                format!("{:.9}", self.candidates as f64 / self.scans.max(1) as f64),
            ),
        ];
        for (label, value) in lines {
            let _ = writeln!(s, "    {label}: {value}");
        }
        s
    }

    /// The raw FROC curve: fps_per_scan,sensitivity,threshold per line.
    pub fn curve_csv(&self) -> String {
        self.curve
            .iter()
            .map(|p| {
                let threshold = if p.threshold.is_infinite() {
                    "inf".to_owned()
                } else {
                    format!("{:.9}", p.threshold)
                };
                format!("{:.9},{:.9},{threshold}\n", p.fps_per_scan, p.sensitivity)
            })
            .collect()
    }

    /// The script's nodules_without_candidate list.
    pub fn missed_csv(&self) -> String {
        self.missed
            .iter()
            .map(|f| {
                format!(
                    "{},None,{},{},{},{:.9},-1\n",
                    f.series, f.center_text[0], f.center_text[1], f.center_text[2], f.diameter_mm
                )
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mark(series: &str, center: [f64; 3], probability: f64) -> Mark {
        Mark {
            series: series.into(),
            center,
            probability,
        }
    }

    fn finding(series: &str, center: [f64; 3], diameter_mm: f64) -> Finding {
        Finding {
            series: series.into(),
            center,
            diameter_mm,
            center_text: center.map(|c| c.to_string()),
        }
    }

    #[test]
    fn the_cap_keeps_marks_strictly_above_the_next_probability() {
        let marks: Vec<Mark> = [0.9, 0.5, 0.5, 0.7, 0.5]
            .iter()
            .map(|&p| mark("s", [0.0; 3], p))
            .collect();
        let refs: Vec<&Mark> = marks.iter().collect();
        let kept: Vec<f64> = capped_marks(&refs, 3)
            .iter()
            .map(|m| m.probability)
            .collect();
        // The 4th-highest is 0.5: only marks above it survive, so two, not three.
        assert_eq!(kept, [0.9, 0.7]);
        assert_eq!(capped_marks(&refs, 0).len(), 5);
    }

    #[test]
    fn distance_must_be_strictly_inside_the_radius() {
        let f = finding("s", [0.0; 3], 10.0);
        assert!(hits(&f, &[4.999, 0.0, 0.0]));
        assert!(!hits(&f, &[5.0, 0.0, 0.0]));
        let unknown_size = finding("s", [0.0; 3], -1.0);
        assert!(hits(&unknown_size, &[0.0, 4.9, 0.0]));
    }

    #[test]
    fn interpolation_follows_numpy() {
        let p = |f, s| FrocPoint {
            fps_per_scan: f,
            sensitivity: s,
            threshold: 0.0,
        };
        let curve = [
            p(0.0, 0.0),
            p(0.0, 0.25),
            p(1.0, 0.25),
            p(1.0, 0.75),
            p(2.0, 1.0),
        ];
        assert_eq!(sensitivity_at(&curve, 0.0), 0.25);
        assert_eq!(sensitivity_at(&curve, 0.5), 0.25);
        assert_eq!(sensitivity_at(&curve, 1.0), 0.75);
        assert_eq!(sensitivity_at(&curve, 1.5), 0.875);
        assert_eq!(sensitivity_at(&curve, 8.0), 1.0);
    }
}
