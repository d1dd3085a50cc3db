//! The index on PostgreSQL (`[storage] db = "postgres://..."`), against a real server from
//! Debian's packages started by the test: both engines' migrations give the same tables and
//! columns, and a node on PostgreSQL receives a series from DCMTK, indexes it, queues its job,
//! and takes it through claim, results, delivery attempts and a re-send with the same queries
//! as on SQLite, its state CHECK constraints refusing what the SQLite triggers refuse. Claims
//! and leases behave the same on both engines: concurrent workers take each job once, a job
//! whose lease ran out goes to another worker and only that one can finish it, and one whose
//! leases keep running out fails for good. Outbox rows are claimed the same way by several
//! senders, and two receivers given one instance at the same moment both answer Success and
//! store it once.

mod common;

use common::postgres::Postgres;
use common::{Node, eventually, synth_series};
use jnsc::store::db::{Index, Pool};
use jnsc::store::work::{
    Claimant, ClaimedJob, Destination, JobState, JobSuccess, NewResult, OutboxState, ResultKind,
    SendOutcome,
};
use std::collections::BTreeSet;
use std::time::Duration;

fn claimant(node: &str, lease_ms: u64) -> Claimant {
    Claimant {
        node: node.into(),
        lease: Duration::from_millis(lease_ms),
    }
}

/// The destination of the tests' results.
fn pacs() -> Destination {
    Destination {
        ae_title: "PACS".into(),
        host: "127.0.0.1".into(),
        port: 11112,
    }
}

/// A finished analysis with nothing found.
fn no_results() -> JobSuccess<'static> {
    JobSuccess {
        timings_json: "{}",
        candidates: 0,
        findings: 0,
        results: &[],
    }
}

/// The series received again and complete: a new job, claimed by `claimant`.
async fn analyse_again(index: &Index, series_uid: &str, claimant: &Claimant) -> ClaimedJob {
    let Pool::Postgres(pool) = index.pool() else {
        unreachable!()
    };
    sqlx::query("UPDATE series SET state = 'receiving' WHERE series_uid = $1")
        .bind(series_uid)
        .execute(pool)
        .await
        .unwrap();
    index
        .complete_idle_series(jnsc::store::db::now_ms())
        .await
        .unwrap();
    index
        .claim_next_job(claimant)
        .await
        .unwrap()
        .expect("the new job")
}

/// (table, column) of every table the migrations made.
async fn columns(index: &Index) -> BTreeSet<(String, String)> {
    let rows: Vec<(String, String)> = match index.pool() {
        Pool::Sqlite(pool) => sqlx::query_as(
            "SELECT m.name, p.name FROM sqlite_master m, pragma_table_info(m.name) p
             WHERE m.type = 'table' AND m.name NOT LIKE 'sqlite_%' AND m.name NOT LIKE '_sqlx%'",
        )
        .fetch_all(pool)
        .await
        .unwrap(),
        Pool::Postgres(pool) => sqlx::query_as(
            "SELECT table_name::text, column_name::text FROM information_schema.columns
             WHERE table_schema = 'public' AND table_name NOT LIKE '\\_sqlx%'",
        )
        .fetch_all(pool)
        .await
        .unwrap(),
    };
    rows.into_iter().collect()
}

/// Versions and descriptions of the applied migrations.
async fn migrations(index: &Index) -> Vec<(i64, String)> {
    let sql = "SELECT version, description FROM _sqlx_migrations ORDER BY version";
    match index.pool() {
        Pool::Sqlite(pool) => sqlx::query_as(sql).fetch_all(pool).await.unwrap(),
        Pool::Postgres(pool) => sqlx::query_as(sql).fetch_all(pool).await.unwrap(),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn both_engines_hold_the_same_tables_and_columns() {
    let Some(server) = Postgres::start() else {
        return;
    };
    let postgres = Index::connect(&jnsc::config::DbLocation::parse(&server.database("schema")))
        .await
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let sqlite = Index::open(&dir.path().join("jnsc.db")).await.unwrap();
    let (on_sqlite, on_postgres) = (columns(&sqlite).await, columns(&postgres).await);
    assert!(on_sqlite.len() > 80, "{on_sqlite:?}");
    assert_eq!(
        on_sqlite
            .symmetric_difference(&on_postgres)
            .collect::<Vec<_>>(),
        Vec::<&(String, String)>::new(),
        "columns in one schema only"
    );
    assert_eq!(migrations(&sqlite).await, migrations(&postgres).await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_on_postgresql_indexes_queues_and_delivers_through_the_same_queries() {
    let Some(server) = Postgres::start() else {
        return;
    };
    let url = server.database("node");
    let dir = tempfile::tempdir().unwrap();
    // A receiver only: the test claims jobs and outbox rows itself below, as a worker and its
    // sender would, and a node of the default role would race it to them (its sender looks at
    // the outbox every 2 s: it once took a retried row between the test's two steps).
    let node = Node::start_in_with(
        dir.path(),
        "[node]\nname = \"receiver-1\"\nrole = \"receiver\"\n[pipeline]\nstable_age_secs = 1",
        &format!("db = \"{url}\""),
    );
    let (code, status) = node.get("/status", None);
    assert_eq!(code, 200, "{status}");
    assert!(status.contains("\"node\":\"receiver-1\""), "{status}");
    let (code, ready) = node.get("/ready", None);
    assert_eq!(code, 200, "{ready}");
    assert!(ready.contains("postgres://jnsc@127.0.0.1"), "{ready}");
    // Ready without a model: a receiver has none by its role.
    assert!(ready.contains("none: this node is a receiver"), "{ready}");

    let series_dir = tempfile::tempdir().unwrap();
    let series = synth_series(series_dir.path(), 6, 64, 11);
    let out = node.storescu(&["+sd"], &[series_dir.path()]);
    assert!(
        out.status.success(),
        "{:?} {}{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    // A duplicate is counted, not stored twice.
    let out = node.storescu(&[], &[series.files[0].as_path()]);
    assert!(out.status.success());

    let index = Index::connect(&jnsc::config::DbLocation::parse(&url))
        .await
        .unwrap();
    let overview = eventually(Duration::from_secs(30), "the series' job", || async {
        let o = index.overview(10).await.unwrap();
        (o.queue_depth == 1).then_some(o)
    })
    .await;
    assert_eq!(overview.instances, 6);
    assert_eq!(overview.studies, 1);
    assert!(
        overview.instance_bytes > 6 * 64 * 64 * 2,
        "{}",
        overview.instance_bytes
    );
    assert_eq!(
        index.series_files(&series.series_uid).await.unwrap().len(),
        6
    );

    // The worker's and the sender's path, on this node's database.
    let me = claimant("worker-1", 60_000);
    let job = index
        .claim_next_job(&me)
        .await
        .unwrap()
        .expect("a queued job");
    assert_eq!(job.series_uid, series.series_uid);
    assert_eq!(job.study_uid, series.study_uid);
    let running = index.overview(10).await.unwrap().running_by_node;
    assert_eq!(
        running.into_iter().collect::<Vec<_>>(),
        [("worker-1".to_owned(), 1)]
    );
    let history = index
        .study_history(&series.study_uid)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(history.jobs[0].claimed_by.as_deref(), Some("worker-1"));
    assert!(
        index.claim_next_job(&me).await.unwrap().is_none(),
        "claimed once"
    );
    let results = [
        NewResult {
            sop_instance_uid: "1.2.826.0.1.3680043.10.1.1".into(),
            sop_class_uid: "1.2.840.10008.5.1.4.1.1.66.4".into(),
            kind: ResultKind::Seg,
            path: "results/seg.dcm".into(),
        },
        NewResult {
            sop_instance_uid: "1.2.826.0.1.3680043.10.1.2".into(),
            sop_class_uid: "1.2.840.10008.5.1.4.1.1.88.34".into(),
            kind: ResultKind::Sr,
            path: "results/sr.dcm".into(),
        },
    ];
    let destination = pacs();
    let success = JobSuccess {
        timings_json: "{\"total\": 1.0}",
        candidates: 3,
        findings: 1,
        results: &results,
    };
    assert!(
        index
            .finish_job(&job, &success, Some(&destination))
            .await
            .unwrap()
    );
    let due = index.claim_due_outbox(&me, 10).await.unwrap();
    assert_eq!(due.len(), 2);
    assert!(index.next_outbox_due().await.unwrap().is_some());
    let retry = SendOutcome::Retry {
        status: None,
        error: "connection refused".into(),
        next_attempt_at: 0,
    };
    assert!(index.record_send(due[0].id, &me, &retry, 5).await.unwrap());
    assert!(
        !index
            .record_send(due[0].id, &me, &SendOutcome::Sent { status: 0 }, 7)
            .await
            .unwrap(),
        "the attempt released the claim"
    );
    assert_eq!(index.claim_due_outbox(&me, 10).await.unwrap().len(), 1);
    assert!(
        index
            .record_send(due[0].id, &me, &SendOutcome::Sent { status: 0 }, 7)
            .await
            .unwrap()
    );
    let failed = SendOutcome::Failed {
        status: Some(0xA900),
        error: "refused".into(),
    };
    assert!(index.record_send(due[1].id, &me, &failed, 3).await.unwrap());
    let overview = index.overview(10).await.unwrap();
    assert_eq!(overview.jobs(JobState::Done), 1);
    assert_eq!(overview.outbox(OutboxState::Sent), 1);
    assert_eq!(overview.outbox(OutboxState::Failed), 1);
    let history = index
        .study_history(&series.study_uid)
        .await
        .unwrap()
        .expect("the study");
    assert_eq!(history.results.len(), 2);
    assert_eq!(history.sends.len(), 2);
    let attempts: usize = history.sends.iter().map(|s| s.history.len()).sum();
    assert_eq!(attempts, 3);

    // A re-send queues both objects again; a second analysis supersedes what is pending.
    let resolve = |_: &str| Some(destination.clone());
    assert_eq!(
        index
            .resend_study(&series.study_uid, resolve)
            .await
            .unwrap(),
        2
    );
    assert_eq!(index.claim_due_outbox(&me, 10).await.unwrap().len(), 2);
    assert_eq!(index.release_outbox_claims(&me.node).await.unwrap(), 2);
    let second = analyse_again(&index, &series.series_uid, &me).await;
    assert_ne!(second.id, job.id);
    assert!(
        index
            .finish_job(&second, &success, Some(&destination))
            .await
            .unwrap()
    );
    let overview = index.overview(10).await.unwrap();
    assert_eq!(overview.outbox(OutboxState::Pending), 2);
    assert_eq!(overview.outbox(OutboxState::Superseded), 2);
    let third = analyse_again(&index, &series.series_uid, &me).await;
    assert!(
        index
            .fail_job(&third, "test", "failed on purpose")
            .await
            .unwrap()
    );
    assert_eq!(index.overview(10).await.unwrap().jobs(JobState::Failed), 1);
    // A finished job cannot be finished again.
    assert!(
        !index
            .finish_job(&job, &success, Some(&destination))
            .await
            .unwrap()
    );

    // The CHECK constraints refuse a state the code does not know.
    let Pool::Postgres(pool) = index.pool() else {
        unreachable!()
    };
    for update in [
        "UPDATE jobs SET state = 'paused'",
        "UPDATE outbox SET state = 'sending'",
    ] {
        assert!(sqlx::query(update).execute(pool).await.is_err(), "{update}");
    }
    // Checkpoint marks and the durable mark, as recovery reads them: the mark never goes back.
    let mark = jnsc::store::db::now_ms() + 3_600_000;
    let key = "index_durable_until:nodes/receiver-1";
    index.checkpoint(key, mark).await.unwrap();
    index.checkpoint(key, mark - 1000).await.unwrap();
    assert_eq!(index.durable_mark(key).await.unwrap(), Some(mark));
    assert_eq!(
        index
            .durable_mark("index_durable_until:nodes/other")
            .await
            .unwrap(),
        None
    );
    index.close().await;
    node.stop();
}

/// `n` complete series, each with a queued job, without instances (the queue is under test);
/// `batch` keeps their UIDs apart from earlier batches'.
async fn queue_jobs(index: &Index, batch: usize, n: usize) {
    for i in 0..n {
        for sql in [
            format!("INSERT INTO patients (patient_id) VALUES ('P{batch}.{i}')"),
            format!(
                "INSERT INTO studies (study_uid, patient, first_received_at)
                 SELECT '1.2.{batch}.{i}', id, 0 FROM patients WHERE patient_id = 'P{batch}.{i}'"
            ),
            format!(
                "INSERT INTO series (series_uid, study_uid, source_ae, first_received_at,
                                     last_received_at)
                 VALUES ('1.2.{batch}.{i}.1', '1.2.{batch}.{i}', 'CT', 0, 0)"
            ),
        ] {
            let sql = sqlx::AssertSqlSafe(sql);
            match index.pool() {
                Pool::Sqlite(pool) => sqlx::query(sql).execute(pool).await.map(drop),
                Pool::Postgres(pool) => sqlx::query(sql).execute(pool).await.map(drop),
            }
            .unwrap();
        }
    }
    assert_eq!(index.complete_idle_series(1).await.unwrap().len(), n);
}

/// Claims by several workers at once on `index`: each job is taken once; a job whose lease ran
/// out is queued again, taken by another worker, and only that one can finish it; a job whose
/// leases keep running out fails for good.
async fn claims_and_leases(index: Index) {
    queue_jobs(&index, 1, 20).await;
    let mut workers = tokio::task::JoinSet::new();
    for w in 0..8 {
        let index = index.clone();
        workers.spawn(async move {
            let me = claimant(&format!("worker-{w}"), 60_000);
            let mut taken = Vec::new();
            while let Some(job) = index.claim_next_job(&me).await.unwrap() {
                assert_eq!(job.claimed_by, me.node);
                taken.push(job.id);
            }
            taken
        });
    }
    let mut taken: Vec<i64> = workers.join_all().await.into_iter().flatten().collect();
    taken.sort();
    let before = taken.len();
    taken.dedup();
    assert_eq!(
        (before, taken.len()),
        (20, 20),
        "every job claimed exactly once"
    );
    assert_eq!(
        index.reclaim_expired_jobs(3).await.unwrap(),
        (0, 0),
        "leases hold"
    );

    // A worker that stops renewing: its job goes to another, and its results are refused.
    queue_jobs(&index, 2, 1).await;
    let (dead, alive) = (claimant("dead", 1), claimant("alive", 60_000));
    let lost = index.claim_next_job(&dead).await.unwrap().unwrap();
    tokio::time::sleep(Duration::from_millis(20)).await;
    assert_eq!(index.reclaim_expired_jobs(3).await.unwrap(), (1, 0));
    let again = index.claim_next_job(&alive).await.unwrap().unwrap();
    assert_eq!(again.id, lost.id);
    assert!(!index.renew_lease(&lost, &dead).await.unwrap());
    assert!(index.renew_lease(&again, &alive).await.unwrap());
    let success = no_results();
    assert!(!index.finish_job(&lost, &success, None).await.unwrap());
    assert!(!index.fail_job(&lost, "test", "late").await.unwrap());
    assert!(index.finish_job(&again, &success, None).await.unwrap());

    // Leases that keep running out: failed for good at the third claim.
    queue_jobs(&index, 3, 1).await;
    for attempt in 1..=3 {
        index.claim_next_job(&dead).await.unwrap().unwrap();
        tokio::time::sleep(Duration::from_millis(20)).await;
        let expected = if attempt < 3 { (1, 0) } else { (0, 1) };
        assert_eq!(index.reclaim_expired_jobs(3).await.unwrap(), expected);
    }
    let overview = index.overview(10).await.unwrap();
    assert_eq!(overview.jobs(JobState::Failed), 1);
    assert_eq!(overview.jobs(JobState::Done), 1);
    assert_eq!(overview.queue_depth, 0);
    outbox_claims(&index).await;
    index.close().await;
}

/// Outbox rows claimed by several senders at once: each row is taken by one; a claim holds
/// until its lease runs out or the attempt is recorded, and only its holder records it.
async fn outbox_claims(index: &Index) {
    queue_jobs(index, 4, 1).await;
    let worker = claimant("worker", 60_000);
    let job = index.claim_next_job(&worker).await.unwrap().unwrap();
    let results: Vec<NewResult> = (0..30)
        .map(|i| NewResult {
            sop_instance_uid: format!("1.2.826.0.1.3680043.10.4.{i}"),
            sop_class_uid: "1.2.840.10008.5.1.4.1.1.88.34".into(),
            kind: ResultKind::Sr,
            path: format!("results/{i}.dcm"),
        })
        .collect();
    let success = JobSuccess {
        results: &results,
        ..no_results()
    };
    assert!(
        index
            .finish_job(&job, &success, Some(&pacs()))
            .await
            .unwrap()
    );
    let mut senders = tokio::task::JoinSet::new();
    for s in 0..4 {
        let index = index.clone();
        senders.spawn(async move {
            let me = claimant(&format!("sender-{s}"), 60_000);
            let mut taken = Vec::new();
            loop {
                let due = index.claim_due_outbox(&me, 3).await.unwrap();
                if due.is_empty() {
                    return taken;
                }
                taken.extend(due.iter().map(|item| item.id));
            }
        });
    }
    let mut taken: Vec<i64> = senders.join_all().await.into_iter().flatten().collect();
    taken.sort();
    let before = taken.len();
    taken.dedup();
    assert_eq!((before, taken.len()), (30, 30), "every row claimed once");
    assert!(
        !index
            .record_send(
                taken[0],
                &claimant("intruder", 60_000),
                &SendOutcome::Sent { status: 0 },
                1
            )
            .await
            .unwrap(),
        "only the holder records an attempt"
    );
    // A sender that died: its claim runs out, another takes the row.
    let (dead, alive) = (claimant("dead-sender", 1), claimant("live-sender", 60_000));
    let mut released = 0;
    for s in 0..4 {
        released += index
            .release_outbox_claims(&format!("sender-{s}"))
            .await
            .unwrap();
    }
    assert_eq!(released, 30, "a restarted sender frees its claims");
    let lost = index.claim_due_outbox(&dead, 1).await.unwrap();
    assert_eq!(lost.len(), 1);
    assert!(index.next_outbox_due().await.unwrap().is_some());
    tokio::time::sleep(Duration::from_millis(20)).await;
    let again = index.claim_due_outbox(&alive, 1).await.unwrap();
    assert_eq!(again[0].id, lost[0].id);
    assert_eq!(
        index
            .renew_outbox_claims(&[lost[0].id], &dead)
            .await
            .unwrap(),
        0
    );
    assert_eq!(
        index
            .renew_outbox_claims(&[lost[0].id], &alive)
            .await
            .unwrap(),
        1
    );
    let sent = SendOutcome::Sent { status: 0 };
    assert!(
        !index
            .record_send(lost[0].id, &dead, &sent, 1)
            .await
            .unwrap()
    );
    assert!(
        index
            .record_send(again[0].id, &alive, &sent, 1)
            .await
            .unwrap()
    );
    assert_eq!(
        index.overview(10).await.unwrap().outbox(OutboxState::Sent),
        1
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn jobs_are_claimed_once_and_expired_leases_go_to_another_worker_on_postgresql() {
    let Some(server) = Postgres::start() else {
        return;
    };
    let url = server.database("leases");
    claims_and_leases(
        Index::connect(&jnsc::config::DbLocation::parse(&url))
            .await
            .unwrap(),
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn jobs_are_claimed_once_and_expired_leases_go_to_another_worker_on_sqlite() {
    let dir = tempfile::tempdir().unwrap();
    claims_and_leases(Index::open(&dir.path().join("jnsc.db")).await.unwrap()).await;
}

/// Two receivers on one PostgreSQL index (database `name` of a fresh server), each in its own
/// area (`nodes/rx-a`, `nodes/rx-b`) of one storage directory, with an association each.
struct TwoReceivers {
    index: Index,
    root: tempfile::TempDir,
    a: jnsc::store::InstanceStore,
    b: jnsc::store::InstanceStore,
    associations: (i64, i64),
    _server: Postgres,
}

impl TwoReceivers {
    async fn start(name: &str) -> Option<TwoReceivers> {
        let server = Postgres::start()?;
        let url = server.database(name);
        let index = Index::connect(&jnsc::config::DbLocation::parse(&url))
            .await
            .unwrap();
        let root = tempfile::tempdir().unwrap();
        let receiver = |name: &str| {
            let area = std::path::Path::new("nodes").join(name);
            let files = jnsc::store::files::FileStore::open(root.path(), &area).unwrap();
            jnsc::store::InstanceStore::new(files, index.clone())
        };
        let (a, b) = (receiver("rx-a"), receiver("rx-b"));
        let mut associations = Vec::new();
        for (node, peer) in [("rx-a", "127.0.0.1:1"), ("rx-b", "127.0.0.1:2")] {
            associations.push(
                index
                    .begin_association(node, "PACS", "JNSC", peer)
                    .await
                    .unwrap(),
            );
        }
        Some(TwoReceivers {
            associations: (associations[0], associations[1]),
            index,
            root,
            a,
            b,
            _server: server,
        })
    }
}

/// An instance of a synthetic series as a receiver gets it: attributes, data set, transfer
/// syntax.
struct Instance {
    attributes: jnsc::store::instance::InstanceAttributes,
    data_set: std::sync::Arc<Vec<u8>>,
    transfer_syntax: String,
}

impl Instance {
    fn read(file: &std::path::Path) -> Self {
        let (data_set, transfer_syntax) = common::data_set_of(file);
        let attributes =
            jnsc::store::instance::parse_data_set(&data_set, &transfer_syntax).unwrap();
        Instance {
            attributes,
            data_set: std::sync::Arc::new(data_set),
            transfer_syntax,
        }
    }

    /// What a receiver's C-STORE hands its store: this instance from PACS, on `association`.
    fn received(&self, association: i64) -> jnsc::store::ReceivedInstance {
        jnsc::store::ReceivedInstance {
            attributes: self.attributes.clone(),
            data_set: std::sync::Arc::clone(&self.data_set),
            transfer_syntax: self.transfer_syntax.clone(),
            calling_ae: "PACS".into(),
            called_ae: "JNSC".into(),
            association,
        }
    }
}

/// Two receivers on one PostgreSQL index, each in its own area of one storage directory, given
/// the same instances at the same moment (a PACS retrying on the other receiver): both answer
/// Success, and once indexed one has stored each instance and the other found it a duplicate
/// (both may have found it new and written it; the second row is refused, and that receiver
/// stores it once more and removes its copy), and nothing is lost.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_receivers_given_one_instance_at_once_both_succeed_and_store_it_once() {
    use jnsc::store::StoreOutcome;
    let Some(site) = TwoReceivers::start("race").await else {
        return;
    };
    let series_dir = tempfile::tempdir().unwrap();
    let series = synth_series(series_dir.path(), 24, 64, 5);
    for file in &series.files {
        let instance = Instance::read(file);
        let (from_a, from_b) = tokio::join!(
            site.a.store(instance.received(site.associations.0)),
            site.b.store(instance.received(site.associations.1))
        );
        let (from_a, from_b) = tokio::join!(from_a.unwrap().indexed(), from_b.unwrap().indexed());
        let mut outcomes = [from_a, from_b];
        outcomes.sort_by_key(|o| format!("{o:?}"));
        assert_eq!(outcomes, [StoreOutcome::Duplicate, StoreOutcome::Stored]);
    }
    assert_eq!(site.index.overview(1).await.unwrap().instances, 24);
    let paths = site.index.series_files(&series.series_uid).await.unwrap();
    assert!(paths.iter().all(|p| site.root.path().join(p).is_file()));
    // The copies whose rows were refused are gone: one file per instance in the two areas.
    let files = walkdir(site.root.path())
        .into_iter()
        .filter(|p| p.extension().is_some_and(|e| e == "dcm"))
        .count();
    assert_eq!(files, 24);
    site.index.close().await;
}

/// Every file under `dir`, recursively.
fn walkdir(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
    let mut files = Vec::new();
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            files.extend(walkdir(&path));
        } else {
            files.push(path);
        }
    }
    files
}

/// A receiver that stopped between writing an instance and its index row being refused (another
/// receiver had just stored the same one) finds the stray file at its next start: recovery
/// quarantines it rather than failing the start, and the index keeps the other's copy.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stray_copy_of_another_receiver_s_instance_is_quarantined_at_start() {
    use jnsc::store::{StoreOutcome, recovery};
    let Some(site) = TwoReceivers::start("stray").await else {
        return;
    };
    let series_dir = tempfile::tempdir().unwrap();
    let series = synth_series(series_dir.path(), 1, 64, 6);
    let instance = Instance::read(&series.files[0]);
    let stored = site
        .a
        .store(instance.received(site.associations.0))
        .await
        .unwrap()
        .indexed()
        .await;
    assert_eq!(stored, StoreOutcome::Stored);
    // The copy B wrote before its row was refused, where B writes.
    let root = site.root.path();
    let indexed = site.index.series_files(&series.series_uid).await.unwrap();
    let stray = site
        .b
        .files()
        .instance_path(&instance.attributes.file_key(), 1);
    std::fs::create_dir_all(root.join(&stray).parent().unwrap()).unwrap();
    std::fs::copy(root.join(&indexed[0]), root.join(&stray)).unwrap();

    let report = recovery::recover(&site.b).await.unwrap();
    assert_eq!((report.reindexed, report.quarantined), (0, 1));
    assert!(!root.join(&stray).exists());
    assert_eq!(
        root.join("nodes/rx-b/quarantine")
            .read_dir()
            .unwrap()
            .count(),
        1
    );
    assert_eq!(
        site.index.series_files(&series.series_uid).await.unwrap(),
        indexed
    );
    site.index.close().await;
}
