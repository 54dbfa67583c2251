//! A producer publishes a burst of progress updates for one job; two subscribers follow it,
//! one fast and one slow. The fast one sees the coalesced feed (about one state per
//! `emit_interval`), the slow one skips to the newest state each time it looks; both see the
//! final state, then the hub is closed.
//!
//! ```sh
//! cargo run -p skill-fleet-stream --example publish_subscribe
//! ```

use std::time::{Duration, Instant};

use skill_fleet_stream::{Hub, HubConfig, JobStatus, StreamError, Subscription, Update};

const JOB: &str = "job-1";
/// Progress reports in the burst.
const REPORTS: u32 = 60;

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<(), StreamError> {
    let started = Instant::now();
    let hub = Hub::new(HubConfig {
        emit_interval: Duration::from_millis(25),
        ..HubConfig::default()
    });
    hub.publish(
        JOB,
        Update::status(JobStatus::Running).with_step("collecting_traces"),
    )?;

    let Some(fast) = hub.subscribe(JOB) else {
        unreachable!("the job was just published");
    };
    let Some(slow) = hub.subscribe(JOB) else {
        unreachable!("the job was just published");
    };
    let fast = tokio::spawn(follow("fast", fast, Duration::ZERO, started));
    let slow = tokio::spawn(follow("slow", slow, Duration::from_millis(80), started));

    // The producer: a report every 2 ms, a step change halfway, then the terminal status.
    let producer = {
        let hub = hub.clone();
        tokio::spawn(async move {
            for i in 1..=REPORTS {
                let fraction = f64::from(i) / f64::from(REPORTS + 1);
                let mut update = Update::progress(fraction).with_cost(0.002 * f64::from(i));
                if i == REPORTS / 2 {
                    update = update.with_step("evaluating");
                }
                hub.publish(JOB, update)?;
                tokio::time::sleep(Duration::from_millis(2)).await;
            }
            hub.publish(
                JOB,
                Update::status(JobStatus::Completed)
                    .with_progress(1.0)
                    .with_metric(0.91),
            )?;
            println!("producer: published {} updates", REPORTS + 2);
            Ok::<_, StreamError>(())
        })
    };

    producer.await.expect("the producer task panicked")?;
    let seen_fast = fast.await.expect("the fast subscriber panicked");
    let seen_slow = slow.await.expect("the slow subscriber panicked");
    println!(
        "fast subscriber saw {seen_fast} states, slow subscriber saw {seen_slow}, stats {:?}",
        hub.stats()
    );

    // Ends every subscription and stops the flush task.
    hub.close();
    println!("hub closed after {:?}", started.elapsed());
    Ok(())
}

/// Prints every state `subscription` hands out until the job finishes; `delay` is how long
/// the subscriber takes over each one. Returns how many states it saw.
async fn follow(
    name: &str,
    mut subscription: Subscription,
    delay: Duration,
    started: Instant,
) -> usize {
    let mut seen = 0;
    while let Some(event) = subscription.next().await {
        seen += 1;
        println!(
            "{name:>4} +{:>4} ms  seq {:>3}  {:<9} {:<18} {:>5.1}%  ${:.3}  eta {}",
            started.elapsed().as_millis(),
            event.seq,
            format!("{:?}", event.status),
            event.step.as_deref().unwrap_or("-"),
            event.progress * 100.0,
            event.cost_usd,
            event
                .eta_seconds
                .map_or("-".to_owned(), |eta| format!("{eta:.2}s")),
        );
        if event.status.is_terminal() {
            break;
        }
        tokio::time::sleep(delay).await;
    }
    seen
}
