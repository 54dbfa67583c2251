//! A temporary database per test, on either backend, and small helpers to drive jobs.
//!
//! Store tests are written once, as `fn name(db: TestDb)`, and run on both backends by
//! [`both_backends!`]: each emits a module with a `sqlite` and a `postgres` test. The
//! PostgreSQL one skips with a printed reason when the test kit finds no PostgreSQL (and
//! fails under `CI`).

use std::ops::Deref;
use std::path::PathBuf;

use diesel::pg::PgConnection;
use diesel::prelude::*;
use diesel::sqlite::SqliteConnection;
use serde_json::{Map, Value};
use skill_fleet_jobs::{ClaimFilter, Claimed, JobStore, NewJob, StoreOptions};
use skill_fleet_testkit::{PostgresDatabase, TestPostgres};
use skill_fleet_types::Job;
use tempfile::TempDir;

/// Which database a [`TestDb`] runs on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    Sqlite,
    Postgres,
}

/// Where a [`TestDb`]'s database lives; removed on drop, after the store.
enum Place {
    /// An SQLite file in a temporary directory.
    Dir(#[allow(dead_code, reason = "held for its drop")] TempDir),
    /// A PostgreSQL database of its own.
    Postgres(#[allow(dead_code, reason = "held for its drop")] PostgresDatabase),
}

/// A store on a fresh database, removed on drop.
pub struct TestDb {
    pub store: JobStore,
    pub url: String,
    pub backend: Backend,
    // Dropped last: the database outlives the pool.
    place: Place,
}

/// Runs each named `fn name(db: TestDb)` on both backends: `name::sqlite`, `name::postgres`.
macro_rules! both_backends {
    ($($name:ident),* $(,)?) => {
        $(
            mod $name {
                #[test]
                fn sqlite() {
                    super::$name(crate::support::TestDb::sqlite());
                }

                #[test]
                fn postgres() {
                    if let Some(db) = crate::support::TestDb::postgres() {
                        super::$name(db);
                    }
                }
            }
        )*
    };
}
pub(crate) use both_backends;

impl TestDb {
    /// A store on a fresh SQLite file.
    pub fn sqlite() -> TestDb {
        let dir = tempfile::tempdir().expect("temp dir");
        let url = dir.path().join("jobs.db").display().to_string();
        let store = JobStore::open(&url).expect("open store");
        TestDb {
            store,
            url,
            backend: Backend::Sqlite,
            place: Place::Dir(dir),
        }
    }

    /// A store on a fresh PostgreSQL database, `None` (reason printed) when the test kit
    /// finds no PostgreSQL.
    pub fn postgres() -> Option<TestDb> {
        let database = TestPostgres::get()?.database();
        let url = database.url.clone();
        let store = JobStore::open(&url).expect("open store on PostgreSQL");
        Some(TestDb {
            store,
            url,
            backend: Backend::Postgres,
            place: Place::Postgres(database),
        })
    }

    /// Another store (another pool: another server) on the same database.
    pub fn open_with(&self, options: StoreOptions) -> JobStore {
        JobStore::open_with(&self.url, options).expect("open a second store")
    }

    /// Drops the store without any clean-up (as a crash would leave it) and opens it again.
    pub fn reopen(self) -> TestDb {
        let TestDb {
            store,
            url,
            backend,
            place,
        } = self;
        drop(store);
        let store = JobStore::open(&url).expect("reopen store");
        TestDb {
            store,
            url,
            backend,
            place,
        }
    }
}

/// A connection straight to a test database, beside the store, for what the store does not
/// show (counts of rows). Its statements use `$1` placeholders, which both databases read.
#[derive(diesel::MultiConnection)]
pub enum RawConn {
    Postgres(PgConnection),
    Sqlite(SqliteConnection),
}

/// Opens a [`RawConn`] on the database at `url`.
pub fn raw(url: &str) -> RawConn {
    if url.starts_with("postgres://") || url.starts_with("postgresql://") {
        RawConn::Postgres(PgConnection::establish(url).expect("connect to PostgreSQL"))
    } else {
        RawConn::Sqlite(SqliteConnection::establish(url).expect("open SQLite file"))
    }
}

impl Deref for TestDb {
    type Target = JobStore;

    fn deref(&self) -> &JobStore {
        &self.store
    }
}

pub fn metadata(value: Value) -> Map<String, Value> {
    match value {
        Value::Object(map) => map,
        other => panic!("metadata must be an object, got {other}"),
    }
}

pub fn new_job(id: &str, job_type: &str) -> NewJob {
    NewJob {
        id: Some(id.to_owned()),
        job_type: job_type.to_owned(),
        metadata: Map::new(),
        source: "test".to_owned(),
    }
}

/// Creates a job with this id and type.
pub fn create(store: &JobStore, id: &str, job_type: &str) -> Job {
    store.create(&new_job(id, job_type)).expect("create job").0
}

/// Starts the queued job `id` the way workers do, by claiming it: it must be the oldest
/// queued job of its type.
pub fn start(store: &JobStore, id: &str) -> Job {
    start_as(store, id, "test").job
}

/// Like [`start`], claiming as `owner`; the job and its lease.
pub fn start_as(store: &JobStore, id: &str, owner: &str) -> Claimed {
    let filter = ClaimFilter {
        types: vec![store.get(id).expect("job to start").job_type],
        ..ClaimFilter::default()
    };
    let claimed = store
        .claim(&filter, owner)
        .expect("claim")
        .unwrap_or_else(|| panic!("`{id}` is not queued"));
    assert_eq!(
        claimed.job.id, id,
        "`{id}` is not the oldest queued job of its type"
    );
    claimed
}

/// The repository's `tests/fixtures`.
pub fn fixtures() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures")
}
