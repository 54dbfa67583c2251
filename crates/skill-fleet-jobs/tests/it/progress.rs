//! Progress reports, the coalesced batch and history pages.

use serde_json::json;
use skill_fleet_jobs::Writer;
use skill_fleet_jobs::{ProgressWrite, StoreError};
use skill_fleet_types::{JobStatus, Progress, ProgressUpdate};

use crate::support::{TestDb, both_backends, create, start};

fn the_first_event_starts_a_queued_job_and_updates_merge(db: TestDb) {
    create(&db, "p", "optimization");
    let first = ProgressUpdate {
        step: Some("bootstrapping".into()),
        progress: Some(0.1),
        cost_usd: Some(0.02),
        metric: Some(0.5),
        message: Some("collecting traces".into()),
        checkpoint: Some(json!({"trial": 1})),
        ..ProgressUpdate::default()
    };
    let job = db
        .record_progress("p", &first, Some(120.0), &Writer::Operator)
        .unwrap();
    assert_eq!((job.status, job.attempt), (JobStatus::Running, 1));
    assert!(job.started_at.is_some());

    let only_progress = ProgressUpdate {
        progress: Some(0.4),
        ..Default::default()
    };
    let job = db
        .record_progress("p", &only_progress, None, &Writer::Operator)
        .unwrap();
    assert_eq!(
        job.progress,
        Progress {
            progress: 0.4,
            step: Some("bootstrapping".into()),
            message: Some("collecting traces".into()),
            cost_usd: 0.02,
            metric: Some(0.5),
            eta_seconds: Some(120.0),
        }
    );
    assert_eq!(job.checkpoint, Some(json!({"trial": 1})));
    assert_eq!(job.attempt, 1, "a running job is not started again");

    let history = db.progress_history("p", None, 0).unwrap();
    let progress: Vec<f64> = history.records.iter().map(|r| r.progress).collect();
    assert_eq!(progress, [0.1, 0.4]);
    assert_eq!(history.records[1].step.as_deref(), Some("bootstrapping"));
    assert_eq!(history.next_after, None);
}

fn bad_updates_are_refused_and_write_nothing(db: TestDb) {
    let before = create(&db, "p", "optimization");
    for update in [
        ProgressUpdate {
            progress: Some(1.5),
            ..Default::default()
        },
        ProgressUpdate {
            cost_usd: Some(-1.0),
            ..Default::default()
        },
        ProgressUpdate {
            metric: Some(f64::NAN),
            ..Default::default()
        },
    ] {
        let err = db
            .record_progress("p", &update, None, &Writer::Operator)
            .unwrap_err();
        assert!(matches!(err, StoreError::InvalidInput(_)), "{err}");
    }
    assert_eq!(db.get("p").unwrap(), before);
    assert!(matches!(
        db.record_progress("ghost", &ProgressUpdate::default(), None, &Writer::Operator),
        Err(StoreError::NotFound { .. })
    ));
}

fn history_pages_by_seq(db: TestDb) {
    create(&db, "h", "optimization");
    create(&db, "other", "optimization");
    for n in 1..=5 {
        let update = ProgressUpdate {
            progress: Some(f64::from(n) / 10.0),
            ..Default::default()
        };
        db.record_progress("h", &update, None, &Writer::Operator)
            .unwrap();
        db.record_progress("other", &update, None, &Writer::Operator)
            .unwrap();
    }
    let mut after = None;
    let mut seen = Vec::new();
    loop {
        let page = db.progress_history("h", after, 2).unwrap();
        assert!(page.records.len() <= 2);
        seen.extend(page.records.iter().map(|r| (r.seq, r.progress)));
        match page.next_after {
            Some(next) => after = Some(next),
            None => break,
        }
    }
    let progress: Vec<f64> = seen.iter().map(|(_, p)| *p).collect();
    assert_eq!(progress, [0.1, 0.2, 0.3, 0.4, 0.5]);
    assert!(
        seen.windows(2).all(|w| w[0].0 < w[1].0),
        "seq increases per job"
    );
    assert!(matches!(
        db.progress_history("ghost", None, 10),
        Err(StoreError::NotFound { .. })
    ));
}

fn write(job_id: &str, progress: f64) -> ProgressWrite {
    ProgressWrite {
        writer: Writer::Operator,
        job_id: job_id.into(),
        progress: Progress {
            progress,
            step: Some("search".into()),
            message: Some(format!("at {progress}")),
            cost_usd: 0.5,
            metric: Some(0.7),
            eta_seconds: Some(60.0),
        },
        checkpoint: None,
    }
}

fn the_batch_writes_live_jobs_and_skips_the_rest(db: TestDb) {
    create(&db, "running", "optimization");
    start(&db, "running");
    create(&db, "done", "optimization");
    start(&db, "done");
    let done = db.complete("done", None, None, &Writer::Operator).unwrap();
    create(&db, "bad-numbers", "optimization");
    start(&db, "bad-numbers");
    // Created last: a claim takes the oldest queued job.
    create(&db, "queued", "optimization");
    let counter = db.change_counter().unwrap();

    let mut with_checkpoint = write("running", 0.3);
    with_checkpoint.checkpoint = Some(json!({"round": 3}));
    let report = db
        .write_progress_batch(&[
            with_checkpoint,
            write("queued", 0.1),
            write("done", 0.2),
            write("missing", 0.2),
            write("bad-numbers", 3.0),
        ])
        .unwrap();
    assert_eq!(report.written, 2);
    assert_eq!(report.skipped, ["done", "missing", "bad-numbers"]);
    assert_eq!(db.change_counter().unwrap(), counter + 1);
    // Every job written, once, with the one version of the batch.
    assert_eq!(
        report.versions,
        [
            ("running".to_owned(), counter + 1),
            ("queued".to_owned(), counter + 1)
        ]
    );

    let running = db.get("running").unwrap();
    assert_eq!(running.progress, write("running", 0.3).progress);
    assert_eq!(running.checkpoint, Some(json!({"round": 3})));
    assert_eq!(running.version, counter + 1);
    let queued = db.get("queued").unwrap();
    assert_eq!((queued.status, queued.attempt), (JobStatus::Running, 1));
    assert_eq!(queued.progress.progress, 0.1);
    assert_eq!(db.get("done").unwrap(), done);
    assert_eq!(
        db.progress_history("running", None, 0)
            .unwrap()
            .records
            .len(),
        1
    );

    // A later batch without a checkpoint keeps the stored one.
    db.write_progress_batch(&[write("running", 0.6)]).unwrap();
    let running = db.get("running").unwrap();
    assert_eq!(running.checkpoint, Some(json!({"round": 3})));
    assert_eq!(running.progress.progress, 0.6);

    // A batch that writes nothing changes nothing, the counter included.
    let counter = db.change_counter().unwrap();
    let report = db.write_progress_batch(&[write("done", 0.9)]).unwrap();
    assert_eq!((report.written, report.skipped.len()), (0, 1));
    assert!(report.versions.is_empty());
    assert_eq!(db.change_counter().unwrap(), counter);
    assert_eq!(db.write_progress_batch(&[]).unwrap().written, 0);
}

fn large_batches_write_one_history_row_per_job_in_order(db: TestDb) {
    let ids: Vec<String> = (0..103).map(|n| format!("job-{n:03}")).collect();
    for id in &ids {
        create(&db, id, "optimization");
    }
    let writes: Vec<_> = ids.iter().map(|id| write(id, 0.5)).collect();
    let report = db.write_progress_batch(&writes).unwrap();
    assert_eq!((report.written, report.skipped.len()), (103, 0));
    let seqs: Vec<i64> = ids
        .iter()
        .map(|id| {
            let page = db.progress_history(id, None, 0).unwrap();
            assert_eq!(page.records.len(), 1, "{id}");
            assert_eq!(page.records[0].message.as_deref(), Some("at 0.5"));
            page.records[0].seq
        })
        .collect();
    assert!(
        seqs.windows(2).all(|w| w[0] < w[1]),
        "rows follow the batch order"
    );
}

both_backends!(
    the_first_event_starts_a_queued_job_and_updates_merge,
    bad_updates_are_refused_and_write_nothing,
    history_pages_by_seq,
    the_batch_writes_live_jobs_and_skips_the_rest,
    large_batches_write_one_history_row_per_job_in_order,
);
