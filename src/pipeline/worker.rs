//! The worker: takes queued jobs one at a time and runs each end to end: the series' files ->
//! analysis (volume, network, findings) -> SEG + SR under `results/` of the node's storage
//! area -> outbox. Each
//! stage's duration and any failure are recorded against the job; a series the volume stage
//! refuses is also marked on the series with its reason.

use crate::config::Config;
use crate::inference::{AnalyzeError, Analyzer};
use crate::metrics::{JobOutcome, Metrics, Stage};
use crate::results::source::SourceStudy;
use crate::results::{self, Equipment};
use crate::store::db::Index;
use crate::store::work::{Claimant, ClaimedJob, JobSuccess, NewResult, ResultKind};
use serde::Serialize;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::{Notify, watch};
use tracing::{error, info, warn};

/// How often an idle worker looks for a queued job.
const IDLE_POLL: Duration = Duration::from_millis(500);

/// What a job needs besides its row.
pub struct Worker {
    pub index: Index,
    /// The storage directory (index paths are relative to it).
    pub storage_root: PathBuf,
    /// This node's area of it, where its results are written (relative to `storage_root`).
    pub area: PathBuf,
    pub analyzer: Arc<Analyzer>,
    /// Which findings are reported: the configured threshold or the model's operating point.
    pub policy: results::ReportPolicy,
    pub config: Arc<Config>,
    pub equipment: Equipment,
    /// Told when results are queued for delivery.
    pub outbox: Arc<Notify>,
    /// The node's metrics: jobs by outcome, stage durations.
    pub metrics: Arc<Metrics>,
    /// This node, as the holder of the jobs it claims.
    pub claimant: Claimant,
    /// Claims of a job before one whose lease ran out fails it for good.
    pub max_attempts: i64,
}

/// How an analysis that ran to its end was recorded.
enum Finished {
    /// Results recorded and queued for delivery; the number of reported findings.
    Recorded(usize),
    /// Nothing recorded: the job's lease ran out meanwhile and it is another node's now.
    LeaseLost,
}

/// Why a job failed: a stable code and a message for operators.
struct JobFailure {
    code: &'static str,
    message: String,
    refusal: bool,
}

/// Stage durations recorded with a job, ms.
#[derive(Serialize)]
struct JobTimings {
    #[serde(flatten)]
    analysis: crate::inference::Timings,
    results: f64,
}

impl Worker {
    /// Runs jobs until `stopped` turns true. A job still running then stays marked running and
    /// is queued again at this node's next start (or by another node once its lease runs out).
    pub async fn run(self, mut stopped: watch::Receiver<bool>) {
        let mut last_sweep: Option<Instant> = None;
        loop {
            if *stopped.borrow() {
                return;
            }
            self.reclaim_expired(&mut last_sweep).await;
            let job = match self.index.claim_next_job(&self.claimant).await {
                Ok(Some(job)) => job,
                Ok(None) => {
                    tokio::select! {
                        _ = tokio::time::sleep(IDLE_POLL) => continue,
                        _ = stopped.changed() => return,
                    }
                }
                Err(e) => {
                    warn!(error = %e, "cannot claim a job");
                    tokio::select! {
                        _ = tokio::time::sleep(IDLE_POLL) => continue,
                        _ = stopped.changed() => return,
                    }
                }
            };
            tokio::select! {
                _ = self.run_job(&job) => {}
                _ = self.hold_lease(&job) => {}
                _ = stopped.changed() => {
                    info!(job = job.id, "shutdown during a job: it is queued again at the next start");
                    return;
                }
            }
        }
    }

    /// Renews the job's lease a few times per lease period; returns if the job is lost (its
    /// lease ran out, e.g. the database was unreachable), which abandons the analysis.
    async fn hold_lease(&self, job: &ClaimedJob) {
        let mut ticker = tokio::time::interval(self.claimant.lease / 3);
        ticker.tick().await;
        loop {
            ticker.tick().await;
            match self.index.renew_lease(job, &self.claimant).await {
                Ok(true) => {}
                Ok(false) => return lease_lost(job),
                Err(e) => warn!(job = job.id, error = %e, "cannot renew the job's lease"),
            }
        }
    }

    /// Queues again (or fails for good) the jobs of nodes that stopped renewing their leases;
    /// at most a few times per lease period.
    async fn reclaim_expired(&self, last_sweep: &mut Option<Instant>) {
        if last_sweep.is_some_and(|at| at.elapsed() < self.claimant.lease / 4) {
            return;
        }
        *last_sweep = Some(Instant::now());
        match self.index.reclaim_expired_jobs(self.max_attempts).await {
            Ok((0, 0)) => {}
            Ok((queued, failed)) => warn!(
                queued,
                failed,
                "jobs whose node stopped renewing its lease: queued again, or failed after the last attempt"
            ),
            Err(e) => warn!(error = %e, "cannot reclaim jobs with expired leases"),
        }
    }

    async fn run_job(&self, job: &ClaimedJob) {
        info!(job = job.id, study = %job.study_uid, series = %job.series_uid, "analysis started");
        let started = Instant::now();
        match self.analyse(job).await {
            Ok(Finished::LeaseLost) => lease_lost(job),
            Ok(Finished::Recorded(reported)) => {
                self.metrics.job(JobOutcome::Done);
                info!(
                    job = job.id,
                    study = %job.study_uid,
                    series = %job.series_uid,
                    findings = reported,
                    seconds = format!("{:.1}", started.elapsed().as_secs_f64()),
                    "analysis done; results queued"
                )
            }
            Err(failure) => {
                self.metrics.job(JobOutcome::Failed);
                warn!(job = job.id, study = %job.study_uid, series = %job.series_uid, code = failure.code, reason = ?failure.message, "analysis failed");
                if failure.refusal
                    && let Err(e) = self
                        .index
                        .record_series_refusal(&job.series_uid, failure.code, &failure.message)
                        .await
                {
                    error!(job = job.id, error = %e, "cannot record the series refusal");
                }
                match self
                    .index
                    .fail_job(job, failure.code, &failure.message)
                    .await
                {
                    Ok(true) => {}
                    Ok(false) => lease_lost(job),
                    Err(e) => error!(job = job.id, error = %e, "cannot record the job failure"),
                }
            }
        }
    }

    /// The job's stages; how their results were recorded (with the number of reported findings),
    /// or why the job failed.
    async fn analyse(&self, job: &ClaimedJob) -> Result<Finished, JobFailure> {
        let failure = |code: &'static str, message: String| JobFailure {
            code,
            message,
            refusal: false,
        };
        let files: Vec<PathBuf> = self
            .index
            .series_files(&job.series_uid)
            .await
            .map_err(|e| failure("database", e.to_string()))?
            .into_iter()
            .map(|relative| self.storage_root.join(relative))
            .collect();
        // The summary this analysis revises: where the latest SR was written, by whichever
        // node analysed the series before.
        let previous_dir = self
            .index
            .latest_sr_path(&job.series_uid)
            .await
            .map_err(|e| failure("database", e.to_string()))?
            .and_then(|sr| Some(self.storage_root.join(sr).parent()?.to_owned()));
        let analyzer = Arc::clone(&self.analyzer);
        let policy = self.policy;
        let equipment = self.equipment.clone();
        let out_dir = self
            .storage_root
            .join(&self.area)
            .join(results_dir(&job.study_uid, &job.series_uid));
        let blocking = tokio::task::spawn_blocking(move || {
            let analysis = analyzer.analyze(&files).map_err(|e| JobFailure {
                code: e.code(),
                refusal: matches!(e, AnalyzeError::Series(_) | AnalyzeError::NoLungs),
                message: e.to_string(),
            })?;
            let t = Instant::now();
            let first = files
                .first()
                .ok_or_else(|| failure("no_files", "the series has no files".into()))?;
            let source = SourceStudy::read(first, &analysis.volume.series)
                .map_err(|e| failure("source", e.to_string()))?;
            let previous = results::read_summary(previous_dir.as_deref().unwrap_or(&out_dir));
            let objects =
                results::build(&analysis, &source, &policy, &equipment, previous.as_ref());
            let written = results::write(&objects, &out_dir)
                .map_err(|e| failure("results", format!("cannot write the results: {e}")))?;
            let timings = JobTimings {
                analysis: analysis.report.timings_ms,
                results: t.elapsed().as_secs_f64() * 1000.0,
            };
            Ok::<_, JobFailure>((
                objects.summary,
                written,
                timings,
                analysis.report.findings.len(),
            ))
        });
        let (summary, written, timings, candidates) = blocking
            .await
            .map_err(|e| failure("internal", format!("the analysis stopped: {e}")))??;

        let relative = |path: &Path| {
            path.strip_prefix(&self.storage_root)
                .unwrap_or(path)
                .to_string_lossy()
                .into_owned()
        };
        let mut objects = Vec::new();
        if let (Some(seg), Some(path)) = (&summary.seg, &written.seg) {
            objects.push(NewResult {
                sop_instance_uid: seg.sop_instance_uid.clone(),
                sop_class_uid: seg.sop_class_uid.clone(),
                kind: ResultKind::Seg,
                path: relative(path),
            });
        }
        objects.push(NewResult {
            sop_instance_uid: summary.sr.sop_instance_uid.clone(),
            sop_class_uid: summary.sr.sop_class_uid.clone(),
            kind: ResultKind::Sr,
            path: relative(&written.sr),
        });
        // Serialised once: the job row keeps it, the stage histograms read it.
        let timings = serde_json::to_value(&timings).unwrap_or_default();
        if let Some(stages) = timings.as_object() {
            for (stage, ms) in stages {
                if let (Some(stage), Some(ms)) = (Stage::from_name(stage), ms.as_f64()) {
                    self.metrics
                        .observe_stage(stage, Duration::from_secs_f64(ms.max(0.0) / 1000.0));
                }
            }
        }
        let timings_json = timings.to_string();
        let destination = self.config.destination(&job.source_ae);
        if destination.is_none() {
            warn!(job = job.id, calling_ae = %job.source_ae, "no destination configured for this calling AE: results are kept, not sent");
        }
        self.index
            .finish_job(
                job,
                &JobSuccess {
                    timings_json: &timings_json,
                    candidates,
                    findings: summary.findings.len(),
                    results: &objects,
                },
                destination.as_ref(),
            )
            .await
            .map_err(|e| failure("database", e.to_string()))
            .map(|recorded| {
                if recorded {
                    self.outbox.notify_one();
                    Finished::Recorded(summary.findings.len())
                } else {
                    Finished::LeaseLost
                }
            })
    }
}

/// Logs a job this worker no longer holds.
fn lease_lost(job: &ClaimedJob) {
    warn!(
        job = job.id,
        series = %job.series_uid,
        "the job's lease ran out and it was queued again: this analysis is abandoned, nothing recorded"
    );
}

/// Where a series' results live, relative to the storage area of the node that analysed it.
pub fn results_dir(study_uid: &str, series_uid: &str) -> PathBuf {
    Path::new("results").join(study_uid).join(series_uid)
}
