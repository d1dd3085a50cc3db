//! An instance written while its data set is still arriving.
//!
//! Once the head of a C-STORE's data set is in (enough to name its file: `instance::
//! file_key_from_head`), `InstanceStore::begin` takes the instance's lock, creates its file
//! (`files::IncomingFile`) and starts a writer thread that appends each later fragment as it
//! arrives, its write-back started at once. When the last fragment is in and the whole data set
//! has been validated, `InstanceStore::finish` has the file committed and acknowledges it as
//! `store` does, so what is left between the last fragment and the answer is the final sync,
//! not the whole write.
//!
//! The durability contract is `store`'s (see the module above): Success is answered only once
//! the file is committed. Only a new SOP Instance UID is begun early: a known one is compared
//! with what is stored (an identical re-send, or a new version), which needs the whole data set,
//! so it goes the whole way through `store`. A message that never completes (the peer aborts,
//! the connection drops, the data set is refused) drops its `Receiving`: the writer removes the
//! file, then releases the lock.

use super::*;
use std::sync::mpsc;
use tokio::sync::OwnedMutexGuard;

/// How many files are written early at once. Writing while the data set arrives overlaps the
/// disk with the network, which is what one association waits on; when several arrive at once the
/// node is busy anyway (2 cores: four associations and their senders), and an early writer per
/// association only adds threads and wake-ups, so the others are written whole.
const MAX_EARLY_WRITERS: usize = 1;

/// One of the `MAX_EARLY_WRITERS` places, held while its writer runs.
struct EarlyWriter(Arc<AtomicUsize>);

impl EarlyWriter {
    fn take(count: &Arc<AtomicUsize>) -> Option<Self> {
        count
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (n < MAX_EARLY_WRITERS).then_some(n + 1)
            })
            .ok()
            .map(|_| Self(Arc::clone(count)))
    }
}

impl Drop for EarlyWriter {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

/// How many bytes of fragments are handed to the writer at a time.
const BATCH_BYTES: usize = 256 * 1024;

/// How far the writer may fall behind what has arrived. The fragments handed to it wait in
/// memory beside the data set being reassembled, so a disk slower than the network would
/// otherwise hold a second copy of a large data set; past this lag the instance is no longer
/// written early (the writer removes its file) and `finish` stores it whole.
const MAX_WRITER_LAG: usize = 16 << 20;

/// What the writer thread is sent.
#[derive(Debug)]
enum Part {
    /// The next fragments of the data set.
    Data(Vec<bytes::Bytes>),
    /// The data set is complete: make the file durable (while it is being validated).
    Commit,
    /// The data set is valid: the committed file is the instance's.
    Keep,
}

/// How the writer thread ended.
#[derive(Debug)]
enum Written {
    /// Told to commit: the file's size once durable, and the instance's lock (kept until its
    /// index row is in).
    Committed(std::io::Result<u64>, OwnedMutexGuard<()>),
    /// The instance is not one to begin early (see `InstanceStore::begin`); nothing was written
    /// and the lock is released.
    Declined,
    /// Its `Receiving` was dropped: the file is removed and the lock released.
    Dropped,
}

/// The file of an instance whose data set is arriving, being written by its writer thread.
#[derive(Debug)]
pub struct Receiving {
    key: FileKey,
    sop_class_uid: String,
    transfer_syntax: String,
    /// To the writer; `None` once it fell more than [`MAX_WRITER_LAG`] behind.
    parts: Option<mpsc::Sender<Part>>,
    /// Fragments not yet handed to the writer (handed over [`BATCH_BYTES`] at a time: fewer
    /// wake-ups of its thread).
    batch: Vec<bytes::Bytes>,
    batch_bytes: usize,
    /// Bytes handed to the writer, and (counted by it) written.
    handed: usize,
    written: Arc<AtomicUsize>,
    commit_sent: bool,
    writer: tokio::task::JoinHandle<Written>,
}

impl Receiving {
    /// Hands the next fragment of the data set to the writer.
    pub fn append(&mut self, bytes: bytes::Bytes) {
        if self.parts.is_none() {
            return;
        }
        self.batch_bytes += bytes.len();
        self.batch.push(bytes);
        if self.batch_bytes >= BATCH_BYTES {
            self.send_batch();
        }
    }

    /// Hands the fragments gathered so far to the writer, unless it is more than
    /// [`MAX_WRITER_LAG`] behind: then the writer is stopped (it removes the file and releases
    /// the lock) and nothing more is kept for it.
    fn send_batch(&mut self) {
        let Some(parts) = &self.parts else {
            return;
        };
        if self.batch.is_empty() {
            return;
        }
        let behind = self
            .handed
            .saturating_sub(self.written.load(Ordering::Acquire));
        if behind > MAX_WRITER_LAG {
            tracing::debug!(
                behind,
                "the disk is behind the network: the instance will be stored whole"
            );
            self.parts = None;
            self.batch = Vec::new();
            self.batch_bytes = 0;
            return;
        }
        self.handed += std::mem::take(&mut self.batch_bytes);
        // A writer that failed keeps receiving, and reports its error at `finish`; one that
        // declined has stopped receiving.
        let _ = parts.send(Part::Data(std::mem::take(&mut self.batch)));
    }

    /// The data set is complete: the writer makes the file durable while the data set is
    /// validated. The file is the instance's only once `InstanceStore::finish` says so; if this
    /// `Receiving` is dropped instead, the committed file is removed.
    pub fn commit(&mut self) {
        if !self.commit_sent {
            self.commit_sent = true;
            self.send_batch();
            if let Some(parts) = &self.parts {
                let _ = parts.send(Part::Commit);
            }
        }
    }

    /// Removes the file and releases the lock, and waits until both are done.
    async fn abandon(self) {
        drop(self.parts);
        let _ = self.writer.await;
    }
}

/// A C-STORE whose data set is arriving.
#[derive(Debug, Clone)]
pub struct NewInstance {
    pub key: FileKey,
    pub sop_class_uid: String,
    pub transfer_syntax: String,
    pub calling_ae: String,
    pub called_ae: String,
    /// How large the whole data set is likely to be (for the disk floor).
    pub expected_bytes: usize,
}

impl InstanceStore {
    /// Begins writing the file of `instance`, whose data set begins with `head`, while the rest
    /// arrives; returns at once (`None` while `MAX_EARLY_WRITERS` files are being written so:
    /// the instance is then stored the whole way). The writer thread first takes the instance's
    /// lock and decides:
    /// it declines (and `finish` stores the instance the whole way, by `store`) when the SOP
    /// Instance UID is known (or a file is already at its name), the index is failing, the disk
    /// is near its floor, or the file cannot be created (`store` then says why, to the sender).
    pub fn begin(&self, instance: NewInstance, head: Vec<u8>) -> Option<Receiving> {
        let slot = EarlyWriter::take(&self.early_writers)?;
        let (parts, received) = mpsc::channel();
        let handed = head.len();
        let _ = parts.send(Part::Data(vec![head.into()]));
        let store = self.clone();
        let runtime = tokio::runtime::Handle::current();
        let to_write = instance.clone();
        let written = Arc::new(AtomicUsize::new(0));
        let counter = Arc::clone(&written);
        let writer = tokio::task::spawn_blocking(move || {
            let written = store.write_arriving(&runtime, &to_write, received, &counter);
            drop(slot);
            written
        });
        Some(Receiving {
            key: instance.key,
            sop_class_uid: instance.sop_class_uid,
            transfer_syntax: instance.transfer_syntax,
            parts: Some(parts),
            batch: Vec::new(),
            batch_bytes: 0,
            handed,
            written,
            commit_sent: false,
            writer,
        })
    }

    /// The writer thread of `begin`; counts the bytes it has written in `written`.
    fn write_arriving(
        &self,
        runtime: &tokio::runtime::Handle,
        instance: &NewInstance,
        parts: mpsc::Receiver<Part>,
        written: &AtomicUsize,
    ) -> Written {
        if self.backlog.waiting() > 0 {
            return Written::Declined;
        }
        let sop_uid = instance.key.sop_instance_uid.as_str();
        let guard = runtime.block_on(self.lock_for(sop_uid).lock_owned());
        let release = |guard| {
            drop(guard);
            self.release_lock(sop_uid);
        };
        // The index is asked while the file is created: a known instance is rare (a re-send),
        // and its file, created for nothing, is removed.
        let index = self.index.clone();
        let uid = sop_uid.to_owned();
        let known = runtime.spawn(async move { index.find_instance(&uid).await });
        let Some(mut file) = self.create_incoming(instance) else {
            release(guard);
            return Written::Declined;
        };
        // The name made durable while the data set arrives.
        let mut file = file.sync_directory().map(|()| file);
        let committed = loop {
            match parts.recv() {
                Ok(Part::Data(fragments)) => {
                    for bytes in fragments {
                        if let Ok(open) = &mut file
                            && let Err(e) = open.append(&bytes)
                        {
                            // Dropping the file removes it.
                            file = Err(e);
                        }
                        written.fetch_add(bytes.len(), Ordering::Release);
                    }
                }
                Ok(Part::Commit) => {
                    if !matches!(runtime.block_on(known), Ok(Ok(None))) {
                        drop(file);
                        release(guard);
                        return Written::Declined;
                    }
                    break Some(file.and_then(files::IncomingFile::commit));
                }
                // Dropped before the commit: dropping the file removes it.
                Ok(Part::Keep) | Err(_) => {
                    drop(file);
                    break None;
                }
            }
        };
        match committed {
            Some(written) if matches!(parts.recv(), Ok(Part::Keep)) => {
                return Written::Committed(written, guard);
            }
            // Committed, then dropped: the data set was refused.
            Some(Ok(_)) => {
                let path = self.files.instance_path(&instance.key, 1);
                let _ = std::fs::remove_file(self.files.absolute(&path));
            }
            _ => {}
        }
        release(guard);
        Written::Dropped
    }

    /// The new file of `instance`, if it can be written early (whether the index knows the
    /// instance is asked meanwhile). Called with its lock held.
    fn create_incoming(&self, instance: &NewInstance) -> Option<files::IncomingFile> {
        if self.next_free_version(&instance.key, 1) != 1
            || self
                .check_disk_floor(instance.expected_bytes as u64)
                .is_err()
        {
            return None;
        }
        let meta = part10_meta(
            &instance.sop_class_uid,
            instance.key.sop_instance_uid.as_str(),
            &instance.transfer_syntax,
            &instance.calling_ae,
            &instance.called_ae,
        )
        .ok()?;
        let relative = self.files.instance_path(&instance.key, 1);
        match self.files.create_incoming(&relative, &meta) {
            Ok(file) => Some(file),
            Err(e) => {
                tracing::debug!(error = %e, "cannot begin the instance's file early");
                None
            }
        }
    }

    /// Makes `received`, whose file `receiving` was begun for, durable and says what happened,
    /// as `store` does. A data set that turned out to be another instance than the one begun
    /// (its file key, SOP class or transfer syntax differ), one the writer declined, and one
    /// the writer fell too far behind (`MAX_WRITER_LAG`) are stored the whole way instead.
    pub async fn finish(
        &self,
        mut receiving: Receiving,
        received: ReceivedInstance,
    ) -> Result<Stored, StoreError> {
        let same = received.attributes.file_key() == receiving.key
            && received.attributes.sop_class_uid.as_str() == receiving.sop_class_uid
            && received.transfer_syntax == receiving.transfer_syntax;
        if !same {
            receiving.abandon().await;
            return self.store(received).await;
        }
        let started = Instant::now();
        receiving.commit();
        let overrun = receiving.parts.is_none();
        if let Some(parts) = &receiving.parts {
            let _ = parts.send(Part::Keep);
        }
        let written = receiving.writer.await;
        let (size, guard) = match written {
            Ok(Written::Committed(Ok(size), guard)) => (size, guard),
            Ok(Written::Committed(Err(e), guard)) => {
                drop(guard);
                self.release_lock(receiving.key.sop_instance_uid.as_str());
                return Err(StoreError::Write(e));
            }
            Ok(Written::Declined) => return self.store(received).await,
            // Stopped for being behind: its file is removed and the lock released.
            Ok(Written::Dropped) if overrun => return self.store(received).await,
            Ok(Written::Dropped) | Err(_) => {
                return Err(StoreError::Write(std::io::Error::other(
                    "the instance's writer stopped",
                )));
            }
        };
        tracing::debug!(
            commit_us = started.elapsed().as_micros() as u64,
            "instance durable"
        );
        let file = WrittenFile {
            path: self
                .files
                .instance_path(&receiving.key, 1)
                .to_string_lossy()
                .into_owned(),
            size,
            version: 1,
            new_instance: true,
        };
        Ok(self.acknowledge(guard, Arc::new(received), file))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::instance::parse_data_set;
    use crate::synth::series::{SeriesSpec, write_ct_series};

    /// A disk slower than the network: the writer (here held up by the instance's lock, as a
    /// slow disk would hold it up) falls more than `MAX_WRITER_LAG` behind, so no more
    /// fragments are kept for it, and the instance is stored whole, as received.
    #[tokio::test(flavor = "multi_thread")]
    async fn a_writer_too_far_behind_is_stopped_and_the_instance_stored_whole() {
        let dir = tempfile::tempdir().unwrap();
        let spec = SeriesSpec {
            slices: 1,
            rows: 3072,
            columns: 3072,
            ..SeriesSpec::default()
        };
        let series = write_ct_series(&spec, &dir.path().join("sent")).unwrap();
        let bytes = std::fs::read(&series.files[0]).unwrap();
        let (start, transfer_syntax) = crate::encoding::part10_data_set(&bytes).unwrap();
        let data_set = bytes[start..].to_vec();
        assert!(data_set.len() > MAX_WRITER_LAG + BATCH_BYTES);
        let attributes = parse_data_set(&data_set, &transfer_syntax).unwrap();

        let files = files::FileStore::open(&dir.path().join("storage"), Path::new("")).unwrap();
        let index = db::Index::open(&dir.path().join("storage/jnsc.db"))
            .await
            .unwrap();
        let store = InstanceStore::new(files, index);
        let sop = attributes.sop_instance_uid.as_str().to_owned();
        let held = store.lock_for(&sop).lock_owned().await;
        let mut receiving = store
            .begin(
                NewInstance {
                    key: attributes.file_key(),
                    sop_class_uid: attributes.sop_class_uid.as_str().to_owned(),
                    transfer_syntax: transfer_syntax.clone(),
                    calling_ae: "SCU".into(),
                    called_ae: "JNSC".into(),
                    expected_bytes: data_set.len(),
                },
                data_set[..4096].to_vec(),
            )
            .expect("the only early writer");
        for fragment in data_set[4096..].chunks(65_536) {
            receiving.append(bytes::Bytes::copy_from_slice(fragment));
        }
        assert!(
            receiving.parts.is_none() && receiving.batch.is_empty(),
            "fragments still kept for a writer {} bytes behind",
            receiving.handed
        );
        drop(held);

        let received = ReceivedInstance {
            attributes,
            data_set: Arc::new(data_set.clone()),
            transfer_syntax,
            calling_ae: "SCU".into(),
            called_ae: "JNSC".into(),
            association: 1,
        };
        let key = received.attributes.file_key();
        let stored = store.finish(receiving, received).await.unwrap();
        assert_eq!(stored.outcome, StoreOutcome::Stored);
        let path = store.files.absolute(&store.files.instance_path(&key, 1));
        assert!(files::FileStore::read_data_set(&path).unwrap() == data_set);
    }
}
