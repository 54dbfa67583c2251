//! Pruning old jobs, and the error of a job a stopped server left running (start-up
//! recovery is the rescue of [`crate::lease`]).

use diesel::prelude::*;

use crate::backend::{Active, Conn};
use crate::error::{Result, StoreError};
use crate::models::artifacts::delete_with_chunks;
use crate::schema::{artifacts, job_progress, jobs};
use crate::store::JobStore;

/// The error of a non-resumable job a stopped server left running (a graceful stop, or the
/// rescue at the next start).
pub const INTERRUPTED_ERROR: &str = "interrupted: server stopped while running";

/// What [`JobStore::prune`] removed.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PruneReport {
    /// Jobs deleted.
    pub jobs: usize,
    /// Their ids (so callers can drop what they keep per job: cached responses, files).
    pub ids: Vec<String>,
    /// History rows deleted with them.
    pub progress_rows: usize,
    /// Artifacts deleted with them (stored ones and uploads in flight).
    pub artifacts: usize,
}

/// Jobs deleted per transaction by [`JobStore::prune`] (also under SQLite's limit of bound
/// parameters per statement).
const PRUNE_BATCH: i64 = 500;

const TERMINAL: [&str; 3] = ["completed", "failed", "cancelled"];

impl JobStore {
    /// Deletes finished (completed, failed, cancelled) jobs whose `completed_at` is older
    /// than `older_than` ago, with their progress history and their artifacts.
    pub fn prune(&self, older_than: chrono::Duration) -> Result<PruneReport> {
        // An age out of range is refused before any write.
        crate::models::now()
            .checked_sub_signed(older_than)
            .ok_or_else(|| {
                StoreError::InvalidInput(format!("prune age {older_than} is out of range"))
            })?;
        // Batches of their own transactions: a first prune of a large database must not
        // hold the write lock (and so every other write) for seconds.
        let mut report = PruneReport::default();
        loop {
            let batch = self.write(|conn| {
                // The database's clock, as `completed_at` was written with.
                let cutoff = Active::now(conn)?
                    .checked_sub_signed(older_than)
                    .ok_or_else(|| {
                        StoreError::InvalidInput(format!("prune age {older_than} is out of range"))
                    })?;
                // In one transaction, so the ids read are exactly the rows deleted (on
                // PostgreSQL locked as read, in id order, as every multi-row lock is taken).
                let doomed = jobs::table
                    .filter(jobs::status.eq_any(TERMINAL))
                    .filter(jobs::completed_at.lt(cutoff))
                    .select(jobs::id)
                    .order(jobs::id.asc())
                    .limit(PRUNE_BATCH);
                let ids: Vec<String> = match conn {
                    Conn::Postgres(pg) => doomed.for_update().load(pg)?,
                    Conn::Sqlite(sqlite) => doomed.load(sqlite)?,
                };
                let progress_rows =
                    diesel::delete(job_progress::table.filter(job_progress::job_id.eq_any(&ids)))
                        .execute(conn)?;
                let artifact_ids: Vec<i64> = artifacts::table
                    .filter(artifacts::job_id.eq_any(&ids))
                    .select(artifacts::id)
                    .load(conn)?;
                let artifacts = delete_with_chunks(conn, &artifact_ids)?;
                let jobs =
                    diesel::delete(jobs::table.filter(jobs::id.eq_any(&ids))).execute(conn)?;
                if jobs > 0 {
                    self.stamp(conn)?.version(conn)?;
                }
                Ok(PruneReport {
                    jobs,
                    ids,
                    progress_rows,
                    artifacts,
                })
            })?;
            let done = batch.ids.len() < usize::try_from(PRUNE_BATCH).unwrap_or(usize::MAX);
            report.jobs += batch.jobs;
            report.progress_rows += batch.progress_rows;
            report.artifacts += batch.artifacts;
            report.ids.extend(batch.ids);
            if done {
                return Ok(report);
            }
        }
    }
}
