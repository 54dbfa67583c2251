//! Section `artifacts`: download throughput of a 100 MiB artifact, streamed from the
//! database a chunk at a time, against the same bytes served from memory by the same server
//! (`GET /_bench/artifact/{id}/{name}`), in alternating rounds; and the server's memory while
//! the artifact is downloaded (it must stay flat: the file never sits whole in memory).

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use skill_fleet_types::{ATTEMPT_HEADER, LEASE_TOKEN_HEADER};

use super::Ctx;
use super::http;
use super::report::{Row, Section};
use super::server::rss_kib;
use super::stats::median;
use crate::Result;

/// The artifact's size.
const SIZE: usize = 100 << 20;
/// Goal: throughput from the database against from memory.
const GOAL_RATIO: f64 = 0.5;
/// Goal: the server's resident memory grows by less than this during a download.
const GOAL_RSS_GROWTH_MIB: f64 = 16.0;

/// What one download measured.
struct Download {
    bytes: u64,
    seconds: f64,
    /// Largest resident memory of the server seen during it, in KiB.
    peak_rss_kib: u64,
    /// Resident memory just before it, in KiB.
    start_rss_kib: u64,
}

impl Download {
    fn mib_per_second(&self) -> f64 {
        self.bytes as f64 / (1 << 20) as f64 / self.seconds.max(1e-9)
    }

    fn rss_growth_mib(&self) -> f64 {
        self.peak_rss_kib.saturating_sub(self.start_rss_kib) as f64 / 1024.0
    }
}

/// `GET path` on a fresh connection, the body read and dropped as fast as it comes, the
/// server's memory sampled every 5 ms meanwhile; the bytes must be `expect_bytes`.
fn download(addr: SocketAddr, path: &str, pid: u32, expect_bytes: usize) -> Result<Download> {
    let sampling = Arc::new(AtomicBool::new(true));
    let start_rss_kib = rss_kib(pid);
    let sampler = {
        let sampling = Arc::clone(&sampling);
        std::thread::spawn(move || {
            let mut peak = 0;
            while sampling.load(Ordering::Relaxed) {
                peak = peak.max(rss_kib(pid));
                std::thread::sleep(Duration::from_millis(5));
            }
            peak
        })
    };
    let started = Instant::now();
    let mut stream = TcpStream::connect(addr)?;
    write!(
        stream,
        "GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n"
    )?;
    let mut buffer = vec![0_u8; 1 << 20];
    let mut head = Vec::new();
    let mut body = 0_u64;
    loop {
        let read = stream.read(&mut buffer)?;
        if read == 0 {
            break;
        }
        if body == 0 && !head.ends_with(b"\r\n\r\n") {
            head.extend_from_slice(&buffer[..read]);
            if let Some(end) = head.windows(4).position(|w| w == b"\r\n\r\n") {
                body = (head.len() - end - 4) as u64;
                head.truncate(end + 4);
            }
        } else {
            body += read as u64;
        }
    }
    let seconds = started.elapsed().as_secs_f64();
    sampling.store(false, Ordering::Relaxed);
    let peak_rss_kib = sampler.join().map_err(|_| "the memory sampler panicked")?;
    let status = String::from_utf8_lossy(&head);
    if !status.starts_with("HTTP/1.1 200") || body != expect_bytes as u64 {
        return Err(format!(
            "GET {path}: {} with {body} bytes, expected 200 with {expect_bytes}",
            status.lines().next().unwrap_or("no answer")
        )
        .into());
    }
    Ok(Download {
        bytes: body,
        seconds,
        peak_rss_kib,
        start_rss_kib,
    })
}

/// `PUT` of `bytes` as an artifact with a claim's fence; the answer's JSON.
fn upload(addr: SocketAddr, path: &str, claimed: &Value, bytes: &[u8]) -> Result<Value> {
    let mut stream = TcpStream::connect(addr)?;
    let token = claimed["lease_token"].as_str().unwrap_or_default();
    write!(
        stream,
        "PUT {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\
         Content-Type: application/octet-stream\r\nContent-Length: {}\r\n\
         {ATTEMPT_HEADER}: {}\r\n{LEASE_TOKEN_HEADER}: {token}\r\n\r\n",
        bytes.len(),
        claimed["attempt"]
    )?;
    stream.write_all(bytes)?;
    let mut answer = Vec::new();
    stream.read_to_end(&mut answer)?;
    let text = String::from_utf8_lossy(&answer);
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    if !head.starts_with("HTTP/1.1 201") {
        return Err(format!("PUT {path}: {head} {body}").into());
    }
    // The body may be chunked: the JSON object is between the first `{` and the last `}`.
    let json = body
        .find('{')
        .zip(body.rfind('}'))
        .map_or("", |(from, to)| &body[from..=to]);
    Ok(serde_json::from_str(json)?)
}

pub async fn run(ctx: &Ctx) -> Result<Section> {
    let server = ctx.start_server("artifacts", true)?;
    let addr = server.addr;
    let pid = server.pid;
    let created = http::once(
        addr,
        &http::post_json(
            "/api/v1/jobs",
            r#"{"id": "bench-artifact", "type": "bench_artifact"}"#,
        ),
    )
    .await?;
    if created.status != 201 {
        return Err(format!("create: status {}", created.status).into());
    }
    let claimed = http::once(
        addr,
        &http::post_json("/api/v1/jobs/claim", r#"{"types": ["bench_artifact"]}"#),
    )
    .await?;
    let claimed: Value = serde_json::from_slice(&claimed.body)?;
    let bytes: Vec<u8> = (0..SIZE)
        .map(|i| (i as u32).wrapping_mul(2_654_435_761).to_le_bytes()[1])
        .collect();
    let path = "/api/v1/jobs/bench-artifact/artifacts/model.bin";
    let upload_started = Instant::now();
    let stored = tokio::task::block_in_place(|| upload(addr, path, &claimed, &bytes))?;
    let upload_seconds = upload_started.elapsed().as_secs_f64();
    drop(bytes);
    let memory = "/_bench/artifact/bench-artifact/model.bin";

    // Memory first, before the baseline route loads the file into memory for good.
    let first = tokio::task::block_in_place(|| download(addr, path, pid, SIZE))?;
    let mut from_db = Vec::new();
    let mut from_memory = Vec::new();
    // One warm-up of the baseline (it loads the file once), then alternating rounds.
    tokio::task::block_in_place(|| download(addr, memory, pid, SIZE))?;
    for _ in 0..ctx.rounds() {
        from_memory.push(tokio::task::block_in_place(|| {
            download(addr, memory, pid, SIZE)
        })?);
        from_db.push(tokio::task::block_in_place(|| {
            download(addr, path, pid, SIZE)
        })?);
    }
    let ratios: Vec<f64> = from_db
        .iter()
        .zip(&from_memory)
        .map(|(db, memory)| db.mib_per_second() / memory.mib_per_second().max(1e-9))
        .collect();
    let ratio = median(&ratios);
    let speed = |runs: &[Download]| {
        median(
            &runs
                .iter()
                .map(Download::mib_per_second)
                .collect::<Vec<_>>(),
        )
    };
    let growths: Vec<f64> = std::iter::once(&first)
        .chain(&from_db)
        .map(Download::rss_growth_mib)
        .collect();
    let worst_growth = growths.iter().copied().fold(0.0, f64::max);
    let section = Section {
        key: "artifacts",
        title: "Artifacts: a 100 MiB download".to_owned(),
        rows: vec![
            Row::new("download from the database", speed(&from_db), "MiB/s")
                .baseline(speed(&from_memory), ratio)
                .goal(format!("≥ {GOAL_RATIO:.2}× baseline"), ratio >= GOAL_RATIO),
            Row::new(
                "server memory growth during a download (worst)",
                worst_growth,
                "MiB",
            )
            .goal(
                format!("< {GOAL_RSS_GROWTH_MIB:.0} MiB (the file is 100 MiB)"),
                worst_growth < GOAL_RSS_GROWTH_MIB,
            ),
            Row::new(
                "upload into the database",
                SIZE as f64 / (1 << 20) as f64 / upload_seconds.max(1e-9),
                "MiB/s",
            ),
        ],
        notes: vec![format!(
            "one 100 MiB artifact in 1 MiB chunks in SQLite, downloaded whole on a fresh \
             connection per request; baseline: the same bytes from memory through \
             GET /_bench/artifact/{{id}}/{{name}} of the same server; {} alternating rounds; \
             memory is the server's VmRSS sampled every 5 ms, its growth over the value just \
             before each download (the first download ran before the baseline route loaded \
             the file); sha256 {}",
            ctx.rounds(),
            stored["sha256"].as_str().unwrap_or("?")
        )],
        data: json!({
            "db_mib_per_second": from_db.iter().map(Download::mib_per_second).collect::<Vec<_>>(),
            "memory_mib_per_second": from_memory.iter().map(Download::mib_per_second).collect::<Vec<_>>(),
            "ratio_per_round": ratios,
            "rss_growth_mib_per_download": growths,
            "rss_start_kib": first.start_rss_kib,
            "rss_peak_kib": first.peak_rss_kib,
            "upload_seconds": upload_seconds,
        }),
    };
    drop(server);
    Ok(section)
}
