//! Group commit of index rows: the rows of instances stored at about the same time (by one
//! association's successive instances, or by concurrent associations) are committed in one
//! transaction, by whichever of their tasks takes the committer's turn first. That task first
//! waits [`LINGER`] for more rows: the answers do not wait for their rows, so this costs the
//! sender nothing, and a batch costs about as many statements as a single row
//! (`Index::record_instances`). A batch that fails is retried row by row, so that one row's
//! failure (a duplicate key) fails only that row.

use super::db::{Index, InstanceRow, NewFile};
use super::{ReceivedInstance, WrittenFile};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// How long the committer waits for more rows before it takes the batch. One association
/// sending a CT series stores an instance every 2-3 ms here, so a batch holds a few of its rows;
/// a released association waits at most this much longer for its last rows.
const LINGER: Duration = Duration::from_millis(5);

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
        tokio::time::sleep(LINGER).await;
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

    fn received(sop: &str, series: &str, association: i64) -> Arc<ReceivedInstance> {
        let uid = |s: &str| Uid::parse(s).unwrap();
        Arc::new(ReceivedInstance {
            attributes: InstanceAttributes {
                sop_class_uid: uid("1.2.840.10008.5.1.4.1.1.2"),
                sop_instance_uid: uid(sop),
                study_uid: uid("2.25.1"),
                series_uid: uid(series),
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
            association,
        })
    }

    fn pending(sop: &str) -> PendingRow {
        pending_in(sop, "2.25.2", 1, 1)
    }

    fn pending_in(sop: &str, series: &str, association: i64, version: i64) -> PendingRow {
        PendingRow {
            received: received(sop, series, association),
            file: WrittenFile {
                path: format!("instances/{sop}-{version}.dcm"),
                size: 1,
                version,
                new_instance: version == 1,
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

    /// One batch with rows of two series sent over two associations, one of them a new version of
    /// an instance indexed before: each series counts its own new instances, each association the
    /// rows it stored, and every version has its row (what one row per transaction gives).
    #[tokio::test]
    async fn a_mixed_batch_counts_per_series_and_association() {
        let dir = tempfile::tempdir().unwrap();
        let index = Index::open(&dir.path().join("index.db")).await.unwrap();
        for _ in 0..2 {
            index
                .begin_association("vm", "PACS", "JNSC", "127.0.0.1:1")
                .await
                .unwrap();
        }
        let group = Arc::new(GroupCommit::default());
        group
            .commit(&index, pending_in("2.25.10", "2.25.2", 1, 1))
            .await
            .unwrap();

        let turn = group.committer.lock().await;
        let rows = [
            ("2.25.11", "2.25.2", 1, 1),
            ("2.25.20", "2.25.3", 2, 1),
            ("2.25.10", "2.25.2", 2, 2),
            ("2.25.21", "2.25.3", 2, 1),
            ("2.25.12", "2.25.2", 1, 1),
        ];
        let tasks: Vec<_> = rows
            .into_iter()
            .map(|(sop, series, association, version)| {
                let (group, index) = (Arc::clone(&group), index.clone());
                let row = pending_in(sop, series, association, version);
                tokio::spawn(async move { group.commit(&index, row).await })
            })
            .collect();
        while group.queue.lock().unwrap().len() < rows.len() {
            tokio::task::yield_now().await;
        }
        drop(turn);
        for task in tasks {
            task.await.unwrap().unwrap();
        }

        let super::super::db::Pool::Sqlite(pool) = index.pool() else {
            unreachable!("an SQLite index")
        };
        let counts = |sql: &'static str| async move {
            sqlx::query_as::<_, (String, i64)>(sql)
                .fetch_all(pool)
                .await
                .unwrap()
        };
        assert_eq!(
            counts("SELECT series_uid, instance_count FROM series ORDER BY series_uid").await,
            [("2.25.2".into(), 3), ("2.25.3".into(), 2)]
        );
        assert_eq!(
            counts("SELECT CAST(id AS TEXT), instances_ok FROM associations ORDER BY id").await,
            [("1".into(), 3), ("2".into(), 3)]
        );
        assert_eq!(
            counts(
                "SELECT sop_instance_uid || '/' || version, association FROM instance_versions \
                 ORDER BY sop_instance_uid, version"
            )
            .await,
            [
                ("2.25.10/1".into(), 1),
                ("2.25.10/2".into(), 2),
                ("2.25.11/1".into(), 1),
                ("2.25.12/1".into(), 1),
                ("2.25.20/1".into(), 2),
                ("2.25.21/1".into(), 2),
            ]
        );
        let current: (i64, String) = sqlx::query_as(
            "SELECT version, path FROM instances WHERE sop_instance_uid = '2.25.10'",
        )
        .fetch_one(pool)
        .await
        .unwrap();
        assert_eq!(current, (2, "instances/2.25.10-2.dcm".into()));
    }
}
