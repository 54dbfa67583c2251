//! The `job_progress` table: one row per coalesced progress write.

use chrono::NaiveDateTime;
use diesel::prelude::*;
use diesel::query_builder::{AstPass, QueryFragment, QueryId};
use diesel::sql_types::{Double, Nullable, Text, Timestamp};
use diesel::sqlite::{Sqlite, SqliteConnection};
use skill_fleet_types::{Progress, ProgressRecord};

use crate::schema::job_progress;

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
    pub(crate) job_id: &'a str,
    pub(crate) progress: &'a Progress,
    pub(crate) created_at: NaiveDateTime,
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
             (job_id, step, progress, message, cost_usd, metric, created_at) VALUES (",
        );
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
    rows: &'a [(&'a str, &'a Progress)],
    created_at: NaiveDateTime,
}

/// Most rows per statement (7 bind parameters each, far below SQLite's limit).
const MAX_ROWS_PER_INSERT: usize = 64;

impl<'a> InsertProgressRows<'a> {
    /// Inserts `rows` in as few statements as possible, in order.
    pub(crate) fn execute_chunked(
        conn: &mut SqliteConnection,
        rows: &'a [(&'a str, &'a Progress)],
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
             (job_id, step, progress, message, cost_usd, metric, created_at) VALUES ",
        );
        for (i, (job_id, progress)) in self.rows.iter().enumerate() {
            out.push_sql(if i == 0 { "(" } else { ", (" });
            out.push_bind_param::<Text, _>(*job_id)?;
            out.push_sql(", ");
            out.push_bind_param::<Nullable<Text>, _>(&progress.step)?;
            out.push_sql(", ");
            out.push_bind_param::<Double, _>(&progress.progress)?;
            out.push_sql(", ");
            out.push_bind_param::<Nullable<Text>, _>(&progress.message)?;
            out.push_sql(", ");
            out.push_bind_param::<Double, _>(&progress.cost_usd)?;
            out.push_sql(", ");
            out.push_bind_param::<Nullable<Double>, _>(&progress.metric)?;
            out.push_sql(", ");
            out.push_bind_param::<Timestamp, _>(&self.created_at)?;
            out.push_sql(")");
        }
        Ok(())
    }
}

impl RunQueryDsl<SqliteConnection> for InsertProgressRows<'_> {}
