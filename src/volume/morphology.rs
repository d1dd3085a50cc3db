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

/// Labels the 6-connected components of `mask` (1 = foreground); returns labels (0 =
/// background) and each label's size (index 0 unused).
pub fn components(mask: &[u8], size: [usize; 3]) -> (Vec<u32>, Vec<usize>) {
    let [ni, nj, nk] = size;
    let mut labels = vec![0u32; mask.len()];
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
    (labels, sizes)
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

/// Dilates by `radius` steps of 6-connectivity (a 3-D diamond of that radius).
pub fn dilate(mask: &mut [u8], size: [usize; 3], radius: usize) {
    let [ni, nj, nk] = size;
    for _ in 0..radius {
        let source = mask.to_vec();
        mask.par_chunks_mut(ni * nj)
            .enumerate()
            .for_each(|(k, slice)| {
                for j in 0..nj {
                    for i in 0..ni {
                        let p = j * ni + i;
                        if slice[p] == 1 {
                            continue;
                        }
                        let v = k * ni * nj + p;
                        let set = (i > 0 && source[v - 1] == 1)
                            || (i + 1 < ni && source[v + 1] == 1)
                            || (j > 0 && source[v - ni] == 1)
                            || (j + 1 < nj && source[v + ni] == 1)
                            || (k > 0 && source[v - ni * nj] == 1)
                            || (k + 1 < nk && source[v + ni * nj] == 1);
                        if set {
                            slice[p] = 1;
                        }
                    }
                }
            });
    }
}
