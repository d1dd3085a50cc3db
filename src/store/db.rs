//! The index (sqlx): associations, patients, studies, series, instances, failures and jobs, in
//! SQLite (embedded, the default) or PostgreSQL (shared by several nodes). Each query is written
//! once, in the SQL both engines speak (`$N` parameters, `ON CONFLICT`, `RETURNING`), and
//! compiled for both by [`on_pool!`]; the few statements that differ (checkpoints) match on
//! [`Pool`]. The schemas are `migrations/` and `migrations/postgres/`, kept in step (checked by
//! tests/postgres.rs).
//!
//! SQLite: one writer connection: SQLite serialises writers anyway, and a single connection
//! never meets SQLITE_BUSY. A connection that a failed write left inside a transaction is closed
//! and replaced (`healthy_after_release`), so the index recovers from a full disk. WAL with
//! `synchronous = NORMAL`: a commit survives a crash of the process at once, and a power cut
//! from the next checkpoint on. The instance files are fsynced before Success is sent;
//! `recovery` re-indexes, at start, any file newer than the last checkpoint mark, so the index
//! never loses an acknowledged instance either. PostgreSQL: a commit is durable when it
//! returns.

use crate::store::instance::InstanceAttributes;
use crate::store::state::JobState;
use sqlx::postgres::{PgPool, PgPoolOptions};
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions, SqliteSynchronous};
use sqlx::{FromRow, SqlitePool};
use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

pub type DbResult<T> = Result<T, sqlx::Error>;

/// Where the index lives (`storage.db`).
#[derive(Clone, PartialEq, Eq)]
pub enum DbLocation {
    /// An SQLite file, embedded in the node.
    Sqlite(PathBuf),
    /// A PostgreSQL connection URL (libpq's form; a password in it is never logged).
    Postgres(String),
}

impl DbLocation {
    /// `postgres://...` or `postgresql://...` is PostgreSQL; anything else an SQLite file, with
    /// or without a `sqlite:` (or `sqlite://`) prefix.
    pub fn parse(text: &str) -> Self {
        if text.starts_with("postgres://") || text.starts_with("postgresql://") {
            return Self::Postgres(text.to_owned());
        }
        let path = text
            .strip_prefix("sqlite://")
            .or_else(|| text.strip_prefix("sqlite:"))
            .unwrap_or(text);
        Self::Sqlite(PathBuf::from(path))
    }
}

impl<'de> serde::Deserialize<'de> for DbLocation {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        Ok(Self::parse(&<String as serde::Deserialize>::deserialize(
            deserializer,
        )?))
    }
}

/// The path, or the URL with its password masked: safe for logs and `/status`.
impl std::fmt::Display for DbLocation {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Sqlite(path) => write!(f, "{}", path.display()),
            Self::Postgres(url) => {
                let (scheme, rest) = url.split_once("://").unwrap_or(("postgres", url));
                match rest.split_once('@') {
                    Some((user_info, host)) => {
                        let user = user_info.split_once(':').map_or(user_info, |(u, _)| u);
                        let masked = if user_info.contains(':') { ":***" } else { "" };
                        write!(f, "{scheme}://{user}{masked}@{host}")
                    }
                    None => write!(f, "{scheme}://{rest}"),
                }
            }
        }
    }
}

impl std::fmt::Debug for DbLocation {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "DbLocation({self})")
    }
}

/// The connection pool of the index's database.
#[derive(Debug, Clone)]
pub enum Pool {
    Sqlite(SqlitePool),
    Postgres(PgPool),
}

/// Evaluates `$body` with `$pool` bound to the pool `$on` holds: one query text, compiled for
/// SQLite and for PostgreSQL.
macro_rules! on_pool {
    ($on:expr, $pool:ident => $body:expr) => {
        match $on {
            $crate::store::db::Pool::Sqlite($pool) => $body,
            $crate::store::db::Pool::Postgres($pool) => $body,
        }
    };
}
pub(crate) use on_pool;

/// Milliseconds since the Unix epoch, the unit of every time column.
pub fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

/// Handle to the index database.
#[derive(Debug, Clone)]
pub struct Index {
    pool: Pool,
    /// Studies whose patient and study rows this process has written: later instances of the
    /// same study skip those two statements (one less round trip each on the ingest path).
    recorded_studies: Arc<Mutex<HashSet<String>>>,
}

/// Bound on `recorded_studies` (it is cleared when full; that costs two statements once).
const RECORDED_STUDIES_MAX: usize = 10_000;

/// The current version of a stored instance, as the index knows it.
#[derive(Debug, Clone, FromRow)]
pub struct StoredInstance {
    pub series_uid: String,
    pub path: String,
    pub version: i64,
    pub size_bytes: i64,
    pub transfer_syntax: String,
}

/// A file just written for an instance.
#[derive(Debug, Clone)]
pub struct NewFile<'a> {
    pub path: &'a str,
    pub size_bytes: i64,
    pub version: i64,
    pub transfer_syntax: &'a str,
    /// True when no version of this SOP instance was indexed before (the series gains one).
    pub new_instance: bool,
}

/// One stored file to index, with who sent it (`Index::record_instances`).
#[derive(Debug, Clone)]
pub struct InstanceRow<'a> {
    pub attributes: &'a InstanceAttributes,
    pub file: NewFile<'a>,
    pub association: Option<i64>,
    pub source_ae: &'a str,
}

/// A job row created when a series became complete.
#[derive(Debug, Clone, PartialEq, FromRow)]
pub struct Job {
    pub id: i64,
    pub series_uid: String,
    pub state: JobState,
    pub instance_count: i64,
}

/// How an association ended, for the association log.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AssociationEnd {
    Released,
    AbortedByPeer,
    AbortedByUs,
    ConnectionLost,
    TimedOut,
}

impl AssociationEnd {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Released => "released",
            Self::AbortedByPeer => "aborted_by_peer",
            Self::AbortedByUs => "aborted_by_us",
            Self::ConnectionLost => "connection_lost",
            Self::TimedOut => "timed_out",
        }
    }
}

/// Index rows per multi-row statement: 13 parameters each, far below SQLite's 32766 and
/// PostgreSQL's 65535 parameters per statement.
const ROWS_PER_STATEMENT: usize = 256;

/// One series of a batch of index rows: its first and last row, and how many of its rows are
/// instances not indexed before.
struct BatchSeries<'b, 'a> {
    first: &'b InstanceRow<'a>,
    last: &'b InstanceRow<'a>,
    new_instances: i64,
}

impl<'b, 'a> BatchSeries<'b, 'a> {
    /// The series of `rows`, in the order of their first rows.
    fn of(rows: &'b [InstanceRow<'a>]) -> Vec<Self> {
        let mut series: Vec<Self> = Vec::new();
        for row in rows {
            let uid = row.attributes.series_uid.as_str();
            let new = i64::from(row.file.new_instance);
            match series
                .iter_mut()
                .find(|s| s.first.attributes.series_uid.as_str() == uid)
            {
                Some(known) => {
                    known.last = row;
                    known.new_instances += new;
                }
                None => series.push(Self {
                    first: row,
                    last: row,
                    new_instances: new,
                }),
            }
        }
        series
    }
}

/// How many rows of `rows` each association stored, in the order of their first rows.
fn stored_per_association(rows: &[InstanceRow<'_>]) -> Vec<(i64, i64)> {
    let mut counts: Vec<(i64, i64)> = Vec::new();
    for association in rows.iter().filter_map(|row| row.association) {
        match counts.iter_mut().find(|(id, _)| *id == association) {
            Some((_, stored)) => *stored += 1,
            None => counts.push((association, 1)),
        }
    }
    counts
}

/// Whether a connection given back to the pool may be used again. One still inside a
/// transaction (a COMMIT or ROLLBACK that failed, e.g. on "database or disk is full") would hold
/// the write lock for ever and make every later commit a savepoint of that transaction, never
/// committed: it is closed instead (which rolls the transaction back), and the pool opens a fresh
/// connection for the next write. sqlx counts a transaction as open until its COMMIT or ROLLBACK
/// succeeds, so its count is what is asked: no statement is sent (a probe here ran twice for every
/// instance stored, a quarter of the index's round trips on the ingest path).
async fn healthy_after_release(conn: &mut sqlx::SqliteConnection) -> DbResult<bool> {
    use sqlx::Connection;
    if conn.is_in_transaction() {
        tracing::warn!("index connection left inside a transaction: reopening it");
        return Ok(false);
    }
    Ok(true)
}

impl Index {
    /// Opens the index where the configuration says (`storage.db`), creating an SQLite file if
    /// needed, and applies pending migrations.
    pub async fn connect(location: &DbLocation) -> DbResult<Self> {
        match location {
            DbLocation::Sqlite(path) => Self::open(path).await,
            DbLocation::Postgres(url) => {
                let pool = PgPoolOptions::new()
                    .max_connections(8)
                    .acquire_timeout(Duration::from_secs(30))
                    .connect(url)
                    .await?;
                sqlx::migrate!("./migrations/postgres").run(&pool).await?;
                Ok(Self::with_pool(Pool::Postgres(pool)))
            }
        }
    }

    /// Opens (creating if needed) an SQLite index and applies pending migrations.
    pub async fn open(path: &Path) -> DbResult<Self> {
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir).map_err(sqlx::Error::Io)?;
        }
        let options = SqliteConnectOptions::new()
            .filename(path)
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal)
            .synchronous(SqliteSynchronous::Normal)
            .foreign_keys(true)
            .busy_timeout(Duration::from_secs(30));
        let pool = SqlitePoolOptions::new()
            .max_connections(1)
            .after_release(|conn, _| Box::pin(healthy_after_release(conn)))
            .connect_with(options)
            .await?;
        sqlx::migrate!("./migrations").run(&pool).await?;
        Ok(Self::with_pool(Pool::Sqlite(pool)))
    }

    fn with_pool(pool: Pool) -> Self {
        Self {
            pool,
            recorded_studies: Arc::default(),
        }
    }

    pub fn pool(&self) -> &Pool {
        &self.pool
    }

    /// Whether the database answers.
    pub async fn ping(&self) -> DbResult<()> {
        on_pool!(self.pool(), pool => {
            sqlx::query_scalar::<_, i32>("SELECT 1").fetch_one(pool).await.map(drop)
        })
    }

    /// Closes every connection (at shutdown).
    pub async fn close(&self) {
        on_pool!(self.pool(), pool => pool.close().await)
    }

    /// Starts a row in the association log of `node` (the node serving it); returns its id.
    pub async fn begin_association(
        &self,
        node: &str,
        calling_ae: &str,
        called_ae: &str,
        peer_addr: &str,
    ) -> DbResult<i64> {
        on_pool!(self.pool(), pool => {
            sqlx::query_scalar(
                "INSERT INTO associations (calling_ae, called_ae, peer_addr, started_at, node)
                 VALUES ($1, $2, $3, $4, $5) RETURNING id",
            )
            .bind(calling_ae)
            .bind(called_ae)
            .bind(peer_addr)
            .bind(now_ms())
            .bind(node)
            .fetch_one(pool)
            .await
        })
    }

    pub async fn end_association(
        &self,
        id: i64,
        end: AssociationEnd,
        reason: Option<&str>,
    ) -> DbResult<()> {
        on_pool!(self.pool(), pool => {
            sqlx::query(
                "UPDATE associations SET ended_at = $1, end_state = $2, end_reason = $3 WHERE id = $4",
            )
            .bind(now_ms())
            .bind(end.as_str())
            .bind(reason)
            .bind(id)
            .execute(pool)
            .await?;
            Ok(())
        })
    }

    /// Associations `node` left 'open' when it stopped without closing them (and those of rows
    /// from before nodes were named). Other nodes' open associations are theirs.
    pub async fn close_dangling_associations(&self, node: &str) -> DbResult<u64> {
        on_pool!(self.pool(), pool => {
            let done = sqlx::query(
                "UPDATE associations SET ended_at = $1, end_state = 'connection_lost',
                 end_reason = 'node stopped while the association was open'
                 WHERE end_state = 'open' AND (node = $2 OR node IS NULL)",
            )
            .bind(now_ms())
            .bind(node)
            .execute(pool)
            .await?;
            Ok(done.rows_affected())
        })
    }

    pub async fn record_rejected_association(
        &self,
        calling_ae: Option<&str>,
        called_ae: Option<&str>,
        peer_addr: &str,
        reason: &str,
    ) -> DbResult<()> {
        on_pool!(self.pool(), pool => {
            sqlx::query(
                "INSERT INTO rejected_associations (calling_ae, called_ae, peer_addr, at, reason)
                 VALUES ($1, $2, $3, $4, $5)",
            )
            .bind(calling_ae)
            .bind(called_ae)
            .bind(peer_addr)
            .bind(now_ms())
            .bind(reason)
            .execute(pool)
            .await?;
            Ok(())
        })
    }

    /// The current version of an instance, if it was stored before.
    pub async fn find_instance(&self, sop_instance_uid: &str) -> DbResult<Option<StoredInstance>> {
        on_pool!(self.pool(), pool => {
            sqlx::query_as(
                "SELECT series_uid, path, version, size_bytes, transfer_syntax
                 FROM instances WHERE sop_instance_uid = $1",
            )
            .bind(sop_instance_uid)
            .fetch_optional(pool)
            .await
        })
    }

    /// Where version `version` of an instance is indexed, if it is.
    pub async fn version_path(
        &self,
        sop_instance_uid: &str,
        version: i64,
    ) -> DbResult<Option<String>> {
        on_pool!(self.pool(), pool => {
            sqlx::query_scalar(
                "SELECT path FROM instance_versions WHERE sop_instance_uid = $1 AND version = $2",
            )
            .bind(sop_instance_uid)
            .bind(version)
            .fetch_optional(pool)
            .await
        })
    }

    /// Indexes a stored file in one transaction: patient, study and series rows are created or
    /// refreshed, the series goes (back) to 'receiving', the instance points at this version.
    pub async fn record_instance(
        &self,
        attrs: &InstanceAttributes,
        file: &NewFile<'_>,
        association: Option<i64>,
        source_ae: &str,
    ) -> DbResult<()> {
        self.record_instances(&[InstanceRow {
            attributes: attrs,
            file: file.clone(),
            association,
            source_ae,
        }])
        .await
    }

    /// Indexes several stored files in one transaction (a group commit), each as
    /// `record_instance` does: all of them or none. The batch's statements are few whatever its
    /// size: one per new study's patient and study, one upsert per series, one multi-row insert
    /// each for the instances and their versions (per [`ROWS_PER_STATEMENT`] rows), and one
    /// update per association; each is a round trip to SQLite's worker thread.
    pub async fn record_instances(&self, rows: &[InstanceRow<'_>]) -> DbResult<()> {
        on_pool!(self.pool(), pool => {
            let now = now_ms();
            let mut new_studies: Vec<&str> = {
                let recorded = self
                    .recorded_studies
                    .lock()
                    .unwrap_or_else(|e| e.into_inner());
                rows.iter()
                    .map(|row| row.attributes.study_uid.as_str())
                    .filter(|study| !recorded.contains(*study))
                    .collect()
            };
            new_studies.sort_unstable();
            new_studies.dedup();
            // Patient and study rows once per new study, with its first row of the batch.
            let mut studies_to_write = new_studies.clone();
            let mut tx = pool.begin().await?;
            for row in rows {
                let attrs = row.attributes;
                let study_uid = attrs.study_uid.as_str();
                if let Ok(first) = studies_to_write.binary_search(&study_uid) {
                    studies_to_write.remove(first);
                    let patient: i64 = sqlx::query_scalar(
                        "INSERT INTO patients (patient_id, issuer, birth_date, sex) VALUES ($1, $2, $3, $4)
                         ON CONFLICT (patient_id, issuer) DO UPDATE SET
                           birth_date = coalesce(excluded.birth_date, patients.birth_date),
                           sex = coalesce(excluded.sex, patients.sex)
                         RETURNING id",
                    )
                    .bind(&attrs.patient_id)
                    .bind(&attrs.issuer_of_patient_id)
                    .bind(&attrs.patient_birth_date)
                    .bind(&attrs.patient_sex)
                    .fetch_one(&mut *tx)
                    .await?;
                    sqlx::query(
                        "INSERT INTO studies (study_uid, patient, study_date, study_time,
                                              accession_number, study_id, description, first_received_at)
                         VALUES ($1, $2, $3, $4, $5, $6, $7, $8)
                         ON CONFLICT (study_uid) DO NOTHING",
                    )
                    .bind(study_uid)
                    .bind(patient)
                    .bind(&attrs.study_date)
                    .bind(&attrs.study_time)
                    .bind(&attrs.accession_number)
                    .bind(&attrs.study_id)
                    .bind(&attrs.study_description)
                    .bind(now)
                    .execute(&mut *tx)
                    .await?;
                }
            }
            // One upsert per series of the batch, counting its new instances: its columns from
            // its first row (the one that would create it), its sender from its last.
            for series in BatchSeries::of(rows) {
                let (first, last) = (series.first.attributes, series.last);
                sqlx::query(
                    "INSERT INTO series (series_uid, study_uid, modality, series_number, description,
                                         body_part, frame_of_reference_uid, source_ae, instance_count,
                                         first_received_at, last_received_at)
                     VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11)
                     ON CONFLICT (series_uid) DO UPDATE SET
                       last_received_at = excluded.last_received_at,
                       source_ae = excluded.source_ae,
                       instance_count = series.instance_count + excluded.instance_count,
                       state = 'receiving'",
                )
                .bind(first.series_uid.as_str())
                .bind(first.study_uid.as_str())
                .bind(&first.modality)
                .bind(first.series_number)
                .bind(&first.series_description)
                .bind(&first.body_part)
                .bind(&first.frame_of_reference_uid)
                .bind(last.source_ae)
                .bind(series.new_instances)
                .bind(now)
                .bind(now)
                .execute(&mut *tx)
                .await?;
            }
            // The instances and their versions, many rows to a statement.
            for chunk in rows.chunks(ROWS_PER_STATEMENT) {
                let mut instances = sqlx::QueryBuilder::new(
                    "INSERT INTO instances (sop_instance_uid, series_uid, sop_class_uid, transfer_syntax,
                                            instance_number, rows, columns, number_of_frames, path,
                                            size_bytes, version, received_at, association) ",
                );
                instances.push_values(chunk, |mut values, row| {
                    let attrs = row.attributes;
                    values
                        .push_bind(attrs.sop_instance_uid.as_str())
                        .push_bind(attrs.series_uid.as_str())
                        .push_bind(attrs.sop_class_uid.as_str())
                        .push_bind(row.file.transfer_syntax)
                        .push_bind(attrs.instance_number)
                        .push_bind(attrs.rows)
                        .push_bind(attrs.columns)
                        .push_bind(attrs.number_of_frames)
                        .push_bind(row.file.path)
                        .push_bind(row.file.size_bytes)
                        .push_bind(row.file.version)
                        .push_bind(now)
                        .push_bind(row.association);
                });
                instances.push(
                    " ON CONFLICT (sop_instance_uid) DO UPDATE SET
                       series_uid = excluded.series_uid, sop_class_uid = excluded.sop_class_uid,
                       transfer_syntax = excluded.transfer_syntax,
                       instance_number = excluded.instance_number, rows = excluded.rows,
                       columns = excluded.columns, number_of_frames = excluded.number_of_frames,
                       path = excluded.path, size_bytes = excluded.size_bytes,
                       version = excluded.version, received_at = excluded.received_at,
                       association = excluded.association
                     WHERE excluded.version >= instances.version",
                );
                instances.build().execute(&mut *tx).await?;
                let mut versions = sqlx::QueryBuilder::new(
                    "INSERT INTO instance_versions
                       (sop_instance_uid, version, path, received_at, association) ",
                );
                versions.push_values(chunk, |mut values, row| {
                    values
                        .push_bind(row.attributes.sop_instance_uid.as_str())
                        .push_bind(row.file.version)
                        .push_bind(row.file.path)
                        .push_bind(now)
                        .push_bind(row.association);
                });
                versions.build().execute(&mut *tx).await?;
            }
            for (association, stored) in stored_per_association(rows) {
                sqlx::query("UPDATE associations SET instances_ok = instances_ok + $1 WHERE id = $2")
                    .bind(stored)
                    .bind(association)
                    .execute(&mut *tx)
                    .await?;
            }
            tx.commit().await?;
            if !new_studies.is_empty() {
                let mut recorded = self
                    .recorded_studies
                    .lock()
                    .unwrap_or_else(|e| e.into_inner());
                if recorded.len() + new_studies.len() > RECORDED_STUDIES_MAX {
                    recorded.clear();
                }
                recorded.extend(new_studies.into_iter().map(str::to_owned));
            }
            Ok(())
        })
    }

    /// Makes everything committed so far durable (WAL checkpoint, which fsyncs) and then records
    /// `mark` under `key` (one per storage area): files the area holds that were created before
    /// it are known to be in the durable index.
    pub async fn checkpoint(&self, key: &str, mark: i64) -> DbResult<()> {
        // PostgreSQL's commits are durable when they return (synchronous_commit); SQLite's WAL
        // commits from the next checkpoint on, and its scalar max() is PostgreSQL's GREATEST.
        match self.pool() {
            Pool::Sqlite(pool) => {
                sqlx::query("PRAGMA wal_checkpoint(FULL)")
                    .execute(pool)
                    .await?;
                sqlx::query(
                    "INSERT INTO store_state (key, value) VALUES ($1, $2)
                     ON CONFLICT (key) DO UPDATE SET value = max(value, excluded.value)",
                )
                .bind(key)
                .bind(mark)
                .execute(pool)
                .await?;
            }
            Pool::Postgres(pool) => {
                sqlx::query(
                    "INSERT INTO store_state (key, value) VALUES ($1, $2)
                     ON CONFLICT (key) DO UPDATE
                     SET value = GREATEST(store_state.value, excluded.value)",
                )
                .bind(key)
                .bind(mark)
                .execute(pool)
                .await?;
            }
        }
        Ok(())
    }

    /// The last mark `checkpoint` recorded under `key`, if any.
    pub async fn durable_mark(&self, key: &str) -> DbResult<Option<i64>> {
        on_pool!(self.pool(), pool => {
            sqlx::query_scalar("SELECT value FROM store_state WHERE key = $1")
                .bind(key)
                .fetch_optional(pool)
                .await
        })
    }

    /// Paths of every indexed version under a directory prefix (relative to the store root).
    pub async fn indexed_paths_under(&self, prefix: &str) -> DbResult<Vec<String>> {
        on_pool!(self.pool(), pool => {
            // Prefixes are built from validated UIDs (digits and dots) and a node name, whose `_`
            // would match any one character: the caller compares whole paths, so a path of a
            // like-named area only ever adds a row it does not look for.
            sqlx::query_scalar("SELECT path FROM instance_versions WHERE path LIKE $1 || '/%'")
                .bind(prefix)
                .fetch_all(pool)
                .await
        })
    }

    /// Recomputes a series' instance count from its instance rows (after recovery).
    pub async fn recount_series(&self, series_uid: &str) -> DbResult<()> {
        on_pool!(self.pool(), pool => {
            sqlx::query(
                "UPDATE series SET instance_count =
                   (SELECT count(*) FROM instances WHERE series_uid = $1) WHERE series_uid = $1",
            )
            .bind(series_uid)
            .execute(pool)
            .await?;
            Ok(())
        })
    }

    /// Paths (relative to the store root) of the current version of every instance of a series.
    pub async fn series_files(&self, series_uid: &str) -> DbResult<Vec<String>> {
        on_pool!(self.pool(), pool => {
            sqlx::query_scalar("SELECT path FROM instances WHERE series_uid = $1 ORDER BY path")
                .bind(series_uid)
                .fetch_all(pool)
                .await
        })
    }

    /// Records why a series cannot be analysed, for operators and the status endpoint.
    pub async fn record_series_refusal(
        &self,
        series_uid: &str,
        code: &str,
        message: &str,
    ) -> DbResult<()> {
        on_pool!(self.pool(), pool => {
            sqlx::query(
                "UPDATE series SET refusal_code = $1, refusal = $2, refused_at = $3 WHERE series_uid = $4",
            )
            .bind(code)
            .bind(message)
            .bind(now_ms())
            .bind(series_uid)
            .execute(pool)
            .await?;
            Ok(())
        })
    }

    /// Counts an instance that was already stored identically (idempotent re-send: no new
    /// file), and re-opens its series as a new instance would: a PACS sending a series again
    /// asks for it to be analysed again, and the results go to whoever sent it last.
    pub async fn record_duplicate(
        &self,
        association: i64,
        series_uid: &str,
        source_ae: &str,
    ) -> DbResult<()> {
        on_pool!(self.pool(), pool => {
            let mut tx = pool.begin().await?;
            sqlx::query("UPDATE associations SET instances_ok = instances_ok + 1 WHERE id = $1")
                .bind(association)
                .execute(&mut *tx)
                .await?;
            sqlx::query(
                "UPDATE series SET last_received_at = $1, source_ae = $2, state = 'receiving'
                 WHERE series_uid = $3",
            )
            .bind(now_ms())
            .bind(source_ae)
            .bind(series_uid)
            .execute(&mut *tx)
            .await?;
            tx.commit().await
        })
    }

    /// Logs a C-STORE answered with a failure status.
    pub async fn record_store_failure(
        &self,
        association: i64,
        sop_instance_uid: Option<&str>,
        sop_class_uid: Option<&str>,
        status: u16,
        reason: &str,
    ) -> DbResult<()> {
        on_pool!(self.pool(), pool => {
            let mut tx = pool.begin().await?;
            sqlx::query(
                "INSERT INTO store_failures
                   (association, sop_instance_uid, sop_class_uid, status, reason, at)
                 VALUES ($1, $2, $3, $4, $5, $6)",
            )
            .bind(association)
            .bind(sop_instance_uid)
            .bind(sop_class_uid)
            .bind(i64::from(status))
            .bind(reason)
            .bind(now_ms())
            .execute(&mut *tx)
            .await?;
            sqlx::query("UPDATE associations SET failures = failures + 1 WHERE id = $1")
                .bind(association)
                .execute(&mut *tx)
                .await?;
            tx.commit().await
        })
    }

    /// Marks every series idle since `idle_since_ms` complete and gives it a queued job (one
    /// queued job per series at most: a re-completed series refreshes its queued job).
    pub async fn complete_idle_series(&self, idle_since_ms: i64) -> DbResult<Vec<Job>> {
        on_pool!(self.pool(), pool => {
            let now = now_ms();
            let mut tx = pool.begin().await?;
            let idle: Vec<(String, i64)> = sqlx::query_as(
                "UPDATE series SET state = 'complete'
                 WHERE state = 'receiving' AND last_received_at <= $1
                 RETURNING series_uid, instance_count",
            )
            .bind(idle_since_ms)
            .fetch_all(&mut *tx)
            .await?;
            let mut jobs = Vec::with_capacity(idle.len());
            for (series_uid, instance_count) in idle {
                let refreshed: Option<Job> = sqlx::query_as(
                    "UPDATE jobs SET instance_count = $1, updated_at = $2
                     WHERE series_uid = $3 AND state = $4
                     RETURNING id, series_uid, state, instance_count",
                )
                .bind(instance_count)
                .bind(now)
                .bind(&series_uid)
                .bind(JobState::Queued)
                .fetch_optional(&mut *tx)
                .await?;
                let job = match refreshed {
                    Some(job) => job,
                    None => sqlx::query_as(
                        "INSERT INTO jobs (series_uid, state, instance_count, created_at, updated_at)
                             VALUES ($1, $2, $3, $4, $5)
                             RETURNING id, series_uid, state, instance_count",
                    )
                    .bind(&series_uid)
                    .bind(JobState::Queued)
                    .bind(instance_count)
                    .bind(now)
                    .bind(now)
                    .fetch_one(&mut *tx)
                    .await?,
                };
                jobs.push(job);
            }
            tx.commit().await?;
            Ok(jobs)
        })
    }
}
