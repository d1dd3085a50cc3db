//! Where training and evaluation scans come from: scans on a 1 mm grid with a nodule label
//! volume and per-nodule reader ratings, from any [`Source`]: synthetic phantoms (here),
//! LUNA16 (`luna16`), LIDC-IDRI (`lidc`), and real chest CT backgrounds with inserted lesions
//! (`real`). Shared by `train` and `eval`.

pub mod lidc;
pub mod luna16;
pub mod real;

use crate::random::Rng;
use crate::synth::calibration::Calibration;
use crate::synth::render::Physics;
use crate::volume::Volume;
use crate::volume::morphology::{LabelBox, label_boxes};
use std::collections::BTreeMap;

/// One nodule of a scan's reference standard.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct NoduleLabel {
    /// Its label value in the scan's label volume.
    pub label: u8,
    /// The readers' malignancy ratings (empty where the data set has none, e.g. LUNA16).
    pub ratings: Vec<u8>,
}

impl NoduleLabel {
    /// Nodules labelled 1, 2, ... in the order of their ratings (a label volume's convention).
    pub fn numbered(ratings: impl IntoIterator<Item = Vec<u8>>) -> Vec<NoduleLabel> {
        ratings
            .into_iter()
            .enumerate()
            .map(|(n, ratings)| NoduleLabel {
                label: (n + 1) as u8,
                ratings,
            })
            .collect()
    }
}

/// A scan ready for sampling: HU and labels on one 1 mm grid (label n = nodule n, 0 elsewhere).
#[derive(Debug, Clone)]
pub struct Scan {
    pub id: String,
    pub hu: Volume<f32>,
    pub labels: Volume<u8>,
    pub nodules: Vec<NoduleLabel>,
}

/// Where scans come from. Implementations: synthetic phantoms here; LUNA16 and LIDC-IDRI
/// readers at sites that hold those data sets.
pub trait Source: Send + Sync {
    fn len(&self) -> usize;
    fn is_empty(&self) -> bool {
        self.len() == 0
    }
    fn scan(&self, index: usize) -> anyhow::Result<Scan>;
}

/// Synthetic chest phantoms (`crate::synth`), rendered on demand from `seed + index`, with 1-4
/// nodules each and LIDC-calibrated reader ratings.
pub struct SyntheticSource {
    pub seed: u64,
    pub scans: usize,
    /// Voxels of each rendered volume (1 mm), centred on the chest.
    pub size: [usize; 3],
    calibration: Calibration,
}

impl SyntheticSource {
    pub fn new(seed: u64, scans: usize, size: [usize; 3]) -> Self {
        Self {
            seed,
            scans,
            size,
            calibration: Calibration::lidc(),
        }
    }
}

impl Source for SyntheticSource {
    fn len(&self) -> usize {
        self.scans
    }

    fn scan(&self, index: usize) -> anyhow::Result<Scan> {
        let seed = self.seed.wrapping_add(index as u64);
        let count = 1 + Rng::new(seed).fork(77).below(4);
        let (hu, labels, truth) = crate::synth::study::render_training_volume(
            seed,
            self.size,
            Some(count),
            &self.calibration,
            &Physics::default(),
        );
        Ok(Scan {
            id: format!("synthetic-{seed}"),
            hu,
            labels,
            nodules: truth
                .iter()
                .map(|n| NoduleLabel {
                    label: n.label,
                    ratings: n.ratings.clone(),
                })
                .collect(),
        })
    }
}

/// The box of each nodule label the scan shows, by label.
pub fn nodule_boxes(scan: &Scan) -> BTreeMap<u32, LabelBox> {
    label_boxes(&scan.labels.data, scan.labels.geometry.size)
}
