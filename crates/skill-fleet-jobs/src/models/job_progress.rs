//! The `job_progress` table: one row per coalesced progress write, and the queries that
//! thin a job's history down to its cap.

use chrono::NaiveDateTime;
use diesel::prelude::*;
use diesel::query_builder::{AstPass, QueryFragment, QueryId};
use diesel::sql_types::{BigInt, Bool, Double, Integer, Nullable, Text, Timestamp};
use diesel::sqlite::{Sqlite, SqliteConnection};
use skill_fleet_types::{Progress, ProgressRecord};

use crate::schema::{job_progress, jobs};

/// `job_progress.flags` bit: the row carries a checkpoint (never thinned).
pub(crate) const FLAG_CHECKPOINT: i32 = 1;
/// `job_progress.flags` bit: the row is a terminal state (never thinned).
pub(crate) const FLAG_TERMINAL: i32 = 2;

/// One history row as read back.
#[derive(Debug, Clone, Queryable, Selectable)]
#[diesel(table_name = job_progress, check_for_backend(Sqlite))]
pub(crate) struct ProgressRow {
    seq: i64,
    step: Option<String>,
    progress: f64,
    message: Option<String>,
    cost_usd: f64,
    metric: Option<f64>,
    created_at: NaiveDateTime,
}

impl ProgressRow {
    /// Up to `limit` rows of one job with `seq > after`, in `seq` order.
    pub(crate) fn page(
        conn: &mut SqliteConnection,
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
            created_at: self.created_at.and_utc(),
        }
    }
}

/// `INSERT` of one history row, as a query node with a static id so that diesel prepares it
/// once per connection and reuses it (diesel's own single-row insert is cached as well, but
/// this keeps the hot path's SQL explicit and next to [`crate::progress`]'s update).
#[derive(Debug, Clone, Copy)]
pub(crate) struct InsertProgress<'a> {
    pub(crate) row: HistoryInsert<'a>,
    pub(crate) created_at: NaiveDateTime,
}

/// One history row to insert: the job, its full progress and its [`FLAG_CHECKPOINT`] /
/// [`FLAG_TERMINAL`] bits.
#[derive(Debug, Clone, Copy)]
pub(crate) struct HistoryInsert<'a> {
    pub(crate) job_id: &'a str,
    pub(crate) progress: &'a Progress,
    pub(crate) flags: i32,
}

impl<'a> HistoryInsert<'a> {
    /// The bind parameters of one `VALUES` tuple (without `created_at`).
    fn walk<'b>(&'b self, out: &mut AstPass<'_, 'b, Sqlite>) -> QueryResult<()>
    where
        'a: 'b,
    {
        out.push_bind_param::<Text, _>(self.job_id)?;
        out.push_sql(", ");
        out.push_bind_param::<Nullable<Text>, _>(&self.progress.step)?;
        out.push_sql(", ");
        out.push_bind_param::<Double, _>(&self.progress.progress)?;
        out.push_sql(", ");
        out.push_bind_param::<Nullable<Text>, _>(&self.progress.message)?;
        out.push_sql(", ");
        out.push_bind_param::<Double, _>(&self.progress.cost_usd)?;
        out.push_sql(", ");
        out.push_bind_param::<Nullable<Double>, _>(&self.progress.metric)?;
        out.push_sql(", ");
        out.push_bind_param::<Integer, _>(&self.flags)?;
        out.push_sql(", ");
        Ok(())
    }
}

/// The static query id of [`InsertProgress`].
#[derive(Debug)]
pub(crate) struct InsertProgressId;

impl QueryId for InsertProgress<'_> {
    type QueryId = InsertProgressId;
    const HAS_STATIC_QUERY_ID: bool = true;
}

impl QueryFragment<Sqlite> for InsertProgress<'_> {
    fn walk_ast<'b>(&'b self, mut out: AstPass<'_, 'b, Sqlite>) -> QueryResult<()> {
        out.push_sql(
            "INSERT INTO job_progress \
             (job_id, step, progress, message, cost_usd, metric, flags, created_at) VALUES (",
        );
        self.row.walk(&mut out)?;
        out.push_bind_param::<Timestamp, _>(&self.created_at)?;
        out.push_sql(")");
        Ok(())
    }
}

impl RunQueryDsl<SqliteConnection> for InsertProgress<'_> {}

/// A multi-row `INSERT` of history rows sharing one timestamp: one statement for many jobs.
///
/// Its SQL depends on the number of rows, so it has no static query id; diesel then caches
/// the prepared statement by its SQL text. [`InsertProgressRows::execute_chunked`] only uses
/// power-of-two row counts, so a connection holds at most a handful of these statements.
#[derive(Debug, Clone, Copy)]
pub(crate) struct InsertProgressRows<'a> {
    rows: &'a [HistoryInsert<'a>],
    created_at: NaiveDateTime,
}

/// Most rows per statement (8 bind parameters each, far below SQLite's limit).
const MAX_ROWS_PER_INSERT: usize = 64;

impl<'a> InsertProgressRows<'a> {
    /// Inserts `rows` in as few statements as possible, in order.
    pub(crate) fn execute_chunked(
        conn: &mut SqliteConnection,
        rows: &'a [HistoryInsert<'a>],
        created_at: NaiveDateTime,
    ) -> QueryResult<()> {
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
}

impl QueryId for InsertProgressRows<'_> {
    type QueryId = ();
    const HAS_STATIC_QUERY_ID: bool = false;
}

impl QueryFragment<Sqlite> for InsertProgressRows<'_> {
    fn walk_ast<'b>(&'b self, mut out: AstPass<'_, 'b, Sqlite>) -> QueryResult<()> {
        out.push_sql(
            "INSERT INTO job_progress \
             (job_id, step, progress, message, cost_usd, metric, flags, created_at) VALUES ",
        );
        for (i, row) in self.rows.iter().enumerate() {
            out.push_sql(if i == 0 { "(" } else { ", (" });
            row.walk(&mut out)?;
            out.push_bind_param::<Timestamp, _>(&self.created_at)?;
            out.push_sql(")");
        }
        Ok(())
    }
}

impl RunQueryDsl<SqliteConnection> for InsertProgressRows<'_> {}

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

/// A job over its history cap, as [`HistoryEntry::over_cap`] finds it.
#[derive(Debug, QueryableByName)]
struct OverCap {
    #[diesel(sql_type = Text)]
    id: String,
    #[diesel(sql_type = BigInt)]
    history_rows: i64,
}

/// Most ids per `DELETE … WHERE seq IN (…)` statement.
const MAX_IDS_PER_DELETE: usize = 500;

impl HistoryEntry {
    /// Every history row of one job, oldest first. Uses the `(job_id, seq)` index; the step
    /// comparison is a window over the same rows, so no step text leaves SQLite.
    pub(crate) fn load(conn: &mut SqliteConnection, job_id: &str) -> QueryResult<Vec<Self>> {
        diesel::sql_query(
            "SELECT seq, flags, step IS NOT lag(step) OVER (ORDER BY seq) AS step_change \
             FROM job_progress WHERE job_id = ? ORDER BY seq",
        )
        .bind::<Text, _>(job_id)
        .load(conn)
    }

    /// Of the jobs `ids`, those with more than `cap` history rows, with their counts. One
    /// statement whatever the number of ids (they go in as one JSON array), so its prepared
    /// form is reused on every flush.
    pub(crate) fn over_cap(
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

    /// Deletes the history rows `seqs` of one job and sets the job's row count to `remaining`.
    pub(crate) fn delete(
        conn: &mut SqliteConnection,
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
pub(crate) fn count_history_row(conn: &mut SqliteConnection, job_id: &str) -> QueryResult<i64> {
    diesel::update(jobs::table.find(job_id))
        .set(jobs::history_rows.eq(jobs::history_rows + 1))
        .returning(jobs::history_rows)
        .get_result(conn)
}
