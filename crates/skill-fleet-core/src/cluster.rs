//! Several servers on one PostgreSQL database: this server's commits announced to the
//! others, and theirs brought into this server's change feed.
//!
//! - **Out:** every local commit is noted (job id and version) by [`Outbox`], a listener of
//!   the feed; the doorbell ([`JobStore::ring_doorbell`], a `NOTIFY` outside any
//!   transaction, so after the commits) rings right after each tick's flush of coalesced
//!   progress, with everything committed since the last ring (durable writes in between
//!   wait for it, at most a tick); if no flush comes (no flusher runs, or it is stuck), a
//!   change waits at most one tick. So one ring per tick. A failed ring keeps its changes
//!   for the next.
//! - **In:** a dedicated `LISTEN` connection on its own thread, polled every few
//!   milliseconds (reading the socket, no round trip) and checked with a round trip every
//!   few seconds. A doorbell from another server makes this one read the jobs changed since
//!   the last version it saw ([`JobStore::jobs_changed_since`]; nothing committed is
//!   skipped) and emit each as a `Committed` with `remote: true` and the row. While the
//!   listener is down the same read runs every tick (polling), and once more when it is back.
//! - A remote change to a job this server holds live for another attempt, or that ended or
//!   went back to the queue, drops the live entry: the database is the truth for it now. A
//!   remote change to the attempt this server holds live (the same worker writing through
//!   another server, or a heartbeat renewed there) only tells the caches, so the hub's
//!   newer live state is never replaced by an older stored one.

use std::collections::{BTreeSet, HashMap};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc::{self as sync_mpsc, RecvTimeoutError};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use skill_fleet_jobs::{ChangeNotifications, Doorbell, JobStore};
use skill_fleet_types::{Job, JobStatus};
use tokio::sync::{Notify, mpsc};

use crate::feed::{Audience, ChangeKind, ChangeListener, Committed};
use crate::service::JobService;

/// How often the listener connection's socket is read for doorbells.
pub const LISTEN_POLL: Duration = Duration::from_millis(10);

/// How often the listener connection is checked with a round trip.
pub const LISTENER_CHECK: Duration = Duration::from_secs(5);

/// Most jobs read per query when catching up with other servers' changes.
const CATCH_UP_PAGE: usize = 500;

/// How the cluster feed runs.
#[derive(Debug, Clone)]
pub struct ClusterSettings {
    /// This server run's number (its boot epoch): doorbells carry it, and a server ignores
    /// its own.
    pub run: u64,
    /// The tick: at most one doorbell per tick, and the polling period while the listener
    /// is down.
    pub tick: Duration,
    /// The change counter read before this server loaded any state (the hub's seeds): every
    /// change after it is fed, none before.
    pub since: u64,
}

/// What the cluster feed did, for `/metrics` ([`JobService::cluster_stats`]).
#[derive(Debug, Default)]
pub struct ClusterStats {
    /// Whether the listener connection is listening now.
    pub listening: AtomicBool,
    /// Doorbells this server rang.
    pub doorbells_rung: AtomicU64,
    /// Doorbells that could not be rung (kept for the next).
    pub doorbells_failed: AtomicU64,
    /// Other servers' doorbells heard.
    pub doorbells_heard: AtomicU64,
    /// Reads of changed jobs made because the listener was down (one per tick).
    pub polls: AtomicU64,
    /// Other servers' changes fed into this server's feed.
    pub remote_changes: AtomicU64,
    /// Times the listener connection was lost.
    pub listener_lost: AtomicU64,
}

/// Local commits waiting for the next doorbell.
#[derive(Default)]
struct Outbox {
    state: Mutex<OutboxState>,
    ready: Notify,
}

#[derive(Default)]
struct OutboxState {
    /// Job id → version after its latest change here (`None`: deleted).
    changes: HashMap<String, Option<u64>>,
    /// A change whose version is unknown (a write that may have committed): ring anyway, so
    /// the others read what is there.
    unlisted: bool,
    /// Versions this server committed and the catch-up read has not passed yet: read back,
    /// they are not fed to this server a second time.
    own: BTreeSet<u64>,
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    // Plain inserts and drains: a panic elsewhere cannot leave the state half-changed.
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

impl ChangeListener for Outbox {
    fn committed(&self, change: &Committed) {
        if change.remote {
            return;
        }
        let mut state = lock(&self.state);
        match (change.kind, change.version) {
            (ChangeKind::Deleted, _) => {
                state.changes.insert(change.job_id.clone(), None);
            }
            (_, Some(version)) => {
                state.own.insert(version);
                let entry = state.changes.entry(change.job_id.clone()).or_insert(None);
                *entry = Some(entry.map_or(version, |seen| seen.max(version)));
            }
            (_, None) => state.unlisted = true,
        }
        drop(state);
        self.ready.notify_one();
    }
}

impl Outbox {
    /// What the next doorbell says, if anything changed.
    fn take(&self) -> Option<Vec<(String, Option<u64>)>> {
        let mut state = lock(&self.state);
        if state.changes.is_empty() && !state.unlisted {
            return None;
        }
        state.unlisted = false;
        Some(state.changes.drain().collect())
    }

    /// Puts back the changes of a doorbell that did not ring.
    fn restore(&self, changes: Vec<(String, Option<u64>)>) {
        let mut state = lock(&self.state);
        state.unlisted = true;
        for (id, version) in changes {
            state.changes.entry(id).or_insert(version);
        }
    }

    /// Whether this server committed `version`.
    fn is_own(&self, version: u64) -> bool {
        lock(&self.state).own.contains(&version)
    }

    /// Forgets this server's versions up to `seen`: the catch-up read has passed them.
    fn forget_own_through(&self, seen: u64) {
        let mut state = lock(&self.state);
        state.own = state.own.split_off(&seen.saturating_add(1));
    }
}

/// What the listener thread reports.
#[derive(Debug)]
enum Heard {
    /// The connection is listening (first, or again after a failure).
    Listening,
    /// It failed; polling until it is back.
    Lost(String),
    /// A doorbell's payload.
    Rang(String),
}

/// Runs the cluster feed until `shutdown` resolves; returns at once on SQLite (one process
/// owns the database). See the module documentation.
pub async fn run_cluster_feed(
    service: &JobService,
    settings: ClusterSettings,
    shutdown: impl std::future::Future<Output = ()>,
) {
    if !service.store().is_shared() {
        return;
    }
    let outbox = Arc::new(Outbox::default());
    service.feed().subscribe(
        Audience::Runners,
        Arc::clone(&outbox) as Arc<dyn ChangeListener>,
    );
    let mut seen = settings.since;
    let (heard_tx, mut heard) = mpsc::unbounded_channel();
    let (stop_tx, stop_rx) = sync_mpsc::channel::<()>();
    let listener = {
        let store = service.store().clone();
        std::thread::Builder::new()
            .name("skill-fleet-listen".to_owned())
            .spawn(move || listen(&store, &heard_tx, &stop_rx))
    };
    if let Err(err) = &listener {
        tracing::error!(error = %err, "could not start the change listener; polling every tick");
    }
    let mut healthy = false;
    let mut poll = tokio::time::interval(settings.tick);
    poll.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    // When the oldest change not rung yet was noted; rung by the next flush, or a tick
    // later at the latest.
    let mut waiting_since: Option<tokio::time::Instant> = None;
    let deadline = |since: Option<tokio::time::Instant>| {
        since.map_or_else(tokio::time::Instant::now, |at| at + settings.tick)
    };
    tokio::pin!(shutdown);
    loop {
        tokio::select! {
            () = &mut shutdown => break,
            () = outbox.ready.notified(), if waiting_since.is_none() => {
                waiting_since = Some(tokio::time::Instant::now());
            }
            () = service.flushed.notified(), if waiting_since.is_some() => {
                waiting_since = None;
                ring(service, &outbox, settings.run).await;
            }
            () = tokio::time::sleep_until(deadline(waiting_since)), if waiting_since.is_some() => {
                waiting_since = None;
                ring(service, &outbox, settings.run).await;
            }
            Some(event) = heard.recv() => match event {
                Heard::Listening => {
                    service.cluster.listening.store(true, Ordering::Relaxed);
                    if !healthy {
                        tracing::info!("listening for other servers' changes");
                    }
                    healthy = true;
                    seen = catch_up(service, &outbox, seen).await;
                }
                Heard::Lost(reason) => {
                    service.cluster.listening.store(false, Ordering::Relaxed);
                    service.cluster.listener_lost.fetch_add(1, Ordering::Relaxed);
                    if healthy {
                        tracing::warn!(%reason, "change listener lost; polling every tick until it is back");
                    }
                    healthy = false;
                }
                Heard::Rang(payload) => {
                    service.cluster.doorbells_heard.fetch_add(1, Ordering::Relaxed);
                    seen = answer(service, &outbox, &settings, &payload, seen).await;
                }
            },
            _ = poll.tick(), if !healthy => {
                service.cluster.polls.fetch_add(1, Ordering::Relaxed);
                seen = catch_up(service, &outbox, seen).await;
            }
        }
    }
    // What committed since the last doorbell still reaches the others.
    ring(service, &outbox, settings.run).await;
    drop(stop_tx);
}

/// Sends what the outbox holds as one doorbell; keeps it for the next try on failure.
async fn ring(service: &JobService, outbox: &Outbox, run: u64) {
    let Some(changes) = outbox.take() else {
        return;
    };
    let payload = Doorbell::encode(run, &changes);
    if let Err(err) = service
        .blocking(move |store| store.ring_doorbell(&payload))
        .await
    {
        tracing::debug!(error = %err, "could not ring the doorbell; retrying with the next");
        service
            .cluster
            .doorbells_failed
            .fetch_add(1, Ordering::Relaxed);
        outbox.restore(changes);
    } else {
        service
            .cluster
            .doorbells_rung
            .fetch_add(1, Ordering::Relaxed);
    }
}

/// Handles one doorbell; returns the newest version seen.
async fn answer(
    service: &JobService,
    outbox: &Outbox,
    settings: &ClusterSettings,
    payload: &str,
    seen: u64,
) -> u64 {
    let changes = match Doorbell::parse(payload) {
        Some(bell) if bell.from() == settings.run => return seen,
        Some(Doorbell::Changes { changes, .. }) => changes,
        Some(Doorbell::Resync { .. }) | None => {
            service.feed().resync();
            return catch_up(service, outbox, seen).await;
        }
    };
    let mut newer = changes.is_empty();
    for (id, version) in changes {
        match version {
            Some(version) => newer |= version > seen,
            None => {
                service.live.forget(&id);
                let mut change = Committed::bare(ChangeKind::Deleted, &id);
                change.remote = true;
                service.emit(change);
            }
        }
    }
    if newer {
        catch_up(service, outbox, seen).await
    } else {
        seen
    }
}

/// Reads every job changed since `seen` and feeds those this server did not commit; returns
/// the newest version read (`seen` when the read fails: the next doorbell or poll retries).
async fn catch_up(service: &JobService, outbox: &Outbox, mut seen: u64) -> u64 {
    loop {
        let after = seen;
        let page = match service
            .blocking(move |store| store.jobs_changed_since(after, CATCH_UP_PAGE))
            .await
        {
            Ok(page) => page,
            Err(err) => {
                tracing::debug!(error = %err, "could not read other servers' changes; retrying");
                return seen;
            }
        };
        let full = page.len() == CATCH_UP_PAGE;
        for job in page {
            seen = seen.max(job.version);
            if !outbox.is_own(job.version) {
                feed_remote(service, job).await;
            }
        }
        outbox.forget_own_through(seen);
        if !full {
            return seen;
        }
    }
}

/// Feeds one job another server changed into this server's feed (and live set).
async fn feed_remote(service: &JobService, job: Job) {
    service
        .cluster
        .remote_changes
        .fetch_add(1, Ordering::Relaxed);
    if let Some(entry) = service.live.get(&job.id) {
        let live = entry.lock().await;
        let same_run = live.status == JobStatus::Running
            && job.status == JobStatus::Running
            && live.attempt == job.attempt;
        drop(live);
        if same_run {
            // Caches only: the hub holds this attempt's newest state already.
            let mut change = Committed::bare(ChangeKind::Progress, &job.id);
            change.version = Some(job.version);
            change.status = Some(job.status);
            change.remote = true;
            service.emit(change);
            return;
        }
        service.live.forget(&job.id);
        service.live.take_pending(&job.id);
        service.live.take_renewal(&job.id);
    }
    let kind = remote_kind(&job);
    let message = match job.status {
        JobStatus::Failed | JobStatus::Cancelled => job.error.clone(),
        _ => None,
    };
    let mut change = Committed::of(kind, job, message);
    change.remote = true;
    service.emit(change);
}

/// What a job read back after another server's change most likely went through.
fn remote_kind(job: &Job) -> ChangeKind {
    match job.status {
        JobStatus::Queued if job.attempt == 0 => ChangeKind::Created,
        JobStatus::Queued => ChangeKind::Requeued,
        JobStatus::Running => ChangeKind::Progress,
        JobStatus::Completed | JobStatus::Failed | JobStatus::Cancelled => ChangeKind::Ended,
    }
}

/// The listener thread: keeps a `LISTEN` connection (reopening it after a failure, at most
/// once a second), reads its socket every [`LISTEN_POLL`], checks it every
/// [`LISTENER_CHECK`], and reports what it heard; ends when `stop` is dropped or the feed is
/// gone.
fn listen(store: &JobStore, heard: &mpsc::UnboundedSender<Heard>, stop: &sync_mpsc::Receiver<()>) {
    let mut conn: Option<ChangeNotifications> = None;
    let mut last_check = Instant::now();
    let mut last_open: Option<Instant> = None;
    loop {
        match stop.recv_timeout(LISTEN_POLL) {
            Err(RecvTimeoutError::Timeout) => {}
            Ok(()) | Err(RecvTimeoutError::Disconnected) => return,
        }
        let Some(listening) = conn.as_mut() else {
            if last_open.is_some_and(|at| at.elapsed() < Duration::from_secs(1)) {
                continue;
            }
            last_open = Some(Instant::now());
            let report = match store.listen_for_changes() {
                Ok(Some(opened)) => {
                    conn = Some(opened);
                    last_check = Instant::now();
                    Heard::Listening
                }
                Ok(None) => return,
                Err(err) => Heard::Lost(err.to_string()),
            };
            if heard.send(report).is_err() {
                return;
            }
            continue;
        };
        let result = if last_check.elapsed() >= LISTENER_CHECK {
            last_check = Instant::now();
            listening.check().and_then(|()| listening.take())
        } else {
            listening.take()
        };
        let reports = match result {
            Ok(payloads) => payloads.into_iter().map(Heard::Rang).collect(),
            Err(err) => {
                conn = None;
                vec![Heard::Lost(err.to_string())]
            }
        };
        for report in reports {
            if heard.send(report).is_err() {
                return;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_outbox_keeps_the_newest_version_per_job_and_remembers_its_own() {
        let outbox = Outbox::default();
        let mut change = Committed::bare(ChangeKind::Progress, "a");
        change.version = Some(4);
        outbox.committed(&change);
        change.version = Some(9);
        outbox.committed(&change);
        outbox.committed(&Committed::bare(ChangeKind::Deleted, "b"));
        let mut remote = Committed::bare(ChangeKind::Progress, "c");
        remote.version = Some(10);
        remote.remote = true;
        outbox.committed(&remote);
        let mut changes = outbox.take().unwrap();
        changes.sort();
        assert_eq!(
            changes,
            vec![("a".to_owned(), Some(9)), ("b".to_owned(), None)]
        );
        assert!(outbox.take().is_none(), "taken once");
        assert!(outbox.is_own(4) && outbox.is_own(9) && !outbox.is_own(10));
        outbox.forget_own_through(4);
        assert!(!outbox.is_own(4) && outbox.is_own(9));
    }

    #[test]
    fn an_unknown_version_still_rings_and_a_failed_ring_is_kept() {
        let outbox = Outbox::default();
        outbox.committed(&Committed::bare(ChangeKind::Uncertain, "a"));
        assert_eq!(outbox.take(), Some(vec![]));
        outbox.restore(vec![("x".to_owned(), Some(3))]);
        assert_eq!(outbox.take(), Some(vec![("x".to_owned(), Some(3))]));
    }
}
