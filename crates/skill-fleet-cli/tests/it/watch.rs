//! End to end: `skill-fleet jobs watch` and `optimize --watch` follow progress posted by the
//! test, end with the job's outcome, survive a server restart, and stop on Ctrl-C.

use crate::support;

use std::process::Child;
use std::sync::mpsc::Receiver;

use serde_json::json;
use support::{DEADLINE, Dirs, Server, cli, lines_of, run, wait, wait_for_line};

/// A running `skill-fleet` and its stdout lines.
struct Running {
    child: Child,
    lines: Receiver<String>,
    seen: Vec<String>,
}

impl Running {
    fn start(server: &str, cache: &std::path::Path, args: &[&str]) -> Running {
        let mut child = cli(server, cache)
            .args(args)
            .spawn()
            .expect("spawn skill-fleet");
        let lines = lines_of(child.stdout.take().expect("stdout"));
        Running {
            child,
            lines,
            seen: Vec::new(),
        }
    }

    fn wait_for(&mut self, line: &str) {
        wait_for_line(&self.lines, &mut self.seen, |got| got == line);
    }

    /// Waits for the exit; returns the code, every stdout line and stderr.
    fn finish(mut self) -> (i32, Vec<String>, String) {
        let status = wait(&mut self.child, DEADLINE);
        let mut stderr = String::new();
        if let Some(mut pipe) = self.child.stderr.take() {
            let _ = std::io::Read::read_to_string(&mut pipe, &mut stderr);
        }
        self.seen.extend(self.lines.iter());
        (
            status.code().unwrap_or(-1),
            std::mem::take(&mut self.seen),
            stderr,
        )
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[test]
fn watch_prints_posted_progress_and_exits_0_when_the_job_completes() {
    let dirs = Dirs::new();
    let server = Server::start(&dirs.db());
    server.post_ok(
        "/api/v1/jobs",
        json!({"id": "w1", "type": "optimization"}),
        201,
    );

    let mut watch = Running::start(&server.base, &dirs.cache(), &["jobs", "watch", "w1"]);
    watch.wait_for("[0%] Waiting to start... ($0.00)");
    server.post_ok(
        "/api/v1/jobs/w1/events",
        json!({"step": "proposing_instructions", "progress": 0.35, "cost_usd": 0.85}),
        202,
    );
    watch.wait_for("[35%] Proposing instructions... ($0.85)");
    server.post_ok(
        "/api/v1/jobs/w1/events",
        json!({"step": "searching_parameters", "progress": 0.8, "cost_usd": 2.3, "metric": 0.84}),
        202,
    );
    watch.wait_for("[80%] Searching parameters... ($2.30)");
    server.post_ok(
        "/api/v1/jobs/w1/complete",
        json!({"result": {"accuracy": 0.84}}),
        200,
    );

    let (code, lines, stderr) = watch.finish();
    assert_eq!(code, 0, "{lines:#?}\n{stderr}");
    assert_eq!(
        lines.last().map(String::as_str),
        Some("Done! Final metric: 0.84 (Cost: $2.30)")
    );
    // A line only when something visible changed.
    let mut deduped = lines.clone();
    deduped.dedup();
    assert_eq!(deduped, lines);
}

#[test]
fn watch_of_a_failed_or_cancelled_job_exits_1_with_the_error() {
    let dirs = Dirs::new();
    let server = Server::start(&dirs.db());
    server.post_ok(
        "/api/v1/jobs",
        json!({"id": "f1", "type": "evaluation"}),
        201,
    );
    server.post_ok(
        "/api/v1/jobs/f1/events",
        json!({"step": "scoring", "progress": 0.5}),
        202,
    );

    let mut watch = Running::start(&server.base, &dirs.cache(), &["jobs", "watch", "f1"]);
    watch.wait_for("[50%] Scoring... ($0.00)");
    server.post_ok(
        "/api/v1/jobs/f1/fail",
        json!({"error": "model returned garbage"}),
        200,
    );
    let (code, lines, _) = watch.finish();
    assert_eq!(code, 1, "{lines:#?}");
    assert_eq!(
        lines.last().map(String::as_str),
        Some("Failed: model returned garbage")
    );

    // An already finished job: its final state at once.
    server.post_ok(
        "/api/v1/jobs",
        json!({"id": "c1", "type": "evaluation"}),
        201,
    );
    server.post_ok(
        "/api/v1/jobs/c1/cancel",
        json!({"reason": "budget exceeded: $2.31 of $2.00"}),
        200,
    );
    let out = run(&server.base, &dirs.cache(), &["jobs", "watch", "c1"]);
    out.assert_code(1);
    assert_eq!(out.stdout, "Cancelled: budget exceeded: $2.31 of $2.00\n");

    // --json: one StreamEvent per line.
    let out = run(
        &server.base,
        &dirs.cache(),
        &["jobs", "watch", "c1", "--json"],
    );
    out.assert_code(1);
    let event = out.json();
    assert_eq!(event["job_id"], "c1");
    assert_eq!(event["status"], "cancelled");

    // An unknown job is a 404 before any stream.
    let out = run(&server.base, &dirs.cache(), &["jobs", "watch", "nope"]);
    out.assert_code(1);
    assert!(
        out.stderr.starts_with("error: job `nope` not found"),
        "{}",
        out.stderr
    );
}

#[test]
fn optimize_watch_creates_and_follows_the_job() {
    let dirs = Dirs::new();
    let server = Server::start(&dirs.db());
    let mut watch = Running::start(
        &server.base,
        &dirs.cache(),
        &[
            "optimize",
            "--id",
            "o1",
            "--optimizer",
            "gepa",
            "--budget",
            "5",
            "--watch",
        ],
    );
    watch.wait_for("o1");
    watch.wait_for("[0%] Waiting to start... ($0.00)");
    server.post_ok(
        "/api/v1/jobs/o1/events",
        json!({"step": "collecting_traces", "progress": 0.1, "cost_usd": 0.05}),
        202,
    );
    watch.wait_for("[10%] Collecting traces... ($0.05)");
    server.post_ok(
        "/api/v1/jobs/o1/events",
        json!({"progress": 1.0, "metric": 0.9}),
        202,
    );
    server.post_ok("/api/v1/jobs/o1/complete", json!({}), 200);
    let (code, lines, stderr) = watch.finish();
    assert_eq!(code, 0, "{lines:#?}\n{stderr}");
    assert_eq!(
        lines.last().map(String::as_str),
        Some("Done! Final metric: 0.9 (Cost: $0.05)")
    );
    assert_eq!(
        server.get("/api/v1/jobs/o1").1["metadata"]["optimizer"],
        "gepa"
    );
}

#[test]
fn watch_survives_a_server_restart_mid_job() {
    let dirs = Dirs::new();
    let server = Server::start(&dirs.db());
    let port = server.port;
    server.post_ok(
        "/api/v1/jobs",
        json!({"id": "r1", "type": "optimization"}),
        201,
    );
    let ack = server.post_ok(
        "/api/v1/jobs/r1/events",
        json!({"step": "collecting_traces", "progress": 0.2, "cost_usd": 0.4}),
        202,
    );
    assert_eq!(ack["durable"], true, "{ack}");

    let mut watch = Running::start(
        &server.base,
        &dirs.cache(),
        &["jobs", "watch", "r1", "--reconnect-for", "60s"],
    );
    watch.wait_for("[20%] Collecting traces... ($0.40)");

    // SIGKILL: the stream drops without a goodbye. Same port, same database.
    server.kill();
    let server = Server::start_on(&dirs.db(), port);
    assert_eq!(server.port, port);
    // The job was re-queued by recovery; its next event starts it again.
    server.post_ok(
        "/api/v1/jobs/r1/events",
        json!({"step": "proposing_instructions", "progress": 0.5, "cost_usd": 1.1}),
        202,
    );
    watch.wait_for("[50%] Proposing instructions... ($1.10)");
    server.post_ok(
        "/api/v1/jobs/r1/events",
        json!({"progress": 0.95, "cost_usd": 2.3, "metric": 0.84}),
        202,
    );
    server.post_ok(
        "/api/v1/jobs/r1/complete",
        json!({"result": {"accuracy": 0.84}}),
        200,
    );

    let (code, lines, stderr) = watch.finish();
    assert_eq!(code, 0, "{lines:#?}\n{stderr}");
    assert_eq!(
        lines.last().map(String::as_str),
        Some("Done! Final metric: 0.84 (Cost: $2.30)")
    );
    assert!(stderr.is_empty(), "{stderr}");
}

#[cfg(unix)]
#[test]
fn ctrl_c_stops_watching_but_not_the_job() {
    let dirs = Dirs::new();
    let server = Server::start(&dirs.db());
    server.post_ok(
        "/api/v1/jobs",
        json!({"id": "i1", "type": "optimization"}),
        201,
    );
    let mut watch = Running::start(&server.base, &dirs.cache(), &["jobs", "watch", "i1"]);
    watch.wait_for("[0%] Waiting to start... ($0.00)");
    let status = std::process::Command::new("kill")
        .arg("-INT")
        .arg(watch.child.id().to_string())
        .status()
        .expect("run kill");
    assert!(status.success());
    let (code, _, stderr) = watch.finish();
    assert_eq!(code, 130, "{stderr}");
    assert_eq!(
        stderr,
        "stopped watching; the job keeps running. Re-attach with: skill-fleet jobs watch i1\n"
    );
    assert_eq!(server.get("/api/v1/jobs/i1").1["status"], "queued");
}

#[test]
fn watch_shows_the_budget_warning_once_and_the_budget_stop() {
    let dirs = Dirs::new();
    let server = Server::start(&dirs.db());
    server.post_ok(
        "/api/v1/jobs",
        json!({"id": "b1", "type": "optimization", "metadata": {"budget_usd": 2.0}}),
        201,
    );
    let mut watch = Running::start(&server.base, &dirs.cache(), &["jobs", "watch", "b1"]);
    watch.wait_for("[0%] Waiting to start... ($0.00)");
    server.post_ok(
        "/api/v1/jobs/b1/events",
        json!({"step": "search", "progress": 0.5, "cost_usd": 1.7}),
        202,
    );
    watch.wait_for("[50%] Search... ($1.70)");
    server.post_ok("/api/v1/jobs/b1/events", json!({"progress": 0.6}), 202);
    watch.wait_for("[60%] Search... ($1.70)");
    server.post_ok("/api/v1/jobs/b1/events", json!({"cost_usd": 2.5}), 202);
    let (code, lines, stderr) = watch.finish();
    assert_eq!(code, 1, "{lines:#?}\n{stderr}");
    assert_eq!(
        stderr
            .matches("warning: budget 80% used: $1.70 of $2.00")
            .count(),
        1,
        "{stderr}"
    );
    assert_eq!(
        lines.last().map(String::as_str),
        Some("Cancelled: budget exceeded: $2.50 of $2.00"),
        "{lines:#?}"
    );
}
