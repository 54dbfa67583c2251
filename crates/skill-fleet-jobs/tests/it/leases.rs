//! Leases at the store: fencing of every worker write, heartbeats, the rescue sweep and its
//! back-off, and what the history says about a lost worker.

use std::time::{Duration, Instant};

use serde_json::json;
use skill_fleet_jobs::{
    ClaimFilter, JobStore, LEASE_EXPIRED_ERROR, LEASE_EXPIRED_EVENT, LeasePolicy, ProgressWrite,
    RescuePolicy, RescueReport, RescueScope, StoreError, StoreOptions, Writer,
};
use skill_fleet_types::{Fence, JobStatus, Progress, ProgressUpdate};

use crate::support::{TestDb, both_backends, create, start_as};

fn policy(resumable: &[&str], max_rescues: u32, backoff: Duration) -> RescuePolicy {
    RescuePolicy {
        resumable_types: resumable.iter().map(|t| (*t).to_owned()).collect(),
        max_rescues,
        backoff_first: backoff,
        backoff_max: backoff * 8,
    }
}

/// A store whose leases last `ttl`.
fn store_with_ttl(db: &TestDb, ttl: Duration) -> JobStore {
    JobStore::open_with(
        &db.url,
        StoreOptions {
            lease: LeasePolicy { ttl },
            ..StoreOptions::default()
        },
    )
    .unwrap()
}

/// Sweeps until the sweep takes something (leases of a few milliseconds), or fails.
fn rescue_soon(store: &JobStore, policy: &RescuePolicy) -> RescueReport {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let report = store.rescue(&RescueScope::Expired, policy).unwrap();
        if !report.is_empty() {
            return report;
        }
        assert!(Instant::now() < deadline, "no lease expired within 10 s");
        std::thread::yield_now();
    }
}

fn claim(store: &JobStore, worker: &str) -> (String, Fence) {
    let claimed = store
        .claim(&ClaimFilter::default(), worker)
        .unwrap()
        .expect("a queued job");
    (claimed.job.id.clone(), claimed.lease.fence())
}

fn progress(value: f64) -> ProgressUpdate {
    ProgressUpdate {
        progress: Some(value),
        ..ProgressUpdate::default()
    }
}

fn lost(err: StoreError) -> (u32, JobStatus) {
    match err {
        StoreError::LeaseLost {
            attempt, status, ..
        } => (attempt, status),
        other => panic!("expected lease_lost, got {other:?}"),
    }
}

fn a_claim_owns_the_job_and_only_its_fence_writes(db: TestDb) {
    create(&db, "j", "evaluation");
    let claimed = start_as(&db, "j", "gpu-box-3");
    let lease = claimed
        .job
        .lease
        .clone()
        .expect("a running job shows its lease");
    assert_eq!(lease.owner, "gpu-box-3");
    assert!(lease.expires_at > lease.renewed_at);
    assert_eq!(claimed.lease.token.len(), 32);
    let owner = Writer::Owner(claimed.lease.fence());

    let wrong_token = Writer::Owner(Fence {
        attempt: 1,
        lease_token: "0".repeat(32),
    });
    let wrong_attempt = Writer::Owner(Fence {
        attempt: 2,
        lease_token: claimed.lease.token.clone(),
    });
    for writer in [&wrong_token, &wrong_attempt, &Writer::Unfenced] {
        let before = db.get("j").unwrap();
        let err = db.record_progress("j", &progress(0.5), None, writer);
        assert_eq!(lost(err.unwrap_err()), (1, JobStatus::Running));
        let err = db.complete("j", None, None, writer).unwrap_err();
        assert_eq!(lost(err), (1, JobStatus::Running));
        assert_eq!(
            lost(db.fail("j", "x", writer).unwrap_err()),
            (1, JobStatus::Running)
        );
        assert_eq!(
            db.get("j").unwrap(),
            before,
            "a refused write changes nothing"
        );
    }
    let job = db
        .record_progress("j", &progress(0.5), None, &owner)
        .unwrap();
    assert!(job.lease.unwrap().renewed_at >= lease.renewed_at);

    // A complete retried after a lost answer: the same job, nothing written again.
    let done = db
        .complete("j", Some(json!({"a": 1})), None, &owner)
        .unwrap();
    let again = db
        .complete("j", Some(json!({"a": 2})), None, &owner)
        .unwrap();
    assert_eq!(again, done);
    assert_eq!(again.result, Some(json!({"a": 1})));
    assert_eq!(done.lease, None, "an ended job holds no lease");
    // A stale token still gets lease_lost, not the job.
    assert_eq!(
        lost(db.complete("j", None, None, &wrong_token).unwrap_err()),
        (1, JobStatus::Completed)
    );
}

fn a_heartbeat_renews_and_hears_a_cancel(db: TestDb) {
    create(&db, "j", "evaluation");
    let claimed = start_as(&db, "j", "w");
    let fence = claimed.lease.fence();
    let beat = db.heartbeat("j", &fence).unwrap();
    assert!(beat.renewed);
    assert!(beat.job.version > claimed.job.version);
    let renewed = beat.job.lease.unwrap();
    assert!(renewed.renewed_at >= claimed.job.lease.unwrap().renewed_at);

    db.cancel("j", Some("budget exceeded")).unwrap();
    let counter = db.change_counter().unwrap();
    let beat = db.heartbeat("j", &fence).unwrap();
    assert!(!beat.renewed);
    assert_eq!(beat.job.status, JobStatus::Cancelled);
    assert_eq!(beat.job.error.as_deref(), Some("budget exceeded"));
    assert_eq!(
        db.change_counter().unwrap(),
        counter,
        "a stop answer writes nothing"
    );
    let stale = Fence {
        attempt: 1,
        lease_token: "f".repeat(32),
    };
    assert_eq!(
        lost(db.heartbeat("j", &stale).unwrap_err()),
        (1, JobStatus::Cancelled)
    );
}

fn an_expired_lease_is_rescued_with_its_checkpoint_and_the_late_worker_is_fenced(db: TestDb) {
    let store = store_with_ttl(&db, Duration::from_millis(20));
    create(&store, "j", "evaluation");
    let (id, first) = claim(&store, "w1");
    let update = ProgressUpdate {
        checkpoint: Some(json!({"done": 3})),
        ..progress(0.3)
    };
    store
        .record_progress(&id, &update, None, &Writer::Owner(first.clone()))
        .unwrap();

    let policy = policy(&["evaluation"], 3, Duration::from_millis(1));
    let report = rescue_soon(&store, &policy);
    assert_eq!(report.requeued.len(), 1);
    let rescued = &report.requeued[0];
    assert_eq!(rescued.job.status, JobStatus::Queued);
    assert_eq!(rescued.job.checkpoint, Some(json!({"done": 3})));
    assert_eq!(rescued.lost_owner.as_deref(), Some("w1"));
    assert!(
        rescued.message.contains("lease expired"),
        "{}",
        rescued.message
    );

    // Everything the first attempt sends now is refused and changes nothing.
    let before = store.get(&id).unwrap();
    let old = Writer::Owner(first.clone());
    assert_eq!(
        lost(store.heartbeat(&id, &first).unwrap_err()),
        (1, JobStatus::Queued)
    );
    assert_eq!(
        lost(
            store
                .record_progress(&id, &progress(0.9), None, &old)
                .unwrap_err()
        ),
        (1, JobStatus::Queued)
    );
    assert_eq!(
        lost(store.complete(&id, None, None, &old).unwrap_err()),
        (1, JobStatus::Queued)
    );
    let batch = store
        .write_progress_batch(&[ProgressWrite {
            job_id: id.clone(),
            progress: Progress {
                progress: 0.95,
                ..Progress::default()
            },
            checkpoint: None,
            writer: old.clone(),
        }])
        .unwrap();
    assert_eq!(
        batch.skipped,
        std::slice::from_ref(&id),
        "a stale batch write never starts the job"
    );
    assert_eq!(store.get(&id).unwrap(), before);

    // The second worker gets attempt 2, a new token and the checkpoint.
    let deadline = Instant::now() + Duration::from_secs(10);
    let second = loop {
        if let Some(claimed) = store.claim(&ClaimFilter::default(), "w2").unwrap() {
            break claimed;
        }
        assert!(Instant::now() < deadline, "the back-off never ended");
        std::thread::yield_now();
    };
    assert_eq!(second.job.attempt, 2);
    assert_ne!(second.lease.token, first.lease_token);
    assert_eq!(second.job.checkpoint, Some(json!({"done": 3})));
    assert_eq!(
        lost(store.complete(&id, None, None, &old).unwrap_err()),
        (2, JobStatus::Running)
    );

    // The history tells "worker lost" apart, and which attempt wrote each row.
    let history = store.progress_history(&id, None, 100).unwrap().records;
    let event = history
        .iter()
        .find(|r| r.event.as_deref() == Some(LEASE_EXPIRED_EVENT))
        .expect("a lease_expired row");
    assert_eq!(event.attempt, Some(1));
    assert!(event.message.as_deref().unwrap().contains("w1"));
    assert!(history.iter().all(|r| r.attempt == Some(1)));
}

fn the_back_off_keeps_a_rescued_job_from_being_claimed_at_once(db: TestDb) {
    let store = store_with_ttl(&db, Duration::from_millis(5));
    create(&store, "j", "evaluation");
    claim(&store, "w");
    let report = rescue_soon(
        &store,
        &policy(&["evaluation"], 3, Duration::from_secs(3600)),
    );
    assert_eq!(report.requeued.len(), 1);
    assert!(store.claim(&ClaimFilter::default(), "w").unwrap().is_none());
    // Resume (an operator's action) would not apply to a queued job; the back-off holds.
    assert_eq!(store.get("j").unwrap().status, JobStatus::Queued);
}

fn max_rescues_fails_the_job_and_a_non_resumable_type_fails_at_once(db: TestDb) {
    let store = store_with_ttl(&db, Duration::from_millis(5));
    let policy = policy(&["evaluation"], 2, Duration::ZERO);
    create(&store, "loops", "evaluation");
    for round in 1..=3 {
        let (id, _) = claim(&store, "crasher");
        assert_eq!(store.get(&id).unwrap().attempt, round);
        let report = rescue_soon(&store, &policy);
        if round <= 2 {
            assert_eq!(report.requeued.len(), 1, "round {round}");
        } else {
            assert_eq!(report.failed.len(), 1, "round {round}");
            let job = &report.failed[0].job;
            assert_eq!(job.status, JobStatus::Failed);
            assert_eq!(job.error.as_deref(), Some(LEASE_EXPIRED_ERROR));
            assert!(report.failed[0].message.contains("rescued 2 times"));
        }
    }
    create(&store, "once", "shell");
    let (_, once_fence) = claim(&store, "w");
    let report = rescue_soon(&store, &policy);
    assert_eq!(report.failed.len(), 1);
    assert_eq!(
        report.failed[0].job.error.as_deref(),
        Some(LEASE_EXPIRED_ERROR)
    );
    assert!(report.failed[0].message.contains("not resumable"));
    // Its lost owner hears that it lost the job, not that the job ended.
    let owner = Writer::Owner(once_fence);
    assert_eq!(
        lost(store.complete("once", None, None, &owner).unwrap_err()),
        (1, JobStatus::Failed)
    );
}

fn a_token_less_event_starts_an_open_lease_that_token_less_writes_keep(db: TestDb) {
    create(&db, "j", "evaluation");
    let job = db
        .record_progress("j", &progress(0.1), None, &Writer::Unfenced)
        .unwrap();
    assert_eq!(job.status, JobStatus::Running);
    assert_eq!(job.lease.unwrap().owner, skill_fleet_jobs::ANONYMOUS_OWNER);
    db.record_progress("j", &progress(0.2), None, &Writer::Unfenced)
        .unwrap();
    let batch = db
        .write_progress_batch(&[ProgressWrite {
            job_id: "j".into(),
            progress: Progress {
                progress: 0.3,
                ..Progress::default()
            },
            checkpoint: None,
            writer: Writer::Unfenced,
        }])
        .unwrap();
    assert_eq!(batch.written, 1);
    let done = db.complete("j", None, None, &Writer::Unfenced).unwrap();
    assert_eq!(done.status, JobStatus::Completed);
}

fn a_rescue_never_touches_a_job_that_completed_or_renewed_first(db: TestDb) {
    let store = store_with_ttl(&db, Duration::from_millis(30));
    let policy = policy(&["evaluation"], 3, Duration::ZERO);
    for round in 0..20 {
        let id = format!("race{round}");
        create(&store, &id, "evaluation");
        let (claimed, fence) = claim(&store, "w");
        assert_eq!(claimed, id);
        // Complete and sweep at once, around the moment the lease expires.
        let (completed, swept) = std::thread::scope(|scope| {
            let complete = scope.spawn(|| {
                std::thread::sleep(Duration::from_millis(25));
                store.complete(
                    &id,
                    Some(json!({"round": round})),
                    None,
                    &Writer::Owner(fence),
                )
            });
            let sweep = scope.spawn(|| {
                let deadline = Instant::now() + Duration::from_millis(60);
                let mut all = RescueReport::default();
                while Instant::now() < deadline {
                    let report = store.rescue(&RescueScope::Expired, &policy).unwrap();
                    all.requeued.extend(report.requeued);
                }
                all
            });
            (complete.join().unwrap(), sweep.join().unwrap())
        });
        let job = store.get(&id).unwrap();
        match completed {
            Ok(done) => {
                assert_eq!(done.status, JobStatus::Completed);
                assert_eq!(
                    job.status,
                    JobStatus::Completed,
                    "round {round}: overwritten"
                );
                assert!(
                    swept.requeued.is_empty(),
                    "round {round}: rescued after completing"
                );
            }
            Err(err) => {
                lost(err);
                assert_eq!(swept.requeued.len(), 1, "round {round}");
                assert_eq!(job.status, JobStatus::Queued);
                assert_eq!(job.result, None);
                // Leave the queue empty for the next round.
                store.cancel(&id, None).unwrap();
            }
        }
    }
}

both_backends!(
    a_claim_owns_the_job_and_only_its_fence_writes,
    a_heartbeat_renews_and_hears_a_cancel,
    an_expired_lease_is_rescued_with_its_checkpoint_and_the_late_worker_is_fenced,
    the_back_off_keeps_a_rescued_job_from_being_claimed_at_once,
    max_rescues_fails_the_job_and_a_non_resumable_type_fails_at_once,
    a_token_less_event_starts_an_open_lease_that_token_less_writes_keep,
    a_rescue_never_touches_a_job_that_completed_or_renewed_first,
);
