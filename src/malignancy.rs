//! Malignancy labels as LIDC-IDRI and the paper define them (section IV.D): the malignancy score
//! M is the median of the readers' ratings (1-5); M < 3 benign, M > 3 malignant, M = 3
//! uncertain; a nodule is marginal when only 1-2 readers rated it and 2 <= M <= 4; its soft label
//! is T = 0.25 (M - 1). Used by the phantom's ground truth, training and evaluation.

/// Median of the ratings (mean of the two middle ones for an even count); 0 without ratings.
pub fn score(ratings: &[u8]) -> f64 {
    let mut r = ratings.to_vec();
    r.sort_unstable();
    let n = r.len();
    match n {
        0 => 0.0,
        _ if n % 2 == 1 => f64::from(r[n / 2]),
        _ => (f64::from(r[n / 2 - 1]) + f64::from(r[n / 2])) / 2.0,
    }
}

/// The paper's soft label T = 0.25 (M - 1), in [0, 1] for M in [1, 5].
pub fn soft_label(score: f64) -> f64 {
    0.25 * (score - 1.0)
}

/// Rated by only one or two readers with 2 <= M <= 4.
pub fn is_marginal(ratings: &[u8]) -> bool {
    (1..=2).contains(&ratings.len()) && (2.0..=4.0).contains(&score(ratings))
}

/// The reference class of a score: Some(true) malignant (M > 3), Some(false) benign (M < 3),
/// None for M = 3 (left out of evaluation).
pub fn class(score: f64) -> Option<bool> {
    if score > 3.0 {
        Some(true)
    } else if score < 3.0 {
        Some(false)
    } else {
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scores_classes_and_marginal_nodules() {
        assert_eq!(score(&[2, 5, 3]), 3.0);
        assert_eq!(score(&[2, 5]), 3.5);
        assert_eq!(score(&[]), 0.0);
        assert_eq!(soft_label(1.0), 0.0);
        assert_eq!(soft_label(3.5), 0.625);
        assert_eq!(soft_label(5.0), 1.0);
        assert!(is_marginal(&[3]));
        assert!(is_marginal(&[2, 4]));
        assert!(!is_marginal(&[1]), "M = 1 is not marginal");
        assert!(!is_marginal(&[3, 3, 3]), "three readers");
        assert!(!is_marginal(&[]), "no readers");
        assert_eq!(class(3.5), Some(true));
        assert_eq!(class(2.5), Some(false));
        assert_eq!(class(3.0), None);
    }
}
