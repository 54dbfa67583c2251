//! Artifacts in the store: chunked uploads that are whole or absent, fenced like every worker
//! write, bounded per job, replaced by name, listed and read back, removed with their job.

use sha2::{Digest, Sha256};
use skill_fleet_jobs::{
    ARTIFACT_CHUNK_BYTES, ArtifactLimits, JobStore, Published, StoreError, Upload, Writer,
};
use skill_fleet_types::{Fence, JobStatus};

use crate::support::{TestDb, both_backends, create, raw, start, start_as};

/// The lowercase hex SHA-256 of `bytes`.
pub fn sha256_hex(bytes: &[u8]) -> String {
    format!("{:x}", Sha256::digest(bytes))
}

/// Writes `bytes` as chunks of an upload, as the core does.
fn append_all(store: &JobStore, upload: &Upload, bytes: &[u8]) -> Result<(), StoreError> {
    for (seq, chunk) in bytes.chunks(ARTIFACT_CHUNK_BYTES).enumerate() {
        store.append_chunk(upload, u32::try_from(seq).unwrap(), chunk)?;
    }
    Ok(())
}

/// Uploads `bytes` as artifact `name` of job `id` in one go, with the default limits.
pub fn store(
    store: &JobStore,
    id: &str,
    name: &str,
    bytes: &[u8],
    writer: &Writer,
) -> Result<Published, StoreError> {
    let upload = store.begin_upload(id, name, "application/json", writer)?;
    append_all(store, &upload, bytes)?;
    store.publish_upload(
        &upload,
        bytes.len() as u64,
        &sha256_hex(bytes),
        writer,
        ArtifactLimits::default(),
    )
}

/// Reads a stored artifact back whole, chunk by chunk.
fn read_back(store: &JobStore, id: &str, name: &str) -> Vec<u8> {
    let stored = store.artifact(id, name).unwrap();
    let mut bytes = Vec::new();
    for seq in 0..stored.chunks() {
        bytes.extend(store.artifact_chunk(&stored, seq).unwrap());
    }
    bytes
}

/// Rows of `artifacts` and `artifact_chunks` in the database, whatever their state.
fn rows(db: &TestDb) -> (i64, i64) {
    use diesel::prelude::*;
    #[derive(QueryableByName)]
    struct Count {
        #[diesel(sql_type = diesel::sql_types::BigInt)]
        n: i64,
    }
    let mut conn = raw(&db.url);
    let count = |conn: &mut crate::support::RawConn, table: &str| {
        diesel::sql_query(format!("SELECT COUNT(*) AS n FROM {table}"))
            .get_result::<Count>(conn)
            .unwrap()
            .n
    };
    (
        count(&mut conn, "artifacts"),
        count(&mut conn, "artifact_chunks"),
    )
}

/// A deterministic, incompressible-looking byte pattern.
fn pattern(len: usize, seed: u8) -> Vec<u8> {
    (0..len)
        .map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed) ^ (i >> 8) as u8)
        .collect()
}

both_backends!(
    two_artifacts_are_listed_and_read_back_intact,
    an_upload_is_invisible_until_published_and_discarded_without_trace,
    uploads_are_fenced_by_the_lease,
    only_running_jobs_take_artifacts,
    the_job_limit_refuses_and_stores_nothing,
    a_name_is_replaced_whole,
    chunks_must_follow_full_ones,
    abandoned_uploads_are_swept,
    pruning_a_job_removes_its_artifacts,
);

fn two_artifacts_are_listed_and_read_back_intact(db: TestDb) {
    create(&db, "a", "eval");
    let claimed = start_as(&db, "a", "worker-1");
    let writer = Writer::Owner(claimed.lease.fence());
    let big = pattern(2 * ARTIFACT_CHUNK_BYTES + 12_345, 7);
    let small = br#"{"instructions": "be brief"}"#.to_vec();
    let before = db.get("a").unwrap().version;
    let first = store(&db, "a", "program.json", &small, &writer).unwrap();
    assert!(!first.replaced);
    assert!(
        first.job.version > before,
        "publishing bumps the job's version"
    );
    assert_eq!(first.job.status, JobStatus::Running);
    store(&db, "a", "scores.bin", &big, &writer).unwrap();

    let listed = db.artifacts("a").unwrap();
    let names: Vec<&str> = listed.iter().map(|a| a.name.as_str()).collect();
    assert_eq!(names, ["program.json", "scores.bin"]);
    assert_eq!(listed[1].size, big.len() as u64);
    assert_eq!(listed[1].sha256, sha256_hex(&big));
    assert_eq!(listed[0].attempt, Some(1));
    assert_eq!(listed[0].content_type, "application/json");
    assert_eq!(db.artifact("a", "scores.bin").unwrap().chunks(), 3);
    assert_eq!(read_back(&db, "a", "scores.bin"), big);
    assert_eq!(read_back(&db, "a", "program.json"), small);

    assert!(matches!(
        db.artifact("a", "nope.json"),
        Err(StoreError::ArtifactNotFound { .. })
    ));
    assert!(matches!(
        db.artifact("ghost", "program.json"),
        Err(StoreError::NotFound { .. })
    ));
    assert!(matches!(
        db.artifacts("ghost"),
        Err(StoreError::NotFound { .. })
    ));
    // An empty file is an artifact too.
    store(&db, "a", "empty.txt", b"", &writer).unwrap();
    assert_eq!(read_back(&db, "a", "empty.txt"), b"");
}

fn an_upload_is_invisible_until_published_and_discarded_without_trace(db: TestDb) {
    create(&db, "a", "eval");
    let writer = Writer::Owner(start_as(&db, "a", "w").lease.fence());
    let bytes = pattern(ARTIFACT_CHUNK_BYTES + 10, 1);
    let upload = db
        .begin_upload("a", "model.bin", "application/octet-stream", &writer)
        .unwrap();
    append_all(&db, &upload, &bytes).unwrap();
    assert!(db.artifacts("a").unwrap().is_empty(), "not published yet");
    assert!(matches!(
        db.artifact("a", "model.bin"),
        Err(StoreError::ArtifactNotFound { .. })
    ));
    // A publish that announces other bytes than were written is refused.
    let short = db.publish_upload(
        &upload,
        bytes.len() as u64 + 1,
        &sha256_hex(&bytes),
        &writer,
        ArtifactLimits::default(),
    );
    assert!(
        matches!(short, Err(StoreError::InvalidInput(_))),
        "{short:?}"
    );
    db.discard_upload(&upload).unwrap();
    assert_eq!(rows(&db), (0, 0));
    // A discarded upload takes no more chunks.
    assert!(matches!(
        db.append_chunk(&upload, 2, b"x"),
        Err(StoreError::Conflict { .. })
    ));
}

fn uploads_are_fenced_by_the_lease(db: TestDb) {
    create(&db, "a", "eval");
    let claimed = start_as(&db, "a", "w");
    let mut wrong = claimed.lease.fence();
    wrong.lease_token = "not-the-token".to_owned();
    let refused = db.begin_upload("a", "x.json", "application/json", &Writer::Owner(wrong));
    assert!(
        matches!(refused, Err(StoreError::LeaseLost { .. })),
        "{refused:?}"
    );
    // Token-less writes never land on a claimed job.
    let refused = db.begin_upload("a", "x.json", "application/json", &Writer::Unfenced);
    assert!(
        matches!(refused, Err(StoreError::LeaseLost { .. })),
        "{refused:?}"
    );

    // The lease is lost while the upload is under way: the publish is refused.
    let writer = Writer::Owner(claimed.lease.fence());
    let upload = db
        .begin_upload("a", "late.json", "application/json", &writer)
        .unwrap();
    append_all(&db, &upload, b"{}").unwrap();
    db.requeue("a", &Writer::Operator).unwrap();
    let next = start_as(&db, "a", "w2");
    let late = db.publish_upload(
        &upload,
        2,
        &sha256_hex(b"{}"),
        &writer,
        ArtifactLimits::default(),
    );
    assert!(
        matches!(late, Err(StoreError::LeaseLost { .. })),
        "{late:?}"
    );
    assert!(db.artifacts("a").unwrap().is_empty());
    // The new attempt can.
    let published = store(
        &db,
        "a",
        "late.json",
        b"{}",
        &Writer::Owner(next.lease.fence()),
    )
    .unwrap();
    assert_eq!(published.artifact.attempt, Some(2));
    let stale_fence = Fence {
        attempt: 1,
        lease_token: claimed.lease.token.clone(),
    };
    assert!(matches!(
        store(&db, "a", "other.json", b"{}", &Writer::Owner(stale_fence)),
        Err(StoreError::LeaseLost { .. })
    ));
}

fn only_running_jobs_take_artifacts(db: TestDb) {
    create(&db, "q", "eval");
    let refused = store(&db, "q", "x.json", b"{}", &Writer::Unfenced);
    assert!(
        matches!(
            refused,
            Err(StoreError::InvalidTransition {
                from: JobStatus::Queued,
                ..
            })
        ),
        "{refused:?}"
    );
    create(&db, "done", "eval2");
    let claimed = start_as(&db, "done", "w");
    let writer = Writer::Owner(claimed.lease.fence());
    db.complete("done", None, None, &writer).unwrap();
    let refused = store(&db, "done", "x.json", b"{}", &writer);
    assert!(
        matches!(
            refused,
            Err(StoreError::InvalidTransition {
                from: JobStatus::Completed,
                ..
            })
        ),
        "{refused:?}"
    );
    assert_eq!(rows(&db), (0, 0));
}

fn the_job_limit_refuses_and_stores_nothing(db: TestDb) {
    create(&db, "a", "eval");
    start(&db, "a");
    let limits = ArtifactLimits {
        max_bytes: 100,
        max_job_bytes: 150,
    };
    let publish = |name: &str, len: usize| {
        let bytes = pattern(len, 3);
        let upload = db
            .begin_upload("a", name, "application/octet-stream", &Writer::Operator)
            .unwrap();
        append_all(&db, &upload, &bytes).unwrap();
        let result = db.publish_upload(
            &upload,
            len as u64,
            &sha256_hex(&bytes),
            &Writer::Operator,
            limits,
        );
        if result.is_err() {
            db.discard_upload(&upload).unwrap();
        }
        result
    };
    let too_big = publish("big.bin", 101);
    assert!(
        matches!(&too_big, Err(StoreError::TooLarge(m)) if m.contains("big.bin") && m.contains("100")),
        "{too_big:?}"
    );
    publish("one.bin", 100).unwrap();
    let over_job = publish("two.bin", 60);
    assert!(
        matches!(&over_job, Err(StoreError::TooLarge(m)) if m.contains("job `a`") && m.contains("150")),
        "{over_job:?}"
    );
    // Replacing a name counts the new size instead of the old.
    publish("one.bin", 90).unwrap();
    publish("two.bin", 60).unwrap();
    let listed = db.artifacts("a").unwrap();
    assert_eq!(listed.iter().map(|a| a.size).sum::<u64>(), 150);
    assert_eq!(rows(&db), (2, 2));
}

fn a_name_is_replaced_whole(db: TestDb) {
    create(&db, "a", "eval");
    start(&db, "a");
    let old = pattern(ARTIFACT_CHUNK_BYTES * 2, 1);
    let new = pattern(10, 2);
    store(&db, "a", "model.bin", &old, &Writer::Operator).unwrap();
    let replaced = store(&db, "a", "model.bin", &new, &Writer::Operator).unwrap();
    assert!(replaced.replaced);
    assert_eq!(read_back(&db, "a", "model.bin"), new);
    assert_eq!(db.artifacts("a").unwrap().len(), 1);
    assert_eq!(rows(&db), (1, 1), "the old artifact's chunks are gone");
}

fn chunks_must_follow_full_ones(db: TestDb) {
    create(&db, "a", "eval");
    start(&db, "a");
    let upload = db
        .begin_upload("a", "x.bin", "application/octet-stream", &Writer::Operator)
        .unwrap();
    db.append_chunk(&upload, 0, b"short").unwrap();
    let refused = db.append_chunk(&upload, 1, b"more");
    assert!(
        matches!(refused, Err(StoreError::InvalidInput(_))),
        "{refused:?}"
    );
    let skipped = db
        .begin_upload("a", "y.bin", "application/octet-stream", &Writer::Operator)
        .unwrap();
    assert!(matches!(
        db.append_chunk(&skipped, 1, b"x"),
        Err(StoreError::InvalidInput(_))
    ));
    let oversized = vec![0_u8; ARTIFACT_CHUNK_BYTES + 1];
    assert!(matches!(
        db.append_chunk(&skipped, 0, &oversized),
        Err(StoreError::InvalidInput(_))
    ));
}

fn abandoned_uploads_are_swept(db: TestDb) {
    create(&db, "a", "eval");
    start(&db, "a");
    let upload = db
        .begin_upload("a", "x.bin", "application/octet-stream", &Writer::Operator)
        .unwrap();
    db.append_chunk(&upload, 0, b"partial").unwrap();
    store(&db, "a", "kept.json", b"{}", &Writer::Operator).unwrap();
    // Not idle long enough: kept.
    assert_eq!(
        db.discard_abandoned_uploads(std::time::Duration::from_secs(3600))
            .unwrap(),
        0
    );
    // A crash leaves it behind; the sweep after the restart takes it.
    let db = db.reopen();
    assert_eq!(
        db.discard_abandoned_uploads(std::time::Duration::ZERO)
            .unwrap(),
        1
    );
    assert_eq!(rows(&db), (1, 1), "only the stored artifact is left");
    assert_eq!(read_back(&db, "a", "kept.json"), b"{}");
}

fn pruning_a_job_removes_its_artifacts(db: TestDb) {
    create(&db, "old", "eval");
    let claimed = start_as(&db, "old", "w");
    let writer = Writer::Owner(claimed.lease.fence());
    store(
        &db,
        "old",
        "a.bin",
        &pattern(ARTIFACT_CHUNK_BYTES + 1, 0),
        &writer,
    )
    .unwrap();
    let stray = db
        .begin_upload("old", "b.bin", "application/octet-stream", &writer)
        .unwrap();
    db.append_chunk(&stray, 0, b"x").unwrap();
    db.complete("old", None, None, &writer).unwrap();
    create(&db, "new", "eval2");
    start(&db, "new");
    store(&db, "new", "c.bin", b"c", &Writer::Operator).unwrap();
    let report = db.prune(chrono::Duration::zero()).unwrap();
    assert_eq!(report.ids, ["old"]);
    assert_eq!(report.artifacts, 2);
    assert_eq!(rows(&db), (1, 1));
    assert_eq!(read_back(&db, "new", "c.bin"), b"c");
}
