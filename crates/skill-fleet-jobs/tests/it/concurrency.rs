//! Many writers at once: SQLite's lock is waited for, never reported as `database is locked`.

use std::sync::Barrier;

use skill_fleet_jobs::ProgressWrite;
use skill_fleet_types::{JobStatus, Progress, ProgressUpdate};

use crate::support::{TestDb, create};

const THREADS: usize = 8;
const ROUNDS: usize = 25;

#[test]
fn eight_threads_write_without_lock_errors() {
    let db = TestDb::new();
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
                    store.record_progress(&id, &update, None).unwrap();
                    let write = ProgressWrite {
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
                        store.claim(&[]).unwrap();
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
