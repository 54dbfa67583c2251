//! End to end: the client's [`Lease`] helper against a real server (in-process) with short
//! leases (1.5 s, heartbeats every 0.25 s, a rescue sweep every 0.2 s): heartbeats keep a
//! job, a cancel stops the lease, a rescued job's stale lease is lost at its first
//! heartbeat, an unreachable server makes the lease fence itself, and a dropped lease stops
//! heartbeating.

use crate::support;

use std::time::{Duration, Instant};

use serde_json::json;
use skill_fleet_client::types::{
    ClaimedJob, CompleteRequest, ErrorCode, JobStatus, ProgressUpdate,
};
use skill_fleet_client::{Client, ClientError, LEASE_DROP_WAIT, Lease, LeaseState};
use support::{DEADLINE, Dirs, Server, eventually};

/// The server's lease flags in these tests.
pub const SHORT_LEASES: [&str; 6] = [
    "--lease-ttl-seconds",
    "1.5",
    "--heartbeat-interval-seconds",
    "0.25",
    "--rescue-interval-seconds",
    "0.2",
];

/// What the lease may go without an acknowledged heartbeat: ttl - interval.
const FENCE_AFTER: Duration = Duration::from_millis(1250);

fn short_lease_server(dirs: &Dirs) -> Server {
    Server::start_with(&dirs.db(), 0, &SHORT_LEASES)
}

/// Creates a job of `job_type` with `id` and claims it as `worker`, under the short leases.
fn create_and_claim(client: &Client, id: &str, job_type: &str, worker: &str) -> ClaimedJob {
    let claimed = support::create_and_claim(client, id, job_type, worker);
    assert_eq!(claimed.lease_ttl_seconds, 1.5);
    assert_eq!(claimed.heartbeat_interval_seconds, 0.25);
    claimed
}

/// True once the job's history has a `lease_expired` row.
fn has_lease_expired_row(client: &Client, id: &str) -> bool {
    client
        .progress(id, None, Some(500))
        .expect("history")
        .records
        .iter()
        .any(|record| record.event.as_deref() == Some("lease_expired"))
}

#[test]
fn heartbeats_keep_a_job_past_several_ttls() {
    let dirs = Dirs::new();
    let server = short_lease_server(&dirs);
    let client = Client::new(&server.base).expect("client");
    let claimed = create_and_claim(&client, "kept", "sweep", "gpu-box-3");
    let first_expiry = claimed.job.lease.as_ref().expect("a lease").expires_at;
    let started = Instant::now();
    let lease = Lease::new(client.clone(), claimed).expect("lease");
    assert_eq!(lease.job_id(), "kept");
    assert_eq!(lease.fence().attempt, 1);

    // Four ttls, checking all along that the job was never taken back.
    eventually("the job to outlive four lease ttls", || {
        let job = client.job("kept").expect("job").value;
        assert_eq!(job.status, JobStatus::Running, "{job:?}");
        assert_eq!(job.attempt, 1, "{job:?}");
        assert!(lease.is_held(), "{:?}", lease.state());
        started.elapsed() > Duration::from_secs(6)
    });
    let job = client.job("kept").expect("job").value;
    let held = job.lease.expect("a running job has a lease");
    assert_eq!(held.owner, "gpu-box-3");
    assert!(held.expires_at > first_expiry, "{held:?}");
    assert!(lease.heartbeats() >= 4, "{} heartbeats", lease.heartbeats());
    assert!(!has_lease_expired_row(&client, "kept"));

    // Writes through the lease carry its fence; complete releases it.
    let ack = lease
        .post_event(&ProgressUpdate {
            step: Some("grid".into()),
            progress: Some(0.5),
            ..Default::default()
        })
        .expect("event");
    assert_eq!(ack.status, JobStatus::Running);
    let done = lease
        .complete(&CompleteRequest {
            result: Some(json!({"best": 1})),
            ..Default::default()
        })
        .expect("complete");
    assert_eq!(done.status, JobStatus::Completed);
    assert_eq!(
        lease.state(),
        LeaseState::Released {
            status: JobStatus::Completed
        }
    );
    let err = lease.post_event(&ProgressUpdate::default()).unwrap_err();
    assert!(matches!(err, ClientError::LeaseNotHeld { .. }), "{err}");
    assert_eq!(
        err.to_string(),
        "lease on job `kept` is released (the job is completed); nothing was sent"
    );
}

#[test]
fn a_cancel_stops_the_lease_with_the_reason() {
    let dirs = Dirs::new();
    let server = short_lease_server(&dirs);
    let client = Client::new(&server.base).expect("client");
    let claimed = create_and_claim(&client, "stopped", "sweep", "gpu-box-3");
    let lease = Lease::new(client.clone(), claimed).expect("lease");

    client
        .cancel("stopped", Some("not needed"))
        .expect("cancel");
    let state = lease.wait_while_held(DEADLINE);
    assert_eq!(
        state,
        LeaseState::Stopped {
            reason: "cancelled: not needed".into()
        }
    );
    // Refused locally, naming the job and why.
    for err in [
        lease.post_event(&ProgressUpdate::default()).unwrap_err(),
        lease.complete(&CompleteRequest::default()).unwrap_err(),
        lease.fail("too late").unwrap_err(),
    ] {
        assert_eq!(
            err.to_string(),
            "lease on job `stopped` is stopped (cancelled: not needed); nothing was sent"
        );
    }
    let job = client.job("stopped").expect("job").value;
    assert_eq!(job.status, JobStatus::Cancelled);
    assert_eq!(job.error.as_deref(), Some("not needed"));
}

#[test]
fn a_rescued_jobs_stale_lease_is_lost_at_its_first_heartbeat() {
    let dirs = Dirs::new();
    let server = short_lease_server(&dirs);
    let client = Client::new(&server.base).expect("client");
    // `evaluation` is resumable: a rescue puts it back in the queue and clears its lease.
    let stale = create_and_claim(&client, "rescued", "evaluation", "old-box");
    // Nobody heartbeats: the lease runs out and the sweep takes the job back.
    eventually("the job to be rescued", || {
        client.job("rescued").expect("job").value.status == JobStatus::Queued
    });
    assert!(has_lease_expired_row(&client, "rescued"));

    let lease = Lease::new(client.clone(), stale.clone()).expect("lease");
    let state = lease.wait_while_held(DEADLINE);
    let LeaseState::Lost { reason } = &state else {
        panic!("expected a lost lease, got {state:?}");
    };
    assert!(
        reason.starts_with("lease lost on job `rescued`"),
        "{reason}"
    );
    // The server said so at the first heartbeat, not the self-fence.
    assert_eq!(lease.heartbeats(), 0);
    let err = lease.complete(&CompleteRequest::default()).unwrap_err();
    assert!(matches!(err, ClientError::LeaseNotHeld { .. }), "{err}");
    assert!(err.to_string().contains("`rescued`"), "{err}");

    // A write the server refuses with `lease_lost` marks the lease lost too. (Heartbeats
    // far apart, so the write is what finds out.)
    let slow = ClaimedJob {
        heartbeat_interval_seconds: 600.0,
        lease_ttl_seconds: 1200.0,
        ..stale
    };
    let lease = Lease::new(client.clone(), slow).expect("lease");
    assert!(lease.is_held());
    let err = lease
        .post_event(&ProgressUpdate {
            progress: Some(0.5),
            ..Default::default()
        })
        .unwrap_err();
    assert_eq!(err.code(), Some(ErrorCode::LeaseLost), "{err}");
    assert!(
        matches!(lease.state(), LeaseState::Lost { .. }),
        "{:?}",
        lease.state()
    );
    assert_eq!(
        client.job("rescued").expect("job").value.status,
        JobStatus::Queued,
        "the stale write changed nothing"
    );
}

#[test]
fn a_lease_fences_itself_when_the_server_is_unreachable() {
    let dirs = Dirs::new();
    let server = short_lease_server(&dirs);
    let client = Client::new(&server.base).expect("client");
    let claimed = create_and_claim(&client, "cut-off", "sweep", "gpu-box-3");
    let lease = Lease::new(client.clone(), claimed).expect("lease");
    eventually("a first acknowledged heartbeat", || lease.heartbeats() >= 1);

    server.kill();
    let cut = Instant::now();
    let state = lease.wait_while_held(DEADLINE);
    let LeaseState::Lost { reason } = &state else {
        panic!("expected a lost lease, got {state:?}");
    };
    assert!(
        reason.starts_with("no heartbeat acknowledged for 1.25 s"),
        "{reason}"
    );
    assert!(reason.contains("connection refused"), "{reason}");
    // Counted from the last acknowledged heartbeat, sent before the kill: not a request
    // timeout (30 s) but the lease's own deadline (a second of slack for a busy machine).
    assert!(
        cut.elapsed() < FENCE_AFTER + Duration::from_secs(1),
        "{:?}",
        cut.elapsed()
    );
    let err = lease.post_event(&ProgressUpdate::default()).unwrap_err();
    assert!(matches!(err, ClientError::LeaseNotHeld { .. }), "{err}");
    assert!(
        err.to_string()
            .starts_with("lease on job `cut-off` is lost (no heartbeat acknowledged"),
        "{err}"
    );
}

#[test]
fn a_dropped_lease_stops_heartbeating() {
    let dirs = Dirs::new();
    let server = short_lease_server(&dirs);
    let client = Client::new(&server.base).expect("client");
    let claimed = create_and_claim(&client, "dropped", "evaluation", "gpu-box-3");
    let lease = Lease::new(client.clone(), claimed).expect("lease");
    eventually("two acknowledged heartbeats", || lease.heartbeats() >= 2);

    let dropping = Instant::now();
    drop(lease);
    assert!(
        dropping.elapsed() < LEASE_DROP_WAIT,
        "{:?}",
        dropping.elapsed()
    );
    // No more heartbeats: the lease runs out and the job goes back to the queue.
    eventually("the job to be rescued", || {
        has_lease_expired_row(&client, "dropped")
    });
    assert_eq!(
        client.job("dropped").expect("job").value.status,
        JobStatus::Queued
    );
}
