//! Real chest CT backgrounds as training data, mixed with phantoms. Each real scan is a real
//! series with 1-3 LIDC-calibrated synthetic nodules inserted on its own acquired grid, with its
//! own measured point-spread function and under its own noise (`synth::insert`), then resampled
//! to 1 mm as analysis resamples. The nodules a background is known to hold (its `truth.json`,
//! as `../shared/data/real-ct` has) are labelled as nodules with their readers' ratings, never
//! left as background, and inserted nodules keep clear of them. Everything else in a real scan
//! (vessels, fissures, airways, pleura, scars) is the real non-nodule class.
//!
//! A background is a folder holding DICOM files, or a study folder with `dicom/` and
//! `truth.json`. Scan n is a phantom for n below the phantom count, otherwise an insertion into
//! background (n - phantoms) mod backgrounds, from its own seed: the same index gives the same
//! scan bit for bit.

use super::data::{NoduleLabel, Scan, Source, SyntheticSource};
use crate::synth::calibration::Calibration;
use crate::synth::insert::{Background, add_lesions, background_folder, draw_clear_of};
use crate::synth::study::KnownNodule;
use crate::synth::lesion::Lesion;
use crate::synth::nodules::Lungs;
use crate::synth::random::Rng;
use crate::volume::Volume;
use crate::volume::geometry::{Geometry, Vec3};
use crate::volume::resample::{Interpolation, resample_isotropic};
use std::path::PathBuf;
use std::sync::OnceLock;

/// Voxels kept around the lungs' bounding box when a real scan is cropped for training.
const CROP_MARGIN: usize = 12;

struct Entry {
    dir: PathBuf,
    dicom: PathBuf,
    known: Vec<KnownNodule>,
    loaded: OnceLock<Result<Background, String>>,
}

impl Entry {
    fn background(&self) -> anyhow::Result<&Background> {
        self.loaded
            .get_or_init(|| Background::load(&self.dicom).map_err(|e| format!("{e:#}")))
            .as_ref()
            .map_err(|e| anyhow::anyhow!("background {}: {e}", self.dir.display()))
    }
}

/// Phantoms and real backgrounds with inserted nodules.
pub struct RealBackgroundSource {
    seed: u64,
    phantoms: SyntheticSource,
    real_scans: usize,
    backgrounds: Vec<Entry>,
    calibration: Calibration,
}

impl RealBackgroundSource {
    /// `scans` in all, a `phantom_fraction` of them phantoms of `phantom_size`, the rest
    /// insertions into `backgrounds` in turn.
    pub fn open(
        seed: u64,
        scans: usize,
        phantom_fraction: f64,
        phantom_size: [usize; 3],
        backgrounds: &[PathBuf],
    ) -> anyhow::Result<Self> {
        anyhow::ensure!(
            (0.0..=1.0).contains(&phantom_fraction),
            "phantom_fraction must be within 0-1"
        );
        let phantoms = (scans as f64 * phantom_fraction).round() as usize;
        anyhow::ensure!(
            phantoms == scans || !backgrounds.is_empty(),
            "real scans asked for, but no backgrounds listed"
        );
        let backgrounds = backgrounds
            .iter()
            .map(|dir| {
                let (dicom, known) = background_folder(dir)?;
                Ok(Entry {
                    dir: dir.clone(),
                    dicom,
                    known,
                    loaded: OnceLock::new(),
                })
            })
            .collect::<anyhow::Result<Vec<_>>>()?;
        Ok(Self {
            seed,
            phantoms: SyntheticSource::new(seed, phantoms, phantom_size),
            real_scans: scans - phantoms,
            backgrounds,
            calibration: Calibration::lidc(),
        })
    }

    fn real_scan(&self, n: usize) -> anyhow::Result<Scan> {
        let entry = &self.backgrounds[n % self.backgrounds.len()];
        let background = entry.background()?;
        let seed = self
            .seed
            .wrapping_mul(1_000_003)
            .wrapping_add(500_000 + n as u64);
        insert_training_scan(
            background,
            &entry.known,
            &self.calibration,
            seed,
            &format!("{}+{seed}", entry.dir.display()),
        )
    }
}

impl Source for RealBackgroundSource {
    fn len(&self) -> usize {
        self.phantoms.scans + self.real_scans
    }

    fn scan(&self, index: usize) -> anyhow::Result<Scan> {
        if index < self.phantoms.scans {
            self.phantoms.scan(index)
        } else {
            self.real_scan(index - self.phantoms.scans)
        }
    }
}

/// One training scan from a background: 1-3 nodules inserted (drawn from `seed`), the known
/// nodules labelled 1..=k as spheres of their diameter, the inserted ones k+1.., on the 1 mm grid
/// cropped to the lungs.
pub fn insert_training_scan(
    background: &Background,
    known: &[KnownNodule],
    calibration: &Calibration,
    seed: u64,
    id: &str,
) -> anyhow::Result<Scan> {
    let lungs = background.segmented_lungs();
    let mut rng = Rng::new(seed);
    let count = 1 + rng.below(3);
    let nodules = draw_clear_of(&lungs, known, calibration, count, &mut rng);
    let lesions: Vec<&dyn Lesion> = nodules.iter().map(|n| n as &dyn Lesion).collect();
    let mut series = background.series.clone();
    add_lesions(
        &mut series,
        &lesions,
        &|p| lungs.in_lung(p),
        background.parenchyma_hu,
        background.psf_sigma_mm,
    );
    let hu = resample_isotropic(&series, 1.0, Interpolation::BSpline);
    drop(series);
    let g = hu.geometry;
    debug_assert_eq!(g, background.hu_1mm.geometry);
    let mut labels = Volume::filled(g, 0u8);
    let mut ratings = Vec::new();
    for (n, k) in known.iter().enumerate() {
        let r = k.diameter_mm / 2.0;
        paint(&mut labels, (n + 1) as u8, (sub(k.center_mm, r), add(k.center_mm, r)), |p| {
            distance(p, k.center_mm) <= r
        });
        ratings.push(k.ratings.clone());
    }
    for nodule in &nodules {
        let label = (ratings.len() + 1) as u8;
        paint(&mut labels, label, nodule.bounds(), |p| {
            nodule.contains(p) && lungs.in_lung(p)
        });
        ratings.push(nodule.ratings.clone());
    }
    let b = background.lung_box;
    let lo = b.min.map(|v| v.saturating_sub(CROP_MARGIN));
    let hi = [0, 1, 2].map(|a| (b.max[a] + CROP_MARGIN).min(g.size[a] - 1));
    Ok(Scan {
        id: id.to_owned(),
        hu: crop(&hu, lo, hi),
        labels: crop(&labels, lo, hi),
        nodules: ratings
            .into_iter()
            .enumerate()
            .map(|(n, ratings)| NoduleLabel {
                label: (n + 1) as u8,
                ratings,
            })
            .collect(),
    })
}

/// Sets `label` on every voxel of `bounds` (patient mm) whose centre `inside` accepts, unless
/// an earlier label holds it.
fn paint(
    labels: &mut Volume<u8>,
    label: u8,
    bounds: (Vec3, Vec3),
    inside: impl Fn(Vec3) -> bool,
) {
    let g = labels.geometry;
    let (a, b) = (g.patient_to_index(bounds.0), g.patient_to_index(bounds.1));
    let range = |axis: usize| {
        let lo = a[axis].min(b[axis]).floor().max(0.0) as usize;
        let hi = (a[axis].max(b[axis]).ceil() as usize).min(g.size[axis] - 1);
        lo..=hi
    };
    for k in range(2) {
        for j in range(1) {
            for i in range(0) {
                let at = g.offset(i, j, k);
                if labels.data[at] == 0 && inside(g.index_to_patient([i, j, k].map(|v| v as f64)))
                {
                    labels.data[at] = label;
                }
            }
        }
    }
}

/// The sub-volume `lo..=hi` (voxel indices) of a volume.
pub fn crop<T: Copy>(volume: &Volume<T>, lo: [usize; 3], hi: [usize; 3]) -> Volume<T> {
    let size = [0, 1, 2].map(|a| hi[a] - lo[a] + 1);
    let mut data = Vec::with_capacity(size.iter().product());
    for k in lo[2]..=hi[2] {
        for j in lo[1]..=hi[1] {
            let start = volume.geometry.offset(lo[0], j, k);
            data.extend_from_slice(&volume.data[start..start + size[0]]);
        }
    }
    let geometry = Geometry {
        origin: volume
            .geometry
            .index_to_patient(lo.map(|v| v as f64)),
        size,
        ..volume.geometry
    };
    Volume { geometry, data }
}

fn distance(a: Vec3, b: Vec3) -> f64 {
    (0..3).map(|i| (a[i] - b[i]).powi(2)).sum::<f64>().sqrt()
}

fn sub(a: Vec3, r: f64) -> Vec3 {
    a.map(|v| v - r)
}

fn add(a: Vec3, r: f64) -> Vec3 {
    a.map(|v| v + r)
}
