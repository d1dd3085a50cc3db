//! What operators read from the index: counts for the status page and one study's full history
//! (series, jobs, results, deliveries with every attempt). Patient IDs and UIDs only: no names.

use crate::store::db::{DbResult, Index, now_ms, on_pool};
use crate::store::state::{JobState, OutboxState};
use serde::Serialize;
use sqlx::FromRow;
use std::collections::BTreeMap;

/// Counts over the whole index.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Overview {
    pub instances: i64,
    pub studies: i64,
    pub jobs_by_state: BTreeMap<JobState, i64>,
    /// Jobs waiting for the worker.
    pub queue_depth: i64,
    pub outbox_by_state: BTreeMap<OutboxState, i64>,
    /// Running jobs by the node that holds them (`[node] name`): with several nodes on one
    /// database, who is analysing what.
    pub running_by_node: BTreeMap<String, i64>,
    /// Result objects being sent, by the node whose sender holds them (a live claim).
    pub sending_by_node: BTreeMap<String, i64>,
    /// Associations open now, by the node serving them.
    pub receiving_by_node: BTreeMap<String, i64>,
    pub associations_logged: i64,
    pub associations_rejected: i64,
    /// Bytes of received instances (current versions).
    pub instance_bytes: i64,
    pub recent_studies: Vec<StudySummary>,
}

/// One study on the status page: its latest analysed series' job.
#[derive(Debug, Clone, Serialize, FromRow)]
pub struct StudySummary {
    pub study_uid: String,
    pub patient_id: String,
    pub accession_number: Option<String>,
    pub last_received_at: i64,
    pub series_uid: Option<String>,
    /// Latest job state of the study ('queued', 'running', 'done', 'failed'), or 'receiving'.
    pub state: String,
    pub findings: Option<i64>,
    pub error_code: Option<String>,
    pub error: Option<String>,
    /// Stage durations of that job, ms (JSON text in the index).
    #[serde(serialize_with = "as_json")]
    pub timings: Option<String>,
    /// Outbox rows of the study sent / failed / waiting.
    pub sent: i64,
    pub send_failed: i64,
    pub send_pending: i64,
}

/// Everything the index knows about one study.
#[derive(Debug, Clone, Serialize)]
pub struct StudyHistory {
    pub study_uid: String,
    pub patient_id: String,
    pub accession_number: Option<String>,
    pub study_date: Option<String>,
    pub series: Vec<SeriesRow>,
    pub jobs: Vec<JobRow>,
    pub results: Vec<ResultRow>,
    pub sends: Vec<SendRow>,
}

#[derive(Debug, Clone, Serialize, FromRow)]
pub struct SeriesRow {
    pub series_uid: String,
    pub modality: Option<String>,
    pub series_number: Option<i64>,
    pub source_ae: String,
    pub instance_count: i64,
    pub state: String,
    pub first_received_at: i64,
    pub last_received_at: i64,
    pub refusal_code: Option<String>,
    pub refusal: Option<String>,
}

#[derive(Debug, Clone, Serialize, FromRow)]
pub struct JobRow {
    pub id: i64,
    pub series_uid: String,
    pub state: String,
    pub instance_count: i64,
    pub attempts: i64,
    pub created_at: i64,
    pub started_at: Option<i64>,
    pub finished_at: Option<i64>,
    pub candidates: Option<i64>,
    pub findings: Option<i64>,
    pub error_code: Option<String>,
    pub error: Option<String>,
    #[serde(serialize_with = "as_json")]
    pub timings: Option<String>,
    /// The node holding the job while it runs.
    pub claimed_by: Option<String>,
}

#[derive(Debug, Clone, Serialize, FromRow)]
pub struct ResultRow {
    pub sop_instance_uid: String,
    pub series_uid: String,
    pub kind: String,
    pub job: i64,
    pub created_at: i64,
}

#[derive(Debug, Clone, Serialize, FromRow)]
pub struct SendRow {
    pub id: i64,
    pub sop_instance_uid: String,
    pub sop_class_uid: String,
    pub dest_ae: Option<String>,
    pub dest_host: Option<String>,
    pub dest_port: Option<i64>,
    pub state: String,
    pub attempts: i64,
    pub last_status: Option<i64>,
    pub last_error: Option<String>,
    pub created_at: i64,
    pub sent_at: Option<i64>,
    #[sqlx(skip)]
    pub history: Vec<AttemptRow>,
}

#[derive(Debug, Clone, Serialize, FromRow)]
pub struct AttemptRow {
    pub at: i64,
    pub duration_ms: i64,
    pub status: Option<i64>,
    pub outcome: String,
    pub error: Option<String>,
}

/// Writes a JSON text column as JSON (not as a string).
fn as_json<S: serde::Serializer>(text: &Option<String>, s: S) -> Result<S::Ok, S::Error> {
    let value: Option<serde_json::Value> =
        text.as_deref().and_then(|t| serde_json::from_str(t).ok());
    serde::Serialize::serialize(&value, s)
}

impl Overview {
    /// Jobs in `state`.
    pub fn jobs(&self, state: JobState) -> i64 {
        self.jobs_by_state.get(&state).copied().unwrap_or(0)
    }

    /// Outbox rows in `state`.
    pub fn outbox(&self, state: OutboxState) -> i64 {
        self.outbox_by_state.get(&state).copied().unwrap_or(0)
    }
}

impl Index {
    /// Counts and the `recent` most recently received studies.
    pub async fn overview(&self, recent: i64) -> DbResult<Overview> {
        on_pool!(self.pool(), pool => {
            let count = |sql: &'static str| async move {
                sqlx::query_scalar::<_, i64>(sql).fetch_one(pool).await
            };
            let jobs_by_state: BTreeMap<JobState, i64> =
                sqlx::query_as::<_, (JobState, i64)>("SELECT state, COUNT(*) FROM jobs GROUP BY state")
                    .fetch_all(pool)
                    .await?
                    .into_iter()
                    .collect();
            let outbox_by_state: BTreeMap<OutboxState, i64> = sqlx::query_as::<_, (OutboxState, i64)>(
                "SELECT state, COUNT(*) FROM outbox GROUP BY state",
            )
            .fetch_all(pool)
            .await?
            .into_iter()
            .collect();
            let running_by_node: BTreeMap<String, i64> = sqlx::query_as::<_, (String, i64)>(
                "SELECT claimed_by, COUNT(*) FROM jobs
                 WHERE state = $1 AND claimed_by IS NOT NULL GROUP BY claimed_by",
            )
            .bind(JobState::Running)
            .fetch_all(pool)
            .await?
            .into_iter()
            .collect();
            let sending_by_node: BTreeMap<String, i64> = sqlx::query_as::<_, (String, i64)>(
                "SELECT claimed_by, COUNT(*) FROM outbox
                 WHERE state = $1 AND claimed_by IS NOT NULL AND lease_until >= $2
                 GROUP BY claimed_by",
            )
            .bind(OutboxState::Pending)
            .bind(now_ms())
            .fetch_all(pool)
            .await?
            .into_iter()
            .collect();
            let receiving_by_node: BTreeMap<String, i64> = sqlx::query_as::<_, (String, i64)>(
                "SELECT node, COUNT(*) FROM associations
                 WHERE end_state = 'open' AND node IS NOT NULL GROUP BY node",
            )
            .fetch_all(pool)
            .await?
            .into_iter()
            .collect();
            let recent_studies = sqlx::query_as(
                "SELECT st.study_uid, p.patient_id, st.accession_number,
                        (SELECT MAX(last_received_at) FROM series s WHERE s.study_uid = st.study_uid)
                            AS last_received_at,
                        j.series_uid,
                        COALESCE(j.state, 'receiving') AS state, j.findings, j.error_code, j.error,
                        j.timings,
                        (SELECT COUNT(*) FROM outbox o WHERE o.study_uid = st.study_uid
                            AND o.state = $1) AS sent,
                        (SELECT COUNT(*) FROM outbox o WHERE o.study_uid = st.study_uid
                            AND o.state = $2) AS send_failed,
                        (SELECT COUNT(*) FROM outbox o WHERE o.study_uid = st.study_uid
                            AND o.state = $3) AS send_pending
                 FROM studies st
                 JOIN patients p ON p.id = st.patient
                 LEFT JOIN jobs j ON j.id = (
                     SELECT jj.id FROM jobs jj JOIN series ss ON ss.series_uid = jj.series_uid
                     WHERE ss.study_uid = st.study_uid ORDER BY jj.id DESC LIMIT 1)
                 ORDER BY last_received_at DESC LIMIT $4",
            )
            .bind(OutboxState::Sent)
            .bind(OutboxState::Failed)
            .bind(OutboxState::Pending)
            .bind(recent)
            .fetch_all(pool)
            .await?;
            Ok(Overview {
                instances: count("SELECT COUNT(*) FROM instances").await?,
                studies: count("SELECT COUNT(*) FROM studies").await?,
                queue_depth: jobs_by_state.get(&JobState::Queued).copied().unwrap_or(0),
                jobs_by_state,
                outbox_by_state,
                running_by_node,
                sending_by_node,
                receiving_by_node,
                associations_logged: count("SELECT COUNT(*) FROM associations").await?,
                associations_rejected: count("SELECT COUNT(*) FROM rejected_associations").await?,
                instance_bytes: count("SELECT CAST(COALESCE(SUM(size_bytes), 0) AS BIGINT) FROM instances").await?,
                recent_studies,
            })
        })
    }

    /// The whole history of a study, `None` when the index does not know it.
    pub async fn study_history(&self, study_uid: &str) -> DbResult<Option<StudyHistory>> {
        on_pool!(self.pool(), pool => {
            let head: Option<(String, Option<String>, Option<String>)> = sqlx::query_as(
                "SELECT p.patient_id, st.accession_number, st.study_date
                 FROM studies st JOIN patients p ON p.id = st.patient WHERE st.study_uid = $1",
            )
            .bind(study_uid)
            .fetch_optional(pool)
            .await?;
            let Some((patient_id, accession_number, study_date)) = head else {
                return Ok(None);
            };
            let series = sqlx::query_as(
                "SELECT series_uid, modality, series_number, source_ae, instance_count, state,
                        first_received_at, last_received_at, refusal_code, refusal
                 FROM series WHERE study_uid = $1 ORDER BY first_received_at",
            )
            .bind(study_uid)
            .fetch_all(pool)
            .await?;
            let jobs = sqlx::query_as(
                "SELECT j.id, j.series_uid, j.state, j.instance_count, j.attempts, j.created_at,
                        j.started_at, j.finished_at, j.candidates, j.findings, j.error_code, j.error,
                        j.timings, j.claimed_by
                 FROM jobs j JOIN series s ON s.series_uid = j.series_uid
                 WHERE s.study_uid = $1 ORDER BY j.id",
            )
            .bind(study_uid)
            .fetch_all(pool)
            .await?;
            let results = sqlx::query_as(
                "SELECT sop_instance_uid, series_uid, kind, job, created_at
                 FROM results WHERE study_uid = $1 ORDER BY series_uid, kind",
            )
            .bind(study_uid)
            .fetch_all(pool)
            .await?;
            let mut sends: Vec<SendRow> = sqlx::query_as(
                "SELECT id, sop_instance_uid, sop_class_uid, dest_ae, dest_host, dest_port, state,
                        attempts, last_status, last_error, created_at, sent_at
                 FROM outbox WHERE study_uid = $1 ORDER BY id",
            )
            .bind(study_uid)
            .fetch_all(pool)
            .await?;
            for send in &mut sends {
                send.history = sqlx::query_as(
                    "SELECT at, duration_ms, status, outcome, error FROM send_attempts
                     WHERE outbox = $1 ORDER BY id",
                )
                .bind(send.id)
                .fetch_all(pool)
                .await?;
            }
            Ok(Some(StudyHistory {
                study_uid: study_uid.to_owned(),
                patient_id,
                accession_number,
                study_date,
                series,
                jobs,
                results,
                sends,
            }))
        })
    }
}
