//! Opening the store: the connection pool, per-connection pragmas and embedded migrations.

use std::sync::Arc;
use std::time::Duration;

use diesel::connection::{AnsiTransactionManager, SimpleConnection, TransactionManager};
use diesel::prelude::*;
use diesel::r2d2::{ConnectionManager, CustomizeConnection, Pool, PooledConnection};
use diesel::sqlite::{Sqlite, SqliteConnection};
use diesel_migrations::{EmbeddedMigrations, MigrationHarness, embed_migrations};

use crate::error::{Result, StorageFault, StoreError, database_fault};
use crate::models::store_state;
use crate::progress::HistoryCap;

/// The SQL migrations of `migrations/` at the repository root (linked into this crate as
/// `migrations`, so a packaged crate carries them), embedded at build time.
pub const MIGRATIONS: EmbeddedMigrations = embed_migrations!("migrations");

/// Default of [`StoreOptions::max_history_rows_per_job`].
pub const DEFAULT_MAX_HISTORY_ROWS_PER_JOB: u64 = 10_000;

/// How the store's pool is set up, and its limits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StoreOptions {
    /// Most connections open at once (readers run in parallel, writers queue on SQLite's lock).
    pub pool_size: u32,
    /// How long a connection waits for SQLite's write lock before giving up.
    pub busy_timeout: Duration,
    /// Most progress history rows kept per job (at least 1). When a write takes a job past
    /// it, the job's older history is thinned in the same transaction; see
    /// [`JobStore::write_progress_batch`].
    pub max_history_rows_per_job: u64,
}

impl Default for StoreOptions {
    fn default() -> Self {
        StoreOptions {
            pool_size: 10,
            busy_timeout: Duration::from_millis(5000),
            max_history_rows_per_job: DEFAULT_MAX_HISTORY_ROWS_PER_JOB,
        }
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

/// Which embedded migrations a database has, and which it lacks.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct MigrationStatus {
    /// Applied migrations, by name (`2026-11-23-000001_create_jobs`), oldest first.
    pub applied: Vec<String>,
    /// Embedded migrations not yet applied, oldest first.
    pub pending: Vec<String>,
}

/// The durable job store: a pool of SQLite connections. Cheap to clone; clones share the pool.
///
/// Every method is blocking; async callers run them on a blocking thread.
#[derive(Clone)]
pub struct JobStore {
    pool: Pool<ConnectionManager<SqliteConnection>>,
    history: Arc<HistoryCap>,
    writes: Arc<WriteGate>,
}

impl std::fmt::Debug for JobStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let state = self.pool.state();
        f.debug_struct("JobStore")
            .field("connections", &state.connections)
            .field("idle_connections", &state.idle_connections)
            .finish()
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

impl CustomizeConnection<SqliteConnection, diesel::r2d2::Error> for ConnectionSetup {
    fn on_acquire(&self, conn: &mut SqliteConnection) -> Result<(), diesel::r2d2::Error> {
        self.apply(conn).map_err(diesel::r2d2::Error::QueryError)
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

fn migration_error(err: impl std::fmt::Display) -> StoreError {
    StoreError::Migration(err.to_string())
}

/// Applies the embedded migrations the database lacks; returns their names, oldest first.
fn apply_migrations(conn: &mut SqliteConnection) -> Result<Vec<String>> {
    let pending = MigrationHarness::<Sqlite>::pending_migrations(conn, MIGRATIONS)
        .map_err(migration_error)?;
    let names = pending.iter().map(|m| m.name().to_string()).collect();
    conn.run_migrations(&pending).map_err(migration_error)?;
    Ok(names)
}

fn status_of(conn: &mut SqliteConnection) -> Result<MigrationStatus> {
    let pending: Vec<String> = MigrationHarness::<Sqlite>::pending_migrations(conn, MIGRATIONS)
        .map_err(migration_error)?
        .iter()
        .map(|m| m.name().to_string())
        .collect();
    let applied = conn
        .applied_migrations()
        .map_err(migration_error)?
        .into_iter()
        .map(|version| version.to_string())
        .collect::<Vec<_>>();
    let embedded = diesel::migration::MigrationSource::<Sqlite>::migrations(&MIGRATIONS)
        .map_err(migration_error)?;
    // Name applied versions after the embedded migration they belong to when there is one.
    let mut applied: Vec<String> = applied
        .into_iter()
        .map(|version| {
            embedded
                .iter()
                .map(|m| m.name().to_string())
                .find(|name| name.replace('-', "").starts_with(&format!("{version}_")))
                .unwrap_or(version)
        })
        .collect();
    applied.sort();
    Ok(MigrationStatus { applied, pending })
}

/// Applies the embedded migrations to the database at `url` (creating it) and returns the
/// names of those it applied. [`JobStore::open`] does the same; this is for `migrate` tools.
pub fn run_migrations(url: &str) -> Result<Vec<String>> {
    let mut conn = connect(url, ConnectionSetup::from(StoreOptions::default()))?;
    apply_migrations(&mut conn)
}

/// Which embedded migrations the database at `url` has applied and which are pending,
/// without applying any (for a `db status` command).
pub fn migration_status(url: &str) -> Result<MigrationStatus> {
    let mut conn = connect(url, ConnectionSetup::from(StoreOptions::default()))?;
    status_of(&mut conn)
}

impl From<StoreOptions> for ConnectionSetup {
    fn from(options: StoreOptions) -> Self {
        ConnectionSetup {
            busy_timeout: options.busy_timeout,
        }
    }
}

impl JobStore {
    /// Opens (creating it if needed) the database at `url` with default options and applies
    /// pending migrations. `url` is a file path, `sqlite://path` or a `file:` URI.
    pub fn open(url: &str) -> Result<JobStore> {
        JobStore::open_with(url, StoreOptions::default())
    }

    /// Like [`JobStore::open`], with explicit options. A `max_history_rows_per_job` of 0 is
    /// refused with [`StoreError::InvalidInput`].
    pub fn open_with(url: &str, options: StoreOptions) -> Result<JobStore> {
        let history = HistoryCap::new(options.max_history_rows_per_job)?;
        let setup = ConnectionSetup::from(options);
        // WAL is a property of the database file: set it once, before the pool exists.
        let mut conn = connect(url, setup)?;
        let applied = apply_migrations(&mut conn)?;
        if !applied.is_empty() {
            tracing::info!(migrations = ?applied, "applied database migrations");
        }
        drop(conn);
        let manager = ConnectionManager::<SqliteConnection>::new(database_path(url)?);
        let pool = Pool::builder()
            .max_size(options.pool_size.max(1))
            .min_idle(Some(1))
            .connection_customizer(Box::new(setup))
            .build(manager)?;
        Ok(JobStore {
            pool,
            history: Arc::new(history),
            writes: Arc::new(WriteGate::new(options.busy_timeout)),
        })
    }

    /// Which embedded migrations this database has applied and which are pending.
    pub fn migration_status(&self) -> Result<MigrationStatus> {
        status_of(&mut *self.conn()?)
    }

    /// The store-wide change counter: increases with every write that changes a job
    /// (including [`JobStore::prune`]); use it to build list ETags.
    pub fn change_counter(&self) -> Result<u64> {
        let counter = store_state::change_counter(&mut *self.conn()?)?;
        Ok(u64::try_from(counter).unwrap_or(0))
    }

    /// Increments the boot epoch and returns it. The server calls this once per start so that
    /// stream sequence numbers keep increasing across restarts.
    pub fn bump_boot_epoch(&self) -> Result<u64> {
        let epoch = self.write(|conn| Ok(store_state::bump_boot_epoch(conn)?))?;
        Ok(u64::try_from(epoch).unwrap_or(0))
    }

    /// The history cap and what it remembers of jobs over it.
    pub(crate) fn history_cap(&self) -> &HistoryCap {
        &self.history
    }

    /// A pooled connection.
    pub(crate) fn conn(&self) -> Result<PooledConnection<ConnectionManager<SqliteConnection>>> {
        Ok(self.pool.get()?)
    }

    /// Runs `work` in one `BEGIN IMMEDIATE` transaction: it holds the write lock from the
    /// start, so read-then-write work cannot be invalidated or deadlock on lock upgrade.
    ///
    /// A pooled connection that SQLite opened read-only (the file or its WAL was not writable
    /// when the connection first opened them) stays read-only after the file system recovers;
    /// such a connection is closed and another one taken, so writes work again without a
    /// restart.
    pub(crate) fn write<T>(
        &self,
        work: impl FnOnce(&mut SqliteConnection) -> Result<T>,
    ) -> Result<T> {
        let _turn = self.writes.enter()?;
        let mut discarded = 0;
        let mut conn = loop {
            let mut conn = self.conn()?;
            AnsiTransactionManager::begin_transaction_sql(&mut *conn, "BEGIN IMMEDIATE")?;
            if PooledConnection::extensions(&conn)
                .get::<Writable>()
                .is_some()
            {
                break conn;
            }
            // On a read-only connection `BEGIN IMMEDIATE` quietly starts a read transaction;
            // a write statement that changes nothing tells. Once a connection passed, it
            // stays writable (SQLite decides that when it opens the files).
            match conn.batch_execute(WRITE_PROBE) {
                Ok(()) => {
                    PooledConnection::extensions_mut(&mut conn).insert(Writable);
                    break conn;
                }
                Err(err) => {
                    let _ = AnsiTransactionManager::rollback_transaction(&mut *conn);
                    if database_fault(&err) != Some(StorageFault::ReadOnly)
                        || discarded >= self.pool.max_size()
                    {
                        return Err(err.into());
                    }
                    // The pool closes a connection handed back inside a transaction
                    // (diesel's `is_broken`): open a deferred one (no lock) so this one goes.
                    let _ = AnsiTransactionManager::begin_transaction(&mut *conn);
                    discarded += 1;
                }
            }
        };
        match work(&mut conn) {
            Ok(value) => {
                AnsiTransactionManager::commit_transaction(&mut *conn)?;
                Ok(value)
            }
            Err(err) => {
                // SQLite may have rolled back already (disk full, i/o error); the caller
                // needs the first error either way, not the rollback's.
                if let Err(rollback) = AnsiTransactionManager::rollback_transaction(&mut *conn) {
                    tracing::debug!(error = %rollback, "rollback after a failed write");
                }
                Err(err)
            }
        }
    }
}
