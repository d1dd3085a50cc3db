//! Startup recovery: the instance files are the truth, the index is rebuilt from them where it
//! may lag behind. The index commits without fsync (WAL, `synchronous = NORMAL`), so after a
//! power cut its last commits can be missing while their files, fsynced before Success was sent,
//! are on disk. Every series directory modified since the last checkpoint mark is compared with
//! the index: files missing from it are parsed and indexed again; files that fail their seal or do
//! not parse (a write cut short, never acknowledged), or whose version the shared index holds at another node's path
//! (both stored it at once; this copy's row was refused), are moved to `quarantine/`.

use crate::store::db::NewFile;
use crate::store::files::{FileStore, Seal};
use crate::store::instance::{InstanceAttributes, parse_data_set};
use crate::store::{InstanceStore, StoreError};
use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::time::UNIX_EPOCH;
use tracing::{info, warn};

/// What recovery did.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct RecoveryReport {
    /// Series directories modified since the mark, whose files were compared with the index.
    pub directories_checked: usize,
    /// Files that were on disk but not in the index, now indexed.
    pub reindexed: usize,
    /// Unreadable files moved to `quarantine/`.
    pub quarantined: usize,
}

/// A series directory to check: its path relative to the store root, and its files.
struct SeriesDir {
    relative: String,
    files: Vec<PathBuf>,
}

/// Brings the index up to date with the files, then records a new checkpoint mark.
pub async fn recover(store: &InstanceStore) -> Result<RecoveryReport, StoreError> {
    let mark = store
        .index()
        .durable_mark(&store.mark_key())
        .await?
        .unwrap_or(i64::MIN);
    let root = store.files().root().to_owned();
    let instances = store.files().instances_dir();
    let dirs = tokio::task::spawn_blocking(move || recent_series_dirs(&root, &instances, mark))
        .await
        .map_err(|e| StoreError::Write(std::io::Error::other(e)))??;
    let mut report = RecoveryReport {
        directories_checked: dirs.len(),
        ..Default::default()
    };
    for dir in dirs {
        let indexed: HashSet<String> = store
            .index()
            .indexed_paths_under(&dir.relative)
            .await?
            .into_iter()
            .collect();
        for file in dir.files {
            let name = file
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default();
            let relative = format!("{}/{name}", dir.relative);
            if indexed.contains(&relative) {
                continue;
            }
            let absolute = store.files().root().join(&relative);
            let expected = relative.clone();
            let files = store.files().clone();
            let read =
                tokio::task::spawn_blocking(move || read_stored(&files, &absolute, &expected))
                    .await
                    .map_err(|e| StoreError::Write(std::io::Error::other(e)))?;
            // On a shared index another node may hold this version: both stored the instance
            // at once, and this copy's index row was refused (it was never acknowledged).
            let read = match read {
                Ok(stored) => match store
                    .index()
                    .version_path(stored.attributes.sop_instance_uid.as_str(), stored.version)
                    .await?
                {
                    Some(other) => Err(format!(
                        "the index holds this version at {other}: this copy was never acknowledged"
                    )),
                    None => Ok(stored),
                },
                Err(reason) => Err(reason),
            };
            match read {
                Ok(stored) => {
                    let known = store
                        .index()
                        .find_instance(stored.attributes.sop_instance_uid.as_str())
                        .await?
                        .is_some();
                    store
                        .index()
                        .record_instance(
                            &stored.attributes,
                            &NewFile {
                                path: &relative,
                                size_bytes: stored.size_bytes,
                                version: stored.version,
                                transfer_syntax: &stored.transfer_syntax,
                                new_instance: !known,
                            },
                            None,
                            &stored.source_ae,
                        )
                        .await?;
                    store
                        .index()
                        .recount_series(stored.attributes.series_uid.as_str())
                        .await?;
                    warn!(path = %relative, "stored file was missing from the index; re-indexed");
                    report.reindexed += 1;
                }
                Err(reason) => {
                    let moved = store
                        .files()
                        .quarantine(&store.files().root().join(&relative))?;
                    warn!(path = %relative, to = %moved.display(), %reason, "unreadable file quarantined");
                    report.quarantined += 1;
                }
            }
        }
    }
    store.checkpoint().await?;
    info!(
        checked = report.directories_checked,
        reindexed = report.reindexed,
        quarantined = report.quarantined,
        "store recovery done"
    );
    Ok(report)
}

/// Series directories (`<instances>/<study>/<series>`, `instances` relative to `root`) modified
/// at or after `mark` (Unix ms).
fn recent_series_dirs(root: &Path, instances: &Path, mark: i64) -> std::io::Result<Vec<SeriesDir>> {
    let mut found = Vec::new();
    for study in std::fs::read_dir(root.join(instances))? {
        let study = study?;
        if !study.file_type()?.is_dir() {
            continue;
        }
        for series in std::fs::read_dir(study.path())? {
            let series = series?;
            if !series.file_type()?.is_dir() || modified_ms(&series.path())? < mark {
                continue;
            }
            let mut files: Vec<PathBuf> = std::fs::read_dir(series.path())?
                .filter_map(|e| e.ok())
                .map(|e| e.path())
                .filter(|p| p.extension().is_some_and(|x| x == "dcm"))
                .collect();
            // Oldest version first, so the newest ends up current in the index.
            files.sort_by_key(|p| version_of(&p.to_string_lossy()));
            found.push(SeriesDir {
                relative: format!(
                    "{}/{}/{}",
                    instances.display(),
                    study.file_name().to_string_lossy(),
                    series.file_name().to_string_lossy()
                ),
                files,
            });
        }
    }
    Ok(found)
}

fn modified_ms(path: &Path) -> std::io::Result<i64> {
    let modified = std::fs::metadata(path)?.modified()?;
    Ok(modified
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0))
}

/// Version number encoded in a stored file name: `<sop>.dcm` is 1, `<sop>.vN.dcm` is N.
fn version_of(name: &str) -> i64 {
    name.strip_suffix(".dcm")
        .and_then(|stem| stem.rsplit_once(".v"))
        .and_then(|(_, n)| n.parse().ok())
        .unwrap_or(1)
}

/// A stored file read back for re-indexing.
struct StoredFile {
    attributes: InstanceAttributes,
    transfer_syntax: String,
    source_ae: String,
    size_bytes: i64,
    version: i64,
}

/// Reads and validates a stored file; its seal must match its bytes (`files::Seal`), and it must
/// parse completely and sit where its UIDs say.
fn read_stored(files: &FileStore, path: &Path, relative: &str) -> Result<StoredFile, String> {
    let bytes = std::fs::read(path).map_err(|e| e.to_string())?;
    Seal::verify(&bytes)?;
    let meta =
        dicom_object::FileMetaTable::from_reader(&bytes[128..]).map_err(|e| e.to_string())?;
    let transfer_syntax = meta
        .transfer_syntax()
        .trim_end_matches(['\0', ' '])
        .to_owned();
    let data_set = FileStore::data_set_of(&bytes).ok_or("the file meta group is cut short")?;
    let attributes = parse_data_set(data_set, &transfer_syntax).map_err(|e| e.to_string())?;
    let version = version_of(relative);
    let expected = files.instance_path(&attributes.file_key(), version);
    if expected.to_string_lossy() != relative {
        return Err(format!(
            "file holds an instance that belongs at {}",
            expected.display()
        ));
    }
    let size_bytes = bytes.len() as i64;
    Ok(StoredFile {
        attributes,
        transfer_syntax,
        source_ae: meta
            .source_application_entity_title()
            .unwrap_or_default()
            .trim_end_matches(['\0', ' '])
            .to_owned(),
        size_bytes,
        version,
    })
}

#[cfg(test)]
mod tests {
    use super::version_of;

    #[test]
    fn version_is_read_from_the_file_name() {
        assert_eq!(version_of("1.2.3.dcm"), 1);
        assert_eq!(version_of("1.2.3.v2.dcm"), 2);
        assert_eq!(version_of("instances/1.2/3.4/5.6.v17.dcm"), 17);
    }
}
