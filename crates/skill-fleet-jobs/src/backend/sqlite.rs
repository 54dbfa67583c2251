//! The SQLite backend: one database file, WAL, one writer at a time, bundled SQLite.
//!
//! - Opening: WAL is set once per file before the pool exists; every pooled connection gets
//!   `busy_timeout`, `synchronous = NORMAL` and `foreign_keys = ON`.
//! - Writing: one write at a time from this process (the [`WriteGate`]), in `BEGIN IMMEDIATE`
//!   transactions; a pooled connection SQLite opened read-only is found by a probe and
//!   replaced.
//! - Statements: the claim, the version stamp and the flush's batch statements, each one
//!   statement, the batch ones prepared once per connection.
//! - Faults: SQLite's fixed error texts, read back into [`StorageFault`]s.
//! - Clock: this machine's, which the one process owning the file writes with.
//! - Migrations: `migrations/sqlite/` at the repository root, embedded as [`MIGRATIONS`].

use std::time::Duration;

use chrono::NaiveDateTime;
use diesel::connection::{AnsiTransactionManager, SimpleConnection, TransactionManager};
use diesel::prelude::*;
use diesel::query_builder::{AstPass, QueryFragment, QueryId};
use diesel::r2d2::{CustomizeConnection, PooledConnection};
use diesel::sql_types::{BigInt, Double, Integer, Nullable, Text, Timestamp};
use diesel::sqlite::{Sqlite as SqliteDb, SqliteConnection};
use diesel_migrations::{EmbeddedMigrations, embed_migrations};

use super::{
    Backend, ClaimWrite, Conn, Kind, LatestProgress, Manager, Pool, Pooled, apply_migrations,
    end_write, status_of,
};
use crate::error::{Result, StorageFault, StoreError};
use crate::models::job_progress::HistoryInsert;
use crate::models::jobs::{JOB_ROW_COLUMNS, JobRow};
use crate::schema::store_state;
use crate::store::{MigrationStatus, StoreOptions};

/// SQLite's SQL migrations, `migrations/sqlite/` at the repository root (linked into this
/// crate as `migrations`, so a packaged crate carries them), embedded at build time.
/// PostgreSQL's are [`crate::POSTGRES_MIGRATIONS`], the same migrations by name.
pub const MIGRATIONS: EmbeddedMigrations = embed_migrations!("migrations/sqlite");

fn migrations() -> EmbeddedMigrations {
    MIGRATIONS
}

/// The SQLite backend: the pool and this process's write gate.
pub(crate) struct Sqlite {
    pool: Pool,
    writes: WriteGate,
}

/// The SQLite connection inside a pooled [`Conn`] of an SQLite pool.
fn inner(conn: &mut Conn) -> &mut SqliteConnection {
    match conn {
        Conn::Sqlite(conn) => conn,
        Conn::Postgres(_) => unreachable!("an SQLite pool holds SQLite connections"),
    }
}

/// Marks a pooled connection that has started a write transaction: SQLite opened it
/// read-write.
struct Writable;

/// A write that changes nothing, yet fails with `SQLITE_READONLY` on a read-only connection.
const WRITE_PROBE: &str = "UPDATE store_state SET change_counter = change_counter WHERE 0";

/// One write at a time from this process. SQLite lets one connection write anyway; without
/// this, writers waiting out another process's lock would hold every pooled connection and
/// starve the readers, which WAL otherwise never blocks.
#[derive(Debug)]
struct WriteGate {
    busy: std::sync::Mutex<bool>,
    free: std::sync::Condvar,
    /// Longest wait for the turn: the busy timeout, as for SQLite's own lock.
    timeout: Duration,
}

/// The turn to write; the next writer goes when it is dropped.
struct WriteTurn<'a>(&'a WriteGate);

impl WriteGate {
    fn new(timeout: Duration) -> WriteGate {
        WriteGate {
            busy: std::sync::Mutex::new(false),
            free: std::sync::Condvar::new(),
            timeout,
        }
    }

    fn enter(&self) -> Result<WriteTurn<'_>> {
        let busy = self
            .busy
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let (mut busy, _) = self
            .free
            .wait_timeout_while(busy, self.timeout, |busy| *busy)
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if *busy {
            return Err(StoreError::Busy {
                waited: self.timeout,
            });
        }
        *busy = true;
        Ok(WriteTurn(self))
    }
}

impl Drop for WriteTurn<'_> {
    fn drop(&mut self) {
        *self
            .0
            .busy
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = false;
        self.0.free.notify_one();
    }
}

/// Per-connection set-up, run on every connection the pool opens.
#[derive(Debug, Clone, Copy)]
struct ConnectionSetup {
    busy_timeout: Duration,
}

impl ConnectionSetup {
    fn apply(&self, conn: &mut SqliteConnection) -> QueryResult<()> {
        conn.batch_execute(&format!(
            "PRAGMA busy_timeout = {}; PRAGMA synchronous = NORMAL; PRAGMA foreign_keys = ON;",
            self.busy_timeout.as_millis()
        ))
    }
}

impl CustomizeConnection<Conn, diesel::r2d2::Error> for ConnectionSetup {
    fn on_acquire(&self, conn: &mut Conn) -> Result<(), diesel::r2d2::Error> {
        self.apply(inner(conn))
            .map_err(diesel::r2d2::Error::QueryError)
    }
}

impl From<&StoreOptions> for ConnectionSetup {
    fn from(options: &StoreOptions) -> Self {
        ConnectionSetup {
            busy_timeout: options.busy_timeout,
        }
    }
}

/// Turns a database url into what SQLite opens: `sqlite://path` and `sqlite:path` become
/// `path`; a plain path and a `file:` URI are used as they are.
pub(crate) fn database_path(url: &str) -> Result<&str> {
    let path = url
        .strip_prefix("sqlite://")
        .or_else(|| url.strip_prefix("sqlite:"))
        .unwrap_or(url);
    if path.is_empty() {
        return Err(StoreError::InvalidInput(format!(
            "invalid database url `{url}`: expected a file path, `sqlite://path` or `file:path`"
        )));
    }
    Ok(path)
}

/// Opens one connection with the pragmas set and WAL mode on, without migrating.
fn connect(url: &str, setup: ConnectionSetup) -> Result<SqliteConnection> {
    let mut conn = SqliteConnection::establish(database_path(url)?)?;
    setup.apply(&mut conn)?;
    conn.batch_execute("PRAGMA journal_mode = WAL;")?;
    Ok(conn)
}

impl Sqlite {
    /// A pooled connection in a `BEGIN IMMEDIATE` transaction, known to be writable.
    ///
    /// A pooled connection that SQLite opened read-only (the file or its WAL was not writable
    /// when the connection first opened them) stays read-only after the file system recovers;
    /// such a connection is closed and another one taken, so writes work again without a
    /// restart.
    fn begin_write(&self) -> Result<Pooled> {
        let mut discarded = 0;
        loop {
            let mut conn = self.pool.get()?;
            AnsiTransactionManager::begin_transaction_sql(inner(&mut conn), "BEGIN IMMEDIATE")?;
            if PooledConnection::extensions(&conn)
                .get::<Writable>()
                .is_some()
            {
                return Ok(conn);
            }
            // On a read-only connection `BEGIN IMMEDIATE` quietly starts a read transaction;
            // a write statement that changes nothing tells. Once a connection passed, it
            // stays writable (SQLite decides that when it opens the files).
            match conn.batch_execute(WRITE_PROBE) {
                Ok(()) => {
                    PooledConnection::extensions_mut(&mut conn).insert(Writable);
                    return Ok(conn);
                }
                Err(err) => {
                    let _ = AnsiTransactionManager::rollback_transaction(inner(&mut conn));
                    if Sqlite::fault_of(&err) != Some(StorageFault::ReadOnly)
                        || discarded >= self.pool.max_size()
                    {
                        return Err(err.into());
                    }
                    // The pool closes a connection handed back inside a transaction
                    // (diesel's `is_broken`): open a deferred one (no lock) so this one goes.
                    let _ = AnsiTransactionManager::begin_transaction(inner(&mut conn));
                    discarded += 1;
                }
            }
        }
    }
}

impl Backend for Sqlite {
    type Connection = SqliteConnection;

    const SHARED: bool = false;

    fn open(url: &str, options: &StoreOptions) -> Result<Sqlite> {
        let setup = ConnectionSetup::from(options);
        // WAL is a property of the database file: set it once, before the pool exists.
        let mut conn = connect(url, setup)?;
        let applied = apply_migrations(&mut conn, migrations)?;
        if !applied.is_empty() {
            tracing::info!(migrations = ?applied, "applied database migrations");
        }
        drop(conn);
        let manager = Manager::new(database_path(url)?, Kind::Sqlite);
        let pool = Pool::builder()
            .max_size(options.pool_size.max(1))
            .min_idle(Some(1))
            .error_handler(Box::new(super::QuietPoolErrors))
            .connection_customizer(Box::new(setup))
            .build(manager)?;
        Ok(Sqlite {
            pool,
            writes: WriteGate::new(options.busy_timeout),
        })
    }

    fn run_migrations(url: &str) -> Result<Vec<String>> {
        let mut conn = connect(url, ConnectionSetup::from(&StoreOptions::default()))?;
        apply_migrations(&mut conn, migrations)
    }

    fn migration_status(url: &str) -> Result<MigrationStatus> {
        let mut conn = connect(url, ConnectionSetup::from(&StoreOptions::default()))?;
        status_of(&mut conn, migrations)
    }

    fn migration_status_on(conn: &mut SqliteConnection) -> Result<MigrationStatus> {
        status_of(conn, migrations)
    }

    fn read(&self) -> Result<Pooled> {
        Ok(self.pool.get()?)
    }

    fn write<T>(
        &self,
        work: impl FnOnce(&mut Conn) -> Result<T>,
        keep: impl FnOnce(&T) -> bool,
    ) -> Result<T> {
        let _turn = self.writes.enter()?;
        let mut conn = self.begin_write()?;
        let outcome = work(&mut conn);
        // SQLite may have rolled back already (disk full, i/o error).
        end_write(inner(&mut conn), outcome, keep)
    }

    /// This machine's clock: the one process that owns the file stamps every write with it.
    fn now(_conn: &mut SqliteConnection) -> QueryResult<NaiveDateTime> {
        Ok(crate::models::now())
    }

    fn next_version(conn: &mut SqliteConnection) -> QueryResult<i64> {
        diesel::update(store_state::table.find(1_i64))
            .set(store_state::change_counter.eq(store_state::change_counter + 1))
            .returning(store_state::change_counter)
            .get_result(conn)
    }

    fn claim(conn: &mut SqliteConnection, claim: &ClaimWrite<'_>) -> QueryResult<Option<JobRow>> {
        // Type lists go in as JSON arrays: one statement text whatever their lengths, so its
        // prepared form is reused. PostgreSQL adds `FOR UPDATE SKIP LOCKED` to the subquery.
        let json = |types: &[String]| {
            serde_json::to_string(types)
                .map_err(|err| diesel::result::Error::SerializationError(Box::new(err)))
        };
        diesel::sql_query(format!(
            "UPDATE jobs SET status = ?1, attempt = attempt + 1, \
             started_at = coalesce(started_at, ?2), error = NULL, completed_at = NULL, \
             updated_at = ?2, version = ?3, lease_token = ?6, lease_owner = ?7, lease_open = 0, \
             lease_expires_at = ?8, lease_renewed_at = ?2, not_before = NULL \
             WHERE id = (SELECT id FROM jobs WHERE status = 'queued' \
               AND (not_before IS NULL OR not_before <= ?2) \
               AND (json_array_length(?4) = 0 OR job_type IN (SELECT value FROM json_each(?4))) \
               AND job_type NOT IN (SELECT value FROM json_each(?5)) \
               ORDER BY created_at, id LIMIT 1) \
             RETURNING {JOB_ROW_COLUMNS}"
        ))
        .bind::<Text, _>(claim.status)
        .bind::<Timestamp, _>(claim.now)
        .bind::<BigInt, _>(claim.version)
        .bind::<Text, _>(json(&claim.filter.types)?)
        .bind::<Text, _>(json(&claim.filter.excluded)?)
        .bind::<Text, _>(claim.lease_token)
        .bind::<Text, _>(claim.lease_owner)
        .bind::<Timestamp, _>(claim.lease_until)
        .get_result(conn)
        .optional()
    }

    /// Nothing to lock: the write holds the database's one write lock (`BEGIN IMMEDIATE`).
    fn lock_jobs(_conn: &mut SqliteConnection, _ids: &[&str]) -> QueryResult<()> {
        Ok(())
    }

    fn update_latest(
        conn: &mut SqliteConnection,
        latest: &LatestProgress<'_>,
    ) -> QueryResult<Option<i32>> {
        UpdateLatest(latest).get_result(conn).optional()
    }

    fn insert_history(
        conn: &mut SqliteConnection,
        rows: &[HistoryInsert<'_>],
        created_at: NaiveDateTime,
    ) -> QueryResult<()> {
        if let [row] = rows {
            return InsertProgress { row, created_at }.execute(conn).map(drop);
        }
        let mut rest = rows;
        while !rest.is_empty() {
            let take = if rest.len() >= MAX_ROWS_PER_INSERT {
                MAX_ROWS_PER_INSERT
            } else {
                // The largest power of two that fits.
                1 << rest.len().ilog2()
            };
            let (chunk, tail) = rest.split_at(take);
            InsertProgressRows {
                rows: chunk,
                created_at,
            }
            .execute(conn)?;
            rest = tail;
        }
        Ok(())
    }

    fn jobs_over_cap(
        conn: &mut SqliteConnection,
        ids: &[&str],
        cap: i64,
    ) -> QueryResult<Vec<(String, i64)>> {
        let ids = serde_json::to_string(ids)
            .map_err(|err| diesel::result::Error::SerializationError(Box::new(err)))?;
        let rows: Vec<OverCap> = diesel::sql_query(
            "SELECT id, history_rows FROM jobs \
             WHERE id IN (SELECT value FROM json_each(?)) AND history_rows > ?",
        )
        .bind::<Text, _>(ids)
        .bind::<BigInt, _>(cap)
        .load(conn)?;
        Ok(rows
            .into_iter()
            .map(|row| (row.id, row.history_rows))
            .collect())
    }

    /// Reads SQLite's message (diesel keeps only `sqlite3_errmsg`, not the code); a failed
    /// commit whose rollback failed too is read through to the commit's error.
    fn fault_of(err: &diesel::result::Error) -> Option<StorageFault> {
        use diesel::result::Error;
        match err {
            Error::DatabaseError(_, info) => Sqlite::fault_of_message(info.message()),
            Error::RollbackErrorOnCommit {
                commit_error,
                rollback_error,
            } => Sqlite::fault_of(commit_error).or_else(|| Sqlite::fault_of(rollback_error)),
            Error::RollbackTransaction | Error::NotFound => None,
            other => Sqlite::fault_of_message(&other.to_string()),
        }
    }

    /// The phrases are SQLite's fixed texts for each primary result code.
    fn fault_of_message(message: &str) -> Option<StorageFault> {
        const PHRASES: [(&str, StorageFault); 7] = [
            ("database or disk is full", StorageFault::Full),
            ("readonly database", StorageFault::ReadOnly),
            ("database is locked", StorageFault::Busy),
            ("database table is locked", StorageFault::Busy),
            ("database schema is locked", StorageFault::Busy),
            ("disk i/o error", StorageFault::Io),
            ("unable to open database file", StorageFault::Io),
        ];
        let message = message.to_ascii_lowercase();
        PHRASES
            .iter()
            .find(|(phrase, _)| message.contains(phrase))
            .map(|&(_, fault)| fault)
    }

    fn pool_state(&self) -> r2d2::State {
        self.pool.state()
    }
}

/// A job over its history cap, as [`Sqlite::jobs_over_cap`] finds it.
#[derive(Debug, QueryableByName)]
struct OverCap {
    #[diesel(sql_type = Text)]
    id: String,
    #[diesel(sql_type = BigInt)]
    history_rows: i64,
}

/// `UPDATE jobs SET <latest progress>, history_rows = history_rows + 1 WHERE id = ? AND
/// status = 'running'`, as a query node with a static id: diesel never caches its own
/// `UPDATE` statements, this one is prepared once per connection and reused on every flush.
/// The count includes the history row the batch is about to insert.
#[derive(Debug, Clone, Copy)]
struct UpdateLatest<'a>(&'a LatestProgress<'a>);

#[derive(Debug)]
struct UpdateLatestId;

impl QueryId for UpdateLatest<'_> {
    type QueryId = UpdateLatestId;
    const HAS_STATIC_QUERY_ID: bool = true;
}

impl QueryFragment<SqliteDb> for UpdateLatest<'_> {
    fn walk_ast<'b>(&'b self, mut out: AstPass<'_, 'b, SqliteDb>) -> QueryResult<()> {
        let latest = self.0;
        out.push_sql("UPDATE jobs SET progress = ");
        out.push_bind_param::<Double, _>(&latest.progress.progress)?;
        out.push_sql(", step = ");
        out.push_bind_param::<Nullable<Text>, _>(&latest.progress.step)?;
        out.push_sql(", message = ");
        out.push_bind_param::<Nullable<Text>, _>(&latest.progress.message)?;
        out.push_sql(", cost_usd = ");
        out.push_bind_param::<Double, _>(&latest.progress.cost_usd)?;
        out.push_sql(", metric = ");
        out.push_bind_param::<Nullable<Double>, _>(&latest.progress.metric)?;
        out.push_sql(", eta_seconds = ");
        out.push_bind_param::<Nullable<Double>, _>(&latest.progress.eta_seconds)?;
        out.push_sql(", checkpoint = coalesce(");
        out.push_bind_param::<Nullable<Text>, _>(&latest.checkpoint)?;
        out.push_sql(", checkpoint), history_rows = history_rows + 1, updated_at = ");
        out.push_bind_param::<Timestamp, _>(&latest.now)?;
        out.push_sql(", lease_renewed_at = ");
        out.push_bind_param::<Timestamp, _>(&latest.now)?;
        out.push_sql(", lease_expires_at = ");
        out.push_bind_param::<Timestamp, _>(&latest.lease_until)?;
        out.push_sql(", version = ");
        out.push_bind_param::<BigInt, _>(&latest.version)?;
        out.push_sql(" WHERE id = ");
        out.push_bind_param::<Text, _>(latest.job_id)?;
        // The fence (crate::lease::admits), in the statement: 0 operator, 1 owner (attempt
        // and token), 2 token-less (an open lease, or none).
        out.push_sql(" AND status = 'running' AND (");
        out.push_bind_param::<Integer, _>(&latest.fence.mode)?;
        out.push_sql(" = 0 OR (");
        out.push_bind_param::<Integer, _>(&latest.fence.mode)?;
        out.push_sql(" = 1 AND attempt = ");
        out.push_bind_param::<Integer, _>(&latest.fence.attempt)?;
        out.push_sql(" AND lease_token = ");
        out.push_bind_param::<Nullable<Text>, _>(&latest.fence.token)?;
        out.push_sql(") OR (");
        out.push_bind_param::<Integer, _>(&latest.fence.mode)?;
        out.push_sql(" = 2 AND (lease_open = 1 OR lease_token IS NULL))) RETURNING attempt");
        Ok(())
    }
}

impl RunQueryDsl<SqliteConnection> for UpdateLatest<'_> {}

impl diesel::query_builder::Query for UpdateLatest<'_> {
    type SqlType = Integer;
}

/// The columns of a history row insert, `created_at` last.
const HISTORY_COLUMNS: &str = "INSERT INTO job_progress \
     (job_id, step, progress, message, cost_usd, metric, flags, attempt, event, created_at) \
     VALUES ";

/// The bind parameters of one `VALUES` tuple, `created_at` included.
fn walk_history_row<'b>(
    row: &'b HistoryInsert<'_>,
    created_at: &'b NaiveDateTime,
    out: &mut AstPass<'_, 'b, SqliteDb>,
) -> QueryResult<()> {
    out.push_sql("(");
    out.push_bind_param::<Text, _>(row.job_id)?;
    out.push_sql(", ");
    out.push_bind_param::<Nullable<Text>, _>(&row.progress.step)?;
    out.push_sql(", ");
    out.push_bind_param::<Double, _>(&row.progress.progress)?;
    out.push_sql(", ");
    out.push_bind_param::<Nullable<Text>, _>(&row.message)?;
    out.push_sql(", ");
    out.push_bind_param::<Double, _>(&row.progress.cost_usd)?;
    out.push_sql(", ");
    out.push_bind_param::<Nullable<Double>, _>(&row.progress.metric)?;
    out.push_sql(", ");
    out.push_bind_param::<Integer, _>(&row.flags)?;
    out.push_sql(", ");
    out.push_bind_param::<Nullable<Integer>, _>(&row.attempt)?;
    out.push_sql(", ");
    out.push_bind_param::<Nullable<Text>, _>(&row.event)?;
    out.push_sql(", ");
    out.push_bind_param::<Timestamp, _>(created_at)?;
    out.push_sql(")");
    Ok(())
}

/// `INSERT` of one history row, as a query node with a static id so that diesel prepares it
/// once per connection and reuses it (every single progress report and lifecycle change
/// leaves one).
#[derive(Debug, Clone, Copy)]
struct InsertProgress<'a> {
    row: &'a HistoryInsert<'a>,
    created_at: NaiveDateTime,
}

#[derive(Debug)]
struct InsertProgressId;

impl QueryId for InsertProgress<'_> {
    type QueryId = InsertProgressId;
    const HAS_STATIC_QUERY_ID: bool = true;
}

impl QueryFragment<SqliteDb> for InsertProgress<'_> {
    fn walk_ast<'b>(&'b self, mut out: AstPass<'_, 'b, SqliteDb>) -> QueryResult<()> {
        out.push_sql(HISTORY_COLUMNS);
        walk_history_row(self.row, &self.created_at, &mut out)
    }
}

impl RunQueryDsl<SqliteConnection> for InsertProgress<'_> {}

/// A multi-row `INSERT` of history rows sharing one timestamp: one statement for many jobs.
///
/// Its SQL depends on the number of rows, so it has no static query id; diesel then caches
/// the prepared statement by its SQL text. [`Sqlite::insert_history`] only uses power-of-two
/// row counts, so a connection holds at most a handful of these statements.
#[derive(Debug, Clone, Copy)]
struct InsertProgressRows<'a> {
    rows: &'a [HistoryInsert<'a>],
    created_at: NaiveDateTime,
}

/// Most rows per statement (10 bind parameters each, far below SQLite's limit).
const MAX_ROWS_PER_INSERT: usize = 64;

impl QueryId for InsertProgressRows<'_> {
    type QueryId = ();
    const HAS_STATIC_QUERY_ID: bool = false;
}

impl QueryFragment<SqliteDb> for InsertProgressRows<'_> {
    fn walk_ast<'b>(&'b self, mut out: AstPass<'_, 'b, SqliteDb>) -> QueryResult<()> {
        out.push_sql(HISTORY_COLUMNS);
        for (i, row) in self.rows.iter().enumerate() {
            if i > 0 {
                out.push_sql(", ");
            }
            walk_history_row(row, &self.created_at, &mut out)?;
        }
        Ok(())
    }
}

impl RunQueryDsl<SqliteConnection> for InsertProgressRows<'_> {}
