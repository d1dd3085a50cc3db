//! The durable file store: every instance is written to a temporary file, fsynced, renamed into
//! place and its directory fsynced, so a file that exists under its final name is complete.
//! Existing files are never overwritten: a different object under a known SOP Instance UID gets
//! a new versioned name.

use crate::store::instance::InstanceAttributes;
use dicom_object::FileMetaTable;
use std::fs::{self, File};
use std::io::{self, BufWriter, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

/// Subdirectory holding received instances, as `<study>/<series>/<sop>[.vN].dcm`.
const INSTANCES_DIR: &str = "instances";
/// Subdirectory for files being written; emptied at start (only unacknowledged data lives there).
const TMP_DIR: &str = "tmp";

/// The on-disk store rooted at the configured storage directory.
#[derive(Debug)]
pub struct FileStore {
    root: PathBuf,
    next_tmp: AtomicU64,
}

impl FileStore {
    /// Opens (creating if needed) the store and removes temporary files left by a crash: their
    /// instances were never acknowledged, so the sender still has them.
    pub fn open(root: &Path) -> io::Result<Self> {
        fs::create_dir_all(root.join(INSTANCES_DIR))?;
        let tmp = root.join(TMP_DIR);
        fs::create_dir_all(&tmp)?;
        for entry in fs::read_dir(&tmp)? {
            let entry = entry?;
            if entry.file_type()?.is_file() {
                fs::remove_file(entry.path())?;
            }
        }
        Ok(Self {
            root: root.to_owned(),
            next_tmp: AtomicU64::new(0),
        })
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    /// Path, relative to the root, of version `version` (1-based) of an instance. Only validated
    /// UIDs make up the name, so it cannot leave the store.
    pub fn instance_path(attributes: &InstanceAttributes, version: i64) -> PathBuf {
        let file_name = if version <= 1 {
            format!("{}.dcm", attributes.sop_instance_uid)
        } else {
            format!("{}.v{version}.dcm", attributes.sop_instance_uid)
        };
        Path::new(INSTANCES_DIR)
            .join(attributes.study_uid.as_str())
            .join(attributes.series_uid.as_str())
            .join(file_name)
    }

    /// Absolute path of a path relative to the root.
    pub fn absolute(&self, relative: &Path) -> PathBuf {
        self.root.join(relative)
    }

    /// Writes a DICOM Part 10 file (preamble, file meta group, then the data set bytes exactly as
    /// received) durably at `relative`. Returns the file size. Fails rather than replace a file.
    pub fn write_part10(
        &self,
        relative: &Path,
        meta: &FileMetaTable,
        data_set: &[u8],
    ) -> io::Result<u64> {
        let target = self.root.join(relative);
        let dir = target
            .parent()
            .ok_or_else(|| io::Error::other("instance path has no parent directory"))?;
        create_dir_durably(dir)?;
        if target.exists() {
            return Err(io::Error::new(
                io::ErrorKind::AlreadyExists,
                format!("{} already exists", target.display()),
            ));
        }

        let tmp = self.root.join(TMP_DIR).join(format!(
            "{}-{}.tmp",
            std::process::id(),
            self.next_tmp.fetch_add(1, Ordering::Relaxed)
        ));
        let result = write_file(&tmp, meta, data_set).and_then(|size| {
            fs::rename(&tmp, &target)?;
            sync_dir(dir)?;
            Ok(size)
        });
        if result.is_err() {
            let _ = fs::remove_file(&tmp);
        }
        result
    }
}

impl FileStore {
    /// The data set bytes of a Part 10 file written by `write_part10` (everything after the
    /// file meta group).
    pub fn read_data_set(path: &Path) -> io::Result<Vec<u8>> {
        let bytes = fs::read(path)?;
        let group_length = bytes
            .get(128..144)
            .filter(|head| &head[..4] == b"DICM" && head[4..8] == [0x02, 0x00, 0x00, 0x00])
            .map(|head| u32::from_le_bytes([head[12], head[13], head[14], head[15]]) as usize)
            .ok_or_else(|| io::Error::other(format!("{} is not a Part 10 file", path.display())))?;
        let start = 144 + group_length;
        bytes
            .get(start..)
            .map(<[u8]>::to_vec)
            .ok_or_else(|| io::Error::other(format!("{} is truncated", path.display())))
    }
}

fn write_file(path: &Path, meta: &FileMetaTable, data_set: &[u8]) -> io::Result<u64> {
    let file = File::create(path)?;
    let mut out = BufWriter::with_capacity(64 * 1024, file);
    out.write_all(&[0u8; 128])?;
    out.write_all(b"DICM")?;
    meta.write(&mut out).map_err(io::Error::other)?;
    out.write_all(data_set)?;
    let file = out.into_inner().map_err(|e| e.into_error())?;
    file.sync_all()?;
    file.metadata().map(|m| m.len())
}

/// `create_dir_all`, fsyncing each parent whose entry list changed so new directories survive a
/// power loss too.
fn create_dir_durably(dir: &Path) -> io::Result<()> {
    if dir.is_dir() {
        return Ok(());
    }
    if let Some(parent) = dir.parent() {
        create_dir_durably(parent)?;
    }
    match fs::create_dir(dir) {
        Ok(()) => sync_dir(dir.parent().unwrap_or(Path::new("."))),
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists && dir.is_dir() => Ok(()),
        Err(e) => Err(e),
    }
}

fn sync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}
