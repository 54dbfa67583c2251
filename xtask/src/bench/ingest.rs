//! Section `ingest`: progress events acknowledged per second over HTTP, against
//! `POST /_bench/noop` with the same bodies under the same load generator.

use std::net::SocketAddr;

use serde_json::json;

use super::http::{self, LoadResult};
use super::report::{Row, Section};
use super::stats::{Latencies, median};
use super::{Ctx, alternate};
use crate::Result;

/// Jobs the events are spread over (the `leases` section uses the same).
pub const JOBS: usize = 100;
/// Events per job in the pre-built request set (progress values differ).
pub const VARIANTS: usize = 10;
/// Goal: acknowledged events per second at least this share of the baseline.
const GOAL: f64 = 0.5;

/// A ~200-byte progress event.
pub fn event_body(job: usize, variant: usize) -> String {
    let body = format!(
        r#"{{"progress":{:.3},"cost_usd":{:.4},"metric":0.{:03},"message":"trial {variant} of job {job}: evaluating candidate instruction set {variant} with 4 few-shot demos on the dev split, batch 8 of 20, best score so far 0.731"}}"#,
        (variant as f64 + 1.0) / (VARIANTS as f64 + 1.0),
        variant as f64 * 0.0125,
        700 + variant
    );
    debug_assert!((150..=260).contains(&body.len()), "{}", body.len());
    body
}

pub async fn run(ctx: &Ctx) -> Result<Section> {
    let server = ctx.start_server("ingest", true)?;
    let addr = server.addr;
    let ids = create_jobs(addr, "ingest", "bench_ingest", JOBS).await?;
    // The first event of a queued job starts it (a durable write): do that before measuring.
    start_with_first_event(addr, &ids).await?;
    let mut events = Vec::new();
    let mut noops = Vec::new();
    for variant in 0..VARIANTS {
        for (job, id) in ids.iter().enumerate() {
            let body = event_body(job, variant);
            events.push(http::post_json(&format!("/api/v1/jobs/{id}/events"), &body));
            noops.push(http::post_json("/_bench/noop", &body));
        }
    }
    let body_bytes = event_body(0, 0).len();
    let target = ctx.closed_loop(events, |r| r.status == 202);
    let baseline = ctx.closed_loop(noops, |r| r.status == 200);
    let rounds = alternate(ctx, &server, &[("noop", &baseline), ("events", &target)]).await?;
    let cpu = server.cpu_time();

    let mut section = summarize(&rounds[0], &rounds[1], ctx);
    section.notes.insert(
        0,
        format!(
            "{JOBS} jobs of a type no executor runs, {} keep-alive connections, closed loop, \
             {body_bytes}-byte JSON bodies; {} rounds of {:.0} s each, baseline and target \
             alternating after a warm-up; rps = median over rounds, latency over all samples",
            ctx.connections(),
            ctx.rounds(),
            ctx.round_duration().as_secs_f64()
        ),
    );
    section.data["server_cpu_seconds_total"] = json!(cpu.as_secs_f64());
    Ok(section)
}

fn summarize(noop: &[LoadResult], events: &[LoadResult], ctx: &Ctx) -> Section {
    let rps = |runs: &[LoadResult]| median(&runs.iter().map(LoadResult::rps).collect::<Vec<_>>());
    let ratios: Vec<f64> = noop
        .iter()
        .zip(events)
        .map(|(b, t)| t.rps() / b.rps().max(1e-9))
        .collect();
    let ratio = median(&ratios);
    let lat = |runs: &[LoadResult]| {
        let mut all = Latencies::default();
        for run in runs {
            all.merge(run.latencies.clone());
        }
        (all.quantile_ms(0.5), all.quantile_ms(0.99))
    };
    let (noop_p50, noop_p99) = lat(noop);
    let (ev_p50, ev_p99) = lat(events);
    let (noop_rps, ev_rps) = (rps(noop), rps(events));
    let cpu = |runs: &[LoadResult]| {
        median(
            &runs
                .iter()
                .map(LoadResult::server_cpu_us)
                .collect::<Vec<_>>(),
        )
    };
    let errors: u64 = events
        .iter()
        .chain(noop)
        .map(|r| r.unexpected + r.io_errors)
        .sum();
    let mut section = Section {
        key: "ingest",
        title: "1. Progress ingestion: POST /api/v1/jobs/{id}/events".to_owned(),
        rows: vec![
            Row::new("events acknowledged (202) per second", ev_rps, "rps")
                .baseline(noop_rps, ratio)
                .goal(format!("≥ {GOAL:.2}× baseline"), ratio >= GOAL),
            Row::new("ack latency p50", ev_p50, "ms")
                .baseline(noop_p50, ev_p50 / noop_p50.max(1e-9)),
            Row::new("ack latency p99", ev_p99, "ms")
                .baseline(noop_p99, ev_p99 / noop_p99.max(1e-9)),
            Row::new("server CPU per request", cpu(events), "µs")
                .baseline(cpu(noop), cpu(events) / cpu(noop).max(1e-9)),
        ],
        notes: Vec::new(),
        data: json!({
            "rounds": ctx.rounds(),
            "connections": ctx.connections(),
            "noop_rps_per_round": noop.iter().map(LoadResult::rps).collect::<Vec<_>>(),
            "events_rps_per_round": events.iter().map(LoadResult::rps).collect::<Vec<_>>(),
            "ratio_per_round": ratios,
            "load_generator_cpu_share": client_share(noop.iter().chain(events)),
            "errors": errors,
        }),
    };
    if errors > 0 {
        let first = events
            .iter()
            .chain(noop)
            .find_map(|r| r.first_unexpected.clone())
            .unwrap_or_else(|| "connection errors".to_owned());
        section.notes.push(format!(
            "{errors} requests failed or got an unexpected answer; first: {first}"
        ));
    }
    section
}

/// CPU time of the load generator over wall time (1.0 = one core busy).
pub fn client_share<'a>(runs: impl Iterator<Item = &'a LoadResult>) -> f64 {
    let (cpu, wall) = runs.fold((0.0, 0.0), |(cpu, wall), run| {
        (
            cpu + run.client_cpu.as_secs_f64(),
            wall + run.elapsed.as_secs_f64(),
        )
    });
    cpu / f64::max(wall, 1e-9)
}

/// Creates `count` jobs `PREFIX-NNN` of `job_type`; returns their ids.
pub async fn create_jobs(
    addr: SocketAddr,
    prefix: &str,
    job_type: &str,
    count: usize,
) -> Result<Vec<String>> {
    let mut conn = http::Conn::connect(addr).await?;
    let mut ids = Vec::with_capacity(count);
    for n in 0..count {
        let id = format!("{prefix}-{n:03}");
        let body = json!({"type": job_type, "id": id}).to_string();
        let response = conn
            .request(&http::post_json("/api/v1/jobs", &body))
            .await?;
        if response.status != 201 && response.status != 200 {
            return Err(format!(
                "creating job `{id}`: status {}: {}",
                response.status,
                String::from_utf8_lossy(&response.body)
            )
            .into());
        }
        ids.push(id);
    }
    Ok(ids)
}

/// Starts each queued job with a token-less first event (a durable write, so done before a
/// measurement): the jobs then run under open leases.
pub async fn start_with_first_event(addr: SocketAddr, ids: &[String]) -> Result<()> {
    for id in ids {
        let response = http::once(
            addr,
            &http::post_json(&format!("/api/v1/jobs/{id}/events"), &event_body(0, 0)),
        )
        .await?;
        if response.status != 202 {
            return Err(format!("first event of `{id}`: status {}", response.status).into());
        }
    }
    Ok(())
}
