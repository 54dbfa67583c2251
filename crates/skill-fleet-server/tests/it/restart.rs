//! End to end with the real binary: SIGKILL mid-job, restart, recovery as DESIGN.md says, and
//! no acknowledged step change or terminal state lost; SIGTERM flushes and exits 0.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use crate::support;

use serde_json::json;
use skill_fleet_stream::version_event_id;
use support::{Server, temp_db};

#[test]
fn sigkill_mid_job_then_restart_recovers_without_losing_acknowledged_writes() {
    let (_dir, db) = temp_db();
    let server = Server::start(&db);
    assert_eq!(server.get("/readyz").0, 200);

    // A resumable job with a checkpoint, a non-resumable one, and a finished one.
    for (id, job_type) in [
        ("opt", "optimization"),
        ("sweep", "sweep"),
        ("done", "evaluation"),
    ] {
        let (status, body) = server.post("/api/v1/jobs", json!({"id": id, "type": job_type}));
        assert_eq!(status, 201, "{body}");
    }
    let steps = [
        "collecting_traces",
        "proposing_instructions",
        "searching_parameters",
    ];
    for (i, step) in steps.iter().enumerate() {
        let (status, ack) = server.post(
            "/api/v1/jobs/opt/events",
            json!({"step": step, "progress": 0.2 * (i as f64 + 1.0), "cost_usd": 0.1 * (i as f64 + 1.0),
                   "checkpoint": {"trial": i}}),
        );
        assert_eq!(status, 202, "{ack}");
        assert_eq!(ack["durable"], true);
    }
    server.post(
        "/api/v1/jobs/sweep/events",
        json!({"step": "grid", "progress": 0.5}),
    );
    server.post(
        "/api/v1/jobs/done/events",
        json!({"step": "scoring", "progress": 0.9}),
    );
    let (status, _) = server.post(
        "/api/v1/jobs/done/complete",
        json!({"result": {"accuracy": 0.91}}),
    );
    assert_eq!(status, 200);

    server.kill();

    let server = Server::start(&db);
    let (_, opt) = server.get("/api/v1/jobs/opt");
    assert_eq!(opt["status"], "queued", "{opt}");
    assert_eq!(opt["progress"]["step"], "searching_parameters");
    assert_eq!(opt["checkpoint"], json!({"trial": 2}));
    assert_eq!(opt["attempt"], 1);

    let (_, sweep) = server.get("/api/v1/jobs/sweep");
    assert_eq!(sweep["status"], "failed", "{sweep}");
    assert_eq!(sweep["error"], "interrupted: server stopped while running");
    assert_eq!(sweep["progress"]["step"], "grid");

    let (_, done) = server.get("/api/v1/jobs/done");
    assert_eq!(done["status"], "completed");
    assert_eq!(done["result"], json!({"accuracy": 0.91}));

    // The recovered job runs again: its first event starts attempt 2, checkpoint kept.
    let (status, ack) = server.post("/api/v1/jobs/opt/events", json!({"progress": 0.7}));
    assert_eq!(status, 202, "{ack}");
    let (_, opt) = server.get("/api/v1/jobs/opt");
    assert_eq!(opt["status"], "running");
    assert_eq!(opt["attempt"], 2);
    assert_eq!(opt["checkpoint"], json!({"trial": 2}));
}

#[test]
fn sigterm_writes_pending_progress_and_exits_zero() {
    let (_dir, db) = temp_db();
    let server = Server::start(&db);
    server.post("/api/v1/jobs", json!({"id": "j", "type": "optimization"}));
    server.post(
        "/api/v1/jobs/j/events",
        json!({"step": "search", "progress": 0.1}),
    );
    let (_, ack) = server.post(
        "/api/v1/jobs/j/events",
        json!({"progress": 0.42, "message": "trial 7"}),
    );
    assert_eq!(ack["durable"], false);
    let status = server.terminate();
    assert!(status.success(), "exit status {status}");

    let server = Server::start(&db);
    let (_, job) = server.get("/api/v1/jobs/j");
    assert_eq!(job["progress"]["progress"], 0.42, "{job}");
    assert_eq!(job["progress"]["message"], "trial 7");
}

#[test]
fn sse_ids_never_go_backwards_across_restarts() {
    let (_dir, db) = temp_db();
    let server = Server::start(&db);
    server.post("/api/v1/jobs", json!({"id": "j", "type": "optimization"}));
    server.post(
        "/api/v1/jobs/j/events",
        json!({"step": "a", "progress": 0.1}),
    );
    let (_, before) = server.get("/api/v1/jobs/j");
    let first = first_event_id(&server, "/api/v1/jobs/j/stream");
    // Ids come from the job's committed version, the same on every server run.
    let version = |job: &serde_json::Value| job["version"].as_u64().expect("a version");
    assert_eq!(first, version_event_id(version(&before)), "{before}");
    server.kill();
    let server = Server::start(&db);
    let after = first_event_id(&server, "/api/v1/jobs/j/stream");
    let (_, restored) = server.get("/api/v1/jobs/j");
    assert!(
        after > first,
        "sequence went from {first} to {after} (job {before}, then {restored})"
    );
    assert_eq!(after, version_event_id(version(&restored)), "{restored}");
}

fn first_event_id(server: &Server, path: &str) -> u64 {
    use std::io::BufRead;
    let response = support::agent()
        .get(&server.url(path))
        .call()
        .expect("stream");
    let reader = std::io::BufReader::new(response.into_body().into_reader());
    for line in reader.lines() {
        let line = line.expect("read stream");
        if let Some(id) = line.strip_prefix("id:") {
            return id.trim().parse().expect("numeric id");
        }
    }
    panic!("stream ended without an event");
}

#[test]
fn init_db_and_db_status_report() {
    let (_dir, db) = temp_db();
    let fixtures = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../tests/fixtures/legacy_export.json");
    let output = std::process::Command::new(env!("CARGO_BIN_EXE_skill-fleet-server"))
        .arg("--database")
        .arg(&db)
        .arg("init-db")
        .arg("--import")
        .arg(&fixtures)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "{stdout} {}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(stdout.contains("imported"), "{stdout}");

    let output = std::process::Command::new(env!("CARGO_BIN_EXE_skill-fleet-server"))
        .arg("--database")
        .arg(&db)
        .args(["db", "status"])
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(output.status.success(), "{stdout}");
    assert!(stdout.contains("pending migrations: none"), "{stdout}");
    assert!(
        stdout.contains("queued") || stdout.contains("completed"),
        "{stdout}"
    );
}

#[test]
fn non_loopback_bind_without_token_is_refused() {
    let (_dir, db) = temp_db();
    let output = std::process::Command::new(env!("CARGO_BIN_EXE_skill-fleet-server"))
        .args(["--bind", "0.0.0.0:0", "--database"])
        .arg(&db)
        .env_remove("SKILL_FLEET_AUTH_TOKEN")
        .output()
        .unwrap();
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("requires a bearer token"), "{stderr}");
}

#[test]
fn retention_deletes_old_finished_jobs_with_their_files_and_keeps_the_rest() {
    use diesel::connection::SimpleConnection;
    use diesel::{Connection, SqliteConnection};

    let (dir, db) = temp_db();
    let server = Server::start(&db);
    for id in ["old", "recent", "waiting"] {
        let (status, body) = server.post("/api/v1/jobs", json!({"id": id, "type": "sweep"}));
        assert_eq!(status, 201, "{body}");
    }
    for id in ["old", "recent"] {
        let (status, body) = server.post(&format!("/api/v1/jobs/{id}/cancel"), json!({}));
        assert_eq!(status, 200, "{body}");
    }
    assert!(server.terminate().success());
    let jobs_dir = dir.path().join("skill-fleet-data").join("jobs");
    for id in ["old", "recent", "waiting"] {
        std::fs::create_dir_all(jobs_dir.join(id)).unwrap();
        std::fs::write(jobs_dir.join(id).join("logs.json"), "{}").unwrap();
    }
    // "old" ended three days ago.
    let mut conn = SqliteConnection::establish(db.to_str().unwrap()).unwrap();
    conn.batch_execute(
        "UPDATE jobs SET completed_at = strftime('%Y-%m-%d %H:%M:%f', 'now', '-3 days') \
         WHERE id = 'old'",
    )
    .unwrap();
    drop(conn);

    let mut command = support::server_command(&db);
    command.arg("--retention-days").arg("2");
    let server = Server::start_with(command);
    support::wait_for("the old job to be pruned", 30, || {
        (server.get("/api/v1/jobs/old").0 == 404).then_some(())
    });
    // The files go just after the row (retention removes them once the prune committed).
    support::wait_for("the old job's files to be removed", 30, || {
        (!jobs_dir.join("old").exists()).then_some(())
    });
    assert!(!jobs_dir.join("old").exists(), "its files were not removed");
    for id in ["recent", "waiting"] {
        assert_eq!(server.get(&format!("/api/v1/jobs/{id}")).0, 200, "{id}");
        assert!(jobs_dir.join(id).join("logs.json").exists(), "{id}");
    }
    let (_, list) = server.get("/api/v1/jobs");
    let ids: Vec<_> = list["jobs"]
        .as_array()
        .unwrap()
        .iter()
        .map(|job| job["id"].clone())
        .collect();
    assert_eq!(ids.len(), 2, "{list}");

    let mut command = support::server_command(&db);
    command.arg("--retention-days").arg("0");
    let output = command
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .output()
        .unwrap();
    assert!(!output.status.success());
    assert!(
        String::from_utf8_lossy(&output.stderr).contains("retention days must be between 1 and")
    );
}
