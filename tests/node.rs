//! The node as an object, in process: `node::start` on port 0 binds free ports and reports them
//! (no stdout parsing), real DCMTK peers talk to it, `/ready` lists its supervised tasks, the
//! storage lock keeps a second node off the same storage while it runs, and `shutdown` stops
//! it cleanly so that the same storage can be started again.

mod common;

use common::{ECHOSCU, STORESCU, http_get, synth_series};
use jnsc::config::Config;
use std::path::Path;
use std::process::Command;

fn config(storage: &Path) -> Config {
    Config::parse(&format!(
        "[dicom]\nlisten = \"127.0.0.1:0\"\n[status]\nlisten = \"127.0.0.1:0\"\n\
         [storage]\ndir = \"{}\"\n[pipeline]\nanalyze = false\n",
        storage.display()
    ))
    .unwrap()
}

/// Runs a blocking command off the runtime's threads.
async fn run(mut command: Command) -> std::process::Output {
    tokio::task::spawn_blocking(move || command.output().unwrap())
        .await
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_in_process_listens_on_free_ports_answers_and_stops() {
    let dir = tempfile::tempdir().unwrap();
    let storage = dir.path().join("storage");
    let running = jnsc::node::start(config(&storage)).await.unwrap();
    let dicom = running.dicom_address.expect("a DICOM listener (role all)");
    assert_ne!(dicom.port(), 0);
    assert_ne!(running.status_address.port(), 0);
    let port = dicom.port().to_string();

    let mut echo = Command::new(ECHOSCU);
    echo.args(["-aec", "JNSC", "127.0.0.1", &port]);
    assert!(run(echo).await.status.success(), "C-ECHO");
    let series = dir.path().join("series");
    synth_series(&series, 3, 64, 5);
    let mut store = Command::new(STORESCU);
    store
        .args(["-aec", "JNSC", "-aet", "TESTSCU", "+sd", "127.0.0.1", &port])
        .arg(&series);
    let out = run(store).await;
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    let status_port = running.status_address.port();
    let (code, body) = tokio::task::spawn_blocking(move || http_get(status_port, "/ready", None))
        .await
        .unwrap();
    assert_eq!(code, 200, "{body}");
    assert!(body.contains("\"name\":\"tasks\",\"ok\":true"), "{body}");

    // The storage is locked while the node runs.
    let second = jnsc::node::start(config(&storage)).await;
    let error = format!(
        "{:#}",
        second.err().expect("a second node on the same storage")
    );
    assert!(error.contains("lock"), "{error}");

    running.shutdown().await.unwrap();
    // Stopped: its storage can be started again, with what it stored.
    let again = jnsc::node::start(config(&storage)).await.unwrap();
    let stored = std::fs::read_dir(storage.join("instances"))
        .map(|d| d.count())
        .unwrap_or(0);
    assert!(stored > 0, "instances kept");
    again.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_model_without_an_operating_point_needs_a_configured_threshold() {
    let dir = tempfile::tempdir().unwrap();
    let model = dir.path().join("untrained.safetensors");
    jnsc::jnsc::model_file::write_untrained(&model, jnsc::jnsc::network::Preset::Cpu, None)
        .unwrap();
    // Each start in its own storage directory: the refused start's storage lock is released
    // when it returns, but a DCMTK peer the other test forks at that moment holds a copy of
    // the descriptor (and so the lock) until it execs.
    let with = |storage: &str, results: &str| {
        Config::parse(&format!(
            "[dicom]\nlisten = \"127.0.0.1:0\"\n[status]\nlisten = \"127.0.0.1:0\"\n\
             [storage]\ndir = \"{}\"\n[model]\npath = \"{}\"\n{results}",
            dir.path().join(storage).display(),
            model.display()
        ))
        .unwrap()
    };
    // Nothing says what to report: the node does not start.
    let refused = jnsc::node::start(with("refused", "")).await;
    let error = format!("{:#}", refused.err().expect("no threshold"));
    assert!(error.contains("carries no operating point"), "{error}");
    assert!(error.contains("min_p_nodule"), "{error}");

    // Configured: it starts, and says what it reports.
    let running = jnsc::node::start(with("storage", "[results]\nmin_p_nodule = 0.6\n"))
        .await
        .unwrap();
    let port = running.status_address.port();
    let (code, body) = tokio::task::spawn_blocking(move || http_get(port, "/status", None))
        .await
        .unwrap();
    assert_eq!(code, 200, "{body}");
    let status: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(status["model"]["name"], "jnsc-cpu");
    assert_eq!(status["model"]["min_p_nodule"], 0.6);
    running.shutdown().await.unwrap();
}
