//! `jnsc serve`: assembles the running node (store, index, DICOM listener, series completion)
//! from a configuration and runs it until SIGINT or SIGTERM.

use crate::config::Config;
use crate::net::server;
use crate::pipeline::completion;
use crate::store::db::Index;
use crate::store::files::FileStore;
use crate::store::{InstanceStore, recovery};
use anyhow::Context;
use std::sync::Arc;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tracing::{info, warn};

/// Runs the node until a shutdown signal arrives.
pub async fn serve(config: Config) -> anyhow::Result<()> {
    let config = Arc::new(config);
    let files = FileStore::open(&config.storage.dir).with_context(|| {
        format!(
            "cannot open the storage directory {} (key storage.dir)",
            config.storage.dir.display()
        )
    })?;
    let db_path = config.db_path();
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
    let store = Arc::new(InstanceStore::new(files, index.clone()));
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
    // A stable line on stdout for scripts and tests that start the node on port 0.
    println!(
        "jnsc: DICOM SCP listening on {address} as AE {}",
        config.dicom.ae_title
    );

    let (stop, stopped) = watch::channel(false);
    let completion = tokio::spawn(completion::run(
        index.clone(),
        config.stable_age(),
        stopped.clone(),
    ));
    let checkpoints = tokio::spawn(checkpoint_periodically(Arc::clone(&store), stopped.clone()));
    let scp = tokio::spawn(server::run(
        listener,
        Arc::clone(&config),
        Arc::clone(&store),
        stopped,
    ));

    shutdown_signal().await;
    info!("shutdown requested");
    let _ = stop.send(true);
    let _ = scp.await;
    let _ = completion.await;
    let _ = checkpoints.await;
    if let Err(e) = store.checkpoint().await {
        warn!(error = %e, "final checkpoint failed; the next start re-checks recent files");
    }
    index.pool().close().await;
    info!("stopped");
    Ok(())
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
