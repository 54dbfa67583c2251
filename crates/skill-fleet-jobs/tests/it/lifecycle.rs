//! Transitions (every allowed and every refused one), create, versions and attempts.

use serde_json::json;
use skill_fleet_jobs::Writer;
use skill_fleet_jobs::{Action, ClaimFilter, Created, NewJob, StoreError, transition};
use skill_fleet_types::{Job, JobStatus, ProgressUpdate};

use crate::support::{TestDb, both_backends, create, metadata, new_job, start};

use Action as A;
use JobStatus as S;

/// The transition table, written out independently of the code under test.
const ALLOWED: [(JobStatus, Action, JobStatus); 12] = [
    (S::Queued, A::Start, S::Running),
    (S::Queued, A::Progress, S::Running),
    (S::Queued, A::Cancel, S::Cancelled),
    (S::Queued, A::Fail, S::Failed),
    (S::Running, A::Progress, S::Running),
    (S::Running, A::StoreArtifact, S::Running),
    (S::Running, A::Complete, S::Completed),
    (S::Running, A::Fail, S::Failed),
    (S::Running, A::Cancel, S::Cancelled),
    (S::Running, A::Requeue, S::Queued),
    (S::Failed, A::Resume, S::Queued),
    (S::Cancelled, A::Resume, S::Queued),
];

fn expected(from: JobStatus, action: Action) -> Option<JobStatus> {
    ALLOWED
        .iter()
        .find(|(f, a, _)| *f == from && *a == action)
        .map(|(_, _, to)| *to)
}

/// Creates a job and drives it to `status` through allowed moves. Its type is its id, so
/// that claiming its type takes exactly this job.
fn job_in(db: &TestDb, id: &str, status: JobStatus) -> Job {
    let job = create(db, id, id);
    match status {
        S::Queued => job,
        S::Running => start(db, id),
        S::Completed => {
            start(db, id);
            db.complete(id, Some(json!({"score": 1})), None, &Writer::Operator)
                .unwrap()
        }
        S::Failed => db.fail(id, "boom", &Writer::Operator).unwrap(),
        S::Cancelled => db.cancel(id, None).unwrap(),
    }
}

/// Asks `action` of job `id`; `Ok(None)` when a claim of the job's type took nothing.
fn act(db: &TestDb, id: &str, action: Action) -> Result<Option<Job>, StoreError> {
    let job_type = db.get(id).unwrap().job_type;
    let done = match action {
        A::Start => {
            let filter = ClaimFilter {
                types: vec![job_type],
                ..ClaimFilter::default()
            };
            return db.claim(&filter, "test").map(|c| c.map(|c| c.job));
        }
        A::Progress => db.record_progress(
            id,
            &ProgressUpdate {
                progress: Some(0.5),
                ..Default::default()
            },
            None,
            &Writer::Operator,
        ),
        A::Complete => db.complete(id, None, Some("out/result.json".into()), &Writer::Operator),
        A::Fail => db.fail(id, "it broke", &Writer::Operator),
        A::Cancel => db.cancel(id, Some("stopped by user")),
        A::Requeue => db.requeue(id, &Writer::Operator),
        A::Resume => db.resume(id),
        A::StoreArtifact => crate::artifacts::store(db, id, "out.json", b"{}", &Writer::Operator)
            .map(|published| published.job),
    };
    done.map(Some)
}

#[test]
fn the_transition_table_is_exactly_the_documented_one() {
    for from in JobStatus::ALL {
        for action in Action::ALL {
            assert_eq!(
                transition(from, action),
                expected(from, action),
                "{from} {action}"
            );
        }
    }
}

fn every_transition_is_applied_or_refused_without_writing(db: TestDb) {
    let mut n = 0;
    for from in JobStatus::ALL {
        for action in Action::ALL {
            n += 1;
            let id = format!("job-{n}");
            let before = job_in(&db, &id, from);
            assert_eq!(before.status, from);
            let outcome = act(&db, &id, action);
            match expected(from, action) {
                Some(to) => {
                    let after = outcome
                        .unwrap_or_else(|e| panic!("{from} {action}: {e}"))
                        .unwrap_or_else(|| panic!("{from} {action}: nothing claimed"));
                    assert_eq!(after.id, id, "{from} {action}");
                    assert_eq!(after.status, to, "{from} {action}");
                    assert!(after.version > before.version, "{from} {action}");
                    assert_eq!(db.get(&id).unwrap(), after);
                }
                None => {
                    match outcome {
                        Err(StoreError::InvalidTransition {
                            id: err_id,
                            from: err_from,
                            action: err_action,
                        }) => {
                            assert_eq!(
                                (err_id.as_str(), err_from, err_action),
                                (id.as_str(), from, action)
                            );
                        }
                        // A claim refuses a job that is not queued by not taking it.
                        Ok(None) if action == A::Start => {}
                        other => panic!("{from} {action}: expected a refusal, got {other:?}"),
                    }
                    assert_eq!(db.get(&id).unwrap(), before, "{from} {action} wrote");
                }
            }
        }
    }
}

fn lifecycle_effects_are_recorded(db: TestDb) {
    create(&db, "a", "optimization");
    let started = start(&db, "a");
    assert_eq!(started.attempt, 1);
    assert!(started.started_at.is_some() && started.completed_at.is_none());

    let done = db
        .complete(
            "a",
            Some(json!({"score": 0.9})),
            Some("out/a.json".into()),
            &Writer::Operator,
        )
        .unwrap();
    assert_eq!(done.result, Some(json!({"score": 0.9})));
    assert_eq!(done.result_path.as_deref(), Some("out/a.json"));
    assert_eq!(done.progress.progress, 1.0);
    assert!(done.completed_at.is_some());

    create(&db, "b", "optimization");
    let cancelled = db.cancel("b", None).unwrap();
    assert_eq!(cancelled.error.as_deref(), Some("cancelled"));
    assert!(cancelled.completed_at.is_some());
    let resumed = db.resume("b").unwrap();
    assert_eq!(resumed.status, S::Queued);
    assert_eq!((resumed.error, resumed.completed_at), (None, None));

    start(&db, "b");
    db.record_progress(
        "b",
        &ProgressUpdate {
            checkpoint: Some(json!({"trial": 4})),
            ..Default::default()
        },
        None,
        &Writer::Operator,
    )
    .unwrap();
    let requeued = db.requeue("b", &Writer::Operator).unwrap();
    assert_eq!(requeued.checkpoint, Some(json!({"trial": 4})));
    let restarted = start(&db, "b");
    assert_eq!(restarted.attempt, 2, "attempt counts starts");
    let failed = db.fail("b", "out of budget", &Writer::Operator).unwrap();
    assert_eq!(failed.error.as_deref(), Some("out of budget"));
    assert_eq!(failed.checkpoint, Some(json!({"trial": 4})));
}

fn refusals_and_missing_jobs_have_readable_messages(db: TestDb) {
    job_in(&db, "abc", S::Completed);
    let err = db.cancel("abc", None).unwrap_err();
    assert_eq!(err.to_string(), "job `abc` is completed, cannot cancel");
    let err = db
        .record_progress("abc", &ProgressUpdate::default(), None, &Writer::Operator)
        .unwrap_err();
    assert_eq!(
        err.to_string(),
        "job `abc` is completed, cannot record progress"
    );
    let err = db.get("nope").unwrap_err();
    assert!(matches!(err, StoreError::NotFound { .. }));
    assert_eq!(err.to_string(), "job `nope` not found");
    assert!(matches!(
        db.cancel("nope", None),
        Err(StoreError::NotFound { .. })
    ));
}

fn create_is_idempotent_for_the_same_body_and_conflicts_otherwise(db: TestDb) {
    let body = NewJob {
        metadata: metadata(json!({"model": "gpt-4o-mini", "trials": 20})),
        ..new_job("same", "optimization")
    };
    let (first, created) = db.create(&body).unwrap();
    assert_eq!(created, Created::New);
    assert_eq!(
        (first.status, first.attempt, first.source.as_str()),
        (S::Queued, 0, "test")
    );

    // Same body (key order does not matter, nor does the source): the same job back.
    let again = NewJob {
        metadata: metadata(json!({"trials": 20, "model": "gpt-4o-mini"})),
        source: "cli".into(),
        ..body.clone()
    };
    let (second, created) = db.create(&again).unwrap();
    assert_eq!(created, Created::Existing);
    assert_eq!(second, first);

    let other_metadata = NewJob {
        metadata: metadata(json!({"model": "gpt-4o"})),
        ..body.clone()
    };
    let other_type = NewJob {
        job_type: "evaluation".into(),
        ..body.clone()
    };
    for clash in [other_metadata, other_type] {
        let err = db.create(&clash).unwrap_err();
        assert!(
            matches!(err, StoreError::Conflict { ref id, .. } if id == "same"),
            "{err}"
        );
    }
    assert_eq!(db.get("same").unwrap(), first);
}

fn create_generates_sortable_ids_and_validates_input(db: TestDb) {
    let generated = NewJob {
        id: None,
        ..new_job("unused", "optimization")
    };
    let (a, _) = db.create(&generated).unwrap();
    let (b, _) = db.create(&generated).unwrap();
    assert_ne!(a.id, b.id);
    for id in [&a.id, &b.id] {
        let uuid = uuid::Uuid::parse_str(id).unwrap();
        assert_eq!(uuid.get_version_num(), 7, "{id}");
    }

    let huge = metadata(json!({"blob": "x".repeat(70 * 1024)}));
    let bad = [
        new_job("../etc/passwd", "optimization"),
        new_job("ok", "Not A Type"),
        NewJob {
            metadata: huge,
            ..new_job("ok", "optimization")
        },
    ];
    for new in bad {
        let err = db.create(&new).unwrap_err();
        assert!(matches!(err, StoreError::InvalidInput(_)), "{err}");
    }
}

fn every_change_bumps_the_version_and_the_change_counter(db: TestDb) {
    let counter_at_start = db.change_counter().unwrap();
    let mut versions = vec![create(&db, "v", "optimization").version];
    let update = ProgressUpdate {
        progress: Some(0.1),
        ..Default::default()
    };
    versions.push(
        db.record_progress("v", &update, None, &Writer::Operator)
            .unwrap()
            .version,
    );
    versions.push(
        db.record_progress("v", &update, Some(30.0), &Writer::Operator)
            .unwrap()
            .version,
    );
    versions.push(db.requeue("v", &Writer::Operator).unwrap().version);
    versions.push(start(&db, "v").version);
    versions.push(db.cancel("v", None).unwrap().version);
    versions.push(db.resume("v").unwrap().version);
    assert!(versions.windows(2).all(|w| w[0] < w[1]), "{versions:?}");

    let counter = db.change_counter().unwrap();
    assert_eq!(counter, counter_at_start + versions.len() as u64);
    // Reads and refused changes write nothing.
    db.get("v").unwrap();
    db.list(&Default::default()).unwrap();
    assert!(db.complete("v", None, None, &Writer::Operator).is_err());
    assert_eq!(db.change_counter().unwrap(), counter);
    assert_eq!(db.get("v").unwrap().version, *versions.last().unwrap());
}

fn claim_takes_the_oldest_queued_job_of_the_given_types(db: TestDb) {
    create(&db, "eval-1", "evaluation");
    create(&db, "opt-1", "optimization");
    create(&db, "opt-2", "optimization");
    let types = ClaimFilter {
        types: vec!["optimization".to_owned()],
        ..ClaimFilter::default()
    };
    let any = ClaimFilter::default();
    let first = db
        .claim(&types, "test")
        .map(|c| c.map(|c| c.job))
        .unwrap()
        .unwrap();
    assert_eq!(
        (first.id.as_str(), first.status, first.attempt),
        ("opt-1", S::Running, 1)
    );
    assert_eq!(
        db.claim(&types, "test")
            .map(|c| c.map(|c| c.job))
            .unwrap()
            .unwrap()
            .id,
        "opt-2"
    );
    assert_eq!(
        db.claim(&types, "test").map(|c| c.map(|c| c.job)).unwrap(),
        None
    );
    assert_eq!(
        db.claim(&any, "test")
            .map(|c| c.map(|c| c.job))
            .unwrap()
            .unwrap()
            .id,
        "eval-1"
    );
    assert_eq!(
        db.claim(&any, "test").map(|c| c.map(|c| c.job)).unwrap(),
        None
    );
}

fn claim_skips_excluded_types_and_an_empty_claim_writes_nothing(db: TestDb) {
    create(&db, "opt-1", "optimization");
    create(&db, "eval-1", "evaluation");
    let not_optimizations = ClaimFilter {
        excluded: vec!["optimization".to_owned()],
        ..ClaimFilter::default()
    };
    let claimed = db
        .claim(&not_optimizations, "test")
        .map(|c| c.map(|c| c.job))
        .unwrap()
        .unwrap();
    assert_eq!(claimed.id, "eval-1");
    assert_eq!(claimed.version, db.change_counter().unwrap());
    let counter = db.change_counter().unwrap();
    assert_eq!(
        db.claim(&not_optimizations, "test")
            .map(|c| c.map(|c| c.job))
            .unwrap(),
        None
    );
    // Excluding wins over asking.
    let contradictory = ClaimFilter {
        types: vec!["optimization".to_owned()],
        excluded: vec!["optimization".to_owned()],
    };
    assert_eq!(
        db.claim(&contradictory, "test")
            .map(|c| c.map(|c| c.job))
            .unwrap(),
        None
    );
    assert_eq!(
        db.change_counter().unwrap(),
        counter,
        "an empty claim bumped the counter"
    );
    assert_eq!(db.get("opt-1").unwrap().status, S::Queued);
    // A requeued run keeps its first start when claimed again.
    let started = start(&db, "opt-1");
    let requeued = db.requeue("opt-1", &Writer::Operator).unwrap();
    let again = start(&db, "opt-1");
    assert_eq!(again.started_at, started.started_at);
    assert_eq!(
        (again.attempt, again.error, again.completed_at),
        (2, None, None)
    );
    assert!(again.version > requeued.version);
}

fn boot_epoch_increases_across_reopens(db: TestDb) {
    assert_eq!(db.bump_boot_epoch().unwrap(), 1);
    assert_eq!(db.bump_boot_epoch().unwrap(), 2);
    let db = db.reopen();
    assert_eq!(db.bump_boot_epoch().unwrap(), 3);
}

fn migrations_are_applied_on_open(db: TestDb) {
    let status = db.migration_status().unwrap();
    assert!(status.pending.is_empty(), "{status:?}");
    assert_eq!(status.applied.len(), 9, "{status:?}");
    assert!(status.applied[0].ends_with("_create_jobs"), "{status:?}");
    assert_eq!(skill_fleet_jobs::migration_status(&db.url).unwrap(), status);
    assert!(
        skill_fleet_jobs::run_migrations(&db.url)
            .unwrap()
            .is_empty()
    );
}

#[test]
fn sqlite_urls_are_accepted_and_a_fresh_file_migrates() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("via-url.db").display().to_string();
    for url in [
        format!("sqlite://{path}"),
        format!("file:{path}"),
        path.clone(),
    ] {
        let store = skill_fleet_jobs::JobStore::open(&url).unwrap();
        store.create(&new_job("same", "optimization")).unwrap();
        assert_eq!(store.get("same").unwrap().id, "same");
    }
    let fresh = dir.path().join("fresh.db").display().to_string();
    let status = skill_fleet_jobs::migration_status(&fresh).unwrap();
    assert_eq!((status.applied.len(), status.pending.len()), (0, 9));
    assert_eq!(skill_fleet_jobs::run_migrations(&fresh).unwrap().len(), 9);
}

both_backends!(
    every_transition_is_applied_or_refused_without_writing,
    lifecycle_effects_are_recorded,
    refusals_and_missing_jobs_have_readable_messages,
    create_is_idempotent_for_the_same_body_and_conflicts_otherwise,
    create_generates_sortable_ids_and_validates_input,
    every_change_bumps_the_version_and_the_change_counter,
    claim_takes_the_oldest_queued_job_of_the_given_types,
    claim_skips_excluded_types_and_an_empty_claim_writes_nothing,
    boot_epoch_increases_across_reopens,
    migrations_are_applied_on_open,
);
