//! Section `cluster`: several servers on one PostgreSQL database (issue 19), each number
//! against a baseline measured in the same run:
//!
//! - progress events acknowledged per second through 1 and through 3 servers (100 jobs, the
//!   ingest section's bodies and load generator) against raw batched INSERTs into the same
//!   database's `job_progress` (one 100-row `INSERT` per transaction);
//! - claims per second with 3 servers and 32 competing workers draining one queue over
//!   HTTP, against the store's own claim (`JobStore::claim`, the same `FOR UPDATE SKIP
//!   LOCKED` statement) from 32 threads over 3 pools; no job may be claimed twice;
//! - event → subscriber latency with 1k subscribers on another server than the one the
//!   events are posted to, against 1k subscribers on the same server (the latency is taken
//!   from a send time the feeder puts in each event's message);
//! - seconds from kill -9 of a server to its jobs running on the others (their child
//!   processes started), against the goal of one lease plus one sweep interval.
//!
//! Needs a PostgreSQL (found as the tests find one: `SKILL_FLEET_TEST_POSTGRES_URL`, the
//! local default, a throwaway cluster); without one the section is skipped with the reason.

use std::collections::HashSet;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use diesel::prelude::*;
use serde_json::{Value, json};
use skill_fleet_jobs::{ClaimFilter, JobStore, NewJob, StoreOptions};
use skill_fleet_testkit::cluster::job_processes;
use skill_fleet_testkit::{PostgresDatabase, TestPostgres};
use tokio::task::JoinHandle;

use super::Ctx;
use super::http::{self, Conn, Load, LoadResult};
use super::ingest::{JOBS, VARIANTS, create_jobs, event_body};
use super::report::{Row, Section};
use super::server::{Server, ServerSpec};
use super::sse::{ClientProc, blocking};
use super::stats::{Latencies, median};
use crate::Result;

/// Goal: events acknowledged per second at least this share of raw batched inserts.
const EVENTS_GOAL: f64 = 0.5;
/// Goal: p99 of event → subscriber on another server, at the 100 ms tick.
const LATENCY_GOAL_MS: f64 = 150.0;
/// Subscribers of the latency measurement.
const SUBSCRIBERS: usize = 1000;
/// Competing claimers.
const CLAIMERS: usize = 32;
/// Events per second the latency feeder posts, over two connections.
const FEED_RATE: f64 = 200.0;
/// The server's default emit interval (the tick).
const TICK: Duration = Duration::from_millis(100);
/// Leases of the kill measurement, in seconds: (lease, heartbeat, sweep); the quick form's
/// are shorter.
fn kill_leases(ctx: &Ctx) -> (f64, f64, f64) {
    if ctx.quick {
        (3.0, 0.5, 0.5)
    } else {
        (5.0, 1.0, 1.0)
    }
}
/// Jobs the killed server runs.
const KILL_JOBS: usize = 2;

diesel::table! {
    /// The store's history table, as the raw baseline writes it.
    job_progress (seq) {
        seq -> BigInt,
        job_id -> Text,
        step -> Nullable<Text>,
        progress -> Double,
        message -> Nullable<Text>,
        cost_usd -> Double,
        metric -> Nullable<Double>,
        created_at -> Timestamp,
    }
}

/// One raw history row.
#[derive(Insertable)]
#[diesel(table_name = job_progress)]
struct RawRow<'a> {
    job_id: &'a str,
    step: Option<&'a str>,
    progress: f64,
    message: Option<String>,
    cost_usd: f64,
    metric: Option<f64>,
    created_at: chrono::NaiveDateTime,
}

pub async fn run(ctx: &Ctx) -> Result<Section> {
    let postgres = match TestPostgres::find() {
        Ok(postgres) => postgres,
        Err(reason) => {
            println!("\n(cluster: skipped: no PostgreSQL: {reason})");
            return Ok(Section {
                key: "cluster",
                title: "9. Several servers on one PostgreSQL (skipped)".to_owned(),
                notes: vec![format!("skipped: no PostgreSQL: {reason}")],
                data: json!({"skipped": reason}),
                ..Section::default()
            });
        }
    };
    let mut section = Section {
        key: "cluster",
        title: "9. Several servers on one PostgreSQL".to_owned(),
        ..Section::default()
    };
    let mut data = serde_json::Map::new();
    data.insert("postgres".into(), json!(postgres.origin()));

    let database = postgres.database();
    let mut servers = Servers::new(ctx, &database.url, "cluster")?;
    let events = events(ctx, &mut servers).await?;
    events.report(&mut section, &mut data);
    let claims = claims(ctx, &mut servers).await?;
    claims.report(&mut section, &mut data);
    let latency = latency(ctx, &mut servers).await?;
    latency.report(&mut section, &mut data);
    drop(servers);
    drop(database);
    let kills = kills(ctx, postgres).await?;
    kills.report(&mut section, &mut data);
    section.notes.insert(
        0,
        format!(
            "servers on one PostgreSQL ({}), release build, each with its own data directory; \
             PostgreSQL runs on the same machine as the servers and the load generator",
            postgres.origin()
        ),
    );
    section.data = Value::Object(data);
    Ok(section)
}

/// Up to three servers on one database, started as a section needs them.
struct Servers<'a> {
    ctx: &'a Ctx,
    url: String,
    name: String,
    config: PathBuf,
    running: Vec<Server>,
}

impl<'a> Servers<'a> {
    fn new(ctx: &'a Ctx, url: &str, name: &str) -> Result<Servers<'a>> {
        Servers::with_config(ctx, url, name, ctx.config.clone())
    }

    fn with_config(ctx: &'a Ctx, url: &str, name: &str, config: PathBuf) -> Result<Servers<'a>> {
        Ok(Servers {
            ctx,
            url: url.to_owned(),
            name: name.to_owned(),
            config,
            running: Vec::new(),
        })
    }

    /// Starts servers until `n` run.
    fn up_to(&mut self, n: usize) -> Result<()> {
        while self.running.len() < n {
            let dir = self
                .ctx
                .tmp
                .path()
                .join(format!("{}-{}", self.name, self.running.len()));
            std::fs::create_dir_all(&dir)?;
            let args = vec![
                "--data-dir".to_owned(),
                dir.join("data").display().to_string(),
            ];
            self.running.push(Server::start(&ServerSpec {
                binary: &self.ctx.server_bin,
                database: Path::new(&self.url),
                config: &self.config,
                bench_routes: false,
                log: &dir.join("server.log"),
                args: &args,
            })?);
        }
        Ok(())
    }

    fn addr(&self, i: usize) -> SocketAddr {
        self.running[i % self.running.len()].addr
    }
}

// ---------------------------------------------------------------------------------------------
// Events acknowledged per second

struct Events {
    raw: Vec<f64>,
    one: Vec<LoadResult>,
    three: Vec<LoadResult>,
    raw_for_one: Vec<f64>,
    raw_for_three: Vec<f64>,
}

/// Starts each job with a token-less first event through server `i % servers`.
async fn start_jobs(servers: &Servers<'_>, ids: &[String]) -> Result<()> {
    for (i, id) in ids.iter().enumerate() {
        let response = http::once(
            servers.addr(i),
            &http::post_json(&format!("/api/v1/jobs/{id}/events"), &event_body(0, 0)),
        )
        .await?;
        if response.status != 202 {
            return Err(format!("first event of `{id}`: status {}", response.status).into());
        }
    }
    Ok(())
}

/// Creates `count` jobs `PREFIX-NNN` of `job_type`, job i through server `i % servers`.
async fn create_spread(
    servers: &Servers<'_>,
    prefix: &str,
    job_type: &str,
    count: usize,
) -> Result<Vec<String>> {
    let mut ids = Vec::with_capacity(count);
    for i in 0..count {
        let mut made =
            create_jobs(servers.addr(i), &format!("{prefix}{i:05}"), job_type, 1).await?;
        ids.append(&mut made);
    }
    Ok(ids)
}

/// The event requests of `ids`, each job's `VARIANTS` bodies.
fn event_requests(ids: &[String]) -> Vec<Vec<u8>> {
    (0..VARIANTS)
        .flat_map(|variant| {
            ids.iter().enumerate().map(move |(job, id)| {
                http::post_json(
                    &format!("/api/v1/jobs/{id}/events"),
                    &event_body(job, variant),
                )
            })
        })
        .collect()
}

/// Raw batched inserts for `duration`: one 100-row `INSERT` per transaction; rows per second.
fn raw_rows_per_second(url: &str, ids: &[String], duration: Duration) -> Result<f64> {
    let mut conn = PgConnection::establish(url)?;
    let started = Instant::now();
    let mut rows = 0usize;
    let mut tick = 0usize;
    while started.elapsed() < duration {
        let at = chrono::Utc::now().naive_utc();
        let batch: Vec<RawRow<'_>> = ids
            .iter()
            .enumerate()
            .map(|(job, id)| RawRow {
                job_id: id,
                step: Some("raw"),
                progress: ((tick * ids.len() + job) % 1000) as f64 / 1000.0,
                message: Some(format!("trial {tick} of job {job}")),
                cost_usd: tick as f64 * 0.001,
                metric: Some(0.5),
                created_at: at,
            })
            .collect();
        conn.transaction(|conn| {
            diesel::insert_into(job_progress::table)
                .values(&batch)
                .execute(conn)
        })?;
        rows += batch.len();
        tick += 1;
    }
    Ok(rows as f64 / started.elapsed().as_secs_f64())
}

async fn raw_round(url: &str, ids: &[String], duration: Duration) -> Result<f64> {
    let (url, ids) = (url.to_owned(), ids.to_vec());
    blocking(move || raw_rows_per_second(&url, &ids, duration)).await
}

/// The load of `requests` on one server over `connections`.
fn load(ctx: &Ctx, requests: Vec<Vec<u8>>, connections: usize) -> Load {
    Load {
        connections,
        ..ctx.closed_loop(requests, |r| r.status == 202)
    }
}

/// Runs one load per server at once (load i on server i); their sum.
async fn spread_load(servers: &Servers<'_>, loads: Vec<Load>) -> Result<LoadResult> {
    let tasks: Vec<JoinHandle<std::io::Result<LoadResult>>> = loads
        .into_iter()
        .enumerate()
        .map(|(i, load)| {
            let addr = servers.addr(i);
            tokio::spawn(async move { http::run_load(addr, &load).await })
        })
        .collect();
    let mut total = LoadResult::default();
    for task in tasks {
        let part = task
            .await
            .map_err(|err| format!("load task failed: {err}"))??;
        total.ok += part.ok;
        total.unexpected += part.unexpected;
        total.io_errors += part.io_errors;
        total.latencies.merge(part.latencies);
        total.elapsed = total.elapsed.max(part.elapsed);
        if total.first_unexpected.is_none() {
            total.first_unexpected = part.first_unexpected;
        }
    }
    Ok(total)
}

/// `rounds` rounds of the raw baseline and the load, alternating which runs first.
async fn against_raw(
    ctx: &Ctx,
    servers: &Servers<'_>,
    raw_ids: &[String],
    loads: impl Fn() -> Vec<Load>,
) -> Result<(Vec<f64>, Vec<LoadResult>)> {
    // Warm-up: connections, the servers' caches and PostgreSQL's.
    let warm: Vec<Load> = loads()
        .into_iter()
        .map(|load| Load {
            duration: ctx.warmup(),
            ..load
        })
        .collect();
    let result = spread_load(servers, warm).await?;
    if result.ok == 0 {
        return Err(format!(
            "warm-up got no good answer: {}",
            result
                .first_unexpected
                .unwrap_or_else(|| format!("{} connection errors", result.io_errors))
        )
        .into());
    }
    raw_round(&servers.url, raw_ids, ctx.warmup()).await?;
    let (mut raw, mut served) = (Vec::new(), Vec::new());
    // Two rounds in the quick form (the section runs four kinds of measurement).
    let rounds = if ctx.quick { 2 } else { ctx.rounds() };
    for round in 0..rounds {
        if round % 2 == 0 {
            raw.push(raw_round(&servers.url, raw_ids, ctx.round_duration()).await?);
            served.push(spread_load(servers, loads()).await?);
        } else {
            served.push(spread_load(servers, loads()).await?);
            raw.push(raw_round(&servers.url, raw_ids, ctx.round_duration()).await?);
        }
    }
    Ok((raw, served))
}

async fn events(ctx: &Ctx, servers: &mut Servers<'_>) -> Result<Events> {
    // One server: the others are not started yet.
    servers.up_to(1)?;
    let one_ids = create_jobs(servers.addr(0), "one", "bench_cluster", JOBS).await?;
    start_jobs(servers, &one_ids).await?;
    let raw_ids = create_jobs(servers.addr(0), "raw", "bench_raw", JOBS).await?;
    let one_requests = Arc::new(event_requests(&one_ids));
    let one_load = || {
        vec![Load {
            requests: Arc::clone(&one_requests),
            ..load(ctx, Vec::new(), ctx.connections())
        }]
    };
    let (raw_for_one, one) = against_raw(ctx, servers, &raw_ids, one_load).await?;

    // Three servers, each taking the events of its third of the jobs.
    servers.up_to(3)?;
    let three_ids = create_spread(servers, "three", "bench_cluster", JOBS).await?;
    start_jobs(servers, &three_ids).await?;
    let per_server: Vec<Arc<Vec<Vec<u8>>>> = (0..3)
        .map(|k| {
            let mine: Vec<String> = three_ids
                .iter()
                .enumerate()
                .filter(|(i, _)| i % 3 == k)
                .map(|(_, id)| id.clone())
                .collect();
            Arc::new(event_requests(&mine))
        })
        .collect();
    let three_load = || {
        per_server
            .iter()
            .enumerate()
            .map(|(k, requests)| Load {
                requests: Arc::clone(requests),
                // The same connections in all, spread over the servers.
                ..load(
                    ctx,
                    Vec::new(),
                    ctx.connections() / 3 + usize::from(k < ctx.connections() % 3),
                )
            })
            .collect()
    };
    let (raw_for_three, three) = against_raw(ctx, servers, &raw_ids, three_load).await?;
    let mut raw = raw_for_one.clone();
    raw.extend(&raw_for_three);
    Ok(Events {
        raw,
        one,
        three,
        raw_for_one,
        raw_for_three,
    })
}

impl Events {
    fn report(&self, section: &mut Section, data: &mut serde_json::Map<String, Value>) {
        let rps = |runs: &[LoadResult]| runs.iter().map(LoadResult::rps).collect::<Vec<_>>();
        let ratios = |runs: &[LoadResult], raw: &[f64]| -> Vec<f64> {
            runs.iter()
                .zip(raw)
                .map(|(run, raw)| run.rps() / raw.max(1e-9))
                .collect()
        };
        let (one, three) = (rps(&self.one), rps(&self.three));
        let (one_ratios, three_ratios) = (
            ratios(&self.one, &self.raw_for_one),
            ratios(&self.three, &self.raw_for_three),
        );
        let p99 = |runs: &[LoadResult]| {
            let mut all = Latencies::default();
            for run in runs {
                all.merge(run.latencies.clone());
            }
            all.quantile_ms(0.99)
        };
        for (label, value, raw, ratio) in [
            (
                "1 server",
                median(&one),
                median(&self.raw_for_one),
                median(&one_ratios),
            ),
            (
                "3 servers",
                median(&three),
                median(&self.raw_for_three),
                median(&three_ratios),
            ),
        ] {
            section.rows.push(
                Row::new(
                    format!("{label}: events acknowledged (202) per second"),
                    value,
                    "rps",
                )
                .baseline(raw, ratio)
                .goal(
                    format!("≥ {EVENTS_GOAL:.2}× raw inserts"),
                    ratio >= EVENTS_GOAL,
                ),
            );
        }
        section.rows.push(Row::new(
            "3 servers / 1 server, events per second",
            median(&three) / median(&one).max(1e-9),
            "×",
        ));
        section
            .rows
            .push(Row::new("1 server: ack latency p99", p99(&self.one), "ms"));
        section.rows.push(Row::new(
            "3 servers: ack latency p99",
            p99(&self.three),
            "ms",
        ));
        let errors: u64 = self
            .one
            .iter()
            .chain(&self.three)
            .map(|r| r.unexpected + r.io_errors)
            .sum();
        section.notes.push(format!(
            "events: {JOBS} jobs started by a token-less event, the ingest section's ~200-byte \
             bodies, 64 keep-alive connections in all (with 3 servers: each server the events of \
             its own third of the jobs over a third of the connections), closed loop; baseline \
             = raw INSERTs of 100 history rows in one statement per transaction into the same \
             database's job_progress, one connection, as fast as it goes; rounds alternate \
             which runs first; ratio = median of per-round ratios"
        ));
        if errors > 0 {
            let first = self
                .one
                .iter()
                .chain(&self.three)
                .find_map(|r| r.first_unexpected.clone())
                .unwrap_or_else(|| "connection errors".to_owned());
            section
                .notes
                .push(format!("events: {errors} requests failed; first: {first}"));
        }
        data.insert(
            "events".into(),
            json!({
                "raw_rows_per_s": self.raw,
                "one_server_rps_per_round": one,
                "three_servers_rps_per_round": three,
                "one_server_ratio_per_round": one_ratios,
                "three_servers_ratio_per_round": three_ratios,
                "errors": errors,
            }),
        );
    }
}

// ---------------------------------------------------------------------------------------------
// Claims per second

struct Claims {
    jobs: usize,
    http_seconds: f64,
    store_seconds: f64,
    claimed: usize,
    duplicates: usize,
    store_claimed: usize,
    /// Commits per second of a one-row counter `UPDATE` from `CLAIMERS` connections: the
    /// ceiling of anything that bumps one row per transaction (each claim stamps its version
    /// from `store_state`).
    counter_commits_per_s: f64,
}

/// `UPDATE bench_counter SET n = n + 1` in its own transaction, from `CLAIMERS` connections
/// for `duration`; commits per second.
fn counter_commits(url: &str, duration: Duration) -> Result<f64> {
    use diesel::connection::SimpleConnection;
    let mut setup = PgConnection::establish(url)?;
    setup.batch_execute(
        "CREATE TABLE IF NOT EXISTS bench_counter (id INTEGER PRIMARY KEY, n BIGINT NOT NULL); \
         INSERT INTO bench_counter VALUES (1, 0) ON CONFLICT DO NOTHING;",
    )?;
    let started = Instant::now();
    let commits = std::thread::scope(|scope| {
        let threads: Vec<_> = (0..CLAIMERS)
            .map(|_| {
                scope.spawn(move || -> std::result::Result<u64, String> {
                    let mut conn = PgConnection::establish(url).map_err(|e| e.to_string())?;
                    let mut commits = 0;
                    while started.elapsed() < duration {
                        conn.batch_execute("UPDATE bench_counter SET n = n + 1 WHERE id = 1")
                            .map_err(|e| e.to_string())?;
                        commits += 1;
                    }
                    Ok(commits)
                })
            })
            .collect();
        threads
            .into_iter()
            .map(|thread| {
                thread
                    .join()
                    .map_err(|_| "a counter thread panicked".to_owned())?
            })
            .sum::<std::result::Result<u64, String>>()
    })?;
    setup.batch_execute("DROP TABLE bench_counter")?;
    Ok(commits as f64 / started.elapsed().as_secs_f64())
}

/// Creates `count` queued jobs of `job_type` over HTTP, spread over the servers, 16 at once.
async fn create_many(
    servers: &Servers<'_>,
    prefix: &str,
    job_type: &str,
    count: usize,
) -> Result<()> {
    let lanes = 16;
    let tasks: Vec<JoinHandle<Result<()>>> = (0..lanes)
        .map(|lane| {
            let addr = servers.addr(lane);
            let (prefix, job_type) = (prefix.to_owned(), job_type.to_owned());
            tokio::spawn(async move {
                let mut conn = Conn::connect(addr).await?;
                for n in (lane..count).step_by(lanes) {
                    let body = json!({"id": format!("{prefix}-{n:05}"), "type": job_type});
                    let response = conn
                        .request(&http::post_json("/api/v1/jobs", &body.to_string()))
                        .await?;
                    if response.status != 201 {
                        return Err(format!("creating a job: status {}", response.status).into());
                    }
                }
                Ok(())
            })
        })
        .collect();
    for task in tasks {
        task.await
            .map_err(|err| format!("create task failed: {err}"))??;
    }
    Ok(())
}

/// One claimer's share: the ids it claimed and when it claimed its last one.
type Drained = (Vec<String>, Duration);

/// Claims until the queue is empty, `CLAIMERS` workers spread over the servers; the
/// claimed ids and the seconds from the start to the last claim.
async fn drain(servers: &Servers<'_>, job_type: &str) -> Result<(Vec<String>, f64)> {
    let started = Instant::now();
    let tasks: Vec<JoinHandle<Result<Drained>>> = (0..CLAIMERS)
        .map(|w| {
            let addr = servers.addr(w);
            let body = json!({"types": [job_type], "worker": format!("bench-{w}")}).to_string();
            tokio::spawn(async move {
                let mut conn = Conn::connect(addr).await?;
                let request = http::post_json("/api/v1/jobs/claim", &body);
                let mut ids = Vec::new();
                let mut last = Duration::ZERO;
                loop {
                    let response = conn.request(&request).await?;
                    match response.status {
                        200 => {
                            let job: Value = serde_json::from_slice(&response.body)?;
                            ids.push(job["id"].as_str().unwrap_or("").to_owned());
                            last = started.elapsed();
                        }
                        204 => return Ok((ids, last)),
                        other => {
                            return Err(format!(
                                "claim: status {other}: {}",
                                String::from_utf8_lossy(&response.body)
                            )
                            .into());
                        }
                    }
                }
            })
        })
        .collect();
    let mut ids = Vec::new();
    let mut last = Duration::ZERO;
    for task in tasks {
        let (mut claimed, at) = task
            .await
            .map_err(|err| format!("claim task failed: {err}"))??;
        ids.append(&mut claimed);
        last = last.max(at);
    }
    Ok((ids, last.as_secs_f64()))
}

/// The baseline: the store's claim from `CLAIMERS` threads over 3 pools, without HTTP;
/// (claimed, seconds).
fn store_drain(url: &str, count: usize) -> Result<(usize, f64)> {
    let stores: Vec<JobStore> = (0..3)
        .map(|_| JobStore::open_with(url, StoreOptions::default()))
        .collect::<std::result::Result<_, _>>()?;
    for n in 0..count {
        stores[0].create(&NewJob {
            id: Some(format!("store-claim-{n:05}")),
            job_type: "bench_store_claim".into(),
            metadata: Default::default(),
            source: "bench".into(),
        })?;
    }
    let filter = ClaimFilter {
        types: vec!["bench_store_claim".to_owned()],
        excluded: Vec::new(),
    };
    let started = Instant::now();
    let claimed = std::thread::scope(|scope| {
        let threads: Vec<_> = (0..CLAIMERS)
            .map(|w| {
                let (store, filter) = (&stores[w % stores.len()], &filter);
                scope.spawn(move || -> std::result::Result<usize, String> {
                    let mut claimed = 0;
                    while store
                        .claim(filter, "bench-store")
                        .map_err(|err| err.to_string())?
                        .is_some()
                    {
                        claimed += 1;
                    }
                    Ok(claimed)
                })
            })
            .collect();
        threads
            .into_iter()
            .map(|thread| {
                thread
                    .join()
                    .map_err(|_| "a claim thread panicked".to_owned())?
            })
            .sum::<std::result::Result<usize, String>>()
    })?;
    Ok((claimed, started.elapsed().as_secs_f64()))
}

async fn claims(ctx: &Ctx, servers: &mut Servers<'_>) -> Result<Claims> {
    servers.up_to(3)?;
    let jobs = if ctx.quick { 500 } else { 4000 };
    create_many(servers, "claim", "bench_claim", jobs).await?;
    let (ids, http_seconds) = drain(servers, "bench_claim").await?;
    let unique: HashSet<&String> = ids.iter().collect();
    let url = servers.url.clone();
    let (store_claimed, store_seconds) = {
        let url = url.clone();
        blocking(move || store_drain(&url, jobs)).await?
    };
    let duration = ctx.round_duration();
    let counter_commits_per_s = blocking(move || counter_commits(&url, duration)).await?;
    Ok(Claims {
        counter_commits_per_s,
        jobs,
        http_seconds,
        store_seconds,
        claimed: ids.len(),
        duplicates: ids.len() - unique.len(),
        store_claimed,
    })
}

impl Claims {
    fn report(&self, section: &mut Section, data: &mut serde_json::Map<String, Value>) {
        let http = self.claimed as f64 / self.http_seconds.max(1e-9);
        let store = self.store_claimed as f64 / self.store_seconds.max(1e-9);
        section.rows.push(
            Row::new("3 servers, 32 workers: claims per second", http, "/s")
                .baseline(store, http / store.max(1e-9)),
        );
        section.rows.push(Row::new(
            "32 connections: one-row counter UPDATE commits per second",
            self.counter_commits_per_s,
            "/s",
        ));
        section.rows.push(
            Row::new("claims: jobs claimed twice", self.duplicates as f64, "").goal(
                "0 (and every job claimed once)",
                self.duplicates == 0 && self.claimed == self.jobs,
            ),
        );
        section.notes.push(format!(
            "claims: {} queued jobs drained by {CLAIMERS} workers over keep-alive connections \
             spread over the 3 servers (POST /api/v1/jobs/claim until 204); baseline = the \
             store's own claim (JobStore::claim, the same FOR UPDATE SKIP LOCKED statement) \
             from {CLAIMERS} threads over 3 pools of 10, no HTTP; claimed {} of {} over HTTP \
             ({} twice), {} by the store; each claim is one transaction that also stamps its \
             version from the one store_state row, so claims queue on that row: the counter \
             row is that ceiling, measured on the same database (River and Oban take a batch \
             of jobs per fetch statement instead)",
            self.jobs, self.claimed, self.jobs, self.duplicates, self.store_claimed
        ));
        data.insert(
            "claims".into(),
            json!({
                "jobs": self.jobs,
                "claimed": self.claimed,
                "duplicates": self.duplicates,
                "http_seconds": self.http_seconds,
                "store_claimed": self.store_claimed,
                "store_seconds": self.store_seconds,
                "counter_commits_per_s": self.counter_commits_per_s,
            }),
        );
    }
}

// ---------------------------------------------------------------------------------------------
// Event → subscriber latency across servers

/// Posts progress to one job at [`FEED_RATE`], each message carrying its send time.
struct Feeder {
    stop: Arc<AtomicBool>,
    acked: Arc<AtomicU64>,
    tasks: Vec<JoinHandle<()>>,
    started: Instant,
}

impl Feeder {
    fn start(addr: SocketAddr, job: &str) -> Feeder {
        let lanes = 2;
        let stop = Arc::new(AtomicBool::new(false));
        let acked = Arc::new(AtomicU64::new(0));
        let period = Duration::from_secs_f64(lanes as f64 / FEED_RATE);
        let tasks = (0..lanes)
            .map(|lane| {
                let (stop, acked) = (Arc::clone(&stop), Arc::clone(&acked));
                let path = format!("/api/v1/jobs/{job}/events");
                tokio::spawn(async move {
                    let Ok(mut conn) = Conn::connect(addr).await else {
                        return;
                    };
                    let mut next = Instant::now() + period.mul_f64(lane as f64 / 2.0);
                    let mut n: u64 = 0;
                    while !stop.load(Ordering::Relaxed) {
                        tokio::time::sleep_until(next.into()).await;
                        next += period;
                        if Instant::now() > next + Duration::from_secs(1) {
                            next = Instant::now();
                        }
                        n += 1;
                        let body = format!(
                            r#"{{"progress":{:.4},"message":"sent_us={}"}}"#,
                            (n % 10_000) as f64 / 10_000.0,
                            chrono::Utc::now().timestamp_micros()
                        );
                        match conn.request(&http::post_json(&path, &body)).await {
                            Ok(r) if r.status == 202 => {
                                acked.fetch_add(1, Ordering::Relaxed);
                            }
                            Ok(_) => {}
                            Err(_) => return,
                        }
                    }
                })
            })
            .collect();
        Feeder {
            stop,
            acked,
            tasks,
            started: Instant::now(),
        }
    }

    async fn finish(self) -> f64 {
        self.stop.store(true, Ordering::Relaxed);
        for task in self.tasks {
            let _ = task.await;
        }
        self.acked.load(Ordering::Relaxed) as f64 / self.started.elapsed().as_secs_f64()
    }
}

/// What 1k subscribers on one server saw of a job fed through another (or the same).
struct Watched {
    p50_ms: f64,
    p99_ms: f64,
    share_mean: f64,
    share_min: f64,
    connected: u64,
    feed_rate: f64,
    window_seconds: f64,
    client: Value,
}

/// 1k subscribers of `job` on `on`, for one window while the feeder posts to `fed`.
async fn watch(ctx: &Ctx, fed: SocketAddr, on: SocketAddr, job: &str) -> Result<Watched> {
    let feeder = Feeder::start(fed, job);
    let client = ClientProc::spawn(
        ctx,
        on,
        &format!("/api/v1/jobs/{job}/stream"),
        SUBSCRIBERS,
        1,
        false,
        &["--latency-from-message"],
    )?;
    let (line, mut client) = blocking(move || {
        let mut client = client;
        let line = client.expect("connected", Duration::from_secs(120));
        Ok((line, client))
    })
    .await?;
    line?;
    tokio::time::sleep(ctx.warmup()).await;
    let window = if ctx.quick {
        Duration::from_secs(3)
    } else {
        ctx.sse_window()
    };
    let t0 = Instant::now();
    client.send("start")?;
    tokio::time::sleep(window).await;
    client.send("stop")?;
    let elapsed = t0.elapsed();
    let (result, client) = blocking(move || {
        let mut client = client;
        let line = client.expect("result", Duration::from_secs(60));
        Ok((line, client))
    })
    .await?;
    drop(client);
    let feed_rate = feeder.finish().await;
    let result: Value = serde_json::from_str(&result?)?;
    let expected = elapsed.as_secs_f64() / TICK.as_secs_f64();
    let get = |key: &str| result[key].as_f64().unwrap_or(0.0);
    Ok(Watched {
        p50_ms: get("latency_p50_ms"),
        p99_ms: get("latency_p99_ms"),
        share_mean: get("events_mean") / expected,
        share_min: get("events_min") / expected,
        connected: result["connected"].as_u64().unwrap_or(0),
        feed_rate,
        window_seconds: elapsed.as_secs_f64(),
        client: result,
    })
}

struct Latency {
    across: Watched,
    same: Watched,
}

async fn latency(ctx: &Ctx, servers: &mut Servers<'_>) -> Result<Latency> {
    servers.up_to(3)?;
    let ids = create_jobs(servers.addr(0), "watched", "bench_watched", 1).await?;
    start_jobs(servers, &ids).await?;
    let (a, b) = (servers.addr(0), servers.addr(1));
    let same = watch(ctx, a, a, &ids[0]).await?;
    let across = watch(ctx, a, b, &ids[0]).await?;
    Ok(Latency { across, same })
}

impl Latency {
    fn report(&self, section: &mut Section, data: &mut serde_json::Map<String, Value>) {
        let (across, same) = (&self.across, &self.same);
        section.rows.push(
            Row::new(
                "1k subscribers on another server: event→subscriber p50",
                across.p50_ms,
                "ms",
            )
            .baseline(same.p50_ms, across.p50_ms / same.p50_ms.max(1e-9)),
        );
        let met = across.p99_ms > 0.0 && across.p99_ms <= LATENCY_GOAL_MS;
        section.rows.push(
            Row::new(
                "1k subscribers on another server: event→subscriber p99",
                across.p99_ms,
                "ms",
            )
            .baseline(same.p99_ms, across.p99_ms / same.p99_ms.max(1e-9))
            .goal(format!("≤ {LATENCY_GOAL_MS:.0} ms"), met),
        );
        section.rows.push(
            Row::new(
                "1k on another server: share of ticks delivered, mean",
                across.share_mean,
                "",
            )
            .baseline(
                same.share_mean,
                across.share_mean / same.share_mean.max(1e-9),
            ),
        );
        section.rows.push(
            Row::new(
                "1k on another server: share of ticks, worst subscriber",
                across.share_min,
                "",
            )
            .baseline(same.share_min, across.share_min / same.share_min.max(1e-9)),
        );
        section.notes.push(format!(
            "latency: one job fed {FEED_RATE:.0} events/s through server A, each event's \
             message carrying its send time; {SUBSCRIBERS} subscribers (a second process) on \
             server B, baseline {SUBSCRIBERS} on A itself; latency = receive time − the send \
             time of the newest event the state carries; share of ticks = events per \
             subscriber in a {:.0} s window / (window / 100 ms); connected {} on B, {} on A; \
             {:.0} and {:.0} events/s posted",
            across.window_seconds,
            across.connected,
            same.connected,
            across.feed_rate,
            same.feed_rate
        ));
        if across.p99_ms == 0.0 {
            section.notes.push(
                "latency: no event reached the subscribers on the other server in the window"
                    .to_owned(),
            );
        }
        data.insert(
            "latency".into(),
            json!({"across": across.client, "same": same.client}),
        );
    }
}

// ---------------------------------------------------------------------------------------------
// kill -9 → the jobs run elsewhere

struct Kills {
    seconds: Vec<f64>,
    /// Lease, heartbeat and sweep interval, in seconds.
    leases: (f64, f64, f64),
}

/// The servers' configuration of the kill measurement: short leases, an executor type
/// whose child only sleeps (it runs until killed).
fn kill_config(ctx: &Ctx) -> Result<PathBuf> {
    let (lease, heartbeat, sweep) = kill_leases(ctx);
    let path = ctx.tmp.path().join("cluster-kill.toml");
    std::fs::write(
        &path,
        format!(
            "lease_ttl_seconds = {lease}\n\
             heartbeat_interval_seconds = {heartbeat}\n\
             rescue_interval_seconds = {sweep}\n\
             max_concurrent_jobs = 8\n\
             [executors.bench_kill]\n\
             command = [\"sleep\", \"3600\"]\n\
             max_concurrent = 8\n"
        ),
    )?;
    Ok(path)
}

/// Waits for `check`, polling every 20 ms, at most `limit`.
async fn poll_until<T>(
    limit: Duration,
    what: &str,
    mut check: impl FnMut() -> Option<T>,
) -> Result<T> {
    let give_up = Instant::now() + limit;
    loop {
        if let Some(value) = check() {
            return Ok(value);
        }
        if Instant::now() > give_up {
            return Err(format!("timed out after {limit:?} waiting for {what}").into());
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// One round on a fresh database: the victim runs `KILL_JOBS` jobs, two more servers join,
/// the victim is killed; seconds until its jobs' children run on the others.
async fn kill_round(
    ctx: &Ctx,
    postgres: &TestPostgres,
    config: &Path,
    round: usize,
) -> Result<f64> {
    let database: PostgresDatabase = postgres.database();
    let mut servers = Servers::with_config(
        ctx,
        &database.url,
        &format!("cluster-kill-{round}"),
        config.to_owned(),
    )?;
    servers.up_to(1)?;
    let ids = create_jobs(servers.addr(0), "kill", "bench_kill", KILL_JOBS).await?;
    let victim_pid = servers.running[0].pid;
    let has_all = |pid: u32| {
        let running: HashSet<String> = job_processes(pid).into_iter().map(|p| p.job_id).collect();
        ids.iter().all(|id| running.contains(id))
    };
    poll_until(
        Duration::from_secs(60),
        "the victim to run its jobs",
        || has_all(victim_pid).then_some(()),
    )
    .await?;
    servers.up_to(3)?;
    // The survivors sweep only once they have been up for a lease (the outage guard).
    tokio::time::sleep(Duration::from_secs_f64(kill_leases(ctx).0 + 0.5)).await;
    if !has_all(victim_pid) {
        return Err("the victim's jobs were taken while it was alive (a start-up rescue?)".into());
    }
    let survivors: Vec<u32> = servers.running[1..].iter().map(|s| s.pid).collect();
    let victim = servers.running.remove(0);
    let killed = Instant::now();
    drop(victim);
    poll_until(
        Duration::from_secs(60),
        "the victim's jobs to run elsewhere",
        || {
            let running: HashSet<String> = survivors
                .iter()
                .flat_map(|pid| job_processes(*pid))
                .map(|p| p.job_id)
                .collect();
            ids.iter().all(|id| running.contains(id)).then_some(())
        },
    )
    .await?;
    let seconds = killed.elapsed().as_secs_f64();
    drop(servers);
    drop(database);
    Ok(seconds)
}

async fn kills(ctx: &Ctx, postgres: &TestPostgres) -> Result<Kills> {
    let config = kill_config(ctx)?;
    let mut seconds = Vec::new();
    for round in 0..if ctx.quick { 1 } else { 3 } {
        seconds.push(kill_round(ctx, postgres, &config, round).await?);
    }
    Ok(Kills {
        seconds,
        leases: kill_leases(ctx),
    })
}

impl Kills {
    fn report(&self, section: &mut Section, data: &mut serde_json::Map<String, Value>) {
        let (lease, heartbeat, sweep) = self.leases;
        let goal = lease + sweep;
        let worst = self.seconds.iter().copied().fold(0.0, f64::max);
        section.rows.push(
            Row::new(
                "kill -9 → its jobs running on the others (median)",
                median(&self.seconds),
                "s",
            )
            .baseline(goal, median(&self.seconds) / goal)
            .goal(format!("≤ lease + sweep ({goal:.0} s)"), worst <= goal),
        );
        section.notes.push(format!(
            "kill: a server runs {KILL_JOBS} jobs (children that sleep), two more join, after \
             one lease (their outage guard) the first is SIGKILLed; time until every one of its \
             jobs has a child process on another server (read from /proc every 20 ms); lease \
             {lease:.1} s, heartbeat {heartbeat:.1} s, sweep every {sweep:.1} s \
             (a rescued job is claimable one heartbeat interval later); {} round(s), worst \
             {worst:.2} s; baseline = the goal",
            self.seconds.len()
        ));
        data.insert(
            "kill".into(),
            json!({"seconds": self.seconds, "lease_seconds": lease, "sweep_seconds": sweep}),
        );
    }
}
