//! The durable file store. Each instance is written once, under its final name (created
//! exclusively, so nothing is ever overwritten), then the file and its directory are fsynced.
//! A different object under a known SOP Instance UID gets a new versioned name.
//!
//! Writing in place rather than to a temporary file and renaming saves a directory sync per
//! instance, and a file can be written while its data set is still arriving
//! ([`IncomingFile`]). A crash mid-write can leave a partial file under its final name; it was
//! never acknowledged, and startup recovery moves it to `quarantine/` (see `recovery`): before
//! its commit it lacks its magic "DICM", and a crash during the commit's one sync leaves a file
//! whose [`Seal`] (its length and checksum, in the preamble) does not match what reached the disk.
//!
//! A node writes only in its *area* of the storage directory: all of it when it is the only
//! node (SQLite), `nodes/<name>/` when the directory is shared (PostgreSQL). Its lock, instances,
//! results and quarantine live there, so nodes never recover or quarantine each other's files;
//! every path in the index is relative to the storage directory, so any node reads any file.

use crate::store::instance::FileKey;
use dicom_object::FileMetaTable;
use std::fs::{self, File};
use std::io::{self, Write};
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
    pub fn instance_path(&self, key: &FileKey, version: i64) -> PathBuf {
        let file_name = if version <= 1 {
            format!("{}.dcm", key.sop_instance_uid)
        } else {
            format!("{}.v{version}.dcm", key.sop_instance_uid)
        };
        self.instances_dir()
            .join(key.study_uid.as_str())
            .join(key.series_uid.as_str())
            .join(file_name)
    }

    /// Absolute path of a path relative to the root.
    pub fn absolute(&self, relative: &Path) -> PathBuf {
        self.root.join(relative)
    }

    /// Writes a DICOM Part 10 file (preamble, file meta group, then the data set bytes exactly as
    /// received) durably at `relative`: [`FileStore::create_incoming`], the data set appended,
    /// committed. Returns the file size. Fails rather than replace a file.
    pub fn write_part10(
        &self,
        relative: &Path,
        meta: &FileMetaTable,
        data_set: &[u8],
    ) -> io::Result<u64> {
        let mut file = self.create_incoming(relative, meta)?;
        file.append(data_set)?;
        file.commit()
    }

    /// Creates the Part 10 file of an instance at `relative`, exclusively (it fails rather than
    /// replace a file), after any directory it needs (made durable), and writes its preamble
    /// and file meta group. Its directory is fsynced by `sync_directory`, or at the latest by
    /// `commit`, which writes its magic "DICM".
    pub fn create_incoming(
        &self,
        relative: &Path,
        meta: &FileMetaTable,
    ) -> io::Result<IncomingFile> {
        let path = self.root.join(relative);
        let dir = path
            .parent()
            .ok_or_else(|| io::Error::other("instance path has no parent directory"))?
            .to_owned();
        create_dir_durably(&dir)?;
        let file = fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&path)?;
        let mut incoming = IncomingFile {
            file,
            path,
            dir,
            directory_synced: false,
            written: 0,
            write_back_from: 0,
            checksum: crc32fast::Hasher::new(),
            committed: false,
        };
        // The preamble and magic stay zero until `commit` seals the file.
        incoming.file.write_all(&[0u8; PREAMBLE_AND_MAGIC])?;
        incoming.written = PREAMBLE_AND_MAGIC as u64;
        let mut head = Vec::with_capacity(1024);
        meta.write(&mut head).map_err(io::Error::other)?;
        incoming.append(&head)?;
        Ok(incoming)
    }
}

/// Bytes of the Part 10 preamble and of the magic "DICM" after it.
const PREAMBLE_AND_MAGIC: usize = 132;

/// What the node writes into the 128-byte Part 10 preamble of its files (PS3.10 7.1 leaves it
/// to the implementation): the file's length and a CRC-32 of everything after the magic. The
/// preamble and magic are written together, last, and synced with the rest in one sync; a crash
/// during that sync can leave any of the file's blocks on the disk and not others, and a file
/// whose seal does not match its bytes is one that sync did not finish (never acknowledged).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Seal {
    /// The whole file's length in bytes.
    pub length: u64,
    /// CRC-32 (IEEE) of bytes 132.. (file meta group and data set).
    pub crc32: u32,
}

impl Seal {
    /// Marks a sealed preamble (bytes 0..8); files of earlier versions have a zero preamble.
    const TAG: &[u8; 8] = b"JNSCSEAL";

    /// The preamble and magic (bytes 0..132) of a file with this seal.
    fn head(self) -> [u8; PREAMBLE_AND_MAGIC] {
        let mut head = [0u8; PREAMBLE_AND_MAGIC];
        head[..8].copy_from_slice(Self::TAG);
        head[8..16].copy_from_slice(&self.length.to_le_bytes());
        head[16..20].copy_from_slice(&self.crc32.to_le_bytes());
        head[128..].copy_from_slice(b"DICM");
        head
    }

    /// Checks a stored file's `bytes` against the seal in its preamble. `Ok(None)`: a Part 10
    /// file without a seal (written before seals, when the magic was written only after the
    /// rest was synced, or not by this node), which stands or falls by its parse alone.
    pub fn verify(bytes: &[u8]) -> Result<Option<Seal>, String> {
        if bytes.get(128..132) != Some(b"DICM") {
            return Err("no DICOM magic: a write cut short before its commit".into());
        }
        if &bytes[..8] != Self::TAG {
            return Ok(None);
        }
        let seal = Seal {
            length: u64::from_le_bytes(bytes[8..16].try_into().expect("8 bytes")),
            crc32: u32::from_le_bytes(bytes[16..20].try_into().expect("4 bytes")),
        };
        if seal.length != bytes.len() as u64 {
            return Err(format!(
                "{} bytes on disk, sealed at {}: its commit's sync did not finish",
                bytes.len(),
                seal.length
            ));
        }
        if crc32fast::hash(&bytes[PREAMBLE_AND_MAGIC..]) != seal.crc32 {
            return Err(
                "checksum does not match its seal: its commit's sync did not finish".into(),
            );
        }
        Ok(Some(seal))
    }
}

/// A Part 10 file being written under its final name while its data set arrives. What is
/// appended is handed to the disk as it comes, every [`WRITE_BACK_STEP`] bytes (the kernel
/// starts writing it back), so that little is left to wait for at `commit`.
///
/// Its preamble and magic "DICM" (bytes 0..132) are written last, with its [`Seal`]: until
/// then no reader takes the file for DICOM, so a file cut short by a crash of the process or
/// the machine before its commit is never mistaken for an instance, and one cut short during
/// the commit's sync fails its seal (startup recovery quarantines both). Dropped before
/// `commit`, the file is removed.
#[derive(Debug)]
pub struct IncomingFile {
    file: File,
    path: PathBuf,
    /// The directory holding its name.
    dir: PathBuf,
    directory_synced: bool,
    written: u64,
    /// Where the bytes not yet handed to the disk begin.
    write_back_from: u64,
    /// CRC-32 of what was appended (everything after the magic), for the seal.
    checksum: crc32fast::Hasher,
    committed: bool,
}

/// How many appended bytes are handed to the disk at a time.
const WRITE_BACK_STEP: u64 = 256 * 1024;

impl IncomingFile {
    /// Appends `bytes`; starts the write-back of what was appended once a step of it is in.
    pub fn append(&mut self, bytes: &[u8]) -> io::Result<()> {
        self.file.write_all(bytes)?;
        self.checksum.update(bytes);
        self.written += bytes.len() as u64;
        if self.written - self.write_back_from >= WRITE_BACK_STEP {
            start_write_back(
                &self.file,
                self.write_back_from,
                self.written - self.write_back_from,
            );
            self.write_back_from = self.written;
        }
        Ok(())
    }

    /// Makes the file's name durable (fsyncs its directory): done early, while the data set
    /// arrives, it is off the path to the answer.
    pub fn sync_directory(&mut self) -> io::Result<()> {
        if !self.directory_synced {
            sync_dir(&self.dir)?;
            self.directory_synced = true;
        }
        Ok(())
    }

    /// Makes the file durable: its name (the directory synced, unless it was already), then
    /// its preamble and magic written with its [`Seal`], and one sync of its data. Returns its
    /// size.
    pub fn commit(mut self) -> io::Result<u64> {
        use std::os::unix::fs::FileExt;
        self.sync_directory()?;
        let seal = Seal {
            length: self.written,
            crc32: self.checksum.clone().finalize(),
        };
        self.file.write_all_at(&seal.head(), 0)?;
        self.file.sync_data()?;
        self.committed = true;
        Ok(self.written)
    }
}

impl Drop for IncomingFile {
    fn drop(&mut self) {
        if !self.committed {
            let _ = fs::remove_file(&self.path);
        }
    }
}

/// Asks the kernel to start writing `length` bytes at `offset` of `file` back to the disk,
/// without waiting (Linux `sync_file_range`; elsewhere they go at the next sync). Only an
/// early start: durability comes from the sync that follows, so a failure here is ignored.
fn start_write_back(file: &File, offset: u64, length: u64) {
    #[cfg(target_os = "linux")]
    let _ = sync_file_range(file, offset, length, libc::SYNC_FILE_RANGE_WRITE);
    #[cfg(not(target_os = "linux"))]
    let _ = (file, offset, length);
}

/// Writes the first `length` bytes of `file` back to the disk and waits until they are there,
/// without the file's metadata (Linux `sync_file_range`; elsewhere a data sync): what a later
/// sync of the file then still has to do is the rest (`bench ingest` times that).
pub(crate) fn write_back_and_wait(file: &File, length: u64) -> std::io::Result<()> {
    #[cfg(target_os = "linux")]
    return sync_file_range(
        file,
        0,
        length,
        libc::SYNC_FILE_RANGE_WAIT_BEFORE
            | libc::SYNC_FILE_RANGE_WRITE
            | libc::SYNC_FILE_RANGE_WAIT_AFTER,
    );
    #[cfg(not(target_os = "linux"))]
    {
        let _ = length;
        file.sync_data()
    }
}

#[cfg(target_os = "linux")]
fn sync_file_range(
    file: &File,
    offset: u64,
    length: u64,
    flags: libc::c_uint,
) -> std::io::Result<()> {
    use std::os::fd::AsRawFd;
    let (Ok(offset), Ok(length)) = (i64::try_from(offset), i64::try_from(length)) else {
        return Err(std::io::Error::other("range beyond i64"));
    };
    // SAFETY: a system call on a file descriptor `file` owns; no memory is passed.
    match unsafe { libc::sync_file_range(file.as_raw_fd(), offset, length, flags) } {
        0 => Ok(()),
        _ => Err(std::io::Error::last_os_error()),
    }
}

impl FileStore {
    /// The data set bytes of a Part 10 file written by `write_part10` (everything after the
    /// file meta group).
    pub fn read_data_set(path: &Path) -> io::Result<Vec<u8>> {
        let bytes = fs::read(path)?;
        Self::data_set_of(&bytes)
            .map(<[u8]>::to_vec)
            .ok_or_else(|| {
                io::Error::other(format!("{} is not a whole Part 10 file", path.display()))
            })
    }

    /// The data set of a Part 10 file's `bytes` as `write_part10` writes them (explicit VR
    /// little endian meta group beginning with its group length); `None` when they are not one.
    pub fn data_set_of(bytes: &[u8]) -> Option<&[u8]> {
        let group_length = bytes
            .get(128..144)
            .filter(|head| &head[..4] == b"DICM" && head[4..8] == [0x02, 0x00, 0x00, 0x00])
            .map(|head| u32::from_le_bytes([head[12], head[13], head[14], head[15]]) as usize)?;
        bytes.get(144 + group_length..)
    }
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

#[cfg(test)]
mod tests {
    use super::*;

    fn meta() -> FileMetaTable {
        crate::write::file_meta(
            "1.2.840.10008.5.1.4.1.1.2",
            "1.2.3.4",
            "1.2.840.10008.1.2.1",
        )
        .build()
        .unwrap()
    }

    #[test]
    fn a_committed_file_is_sealed_and_a_sync_cut_short_fails_its_seal() {
        let dir = tempfile::tempdir().unwrap();
        let store = FileStore::open(dir.path(), Path::new("")).unwrap();
        let data_set: Vec<u8> = (0..300_000u32).map(|i| (i % 253) as u8).collect();
        let relative = Path::new("instances/a/b/c.dcm");
        let size = store.write_part10(relative, &meta(), &data_set).unwrap();
        let bytes = fs::read(dir.path().join(relative)).unwrap();
        let seal = Seal::verify(&bytes).unwrap().expect("sealed");
        assert_eq!(seal.length, size);
        assert_eq!(&bytes[..8], b"JNSCSEAL");

        // What a power cut during the commit's one sync can leave: the first block (the seal)
        // on the disk and a later one not (zeros, or the file shorter).
        let mut torn = bytes.clone();
        torn[200_000..204_096].fill(0);
        assert!(Seal::verify(&torn).unwrap_err().contains("checksum"));
        assert!(Seal::verify(&bytes[..bytes.len() - 4096]).is_err());
        // Cut at the end of an element, which a parse alone could take for whole.
        let mut whole_elements = bytes.clone();
        whole_elements.truncate(bytes.len() - data_set.len());
        assert!(Seal::verify(&whole_elements).is_err());
        // Files written before seals: a zero preamble, judged by their parse alone.
        let mut unsealed = bytes.clone();
        unsealed[..128].fill(0);
        assert_eq!(Seal::verify(&unsealed), Ok(None));
        // No magic: never committed.
        let mut uncommitted = bytes;
        uncommitted[..132].fill(0);
        assert!(Seal::verify(&uncommitted).is_err());
    }

    #[test]
    fn an_incoming_file_is_dicom_only_once_committed_and_removed_if_dropped() {
        let dir = tempfile::tempdir().unwrap();
        let store = FileStore::open(dir.path(), Path::new("")).unwrap();
        let data_set: Vec<u8> = (0..200_000u32).map(|i| (i % 251) as u8).collect();
        let path = |name: &str| dir.path().join("instances/a/b").join(name);
        let relative = |name: &str| Path::new("instances/a/b").join(name);

        // Written whole, and written part by part as it arrives: the same Part 10 file.
        store
            .write_part10(&relative("whole.dcm"), &meta(), &data_set)
            .unwrap();
        let mut incoming = store
            .create_incoming(&relative("parts.dcm"), &meta())
            .unwrap();
        for part in data_set.chunks(65_536) {
            incoming.append(part).unwrap();
        }
        let size = incoming.commit().unwrap();
        let bytes = fs::read(path("parts.dcm")).unwrap();
        assert_eq!(bytes, fs::read(path("whole.dcm")).unwrap());
        assert_eq!(size, bytes.len() as u64);
        assert_eq!(&bytes[128..132], b"DICM");
        assert_eq!(
            FileStore::read_data_set(&path("parts.dcm")).unwrap(),
            data_set
        );

        // Cut short by a crash (neither committed nor dropped): without its magic and seal, no
        // reader takes it for DICOM.
        let mut cut = store
            .create_incoming(&relative("cut.dcm"), &meta())
            .unwrap();
        cut.append(&data_set[..100_000]).unwrap();
        std::mem::forget(cut);
        assert!(path("cut.dcm").exists());
        assert!(FileStore::read_data_set(&path("cut.dcm")).is_err());
        assert!(dicom_object::open_file(path("cut.dcm")).is_err());
        assert!(Seal::verify(&fs::read(path("cut.dcm")).unwrap()).is_err());

        // Dropped before its commit: removed.
        let mut dropped = store
            .create_incoming(&relative("dropped.dcm"), &meta())
            .unwrap();
        dropped.append(&data_set).unwrap();
        drop(dropped);
        assert!(!path("dropped.dcm").exists());

        // Never over an existing file.
        assert!(
            store
                .create_incoming(&relative("whole.dcm"), &meta())
                .is_err()
        );
        assert_eq!(fs::read(path("whole.dcm")).unwrap(), bytes);
    }
}
