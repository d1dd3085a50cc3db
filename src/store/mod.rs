//! The durable instance store: files under `storage/` plus their SQLite index.
//!
//! `InstanceStore::store` is the path by which a received instance becomes durable: it decides
//! between "new", "identical re-send" and "new version of a known SOP Instance UID" and writes the
//! file (file and directory fsynced). A new instance may instead have its file written while its
//! data set arrives (`begin`, then `finish`, in `receiving`), under the same contract: only when
//! `store` or `finish` returns `Ok` may the SCP answer Success; the data are durable then. The
//! index row is committed after, off the answer's path, by a task that holds the instance's lock
//! until the row is in (a re-send of it waits, and sees the row). A row that cannot be committed is
//! retried until it is, and meanwhile new instances are refused (0xA700) rather than acknowledged
//! on a failing index. `InstanceStore::checkpoint` records how far the index is durable, never past
//! an instance whose row is not in yet, and `recovery` re-indexes anything newer at the next start
//! (after a crash, the rows that were still being committed).

pub mod db;
pub mod files;
mod group_commit;
pub mod instance;
pub mod overview;
mod receiving;
pub mod recovery;
pub mod state;
pub mod uid;
pub mod work;

use db::Index;
use files::FileStore;
use group_commit::{GroupCommit, PendingRow};
use instance::{FileKey, InstanceAttributes};
pub use receiving::{NewInstance, Receiving};
use std::collections::HashMap;
use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

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
    #[error("index failing: {0} acknowledged instance(s) not yet indexed")]
    IndexBacklog(usize),
}

/// A data set received over the network, with its context.
#[derive(Debug)]
pub struct ReceivedInstance {
    pub attributes: InstanceAttributes,
    /// Data set bytes exactly as received.
    pub data_set: Arc<Vec<u8>>,
    pub transfer_syntax: String,
    pub calling_ae: String,
    pub called_ae: String,
    pub association: i64,
}

/// A received instance made durable: what the SCP answers, and its index row being committed.
#[derive(Debug)]
pub struct Stored {
    /// What was decided when the file was written (what the sender is told).
    pub outcome: StoreOutcome,
    pub indexing: Indexing,
}

impl Stored {
    /// Waits until the instance is in the index; returns what it finally is there (another
    /// receiver sharing the index may have stored the same instance at the same moment, making
    /// this one a duplicate or a new version).
    pub async fn indexed(self) -> StoreOutcome {
        self.indexing.finished().await.unwrap_or(self.outcome)
    }
}

/// The index row of an acknowledged instance, committed in the background (dropping this does
/// not stop it).
#[derive(Debug)]
pub struct Indexing(Option<tokio::task::JoinHandle<StoreOutcome>>);

impl Indexing {
    /// Nothing left to index (a duplicate: its counters were updated before the answer).
    fn done() -> Self {
        Self(None)
    }

    pub fn is_finished(&self) -> bool {
        self.0.as_ref().is_none_or(|task| task.is_finished())
    }

    /// Waits for the row; its final outcome, if a row was committed.
    pub async fn finished(self) -> Option<StoreOutcome> {
        match self.0 {
            Some(task) => task.await.ok(),
            None => None,
        }
    }
}

/// Files plus index, and the stores in progress: per-SOP-Instance locks (two associations sending
/// the same instance at once cannot both decide it is new; held until the row is indexed) and
/// since when each is running (for the checkpoint mark). Clones share all of it.
#[derive(Debug, Clone)]
pub struct InstanceStore {
    files: Arc<FileStore>,
    index: Index,
    in_flight: Arc<Mutex<HashMap<String, InFlight>>>,
    /// Acknowledged instances whose index row failed and is being retried.
    backlog: Backlog,
    /// Rows waiting to be committed together.
    group: Arc<GroupCommit>,
    /// Files being written while their data sets arrive (`receiving`).
    early_writers: Arc<AtomicUsize>,
    /// Free bytes the storage file system must keep: checked before every file written, not
    /// only when an association starts (one long association could otherwise fill the disk).
    disk_floor_bytes: u64,
}

#[derive(Debug)]
struct InFlight {
    lock: Arc<tokio::sync::Mutex<()>>,
    since_ms: i64,
}

/// How many acknowledged instances wait for an index row that failed (retried until it is in;
/// new instances are refused meanwhile). Clones share the count; `/ready` and `/status` read it.
#[derive(Debug, Clone, Default)]
pub struct Backlog(Arc<AtomicUsize>);

impl Backlog {
    pub fn waiting(&self) -> usize {
        self.0.load(Ordering::Acquire)
    }

    fn add(&self) {
        self.0.fetch_add(1, Ordering::AcqRel);
    }

    fn remove(&self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

/// A file written (durably) for a received instance, its index row still to be committed.
#[derive(Debug, Clone)]
struct WrittenFile {
    /// Relative to the storage directory, as the index records it.
    path: String,
    size: u64,
    version: i64,
    /// No version of this SOP instance was indexed before.
    new_instance: bool,
}

impl WrittenFile {
    fn outcome(&self) -> StoreOutcome {
        if self.version == 1 {
            StoreOutcome::Stored
        } else {
            StoreOutcome::NewVersion(self.version)
        }
    }
}

/// What `InstanceStore::write` did.
#[derive(Debug)]
enum Written {
    /// A byte-identical re-send: nothing written, its counters indexed.
    Duplicate,
    File(WrittenFile),
}

/// How long a new store waits for a backlog of unindexed acknowledged instances to clear before
/// it is refused.
const BACKLOG_WAIT: Duration = Duration::from_secs(2);
/// First and longest pause between attempts to commit an acknowledged instance's row.
const RETRY_FIRST: Duration = Duration::from_millis(50);
const RETRY_MAX: Duration = Duration::from_secs(1);

/// The file meta group of a received instance's Part 10 file.
fn part10_meta(
    sop_class_uid: &str,
    sop_instance_uid: &str,
    transfer_syntax: &str,
    calling_ae: &str,
    called_ae: &str,
) -> Result<dicom_object::FileMetaTable, StoreError> {
    crate::write::file_meta(sop_class_uid, sop_instance_uid, transfer_syntax)
        .source_application_entity_title(calling_ae)
        .receiving_application_entity_title(called_ae)
        .build()
        .map_err(|e| StoreError::Meta(e.to_string()))
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
            in_flight: Arc::default(),
            backlog: Backlog::default(),
            group: Arc::default(),
            early_writers: Arc::default(),
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

    /// The acknowledged instances still waiting for their index rows.
    pub fn backlog(&self) -> Backlog {
        self.backlog.clone()
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

    /// Makes `received` durable (its file written and fsynced) and says what happened; its
    /// index row follows in the background (`Stored::indexing`).
    ///
    /// Two stores of one SOP Instance UID in this process wait for each other (a lock per UID,
    /// held until the first one's row is in). Two receivers sharing one index (PostgreSQL) can
    /// still both find it new: the second one's index row is then refused as a duplicate key, and
    /// its store is done once more, now seeing the first one's row (a duplicate, or a new
    /// version), before its first file is removed.
    pub async fn store(&self, received: ReceivedInstance) -> Result<Stored, StoreError> {
        self.wait_for_backlog().await?;
        let received = Arc::new(received);
        let sop_uid = received.attributes.sop_instance_uid.as_str().to_owned();
        let guard = self.lock_for(&sop_uid).lock_owned().await;
        let file = match self.write(&received).await {
            Ok(Written::File(file)) => file,
            other => {
                drop(guard);
                self.release_lock(&sop_uid);
                return other.map(|_| Stored {
                    outcome: StoreOutcome::Duplicate,
                    indexing: Indexing::done(),
                });
            }
        };
        Ok(self.acknowledge(guard, received, file))
    }

    /// What the sender is told about `file`, written durably for `received`; its index row is
    /// committed in the background, holding the instance's lock (`guard`) until it is in.
    fn acknowledge(
        &self,
        guard: tokio::sync::OwnedMutexGuard<()>,
        received: Arc<ReceivedInstance>,
        file: WrittenFile,
    ) -> Stored {
        let outcome = file.outcome();
        let store = self.clone();
        let task = tokio::spawn(async move {
            let indexed = store.index_until_done(&received, file).await;
            drop(guard);
            store.release_lock(received.attributes.sop_instance_uid.as_str());
            indexed
        });
        Stored {
            outcome,
            indexing: Indexing(Some(task)),
        }
    }

    /// Refuses a new instance while acknowledged ones cannot be indexed (after waiting a little
    /// for them to get in).
    async fn wait_for_backlog(&self) -> Result<(), StoreError> {
        let deadline = Instant::now() + BACKLOG_WAIT;
        loop {
            match self.backlog.waiting() {
                0 => return Ok(()),
                waiting if Instant::now() >= deadline => {
                    return Err(StoreError::IndexBacklog(waiting));
                }
                _ => tokio::time::sleep(Duration::from_millis(20)).await,
            }
        }
    }

    /// Decides what `received` is against the index and writes its file durably (or records the
    /// duplicate). Called with the instance's lock held.
    async fn write(&self, received: &ReceivedInstance) -> Result<Written, StoreError> {
        let attrs = &received.attributes;
        let data_set = Arc::clone(&received.data_set);
        let previous = self
            .index
            .find_instance(attrs.sop_instance_uid.as_str())
            .await?;
        self.check_disk_floor(data_set.len() as u64)?;
        let version = match &previous {
            Some(p) => {
                if p.transfer_syntax == received.transfer_syntax
                    && self.stored_data_set_equals(&p.path, &data_set).await?
                {
                    self.index
                        .record_duplicate(
                            received.association,
                            attrs.series_uid.as_str(),
                            &received.calling_ae,
                        )
                        .await?;
                    return Ok(Written::Duplicate);
                }
                self.next_free_version(&attrs.file_key(), p.version + 1)
            }
            None => self.next_free_version(&attrs.file_key(), 1),
        };

        let meta = part10_meta(
            attrs.sop_class_uid.as_str(),
            attrs.sop_instance_uid.as_str(),
            &received.transfer_syntax,
            &received.calling_ae,
            &received.called_ae,
        )?;
        let relative = self.files.instance_path(&attrs.file_key(), version);
        let started = Instant::now();
        let files = Arc::clone(&self.files);
        let relative_for_write = relative.clone();
        let size = tokio::task::spawn_blocking(move || {
            files.write_part10(&relative_for_write, &meta, &data_set)
        })
        .await
        .map_err(|e| StoreError::Write(std::io::Error::other(e)))??;
        tracing::debug!(
            write_us = started.elapsed().as_micros() as u64,
            "instance durable"
        );
        Ok(Written::File(WrittenFile {
            path: relative.to_string_lossy().into_owned(),
            size,
            version,
            new_instance: previous.is_none(),
        }))
    }

    /// Refuses a file of `bytes` that would leave less free than the disk floor.
    fn check_disk_floor(&self, bytes: u64) -> Result<(), StoreError> {
        if self.disk_floor_bytes == 0 {
            return Ok(());
        }
        let free = files::disk_space(self.files.root())?.free_bytes;
        if free < self.disk_floor_bytes.saturating_add(bytes) {
            return Err(StoreError::BelowDiskFloor {
                free_mib: free / (1024 * 1024),
                floor_mib: self.disk_floor_bytes / (1024 * 1024),
            });
        }
        Ok(())
    }

    /// Commits the index row of `file` (written, and acknowledged to the sender), retrying until
    /// it is in; returns what the instance finally is in the index. Called with the instance's
    /// lock held.
    async fn index_until_done(
        &self,
        received: &Arc<ReceivedInstance>,
        mut file: WrittenFile,
    ) -> StoreOutcome {
        let started = Instant::now();
        let mut delay = RETRY_FIRST;
        let mut backlogged = false;
        let outcome = loop {
            let error = match self.index_row(received, &file).await {
                Ok(()) => break file.outcome(),
                Err(e) if is_duplicate_key(&e) => {
                    tracing::info!(
                        "another node stored this instance at the same moment: storing it again"
                    );
                    match self.write(received).await {
                        Ok(again) => {
                            if let Err(e) = self.files.remove(Path::new(&file.path)) {
                                tracing::warn!(error = %e, "cannot remove the refused copy");
                            }
                            match again {
                                Written::Duplicate => break StoreOutcome::Duplicate,
                                Written::File(written) => {
                                    file = written;
                                    continue;
                                }
                            }
                        }
                        Err(e) => e,
                    }
                }
                Err(e) => StoreError::Index(e),
            };
            if !backlogged {
                backlogged = true;
                self.backlog.add();
            }
            tracing::error!(
                error = %error,
                path = %file.path,
                "an acknowledged instance cannot be indexed yet: retrying, new instances refused meanwhile"
            );
            tokio::time::sleep(delay).await;
            delay = (delay * 2).min(RETRY_MAX);
        };
        if backlogged {
            self.backlog.remove();
            tracing::info!(path = %file.path, "acknowledged instance indexed after all");
        }
        tracing::debug!(
            index_us = started.elapsed().as_micros() as u64,
            "instance indexed"
        );
        outcome
    }

    async fn index_row(
        &self,
        received: &Arc<ReceivedInstance>,
        file: &WrittenFile,
    ) -> Result<(), sqlx::Error> {
        let row = PendingRow {
            received: Arc::clone(received),
            file: file.clone(),
        };
        self.group.commit(&self.index, row).await
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
    /// without an index row when the node stopped between the write and the commit; that file
    /// was never acknowledged, but it is kept rather than overwritten.
    fn next_free_version(&self, key: &FileKey, start: i64) -> i64 {
        (start..)
            .find(|v| {
                !self
                    .files
                    .absolute(&self.files.instance_path(key, *v))
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
