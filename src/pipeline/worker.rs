//! The worker: takes queued jobs one at a time and runs each end to end: the series' files ->
//! analysis (volume, network, findings) -> SEG + SR under `storage/results/` -> outbox. Each
//! stage's duration and any failure are recorded against the job; a series the volume stage
//! refuses is also marked on the series with its reason.

use crate::config::Config;
use crate::inference::{AnalyzeError, Analyzer};
use crate::metrics::{JobOutcome, Metrics, Stage};
use crate::results::source::SourceStudy;
use crate::results::{self, Equipment};
use crate::store::db::Index;
use crate::store::work::{ClaimedJob, JobSuccess, NewResult, ResultKind};
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
    pub storage_root: PathBuf,
    pub analyzer: Arc<Analyzer>,
    pub config: Arc<Config>,
    pub equipment: Equipment,
    /// Told when results are queued for delivery.
    pub outbox: Arc<Notify>,
    /// The node's metrics: jobs by outcome, stage durations.
    pub metrics: Arc<Metrics>,
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
    /// is queued again at the next start.
    pub async fn run(self, mut stopped: watch::Receiver<bool>) {
        loop {
            if *stopped.borrow() {
                return;
            }
            let job = match self.index.claim_next_job().await {
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
                _ = stopped.changed() => {
                    info!(job = job.id, "shutdown during a job: it is queued again at the next start");
                    return;
                }
            }
        }
    }

    async fn run_job(&self, job: &ClaimedJob) {
        info!(job = job.id, study = %job.study_uid, series = %job.series_uid, "analysis started");
        let started = Instant::now();
        match self.analyse(job).await {
            Ok(reported) => {
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
                if let Err(e) = self
                    .index
                    .fail_job(job.id, failure.code, &failure.message)
                    .await
                {
                    error!(job = job.id, error = %e, "cannot record the job failure");
                }
            }
        }
    }

    /// The job's stages; returns the number of reported findings.
    async fn analyse(&self, job: &ClaimedJob) -> Result<usize, JobFailure> {
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
        let analyzer = Arc::clone(&self.analyzer);
        let policy = self.config.results;
        let equipment = self.equipment.clone();
        let out_dir = self
            .storage_root
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
            let previous = results::read_summary(&out_dir);
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
            .map_err(|e| failure("database", e.to_string()))?;
        self.outbox.notify_one();
        Ok(summary.findings.len())
    }
}

/// Where a series' results live, relative to the storage directory.
pub fn results_dir(study_uid: &str, series_uid: &str) -> PathBuf {
    Path::new("results").join(study_uid).join(series_uid)
}
