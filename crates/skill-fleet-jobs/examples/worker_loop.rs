//! Embedding the job store in another Rust program: a worker loop that claims jobs, reports
//! progress (one report at a time and as a coalesced batch), checkpoints and completes them.
//!
//! ```sh
//! cargo run -p skill-fleet-jobs --example worker_loop              # a temporary database
//! cargo run -p skill-fleet-jobs --example worker_loop -- jobs.db   # or a file you choose
//! ```
//!
//! A program that embeds the store owns its database as a server does: it takes the
//! database's lock (`jobs.db.lock`) before opening it, so it cannot share a database with a
//! running `skill-fleet-server` (or another copy of itself), and a server started on the
//! same file while it runs is refused.

use std::error::Error;

use serde_json::{Map, Value, json};
use skill_fleet_jobs::{
    ClaimFilter, Claimed, DatabaseOwner, JobStore, NewJob, ProgressWrite, Writer,
};
use skill_fleet_types::{Job, JobStatus, ProgressUpdate};

/// Steps each job goes through, reported one by one with `record_progress`.
const STEPS: [&str; 3] = ["collecting_traces", "proposing_instructions", "evaluating"];

fn main() -> Result<(), Box<dyn Error>> {
    // A database path from the command line, or a file in a directory removed at the end.
    let temp = tempfile::tempdir()?;
    let path = match std::env::args().nth(1) {
        Some(path) => path,
        None => temp.path().join("jobs.db").display().to_string(),
    };
    // One owner per database, held until the end of `main`; fails if a server runs on it.
    let _owner = DatabaseOwner::acquire(&path, "worker_loop example")?;
    let store = JobStore::open(&path)?; // creates the file and applies the migrations
    println!("opened job store at {path}");

    for (n, job_type) in ["optimization", "evaluation", "optimization"]
        .into_iter()
        .enumerate()
    {
        let mut metadata = Map::new();
        metadata.insert("trial".to_owned(), json!(n + 1));
        let (job, created) = store.create(&NewJob {
            id: None, // a sortable UUID v7
            job_type: job_type.to_owned(),
            metadata,
            source: "example".to_owned(),
        })?;
        println!("created {} ({job_type}, {created:?})", job.id);
    }

    // The worker: take the oldest queued job of any type until the queue is empty.
    let mut done = 0;
    while let Some(Claimed { job, lease }) = store.claim(&ClaimFilter::default(), "worker_loop")? {
        println!(
            "claimed {} ({}), attempt {}",
            job.id, job.job_type, job.attempt
        );
        // Every write of this attempt carries its fence: a write after the lease was lost
        // (expired and rescued) would be refused with `StoreError::LeaseLost`.
        let owner = Writer::Owner(lease.fence());
        let job = work(&store, job, &owner)?;
        println!(
            "  {} {:?}: progress {:.0}%, cost ${:.2}, metric {}, checkpoint {}",
            job.id,
            job.status,
            job.progress.progress * 100.0,
            job.progress.cost_usd,
            job.progress
                .metric
                .map_or("-".to_owned(), |m| format!("{m:.2}")),
            job.checkpoint
                .as_ref()
                .map_or("none".to_owned(), Value::to_string),
        );
        done += 1;
    }
    println!(
        "queue empty after {done} jobs; store change counter {}",
        store.change_counter()?
    );
    Ok(())
}

/// Runs one claimed job: progress per step with a checkpoint, a final batch write, complete.
fn work(store: &JobStore, job: Job, owner: &Writer) -> Result<Job, Box<dyn Error>> {
    let total = STEPS.len() as f64 + 1.0;
    for (i, step) in STEPS.iter().enumerate() {
        let done = i as f64 + 1.0;
        let update = ProgressUpdate {
            step: Some((*step).to_owned()),
            progress: Some(done / total),
            cost_usd: Some(0.05 * done),
            metric: Some(0.5 + 0.1 * done),
            message: Some(format!("{step} done")),
            // Opaque state handed back if the job is resumed after a crash.
            checkpoint: Some(json!({ "completed_steps": done })),
            ..ProgressUpdate::default()
        };
        let job = store.record_progress(&job.id, &update, None, owner)?;
        println!(
            "  step {:<24} progress {:>3.0}%  version {}",
            step,
            job.progress.progress * 100.0,
            job.version
        );
    }

    // The coalesced path the server uses: the full latest state of (possibly many) jobs,
    // written in one transaction.
    let mut latest = store.get(&job.id)?.progress;
    latest.step = Some("finalizing".to_owned());
    latest.progress = 0.95;
    latest.message = Some("writing the result".to_owned());
    let report = store.write_progress_batch(&[ProgressWrite {
        writer: owner.clone(),
        job_id: job.id.clone(),
        progress: latest,
        checkpoint: Some(json!({ "completed_steps": STEPS.len(), "finalizing": true })),
    }])?;
    println!(
        "  batch write: {} written, {} skipped",
        report.written,
        report.skipped.len()
    );

    let job = store.complete(&job.id, Some(json!({ "accuracy": 0.91 })), None, owner)?;
    assert_eq!(job.status, JobStatus::Completed);
    let history = store.progress_history(&job.id, None, 0)?;
    println!(
        "  completed; {} progress rows in history",
        history.records.len()
    );
    Ok(job)
}
