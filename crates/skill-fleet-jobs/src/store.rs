//! The store's handle: options, opening, and the two ways in (a read connection, a write
//! transaction), over the [`crate::backend`] it runs on.

use std::sync::Arc;
use std::time::Duration;

use crate::backend::{Active, Conn, Pooled};
use crate::error::Result;
use crate::lease::LeasePolicy;
use crate::models::store_state::{self, Stamp};
use crate::progress::HistoryCap;

pub use crate::backend::postgres::POSTGRES_MIGRATIONS;
pub use crate::backend::sqlite::MIGRATIONS;

/// Default of [`StoreOptions::max_history_rows_per_job`].
pub const DEFAULT_MAX_HISTORY_ROWS_PER_JOB: u64 = 10_000;

/// How the store's pool is set up, and its limits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StoreOptions {
    /// Most connections open at once (readers run in parallel; on SQLite writers queue on
    /// its lock, on PostgreSQL they write in parallel). Per server: N servers on one
    /// PostgreSQL open up to N × `pool_size` connections.
    pub pool_size: u32,
    /// How long a write waits for SQLite's write lock, or for a PostgreSQL row lock
    /// (`lock_timeout`) or a pooled connection, before giving up with a busy storage fault.
    pub busy_timeout: Duration,
    /// Most progress history rows kept per job (at least 1). When a write takes a job past
    /// it, the job's older history is thinned in the same transaction; see
    /// [`JobStore::write_progress_batch`].
    pub max_history_rows_per_job: u64,
    /// How long leases last (see [`crate::admits`] for what they fence).
    pub lease: LeasePolicy,
}

impl Default for StoreOptions {
    fn default() -> Self {
        StoreOptions {
            pool_size: 10,
            busy_timeout: Duration::from_millis(5000),
            max_history_rows_per_job: DEFAULT_MAX_HISTORY_ROWS_PER_JOB,
            lease: LeasePolicy::default(),
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

/// The durable job store: a pool of SQLite or PostgreSQL connections. Cheap to clone; clones
/// share the pool.
///
/// Every method is blocking; async callers run them on a blocking thread.
#[derive(Clone)]
pub struct JobStore {
    backend: Arc<Active>,
    history: Arc<HistoryCap>,
    lease: LeasePolicy,
}

impl std::fmt::Debug for JobStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let state = self.backend.pool_state();
        f.debug_struct("JobStore")
            .field("connections", &state.connections)
            .field("idle_connections", &state.idle_connections)
            .finish()
    }
}

/// Whether `url` names a database several servers may share (PostgreSQL), without opening
/// it.
pub fn is_shared_url(url: &str) -> bool {
    crate::backend::Kind::of(url) == crate::backend::Kind::Postgres
}

/// Applies the embedded migrations to the database at `url` (creating it) and returns the
/// names of those it applied. [`JobStore::open`] does the same; this is for `migrate` tools.
pub fn run_migrations(url: &str) -> Result<Vec<String>> {
    Active::run_migrations(url)
}

/// Which embedded migrations the database at `url` has applied and which are pending,
/// without applying any (for a `db status` command).
pub fn migration_status(url: &str) -> Result<MigrationStatus> {
    Active::migration_status(url)
}

impl JobStore {
    /// Opens (creating it if needed) the database at `url` with default options and applies
    /// pending migrations. `url` is a `postgres://…` or `postgresql://…` url (PostgreSQL,
    /// which several servers may share), or a file path, `sqlite://path` or a `file:` URI
    /// (SQLite, created if missing).
    pub fn open(url: &str) -> Result<JobStore> {
        JobStore::open_with(url, StoreOptions::default())
    }

    /// Like [`JobStore::open`], with explicit options. A `max_history_rows_per_job` of 0 is
    /// refused with [`crate::StoreError::InvalidInput`].
    pub fn open_with(url: &str, options: StoreOptions) -> Result<JobStore> {
        let history = HistoryCap::new(options.max_history_rows_per_job)?;
        if options.lease.ttl.is_zero() {
            return Err(crate::StoreError::InvalidInput(
                "the lease ttl must be above 0".to_owned(),
            ));
        }
        Ok(JobStore {
            lease: options.lease,
            backend: Arc::new(Active::open(url, &options)?),
            history: Arc::new(history),
        })
    }

    /// Which embedded migrations this database has applied and which are pending.
    pub fn migration_status(&self) -> Result<MigrationStatus> {
        Active::migration_status_on(&mut *self.conn()?)
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

    /// Whether other server processes may write this database too (then one of them may
    /// rescue a job whose lease this one could not renew). False on SQLite: one process owns
    /// the file ([`crate::DatabaseOwner`]); true on PostgreSQL.
    pub fn is_shared(&self) -> bool {
        self.backend.is_shared()
    }

    /// How long leases last.
    pub fn lease_policy(&self) -> LeasePolicy {
        self.lease
    }

    /// The stamp of a write transaction, at the database's time now.
    pub(crate) fn stamp(&self, conn: &mut Conn) -> Result<Stamp> {
        Ok(Stamp::at(Active::now(conn)?, self.lease.ttl))
    }

    /// The history cap and what it remembers of jobs over it.
    pub(crate) fn history_cap(&self) -> &HistoryCap {
        &self.history
    }

    /// The backend the store runs on.
    pub(crate) fn backend(&self) -> &Active {
        &self.backend
    }

    /// A pooled connection for reads.
    pub(crate) fn conn(&self) -> Result<Pooled> {
        self.backend.read()
    }

    /// Runs `work` in one write transaction in which read-then-write work cannot be
    /// invalidated (SQLite: `BEGIN IMMEDIATE`; PostgreSQL: rows read to be written are read
    /// with [`crate::models::jobs::JobRow::find_for_write`] and stay locked); commits when
    /// `work` succeeds.
    pub(crate) fn write<T>(&self, work: impl FnOnce(&mut Conn) -> Result<T>) -> Result<T> {
        self.backend.write(work, |_| true)
    }

    /// Like [`JobStore::write`], but rolls back when `changed` says the value `work` returned
    /// changed nothing: a write that found nothing to do then leaves no version behind.
    pub(crate) fn write_if<T>(
        &self,
        work: impl FnOnce(&mut Conn) -> Result<T>,
        changed: impl FnOnce(&T) -> bool,
    ) -> Result<T> {
        self.backend.write(work, changed)
    }
}
