//! The per-job cap of progress history (`StoreOptions::max_history_rows_per_job`): thinning
//! keeps the first row, step changes, checkpoints, terminal states and the newest rows, the
//! count never passes the cap, and history cursors stay valid across thinning.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use skill_fleet_jobs::Writer;

use std::collections::BTreeSet;

use diesel::prelude::*;
use diesel::sql_types::BigInt;
use serde_json::json;
use skill_fleet_jobs::{JobStore, NewJob, ProgressWrite, StoreOptions};
use skill_fleet_types::{Progress, ProgressRecord, ProgressUpdate};

use crate::support::{TestDb, both_backends, raw};

/// A store with a history cap of `cap` rows per job on a fresh database.
struct Capped {
    store: JobStore,
    url: String,
    _db: TestDb,
}

fn capped(db: TestDb, cap: u64) -> Capped {
    let options = StoreOptions {
        max_history_rows_per_job: cap,
        ..StoreOptions::default()
    };
    Capped {
        store: db.open_with(options),
        url: db.url.clone(),
        _db: db,
    }
}

fn create(store: &JobStore, id: &str) {
    store
        .create(&NewJob {
            id: Some(id.to_owned()),
            job_type: "optimization".to_owned(),
            metadata: Default::default(),
            source: "test".to_owned(),
        })
        .unwrap();
}

/// The `i`-th update of a job: its message names `i`, so a row tells which update it was.
fn update(i: usize, step: &str) -> Progress {
    Progress {
        progress: i as f64 / 10_000.0,
        step: Some(step.to_owned()),
        message: Some(format!("update {i}")),
        cost_usd: i as f64 * 0.01,
        metric: None,
        eta_seconds: None,
    }
}

/// Which update a history row is.
fn index(record: &ProgressRecord) -> usize {
    record
        .message
        .as_deref()
        .and_then(|m| m.strip_prefix("update "))
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("unexpected row {record:?}"))
}

/// The whole history of a job, read page by page through the public cursor.
fn history(store: &JobStore, id: &str) -> Vec<ProgressRecord> {
    let mut out = Vec::new();
    let mut after = None;
    loop {
        let page = store.progress_history(id, after, 37).unwrap();
        out.extend(page.records);
        match page.next_after {
            Some(next) => after = Some(next),
            None => return out,
        }
    }
}

/// `jobs.history_rows` and the real row count, read straight from the database.
fn counts(url: &str, id: &str) -> (i64, i64) {
    #[derive(QueryableByName)]
    struct Counts {
        #[diesel(sql_type = BigInt)]
        stored: i64,
        #[diesel(sql_type = BigInt)]
        actual: i64,
    }
    let mut conn = raw(url);
    let counts: Counts = diesel::sql_query(
        "SELECT history_rows AS stored, \
         (SELECT count(*) FROM job_progress WHERE job_id = jobs.id) AS actual \
         FROM jobs WHERE id = $1",
    )
    .bind::<diesel::sql_types::Text, _>(id)
    .get_result(&mut conn)
    .unwrap();
    (counts.stored, counts.actual)
}

fn a_long_history_is_thinned_to_the_cap_keeping_what_matters(db: TestDb) {
    let cap = 100;
    let db = capped(db, cap);
    create(&db.store, "j");
    create(&db.store, "other");
    let total = 1000;
    let mut step = String::from("step-0");
    let mut step_changes = Vec::new();
    let mut checkpoints = Vec::new();
    let mut max_seen = 0;
    for i in 0..total {
        if i > 0 && i % 97 == 0 {
            step = format!("step-{i}");
            step_changes.push(i);
        }
        let checkpoint = (i % 131 == 5).then(|| json!({"trial": i}));
        if checkpoint.is_some() {
            checkpoints.push(i);
        }
        // Another job in the same batches, far below the cap, is never thinned.
        let writes = [
            ProgressWrite {
                writer: Writer::Operator,
                job_id: "j".to_owned(),
                progress: update(i, &step),
                checkpoint,
            },
            ProgressWrite {
                writer: Writer::Operator,
                job_id: "other".to_owned(),
                progress: update(i, "only"),
                checkpoint: None,
            },
        ];
        if i % 10 == 0 {
            // Every tenth tick the other job reports; otherwise `j` alone.
            assert_eq!(db.store.write_progress_batch(&writes).unwrap().written, 2);
        } else {
            assert_eq!(
                db.store.write_progress_batch(&writes[..1]).unwrap().written,
                1
            );
        }
        let (stored, actual) = counts(&db.url, "j");
        assert_eq!(stored, actual, "row count drifted after update {i}");
        max_seen = max_seen.max(actual);
    }
    // No slack: thinning runs in the write's own transaction.
    assert!(max_seen <= cap as i64, "{max_seen} rows, cap {cap}");
    assert!(
        max_seen == cap as i64,
        "the cap was never reached: {max_seen}"
    );

    let rows = history(&db.store, "j");
    let kept: Vec<usize> = rows.iter().map(index).collect();
    assert!(rows.len() <= cap as usize);
    // In time order, with no duplicates.
    assert!(kept.windows(2).all(|w| w[0] < w[1]), "{kept:?}");
    assert!(rows.windows(2).all(|w| w[0].seq < w[1].seq));
    assert!(rows.windows(2).all(|w| w[0].created_at <= w[1].created_at));
    let kept_set: BTreeSet<usize> = kept.iter().copied().collect();
    assert_eq!(kept.first(), Some(&0), "the first row is kept");
    assert_eq!(kept.last(), Some(&(total - 1)), "the newest row is kept");
    for i in &step_changes {
        assert!(
            kept_set.contains(i),
            "step change {i} was thinned: {kept:?}"
        );
    }
    for i in &checkpoints {
        assert!(kept_set.contains(i), "checkpoint {i} was thinned: {kept:?}");
    }
    // The newest half of the cap is dense: every one of those updates is there.
    let dense = cap as usize / 2;
    for i in total - dense..total {
        assert!(kept_set.contains(&i), "recent update {i} was thinned");
    }
    // Older history is sparser than recent history.
    let old = kept.iter().filter(|&&i| i < total / 2).count();
    let recent = kept.len() - old;
    assert!(old < recent, "old {old} rows, recent {recent}: {kept:?}");
    // Something was actually thinned in the old part, not just cut off at the end.
    assert!(
        kept.iter()
            .any(|&i| i > 0 && i < 100 && !step_changes.contains(&i))
    );

    // The other job kept all of its 100 rows (it is exactly at the cap, not over it).
    let other = history(&db.store, "other");
    assert_eq!(other.len(), 100);
    assert_eq!(counts(&db.url, "other"), (100, 100));
}

fn many_writes_of_one_job_in_one_batch_are_capped_too(db: TestDb) {
    let cap = 10;
    let db = capped(db, cap);
    create(&db.store, "a");
    create(&db.store, "b");
    let writes: Vec<ProgressWrite> = (0..50)
        .flat_map(|i| {
            ["a", "b"].map(|id| ProgressWrite {
                writer: Writer::Operator,
                job_id: id.to_owned(),
                progress: update(i, "s"),
                checkpoint: None,
            })
        })
        .collect();
    assert_eq!(db.store.write_progress_batch(&writes).unwrap().written, 100);
    for id in ["a", "b"] {
        let kept: Vec<usize> = history(&db.store, id).iter().map(index).collect();
        assert!(kept.len() <= cap as usize, "{id}: {kept:?}");
        assert_eq!(kept.first(), Some(&0));
        assert_eq!(kept.last(), Some(&49));
        let (stored, actual) = counts(&db.url, id);
        assert_eq!(stored, actual);
    }
}

fn durable_single_writes_and_terminal_states_are_capped_and_kept(db: TestDb) {
    let cap = 20;
    let db = capped(db, cap);
    create(&db.store, "j");
    let report = |i: usize, checkpoint: bool| ProgressUpdate {
        progress: Some(i as f64 / 10_000.0),
        message: Some(format!("update {i}")),
        checkpoint: checkpoint.then(|| json!({"at": i})),
        ..ProgressUpdate::default()
    };
    for i in 0..60 {
        db.store
            .record_progress("j", &report(i, i == 7), None, &Writer::Operator)
            .unwrap();
    }
    db.store.fail("j", "boom", &Writer::Operator).unwrap();
    let failed_row = history(&db.store, "j").last().unwrap().seq;
    db.store.resume("j").unwrap();
    for i in 60..200 {
        db.store
            .record_progress("j", &report(i, false), None, &Writer::Operator)
            .unwrap();
    }
    let rows = history(&db.store, "j");
    assert!(rows.len() <= cap as usize, "{} rows", rows.len());
    assert!(
        rows.iter().any(|r| r.seq == failed_row),
        "the terminal state was thinned"
    );
    let kept: BTreeSet<usize> = rows
        .iter()
        .filter(|r| r.seq != failed_row)
        .map(index)
        .collect();
    assert!(
        kept.contains(&0) && kept.contains(&7) && kept.contains(&199),
        "{kept:?}"
    );
    let (stored, actual) = counts(&db.url, "j");
    assert_eq!(stored, actual);
}

fn a_cursor_on_a_thinned_row_still_pages_on(db: TestDb) {
    let db = capped(db, 10);
    create(&db.store, "j");
    let write = |i: usize| {
        db.store
            .write_progress_batch(&[ProgressWrite {
                writer: Writer::Operator,
                job_id: "j".to_owned(),
                progress: update(i, "s"),
                checkpoint: None,
            }])
            .unwrap();
    };
    for i in 0..10 {
        write(i);
    }
    let first = db.store.progress_history("j", None, 3).unwrap();
    assert_eq!(
        first.records.iter().map(index).collect::<Vec<_>>(),
        [0, 1, 2]
    );
    let cursor = first.next_after.unwrap();
    // Over the cap: the older half is thinned, and the row the cursor names goes with it.
    write(10);
    let all = history(&db.store, "j");
    assert!(
        all.iter().all(|r| r.seq != cursor),
        "the cursor's row was expected to be thinned: {all:?}"
    );
    // The next page starts right after the cursor's place: every row left after it, once.
    let mut after = Some(cursor);
    let mut rest = Vec::new();
    while let Some(cursor) = after {
        let page = db.store.progress_history("j", Some(cursor), 2).unwrap();
        rest.extend(page.records.iter().map(index));
        after = page.next_after;
    }
    let expected: Vec<usize> = all.iter().map(index).filter(|&i| i > 2).collect();
    assert_eq!(rest, expected);
    assert!(!rest.is_empty());
}

fn protected_rows_are_never_deleted_even_past_the_cap(db: TestDb) {
    let cap = 10;
    let db = capped(db, cap);
    create(&db.store, "j");
    // 30 step changes: more protected rows than the cap.
    for i in 0..30 {
        db.store
            .write_progress_batch(&[ProgressWrite {
                writer: Writer::Operator,
                job_id: "j".to_owned(),
                progress: update(i, &format!("step-{i}")),
                checkpoint: None,
            }])
            .unwrap();
    }
    let kept: Vec<usize> = history(&db.store, "j").iter().map(index).collect();
    assert_eq!(kept, (0..30).collect::<Vec<_>>());
    // Plain updates after that: they may pile up by a quarter of the cap before the next
    // thinning (which then removes them down to the protected rows and at most one more).
    for i in 30..100 {
        db.store
            .write_progress_batch(&[ProgressWrite {
                writer: Writer::Operator,
                job_id: "j".to_owned(),
                progress: update(i, "step-29"),
                checkpoint: None,
            }])
            .unwrap();
        let rows = history(&db.store, "j");
        assert!(
            rows.len() <= 30 + 1 + cap as usize / 4,
            "{} rows after update {i}",
            rows.len()
        );
        let kept: BTreeSet<usize> = rows.iter().map(index).collect();
        assert!((0..30).all(|i| kept.contains(&i)), "{kept:?}");
    }
    let (stored, actual) = counts(&db.url, "j");
    assert_eq!(stored, actual);
}

#[test]
fn a_cap_of_zero_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let url = dir.path().join("jobs.db").display().to_string();
    let err = JobStore::open_with(
        &url,
        StoreOptions {
            max_history_rows_per_job: 0,
            ..StoreOptions::default()
        },
    )
    .unwrap_err();
    assert!(
        err.to_string().contains("max history rows per job"),
        "{err}"
    );
}

#[test]
fn sqlite_migration_counts_existing_history_and_marks_terminal_rows() {
    use diesel::connection::SimpleConnection;
    use diesel_migrations::MigrationHarness;

    let dir = tempfile::tempdir().unwrap();
    let url = dir.path().join("old.db").display().to_string();
    // A database as the server before the cap left it: the first four migrations, with
    // history.
    let mut conn = SqliteConnection::establish(&url).unwrap();
    for _ in 0..4 {
        conn.run_next_migration(skill_fleet_jobs::MIGRATIONS)
            .unwrap();
    }
    conn.batch_execute(
        "INSERT INTO jobs (id, job_type, status, source, create_body, created_at, updated_at, \
             version) VALUES \
             ('done', 'optimization', 'completed', 't', '{}', '2026-01-01 00:00:00', \
              '2026-01-01 00:00:00', 1), \
             ('run', 'optimization', 'running', 't', '{}', '2026-01-01 00:00:00', \
              '2026-01-01 00:00:00', 2); \
         INSERT INTO job_progress (job_id, step, progress, message, cost_usd, created_at) VALUES \
             ('done', 's', 0.1, 'update 0', 0, '2026-01-01 00:00:01'), \
             ('run', 's', 0.1, 'update 0', 0, '2026-01-01 00:00:01'), \
             ('done', 's', 0.2, 'update 1', 0, '2026-01-01 00:00:02'), \
             ('run', 's', 0.2, 'update 1', 0, '2026-01-01 00:00:02'), \
             ('done', 's', 1.0, 'update 2', 0, '2026-01-01 00:00:03');",
    )
    .unwrap();
    drop(conn);

    let options = StoreOptions {
        max_history_rows_per_job: 2,
        ..StoreOptions::default()
    };
    let store = JobStore::open_with(&url, options).unwrap();
    assert_eq!(counts(&url, "done"), (3, 3));
    assert_eq!(counts(&url, "run"), (2, 2));
    #[derive(QueryableByName)]
    struct Flags {
        #[diesel(sql_type = diesel::sql_types::Text)]
        job_id: String,
        #[diesel(sql_type = diesel::sql_types::Integer)]
        flags: i32,
    }
    let mut conn = SqliteConnection::establish(&url).unwrap();
    let flags: Vec<(String, i32)> =
        diesel::sql_query("SELECT job_id, flags FROM job_progress ORDER BY seq")
            .load::<Flags>(&mut conn)
            .unwrap()
            .into_iter()
            .map(|row| (row.job_id, row.flags))
            .collect();
    let expected = [
        ("done", 0),
        ("run", 0),
        ("done", 0),
        ("run", 0),
        ("done", 2),
    ]
    .map(|(id, flags)| (id.to_owned(), flags));
    assert_eq!(flags, expected);

    // The next write counts on from there and thins at once: 3 rows, cap 2.
    store
        .write_progress_batch(&[ProgressWrite {
            writer: Writer::Operator,
            job_id: "run".to_owned(),
            progress: update(2, "s"),
            checkpoint: None,
        }])
        .unwrap();
    let kept: Vec<usize> = history(&store, "run").iter().map(index).collect();
    assert_eq!(kept, [0, 2]);
    assert_eq!(counts(&url, "run"), (2, 2));
}

both_backends!(
    a_long_history_is_thinned_to_the_cap_keeping_what_matters,
    many_writes_of_one_job_in_one_batch_are_capped_too,
    durable_single_writes_and_terminal_states_are_capped_and_kept,
    a_cursor_on_a_thinned_row_still_pages_on,
    protected_rows_are_never_deleted_even_past_the_cap,
);
