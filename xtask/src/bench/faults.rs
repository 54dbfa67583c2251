//! Section `faults`: how fast the API answers while something goes wrong, the timings the
//! server's `faults` tests used to assert (a threshold in a correctness test flakes on a
//! loaded machine; here it is a measured number with a goal):
//!
//! - the slowest `GET /api/v1/jobs/ID` while a child floods stdout with 50 MB (quick: 10 MB),
//!   goal under 2 s;
//! - `POST …/cancel` of a child flooding forever, goal under 2 s;
//! - a read among 12 writers waiting on a database another process holds locked
//!   (`BEGIN EXCLUSIVE`, busy timeout 700 ms), goal under 400 ms;
//! - the slowest pair of API reads while 50 SSE clients never read and 8 KiB events are
//!   published, goal under 2 s.

use std::io::Write;
use std::net::TcpStream;
use std::path::Path;
use std::time::{Duration, Instant};

use diesel::connection::SimpleConnection;
use diesel::{Connection, SqliteConnection};
use serde_json::{Value, json};
use skill_fleet_testkit::http::{agent, call};
use skill_fleet_testkit::server::{command, write_config};
use skill_fleet_testkit::{TestServer, wait_for};

use super::Ctx;
use super::report::{Row, Section};
use crate::Result;

const GOAL_FLOOD_GET: Duration = Duration::from_secs(2);
const GOAL_CANCEL: Duration = Duration::from_secs(2);
const GOAL_LOCKED_READ: Duration = Duration::from_millis(400);
const GOAL_SILENT_SSE_PAIR: Duration = Duration::from_secs(2);

/// A python child writing `FLOOD_BYTES` (0: forever) of plain lines as fast as it can, with a
/// progress line every 100 of them (the same child as the server's `faults` tests).
const FLOOD: &str = r#"
import json, os, sys
total = int(os.environ["FLOOD_BYTES"])
block = ("x" * 99 + "\n") * 100
out = sys.stdout
written = 0
while total == 0 or written < total:
    out.write(block)
    written += len(block)
    fraction = min(written / total, 1.0) if total else 0.5
    out.write(json.dumps({"progress": fraction, "message": "m" * 200}) + "\n")
out.write(json.dumps({"result": {"bytes": written}}) + "\n")
"#;

pub async fn run(ctx: &Ctx) -> Result<Section> {
    let quick = ctx.quick;
    let binary = ctx.server_bin.clone();
    let dir = ctx.tmp.path().join("faults");
    std::fs::create_dir_all(&dir)?;
    let (flood_get, cancel, locked_read, silent_pair) =
        tokio::task::spawn_blocking(move || -> std::result::Result<_, String> {
            let (flood_get, cancel) = flood(&binary, &dir.join("flood"), quick)?;
            let locked_read = locked(&binary, &dir.join("locked"))?;
            let silent_pair = silent_sse(&binary, &dir.join("silent"), quick)?;
            Ok((flood_get, cancel, locked_read, silent_pair))
        })
        .await??;
    let ms = |d: Duration| d.as_secs_f64() * 1000.0;
    let row = |measure: &str, value: Duration, goal: Duration| {
        Row::new(measure, ms(value), "ms").goal(format!("< {:.0} ms", ms(goal)), value < goal)
    };
    Ok(Section {
        key: "faults",
        title: "7. Faults: API latency while things go wrong".to_owned(),
        rows: vec![
            row(
                "slowest GET during a stdout flood",
                flood_get,
                GOAL_FLOOD_GET,
            ),
            row("cancel of a child flooding forever", cancel, GOAL_CANCEL),
            row(
                "a read among 12 writers on a locked database",
                locked_read,
                GOAL_LOCKED_READ,
            ),
            row(
                "slowest API pair with 50 silent SSE clients",
                silent_pair,
                GOAL_SILENT_SSE_PAIR,
            ),
        ],
        notes: vec![
            "the server's `faults` tests check the behaviour (nothing starves, the answers are \
             right); these are the timings they no longer assert"
                .to_owned(),
        ],
        data: json!({
            "flood_get_ms": ms(flood_get),
            "cancel_ms": ms(cancel),
            "locked_read_ms": ms(locked_read),
            "silent_sse_pair_ms": ms(silent_pair),
        }),
    })
}

fn start(
    binary: &Path,
    dir: &Path,
    config: &str,
    extra: &[&str],
) -> std::result::Result<TestServer, String> {
    std::fs::create_dir_all(dir)
        .map_err(|err| format!("cannot create `{}`: {err}", dir.display()))?;
    let database = dir.join("skill-fleet.db");
    let config = write_config(&database, config).map_err(|err| err.to_string())?;
    let mut server = command(binary, &database);
    server
        .arg("--config")
        .arg(config)
        .args(extra)
        .env("SKILL_FLEET_LOG", "error")
        .stderr(std::process::Stdio::null());
    TestServer::spawn(server).map_err(|err| err.to_string())
}

fn get(server: &TestServer, path: &str) -> std::result::Result<Value, String> {
    match server.get(path) {
        (200, body) => Ok(body),
        (status, body) => Err(format!("GET {path}: {status} {body}")),
    }
}

fn post(server: &TestServer, path: &str, body: Value) -> std::result::Result<Value, String> {
    match server.post(path, body) {
        (200..=299, body) => Ok(body),
        (status, body) => Err(format!("POST {path}: {status} {body}")),
    }
}

/// The slowest GET while a child floods stdout, and how long cancelling an endless flood
/// takes.
fn flood(
    binary: &Path,
    dir: &Path,
    quick: bool,
) -> std::result::Result<(Duration, Duration), String> {
    std::fs::create_dir_all(dir).map_err(|err| err.to_string())?;
    let script = dir.join("flood.py");
    std::fs::write(&script, FLOOD).map_err(|err| err.to_string())?;
    let bytes = if quick { 10_000_000 } else { 50_000_000 };
    let config = format!(
        "[executors.flood]\ncommand = [\"python3\", \"{script}\"]\nenv = {{ FLOOD_BYTES = \"{bytes}\" }}\n\n\
         [executors.flood_forever]\ncommand = [\"python3\", \"{script}\"]\nenv = {{ FLOOD_BYTES = \"0\" }}\n",
        script = script.display()
    );
    let server = start(binary, dir, &config, &[])?;
    post(
        &server,
        "/api/v1/jobs",
        json!({"id": "flood", "type": "flood"}),
    )?;
    let started = Instant::now();
    let mut slowest = Duration::ZERO;
    loop {
        let asked = Instant::now();
        let job = get(&server, "/api/v1/jobs/flood")?;
        slowest = slowest.max(asked.elapsed());
        if job["status"] == "completed" {
            break;
        }
        if started.elapsed() > Duration::from_secs(300) {
            return Err("the flood never ended".to_owned());
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    post(
        &server,
        "/api/v1/jobs",
        json!({"id": "forever", "type": "flood_forever"}),
    )?;
    wait_for("the endless flood to run", 60, || {
        (get(&server, "/api/v1/jobs/forever").ok()?["status"] == "running").then_some(())
    });
    let asked = Instant::now();
    post(&server, "/api/v1/jobs/forever/cancel", json!({}))?;
    Ok((slowest, asked.elapsed()))
}

/// A read while another connection holds the write lock and 12 writers wait for it.
fn locked(binary: &Path, dir: &Path) -> std::result::Result<Duration, String> {
    let server = start(binary, dir, "[executors]\n", &["--busy-timeout-ms", "700"])?;
    post(
        &server,
        "/api/v1/jobs",
        json!({"id": "seed", "type": "fault"}),
    )?;
    let database = dir.join("skill-fleet.db");
    let mut other = SqliteConnection::establish(&database.display().to_string())
        .map_err(|err| err.to_string())?;
    other
        .batch_execute("PRAGMA busy_timeout = 5000; BEGIN EXCLUSIVE;")
        .map_err(|err| err.to_string())?;
    let writers: Vec<_> = (0..12)
        .map(|i| {
            let url = server.url("/api/v1/jobs");
            std::thread::spawn(move || {
                call(
                    agent()
                        .post(&url)
                        .send_json(json!({"id": format!("queued-{i}"), "type": "fault"})),
                )
                .0
            })
        })
        .collect();
    // Positions the read among the waiting writers (they cannot answer before 700 ms).
    std::thread::sleep(Duration::from_millis(150));
    let read = Instant::now();
    get(&server, "/api/v1/jobs?limit=37")?;
    let took = read.elapsed();
    for writer in writers {
        let _ = writer.join();
    }
    other
        .batch_execute("ROLLBACK;")
        .map_err(|err| err.to_string())?;
    Ok(took)
}

/// The slowest pair of reads while 50 SSE clients never read and 8 KiB events flow.
fn silent_sse(binary: &Path, dir: &Path, quick: bool) -> std::result::Result<Duration, String> {
    let server = start(binary, dir, "[executors]\n", &[])?;
    post(
        &server,
        "/api/v1/jobs",
        json!({"id": "loud", "type": "loud"}),
    )?;
    let request =
        "GET /api/v1/jobs/loud/stream HTTP/1.1\r\nHost: x\r\nAccept: text/event-stream\r\n\r\n";
    let silent: Vec<TcpStream> = (0..50)
        .map(|_| {
            let mut stream = TcpStream::connect(server.addr).map_err(|err| err.to_string())?;
            stream
                .write_all(request.as_bytes())
                .map_err(|err| err.to_string())?;
            Ok(stream)
        })
        .collect::<std::result::Result<_, String>>()?;
    let events = if quick { 200 } else { 1000 };
    let message = "m".repeat(8 * 1024);
    let publishers: Vec<_> = (0..4)
        .map(|p| {
            let url = server.url("/api/v1/jobs/loud/events");
            let message = message.clone();
            std::thread::spawn(move || {
                let agent = agent();
                for sent in 0..events {
                    let progress = (sent as f64 / events as f64).min(0.99);
                    let _ = call(agent.post(&url).send_json(
                        json!({"progress": progress, "message": format!("{p}-{sent} {message}")}),
                    ));
                }
            })
        })
        .collect();
    let mut slowest = Duration::ZERO;
    while publishers.iter().any(|p| !p.is_finished()) {
        let asked = Instant::now();
        get(&server, "/api/v1/jobs/loud")?;
        get(&server, "/api/v1/jobs?limit=10")?;
        slowest = slowest.max(asked.elapsed());
        std::thread::sleep(Duration::from_millis(50));
    }
    for publisher in publishers {
        let _ = publisher.join();
    }
    drop(silent);
    Ok(slowest)
}
