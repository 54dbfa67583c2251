//! Progress rows persisted per second: the coalesced batch (`write_progress_batch`, one
//! transaction per 100-job tick) against one transaction per update (`record_progress`) and
//! against raw prepared SQLite inserts into `job_progress` (one transaction per tick), all in
//! one run. `cargo xtask bench-store` runs it; `-- --ticks N` changes the size.

use std::time::{Duration, Instant};

use diesel::connection::SimpleConnection;
use diesel::prelude::*;
use diesel::query_builder::{AstPass, QueryFragment, QueryId};
use diesel::sql_types::{Double, Nullable, Text, Timestamp};
use diesel::sqlite::Sqlite;
use skill_fleet_jobs::{JobStore, NewJob, ProgressWrite};
use skill_fleet_types::{Progress, ProgressUpdate};

const JOBS: usize = 100;
const RUNS: usize = 5;

/// A fresh store in `dir` with `JOBS` running jobs.
fn store_with_jobs(dir: &std::path::Path, name: &str) -> (JobStore, String, Vec<String>) {
    let url = dir.join(format!("{name}.db")).display().to_string();
    let store = JobStore::open(&url).expect("open store");
    let ids: Vec<String> = (0..JOBS).map(|n| format!("job-{n:03}")).collect();
    for id in &ids {
        store
            .create(&NewJob {
                id: Some(id.clone()),
                job_type: "optimization".into(),
                metadata: Default::default(),
                source: "bench".into(),
            })
            .expect("create");
        store.start(id).expect("start");
    }
    (store, url, ids)
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

fn raw_inserts(dir: &std::path::Path, ticks: usize) -> Duration {
    let (store, url, ids) = store_with_jobs(dir, "raw");
    drop(store);
    let mut conn = SqliteConnection::establish(&url).expect("connect");
    conn.batch_execute(
        "PRAGMA busy_timeout = 5000; PRAGMA synchronous = NORMAL; PRAGMA foreign_keys = ON;",
    )
    .expect("pragmas");
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
        })
        .expect("raw insert");
    }
    started.elapsed()
}

fn batches(dir: &std::path::Path, ticks: usize) -> Duration {
    let (store, _, ids) = store_with_jobs(dir, "batch");
    let started = Instant::now();
    for tick in 0..ticks {
        let writes: Vec<ProgressWrite> = ids
            .iter()
            .enumerate()
            .map(|(job, id)| ProgressWrite {
                job_id: id.clone(),
                progress: progress(tick, job),
                checkpoint: None,
            })
            .collect();
        let report = store.write_progress_batch(&writes).expect("batch");
        assert_eq!(report.written, JOBS);
    }
    started.elapsed()
}

fn single_updates(dir: &std::path::Path, ticks: usize) -> Duration {
    let (store, _, ids) = store_with_jobs(dir, "single");
    let started = Instant::now();
    for tick in 0..ticks {
        for (job, id) in ids.iter().enumerate() {
            let p = progress(tick, job);
            let update = ProgressUpdate {
                step: p.step,
                progress: Some(p.progress),
                cost_usd: Some(p.cost_usd),
                metric: p.metric,
                message: p.message,
                checkpoint: None,
            };
            store
                .record_progress(id, &update, p.eta_seconds)
                .expect("record progress");
        }
    }
    started.elapsed()
}

/// Rows per second of one run on a fresh database.
fn rate(ticks: usize, run: impl Fn(&std::path::Path, usize) -> Duration) -> f64 {
    let dir = tempfile::tempdir().expect("temp dir");
    let elapsed = run(dir.path(), ticks);
    (ticks * JOBS) as f64 / elapsed.as_secs_f64()
}

fn median(mut values: Vec<f64>) -> f64 {
    values.sort_by(f64::total_cmp);
    values[values.len() / 2]
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let ticks = args
        .iter()
        .position(|arg| arg == "--ticks")
        .and_then(|i| args.get(i + 1))
        .and_then(|n| n.parse().ok())
        .unwrap_or(500);
    // record_progress is one transaction per row: fewer ticks keep the run short.
    let single_ticks = (ticks / 10).max(1);

    // The three paths run back to back in every round, so a ratio compares measurements
    // taken under the same machine load; the medians over the rounds are reported.
    let (mut raw_rates, mut batch_rates, mut single_rates, mut ratios) =
        (vec![], vec![], vec![], vec![]);
    for _ in 0..RUNS {
        let raw = rate(ticks, raw_inserts);
        let batch = rate(ticks, batches);
        let single = rate(single_ticks, single_updates);
        ratios.push(raw / batch);
        raw_rates.push(raw);
        batch_rates.push(batch);
        single_rates.push(single);
    }
    let (raw, batch, single) = (median(raw_rates), median(batch_rates), median(single_rates));

    println!(
        "progress rows persisted per second ({JOBS} jobs; median of {RUNS} rounds; WAL, synchronous=NORMAL)"
    );
    println!();
    println!("| path | updates | rows/s | vs raw inserts |");
    println!("|---|---:|---:|---:|");
    let line = |name: &str, rows: usize, rate: f64| {
        println!("| {name} | {rows} | {rate:.0} | {:.2}x |", rate / raw);
    };
    line("raw prepared inserts, 1 tx per tick", ticks * JOBS, raw);
    line("write_progress_batch, 1 tx per tick", ticks * JOBS, batch);
    line(
        "record_progress, 1 tx per update",
        single_ticks * JOBS,
        single,
    );
    println!();
    println!(
        "raw / batch = {:.2} (median of per-round ratios; target: at most 2.00); \
         batch / record_progress = {:.1}",
        median(ratios),
        batch / single
    );
}
