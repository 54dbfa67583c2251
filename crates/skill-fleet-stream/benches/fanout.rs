//! Fan-out benchmark: how fast producers can publish, and what subscribers pay.
//!
//! A plain `main` (no criterion) that prints a table; run it with
//! `cargo bench -p skill-fleet-stream`. Scenarios:
//!
//! 1. one job, 1,000 subscriber tasks looping on `next()`, 1,000,000 updates published as
//!    fast as possible (and once more, paced over about two seconds);
//! 2. 10,000 jobs × 100 updates, from one producer thread and from two.
//!
//! Memory is read from `/proc/self/status` (`VmRSS`, and `VmHWM`, the peak so far).

use std::error::Error;
use std::sync::Arc;
use std::time::{Duration, Instant};

use skill_fleet_stream::{Hub, HubConfig, Update};
use tokio::task::JoinHandle;

type BenchResult<T> = Result<T, Box<dyn Error + Send + Sync>>;

const SUBSCRIBERS: usize = 1_000;
const UPDATES: u32 = 1_000_000;
const JOBS: usize = 10_000;
const ROUNDS: u32 = 100;

/// `(VmRSS, VmHWM)` in KiB, zero where unavailable.
fn memory_kib() -> (u64, u64) {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let field = |name: &str| {
        status
            .lines()
            .find_map(|line| line.strip_prefix(name))
            .and_then(|rest| rest.trim().trim_end_matches("kB").trim().parse().ok())
            .unwrap_or(0)
    };
    (field("VmRSS:"), field("VmHWM:"))
}

fn mib(kib: u64) -> f64 {
    kib as f64 / 1024.0
}

/// Spawns subscriber tasks that count the states they receive until the job ends.
fn subscribers(hub: &Hub, job_id: &str, count: usize) -> BenchResult<Vec<JoinHandle<u64>>> {
    let mut tasks = Vec::with_capacity(count);
    for _ in 0..count {
        let mut subscription = hub.subscribe(job_id).ok_or("job vanished")?;
        let _ = subscription.current();
        tasks.push(tokio::spawn(async move {
            let mut received = 0_u64;
            while subscription.next().await.is_some() {
                received += 1;
            }
            received
        }));
    }
    Ok(tasks)
}

async fn wakeups(tasks: Vec<JoinHandle<u64>>) -> BenchResult<(u64, f64, u64)> {
    let mut counts = Vec::with_capacity(tasks.len());
    for task in tasks {
        counts.push(task.await?);
    }
    let min = counts.iter().copied().min().unwrap_or(0);
    let max = counts.iter().copied().max().unwrap_or(0);
    let mean = counts.iter().sum::<u64>() as f64 / counts.len().max(1) as f64;
    Ok((min, mean, max))
}

/// Scenario 1: one job, many subscribers. `pace` sleeps 10 ms after every `pace` updates.
async fn fan_out(label: &str, pace: Option<u32>) -> BenchResult<()> {
    let hub = Hub::new(HubConfig::default());
    let job = "fan-out";
    hub.publish(job, Update::progress(0.0).with_step("step-0"))?;
    let (rss_before, _) = memory_kib();
    let tasks = subscribers(&hub, job, SUBSCRIBERS)?;
    tokio::task::yield_now().await;
    let (rss_subscribed, _) = memory_kib();

    let start = Instant::now();
    let mut publishing = Duration::ZERO;
    let mut burst = Instant::now();
    for i in 1..=UPDATES {
        let mut update =
            Update::progress(f64::from(i) / f64::from(UPDATES)).with_cost(f64::from(i) * 1e-6);
        if i % 100_000 == 0 {
            update = update.with_step(format!("step-{}", i / 100_000));
        }
        hub.publish(job, update)?;
        if let Some(every) = pace
            && i % every == 0
        {
            publishing += burst.elapsed();
            tokio::time::sleep(Duration::from_millis(10)).await;
            burst = Instant::now();
        }
    }
    publishing += burst.elapsed();
    let wall = start.elapsed();
    let emitted = hub.current(job).map_or(0, |state| state.seq - 1);
    let (rss_after, hwm) = memory_kib();
    hub.close();
    let (min, mean, max) = wakeups(tasks).await?;

    println!("{label}");
    println!(
        "  updates/s (publish time only)   {:>14.0}",
        f64::from(UPDATES) / publishing.as_secs_f64()
    );
    println!(
        "  wall time                        {:>12.3} s",
        wall.as_secs_f64()
    );
    println!("  states emitted                   {emitted:>14}");
    println!("  wake-ups per subscriber          min {min} / mean {mean:.1} / max {max}");
    println!(
        "  memory: RSS {:.1} MiB -> {:.1} MiB with {SUBSCRIBERS} subscribers -> {:.1} MiB after; peak (VmHWM) {:.1} MiB",
        mib(rss_before),
        mib(rss_subscribed),
        mib(rss_after),
        mib(hwm)
    );
    Ok(())
}

/// Scenario 2: many jobs, updates interleaved across them, from `threads` producer threads.
fn many_jobs(threads: usize) -> BenchResult<()> {
    let hub = Hub::new(HubConfig::default());
    let ids: Arc<Vec<String>> = Arc::new((0..JOBS).map(|j| format!("job-{j:05}")).collect());
    let (rss_before, _) = memory_kib();
    let start = Instant::now();
    let producers: Vec<_> = (0..threads)
        .map(|t| {
            let hub = hub.clone();
            let ids = Arc::clone(&ids);
            std::thread::spawn(move || -> Result<(), String> {
                for round in 1..=ROUNDS {
                    for id in ids.iter().skip(t).step_by(threads) {
                        let update = Update::progress(f64::from(round) / f64::from(ROUNDS))
                            .with_cost(f64::from(round) * 0.01);
                        hub.publish(id, update).map_err(|e| e.to_string())?;
                    }
                }
                Ok(())
            })
        })
        .collect();
    for producer in producers {
        producer.join().map_err(|_| "producer panicked")??;
    }
    let elapsed = start.elapsed();
    hub.flush();
    let (rss_after, hwm) = memory_kib();
    let stats = hub.stats();
    println!("{JOBS} jobs x {ROUNDS} updates, {threads} producer thread(s)");
    println!(
        "  updates/s                        {:>14.0}",
        (JOBS as f64 * f64::from(ROUNDS)) / elapsed.as_secs_f64()
    );
    println!("  jobs held                        {:>14}", stats.jobs);
    println!(
        "  memory: RSS {:.1} MiB -> {:.1} MiB; peak (VmHWM) {:.1} MiB",
        mib(rss_before),
        mib(rss_after),
        mib(hwm)
    );
    hub.close();
    Ok(())
}

fn main() -> BenchResult<()> {
    // `cargo bench` passes `--bench`; nothing to parse.
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    runtime.block_on(async {
        fan_out(
            "1 job, 1,000 subscribers, 1,000,000 updates as fast as possible",
            None,
        )
        .await?;
        fan_out(
            "1 job, 1,000 subscribers, 1,000,000 updates paced (10 ms pause every 5,000)",
            Some(5_000),
        )
        .await?;
        many_jobs(1)?;
        many_jobs(2)
    })
}
