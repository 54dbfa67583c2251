//! Opening the store: the connection pool, per-connection pragmas and embedded migrations.

use std::time::Duration;

use diesel::connection::SimpleConnection;
use diesel::prelude::*;
use diesel::r2d2::{ConnectionManager, CustomizeConnection, Pool, PooledConnection};
use diesel::sqlite::{Sqlite, SqliteConnection};
use diesel_migrations::{EmbeddedMigrations, MigrationHarness, embed_migrations};

use crate::error::{Result, StoreError};
use crate::models::store_state;

/// The SQL migrations of `migrations/` at the repository root, embedded at build time.
pub const MIGRATIONS: EmbeddedMigrations = embed_migrations!("../../migrations");

/// How the store's pool is set up.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StoreOptions {
    /// Most connections open at once (readers run in parallel, writers queue on SQLite's lock).
    pub pool_size: u32,
    /// How long a connection waits for SQLite's write lock before giving up.
    pub busy_timeout: Duration,
}

impl Default for StoreOptions {
    fn default() -> Self {
        StoreOptions {
            pool_size: 10,
            busy_timeout: Duration::from_millis(5000),
        }
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

    /// Like [`JobStore::open`], with explicit pool options.
    pub fn open_with(url: &str, options: StoreOptions) -> Result<JobStore> {
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
        Ok(JobStore { pool })
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

    /// A pooled connection.
    pub(crate) fn conn(&self) -> Result<PooledConnection<ConnectionManager<SqliteConnection>>> {
        Ok(self.pool.get()?)
    }

    /// Runs `work` in one `BEGIN IMMEDIATE` transaction: it holds the write lock from the
    /// start, so read-then-write work cannot be invalidated or deadlock on lock upgrade.
    pub(crate) fn write<T>(
        &self,
        work: impl FnOnce(&mut SqliteConnection) -> Result<T>,
    ) -> Result<T> {
        self.conn()?.immediate_transaction(work)
    }
}
