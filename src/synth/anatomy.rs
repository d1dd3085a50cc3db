//! The chest phantom's anatomy, in patient coordinates (LPS, mm; x to the patient's left, y
//! posterior, z superior): body with fat and muscle, spine, ribs, sternum, mediastinum with
//! heart and aorta, trachea and main bronchi, two lungs at about -860 HU with parenchymal
//! texture, and branching pulmonary vessel trees that taper towards the pleura. Everything is
//! drawn from a seed (positions, sizes and branching jitter), so studies differ but stay
//! anatomically ordered.

use crate::random::Rng;
use crate::volume::geometry::Vec3;

/// Tissue labels painted into the label volume (later paint wins).
pub mod label {
    pub const AIR: u8 = 0;
    pub const FAT: u8 = 1;
    pub const MUSCLE: u8 = 2;
    pub const LUNG: u8 = 3;
    pub const SOFT: u8 = 4;
    pub const BONE: u8 = 5;
    pub const AIRWAY: u8 = 6;
    pub const VESSEL: u8 = 7;
    pub const NODULE: u8 = 8;
}

/// A straight tube with rounded ends (vessel, bronchus, rib segment).
#[derive(Debug, Clone, Copy)]
pub struct Capsule {
    pub a: Vec3,
    pub b: Vec3,
    pub radius: f64,
}

impl Capsule {
    /// Distance from `p` to the axis segment.
    pub fn axis_distance(&self, p: Vec3) -> f64 {
        let ab = [
            self.b[0] - self.a[0],
            self.b[1] - self.a[1],
            self.b[2] - self.a[2],
        ];
        let ap = [p[0] - self.a[0], p[1] - self.a[1], p[2] - self.a[2]];
        let len2 = ab[0] * ab[0] + ab[1] * ab[1] + ab[2] * ab[2];
        let t = if len2 > 0.0 {
            ((ap[0] * ab[0] + ap[1] * ab[1] + ap[2] * ab[2]) / len2).clamp(0.0, 1.0)
        } else {
            0.0
        };
        let d = [ap[0] - ab[0] * t, ap[1] - ab[1] * t, ap[2] - ab[2] * t];
        (d[0] * d[0] + d[1] * d[1] + d[2] * d[2]).sqrt()
    }

    pub fn bounds(&self, margin: f64) -> (Vec3, Vec3) {
        let r = self.radius + margin;
        (
            [0, 1, 2].map(|i| self.a[i].min(self.b[i]) - r),
            [0, 1, 2].map(|i| self.a[i].max(self.b[i]) + r),
        )
    }
}

/// One lung: a superelliptic column with a tapered apex and a domed base.
#[derive(Debug, Clone, Copy)]
pub struct Lung {
    pub centre: [f64; 2],
    pub half_width: f64,
    pub half_depth: f64,
    pub apex_z: f64,
    pub base_z: f64,
    pub dome_mm: f64,
}

impl Lung {
    pub fn contains(&self, p: Vec3) -> bool {
        if p[2] > self.apex_z || p[2] < self.base_z - self.dome_mm {
            return false;
        }
        let taper = ((self.apex_z - p[2]) / 45.0).clamp(0.0, 1.0).sqrt();
        if taper <= 0.0 {
            return false;
        }
        let u = (p[0] - self.centre[0]) / (self.half_width * taper);
        let v = (p[1] - self.centre[1]) / (self.half_depth * taper);
        let shape = u.abs().powf(2.6) + v.abs().powf(2.6);
        if shape > 1.0 {
            return false;
        }
        // The diaphragm bulges up in the middle of each lung.
        let floor = self.base_z + self.dome_mm * (1.0 - (u * u + v * v)).max(0.0);
        p[2] >= floor
    }

    pub fn bounds(&self) -> (Vec3, Vec3) {
        (
            [
                self.centre[0] - self.half_width,
                self.centre[1] - self.half_depth,
                self.base_z - self.dome_mm,
            ],
            [
                self.centre[0] + self.half_width,
                self.centre[1] + self.half_depth,
                self.apex_z,
            ],
        )
    }
}

/// An axis-aligned ellipsoid (heart, liver).
#[derive(Debug, Clone, Copy)]
pub struct Ellipsoid {
    pub centre: Vec3,
    pub radii: Vec3,
}

impl Ellipsoid {
    pub fn contains(&self, p: Vec3) -> bool {
        (0..3)
            .map(|a| ((p[a] - self.centre[a]) / self.radii[a]).powi(2))
            .sum::<f64>()
            <= 1.0
    }
}

/// The whole chest.
#[derive(Debug, Clone)]
pub struct Anatomy {
    /// Body outline half-axes (x, y) below the shoulders.
    pub body: [f64; 2],
    pub fat_mm: f64,
    pub lungs: [Lung; 2],
    pub heart: Ellipsoid,
    pub liver: Ellipsoid,
    pub aorta: Capsule,
    pub spine_centre: [f64; 2],
    pub vertebra_radius: f64,
    pub sternum: (Vec3, Vec3),
    pub ribs: Vec<Capsule>,
    /// Air-filled tubes: trachea, main and lobar bronchi.
    pub airways: Vec<Capsule>,
    pub vessels: Vec<Capsule>,
}

impl Anatomy {
    /// Draws an anatomy from `rng`.
    pub fn generate(rng: &mut Rng) -> Self {
        let scale = rng.range(0.9, 1.1);
        let body = [170.0 * scale, 118.0 * scale];
        let lung = |side: f64, rng: &mut Rng| Lung {
            centre: [side * 78.0 * scale, 8.0 * scale],
            half_width: rng.range(55.0, 63.0) * scale,
            half_depth: rng.range(80.0, 88.0) * scale,
            apex_z: rng.range(105.0, 118.0),
            base_z: rng.range(-140.0, -125.0) + if side < 0.0 { 10.0 } else { 0.0 },
            dome_mm: rng.range(25.0, 40.0),
        };
        let lungs = [lung(-1.0, rng), lung(1.0, rng)];
        let heart = Ellipsoid {
            centre: [18.0 * scale, -30.0 * scale, -75.0],
            radii: [62.0 * scale, 52.0 * scale, 58.0],
        };
        let liver = Ellipsoid {
            centre: [-45.0 * scale, 0.0, -200.0],
            radii: [120.0 * scale, 100.0 * scale, 90.0],
        };
        let spine_centre = [0.0, 78.0 * scale];
        let aorta = Capsule {
            a: [18.0 * scale, 48.0 * scale, 60.0],
            b: [10.0 * scale, 50.0 * scale, -200.0],
            radius: 12.5,
        };
        let sternum = (
            [-14.0, -body[1] + 8.0, -70.0],
            [14.0, -body[1] + 20.0, 75.0],
        );
        let mut ribs = Vec::new();
        for k in 0..12 {
            let z0 = 112.0 - 21.0 * k as f64;
            for side in [-1.0, 1.0] {
                // From beside the spine, around the side, to the front; sloping down.
                let steps = 18;
                let mut previous: Option<Vec3> = None;
                for s in 0..=steps {
                    let t = s as f64 / steps as f64;
                    let angle = std::f64::consts::PI * (0.42 + 0.9 * t);
                    let shrink = 0.88 - 0.05 * (1.0 - (k as f64 / 11.0));
                    let p = [
                        side * body[0] * shrink * angle.sin().abs().max(0.15),
                        -body[1] * shrink * angle.cos(),
                        z0 - 24.0 * t,
                    ];
                    if let Some(q) = previous {
                        ribs.push(Capsule {
                            a: q,
                            b: p,
                            radius: 4.5,
                        });
                    }
                    previous = Some(p);
                }
            }
        }
        let carina = [0.0, 5.0, 35.0];
        let mut airways = vec![Capsule {
            a: [0.0, -2.0, 240.0],
            b: carina,
            radius: 8.5,
        }];
        let mut vessels = Vec::new();
        for (side, lung) in [(-1.0, lungs[0]), (1.0, lungs[1])] {
            let hilum = [side * 42.0 * scale, 12.0 * scale, 5.0];
            airways.push(Capsule {
                a: carina,
                b: hilum,
                radius: 6.0,
            });
            // Lobar and segmental roots fanning out from the hilum: up, out, down, front, back.
            for (dir, radius) in [
                ([side * 0.5, -0.2, 0.85], 6.5),
                ([side * 0.3, 0.5, 0.8], 5.0),
                ([side * 0.8, -0.4, -0.2], 5.5),
                ([side * 0.9, 0.3, 0.1], 5.0),
                ([side * 0.35, 0.3, -0.9], 7.0),
                ([side * 0.5, -0.5, -0.7], 5.5),
                ([side * 0.4, 0.8, -0.4], 5.5),
            ] {
                grow_vessel(
                    &lung,
                    hilum,
                    unit(dir),
                    radius,
                    0,
                    rng,
                    &mut vessels,
                    &mut airways,
                );
            }
        }
        Self {
            body,
            fat_mm: rng.range(8.0, 18.0),
            lungs,
            heart,
            liver,
            aorta,
            spine_centre,
            vertebra_radius: 18.0 * scale,
            sternum,
            ribs,
            airways,
            vessels,
        }
    }

    /// Body half-axes at height z (narrower at the neck).
    pub fn body_at(&self, z: f64) -> [f64; 2] {
        let neck = ((z - 150.0) / 40.0).clamp(0.0, 1.0);
        [
            self.body[0] * (1.0 - 0.6 * neck),
            self.body[1] * (1.0 - 0.45 * neck),
        ]
    }

    /// Whether `p` is in lung parenchyma (not in the heart).
    pub fn in_lung(&self, p: Vec3) -> bool {
        (self.lungs[0].contains(p) || self.lungs[1].contains(p)) && !self.heart.contains(p)
    }
}

fn unit(v: Vec3) -> Vec3 {
    let n = (v[0] * v[0] + v[1] * v[1] + v[2] * v[2]).sqrt();
    [v[0] / n, v[1] / n, v[2] / n]
}

/// Grows one branch and, recursively, its two children while they stay in the lung.
#[allow(clippy::too_many_arguments)]
fn grow_vessel(
    lung: &Lung,
    start: Vec3,
    direction: Vec3,
    radius: f64,
    generation: u32,
    rng: &mut Rng,
    vessels: &mut Vec<Capsule>,
    airways: &mut Vec<Capsule>,
) {
    if radius < 0.5 || generation > 12 {
        return;
    }
    let length = radius * rng.range(2.5, 4.0) + 2.5;
    let mut direction = direction;
    let mut end = [0, 1, 2].map(|a| start[a] + direction[a] * length);
    // A branch heading out of the lung turns back in (a few tries) or ends.
    let mut tries = 0;
    while generation > 0 && !lung.contains(end) {
        tries += 1;
        if tries > 4 {
            return;
        }
        let inward = unit([0, 1, 2].map(|a| {
            let centre = [
                lung.centre[0],
                lung.centre[1],
                (lung.apex_z + lung.base_z) / 2.0,
            ];
            centre[a] - start[a]
        }));
        let jitter = rng.direction();
        direction = unit([0, 1, 2].map(|a| direction[a] + 0.6 * inward[a] + 0.3 * jitter[a]));
        end = [0, 1, 2].map(|a| start[a] + direction[a] * length);
    }
    vessels.push(Capsule {
        a: start,
        b: end,
        radius,
    });
    // A bronchus runs beside the artery in the first generations.
    if (1..=3).contains(&generation) {
        let side = unit([direction[1], -direction[0], 0.3]);
        let offset = radius * 1.6;
        airways.push(Capsule {
            a: [0, 1, 2].map(|a| start[a] + side[a] * offset),
            b: [0, 1, 2].map(|a| end[a] + side[a] * offset),
            radius: radius * 0.8,
        });
    }
    for _ in 0..2 {
        let jitter = rng.direction();
        let spread = rng.range(0.35, 0.65);
        let child = unit([0, 1, 2].map(|a| direction[a] + spread * jitter[a]));
        let child_radius = radius * rng.range(0.74, 0.86);
        grow_vessel(
            lung,
            end,
            child,
            child_radius,
            generation + 1,
            rng,
            vessels,
            airways,
        );
    }
}
