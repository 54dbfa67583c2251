//! Section `store`: progress rows persisted per second through the coalesced batch path
//! (`write_progress_batch`, one transaction per 100-job tick) against one transaction per
//! update (`record_progress`) and against raw prepared SQLite inserts into `job_progress`
//! (one transaction per tick), all in one run; plus the batch path on a store whose
//! per-job history cap is hit over and over (the cost of thinning). Folded in from the former
//! `crates/skill-fleet-jobs/benches/progress_batch.rs`; `cargo xtask bench-store` runs it.

use std::path::Path;
use std::time::{Duration, Instant};

use diesel::connection::SimpleConnection;
use diesel::prelude::*;
use diesel::query_builder::{AstPass, QueryFragment, QueryId};
use diesel::sql_types::{Double, Nullable, Text, Timestamp};
use diesel::sqlite::Sqlite;
use serde_json::json;
use skill_fleet_jobs::{ClaimFilter, JobStore, NewJob, ProgressWrite, StoreOptions, Writer};
use skill_fleet_types::{Progress, ProgressUpdate};

use super::Ctx;
use super::report::{Row, Section};
use super::stats::median;
use crate::Result;

const JOBS: usize = 100;
/// Goal: the batch path at least half as fast as raw inserts (raw / batch ≤ 2).
const GOAL: f64 = 0.5;
/// The history cap of the capped run: hit after 100 ticks, then every ~25 ticks per job.
const CAPPED_ROWS: u64 = 100;

/// A fresh store in `dir` with `JOBS` running jobs.
fn store_with_jobs(dir: &Path, name: &str) -> Result<(JobStore, String, Vec<(String, Writer)>)> {
    store_with_options(dir, name, StoreOptions::default())
}

/// Like [`store_with_jobs`], with explicit store options.
fn store_with_options(
    dir: &Path,
    name: &str,
    options: StoreOptions,
) -> Result<(JobStore, String, Vec<(String, Writer)>)> {
    let url = dir.join(format!("{name}.db")).display().to_string();
    let store = JobStore::open_with(&url, options)?;
    let mut jobs = Vec::with_capacity(JOBS);
    for id in (0..JOBS).map(|n| format!("job-{n:03}")) {
        store.create(&NewJob {
            id: Some(id.clone()),
            job_type: "optimization".into(),
            metadata: Default::default(),
            source: "bench".into(),
        })?;
        // The job just created is the only one queued: claiming starts it. Its writes carry
        // the claim's fence, as a worker's do.
        let claimed = store.claim(&ClaimFilter::default(), "bench")?;
        match claimed {
            Some(claimed) if claimed.job.id == id => {
                jobs.push((id, Writer::Owner(claimed.lease.fence())));
            }
            other => return Err(format!("claiming `{id}` took {other:?}").into()),
        }
    }
    Ok((store, url, jobs))
}

fn progress(tick: usize, job: usize) -> Progress {
    Progress {
        progress: ((tick * JOBS + job) % 1000) as f64 / 1000.0,
        step: Some(format!("step-{}", tick / 50)),
        message: Some(format!("trial {tick} of job {job}")),
        cost_usd: tick as f64 * 0.001,
        metric: Some(0.5),
        eta_seconds: Some(60.0),
    }
}

/// The raw baseline's insert: prepared once per connection (static query id), reused.
struct RawInsert<'a> {
    job_id: &'a str,
    progress: &'a Progress,
    at: chrono::NaiveDateTime,
}

struct RawInsertId;

impl QueryId for RawInsert<'_> {
    type QueryId = RawInsertId;
    const HAS_STATIC_QUERY_ID: bool = true;
}

impl QueryFragment<Sqlite> for RawInsert<'_> {
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
        out.push_bind_param::<Timestamp, _>(&self.at)?;
        out.push_sql(")");
        Ok(())
    }
}

impl RunQueryDsl<SqliteConnection> for RawInsert<'_> {}

fn raw_inserts(dir: &Path, ticks: usize) -> Result<Duration> {
    let (store, url, jobs) = store_with_jobs(dir, "raw")?;
    let ids: Vec<&String> = jobs.iter().map(|(id, _)| id).collect();
    drop(store);
    let mut conn = SqliteConnection::establish(&url)?;
    conn.batch_execute(
        "PRAGMA busy_timeout = 5000; PRAGMA synchronous = NORMAL; PRAGMA foreign_keys = ON;",
    )?;
    let started = Instant::now();
    for tick in 0..ticks {
        let rows: Vec<Progress> = (0..JOBS).map(|job| progress(tick, job)).collect();
        conn.immediate_transaction(|conn| {
            let at = chrono::Utc::now().naive_utc();
            for (id, progress) in ids.iter().zip(&rows) {
                RawInsert {
                    job_id: id,
                    progress,
                    at,
                }
                .execute(conn)?;
            }
            QueryResult::Ok(())
        })?;
    }
    Ok(started.elapsed())
}

fn batches(dir: &Path, ticks: usize) -> Result<Duration> {
    let (store, _, jobs) = store_with_jobs(dir, "batch")?;
    timed_batches(&store, &jobs, ticks)
}

/// The batch path with every job over a history cap of [`CAPPED_ROWS`] rows for most ticks.
fn capped_batches(dir: &Path, ticks: usize) -> Result<Duration> {
    let options = StoreOptions {
        max_history_rows_per_job: CAPPED_ROWS,
        ..StoreOptions::default()
    };
    let (store, _, jobs) = store_with_options(dir, "capped", options)?;
    timed_batches(&store, &jobs, ticks)
}

fn timed_batches(store: &JobStore, jobs: &[(String, Writer)], ticks: usize) -> Result<Duration> {
    let started = Instant::now();
    for tick in 0..ticks {
        let writes: Vec<ProgressWrite> = jobs
            .iter()
            .enumerate()
            .map(|(job, (id, writer))| ProgressWrite {
                job_id: id.clone(),
                progress: progress(tick, job),
                checkpoint: None,
                writer: writer.clone(),
            })
            .collect();
        let report = store.write_progress_batch(&writes)?;
        if report.written != JOBS {
            return Err(format!("batch wrote {} of {JOBS} rows", report.written).into());
        }
    }
    Ok(started.elapsed())
}

fn single_updates(dir: &Path, ticks: usize) -> Result<Duration> {
    let (store, _, jobs) = store_with_jobs(dir, "single")?;
    let started = Instant::now();
    for tick in 0..ticks {
        for (job, (id, writer)) in jobs.iter().enumerate() {
            let p = progress(tick, job);
            let update = ProgressUpdate {
                step: p.step,
                progress: Some(p.progress),
                cost_usd: Some(p.cost_usd),
                metric: p.metric,
                message: p.message,
                ..ProgressUpdate::default()
            };
            store.record_progress(id, &update, p.eta_seconds, writer)?;
        }
    }
    Ok(started.elapsed())
}

/// Rows per second of one run on a fresh database.
fn rate(ticks: usize, run: fn(&Path, usize) -> Result<Duration>) -> Result<f64> {
    let dir = tempfile::tempdir()?;
    let elapsed = run(dir.path(), ticks)?;
    Ok((ticks * JOBS) as f64 / elapsed.as_secs_f64())
}

struct Measured {
    raw: Vec<f64>,
    batch: Vec<f64>,
    single: Vec<f64>,
    capped: Vec<f64>,
}

fn measure(ticks: usize, rounds: usize) -> Result<Measured> {
    // record_progress is one transaction per row: fewer ticks keep the run short.
    let single_ticks = (ticks / 10).max(1);
    let mut measured = Measured {
        raw: Vec::new(),
        batch: Vec::new(),
        single: Vec::new(),
        capped: Vec::new(),
    };
    // The three paths run back to back in every round, so a ratio compares measurements
    // taken under the same machine load.
    for _ in 0..rounds {
        measured.raw.push(rate(ticks, raw_inserts)?);
        measured.batch.push(rate(ticks, batches)?);
        measured.single.push(rate(single_ticks, single_updates)?);
        measured.capped.push(rate(ticks, capped_batches)?);
    }
    Ok(measured)
}

pub async fn run(ctx: &Ctx) -> Result<Section> {
    let ticks = ctx.store_ticks.unwrap_or(if ctx.quick { 100 } else { 500 });
    let rounds = if ctx.quick { 3 } else { 5 };
    let m = tokio::task::spawn_blocking(move || measure(ticks, rounds).map_err(|e| e.to_string()))
        .await??;
    let batch_vs_raw: Vec<f64> = m.batch.iter().zip(&m.raw).map(|(b, r)| b / r).collect();
    let batch_vs_single: Vec<f64> = m.batch.iter().zip(&m.single).map(|(b, s)| b / s).collect();
    let capped_vs_batch: Vec<f64> = m.capped.iter().zip(&m.batch).map(|(c, b)| c / b).collect();
    let (raw, batch, single) = (median(&m.raw), median(&m.batch), median(&m.single));
    let capped = median(&m.capped);
    let ratio = median(&batch_vs_raw);
    let speedup = median(&batch_vs_single);
    Ok(Section {
        key: "store",
        title: "6. Store: progress rows persisted per second".to_owned(),
        rows: vec![
            Row::new(
                "write_progress_batch, 1 tx per 100-row tick",
                batch,
                "rows/s",
            )
            .baseline(raw, ratio)
            .goal(format!("≥ {GOAL:.2}× raw inserts"), ratio >= GOAL),
            Row::new("record_progress, 1 tx per row", single, "rows/s")
                .baseline(batch, single / batch.max(1e-9)),
            Row::new("batch / one-tx-per-row speed-up", speedup, "×"),
            Row::new(
                format!("write_progress_batch, history cap ({CAPPED_ROWS} rows/job) hit"),
                capped,
                "rows/s",
            )
            .baseline(batch, median(&capped_vs_batch)),
        ],
        notes: vec![format!(
            "{JOBS} running jobs; {ticks} ticks (one-tx-per-row: {}); baseline = raw prepared \
             INSERTs into job_progress, 1 tx per tick; WAL, synchronous=NORMAL; median of \
             {rounds} rounds, each on fresh databases, the paths back to back; the capped \
             run keeps {CAPPED_ROWS} history rows per job, so from tick {CAPPED_ROWS} on every \
             job is thinned about every {} ticks (the uncapped runs stay under the default \
             cap)",
            (ticks / 10).max(1),
            CAPPED_ROWS / 4
        )],
        data: json!({
            "ticks": ticks,
            "rounds": rounds,
            "raw_rows_per_s": m.raw,
            "batch_rows_per_s": m.batch,
            "single_rows_per_s": m.single,
            "capped_rows_per_s": m.capped,
            "capped_max_history_rows_per_job": CAPPED_ROWS,
        }),
    })
}
