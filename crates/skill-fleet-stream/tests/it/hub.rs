//! Behaviour of the hub through its public API, on paused time: pacing, fan-out, ETA,
//! clean-up and shutdown.

use std::sync::Arc;
use std::time::Duration;

use skill_fleet_stream::{
    Emitted, Hub, HubConfig, JobStatus, StreamError, StreamEvent, Subscription, Update,
    version_event_id,
};
use tokio::task::JoinHandle;
use tokio::time::{sleep, timeout};

const TICK: Duration = Duration::from_millis(100);

fn hub() -> Hub {
    Hub::new(HubConfig::default())
}

/// A subscriber task that records every state it receives until the subscription ends.
fn record(mut subscription: Subscription) -> JoinHandle<Vec<Arc<Emitted>>> {
    tokio::spawn(async move {
        let mut seen = Vec::new();
        while let Some(event) = subscription.next().await {
            seen.push(event);
        }
        seen
    })
}

/// The next state, or `None` if nothing arrives within a second of (paused) time.
async fn next_within_a_second(subscription: &mut Subscription) -> Option<Arc<Emitted>> {
    timeout(Duration::from_secs(1), subscription.next())
        .await
        .ok()
        .flatten()
}

fn assert_seqs_step_by_one(events: &[Arc<Emitted>]) {
    for pair in events.windows(2) {
        assert!(pair[1].seq > pair[0].seq, "seq only increases: {pair:?}");
    }
}

#[tokio::test(start_paused = true)]
async fn a_burst_is_coalesced_and_ends_on_the_final_state() {
    let hub = hub();
    hub.publish("j", Update::progress(0.0).with_step("train"))
        .unwrap();
    let recorder = record(hub.subscribe("j").unwrap());
    for i in 1..=1000 {
        hub.publish(
            "j",
            Update::progress(f64::from(i) / 1000.0).with_cost(f64::from(i) * 0.001),
        )
        .unwrap();
    }
    sleep(TICK * 3).await;
    hub.close();
    let seen = recorder.await.unwrap();
    assert!(
        seen.len() <= 3,
        "a handful of emissions, got {}",
        seen.len()
    );
    let last = seen.last().unwrap();
    assert_eq!((last.progress, last.cost_usd), (1.0, 1.0));
    assert_eq!(last.step.as_deref(), Some("train"));
    assert_seqs_step_by_one(&seen);
}

#[tokio::test(start_paused = true)]
async fn a_steady_stream_is_paced_by_the_interval() {
    let hub = hub();
    let recorder = {
        hub.publish("j", Update::progress(0.0)).unwrap();
        record(hub.subscribe("j").unwrap())
    };
    // 1,000 updates one millisecond apart: one second of updates.
    for i in 1..=1000 {
        hub.publish("j", Update::progress(f64::from(i) / 1000.0))
            .unwrap();
        sleep(Duration::from_millis(1)).await;
    }
    sleep(TICK * 2).await;
    hub.close();
    let seen = recorder.await.unwrap();
    // At most an immediate send plus a tick per interval.
    assert!(seen.len() <= 22, "paced, got {}", seen.len());
    assert!(seen.len() >= 5, "but flowing, got {}", seen.len());
    assert_eq!(seen.last().unwrap().progress, 1.0);
    let seqs: Vec<u64> = seen.iter().map(|e| e.seq).collect();
    let expected: Vec<u64> = (seqs[0]..seqs[0] + seqs.len() as u64).collect();
    assert_eq!(
        seqs, expected,
        "+1 per emission, none skipped for a fast reader"
    );
}

#[tokio::test(start_paused = true)]
async fn step_changes_and_terminal_status_go_out_at_once() {
    let hub = hub();
    hub.publish("j", Update::progress(0.1).with_step("a"))
        .unwrap();
    let first = hub.current("j").unwrap();
    assert_eq!((first.seq, first.progress), (1, 0.1));

    sleep(Duration::from_millis(10)).await;
    hub.publish("j", Update::progress(0.2)).unwrap();
    assert_eq!(hub.current("j").unwrap().seq, 1, "throttled");

    hub.publish("j", Update::step("b")).unwrap();
    let now = hub.current("j").unwrap();
    assert_eq!(
        (now.seq, now.step.as_deref(), now.progress),
        (2, Some("b"), 0.2)
    );

    hub.publish("j", Update::progress(0.3)).unwrap();
    hub.publish("j", Update::status(JobStatus::Completed).with_progress(1.0))
        .unwrap();
    let done = hub.current("j").unwrap();
    assert_eq!(
        (done.seq, done.status, done.progress),
        (3, JobStatus::Completed, 1.0)
    );
    assert_eq!(done.eta_seconds, Some(0.0));
}

#[tokio::test(start_paused = true)]
async fn the_final_state_is_sent_when_the_producer_stops_mid_throttle() {
    let hub = hub();
    hub.publish("j", Update::progress(0.1)).unwrap();
    let mut subscription = hub.subscribe("j").unwrap();
    assert_eq!(subscription.current().progress, 0.1);

    sleep(Duration::from_millis(10)).await;
    hub.publish("j", Update::progress(0.2).with_message("almost"))
        .unwrap();
    // The producer goes quiet; the flush task delivers what is pending.
    let event = next_within_a_second(&mut subscription).await.unwrap();
    assert_eq!((event.seq, event.progress), (2, 0.2));
    assert_eq!(event.message.as_deref(), Some("almost"));
    assert_eq!(hub.current("j").unwrap().seq, 2);
    assert!(
        next_within_a_second(&mut subscription).await.is_none(),
        "nothing more"
    );
}

#[tokio::test(start_paused = true)]
async fn flush_sends_pending_changes_now() {
    let hub = hub();
    hub.publish("j", Update::progress(0.1)).unwrap();
    hub.publish("j", Update::progress(0.2)).unwrap();
    assert_eq!(hub.current("j").unwrap().progress, 0.1);
    hub.flush();
    assert_eq!(hub.current("j").unwrap().progress, 0.2);
}

#[tokio::test(start_paused = true)]
async fn an_unchanged_update_sends_nothing() {
    let hub = hub();
    hub.publish("j", Update::progress(0.5).with_step("s"))
        .unwrap();
    sleep(TICK * 2).await;
    hub.publish("j", Update::progress(0.5).with_step("s"))
        .unwrap();
    hub.publish("j", Update::default()).unwrap();
    sleep(TICK * 2).await;
    assert_eq!(hub.current("j").unwrap().seq, 1);
}

#[tokio::test(start_paused = true)]
async fn a_slow_subscriber_skips_to_the_newest_state() {
    let hub = hub();
    hub.publish("j", Update::progress(0.0)).unwrap();
    let mut slow = hub.subscribe("j").unwrap();
    let _ = slow.current();
    for i in 1..=50 {
        hub.publish("j", Update::progress(f64::from(i) / 100.0))
            .unwrap();
        sleep(TICK).await;
    }
    let newest = hub.current("j").unwrap();
    assert!(newest.seq > 40, "many states were emitted: {}", newest.seq);
    let got = slow.next().await.unwrap();
    assert_eq!(got, newest);
    assert_eq!(got.progress, 0.5);
    assert!(next_within_a_second(&mut slow).await.is_none());
}

#[tokio::test(start_paused = true)]
async fn dropping_a_subscriber_frees_it() {
    let hub = hub();
    hub.publish("j", Update::progress(0.1)).unwrap();
    let one = record(hub.subscribe("j").unwrap());
    let mut two = hub.subscribe("j").unwrap();
    assert_eq!(hub.stats().subscribers, 2);
    hub.publish("j", Update::step("x")).unwrap();
    assert_eq!(
        next_within_a_second(&mut two)
            .await
            .unwrap()
            .step
            .as_deref(),
        Some("x")
    );
    drop(two);
    assert_eq!(hub.stats().subscribers, 1);
    one.abort();
    let _ = one.await;
    assert_eq!(hub.stats().subscribers, 0);
    assert_eq!(hub.stats().jobs, 1, "a running job stays");
}

#[tokio::test(start_paused = true)]
async fn a_reconnecting_subscriber_gets_the_current_state_and_seq() {
    let hub = hub();
    hub.publish("j", Update::progress(0.1)).unwrap();
    let mut first = hub.subscribe("j").unwrap();
    hub.publish("j", Update::step("b").with_progress(0.4))
        .unwrap();
    let last_seen = next_within_a_second(&mut first).await.unwrap();
    drop(first);

    let mut again = hub.subscribe("j").unwrap();
    let current = again.current();
    assert_eq!(current, last_seen);
    assert_eq!((current.seq, current.progress), (2, 0.4));
    assert!(
        next_within_a_second(&mut again).await.is_none(),
        "current counts as seen"
    );

    // A fresh subscription that has seen nothing gets the current state from next().
    let mut fresh = hub.subscribe("j").unwrap();
    assert_eq!(fresh.next().await.unwrap().seq, 2);
}

fn stored(seq: u64, status: JobStatus, progress: f64) -> StreamEvent {
    StreamEvent {
        job_id: "j".into(),
        seq,
        status,
        step: Some("restored".into()),
        progress,
        cost_usd: 2.5,
        metric: Some(0.7),
        eta_seconds: None,
        message: None,
        at: chrono::Utc::now(),
    }
}

#[tokio::test(start_paused = true)]
async fn a_seeded_job_keeps_its_seq_and_counts_on_from_it() {
    let hub = hub();
    hub.seed("j", stored(41, JobStatus::Running, 0.5));
    let mut subscription = hub.subscribe("j").unwrap();
    let restored = subscription.current();
    assert_eq!((restored.seq, restored.progress), (41, 0.5));

    // Seeding a job the hub has does nothing.
    hub.seed("j", stored(7, JobStatus::Queued, 0.0));
    assert_eq!(hub.current("j").unwrap().seq, 41);

    hub.publish("j", Update::progress(0.6)).unwrap();
    let next = next_within_a_second(&mut subscription).await.unwrap();
    assert_eq!((next.seq, next.progress, next.cost_usd), (42, 0.6, 2.5));
    assert_eq!(
        next.step.as_deref(),
        Some("restored"),
        "fields not given are kept"
    );
}

#[tokio::test(start_paused = true)]
async fn jobs_first_seen_through_publish_start_at_their_version() {
    let hub = hub();
    hub.publish("j", Update::progress(0.1).with_version(7))
        .unwrap();
    assert_eq!(hub.current("j").unwrap().seq, version_event_id(7));
    assert_eq!(hub.current("j").unwrap().status, JobStatus::Running);
    assert_eq!(hub.version("j"), Some(7));
    // Without a version (a hub used on its own): from 1.
    hub.publish("k", Update::progress(0.1)).unwrap();
    assert_eq!(hub.current("k").unwrap().seq, 1);
    assert_eq!(hub.version("k"), Some(0));
    assert_eq!(hub.version("nobody"), None);
}

#[tokio::test(start_paused = true)]
async fn event_ids_follow_committed_versions_and_never_go_back() {
    let hub = hub();
    let v = version_event_id;
    hub.publish("j", Update::progress(0.1).with_version(3))
        .unwrap();
    let mut subscription = hub.subscribe("j").unwrap();
    let mut received = Vec::new();
    let seq = || hub.current("j").unwrap().seq;
    assert_eq!(seq(), v(3));
    received.push(subscription.next().await.unwrap().seq);

    // Live patches between two commits count up from the committed version's id.
    hub.publish("j", Update::step("a")).unwrap();
    assert_eq!(seq(), v(3) + 1);
    received.push(subscription.next().await.unwrap().seq);
    hub.publish("j", Update::step("b")).unwrap();
    assert_eq!(seq(), v(3) + 2);
    received.push(subscription.next().await.unwrap().seq);

    // A version learned from the feed sends nothing; the next emission jumps to it.
    hub.observe_version("j", 5);
    assert_eq!(seq(), v(3) + 2, "observing emits nothing");
    assert!(next_within_a_second(&mut subscription).await.is_none());
    assert_eq!(hub.version("j"), Some(5));
    hub.publish("j", Update::step("c")).unwrap();
    assert_eq!(seq(), v(5));
    received.push(subscription.next().await.unwrap().seq);

    // Older versions (observed, or carried by a stale update) never lower an id.
    hub.observe_version("j", 4);
    assert_eq!(hub.version("j"), Some(5));
    hub.publish("j", Update::step("d").with_version(2)).unwrap();
    assert_eq!(seq(), v(5) + 1);
    assert_eq!(hub.version("j"), Some(5));
    received.push(subscription.next().await.unwrap().seq);

    // A committed state at a newer version goes out at its id; an update that changes
    // nothing sends nothing, but its version is learned.
    hub.publish("j", Update::step("e").with_version(6)).unwrap();
    assert_eq!(seq(), v(6));
    received.push(subscription.next().await.unwrap().seq);
    hub.publish("j", Update::step("e").with_version(8)).unwrap();
    assert_eq!(seq(), v(6));
    assert_eq!(hub.version("j"), Some(8));
    hub.publish("j", Update::progress(0.2)).unwrap(); // coalesced: sent by the flush task
    received.push(next_within_a_second(&mut subscription).await.unwrap().seq);
    assert_eq!(seq(), v(8));
    assert_eq!(
        received,
        [v(3), v(3) + 1, v(3) + 2, v(5), v(5) + 1, v(6), v(8)],
        "every state once, ids strictly increasing"
    );

    // Reseeded from the store (a job queued again): the stored state's id, then on.
    let before = seq();
    assert!(hub.remove("j"));
    assert_eq!(subscription.next().await, None);
    hub.seed("j", stored(v(9), JobStatus::Queued, 0.0));
    assert!(seq() > before);
    assert_eq!(hub.version("j"), Some(9));
    hub.publish("j", Update::status(JobStatus::Running))
        .unwrap();
    assert_eq!(seq(), v(9) + 1);
    hub.observe_version("j", 10);
    hub.publish("j", Update::status(JobStatus::Completed).with_version(11))
        .unwrap();
    assert_eq!(seq(), v(11), "the terminal state at its version");

    // A finished job refuses changes, and a refused update teaches no version.
    assert!(
        hub.publish("j", Update::progress(0.9).with_version(12))
            .is_err()
    );
    assert_eq!(hub.version("j"), Some(11));
}

#[tokio::test(start_paused = true)]
async fn observing_a_version_of_a_job_the_hub_does_not_have_does_nothing() {
    let hub = hub();
    hub.observe_version("j", 5);
    assert!(hub.current("j").is_none());
    assert_eq!(hub.version("j"), None);
    assert_eq!(hub.stats().jobs, 0);
}

#[tokio::test(start_paused = true)]
async fn eta_follows_a_steady_rate() {
    let hub = hub();
    // 1% per second, reported every second.
    for second in 0..=2 {
        hub.publish("j", Update::progress(f64::from(second) / 100.0))
            .unwrap();
        let eta = hub.current("j").unwrap().eta_seconds;
        if second < 2 {
            assert_eq!(eta, None, "not enough observations at {second} s");
        }
        sleep(Duration::from_secs(1)).await;
    }
    for second in 3..=40 {
        hub.publish("j", Update::progress(f64::from(second) / 100.0))
            .unwrap();
        let event = hub.current("j").unwrap();
        let eta = event.eta_seconds.unwrap();
        let remaining = 100.0 - f64::from(second);
        assert!(
            (eta - remaining).abs() <= remaining * 0.1,
            "at {second} s: eta {eta}, expected about {remaining}"
        );
        sleep(Duration::from_secs(1)).await;
    }
}

#[tokio::test(start_paused = true)]
async fn eta_is_never_negative_or_nan() {
    let hub = hub();
    let pattern = [0.0, 0.3, 0.3, 0.2, 0.9, 0.9, 0.95, 1.0];
    for (i, progress) in pattern.into_iter().enumerate() {
        hub.publish("j", Update::progress(progress)).unwrap();
        if i % 2 == 0 {
            sleep(Duration::from_millis(300)).await;
        }
        hub.flush();
        if let Some(eta) = hub.current("j").unwrap().eta_seconds {
            assert!(eta.is_finite() && eta >= 0.0, "{eta}");
        }
    }
    assert_eq!(hub.current("j").unwrap().eta_seconds, Some(0.0));
    hub.publish("k", Update::progress(0.5)).unwrap();
    hub.publish("k", Update::status(JobStatus::Failed)).unwrap();
    assert_eq!(hub.current("k").unwrap().eta_seconds, None);
}

#[tokio::test(start_paused = true)]
async fn finished_jobs_without_subscribers_are_removed_after_the_grace() {
    let hub = Hub::new(HubConfig {
        idle_grace: Duration::from_secs(5),
        ..HubConfig::default()
    });
    hub.publish("watched", Update::progress(0.1)).unwrap();
    hub.publish("alone", Update::progress(0.1)).unwrap();
    hub.publish("running", Update::progress(0.1)).unwrap();
    let watcher = hub.subscribe("watched").unwrap();
    hub.publish("watched", Update::status(JobStatus::Completed))
        .unwrap();
    hub.publish("alone", Update::status(JobStatus::Cancelled))
        .unwrap();

    sleep(Duration::from_secs(4)).await;
    assert_eq!(hub.stats().jobs, 3, "within the grace");
    sleep(Duration::from_secs(2)).await;
    assert!(hub.current("alone").is_none(), "removed");
    assert!(hub.subscribe("alone").is_none());
    assert!(hub.current("watched").is_some(), "still watched");
    assert!(hub.current("running").is_some(), "running jobs stay");

    drop(watcher);
    sleep(Duration::from_secs(4)).await;
    assert!(
        hub.current("watched").is_some(),
        "the grace counts from the last subscriber"
    );
    sleep(Duration::from_secs(2)).await;
    assert!(hub.current("watched").is_none());
    assert_eq!(
        hub.stats(),
        skill_fleet_stream::HubStats {
            jobs: 1,
            subscribers: 0
        }
    );
}

#[tokio::test(start_paused = true)]
async fn a_removed_job_ends_its_subscriptions_after_the_final_state() {
    let hub = Hub::new(HubConfig {
        idle_grace: Duration::from_secs(1),
        ..HubConfig::default()
    });
    hub.seed("j", stored(9, JobStatus::Completed, 1.0));
    // A subscriber connected to a finished job gets the final state, then the end.
    let mut subscription = hub.subscribe("j").unwrap();
    assert_eq!(subscription.next().await.unwrap().seq, 9);
    assert!(subscription.is_live());
    drop(subscription);
    sleep(Duration::from_secs(2)).await;
    assert_eq!(hub.stats().jobs, 0);
}

#[tokio::test(start_paused = true)]
async fn remove_ends_subscriptions_after_the_pending_state_and_allows_a_fresh_start() {
    let hub = hub();
    hub.publish("j", Update::progress(0.1)).unwrap();
    hub.publish("j", Update::status(JobStatus::Failed)).unwrap();
    let mut subscription = hub.subscribe("j").unwrap();
    assert_eq!(subscription.current().seq, 2);
    assert!(hub.remove("j"));
    assert!(!hub.remove("j"));
    assert_eq!(subscription.next().await, None);
    assert_eq!(hub.stats(), skill_fleet_stream::HubStats::default());

    // Queued again: seeded with a seq above the old one.
    hub.seed("j", stored(3, JobStatus::Queued, 0.0));
    let mut again = hub.subscribe("j").unwrap();
    assert_eq!(again.current().status, JobStatus::Queued);
    hub.publish("j", Update::status(JobStatus::Running).with_progress(0.2))
        .unwrap();
    hub.publish("j", Update::progress(0.3)).unwrap(); // coalesced
    assert!(hub.remove("j"));
    let last = again.next().await.unwrap();
    assert_eq!(
        (last.seq, last.progress),
        (5, 0.3),
        "pending state sent before the end"
    );
    assert_eq!(again.next().await, None);
}

#[tokio::test(start_paused = true)]
async fn invalid_updates_change_nothing() {
    let hub = hub();
    hub.publish("j", Update::progress(0.5).with_cost(1.0).with_metric(0.3))
        .unwrap();
    let before = hub.current("j").unwrap();
    let bad = [
        Update::progress(1.5),
        Update::progress(-0.1),
        Update::progress(f64::NAN),
        Update::progress(0.9).with_cost(-1.0),
        Update::step("next").with_cost(f64::INFINITY),
        Update::progress(0.9).with_metric(f64::NAN),
    ];
    for update in bad {
        let err = hub.publish("j", update.clone()).unwrap_err();
        assert!(
            matches!(err, StreamError::InvalidUpdate { .. }),
            "{update:?}: {err:?}"
        );
        let message = err.to_string();
        assert!(message.contains("`j`"), "names the job: {message}");
        assert!(
            message.starts_with("invalid update for job `j`: "),
            "lowercase, names the job: {message}"
        );
    }
    hub.flush();
    sleep(TICK * 2).await;
    assert!(
        Arc::ptr_eq(&before, &hub.current("j").unwrap()),
        "nothing emitted"
    );
    hub.publish("j", Update::progress(0.6)).unwrap();
    let after = hub.current("j").unwrap();
    assert_eq!(
        (after.progress, after.cost_usd, after.metric),
        (0.6, 1.0, Some(0.3))
    );
    assert_eq!(after.step, None);

    assert!(hub.publish("new", Update::progress(2.0)).is_err());
    assert!(
        hub.current("new").is_none(),
        "a refused update creates no job"
    );
}

#[tokio::test(start_paused = true)]
async fn a_finished_job_refuses_changes_but_accepts_its_final_state_again() {
    let hub = hub();
    hub.publish("j", Update::progress(0.4)).unwrap();
    hub.publish("j", Update::status(JobStatus::Failed).with_message("boom"))
        .unwrap();
    let final_state = hub.current("j").unwrap();

    let err = hub.publish("j", Update::progress(0.5)).unwrap_err();
    assert_eq!(err, StreamError::Terminal { job_id: "j".into() });
    assert_eq!(
        err.to_string(),
        "job `j` has finished and accepts no further updates"
    );
    assert!(
        hub.publish("j", Update::status(JobStatus::Completed))
            .is_err()
    );

    hub.publish("j", Update::status(JobStatus::Failed).with_message("boom"))
        .unwrap();
    hub.publish("j", Update::default()).unwrap();
    assert!(Arc::ptr_eq(&final_state, &hub.current("j").unwrap()));
}

#[tokio::test(start_paused = true)]
async fn close_ends_subscriptions_and_refuses_publishes() {
    let hub = hub();
    hub.publish("a", Update::progress(0.1)).unwrap();
    hub.publish("b", Update::progress(0.1)).unwrap();
    let mut a = hub.subscribe("a").unwrap();
    let _ = a.current();
    let b = record(hub.subscribe("b").unwrap());
    hub.publish("a", Update::progress(0.2)).unwrap(); // pending, not yet sent

    hub.close();
    assert!(!a.is_live());
    let last = a.next().await.unwrap();
    assert_eq!(last.progress, 0.2, "close flushes first");
    assert_eq!(a.next().await, None);
    assert_eq!(b.await.unwrap().len(), 1);

    let err = hub.publish("a", Update::progress(0.3)).unwrap_err();
    assert_eq!(err, StreamError::Closed { job_id: "a".into() });
    assert!(hub.publish("c", Update::progress(0.3)).is_err());
    hub.seed("d", stored(1, JobStatus::Running, 0.0));
    assert!(hub.subscribe("a").is_none());
    assert_eq!(hub.stats(), skill_fleet_stream::HubStats::default());
    assert!(hub.is_closed());
    hub.close(); // twice is fine
}

#[tokio::test(start_paused = true)]
async fn dropping_the_last_hub_ends_subscriptions() {
    let hub = hub();
    hub.publish("j", Update::progress(0.1)).unwrap();
    let clone = hub.clone();
    let recorder = record(hub.subscribe("j").unwrap());
    drop(hub);
    clone.publish("j", Update::step("still here")).unwrap();
    clone.publish("j", Update::progress(0.9)).unwrap(); // coalesced, pending
    drop(clone);
    let seen = timeout(Duration::from_secs(1), recorder)
        .await
        .unwrap()
        .unwrap();
    let last = seen.last().unwrap();
    assert_eq!(
        (last.step.as_deref(), last.progress),
        (Some("still here"), 0.9)
    );
}

#[tokio::test(start_paused = true)]
async fn into_stream_yields_states_until_close() {
    use futures_util::StreamExt;

    let hub = hub();
    hub.publish("j", Update::progress(0.1)).unwrap();
    let stream = hub.subscribe("j").unwrap().into_stream();
    let collector = tokio::spawn(stream.collect::<Vec<_>>());
    sleep(TICK).await;
    hub.publish("j", Update::status(JobStatus::Completed))
        .unwrap();
    sleep(TICK).await;
    hub.close();
    let seen = collector.await.unwrap();
    let statuses: Vec<_> = seen.iter().map(|e| e.status).collect();
    assert_eq!(statuses, [JobStatus::Running, JobStatus::Completed]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_publishers_on_many_jobs() {
    let hub = hub();
    let mut producers = Vec::new();
    for p in 0..4 {
        let hub = hub.clone();
        producers.push(tokio::spawn(async move {
            for round in 1..=100 {
                for job in 0..50 {
                    let id = format!("job-{p}-{job}");
                    hub.publish(&id, Update::progress(f64::from(round) / 100.0))
                        .unwrap();
                }
                tokio::task::yield_now().await;
            }
        }));
    }
    for producer in producers {
        producer.await.unwrap();
    }
    hub.flush();
    assert_eq!(hub.stats().jobs, 200);
    for p in 0..4 {
        for job in 0..50 {
            let state = hub.current(&format!("job-{p}-{job}")).unwrap();
            assert_eq!(state.progress, 1.0);
        }
    }
}
