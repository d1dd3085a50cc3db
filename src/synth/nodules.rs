//! Synthetic lung nodules: solid, part-solid, ground-glass and calcified; 3-30 mm; round,
//! lobulated or spiculated; isolated, juxta-vascular or juxta-pleural. Their malignancy follows
//! a logistic model fitted on the LIDC-IDRI reader annotations (see `calibration`), and 1-4
//! simulated readers rate each one 1-5 with the disagreement seen in LIDC-IDRI.

use crate::random::Rng;
use crate::synth::anatomy::{Anatomy, Capsule};
use crate::synth::calibration::Calibration;
pub use crate::synth::features::{Location, Margin, NoduleFeatures, NoduleType};
use crate::volume::Volume;
use crate::volume::geometry::Vec3;

/// An ellipsoidal lobe of a nodule.
#[derive(Debug, Clone, Copy)]
struct Lobe {
    centre: Vec3,
    radii: Vec3,
}

/// One nodule: its shape, its attenuation and its ground truth labels.
#[derive(Debug, Clone)]
pub struct Nodule {
    /// Where it was placed (centre of the main lobe), patient mm.
    pub centre: Vec3,
    /// Nominal diameter drawn for it, mm (the measured one comes from its voxels).
    pub nominal_diameter_mm: f64,
    pub kind: NoduleType,
    pub margin: Margin,
    pub location: Location,
    lobes: Vec<Lobe>,
    spicules: Vec<Capsule>,
    /// Solid core (part-solid) or calcification (calcified), radius mm.
    core_radius: f64,
    base_hu: f64,
    core_hu: f64,
    bounds: (Vec3, Vec3),
    /// Probability of malignancy from the calibrated model.
    pub p_malignant: f64,
    /// Ratings 1-5 of the simulated readers.
    pub ratings: Vec<u8>,
}

impl Nodule {
    pub fn contains(&self, p: Vec3) -> bool {
        let (lo, hi) = self.bounds;
        if (0..3).any(|a| p[a] < lo[a] || p[a] > hi[a]) {
            return false;
        }
        self.lobes.iter().any(|l| {
            (0..3)
                .map(|a| ((p[a] - l.centre[a]) / l.radii[a]).powi(2))
                .sum::<f64>()
                <= 1.0
        }) || self.spicules.iter().any(|s| s.axis_distance(p) <= s.radius)
    }

    /// HU inside the nodule.
    pub fn hu_at(&self, p: Vec3) -> f64 {
        if distance(p, self.centre) <= self.core_radius {
            self.core_hu
        } else {
            self.base_hu
        }
    }

    pub fn bounds(&self) -> (Vec3, Vec3) {
        self.bounds
    }

    /// Median of the readers' ratings (x.5 for an even count with different middle ratings).
    pub fn malignancy_median(&self) -> f64 {
        crate::malignancy::score(&self.ratings)
    }

    /// Marginal as the paper defines it: rated by 1-2 readers with 2 <= median <= 4.
    pub fn marginal(&self) -> bool {
        crate::malignancy::is_marginal(&self.ratings)
    }
}

/// Where nodules can go: the phantom's analytic lungs, or the segmented lungs of a real series.
pub trait Lungs {
    /// Whether `p` (patient mm) is lung parenchyma.
    fn in_lung(&self, p: Vec3) -> bool;
    /// A random point of parenchyma.
    fn random_point(&self, rng: &mut Rng) -> Vec3;
    /// Whether a nodule of `radius` at `p` keeps clear of the vessels an isolated nodule must
    /// not touch.
    fn clear_of_vessels(&self, p: Vec3, radius: f64) -> bool;
    /// One try at the centre of a juxta-vascular nodule of `radius`: on a vessel of 1.2-4 mm
    /// radius, its centre 0.6 of its radius out from the vessel's surface, so that it sits on
    /// the vessel and engulfs part of it. None when this try found no room, or (drawing nothing
    /// from `rng`) when no vessels are known.
    fn try_juxta_vascular(&self, radius: f64, rng: &mut Rng) -> Option<Vec3>;
}

/// Vessels a juxta-vascular nodule can sit on: radius 1.2-4 mm.
const JUXTA_VESSEL_RADIUS_MM: (f64, f64) = (1.2, 4.0);

impl Lungs for Anatomy {
    fn in_lung(&self, p: Vec3) -> bool {
        Anatomy::in_lung(self, p)
    }

    fn random_point(&self, rng: &mut Rng) -> Vec3 {
        loop {
            let lung = &self.lungs[rng.weighted(&[1.0, 1.0])];
            let (lo, hi) = lung.bounds();
            let p = [0, 1, 2].map(|a| rng.range(lo[a], hi[a]));
            if Anatomy::in_lung(self, p) {
                return p;
            }
        }
    }

    fn clear_of_vessels(&self, p: Vec3, radius: f64) -> bool {
        self.vessels
            .iter()
            .filter(|v| v.radius > 1.0)
            .all(|v| v.axis_distance(p) > v.radius + radius + 2.0)
    }

    fn try_juxta_vascular(&self, radius: f64, rng: &mut Rng) -> Option<Vec3> {
        let vessels: Vec<&Capsule> = self.vessels.iter().filter(|v| juxta_vessel(v)).collect();
        if vessels.is_empty() {
            return None;
        }
        let v = vessels[(rng.uniform() * vessels.len() as f64) as usize % vessels.len()];
        let t = rng.uniform();
        let on_axis = [0, 1, 2].map(|a| v.a[a] + (v.b[a] - v.a[a]) * t);
        let d = rng.direction();
        let c = [0, 1, 2].map(|a| on_axis[a] + d[a] * (v.radius + 0.6 * radius));
        sphere_in_lung(self, c, radius * 0.9).then_some(c)
    }
}

fn juxta_vessel(v: &Capsule) -> bool {
    (JUXTA_VESSEL_RADIUS_MM.0..=JUXTA_VESSEL_RADIUS_MM.1).contains(&v.radius)
}

/// Whether 26 points spread over the sphere of radius `r` at `c` are all in the lungs.
fn sphere_in_lung(lungs: &(impl Lungs + ?Sized), c: Vec3, r: f64) -> bool {
    sphere_points(c, r).all(|p| lungs.in_lung(p))
}

/// 26 points spread evenly over the sphere of radius `r` at `c` (a Fibonacci lattice).
fn sphere_points(c: Vec3, r: f64) -> impl Iterator<Item = Vec3> {
    (0..26).map(move |k| {
        let t = k as f64 * 2.399_963;
        let z = 1.0 - 2.0 * (k as f64 + 0.5) / 26.0;
        let s = (1.0 - z * z).sqrt();
        [c[0] + r * s * t.cos(), c[1] + r * s * t.sin(), c[2] + r * z]
    })
}

/// HU above which a voxel of a real series' lung mask is taken for vessel (or airway wall).
const VESSEL_MIN_HU: f32 = -300.0;
/// Parenchyma: below this HU (`SegmentedLungs::in_lung`).
const PARENCHYMA_MAX_HU: f32 = -500.0;
/// A real vessel a nodule may sit on is at most this wide (mm) along the direction tried
/// (so not the hilum, the mediastinum or the chest wall the mask's rim takes in).
const REAL_VESSEL_MAX_WIDTH_MM: f64 = 8.0;
/// Of a real juxta-vascular nodule's 26 sphere points (at 0.9 of its radius), at least this
/// many must be parenchyma (the rest is the vessel it sits on), and all of them in the mask.
const REAL_JUXTA_MIN_PARENCHYMA_POINTS: usize = 16;

/// The lungs of a real series: its 1 mm lung mask, where the tissue is parenchyma (below -500
/// HU, so not inside vessels or airway walls). With `with_vessels`, the mask's vessels (voxels
/// of -300 HU or more) are offered to juxta-vascular nodules; without, a juxta-vascular nodule
/// finds no room and another is drawn (what insertion did before vessels were offered).
pub struct SegmentedLungs<'a> {
    pub hu: &'a Volume<f32>,
    pub mask: &'a Volume<u8>,
    /// Offsets of the mask's parenchyma voxels.
    pub voxels: Vec<usize>,
    /// Offsets of the mask's vessel voxels (empty unless `with_vessels`).
    pub vessel_voxels: Vec<usize>,
}

impl<'a> SegmentedLungs<'a> {
    pub fn new(hu: &'a Volume<f32>, mask: &'a Volume<u8>) -> Self {
        let voxels = (0..mask.data.len())
            .filter(|&v| mask.data[v] == 1 && hu.data[v] < PARENCHYMA_MAX_HU)
            .collect();
        Self {
            hu,
            mask,
            voxels,
            vessel_voxels: Vec::new(),
        }
    }

    /// Offers the mask's vessels to juxta-vascular nodules.
    pub fn with_vessels(mut self) -> Self {
        self.vessel_voxels = (0..self.mask.data.len())
            .filter(|&v| self.mask.data[v] == 1 && self.hu.data[v] >= VESSEL_MIN_HU)
            .collect();
        self
    }

    fn voxel_point(&self, v: usize) -> Vec3 {
        let g = self.mask.geometry;
        let ijk = [
            v % g.size[0],
            (v / g.size[0]) % g.size[1],
            v / (g.size[0] * g.size[1]),
        ];
        g.index_to_patient(ijk.map(|i| i as f64))
    }

    /// The first parenchyma point from `from` along `d`, in 0.5 mm steps, within `max_mm`.
    fn parenchyma_along(&self, from: Vec3, d: Vec3, max_mm: f64) -> Option<(Vec3, f64)> {
        (1..=(max_mm / 0.5) as usize)
            .map(|k| k as f64 * 0.5)
            .map(|t| ([0, 1, 2].map(|a| from[a] + d[a] * t), t))
            .find(|&(p, _)| self.in_lung(p))
    }
}

impl Lungs for SegmentedLungs<'_> {
    fn in_lung(&self, p: Vec3) -> bool {
        self.mask.nearest(p) == Some(1) && self.hu.nearest(p).is_some_and(|v| v < PARENCHYMA_MAX_HU)
    }

    fn random_point(&self, rng: &mut Rng) -> Vec3 {
        let v =
            self.voxels[(rng.uniform() * self.voxels.len() as f64) as usize % self.voxels.len()];
        self.voxel_point(v)
    }

    /// Isolated nodules are placed in parenchyma, which is clear of vessels by definition.
    fn clear_of_vessels(&self, _p: Vec3, _radius: f64) -> bool {
        true
    }

    /// From a random vessel voxel along a random direction to the parenchyma (the vessel's
    /// surface there), which the other way must reach too within the vessel's greatest width;
    /// the centre 0.6 of the radius beyond the surface, the sphere at 0.9 of the radius in the
    /// mask and mostly parenchyma.
    fn try_juxta_vascular(&self, radius: f64, rng: &mut Rng) -> Option<Vec3> {
        let n = self.vessel_voxels.len();
        if n == 0 {
            return None;
        }
        let v = self.vessel_voxels[(rng.uniform() * n as f64) as usize % n];
        let d = rng.direction();
        let from = self.voxel_point(v);
        let (surface, out) = self.parenchyma_along(from, d, REAL_VESSEL_MAX_WIDTH_MM)?;
        let back = d.map(|x| -x);
        let (_, inside) = self.parenchyma_along(from, back, REAL_VESSEL_MAX_WIDTH_MM)?;
        if out + inside > REAL_VESSEL_MAX_WIDTH_MM || out + inside < 2.0 * JUXTA_VESSEL_RADIUS_MM.0
        {
            return None;
        }
        let c = [0, 1, 2].map(|a| surface[a] + d[a] * 0.6 * radius);
        let points: Vec<Vec3> = sphere_points(c, radius * 0.9).collect();
        let in_mask = points.iter().all(|&p| self.mask.nearest(p) == Some(1));
        let parenchyma = points.iter().filter(|&&p| self.in_lung(p)).count();
        (self.in_lung(c) && in_mask && parenchyma >= REAL_JUXTA_MIN_PARENCHYMA_POINTS).then_some(c)
    }
}

/// Draws the nodules of one study.
pub fn draw_nodules(
    anatomy: &impl Lungs,
    calibration: &Calibration,
    count: usize,
    rng: &mut Rng,
) -> Vec<Nodule> {
    let mut nodules: Vec<Nodule> = Vec::with_capacity(count);
    let mut attempts = 0;
    while nodules.len() < count && attempts < count * 50 {
        attempts += 1;
        let (features, class) = calibration.draw_nodule(rng);
        let location = [
            Location::Isolated,
            Location::JuxtaVascular,
            Location::JuxtaPleural,
        ][rng.weighted(&[0.5, 0.25, 0.25])];
        let radius = features.diameter_mm / 2.0;
        let Some(centre) = place(anatomy, location, radius, rng) else {
            continue;
        };
        // Keep nodules apart from each other.
        if nodules
            .iter()
            .any(|n| distance(n.centre, centre) < n.nominal_diameter_mm / 2.0 + radius + 10.0)
        {
            continue;
        }
        let mut nodule = shape(centre, radius, &features, location, rng);
        nodule.p_malignant = calibration.p_malignant(&features);
        nodule.ratings = calibration.draw_ratings(class, rng);
        nodules.push(nodule);
    }
    nodules
}

fn distance(a: Vec3, b: Vec3) -> f64 {
    (0..3).map(|i| (a[i] - b[i]).powi(2)).sum::<f64>().sqrt()
}

/// Where a nodule of `radius` goes for its location type, if a spot is found.
fn place(anatomy: &impl Lungs, location: Location, radius: f64, rng: &mut Rng) -> Option<Vec3> {
    for _ in 0..60 {
        match location {
            Location::Isolated => {
                let p = anatomy.random_point(rng);
                if sphere_in_lung(anatomy, p, radius + 4.0) && anatomy.clear_of_vessels(p, radius) {
                    return Some(p);
                }
            }
            Location::JuxtaPleural => {
                // March from a lung point to the pleura, then step back in by 0.6 r.
                let start = anatomy.random_point(rng);
                let d = rng.direction();
                let mut t = 0.0;
                while anatomy.in_lung([0, 1, 2].map(|a| start[a] + d[a] * t)) && t < 300.0 {
                    t += 0.5;
                }
                let c = [0, 1, 2].map(|a| start[a] + d[a] * (t - 0.6 * radius));
                if t > radius && anatomy.in_lung(c) {
                    return Some(c);
                }
            }
            Location::JuxtaVascular => {
                if let Some(c) = anatomy.try_juxta_vascular(radius, rng) {
                    return Some(c);
                }
            }
        }
    }
    None
}

/// Builds the shape and attenuation of a nodule.
fn shape(
    centre: Vec3,
    radius: f64,
    features: &NoduleFeatures,
    location: Location,
    rng: &mut Rng,
) -> Nodule {
    let (kind, margin) = (features.kind, features.margin());
    let stretch = |rng: &mut Rng| [0, 1, 2].map(|_| radius * rng.range(0.88, 1.12));
    let mut lobes = vec![Lobe {
        centre,
        radii: stretch(rng),
    }];
    let mut spicules = Vec::new();
    if features.lobulated {
        for _ in 0..(3 + (rng.uniform() * 4.0) as usize) {
            let d = rng.direction();
            let r = radius * rng.range(0.4, 0.65);
            let at = radius * rng.range(0.45, 0.7);
            lobes.push(Lobe {
                centre: [0, 1, 2].map(|a| centre[a] + d[a] * at),
                radii: [r; 3],
            });
        }
    }
    if features.spiculated {
        for _ in 0..(6 + (rng.uniform() * 9.0) as usize) {
            let d = rng.direction();
            let length = radius * rng.range(0.5, 1.4) + 2.0;
            spicules.push(Capsule {
                a: [0, 1, 2].map(|a| centre[a] + d[a] * radius * 0.7),
                b: [0, 1, 2].map(|a| centre[a] + d[a] * (radius + length)),
                radius: rng.range(0.35, 0.6),
            });
        }
    }
    let (base_hu, core_radius, core_hu) = match kind {
        NoduleType::Solid => (rng.range(10.0, 55.0), 0.0, 0.0),
        NoduleType::GroundGlass => (rng.range(-680.0, -480.0), 0.0, 0.0),
        NoduleType::PartSolid => (
            rng.range(-650.0, -450.0),
            radius * rng.range(0.3, 0.6),
            rng.range(0.0, 45.0),
        ),
        NoduleType::Calcified => {
            if rng.uniform() < 0.4 {
                // Diffusely calcified.
                let hu = rng.range(350.0, 900.0);
                (hu, 0.0, hu)
            } else {
                (
                    rng.range(20.0, 50.0),
                    radius * rng.range(0.35, 0.7),
                    rng.range(400.0, 1000.0),
                )
            }
        }
    };
    let mut lo = [f64::MAX; 3];
    let mut hi = [f64::MIN; 3];
    for l in &lobes {
        for a in 0..3 {
            lo[a] = lo[a].min(l.centre[a] - l.radii[a]);
            hi[a] = hi[a].max(l.centre[a] + l.radii[a]);
        }
    }
    for s in &spicules {
        let (slo, shi) = s.bounds(0.0);
        for a in 0..3 {
            lo[a] = lo[a].min(slo[a]);
            hi[a] = hi[a].max(shi[a]);
        }
    }
    Nodule {
        centre,
        nominal_diameter_mm: 2.0 * radius,
        kind,
        margin,
        location,
        lobes,
        spicules,
        core_radius,
        base_hu,
        core_hu,
        bounds: (lo, hi),
        p_malignant: 0.0,
        ratings: Vec::new(),
    }
}

/// Centre of mass (patient mm), volume (mm^3) and equivalent diameter (mm) of the nodule's
/// voxels inside the lung, sampled on a 0.25 mm grid.
pub fn measure(nodule: &Nodule, anatomy: &impl Lungs) -> (Vec3, f64, f64) {
    let step = 0.25;
    let (lo, hi) = nodule.bounds();
    let n = [0, 1, 2].map(|a| ((hi[a] - lo[a]) / step).ceil() as usize + 1);
    let mut sum = [0.0; 3];
    let mut count = 0usize;
    for k in 0..n[2] {
        for j in 0..n[1] {
            for i in 0..n[0] {
                let p = [
                    lo[0] + (i as f64 + 0.5) * step,
                    lo[1] + (j as f64 + 0.5) * step,
                    lo[2] + (k as f64 + 0.5) * step,
                ];
                if nodule.contains(p) && anatomy.in_lung(p) {
                    for a in 0..3 {
                        sum[a] += p[a];
                    }
                    count += 1;
                }
            }
        }
    }
    let volume = count as f64 * step * step * step;
    let centre = if count > 0 {
        sum.map(|s| s / count as f64)
    } else {
        nodule.centre
    };
    let diameter = (6.0 * volume / std::f64::consts::PI).cbrt();
    (centre, volume, diameter)
}
