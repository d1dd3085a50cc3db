//! Splitting a region of the location map that is not compact (a nodule fused with the vessels
//! or pleura it touches, or a vessel tree) into its thick parts. A nodule is a ball; a vessel is
//! a tube. The distance of each voxel to the region's outside has a local maximum at each ball's
//! centre, about its radius. Each such maximum of radius `MIN_SEED_RADIUS_MM` or more (strongest
//! first, one per ball) keeps the voxels within its radius plus `MARGIN_MM` (a voxel reached by
//! several goes to the nearest ball surface); what no ball keeps falls apart into connected
//! pieces: a small one on a single ball (the end of an oval nodule, a spicule) goes back to that
//! ball's part, the others (vessels) are parts of their own. A compact region (its volume at most `COMPACT_RATIO`
//! times its largest inscribed ball's) is left whole.

use crate::volume::morphology::components;

/// A region at most this many times the volume of its largest inscribed ball is left whole.
pub const COMPACT_RATIO: f64 = 3.0;
/// Smallest ball radius that seeds a part of its own (a 3 mm nodule, LUNA16's smallest).
pub const MIN_SEED_RADIUS_MM: f64 = 2.5;
/// A part keeps the voxels up to this far outside its ball (lobulation, a rough edge).
pub const MARGIN_MM: f64 = 1.5;
/// A piece outside every ball that touches one ball only, and has at most this fraction of
/// that ball's part's voxels, goes back to it.
pub const MERGE_RATIO: f64 = 0.5;
/// At most this many balls per region (the largest); the rest of it falls into pieces.
const MAX_SEEDS: usize = 64;

/// Splits the region `voxels` (offsets into a grid of `size` voxels of isotropic `spacing_mm`)
/// into parts, each a list of offsets; a compact region comes back whole.
pub fn split_region(voxels: &[usize], size: [usize; 3], spacing_mm: f64) -> Vec<Vec<usize>> {
    let [ni, nj, _] = size;
    let index_of = |v: usize| [v % ni, (v / ni) % nj, v / (ni * nj)];
    let mut lo = [usize::MAX; 3];
    let mut hi = [0; 3];
    for &v in voxels {
        let idx = index_of(v);
        for a in 0..3 {
            lo[a] = lo[a].min(idx[a]);
            hi[a] = hi[a].max(idx[a]);
        }
    }
    // The region's box with one voxel of outside all round.
    let dims = [0, 1, 2].map(|a| hi[a] - lo[a] + 3);
    let local = |idx: [usize; 3]| {
        (idx[0] - lo[0] + 1) + dims[0] * ((idx[1] - lo[1] + 1) + dims[1] * (idx[2] - lo[2] + 1))
    };
    let mut inside = vec![false; dims[0] * dims[1] * dims[2]];
    for &v in voxels {
        inside[local(index_of(v))] = true;
    }
    let distance = chamfer_distance(&inside, dims);
    // Radius of the ball around a voxel: to the boundary, half a voxel before the outside.
    let radius = |at: usize| (f64::from(distance[at]) - 0.5) * spacing_mm;
    let largest = (0..inside.len())
        .filter(|&at| inside[at])
        .map(radius)
        .fold(0.0, f64::max);
    let ball = |r: f64| 4.0 / 3.0 * std::f64::consts::PI * r.powi(3);
    let volume = voxels.len() as f64 * spacing_mm.powi(3);
    if volume <= COMPACT_RATIO * ball(largest.max(spacing_mm / 2.0)) {
        return vec![voxels.to_vec()];
    }

    let seeds = ball_centres(&inside, &distance, dims, spacing_mm);
    let coords = |at: usize| {
        let [x, y, z] = [
            at % dims[0],
            (at / dims[0]) % dims[1],
            at / (dims[0] * dims[1]),
        ];
        [x as f64, y as f64, z as f64]
    };
    // Each voxel: the part of the ball whose surface is nearest, if within the margin.
    let mut part = vec![0u32; inside.len()];
    let mut rest = vec![0u8; inside.len()];
    for at in (0..inside.len()).filter(|&at| inside[at]) {
        let p = coords(at);
        let nearest = seeds
            .iter()
            .enumerate()
            .map(|(n, (centre, r))| {
                let c = coords(*centre);
                let d = (0..3).map(|a| (p[a] - c[a]).powi(2)).sum::<f64>().sqrt() * spacing_mm;
                (n, d - r)
            })
            .min_by(|a, b| a.1.total_cmp(&b.1));
        match nearest {
            Some((n, gap)) if gap <= MARGIN_MM => part[at] = n as u32 + 1,
            _ => rest[at] = 1,
        }
    }
    let (pieces, piece_sizes) = components(&rest, dims);
    // A small piece on one ball only (an end of an oval nodule, a stub) goes back to it.
    let mut touches: Vec<Option<Option<u32>>> = vec![None; piece_sizes.len()];
    for at in (0..inside.len()).filter(|&at| pieces[at] != 0) {
        let piece = pieces[at] as usize;
        for n in face_neighbours(at, dims[0], dims[1]) {
            if part[n] != 0 {
                touches[piece] = match touches[piece] {
                    None => Some(Some(part[n])),
                    Some(Some(p)) if p == part[n] => Some(Some(p)),
                    _ => Some(None),
                };
            }
        }
    }
    let part_sizes = {
        let mut sizes = vec![0usize; seeds.len() + 1];
        for &p in &part {
            sizes[p as usize] += 1;
        }
        sizes
    };
    let owner = |piece: usize| match touches[piece] {
        Some(Some(p))
            if piece_sizes[piece] as f64 <= MERGE_RATIO * part_sizes[p as usize] as f64 =>
        {
            p as usize - 1
        }
        _ => seeds.len() + piece - 1,
    };
    let mut parts: Vec<Vec<usize>> = vec![Vec::new(); seeds.len() + piece_sizes.len() - 1];
    let global = |at: usize| {
        let [x, y, z] = [
            at % dims[0],
            (at / dims[0]) % dims[1],
            at / (dims[0] * dims[1]),
        ];
        let idx = [x + lo[0] - 1, y + lo[1] - 1, z + lo[2] - 1];
        idx[0] + ni * (idx[1] + nj * idx[2])
    };
    for at in 0..inside.len() {
        if part[at] != 0 {
            parts[part[at] as usize - 1].push(global(at));
        } else if pieces[at] != 0 {
            parts[owner(pieces[at] as usize)].push(global(at));
        }
    }
    parts.retain(|p| !p.is_empty());
    parts
}

/// The centres and radii (mm) of the region's balls: local maxima of the distance with a
/// radius of at least `MIN_SEED_RADIUS_MM`, largest first, each dropped if its centre lies
/// inside a larger ball kept before it.
fn ball_centres(
    inside: &[bool],
    distance: &[f32],
    dims: [usize; 3],
    spacing_mm: f64,
) -> Vec<(usize, f64)> {
    let [di, dj, _] = dims;
    let radius = |at: usize| (f64::from(distance[at]) - 0.5) * spacing_mm;
    let mut maxima: Vec<(usize, f64)> = (0..inside.len())
        .filter(|&at| inside[at] && radius(at) >= MIN_SEED_RADIUS_MM)
        .filter(|&at| {
            // Inside voxels never touch the box's edge (it has a voxel of outside all round).
            let d = distance[at];
            neighbours(at, di, dj).all(|n| distance[n] <= d)
        })
        .map(|at| (at, radius(at)))
        .collect();
    maxima.sort_by(|a, b| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0)));
    let coords = |at: usize| [at % di, (at / di) % dj, at / (di * dj)].map(|c| c as f64);
    let mut kept: Vec<(usize, f64)> = Vec::new();
    for (at, r) in maxima {
        let p = coords(at);
        let covered = kept.iter().any(|&(k, rk)| {
            let c = coords(k);
            let d = (0..3).map(|a| (p[a] - c[a]).powi(2)).sum::<f64>().sqrt() * spacing_mm;
            d <= rk + MARGIN_MM
        });
        if !covered {
            kept.push((at, r));
            if kept.len() == MAX_SEEDS {
                break;
            }
        }
    }
    kept
}

/// The 26 neighbours' offsets of an interior voxel of a grid `di` x `dj` x any.
fn neighbours(at: usize, di: usize, dj: usize) -> impl Iterator<Item = usize> {
    let slice = (di * dj) as isize;
    (-1isize..=1)
        .flat_map(move |z| (-1isize..=1).flat_map(move |y| (-1isize..=1).map(move |x| (x, y, z))))
        .filter(|&(x, y, z)| (x, y, z) != (0, 0, 0))
        .map(move |(x, y, z)| (at as isize + x + y * di as isize + z * slice) as usize)
}

/// The 6 face neighbours' offsets of an interior voxel of a grid `di` x `dj` x any.
fn face_neighbours(at: usize, di: usize, dj: usize) -> [usize; 6] {
    let slice = di * dj;
    [at - 1, at + 1, at - di, at + di, at - slice, at + slice]
}

/// Chamfer distance (voxel units; steps 1, sqrt 2, sqrt 3) of each inside voxel to the nearest
/// outside voxel; 0 outside. Two raster passes over the 26-neighbourhood.
fn chamfer_distance(inside: &[bool], dims: [usize; 3]) -> Vec<f32> {
    let [di, dj, dk] = dims;
    let mut d: Vec<f32> = inside
        .iter()
        .map(|&i| if i { f32::INFINITY } else { 0.0 })
        .collect();
    let step = |x: isize, y: isize, z: isize| ((x * x + y * y + z * z) as f32).sqrt();
    // The half of the neighbourhood before a voxel in raster order, and its cost.
    let before: Vec<(isize, isize, isize, f32)> = (-1isize..=1)
        .flat_map(|z| (-1isize..=1).flat_map(move |y| (-1isize..=1).map(move |x| (x, y, z))))
        .filter(|&(x, y, z)| (z, y, x) < (0, 0, 0))
        .map(|(x, y, z)| (x, y, z, step(x, y, z)))
        .collect();
    let at = |i: usize, j: usize, k: usize| i + di * (j + dj * k);
    let mut pass = |order: &mut dyn Iterator<Item = (usize, usize, usize)>, sign: isize| {
        for (i, j, k) in order {
            let here = at(i, j, k);
            if d[here] == 0.0 {
                continue;
            }
            let mut best = d[here];
            for &(x, y, z, cost) in &before {
                let (ni, nj, nk) = (
                    i as isize + sign * x,
                    j as isize + sign * y,
                    k as isize + sign * z,
                );
                if ni < 0
                    || nj < 0
                    || nk < 0
                    || ni >= di as isize
                    || nj >= dj as isize
                    || nk >= dk as isize
                {
                    continue;
                }
                best = best.min(d[at(ni as usize, nj as usize, nk as usize)] + cost);
            }
            d[here] = best;
        }
    };
    let forward = (0..dk).flat_map(|k| (0..dj).flat_map(move |j| (0..di).map(move |i| (i, j, k))));
    pass(&mut forward.into_iter(), 1);
    let backward = (0..dk).rev().flat_map(|k| {
        (0..dj)
            .rev()
            .flat_map(move |j| (0..di).rev().map(move |i| (i, j, k)))
    });
    pass(&mut backward.into_iter(), -1);
    d
}

#[cfg(test)]
mod tests {
    use super::*;

    fn paint_ball(mask: &mut [bool], size: [usize; 3], centre: [f64; 3], r: f64) {
        for k in 0..size[2] {
            for j in 0..size[1] {
                for i in 0..size[0] {
                    let d2 = (i as f64 - centre[0]).powi(2)
                        + (j as f64 - centre[1]).powi(2)
                        + (k as f64 - centre[2]).powi(2);
                    if d2 <= r * r {
                        mask[i + size[0] * (j + size[1] * k)] = true;
                    }
                }
            }
        }
    }

    fn offsets(mask: &[bool]) -> Vec<usize> {
        (0..mask.len()).filter(|&v| mask[v]).collect()
    }

    fn centre(part: &[usize], size: [usize; 3]) -> [f64; 3] {
        let mut sum = [0.0; 3];
        for &v in part {
            let idx = [
                v % size[0],
                (v / size[0]) % size[1],
                v / (size[0] * size[1]),
            ];
            for a in 0..3 {
                sum[a] += idx[a] as f64;
            }
        }
        sum.map(|s| s / part.len() as f64)
    }

    #[test]
    fn a_ball_stays_whole() {
        let size = [30, 30, 30];
        let mut mask = vec![false; 27_000];
        paint_ball(&mut mask, size, [15.0, 15.0, 15.0], 6.0);
        let voxels = offsets(&mask);
        assert_eq!(split_region(&voxels, size, 1.0), vec![voxels]);
    }

    #[test]
    fn a_ball_on_a_long_vessel_is_cut_free_of_it() {
        let size = [80, 30, 30];
        let mut mask = vec![false; 80 * 900];
        paint_ball(&mut mask, size, [20.0, 15.0, 15.0], 4.0);
        // A 3 x 3 vessel along i, from the ball to the far end.
        for i in 20..78 {
            for j in 14..=16 {
                for k in 14..=16 {
                    mask[i + 80 * (j + 30 * k)] = true;
                }
            }
        }
        let voxels = offsets(&mask);
        let parts = split_region(&voxels, size, 1.0);
        assert!(parts.len() >= 2, "{} parts", parts.len());
        let all: usize = parts.iter().map(Vec::len).sum();
        assert_eq!(all, voxels.len(), "every voxel in exactly one part");
        let ball = parts.iter().max_by_key(|p| p.len()).unwrap();
        let c = centre(ball, size);
        assert!(
            (c[0] - 20.0).abs() < 1.5,
            "ball part centred on the ball: {c:?}"
        );
        // The whole region's centre is far down the vessel.
        assert!(centre(&voxels, size)[0] > 25.0);
    }

    #[test]
    fn an_oval_nodule_stays_one_part() {
        let size = [40, 30, 30];
        let mut mask = vec![false; 40 * 900];
        for k in 0..30 {
            for j in 0..30 {
                for i in 0..40 {
                    let (x, y, z) = (i as f64 - 20.0, j as f64 - 15.0, k as f64 - 15.0);
                    if (x / 10.0).powi(2) + (y / 5.0).powi(2) + (z / 5.0).powi(2) <= 1.0 {
                        mask[i + 40 * (j + 30 * k)] = true;
                    }
                }
            }
        }
        let voxels = offsets(&mask);
        let parts = split_region(&voxels, size, 1.0);
        let biggest = parts.iter().map(Vec::len).max().unwrap();
        assert!(
            biggest == voxels.len(),
            "{} parts, the largest {biggest} of {}",
            parts.len(),
            voxels.len()
        );
    }

    #[test]
    fn two_balls_joined_by_a_neck_are_two_parts() {
        let size = [60, 30, 30];
        let mut mask = vec![false; 60 * 900];
        paint_ball(&mut mask, size, [15.0, 15.0, 15.0], 6.0);
        paint_ball(&mut mask, size, [42.0, 15.0, 15.0], 5.0);
        for i in 15..42 {
            mask[i + 60 * (15 + 30 * 15)] = true;
        }
        let parts = split_region(&offsets(&mask), size, 1.0);
        let mut big: Vec<[f64; 3]> = parts
            .iter()
            .filter(|p| p.len() > 100)
            .map(|p| centre(p, size))
            .collect();
        big.sort_by(|a, b| a[0].total_cmp(&b[0]));
        assert_eq!(big.len(), 2);
        assert!((big[0][0] - 15.0).abs() < 1.0 && (big[1][0] - 42.0).abs() < 1.0);
    }

    #[test]
    fn chamfer_distance_of_a_ball_peaks_at_its_centre() {
        let size = [21, 21, 21];
        let mut mask = vec![false; 21 * 21 * 21];
        paint_ball(&mut mask, size, [10.0, 10.0, 10.0], 5.0);
        let d = chamfer_distance(&mask, size);
        let centre = 10 + 21 * (10 + 21 * 10);
        // The nearest outside voxel is (13, 13, 13): sqrt 27 away, three diagonal steps.
        assert!((d[centre] - 27f32.sqrt()).abs() < 1e-5);
        assert_eq!(d[0], 0.0);
        assert!(d.iter().all(|&x| x <= d[centre]));
    }
}
