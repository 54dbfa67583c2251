//! Section `cli`: whole-process wall time of `skill-fleet jobs show ID` with a warm cache
//! (the server answers 304) against `curl -s` of the same URL, alternating.

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::json;

use super::Ctx;
use super::http;
use super::ingest::create_jobs;
use super::report::{Row, Section};
use super::stats::{median, quantile};
use crate::Result;

const GOAL: f64 = 2.0;

fn timed(command: &mut Command) -> Result<Duration> {
    let started = Instant::now();
    let status = command
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()?;
    let elapsed = started.elapsed();
    if !status.success() {
        return Err(format!("{command:?} failed: {status}").into());
    }
    Ok(elapsed)
}

async fn not_modified_count(addr: std::net::SocketAddr) -> Result<u64> {
    let response = http::once(addr, &http::get("/metrics", &[])).await?;
    let metrics: serde_json::Value = serde_json::from_slice(&response.body)?;
    Ok(metrics["cache"]["not_modified"].as_u64().unwrap_or(0))
}

pub async fn run(ctx: &Ctx) -> Result<Section> {
    let server = ctx.start_server("cli", true)?;
    let addr = server.addr;
    let id = create_jobs(addr, "cli", "bench_cli", 1).await?.remove(0);
    let base = format!("http://{addr}");
    let url = format!("{base}/api/v1/jobs/{id}");
    let cache_dir = ctx.tmp.path().join("cli-cache");
    let show = || {
        let mut command = Command::new(&ctx.cli_bin);
        command
            .env("SKILL_FLEET_CACHE_DIR", &cache_dir)
            .args(["--server", &base, "jobs", "show", &id]);
        command
    };
    let curl_available = Command::new("curl")
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    // Warm the CLI's cache (and the process/page caches of both binaries).
    timed(&mut show())?;
    timed(&mut show())?;
    if curl_available {
        timed(Command::new("curl").args(["-s", &url]))?;
    }
    let runs = if ctx.quick { 20 } else { 100 };
    let before = not_modified_count(addr).await?;
    let (mut cli_ms, mut curl_ms) = (Vec::new(), Vec::new());
    for _ in 0..runs {
        cli_ms.push(timed(&mut show())?.as_secs_f64() * 1000.0);
        if curl_available {
            curl_ms.push(timed(Command::new("curl").args(["-s", &url]))?.as_secs_f64() * 1000.0);
        }
    }
    let revalidated = not_modified_count(addr).await? - before;
    let (cli_p50, cli_p90) = (median(&cli_ms), quantile(&cli_ms, 0.9));
    let mut section = Section {
        key: "cli",
        title: "5. CLI: `skill-fleet jobs show ID`, warm cache".to_owned(),
        ..Section::default()
    };
    if curl_available {
        let (curl_p50, curl_p90) = (median(&curl_ms), quantile(&curl_ms, 0.9));
        let ratio = cli_p50 / curl_p50.max(1e-9);
        section.rows = vec![
            Row::new("wall time median", cli_p50, "ms")
                .baseline(curl_p50, ratio)
                .goal(format!("≤ {GOAL:.1}× curl"), ratio <= GOAL),
            Row::new("wall time p90", cli_p90, "ms")
                .baseline(curl_p90, cli_p90 / curl_p90.max(1e-9)),
        ];
    } else {
        section.rows = vec![
            Row::new("wall time median", cli_p50, "ms"),
            Row::new("wall time p90", cli_p90, "ms"),
        ];
        section
            .notes
            .push("curl is not installed: no baseline (apt-get install curl)".to_owned());
    }
    section.rows.push(Row::new(
        "CLI requests answered 304",
        revalidated as f64 / runs as f64 * 100.0,
        "%",
    ));
    section.notes.insert(
        0,
        format!(
            "{runs} runs each, alternating, whole process (spawn → exit) with std::process, \
             output to /dev/null; baseline `curl -s URL`; the 304 share is from the server's \
             /metrics not_modified counter"
        ),
    );
    section.data = json!({
        "runs": runs,
        "cli_ms": cli_ms,
        "curl_ms": curl_ms,
        "curl_available": curl_available,
        "not_modified": revalidated,
    });
    Ok(section)
}
