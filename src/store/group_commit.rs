//! Group commit of index rows: the rows of instances stored at about the same time (by
//! concurrent associations) are committed in one transaction, by whichever of their tasks takes
//! the committer's turn first. A batch that fails is retried row by row, so that one row's
//! failure (a duplicate key) fails only that row.

use super::db::{Index, InstanceRow, NewFile};
use super::{ReceivedInstance, WrittenFile};
use std::sync::{Arc, Mutex};

/// Index rows of several instances committed in one transaction: each row is queued, and whoever
/// takes the committer's turn commits every row queued by then (its own and those that arrived
/// while the previous commit ran), so that concurrent associations share transactions.
#[derive(Debug, Default)]
pub(super) struct GroupCommit {
    queue: Mutex<Vec<QueuedRow>>,
    committer: tokio::sync::Mutex<()>,
}

/// The index row of a written file.
#[derive(Debug)]
pub(super) struct PendingRow {
    pub(super) received: Arc<ReceivedInstance>,
    pub(super) file: WrittenFile,
}

/// A row in the group commit's queue, and who waits for its result.
#[derive(Debug)]
struct QueuedRow {
    pending: PendingRow,
    done: tokio::sync::oneshot::Sender<Result<(), sqlx::Error>>,
}

impl PendingRow {
    fn row(&self) -> InstanceRow<'_> {
        InstanceRow {
            attributes: &self.received.attributes,
            file: NewFile {
                path: &self.file.path,
                size_bytes: self.file.size as i64,
                version: self.file.version,
                transfer_syntax: &self.received.transfer_syntax,
                new_instance: self.file.new_instance,
            },
            association: Some(self.received.association),
            source_ae: &self.received.calling_ae,
        }
    }
}

impl GroupCommit {
    /// Commits `row`, with whatever other rows are queued, and returns its result.
    pub(super) async fn commit(
        &self,
        index: &Index,
        pending: PendingRow,
    ) -> Result<(), sqlx::Error> {
        let (done, mut result) = tokio::sync::oneshot::channel();
        self.queue
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(QueuedRow { pending, done });
        let turn = self.committer.lock().await;
        // A commit that ran while this one waited for its turn may have taken the row.
        if let Ok(committed) = result.try_recv() {
            return committed;
        }
        let batch = std::mem::take(&mut *self.queue.lock().unwrap_or_else(|e| e.into_inner()));
        let rows: Vec<InstanceRow> = batch.iter().map(|queued| queued.pending.row()).collect();
        match index.record_instances(&rows).await {
            Ok(()) => batch.into_iter().for_each(|queued| {
                let _ = queued.done.send(Ok(()));
            }),
            // One row's failure (a duplicate key) must not fail the others: each on its own.
            Err(error) if batch.len() == 1 => {
                let _ = batch
                    .into_iter()
                    .next()
                    .map(|queued| queued.done.send(Err(error)));
            }
            Err(_) => {
                for queued in batch {
                    let alone = index.record_instances(&[queued.pending.row()]).await;
                    let _ = queued.done.send(alone);
                }
            }
        }
        drop(turn);
        result
            .await
            .unwrap_or_else(|_| Err(sqlx::Error::PoolClosed))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::instance::InstanceAttributes;
    use crate::store::uid::Uid;

    fn received(sop: &str) -> Arc<ReceivedInstance> {
        let uid = |s: &str| Uid::parse(s).unwrap();
        Arc::new(ReceivedInstance {
            attributes: InstanceAttributes {
                sop_class_uid: uid("1.2.840.10008.5.1.4.1.1.2"),
                sop_instance_uid: uid(sop),
                study_uid: uid("2.25.1"),
                series_uid: uid("2.25.2"),
                patient_id: "P".into(),
                issuer_of_patient_id: String::new(),
                patient_birth_date: None,
                patient_sex: None,
                study_date: None,
                study_time: None,
                accession_number: None,
                study_id: None,
                study_description: None,
                modality: Some("CT".into()),
                series_number: None,
                series_description: None,
                body_part: None,
                frame_of_reference_uid: None,
                instance_number: None,
                rows: None,
                columns: None,
                number_of_frames: None,
            },
            data_set: Arc::default(),
            transfer_syntax: "1.2.840.10008.1.2.1".into(),
            calling_ae: "PACS".into(),
            called_ae: "JNSC".into(),
            association: 1,
        })
    }

    fn pending(sop: &str) -> PendingRow {
        PendingRow {
            received: received(sop),
            file: WrittenFile {
                path: format!("instances/{sop}.dcm"),
                size: 1,
                version: 1,
                new_instance: true,
            },
        }
    }

    /// Rows queued while a commit runs go in together; when one of them is refused (a duplicate
    /// key), the others are committed all the same and only that one fails.
    #[tokio::test]
    async fn a_refused_row_fails_alone_in_its_batch() {
        let dir = tempfile::tempdir().unwrap();
        let index = Index::open(&dir.path().join("index.db")).await.unwrap();
        let association = index
            .begin_association("vm", "PACS", "JNSC", "127.0.0.1:1")
            .await
            .unwrap();
        assert_eq!(association, 1);
        let group = Arc::new(GroupCommit::default());
        group.commit(&index, pending("2.25.10")).await.unwrap();

        // Hold the committer's turn until three rows are queued: the next turn takes them all.
        let turn = group.committer.lock().await;
        let tasks: Vec<_> = ["2.25.11", "2.25.10", "2.25.12"]
            .into_iter()
            .map(|sop| {
                let (group, index) = (Arc::clone(&group), index.clone());
                tokio::spawn(async move { group.commit(&index, pending(sop)).await })
            })
            .collect();
        while group.queue.lock().unwrap().len() < 3 {
            tokio::task::yield_now().await;
        }
        drop(turn);
        let mut results = Vec::new();
        for task in tasks {
            results.push(task.await.unwrap());
        }
        assert!(results[0].is_ok() && results[2].is_ok(), "{results:?}");
        assert!(
            matches!(&results[1], Err(sqlx::Error::Database(e)) if e.is_unique_violation()),
            "{results:?}"
        );
        let overview = index.overview(1).await.unwrap();
        assert_eq!(overview.instances, 3);
    }
}
