//! The node as an object. [`start`] assembles it from a configuration (storage lock, store,
//! index, recovery, DICOM listeners, series completion, worker, outbox sender, status endpoint,
//! checkpoints) and returns [`Running`], with the addresses it bound (port 0 picks free ones).
//! Its role (`[node] role`) chooses the parts: a receiver listens, stores, indexes and queues
//! complete series; a worker claims jobs, analyses and delivers; `all` (the default) does both.
//! [`Running::shutdown`] stops it; [`serve`] runs one until a future completes (SIGINT or
//! SIGTERM for `jnsc serve`). Every task is supervised (`Supervisor`): one that panics, or ends
//! before it was asked to stop, is logged, marks the node not ready (`/ready`), and stops the
//! node with an error, so that `jnsc serve` exits non-zero and systemd restarts it. Also the
//! node's two commands: `jnsc serve` (`serve_command`) and `jnsc resend` (`resend`).

use crate::config::Config;
use crate::inference::Analyzer;
use crate::inference::command::{AnalyzerArgs, ModelArgs};
use crate::jnsc::model_file::ModelSource;
use crate::metrics::Metrics;
use crate::net::send::SendSettings;
use crate::net::server;
use crate::pipeline::completion;
use crate::pipeline::sender::Sender;
use crate::pipeline::worker::Worker;
use crate::results::{Equipment, ReportPolicy};
use crate::status::TaskFailures;
use crate::store::db::Index;
use crate::store::files::FileStore;
use crate::store::work::Claimant;
use crate::store::{InstanceStore, recovery};
use anyhow::Context;
use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use tokio::net::TcpListener;
use tokio::sync::{Notify, watch};
use tokio::task::{Id, JoinSet};
use tracing::{error, info, warn};

/// Starts a node, prints where it listens on stdout (one line, stable for scripts; a TLS
/// listener on a second line), and runs it until `shutdown` completes or a task fails.
pub async fn serve(config: Config, shutdown: impl Future<Output = ()>) -> anyhow::Result<()> {
    let running = start(config).await?;
    // A closed stdout must not stop the node, hence no println!.
    {
        use std::io::Write;
        let _ = match running.dicom_address {
            Some(dicom) => writeln!(
                std::io::stdout(),
                "jnsc: DICOM SCP listening on {dicom} as AE {}; status on http://{}",
                running.ae_title,
                running.status_address
            ),
            None => writeln!(
                std::io::stdout(),
                "jnsc: worker (no DICOM listener); status on http://{}",
                running.status_address
            ),
        };
        if let Some(tls) = running.dicom_tls_address {
            let _ = writeln!(std::io::stdout(), "jnsc: DICOM TLS SCP listening on {tls}");
        }
    }
    running.run_until(shutdown).await
}

/// A started node: where it listens, and its supervised tasks.
pub struct Running {
    pub ae_title: String,
    /// The DICOM listener's address (none on a worker).
    pub dicom_address: Option<SocketAddr>,
    /// The TLS listener's address, when `dicom.tls.listen` is set.
    pub dicom_tls_address: Option<SocketAddr>,
    pub status_address: SocketAddr,
    stop: watch::Sender<bool>,
    tasks: Supervisor,
    /// The instance store (receivers).
    store: Option<Arc<InstanceStore>>,
    index: Index,
    /// Held until the node has stopped.
    _lock: crate::store::files::StorageLock,
}

/// Starts every part of a node its role asks for; returns once it listens.
pub async fn start(config: Config) -> anyhow::Result<Running> {
    let config = Arc::new(config);
    let node = &config.node;
    let area = config.storage_area();
    let area_dir = config.storage.dir.join(&area);
    // First of all: a second node in the same area must not touch it (recovery would run).
    let _lock = crate::store::files::lock_storage(&area_dir).with_context(|| {
        format!(
            "cannot lock the storage area {} (keys storage.dir, node.name)",
            area_dir.display()
        )
    })?;
    let files = FileStore::open(&config.storage.dir, &area).with_context(|| {
        format!(
            "cannot open the storage directory {} (key storage.dir)",
            config.storage.dir.display()
        )
    })?;
    let db = config.db();
    info!(
        node = %node.name,
        role = %node.role,
        storage = %area_dir.display(),
        database = %db,
        "storage"
    );
    let index = Index::connect(&db)
        .await
        .with_context(|| format!("cannot open the database {db} (key storage.db)"))?;
    take_back_interrupted_work(&config, &index).await?;
    let analyzer = match (node.role.works(), config.pipeline.analyze) {
        (true, true) => Some(load_analyzer(&config)?),
        (true, false) => {
            warn!(
                "analysis is off (pipeline.analyze = false): series are received and queued only"
            );
            None
        }
        (false, _) => None,
    };
    let model_status = analyzer
        .as_ref()
        .map(|(a, policy)| crate::status::ModelStatus {
            name: a.model_info().name.clone(),
            version: a.model_info().version.clone(),
            device: config.model.device.to_string(),
            min_p_nodule: policy.min_p_nodule,
        });
    let storage_root = files.root().to_owned();
    // A receiver's store (recovered before anything is accepted) and its DICOM listeners.
    let receiving = if node.role.receives() {
        let store = Arc::new(
            InstanceStore::new(files, index.clone())
                .with_disk_floor(config.storage.min_free_mb.saturating_mul(1024 * 1024)),
        );
        recovery::recover(&store)
            .await
            .context("cannot reconcile the index with the stored files")?;
        Some((store, Listeners::bind(&config).await?))
    } else {
        None
    };
    let status_listener = TcpListener::bind(config.status.listen)
        .await
        .with_context(|| {
            format!(
                "cannot listen on {} (key status.listen)",
                config.status.listen
            )
        })?;
    let status_address = status_listener.local_addr()?;
    info!(address = %status_address, "status endpoint listening");
    let (stop, stopped) = watch::channel(false);
    let metrics = Arc::new(Metrics::new());
    let mut tasks = Supervisor::default();
    tasks.spawn(
        "status endpoint",
        crate::status::serve(
            status_listener,
            Arc::new(crate::status::StatusState {
                index: index.clone(),
                config: Arc::clone(&config),
                started: std::time::Instant::now(),
                model: model_status,
                storage_area: area_dir,
                metrics: Arc::clone(&metrics),
                failed_tasks: tasks.failures(),
                unindexed: receiving.as_ref().map(|(store, _)| store.backlog()),
            }),
            stopped.clone(),
        ),
    );
    let claimant = Claimant {
        node: node.name.clone(),
        lease: std::time::Duration::from_secs(config.pipeline.lease_secs.max(1)),
    };
    if node.role.works() {
        let outbox = Arc::new(Notify::new());
        if let Some((analyzer, policy)) = analyzer {
            tasks.spawn(
                "analysis worker",
                Worker {
                    index: index.clone(),
                    storage_root: storage_root.clone(),
                    area: area.clone(),
                    analyzer: Arc::new(analyzer),
                    policy,
                    config: Arc::clone(&config),
                    equipment: Equipment::new(&config.dicom.ae_title),
                    outbox: Arc::clone(&outbox),
                    metrics: Arc::clone(&metrics),
                    claimant: claimant.clone(),
                    max_attempts: i64::from(config.pipeline.max_attempts.max(1)),
                }
                .run(stopped.clone()),
            );
        }
        tasks.spawn(
            "outbox sender",
            Sender {
                index: index.clone(),
                storage_root,
                config: config.sender.clone(),
                settings: send_settings(&config)?,
                metrics: Arc::clone(&metrics),
                claimant,
            }
            .run(outbox, stopped.clone()),
        );
    }
    let store = receiving.as_ref().map(|(store, _)| Arc::clone(store));
    let (mut dicom_address, mut dicom_tls_address) = (None, None);
    if let Some((store, listeners)) = receiving {
        tasks.spawn(
            "series completion",
            completion::run(index.clone(), config.stable_age(), stopped.clone()),
        );
        tasks.spawn(
            "index checkpoints",
            checkpoint_periodically(Arc::clone(&store), stopped.clone()),
        );
        if let Some((listener, tls_server)) = listeners.tls {
            dicom_tls_address = Some(listener.local_addr()?);
            tasks.spawn(
                "DICOM TLS listener",
                server::run(
                    listener,
                    Some(tls_server),
                    Arc::clone(&config),
                    Arc::clone(&store),
                    Arc::clone(&metrics),
                    stopped.clone(),
                ),
            );
        }
        dicom_address = Some(listeners.plain.local_addr()?);
        tasks.spawn(
            "DICOM listener",
            server::run(
                listeners.plain,
                None,
                Arc::clone(&config),
                Arc::clone(&store),
                metrics,
                stopped,
            ),
        );
    }
    Ok(Running {
        ae_title: config.dicom.ae_title.clone(),
        dicom_address,
        dicom_tls_address,
        status_address,
        stop,
        tasks,
        store,
        index,
        _lock,
    })
}

/// What this node left unfinished when it last stopped, taken back at its start: its dangling
/// associations are closed in the log (receivers), its running jobs queued again and its
/// outbox claims freed (workers). Other nodes' work stays theirs until their leases run out.
async fn take_back_interrupted_work(config: &Config, index: &Index) -> anyhow::Result<()> {
    let node = &config.node;
    if node.role.receives() {
        let dangling = index.close_dangling_associations(&node.name).await?;
        if dangling > 0 {
            warn!(
                dangling,
                "associations left open by the previous run were closed in the log"
            );
        }
    }
    if node.role.works() {
        let requeued = index.requeue_interrupted_jobs(&node.name).await?;
        if requeued > 0 {
            warn!(
                requeued,
                "jobs interrupted by the previous run were queued again"
            );
        }
        let released = index.release_outbox_claims(&node.name).await?;
        if released > 0 {
            warn!(
                released,
                "deliveries interrupted by the previous run are due again"
            );
        }
    }
    Ok(())
}

/// A receiver's DICOM listeners: plain, and TLS when `dicom.tls.listen` is set.
struct Listeners {
    plain: TcpListener,
    tls: Option<(TcpListener, Arc<rustls::ServerConfig>)>,
}

impl Listeners {
    async fn bind(config: &Config) -> anyhow::Result<Self> {
        let plain = TcpListener::bind(config.dicom.listen)
            .await
            .with_context(|| {
                format!(
                    "cannot listen on {} (key dicom.listen)",
                    config.dicom.listen
                )
            })?;
        info!(address = %plain.local_addr()?, ae_title = %config.dicom.ae_title, "DICOM SCP listening");
        let tls_server = crate::net::tls::server_config(&config.dicom.tls)
            .context("cannot set up the TLS listener (dicom.tls)")?;
        let tls = match (tls_server, config.dicom.tls.listen) {
            (Some(server), Some(listen)) => {
                let listener = TcpListener::bind(listen)
                    .await
                    .with_context(|| format!("cannot listen on {listen} (key dicom.tls.listen)"))?;
                info!(address = %listener.local_addr()?, "DICOM TLS SCP listening");
                Some((listener, server))
            }
            _ => None,
        };
        Ok(Self { plain, tls })
    }
}

/// How the sender associates with destinations.
fn send_settings(config: &Config) -> anyhow::Result<SendSettings> {
    Ok(SendSettings {
        calling_ae_title: config.dicom.ae_title.clone(),
        connect_timeout: std::time::Duration::from_secs(config.sender.connect_timeout_secs),
        response_timeout: std::time::Duration::from_secs(config.sender.response_timeout_secs),
        max_pdu: config.dicom.max_pdu,
        tls: crate::net::tls::ClientTls::from_config(config)
            .context("cannot set up TLS for deliveries (dicom.tls, dicom.peers)")?,
    })
}

impl Running {
    /// Runs until `shutdown` completes or a task fails, then stops the node.
    pub async fn run_until(mut self, shutdown: impl Future<Output = ()>) -> anyhow::Result<()> {
        tokio::select! {
            _ = shutdown => info!("shutdown requested"),
            failure = self.tasks.first_failure() => {
                error!(failure = %failure, "a task of the node failed; stopping");
            }
        }
        self.shutdown().await
    }

    /// Asks every task to stop and waits for them (open associations get a grace period);
    /// then checkpoints and closes the index. An error names every task that failed.
    pub async fn shutdown(mut self) -> anyhow::Result<()> {
        let _ = self.stop.send(true);
        self.tasks.join_all().await;
        if let Some(store) = &self.store
            && let Err(e) = store.checkpoint().await
        {
            warn!(error = %e, "final checkpoint failed; the next start re-checks recent files");
        }
        self.index.close().await;
        let failures = self
            .tasks
            .failures
            .lock()
            .map(|f| f.clone())
            .unwrap_or_default();
        if failures.is_empty() {
            info!("stopped");
            Ok(())
        } else {
            anyhow::bail!("the node stopped after failures: {}", failures.join("; "))
        }
    }
}

/// The node's tasks, by name. A task is expected to run until the node stops: one that
/// returns before, or panics, is a failure.
#[derive(Default)]
struct Supervisor {
    set: JoinSet<()>,
    names: HashMap<Id, &'static str>,
    failures: TaskFailures,
    stopping: bool,
}

impl Supervisor {
    fn spawn(&mut self, name: &'static str, task: impl Future<Output = ()> + Send + 'static) {
        let handle = self.set.spawn(task);
        self.names.insert(handle.id(), name);
    }

    fn failures(&self) -> TaskFailures {
        Arc::clone(&self.failures)
    }

    /// Waits for the first task to end (every one ending before shutdown is a failure); records
    /// and returns what failed. Pends for ever if there are no tasks.
    async fn first_failure(&mut self) -> String {
        match self.set.join_next_with_id().await {
            Some(joined) => self.record(joined),
            None => std::future::pending().await,
        }
    }

    /// Waits for every task (after the stop request).
    async fn join_all(&mut self) {
        self.stopping = true;
        while let Some(joined) = self.set.join_next_with_id().await {
            self.record(joined);
        }
    }

    /// Logs and records a task's end if it is a failure; returns its description.
    fn record(&mut self, joined: Result<(Id, ()), tokio::task::JoinError>) -> String {
        let (id, failure) = match joined {
            Ok((id, ())) if self.stopping => (id, None),
            Ok((id, ())) => (id, Some("ended before the node was stopped".to_owned())),
            Err(e) if e.is_panic() => (e.id(), Some(format!("panicked: {}", panic_text(e)))),
            Err(e) => (e.id(), Some(format!("was cancelled: {e}"))),
        };
        let name = self.names.remove(&id).unwrap_or("a task");
        match failure {
            Some(what) => {
                let text = format!("{name} {what}");
                error!(task = name, failure = %text, "task failed");
                self.failures
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .push(text.clone());
                text
            }
            None => format!("{name} stopped"),
        }
    }
}

/// The message of a panic, where it was a string.
fn panic_text(error: tokio::task::JoinError) -> String {
    let payload = error.into_panic();
    payload
        .downcast_ref::<&str>()
        .map(|s| (*s).to_owned())
        .or_else(|| payload.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "(no message)".to_owned())
}

/// Loads the configured model onto the configured device, with the report policy for it (the
/// configured threshold, else the model's operating point).
fn load_analyzer(config: &Config) -> anyhow::Result<(Analyzer, ReportPolicy)> {
    let model = &config.model;
    let mut analyzer = AnalyzerArgs {
        model: ModelArgs {
            model: model.path.clone(),
            device: model.device,
            precision: model.precision,
            // The model file's own fraction.
            measure_fraction: None,
        },
        tiling: model.tiling,
        batch: 1,
        mirrors: model.mirrors,
        classify_mirrors: model.classify_mirrors,
        classify_mirrors_from: model.classify_mirrors_from,
    }
    .load()
    .context(
        "key model.path, model.device, model.precision, model.tiling, model.mirrors, \
         model.classify_mirrors or model.classify_mirrors_from",
    )?;
    let policy = config.results.policy(&analyzer)?;
    // Only findings that can be reported are classified.
    analyzer.classify_min_p_location = policy.min_p_nodule;
    info!(
        model = %analyzer.model_info().name,
        version = %analyzer.model_info().version,
        device = %config.model.device,
        precision = %config.model.precision,
        source = %ModelSource::from_option(config.model.path.clone()),
        min_p_nodule = policy.min_p_nodule,
        operating_point = if config.results.min_p_nodule.is_some() { "configured" } else { "the model's" },
        setting = %analyzer.setting(),
        "model loaded"
    );
    Ok((analyzer, policy))
}

/// How often the index is checkpointed (bounds the work of recovery after a power cut).
const CHECKPOINT_PERIOD: std::time::Duration = std::time::Duration::from_secs(10);

async fn checkpoint_periodically(store: Arc<InstanceStore>, mut stopped: watch::Receiver<bool>) {
    let mut ticker = tokio::time::interval(CHECKPOINT_PERIOD);
    loop {
        tokio::select! {
            _ = ticker.tick() => {}
            _ = stopped.changed() => return,
        }
        if let Err(e) = store.checkpoint().await {
            warn!(error = %e, "index checkpoint failed");
        }
    }
}

/// SIGINT or SIGTERM.
pub async fn shutdown_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    match signal(SignalKind::terminate()) {
        Ok(mut term) => {
            tokio::select! {
                _ = tokio::signal::ctrl_c() => {}
                _ = term.recv() => {}
            }
        }
        Err(_) => {
            let _ = tokio::signal::ctrl_c().await;
        }
    }
}

/// `jnsc resend`: queues a study's latest results for delivery again (to the destination the
/// configuration now names for the AE that sent it); a running node sends them within seconds.
pub fn resend(study_uid: &str, config_path: Option<&std::path::Path>) -> anyhow::Result<()> {
    let config = Config::load(config_path)?;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let queued = runtime.block_on(async {
        let index = Index::connect(&config.db()).await?;
        let queued = index
            .resend_study(study_uid, |ae| config.destination(ae))
            .await?;
        index.close().await;
        anyhow::Ok(queued)
    })?;
    if queued == 0 {
        anyhow::bail!("no results are recorded for study {study_uid}");
    }
    println!("jnsc: {queued} result objects of study {study_uid} queued for delivery");
    Ok(())
}

/// `jnsc serve`: loads the configuration, logs to stderr, and runs the node until SIGINT or
/// SIGTERM.
pub fn serve_command(config_path: Option<&std::path::Path>) -> anyhow::Result<()> {
    no_error_backtraces();
    let config = Config::load(config_path)?;
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(&config.log.level));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .init();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .thread_name("jnsc")
        .build()?;
    runtime.block_on(serve(config, shutdown_signal()))
}

/// Library errors capture no backtraces unless `RUST_LIB_BACKTRACE` asks for them, whatever
/// `RUST_BACKTRACE` says (panics still print theirs). The DICOM parser ends every command and
/// data set with an end-of-data error that snafu gives a backtrace when either variable is set:
/// with `RUST_BACKTRACE=1` that was 4% of the node's CPU while receiving. Called before any
/// thread starts.
fn no_error_backtraces() {
    if std::env::var_os("RUST_LIB_BACKTRACE").is_none() {
        // SAFETY: called at the start of `serve_command`, before the runtime or any other thread
        // exists, so nothing reads the environment concurrently.
        unsafe { std::env::set_var("RUST_LIB_BACKTRACE", "0") };
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_panicking_task_is_a_named_failure_and_the_others_stop() {
        let (stop, mut stopped) = watch::channel(false);
        let mut tasks = Supervisor::default();
        tasks.spawn("steady", async move {
            let _ = stopped.changed().await;
        });
        tasks.spawn("fragile", async {
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
            panic!("index gone");
        });
        let failure = tasks.first_failure().await;
        assert_eq!(failure, "fragile panicked: index gone");
        let _ = stop.send(true);
        tasks.join_all().await;
        assert_eq!(
            *tasks.failures.lock().unwrap(),
            ["fragile panicked: index gone"]
        );
    }

    #[tokio::test]
    async fn a_task_that_returns_early_is_a_failure_but_not_after_the_stop() {
        let mut tasks = Supervisor::default();
        tasks.spawn("listener", async {});
        assert_eq!(
            tasks.first_failure().await,
            "listener ended before the node was stopped"
        );
        tasks.spawn("sender", async {});
        tasks.join_all().await;
        assert_eq!(
            tasks.failures.lock().unwrap().len(),
            1,
            "the stop was asked for"
        );
    }
}
