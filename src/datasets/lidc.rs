//! LIDC-IDRI as a training source: DICOM series with the readers' XML beside them (up to four
//! blinded-then-unblinded reading sessions, each with outlined nodules and their malignancy
//! rating 1-5). The readers' marks are grouped into nodules by the distance of their centroids
//! (as pylidc clusters annotations), each nodule's mask is the 50% consensus of its readers'
//! outlines on the source slices, and its ratings are those of the readers who marked it.
//! Marks of nodules under 3 mm (a single point, no ratings) and non-nodules are not labelled.

use crate::datasets::{NoduleLabel, Scan, Source};
use crate::volume::Volume;
use crate::volume::geometry::Vec3;
use crate::volume::morphology::fill_outline;
use crate::volume::resample::{Interpolation, resample_isotropic};
use crate::volume::series::{AcquiredSeries, files_in, load_series};
use anyhow::Context;
use std::path::{Path, PathBuf};

/// One outline of one reader's nodule on one slice.
#[derive(Debug, Clone, PartialEq)]
pub struct Roi {
    pub z_mm: f64,
    pub sop_instance_uid: String,
    /// `false`: the outline is a hole (excluded from the nodule).
    pub inclusion: bool,
    /// Boundary pixels (column x, row y).
    pub edge: Vec<(f64, f64)>,
}

/// One reader's mark of a nodule.
#[derive(Debug, Clone, PartialEq)]
pub struct ReaderNodule {
    /// Reading session (reader) number, from 0.
    pub reader: usize,
    pub id: String,
    /// Malignancy 1-5 (nodules of 3 mm or more only).
    pub malignancy: Option<u8>,
    pub rois: Vec<Roi>,
}

/// What one LIDC XML file says.
#[derive(Debug, Clone, PartialEq)]
pub struct LidcAnnotations {
    pub series_uid: String,
    pub readers: usize,
    pub marks: Vec<ReaderNodule>,
}

/// Parses an LIDC-IDRI reader XML file (namespaces are ignored: element local names only).
pub fn parse_xml(text: &str) -> anyhow::Result<LidcAnnotations> {
    let document = roxmltree::Document::parse(text).context("not well-formed XML")?;
    let child_text = |node: roxmltree::Node, name: &str| -> Option<String> {
        node.children()
            .find(|c| c.tag_name().name() == name)
            .and_then(|c| c.text())
            .map(|t| t.trim().to_owned())
    };
    let root = document.root_element();
    let series_uid = root
        .descendants()
        .find(|n| n.tag_name().name() == "SeriesInstanceUid")
        .and_then(|n| n.text())
        .map(|t| t.trim().to_owned())
        .context("no SeriesInstanceUid in the response header")?;
    let sessions: Vec<roxmltree::Node> = root
        .children()
        .filter(|n| n.tag_name().name() == "readingSession")
        .collect();
    let mut marks = Vec::new();
    for (reader, session) in sessions.iter().enumerate() {
        for nodule in session
            .children()
            .filter(|n| n.tag_name().name() == "unblindedReadNodule")
        {
            let malignancy = nodule
                .children()
                .find(|c| c.tag_name().name() == "characteristics")
                .and_then(|c| child_text(c, "malignancy"))
                .and_then(|m| m.parse::<u8>().ok())
                .filter(|m| (1..=5).contains(m));
            let mut rois = Vec::new();
            for roi in nodule.children().filter(|n| n.tag_name().name() == "roi") {
                let z_mm = child_text(roi, "imageZposition")
                    .and_then(|z| z.parse().ok())
                    .context("an roi without imageZposition")?;
                let edge = roi
                    .children()
                    .filter(|n| n.tag_name().name() == "edgeMap")
                    .filter_map(|e| {
                        Some((
                            child_text(e, "xCoord")?.parse().ok()?,
                            child_text(e, "yCoord")?.parse().ok()?,
                        ))
                    })
                    .collect();
                rois.push(Roi {
                    z_mm,
                    sop_instance_uid: child_text(roi, "imageSOP_UID").unwrap_or_default(),
                    inclusion: child_text(roi, "inclusion")
                        .is_none_or(|i| i.eq_ignore_ascii_case("TRUE")),
                    edge,
                });
            }
            marks.push(ReaderNodule {
                reader,
                id: child_text(nodule, "noduleID").unwrap_or_default(),
                malignancy,
                rois,
            });
        }
    }
    Ok(LidcAnnotations {
        series_uid,
        readers: sessions.len(),
        marks,
    })
}

/// The slice a mark's outline lies on: by SOP Instance UID, else the nearest position.
fn slice_of(series: &AcquiredSeries, roi: &Roi) -> usize {
    if let Some(i) = series
        .slices
        .iter()
        .position(|s| s.sop_instance_uid == roi.sop_instance_uid)
    {
        return i;
    }
    let z = |i: usize| series.slices[i].position[2];
    (0..series.slices.len())
        .min_by(|&a, &b| (z(a) - roi.z_mm).abs().total_cmp(&(z(b) - roi.z_mm).abs()))
        .unwrap_or(0)
}

/// Patient position of pixel (x, y) of slice `slice`.
fn pixel_to_patient(series: &AcquiredSeries, slice: usize, x: f64, y: f64) -> Vec3 {
    let origin = series.slices[slice].position;
    [0, 1, 2].map(|a| {
        origin[a]
            + series.row_direction[a] * x * series.column_spacing_mm
            + series.column_direction[a] * y * series.row_spacing_mm
    })
}

/// A mark's centroid (patient mm) and radius (largest distance of an edge point from it).
fn centroid(series: &AcquiredSeries, mark: &ReaderNodule) -> Option<(Vec3, f64)> {
    let points: Vec<Vec3> = mark
        .rois
        .iter()
        .filter(|r| r.inclusion)
        .flat_map(|r| {
            let slice = slice_of(series, r);
            r.edge
                .iter()
                .map(move |&(x, y)| pixel_to_patient(series, slice, x, y))
        })
        .collect();
    if points.is_empty() {
        return None;
    }
    let n = points.len() as f64;
    let c = [0, 1, 2].map(|a| points.iter().map(|p| p[a]).sum::<f64>() / n);
    let radius = points
        .iter()
        .map(|p| (0..3).map(|a| (p[a] - c[a]).powi(2)).sum::<f64>().sqrt())
        .fold(0.0, f64::max);
    Some((c, radius))
}

/// Smallest distance (mm) under which two readers' marks are one nodule.
const MIN_GROUPING_DISTANCE_MM: f64 = 3.0;

/// Groups the readers' marks of nodules of 3 mm or more (those with an outline of more than one
/// point) into nodules: marks whose centroids lie within the larger of their radii (at least
/// 3 mm) are one nodule, transitively. Returns indices into `annotations.marks`, by nodule.
pub fn group_marks(series: &AcquiredSeries, annotations: &LidcAnnotations) -> Vec<Vec<usize>> {
    let outlined: Vec<(usize, Vec3, f64)> = annotations
        .marks
        .iter()
        .enumerate()
        .filter(|(_, m)| m.rois.iter().any(|r| r.edge.len() > 1))
        .filter_map(|(i, m)| centroid(series, m).map(|(c, r)| (i, c, r)))
        .collect();
    // Union-find over the outlined marks.
    let mut parent: Vec<usize> = (0..outlined.len()).collect();
    fn find(parent: &mut [usize], i: usize) -> usize {
        let mut root = i;
        while parent[root] != root {
            root = parent[root];
        }
        parent[i] = root;
        root
    }
    for a in 0..outlined.len() {
        for b in a + 1..outlined.len() {
            let (_, ca, ra) = outlined[a];
            let (_, cb, rb) = outlined[b];
            let d = (0..3).map(|x| (ca[x] - cb[x]).powi(2)).sum::<f64>().sqrt();
            if d <= ra.max(rb).max(MIN_GROUPING_DISTANCE_MM) {
                let (root_a, root_b) = (find(&mut parent, a), find(&mut parent, b));
                parent[root_a] = root_b;
            }
        }
    }
    let mut groups: std::collections::BTreeMap<usize, Vec<usize>> = Default::default();
    for (i, &(mark, _, _)) in outlined.iter().enumerate() {
        let root = find(&mut parent, i);
        groups.entry(root).or_default().push(mark);
    }
    let mut nodules: Vec<Vec<usize>> = groups.into_values().collect();
    nodules.sort();
    nodules
}

/// Nodule labels on the source grid (label n = nodule n): pixels inside the outlines of at
/// least half of the nodule's readers (holes removed per reader).
pub fn consensus_labels(
    series: &AcquiredSeries,
    annotations: &LidcAnnotations,
    nodules: &[Vec<usize>],
) -> Volume<u8> {
    let geometry = series.geometry();
    let mut labels = Volume::filled(geometry, 0u8);
    let plane = series.rows * series.columns;
    for (n, marks) in nodules.iter().enumerate() {
        let mut votes: std::collections::HashMap<usize, u8> = Default::default();
        for &m in marks {
            let mark = &annotations.marks[m];
            // This reader's pixels: inclusions minus exclusions, per slice.
            let mut mine: std::collections::HashSet<usize> = Default::default();
            for inclusion in [true, false] {
                for roi in mark.rois.iter().filter(|r| r.inclusion == inclusion) {
                    let slice = slice_of(series, roi);
                    fill_outline(&roi.edge, series.columns, series.rows, |x, y| {
                        let at = slice * plane + y * series.columns + x;
                        if inclusion {
                            mine.insert(at);
                        } else {
                            mine.remove(&at);
                        }
                    });
                }
            }
            for at in mine {
                *votes.entry(at).or_default() += 1;
            }
        }
        let needed = marks.len().div_ceil(2) as u8;
        for (at, count) in votes {
            if count >= needed && labels.data[at] == 0 {
                labels.data[at] = (n + 1) as u8;
            }
        }
    }
    labels
}

/// LIDC-IDRI cases under a root folder: every folder holding a reader XML file and its series.
pub struct LidcSource {
    /// (reader XML, series folder), sorted.
    cases: Vec<(PathBuf, PathBuf)>,
}

impl LidcSource {
    /// Finds every `*.xml` under `root` (any depth); its folder is the series.
    pub fn open(root: &Path) -> anyhow::Result<Self> {
        let mut cases = Vec::new();
        let mut pending = vec![root.to_owned()];
        while let Some(dir) = pending.pop() {
            for entry in
                std::fs::read_dir(&dir).with_context(|| format!("cannot list {}", dir.display()))?
            {
                let path = entry?.path();
                if path.is_dir() {
                    pending.push(path);
                } else if path
                    .extension()
                    .is_some_and(|x| x.eq_ignore_ascii_case("xml"))
                {
                    cases.push((path, dir.clone()));
                }
            }
        }
        cases.sort();
        anyhow::ensure!(
            !cases.is_empty(),
            "no LIDC XML file under {}",
            root.display()
        );
        Ok(Self { cases })
    }
}

impl Source for LidcSource {
    fn len(&self) -> usize {
        self.cases.len()
    }

    fn scan(&self, index: usize) -> anyhow::Result<Scan> {
        let (xml, dir) = &self.cases[index];
        let annotations = parse_xml(
            &std::fs::read_to_string(xml)
                .with_context(|| format!("cannot read {}", xml.display()))?,
        )
        .with_context(|| xml.display().to_string())?;
        let series = load_series(&files_in(dir)?)?;
        anyhow::ensure!(
            series.series_uid == annotations.series_uid,
            "{} describes series {}, the folder holds {}",
            xml.display(),
            annotations.series_uid,
            series.series_uid
        );
        let nodules = group_marks(&series, &annotations);
        anyhow::ensure!(nodules.len() < usize::from(u8::MAX), "too many nodules");
        let source_labels = consensus_labels(&series, &annotations, &nodules);
        let hu = resample_isotropic(&series, 1.0, Interpolation::BSpline);
        // Labels onto the 1 mm grid: the source voxel nearest each 1 mm voxel centre.
        let mut labels = Volume::filled(hu.geometry, 0u8);
        let [ni, nj, nk] = hu.geometry.size;
        for k in 0..nk {
            for j in 0..nj {
                for i in 0..ni {
                    let p = hu.geometry.index_to_patient([i as f64, j as f64, k as f64]);
                    if let Some(label) = source_labels.nearest(p) {
                        labels.data[hu.geometry.offset(i, j, k)] = label;
                    }
                }
            }
        }
        Ok(Scan {
            id: annotations.series_uid.clone(),
            hu,
            labels,
            nodules: NoduleLabel::numbered(nodules.iter().map(|marks| {
                marks
                    .iter()
                    .filter_map(|&m| annotations.marks[m].malignancy)
                    .collect()
            })),
        })
    }
}
