//! Section `restart`: a large database (100k jobs, 1M progress rows; quick: 10k / 100k) made
//! with recursive-CTE inserts, ~100 jobs left `running` of a resumable type; time from
//! process spawn to `/readyz` 200 and to the first SSE event of a recovered job.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use diesel::connection::SimpleConnection;
use diesel::prelude::*;
use serde_json::json;

use super::Ctx;
use super::http::{self, Conn};
use super::report::{Row, Section};
use super::server::{Server, ServerSpec};
use super::stats::median;
use crate::Result;

const RUNNING: usize = 100;
const GOAL_READY: Duration = Duration::from_secs(1);

/// Fills a migrated database: `jobs` jobs, `rows` progress rows spread evenly over them,
/// every (jobs / RUNNING)-th job an `optimization` left `running`, the rest finished.
fn generate(url: &str, jobs: usize, rows: usize) -> Result<Vec<String>> {
    skill_fleet_jobs::run_migrations(url)?;
    let mut conn = SqliteConnection::establish(url)?;
    let stride = (jobs / RUNNING).max(1);
    let per_job = (rows / jobs).max(1);
    conn.batch_execute(&format!(
        "PRAGMA journal_mode = WAL; PRAGMA synchronous = OFF; PRAGMA foreign_keys = OFF;
         BEGIN;
         WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < {jobs})
         INSERT INTO jobs (id, job_type, status, metadata, source, progress, step, message,
                           cost_usd, metric, checkpoint, attempt, error, create_body,
                           created_at, started_at, completed_at, updated_at, version)
         SELECT printf('job-%07d', i),
                CASE WHEN i % {stride} = 0 THEN 'optimization' ELSE 'evaluation' END,
                CASE WHEN i % {stride} = 0 THEN 'running'
                     WHEN i % 10 = 1 THEN 'failed' ELSE 'completed' END,
                '{{\"optimizer\":\"miprov2\",\"model\":\"bench\"}}', 'bench',
                CASE WHEN i % {stride} = 0 THEN 0.5 ELSE 1.0 END,
                'step-' || ({per_job} / 3), 'trial ' || {per_job},
                i * 0.001, 0.75,
                CASE WHEN i % {stride} = 0 THEN '{{\"trial\":7}}' END,
                1,
                CASE WHEN i % {stride} <> 0 AND i % 10 = 1 THEN 'bench failure' END,
                printf('{{\"metadata\":{{\"model\":\"bench\",\"optimizer\":\"miprov2\"}},\"type\":\"%s\"}}',
                       CASE WHEN i % {stride} = 0 THEN 'optimization' ELSE 'evaluation' END),
                strftime('%Y-%m-%d %H:%M:%f', 'now', printf('-%d seconds', {jobs} - i + 60)),
                strftime('%Y-%m-%d %H:%M:%f', 'now', printf('-%d seconds', {jobs} - i + 59)),
                CASE WHEN i % {stride} = 0 THEN NULL
                     ELSE strftime('%Y-%m-%d %H:%M:%f', 'now', printf('-%d seconds', {jobs} - i)) END,
                strftime('%Y-%m-%d %H:%M:%f', 'now', printf('-%d seconds', {jobs} - i)),
                {per_job} + 2
         FROM n;
         WITH RECURSIVE n(i) AS (SELECT 0 UNION ALL SELECT i + 1 FROM n WHERE i < {rows} - 1)
         INSERT INTO job_progress (job_id, step, progress, message, cost_usd, metric, created_at)
         SELECT printf('job-%07d', i / {per_job} + 1),
                'step-' || (i % {per_job} / 3),
                (i % {per_job}) * 1.0 / {per_job},
                'trial ' || (i % {per_job}) || ': evaluating a candidate',
                (i % {per_job}) * 0.01, 0.5,
                strftime('%Y-%m-%d %H:%M:%f', 'now', printf('-%d seconds', {rows} - i))
         FROM n;
         UPDATE store_state SET change_counter = {jobs} * ({per_job} + 2);
         COMMIT;
         PRAGMA wal_checkpoint(TRUNCATE);"
    ))?;
    Ok((1..=jobs)
        .filter(|i| i % stride == 0)
        .map(|i| format!("job-{i:07}"))
        .collect())
}

/// Puts the recovered jobs back to `running`, as a crash would have left them.
fn crash(url: &str, running: &[String]) -> Result {
    let mut conn = SqliteConnection::establish(url)?;
    let ids: Vec<String> = running.iter().map(|id| format!("'{id}'")).collect();
    conn.batch_execute(&format!(
        "UPDATE jobs SET status = 'running', completed_at = NULL WHERE id IN ({});
         PRAGMA wal_checkpoint(TRUNCATE);",
        ids.join(",")
    ))?;
    Ok(())
}

/// Polls `/readyz` until it answers 200 (bounded).
async fn wait_ready(addr: SocketAddr, deadline: Instant) -> Result {
    let request = http::get("/readyz", &[]);
    while Instant::now() < deadline {
        if let Ok(response) = http::once(addr, &request).await
            && response.status == 200
        {
            return Ok(());
        }
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    Err("server never became ready".into())
}

/// Opens the job's stream and waits for its first event; returns the event's `status`.
async fn first_event(addr: SocketAddr, job: &str) -> Result<String> {
    let mut conn = Conn::connect(addr).await?;
    let head = conn
        .start_stream(&http::get(
            &format!("/api/v1/jobs/{job}/stream"),
            &[("Accept", "text/event-stream")],
        ))
        .await?;
    if head.status != 200 {
        return Err(format!("stream of `{job}`: status {}", head.status).into());
    }
    let mut out = Vec::new();
    loop {
        if let Some(start) = out.windows(5).position(|w| w == b"data:") {
            let rest = &out[start + 5..];
            if let Some(end) = rest.iter().position(|&b| b == b'\n') {
                let event: serde_json::Value = serde_json::from_slice(&rest[..end])?;
                return Ok(event["status"].as_str().unwrap_or("").to_owned());
            }
        }
        if !conn.read_stream(&mut out).await? {
            return Err(format!("stream of `{job}` ended before an event").into());
        }
    }
}

pub async fn run(ctx: &Ctx) -> Result<Section> {
    let (jobs, rows) = if ctx.quick {
        (10_000, 100_000)
    } else {
        (100_000, 1_000_000)
    };
    let dir = ctx.tmp.path().join("restart");
    std::fs::create_dir_all(&dir)?;
    let db = dir.join("big.db");
    let url = db.display().to_string();
    let generated = Instant::now();
    let running = tokio::task::spawn_blocking({
        let url = url.clone();
        move || generate(&url, jobs, rows).map_err(|e| e.to_string())
    })
    .await??;
    let generate_seconds = generated.elapsed().as_secs_f64();
    let db_mib = std::fs::metadata(&db).map(|m| m.len()).unwrap_or(0) as f64 / (1024.0 * 1024.0);

    let runs = if ctx.quick { 3 } else { 5 };
    let (mut listening, mut ready, mut first) = (Vec::new(), Vec::new(), Vec::new());
    let mut statuses = Vec::new();
    for run in 0..runs {
        if run > 0 {
            crash(&url, &running)?;
        }
        let spawned = Instant::now();
        let server = Server::start(&ServerSpec {
            binary: &ctx.server_bin,
            database: &db,
            config: &ctx.config,
            bench_routes: false,
            log: &dir.join(format!("server-{run}.log")),
            args: &[],
        })?;
        wait_ready(server.addr, spawned + Duration::from_secs(60)).await?;
        let to_ready = spawned.elapsed();
        let job = &running[run % running.len()];
        statuses.push(first_event(server.addr, job).await?);
        let to_event = spawned.elapsed();
        listening.push(server.listening_after.as_secs_f64() * 1000.0);
        ready.push(to_ready.as_secs_f64() * 1000.0);
        first.push(to_event.as_secs_f64() * 1000.0);
        drop(server);
    }
    let ready_ms = median(&ready);
    let goal_ms = GOAL_READY.as_secs_f64() * 1000.0;
    let recovered = statuses.iter().all(|s| s == "queued" || s == "running");
    let mut section = Section {
        key: "restart",
        title: "4. Restart: spawn → ready on a large database".to_owned(),
        rows: vec![
            Row::new("spawn → `listening on` (median)", median(&listening), "ms"),
            Row::new("spawn → /readyz 200 (median)", ready_ms, "ms")
                .goal(format!("≤ {goal_ms:.0} ms"), ready_ms <= goal_ms),
            Row::new(
                "spawn → /readyz 200 (worst)",
                ready.iter().copied().fold(0.0, f64::max),
                "ms",
            ),
            Row::new(
                "spawn → first SSE event of a recovered job (median)",
                median(&first),
                "ms",
            ),
        ],
        notes: vec![format!(
            "{jobs} jobs, {rows} progress rows ({db_mib:.0} MiB, generated in \
             {generate_seconds:.1} s with recursive CTEs), {} `optimization` jobs left \
             `running` before each of {runs} starts (SIGKILL between runs), no executors; \
             recovered jobs' first events had status {:?}",
            running.len(),
            statuses.first().map(String::as_str).unwrap_or("?")
        )],
        data: json!({
            "jobs": jobs,
            "progress_rows": rows,
            "running_before_start": running.len(),
            "database_mib": db_mib,
            "generate_seconds": generate_seconds,
            "listening_ms": listening,
            "ready_ms": ready,
            "first_event_ms": first,
            "first_event_status": statuses,
        }),
    };
    if !recovered {
        section.notes.push(
            "a recovered job's first event was not queued/running: check recovery".to_owned(),
        );
    }
    Ok(section)
}
