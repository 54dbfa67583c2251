//! The `job_progress` table: one row per coalesced progress write, and the queries that
//! thin a job's history down to its cap (the statements that insert rows are the
//! backend's, [`crate::backend::Backend::insert_history`]).

use chrono::NaiveDateTime;
use diesel::prelude::*;
use diesel::sql_types::{BigInt, Bool, Integer, Text};
use skill_fleet_types::{Progress, ProgressRecord};

use crate::backend::Conn;
use crate::schema::{job_progress, jobs};

/// `job_progress.flags` bit: the row carries a checkpoint (never thinned).
pub(crate) const FLAG_CHECKPOINT: i32 = 1;
/// `job_progress.flags` bit: the row is a terminal state (never thinned).
pub(crate) const FLAG_TERMINAL: i32 = 2;
/// `job_progress.flags` bit: the row records an event such as a rescue (never thinned).
pub(crate) const FLAG_EVENT: i32 = 4;

/// One history row as read back.
#[derive(Debug, Clone, Queryable, Selectable)]
#[diesel(table_name = job_progress, check_for_backend(diesel::sqlite::Sqlite, diesel::pg::Pg))]
pub(crate) struct ProgressRow {
    seq: i64,
    step: Option<String>,
    progress: f64,
    message: Option<String>,
    cost_usd: f64,
    metric: Option<f64>,
    created_at: NaiveDateTime,
    attempt: Option<i32>,
    event: Option<String>,
    actor: Option<String>,
}

impl ProgressRow {
    /// Up to `limit` rows of one job with `seq > after`, in `seq` order.
    pub(crate) fn page(
        conn: &mut Conn,
        job_id: &str,
        after: i64,
        limit: i64,
    ) -> QueryResult<Vec<ProgressRow>> {
        job_progress::table
            .filter(job_progress::job_id.eq(job_id))
            .filter(job_progress::seq.gt(after))
            .order(job_progress::seq.asc())
            .limit(limit)
            .select(ProgressRow::as_select())
            .load(conn)
    }

    /// The wire form.
    pub(crate) fn into_record(self) -> ProgressRecord {
        ProgressRecord {
            seq: self.seq,
            step: self.step,
            progress: self.progress,
            message: self.message,
            cost_usd: self.cost_usd,
            metric: self.metric,
            attempt: self.attempt.and_then(|a| u32::try_from(a).ok()),
            event: self.event,
            actor: self.actor,
            created_at: self.created_at.and_utc(),
        }
    }
}

/// One history row to insert: the job, its full progress, its [`FLAG_CHECKPOINT`] /
/// [`FLAG_TERMINAL`] / [`FLAG_EVENT`] bits, the attempt that wrote it, and for an event row
/// its kind and message (instead of the progress's message).
#[derive(Debug, Clone, Copy)]
pub(crate) struct HistoryInsert<'a> {
    pub(crate) job_id: &'a str,
    pub(crate) progress: &'a Progress,
    pub(crate) flags: i32,
    pub(crate) attempt: Option<i32>,
    pub(crate) event: Option<&'a str>,
    pub(crate) message: Option<&'a str>,
}

impl<'a> HistoryInsert<'a> {
    /// A progress row written by `attempt`.
    pub(crate) fn progress(
        job_id: &'a str,
        progress: &'a Progress,
        flags: i32,
        attempt: Option<i32>,
    ) -> HistoryInsert<'a> {
        HistoryInsert {
            job_id,
            progress,
            flags,
            attempt,
            event: None,
            message: progress.message.as_deref(),
        }
    }
}

/// What thinning needs to know of one history row.
#[derive(Debug, Clone, Copy, PartialEq, Eq, QueryableByName)]
pub(crate) struct HistoryEntry {
    /// The row.
    #[diesel(sql_type = BigInt)]
    pub(crate) seq: i64,
    /// [`FLAG_CHECKPOINT`] / [`FLAG_TERMINAL`] bits.
    #[diesel(sql_type = Integer)]
    pub(crate) flags: i32,
    /// Whether its step differs from the previous row's (true for a first row with a step).
    #[diesel(sql_type = Bool)]
    pub(crate) step_change: bool,
}

/// Most ids per `DELETE … WHERE seq IN (…)` statement.
const MAX_IDS_PER_DELETE: usize = 500;

impl HistoryEntry {
    /// Every history row of one job, oldest first. Uses the `(job_id, seq)` index; the step
    /// comparison is a window over the same rows, so no step text leaves the database. (`$1`
    /// is a placeholder both SQLite and PostgreSQL read.)
    pub(crate) fn load(conn: &mut Conn, job_id: &str) -> QueryResult<Vec<Self>> {
        diesel::sql_query(
            "SELECT seq, flags, step IS DISTINCT FROM lag(step) OVER (ORDER BY seq) AS step_change \
             FROM job_progress WHERE job_id = $1 ORDER BY seq",
        )
        .bind::<Text, _>(job_id)
        .load(conn)
    }

    /// Deletes the history rows `seqs` of one job and sets the job's row count to `remaining`.
    pub(crate) fn delete(
        conn: &mut Conn,
        job_id: &str,
        seqs: &[i64],
        remaining: i64,
    ) -> QueryResult<()> {
        for chunk in seqs.chunks(MAX_IDS_PER_DELETE) {
            diesel::delete(
                job_progress::table
                    .filter(job_progress::job_id.eq(job_id))
                    .filter(job_progress::seq.eq_any(chunk)),
            )
            .execute(conn)?;
        }
        diesel::update(jobs::table.find(job_id))
            .set(jobs::history_rows.eq(remaining))
            .execute(conn)
            .map(drop)
    }
}

/// Counts one more history row of `job_id` in `jobs.history_rows` and returns the new count.
pub(crate) fn count_history_row(conn: &mut Conn, job_id: &str) -> QueryResult<i64> {
    diesel::update(jobs::table.find(job_id))
        .set(jobs::history_rows.eq(jobs::history_rows + 1))
        .returning(jobs::history_rows)
        .get_result(conn)
}
