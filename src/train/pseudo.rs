//! Labels of marginal nodules in training (paper section IV.D): hard, soft (T = 0.25 (M - 1),
//! see `crate::malignancy`) or pseudo-labels q that start at T and follow projected gradient
//! descent on L~ = -[q log p + (1 - q) log(1 - p)] + alpha (q - T)^2 (equations 4-8).

use serde::{Deserialize, Serialize};

/// How marginal nodules are labelled in training (the paper's ablation).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum LabelMode {
    /// Benign or malignant from M; M = 3 left out of the classification loss.
    Hard,
    /// The soft label T = 0.25 (M - 1) as the target probability of malignancy.
    Soft,
    /// Pseudo-labels initialised to T and updated once per epoch after the warm-up.
    Pseudo,
}

/// dL~/dq = log((1 - p) / p) + 2 alpha (q - T) (equation 6); p is clamped away from 0 and 1.
pub fn pseudo_gradient(q: f64, p: f64, target: f64, alpha: f64) -> f64 {
    let p = p.clamp(1e-6, 1.0 - 1e-6);
    ((1.0 - p) / p).ln() + 2.0 * alpha * (q - target)
}

/// One projected gradient step (equations 7-8): q - rate * dL~/dq, clipped to [0, 1].
pub fn update_pseudo_label(q: f64, p: f64, target: f64, alpha: f64, rate: f64) -> f64 {
    (q - rate * pseudo_gradient(q, p, target, alpha)).clamp(0.0, 1.0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_update_follows_equations_6_to_8_by_hand() {
        // q = T = 0.5 (M = 3), p = 0.7, alpha = 10, r2 = 0.1:
        // dL/dq = ln(0.3 / 0.7) + 20 * 0 = -0.847298; q' = 0.5 + 0.0847298 = 0.5847298.
        // A prediction agreeing with "malignant" raises q, as the paper says.
        let q = update_pseudo_label(0.5, 0.7, 0.5, 10.0, 0.1);
        assert!((q - 0.584_729_8).abs() < 1e-6, "{q}");
        // q = 0.9 far above T = 0.5 with p = 0.6: ln(0.4 / 0.6) + 20 * 0.4 = 7.594535;
        // q' = 0.9 - 0.7594535 = 0.1405465: the alpha term pulls q back towards T.
        let q = update_pseudo_label(0.9, 0.6, 0.5, 10.0, 0.1);
        assert!((q - 0.140_546_5).abs() < 1e-6, "{q}");
        // A step past the bounds is projected onto [0, 1].
        assert_eq!(update_pseudo_label(0.95, 0.999, 0.75, 0.0, 1.0), 1.0);
        assert_eq!(update_pseudo_label(0.05, 0.001, 0.25, 0.0, 1.0), 0.0);
    }

    #[test]
    fn pseudo_labels_stay_in_the_unit_interval_under_many_updates() {
        let mut rng = crate::random::Rng::new(3);
        for _ in 0..200 {
            let target = crate::malignancy::soft_label(rng.range(1.0, 5.0));
            let mut q = target;
            for _ in 0..50 {
                let p = rng.uniform();
                q = update_pseudo_label(q, p, target, rng.range(0.0, 20.0), rng.range(0.0, 2.0));
                assert!((0.0..=1.0).contains(&q), "{q}");
            }
        }
    }
}
