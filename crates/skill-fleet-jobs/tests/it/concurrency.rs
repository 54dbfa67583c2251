//! Many writers at once: SQLite's lock is waited for, never reported as `database is locked`;
//! version stamps stay distinct and increasing whoever writes.

use skill_fleet_jobs::Writer;
use std::sync::Barrier;

use skill_fleet_jobs::{ClaimFilter, JobStore, ProgressWrite, StoreOptions};
use skill_fleet_types::{JobStatus, Progress, ProgressUpdate};

use crate::support::{TestDb, both_backends, create};

const THREADS: usize = 8;
const ROUNDS: usize = 25;

fn eight_threads_write_without_lock_errors(db: TestDb) {
    let barrier = Barrier::new(THREADS);
    std::thread::scope(|scope| {
        for t in 0..THREADS {
            let store = db.store.clone();
            let barrier = &barrier;
            scope.spawn(move || {
                barrier.wait();
                for round in 0..ROUNDS {
                    let id = format!("t{t}-r{round}");
                    create(&store, &id, "optimization");
                    let update = ProgressUpdate {
                        progress: Some(0.25),
                        ..Default::default()
                    };
                    store
                        .record_progress(&id, &update, None, &Writer::Operator)
                        .unwrap();
                    let write = ProgressWrite {
                        writer: Writer::Operator,
                        job_id: id.clone(),
                        progress: Progress {
                            progress: 0.5,
                            ..Default::default()
                        },
                        checkpoint: None,
                    };
                    let report = store.write_progress_batch(&[write]).unwrap();
                    assert_eq!(report.written, 1);
                    store.list(&Default::default()).unwrap();
                    if round % 5 == 0 {
                        // Claims race with the other threads' creates.
                        store
                            .claim(&ClaimFilter::default(), "test")
                            .map(|c| c.map(|c| c.job))
                            .unwrap();
                    }
                }
            });
        }
    });
    let counts = db.counts_by_status().unwrap();
    let total: u64 = counts.iter().map(|(_, n)| n).sum();
    assert_eq!(total, (THREADS * ROUNDS) as u64);
    assert_eq!(counts[1], (JobStatus::Running, total));
    let history = db.progress_history("t3-r7", None, 0).unwrap();
    assert_eq!(history.records.len(), 2);
}

fn versions_are_distinct_and_increasing_across_store_handles(db: TestDb) {
    const HANDLES: usize = 4;
    const WRITES: usize = 10;
    let counter_at_start = db.change_counter().unwrap();
    // One store per thread: separate pools and write gates, so only the database orders the
    // writers (as it would for several processes). A long busy timeout keeps a loaded
    // machine from failing a write that is merely slow to get the lock.
    let options = StoreOptions {
        busy_timeout: std::time::Duration::from_secs(120),
        ..StoreOptions::default()
    };
    let stores: Vec<JobStore> = (0..HANDLES)
        .map(|_| JobStore::open_with(&db.url, options).unwrap())
        .collect();
    let barrier = Barrier::new(HANDLES);
    let per_handle: Vec<Vec<u64>> = std::thread::scope(|scope| {
        let threads: Vec<_> = stores
            .into_iter()
            .enumerate()
            .map(|(h, store)| {
                let barrier = &barrier;
                scope.spawn(move || {
                    barrier.wait();
                    let mut versions = Vec::new();
                    for n in 0..WRITES {
                        let id = format!("h{h}-{n}");
                        versions.push(create(&store, &id, "optimization").version);
                        let update = ProgressUpdate {
                            progress: Some(0.5),
                            ..Default::default()
                        };
                        versions.push(
                            store
                                .record_progress(&id, &update, None, &Writer::Operator)
                                .unwrap()
                                .version,
                        );
                        let write = ProgressWrite {
                            writer: Writer::Operator,
                            job_id: id.clone(),
                            progress: Progress {
                                progress: 0.75,
                                ..Default::default()
                            },
                            checkpoint: None,
                        };
                        let report = store.write_progress_batch(&[write]).unwrap();
                        assert_eq!(report.versions.len(), 1, "{id}");
                        versions.push(report.versions[0].1);
                        assert_eq!(store.get(&id).unwrap().version, report.versions[0].1);
                    }
                    versions
                })
            })
            .collect();
        threads.into_iter().map(|t| t.join().unwrap()).collect()
    });
    for versions in &per_handle {
        assert!(versions.windows(2).all(|w| w[0] < w[1]), "{versions:?}");
    }
    let mut all: Vec<u64> = per_handle.concat();
    let writes = all.len() as u64;
    all.sort_unstable();
    all.dedup();
    assert_eq!(all.len() as u64, writes, "two writes got the same version");
    // Each write took exactly one version: they are the counter's next `writes` values.
    let counter = db.change_counter().unwrap();
    assert_eq!(counter, counter_at_start + writes);
    assert_eq!(all.first().copied(), Some(counter_at_start + 1));
    assert_eq!(all.last().copied(), Some(counter));
}

both_backends!(
    eight_threads_write_without_lock_errors,
    versions_are_distinct_and_increasing_across_store_handles,
);
