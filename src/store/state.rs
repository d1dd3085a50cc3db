//! The states of jobs and outbox rows, as types. They are the only values the `state` columns
//! take: the code binds these (never string literals), and migration 0003 refuses any other
//! value in the index.

/// A job's state (the `jobs.state` column; migration 0003 refuses any other value).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, sqlx::Type, serde::Serialize)]
#[sqlx(type_name = "text", rename_all = "lowercase")]
#[serde(rename_all = "lowercase")]
pub enum JobState {
    /// Waiting for the worker.
    Queued,
    /// Claimed by the worker (queued again at start if the process stopped meanwhile).
    Running,
    Done,
    Failed,
}

impl JobState {
    pub const ALL: [JobState; 4] = [
        JobState::Queued,
        JobState::Running,
        JobState::Done,
        JobState::Failed,
    ];
}

/// An outbox row's state (the `outbox.state` column; migration 0003 refuses any other value).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, sqlx::Type, serde::Serialize)]
#[sqlx(type_name = "text", rename_all = "lowercase")]
#[serde(rename_all = "lowercase")]
pub enum OutboxState {
    /// To be sent (again) at `next_attempt_at`.
    Pending,
    Sent,
    /// Will not be sent: permanent failure, or no destination.
    Failed,
    /// A newer version of the object replaced it before it was sent.
    Superseded,
}

impl OutboxState {
    pub const ALL: [OutboxState; 4] = [
        OutboxState::Pending,
        OutboxState::Sent,
        OutboxState::Failed,
        OutboxState::Superseded,
    ];
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::db::{Index, Pool};

    #[tokio::test]
    async fn the_index_takes_every_state_and_refuses_any_other() {
        let dir = tempfile::tempdir().unwrap();
        let index = Index::open(&dir.path().join("jnsc.db")).await.unwrap();
        let Pool::Sqlite(pool) = index.pool() else {
            unreachable!("an SQLite file")
        };
        // Rows without their series and study: only the state is under test.
        sqlx::query("PRAGMA foreign_keys = OFF")
            .execute(pool)
            .await
            .unwrap();
        let job = "INSERT INTO jobs (series_uid, state, instance_count, created_at, updated_at)
                   VALUES ('1.2', $1, 1, 0, 0)";
        let outbox = "INSERT INTO outbox (sop_instance_uid, sop_class_uid, study_uid, series_uid,
                          path, source_ae, state, next_attempt_at, created_at, updated_at)
                      VALUES ('1.3', '1.4', '1.1', '1.2', 'p', 'AE', $1, 0, 0, 0)";
        for state in JobState::ALL {
            sqlx::query(job).bind(state).execute(pool).await.unwrap();
        }
        for state in OutboxState::ALL {
            sqlx::query(outbox).bind(state).execute(pool).await.unwrap();
        }
        let stored: Vec<String> = sqlx::query_scalar("SELECT state FROM jobs ORDER BY id")
            .fetch_all(pool)
            .await
            .unwrap();
        assert_eq!(stored, ["queued", "running", "done", "failed"]);
        let refused = sqlx::query(job)
            .bind("sending")
            .execute(pool)
            .await
            .unwrap_err();
        assert!(refused.to_string().contains("job state"), "{refused}");
        assert!(
            sqlx::query(outbox)
                .bind("queued")
                .execute(pool)
                .await
                .is_err()
        );
        for update in [
            "UPDATE jobs SET state = 'finished'",
            "UPDATE outbox SET state = 'done'",
        ] {
            assert!(sqlx::query(update).execute(pool).await.is_err(), "{update}");
        }
    }
}
