//! Recovery after a simulated crash (the start-up rescue of an earlier run's jobs), and
//! pruning.

use std::time::Duration;

use serde_json::json;
use skill_fleet_jobs::{
    ClaimFilter, INTERRUPTED_ERROR, PruneReport, RescuePolicy, RescueReport, RescueScope,
    StoreError, Writer,
};
use skill_fleet_types::{JobStatus, ProgressUpdate};

use crate::support::{TestDb, both_backends, create, start, start_as};

/// What the server does at start-up: every job an earlier run of it owned is lost.
fn recover(db: &TestDb, resumable: &[String]) -> RescueReport {
    let policy = RescuePolicy {
        resumable_types: resumable.to_vec(),
        max_rescues: 3,
        backoff_first: Duration::ZERO,
        backoff_max: Duration::ZERO,
    };
    let scope = RescueScope::EarlierRuns {
        current: "server:2".to_owned(),
    };
    db.rescue(&scope, &policy).unwrap()
}

fn ids(rescued: &[skill_fleet_jobs::Rescued]) -> Vec<&str> {
    rescued.iter().map(|r| r.job.id.as_str()).collect()
}

fn a_crash_requeues_resumable_jobs_with_their_checkpoint_and_fails_the_rest(db: TestDb) {
    create(&db, "opt", "optimization");
    create(&db, "eval", "evaluation");
    create(&db, "shell", "shell");
    create(&db, "waiting", "optimization");
    for id in ["opt", "eval", "shell"] {
        start_as(&db, id, "server:1");
    }
    let update = ProgressUpdate {
        progress: Some(0.5),
        checkpoint: Some(json!({"trial": 12})),
        ..Default::default()
    };
    db.record_progress("opt", &update, None, &Writer::Operator)
        .unwrap();
    let waiting = db.get("waiting").unwrap();

    // The server dies: no requeue, no clean-up; a new one opens the same file.
    let db = db.reopen();
    assert_eq!(db.get("opt").unwrap().status, JobStatus::Running);
    let resumable = ["optimization".to_owned(), "evaluation".to_owned()];
    let report = recover(&db, &resumable);
    assert_eq!(ids(&report.requeued), ["opt", "eval"]);
    assert_eq!(ids(&report.failed), ["shell"]);

    let opt = db.get("opt").unwrap();
    assert_eq!(opt.status, JobStatus::Queued);
    assert_eq!(opt.checkpoint, Some(json!({"trial": 12})));
    assert_eq!(opt.progress.progress, 0.5);
    assert_eq!(opt.attempt, 1);
    let shell = db.get("shell").unwrap();
    assert_eq!(shell.status, JobStatus::Failed);
    assert_eq!(shell.error.as_deref(), Some(INTERRUPTED_ERROR));
    assert!(shell.completed_at.is_some());
    assert_eq!(db.get("waiting").unwrap(), waiting);

    // Started again (it is the oldest queued job), the job shows its second attempt and
    // still has its checkpoint.
    let optimizations = ClaimFilter {
        types: vec!["optimization".to_owned()],
        ..ClaimFilter::default()
    };
    let again = db
        .claim(&optimizations, "server:2")
        .map(|c| c.map(|c| c.job))
        .unwrap()
        .unwrap();
    assert_eq!((again.id.as_str(), again.attempt), ("opt", 2));
    assert_eq!(again.checkpoint, Some(json!({"trial": 12})));
    let next = db
        .claim(&optimizations, "server:2")
        .map(|c| c.map(|c| c.job))
        .unwrap()
        .unwrap();
    assert_eq!((next.id.as_str(), next.attempt), ("waiting", 1));

    // Nothing left running from before: a second recovery changes nothing it should not.
    let counter = db.change_counter().unwrap();
    // Run 2's jobs are not an earlier run's; from run 3's point of view they are.
    assert!(recover(&db, &[]).is_empty());
    assert_eq!(db.change_counter().unwrap(), counter);
    let scope = RescueScope::EarlierRuns {
        current: "server:3".to_owned(),
    };
    let policy = RescuePolicy {
        resumable_types: Vec::new(),
        max_rescues: 3,
        backoff_first: Duration::ZERO,
        backoff_max: Duration::ZERO,
    };
    let report = db.rescue(&scope, &policy).unwrap();
    assert_eq!(ids(&report.failed), ["opt", "waiting"]);
    assert!(db.change_counter().unwrap() > counter);
    assert!(db.rescue(&scope, &policy).unwrap().failed.is_empty());
}

fn prune_removes_old_finished_jobs_with_their_history(db: TestDb) {
    // In this order so that claiming takes done, failed and running.
    for id in ["done", "failed", "running", "cancelled", "queued"] {
        create(&db, id, "optimization");
    }
    for id in ["done", "failed", "running"] {
        start(&db, id);
        db.record_progress(
            id,
            &ProgressUpdate {
                progress: Some(0.5),
                ..Default::default()
            },
            None,
            &Writer::Operator,
        )
        .unwrap();
    }
    db.complete("done", None, None, &Writer::Operator).unwrap();
    db.fail("failed", "x", &Writer::Operator).unwrap();
    db.cancel("cancelled", None).unwrap();

    // Nothing finished an hour ago.
    assert_eq!(
        db.prune(chrono::Duration::hours(1)).unwrap(),
        PruneReport::default()
    );
    let counter = db.change_counter().unwrap();
    // A negative age puts the cut-off in the future: every finished job is old enough.
    let report = db.prune(chrono::Duration::seconds(-1)).unwrap();
    // History: done and failed have one progress row and one terminal row; cancelled one.
    assert_eq!(
        report,
        PruneReport {
            jobs: 3,
            ids: vec![
                "cancelled".to_owned(),
                "done".to_owned(),
                "failed".to_owned()
            ],
            progress_rows: 5,
            artifacts: 0,
        }
    );
    assert!(db.change_counter().unwrap() > counter);
    for id in ["done", "failed", "cancelled"] {
        assert!(
            matches!(db.get(id), Err(StoreError::NotFound { .. })),
            "{id}"
        );
    }
    assert_eq!(db.get("running").unwrap().status, JobStatus::Running);
    assert_eq!(db.get("queued").unwrap().status, JobStatus::Queued);
    assert_eq!(
        db.progress_history("running", None, 0)
            .unwrap()
            .records
            .len(),
        1
    );
}

fn prune_takes_many_jobs_in_batches_and_reports_each_once(db: TestDb) {
    for i in 0..1203 {
        let id = format!("j{i:04}");
        create(&db, &id, "sweep");
        db.cancel(&id, None).unwrap();
    }
    create(&db, "alive", "sweep");
    let report = db.prune(chrono::Duration::seconds(-1)).unwrap();
    assert_eq!(report.jobs, 1203);
    assert_eq!(report.ids.len(), 1203);
    let mut unique = report.ids.clone();
    unique.dedup();
    assert_eq!(unique.len(), 1203, "an id was reported twice");
    assert!(report.ids.windows(2).all(|pair| pair[0] < pair[1]));
    assert!(matches!(db.get("j0600"), Err(StoreError::NotFound { .. })));
    assert_eq!(db.get("alive").unwrap().status, JobStatus::Queued);
    assert_eq!(
        db.prune(chrono::Duration::seconds(-1)).unwrap(),
        PruneReport::default()
    );
}

both_backends!(
    a_crash_requeues_resumable_jobs_with_their_checkpoint_and_fails_the_rest,
    prune_removes_old_finished_jobs_with_their_history,
    prune_takes_many_jobs_in_batches_and_reports_each_once,
);
