//! Malignancy classification metrics as the paper reports them: nodules with a median rating
//! M < 3 are benign, M > 3 malignant, M = 3 uncertain and left out. Accuracy, sensitivity
//! (malignant recall), specificity (benign recall), balanced accuracy, and the ROC AUC of
//! p(malignant) (Mann-Whitney, ties counted half).

use serde::Serialize;

/// One detected nodule with its reference rating and the model's output.
#[derive(Debug, Clone, Copy)]
pub struct Rated {
    /// Median of the readers' malignancy ratings (1-5).
    pub median_rating: f64,
    pub p_malignant: f64,
    pub called_malignant: bool,
}

/// The metrics; `None` where a class is absent and the metric is undefined.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Metrics {
    pub benign: usize,
    pub malignant: usize,
    pub uncertain_excluded: usize,
    pub accuracy: Option<f64>,
    pub sensitivity: Option<f64>,
    pub specificity: Option<f64>,
    pub balanced_accuracy: Option<f64>,
    pub auc: Option<f64>,
}

/// Computes the metrics over `nodules`.
pub fn metrics(nodules: &[Rated]) -> Metrics {
    let labelled: Vec<(bool, &Rated)> = nodules
        .iter()
        .filter_map(|n| crate::malignancy::class(n.median_rating).map(|c| (c, n)))
        .collect();
    let malignant = labelled.iter().filter(|(c, _)| *c).count();
    let benign = labelled.len() - malignant;
    let true_pos = labelled
        .iter()
        .filter(|(c, n)| *c && n.called_malignant)
        .count();
    let true_neg = labelled
        .iter()
        .filter(|(c, n)| !*c && !n.called_malignant)
        .count();
    let ratio = |num: usize, den: usize| (den > 0).then(|| num as f64 / den as f64);
    let sensitivity = ratio(true_pos, malignant);
    let specificity = ratio(true_neg, benign);
    let balanced_accuracy = match (sensitivity, specificity) {
        (Some(a), Some(b)) => Some((a + b) / 2.0),
        _ => None,
    };
    let auc = (malignant > 0 && benign > 0).then(|| {
        let mut wins = 0.0;
        for (_, m) in labelled.iter().filter(|(c, _)| *c) {
            for (_, b) in labelled.iter().filter(|(c, _)| !*c) {
                wins += if m.p_malignant > b.p_malignant {
                    1.0
                } else if m.p_malignant == b.p_malignant {
                    0.5
                } else {
                    0.0
                };
            }
        }
        wins / (malignant * benign) as f64
    });
    Metrics {
        benign,
        malignant,
        uncertain_excluded: nodules.len() - labelled.len(),
        accuracy: ratio(true_pos + true_neg, labelled.len()),
        sensitivity,
        specificity,
        balanced_accuracy,
        auc,
    }
}

/// A rated nodule called malignant above 0.5, for tests.
#[cfg(test)]
pub(crate) fn rated(median_rating: f64, p_malignant: f64) -> Rated {
    Rated {
        median_rating,
        p_malignant,
        called_malignant: p_malignant > 0.5,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hand_computed_metrics_leave_out_uncertain_nodules() {
        let nodules = [
            rated(5.0, 0.9),
            rated(4.0, 0.4), // missed malignant
            rated(3.5, 0.7),
            rated(1.0, 0.1),
            rated(2.0, 0.6), // false alarm
            rated(2.5, 0.2),
            rated(3.0, 0.99), // uncertain: not counted
        ];
        let m = metrics(&nodules);
        assert_eq!((m.malignant, m.benign, m.uncertain_excluded), (3, 3, 1));
        assert_eq!(m.sensitivity, Some(2.0 / 3.0));
        assert_eq!(m.specificity, Some(2.0 / 3.0));
        assert_eq!(m.accuracy, Some(4.0 / 6.0));
        assert_eq!(m.balanced_accuracy, Some(2.0 / 3.0));
        // Pairs (malignant p, benign p): 0.9 beats all 3; 0.4 beats 0.1 and 0.2; 0.7 beats all 3.
        assert_eq!(m.auc, Some(8.0 / 9.0));
    }

    #[test]
    fn missing_classes_give_undefined_metrics() {
        let m = metrics(&[rated(5.0, 0.9), rated(3.0, 0.1)]);
        assert_eq!(m.specificity, None);
        assert_eq!(m.auc, None);
        assert_eq!(m.sensitivity, Some(1.0));
    }
}
