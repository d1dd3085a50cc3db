//! LUNA16 as a training source: the MetaImage CT volumes of the official subsets (`subset0` to
//! `subset9`, the challenge's ten folds) and `annotations.csv` (world coordinates in mm and
//! diameter per nodule). Each scan is resampled to 1 mm like a DICOM series, and each nodule is
//! labelled as a sphere of its annotated diameter (LUNA16 ships no masks). LUNA16 has no reader
//! ratings, so its nodules carry none: training on it is segmentation (and nodule/non-nodule)
//! only. `annotations_excluded.csv` lists findings the challenge neither counts nor penalises;
//! they are not labelled.

use crate::datasets::{NoduleLabel, Scan, Source};
use crate::luna16_csv::parse_findings;
use crate::volume::Volume;
use crate::volume::metaimage;
use crate::volume::resample::{Interpolation, resample_isotropic};
use crate::volume::series::AcquiredSeries;
use anyhow::Context;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// One annotated nodule: centre (world mm) and diameter (mm).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Annotation {
    pub center: [f64; 3],
    pub diameter_mm: f64,
}

/// The scans of some LUNA16 subsets with their annotations.
pub struct Luna16Source {
    /// (series UID, .mhd path), sorted by subset then name.
    scans: Vec<(String, PathBuf)>,
    annotations: BTreeMap<String, Vec<Annotation>>,
}

impl Luna16Source {
    /// Reads `root/annotations.csv` and lists `root/subsetN/*.mhd` for each N in `subsets`.
    pub fn open(root: &Path, subsets: &[usize]) -> anyhow::Result<Self> {
        let csv = root.join("annotations.csv");
        let text = std::fs::read_to_string(&csv)
            .with_context(|| format!("cannot read {}", csv.display()))?;
        let mut annotations: BTreeMap<String, Vec<Annotation>> = BTreeMap::new();
        for finding in parse_findings("annotations.csv", &text)? {
            annotations
                .entry(finding.series)
                .or_default()
                .push(Annotation {
                    center: finding.center,
                    diameter_mm: finding.diameter_mm,
                });
        }
        let mut scans = Vec::new();
        for &subset in subsets {
            anyhow::ensure!(subset < 10, "LUNA16 has subsets 0 to 9, not {subset}");
            let dir = root.join(format!("subset{subset}"));
            let mut found: Vec<(String, PathBuf)> = std::fs::read_dir(&dir)
                .with_context(|| format!("cannot list {}", dir.display()))?
                .filter_map(|e| e.ok().map(|e| e.path()))
                .filter(|p| p.extension().is_some_and(|x| x == "mhd"))
                .filter_map(|p| {
                    let id = p.file_stem()?.to_str()?.to_owned();
                    Some((id, p))
                })
                .collect();
            found.sort();
            scans.extend(found);
        }
        anyhow::ensure!(
            !scans.is_empty(),
            "no .mhd file in subsets {subsets:?} of {}",
            root.display()
        );
        Ok(Self { scans, annotations })
    }

    /// The series UIDs of the listed scans, in order.
    pub fn ids(&self) -> impl Iterator<Item = &str> {
        self.scans.iter().map(|(id, _)| id.as_str())
    }

    /// The annotations of one series.
    pub fn annotations(&self, series_uid: &str) -> &[Annotation] {
        self.annotations
            .get(series_uid)
            .map_or(&[], |v| v.as_slice())
    }
}

impl Source for Luna16Source {
    fn len(&self) -> usize {
        self.scans.len()
    }

    fn scan(&self, index: usize) -> anyhow::Result<Scan> {
        let (id, path) = &self.scans[index];
        let volume = metaimage::read(path)?;
        let series = AcquiredSeries::from_volume(id, &volume);
        let hu = resample_isotropic(&series, 1.0, Interpolation::BSpline);
        let annotations = self.annotations(id);
        anyhow::ensure!(
            annotations.len() < usize::from(u8::MAX),
            "{id}: too many nodules for the label volume"
        );
        let labels = sphere_labels(&hu, annotations);
        Ok(Scan {
            id: id.clone(),
            hu,
            labels,
            nodules: NoduleLabel::numbered(annotations.iter().map(|_| Vec::new())),
        })
    }
}

/// Label n (from 1) on every voxel whose centre lies within annotation n's sphere; a voxel in
/// two spheres keeps the first.
pub fn sphere_labels(grid: &Volume<f32>, annotations: &[Annotation]) -> Volume<u8> {
    let g = grid.geometry;
    let mut labels = Volume::filled(g, 0u8);
    for (n, a) in annotations.iter().enumerate() {
        let radius = a.diameter_mm / 2.0;
        let centre = g.patient_to_index(a.center);
        let reach = [0, 1, 2].map(|axis| radius / g.spacing[axis] + 1.0);
        // Index bounds of the sphere on each axis, clipped to the grid; skip it when outside.
        let mut bounds = [(0usize, 0usize); 3];
        let mut outside = false;
        for axis in 0..3 {
            let lo = (centre[axis] - reach[axis]).floor().max(0.0);
            let hi = (centre[axis] + reach[axis])
                .ceil()
                .min(g.size[axis] as f64 - 1.0);
            outside |= hi < lo;
            bounds[axis] = (lo as usize, hi.max(0.0) as usize);
        }
        if outside {
            continue;
        }
        let range = |axis: usize| bounds[axis].0..=bounds[axis].1;
        for k in range(2) {
            for j in range(1) {
                for i in range(0) {
                    let p = g.index_to_patient([i as f64, j as f64, k as f64]);
                    let d2: f64 = (0..3).map(|axis| (p[axis] - a.center[axis]).powi(2)).sum();
                    let at = g.offset(i, j, k);
                    if d2 <= radius * radius && labels.data[at] == 0 {
                        labels.data[at] = (n + 1) as u8;
                    }
                }
            }
        }
    }
    labels
}
