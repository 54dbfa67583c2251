//! Section `leases`: what owning a job costs a worker. Heartbeats acknowledged per second on
//! claimed jobs, against `POST /_bench/noop` with the same bodies; and fenced progress events
//! (claimed jobs, `attempt` + `lease_token` in every body) against unfenced ones (jobs started
//! by a token-less event, no fence), on the same server under the same load shape. Measured as
//! the ingest section measures (`super::ingest`): the same load generator, bodies, job count,
//! connections, rounds and alternation.

use std::net::SocketAddr;

use serde_json::{Value, json};

use super::http::{self, LoadResult};
use super::ingest::{
    JOBS, VARIANTS, client_share, create_jobs, event_body, start_with_first_event,
};
use super::report::{Row, Section};
use super::stats::{Latencies, median};
use super::{Ctx, alternate};
use crate::Result;

/// Goal: heartbeats per second at least this share of the no-op baseline.
const HEARTBEAT_GOAL: f64 = 0.5;
/// Goal: fenced events per second at least this share of unfenced ones (at most 10% slower).
const FENCED_GOAL: f64 = 0.9;
/// The type of the claimed jobs (no executor runs it).
const FENCED_TYPE: &str = "bench_fenced";

/// A claimed job: its id and the fence its writes carry.
struct Claimed {
    id: String,
    attempt: u64,
    token: String,
}

impl Claimed {
    /// `"attempt":N,"lease_token":"…"`, to open a JSON body with.
    fn fence_fields(&self) -> String {
        format!(
            r#""attempt":{},"lease_token":"{}""#,
            self.attempt, self.token
        )
    }
}

/// An ingest event body with the fence fields first.
fn fenced_body(claimed: &Claimed, job: usize, variant: usize) -> String {
    let body = event_body(job, variant);
    format!("{{{},{}", claimed.fence_fields(), &body[1..])
}

pub async fn run(ctx: &Ctx) -> Result<Section> {
    let server = ctx.start_server("leases", true)?;
    let addr = server.addr;
    // Unfenced: started by a token-less first event (an open lease), as in `ingest`.
    let open = create_jobs(addr, "open", "bench_open", JOBS).await?;
    start_with_first_event(addr, &open).await?;
    // Fenced: claimed by a worker, every write carrying the claim's attempt and token.
    create_jobs(addr, "fenced", FENCED_TYPE, JOBS).await?;
    let claimed = claim_all(addr, JOBS).await?;
    for (job, claim) in claimed.iter().enumerate() {
        let response = http::once(
            addr,
            &http::post_json(
                &format!("/api/v1/jobs/{}/events", claim.id),
                &fenced_body(claim, job, 0),
            ),
        )
        .await?;
        if response.status != 202 {
            return Err(format!(
                "first fenced event of `{}`: status {}: {}",
                claim.id,
                response.status,
                String::from_utf8_lossy(&response.body)
            )
            .into());
        }
    }

    let mut heartbeats = Vec::new();
    let mut noops = Vec::new();
    let mut fenced = Vec::new();
    let mut unfenced = Vec::new();
    for variant in 0..VARIANTS {
        for (job, (claim, open_id)) in claimed.iter().zip(&open).enumerate() {
            let beat = format!("{{{}}}", claim.fence_fields());
            heartbeats.push(http::post_json(
                &format!("/api/v1/jobs/{}/heartbeat", claim.id),
                &beat,
            ));
            noops.push(http::post_json("/_bench/noop", &beat));
            fenced.push(http::post_json(
                &format!("/api/v1/jobs/{}/events", claim.id),
                &fenced_body(claim, job, variant),
            ));
            unfenced.push(http::post_json(
                &format!("/api/v1/jobs/{open_id}/events"),
                &event_body(job, variant),
            ));
        }
    }
    let sizes = (
        format!("{{{}}}", claimed[0].fence_fields()).len(),
        event_body(0, 0).len(),
        fenced_body(&claimed[0], 0, 0).len(),
    );
    let noop = ctx.closed_loop(noops, |r| r.status == 200);
    let heartbeat = ctx.closed_loop(heartbeats, |r| r.status == 200);
    let unfenced = ctx.closed_loop(unfenced, |r| r.status == 202);
    let fenced = ctx.closed_loop(fenced, |r| r.status == 202);
    // Two pairs, each alternated as `ingest` alternates its pair, so that in each pair either
    // load runs first equally often.
    let mut rounds =
        alternate(ctx, &server, &[("noop", &noop), ("heartbeats", &heartbeat)]).await?;
    rounds.extend(
        alternate(
            ctx,
            &server,
            &[("unfenced events", &unfenced), ("fenced events", &fenced)],
        )
        .await?,
    );
    let cpu = server.cpu_time();
    // Every lease must still be held: nothing was lost or rescued while measuring.
    let lost = leases_lost(addr, &claimed).await?;

    let mut section = summarize(&rounds, ctx);
    section.notes.insert(
        0,
        format!(
            "{JOBS} claimed jobs and {JOBS} jobs started by a token-less event, both of types no \
             executor runs; {} keep-alive connections, closed loop; heartbeat bodies {} bytes \
             (the no-op gets the same), event bodies {} bytes unfenced and {} fenced (the same \
             event plus attempt and lease_token); {} rounds of {:.0} s each, heartbeats alternating \
             with the no-op, then fenced with unfenced events, after a warm-up; rps = median over rounds, ratio = median of per-round \
             ratios, latency over all samples; default lease (90 s), so nothing expires",
            ctx.connections(),
            sizes.0,
            sizes.1,
            sizes.2,
            ctx.rounds(),
            ctx.round_duration().as_secs_f64()
        ),
    );
    if lost > 0 {
        section.notes.push(format!(
            "{lost} of the {JOBS} claimed jobs no longer held their lease after the run"
        ));
    }
    section.data["server_cpu_seconds_total"] = json!(cpu.as_secs_f64());
    section.data["leases_lost_after_run"] = json!(lost);
    section.data["body_bytes"] = json!({
        "heartbeat": sizes.0, "unfenced_event": sizes.1, "fenced_event": sizes.2,
    });
    Ok(section)
}

/// Claims `count` jobs of [`FENCED_TYPE`] as one worker.
async fn claim_all(addr: SocketAddr, count: usize) -> Result<Vec<Claimed>> {
    let mut conn = http::Conn::connect(addr).await?;
    let body = json!({"types": [FENCED_TYPE], "worker": "bench"}).to_string();
    let mut claimed = Vec::with_capacity(count);
    for _ in 0..count {
        let response = conn
            .request(&http::post_json("/api/v1/jobs/claim", &body))
            .await?;
        let job: Value = serde_json::from_slice(&response.body).unwrap_or(Value::Null);
        match (
            response.status,
            job["id"].as_str(),
            job["attempt"].as_u64(),
            job["lease_token"].as_str(),
        ) {
            (200, Some(id), Some(attempt), Some(token)) => claimed.push(Claimed {
                id: id.to_owned(),
                attempt,
                token: token.to_owned(),
            }),
            (status, ..) => {
                return Err(format!(
                    "claim {} of {count}: status {status}: {}",
                    claimed.len() + 1,
                    String::from_utf8_lossy(&response.body)
                )
                .into());
            }
        }
    }
    Ok(claimed)
}

/// How many of the claimed jobs refuse their own fence now (a heartbeat that is not 200).
async fn leases_lost(addr: SocketAddr, claimed: &[Claimed]) -> Result<usize> {
    let mut conn = http::Conn::connect(addr).await?;
    let mut lost = 0;
    for claim in claimed {
        let response = conn
            .request(&http::post_json(
                &format!("/api/v1/jobs/{}/heartbeat", claim.id),
                &format!("{{{}}}", claim.fence_fields()),
            ))
            .await?;
        if response.status != 200 {
            lost += 1;
        }
    }
    Ok(lost)
}

fn summarize(rounds: &[Vec<LoadResult>], ctx: &Ctx) -> Section {
    let [noop, heartbeats, unfenced, fenced] = [&rounds[0], &rounds[1], &rounds[2], &rounds[3]];
    let rps = |runs: &[LoadResult]| median(&runs.iter().map(LoadResult::rps).collect::<Vec<_>>());
    let ratios = |target: &[LoadResult], baseline: &[LoadResult]| -> Vec<f64> {
        baseline
            .iter()
            .zip(target)
            .map(|(b, t)| t.rps() / b.rps().max(1e-9))
            .collect()
    };
    let lat = |runs: &[LoadResult]| {
        let mut all = Latencies::default();
        for run in runs {
            all.merge(run.latencies.clone());
        }
        (all.quantile_ms(0.5), all.quantile_ms(0.99))
    };
    let cpu = |runs: &[LoadResult]| {
        median(
            &runs
                .iter()
                .map(LoadResult::server_cpu_us)
                .collect::<Vec<_>>(),
        )
    };
    let heartbeat_ratios = ratios(heartbeats, noop);
    let fenced_ratios = ratios(fenced, unfenced);
    let (heartbeat_ratio, fenced_ratio) = (median(&heartbeat_ratios), median(&fenced_ratios));
    let (noop_p50, noop_p99) = lat(noop);
    let (hb_p50, hb_p99) = lat(heartbeats);
    let (open_p50, open_p99) = lat(unfenced);
    let (fenced_p50, fenced_p99) = lat(fenced);
    let all = || noop.iter().chain(heartbeats).chain(unfenced).chain(fenced);
    let errors: u64 = all().map(|r| r.unexpected + r.io_errors).sum();
    let per_round = |runs: &[LoadResult]| runs.iter().map(LoadResult::rps).collect::<Vec<_>>();
    let mut section = Section {
        key: "leases",
        title: "8. Leases: POST /api/v1/jobs/{id}/heartbeat and fenced events".to_owned(),
        rows: vec![
            Row::new(
                "heartbeats acknowledged (200) per second",
                rps(heartbeats),
                "rps",
            )
            .baseline(rps(noop), heartbeat_ratio)
            .goal(
                format!("≥ {HEARTBEAT_GOAL:.2}× baseline"),
                heartbeat_ratio >= HEARTBEAT_GOAL,
            ),
            Row::new("heartbeat latency p50", hb_p50, "ms")
                .baseline(noop_p50, hb_p50 / noop_p50.max(1e-9)),
            Row::new("heartbeat latency p99", hb_p99, "ms")
                .baseline(noop_p99, hb_p99 / noop_p99.max(1e-9)),
            Row::new("server CPU per heartbeat", cpu(heartbeats), "µs")
                .baseline(cpu(noop), cpu(heartbeats) / cpu(noop).max(1e-9)),
            Row::new(
                "fenced events acknowledged (202) per second",
                rps(fenced),
                "rps",
            )
            .baseline(rps(unfenced), fenced_ratio)
            .goal(
                format!("≥ {FENCED_GOAL:.2}× unfenced"),
                fenced_ratio >= FENCED_GOAL,
            ),
            Row::new("fenced event latency p50", fenced_p50, "ms")
                .baseline(open_p50, fenced_p50 / open_p50.max(1e-9)),
            Row::new("fenced event latency p99", fenced_p99, "ms")
                .baseline(open_p99, fenced_p99 / open_p99.max(1e-9)),
            Row::new("server CPU per fenced event", cpu(fenced), "µs")
                .baseline(cpu(unfenced), cpu(fenced) / cpu(unfenced).max(1e-9)),
        ],
        notes: Vec::new(),
        data: json!({
            "rounds": ctx.rounds(),
            "connections": ctx.connections(),
            "noop_rps_per_round": per_round(noop),
            "heartbeat_rps_per_round": per_round(heartbeats),
            "unfenced_rps_per_round": per_round(unfenced),
            "fenced_rps_per_round": per_round(fenced),
            "heartbeat_ratio_per_round": heartbeat_ratios,
            "fenced_ratio_per_round": fenced_ratios,
            "load_generator_cpu_share": client_share(all()),
            "errors": errors,
        }),
    };
    if errors > 0 {
        let first = all()
            .find_map(|r| r.first_unexpected.clone())
            .unwrap_or_else(|| "connection errors".to_owned());
        section.notes.push(format!(
            "{errors} requests failed or got an unexpected answer; first: {first}"
        ));
    }
    section
}
