//! Listing: filters, limits, cursor paging, counts.

use skill_fleet_jobs::Writer;
use skill_fleet_jobs::{ListFilter, StoreError};
use skill_fleet_types::JobStatus;

use crate::support::{TestDb, both_backends, create, start};

/// Jobs `job-00` … `job-09`: even ones `optimization`, odd ones `evaluation`; 0..3 running.
fn seeded(db: TestDb) -> TestDb {
    for n in 0..10 {
        let job_type = if n % 2 == 0 {
            "optimization"
        } else {
            "evaluation"
        };
        create(&db, &format!("job-{n:02}"), job_type);
    }
    for n in 0..3 {
        start(&db, &format!("job-{n:02}"));
    }
    db
}

fn ids(db: &TestDb, filter: &ListFilter) -> Vec<String> {
    db.list(filter)
        .unwrap()
        .jobs
        .into_iter()
        .map(|job| job.id)
        .collect()
}

fn pages_walk_every_job_newest_first_exactly_once(db: TestDb) {
    let db = seeded(db);
    let mut seen = Vec::new();
    let mut filter = ListFilter {
        limit: 3,
        ..Default::default()
    };
    let mut pages = 0;
    loop {
        let page = db.list(&filter).unwrap();
        pages += 1;
        assert!(page.jobs.len() <= 3);
        seen.extend(page.jobs.into_iter().map(|job| job.id));
        match page.next_cursor {
            Some(cursor) => filter.cursor = Some(cursor),
            None => break,
        }
    }
    let expected: Vec<String> = (0..10).rev().map(|n| format!("job-{n:02}")).collect();
    assert_eq!(seen, expected);
    assert_eq!(pages, 4);

    // An exact multiple of the page size ends without an empty extra page.
    let page = db
        .list(&ListFilter {
            limit: 10,
            ..Default::default()
        })
        .unwrap();
    assert_eq!((page.jobs.len(), page.next_cursor), (10, None));
}

fn filters_combine_with_paging(db: TestDb) {
    let db = seeded(db);
    let running = ListFilter {
        status: Some(JobStatus::Running),
        ..Default::default()
    };
    assert_eq!(ids(&db, &running), ["job-02", "job-01", "job-00"]);
    let evaluations = ListFilter {
        job_type: Some("evaluation".into()),
        ..Default::default()
    };
    assert_eq!(
        ids(&db, &evaluations),
        ["job-09", "job-07", "job-05", "job-03", "job-01"]
    );
    let queued_optimizations = ListFilter {
        status: Some(JobStatus::Queued),
        job_type: Some("optimization".into()),
        limit: 2,
        cursor: None,
    };
    let first = db.list(&queued_optimizations).unwrap();
    let first_ids: Vec<_> = first.jobs.iter().map(|j| j.id.as_str()).collect();
    assert_eq!(first_ids, ["job-08", "job-06"]);
    let second = ListFilter {
        cursor: first.next_cursor,
        ..queued_optimizations
    };
    assert_eq!(ids(&db, &second), ["job-04"]);
    assert_eq!(db.list(&second).unwrap().next_cursor, None);
}

fn limits_are_defaulted_and_capped_and_bad_cursors_refused(db: TestDb) {
    let db = seeded(db);
    let zero = ListFilter {
        limit: 0,
        ..Default::default()
    };
    assert_eq!(ids(&db, &zero).len(), 10);
    let huge = ListFilter {
        limit: u32::MAX,
        ..Default::default()
    };
    assert_eq!(ids(&db, &huge).len(), 10);
    for cursor in ["not-a-cursor", "zz", "", "3132"] {
        let filter = ListFilter {
            cursor: Some(cursor.into()),
            ..Default::default()
        };
        let err = db.list(&filter).unwrap_err();
        assert!(
            matches!(err, StoreError::InvalidInput(_)),
            "{cursor}: {err}"
        );
    }
}

fn counts_cover_every_status(db: TestDb) {
    let db = seeded(db);
    db.fail("job-09", "x", &Writer::Operator).unwrap();
    let counts = db.counts_by_status().unwrap();
    assert_eq!(
        counts,
        [
            (JobStatus::Queued, 6),
            (JobStatus::Running, 3),
            (JobStatus::Completed, 0),
            (JobStatus::Failed, 1),
            (JobStatus::Cancelled, 0),
        ]
    );
}

both_backends!(
    pages_walk_every_job_newest_first_exactly_once,
    filters_combine_with_paging,
    limits_are_defaulted_and_capped_and_bad_cursors_refused,
    counts_cover_every_status,
);
