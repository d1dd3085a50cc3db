//! The prepared training scans: every scan a [`Source`] gives, on its 1 mm grid, held either in
//! memory (fastest; about 5 bytes per voxel for all scans at once) or on disk under the run
//! directory, written once and read back one scan per step. On disk a data set larger than
//! memory can be trained on (LUNA16 at 1 mm is about 180 MB a scan), and a resumed run does not
//! prepare its scans again. Both give the same patches bit for bit, so the choice does not
//! change a run's result.
//!
//! On disk, scan `n` is three files in `prepared/`: `scan-n.hu` (f32, little endian, i fastest),
//! `scan-n.labels` (u8) and `scan-n.json` (id, geometry, nodules), the last written only after
//! the other two, so a scan whose JSON exists is whole. `source.json` names what the scans were
//! prepared from; a directory prepared from anything else is prepared again.

use crate::datasets::{NoduleLabel, Scan, Source, nodule_boxes};
use crate::volume::Volume;
use crate::volume::geometry::Geometry;
use anyhow::Context;
use serde::{Deserialize, Serialize};
use std::borrow::Cow;
use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

/// Where the prepared scans are held during a run.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ScanStorage {
    /// All scans in memory.
    #[default]
    Memory,
    /// Under the run directory, one scan in memory at a time.
    Disk,
}

/// What the trainer needs of every scan at all times: its nodules and which of them it shows.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ScanSummary {
    pub id: String,
    pub nodules: Vec<NoduleLabel>,
    /// Labels with at least one voxel in the scan.
    pub visible: BTreeSet<u8>,
}

impl ScanSummary {
    fn of(scan: &Scan) -> Self {
        Self {
            id: scan.id.clone(),
            nodules: scan.nodules.clone(),
            visible: nodule_boxes(scan)
                .keys()
                .filter_map(|&l| u8::try_from(l).ok())
                .collect(),
        }
    }
}

/// The scans of a run, prepared.
pub struct PreparedScans {
    summaries: Vec<ScanSummary>,
    held: Held,
}

enum Held {
    Memory(Vec<Scan>),
    Disk(PathBuf),
}

/// The header of a scan on disk: its summary, so that a resumed run reads no voxels to start,
/// and its geometry.
#[derive(Debug, Serialize, Deserialize)]
struct ScanHeader {
    #[serde(flatten)]
    summary: ScanSummary,
    origin: [f64; 3],
    spacing: [f64; 3],
    direction: [[f64; 3]; 3],
    size: [usize; 3],
}

const SOURCE_FILE: &str = "source.json";

impl PreparedScans {
    /// Prepares every scan of `source`. On disk they go to `dir`, where scans prepared earlier
    /// from the same `origin` (any JSON naming the source) are kept. `progress` is told each
    /// scan's index as it is ready.
    pub fn prepare(
        source: &dyn Source,
        storage: ScanStorage,
        dir: &Path,
        origin: &serde_json::Value,
        mut progress: impl FnMut(usize),
    ) -> anyhow::Result<Self> {
        let mut summaries = Vec::with_capacity(source.len());
        let held = match storage {
            ScanStorage::Memory => {
                let mut scans = Vec::with_capacity(source.len());
                for index in 0..source.len() {
                    let scan = source.scan(index)?;
                    summaries.push(ScanSummary::of(&scan));
                    scans.push(scan);
                    progress(index);
                }
                Held::Memory(scans)
            }
            ScanStorage::Disk => {
                open_cache(dir, origin)?;
                for index in 0..source.len() {
                    let summary = match read_header(dir, index)? {
                        Some(header) => header.summary,
                        None => write_scan(dir, index, &source.scan(index)?)?,
                    };
                    summaries.push(summary);
                    progress(index);
                }
                Held::Disk(dir.to_owned())
            }
        };
        Ok(Self { summaries, held })
    }

    pub fn len(&self) -> usize {
        self.summaries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.summaries.is_empty()
    }

    pub fn summaries(&self) -> &[ScanSummary] {
        &self.summaries
    }

    /// Scan `index`, borrowed from memory or read from disk.
    pub fn scan(&self, index: usize) -> anyhow::Result<Cow<'_, Scan>> {
        match &self.held {
            Held::Memory(scans) => Ok(Cow::Borrowed(&scans[index])),
            Held::Disk(dir) => Ok(Cow::Owned(read_scan(dir, index)?)),
        }
    }
}

/// Makes `dir` hold scans from `origin` only: a directory prepared from another origin is
/// emptied first.
fn open_cache(dir: &Path, origin: &serde_json::Value) -> anyhow::Result<()> {
    let source_path = dir.join(SOURCE_FILE);
    let recorded: Option<serde_json::Value> = std::fs::read(&source_path)
        .ok()
        .and_then(|bytes| serde_json::from_slice(&bytes).ok());
    if recorded.as_ref() != Some(origin) {
        if dir.exists() {
            std::fs::remove_dir_all(dir)
                .with_context(|| format!("cannot clear {}", dir.display()))?;
        }
        std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
        std::fs::write(&source_path, serde_json::to_vec_pretty(origin)?)
            .with_context(|| format!("cannot write {}", source_path.display()))?;
    }
    Ok(())
}

fn scan_path(dir: &Path, index: usize, extension: &str) -> PathBuf {
    dir.join(format!("scan-{index:05}.{extension}"))
}

/// A file under its final name is whole (`crate::write::write_whole`).
fn write_whole(path: &Path, bytes: &[u8]) -> anyhow::Result<()> {
    crate::write::write_bytes_whole(path, bytes)
        .with_context(|| format!("cannot write {}", path.display()))
}

fn write_scan(dir: &Path, index: usize, scan: &Scan) -> anyhow::Result<ScanSummary> {
    let hu: Vec<u8> = scan.hu.data.iter().flat_map(|v| v.to_le_bytes()).collect();
    write_whole(&scan_path(dir, index, "hu"), &hu)?;
    write_whole(&scan_path(dir, index, "labels"), &scan.labels.data)?;
    let g = scan.hu.geometry;
    let header = ScanHeader {
        summary: ScanSummary::of(scan),
        origin: g.origin,
        spacing: g.spacing,
        direction: g.direction,
        size: g.size,
    };
    write_whole(
        &scan_path(dir, index, "json"),
        &serde_json::to_vec_pretty(&header)?,
    )?;
    Ok(header.summary)
}

/// The header of scan `index`, None when it has not been prepared.
fn read_header(dir: &Path, index: usize) -> anyhow::Result<Option<ScanHeader>> {
    let path = scan_path(dir, index, "json");
    match std::fs::read(&path) {
        Ok(bytes) => Ok(Some(
            serde_json::from_slice(&bytes).with_context(|| format!("{}", path.display()))?,
        )),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e).with_context(|| format!("cannot read {}", path.display())),
    }
}

/// Reads one voxel file, refusing one whose length does not match the header.
fn read_voxels(path: &Path, voxels: usize, bytes_per_voxel: usize) -> anyhow::Result<Vec<u8>> {
    let bytes = std::fs::read(path).with_context(|| format!("cannot read {}", path.display()))?;
    anyhow::ensure!(
        bytes.len() == voxels * bytes_per_voxel,
        "{} holds {} bytes where its header says {} voxels of {} bytes: delete the run's \
         prepared/ directory to prepare the scans again",
        path.display(),
        bytes.len(),
        voxels,
        bytes_per_voxel
    );
    Ok(bytes)
}

fn read_scan(dir: &Path, index: usize) -> anyhow::Result<Scan> {
    let header = read_header(dir, index)?.with_context(|| {
        format!(
            "{} is missing: delete the run's prepared/ directory to prepare the scans again",
            scan_path(dir, index, "json").display()
        )
    })?;
    let geometry = Geometry {
        origin: header.origin,
        spacing: header.spacing,
        direction: header.direction,
        size: header.size,
    };
    let voxels = header.size.iter().product::<usize>();
    let hu = read_voxels(&scan_path(dir, index, "hu"), voxels, 4)?
        .chunks_exact(4)
        .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
        .collect();
    let labels = read_voxels(&scan_path(dir, index, "labels"), voxels, 1)?;
    Ok(Scan {
        id: header.summary.id,
        hu: Volume { geometry, data: hu },
        labels: Volume {
            geometry,
            data: labels,
        },
        nodules: header.summary.nodules,
    })
}
