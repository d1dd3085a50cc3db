//! The node as an installed service would run it: `jnsc serve` started from `/`, with no
//! configuration file, no model file beside it and a home directory of its own. It must listen on
//! its documented defaults, keep its data under the user's state directory (never in the working
//! directory), load the model embedded in the binary, and analyse and report a study it receives.

mod common;

use common::{STORESCU, http_get, small_study};
use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

#[test]
fn serve_from_root_with_no_configuration_analyses_with_the_embedded_model() {
    let home = tempfile::Builder::new()
        .prefix("jnsc-home-")
        .tempdir()
        .unwrap();
    let root_storage_existed = Path::new("/storage").exists();
    let log_path = home.path().join("node.log");
    let mut child = Command::new(env!("CARGO_BIN_EXE_jnsc"))
        .arg("serve")
        .current_dir("/")
        .env("HOME", home.path())
        .env("RUST_LOG", "info")
        .env_remove("JNSC_CONFIG")
        .env_remove("STATE_DIRECTORY")
        .env_remove("XDG_STATE_HOME")
        .stdout(Stdio::piped())
        .stderr(std::fs::File::create(&log_path).unwrap())
        .spawn()
        .unwrap();
    let log = || std::fs::read_to_string(&log_path).unwrap_or_default();
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    assert!(
        line.contains("0.0.0.0:11112") && line.contains("127.0.0.1:8080"),
        "not on the documented default ports: {line:?}\n{}",
        log()
    );

    let (_study, dicom) = small_study(41, 2);
    let sent = Command::new(STORESCU)
        .args([
            "-aec",
            "JNSC",
            "-aet",
            "CT_SCANNER",
            "+sd",
            "127.0.0.1",
            "11112",
        ])
        .arg(&dicom)
        .output()
        .unwrap();
    assert!(sent.status.success(), "{sent:?}");

    let state = home.path().join(".local/state/jnsc");
    let deadline = Instant::now() + Duration::from_secs(300);
    let summary = loop {
        let found = jnsc::volume::series::files_under(&state.join("results"))
            .into_iter()
            .find(|p| p.ends_with("results.json"));
        if let Some(path) = found {
            break std::fs::read_to_string(path).unwrap();
        }
        assert!(
            Instant::now() < deadline,
            "no results within 5 minutes:\n{}",
            log()
        );
        assert!(child.try_wait().unwrap().is_none(), "node died:\n{}", log());
        std::thread::sleep(Duration::from_millis(500));
    };
    // It says so on its status endpoint (the default address).
    let status_page = loop {
        let (code, body) = http_get(8080, "/status", None);
        let v: serde_json::Value = serde_json::from_str(&body).unwrap_or_default();
        if code == 200 && v["jobs_by_state"]["done"].as_i64().unwrap_or(0) >= 1 {
            break body;
        }
        assert!(
            Instant::now() < deadline,
            "no finished job on /status: {body}\n{}",
            log()
        );
        std::thread::sleep(Duration::from_millis(500));
    };
    let _ = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status();
    let status = child.wait().unwrap();
    let log = log();
    assert!(status.success(), "node exited with {status}:\n{log}");

    let summary: serde_json::Value = serde_json::from_str(&summary).unwrap();
    let shipped = jnsc::jnsc::model_file::load(
        &Path::new(env!("CARGO_MANIFEST_DIR")).join(jnsc::DEFAULT_MODEL),
        &candle_core::Device::Cpu,
    )
    .unwrap()
    .1;
    assert_eq!(summary["model"], shipped.name.as_str());
    assert_eq!(summary["model_version"], shipped.version.as_str());
    assert!(
        !summary["findings"].as_array().unwrap().is_empty(),
        "the study's nodules were not reported: {summary}"
    );
    assert!(log.contains("embedded shipped model"), "{log}");
    assert!(
        state.join("jnsc.db").is_file(),
        "no index under {}",
        state.display()
    );
    assert!(
        jnsc::volume::series::files_under(&state.join("results"))
            .iter()
            .any(|p| p.ends_with("sr.dcm"))
    );
    if !root_storage_existed {
        assert!(
            !Path::new("/storage").exists(),
            "wrote into the working directory"
        );
    }
    assert!(status_page.contains(&shipped.name), "{status_page}");
    // No peer is configured: the results are kept, and the log says why they were not sent.
    assert!(log.contains("no destination configured"), "{log}");
}
