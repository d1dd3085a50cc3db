//! `jnsc serve`: assembles the running node (store, index, DICOM listener, series completion,
//! worker, outbox sender) from a configuration and runs it until SIGINT or SIGTERM.

use crate::config::Config;
use crate::inference::Analyzer;
use crate::inference::tiles::Tiling;
use crate::jnsc::model_file::ModelSource;
use crate::net::send::SendSettings;
use crate::net::server;
use crate::pipeline::worker::Worker;
use crate::pipeline::{completion, sender};
use crate::results::Equipment;
use crate::store::db::Index;
use crate::store::files::FileStore;
use crate::store::{InstanceStore, recovery};
use anyhow::Context;
use std::sync::Arc;
use tokio::net::TcpListener;
use tokio::sync::{Notify, watch};
use tracing::{info, warn};

/// Runs the node until a shutdown signal arrives.
pub async fn serve(config: Config) -> anyhow::Result<()> {
    let config = Arc::new(config);
    // First of all: a second node on the same storage must not touch it (recovery would run).
    let _lock = crate::store::files::lock_storage(&config.storage.dir).with_context(|| {
        format!(
            "cannot lock the storage directory {} (key storage.dir)",
            config.storage.dir.display()
        )
    })?;
    let files = FileStore::open(&config.storage.dir).with_context(|| {
        format!(
            "cannot open the storage directory {} (key storage.dir)",
            config.storage.dir.display()
        )
    })?;
    let db_path = config.db_path();
    info!(storage = %config.storage.dir.display(), database = %db_path.display(), "storage");
    let index = Index::open(&db_path)
        .await
        .with_context(|| format!("cannot open the database {}", db_path.display()))?;
    let dangling = index.close_dangling_associations().await?;
    if dangling > 0 {
        warn!(
            dangling,
            "associations left open by the previous run were closed in the log"
        );
    }
    let requeued = index.requeue_interrupted_jobs().await?;
    if requeued > 0 {
        warn!(
            requeued,
            "jobs interrupted by the previous run were queued again"
        );
    }
    let analyzer = if config.pipeline.analyze {
        Some(load_analyzer(&config)?)
    } else {
        warn!("analysis is off (pipeline.analyze = false): series are received and queued only");
        None
    };
    let model_status = analyzer.as_ref().map(|a| crate::status::ModelStatus {
        name: a.model_info().name.clone(),
        version: a.model_info().version.clone(),
        device: config.model.device.clone(),
    });
    let storage_root = files.root().to_owned();
    let store = Arc::new(
        InstanceStore::new(files, index.clone())
            .with_disk_floor(config.storage.min_free_mb.saturating_mul(1024 * 1024)),
    );
    recovery::recover(&store)
        .await
        .context("cannot reconcile the index with the stored files")?;

    let listener = TcpListener::bind(config.dicom.listen)
        .await
        .with_context(|| {
            format!(
                "cannot listen on {} (key dicom.listen)",
                config.dicom.listen
            )
        })?;
    let address = listener.local_addr()?;
    info!(%address, ae_title = %config.dicom.ae_title, "DICOM SCP listening");
    let tls_server = crate::net::tls::server_config(&config.dicom.tls)
        .context("cannot set up the TLS listener (dicom.tls)")?;
    let tls_listener = match (&tls_server, config.dicom.tls.listen) {
        (Some(_), Some(listen)) => {
            let listener = TcpListener::bind(listen)
                .await
                .with_context(|| format!("cannot listen on {listen} (key dicom.tls.listen)"))?;
            info!(address = %listener.local_addr()?, "DICOM TLS SCP listening");
            Some(listener)
        }
        _ => None,
    };
    let client_tls = crate::net::tls::ClientTls::from_config(&config)
        .context("cannot set up TLS for deliveries (dicom.tls, dicom.peers)")?;
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
    // A stable line on stdout for scripts and tests that start the node on port 0 (a closed
    // stdout must not stop the node, hence no println!).
    {
        use std::io::Write;
        let _ = writeln!(
            std::io::stdout(),
            "jnsc: DICOM SCP listening on {address} as AE {}; status on http://{status_address}",
            config.dicom.ae_title
        );
        if let Some(tls) = tls_listener.as_ref().and_then(|l| l.local_addr().ok()) {
            let _ = writeln!(std::io::stdout(), "jnsc: DICOM TLS SCP listening on {tls}");
        }
    }

    let (stop, stopped) = watch::channel(false);
    let status = tokio::spawn(crate::status::serve(
        status_listener,
        Arc::new(crate::status::StatusState {
            index: index.clone(),
            config: Arc::clone(&config),
            started: std::time::Instant::now(),
            model: model_status,
            storage_root: storage_root.clone(),
        }),
        stopped.clone(),
    ));
    let completion = tokio::spawn(completion::run(
        index.clone(),
        config.stable_age(),
        stopped.clone(),
    ));
    let checkpoints = tokio::spawn(checkpoint_periodically(Arc::clone(&store), stopped.clone()));
    let outbox = Arc::new(Notify::new());
    let worker = analyzer.map(|analyzer| {
        tokio::spawn(
            Worker {
                index: index.clone(),
                storage_root: storage_root.clone(),
                analyzer: Arc::new(analyzer),
                config: Arc::clone(&config),
                equipment: Equipment::new(&config.dicom.ae_title),
                outbox: Arc::clone(&outbox),
            }
            .run(stopped.clone()),
        )
    });
    let sender = tokio::spawn(sender::run(
        index.clone(),
        storage_root,
        config.sender.clone(),
        SendSettings {
            calling_ae_title: config.dicom.ae_title.clone(),
            connect_timeout: std::time::Duration::from_secs(config.sender.connect_timeout_secs),
            response_timeout: std::time::Duration::from_secs(config.sender.response_timeout_secs),
            max_pdu: config.dicom.max_pdu,
            tls: client_tls,
        },
        outbox,
        stopped.clone(),
    ));
    let tls_scp = tls_listener.map(|listener| {
        tokio::spawn(server::run(
            listener,
            tls_server,
            Arc::clone(&config),
            Arc::clone(&store),
            stopped.clone(),
        ))
    });
    let scp = tokio::spawn(server::run(
        listener,
        None,
        Arc::clone(&config),
        Arc::clone(&store),
        stopped,
    ));

    shutdown_signal().await;
    info!("shutdown requested");
    let _ = stop.send(true);
    let _ = scp.await;
    if let Some(tls_scp) = tls_scp {
        let _ = tls_scp.await;
    }
    let _ = completion.await;
    if let Some(worker) = worker {
        let _ = worker.await;
    }
    let _ = sender.await;
    let _ = status.await;
    let _ = checkpoints.await;
    if let Err(e) = store.checkpoint().await {
        warn!(error = %e, "final checkpoint failed; the next start re-checks recent files");
    }
    index.pool().close().await;
    info!("stopped");
    Ok(())
}

/// Loads the configured model onto the configured device.
fn load_analyzer(config: &Config) -> anyhow::Result<Analyzer> {
    let device = crate::jnsc::device::select(&config.model.device)?;
    let tiling = Tiling::named(&config.model.tiling).map_err(anyhow::Error::msg)?;
    let source = ModelSource::from_option(config.model.path.clone());
    let mut analyzer = Analyzer::new(&source, device, tiling)
        .with_context(|| format!("cannot load the model (key model.path): {source}"))?;
    // Only findings that can be reported are classified.
    analyzer.classify_min_p_location = config.results.min_p_nodule;
    info!(
        model = %analyzer.model_info().name,
        version = %analyzer.model_info().version,
        device = %config.model.device,
        source = %source,
        "model loaded"
    );
    Ok(analyzer)
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

async fn shutdown_signal() {
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
