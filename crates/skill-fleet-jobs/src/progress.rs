//! Progress: one report at a time, the coalesced batch the server flushes every tick, history
//! pages, and the per-job cap of the history.
//!
//! # The history cap
//!
//! Every write leaves one `job_progress` row, so a job reporting for days would grow its
//! history without bound. [`StoreOptions::max_history_rows_per_job`] caps it: `jobs.history_rows`
//! counts each job's rows, bumped by the statement that already updates the job. A batch
//! then finds the jobs it took past the cap with one statement (primary-key lookups of its
//! jobs, no `count(*)`); a single write reads the count back from its own update. When a
//! write takes a job past the cap its history is thinned in the same transaction:
//!
//! - never deleted: the job's first and newest rows, step changes (rows whose step differs
//!   from the previous row's), rows carrying a checkpoint and terminal states;
//! - the newest half of the rows is kept as it is (recent history stays dense);
//! - among the other (coalesced) rows of the older half, every second one is deleted.
//!
//! One pass takes a job from `cap + 1` rows to about `3/4 cap`, so thinning runs once per
//! about `cap / 4` writes of that job and reads its `cap` rows: amortized, a few rows read and
//! one deleted per write. Older history loses half its resolution at every pass it is part
//! of, so resolution falls off with age. When protected rows crowd the older half, the dense
//! window shrinks (halving) until the cap is met; if the protected rows alone exceed the cap,
//! nothing protected is deleted, a warning is logged once for the job, and the job is
//! thinned again only after `cap / 4` more rows.
//!
//! History cursors are `seq` values (`seq > after`), so a cursor naming a deleted row still
//! pages on correctly from where it was.
//!
//! [`StoreOptions::max_history_rows_per_job`]: crate::StoreOptions::max_history_rows_per_job

use std::collections::HashMap;
use std::sync::{Mutex, PoisonError};

use serde_json::Value;
use skill_fleet_types::{
    Job, JobStatus, Progress, ProgressPage, ProgressUpdate, validate_cost, validate_metric,
    validate_progress,
};

use crate::backend::{Active, Conn, FenceBind, LatestProgress};
use crate::error::{Result, StoreError};
use crate::lease::Writer;
use crate::lifecycle::{Change, apply};
use crate::models::job_progress::{FLAG_CHECKPOINT, HistoryEntry, HistoryInsert, ProgressRow};
use crate::models::jobs::JobRow;
use crate::store::JobStore;

/// The per-job cap of history rows, and the jobs whose protected rows alone fill it.
#[derive(Debug)]
pub(crate) struct HistoryCap {
    /// Most history rows per job.
    pub(crate) max_rows: i64,
    /// Jobs left over the cap after thinning (their protected rows fill it): job id → the row
    /// count at which thinning is tried again. A job is warned about when it enters.
    overfull: Mutex<HashMap<String, i64>>,
}

impl HistoryCap {
    /// A cap of `max_rows` rows per job; 0 is refused.
    pub(crate) fn new(max_rows: u64) -> Result<HistoryCap> {
        if max_rows == 0 {
            return Err(StoreError::InvalidInput(
                "max history rows per job must be at least 1, got 0".to_owned(),
            ));
        }
        Ok(HistoryCap {
            max_rows: i64::try_from(max_rows).unwrap_or(i64::MAX),
            overfull: Mutex::new(HashMap::new()),
        })
    }

    /// Whether thinning `job_id` at `rows` rows can help: false for a job left over the cap
    /// by its protected rows until it has grown by a quarter of the cap since.
    fn worth_thinning(&self, job_id: &str, rows: i64) -> bool {
        let overfull = self.overfull.lock().unwrap_or_else(PoisonError::into_inner);
        overfull
            .get(job_id)
            .is_none_or(|&retry_at| rows >= retry_at)
    }

    /// Records where thinning left `job_id`; warns once when it could not meet the cap.
    fn settled(&self, job_id: &str, remaining: i64) {
        let mut overfull = self.overfull.lock().unwrap_or_else(PoisonError::into_inner);
        if remaining <= self.max_rows {
            overfull.remove(job_id);
            return;
        }
        let retry_at = remaining.saturating_add((self.max_rows / 4).max(1));
        if overfull.insert(job_id.to_owned(), retry_at).is_none() {
            tracing::warn!(
                job.id = %job_id,
                history_rows = remaining,
                max_history_rows_per_job = self.max_rows,
                "progress history over its cap: its first and newest rows, step changes, \
                 checkpoints and terminal states alone exceed it, and those are never thinned"
            );
        }
    }
}

/// The history rows of one job to delete so that it has at most `cap` rows, given all its
/// rows oldest first (see the [module documentation](self)). Protected rows are never in it.
pub(crate) fn plan_thinning(entries: &[HistoryEntry], cap: i64) -> Vec<i64> {
    let cap = usize::try_from(cap).unwrap_or(usize::MAX);
    let last = entries.len().saturating_sub(1);
    // (seq, protected), oldest first.
    let mut live: Vec<(i64, bool)> = entries
        .iter()
        .enumerate()
        .map(|(i, entry)| {
            let protected = i == 0 || i == last || entry.flags != 0 || entry.step_change;
            (entry.seq, protected)
        })
        .collect();
    let mut doomed = Vec::new();
    // The newest rows, kept as they are: half of them at first.
    let mut keep_new = live.len() - live.len() / 2;
    while live.len() > cap {
        let older = live.len().saturating_sub(keep_new);
        let candidates: Vec<usize> = (0..older).filter(|&i| !live[i].1).collect();
        let victims: Vec<usize> = if candidates.len() >= 2 {
            // Every second one: keep the 1st, delete the 2nd, keep the 3rd, …
            candidates.into_iter().skip(1).step_by(2).collect()
        } else if keep_new > 0 {
            // Protected rows crowd the older part: let it reach into the newer rows.
            keep_new /= 2;
            continue;
        } else if candidates.len() == 1 {
            candidates
        } else {
            // Only protected rows are left.
            break;
        };
        let mut kill = vec![false; live.len()];
        for victim in victims {
            kill[victim] = true;
            doomed.push(live[victim].0);
        }
        let mut index = 0;
        live.retain(|_| {
            let keep = !kill[index];
            index += 1;
            keep
        });
    }
    doomed.sort_unstable();
    doomed
}

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
    /// Who writes it: the batch writes only what [`crate::lease::admits`], in its statement.
    pub writer: Writer,
}

/// What [`JobStore::write_progress_batch`] did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct BatchReport {
    /// Writes applied (one history row each).
    pub written: usize,
    /// Every job the batch changed, once, in the order of its first write, with the version
    /// it has now: the batch is one transaction, so that is the same version for all.
    pub versions: Vec<(String, u64)>,
    /// Jobs not written: missing, no longer queued or running, or with out-of-range numbers.
    pub skipped: Vec<String>,
}

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
    /// server's estimate; `None` keeps the previous one. The history is capped as in
    /// [`JobStore::write_progress_batch`].
    pub fn record_progress(
        &self,
        id: &str,
        update: &ProgressUpdate,
        eta_seconds: Option<f64>,
        writer: &Writer,
    ) -> Result<Job> {
        update.validate()?;
        self.change(
            id,
            Change::Progress {
                update,
                eta_seconds,
            },
            writer,
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
    ///
    /// A job this batch takes past [`crate::StoreOptions::max_history_rows_per_job`] has its
    /// older history thinned in the same transaction: its first row, step changes,
    /// checkpoints, terminal states and its newest rows stay; every second one of the other
    /// rows of the older half goes. A write carrying a checkpoint leaves a row that is never
    /// thinned. A history page's cursor (`seq`) stays valid across thinning.
    pub fn write_progress_batch(&self, writes: &[ProgressWrite]) -> Result<BatchReport> {
        if writes.is_empty() {
            return Ok(BatchReport::default());
        }
        let batch = |conn: &mut Conn| {
            // The batch's jobs are locked first, in id order, and only then the version (the
            // lock order of crate::backend): on PostgreSQL a batch never holds the version
            // while it waits for a job another write holds.
            let mut ids: Vec<&str> = writes.iter().map(|w| w.job_id.as_str()).collect();
            ids.sort_unstable();
            ids.dedup();
            Active::lock_jobs(conn, &ids)?;
            let stamp = self.stamp(conn)?;
            let version = stamp.version(conn)?;
            let mut report = BatchReport::default();
            let mut history = Vec::with_capacity(writes.len());
            for write in writes {
                if !valid_numbers(&write.progress) {
                    tracing::warn!(job.id = %write.job_id, "progress out of range, not written");
                    report.skipped.push(write.job_id.clone());
                    continue;
                }
                let checkpoint = write.checkpoint.as_ref().map(Value::to_string);
                let latest = LatestProgress {
                    job_id: &write.job_id,
                    progress: &write.progress,
                    checkpoint: checkpoint.as_deref(),
                    now: stamp.now,
                    lease_until: stamp.lease_until,
                    fence: FenceBind::of(&write.writer),
                    version,
                };
                let mut attempt = Active::update_latest(conn, &latest)?;
                // A queued job is started by its first write, unless the write claims to
                // come from an owner (a queued job has none: the owner was rescued).
                if attempt.is_none()
                    && !matches!(write.writer, Writer::Owner(_))
                    && JobRow::find_status(conn, &write.job_id)? == Some(JobStatus::Queued)
                {
                    let mut row = JobRow::find_for_write(conn, &write.job_id)?;
                    apply(conn, &mut row, Change::Start, &stamp)?;
                    attempt = Active::update_latest(conn, &latest)?;
                }
                let Some(attempt) = attempt else {
                    report.skipped.push(write.job_id.clone());
                    continue;
                };
                let flags = if write.checkpoint.is_some() {
                    FLAG_CHECKPOINT
                } else {
                    0
                };
                history.push(HistoryInsert::progress(
                    &write.job_id,
                    &write.progress,
                    flags,
                    Some(attempt),
                ));
            }
            report.written = history.len();
            if report.written > 0 {
                Active::insert_history(conn, &history, stamp.now)?;
                // One statement for the whole batch finds the jobs it took past the cap.
                let ids: Vec<&str> = history.iter().map(|row| row.job_id).collect();
                let max_rows = self.history_cap().max_rows;
                for (job_id, rows) in Active::jobs_over_cap(conn, &ids, max_rows)? {
                    self.cap_history(conn, &job_id, rows)?;
                }
                let version = u64::try_from(version).unwrap_or(0);
                let mut seen = std::collections::HashSet::with_capacity(history.len());
                report.versions = history
                    .iter()
                    .filter(|row| seen.insert(row.job_id))
                    .map(|row| (row.job_id.to_owned(), version))
                    .collect();
            }
            Ok(report)
        };
        // A batch that wrote nothing rolls back, and so leaves the change counter alone.
        self.write_if(batch, |report| report.written > 0)
    }

    /// Called inside a write transaction after a history row of `job_id` was inserted, with
    /// the job's row count after it: thins the job's history when the count is over the cap
    /// (see the [module documentation](self)).
    pub(crate) fn cap_history(&self, conn: &mut Conn, job_id: &str, rows: i64) -> Result<()> {
        let cap = self.history_cap();
        if rows <= cap.max_rows || !cap.worth_thinning(job_id, rows) {
            return Ok(());
        }
        let entries = HistoryEntry::load(conn, job_id)?;
        let doomed = plan_thinning(&entries, cap.max_rows);
        let remaining = i64::try_from(entries.len() - doomed.len()).unwrap_or(i64::MAX);
        // Also corrects the count, should it have drifted from the rows.
        HistoryEntry::delete(conn, job_id, &doomed, remaining)?;
        tracing::debug!(
            job.id = %job_id,
            deleted = doomed.len(),
            history_rows = remaining,
            "thinned progress history"
        );
        cap.settled(job_id, remaining);
        Ok(())
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

#[cfg(test)]
mod tests {
    use super::*;

    /// Rows `0..n` with seq = index; `protected` indexes are step changes.
    fn entries(n: i64, protected: &[i64]) -> Vec<HistoryEntry> {
        (0..n)
            .map(|seq| HistoryEntry {
                seq,
                flags: 0,
                step_change: protected.contains(&seq),
            })
            .collect()
    }

    #[test]
    fn one_pass_halves_the_older_half() {
        // 11 rows, cap 10: the newest 6 stay; of 1..=4 (row 0 is the first) every second goes.
        assert_eq!(plan_thinning(&entries(11, &[]), 10), [2, 4]);
        // 101 rows, cap 100: rows 1..=49 are candidates, 24 of them go.
        let doomed = plan_thinning(&entries(101, &[]), 100);
        assert_eq!(doomed, (1..25).map(|k| 2 * k).collect::<Vec<_>>());
    }

    #[test]
    fn protected_rows_are_skipped_and_do_not_count_as_every_second() {
        // Candidates 1, 3, 4 (2 is a step change): the second candidate, 3, goes.
        assert_eq!(plan_thinning(&entries(11, &[2]), 10), [3]);
        let mut rows = entries(11, &[]);
        rows[2].flags = 1;
        assert_eq!(plan_thinning(&rows, 10), [3]);
    }

    #[test]
    fn under_the_cap_nothing_goes() {
        assert!(plan_thinning(&entries(10, &[]), 10).is_empty());
        assert!(plan_thinning(&[], 1).is_empty());
    }

    #[test]
    fn crowded_older_half_reaches_into_newer_rows() {
        // Rows 1..=9 protected, cap 12, 16 rows: the older half holds no candidate, so the
        // kept window shrinks until the plain rows 10..=14 can be thinned.
        let protected: Vec<i64> = (1..10).collect();
        let doomed = plan_thinning(&entries(16, &protected), 12);
        assert_eq!(doomed.len(), 4, "{doomed:?}");
        assert!(
            doomed.iter().all(|seq| (10..15).contains(seq)),
            "{doomed:?}"
        );
    }

    #[test]
    fn protected_rows_past_the_cap_stay() {
        // Everything protected: nothing to delete, whatever the cap.
        let all: Vec<i64> = (0..20).collect();
        assert!(plan_thinning(&entries(20, &all), 5).is_empty());
        // Plain rows among them go, but never the first or the newest row.
        let doomed = plan_thinning(&entries(20, &(0..15).collect::<Vec<_>>()), 5);
        assert_eq!(doomed, [15, 16, 17, 18]);
    }
}
