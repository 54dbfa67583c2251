//! Property tests of the legacy import: arbitrary export files and session directories give
//! an error or a per-record report, never a panic; a file rejected as a whole writes nothing;
//! every job that is imported can be read back.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::Path;

use diesel::prelude::*;
use proptest::prelude::*;
use proptest::test_runner::{Config, RngSeed, TestRunner};
use serde_json::{Map, Value, json};
use skill_fleet_jobs::{JobStore, LEGACY_SOURCE, ListFilter, StoreError};

/// Seed of the generated cases.
const SEED: u64 = 0x5eed0004;

/// Few cases: each one is a transaction on a real SQLite file.
fn runner(cases: u32) -> TestRunner {
    TestRunner::new(Config {
        cases,
        failure_persistence: None,
        // The same cases every run (`PROPTEST_RNG_SEED` explores others).
        rng_seed: match Config::default().rng_seed {
            RngSeed::Random => RngSeed::Fixed(SEED),
            chosen => chosen,
        },
        ..Config::default()
    })
}

/// One store for all the cases of a test (the properties compare counts before and after).
struct Db {
    store: JobStore,
    url: String,
    dir: tempfile::TempDir,
}

impl Db {
    fn new() -> Db {
        let dir = tempfile::tempdir().unwrap();
        let url = dir.path().join("jobs.db").display().to_string();
        let store = JobStore::open(&url).unwrap();
        Db { store, url, dir }
    }

    /// (jobs, rows of `legacy_imports`, the store's change counter).
    fn counts(&self) -> (u64, i64, u64) {
        #[derive(QueryableByName)]
        struct Count {
            #[diesel(sql_type = diesel::sql_types::BigInt)]
            n: i64,
        }
        let jobs = self
            .store
            .counts_by_status()
            .unwrap()
            .into_iter()
            .map(|(_, n)| n)
            .sum();
        let mut conn = SqliteConnection::establish(&self.url).unwrap();
        let imports = diesel::sql_query("SELECT COUNT(*) AS n FROM legacy_imports")
            .get_result::<Count>(&mut conn)
            .unwrap()
            .n;
        (jobs, imports, self.store.change_counter().unwrap())
    }

    /// Every job in the store can be read back, and paging through the list (small pages,
    /// so cursors are used) yields each job exactly once.
    fn all_readable(&self) -> Result<(), TestCaseError> {
        let mut cursor = None;
        let mut seen = std::collections::BTreeSet::new();
        loop {
            let page = self
                .store
                .list(&ListFilter {
                    limit: 7,
                    cursor,
                    ..ListFilter::default()
                })
                .map_err(|err| TestCaseError::fail(format!("list failed: {err}")))?;
            for job in &page.jobs {
                let read = self
                    .store
                    .get(&job.id)
                    .map_err(|err| TestCaseError::fail(format!("get {} failed: {err}", job.id)))?;
                prop_assert_eq!(&read.source, LEGACY_SOURCE);
                prop_assert!((0.0..=1.0).contains(&read.progress.progress));
                prop_assert!(seen.insert(job.id.clone()), "{} listed twice", job.id);
            }
            match page.next_cursor {
                Some(next) => cursor = Some(next),
                None => break,
            }
        }
        prop_assert_eq!(seen.len() as u64, self.counts().0);
        Ok(())
    }
}

fn json_value() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::from),
        any::<i64>().prop_map(Value::from),
        any::<f64>()
            .prop_filter("finite", |f| f.is_finite())
            .prop_map(Value::from),
        ".{0,16}".prop_map(Value::from),
    ];
    leaf.prop_recursive(3, 16, 4, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..4).prop_map(Value::Array),
            prop::collection::btree_map("[a-z_]{0,8}", inner, 0..4)
                .prop_map(|map| Value::Object(map.into_iter().collect())),
        ]
    })
}

/// Timestamps in every form the importer reads, at the edges of what SQLite and chrono hold.
fn timestamp() -> impl Strategy<Value = Value> {
    prop_oneof![
        Just(json!("2026-10-01T09:00:00")),
        Just(json!("2026-10-02T10:00:00+00:00")),
        Just(json!("2026-10-03 08:00:00.123456")),
        Just(json!("2026-10-03T08:00:00.1234567891Z")),
        Just(json!("0000-01-01T00:00:00Z")),
        Just(json!("0001-01-01T00:00:00Z")),
        Just(json!("9999-12-31T23:59:59.999999999Z")),
        Just(json!("+10000-01-01T00:00:00")),
        Just(json!("-0001-01-01 00:00:00")),
        Just(json!("2026-10-01T09:00:00+23:59")),
        (0i64..4_102_444_800).prop_map(Value::from),
        (-1e13..1e13f64).prop_map(Value::from),
        prop::sample::select(vec![
            -62_135_596_800.0,
            -62_135_596_801.0,
            253_402_300_799.0,
            253_402_300_800.0,
            -8_334_632_851_200.0,
            8_210_298_412_799.0,
            9_223_372_036_854.0,
            1e300,
            -1e300,
            5e-324,
        ])
        .prop_map(Value::from),
    ]
}

/// Junk for any field: wrong types, out-of-range numbers, long strings.
fn junk() -> impl Strategy<Value = Value> {
    prop_oneof![
        json_value(),
        any::<u64>().prop_map(Value::from),
        (-1e20..1e20f64).prop_map(Value::from),
        Just(json!(1e308)),
        Just(json!(-0.0)),
        Just(json!("0.5")),
        Just(json!("x".repeat(70_000))),
        ".{0,80}".prop_map(Value::from),
    ]
}

fn progress() -> impl Strategy<Value = Value> {
    prop_oneof![
        (0.0..=1.0f64).prop_map(Value::from),
        (0.0..=100.0f64).prop_map(Value::from),
        (
            prop::option::of(0.0..=1.0f64),
            prop::option::of(0.0..=100.0f64),
            prop::option::of("[a-z_]{1,12}"),
            prop::option::of(".{0,20}"),
            prop::option::of(0.0..1e6f64),
            prop::option::of(-1e6..1e6f64),
            prop::option::of(0.0..1e6f64),
        )
            .prop_map(
                |(progress, percent, step, message, cost_usd, metric, eta_seconds)| {
                    json!({"progress": progress, "percent": percent, "step": step,
                       "message": message, "cost_usd": cost_usd, "metric": metric,
                       "eta_seconds": eta_seconds})
                }
            ),
    ]
}

const FIELDS: &[&str] = &[
    "id",
    "job_id",
    "type",
    "job_type",
    "status",
    "progress",
    "progress_percent",
    "current_phase",
    "progress_message",
    "result",
    "result_path",
    "error",
    "created_at",
    "updated_at",
    "metadata",
    "user_id",
];

/// A legacy record: a well-formed one in one of the shapes the old manager wrote, then up
/// to three of its fields replaced by junk.
fn record() -> impl Strategy<Value = Value> {
    let base = (
        (
            prop::sample::select(vec!["id", "job_id"]),
            "[A-Za-z0-9_-]{1,12}",
            prop::option::of((
                prop::sample::select(vec!["type", "job_type"]),
                prop::sample::select(vec!["optimization", "evaluation", "x-1"]),
            )),
            prop::sample::select(vec![
                "queued",
                "pending",
                "pending_review",
                "running",
                "completed",
                "failed",
                "cancelled",
                "canceled",
            ]),
            prop::option::of(progress()),
        ),
        (
            prop::option::of(0.0..=100.0f64),
            prop::option::of("[a-z_]{1,12}"),
            prop::option::of(".{0,20}"),
            prop::option::of(json_value()),
            prop::option::of(".{0,20}"),
            prop::option::of(json_value()),
        ),
        (
            prop::option::of(timestamp()),
            prop::option::of(timestamp()),
            prop::option::of(json_value()),
            prop::option::of(json_value()),
        ),
    );
    let mutations = prop::collection::vec((prop::sample::select(FIELDS), junk()), 0..3);
    (base, mutations).prop_map(|((a, b, c), mutations)| {
        let (id_key, id, job_type, status, progress) = a;
        let (percent, phase, progress_message, result, result_path, error) = b;
        let (created_at, updated_at, metadata, user_id) = c;
        let mut record = Map::new();
        record.insert(id_key.to_owned(), json!(id));
        if let Some((key, job_type)) = job_type {
            record.insert(key.to_owned(), json!(job_type));
        }
        record.insert("status".to_owned(), json!(status));
        let optional = [
            ("progress", progress),
            ("progress_percent", percent.map(Value::from)),
            ("current_phase", phase.map(Value::from)),
            ("progress_message", progress_message.map(Value::from)),
            ("result", result),
            ("result_path", result_path.map(Value::from)),
            ("error", error),
            ("created_at", created_at),
            ("updated_at", updated_at),
            ("metadata", metadata),
            ("user_id", user_id),
        ];
        for (key, value) in optional {
            if let Some(value) = value {
                record.insert(key.to_owned(), value);
            }
        }
        for (key, value) in mutations {
            record.insert(key.to_owned(), value);
        }
        Value::Object(record)
    })
}

/// An export file's bytes: random bytes, random JSON, an array of records (possibly cut).
#[derive(Debug, Clone)]
enum Export {
    Bytes(Vec<u8>),
    Json(Value),
    Records(Vec<Value>),
    Truncated(Vec<Value>, prop::sample::Index),
}

fn export() -> impl Strategy<Value = Export> {
    prop_oneof![
        1 => prop::collection::vec(any::<u8>(), 0..200).prop_map(Export::Bytes),
        1 => json_value().prop_map(Export::Json),
        3 => prop::collection::vec(record(), 0..8).prop_map(Export::Records),
        1 => prop::collection::vec(record(), 1..4)
            .prop_flat_map(|records| (Just(records), any::<prop::sample::Index>()))
            .prop_map(|(records, cut)| Export::Truncated(records, cut)),
    ]
}

fn import(db: &Db, path: &Path, expected_records: Option<usize>) -> Result<(), TestCaseError> {
    let before = db.counts();
    let result = db.store.import_legacy(path);
    let after = db.counts();
    match result {
        Ok(report) => {
            if let Some(records) = expected_records {
                prop_assert_eq!(report.imported + report.skipped + report.failed, records);
            }
            prop_assert_eq!(report.errors.len(), report.failed);
            prop_assert!(report.errors.iter().all(|e| !e.is_empty()));
            prop_assert_eq!(after.0 - before.0, report.imported as u64);
            prop_assert_eq!(after.1, before.1 + 1, "one import row per import");
            prop_assert_eq!(after.2 > before.2, report.imported > 0);
        }
        Err(err) => {
            prop_assert!(
                matches!(err, StoreError::InvalidInput(_) | StoreError::Io { .. }),
                "a whole-file rejection is a clear error, got {err:?}"
            );
            prop_assert!(
                err.to_string().contains("legacy export")
                    || err.to_string().contains(&path.display().to_string()),
                "{err}"
            );
            prop_assert_eq!(after, before, "a rejected file writes nothing: {}", err);
        }
    }
    db.all_readable()
}

#[test]
fn arbitrary_export_files_are_rejected_whole_or_reported_per_record() {
    let db = Db::new();
    let path = db.dir.path().join("export.json");
    runner(48)
        .run(&export(), |export| {
            let (bytes, records) = match &export {
                Export::Bytes(bytes) => (bytes.clone(), None),
                Export::Json(value) => (
                    value.to_string().into_bytes(),
                    value.as_array().map(Vec::len),
                ),
                Export::Records(records) => (
                    Value::from(records.clone()).to_string().into_bytes(),
                    Some(records.len()),
                ),
                Export::Truncated(records, cut) => {
                    let text = serde_json::to_vec_pretty(&Value::from(records.clone())).unwrap();
                    (text[..cut.index(text.len())].to_vec(), None)
                }
            };
            std::fs::write(&path, &bytes).unwrap();
            let result = import(&db, &path, records);
            // A JSON array always imports (bad records are reported, not fatal); a cut file
            // or any other JSON never does.
            let whole = db.store.import_legacy(&path);
            match export {
                Export::Records(_) => prop_assert!(whole.is_ok(), "{:?}", whole.err()),
                Export::Truncated(..) => prop_assert!(whole.is_err()),
                Export::Json(value) => prop_assert_eq!(whole.is_ok(), value.is_array()),
                Export::Bytes(_) => {}
            }
            result
        })
        .unwrap();
}

#[test]
fn a_second_import_of_the_same_file_imports_nothing_new() {
    let db = Db::new();
    let path = db.dir.path().join("export.json");
    runner(24)
        .run(&prop::collection::vec(record(), 0..8), |records| {
            std::fs::write(&path, Value::from(records).to_string()).unwrap();
            let first = db.store.import_legacy(&path).unwrap();
            let counter = db.store.change_counter().unwrap();
            let second = db.store.import_legacy(&path).unwrap();
            prop_assert_eq!(second.imported, 0);
            prop_assert_eq!(second.skipped, first.imported + first.skipped);
            prop_assert_eq!(second.failed, first.failed);
            prop_assert_eq!(db.store.change_counter().unwrap(), counter);
            Ok(())
        })
        .unwrap();
}

/// One file of a session directory: its name and bytes.
fn session_file() -> impl Strategy<Value = (String, Vec<u8>)> {
    let name = prop_oneof![
        "[a-f0-9-]{1,36}\\.json",
        "[^/\\x00]{1,20}\\.json",
        "[a-z]{1,8}\\.(txt|JSON|json\\.bak)",
    ];
    let bytes = prop_oneof![
        prop::collection::vec(any::<u8>(), 0..100),
        record().prop_map(|r| r.to_string().into_bytes()),
        json_value().prop_map(|v| v.to_string().into_bytes()),
    ];
    (name, bytes)
}

#[test]
fn arbitrary_session_directories_are_reported_per_file() {
    let db = Db::new();
    let case = std::cell::Cell::new(0);
    runner(24)
        .run(&prop::collection::vec(session_file(), 0..6), |files| {
            case.set(case.get() + 1);
            let dir = db.dir.path().join(format!("sessions-{}", case.get()));
            std::fs::create_dir(&dir).unwrap();
            let mut json_files = std::collections::BTreeSet::new();
            for (name, bytes) in &files {
                if std::fs::write(dir.join(name), bytes).is_ok() && name.ends_with(".json") {
                    json_files.insert(name.clone());
                }
            }
            let before = db.counts();
            let report = db.store.import_legacy(&dir);
            let report =
                report.map_err(|err| TestCaseError::fail(format!("a directory imports: {err}")))?;
            prop_assert_eq!(
                report.imported + report.skipped + report.failed,
                json_files.len()
            );
            prop_assert_eq!(db.counts().0 - before.0, report.imported as u64);
            db.all_readable()
        })
        .unwrap();
}
