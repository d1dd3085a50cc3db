//! The index's record of work after reception: jobs the worker claims and finishes, the result
//! objects it wrote, and the outbox the sender drains, with every delivery attempt. Each state
//! change is one transaction, so a crash leaves either the old state or the new one.
//!
//! Several nodes may share one queue (PostgreSQL): a job is claimed by one node
//! ([`Claimant`], `FOR UPDATE SKIP LOCKED` there) for a lease its worker renews while it works.
//! A job whose lease ran out (its worker died) is queued again, or failed for good after
//! `max_attempts`; only the claimant still holding the job can finish or fail it, so a worker
//! that lost its lease records nothing and its results are never delivered twice. Outbox rows
//! are claimed the same way by the node that sends them, so that one sender delivers each
//! object; a sender's claim that ran out (its node died mid-send) is free to claim again.

use crate::store::db::{DbResult, Index, Pool, now_ms, on_pool};
pub use crate::store::state::{JobState, OutboxState};
use sqlx::FromRow;
use std::time::Duration;

/// Who claims jobs (the node's name), and how long a claim holds unless renewed.
#[derive(Debug, Clone)]
pub struct Claimant {
    pub node: String,
    pub lease: Duration,
}

impl Claimant {
    fn lease_until(&self, now: i64) -> i64 {
        now.saturating_add(i64::try_from(self.lease.as_millis()).unwrap_or(i64::MAX))
    }
}

/// A job the worker took, with what it needs about its series.
#[derive(Debug, Clone, FromRow)]
pub struct ClaimedJob {
    pub id: i64,
    pub series_uid: String,
    pub study_uid: String,
    /// The calling AE that sent the series: its results go back there.
    pub source_ae: String,
    /// The node holding the job (its claim is checked when the job is finished or failed).
    pub claimed_by: String,
}

/// The claim of the oldest queued job; `$lock` is PostgreSQL's row lock clause (SQLite has one
/// writer and no such clause).
macro_rules! claim_sql {
    ($lock:literal) => {
        concat!(
            "UPDATE jobs SET state = $1, started_at = $2, updated_at = $2,
                    attempts = attempts + 1, error = NULL, error_code = NULL,
                    claimed_by = $3, lease_until = $4
             WHERE id = (SELECT id FROM jobs WHERE state = $5 ORDER BY created_at, id LIMIT 1 ",
            $lock,
            ")
             RETURNING id, series_uid,
                 (SELECT study_uid FROM series WHERE series.series_uid = jobs.series_uid)
                     AS study_uid,
                 (SELECT source_ae FROM series WHERE series.series_uid = jobs.series_uid)
                     AS source_ae,
                 claimed_by"
        )
    };
}

/// A result object to record and deliver.
#[derive(Debug, Clone)]
pub struct NewResult {
    pub sop_instance_uid: String,
    pub sop_class_uid: String,
    pub kind: ResultKind,
    /// Relative to the storage directory.
    pub path: String,
}

/// Which result object a row holds (the `kind` column).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ResultKind {
    /// The DICOM Segmentation.
    Seg,
    /// The TID 1500 Structured Report.
    Sr,
}

impl ResultKind {
    /// The value stored in the `kind` column.
    pub fn as_str(self) -> &'static str {
        match self {
            ResultKind::Seg => "seg",
            ResultKind::Sr => "sr",
        }
    }

    /// The kind a `kind` column holds.
    pub fn from_column(value: &str) -> Result<Self, sqlx::Error> {
        match value {
            "seg" => Ok(ResultKind::Seg),
            "sr" => Ok(ResultKind::Sr),
            other => Err(sqlx::Error::Decode(
                format!("unknown result kind `{other}`").into(),
            )),
        }
    }
}

/// Where results for a calling AE go; `None` when no peer is configured for it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Destination {
    pub ae_title: String,
    pub host: String,
    pub port: u16,
}

/// How a finished job went.
#[derive(Debug, Clone)]
pub struct JobSuccess<'a> {
    pub timings_json: &'a str,
    pub candidates: usize,
    pub findings: usize,
    pub results: &'a [NewResult],
}

/// An outbox row due for delivery.
#[derive(Debug, Clone, FromRow)]
pub struct OutboxItem {
    pub id: i64,
    pub sop_instance_uid: String,
    pub sop_class_uid: String,
    pub path: String,
    pub dest_ae: String,
    pub dest_host: String,
    pub dest_port: i64,
    pub attempts: i64,
    pub next_attempt_at: i64,
}

/// The result of one delivery attempt, as the outbox records it.
#[derive(Debug, Clone, PartialEq)]
pub enum SendOutcome {
    /// Stored by the destination (status Success or Warning).
    Sent { status: u16 },
    /// Try again at `next_attempt_at` (Unix ms).
    Retry {
        status: Option<u16>,
        error: String,
        next_attempt_at: i64,
    },
    /// Will not succeed by retrying: permanent DIMSE failure, SOP class refused, or too many
    /// attempts.
    Failed { status: Option<u16>, error: String },
}

const NO_DESTINATION: &str = "no destination is configured for the calling AE title";

/// The claim of up to `$5` due outbox rows that no live claim holds; `$lock` as in `claim_sql!`.
macro_rules! claim_outbox_sql {
    ($lock:literal) => {
        concat!(
            "UPDATE outbox SET claimed_by = $1, lease_until = $2
             WHERE id IN (SELECT id FROM outbox
                          WHERE state = $3 AND next_attempt_at <= $4 AND dest_host IS NOT NULL
                            AND (lease_until IS NULL OR lease_until < $4)
                          ORDER BY next_attempt_at, id LIMIT $5 ",
            $lock,
            ")
             RETURNING id, sop_instance_uid, sop_class_uid, path, dest_ae, dest_host, dest_port,
                       attempts, next_attempt_at"
        )
    };
}

/// Inserts a pending outbox row for `result` (or a failed one when there is no destination),
/// superseding undelivered rows of the same object: `enqueue!(tx, job: &ClaimedJob,
/// result: &NewResult, destination: Option<&Destination>, now: i64)`, a `DbResult<()>`. A macro,
/// so that one text serves the transactions of both engines.
macro_rules! enqueue {
    ($tx:expr, $job:expr, $result:expr, $destination:expr, $now:expr) => {{
        let tx = &mut *$tx;
        let job: &ClaimedJob = $job;
        let result: &NewResult = $result;
        let destination: Option<&Destination> = $destination;
        let now: i64 = $now;
        sqlx::query(
            "UPDATE outbox SET state = $1, updated_at = $2 WHERE sop_instance_uid = $3 AND state = $4",
        )
        .bind(OutboxState::Superseded)
        .bind(now)
        .bind(&result.sop_instance_uid)
        .bind(OutboxState::Pending)
        .execute(&mut *tx)
        .await?;
        let (state, error) = match destination {
            Some(_) => (OutboxState::Pending, None),
            None => (
                OutboxState::Failed,
                Some(format!("{NO_DESTINATION} {}", job.source_ae)),
            ),
        };
        sqlx::query(
            "INSERT INTO outbox
                 (sop_instance_uid, sop_class_uid, study_uid, series_uid, path, job, source_ae,
                  dest_ae, dest_host, dest_port, state, next_attempt_at, last_error, created_at,
                  updated_at)
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15)",
        )
        .bind(&result.sop_instance_uid)
        .bind(&result.sop_class_uid)
        .bind(&job.study_uid)
        .bind(&job.series_uid)
        .bind(&result.path)
        .bind(job.id)
        .bind(&job.source_ae)
        .bind(destination.map(|d| d.ae_title.as_str()))
        .bind(destination.map(|d| d.host.as_str()))
        .bind(destination.map(|d| i64::from(d.port)))
        .bind(state)
        .bind(now)
        .bind(error)
        .bind(now)
        .bind(now)
        .execute(&mut *tx)
        .await?;

        DbResult::Ok(())
    }};
}

impl Index {
    /// Where the series' latest SR is (relative to the store root), if it was analysed before:
    /// its folder holds the summary a re-analysis revises, whichever node wrote it.
    pub async fn latest_sr_path(&self, series_uid: &str) -> DbResult<Option<String>> {
        on_pool!(self.pool(), pool => {
            sqlx::query_scalar("SELECT path FROM results WHERE series_uid = $1 AND kind = $2")
                .bind(series_uid)
                .bind(ResultKind::Sr.as_str())
                .fetch_optional(pool)
                .await
        })
    }

    /// Puts the jobs this node left running (a previous run of it stopped) back in the queue;
    /// returns how many. Other nodes' jobs are theirs until their lease runs out.
    pub async fn requeue_interrupted_jobs(&self, node: &str) -> DbResult<u64> {
        on_pool!(self.pool(), pool => {
            let done = sqlx::query(
                "UPDATE jobs SET state = $1, updated_at = $2, started_at = NULL,
                        claimed_by = NULL, lease_until = NULL
                 WHERE state = $3 AND (claimed_by = $4 OR claimed_by IS NULL)",
            )
            .bind(JobState::Queued)
            .bind(now_ms())
            .bind(JobState::Running)
            .bind(node)
            .execute(pool)
            .await?;
            Ok(done.rows_affected())
        })
    }

    /// Takes the oldest queued job, if any, marks it running and held by `claimant`.
    pub async fn claim_next_job(&self, claimant: &Claimant) -> DbResult<Option<ClaimedJob>> {
        let now = now_ms();
        let sql = match self.pool() {
            Pool::Sqlite(_) => claim_sql!(""),
            Pool::Postgres(_) => claim_sql!("FOR UPDATE SKIP LOCKED"),
        };
        on_pool!(self.pool(), pool => {
            sqlx::query_as(sql)
                .bind(JobState::Running)
                .bind(now)
                .bind(&claimant.node)
                .bind(claimant.lease_until(now))
                .bind(JobState::Queued)
                .fetch_optional(pool)
                .await
        })
    }

    /// Extends the claimant's lease on a running job; `false` when the job is no longer its own
    /// (the lease ran out and the job was queued again, or taken by another node).
    pub async fn renew_lease(&self, job: &ClaimedJob, claimant: &Claimant) -> DbResult<bool> {
        let now = now_ms();
        on_pool!(self.pool(), pool => {
            let done = sqlx::query(
                "UPDATE jobs SET lease_until = $1 WHERE id = $2 AND state = $3 AND claimed_by = $4",
            )
            .bind(claimant.lease_until(now))
            .bind(job.id)
            .bind(JobState::Running)
            .bind(&claimant.node)
            .execute(pool)
            .await?;
            Ok(done.rows_affected() == 1)
        })
    }

    /// Running jobs whose lease ran out (their worker died or lost the database): queued again,
    /// or failed for good once they were claimed `max_attempts` times. Returns (queued again,
    /// failed).
    pub async fn reclaim_expired_jobs(&self, max_attempts: i64) -> DbResult<(u64, u64)> {
        let now = now_ms();
        on_pool!(self.pool(), pool => {
            let mut tx = pool.begin().await?;
            let failed = sqlx::query(
                "UPDATE jobs SET state = $1, finished_at = $2, updated_at = $2,
                        error_code = 'lease_expired',
                        error = 'the node analysing it stopped answering, on every attempt',
                        claimed_by = NULL, lease_until = NULL
                 WHERE state = $3 AND lease_until < $2 AND attempts >= $4",
            )
            .bind(JobState::Failed)
            .bind(now)
            .bind(JobState::Running)
            .bind(max_attempts)
            .execute(&mut *tx)
            .await?
            .rows_affected();
            let queued = sqlx::query(
                "UPDATE jobs SET state = $1, updated_at = $2, started_at = NULL,
                        claimed_by = NULL, lease_until = NULL
                 WHERE state = $3 AND lease_until < $2",
            )
            .bind(JobState::Queued)
            .bind(now)
            .bind(JobState::Running)
            .execute(&mut *tx)
            .await?
            .rows_affected();
            tx.commit().await?;
            Ok((queued, failed))
        })
    }

    /// Records a finished job, its result objects and their outbox rows, in one transaction.
    /// Older undelivered versions of the same objects are superseded: only the newest is sent.
    /// `false`, with nothing recorded, when the job is no longer held by its claimant (its
    /// lease ran out: another node analyses it again).
    pub async fn finish_job(
        &self,
        job: &ClaimedJob,
        success: &JobSuccess<'_>,
        destination: Option<&Destination>,
    ) -> DbResult<bool> {
        on_pool!(self.pool(), pool => {
            let now = now_ms();
            let mut tx = pool.begin().await?;
            // First, so that the job's row is locked (PostgreSQL) while the rest is written.
            let held = sqlx::query(
                "UPDATE jobs SET state = $1, finished_at = $2, updated_at = $2, timings = $3,
                        candidates = $4, findings = $5, lease_until = NULL
                 WHERE id = $6 AND state = $7 AND claimed_by = $8",
            )
            .bind(JobState::Done)
            .bind(now)
            .bind(success.timings_json)
            .bind(success.candidates as i64)
            .bind(success.findings as i64)
            .bind(job.id)
            .bind(JobState::Running)
            .bind(&job.claimed_by)
            .execute(&mut *tx)
            .await?
            .rows_affected();
            if held == 0 {
                tx.rollback().await?;
                return Ok(false);
            }
            // This analysis replaces the series' earlier results (a SEG may no longer exist).
            sqlx::query("DELETE FROM results WHERE series_uid = $1")
                .bind(&job.series_uid)
                .execute(&mut *tx)
                .await?;
            sqlx::query(
                "UPDATE outbox SET state = $1, updated_at = $2 WHERE series_uid = $3 AND state = $4",
            )
            .bind(OutboxState::Superseded)
            .bind(now)
            .bind(&job.series_uid)
            .bind(OutboxState::Pending)
            .execute(&mut *tx)
            .await?;
            for result in success.results {
                sqlx::query(
                    "INSERT INTO results
                         (sop_instance_uid, job, study_uid, series_uid, kind, sop_class_uid, path,
                          created_at)
                     VALUES ($1, $2, $3, $4, $5, $6, $7, $8)
                     ON CONFLICT (sop_instance_uid) DO UPDATE SET
                       job = excluded.job, study_uid = excluded.study_uid,
                       series_uid = excluded.series_uid, kind = excluded.kind,
                       sop_class_uid = excluded.sop_class_uid, path = excluded.path,
                       created_at = excluded.created_at",
                )
                .bind(&result.sop_instance_uid)
                .bind(job.id)
                .bind(&job.study_uid)
                .bind(&job.series_uid)
                .bind(result.kind.as_str())
                .bind(&result.sop_class_uid)
                .bind(&result.path)
                .bind(now)
                .execute(&mut *tx)
                .await?;
                enqueue!(tx, job, result, destination, now)?;
            }
            tx.commit().await?;
            Ok(true)
        })
    }

    /// Records a failed job with a stable code and a message for operators; `false` when the
    /// job is no longer held by its claimant (as for [`Index::finish_job`]).
    pub async fn fail_job(&self, job: &ClaimedJob, code: &str, message: &str) -> DbResult<bool> {
        on_pool!(self.pool(), pool => {
            let now = now_ms();
            let done = sqlx::query(
                "UPDATE jobs SET state = $1, finished_at = $2, updated_at = $2, error_code = $3,
                        error = $4, lease_until = NULL
                 WHERE id = $5 AND state = $6 AND claimed_by = $7",
            )
            .bind(JobState::Failed)
            .bind(now)
            .bind(code)
            .bind(message)
            .bind(job.id)
            .bind(JobState::Running)
            .bind(&job.claimed_by)
            .execute(pool)
            .await?;
            Ok(done.rows_affected() == 1)
        })
    }

    /// Claims up to `limit` outbox rows whose next attempt is due and that no live claim
    /// holds, oldest first, for `claimant`'s sender: no other node sends them while it holds the
    /// claim (it renews it with [`Index::renew_outbox_claims`] while it sends).
    pub async fn claim_due_outbox(
        &self,
        claimant: &Claimant,
        limit: i64,
    ) -> DbResult<Vec<OutboxItem>> {
        let now = now_ms();
        let sql = match self.pool() {
            Pool::Sqlite(_) => claim_outbox_sql!(""),
            Pool::Postgres(_) => claim_outbox_sql!("FOR UPDATE SKIP LOCKED"),
        };
        let mut items: Vec<OutboxItem> = on_pool!(self.pool(), pool => {
            sqlx::query_as(sql)
                .bind(&claimant.node)
                .bind(claimant.lease_until(now))
                .bind(OutboxState::Pending)
                .bind(now)
                .bind(limit)
                .fetch_all(pool)
                .await
        })?;
        // RETURNING keeps no order.
        items.sort_by_key(|item| (item.next_attempt_at, item.id));
        Ok(items)
    }

    /// Extends `claimant`'s claim on outbox rows it is sending; returns how many it still held.
    pub async fn renew_outbox_claims(&self, ids: &[i64], claimant: &Claimant) -> DbResult<u64> {
        let now = now_ms();
        let mut renewed = 0;
        on_pool!(self.pool(), pool => {
            let mut tx = pool.begin().await?;
            for id in ids {
                renewed += sqlx::query(
                    "UPDATE outbox SET lease_until = $1 WHERE id = $2 AND claimed_by = $3",
                )
                .bind(claimant.lease_until(now))
                .bind(id)
                .bind(&claimant.node)
                .execute(&mut *tx)
                .await?
                .rows_affected();
            }
            tx.commit().await
        })?;
        Ok(renewed)
    }

    /// Frees the outbox claims `node` held when it stopped (at its next start); returns how many.
    pub async fn release_outbox_claims(&self, node: &str) -> DbResult<u64> {
        on_pool!(self.pool(), pool => {
            let done = sqlx::query(
                "UPDATE outbox SET claimed_by = NULL, lease_until = NULL WHERE claimed_by = $1",
            )
            .bind(node)
            .execute(pool)
            .await?;
            Ok(done.rows_affected())
        })
    }

    /// When the next pending row falls due and is free to claim (Unix ms), if any.
    pub async fn next_outbox_due(&self) -> DbResult<Option<i64>> {
        on_pool!(self.pool(), pool => {
            sqlx::query_scalar(
                "SELECT MIN(CASE WHEN lease_until > next_attempt_at THEN lease_until
                                 ELSE next_attempt_at END)
                 FROM outbox WHERE state = $1 AND dest_host IS NOT NULL",
            )
            .bind(OutboxState::Pending)
            .fetch_one(pool)
            .await
        })
    }

    /// Records one delivery attempt of a row `claimant` holds, and moves the row on (its claim
    /// released). `false`, with nothing recorded, when the claim was lost meanwhile (its lease ran
    /// out and another node may send the object too) or the row was superseded.
    pub async fn record_send(
        &self,
        outbox_id: i64,
        claimant: &Claimant,
        outcome: &SendOutcome,
        duration_ms: i64,
    ) -> DbResult<bool> {
        on_pool!(self.pool(), pool => {
            let now = now_ms();
            let (state, status, error, next, label) = match outcome {
                SendOutcome::Sent { status } => (OutboxState::Sent, Some(*status), None, None, "sent"),
                SendOutcome::Retry {
                    status,
                    error,
                    next_attempt_at,
                } => (
                    OutboxState::Pending,
                    *status,
                    Some(error.as_str()),
                    Some(*next_attempt_at),
                    "retry",
                ),
                SendOutcome::Failed { status, error } => (
                    OutboxState::Failed,
                    *status,
                    Some(error.as_str()),
                    None,
                    "failed",
                ),
            };
            let mut tx = pool.begin().await?;
            // First, so that the row is locked (PostgreSQL) while the attempt is written.
            let held = sqlx::query(
                "UPDATE outbox SET state = $1, attempts = attempts + 1, updated_at = $2,
                        last_status = $3, last_error = $4,
                        next_attempt_at = COALESCE($5, next_attempt_at),
                        sent_at = CASE WHEN $6 THEN $7 ELSE sent_at END,
                        claimed_by = NULL, lease_until = NULL
                 WHERE id = $8 AND state = $9 AND claimed_by = $10",
            )
            .bind(state)
            .bind(now)
            .bind(status.map(i64::from))
            .bind(error)
            .bind(next)
            .bind(state == OutboxState::Sent)
            .bind(now)
            .bind(outbox_id)
            .bind(OutboxState::Pending)
            .bind(&claimant.node)
            .execute(&mut *tx)
            .await?
            .rows_affected();
            if held == 0 {
                tx.rollback().await?;
                return Ok(false);
            }
            sqlx::query(
                "INSERT INTO send_attempts (outbox, at, duration_ms, status, outcome, error)
                 VALUES ($1, $2, $3, $4, $5, $6)",
            )
            .bind(outbox_id)
            .bind(now)
            .bind(duration_ms)
            .bind(status.map(i64::from))
            .bind(label)
            .bind(error)
            .execute(&mut *tx)
            .await?;
            tx.commit().await?;
            Ok(true)
        })
    }

    /// Queues a study's latest result objects again, to the destination `resolve` gives for the
    /// calling AE that sent each series (the configuration may have changed since). Returns how
    /// many objects were queued.
    pub async fn resend_study(
        &self,
        study_uid: &str,
        resolve: impl Fn(&str) -> Option<Destination>,
    ) -> DbResult<usize> {
        on_pool!(self.pool(), pool => {
            type Row = (String, String, String, String, i64, String, String);
            let rows: Vec<Row> = sqlx::query_as(
                "SELECT r.sop_instance_uid, r.sop_class_uid, r.kind, r.path, r.job, r.series_uid,
                        s.source_ae
                 FROM results r JOIN series s ON s.series_uid = r.series_uid
                 WHERE r.study_uid = $1 ORDER BY r.series_uid, r.kind",
            )
            .bind(study_uid)
            .fetch_all(pool)
            .await?;
            let now = now_ms();
            let mut tx = pool.begin().await?;
            for (sop_instance_uid, sop_class_uid, kind, path, job, series_uid, source_ae) in &rows {
                let claimed = ClaimedJob {
                    id: *job,
                    series_uid: series_uid.clone(),
                    study_uid: study_uid.to_owned(),
                    source_ae: source_ae.clone(),
                    claimed_by: String::new(),
                };
                let result = NewResult {
                    sop_instance_uid: sop_instance_uid.clone(),
                    sop_class_uid: sop_class_uid.clone(),
                    kind: ResultKind::from_column(kind)?,
                    path: path.clone(),
                };
                let destination = resolve(source_ae);
                enqueue!(tx, &claimed, &result, destination.as_ref(), now)?;
            }
            tx.commit().await?;
            Ok(rows.len())
        })
    }
}
