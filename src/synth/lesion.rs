//! What can be inserted into a CT volume: a lesion's extent, its voxels and its attenuation, in
//! patient coordinates. The phantom's geometric nodules (`nodules::Nodule`) and the LIDC-IDRI
//! readers' real outlines both implement it, so one insertion routine serves both.

use crate::volume::geometry::Vec3;

/// A lesion placed in patient space (LPS, mm).
pub trait Lesion: Sync {
    /// Axis-aligned bounds (lowest and highest corner), mm.
    fn bounds(&self) -> (Vec3, Vec3);
    /// Whether `p` is inside the lesion.
    fn contains(&self, p: Vec3) -> bool;
    /// Attenuation at `p` inside the lesion, HU (before partial volume and blur).
    fn hu_at(&self, p: Vec3) -> f64;
}

impl Lesion for crate::synth::nodules::Nodule {
    fn bounds(&self) -> (Vec3, Vec3) {
        crate::synth::nodules::Nodule::bounds(self)
    }
    fn contains(&self, p: Vec3) -> bool {
        crate::synth::nodules::Nodule::contains(self, p)
    }
    fn hu_at(&self, p: Vec3) -> f64 {
        crate::synth::nodules::Nodule::hu_at(self, p)
    }
}
