//! What every file the node writes shares, below the modules that write them (`store`,
//! `results`, `synth`, `train`): the Part 10 file meta of this implementation, and writing a file
//! whole (into a temporary beside it, fsynced, renamed over the target, the directory fsynced),
//! so that a file under its final name is never partial, even after a power cut.

use dicom_object::meta::FileMetaTableBuilder;
use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::Path;

/// Implementation Class UID written in the file meta of every file this node writes.
pub const IMPLEMENTATION_CLASS_UID: &str = "2.25.196855393622733409371129946052315226877";
/// Implementation Version Name (at most 16 characters).
pub const IMPLEMENTATION_VERSION_NAME: &str = concat!("JNSC_", env!("CARGO_PKG_VERSION"));

/// The file meta of a Part 10 file this node writes (callers add what else they know, e.g.
/// the AE titles of a received instance).
pub fn file_meta(
    sop_class_uid: &str,
    sop_instance_uid: &str,
    transfer_syntax: &str,
) -> FileMetaTableBuilder {
    FileMetaTableBuilder::new()
        .media_storage_sop_class_uid(sop_class_uid)
        .media_storage_sop_instance_uid(sop_instance_uid)
        .transfer_syntax(transfer_syntax)
        .implementation_class_uid(IMPLEMENTATION_CLASS_UID)
        .implementation_version_name(IMPLEMENTATION_VERSION_NAME)
}

/// Writes `path` whole: `write` fills `<path>.tmp`, which is fsynced and renamed over `path`;
/// then the directory is fsynced.
pub fn write_whole(
    path: &Path,
    write: impl FnOnce(&mut BufWriter<&File>) -> std::io::Result<()>,
) -> std::io::Result<()> {
    let temporary = path.with_extension("tmp");
    let file = File::create(&temporary)?;
    {
        let mut out = BufWriter::new(&file);
        write(&mut out)?;
        out.flush()?;
    }
    drop(file);
    replace(&temporary, path)
}

/// Makes `temporary`, written beside `path` by someone else (a library's `save`), durable and
/// renames it over `path`; then fsyncs the directory.
pub fn replace(temporary: &Path, path: &Path) -> std::io::Result<()> {
    File::open(temporary)?.sync_all()?;
    std::fs::rename(temporary, path)?;
    if let Some(dir) = path.parent() {
        File::open(dir)?.sync_all()?;
    }
    Ok(())
}

/// `write_whole` of a byte buffer.
pub fn write_bytes_whole(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    write_whole(path, |out| out.write_all(bytes))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_file_is_written_whole_and_replaces_the_old_one() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("a.json");
        write_bytes_whole(&path, b"first").unwrap();
        write_bytes_whole(&path, b"second").unwrap();
        assert_eq!(std::fs::read(&path).unwrap(), b"second");
        assert!(!path.with_extension("tmp").exists());
        // A failing writer leaves the old file as it was.
        let failed = write_whole(&path, |_| Err(std::io::Error::other("disk on fire")));
        assert!(failed.is_err());
        assert_eq!(std::fs::read(&path).unwrap(), b"second");
    }

    #[test]
    fn the_version_name_fits_sixteen_characters() {
        assert!(IMPLEMENTATION_VERSION_NAME.len() <= 16);
    }
}
