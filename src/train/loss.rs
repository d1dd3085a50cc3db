//! The losses (paper section IV.E): class-weighted per-voxel cross-entropy for the segmentation
//! (nodule voxels up-weighted, as the paper's intent reads), and class-weighted cross-entropy over
//! {non-nodule, benign, malignant} for the candidates, with a target distribution per candidate:
//! non-nodule (1, 0, 0); a nodule whose malignancy target is t: (0, 1 - t, t), where t is the hard
//! class, the soft label T or the pseudo-label q (see `LabelMode`); a nodule of unknown malignancy
//! (M = 3 in hard mode, or no ratings) only "is a nodule": -log(p_benign + p_malignant).
//! With self-distillation the segmentation target is soft (`soft_segmentation_loss`).

use candle_core::{D, Result, Tensor};

/// What a candidate should be classified as.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum ClassTarget {
    NonNodule,
    /// A nodule with target probability of malignancy.
    Nodule {
        malignancy: f64,
    },
    /// A nodule whose malignancy is not used.
    NoduleOnly,
}

/// Mean over voxels of w * BCE(logit, target), w = `positive_weight` on nodule voxels and 1
/// elsewhere, divided by the mean weight (PyTorch's weighted mean). `target`: 0/1, same shape.
pub fn segmentation_loss(logits: &Tensor, target: &Tensor, positive_weight: f64) -> Result<Tensor> {
    soft_segmentation_loss(logits, target, target, positive_weight)
}

/// `segmentation_loss` against a soft `target` (probabilities), the voxels weighted by the
/// 0/1 `labels` (self-distillation: the target blends the labels with a teacher's output).
pub fn soft_segmentation_loss(
    logits: &Tensor,
    target: &Tensor,
    labels: &Tensor,
    positive_weight: f64,
) -> Result<Tensor> {
    // Stable BCE with logits: max(x, 0) - x t + log(1 + exp(-|x|)).
    let bce =
        ((logits.relu()? - (logits * target)?)? + ((logits.abs()?.neg()?.exp()? + 1.0)?.log()?))?;
    let weights = ((labels * (positive_weight - 1.0))? + 1.0)?;
    (bce * &weights)?.sum_all()? / weights.sum_all()?.to_scalar::<f32>()? as f64
}

/// Class-weighted cross-entropy of class logits [K, 3] against `targets` (K of them), the
/// weighted mean as PyTorch's `CrossEntropyLoss(weight=...)` with soft targets computes it.
pub fn classification_loss(
    logits: &Tensor,
    targets: &[ClassTarget],
    class_weights: [f64; 3],
) -> Result<Tensor> {
    let log_p = candle_nn::ops::log_softmax(logits, D::Minus1)?;
    let k = targets.len();
    // Per candidate: coefficients on log p0, log p1, log p2, and on log(p1 + p2).
    let mut on_classes = Vec::with_capacity(k * 3);
    let mut on_nodule = Vec::with_capacity(k);
    let mut weight_sum = 0.0;
    for t in targets {
        let (c, n) = match *t {
            ClassTarget::NonNodule => ([class_weights[0], 0.0, 0.0], 0.0),
            ClassTarget::Nodule { malignancy } => (
                [
                    0.0,
                    class_weights[1] * (1.0 - malignancy),
                    class_weights[2] * malignancy,
                ],
                0.0,
            ),
            ClassTarget::NoduleOnly => ([0.0; 3], (class_weights[1] + class_weights[2]) / 2.0),
        };
        weight_sum += c.iter().sum::<f64>() + n;
        on_classes.extend(c.map(|v| v as f32));
        on_nodule.push(n as f32);
    }
    let device = logits.device();
    let on_classes = Tensor::from_vec(on_classes, (k, 3), device)?;
    let on_nodule = Tensor::from_vec(on_nodule, (k, 1), device)?;
    // log(p1 + p2) = logsumexp of the two log-probabilities.
    let nodule_log_p = log_p.narrow(1, 1, 2)?.exp()?.sum_keepdim(1)?.log()?;
    let total = ((log_p * on_classes)?.sum_all()? + (nodule_log_p * on_nodule)?.sum_all()?)?;
    total.neg()? / weight_sum.max(1e-12)
}

/// p(malignant | nodule) = p2 / (p1 + p2) of each row of class logits: the p_i of the paper's
/// binary malignancy loss, read off the 3-class softmax.
pub fn conditional_malignancy(logits: &Tensor) -> Result<Vec<f64>> {
    let p = candle_nn::ops::softmax(logits, D::Minus1)?.to_vec2::<f32>()?;
    Ok(p.iter()
        .map(|r| f64::from(r[2]) / f64::from(r[1] + r[2]).max(1e-12))
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    #[test]
    fn segmentation_loss_matches_a_hand_computation() {
        let logits = Tensor::new(&[2.0f32, -1.0, 0.0, 3.0], &Device::Cpu).unwrap();
        let target = Tensor::new(&[1.0f32, 0.0, 1.0, 0.0], &Device::Cpu).unwrap();
        let loss = segmentation_loss(&logits, &target, 3.0)
            .unwrap()
            .to_scalar::<f32>()
            .unwrap();
        let bce = |x: f64, t: f64| {
            let p = 1.0 / (1.0 + (-x).exp());
            -(t * p.ln() + (1.0 - t) * (1.0 - p).ln())
        };
        let expected =
            (3.0 * bce(2.0, 1.0) + bce(-1.0, 0.0) + 3.0 * bce(0.0, 1.0) + bce(3.0, 0.0)) / 8.0;
        assert!(
            (f64::from(loss) - expected).abs() < 1e-6,
            "{loss} vs {expected}"
        );
    }

    #[test]
    fn classification_loss_matches_a_hand_computation() {
        let logits = Tensor::new(
            &[[1.0f32, 0.5, -0.5], [0.0, 1.0, 2.0], [0.2, 0.1, 0.3]],
            &Device::Cpu,
        )
        .unwrap();
        let targets = [
            ClassTarget::NonNodule,
            ClassTarget::Nodule { malignancy: 0.75 },
            ClassTarget::NoduleOnly,
        ];
        let w = [0.1, 0.55, 0.35];
        let loss = classification_loss(&logits, &targets, w)
            .unwrap()
            .to_scalar::<f32>()
            .unwrap();
        let softmax = |r: [f64; 3]| {
            let m = r.iter().map(|v| v.exp()).sum::<f64>();
            r.map(|v| v.exp() / m)
        };
        let (a, b, c) = (
            softmax([1.0, 0.5, -0.5]),
            softmax([0.0, 1.0, 2.0]),
            softmax([0.2, 0.1, 0.3]),
        );
        let num = -(0.1 * a[0].ln()
            + 0.55 * 0.25 * b[1].ln()
            + 0.35 * 0.75 * b[2].ln()
            + 0.45 * (c[1] + c[2]).ln());
        let den = 0.1 + 0.55 * 0.25 + 0.35 * 0.75 + 0.45;
        assert!((f64::from(loss) - num / den).abs() < 1e-6);
        let p = conditional_malignancy(&logits).unwrap();
        assert!((p[1] - b[2] / (b[1] + b[2])).abs() < 1e-6);
    }
}
