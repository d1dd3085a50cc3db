//! Several nodes on one queue: a real PostgreSQL from Debian's packages, 2 receivers and 3
//! workers as separate `jnsc serve` processes sharing one storage directory, 10 small synthetic
//! studies sent by DCMTK storescu to the receivers in turn, and the results delivered to a
//! DCMTK storescp whose log counts every C-STORE it answers. Each series is analysed exactly
//! once, each result object reaches the PACS exactly once, and nothing is lost. Then the same
//! with a worker killed (SIGKILL) in the middle of a job: once its lease runs out another
//! worker analyses the series, and still nothing reaches the PACS twice.

mod common;

use common::pacs::wait_listening;
use common::postgres::Postgres;
use common::{Node, eventually, free_port};
use jnsc::store::db::{Index, Pool};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

const STUDIES: usize = 10;
/// A short lease, so that a killed worker's job is taken over within seconds.
const LEASE_SECS: u64 = 3;

/// DCMTK storescp, verbose: its log (on stderr) has one "Received Store Request" per C-STORE
/// answered, re-sends of one SOP Instance UID included (their files would overwrite each other).
struct CountingPacs {
    child: Child,
    dir: tempfile::TempDir,
    port: u16,
}

impl CountingPacs {
    fn start() -> CountingPacs {
        let dir = tempfile::Builder::new()
            .prefix("jnsc-pacs-")
            .tempdir()
            .unwrap();
        let port = free_port();
        let child = Command::new("/usr/bin/storescp")
            .args(["-v", "-aet", "PACS", "-od"])
            .arg(dir.path().join("received"))
            .arg(port.to_string())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(dir.path().join("log")).unwrap())
            .spawn()
            .expect("storescp runs");
        std::fs::create_dir_all(dir.path().join("received")).unwrap();
        wait_listening(port);
        CountingPacs { child, dir, port }
    }

    /// C-STORE requests answered so far.
    fn requests(&self) -> usize {
        std::fs::read_to_string(self.dir.path().join("log"))
            .unwrap_or_default()
            .matches("Received Store Request")
            .count()
    }

    /// Files stored so far (one per SOP Instance UID).
    fn files(&self) -> usize {
        std::fs::read_dir(self.dir.path().join("received"))
            .map(|d| d.count())
            .unwrap_or(0)
    }
}

impl Drop for CountingPacs {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The configuration of one node of the site, in `dir`.
fn node_config(dir: &Path, name: &str, role: &str, storage: &Path, db: &str, pacs: u16) -> PathBuf {
    std::fs::create_dir_all(dir).unwrap();
    let path = dir.join("jnsc.toml");
    std::fs::write(
        &path,
        format!(
            "[node]\nname = \"{name}\"\nrole = \"{role}\"\n\
             [dicom]\nlisten = \"127.0.0.1:0\"\n\
             [[dicom.peers]]\nae_title = \"TESTSCU\"\nhost = \"127.0.0.1\"\nport = {pacs}\n\
             dest_ae_title = \"PACS\"\n\
             [storage]\ndir = \"{}\"\ndb = \"{db}\"\n\
             [pipeline]\nstable_age_secs = 1\nlease_secs = {LEASE_SECS}\n\
             [sender]\nretry_base_secs = 1\nretry_max_secs = 2\n\
             [status]\nlisten = \"127.0.0.1:0\"\n",
            storage.display()
        ),
    )
    .unwrap();
    path
}

/// `n` small synthetic chest CT studies (one series each), written by `jnsc synth`.
fn studies(n: usize) -> (tempfile::TempDir, Vec<PathBuf>) {
    let dir = tempfile::Builder::new()
        .prefix("jnsc-studies-")
        .tempdir()
        .unwrap();
    let folders = (0..n)
        .map(|i| {
            let out = dir.path().join(format!("study-{i}"));
            let status = Command::new(env!("CARGO_BIN_EXE_jnsc"))
                .args(["synth", "--out"])
                .arg(&out)
                .args(["--seed", &(100 + i).to_string(), "--nodules", "1"])
                .args(SMALL_STUDY)
                .stdout(Stdio::null())
                .status()
                .unwrap();
            assert!(status.success());
            out.join("dicom")
        })
        .collect();
    (dir, folders)
}

/// The geometry of the small studies: a whole chest in-plane (320 mm), a 60 mm slab of it
/// (12 slices of 5 mm), so that 10 analyses per test (about 6 s each) fit the test's time on two
/// cores.
const SMALL_STUDY: &[&str] = &[
    "--size",
    "320",
    "--pixel-spacing",
    "1.0",
    "--slices",
    "12",
    "--slice-spacing",
    "5",
];

/// The site's PostgreSQL pool.
fn pool(index: &Index) -> &sqlx::PgPool {
    let Pool::Postgres(pool) = index.pool() else {
        unreachable!("the site runs on PostgreSQL")
    };
    pool
}

async fn scalar(index: &Index, sql: &'static str) -> i64 {
    sqlx::query_scalar(sql)
        .fetch_one(pool(index))
        .await
        .unwrap()
}

async fn strings(index: &Index, sql: &'static str) -> Vec<String> {
    sqlx::query_scalar(sql)
        .fetch_all(pool(index))
        .await
        .unwrap()
}

/// A running job and the node holding it, if any.
async fn held_job(index: &Index) -> Option<(String, i64)> {
    sqlx::query_as("SELECT claimed_by, id FROM jobs WHERE state = 'running' LIMIT 1")
        .fetch_optional(pool(index))
        .await
        .unwrap()
}

/// One site at a time: two would share the machine's two cores.
static ONE_SITE: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// Runs the site; with `kill_a_worker`, SIGKILLs the first worker seen holding a job.
async fn site(kill_a_worker: bool) {
    let _alone = ONE_SITE.lock().await;
    let Some(server) = Postgres::start() else {
        return;
    };
    let db = server.database(if kill_a_worker { "killed" } else { "site" });
    let pacs = CountingPacs::start();
    let site = tempfile::Builder::new()
        .prefix("jnsc-site-")
        .tempdir()
        .unwrap();
    let storage = site.path().join("shared-storage");
    let (_studies_dir, studies) = studies(STUDIES);

    let start = |name: &str, role: &str| {
        let dir = site.path().join(name);
        let config = node_config(&dir, name, role, &storage, &db, pacs.port);
        Node::process_with_config(&dir, &config)
    };
    let receivers = [start("rx-1", "receiver"), start("rx-2", "receiver")];
    let mut workers: BTreeMap<String, Node> = ["wk-1", "wk-2", "wk-3"]
        .into_iter()
        .map(|name| (name.to_owned(), start(name, "worker")))
        .collect();
    let index = Index::connect(&jnsc::config::DbLocation::parse(&db))
        .await
        .unwrap();

    // Receivers take the studies in turn, two associations at a time.
    let mut instances_sent = 0;
    let mut killed: Option<(String, i64)> = None;
    for pair in studies.chunks(2) {
        std::thread::scope(|scope| {
            for (study, receiver) in pair.iter().zip(&receivers) {
                scope.spawn(move || {
                    let out = receiver.storescu(&["+sd"], &[study.as_path()]);
                    assert!(
                        out.status.success(),
                        "{}",
                        String::from_utf8_lossy(&out.stderr)
                    );
                });
            }
        });
        instances_sent += pair
            .iter()
            .map(|study| std::fs::read_dir(study).unwrap().count())
            .sum::<usize>();
        if kill_a_worker
            && killed.is_none()
            && let Some((node, job)) = held_job(&index).await
        {
            workers.remove(&node).expect("a worker holds it").crash();
            killed = Some((node, job));
        }
    }
    if kill_a_worker && killed.is_none() {
        let (node, job) = eventually(Duration::from_secs(120), "a job held by a worker", || {
            held_job(&index)
        })
        .await;
        workers.remove(&node).expect("a worker holds it").crash();
        killed = Some((node, job));
    }

    // Every series analysed and every result delivered.
    eventually(
        Duration::from_secs(600),
        "every series analysed and its results delivered",
        || {
            let index = index.clone();
            async move {
                let done = scalar(&index, "SELECT COUNT(*) FROM jobs WHERE state = 'done'").await;
                let undelivered = scalar(
                    &index,
                    "SELECT COUNT(*) FROM outbox WHERE state <> 'sent' AND state <> 'superseded'",
                )
                .await;
                (done == STUDIES as i64 && undelivered == 0).then_some(())
            }
        },
    )
    .await;

    // Nothing lost: every instance indexed, in its receiver's area of the shared storage.
    assert_eq!(
        scalar(&index, "SELECT COUNT(*) FROM instances").await,
        instances_sent as i64
    );
    assert_eq!(
        strings(
            &index,
            "SELECT DISTINCT split_part(path, '/', 2) FROM instances ORDER BY 1"
        )
        .await,
        ["rx-1", "rx-2"],
        "each receiver stored in its own area"
    );
    let paths = strings(&index, "SELECT path FROM instances").await;
    assert!(
        paths.iter().all(|p| storage.join(p).is_file()),
        "every indexed instance is on the shared storage"
    );

    // Each series analysed exactly once: one job, done; claimed once, or twice for the job
    // whose worker was killed, and then finished by another worker.
    for table in ["SELECT COUNT(*) FROM series", "SELECT COUNT(*) FROM jobs"] {
        assert_eq!(scalar(&index, table).await, STUDIES as i64, "{table}");
    }
    let jobs: Vec<(String, i64, i64)> =
        sqlx::query_as("SELECT claimed_by, id, attempts FROM jobs ORDER BY id")
            .fetch_all(pool(&index))
            .await
            .unwrap();
    for (node, id, attempts) in &jobs {
        match &killed {
            Some((dead, job)) if id == job => {
                assert_eq!(*attempts, 2, "job {id}: claimed again after {dead} died");
                assert_ne!(node, dead, "job {id} finished by another worker");
            }
            _ => assert_eq!(*attempts, 1, "job {id} analysed once"),
        }
        assert!(node.starts_with("wk-"), "job {id} held by {node}");
    }
    let busy_workers: std::collections::BTreeSet<&String> = jobs.iter().map(|j| &j.0).collect();
    assert!(
        busy_workers.len() >= 2,
        "the work was shared: {busy_workers:?}"
    );

    // Each result object delivered exactly once: as many C-STOREs answered as objects, each
    // its own file at the PACS, each sent by one node.
    let results = scalar(&index, "SELECT COUNT(*) FROM results").await as usize;
    assert!(results >= STUDIES, "an SR per series at least: {results}");
    assert_eq!(
        scalar(&index, "SELECT COUNT(*) FROM outbox").await as usize,
        results
    );
    eventually(Duration::from_secs(10), "the PACS's log", || async {
        (pacs.requests() >= results).then_some(())
    })
    .await;
    assert_eq!(pacs.files(), results, "one file per result object");
    assert_eq!(pacs.requests(), results, "no object sent twice");
    assert_eq!(
        scalar(&index, "SELECT COUNT(*) FROM send_attempts").await as usize,
        results
    );

    // Any node shows the shared queue and who holds what.
    let (code, metrics) = receivers[0].get("/metrics", None);
    assert_eq!(code, 200);
    assert!(metrics.contains("jnsc_node{node=\"rx-1\"} 1"), "{metrics}");
    let worker = workers.values().next().unwrap();
    let (_, status) = worker.get("/status", None);
    assert!(status.contains("\"role\":\"worker\""), "{status}");
    assert!(status.contains(&format!("\"done\":{STUDIES}")), "{status}");

    index.close().await;
    for node in receivers.into_iter().chain(workers.into_values()) {
        node.stop();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_receivers_and_three_workers_analyse_each_series_once_and_deliver_each_result_once() {
    site(false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_killed_mid_job_loses_nothing_and_duplicates_nothing() {
    site(true).await;
}
