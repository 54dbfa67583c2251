//! The PostgreSQL backend: one database shared by several servers.
//!
//! - Opening: `postgres://` or `postgresql://` urls (anything libpq accepts after the
//!   scheme); an r2d2 pool whose connections get `lock_timeout` (the store's busy timeout)
//!   and `TimeZone = 'UTC'`; the embedded migrations of `migrations/postgres/`, applied under
//!   an advisory lock so that servers starting together do not race.
//! - Writing: `READ COMMITTED` transactions; what a write reads and then writes is locked
//!   (`FOR UPDATE`), in the order the [module documentation](super) gives; no process-wide
//!   gate: servers (and threads) write in parallel, serialised only per row and on the version
//!   stamp.
//! - Clock: the database server's (`clock_timestamp()` in UTC), taken once per write, so that
//!   every server stamps leases and rescues with the same clock.
//! - Statements: the claim (`FOR UPDATE SKIP LOCKED`), the version stamp and the flush's batch
//!   statements, each one statement; lists of ids and history rows travel as arrays.
//! - Faults: by diesel's error kind and PostgreSQL's message texts (diesel keeps the SQLSTATE
//!   only as a kind), see [`Postgres::fault_of_message`].

use std::time::Duration;

use chrono::NaiveDateTime;
use diesel::connection::{AnsiTransactionManager, SimpleConnection};
use diesel::pg::PgConnection;
use diesel::prelude::*;
use diesel::r2d2::CustomizeConnection;
use diesel::result::{DatabaseErrorKind, Error};
use diesel::sql_types::{Array, BigInt, Double, Integer, Nullable, Text, Timestamp};
use diesel_migrations::{EmbeddedMigrations, embed_migrations};

use super::{
    Backend, ClaimWrite, Conn, Kind, LatestProgress, Manager, Pool, Pooled, apply_migrations,
    end_write, status_of,
};
use crate::error::{Result, StorageFault};
use crate::models::job_progress::HistoryInsert;
use crate::models::jobs::{JOB_ROW_COLUMNS, JobRow};
use crate::schema::store_state;
use crate::store::{MigrationStatus, StoreOptions};

/// PostgreSQL's SQL migrations, `migrations/postgres/` at the repository root, embedded at
/// build time: the same migrations by name as SQLite's [`crate::MIGRATIONS`], producing the
/// same tables (`cargo xtask schema --check` compares them).
pub const POSTGRES_MIGRATIONS: EmbeddedMigrations = embed_migrations!("migrations/postgres");

fn migrations() -> EmbeddedMigrations {
    POSTGRES_MIGRATIONS
}

/// The advisory lock key migrations run under (`skill-fleet` in ASCII, as a number).
const MIGRATION_LOCK: i64 = 0x736b_696c_6c66;

/// The PostgreSQL backend: the pool, and the url (a server's change listener opens its own
/// connection to it).
pub(crate) struct Postgres {
    pool: Pool,
    url: String,
}

/// The PostgreSQL connection inside a pooled [`Conn`] of a PostgreSQL pool.
fn inner(conn: &mut Conn) -> &mut PgConnection {
    match conn {
        Conn::Postgres(conn) => conn,
        Conn::Sqlite(_) => unreachable!("a PostgreSQL pool holds PostgreSQL connections"),
    }
}

/// Per-connection set-up, run on every connection the pool opens.
#[derive(Debug, Clone, Copy)]
struct ConnectionSetup {
    /// How long a statement waits for a row lock before it fails (as SQLite's busy timeout).
    lock_timeout: Duration,
}

impl ConnectionSetup {
    fn apply(&self, conn: &mut PgConnection) -> QueryResult<()> {
        conn.batch_execute(&format!(
            "SET lock_timeout = {}; SET TimeZone = 'UTC';",
            self.lock_timeout.as_millis().max(1)
        ))
    }
}

impl CustomizeConnection<Conn, diesel::r2d2::Error> for ConnectionSetup {
    fn on_acquire(&self, conn: &mut Conn) -> Result<(), diesel::r2d2::Error> {
        self.apply(inner(conn))
            .map_err(diesel::r2d2::Error::QueryError)
    }
}

/// Opens one connection, without migrating.
pub(crate) fn connect(url: &str) -> Result<PgConnection> {
    Ok(PgConnection::establish(url)?)
}

/// Applies the pending migrations under the migration advisory lock: a second server that
/// starts at the same moment waits, then finds nothing pending.
fn migrate(conn: &mut PgConnection) -> Result<Vec<String>> {
    conn.batch_execute(&format!("SELECT pg_advisory_lock({MIGRATION_LOCK})"))?;
    let applied = apply_migrations(conn, migrations);
    let unlocked = conn.batch_execute(&format!("SELECT pg_advisory_unlock({MIGRATION_LOCK})"));
    let applied = applied?;
    unlocked?;
    Ok(applied)
}

impl Postgres {
    /// The database's url.
    pub(crate) fn url(&self) -> &str {
        &self.url
    }
}

impl Backend for Postgres {
    type Connection = PgConnection;

    const SHARED: bool = true;

    fn open(url: &str, options: &StoreOptions) -> Result<Postgres> {
        let mut conn = connect(url)?;
        let applied = migrate(&mut conn)?;
        if !applied.is_empty() {
            tracing::info!(migrations = ?applied, "applied database migrations");
        }
        drop(conn);
        let pool = Pool::builder()
            .max_size(options.pool_size.max(1))
            .min_idle(Some(1))
            // A database that does not answer is a storage fault after the busy timeout, not
            // after r2d2's default 30 s.
            .connection_timeout(options.busy_timeout.max(Duration::from_millis(250)))
            .error_handler(Box::new(super::QuietPoolErrors))
            .connection_customizer(Box::new(ConnectionSetup {
                lock_timeout: options.busy_timeout,
            }))
            .build(Manager::new(url, Kind::Postgres))?;
        Ok(Postgres {
            pool,
            url: url.to_owned(),
        })
    }

    fn run_migrations(url: &str) -> Result<Vec<String>> {
        migrate(&mut connect(url)?)
    }

    fn migration_status(url: &str) -> Result<MigrationStatus> {
        status_of(&mut connect(url)?, migrations)
    }

    fn migration_status_on(conn: &mut PgConnection) -> Result<MigrationStatus> {
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
        let mut conn = self.pool.get()?;
        AnsiTransactionManager::begin_transaction_sql(
            inner(&mut conn),
            "BEGIN ISOLATION LEVEL READ COMMITTED",
        )?;
        let outcome = work(&mut conn);
        // A lost connection cannot roll back; the pool then drops it (diesel marks a
        // connection left in a transaction broken).
        end_write(inner(&mut conn), outcome, keep)
    }

    /// The database server's clock, not this process's: every server sharing the database
    /// stamps leases with it, so a lease's expiry means the same to all of them.
    /// `clock_timestamp()` rather than `now()`: a write that waited for a row lock is stamped
    /// when it runs, not when its transaction began.
    fn now(conn: &mut PgConnection) -> QueryResult<NaiveDateTime> {
        let now: DbNow =
            diesel::sql_query("SELECT (clock_timestamp() AT TIME ZONE 'UTC')::timestamp AS now")
                .get_result(conn)?;
        Ok(crate::models::truncate_micros(now.now.and_utc()))
    }

    fn next_version(conn: &mut PgConnection) -> QueryResult<i64> {
        diesel::update(store_state::table.find(1_i64))
            .set(store_state::change_counter.eq(store_state::change_counter + 1))
            .returning(store_state::change_counter)
            .get_result(conn)
    }

    /// One statement: the subquery locks the oldest matching queued row, skipping rows
    /// another claim (or any write) holds, so concurrent claims on any number of servers
    /// take different jobs and never wait for each other. The columns written are SQLite's
    /// claim's, exactly.
    fn claim(conn: &mut PgConnection, claim: &ClaimWrite<'_>) -> QueryResult<Option<JobRow>> {
        diesel::sql_query(format!(
            "UPDATE jobs SET status = $1, attempt = attempt + 1, \
             started_at = coalesce(started_at, $2), error = NULL, completed_at = NULL, \
             updated_at = $2, version = $3, lease_token = $6, lease_owner = $7, lease_open = 0, \
             lease_expires_at = $8, lease_renewed_at = $2, not_before = NULL \
             WHERE id = (SELECT id FROM jobs WHERE status = 'queued' \
               AND (not_before IS NULL OR not_before <= $2) \
               AND (cardinality($4) = 0 OR job_type = ANY($4)) \
               AND NOT (job_type = ANY($5)) \
               ORDER BY created_at, id LIMIT 1 FOR UPDATE SKIP LOCKED) \
             AND status = 'queued' \
             RETURNING {JOB_ROW_COLUMNS}"
        ))
        .bind::<Text, _>(claim.status)
        .bind::<Timestamp, _>(claim.now)
        .bind::<BigInt, _>(claim.version)
        .bind::<Array<Text>, _>(&claim.filter.types)
        .bind::<Array<Text>, _>(&claim.filter.excluded)
        .bind::<Text, _>(claim.lease_token)
        .bind::<Text, _>(claim.lease_owner)
        .bind::<Timestamp, _>(claim.lease_until)
        .get_result(conn)
        .optional()
    }

    fn lock_jobs(conn: &mut PgConnection, ids: &[&str]) -> QueryResult<()> {
        if ids.is_empty() {
            return Ok(());
        }
        diesel::sql_query("SELECT id FROM jobs WHERE id = ANY($1) ORDER BY id FOR UPDATE")
            .bind::<Array<Text>, _>(ids)
            .execute(conn)
            .map(drop)
    }

    fn update_latest(
        conn: &mut PgConnection,
        latest: &LatestProgress<'_>,
    ) -> QueryResult<Option<i32>> {
        let progress = latest.progress;
        let row: Option<Attempt> = diesel::sql_query(
            "UPDATE jobs SET progress = $1, step = $2, message = $3, cost_usd = $4, metric = $5, \
             eta_seconds = $6, checkpoint = coalesce($7, checkpoint), \
             history_rows = history_rows + 1, updated_at = $8, lease_renewed_at = $8, \
             lease_expires_at = $9, version = $10 \
             WHERE id = $11 AND status = 'running' AND ($12 = 0 \
               OR ($12 = 1 AND attempt = $13 AND lease_token = $14) \
               OR ($12 = 2 AND (lease_open = 1 OR lease_token IS NULL))) \
             RETURNING attempt",
        )
        .bind::<Double, _>(progress.progress)
        .bind::<Nullable<Text>, _>(progress.step.as_deref())
        .bind::<Nullable<Text>, _>(progress.message.as_deref())
        .bind::<Double, _>(progress.cost_usd)
        .bind::<Nullable<Double>, _>(progress.metric)
        .bind::<Nullable<Double>, _>(progress.eta_seconds)
        .bind::<Nullable<Text>, _>(latest.checkpoint)
        .bind::<Timestamp, _>(latest.now)
        .bind::<Timestamp, _>(latest.lease_until)
        .bind::<BigInt, _>(latest.version)
        .bind::<Text, _>(latest.job_id)
        .bind::<Integer, _>(latest.fence.mode)
        .bind::<Integer, _>(latest.fence.attempt)
        .bind::<Nullable<Text>, _>(latest.fence.token)
        .get_result(conn)
        .optional()?;
        Ok(row.map(|row| row.attempt))
    }

    /// One `INSERT … SELECT FROM unnest(…) WITH ORDINALITY` whatever the number of rows: one
    /// statement text, one round trip, `seq` given in the order of `rows`.
    fn insert_history(
        conn: &mut PgConnection,
        rows: &[HistoryInsert<'_>],
        created_at: NaiveDateTime,
    ) -> QueryResult<()> {
        if rows.is_empty() {
            return Ok(());
        }
        let column = |f: &dyn Fn(&HistoryInsert<'_>) -> Option<String>| -> Vec<Option<String>> {
            rows.iter().map(f).collect()
        };
        diesel::sql_query(
            "INSERT INTO job_progress \
             (job_id, step, progress, message, cost_usd, metric, flags, attempt, event, created_at) \
             SELECT job_id, step, progress, message, cost_usd, metric, flags, attempt, event, $10 \
             FROM unnest($1::text[], $2::text[], $3::float8[], $4::text[], $5::float8[], \
               $6::float8[], $7::int4[], $8::int4[], $9::text[]) WITH ORDINALITY \
               AS r(job_id, step, progress, message, cost_usd, metric, flags, attempt, event, n) \
             ORDER BY n",
        )
        .bind::<Array<Text>, _>(rows.iter().map(|r| r.job_id).collect::<Vec<_>>())
        .bind::<Array<Nullable<Text>>, _>(column(&|r| r.progress.step.clone()))
        .bind::<Array<Double>, _>(rows.iter().map(|r| r.progress.progress).collect::<Vec<_>>())
        .bind::<Array<Nullable<Text>>, _>(column(&|r| r.message.map(str::to_owned)))
        .bind::<Array<Double>, _>(rows.iter().map(|r| r.progress.cost_usd).collect::<Vec<_>>())
        .bind::<Array<Nullable<Double>>, _>(
            rows.iter().map(|r| r.progress.metric).collect::<Vec<_>>(),
        )
        .bind::<Array<Integer>, _>(rows.iter().map(|r| r.flags).collect::<Vec<_>>())
        .bind::<Array<Nullable<Integer>>, _>(rows.iter().map(|r| r.attempt).collect::<Vec<_>>())
        .bind::<Array<Nullable<Text>>, _>(column(&|r| r.event.map(str::to_owned)))
        .bind::<Timestamp, _>(created_at)
        .execute(conn)
        .map(drop)
    }

    fn jobs_over_cap(
        conn: &mut PgConnection,
        ids: &[&str],
        cap: i64,
    ) -> QueryResult<Vec<(String, i64)>> {
        let rows: Vec<OverCap> = diesel::sql_query(
            "SELECT id, history_rows FROM jobs WHERE id = ANY($1) AND history_rows > $2",
        )
        .bind::<Array<Text>, _>(ids)
        .bind::<BigInt, _>(cap)
        .load(conn)?;
        Ok(rows
            .into_iter()
            .map(|row| (row.id, row.history_rows))
            .collect())
    }

    /// By diesel's kind first (it reads the SQLSTATE: class `08` connection exceptions and a
    /// connection libpq reports bad are `ClosedConnection`, `25006` is
    /// `ReadOnlyTransaction`), then by message ([`Postgres::fault_of_message`]).
    fn fault_of(err: &Error) -> Option<StorageFault> {
        match err {
            Error::DatabaseError(DatabaseErrorKind::ClosedConnection, _) => {
                Some(StorageFault::Unavailable)
            }
            Error::DatabaseError(DatabaseErrorKind::ReadOnlyTransaction, _) => {
                Some(StorageFault::ReadOnly)
            }
            Error::DatabaseError(_, info) => Postgres::fault_of_message(info.message()),
            Error::RollbackErrorOnCommit {
                commit_error,
                rollback_error,
            } => Postgres::fault_of(commit_error).or_else(|| Postgres::fault_of(rollback_error)),
            Error::RollbackTransaction | Error::NotFound => None,
            other => Postgres::fault_of_message(&other.to_string()),
        }
    }

    /// PostgreSQL's and libpq's (English) message texts, by SQLSTATE:
    ///
    /// - unavailable: `57P01` admin shutdown, `57P02` crash shutdown, `57P03` cannot connect
    ///   now (starting up, shutting down, in recovery), and libpq's connection failures
    ///   (refused, closed, no connection);
    /// - full: `53100` disk full (`could not extend file …: No space left on device`);
    /// - read-only: `25006` read-only transaction (a standby, or
    ///   `default_transaction_read_only`);
    /// - busy: `55P03` lock not available (the busy timeout as `lock_timeout`), `57014` a
    ///   statement timeout, `40P01` a deadlock, `53300` too many connections.
    ///
    /// The texts are the server's in English: a server with another `lc_messages` is still
    /// read through diesel's kinds (connection loss, read-only), not through these.
    fn fault_of_message(message: &str) -> Option<StorageFault> {
        const PHRASES: [(&str, StorageFault); 19] = [
            (
                "terminating connection due to administrator command",
                StorageFault::Unavailable,
            ),
            (
                "terminating connection because of crash",
                StorageFault::Unavailable,
            ),
            (
                "the database system is starting up",
                StorageFault::Unavailable,
            ),
            (
                "the database system is shutting down",
                StorageFault::Unavailable,
            ),
            (
                "the database system is in recovery mode",
                StorageFault::Unavailable,
            ),
            (
                "server closed the connection unexpectedly",
                StorageFault::Unavailable,
            ),
            ("connection refused", StorageFault::Unavailable),
            ("no connection to the server", StorageFault::Unavailable),
            ("could not connect to server", StorageFault::Unavailable),
            ("could not send data to server", StorageFault::Unavailable),
            (
                "could not receive data from server",
                StorageFault::Unavailable,
            ),
            ("no space left on device", StorageFault::Full),
            ("could not extend file", StorageFault::Full),
            ("in a read-only transaction", StorageFault::ReadOnly),
            (
                "canceling statement due to lock timeout",
                StorageFault::Busy,
            ),
            (
                "canceling statement due to statement timeout",
                StorageFault::Busy,
            ),
            ("deadlock detected", StorageFault::Busy),
            ("too many clients already", StorageFault::Busy),
            (
                "remaining connection slots are reserved",
                StorageFault::Busy,
            ),
        ];
        let message = message.to_ascii_lowercase();
        if let Some(&(_, fault)) = PHRASES.iter().find(|(phrase, _)| message.contains(phrase)) {
            return Some(fault);
        }
        // libpq: `connection to server at "127.0.0.1", port 5432 failed: …`.
        (message.contains("connection to server") && message.contains("failed"))
            .then_some(StorageFault::Unavailable)
    }

    fn pool_state(&self) -> r2d2::State {
        self.pool.state()
    }
}

/// The database's clock, as [`Postgres::now`] reads it.
#[derive(Debug, QueryableByName)]
struct DbNow {
    #[diesel(sql_type = Timestamp)]
    now: NaiveDateTime,
}

/// The attempt [`Postgres::update_latest`] returns.
#[derive(Debug, QueryableByName)]
struct Attempt {
    #[diesel(sql_type = Integer)]
    attempt: i32,
}

/// A job over its history cap, as [`Postgres::jobs_over_cap`] finds it.
#[derive(Debug, QueryableByName)]
struct OverCap {
    #[diesel(sql_type = Text)]
    id: String,
    #[diesel(sql_type = BigInt)]
    history_rows: i64,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn postgres_messages_name_their_storage_fault() {
        let cases = [
            (
                "terminating connection due to administrator command",
                Some(StorageFault::Unavailable),
            ),
            (
                "connection to server at \"127.0.0.1\", port 5432 failed: Connection refused",
                Some(StorageFault::Unavailable),
            ),
            (
                "could not extend file \"base/16384/16385\": No space left on device",
                Some(StorageFault::Full),
            ),
            (
                "cannot execute UPDATE in a read-only transaction",
                Some(StorageFault::ReadOnly),
            ),
            (
                "canceling statement due to lock timeout",
                Some(StorageFault::Busy),
            ),
            (
                "duplicate key value violates unique constraint \"jobs_pkey\"",
                None,
            ),
            ("relation \"jobs\" does not exist", None),
        ];
        for (message, fault) in cases {
            assert_eq!(Postgres::fault_of_message(message), fault, "{message}");
        }
    }
}
