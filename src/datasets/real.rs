//! Real chest CT backgrounds as training data, mixed with phantoms. Each real scan is a real
//! series with 1-3 lesions inserted on its own acquired grid, with its own measured point-spread
//! function and under its own noise (`synth::insert`), then resampled to 1 mm as analysis
//! resamples. The lesions are LIDC-calibrated synthetic nodules or, for a configured fraction of
//! them, real LIDC-IDRI reader outlines (`synth::lidc_shapes`) of training patients only. The
//! nodules a background is known to hold (its `truth.json`, as `../shared/data/real-ct` has) are
//! labelled as nodules with their readers' ratings, never left as background, and inserted
//! lesions keep clear of them. Everything else in a real scan (vessels, fissures, airways,
//! pleura, scars) is the real non-nodule class.
//!
//! A background is a folder holding DICOM files, or a study folder with `dicom/` and
//! `truth.json`. Scan n is a phantom for n below the phantom count, otherwise an insertion into
//! background (n - phantoms) mod backgrounds, from its own seed: the same index gives the same
//! scan bit for bit.
//!
//! Real shapes (`TrainingShapes`): of the 1-3 lesions of a real scan, each is a real shape with
//! probability `shape_fraction` (no random number is drawn for this when the fraction is 0, so
//! such a configuration trains exactly as before shapes existed). A shape is a nodule of the
//! library drawn uniformly among those of 3-30 mm of patients that `is_validation_patient` does
//! not hold out, with its 50% consensus outline or, with probability 1/2, one of its readers' own
//! outlines at random (readers disagree on the extent of a nodule; its label stays that of all of
//! its readers, the paper's setting), turned by a random multiple of 90 degrees about z and
//! mirrored with probability 1/2, its centroid at a random parenchyma point where every voxel of
//! it lies in the lung mask and it keeps `CLEARANCE_MM` from the surface of the known nodules and
//! of the other lesions (`place_shape`; up to `SHAPE_TRIES` nodules, each at up to
//! `PLACEMENT_TRIES` points, else the lesion is left out). It is labelled, as the phantoms are,
//! on the 1 mm voxels whose centre is inside it and in the parenchyma, with the malignancy
//! ratings of all of its readers.
//!
//! Cavities (`TrainingShapes::with_cavities`): a `cavity_fraction` of the solid, uncalcified
//! shapes is hollowed (`PlacedShape::hollow`: a wall of 1-3 mm, uniform, around air), keeping
//! its readers' labels. LIDC-IDRI's readers rate air inside only 20 of its 2,648 nodules, and
//! nothing else in training is a thin-walled ring, which the classification path otherwise
//! learns from the real backgrounds only as an airway: a non-nodule. No random number is drawn
//! for this at fraction 0.

use crate::datasets::{NoduleLabel, Scan, Source, SyntheticSource};
use crate::random::Rng;
use crate::synth::calibration::Calibration;
use crate::synth::insert::{Background, add_lesions, background_folder, draw_clear_of};
use crate::synth::lesion::Lesion;
use crate::synth::lidc_shapes::{
    Calcification, LidcNodule, Mask, PlacedShape, Placement, ShapeLibrary, Texture,
};
use crate::synth::nodules::{Lungs, Nodule};
use crate::synth::study::KnownNodule;
use crate::volume::Volume;
use crate::volume::geometry::{Geometry, Vec3};
use crate::volume::resample::{Interpolation, resample_isotropic};
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

/// Voxels kept around the lungs' bounding box when a real scan is cropped for training.
const CROP_MARGIN: usize = 12;
/// Inserted shapes keep this far (mm) from the surface of known nodules and of other lesions
/// (what `synth::insert` keeps from known nodules, and phantoms from each other).
pub const CLEARANCE_MM: f64 = 10.0;
/// Library nodules used as shapes: mean reader diameter within this range, mm.
pub const SHAPE_DIAMETERS_MM: (f64, f64) = (3.0, 30.0);
/// Nodules drawn for one shape lesion before it is left out.
const SHAPE_TRIES: usize = 3;
/// Parenchyma points tried for one shape.
pub const PLACEMENT_TRIES: usize = 60;

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

/// Real LIDC-IDRI nodule shapes for training: the library's nodules of 3-30 mm of the patients
/// it does not hold out for validation.
pub struct TrainingShapes {
    nodules: Vec<LidcNodule>,
    /// Probability that an inserted lesion is a real shape (else a phantom nodule).
    pub fraction: f64,
    /// Patients held out (`is_validation_patient`), percent.
    pub validation_percent: u32,
    /// Probability that a solid, uncalcified shape is made cavitary.
    pub cavity_fraction: f64,
}

impl TrainingShapes {
    /// Reads the library at `path` and keeps its training nodules.
    pub fn load(path: &Path, fraction: f64, validation_percent: u32) -> anyhow::Result<Self> {
        let library = ShapeLibrary::load(path)?;
        Self::from_library(&library, fraction, validation_percent)
            .map_err(|e| e.context(path.display().to_string()))
    }

    /// The training nodules of `library`.
    pub fn from_library(
        library: &ShapeLibrary,
        fraction: f64,
        validation_percent: u32,
    ) -> anyhow::Result<Self> {
        anyhow::ensure!(
            (0.0..=1.0).contains(&fraction),
            "shape_fraction must be within 0-1"
        );
        anyhow::ensure!(
            validation_percent <= 100,
            "shape_validation_percent must be within 0-100"
        );
        let (training, _) = library.split(validation_percent);
        let nodules: Vec<LidcNodule> = training
            .into_iter()
            .filter(|n| is_shape_size(n.diameter_mm))
            .cloned()
            .collect();
        anyhow::ensure!(
            fraction == 0.0 || !nodules.is_empty(),
            "the shape library holds no training nodule of {}-{} mm",
            SHAPE_DIAMETERS_MM.0,
            SHAPE_DIAMETERS_MM.1
        );
        Ok(Self {
            nodules,
            fraction,
            validation_percent,
            cavity_fraction: 0.0,
        })
    }

    /// The same shapes, a `fraction` of the solid uncalcified ones hollowed (module doc).
    pub fn with_cavities(self, fraction: f64) -> anyhow::Result<Self> {
        anyhow::ensure!(
            (0.0..=1.0).contains(&fraction),
            "cavity_fraction must be within 0-1"
        );
        Ok(Self {
            cavity_fraction: fraction,
            ..self
        })
    }

    /// The nodules shapes are drawn from.
    pub fn nodules(&self) -> &[LidcNodule] {
        &self.nodules
    }
}

/// Patients held out of the shapes by default, percent (`shape_validation_percent`).
/// The calibration set's patients (`synth::lidc_shapes::CALIBRATION_PERCENT`).
pub const DEFAULT_SHAPE_VALIDATION_PERCENT: u32 = crate::synth::lidc_shapes::CALIBRATION_PERCENT;

/// Serde default of `shape_validation_percent`.
pub fn default_shape_validation_percent() -> u32 {
    DEFAULT_SHAPE_VALIDATION_PERCENT
}

/// Whether `shape_validation_percent` is the default (left out of the serialised
/// configuration, so a configuration without the shape keys serialises as before they existed).
pub fn is_default_shape_validation_percent(percent: &u32) -> bool {
    *percent == DEFAULT_SHAPE_VALIDATION_PERCENT
}

/// Whether `shape_fraction` is 0 (left out of the serialised configuration).
pub fn is_zero(fraction: &f64) -> bool {
    *fraction == 0.0
}

/// Whether a nodule's mean reader diameter is within `SHAPE_DIAMETERS_MM`.
pub fn is_shape_size(diameter_mm: f64) -> bool {
    (SHAPE_DIAMETERS_MM.0..=SHAPE_DIAMETERS_MM.1).contains(&diameter_mm)
}

/// A lesion inserted into a background, with its label's ratings.
pub enum InsertedLesion {
    /// An LIDC-calibrated phantom nodule, with its simulated readers' ratings.
    Phantom(Nodule),
    /// A real LIDC-IDRI outline with the malignancy ratings of all of the nodule's readers.
    Shape {
        shape: PlacedShape,
        ratings: Vec<u8>,
        patient_id: String,
        nodule_index: u32,
        /// The reader whose own outline it is; `None`: the 50% consensus.
        reader: Option<usize>,
    },
}

impl InsertedLesion {
    pub fn lesion(&self) -> &dyn Lesion {
        match self {
            InsertedLesion::Phantom(n) => n,
            InsertedLesion::Shape { shape, .. } => shape,
        }
    }

    pub fn ratings(&self) -> &[u8] {
        match self {
            InsertedLesion::Phantom(n) => &n.ratings,
            InsertedLesion::Shape { ratings, .. } => ratings,
        }
    }

    /// A sphere holding it (centre, radius mm), for clearances.
    fn sphere(&self) -> (Vec3, f64) {
        match self {
            InsertedLesion::Phantom(n) => (n.centre, n.nominal_diameter_mm / 2.0),
            InsertedLesion::Shape { shape, .. } => {
                (shape.placement().centre, shape_radius_mm(shape.mask()))
            }
        }
    }
}

/// The radius (mm) of a sphere about the centroid holding every voxel of a 1 mm mask from
/// `Mask::to_isotropic_1mm`.
pub fn shape_radius_mm(mask: &Mask) -> f64 {
    let farthest = mask
        .points()
        .map(|p| p.map(|v| v as f64 * v as f64).iter().sum::<f64>())
        .fold(0.0, f64::max)
        .sqrt();
    farthest + 3f64.sqrt() / 2.0
}

/// A placement of the 1 mm mask `mask` (from `Mask::to_isotropic_1mm`): a random multiple of 90
/// degrees about z and a mirror with probability 1/2, its centroid at a random parenchyma point
/// of `lungs` where every voxel of it is in `lung_mask` (value 1) and it keeps `CLEARANCE_MM`
/// from the surface of every sphere (centre, radius mm) of `taken`. `None` when none of
/// `PLACEMENT_TRIES` points will do.
pub fn place_shape(
    lungs: &impl Lungs,
    lung_mask: &Volume<u8>,
    mask: &Mask,
    taken: &[(Vec3, f64)],
    rng: &mut Rng,
) -> Option<Placement> {
    let quarter_turns = rng.below(4) as u8;
    let flip = rng.below(2) == 1;
    let radius = shape_radius_mm(mask);
    for _ in 0..PLACEMENT_TRIES {
        let placement = Placement {
            centre: lungs.random_point(rng),
            quarter_turns,
            flip,
        };
        let clear = taken
            .iter()
            .all(|&(c, r)| distance(c, placement.centre) > r + radius + CLEARANCE_MM);
        if clear
            && mask.points().all(|m| {
                let d = placement.forward(m.map(|v| v as f64));
                let p = [0, 1, 2].map(|a| placement.centre[a] + d[a]);
                lung_mask.nearest(p) == Some(1)
            })
        {
            return Some(placement);
        }
    }
    None
}

/// The lesions of one training scan, drawn from `rng`: 1-3 of them, each a real shape of
/// `shapes` with probability `shapes.fraction` (see the module doc), the others LIDC-calibrated
/// phantoms placed by `draw_clear_of`, juxta-vascular ones on the background's vessels if
/// `juxta_vascular` (`Background::insertion_lungs`). Without shapes (or at fraction 0) and
/// without `juxta_vascular` it draws exactly what training drew before either existed.
pub fn draw_training_lesions(
    background: &Background,
    known: &[KnownNodule],
    calibration: &Calibration,
    shapes: Option<&TrainingShapes>,
    juxta_vascular: bool,
    rng: &mut Rng,
) -> Vec<InsertedLesion> {
    let lungs = background.insertion_lungs(juxta_vascular);
    let count = 1 + rng.below(3);
    let shapes = shapes.filter(|s| s.fraction > 0.0 && !s.nodules.is_empty());
    let shape_count = match shapes {
        Some(s) => (0..count).filter(|_| rng.uniform() < s.fraction).count(),
        None => 0,
    };
    let mut lesions: Vec<InsertedLesion> = if count > shape_count {
        draw_clear_of(&lungs, known, calibration, count - shape_count, rng)
            .into_iter()
            .map(InsertedLesion::Phantom)
            .collect()
    } else {
        Vec::new()
    };
    let Some(shapes) = shapes else {
        return lesions;
    };
    let mut taken: Vec<(Vec3, f64)> = known
        .iter()
        .map(|k| (k.center_mm, k.diameter_mm / 2.0))
        .chain(lesions.iter().map(InsertedLesion::sphere))
        .collect();
    for _ in 0..shape_count {
        for _ in 0..SHAPE_TRIES {
            let nodule = &shapes.nodules[rng.below(shapes.nodules.len())];
            let reader = (rng.uniform() < 0.5).then(|| rng.below(nodule.readers()));
            let (mask, appearance) = match reader {
                Some(r) => (
                    nodule.annotation_mask(r),
                    crate::synth::lidc_shapes::Appearance::of_ratings(
                        &nodule.annotations[r].ratings,
                    ),
                ),
                None => (nodule.consensus_mask(), nodule.appearance()),
            };
            let mask = mask.to_isotropic_1mm();
            if mask.is_empty() {
                continue;
            }
            let Some(placement) = place_shape(&lungs, &background.lungs, &mask, &taken, rng) else {
                continue;
            };
            let mut shape = PlacedShape::new(mask, appearance, placement);
            let solid = appearance.texture == Texture::Solid
                && appearance.calcification == Calcification::Absent;
            if shapes.cavity_fraction > 0.0 && solid && rng.uniform() < shapes.cavity_fraction {
                shape.hollow(rng.range(1.0, 3.0));
            }
            let lesion = InsertedLesion::Shape {
                shape,
                ratings: nodule.malignancy_ratings(),
                patient_id: nodule.patient_id.clone(),
                nodule_index: nodule.nodule_index,
                reader,
            };
            taken.push(lesion.sphere());
            lesions.push(lesion);
            break;
        }
    }
    lesions
}

/// Phantoms and real backgrounds with inserted nodules.
pub struct RealBackgroundSource {
    seed: u64,
    phantoms: SyntheticSource,
    real_scans: usize,
    backgrounds: Vec<Entry>,
    calibration: Calibration,
    shapes: Option<TrainingShapes>,
    /// Whether the backgrounds' vessels are offered to juxta-vascular phantom nodules.
    juxta_vascular: bool,
}

impl RealBackgroundSource {
    /// `scans` in all, a `phantom_fraction` of them phantoms of `phantom_size`, the rest
    /// insertions into `backgrounds` in turn, real shapes among their lesions where `shapes`
    /// says.
    pub fn open(
        seed: u64,
        scans: usize,
        phantom_fraction: f64,
        phantom_size: [usize; 3],
        backgrounds: &[PathBuf],
        shapes: Option<TrainingShapes>,
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
            shapes,
            juxta_vascular: false,
        })
    }

    /// Offers the backgrounds' vessels to juxta-vascular phantom nodules
    /// (`SegmentedLungs::with_vessels`); off by default, as sources were before it existed.
    pub fn with_juxta_vascular(mut self, on: bool) -> Self {
        self.juxta_vascular = on;
        self
    }

    /// Scans that are phantoms (indices below it); the real scans follow.
    pub fn phantom_scans(&self) -> usize {
        self.phantoms.scans
    }

    /// Real scan `n`'s background, its known nodules, its seed and its id.
    fn real_entry(&self, n: usize) -> anyhow::Result<(&Background, &Entry, u64)> {
        let entry = &self.backgrounds[n % self.backgrounds.len()];
        let seed = self
            .seed
            .wrapping_mul(1_000_003)
            .wrapping_add(500_000 + n as u64);
        Ok((entry.background()?, entry, seed))
    }

    /// The lesions inserted into real scan `n` (scan `phantom_scans() + n`), in label order
    /// after the background's known nodules.
    pub fn real_lesions(&self, n: usize) -> anyhow::Result<Vec<InsertedLesion>> {
        let (background, entry, seed) = self.real_entry(n)?;
        Ok(draw_training_lesions(
            background,
            &entry.known,
            &self.calibration,
            self.shapes.as_ref(),
            self.juxta_vascular,
            &mut Rng::new(seed),
        ))
    }

    fn real_scan(&self, n: usize) -> anyhow::Result<Scan> {
        let (background, entry, seed) = self.real_entry(n)?;
        let lesions = self.real_lesions(n)?;
        Ok(training_scan(
            background,
            &entry.known,
            &lesions,
            &format!("{}+{seed}", entry.dir.display()),
        ))
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

/// One training scan from a background with phantom nodules only: 1-3 nodules inserted (drawn
/// from `seed`), the known nodules labelled 1..=k as spheres of their diameter, the inserted
/// ones k+1.., on the 1 mm grid cropped to the lungs.
pub fn insert_training_scan(
    background: &Background,
    known: &[KnownNodule],
    calibration: &Calibration,
    seed: u64,
    id: &str,
) -> anyhow::Result<Scan> {
    let lesions = draw_training_lesions(
        background,
        known,
        calibration,
        None,
        false,
        &mut Rng::new(seed),
    );
    Ok(training_scan(background, known, &lesions, id))
}

/// `lesions` inserted into a background, on the 1 mm grid cropped to the lungs (see
/// `insert_and_label`).
pub fn training_scan(
    background: &Background,
    known: &[KnownNodule],
    lesions: &[InsertedLesion],
    id: &str,
) -> Scan {
    let inserted = insert_and_label(background, known, lesions);
    let g = inserted.hu.geometry;
    let b = background.lung_box;
    let lo = b.min.map(|v| v.saturating_sub(CROP_MARGIN));
    let hi = [0, 1, 2].map(|a| (b.max[a] + CROP_MARGIN).min(g.size[a] - 1));
    Scan {
        id: id.to_owned(),
        hu: crop(&inserted.hu, lo, hi),
        labels: crop(&inserted.labels, lo, hi),
        nodules: inserted.nodules,
    }
}

/// A background with lesions inserted, on its whole 1 mm grid.
pub struct Inserted {
    pub hu: Volume<f32>,
    /// Known nodule n (from 0) is label n + 1, lesion n is label known + n + 1, 0 elsewhere.
    pub labels: Volume<u8>,
    /// Every label with its ratings, in label order.
    pub nodules: Vec<NoduleLabel>,
}

/// Adds `lesions` to the background's acquired series (`add_lesions`), resamples it to 1 mm as
/// analysis resamples (B-spline) and labels it: the known nodules as spheres of their diameter,
/// then each lesion on the voxels whose centre is inside it and in the parenchyma (a voxel an
/// earlier label holds keeps it).
pub fn insert_and_label(
    background: &Background,
    known: &[KnownNodule],
    lesions: &[InsertedLesion],
) -> Inserted {
    let lungs = background.segmented_lungs();
    let dyn_lesions: Vec<&dyn Lesion> = lesions.iter().map(InsertedLesion::lesion).collect();
    let mut series = background.series.clone();
    add_lesions(
        &mut series,
        &dyn_lesions,
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
        paint(
            &mut labels,
            (n + 1) as u8,
            (sub(k.center_mm, r), add(k.center_mm, r)),
            |p| distance(p, k.center_mm) <= r,
        );
        ratings.push(k.ratings.clone());
    }
    for lesion in lesions {
        let label = (ratings.len() + 1) as u8;
        let l = lesion.lesion();
        paint(&mut labels, label, l.bounds(), |p| {
            l.contains(p) && lungs.in_lung(p)
        });
        ratings.push(lesion.ratings().to_vec());
    }
    Inserted {
        hu,
        labels,
        nodules: NoduleLabel::numbered(ratings),
    }
}

/// Sets `label` on every voxel of `bounds` (patient mm) whose centre `inside` accepts, unless
/// an earlier label holds it.
fn paint(labels: &mut Volume<u8>, label: u8, bounds: (Vec3, Vec3), inside: impl Fn(Vec3) -> bool) {
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
                if labels.data[at] == 0 && inside(g.index_to_patient([i, j, k].map(|v| v as f64))) {
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
        origin: volume.geometry.index_to_patient(lo.map(|v| v as f64)),
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
