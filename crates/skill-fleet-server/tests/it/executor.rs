//! The executor end to end with the real binary: a job runs to completion with its progress
//! on the SSE stream; a failing command; cancel mid-run (process gone); SIGKILL of the server
//! mid-job and resume from the checkpoint; timeouts; invalid protocol lines; no way for a
//! request to choose a command.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use crate::support;

use std::io::BufRead;
use std::path::Path;

use serde_json::{Value, json};
use support::{
    Server, job, server_command_with_config, server_command_with_defaults, temp_db, wait_for,
    wait_status,
};

/// The child's pid, from the toy optimizer's `pid=` log line.
fn child_pid(server: &Server, id: &str) -> u32 {
    wait_for("the child's pid in its logs", 30, || {
        let (_, logs) = server.get(&format!("/api/v1/jobs/{id}/logs"));
        logs["stdout"].as_array()?.iter().find_map(|line| {
            let line = line.as_str()?;
            let pid = line.split("pid=").nth(1)?.split_whitespace().next()?;
            pid.parse().ok()
        })
    })
}

fn process_gone(pid: u32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Err(_) => true,
        // A zombie is dead too (its parent has not reaped it yet).
        Ok(stat) => stat
            .split(") ")
            .nth(1)
            .is_some_and(|rest| rest.starts_with('Z')),
    }
}

#[test]
fn a_job_runs_to_completion_with_its_progress_on_the_stream() {
    let (_dir, db) = temp_db();
    let server = Server::start_with(server_command_with_defaults(&db));
    let (status, created) = server.post(
        "/api/v1/optimization",
        json!({"id": "opt-1", "metadata": {"trials": 4, "trial_seconds": 0.05}}),
    );
    assert_eq!(status, 201, "{created}");

    let response = support::agent()
        .get(&server.url("/api/v1/jobs/opt-1/stream"))
        .call()
        .expect("stream");
    let reader = std::io::BufReader::new(response.into_body().into_reader());
    let mut events = Vec::new();
    for line in reader.lines() {
        let line = line.expect("read stream");
        if let Some(data) = line.strip_prefix("data:") {
            events.push(serde_json::from_str::<Value>(data.trim()).expect("json event"));
        }
    }
    let last = events.last().expect("events");
    assert_eq!(last["status"], "completed", "{events:?}");
    assert!(
        events.iter().any(|e| e["step"] == "searching_parameters"),
        "{events:?}"
    );
    assert!(last["cost_usd"].as_f64().unwrap() > 0.0);

    let done = job(&server, "opt-1");
    assert_eq!(done["status"], "completed");
    assert_eq!(done["attempt"], 1);
    assert_eq!(done["result"]["trials"], 4);
    let result_path = done["result_path"].as_str().unwrap();
    assert!(Path::new(result_path).exists(), "{result_path}");
    let (_, history) = server.get("/api/v1/jobs/opt-1/progress");
    assert!(
        history["records"].as_array().unwrap().len() >= 3,
        "{history}"
    );
}

#[test]
fn a_failing_command_fails_the_job_with_its_stderr() {
    let (_dir, db) = temp_db();
    let server = Server::start_with(server_command_with_defaults(&db));
    server.post(
        "/api/v1/optimization",
        json!({"id": "bad", "metadata": {"trials": 5, "trial_seconds": 0.01, "fail_at_trial": 2}}),
    );
    let failed = wait_status(&server, "bad", "failed", 60);
    let error = failed["error"].as_str().unwrap();
    assert!(error.starts_with("exit status 3"), "{error}");
    assert!(error.contains("simulated failure at trial 2"), "{error}");
    // Progress up to the failure was kept, and so was the checkpoint.
    assert_eq!(failed["checkpoint"]["trial"], 2);
}

#[test]
fn cancel_mid_run_stops_the_process() {
    let (_dir, db) = temp_db();
    let server = Server::start_with(server_command_with_defaults(&db));
    server.post(
        "/api/v1/optimization",
        json!({"id": "long", "metadata": {"trials": 1000, "trial_seconds": 0.2}}),
    );
    let pid = child_pid(&server, "long");
    wait_status(&server, "long", "running", 30);
    let (status, cancelled) = server.post("/api/v1/jobs/long/cancel", json!({"reason": "enough"}));
    assert_eq!(status, 200, "{cancelled}");
    assert_eq!(cancelled["status"], "cancelled");
    wait_for("the child to be gone", 30, || {
        process_gone(pid).then_some(())
    });
    // It stays cancelled: the executor does not overwrite the outcome.
    assert_eq!(job(&server, "long")["status"], "cancelled");
    assert_eq!(job(&server, "long")["error"], "enough");
}

#[test]
fn sigkill_of_the_server_mid_job_resumes_from_the_checkpoint() {
    let (_dir, db) = temp_db();
    let server = Server::start_with(server_command_with_defaults(&db));
    server.post(
        "/api/v1/optimization",
        json!({"id": "resumable", "metadata": {"trials": 30, "trial_seconds": 0.1}}),
    );
    let first_pid = child_pid(&server, "resumable");
    let reached = wait_for("a few checkpointed trials", 60, || {
        let trial = job(&server, "resumable")["checkpoint"]["trial"].as_u64()?;
        (trial >= 3).then_some(trial)
    });
    server.kill();
    // The kernel stops the orphaned child with the server (PR_SET_PDEATHSIG).
    wait_for("the old child to die with the server", 30, || {
        process_gone(first_pid).then_some(())
    });

    let server = Server::start_with(server_command_with_defaults(&db));
    let done = wait_status(&server, "resumable", "completed", 120);
    assert_eq!(done["attempt"], 2, "{done}");
    let resumed_from = done["result"]["resumed_from_trial"].as_u64().unwrap();
    assert!(
        resumed_from >= reached,
        "resumed from {resumed_from}, had reached {reached}"
    );
    assert_eq!(done["result"]["trials"], 30);
}

#[test]
fn sigterm_requeues_a_running_resumable_job_with_its_checkpoint() {
    let (_dir, db) = temp_db();
    let server = Server::start_with(server_command_with_defaults(&db));
    server.post(
        "/api/v1/optimization",
        json!({"id": "graceful", "metadata": {"trials": 1000, "trial_seconds": 0.1}}),
    );
    let pid = child_pid(&server, "graceful");
    wait_for("a checkpoint", 60, || {
        job(&server, "graceful")["checkpoint"]["trial"]
            .as_u64()
            .filter(|t| *t >= 1)
    });
    let status = server.terminate();
    assert!(status.success(), "{status}");
    assert!(process_gone(pid), "child {pid} outlived the server");

    let server = Server::start_with(support::server_command(&db));
    let job = job(&server, "graceful");
    assert_eq!(job["status"], "queued", "{job}");
    assert!(job["checkpoint"]["trial"].as_u64().unwrap() >= 1);
}

const SCRIPTED: &str = r#"
[executors.scripted]
command = ["sh", "-c", "echo 'not json at all'; echo '{\"progress\": 7}'; echo '{\"cost_usd\": -1}'; echo '{\"progress\": 0.5, \"step\": \"half\", \"extra\": 1}'; echo oops >&2; echo '{\"result\": {\"ok\": true}}'"]

[executors.sleepy]
command = ["sleep", "30"]
timeout_seconds = 1

[executors.stubborn]
command = ["sh", "-c", "trap '' TERM; echo \"pid=$$\"; echo '{\"step\": \"stubborn\"}'; while true; do sleep 0.05; done"]
"#;

#[test]
fn invalid_protocol_lines_are_logged_and_skipped() {
    let (_dir, db) = temp_db();
    let server = Server::start_with(server_command_with_config(&db, SCRIPTED));
    server.post("/api/v1/jobs", json!({"id": "s", "type": "scripted"}));
    let done = wait_status(&server, "s", "completed", 30);
    assert_eq!(done["progress"]["step"], "half", "{done}");
    assert_eq!(done["progress"]["cost_usd"], 0.0);
    assert_eq!(done["result"], json!({"ok": true}));
    let (_, logs) = server.get("/api/v1/jobs/s/logs");
    let stdout: Vec<&str> = logs["stdout"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(Value::as_str)
        .collect();
    assert_eq!(stdout, ["not json at all"], "{logs}");
    let stderr = logs["stderr"].to_string();
    assert!(stderr.contains("oops"), "{logs}");
    assert!(stderr.contains("skipped invalid line"), "{logs}");
}

#[test]
fn a_run_past_its_timeout_fails() {
    let (_dir, db) = temp_db();
    let server = Server::start_with(server_command_with_config(&db, SCRIPTED));
    server.post("/api/v1/jobs", json!({"id": "t", "type": "sleepy"}));
    let failed = wait_status(&server, "t", "failed", 30);
    assert!(
        failed["error"].as_str().unwrap().starts_with("timeout"),
        "{failed}"
    );
}

#[test]
fn a_child_that_ignores_sigterm_is_killed_after_the_grace_period() {
    let (_dir, db) = temp_db();
    let config = format!("stop_grace_seconds = 1\n{SCRIPTED}");
    let server = Server::start_with(server_command_with_config(&db, &config));
    server.post("/api/v1/jobs", json!({"id": "st", "type": "stubborn"}));
    wait_for("the stubborn child to report", 30, || {
        (job(&server, "st")["progress"]["step"] == "stubborn").then_some(())
    });
    let pid = child_pid(&server, "st");
    let (status, _) = server.post("/api/v1/jobs/st/cancel", json!({}));
    assert_eq!(status, 200);
    // SIGTERM is ignored; SIGKILL to the process group follows after the grace period.
    wait_for("the stubborn child to be killed", 30, || {
        process_gone(pid).then_some(())
    });
    assert_eq!(job(&server, "st")["status"], "cancelled");
}

#[test]
fn no_request_can_choose_a_command() {
    let (dir, db) = temp_db();
    let server = Server::start_with(server_command_with_defaults(&db));
    let marker = dir.path().join("pwned");
    // A command field is refused outright.
    let (status, body) = server.post(
        "/api/v1/jobs",
        json!({"type": "optimization", "command": ["touch", marker.to_str().unwrap()]}),
    );
    assert_eq!(status, 422, "{body}");
    // In metadata it is only data: the configured program runs, nothing else.
    let (status, _) = server.post(
        "/api/v1/optimization",
        json!({"id": "m", "metadata": {"command": format!("touch {}", marker.display()),
                                       "trials": 2, "trial_seconds": 0.01}}),
    );
    assert_eq!(status, 201);
    wait_status(&server, "m", "completed", 60);
    assert!(!marker.exists());
    // Job types the server runs cannot be claimed by external workers either.
    let (status, body) = server.post("/api/v1/jobs/claim", json!({"types": ["optimization"]}));
    assert_eq!(status, 422, "{body}");
    // An id that is a path never reaches the file system.
    let (status, _) = server.post(
        "/api/v1/jobs",
        json!({"type": "optimization", "id": "../../etc"}),
    );
    assert_eq!(status, 422);
}

#[test]
fn an_executor_job_crossing_its_budget_is_stopped() {
    let (_dir, db) = temp_db();
    let server = Server::start_with(server_command_with_defaults(&db));
    // The toy optimizer spends $0.05 a trial: the third trial crosses $0.12.
    server.post(
        "/api/v1/optimization",
        json!({"id": "spender", "metadata": {"trials": 1000, "trial_seconds": 0.05, "budget_usd": 0.12}}),
    );
    let pid = child_pid(&server, "spender");
    let job = wait_status(&server, "spender", "cancelled", 60);
    assert_eq!(job["error"], "budget exceeded: $0.15 of $0.12", "{job}");
    wait_for("the child to be stopped", 30, || {
        process_gone(pid).then_some(())
    });
    // Nothing past the crossing event was recorded.
    assert_eq!(job["progress"]["cost_usd"], 0.15);
}

#[test]
fn a_time_limit_counts_across_a_server_restart() {
    let (_dir, db) = temp_db();
    let server = Server::start(&db);
    let (status, _) = server.post(
        "/api/v1/jobs",
        json!({"id": "slow", "type": "optimization", "metadata": {"time_limit_seconds": 2}}),
    );
    assert_eq!(status, 201);
    server.post("/api/v1/jobs/slow/events", json!({"step": "working"}));
    let started = std::time::Instant::now();
    server.kill();
    // Let the limit pass while the server is down.
    wait_for("the limit to pass", 10, || {
        (started.elapsed() > std::time::Duration::from_millis(2500)).then_some(())
    });
    let server = Server::start(&db);
    assert_eq!(job(&server, "slow")["status"], "queued");
    // The worker picks it up again: its run started before the restart, so it is over time.
    server.post("/api/v1/jobs/slow/events", json!({"message": "back"}));
    let cancelled = wait_status(&server, "slow", "cancelled", 30);
    let error = cancelled["error"].as_str().unwrap();
    assert!(error.starts_with("time limit exceeded after "), "{error}");
    let (status, body) = server.post("/api/v1/jobs/slow/events", json!({"progress": 0.9}));
    assert_eq!(status, 409, "{body}");
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("time limit exceeded")
    );
}
