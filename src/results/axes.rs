//! A finding's long and short axis on the source slice where it is largest, measured as a
//! radiologist measures a nodule for Lung-RADS: the long axis is the longest distance across
//! the segment on that slice, edge to edge (between the farthest pixel centres, extended by half
//! a pixel at each end), the short axis the longest chord perpendicular to
//! it, and the mean diameter their average. The SR carries both axes as 2-point polylines on
//! that image (TID 1410), which viewers draw and label.
//!
//! Coordinates are image coordinates as SCOORD wants them (PS3.3 C.18.6.1.1): (column, row),
//! the top-left corner of the top-left pixel at (0, 0), a pixel centre at (c + 0.5, r + 0.5).

use crate::volume::mapping::SliceMask;

/// One axis: its two ends in image coordinates, and its length.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Axis {
    pub from: [f64; 2],
    pub to: [f64; 2],
    pub length_mm: f64,
}

/// Both axes of a finding on one source slice.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct PlanarAxes {
    /// Index of the slice in the finding's `slices` (its footprint), and in the series.
    pub footprint_index: usize,
    pub series_slice: usize,
    pub long: Axis,
    pub short: Axis,
}

impl PlanarAxes {
    /// Lung-RADS' mean diameter: the average of the long and short axis.
    pub fn mean_diameter_mm(&self) -> f64 {
        (self.long.length_mm + self.short.length_mm) / 2.0
    }
}

/// The pixel grid of the source slices: columns per row and the spacing between columns and
/// between rows, mm.
#[derive(Debug, Clone, Copy)]
pub struct PixelGrid {
    pub columns: usize,
    pub column_spacing_mm: f64,
    pub row_spacing_mm: f64,
}

/// The axes on the slice where the finding has the most pixels (the first of equals); `None`
/// when it has no pixel on any slice.
pub fn measure(footprint: &[SliceMask], grid: PixelGrid) -> Option<PlanarAxes> {
    let (footprint_index, largest) = footprint
        .iter()
        .enumerate()
        .max_by_key(|(i, s)| (s.pixels.iter().filter(|&&p| p != 0).count(), usize::MAX - i))?;
    let on_slice = SlicePixels::new(&largest.pixels, grid)?;
    let long = on_slice.long_axis();
    let short = on_slice.short_axis(&long);
    Some(PlanarAxes {
        footprint_index,
        series_slice: largest.slice,
        long,
        short,
    })
}

/// The finding's pixels on one slice, in millimetres from the image's top-left corner.
struct SlicePixels<'a> {
    pixels: &'a [u8],
    grid: PixelGrid,
    rows: usize,
    /// Centres of the pixels on the outline of the set, their convex hull, mm.
    hull: Vec<[f64; 2]>,
}

impl<'a> SlicePixels<'a> {
    fn new(pixels: &'a [u8], grid: PixelGrid) -> Option<Self> {
        let columns = grid.columns.max(1);
        let rows = pixels.len() / columns;
        let set = |c: isize, r: isize| {
            c >= 0
                && r >= 0
                && (c as usize) < columns
                && (r as usize) < rows
                && pixels[r as usize * columns + c as usize] != 0
        };
        let mut outline = Vec::new();
        for r in 0..rows as isize {
            for c in 0..columns as isize {
                // Only pixels on the outline can be on the hull.
                let inner = set(c - 1, r) && set(c + 1, r) && set(c, r - 1) && set(c, r + 1);
                if !set(c, r) || inner {
                    continue;
                }
                outline.push([
                    (c as f64 + 0.5) * grid.column_spacing_mm,
                    (r as f64 + 0.5) * grid.row_spacing_mm,
                ]);
            }
        }
        if outline.is_empty() {
            return None;
        }
        Some(Self {
            pixels,
            grid,
            rows,
            hull: convex_hull(outline),
        })
    }

    fn contains(&self, point: [f64; 2]) -> bool {
        let c = (point[0] / self.grid.column_spacing_mm).floor();
        let r = (point[1] / self.grid.row_spacing_mm).floor();
        c >= 0.0
            && r >= 0.0
            && (c as usize) < self.grid.columns
            && (r as usize) < self.rows
            && self.pixels[r as usize * self.grid.columns + c as usize] != 0
    }

    /// In image coordinates (column, row).
    fn image(&self, point: [f64; 2]) -> [f64; 2] {
        [
            point[0] / self.grid.column_spacing_mm,
            point[1] / self.grid.row_spacing_mm,
        ]
    }

    /// The two pixel centres farthest apart, each end moved out by half a pixel along the axis
    /// (to the pixel's edge in that direction).
    fn long_axis(&self) -> Axis {
        let hull = &self.hull;
        let (mut best, mut ends) = (0.0, (hull[0], hull[0]));
        for (i, &a) in hull.iter().enumerate() {
            for &b in &hull[i + 1..] {
                let d = distance(a, b);
                if d > best {
                    (best, ends) = (d, (a, b));
                }
            }
        }
        let (cs, rs) = (self.grid.column_spacing_mm, self.grid.row_spacing_mm);
        // A single pixel is measured along its row.
        let u = if best > 0.0 {
            [
                (ends.1[0] - ends.0[0]) / best,
                (ends.1[1] - ends.0[1]) / best,
            ]
        } else {
            [1.0, 0.0]
        };
        let half = 0.5 * (u[0].abs() * cs + u[1].abs() * rs);
        let from = [ends.0[0] - half * u[0], ends.0[1] - half * u[1]];
        let to = [ends.1[0] + half * u[0], ends.1[1] + half * u[1]];
        Axis {
            from: self.image(from),
            to: self.image(to),
            length_mm: best + 2.0 * half,
        }
    }

    /// The longest chord of the pixel set perpendicular to the long axis, sampled every quarter
    /// pixel along and across it.
    fn short_axis(&self, long: &Axis) -> Axis {
        let mm = |p: [f64; 2]| {
            [
                p[0] * self.grid.column_spacing_mm,
                p[1] * self.grid.row_spacing_mm,
            ]
        };
        let (a, b) = (mm(long.from), mm(long.to));
        let length = long.length_mm;
        let step = self.grid.column_spacing_mm.min(self.grid.row_spacing_mm) / 4.0;
        if length <= 0.0 {
            return Axis {
                length_mm: 0.0,
                ..*long
            };
        }
        let u = [(b[0] - a[0]) / length, (b[1] - a[1]) / length];
        let v = [-u[1], u[0]];
        let at = |t: f64, s: f64| [a[0] + t * u[0] + s * v[0], a[1] + t * u[1] + s * v[1]];
        let mut best: Option<(f64, [f64; 2], [f64; 2])> = None;
        let samples = (length / step).ceil() as usize;
        let across = samples as isize;
        for i in 0..=samples {
            let t = (i as f64 * step).min(length);
            let inside: Vec<f64> = (-across..=across)
                .map(|j| j as f64 * step)
                .filter(|&s| self.contains(at(t, s)))
                .collect();
            let (Some(&low), Some(&high)) = (inside.first(), inside.last()) else {
                continue;
            };
            // The samples sit inside the pixels: extend each end by half a step to the edge.
            let (mut low, mut high) = (low - step / 2.0, high + step / 2.0);
            // Never longer than the long axis (a few pixels can make it so): both ends move in
            // alike, so that the line drawn is as long as the length reported.
            let excess = (high - low - length).max(0.0);
            low += excess / 2.0;
            high -= excess / 2.0;
            let chord = high - low;
            if best.is_none_or(|(l, _, _)| chord > l) {
                best = Some((chord, at(t, low), at(t, high)));
            }
        }
        let (length_mm, from, to) = best.unwrap_or((0.0, a, a));
        Axis {
            from: self.image(from),
            to: self.image(to),
            length_mm,
        }
    }
}

fn distance(a: [f64; 2], b: [f64; 2]) -> f64 {
    ((a[0] - b[0]).powi(2) + (a[1] - b[1]).powi(2)).sqrt()
}

/// Andrew's monotone chain: the hull's vertices, without duplicates.
fn convex_hull(mut points: Vec<[f64; 2]>) -> Vec<[f64; 2]> {
    points.sort_by(|a, b| a[0].total_cmp(&b[0]).then(a[1].total_cmp(&b[1])));
    points.dedup();
    if points.len() < 3 {
        return points;
    }
    let cross = |o: [f64; 2], a: [f64; 2], b: [f64; 2]| {
        (a[0] - o[0]) * (b[1] - o[1]) - (a[1] - o[1]) * (b[0] - o[0])
    };
    let mut hull: Vec<[f64; 2]> = Vec::with_capacity(points.len() * 2);
    for pass in [points.clone(), points.into_iter().rev().collect()] {
        let start = hull.len();
        for p in pass {
            while hull.len() >= start + 2
                && cross(hull[hull.len() - 2], hull[hull.len() - 1], p) <= 0.0
            {
                hull.pop();
            }
            hull.push(p);
        }
        hull.pop();
    }
    hull
}

#[cfg(test)]
mod tests {
    use super::*;

    fn slice(columns: usize, rows: usize, set: impl Fn(usize, usize) -> bool) -> SliceMask {
        SliceMask {
            slice: 0,
            pixels: (0..rows * columns)
                .map(|i| u8::from(set(i % columns, i / columns)))
                .collect(),
        }
    }

    const GRID: PixelGrid = PixelGrid {
        columns: 64,
        column_spacing_mm: 0.5,
        row_spacing_mm: 0.5,
    };

    #[test]
    fn a_disc_has_equal_axes_of_its_diameter() {
        // A disc of radius 10 pixels (5 mm) centred at pixel centre (32.5, 32.5).
        let disc = slice(64, 64, |c, r| {
            let (x, y) = (c as f64 + 0.5 - 32.5, r as f64 + 0.5 - 32.5);
            x * x + y * y <= 100.0
        });
        let axes = measure(&[disc], GRID).unwrap();
        assert!((axes.long.length_mm - 10.0).abs() < 0.6, "{axes:?}");
        assert!((axes.short.length_mm - 10.0).abs() < 0.6, "{axes:?}");
        assert!(axes.short.length_mm <= axes.long.length_mm);
    }

    #[test]
    fn a_rectangle_gives_its_diagonal_and_the_perpendicular_chord() {
        // 20 x 6 pixels (10 x 3 mm): the long axis is about the diagonal, sqrt(10^2 + 3^2) mm.
        let rectangle = slice(64, 64, |c, r| {
            (10..30).contains(&c) && (20..26).contains(&r)
        });
        let axes = measure(&[rectangle], GRID).unwrap();
        assert!(
            (axes.long.length_mm - 109f64.sqrt()).abs() < 0.25,
            "{axes:?}"
        );
        // Its ends are near opposite corners, in image coordinates.
        let near = |p: [f64; 2], q: [f64; 2]| (p[0] - q[0]).hypot(p[1] - q[1]) < 0.75;
        let (a, b) = (axes.long.from, axes.long.to);
        assert!(
            (near(a, [10.0, 20.0]) && near(b, [30.0, 26.0]))
                || (near(a, [10.0, 26.0]) && near(b, [30.0, 20.0]))
                || (near(b, [10.0, 20.0]) && near(a, [30.0, 26.0]))
                || (near(b, [10.0, 26.0]) && near(a, [30.0, 20.0])),
            "{axes:?}"
        );
        // The longest chord perpendicular to the diagonal of a 10 x 3 rectangle.
        let expected = 3.0 / (10.0 / 109f64.sqrt());
        assert!(
            (axes.short.length_mm - expected).abs() < 0.3,
            "{axes:?} vs {expected}"
        );
        let dot = (axes.long.to[0] - axes.long.from[0]) * (axes.short.to[0] - axes.short.from[0])
            + (axes.long.to[1] - axes.long.from[1]) * (axes.short.to[1] - axes.short.from[1]);
        assert!(dot.abs() < 1e-6, "not perpendicular");
        assert!(
            (axes.mean_diameter_mm() - (axes.long.length_mm + axes.short.length_mm) / 2.0).abs()
                < 1e-12
        );
    }

    #[test]
    fn the_largest_slice_is_measured() {
        let small = slice(64, 64, |c, r| c == 5 && r == 5);
        let mut large = slice(64, 64, |c, r| {
            (10..14).contains(&c) && (10..14).contains(&r)
        });
        large.slice = 7;
        let axes = measure(&[small, large], GRID).unwrap();
        assert_eq!((axes.footprint_index, axes.series_slice), (1, 7));
        // 4 x 4 pixels of 0.5 mm: the diagonal of a 2 mm square.
        assert!((axes.long.length_mm - 8f64.sqrt()).abs() < 1e-9, "{axes:?}");
        // A single pixel measures one pixel.
        let one = slice(64, 64, |c, r| c == 3 && r == 3);
        let axes = measure(&[one], GRID).unwrap();
        assert!((axes.long.length_mm - 0.5).abs() < 1e-12, "{axes:?}");
        assert!(measure(&[slice(64, 64, |_, _| false)], GRID).is_none());
        assert!(measure(&[], GRID).is_none());
    }

    /// Every small pixel set, on grids of several spacings: each axis is drawn exactly as long as
    /// its reported length, and the short axis is never the longer one.
    #[test]
    fn axes_are_drawn_as_long_as_they_are_reported_on_small_sets() {
        for (cs, rs) in [(0.5, 0.5), (0.9, 0.9), (0.7, 1.25), (1.25, 0.7)] {
            let grid = PixelGrid {
                columns: 4,
                column_spacing_mm: cs,
                row_spacing_mm: rs,
            };
            // Every non-empty subset of a 4 x 3 block.
            for bits in 1u32..(1 << 12) {
                let mask = slice(4, 3, |c, r| bits & (1 << (r * 4 + c)) != 0);
                let axes = measure(&[mask], grid).unwrap();
                for axis in [axes.long, axes.short] {
                    let drawn = (((axis.to[0] - axis.from[0]) * cs).powi(2)
                        + ((axis.to[1] - axis.from[1]) * rs).powi(2))
                    .sqrt();
                    assert!(
                        (drawn - axis.length_mm).abs() < 1e-9,
                        "set {bits:#x} on {cs} x {rs}: drawn {drawn}, reported {}",
                        axis.length_mm
                    );
                }
                assert!(axes.short.length_mm <= axes.long.length_mm + 1e-9);
            }
        }
    }
}
