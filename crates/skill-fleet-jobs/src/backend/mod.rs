//! The seam between the store's shared logic and the database it runs on: everything that
//! differs between SQLite and a server database is a method of [`Backend`].
//!
//! # What is shared and what is not
//!
//! Shared, backend-neutral code: the transition table and the row changes
//! ([`crate::lifecycle`]), history thinning ([`crate::progress`]), list filters and cursors
//! ([`crate::list`]), the legacy mapping ([`crate::legacy`]) and the diesel DSL queries of
//! [`crate::models`] (finds, inserts, updates by primary key, pages). They are written
//! against [`Conn`], never against a backend type directly.
//!
//! Behind the seam, one implementation per backend ([`sqlite`] today):
//!
//! - opening: the pool, per-connection settings, per-database settings (SQLite's WAL), and
//!   the embedded migrations, one folder per backend;
//! - the write transaction: how a write takes the right to write (SQLite: this process's
//!   write gate, `BEGIN IMMEDIATE`, the read-only probe);
//! - version stamping: one statement that increments the store-wide change counter and
//!   returns it, inside the write's transaction;
//! - claiming: one `UPDATE … WHERE id = (SELECT … ORDER BY created_at, id LIMIT 1)
//!   RETURNING …` statement;
//! - the flush's batch statements (latest progress per job, multi-row history inserts, the
//!   jobs over their history cap), prepared once per connection;
//! - fault classification: which database errors are storage faults
//!   ([`crate::StorageFault`]).
//!
//! # Why not generic code, and why not `MultiConnection` yet
//!
//! Diesel offers two ways to run one query text on several backends. Generic functions over
//! `C: Connection<Backend = B>` need a `where` clause per query naming its whole query type:
//! every query would carry bounds longer than itself. `#[derive(diesel::MultiConnection)]`
//! instead builds one connection enum (and a `MultiBackend`) over the backends, and DSL
//! queries compile against it unchanged; backend-specific code matches the enum's variant and
//! runs on the inner connection. That is the plan for PostgreSQL, and why the shared code
//! names [`Conn`] rather than `SqliteConnection`: adding PostgreSQL turns [`Conn`] into
//!
//! ```text
//! #[derive(diesel::MultiConnection)]
//! pub(crate) enum Conn { Postgres(PgConnection), Sqlite(SqliteConnection) }
//! ```
//!
//! and each [`Backend`] function that takes a `&mut Conn` matches on it. Nothing else of the
//! shared code changes, as long as it keeps to the SQL types `MultiBackend` supports (`Text`,
//! `Integer`, `BigInt`, `Double`, `Timestamp`, and `Nullable` of them); the one `Bool` (the
//! `step_change` column of history thinning) then needs `HasSqlType<Bool>` for `MultiBackend`,
//! or an integer.
//!
//! We do not derive it now: with one variant it buys nothing, it puts a dispatch layer under
//! every query that no second backend can yet test, and the hot statements (the flush's
//! batch) are backend-specific anyway and live here. Until then [`Conn`] is
//! `SqliteConnection`.
//!
//! # What a second backend implements
//!
//! The [`Backend`] trait, nothing more: `open`, `run_migrations`, `migration_status`,
//! `migration_status_on`, `read`, `write`, `next_version`, `claim`, `update_latest`,
//! `insert_history`, `jobs_over_cap`, `fault_of`, `fault_of_message`, `pool_state`.

pub(crate) mod sqlite;

use chrono::NaiveDateTime;
use diesel::QueryResult;
use diesel::r2d2::{ConnectionManager, PooledConnection};

use crate::error::{Result, StorageFault};
use crate::lifecycle::ClaimFilter;
use crate::models::job_progress::HistoryInsert;
use crate::models::jobs::JobRow;
use crate::store::{MigrationStatus, StoreOptions};

/// The connection every shared query runs on (see the [module documentation](self)).
pub(crate) type Conn = diesel::sqlite::SqliteConnection;

/// A connection from the pool.
pub(crate) type Pooled = PooledConnection<ConnectionManager<Conn>>;

/// The backend the store runs on.
pub(crate) type Active = sqlite::Sqlite;

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
pub(crate) trait Backend: Sized + Send + Sync + 'static {
    /// Opens (creating it if the backend can) the database at `url`, applies the pending
    /// migrations and sets up the pool.
    fn open(url: &str, options: &StoreOptions) -> Result<Self>;

    /// Applies the pending migrations to the database at `url`; their names, oldest first.
    fn run_migrations(url: &str) -> Result<Vec<String>>;

    /// Which migrations the database at `url` has applied and which are pending.
    fn migration_status(url: &str) -> Result<MigrationStatus>;

    /// Like [`Backend::migration_status`], on an open connection.
    fn migration_status_on(conn: &mut Conn) -> Result<MigrationStatus>;

    /// A pooled connection for reads.
    fn read(&self) -> Result<Pooled>;

    /// Runs `work` in one write transaction that holds the right to write from its first
    /// statement, so read-then-write work cannot be invalidated. Commits when `work`
    /// succeeds and `keep` says its value changed something; rolls back otherwise (a write
    /// that found nothing to do, such as an empty claim, leaves no trace, not even a
    /// version).
    fn write<T>(
        &self,
        work: impl FnOnce(&mut Conn) -> Result<T>,
        keep: impl FnOnce(&T) -> bool,
    ) -> Result<T>;

    /// Increments the store-wide change counter and returns its new value, in one statement
    /// of the caller's write transaction: the version of every job that transaction changes.
    /// Concurrent writers get distinct, increasing values.
    fn next_version(conn: &mut Conn) -> QueryResult<i64>;

    /// Takes the oldest queued job (by `created_at`, then id) that `claim.filter` allows and
    /// writes `claim` into it, in one statement; the row as written, `None` when no job
    /// matches. Two concurrent claims never take the same job.
    fn claim(conn: &mut Conn, claim: &ClaimWrite<'_>) -> QueryResult<Option<JobRow>>;

    /// Writes the latest progress of one job if it is running and its lease admits the
    /// writer, renewing the lease and counting one more history row; the job's attempt, or
    /// `None` when nothing was written. Prepared once per connection.
    fn update_latest(conn: &mut Conn, latest: &LatestProgress<'_>) -> QueryResult<Option<i32>>;

    /// Inserts history rows, all created at `created_at`, in as few statements as it can.
    fn insert_history(
        conn: &mut Conn,
        rows: &[HistoryInsert<'_>],
        created_at: NaiveDateTime,
    ) -> QueryResult<()>;

    /// Of the jobs `ids`, those with more than `cap` history rows, with their counts, in one
    /// statement whatever the number of ids.
    fn jobs_over_cap(conn: &mut Conn, ids: &[&str], cap: i64) -> QueryResult<Vec<(String, i64)>>;

    /// The storage fault behind a refused query, if it is one.
    fn fault_of(err: &diesel::result::Error) -> Option<StorageFault>;

    /// The storage fault a connection or pool error message names, if any.
    fn fault_of_message(message: &str) -> Option<StorageFault>;

    /// Connections open and idle, for `Debug`.
    fn pool_state(&self) -> r2d2::State;
}
