//! Benchmarks of several nodes on one PostgreSQL queue, against a server the caller names
//! (`scripts/bench-postgres.sh` starts a scratch one from Debian's packages). Each round runs on
//! a fresh database created on that server.
//!
//! - `bench queue`: claims per second by 8 workers at once, each claiming the oldest queued job
//!   and finishing it with no results, until the queue is empty; on PostgreSQL and, in the same
//!   run, on SQLite (one file, one writer at a time).
//! - `bench receivers`: ingest of one CT series sent as 2 associations at once (DCMTK storescu,
//!   `TCP_NODELAY=1`), to one receiver or one association to each of 2 receivers, all on one
//!   PostgreSQL index and one storage directory.

use super::{Guard, STORESCU, Sending, bench_series, median, send, start_node_with};
use crate::store::db::{DbLocation, Index, now_ms, on_pool};
use crate::store::work::{Claimant, JobSuccess};
use anyhow::{Context, bail};
use std::path::Path;
use std::time::{Duration, Instant};

/// Workers claiming at once in `bench queue`.
const QUEUE_WORKERS: usize = 8;

/// The URL of database `name` on the server of `server` (a URL of any database there).
fn database_url(server: &str, name: &str) -> anyhow::Result<String> {
    let (scheme, rest) = server
        .split_once("://")
        .context("the server must be a postgres:// URL")?;
    let (authority, _) = rest.split_once('/').unwrap_or((rest, ""));
    let authority = authority.split('?').next().unwrap_or(authority);
    Ok(format!("{scheme}://{authority}/{name}"))
}

/// Creates an empty database `name` (dropping one left by an earlier run) on `server`.
async fn fresh_database(server: &str, name: &str) -> anyhow::Result<String> {
    use sqlx::Connection;
    let mut admin = sqlx::PgConnection::connect(server)
        .await
        .with_context(|| format!("cannot connect to {}", DbLocation::parse(server)))?;
    for sql in [
        format!("DROP DATABASE IF EXISTS {name}"),
        format!("CREATE DATABASE {name}"),
    ] {
        sqlx::query(sqlx::AssertSqlSafe(sql))
            .execute(&mut admin)
            .await?;
    }
    admin.close().await?;
    database_url(server, name)
}

/// `jnsc bench queue`.
pub fn queue(server: &str, jobs: usize, rounds: usize) -> anyhow::Result<()> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    runtime.block_on(async {
        println!(
            "{jobs} queued jobs with no instances, {QUEUE_WORKERS} workers claiming at once; \
             each claim takes the oldest queued job and finishes it (no results)"
        );
        let scratch = std::env::temp_dir().join(format!("jnsc-bench-queue-{}", std::process::id()));
        std::fs::create_dir_all(&scratch)?;
        let (mut postgres, mut sqlite) = (Vec::new(), Vec::new());
        for round in 0..rounds {
            let url = fresh_database(server, &format!("jnsc_bench_queue_{round}")).await?;
            let on_postgres = claims_per_second(&url, jobs).await?;
            let file = scratch.join(format!("queue-{round}.db"));
            let on_sqlite = claims_per_second(&file.to_string_lossy(), jobs).await?;
            println!(
                "round {}: PostgreSQL {on_postgres:.0} claims/s, SQLite {on_sqlite:.0} claims/s",
                round + 1
            );
            postgres.push(on_postgres);
            sqlite.push(on_sqlite);
        }
        let (postgres, sqlite) = (median(&mut postgres), median(&mut sqlite));
        println!("median: PostgreSQL {postgres:.0} claims/s, SQLite {sqlite:.0} claims/s");
        println!("ratio PostgreSQL/SQLite: {:.2}", postgres / sqlite);
        let _ = std::fs::remove_dir_all(&scratch);
        anyhow::Ok(())
    })
}

/// Queues `jobs` empty jobs in the index at `location`, then lets the workers drain it.
async fn claims_per_second(location: &str, jobs: usize) -> anyhow::Result<f64> {
    let index = Index::connect(&DbLocation::parse(location)).await?;
    queue_empty_jobs(&index, jobs).await?;
    let started = Instant::now();
    let mut workers = tokio::task::JoinSet::new();
    for w in 0..QUEUE_WORKERS {
        let index = index.clone();
        workers.spawn(async move {
            let me = Claimant {
                node: format!("bench-{w}"),
                lease: Duration::from_secs(60),
            };
            let done = JobSuccess {
                timings_json: "{}",
                candidates: 0,
                findings: 0,
                results: &[],
            };
            let mut claimed = 0usize;
            while let Some(job) = index.claim_next_job(&me).await? {
                if !index.finish_job(&job, &done, None).await? {
                    bail!("job {} was lost while its lease held", job.id);
                }
                claimed += 1;
            }
            anyhow::Ok(claimed)
        });
    }
    let mut claimed = 0;
    for result in workers.join_all().await {
        claimed += result?;
    }
    let elapsed = started.elapsed().as_secs_f64();
    index.close().await;
    if claimed != jobs {
        bail!("{claimed} claims for {jobs} jobs");
    }
    Ok(claimed as f64 / elapsed)
}

/// `n` complete series of one study, with a queued job each and no instances.
async fn queue_empty_jobs(index: &Index, n: usize) -> anyhow::Result<()> {
    on_pool!(index.pool(), pool => {
        let mut tx = pool.begin().await?;
        let patient: i64 =
            sqlx::query_scalar("INSERT INTO patients (patient_id) VALUES ('BENCH') RETURNING id")
                .fetch_one(&mut *tx)
                .await?;
        sqlx::query("INSERT INTO studies (study_uid, patient, first_received_at) VALUES ('2.25.1', $1, 0)")
            .bind(patient)
            .execute(&mut *tx)
            .await?;
        for i in 0..n {
            sqlx::query(
                "INSERT INTO series (series_uid, study_uid, source_ae, first_received_at,
                                     last_received_at)
                 VALUES ($1, '2.25.1', 'BENCH', 0, 0)",
            )
            .bind(format!("2.25.1.{i}"))
            .execute(&mut *tx)
            .await?;
        }
        tx.commit().await?;
        anyhow::Ok(())
    })?;
    let queued = index.complete_idle_series(now_ms()).await?.len();
    if queued != n {
        bail!("{queued} jobs queued for {n} series");
    }
    Ok(())
}

/// `jnsc bench receivers`.
pub fn receivers(server: &str, slices: usize, size: u16, rounds: usize) -> anyhow::Result<()> {
    if !Path::new(STORESCU).exists() {
        bail!("{STORESCU} not found: install DCMTK (apt-get install -y dcmtk)");
    }
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let (work, data) = bench_series("receivers", slices, size)?;
    let files = crate::volume::series::files_in(&data)?;
    println!(
        "series: {slices} slices of {size}x{size}, sent as 2 associations at once by {STORESCU} \
         (TCP_NODELAY=1) over loopback; receivers on one PostgreSQL index and one storage directory"
    );
    let (mut one, mut two) = (Vec::new(), Vec::new());
    for round in 0..rounds {
        for receivers in [1, 2] {
            let name = format!("jnsc_bench_receivers_{round}_{receivers}");
            let url = runtime.block_on(fresh_database(server, &name))?;
            let dir = work.join(&name);
            let nodes: Vec<(Guard, u16)> = (0..receivers)
                .map(|r| {
                    start_node_with(
                        &dir.join(format!("rx-{r}")),
                        &format!("[node]\nname = \"rx-{r}\"\nrole = \"receiver\"\n"),
                        &format!("dir = \"{}\"\ndb = \"{url}\"", dir.join("shared").display()),
                    )
                })
                .collect::<anyhow::Result<_>>()?;
            let ports: Vec<u16> = nodes.iter().map(|(_, port)| *port).collect();
            let sending = Sending {
                files: &files,
                nodelay: true,
                associations: 2,
            };
            let rate = send(&sending, "JNSC", &ports)?;
            drop(nodes);
            println!(
                "round {}: {receivers} receiver(s) {rate:.1} inst/s",
                round + 1
            );
            if receivers == 1 { &mut one } else { &mut two }.push(rate);
        }
    }
    let (one, two) = (median(&mut one), median(&mut two));
    println!("median: 1 receiver {one:.1} inst/s, 2 receivers {two:.1} inst/s");
    println!("ratio 2 receivers / 1: {:.2}", two / one);
    let _ = std::fs::remove_dir_all(&work);
    Ok(())
}

#[cfg(test)]
mod tests {
    #[test]
    fn a_database_of_the_server_is_named_by_its_path() {
        assert_eq!(
            super::database_url("postgres://jnsc@127.0.0.1:5433/postgres", "b").unwrap(),
            "postgres://jnsc@127.0.0.1:5433/b"
        );
        assert_eq!(
            super::database_url("postgresql://u:p@h", "b").unwrap(),
            "postgresql://u:p@h/b"
        );
    }
}
