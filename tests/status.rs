//! The HTTP status endpoint, driven as IT staff would: DCMTK sends studies while the tests poll
//! `/status`, `/studies/{uid}`, `/metrics`, `/ready` and the page at `/` over real TCP. Also the
//! bearer token, the disk-space floor (associations refused) and a shutdown in the middle of a
//! transfer (no acknowledged instance lost).

mod common;

use common::{ECHOSCU, Node, eventually, free_port, small_study, synth_series};
use serde_json::Value;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

/// The test sender's patient name, which must never appear in any response.
const PATIENT_NAME: &str = "SYNTHETIC^PHANTOM";

fn json(node: &Node, path: &str) -> Value {
    let (code, body) = node.get(path, None);
    assert_eq!(code, 200, "{path}: {body}");
    serde_json::from_str(&body).unwrap_or_else(|e| panic!("{path}: {e}: {body}"))
}

fn files_of(dir: &Path) -> Vec<PathBuf> {
    let mut files = jnsc::volume::series::files_in(dir).unwrap();
    files.sort();
    files
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn endpoints_follow_a_study_from_reception_to_a_failed_send() {
    // A study the worker analyses; its results go to a destination where nothing listens, and
    // one attempt is allowed: the send fails for good and must show up everywhere.
    let (_study_dir, study) = small_study(21, 2);
    let dead_port = free_port();
    let node = Node::process(&format!(
        "[[dicom.peers]]\nae_title = \"TESTSCU\"\nhost = \"127.0.0.1\"\nport = {dead_port}\n\
         [pipeline]\nstable_age_secs = 1\n[sender]\nmax_attempts = 1\n"
    ));

    let (code, body) = node.get("/health", None);
    assert_eq!((code, body.as_str()), (200, "ok\n"));
    let before = json(&node, "/status");
    assert_eq!(before["instances"], 0);
    assert_eq!(before["model"]["name"], "jnsc-real-backgrounds");
    // No threshold configured: the shipped model's own operating point.
    assert_eq!(before["model"]["min_p_nodule"], 0.351);
    assert_eq!(before["associations_total"], 0);

    let files = files_of(&study);
    let refs: Vec<&Path> = files.iter().map(|p| p.as_path()).collect();
    assert!(node.storescu(&[], &refs).status.success());

    // Counters move while the study is received and analysed.
    let received = json(&node, "/status");
    assert_eq!(received["instances"], 120);
    assert_eq!(received["instances_received"], 120);
    assert_eq!(received["associations_total"], 1);
    assert_eq!(received["associations_active"], 0);
    let study_uid = received["recent_studies"][0]["study_uid"]
        .as_str()
        .unwrap()
        .to_owned();

    let failed = eventually(
        Duration::from_secs(300),
        "the failed send on /status",
        || {
            let (_, body) = node.get("/status", None);
            async move {
                let v: Value = serde_json::from_str(&body).ok()?;
                let failed = v["outbox_by_state"]["failed"].as_i64().unwrap_or(0);
                let pending = v["outbox_by_state"]["pending"].as_i64().unwrap_or(0);
                (failed >= 1 && pending == 0).then_some(v)
            }
        },
    )
    .await;
    let row = &failed["recent_studies"][0];
    assert_eq!(row["state"], "done");
    assert!(row["findings"].as_i64().is_some());
    assert!(row["timings"]["total"].as_f64().unwrap() > 0.0);
    assert_eq!(failed["jobs_by_state"]["done"], 1);
    assert_eq!(failed["queue_depth"], 0);
    assert!(failed["disk"]["free_bytes"].as_u64().unwrap() > 0);

    // The study's whole history.
    let history = json(&node, &format!("/studies/{study_uid}"));
    assert_eq!(history["patient_id"], "SYNTH000021");
    assert_eq!(history["series"][0]["instance_count"], 120);
    assert_eq!(history["series"][0]["source_ae"], "TESTSCU");
    let job = &history["jobs"][0];
    assert_eq!(job["state"], "done");
    for stage in jnsc::metrics::Stage::ALL {
        let stage = stage.name();
        assert!(job["timings"][stage].as_f64().is_some(), "{stage}: {job}");
    }
    let results = history["results"].as_array().unwrap();
    assert!(results.iter().any(|r| r["kind"] == "sr"));
    let sends = history["sends"].as_array().unwrap();
    assert_eq!(sends.len(), results.len());
    for send in sends {
        assert_eq!(send["state"], "failed");
        assert_eq!(send["dest_port"], dead_port);
        assert!(
            send["last_error"]
                .as_str()
                .unwrap()
                .contains("gave up after 1 attempts")
        );
        assert_eq!(send["history"].as_array().unwrap().len(), 1);
        assert_eq!(send["history"][0]["outcome"], "failed");
    }
    let (code, _) = node.get("/studies/1.2.3.4.5", None);
    assert_eq!(code, 404);

    // Prometheus.
    let (code, metrics) = node.get("/metrics", None);
    assert_eq!(code, 200);
    for line in [
        "jnsc_associations_total 1",
        "jnsc_instances_total{outcome=\"stored\"} 120",
        "jnsc_jobs_total{outcome=\"done\"} 1",
        "jnsc_stage_seconds_count{stage=\"segmentation\"} 1",
        "jnsc_association_seconds_count 1",
        "jnsc_queue_depth 0.0",
    ] {
        assert!(
            metrics.lines().any(|l| l == line),
            "no `{line}` in\n{metrics}"
        );
    }
    let failed_sends = format!("jnsc_sends_total{{outcome=\"failed\"}} {}", sends.len());
    assert!(metrics.contains(&failed_sends), "{metrics}");
    assert!(metrics.contains(&format!("jnsc_outbox_failed {}.0", sends.len())));
    common::parse_openmetrics(&metrics);

    // The page for people shows the same, and no response carries the patient's name.
    let (code, page) = node.get("/", None);
    assert_eq!(code, 200);
    assert!(page.contains(&study_uid) && page.contains("SYNTH000021"));
    assert!(page.contains("Running, with failures to look at"));
    for body in [&page, &metrics, &history.to_string(), &failed.to_string()] {
        assert!(!body.contains(PATIENT_NAME) && !body.contains("PHANTOM"));
    }
    assert!(
        !node.log().contains("PHANTOM"),
        "the log carries the patient name"
    );
    node.stop();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ready_fails_when_the_database_is_read_only_and_recovers() {
    let node = Node::start("[pipeline]\nanalyze = false");
    let (code, body) = node.get("/ready", None);
    assert_eq!(code, 200, "{body}");
    let db = node.storage().join("jnsc.db");
    let writable = std::fs::metadata(&db).unwrap().permissions();
    let mut read_only = writable.clone();
    read_only.set_readonly(true);
    std::fs::set_permissions(&db, read_only).unwrap();
    let (code, body) = node.get("/ready", None);
    assert_eq!(code, 503, "{body}");
    let v: Value = serde_json::from_str(&body).unwrap();
    let database = v["checks"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["name"] == "database")
        .unwrap();
    assert_eq!(database["ok"], false);
    assert!(database["detail"].as_str().unwrap().contains("read-only"));
    std::fs::set_permissions(&db, writable).unwrap();
    assert_eq!(node.get("/ready", None).0, 200);
    assert_eq!(node.get("/health", None).0, 200);
    node.stop();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bearer_token_guards_everything_but_health() {
    let token = "correct-horse-battery-staple";
    let node = Node::start(&format!(
        "[pipeline]\nanalyze = false\n[status]\nlisten = \"127.0.0.1:0\"\ntoken = \"{token}\""
    ));
    assert_eq!(node.get("/health", None).0, 200);
    for path in ["/", "/status", "/ready", "/metrics", "/studies/1.2.3"] {
        assert_eq!(node.get(path, None).0, 401, "{path} without a token");
        assert_eq!(node.get(path, Some("wrong-token-of-same-size!!!!")).0, 401);
    }
    assert_eq!(node.get("/status", Some(token)).0, 200);
    assert_eq!(node.get("/metrics", Some(token)).0, 200);
    node.stop();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn associations_are_refused_below_the_disk_floor() {
    let dir = tempfile::Builder::new()
        .prefix("jnsc-test-")
        .tempdir()
        .unwrap();
    // A floor no disk reaches: 1 EiB.
    let node = Node::start_in_with(
        dir.path(),
        "[pipeline]\nanalyze = false",
        "min_free_mb = 1099511627776",
    );
    let out = Command::new(ECHOSCU)
        .args([
            "-aet",
            "TESTSCU",
            "-aec",
            "JNSC",
            "127.0.0.1",
            &node.port.to_string(),
        ])
        .output()
        .unwrap();
    assert!(!out.status.success(), "the association was accepted");
    let text =
        String::from_utf8_lossy(&out.stderr).to_string() + &String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("Association Rejected"), "{text}");
    assert!(
        text.contains("Transient") && text.contains("Temporary Congestion"),
        "{text}"
    );
    let (code, body) = node.get("/ready", None);
    assert_eq!(code, 503, "{body}");
    assert!(body.contains("\"name\":\"disk\",\"ok\":false"), "{body}");
    let db = node.db().await;
    let reason: String = eventually(Duration::from_secs(5), "the rejection in the log", || {
        let db = db.clone();
        async move {
            sqlx::query_scalar("SELECT reason FROM rejected_associations")
                .fetch_optional(&db)
                .await
                .unwrap()
        }
    })
    .await;
    assert!(reason.contains("below the floor"), "{reason}");
    node.stop();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_shutdown_during_a_transfer_loses_no_acknowledged_instance() {
    let node = Node::start("[pipeline]\nanalyze = false");
    let sent = node.dir.join("sent");
    let series = synth_series(&sent, 200, 128, 77);
    let storescu = Command::new(common::STORESCU)
        .args(["-v", "-aec", "JNSC", "-aet", "TESTSCU", "+sd", "127.0.0.1"])
        .arg(node.port.to_string())
        .arg(&sent)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // Stop the node once the transfer is under way.
    let db = node.db().await;
    eventually(Duration::from_secs(30), "a transfer under way", || {
        let db = db.clone();
        async move {
            let n: i64 = sqlx::query_scalar("SELECT count(*) FROM instances")
                .fetch_one(&db)
                .await
                .unwrap();
            (n >= 5).then_some(())
        }
    })
    .await;
    db.close().await;
    let dir = node.stop();
    let out = storescu.wait_with_output().unwrap();
    let log =
        String::from_utf8_lossy(&out.stdout).to_string() + &String::from_utf8_lossy(&out.stderr);
    let acknowledged = jnsc::bench::acknowledged_by_storescu(&log);
    assert!(acknowledged >= 5, "{log}");

    // After a restart every acknowledged instance is in the index and on disk, intact.
    let node = Node::start_in(&dir, "[pipeline]\nanalyze = false");
    let db = node.db().await;
    let stored: Vec<(String, String)> =
        sqlx::query_as("SELECT sop_instance_uid, path FROM instances")
            .fetch_all(&db)
            .await
            .unwrap();
    assert!(
        stored.len() >= acknowledged,
        "{} instances kept, {acknowledged} acknowledged",
        stored.len()
    );
    for (uid, path) in &stored {
        assert!(series.sop_instance_uids.contains(uid));
        dicom_object::open_file(node.storage().join(path)).expect("a stored file parses");
    }
    node.stop();
}

/// Connections that never finish their request headers are closed after
/// `status.header_timeout_secs`, and the endpoint keeps answering.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn half_open_requests_are_closed_after_the_header_timeout() {
    use std::io::{Read, Write};
    let node = Node::start("[status]\nlisten = \"127.0.0.1:0\"\nheader_timeout_secs = 1");
    let mut held: Vec<std::net::TcpStream> = (0..50)
        .map(|_| {
            let mut s = std::net::TcpStream::connect(("127.0.0.1", node.status_port)).unwrap();
            s.write_all(b"GET /status HTTP/1.1\r\nHost: x\r\n").unwrap();
            s
        })
        .collect();
    tokio::time::sleep(Duration::from_secs(3)).await;
    for socket in &mut held {
        socket
            .set_read_timeout(Some(Duration::from_secs(2)))
            .unwrap();
        let mut buffer = [0u8; 512];
        // Closed: end of stream (hyper may first answer 408), never a timeout of our read.
        loop {
            match socket.read(&mut buffer) {
                Ok(0) => break,
                Ok(_) => continue,
                Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => break,
                Err(e) => panic!("a half-open request still held after 3 s: {e}"),
            }
        }
    }
    assert_eq!(node.get("/health", None).0, 200);
}
