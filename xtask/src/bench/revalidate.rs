//! Section `revalidate`: `GET /api/v1/jobs/{id}` answered from the response cache, as a 304
//! (matching `If-None-Match`) and as a cached 200 (`X-Cache: HIT`), against `GET /_bench/noop`.

use serde_json::json;

use super::http::{self, LoadResult};
use super::ingest::{client_share, create_jobs};
use super::report::{Row, Section};
use super::stats::{Latencies, median};
use super::{Ctx, alternate};
use crate::Result;

const JOBS: usize = 100;
const GOAL_304: f64 = 0.85;
const GOAL_200: f64 = 0.75;

pub async fn run(ctx: &Ctx) -> Result<Section> {
    let server = ctx.start_server("revalidate", true)?;
    let addr = server.addr;
    let ids = create_jobs(addr, "cache", "bench_cache", JOBS).await?;
    let mut not_modified = Vec::new();
    let mut hits = Vec::new();
    let mut noops = Vec::new();
    for id in &ids {
        let path = format!("/api/v1/jobs/{id}");
        // The first GET fills the server's response cache and gives the ETag.
        let first = http::once(addr, &http::get(&path, &[])).await?;
        let etag = first
            .etag
            .ok_or_else(|| format!("GET {path}: no ETag (status {})", first.status))?;
        not_modified.push(http::get(&path, &[("If-None-Match", &etag)]));
        hits.push(http::get(&path, &[]));
        noops.push(http::get("/_bench/noop", &[]));
    }
    let body_bytes = http::once(addr, &hits[0]).await?.body.len();
    let noop = ctx.closed_loop(noops, |r| r.status == 200);
    let revalidated = ctx.closed_loop(not_modified, |r| r.status == 304);
    let cached = ctx.closed_loop(hits, |r| r.status == 200 && r.cache_hit);
    let rounds = alternate(
        ctx,
        &server,
        &[("noop", &noop), ("304", &revalidated), ("200 HIT", &cached)],
    )
    .await?;

    let rps = |runs: &[LoadResult]| median(&runs.iter().map(LoadResult::rps).collect::<Vec<_>>());
    let ratios = |runs: &[LoadResult]| -> Vec<f64> {
        rounds[0]
            .iter()
            .zip(runs)
            .map(|(b, t)| t.rps() / b.rps().max(1e-9))
            .collect()
    };
    let p99 = |runs: &[LoadResult]| {
        let mut all = Latencies::default();
        for run in runs {
            all.merge(run.latencies.clone());
        }
        all.quantile_ms(0.99)
    };
    let cpu = |runs: &[LoadResult]| {
        median(
            &runs
                .iter()
                .map(LoadResult::server_cpu_us)
                .collect::<Vec<_>>(),
        )
    };
    let (r304, r200) = (ratios(&rounds[1]), ratios(&rounds[2]));
    let (ratio304, ratio200) = (median(&r304), median(&r200));
    let noop_rps = rps(&rounds[0]);
    let noop_p99 = p99(&rounds[0]);
    let (p99_304, p99_200) = (p99(&rounds[1]), p99(&rounds[2]));
    let errors: u64 = rounds
        .iter()
        .flatten()
        .map(|r| r.unexpected + r.io_errors)
        .sum();
    let mut section = Section {
        key: "revalidate",
        title: "2. Revalidation: GET /api/v1/jobs/{id}".to_owned(),
        rows: vec![
            Row::new(
                "304 (If-None-Match matches) per second",
                rps(&rounds[1]),
                "rps",
            )
            .baseline(noop_rps, ratio304)
            .goal(format!("≥ {GOAL_304:.2}× baseline"), ratio304 >= GOAL_304),
            Row::new("304 latency p99", p99_304, "ms")
                .baseline(noop_p99, p99_304 / noop_p99.max(1e-9)),
            Row::new(
                "cached 200 (X-Cache: HIT) per second",
                rps(&rounds[2]),
                "rps",
            )
            .baseline(noop_rps, ratio200)
            .goal(format!("≥ {GOAL_200:.2}× baseline"), ratio200 >= GOAL_200),
            Row::new("cached 200 latency p99", p99_200, "ms")
                .baseline(noop_p99, p99_200 / noop_p99.max(1e-9)),
            Row::new("server CPU per 304", cpu(&rounds[1]), "µs")
                .baseline(cpu(&rounds[0]), cpu(&rounds[1]) / cpu(&rounds[0]).max(1e-9)),
            Row::new("server CPU per cached 200", cpu(&rounds[2]), "µs")
                .baseline(cpu(&rounds[0]), cpu(&rounds[2]) / cpu(&rounds[0]).max(1e-9)),
        ],
        notes: vec![format!(
            "{JOBS} queued jobs, requests spread over them, {} keep-alive connections, closed \
             loop; baseline GET /_bench/noop; the cached 200 body is {body_bytes} bytes; \
             {} rounds of {:.0} s, the three loads alternating after a warm-up",
            ctx.connections(),
            ctx.rounds(),
            ctx.round_duration().as_secs_f64()
        )],
        data: json!({
            "noop_rps_per_round": rounds[0].iter().map(LoadResult::rps).collect::<Vec<_>>(),
            "not_modified_rps_per_round": rounds[1].iter().map(LoadResult::rps).collect::<Vec<_>>(),
            "hit_rps_per_round": rounds[2].iter().map(LoadResult::rps).collect::<Vec<_>>(),
            "ratio_304_per_round": r304,
            "ratio_200_per_round": r200,
            "body_bytes": body_bytes,
            "load_generator_cpu_share": client_share(rounds.iter().flatten()),
            "errors": errors,
        }),
    };
    if errors > 0 {
        let first = rounds
            .iter()
            .flatten()
            .find_map(|r| r.first_unexpected.clone())
            .unwrap_or_else(|| "connection errors".to_owned());
        section.notes.push(format!(
            "{errors} requests failed or got an unexpected answer; first: {first}"
        ));
    }
    drop(server);
    Ok(section)
}
