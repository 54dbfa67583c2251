//! Progress: one report at a time, the coalesced batch the server flushes every tick, and
//! history pages.

use diesel::prelude::*;
use diesel::query_builder::{AstPass, QueryFragment, QueryId};
use diesel::sql_types::{BigInt, Double, Nullable, Text, Timestamp};
use diesel::sqlite::{Sqlite, SqliteConnection};
use serde_json::Value;
use skill_fleet_types::{
    Job, JobStatus, Progress, ProgressPage, ProgressUpdate, validate_cost, validate_metric,
    validate_progress,
};

use crate::error::Result;
use crate::lifecycle::{Change, apply};
use crate::models::job_progress::{InsertProgressRows, ProgressRow};
use crate::models::jobs::JobRow;
use crate::models::store_state::Stamp;
use crate::store::JobStore;

/// Rows per history page when none is asked for.
pub const DEFAULT_HISTORY_LIMIT: u32 = 100;
/// Largest history page served.
pub const MAX_HISTORY_LIMIT: u32 = 1000;

/// One job's latest merged progress, as the stream aggregator holds it at a flush.
#[derive(Debug, Clone, PartialEq)]
pub struct ProgressWrite {
    /// The job.
    pub job_id: String,
    /// The full latest state (not a partial update), ETA included.
    pub progress: Progress,
    /// A new checkpoint, if one arrived since the last flush.
    pub checkpoint: Option<Value>,
}

/// What [`JobStore::write_progress_batch`] did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct BatchReport {
    /// Jobs updated (one history row each).
    pub written: usize,
    /// Jobs not written: missing, no longer queued or running, or with out-of-range numbers.
    pub skipped: Vec<String>,
}

/// `UPDATE jobs SET <latest progress> WHERE id = ? AND status = 'running'`, as a query node
/// with a static id: diesel never caches its own `UPDATE` statements, this one is prepared
/// once per connection and reused on every flush.
#[derive(Debug, Clone, Copy)]
struct UpdateLatest<'a> {
    job_id: &'a str,
    progress: &'a Progress,
    checkpoint: Option<&'a str>,
    stamp: &'a Stamp,
}

#[derive(Debug)]
struct UpdateLatestId;

impl QueryId for UpdateLatest<'_> {
    type QueryId = UpdateLatestId;
    const HAS_STATIC_QUERY_ID: bool = true;
}

impl QueryFragment<Sqlite> for UpdateLatest<'_> {
    fn walk_ast<'b>(&'b self, mut out: AstPass<'_, 'b, Sqlite>) -> QueryResult<()> {
        out.push_sql("UPDATE jobs SET progress = ");
        out.push_bind_param::<Double, _>(&self.progress.progress)?;
        out.push_sql(", step = ");
        out.push_bind_param::<Nullable<Text>, _>(&self.progress.step)?;
        out.push_sql(", message = ");
        out.push_bind_param::<Nullable<Text>, _>(&self.progress.message)?;
        out.push_sql(", cost_usd = ");
        out.push_bind_param::<Double, _>(&self.progress.cost_usd)?;
        out.push_sql(", metric = ");
        out.push_bind_param::<Nullable<Double>, _>(&self.progress.metric)?;
        out.push_sql(", eta_seconds = ");
        out.push_bind_param::<Nullable<Double>, _>(&self.progress.eta_seconds)?;
        out.push_sql(", checkpoint = coalesce(");
        out.push_bind_param::<Nullable<Text>, _>(&self.checkpoint)?;
        out.push_sql(", checkpoint), updated_at = ");
        out.push_bind_param::<Timestamp, _>(&self.stamp.now)?;
        out.push_sql(", version = ");
        out.push_bind_param::<BigInt, _>(&self.stamp.version)?;
        out.push_sql(" WHERE id = ");
        out.push_bind_param::<Text, _>(self.job_id)?;
        out.push_sql(" AND status = 'running'");
        Ok(())
    }
}

impl RunQueryDsl<SqliteConnection> for UpdateLatest<'_> {}

fn valid_numbers(progress: &Progress) -> bool {
    validate_progress(progress.progress).is_ok()
        && validate_cost(progress.cost_usd).is_ok()
        && progress.metric.is_none_or(|m| validate_metric(m).is_ok())
        && progress
            .eta_seconds
            .is_none_or(|eta| eta.is_finite() && eta >= 0.0)
}

impl JobStore {
    /// Records one progress report in one transaction: fields the update leaves out keep
    /// their values, a checkpoint is stored if given, one history row is appended and the
    /// version bumped. A queued job is started first (its first event starts it); a finished
    /// job refuses with [`crate::StoreError::InvalidTransition`]. `eta_seconds` is the
    /// server's estimate; `None` keeps the previous one.
    pub fn record_progress(
        &self,
        id: &str,
        update: &ProgressUpdate,
        eta_seconds: Option<f64>,
    ) -> Result<Job> {
        update.validate()?;
        self.change(
            id,
            Change::Progress {
                update,
                eta_seconds,
            },
        )
    }

    /// Writes the latest progress of many jobs in ONE transaction: per job the latest fields,
    /// the checkpoint if given, the version, and one history row. This is the coalesced path
    /// the server flushes every tick. Each job's update is a statement prepared once per
    /// connection; the history rows go in multi-row inserts.
    ///
    /// A queued job is started first, as by its first event. Jobs that are missing, no longer
    /// queued or running, or whose numbers are out of range are listed in
    /// [`BatchReport::skipped`] and never fail the batch. Several writes for one job in a
    /// batch are all applied in order.
    pub fn write_progress_batch(&self, writes: &[ProgressWrite]) -> Result<BatchReport> {
        if writes.is_empty() {
            return Ok(BatchReport::default());
        }
        self.write(|conn| {
            let stamp = Stamp::begin(conn)?;
            let mut report = BatchReport::default();
            let mut history = Vec::with_capacity(writes.len());
            for write in writes {
                if !valid_numbers(&write.progress) {
                    tracing::warn!(job.id = %write.job_id, "progress out of range, not written");
                    report.skipped.push(write.job_id.clone());
                    continue;
                }
                let checkpoint = write.checkpoint.as_ref().map(Value::to_string);
                let update = UpdateLatest {
                    job_id: &write.job_id,
                    progress: &write.progress,
                    checkpoint: checkpoint.as_deref(),
                    stamp: &stamp,
                };
                let mut updated = update.execute(conn)?;
                if updated == 0 {
                    if JobRow::find_status(conn, &write.job_id)? == Some(JobStatus::Queued) {
                        let mut row = JobRow::find(conn, &write.job_id)?;
                        apply(conn, &mut row, Change::Start, &stamp)?;
                        updated = update.execute(conn)?;
                    }
                    if updated == 0 {
                        report.skipped.push(write.job_id.clone());
                        continue;
                    }
                }
                history.push((write.job_id.as_str(), &write.progress));
            }
            report.written = history.len();
            if report.written > 0 {
                InsertProgressRows::execute_chunked(conn, &history, stamp.now)?;
                stamp.commit(conn)?;
            }
            Ok(report)
        })
    }

    /// A page of one job's progress history: rows with `seq > after`, oldest first.
    /// `limit` 0 means [`DEFAULT_HISTORY_LIMIT`]; it is capped at [`MAX_HISTORY_LIMIT`].
    /// `next_after` is set when more rows follow this page.
    pub fn progress_history(
        &self,
        id: &str,
        after: Option<i64>,
        limit: u32,
    ) -> Result<ProgressPage> {
        let limit = match limit {
            0 => DEFAULT_HISTORY_LIMIT,
            n => n.min(MAX_HISTORY_LIMIT),
        };
        let mut conn = self.conn()?;
        if JobRow::find_status(&mut conn, id)?.is_none() {
            return Err(crate::StoreError::NotFound { id: id.to_owned() });
        }
        let mut rows = ProgressRow::page(&mut conn, id, after.unwrap_or(0), i64::from(limit) + 1)?;
        let more = rows.len() > limit as usize;
        rows.truncate(limit as usize);
        let records: Vec<_> = rows.into_iter().map(ProgressRow::into_record).collect();
        let next_after = if more {
            records.last().map(|r| r.seq)
        } else {
            None
        };
        Ok(ProgressPage {
            records,
            next_after,
        })
    }
}
