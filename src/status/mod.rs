//! The HTTP status endpoint for IT staff, on the node's tokio runtime: `/health` (liveness),
//! `/ready` (database, model, storage, disk space), `/status` (JSON), `/studies/{uid}` (one
//! study's history), `/metrics` (Prometheus) and `/` (the same status as a page for people).
//! With `status.token` set, everything but `/health` needs `Authorization: Bearer <token>`.
//! Patient IDs and UIDs appear; patient names never do.

mod page;

use crate::config::{Config, DbLocation};
use crate::metrics::{self, InstanceOutcome, Metrics};
use crate::store::db::Index;
use crate::store::files::{DiskSpace, disk_space};
use crate::store::overview::Overview;
use crate::store::state::{JobState, OutboxState};
use axum::Router;
use axum::extract::{Path as UrlPath, Request, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{Html, IntoResponse, Json, Response};
use axum::routing::get;
use serde::Serialize;
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Instant;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tracing::warn;

/// Studies listed on the status page and in `/status`.
const RECENT_STUDIES: i64 = 20;

/// The model the worker runs, as reported.
#[derive(Debug, Clone, Serialize)]
pub struct ModelStatus {
    pub name: String,
    pub version: String,
    pub device: String,
    /// The lowest p(nodule) reported (configured, or the model's operating point).
    pub min_p_nodule: f64,
}

/// What the handlers read.
pub struct StatusState {
    pub index: Index,
    pub config: Arc<Config>,
    pub started: Instant,
    /// `None` when analysis is off (`pipeline.analyze = false`) or the node's role is `receiver`.
    pub model: Option<ModelStatus>,
    /// This node's area of the storage directory (all of it on SQLite): its free space, and
    /// where `/ready` checks it can write.
    pub storage_area: PathBuf,
    /// The node's counters and histograms.
    pub metrics: Arc<Metrics>,
    /// Tasks of the node that failed (`node::Supervisor`); any makes the node not ready.
    pub failed_tasks: TaskFailures,
    /// Acknowledged instances whose index rows are being retried (`None` on a node that does
    /// not receive); any makes the node not ready.
    pub unindexed: Option<crate::store::Backlog>,
}

/// What failed among the node's tasks, one line each.
pub type TaskFailures = std::sync::Arc<std::sync::Mutex<Vec<String>>>;

/// `/status`.
#[derive(Debug, Serialize)]
pub struct StatusReport {
    pub version: &'static str,
    /// This node's name (`[node] name`), as it marks the jobs it holds.
    pub node: String,
    /// What it does (`[node] role`).
    pub role: crate::config::NodeRole,
    pub ae_title: String,
    pub model: Option<ModelStatus>,
    pub uptime_seconds: u64,
    pub associations_active: i64,
    pub associations_total: u64,
    pub instances_received: u64,
    /// Acknowledged instances whose index rows failed and are being retried (new instances are
    /// refused while there are any).
    pub instances_awaiting_index: usize,
    pub disk: Option<DiskStatus>,
    #[serde(flatten)]
    pub index: Overview,
}

#[derive(Debug, Serialize)]
pub struct DiskStatus {
    #[serde(flatten)]
    pub space: DiskSpace,
    pub floor_bytes: u64,
}

/// `/ready`.
#[derive(Debug, Serialize)]
struct Readiness {
    ready: bool,
    checks: Vec<Check>,
}

#[derive(Debug, Serialize)]
struct Check {
    name: &'static str,
    ok: bool,
    detail: String,
}

/// Serves until `stopped` turns true.
pub async fn serve(
    listener: TcpListener,
    state: Arc<StatusState>,
    mut stopped: watch::Receiver<bool>,
) {
    let token = state.config.status.token.clone();
    let header_timeout_secs = state.config.status.header_timeout_secs;
    let protected = Router::new()
        .route("/", get(home))
        .route("/ready", get(ready))
        .route("/status", get(status))
        .route("/studies/{uid}", get(study))
        .route("/metrics", get(prometheus))
        .route_layer(middleware::from_fn_with_state(token, require_token));
    let app = Router::new()
        .route("/health", get(|| async { "ok\n" }))
        .merge(protected)
        .with_state(state);
    // hyper directly rather than `axum::serve`, for the header timeout: a client that opens a
    // connection and never finishes its request headers is dropped after `header_timeout`
    // instead of holding a task and a socket for ever.
    let header_timeout = std::time::Duration::from_secs(header_timeout_secs);
    loop {
        let (stream, _) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(e) => {
                    warn!(error = %e, "status endpoint cannot accept a connection");
                    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                    continue;
                }
            },
            _ = stopped.changed() => return,
        };
        let service = hyper_util::service::TowerToHyperService::new(app.clone());
        tokio::spawn(async move {
            let mut http = hyper::server::conn::http1::Builder::new();
            http.timer(hyper_util::rt::TokioTimer::new())
                .header_read_timeout(header_timeout);
            let connection = http.serve_connection(hyper_util::rt::TokioIo::new(stream), service);
            if let Err(e) = connection.await {
                tracing::debug!(error = %e, "status connection ended");
            }
        });
    }
}

/// Rejects requests without the configured bearer token (constant-time comparison).
async fn require_token(
    State(token): State<Option<String>>,
    headers: HeaderMap,
    request: Request,
    next: Next,
) -> Response {
    if let Some(token) = token {
        let given = headers
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
            .unwrap_or("");
        let same = given.len() == token.len()
            && given
                .bytes()
                .zip(token.bytes())
                .fold(0u8, |acc, (a, b)| acc | (a ^ b))
                == 0;
        if !same {
            return (
                StatusCode::UNAUTHORIZED,
                [(header::WWW_AUTHENTICATE, "Bearer")],
                "a bearer token is required\n",
            )
                .into_response();
        }
    }
    next.run(request).await
}

fn internal(e: impl std::fmt::Display) -> Response {
    (
        StatusCode::SERVICE_UNAVAILABLE,
        format!("the index cannot be read: {e}\n"),
    )
        .into_response()
}

/// Builds the `/status` report.
pub async fn report(state: &StatusState) -> Result<StatusReport, sqlx::Error> {
    let index = state.index.overview(RECENT_STUDIES).await?;
    let disk = disk_space(&state.storage_area)
        .ok()
        .map(|space| DiskStatus {
            space,
            floor_bytes: state.config.storage.min_free_mb * 1024 * 1024,
        });
    Ok(StatusReport {
        version: env!("CARGO_PKG_VERSION"),
        node: state.config.node.name.clone(),
        role: state.config.node.role,
        ae_title: state.config.dicom.ae_title.clone(),
        model: state.model.clone(),
        uptime_seconds: state.started.elapsed().as_secs(),
        associations_active: state.metrics.associations_active.get(),
        associations_total: state.metrics.associations_total.get(),
        instances_received: state
            .metrics
            .instances
            .get_or_create(&InstanceOutcome::Stored)
            .get(),
        instances_awaiting_index: state.unindexed.as_ref().map_or(0, |b| b.waiting()),
        disk,
        index,
    })
}

async fn status(State(state): State<Arc<StatusState>>) -> Response {
    match report(&state).await {
        Ok(report) => Json(report).into_response(),
        Err(e) => internal(e),
    }
}

async fn home(State(state): State<Arc<StatusState>>) -> Response {
    match report(&state).await {
        Ok(report) => Html(page::render(&report)).into_response(),
        Err(e) => internal(e),
    }
}

async fn study(State(state): State<Arc<StatusState>>, UrlPath(uid): UrlPath<String>) -> Response {
    match state.index.study_history(&uid).await {
        Ok(Some(history)) => Json(history).into_response(),
        Ok(None) => (StatusCode::NOT_FOUND, "no such study\n").into_response(),
        Err(e) => internal(e),
    }
}

async fn prometheus(State(state): State<Arc<StatusState>>) -> Response {
    let overview = match state.index.overview(0).await {
        Ok(overview) => overview,
        Err(e) => return internal(e),
    };

    let mut extra = vec![
        (
            "jnsc_queue_depth",
            "Jobs waiting for the worker",
            overview.queue_depth as f64,
        ),
        (
            "jnsc_jobs_running",
            "Jobs being analysed",
            overview.jobs(JobState::Running) as f64,
        ),
        (
            "jnsc_outbox_pending",
            "Result objects waiting for delivery",
            overview.outbox(OutboxState::Pending) as f64,
        ),
        (
            "jnsc_outbox_failed",
            "Result objects that failed for good",
            overview.outbox(OutboxState::Failed) as f64,
        ),
        (
            "jnsc_uptime_seconds",
            "Seconds since the node started",
            state.started.elapsed().as_secs_f64(),
        ),
    ];
    if let Ok(space) = disk_space(&state.storage_area) {
        extra.push((
            "jnsc_disk_free_bytes",
            "Free bytes on the storage file system",
            space.free_bytes as f64,
        ));
    }
    let this_node = BTreeMap::from([(state.config.node.name.clone(), 1)]);
    let by_node = [
        (
            "jnsc_node",
            "This node (the one answering), by its name",
            &this_node,
        ),
        (
            "jnsc_jobs_held",
            "Jobs being analysed, by the node holding them (every node on the database)",
            &overview.running_by_node,
        ),
        (
            "jnsc_outbox_held",
            "Result objects being sent, by the node holding them (every node on the database)",
            &overview.sending_by_node,
        ),
        (
            "jnsc_associations_open",
            "Associations open now, by the node serving them (every node on the database)",
            &overview.receiving_by_node,
        ),
    ];
    (
        [(header::CONTENT_TYPE, metrics::CONTENT_TYPE)],
        state.metrics.render(&extra, &by_node),
    )
        .into_response()
}

async fn ready(State(state): State<Arc<StatusState>>) -> Response {
    let mut checks = Vec::new();
    // Database: answers, and (SQLite) its file is writable.
    let db = state.config.db();
    let query = state.index.ping().await;
    let writable = match &db {
        DbLocation::Sqlite(path) => std::fs::metadata(path).map(|m| !m.permissions().readonly()),
        DbLocation::Postgres(_) => Ok(true),
    };
    checks.push(match (query, writable) {
        (Ok(()), Ok(true)) => Check {
            name: "database",
            ok: true,
            detail: db.to_string(),
        },
        (Err(e), _) => Check {
            name: "database",
            ok: false,
            detail: format!("does not answer: {e}"),
        },
        (_, Ok(false)) => Check {
            name: "database",
            ok: false,
            detail: format!("{db} is read-only"),
        },
        (_, Err(e)) => Check {
            name: "database",
            ok: false,
            detail: format!("{db}: {e}"),
        },
    });
    // A receiver analyses nothing, by its role: no model is not a fault there.
    let analyses = state.config.node.role.works();
    checks.push(Check {
        name: "model",
        ok: state.model.is_some() || !state.config.pipeline.analyze || !analyses,
        detail: match &state.model {
            Some(m) => format!("{} {} on {}", m.name, m.version, m.device),
            None if !analyses => format!("none: this node is a {}", state.config.node.role),
            None => "analysis is off".into(),
        },
    });
    // Storage: a file can be created and removed.
    let probe = state.storage_area.join(".ready-probe");
    let storage = std::fs::write(&probe, b"ok").and_then(|_| std::fs::remove_file(&probe));
    let storage_read_only = std::fs::metadata(&state.storage_area)
        .map(|m| m.permissions().readonly())
        .unwrap_or(true);
    checks.push(Check {
        name: "storage",
        ok: storage.is_ok() && !storage_read_only,
        detail: match storage {
            Ok(()) if !storage_read_only => state.storage_area.display().to_string(),
            Ok(()) => format!("{} is read-only", state.storage_area.display()),
            Err(e) => format!("{} is not writable: {e}", state.storage_area.display()),
        },
    });
    let floor = state.config.storage.min_free_mb * 1024 * 1024;
    checks.push(match disk_space(&state.storage_area) {
        Ok(space) => Check {
            name: "disk",
            ok: space.free_bytes >= floor,
            detail: format!(
                "{} MiB free, floor {} MiB",
                space.free_bytes / (1024 * 1024),
                state.config.storage.min_free_mb
            ),
        },
        Err(e) => Check {
            name: "disk",
            ok: false,
            detail: e.to_string(),
        },
    });
    if let Some(backlog) = &state.unindexed {
        let waiting = backlog.waiting();
        checks.push(Check {
            name: "index rows",
            ok: waiting == 0,
            detail: if waiting == 0 {
                "every acknowledged instance indexed".into()
            } else {
                format!(
                    "{waiting} acknowledged instance(s) wait for their index rows: new instances are refused"
                )
            },
        });
    }
    let failed = state
        .failed_tasks
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .clone();
    checks.push(Check {
        name: "tasks",
        ok: failed.is_empty(),
        detail: if failed.is_empty() {
            "every task running".into()
        } else {
            failed.join("; ")
        },
    });
    let ready = checks.iter().all(|c| c.ok);
    let code = if ready {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (code, Json(Readiness { ready, checks })).into_response()
}
