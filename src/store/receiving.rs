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

/// What the writer thread is sent.
#[derive(Debug)]
enum Part {
    /// The next fragments of the data set.
    Data(Vec<Vec<u8>>),
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
    parts: mpsc::Sender<Part>,
    /// Fragments not yet handed to the writer (handed over [`BATCH_BYTES`] at a time: fewer
    /// wake-ups of its thread).
    batch: Vec<Vec<u8>>,
    batch_bytes: usize,
    commit_sent: bool,
    writer: tokio::task::JoinHandle<Written>,
}

impl Receiving {
    /// Hands the next fragment of the data set to the writer.
    pub fn append(&mut self, bytes: Vec<u8>) {
        self.batch_bytes += bytes.len();
        self.batch.push(bytes);
        if self.batch_bytes >= BATCH_BYTES {
            self.send_batch();
        }
    }

    /// Hands the fragments gathered so far to the writer.
    fn send_batch(&mut self) {
        if !self.batch.is_empty() {
            self.batch_bytes = 0;
            // A writer that failed keeps receiving, and reports its error at `finish`; one that
            // declined has stopped receiving.
            let _ = self.parts.send(Part::Data(std::mem::take(&mut self.batch)));
        }
    }

    /// The data set is complete: the writer makes the file durable while the data set is
    /// validated. The file is the instance's only once `InstanceStore::finish` says so; if this
    /// `Receiving` is dropped instead, the committed file is removed.
    pub fn commit(&mut self) {
        if !self.commit_sent {
            self.commit_sent = true;
            self.send_batch();
            let _ = self.parts.send(Part::Commit);
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
        let _ = parts.send(Part::Data(vec![head]));
        let store = self.clone();
        let runtime = tokio::runtime::Handle::current();
        let to_write = instance.clone();
        let writer = tokio::task::spawn_blocking(move || {
            let written = store.write_arriving(&runtime, &to_write, received);
            drop(slot);
            written
        });
        Some(Receiving {
            key: instance.key,
            sop_class_uid: instance.sop_class_uid,
            transfer_syntax: instance.transfer_syntax,
            parts,
            batch: Vec::new(),
            batch_bytes: 0,
            commit_sent: false,
            writer,
        })
    }

    /// The writer thread of `begin`.
    fn write_arriving(
        &self,
        runtime: &tokio::runtime::Handle,
        instance: &NewInstance,
        parts: mpsc::Receiver<Part>,
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
    /// (its file key, SOP class or transfer syntax differ), or one the writer declined, is
    /// stored the whole way instead.
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
        let _ = receiving.parts.send(Part::Keep);
        let written = receiving.writer.await;
        let (size, guard) = match written {
            Ok(Written::Committed(Ok(size), guard)) => (size, guard),
            Ok(Written::Committed(Err(e), guard)) => {
                drop(guard);
                self.release_lock(receiving.key.sop_instance_uid.as_str());
                return Err(StoreError::Write(e));
            }
            Ok(Written::Declined) => return self.store(received).await,
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
