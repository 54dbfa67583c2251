//! A temporary database per test, and small helpers to drive jobs.

use std::ops::Deref;
use std::path::PathBuf;

use serde_json::{Map, Value};
use skill_fleet_jobs::{ClaimFilter, Claimed, JobStore, NewJob};
use skill_fleet_types::Job;
use tempfile::TempDir;

/// A store on a fresh database file in a temporary directory, removed on drop.
pub struct TestDb {
    pub store: JobStore,
    pub url: String,
    // Dropped last: the directory outlives the pool.
    dir: TempDir,
}

impl TestDb {
    pub fn new() -> TestDb {
        let dir = tempfile::tempdir().expect("temp dir");
        let url = dir.path().join("jobs.db").display().to_string();
        let store = JobStore::open(&url).expect("open store");
        TestDb { store, url, dir }
    }

    /// Drops the store without any clean-up (as a crash would leave it) and opens it again.
    pub fn reopen(self) -> TestDb {
        let TestDb { store, url, dir } = self;
        drop(store);
        let store = JobStore::open(&url).expect("reopen store");
        TestDb { store, url, dir }
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
