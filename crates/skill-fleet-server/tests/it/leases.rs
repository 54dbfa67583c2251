//! Leases end to end with the real binary and short leases: a worker that stops
//! heartbeating is rescued and fenced, retried completes, rescue racing complete,
//! `max_rescues`, a cancel through the heartbeat, and a SIGKILLed server's children.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use crate::support::{self, Server, fence, job, temp_db, wait_for, wait_status, with_fence};

/// Leases of one second renewed every quarter second, swept every tenth.
const SHORT_LEASES: &str = "lease_ttl_seconds = 1.0\n\
    heartbeat_interval_seconds = 0.25\n\
    rescue_interval_seconds = 0.1\n";

fn lease_server(db: &Path, extra: &str) -> Server {
    let config = format!("{SHORT_LEASES}{extra}\n[executors]\n");
    Server::start_with(support::server_command_with_config(db, &config))
}

/// Claims a job of `job_type` as `worker`, waiting out a rescue back-off.
fn claim(server: &Server, job_type: &str, worker: &str) -> Value {
    wait_for(&format!("{worker} to claim a {job_type} job"), 30, || {
        let (status, body) = server.post(
            "/api/v1/jobs/claim",
            json!({"types": [job_type], "worker": worker}),
        );
        assert!(status == 200 || status == 204, "{status} {body}");
        (status == 200).then_some(body)
    })
}

fn assert_lease_lost(reply: (u16, Value), attempt: u64, status: &str) {
    let (code, body) = reply;
    assert_eq!(code, 409, "{body}");
    assert_eq!(body["error"]["code"], "lease_lost", "{body}");
    assert_eq!(body["error"]["attempt"], attempt, "{body}");
    assert_eq!(body["error"]["status"], status, "{body}");
}

fn history(server: &Server, id: &str) -> Vec<Value> {
    let (status, page) = server.get(&format!("/api/v1/jobs/{id}/progress?limit=1000"));
    assert_eq!(status, 200, "{page}");
    page["records"].as_array().unwrap().clone()
}

#[test]
fn a_silent_worker_is_rescued_and_everything_it_sends_later_is_refused() {
    let (_dir, db) = temp_db();
    let server = lease_server(&db, "");
    server.post_ok(
        "/api/v1/jobs",
        json!({"id": "e", "type": "evaluation"}),
        201,
    );
    let first = claim(&server, "evaluation", "w1");
    assert_eq!(first["attempt"], 1);
    assert_eq!(first["lease_ttl_seconds"], 1.0);
    assert_eq!(first["heartbeat_interval_seconds"], 0.25);
    assert_eq!(first["lease"]["owner"], "w1");
    let token = first["lease_token"].as_str().unwrap();
    assert_eq!(token.len(), 32);
    let event = with_fence(json!({"progress": 0.4, "checkpoint": {"done": 4}}), &first);
    server.post_ok("/api/v1/jobs/e/events", event, 202);
    // The token is the claimer's alone: no read shows it.
    let (_, shown) = server.get("/api/v1/jobs/e");
    assert!(!shown.to_string().contains(token), "{shown}");

    // w1 goes silent: within ttl + sweep (+ the start-up guard of one lease) it is rescued.
    let queued = wait_status(&server, "e", "queued", 30);
    assert_eq!(queued["checkpoint"], json!({"done": 4}));
    assert_eq!(queued["lease"], Value::Null);
    let rows = history(&server, "e");
    let rescue = rows
        .iter()
        .find(|row| row["event"] == "lease_expired")
        .expect("a lease_expired row");
    assert_eq!(rescue["attempt"], 1);
    assert!(
        rescue["message"].as_str().unwrap().contains("w1"),
        "{rescue}"
    );

    let second = claim(&server, "evaluation", "w2");
    assert_eq!(second["attempt"], 2);
    assert_ne!(second["lease_token"], first["lease_token"]);
    assert_eq!(second["checkpoint"], json!({"done": 4}));

    // Everything w1 sends now is refused and changes nothing.
    let before = job(&server, "e");
    let late = with_fence(json!({"progress": 0.9}), &first);
    assert_lease_lost(server.post("/api/v1/jobs/e/events", late), 2, "running");
    let beat = server.post("/api/v1/jobs/e/heartbeat", fence(&first));
    assert_lease_lost(beat, 2, "running");
    let done = with_fence(json!({"result": {"by": "w1"}}), &first);
    assert_lease_lost(server.post("/api/v1/jobs/e/complete", done), 2, "running");
    let failed = with_fence(json!({"error": "late"}), &first);
    assert_lease_lost(server.post("/api/v1/jobs/e/fail", failed), 2, "running");
    // A token-less write is refused on a claimed job too.
    assert_lease_lost(
        server.post("/api/v1/jobs/e/events", json!({"progress": 0.9})),
        2,
        "running",
    );
    let after = job(&server, "e");
    assert_eq!(after["version"], before["version"], "{after}");
    assert_eq!(after["progress"], before["progress"]);

    // w2 completes; its retry is 200, w1's stale complete stays refused.
    let complete = with_fence(json!({"result": {"by": "w2"}}), &second);
    let completed = server.post_ok("/api/v1/jobs/e/complete", complete.clone(), 200);
    assert_eq!(completed["status"], "completed");
    let again = server.post_ok("/api/v1/jobs/e/complete", complete, 200);
    assert_eq!(again["result"], json!({"by": "w2"}));
    assert_eq!(
        again["version"], completed["version"],
        "a retry writes nothing"
    );
    let stale = with_fence(json!({"result": {"by": "w1"}}), &first);
    assert_lease_lost(
        server.post("/api/v1/jobs/e/complete", stale),
        2,
        "completed",
    );
    assert_eq!(job(&server, "e")["result"], json!({"by": "w2"}));
}

#[test]
fn heartbeats_keep_a_job_and_a_cancel_reaches_the_worker_through_them() {
    let (_dir, db) = temp_db();
    let server = lease_server(&db, "");
    server.post_ok(
        "/api/v1/jobs",
        json!({"id": "h", "type": "evaluation"}),
        201,
    );
    let claimed = claim(&server, "evaluation", "gpu-box-3");
    // Several leases long, kept alive by heartbeats alone.
    let until = Instant::now() + Duration::from_secs(3);
    let mut renewed = 0;
    while Instant::now() < until {
        let ack = server.post_ok("/api/v1/jobs/h/heartbeat", fence(&claimed), 200);
        assert_eq!(
            (ack["stop"].clone(), ack["status"].clone()),
            (json!(false), json!("running"))
        );
        renewed += 1;
        // Pacing the worker's beats (not waiting for a condition).
        std::thread::sleep(Duration::from_millis(250));
    }
    assert!(renewed >= 3);
    let running = job(&server, "h");
    assert_eq!(running["status"], "running", "{running}");
    assert_eq!(running["attempt"], 1);
    assert_eq!(running["lease"]["owner"], "gpu-box-3");

    server.post_ok(
        "/api/v1/jobs/h/cancel",
        json!({"reason": "not needed"}),
        200,
    );
    let ack = server.post_ok("/api/v1/jobs/h/heartbeat", fence(&claimed), 200);
    assert_eq!(ack["stop"], true, "{ack}");
    assert_eq!(ack["status"], "cancelled");
    assert_eq!(ack["reason"], "not needed");
    let (status, body) = server.post(
        "/api/v1/jobs/h/events",
        with_fence(json!({"progress": 0.5}), &claimed),
    );
    assert_eq!(status, 409, "{body}");
    assert_eq!(job(&server, "h")["status"], "cancelled");
}

#[test]
fn max_rescues_fails_a_job_and_a_non_resumable_type_fails_on_its_first_expiry() {
    let (_dir, db) = temp_db();
    let server = lease_server(&db, "max_rescues = 1\nresumable_types = [\"evaluation\"]\n");
    server.post_ok(
        "/api/v1/jobs",
        json!({"id": "loop", "type": "evaluation"}),
        201,
    );
    claim(&server, "evaluation", "crasher");
    wait_status(&server, "loop", "queued", 30);
    let again = claim(&server, "evaluation", "crasher");
    assert_eq!(again["attempt"], 2);
    let failed = wait_status(&server, "loop", "failed", 30);
    assert_eq!(failed["error"], "lease expired: worker lost", "{failed}");
    let events: Vec<Value> = history(&server, "loop")
        .into_iter()
        .filter(|row| row["event"] == "lease_expired")
        .collect();
    assert_eq!(events.len(), 2, "{events:?}");
    assert!(
        events[1]["message"]
            .as_str()
            .unwrap()
            .contains("rescued 1 times")
    );

    server.post_ok("/api/v1/jobs", json!({"id": "once", "type": "shell"}), 201);
    claim(&server, "shell", "w");
    let failed = wait_status(&server, "once", "failed", 30);
    assert_eq!(failed["error"], "lease expired: worker lost");
    assert_eq!(failed["attempt"], 1);
}

#[test]
fn a_rescue_racing_a_complete_never_loses_or_overwrites_the_completion() {
    let (_dir, db) = temp_db();
    let server = lease_server(&db, "");
    let mut outcomes = (0, 0);
    for round in 0..12 {
        let id = format!("r{round}");
        server.post_ok("/api/v1/jobs", json!({"id": id, "type": "evaluation"}), 201);
        let claimed = claim(&server, "evaluation", "racer");
        assert_eq!(claimed["id"], id.as_str());
        // Complete close to the moment the lease runs out (it was taken ~1 s ago), so
        // that some completes land just before the sweep and some just after.
        // Timing the race, not waiting for a condition: both outcomes are checked.
        std::thread::sleep(Duration::from_millis(900 + (round % 4) * 50));
        let body = with_fence(json!({"result": {"round": round}}), &claimed);
        let (status, reply) = server.post(&format!("/api/v1/jobs/{id}/complete"), body);
        match status {
            200 => {
                outcomes.0 += 1;
                // Acknowledged: stays completed with its result, whatever the sweep does.
                for _ in 0..3 {
                    let now = job(&server, &id);
                    assert_eq!(now["status"], "completed", "round {round}: {now}");
                    assert_eq!(now["result"], json!({"round": round}));
                }
            }
            409 => {
                outcomes.1 += 1;
                assert_eq!(reply["error"]["code"], "lease_lost", "{reply}");
                let now = job(&server, &id);
                assert_ne!(now["status"], "completed", "round {round}: {now}");
                assert_eq!(now["result"], Value::Null);
                server.post_ok(&format!("/api/v1/jobs/{id}/cancel"), json!({}), 200);
            }
            other => panic!("round {round}: {other} {reply}"),
        }
    }
    eprintln!(
        "rescue vs complete: {} completed first, {} rescued first",
        outcomes.0, outcomes.1
    );
}

/// The default server (the bundled optimizer runs `optimization` jobs) with short leases.
fn executor_server(db: &Path) -> Command {
    let mut command = support::server_command_with_defaults(db);
    command.args([
        "--lease-ttl-seconds",
        "1",
        "--heartbeat-interval-seconds",
        "0.25",
        "--rescue-interval-seconds",
        "0.1",
    ]);
    command
}

#[test]
fn after_a_sigkill_each_child_job_is_rescued_once_and_completes_with_one_attempt_at_a_time() {
    let (_dir, db) = temp_db();
    let server = Server::start_with(executor_server(&db));
    let ids = ["k1", "k2"];
    for id in ids {
        server.post_ok(
            "/api/v1/jobs",
            json!({"id": id, "type": "optimization",
                   "metadata": {"trials": 8, "trial_seconds": 0.15}}),
            201,
        );
    }
    for id in ids {
        wait_for(&format!("{id} to checkpoint"), 60, || {
            let job = job(&server, id);
            let owner = job["lease"]["owner"].as_str().unwrap_or("").to_owned();
            (job["checkpoint"]["trial"].as_u64().is_some_and(|t| t >= 1)).then_some(owner)
        });
        let running = job(&server, id);
        assert!(
            running["lease"]["owner"]
                .as_str()
                .unwrap()
                .starts_with("server:"),
            "{running}"
        );
    }
    server.kill();

    let server = Server::start_with(executor_server(&db));
    for id in ids {
        let done = wait_status(&server, id, "completed", 120);
        assert_eq!(done["attempt"], 2, "{done}");
        let rows = history(&server, id);
        let rescues = rows
            .iter()
            .filter(|r| r["event"] == "lease_expired")
            .count();
        assert_eq!(rescues, 1, "{id}: {rows:?}");
        // One attempt at a time: once attempt 2 wrote, attempt 1 never wrote again.
        let attempts: Vec<u64> = rows.iter().filter_map(|r| r["attempt"].as_u64()).collect();
        assert!(
            attempts.windows(2).all(|w| w[0] <= w[1]),
            "{id}: {attempts:?}"
        );
        assert_eq!(attempts.first(), Some(&1));
        assert_eq!(attempts.last(), Some(&2));
    }
}

#[test]
fn an_outage_does_not_expire_the_leases_of_workers_that_could_not_reach_the_database() {
    use diesel::connection::SimpleConnection;
    use diesel::{Connection, SqliteConnection};
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::{Arc, Mutex};

    let (_dir, db) = temp_db();
    let config = "lease_ttl_seconds = 2.0\nheartbeat_interval_seconds = 0.25\n\
                  rescue_interval_seconds = 0.1\nbusy_timeout_ms = 100\n[executors]\n";
    let server = Server::start_with(support::server_command_with_config(&db, config));
    server.post_ok(
        "/api/v1/jobs",
        json!({"id": "o", "type": "evaluation"}),
        201,
    );
    let claimed = claim(&server, "evaluation", "steady");

    // The worker heartbeats on its own, whatever the answers.
    let stop = Arc::new(AtomicBool::new(false));
    let answers = Arc::new(Mutex::new(Vec::new()));
    let beater = {
        let (stop, answers) = (Arc::clone(&stop), Arc::clone(&answers));
        let url = server.url("/api/v1/jobs/o/heartbeat");
        let body = fence(&claimed);
        std::thread::spawn(move || {
            let agent = support::agent();
            while !stop.load(Ordering::Relaxed) {
                let status = agent
                    .post(&url)
                    .send_json(&body)
                    .map(|r| r.status().as_u16())
                    .unwrap_or(0);
                answers.lock().unwrap().push(status);
                // Pacing the beats (not waiting for a condition); after a refusal it backs
                // off, as a worker does, so it comes back a while after the outage ends.
                let pause = if status == 200 { 250 } else { 1200 };
                std::thread::sleep(Duration::from_millis(pause));
            }
        })
    };

    // Another process locks the database for longer than a lease: nobody can renew.
    let mut other = SqliteConnection::establish(db.to_str().unwrap()).unwrap();
    other
        .batch_execute("PRAGMA busy_timeout = 5000; BEGIN EXCLUSIVE;")
        .unwrap();
    let locked = Instant::now();
    wait_for("heartbeats to be refused", 30, || {
        answers.lock().unwrap().contains(&503).then_some(())
    });
    wait_for("the lease to run out during the outage", 30, || {
        (locked.elapsed() > Duration::from_millis(2500)).then_some(())
    });
    other.batch_execute("ROLLBACK;").unwrap();
    drop(other);
    let released = Instant::now();

    // Back: the worker renews before the guard (one full lease) lets the sweep look.
    wait_for("a heartbeat to be saved again", 30, || {
        let (status, job) = server.get("/api/v1/jobs/o");
        // RFC 3339 in one format: text order is time order.
        let renewed = job["lease"]["renewed_at"].as_str() > claimed["lease"]["renewed_at"].as_str();
        (status == 200 && renewed).then_some(())
    });
    wait_for("two leases to pass after the outage", 30, || {
        (released.elapsed() > Duration::from_secs(4)).then_some(())
    });
    stop.store(true, Ordering::Relaxed);
    beater.join().unwrap();
    let job = job(&server, "o");
    assert_eq!(job["status"], "running", "{job}");
    assert_eq!(job["attempt"], 1, "{job}");
    assert!(
        history(&server, "o")
            .iter()
            .all(|row| row["event"] != "lease_expired"),
        "a live worker's job was rescued after an outage"
    );
}
