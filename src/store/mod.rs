//! The durable instance store: files under `storage/` plus their SQLite index.
//!
//! `InstanceStore::store` is the single path by which a received instance becomes durable: it
//! decides between "new", "identical re-send" and "new version of a known SOP Instance UID",
//! writes the file (file and directory fsynced) and commits the index row, in that order. Only
//! when it returns `Ok` may the SCP answer Success. `InstanceStore::checkpoint` records how far
//! the index is durable, and `recovery` re-indexes anything newer at the next start.

pub mod db;
pub mod files;
pub mod instance;
pub mod overview;
pub mod recovery;
pub mod state;
pub mod uid;
pub mod work;

use db::{Index, NewFile};
use files::FileStore;
use instance::InstanceAttributes;
use std::collections::HashMap;
use std::path::Path;
use std::sync::{Arc, Mutex};

/// What became of a stored instance.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StoreOutcome {
    /// First time this SOP Instance UID was seen.
    Stored,
    /// Byte-identical to the stored version: nothing written.
    Duplicate,
    /// Differs from what is stored under this SOP Instance UID: kept as version `n` (the earlier
    /// versions stay on disk and in `instance_versions`).
    NewVersion(i64),
}

/// Why an instance could not be made durable (answered with 0xA700, Out of Resources).
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("cannot write the instance file: {0}")]
    Write(#[from] std::io::Error),
    #[error("cannot update the index: {0}")]
    Index(#[from] sqlx::Error),
    #[error("cannot build the file meta group: {0}")]
    Meta(String),
    #[error("{free_mib} MiB free on the storage file system, below the floor of {floor_mib} MiB")]
    BelowDiskFloor { free_mib: u64, floor_mib: u64 },
}

/// A data set received over the network, with its context.
#[derive(Debug)]
pub struct ReceivedInstance<'a> {
    pub attributes: &'a InstanceAttributes,
    /// Data set bytes exactly as received.
    pub data_set: Arc<Vec<u8>>,
    pub transfer_syntax: &'a str,
    pub calling_ae: &'a str,
    pub called_ae: &'a str,
    pub association: i64,
}

/// Files plus index, and the stores in progress: per-SOP-Instance locks (two associations sending
/// the same instance at once cannot both decide it is new) and since when each is running (for
/// the checkpoint mark).
#[derive(Debug)]
pub struct InstanceStore {
    files: Arc<FileStore>,
    index: Index,
    in_flight: Mutex<HashMap<String, InFlight>>,
    /// Free bytes the storage file system must keep: checked before every file written, not
    /// only when an association starts (one long association could otherwise fill the disk).
    disk_floor_bytes: u64,
}

#[derive(Debug)]
struct InFlight {
    lock: Arc<tokio::sync::Mutex<()>>,
    since_ms: i64,
}

/// Whether the index refused a row because its key is taken (by another node's concurrent
/// store of the same instance).
fn is_duplicate_key(error: &sqlx::Error) -> bool {
    matches!(error, sqlx::Error::Database(db) if db.is_unique_violation())
}

/// Margin for file system timestamp granularity and clock steps when comparing directory
/// modification times with the checkpoint mark.
const MARK_MARGIN_MS: i64 = 5_000;

impl InstanceStore {
    pub fn new(files: FileStore, index: Index) -> Self {
        Self {
            files: Arc::new(files),
            index,
            in_flight: Mutex::new(HashMap::new()),
            disk_floor_bytes: 0,
        }
    }

    /// Refuses (0xA700) to write an instance that would leave less than `bytes` free.
    pub fn with_disk_floor(mut self, bytes: u64) -> Self {
        self.disk_floor_bytes = bytes;
        self
    }

    pub fn index(&self) -> &Index {
        &self.index
    }

    pub fn files(&self) -> &FileStore {
        &self.files
    }

    /// The index key of this store's checkpoint mark: one per storage area, since each node
    /// recovers only its own files.
    pub fn mark_key(&self) -> String {
        let area = self.files.area();
        if area.as_os_str().is_empty() {
            "index_durable_until".to_owned()
        } else {
            format!("index_durable_until:{}", area.display())
        }
    }

    /// Makes every index row committed so far durable and records the mark before which every
    /// stored file is in the durable index: the start of the oldest store still in progress, or
    /// now, less a margin. Called periodically and at shutdown.
    pub async fn checkpoint(&self) -> Result<(), sqlx::Error> {
        let now = db::now_ms();
        let oldest = {
            let map = self.in_flight.lock().unwrap_or_else(|e| e.into_inner());
            map.values().map(|f| f.since_ms).min().unwrap_or(now)
        };
        self.index
            .checkpoint(&self.mark_key(), oldest.min(now) - MARK_MARGIN_MS)
            .await
    }

    /// Makes `received` durable (file, then index) and says what happened.
    ///
    /// Two stores of one SOP Instance UID in this process wait for each other (a lock per
    /// UID). Two receivers sharing one index (PostgreSQL) can still both find it new: the
    /// second one's index row is then refused as a duplicate key, its file removed, and the
    /// store done once more, now seeing the first one's row (a duplicate, or a new version).
    pub async fn store(&self, received: ReceivedInstance<'_>) -> Result<StoreOutcome, StoreError> {
        let attrs = received.attributes;
        let sop_uid = attrs.sop_instance_uid.as_str().to_owned();
        let lock = self.lock_for(&sop_uid);
        let outcome = {
            let _guard = lock.lock().await;
            match self.store_locked(&received).await {
                Err(StoreError::Index(e)) if is_duplicate_key(&e) => {
                    tracing::info!(
                        "another node stored this instance at the same moment: storing it again"
                    );
                    self.store_locked(&received).await
                }
                outcome => outcome,
            }
        };
        drop(lock);
        self.release_lock(&sop_uid);
        outcome
    }

    async fn store_locked(
        &self,
        received: &ReceivedInstance<'_>,
    ) -> Result<StoreOutcome, StoreError> {
        let attrs = received.attributes;
        let data_set = Arc::clone(&received.data_set);
        let previous = self
            .index
            .find_instance(attrs.sop_instance_uid.as_str())
            .await?;
        let below_floor = |free: u64| StoreError::BelowDiskFloor {
            free_mib: free / (1024 * 1024),
            floor_mib: self.disk_floor_bytes / (1024 * 1024),
        };
        if self.disk_floor_bytes > 0 {
            let free = files::disk_space(self.files.root())?.free_bytes;
            if free < self.disk_floor_bytes.saturating_add(data_set.len() as u64) {
                return Err(below_floor(free));
            }
        }
        let version = match &previous {
            Some(p) => {
                if p.transfer_syntax == received.transfer_syntax
                    && self.stored_data_set_equals(&p.path, &data_set).await?
                {
                    self.index
                        .record_duplicate(
                            received.association,
                            attrs.series_uid.as_str(),
                            received.calling_ae,
                        )
                        .await?;
                    return Ok(StoreOutcome::Duplicate);
                }
                self.next_free_version(attrs, p.version + 1)
            }
            None => self.next_free_version(attrs, 1),
        };

        let meta = crate::write::file_meta(
            attrs.sop_class_uid.as_str(),
            attrs.sop_instance_uid.as_str(),
            received.transfer_syntax,
        )
        .source_application_entity_title(received.calling_ae)
        .receiving_application_entity_title(received.called_ae)
        .build()
        .map_err(|e| StoreError::Meta(e.to_string()))?;
        let relative = self.files.instance_path(attrs, version);
        let started = std::time::Instant::now();
        let files = Arc::clone(&self.files);
        let relative_for_write = relative.clone();
        let size = tokio::task::spawn_blocking(move || {
            files.write_part10(&relative_for_write, &meta, &data_set)
        })
        .await
        .map_err(|e| StoreError::Write(std::io::Error::other(e)))??;

        let written = started.elapsed();
        let path = relative.to_string_lossy();
        let indexed = self
            .index
            .record_instance(
                attrs,
                &NewFile {
                    path: &path,
                    size_bytes: size as i64,
                    version,
                    transfer_syntax: received.transfer_syntax,
                    new_instance: previous.is_none(),
                },
                Some(received.association),
                received.calling_ae,
            )
            .await;
        if let Err(e) = indexed {
            // Not acknowledged, so not kept: the sender still has it and will retry.
            let _ = self.files.remove(&relative);
            return Err(e.into());
        }
        tracing::debug!(
            write_us = written.as_micros() as u64,
            index_us = (started.elapsed() - written).as_micros() as u64,
            "instance durable"
        );
        Ok(if version == 1 {
            StoreOutcome::Stored
        } else {
            StoreOutcome::NewVersion(version)
        })
    }

    /// Whether the stored file at `relative` holds exactly `data_set` (an idempotent re-send).
    /// Only re-sends pay for this read; new instances are never hashed or compared.
    async fn stored_data_set_equals(
        &self,
        relative: &str,
        data_set: &Arc<Vec<u8>>,
    ) -> Result<bool, StoreError> {
        let path = self.files.absolute(Path::new(relative));
        let data_set = Arc::clone(data_set);
        tokio::task::spawn_blocking(move || match FileStore::read_data_set(&path) {
            Ok(stored) => Ok(stored == *data_set),
            // The indexed file was removed by hand: what arrives is stored again as the next
            // version, which the index then points at (never an instance unstorable for ever).
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                tracing::warn!(path = %path.display(), "indexed file missing: storing the instance again");
                Ok(false)
            }
            Err(e) => Err(StoreError::Write(e)),
        })
        .await
        .map_err(|e| StoreError::Write(std::io::Error::other(e)))?
    }

    /// The first version number from `start` whose file does not exist yet. A file can exist
    /// without an index row when the node stopped between the rename and the commit; that file
    /// was never acknowledged, but it is kept rather than overwritten.
    fn next_free_version(&self, attrs: &InstanceAttributes, start: i64) -> i64 {
        (start..)
            .find(|v| {
                !self
                    .files
                    .absolute(&self.files.instance_path(attrs, *v))
                    .exists()
            })
            .unwrap_or(start)
    }

    fn lock_for(&self, sop_uid: &str) -> Arc<tokio::sync::Mutex<()>> {
        let mut map = self.in_flight.lock().unwrap_or_else(|e| e.into_inner());
        let entry = map.entry(sop_uid.to_owned()).or_insert_with(|| InFlight {
            lock: Arc::default(),
            since_ms: db::now_ms(),
        });
        Arc::clone(&entry.lock)
    }

    fn release_lock(&self, sop_uid: &str) {
        let mut map = self.in_flight.lock().unwrap_or_else(|e| e.into_inner());
        if map
            .get(sop_uid)
            .is_some_and(|f| Arc::strong_count(&f.lock) == 1)
        {
            map.remove(sop_uid);
        }
    }
}
