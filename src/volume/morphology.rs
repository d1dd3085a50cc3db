//! Binary-mask morphology on voxel grids (i fastest, then j, then k): connected components,
//! the bounding boxes of labels, slice-wise hole filling and dilation. Shared by the lung mask,
//! the network's nodule location map and training.

use rayon::prelude::*;
use std::collections::BTreeMap;

/// Inclusive index bounds (i, j, k) of one label's voxels, and how many there are.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LabelBox {
    pub min: [usize; 3],
    pub max: [usize; 3],
    pub voxels: usize,
}

/// The box of every non-zero label of a label grid of `size`, by label.
pub fn label_boxes<L: Copy + Into<u32>>(labels: &[L], size: [usize; 3]) -> BTreeMap<u32, LabelBox> {
    let [ni, nj, _] = size;
    let mut boxes: BTreeMap<u32, LabelBox> = BTreeMap::new();
    for (v, &l) in labels.iter().enumerate() {
        let l: u32 = l.into();
        if l == 0 {
            continue;
        }
        let idx = [v % ni, (v / ni) % nj, v / (ni * nj)];
        let b = boxes.entry(l).or_insert(LabelBox {
            min: idx,
            max: idx,
            voxels: 0,
        });
        for (a, &i) in idx.iter().enumerate() {
            b.min[a] = b.min[a].min(i);
            b.max[a] = b.max[a].max(i);
        }
        b.voxels += 1;
    }
    boxes
}

/// Masks smaller than this are labelled in one piece (splitting costs more than it saves).
const PARALLEL_MIN_VOXELS: usize = 1 << 20;

/// Labels the 6-connected components of `mask` (1 = foreground); returns labels (0 =
/// background) and each label's size (index 0 unused). Labels are numbered in the order of
/// each component's first voxel. Large masks are labelled in slabs of k-slices in parallel,
/// then the pieces that touch across slab faces are joined: the same labels as one pass.
pub fn components(mask: &[u8], size: [usize; 3]) -> (Vec<u32>, Vec<usize>) {
    let slabs = if mask.len() < PARALLEL_MIN_VOXELS {
        1
    } else {
        rayon::current_num_threads() * 2
    };
    components_in_slabs(mask, size, slabs)
}

fn components_in_slabs(mask: &[u8], size: [usize; 3], slabs: usize) -> (Vec<u32>, Vec<usize>) {
    let [ni, nj, nk] = size;
    let slice = ni * nj;
    let mut labels = vec![0u32; mask.len()];
    if mask.is_empty() {
        return (labels, vec![0]);
    }
    let slab = nk.div_ceil(slabs.clamp(1, nk)) * slice;
    // Each slab on its own: labels from 1 per slab, in the order of their first voxel.
    let pieces: Vec<Vec<usize>> = labels
        .par_chunks_mut(slab)
        .zip(mask.par_chunks(slab))
        .map(|(labels, mask)| flood(mask, labels, [ni, nj, mask.len() / slice]))
        .collect();
    if pieces.len() == 1 {
        return (labels, pieces.into_iter().next().unwrap_or_default());
    }
    // Provisional ids: slab by slab, so a smaller id never holds a later first voxel.
    let mut piece_sizes = vec![0usize];
    let mut offsets = Vec::with_capacity(pieces.len());
    for sizes in &pieces {
        offsets.push(piece_sizes.len() as u32 - 1);
        piece_sizes.extend(&sizes[1..]);
    }
    labels
        .par_chunks_mut(slab)
        .zip(&offsets)
        .for_each(|(labels, &offset)| {
            labels
                .iter_mut()
                .filter(|l| **l != 0)
                .for_each(|l| *l += offset);
        });
    // Pieces touching across a slab face are one component; its root is its smallest id.
    let mut parent: Vec<u32> = (0..piece_sizes.len() as u32).collect();
    fn root(parent: &mut [u32], mut x: u32) -> u32 {
        while parent[x as usize] != x {
            parent[x as usize] = parent[parent[x as usize] as usize];
            x = parent[x as usize];
        }
        x
    }
    for face in (slab..labels.len()).step_by(slab) {
        let below = &labels[face - slice..face];
        let above = &labels[face..face + slice];
        for (&a, &b) in below.iter().zip(above) {
            if a != 0 && b != 0 {
                let (ra, rb) = (root(&mut parent, a), root(&mut parent, b));
                parent[ra.max(rb) as usize] = ra.min(rb);
            }
        }
    }
    // Final labels in the order of the roots, i.e. of the components' first voxels.
    let mut final_label = vec![0u32; piece_sizes.len()];
    let mut sizes = vec![0usize];
    for p in 1..piece_sizes.len() as u32 {
        let r = root(&mut parent, p);
        if r == p {
            final_label[p as usize] = sizes.len() as u32;
            sizes.push(0);
        } else {
            final_label[p as usize] = final_label[r as usize];
        }
        sizes[final_label[p as usize] as usize] += piece_sizes[p as usize];
    }
    labels
        .par_iter_mut()
        .for_each(|l| *l = final_label[*l as usize]);
    (labels, sizes)
}

/// One pass of flood fills over `mask` (of `size`), labels written into `labels` (all 0 on
/// entry); returns each label's size (index 0 unused).
fn flood(mask: &[u8], labels: &mut [u32], size: [usize; 3]) -> Vec<usize> {
    let [ni, nj, nk] = size;
    let mut sizes = vec![0usize];
    let mut stack = Vec::new();
    for start in 0..mask.len() {
        if mask[start] == 0 || labels[start] != 0 {
            continue;
        }
        let label = sizes.len() as u32;
        let mut count = 0;
        labels[start] = label;
        stack.push(start);
        while let Some(v) = stack.pop() {
            count += 1;
            let i = v % ni;
            let j = (v / ni) % nj;
            let k = v / (ni * nj);
            let mut visit = |n: usize| {
                if mask[n] != 0 && labels[n] == 0 {
                    labels[n] = label;
                    stack.push(n);
                }
            };
            if i > 0 {
                visit(v - 1);
            }
            if i + 1 < ni {
                visit(v + 1);
            }
            if j > 0 {
                visit(v - ni);
            }
            if j + 1 < nj {
                visit(v + ni);
            }
            if k > 0 {
                visit(v - ni * nj);
            }
            if k + 1 < nk {
                visit(v + ni * nj);
            }
        }
        sizes.push(count);
    }
    sizes
}

/// Fills, in every k-slice, the background not connected to the slice border.
pub fn fill_holes_per_slice(mask: &mut [u8], size: [usize; 3]) {
    let [ni, nj, _] = size;
    mask.par_chunks_mut(ni * nj).for_each(|slice| {
        // 2 = background reached from the border.
        let mut stack: Vec<usize> = Vec::new();
        let seed = |p: usize, slice: &mut [u8], stack: &mut Vec<usize>| {
            if slice[p] == 0 {
                slice[p] = 2;
                stack.push(p);
            }
        };
        for i in 0..ni {
            seed(i, slice, &mut stack);
            seed((nj - 1) * ni + i, slice, &mut stack);
        }
        for j in 0..nj {
            seed(j * ni, slice, &mut stack);
            seed(j * ni + ni - 1, slice, &mut stack);
        }
        while let Some(p) = stack.pop() {
            let (i, j) = (p % ni, p / ni);
            if i > 0 {
                seed(p - 1, slice, &mut stack);
            }
            if i + 1 < ni {
                seed(p + 1, slice, &mut stack);
            }
            if j > 0 {
                seed(p - ni, slice, &mut stack);
            }
            if j + 1 < nj {
                seed(p + ni, slice, &mut stack);
            }
        }
        for v in slice.iter_mut() {
            *v = u8::from(*v != 2);
        }
    });
}

/// Dilates a 0/1 mask by `radius` steps of 6-connectivity (a 3-D diamond of that radius). Each
/// step ORs every row with its six neighbours' rows, whole rows at a time (so the compiler
/// vectorises it), slices in parallel.
pub fn dilate(mask: &mut [u8], size: [usize; 3], radius: usize) {
    let [ni, nj, nk] = size;
    let plane = ni * nj;
    if radius == 0 || mask.is_empty() {
        return;
    }
    let mut source = mask.to_vec();
    for step in 0..radius {
        if step > 0 {
            source.copy_from_slice(mask);
        }
        let source = &source;
        mask.par_chunks_mut(plane)
            .enumerate()
            .for_each(|(k, slice)| {
                let row_of = |k: usize, j: usize| &source[k * plane + j * ni..][..ni];
                for j in 0..nj {
                    let row = &mut slice[j * ni..(j + 1) * ni];
                    let same = row_of(k, j);
                    or_into(&mut row[1..], &same[..ni - 1]);
                    or_into(&mut row[..ni - 1], &same[1..]);
                    let neighbours = [
                        (j > 0).then(|| row_of(k, j - 1)),
                        (j + 1 < nj).then(|| row_of(k, j + 1)),
                        (k > 0).then(|| row_of(k - 1, j)),
                        (k + 1 < nk).then(|| row_of(k + 1, j)),
                    ];
                    for neighbour in neighbours.into_iter().flatten() {
                        or_into(row, neighbour);
                    }
                }
            });
    }
}

/// `dst[i] |= src[i]`.
fn or_into(dst: &mut [u8], src: &[u8]) {
    for (d, s) in dst.iter_mut().zip(src) {
        *d |= *s;
    }
}

/// Calls `set(x, y)` for the pixels of a `columns` x `rows` grid inside or on a closed outline (even-odd rule on pixel centres, plus the edge).
pub fn fill_outline(
    edge: &[(f64, f64)],
    columns: usize,
    rows: usize,
    mut set: impl FnMut(usize, usize),
) {
    if edge.is_empty() {
        return;
    }
    let (min_y, max_y) = edge.iter().fold((f64::MAX, f64::MIN), |(lo, hi), p| {
        (lo.min(p.1), hi.max(p.1))
    });
    for y in (min_y.floor().max(0.0) as usize)..=(max_y.ceil() as usize).min(rows - 1) {
        let yc = y as f64;
        let mut crossings: Vec<f64> = Vec::new();
        for i in 0..edge.len() {
            let (a, b) = (edge[i], edge[(i + 1) % edge.len()]);
            if (a.1 <= yc && b.1 > yc) || (b.1 <= yc && a.1 > yc) {
                crossings.push(a.0 + (yc - a.1) / (b.1 - a.1) * (b.0 - a.0));
            }
        }
        crossings.sort_by(f64::total_cmp);
        for pair in crossings.chunks(2) {
            if let [x0, x1] = pair {
                for x in (x0.ceil().max(0.0) as usize)..=(x1.floor().max(0.0) as usize) {
                    if x < columns {
                        set(x, y);
                    }
                }
            }
        }
    }
    for &(x, y) in edge {
        let (x, y) = (x.round(), y.round());
        if x >= 0.0 && y >= 0.0 && (x as usize) < columns && (y as usize) < rows {
            set(x as usize, y as usize);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slabs_give_the_labels_and_sizes_of_one_pass() {
        let mut rng = crate::random::Rng::new(5);
        for (size, density) in [
            ([9, 7, 23], 0.45),
            ([16, 16, 16], 0.3),
            ([5, 4, 40], 0.6),
            ([12, 3, 2], 0.5),
            ([1, 1, 9], 0.7),
        ] {
            let n = size.iter().product();
            let mask: Vec<u8> = (0..n).map(|_| u8::from(rng.uniform() < density)).collect();
            let one = components_in_slabs(&mask, size, 1);
            assert!(one.1.len() > 2, "{size:?}: too few components to test");
            for slabs in 2..=8 {
                assert_eq!(
                    components_in_slabs(&mask, size, slabs),
                    one,
                    "{size:?} {slabs}"
                );
            }
        }
        assert_eq!(components_in_slabs(&[], [0, 0, 0], 4), (vec![], vec![0]));
    }

    /// Dilation sets exactly the voxels within L1 distance `radius` of the mask (the diamond
    /// of six-connected steps), edges included.
    #[test]
    fn dilation_is_the_l1_ball_around_the_mask() {
        let mut rng = crate::random::Rng::new(8);
        for (size, density, radius) in [
            ([11, 9, 7], 0.02, 3),
            ([1, 6, 5], 0.1, 2),
            ([8, 1, 1], 0.2, 1),
            ([6, 7, 9], 0.05, 0),
        ] {
            let [ni, nj, nk] = size;
            let n = ni * nj * nk;
            let mask: Vec<u8> = (0..n).map(|_| u8::from(rng.uniform() < density)).collect();
            let at = |v: usize| [v % ni, (v / ni) % nj, v / (ni * nj)];
            let expected: Vec<u8> = (0..n)
                .map(|v| {
                    let p = at(v);
                    u8::from((0..n).any(|u| {
                        let q = at(u);
                        mask[u] == 1 && (0..3).map(|a| p[a].abs_diff(q[a])).sum::<usize>() <= radius
                    }))
                })
                .collect();
            let mut dilated = mask.clone();
            dilate(&mut dilated, size, radius);
            assert_eq!(dilated, expected, "{size:?} radius {radius}");
        }
    }

    #[test]
    fn a_component_joined_only_across_slabs_is_one_label() {
        // A U shape in (i, k): two columns that meet only in the last slice.
        let size = [3, 1, 8];
        let mut mask = vec![0u8; 24];
        for k in 0..8 {
            mask[k * 3] = 1;
            mask[k * 3 + 2] = 1;
        }
        mask[7 * 3 + 1] = 1;
        let (labels, sizes) = components_in_slabs(&mask, size, 4);
        assert_eq!(sizes, vec![0, 17]);
        assert!(
            labels
                .iter()
                .zip(&mask)
                .all(|(&l, &m)| (l == 1) == (m == 1))
        );
    }
}
