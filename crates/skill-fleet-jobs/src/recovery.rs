//! Start-up recovery of jobs left running by a stopped server, and pruning old jobs.

use diesel::prelude::*;
use skill_fleet_types::JobStatus;

use crate::error::{Result, StoreError};
use crate::lifecycle::{Change, apply};
use crate::models::jobs::JobRow;
use crate::models::store_state::Stamp;
use crate::schema::{job_progress, jobs};
use crate::store::JobStore;

/// The error of a non-resumable job found running at start-up.
pub const INTERRUPTED_ERROR: &str = "interrupted: server stopped while running";

/// What [`JobStore::recover_interrupted`] did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RecoveryReport {
    /// Jobs of resumable types put back in the queue, checkpoint kept.
    pub requeued: Vec<String>,
    /// Other jobs, now failed with [`INTERRUPTED_ERROR`].
    pub failed: Vec<String>,
}

/// What [`JobStore::prune`] removed.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PruneReport {
    /// Jobs deleted.
    pub jobs: usize,
    /// Their ids (so callers can drop what they keep per job: cached responses, files).
    pub ids: Vec<String>,
    /// History rows deleted with them.
    pub progress_rows: usize,
}

/// Jobs deleted per transaction by [`JobStore::prune`] (also under SQLite's limit of bound
/// parameters per statement).
const PRUNE_BATCH: i64 = 500;

const TERMINAL: [&str; 3] = ["completed", "failed", "cancelled"];

impl JobStore {
    /// Settles every job left `running` by a server that stopped, in one transaction (call it
    /// once at start-up, before the executor runs): jobs whose type is in `resumable_types`
    /// go back to `queued` with their checkpoint, the others become `failed` with
    /// [`INTERRUPTED_ERROR`].
    ///
    /// Unlike the design note ("queued with `attempt + 1`"), recovery does not touch
    /// `attempt`: `attempt` counts starts and is incremented when the job is started again,
    /// so a job recovered once shows `attempt` 2 while it runs, never 3.
    pub fn recover_interrupted(&self, resumable_types: &[String]) -> Result<RecoveryReport> {
        self.write(|conn| {
            let rows: Vec<JobRow> = jobs::table
                .filter(jobs::status.eq(JobStatus::Running.as_str()))
                .order((jobs::created_at.asc(), jobs::id.asc()))
                .select(JobRow::as_select())
                .load(conn)?;
            let mut report = RecoveryReport::default();
            if rows.is_empty() {
                return Ok(report);
            }
            let stamp = Stamp::new();
            for mut row in rows {
                if resumable_types.contains(&row.job_type) {
                    apply(conn, &mut row, Change::Requeue, &stamp)?;
                    report.requeued.push(row.id);
                } else {
                    if let Some(rows) =
                        apply(conn, &mut row, Change::Fail(INTERRUPTED_ERROR), &stamp)?
                    {
                        self.cap_history(conn, &row.id, rows)?;
                    }
                    report.failed.push(row.id);
                }
            }
            tracing::info!(
                requeued = report.requeued.len(),
                failed = report.failed.len(),
                "recovered jobs interrupted by a stop"
            );
            Ok(report)
        })
    }

    /// Deletes finished (completed, failed, cancelled) jobs whose `completed_at` is older
    /// than `older_than` ago, with their progress history.
    pub fn prune(&self, older_than: chrono::Duration) -> Result<PruneReport> {
        let cutoff = crate::models::now()
            .checked_sub_signed(older_than)
            .ok_or_else(|| {
                StoreError::InvalidInput(format!("prune age {older_than} is out of range"))
            })?;
        // Batches of their own transactions: a first prune of a large database must not
        // hold the write lock (and so every other write) for seconds.
        let mut report = PruneReport::default();
        loop {
            let batch = self.write(|conn| {
                // In one transaction, so the ids read are exactly the rows deleted.
                let ids: Vec<String> = jobs::table
                    .filter(jobs::status.eq_any(TERMINAL))
                    .filter(jobs::completed_at.lt(cutoff))
                    .select(jobs::id)
                    .order(jobs::id.asc())
                    .limit(PRUNE_BATCH)
                    .load(conn)?;
                let progress_rows =
                    diesel::delete(job_progress::table.filter(job_progress::job_id.eq_any(&ids)))
                        .execute(conn)?;
                let jobs =
                    diesel::delete(jobs::table.filter(jobs::id.eq_any(&ids))).execute(conn)?;
                if jobs > 0 {
                    Stamp::new().version(conn)?;
                }
                Ok(PruneReport {
                    jobs,
                    ids,
                    progress_rows,
                })
            })?;
            let done = batch.ids.len() < usize::try_from(PRUNE_BATCH).unwrap_or(usize::MAX);
            report.jobs += batch.jobs;
            report.progress_rows += batch.progress_rows;
            report.ids.extend(batch.ids);
            if done {
                return Ok(report);
            }
        }
    }
}
