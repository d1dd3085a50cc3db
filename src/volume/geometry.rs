//! Voxel grid geometry in patient coordinates (DICOM LPS, millimetres), as ITK and SimpleITK
//! define it: `patient = origin + D * (spacing ⊙ index)`, where the columns of the direction
//! matrix `D` are the unit vectors of the i (column index), j (row index) and k (slice) axes and
//! `origin` is the centre of voxel (0, 0, 0).

/// A 3-vector of millimetres or voxel indices.
pub type Vec3 = [f64; 3];

/// Geometry of a 3-D grid of voxels.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Geometry {
    /// Patient position (mm) of the centre of voxel (0, 0, 0).
    pub origin: Vec3,
    /// Distance between voxel centres along i, j, k (mm).
    pub spacing: Vec3,
    /// Unit direction of the i, j and k axes in patient coordinates: `direction[a]` is axis `a`.
    pub direction: [Vec3; 3],
    /// Number of voxels along i, j, k.
    pub size: [usize; 3],
}

pub fn dot(a: Vec3, b: Vec3) -> f64 {
    a[0] * b[0] + a[1] * b[1] + a[2] * b[2]
}

pub fn cross(a: Vec3, b: Vec3) -> Vec3 {
    [
        a[1] * b[2] - a[2] * b[1],
        a[2] * b[0] - a[0] * b[2],
        a[0] * b[1] - a[1] * b[0],
    ]
}

pub fn sub(a: Vec3, b: Vec3) -> Vec3 {
    [a[0] - b[0], a[1] - b[1], a[2] - b[2]]
}

pub fn norm(a: Vec3) -> f64 {
    dot(a, a).sqrt()
}

impl Geometry {
    /// Total number of voxels.
    pub fn len(&self) -> usize {
        self.size[0] * self.size[1] * self.size[2]
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Patient position (mm) of a continuous voxel index.
    pub fn index_to_patient(&self, index: Vec3) -> Vec3 {
        let mut p = self.origin;
        for axis in 0..3 {
            let step = index[axis] * self.spacing[axis];
            for (c, value) in p.iter_mut().enumerate() {
                *value += self.direction[axis][c] * step;
            }
        }
        p
    }

    /// Continuous voxel index of a patient position (the inverse of `index_to_patient`; the
    /// direction matrix is orthonormal).
    pub fn patient_to_index(&self, point: Vec3) -> Vec3 {
        let d = sub(point, self.origin);
        [
            dot(d, self.direction[0]) / self.spacing[0],
            dot(d, self.direction[1]) / self.spacing[1],
            dot(d, self.direction[2]) / self.spacing[2],
        ]
    }

    /// Linear offset of voxel (i, j, k) in an array with i fastest.
    pub fn offset(&self, i: usize, j: usize, k: usize) -> usize {
        (k * self.size[1] + j) * self.size[0] + i
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn index_and_patient_round_trip_on_an_oblique_grid() {
        let (s, c) = (0.3f64.sin(), 0.3f64.cos());
        let row = [c, s, 0.0];
        let col = [-s * 0.8, c * 0.8, 0.6];
        let normal = cross(row, col);
        let g = Geometry {
            origin: [-100.0, 20.0, 35.5],
            spacing: [0.7, 0.7, 2.5],
            direction: [row, col, normal],
            size: [10, 10, 10],
        };
        let index = [3.25, 7.5, 1.75];
        let back = g.patient_to_index(g.index_to_patient(index));
        for a in 0..3 {
            assert!((back[a] - index[a]).abs() < 1e-9);
        }
        // Moving one voxel along k moves spacing[2] mm along the normal.
        let step = sub(g.index_to_patient([0.0, 0.0, 1.0]), g.origin);
        assert!((norm(step) - 2.5).abs() < 1e-12);
        assert!((dot(step, normal) - 2.5).abs() < 1e-12);
    }
}
