//! The durable file store. Each instance is written once, under its final name (created
//! exclusively, so nothing is ever overwritten), then the file and its directory are fsynced.
//! A different object under a known SOP Instance UID gets a new versioned name.
//!
//! Writing in place rather than to a temporary file and renaming saves a journal commit per
//! instance. A crash mid-write can leave a partial file under its final name; it was never
//! acknowledged, and startup recovery moves it to `quarantine/` (see `recovery`).
//!
//! A node writes only in its *area* of the storage directory: all of it when it is the only
//! node (SQLite), `nodes/<name>/` when the directory is shared (PostgreSQL). Its lock, instances,
//! results and quarantine live there, so nodes never recover or quarantine each other's files;
//! every path in the index is relative to the storage directory, so any node reads any file.

use crate::store::instance::InstanceAttributes;
use dicom_object::FileMetaTable;
use std::fs::{self, File};
use std::io::{self, BufWriter, Write};
use std::path::{Path, PathBuf};

/// Subdirectory holding received instances, as `<study>/<series>/<sop>[.vN].dcm`.
const INSTANCES_DIR: &str = "instances";
/// Subdirectory for files found unreadable at startup (partial writes of unacknowledged instances).
const QUARANTINE_DIR: &str = "quarantine";

/// Name of the lock file in the storage directory.
const LOCK_FILE: &str = "jnsc.lock";

/// An exclusive lock on a storage directory, held while a node runs (released when dropped, or
/// by the kernel when the process dies).
#[derive(Debug)]
pub struct StorageLock {
    _file: File,
}

/// Takes the lock of a node's storage area (`area` is absolute; created if needed), or fails at
/// once if another process holds it: two nodes in one area would recover, index and quarantine
/// each other's files.
pub fn lock_storage(area: &Path) -> io::Result<StorageLock> {
    use std::os::fd::AsRawFd;
    fs::create_dir_all(area)?;
    let path = area.join(LOCK_FILE);
    let file = fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)?;
    // SAFETY: flock on a file descriptor this function owns; no memory is shared.
    let locked = unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) };
    if locked != 0 {
        let error = io::Error::last_os_error();
        return Err(if error.kind() == io::ErrorKind::WouldBlock {
            io::Error::other(format!(
                "the storage directory is in use by another jnsc node (lock {})",
                path.display()
            ))
        } else {
            error
        });
    }
    Ok(StorageLock { _file: file })
}

/// The on-disk store rooted at the configured storage directory, writing in this node's area.
#[derive(Debug, Clone)]
pub struct FileStore {
    root: PathBuf,
    /// This node's area, relative to `root` (empty: all of it).
    area: PathBuf,
}

impl FileStore {
    /// Opens (creating if needed) the store of the node whose area is `area` (relative to
    /// `root`; empty for a node alone on its storage).
    pub fn open(root: &Path, area: &Path) -> io::Result<Self> {
        fs::create_dir_all(root.join(area).join(INSTANCES_DIR))?;
        Ok(Self {
            root: root.to_owned(),
            area: area.to_owned(),
        })
    }

    /// Moves an unreadable file out of the instance tree into the area's `quarantine/`, keeping
    /// it for inspection. Returns its new path.
    pub fn quarantine(&self, path: &Path) -> io::Result<PathBuf> {
        let dir = self.root.join(&self.area).join(QUARANTINE_DIR);
        fs::create_dir_all(&dir)?;
        let name = path
            .file_name()
            .map_or_else(Default::default, |n| n.to_owned());
        let mut target = dir.join(&name);
        let mut n = 1;
        while target.exists() {
            n += 1;
            target = dir.join(format!("{}.{n}", name.to_string_lossy()));
        }
        fs::rename(path, &target)?;
        Ok(target)
    }

    /// Removes a file that was written but whose instance could not be indexed (and so was
    /// never acknowledged).
    pub fn remove(&self, relative: &Path) -> io::Result<()> {
        fs::remove_file(self.root.join(relative))
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    /// This node's area, relative to the root.
    pub fn area(&self) -> &Path {
        &self.area
    }

    /// The area's instance tree (`<study>/<series>/<sop>[.vN].dcm`), relative to the root.
    pub fn instances_dir(&self) -> PathBuf {
        self.area.join(INSTANCES_DIR)
    }

    /// Path, relative to the root, of version `version` (1-based) of an instance this node
    /// stores. Only validated UIDs make up the name, so it cannot leave the store.
    pub fn instance_path(&self, attributes: &InstanceAttributes, version: i64) -> PathBuf {
        let file_name = if version <= 1 {
            format!("{}.dcm", attributes.sop_instance_uid)
        } else {
            format!("{}.v{version}.dcm", attributes.sop_instance_uid)
        };
        self.instances_dir()
            .join(attributes.study_uid.as_str())
            .join(attributes.series_uid.as_str())
            .join(file_name)
    }

    /// Absolute path of a path relative to the root.
    pub fn absolute(&self, relative: &Path) -> PathBuf {
        self.root.join(relative)
    }

    /// Writes a DICOM Part 10 file (preamble, file meta group, then the data set bytes exactly as
    /// received) durably at `relative`: created exclusively, written, file and directory fsynced.
    /// Returns the file size. Fails rather than replace a file.
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
        let file = fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&target)?;
        let result = write_file(file, meta, data_set).and_then(|size| {
            sync_dir(dir)?;
            Ok(size)
        });
        if result.is_err() {
            let _ = fs::remove_file(&target);
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

fn write_file(file: File, meta: &FileMetaTable, data_set: &[u8]) -> io::Result<u64> {
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

/// Space on the file system holding a path.
#[derive(Debug, Clone, Copy, serde::Serialize)]
pub struct DiskSpace {
    /// Bytes available to this (unprivileged) process.
    pub free_bytes: u64,
    pub total_bytes: u64,
}

/// The space of the file system that holds `path` (statvfs).
#[allow(clippy::unnecessary_cast)] // the statvfs field types differ between platforms
pub fn disk_space(path: &Path) -> io::Result<DiskSpace> {
    use std::os::unix::ffi::OsStrExt;
    let c_path = std::ffi::CString::new(path.as_os_str().as_bytes())
        .map_err(|_| io::Error::other("path contains a NUL byte"))?;
    let mut stats = std::mem::MaybeUninit::<libc::statvfs>::uninit();
    // SAFETY: `c_path` is a valid NUL-terminated string and `stats` points to writable memory of
    // the right type; statvfs fills it completely when it returns 0.
    let result = unsafe { libc::statvfs(c_path.as_ptr(), stats.as_mut_ptr()) };
    if result != 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: statvfs returned 0, so the structure is initialised.
    let stats = unsafe { stats.assume_init() };
    let block = stats.f_frsize as u64;
    Ok(DiskSpace {
        free_bytes: stats.f_bavail as u64 * block,
        total_bytes: stats.f_blocks as u64 * block,
    })
}
