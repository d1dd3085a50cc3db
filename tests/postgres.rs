//! The index on PostgreSQL (`[storage] db = "postgres://..."`), against a real server from
//! Debian's packages started by the test: both engines' migrations give the same tables and
//! columns, and a node on PostgreSQL receives a series from DCMTK, indexes it, queues its job,
//! and takes it through claim, results, delivery attempts and a re-send with the same queries
//! as on SQLite, its state CHECK constraints refusing what the SQLite triggers refuse.

mod common;

use common::postgres::Postgres;
use common::{Node, eventually, synth_series};
use jnsc::store::db::{Index, Pool};
use jnsc::store::work::{
    Destination, JobState, JobSuccess, NewResult, OutboxState, ResultKind, SendOutcome,
};
use std::collections::BTreeSet;
use std::time::Duration;

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
    let node = Node::start_in_with(
        dir.path(),
        "[pipeline]\nstable_age_secs = 1\nanalyze = false",
        &format!("db = \"{url}\""),
    );
    let (code, ready) = node.get("/ready", None);
    assert_eq!(code, 200, "{ready}");
    assert!(ready.contains("postgres://jnsc@127.0.0.1"), "{ready}");

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
    let job = index.claim_next_job().await.unwrap().expect("a queued job");
    assert_eq!(job.series_uid, series.series_uid);
    assert_eq!(job.study_uid, series.study_uid);
    assert!(
        index.claim_next_job().await.unwrap().is_none(),
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
    let destination = Destination {
        ae_title: "PACS".into(),
        host: "127.0.0.1".into(),
        port: 11112,
    };
    let success = JobSuccess {
        timings_json: "{\"total\": 1.0}",
        candidates: 3,
        findings: 1,
        results: &results,
    };
    index
        .finish_job(&job, &success, Some(&destination))
        .await
        .unwrap();
    let due = index.due_outbox(10).await.unwrap();
    assert_eq!(due.len(), 2);
    assert!(index.next_outbox_due().await.unwrap().is_some());
    let retry = SendOutcome::Retry {
        status: None,
        error: "connection refused".into(),
        next_attempt_at: 0,
    };
    index.record_send(due[0].id, &retry, 5).await.unwrap();
    index
        .record_send(due[0].id, &SendOutcome::Sent { status: 0 }, 7)
        .await
        .unwrap();
    let failed = SendOutcome::Failed {
        status: Some(0xA900),
        error: "refused".into(),
    };
    index.record_send(due[1].id, &failed, 3).await.unwrap();
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
    assert_eq!(index.due_outbox(10).await.unwrap().len(), 2);
    index
        .finish_job(&job, &success, Some(&destination))
        .await
        .unwrap();
    let overview = index.overview(10).await.unwrap();
    assert_eq!(overview.outbox(OutboxState::Pending), 2);
    assert_eq!(overview.outbox(OutboxState::Superseded), 2);
    index
        .fail_job(job.id, "test", "failed on purpose")
        .await
        .unwrap();
    assert_eq!(index.overview(10).await.unwrap().jobs(JobState::Failed), 1);

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
    index.checkpoint(mark).await.unwrap();
    index.checkpoint(mark - 1000).await.unwrap();
    assert_eq!(index.durable_mark().await.unwrap(), Some(mark));
    index.close().await;
    node.stop();
}
