//! The seam between the store's shared logic and the database it runs on: everything that
//! differs between SQLite and PostgreSQL is a function of a [`Backend`], and [`Active`]
//! picks the one a database url names.
//!
//! # What is shared and what is not
//!
//! Shared, backend-neutral code: the transition table and the row changes
//! ([`crate::lifecycle`]), history thinning ([`crate::progress`]), list filters and cursors
//! ([`crate::list`]), the legacy mapping ([`crate::legacy`]) and the diesel DSL queries of
//! [`crate::models`] (finds, inserts, updates by primary key, pages). They are written
//! against [`Conn`], never against a backend's connection type directly.
//!
//! Behind the seam, one implementation per backend ([`sqlite`], [`postgres`]):
//!
//! - opening: the pool, per-connection settings, per-database settings (SQLite's WAL), and
//!   the embedded migrations, one folder per backend (`migrations/sqlite/`,
//!   `migrations/postgres/`, the same migration names in both);
//! - the write transaction: how a write takes the right to write (SQLite: this process's
//!   write gate, `BEGIN IMMEDIATE`, the read-only probe; PostgreSQL: `READ COMMITTED` and
//!   row locks, see below);
//! - the write's clock ([`Active::now`]): the time every change and lease of one write is
//!   stamped with, the database's (on SQLite this machine's clock, the one process owning
//!   the file writes with it; on PostgreSQL the server's clock, shared by every server);
//! - version stamping: one statement that increments the store-wide change counter and
//!   returns it, inside the write's transaction;
//! - claiming: one `UPDATE … WHERE id = (SELECT … ORDER BY created_at, id LIMIT 1)
//!   RETURNING …` statement (PostgreSQL: the subquery `FOR UPDATE SKIP LOCKED`);
//! - row locks: what a write reads and then writes ([`crate::models::jobs::JobRow::find_for_write`],
//!   [`Active::lock_jobs`], the rescue sweep's read) is locked on PostgreSQL; on SQLite the
//!   write already holds the database's one write lock;
//! - the flush's batch statements (latest progress per job, multi-row history inserts, the
//!   jobs over their history cap);
//! - fault classification: which database errors are storage faults
//!   ([`crate::StorageFault`]).
//!
//! # `MultiConnection`
//!
//! [`Conn`] is a `#[derive(diesel::MultiConnection)]` enum over `PgConnection` and
//! `SqliteConnection`: diesel's DSL queries compile against it unchanged (it brings its own
//! `MultiBackend`), so the shared code is written once. Backend-specific code matches the
//! enum's variant and runs on the inner connection, with statements written for that
//! database (placeholders, arrays, locking clauses). The shared code keeps to the SQL types
//! `MultiBackend` supports (`Text`, `Integer`, `BigInt`, `Double`, `Bool`, `Timestamp`, and
//! `Nullable` of them), and its few hand-written statements use `$1`-style placeholders,
//! which both databases read (SQLite numbers `$name` parameters in order of appearance).
//!
//! Both pools hold [`Conn`]s, opened by one [`Manager`] that knows from the url which
//! variant to open (diesel's own `establish` for a multi-connection tries each backend in
//! turn, which would hide a PostgreSQL outage behind an SQLite error).
//!
//! # Lock order on PostgreSQL
//!
//! Several servers write at once, each in `READ COMMITTED` transactions. Every write that
//! reads a job and then writes it locks the row when it reads it (`FOR UPDATE`), and the
//! version stamp locks the one `store_state` row until commit. Job rows are always locked
//! before `store_state` (a batch locks its jobs, sorted by id, before it takes its version),
//! and the two statements that take the version first, claim and create, never wait for a
//! job row (the claim skips locked rows, a create inserts a new one), so writes cannot
//! deadlock. The version lock orders versions by commit, so a reader that has seen version
//! `v` has seen every change up to `v`.
//!
//! # What a backend implements
//!
//! The [`Backend`] trait: `open`, `run_migrations`, `migration_status`,
//! `migration_status_on`, `read`, `write`, `now`, `next_version`, `claim`, `lock_jobs`,
//! `update_latest`, `insert_history`, `jobs_over_cap`, `fault_of`, `fault_of_message`,
//! `pool_state`; [`Active`] dispatches to it.

pub(crate) mod postgres;
pub(crate) mod sqlite;

use chrono::NaiveDateTime;
use diesel::QueryResult;
use diesel::connection::{AnsiTransactionManager, Connection, TransactionManager};
use diesel::migration::MigrationSource;
use diesel::pg::PgConnection;
use diesel::r2d2::{ManageConnection, PooledConnection, R2D2Connection};
use diesel::sqlite::SqliteConnection;
use diesel_migrations::{EmbeddedMigrations, MigrationHarness};

use crate::error::{Result, StorageFault, StoreError};
use crate::lifecycle::ClaimFilter;
use crate::models::job_progress::HistoryInsert;
use crate::models::jobs::JobRow;
use crate::store::{MigrationStatus, StoreOptions};

/// The connection every shared query runs on (see the [module documentation](self)).
#[derive(diesel::MultiConnection)]
pub(crate) enum Conn {
    /// A PostgreSQL database, shared by several servers.
    Postgres(PgConnection),
    /// An SQLite file, owned by one process.
    Sqlite(SqliteConnection),
}

/// Which backend a database url names.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Kind {
    /// Any url that is not PostgreSQL's: a path, `sqlite://…`, `file:…`.
    Sqlite,
    /// `postgres://…` or `postgresql://…`.
    Postgres,
}

impl Kind {
    /// The backend of `url`: PostgreSQL for `postgres://` and `postgresql://` urls, SQLite
    /// for anything else.
    pub(crate) fn of(url: &str) -> Kind {
        let lower = url.get(..13).unwrap_or(url).to_ascii_lowercase();
        if lower.starts_with("postgres://") || lower.starts_with("postgresql://") {
            Kind::Postgres
        } else {
            Kind::Sqlite
        }
    }
}

/// Opens the pool's connections: the variant of [`Conn`] the url names, nothing else.
#[derive(Debug, Clone)]
pub(crate) struct Manager {
    /// What the backend's connection opens (for SQLite, the path).
    target: String,
    kind: Kind,
}

impl Manager {
    pub(crate) fn new(target: impl Into<String>, kind: Kind) -> Manager {
        Manager {
            target: target.into(),
            kind,
        }
    }
}

impl ManageConnection for Manager {
    type Connection = Conn;
    type Error = diesel::r2d2::Error;

    fn connect(&self) -> Result<Conn, Self::Error> {
        match self.kind {
            Kind::Sqlite => SqliteConnection::establish(&self.target).map(Conn::Sqlite),
            Kind::Postgres => PgConnection::establish(&self.target).map(Conn::Postgres),
        }
        .map_err(diesel::r2d2::Error::ConnectionError)
    }

    fn is_valid(&self, conn: &mut Conn) -> Result<(), Self::Error> {
        conn.ping().map_err(diesel::r2d2::Error::QueryError)
    }

    fn has_broken(&self, conn: &mut Conn) -> bool {
        std::thread::panicking() || conn.is_broken()
    }
}

/// A connection from the pool.
pub(crate) type Pooled = PooledConnection<Manager>;

/// The pool both backends keep.
pub(crate) type Pool = diesel::r2d2::Pool<Manager>;

/// What the pool does with the errors of the connections it opens in the background (to
/// keep `min_idle`): r2d2 logs each at `error`, dozens a second while a database restarts.
/// The call that needs a connection reports the outage itself (a storage fault, logged by
/// the server once per outage); these go to `debug`.
#[derive(Debug, Clone, Copy)]
pub(crate) struct QuietPoolErrors;

impl r2d2::HandleError<diesel::r2d2::Error> for QuietPoolErrors {
    fn handle_error(&self, error: diesel::r2d2::Error) {
        tracing::debug!(%error, "the pool could not open a connection");
    }
}

/// The backend a store runs on, chosen by its url ([`Kind::of`]).
pub(crate) enum Active {
    /// One SQLite file.
    Sqlite(sqlite::Sqlite),
    /// A PostgreSQL database.
    Postgres(postgres::Postgres),
}

/// Runs `$body` with `$c` bound to the inner connection of `$conn` and `$B` to its backend.
macro_rules! on_conn {
    ($conn:expr, |$c:ident, $B:ident| $body:expr) => {
        match $conn {
            Conn::Sqlite($c) => {
                type $B = sqlite::Sqlite;
                $body
            }
            Conn::Postgres($c) => {
                type $B = postgres::Postgres;
                $body
            }
        }
    };
}

impl Active {
    /// Opens the database at `url` with the backend it names.
    pub(crate) fn open(url: &str, options: &StoreOptions) -> Result<Active> {
        Ok(match Kind::of(url) {
            Kind::Sqlite => Active::Sqlite(sqlite::Sqlite::open(url, options)?),
            Kind::Postgres => Active::Postgres(postgres::Postgres::open(url, options)?),
        })
    }

    /// The PostgreSQL backend, when this is one.
    pub(crate) fn postgres(&self) -> Option<&postgres::Postgres> {
        match self {
            Active::Sqlite(_) => None,
            Active::Postgres(b) => Some(b),
        }
    }

    /// See [`Backend::run_migrations`].
    pub(crate) fn run_migrations(url: &str) -> Result<Vec<String>> {
        match Kind::of(url) {
            Kind::Sqlite => sqlite::Sqlite::run_migrations(url),
            Kind::Postgres => postgres::Postgres::run_migrations(url),
        }
    }

    /// See [`Backend::migration_status`].
    pub(crate) fn migration_status(url: &str) -> Result<MigrationStatus> {
        match Kind::of(url) {
            Kind::Sqlite => sqlite::Sqlite::migration_status(url),
            Kind::Postgres => postgres::Postgres::migration_status(url),
        }
    }

    /// See [`Backend::migration_status_on`].
    pub(crate) fn migration_status_on(conn: &mut Conn) -> Result<MigrationStatus> {
        on_conn!(conn, |c, B| B::migration_status_on(c))
    }

    /// Whether several server processes may share the database ([`Backend::SHARED`]).
    pub(crate) fn is_shared(&self) -> bool {
        match self {
            Active::Sqlite(_) => sqlite::Sqlite::SHARED,
            Active::Postgres(_) => postgres::Postgres::SHARED,
        }
    }

    /// See [`Backend::read`].
    pub(crate) fn read(&self) -> Result<Pooled> {
        match self {
            Active::Sqlite(b) => b.read(),
            Active::Postgres(b) => b.read(),
        }
    }

    /// See [`Backend::write`].
    pub(crate) fn write<T>(
        &self,
        work: impl FnOnce(&mut Conn) -> Result<T>,
        keep: impl FnOnce(&T) -> bool,
    ) -> Result<T> {
        match self {
            Active::Sqlite(b) => b.write(work, keep),
            Active::Postgres(b) => b.write(work, keep),
        }
    }

    /// See [`Backend::now`].
    pub(crate) fn now(conn: &mut Conn) -> QueryResult<NaiveDateTime> {
        on_conn!(conn, |c, B| B::now(c))
    }

    /// See [`Backend::next_version`].
    pub(crate) fn next_version(conn: &mut Conn) -> QueryResult<i64> {
        on_conn!(conn, |c, B| B::next_version(c))
    }

    /// See [`Backend::claim`].
    pub(crate) fn claim(conn: &mut Conn, claim: &ClaimWrite<'_>) -> QueryResult<Option<JobRow>> {
        on_conn!(conn, |c, B| B::claim(c, claim))
    }

    /// See [`Backend::lock_jobs`].
    pub(crate) fn lock_jobs(conn: &mut Conn, ids: &[&str]) -> QueryResult<()> {
        on_conn!(conn, |c, B| B::lock_jobs(c, ids))
    }

    /// See [`Backend::update_latest`].
    pub(crate) fn update_latest(
        conn: &mut Conn,
        latest: &LatestProgress<'_>,
    ) -> QueryResult<Option<i32>> {
        on_conn!(conn, |c, B| B::update_latest(c, latest))
    }

    /// See [`Backend::insert_history`].
    pub(crate) fn insert_history(
        conn: &mut Conn,
        rows: &[HistoryInsert<'_>],
        created_at: NaiveDateTime,
    ) -> QueryResult<()> {
        on_conn!(conn, |c, B| B::insert_history(c, rows, created_at))
    }

    /// See [`Backend::jobs_over_cap`].
    pub(crate) fn jobs_over_cap(
        conn: &mut Conn,
        ids: &[&str],
        cap: i64,
    ) -> QueryResult<Vec<(String, i64)>> {
        on_conn!(conn, |c, B| B::jobs_over_cap(c, ids, cap))
    }

    /// The storage fault behind a refused query, by either backend's reading (an error does
    /// not say which database raised it; their texts and kinds do not overlap).
    pub(crate) fn fault_of(err: &diesel::result::Error) -> Option<StorageFault> {
        postgres::Postgres::fault_of(err).or_else(|| sqlite::Sqlite::fault_of(err))
    }

    /// The storage fault a connection or pool error message names, if any.
    pub(crate) fn fault_of_message(message: &str) -> Option<StorageFault> {
        postgres::Postgres::fault_of_message(message)
            .or_else(|| sqlite::Sqlite::fault_of_message(message))
    }

    /// Connections open and idle, for `Debug`.
    pub(crate) fn pool_state(&self) -> r2d2::State {
        match self {
            Active::Sqlite(b) => b.pool_state(),
            Active::Postgres(b) => b.pool_state(),
        }
    }
}

fn migration_error(err: impl std::fmt::Display) -> StoreError {
    StoreError::Migration(err.to_string())
}

/// Applies the embedded migrations the database lacks; returns their names, oldest first.
pub(crate) fn apply_migrations<DB, C>(
    conn: &mut C,
    migrations: fn() -> EmbeddedMigrations,
) -> Result<Vec<String>>
where
    DB: diesel::backend::Backend,
    C: MigrationHarness<DB>,
    EmbeddedMigrations: MigrationSource<DB>,
{
    let pending = conn
        .pending_migrations(migrations())
        .map_err(migration_error)?;
    let names = pending.iter().map(|m| m.name().to_string()).collect();
    conn.run_migrations(&pending).map_err(migration_error)?;
    Ok(names)
}

/// Which of `migrations` the database has applied and which are pending.
pub(crate) fn status_of<DB, C>(
    conn: &mut C,
    migrations: fn() -> EmbeddedMigrations,
) -> Result<MigrationStatus>
where
    DB: diesel::backend::Backend,
    C: MigrationHarness<DB>,
    EmbeddedMigrations: MigrationSource<DB>,
{
    let pending: Vec<String> = conn
        .pending_migrations(migrations())
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
    let embedded = MigrationSource::<DB>::migrations(&migrations()).map_err(migration_error)?;
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

/// What [`Backend::claim`] writes into the job it takes: the start of a run, as
/// [`crate::lifecycle`] defines it.
#[derive(Debug, Clone, Copy)]
pub(crate) struct ClaimWrite<'a> {
    /// Which jobs may be taken.
    pub(crate) filter: &'a ClaimFilter,
    /// `status` after the start (`running`, from the transition table).
    pub(crate) status: &'a str,
    /// `updated_at`, and `started_at` unless the run already has one.
    pub(crate) now: NaiveDateTime,
    /// The write's version.
    pub(crate) version: i64,
    /// The new lease's token.
    pub(crate) lease_token: &'a str,
    /// The new lease's owner.
    pub(crate) lease_owner: &'a str,
    /// When the new lease expires.
    pub(crate) lease_until: NaiveDateTime,
}

/// The fence of a batch write as bind parameters ([`crate::lease::admits`] in SQL): `mode`
/// 0 for the operator, 1 for an owner (`attempt`, `token`), 2 for a token-less write.
#[derive(Debug, Clone, Copy)]
pub(crate) struct FenceBind<'a> {
    pub(crate) mode: i32,
    pub(crate) attempt: i32,
    pub(crate) token: Option<&'a str>,
}

impl<'a> FenceBind<'a> {
    pub(crate) fn of(writer: &'a crate::lease::Writer) -> FenceBind<'a> {
        use crate::lease::Writer;
        match writer {
            Writer::Operator => FenceBind {
                mode: 0,
                attempt: 0,
                token: None,
            },
            Writer::Owner(fence) => FenceBind {
                mode: 1,
                attempt: i32::try_from(fence.attempt).unwrap_or(i32::MAX),
                token: Some(&fence.lease_token),
            },
            Writer::Unfenced => FenceBind {
                mode: 2,
                attempt: 0,
                token: None,
            },
        }
    }
}

/// The latest progress of one running job, as [`Backend::update_latest`] writes it.
#[derive(Debug, Clone, Copy)]
pub(crate) struct LatestProgress<'a> {
    /// The job.
    pub(crate) job_id: &'a str,
    /// Its full latest progress.
    pub(crate) progress: &'a skill_fleet_types::Progress,
    /// A new checkpoint as JSON text; `None` keeps the stored one.
    pub(crate) checkpoint: Option<&'a str>,
    /// `updated_at`, and the lease's renewal.
    pub(crate) now: NaiveDateTime,
    /// The renewed lease's expiry.
    pub(crate) lease_until: NaiveDateTime,
    /// Who writes: the statement writes only what [`crate::lease::admits`].
    pub(crate) fence: FenceBind<'a>,
    /// The write's version.
    pub(crate) version: i64,
}

/// Everything the store needs from a database that differs from one database to another.
/// Functions that run on a connection take the backend's own connection type; [`Active`]
/// matches [`Conn`] and calls them.
pub(crate) trait Backend: Sized + Send + Sync + 'static {
    /// The connection type of this backend (a variant of [`Conn`]).
    type Connection;

    /// Whether several server processes may share the database (so a job another server
    /// rescued can still have a child here).
    const SHARED: bool;

    /// Opens (creating it if the backend can) the database at `url`, applies the pending
    /// migrations and sets up the pool.
    fn open(url: &str, options: &StoreOptions) -> Result<Self>;

    /// Applies the pending migrations to the database at `url`; their names, oldest first.
    fn run_migrations(url: &str) -> Result<Vec<String>>;

    /// Which migrations the database at `url` has applied and which are pending.
    fn migration_status(url: &str) -> Result<MigrationStatus>;

    /// Like [`Backend::migration_status`], on an open connection.
    fn migration_status_on(conn: &mut Self::Connection) -> Result<MigrationStatus>;

    /// A pooled connection for reads.
    fn read(&self) -> Result<Pooled>;

    /// Runs `work` in one write transaction in which read-then-write work cannot be
    /// invalidated (SQLite: the write holds the database from its first statement;
    /// PostgreSQL: what it reads to write is locked, see the module docs). Commits when
    /// `work` succeeds and `keep` says its value changed something; rolls back otherwise (a
    /// write that found nothing to do, such as an empty claim, leaves no trace, not even a
    /// version).
    fn write<T>(
        &self,
        work: impl FnOnce(&mut Conn) -> Result<T>,
        keep: impl FnOnce(&T) -> bool,
    ) -> Result<T>;

    /// The time a write is stamped with, UTC, in whole microseconds: the database's clock.
    fn now(conn: &mut Self::Connection) -> QueryResult<NaiveDateTime>;

    /// Increments the store-wide change counter and returns its new value, in one statement
    /// of the caller's write transaction: the version of every job that transaction changes.
    /// Concurrent writers get distinct, increasing values.
    fn next_version(conn: &mut Self::Connection) -> QueryResult<i64>;

    /// Takes the oldest queued job (by `created_at`, then id) that `claim.filter` allows and
    /// writes `claim` into it, in one statement; the row as written, `None` when no job
    /// matches. Two concurrent claims never take the same job.
    fn claim(conn: &mut Self::Connection, claim: &ClaimWrite<'_>) -> QueryResult<Option<JobRow>>;

    /// Locks the rows of the jobs `ids` (those that exist) for the rest of the write, in id
    /// order, before the write takes its version (PostgreSQL; on SQLite the write holds the
    /// whole database already).
    fn lock_jobs(conn: &mut Self::Connection, ids: &[&str]) -> QueryResult<()>;

    /// Writes the latest progress of one job if it is running and its lease admits the
    /// writer, renewing the lease and counting one more history row; the job's attempt, or
    /// `None` when nothing was written.
    fn update_latest(
        conn: &mut Self::Connection,
        latest: &LatestProgress<'_>,
    ) -> QueryResult<Option<i32>>;

    /// Inserts history rows, all created at `created_at`, in as few statements as it can,
    /// their `seq` increasing in the order of `rows`.
    fn insert_history(
        conn: &mut Self::Connection,
        rows: &[HistoryInsert<'_>],
        created_at: NaiveDateTime,
    ) -> QueryResult<()>;

    /// Of the jobs `ids`, those with more than `cap` history rows, with their counts, in one
    /// statement whatever the number of ids.
    fn jobs_over_cap(
        conn: &mut Self::Connection,
        ids: &[&str],
        cap: i64,
    ) -> QueryResult<Vec<(String, i64)>>;

    /// The storage fault behind a refused query, if it is one.
    fn fault_of(err: &diesel::result::Error) -> Option<StorageFault>;

    /// The storage fault a connection or pool error message names, if any.
    fn fault_of_message(message: &str) -> Option<StorageFault>;

    /// Connections open and idle, for `Debug`.
    fn pool_state(&self) -> r2d2::State;
}

/// Ends a write transaction both backends began: commits when `outcome` succeeded and
/// `keep` says it changed something, rolls back otherwise. On failure the caller gets the
/// write's own error, not the rollback's (which is only logged).
pub(crate) fn end_write<C, T>(
    conn: &mut C,
    outcome: Result<T>,
    keep: impl FnOnce(&T) -> bool,
) -> Result<T>
where
    C: Connection<TransactionManager = AnsiTransactionManager>,
{
    match outcome {
        Ok(value) if keep(&value) => {
            AnsiTransactionManager::commit_transaction(conn)?;
            Ok(value)
        }
        Ok(value) => {
            AnsiTransactionManager::rollback_transaction(conn)?;
            Ok(value)
        }
        Err(err) => {
            if let Err(rollback) = AnsiTransactionManager::rollback_transaction(conn) {
                tracing::debug!(error = %rollback, "rollback after a failed write");
            }
            Err(err)
        }
    }
}
