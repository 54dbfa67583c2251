//! Import of the old Python job manager's jobs, from both kinds of fixture.

use diesel::prelude::*;
use serde_json::json;
use skill_fleet_jobs::{IMPORTED_RUNNING_ERROR, LEGACY_SOURCE, StoreError};
use skill_fleet_types::JobStatus;

use crate::support::{TestDb, both_backends, fixtures, raw};

fn import_rows(url: &str) -> Vec<(String, i32, i32, i32)> {
    use diesel::sql_types::{Integer, Text};
    #[derive(QueryableByName)]
    struct Row {
        #[diesel(sql_type = Text)]
        path: String,
        #[diesel(sql_type = Integer)]
        imported: i32,
        #[diesel(sql_type = Integer)]
        skipped: i32,
        #[diesel(sql_type = Integer)]
        failed: i32,
    }
    let mut conn = raw(url);
    diesel::sql_query("SELECT path, imported, skipped, failed FROM legacy_imports ORDER BY id")
        .load::<Row>(&mut conn)
        .unwrap()
        .into_iter()
        .map(|r| (r.path, r.imported, r.skipped, r.failed))
        .collect()
}

fn a_json_export_is_imported_once_with_bad_records_reported(db: TestDb) {
    let path = fixtures().join("legacy_export.json");
    let report = db.import_legacy(&path).unwrap();
    assert_eq!(
        (report.imported, report.skipped, report.failed),
        (4, 0, 2),
        "{report:?}"
    );
    assert_eq!(report.errors.len(), 2);
    assert!(report.errors[0].contains("[4]") && report.errors[0].contains("not a json object"));
    assert!(report.errors[1].contains("[5]") && report.errors[1].contains("invalid job id"));

    let done = db.get("legacy-opt-1").unwrap();
    assert_eq!(done.status, JobStatus::Completed);
    assert_eq!(done.source, LEGACY_SOURCE);
    assert_eq!(done.result, Some(json!({"score": 0.81})));
    assert_eq!(
        done.result_path.as_deref(),
        Some("results/legacy-opt-1.json")
    );
    assert_eq!(done.metadata["optimizer"], "miprov2");
    assert_eq!(
        done.metadata["user_id"], "u-17",
        "unknown fields go to metadata"
    );
    assert_eq!(done.completed_at, Some(done.updated_at));
    assert_eq!(done.created_at.to_rfc3339(), "2026-10-01T09:00:00+00:00");

    let failed = db.get("legacy-eval-2").unwrap();
    assert_eq!(
        (failed.job_type.as_str(), failed.status),
        ("evaluation", JobStatus::Failed)
    );
    assert_eq!(failed.progress.progress, 0.4, "40 is read as a percentage");
    assert_eq!(failed.error.as_deref(), Some("rate limited by provider"));

    let pending = db.get("legacy-opt-3").unwrap();
    assert_eq!(
        (pending.job_type.as_str(), pending.status),
        ("optimization", JobStatus::Queued)
    );
    assert_eq!(pending.progress.step.as_deref(), Some("queued"));
    assert_eq!(pending.attempt, 0);

    let running = db.get("legacy-opt-4").unwrap();
    assert_eq!(running.status, JobStatus::Failed);
    assert_eq!(running.error.as_deref(), Some(IMPORTED_RUNNING_ERROR));
    assert_eq!(running.progress.cost_usd, 1.25);
    // It can be queued again on demand.
    assert_eq!(db.resume("legacy-opt-4").unwrap().status, JobStatus::Queued);

    let again = db.import_legacy(&path).unwrap();
    assert_eq!((again.imported, again.skipped, again.failed), (0, 4, 2));
    let path_text = path.display().to_string();
    assert_eq!(
        import_rows(&db.url),
        [(path_text.clone(), 4, 0, 2), (path_text, 0, 4, 2)]
    );
}

fn a_session_directory_is_imported_and_a_broken_file_skipped(db: TestDb) {
    let dir = fixtures().join("legacy_sessions");
    let report = db.import_legacy(&dir).unwrap();
    assert_eq!(
        (report.imported, report.skipped, report.failed),
        (3, 0, 1),
        "{report:?}"
    );
    assert!(
        report.errors[0].contains("b2c3d4e5-1111-4222-8333-444455556666.json"),
        "{:?}",
        report.errors
    );

    let hitl = db.get("5f0c1a52-3d0e-4b6a-9a53-0d6f2f4b1c01").unwrap();
    assert_eq!(
        (hitl.status, hitl.job_type.as_str()),
        (JobStatus::Queued, "optimization")
    );
    assert_eq!(hitl.progress.progress, 0.35);
    assert_eq!(hitl.progress.step.as_deref(), Some("understanding"));
    assert_eq!(
        hitl.progress.message.as_deref(),
        Some("waiting for the user to confirm the plan")
    );
    assert_eq!(
        hitl.metadata["task_description"],
        "create a skill for parsing invoices"
    );
    assert_eq!(hitl.metadata["hitl_type"], "confirm");

    let done = db.get("7a1d9e33-8c2b-4f7e-b0c4-1e2f3a4b5c02").unwrap();
    assert_eq!(done.status, JobStatus::Completed);
    assert_eq!(done.progress.progress, 1.0);
    assert_eq!(done.result.unwrap()["quality"], 0.92);

    let running = db.get("9c3e4f55-0a1b-4c2d-8e3f-2a3b4c5d6e03").unwrap();
    assert_eq!(running.status, JobStatus::Failed);
    assert_eq!(running.error.as_deref(), Some(IMPORTED_RUNNING_ERROR));

    let counter = db.change_counter().unwrap();
    let again = db.import_legacy(&dir).unwrap();
    assert_eq!((again.imported, again.skipped, again.failed), (0, 3, 1));
    assert_eq!(
        db.change_counter().unwrap(),
        counter,
        "nothing new, nothing changed"
    );
    assert_eq!(import_rows(&db.url).len(), 2);
}

fn unreadable_sources_are_errors(db: TestDb) {
    let missing = fixtures().join("no-such-export.json");
    assert!(matches!(
        db.import_legacy(&missing),
        Err(StoreError::Io { .. })
    ));
    let dir = tempfile::tempdir().unwrap();
    let not_array = dir.path().join("object.json");
    std::fs::write(&not_array, r#"{"id": "x"}"#).unwrap();
    let err = db.import_legacy(&not_array).unwrap_err();
    assert!(matches!(err, StoreError::InvalidInput(_)), "{err}");
    assert!(import_rows(&db.url).is_empty());
}

both_backends!(
    a_json_export_is_imported_once_with_bad_records_reported,
    a_session_directory_is_imported_and_a_broken_file_skipped,
    unreadable_sources_are_errors,
);
