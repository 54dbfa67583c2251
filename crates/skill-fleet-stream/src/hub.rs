//! The [`Hub`]: per-job aggregators, the flush task, and clean-up of finished jobs.
//!
//! Layout: a fixed number of shards, each a `Mutex<HashMap<job id, Arc<Slot>>>` held only
//! for a lookup or an insert; each [`Slot`] has its own mutex around the merged state and a
//! `watch::Sender` that every subscriber of the job shares. Jobs with unsent changes are
//! queued in a dirty list (once each), so a flush touches only those. Jobs in a terminal
//! status are listed apart, so the clean-up never scans live jobs.
//!
//! Lock order: shard, then slot, then the dirty or finished list. The flush task takes
//! the lists first but releases them before it locks a slot or a shard.

use std::collections::HashMap;
use std::fmt;
use std::hash::{BuildHasher, RandomState};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError, Weak};

use chrono::Utc;
use skill_fleet_types::StreamEvent;
use tokio::sync::{Notify, watch};
use tokio::time::{Duration, Instant, MissedTickBehavior};

use crate::emitted::Emitted;
use crate::error::StreamError;
use crate::eta::Eta;
use crate::id::{event_id_version, next_event_id};
use crate::subscription::Subscription;
use crate::update::{Fields, Update};

/// Number of shards of the job map; a power of two.
const SHARDS: usize = 64;

/// Shortest flush period; `tokio::time::interval` refuses zero.
const MIN_EMIT_INTERVAL: Duration = Duration::from_millis(1);

/// How a [`Hub`] paces and forgets.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HubConfig {
    /// How often the flush task sends changed states (default 100 ms). Also the quiet
    /// period after which a job's next update is sent at once. Values under 1 ms count
    /// as 1 ms.
    pub emit_interval: Duration,
    /// How long a job in a terminal status, with no subscriber, is kept (default 30 s);
    /// checked on every flush tick.
    pub idle_grace: Duration,
}

impl Default for HubConfig {
    fn default() -> HubConfig {
        HubConfig {
            emit_interval: Duration::from_millis(100),
            idle_grace: Duration::from_secs(30),
        }
    }
}

/// A snapshot of the hub's size.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct HubStats {
    /// Jobs the hub holds.
    pub jobs: usize,
    /// Live subscriptions, over all jobs.
    pub subscribers: usize,
}

/// Aggregates progress of many jobs and fans the latest state out to subscribers.
///
/// Cheap to clone: every clone is the same hub. See the [crate documentation](crate) for
/// how updates are merged and paced. When the last clone is dropped, pending changes are
/// sent, every subscription ends and the flush task stops, as with [`Hub::close`].
#[derive(Clone)]
pub struct Hub {
    inner: Arc<Inner>,
}

/// One shard of the job map.
type Shard = Mutex<HashMap<String, Arc<Slot>>>;

struct Inner {
    config: HubConfig,
    hasher: RandomState,
    shards: Box<[Shard]>,
    /// Jobs with changes not yet sent; a job is here at most once (`SlotState::queued`).
    dirty: Mutex<Vec<Arc<Slot>>>,
    /// Jobs in a terminal status, with the time since which they were seen unwatched.
    finished: Mutex<Vec<(Arc<Slot>, Instant)>>,
    closed: AtomicBool,
    /// Wakes the flush task to stop (on close, or when the last hub is dropped).
    stop: Arc<Notify>,
}

/// One job.
struct Slot {
    job_id: String,
    tx: watch::Sender<Arc<Emitted>>,
    state: Mutex<SlotState>,
}

struct SlotState {
    /// The merged state, possibly ahead of the last emitted one.
    fields: Fields,
    /// `seq` of the last emitted (or seeded) state.
    seq: u64,
    /// The newest committed version of the job the hub has learned (0: none); the next
    /// emitted state's `seq` is at least its event id.
    version: u64,
    /// When a state was last emitted; `None` for a seeded job not updated since.
    last_emit: Option<Instant>,
    /// `fields` may differ from the last emitted state.
    unsent: bool,
    /// The slot is in the dirty list.
    queued: bool,
    /// The job was taken out of the hub; a publisher still holding the slot looks again.
    removed: bool,
    eta: Eta,
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

impl Slot {
    /// Sends `state.fields` to subscribers as the next state of the job.
    fn emit(&self, state: &mut SlotState, now: Instant) {
        state.seq = next_event_id(state.seq, state.version);
        state.last_emit = Some(now);
        state.unsent = false;
        let event = event(&self.job_id, state);
        self.tx.send_replace(Arc::new(Emitted::new(event)));
    }

    /// Emits if the merged state differs from the last emitted one.
    fn emit_if_changed(&self, state: &mut SlotState, now: Instant) -> bool {
        if !state.unsent {
            return false;
        }
        if state.fields.matches(&self.tx.borrow()) {
            state.unsent = false;
            return false;
        }
        self.emit(state, now);
        true
    }
}

fn event(job_id: &str, state: &SlotState) -> StreamEvent {
    let fields = &state.fields;
    StreamEvent {
        job_id: job_id.to_owned(),
        seq: state.seq,
        status: fields.status,
        step: fields.progress.step.clone(),
        progress: fields.progress.progress,
        cost_usd: fields.progress.cost_usd,
        metric: fields.progress.metric,
        eta_seconds: state.eta.estimate(fields.progress.progress, fields.status),
        message: fields.progress.message.clone(),
        at: Utc::now(),
    }
}

impl Hub {
    /// Creates a hub and spawns its flush task, which ticks every
    /// [`emit_interval`](HubConfig::emit_interval) and ends on [`close`](Hub::close) or when
    /// the last clone of the hub is dropped.
    ///
    /// # Panics
    ///
    /// When called outside a tokio runtime (the flush task needs one).
    pub fn new(config: HubConfig) -> Hub {
        let config = HubConfig {
            emit_interval: config.emit_interval.max(MIN_EMIT_INTERVAL),
            ..config
        };
        let inner = Arc::new(Inner {
            config,
            hasher: RandomState::new(),
            shards: (0..SHARDS).map(|_| Mutex::default()).collect(),
            dirty: Mutex::default(),
            finished: Mutex::default(),
            closed: AtomicBool::new(false),
            stop: Arc::new(Notify::new()),
        });
        tokio::spawn(flush_task(
            Arc::downgrade(&inner),
            Arc::clone(&inner.stop),
            config.emit_interval,
        ));
        Hub { inner }
    }

    /// The configuration in force (with `emit_interval` at least 1 ms).
    pub fn config(&self) -> HubConfig {
        self.inner.config
    }

    /// Merges a partial update into the job's live state, creating the job if the hub does
    /// not have it (status [`Running`](crate::JobStatus::Running), progress and cost 0).
    ///
    /// Event ids: each emitted state's `seq` is one more than the last one, and at least
    /// the event id of the newest version the hub knows for the job
    /// ([`version_event_id`](crate::version_event_id)); an update carrying a
    /// [`version`](Update::version) raises that version first (an older one is kept, and
    /// never lowers an id). A job first seen here starts at
    /// `max(1, version << VERSION_SHIFT)`.
    ///
    /// The update is validated first; a refused update changes nothing. Pacing:
    ///
    /// - sent at once: the job's first state, the first change after a quiet period (no
    ///   state sent within the last `emit_interval`), a change of step or status, a
    ///   terminal status, and a committed state newer than the version the hub knows (it was
    ///   coalesced where it was written: another server's row, read back);
    /// - otherwise coalesced: the flush task sends the merged state on its next tick, if it
    ///   still differs from the last one sent.
    ///
    /// An update that changes nothing sends nothing (a newer version it carries is still
    /// learned). Once the job is terminal, an update
    /// that would change any field is refused with [`StreamError::Terminal`]; repeating the
    /// final state (same status, same values) is accepted and does nothing.
    ///
    /// # Errors
    ///
    /// [`StreamError::InvalidUpdate`] for an out-of-range number, [`StreamError::Terminal`]
    /// for a change to a finished job, [`StreamError::Closed`] after [`Hub::close`].
    pub fn publish(&self, job_id: &str, update: Update) -> Result<(), StreamError> {
        update
            .validate()
            .map_err(|reason| StreamError::InvalidUpdate {
                job_id: job_id.to_owned(),
                reason,
            })?;
        let inner = &*self.inner;
        let closed = || StreamError::Closed {
            job_id: job_id.to_owned(),
        };
        if inner.closed.load(Ordering::Acquire) {
            return Err(closed());
        }
        let now = Instant::now();
        loop {
            let slot = {
                let mut shard = lock(inner.shard(job_id));
                match shard.get(job_id) {
                    Some(slot) => Arc::clone(slot),
                    None => {
                        // Checked under the shard lock, so nothing is created after `close`.
                        if inner.closed.load(Ordering::Acquire) {
                            return Err(closed());
                        }
                        let slot = inner.create(job_id, update, now);
                        shard.insert(job_id.to_owned(), Arc::clone(&slot));
                        drop(shard);
                        if lock(&slot.state).fields.status.is_terminal() {
                            inner.finished_now(slot, now);
                        }
                        return Ok(());
                    }
                }
            };
            let state = lock(&slot.state);
            if state.removed {
                // Removed between the lookup and the lock: look again.
                continue;
            }
            return inner.apply(&slot, state, update, now);
        }
    }

    /// Inserts a job's last known state (for example one read from storage, whose `seq` is
    /// the event id of its `version`) if the hub does not have the job; does nothing if it
    /// does, or after [`close`](Hub::close).
    ///
    /// Subscribers get this state at once; the job's next emitted state has
    /// `seq = state.seq + 1` (or more, once a newer version is learned), and the hub knows
    /// the job at the version `state.seq` is the id of. The event's `job_id` is set to
    /// `job_id`.
    pub fn seed(&self, job_id: &str, mut state: StreamEvent) {
        let inner = &*self.inner;
        state.job_id = job_id.to_owned();
        let terminal = state.status.is_terminal();
        let slot = {
            let mut shard = lock(inner.shard(job_id));
            if inner.closed.load(Ordering::Acquire) || shard.contains_key(job_id) {
                return;
            }
            let slot = Arc::new(Slot {
                job_id: job_id.to_owned(),
                state: Mutex::new(SlotState {
                    fields: Fields::of(&state),
                    seq: state.seq,
                    version: event_id_version(state.seq),
                    last_emit: None,
                    unsent: false,
                    queued: false,
                    removed: false,
                    eta: Eta::default(),
                }),
                tx: watch::Sender::new(Arc::new(Emitted::new(state))),
            });
            shard.insert(job_id.to_owned(), Arc::clone(&slot));
            slot
        };
        if terminal {
            inner.finished_now(slot, Instant::now());
        }
    }

    /// Learns that the job was committed at `version` (for example from the change feed),
    /// without sending anything: the job's next emitted state gets at least that version's
    /// event id. An older version than the one known changes nothing, and so does a job the
    /// hub does not have (its first state will be seeded or published with its version).
    pub fn observe_version(&self, job_id: &str, version: u64) {
        let Some(slot) = lock(self.inner.shard(job_id)).get(job_id).cloned() else {
            return;
        };
        let mut state = lock(&slot.state);
        state.version = state.version.max(version);
    }

    /// The newest committed version the hub knows for a job (0 when it learned none);
    /// `None` if the hub does not have the job.
    pub fn version(&self, job_id: &str) -> Option<u64> {
        let slot = lock(self.inner.shard(job_id)).get(job_id).cloned()?;
        let version = lock(&slot.state).version;
        Some(version)
    }

    /// Subscribes to a job's states; `None` if the hub does not have the job.
    ///
    /// The subscription's [`current`](Subscription::current) is the latest emitted state at
    /// once; [`next`](Subscription::next) waits for a newer one.
    pub fn subscribe(&self, job_id: &str) -> Option<Subscription> {
        let shard = lock(self.inner.shard(job_id));
        // Subscribing under the shard lock: the clean-up, which checks for subscribers
        // under the same lock, cannot remove the job in between.
        shard
            .get(job_id)
            .map(|slot| Subscription::new(slot.tx.subscribe()))
    }

    /// The latest emitted state of a job (not updates still being coalesced); `None` if the
    /// hub does not have the job.
    pub fn current(&self, job_id: &str) -> Option<Arc<Emitted>> {
        let slot = lock(self.inner.shard(job_id)).get(job_id).cloned()?;
        let event = Arc::clone(&slot.tx.borrow());
        Some(event)
    }

    /// Takes a job out of the hub now, whatever its status; returns whether the hub had it.
    ///
    /// Pending changes are sent first; then the job's subscriptions end (their
    /// [`next`](Subscription::next) returns `None` once they have read the final state). A
    /// later [`publish`](Hub::publish) or [`seed`](Hub::seed) starts the job afresh, for
    /// example when a finished job is queued again.
    pub fn remove(&self, job_id: &str) -> bool {
        let inner = &*self.inner;
        let Some(slot) = lock(inner.shard(job_id)).remove(job_id) else {
            return false;
        };
        {
            let mut state = lock(&slot.state);
            slot.emit_if_changed(&mut state, Instant::now());
            state.removed = true;
        }
        // Drop the lists' references too, so the sender goes and subscriptions end now.
        lock(&inner.dirty).retain(|held| !Arc::ptr_eq(held, &slot));
        lock(&inner.finished).retain(|(held, _)| !Arc::ptr_eq(held, &slot));
        true
    }

    /// Sends every job's unsent changes now, without waiting for the next tick (for
    /// example before persisting the live states on shutdown).
    pub fn flush(&self) {
        self.inner.flush(Instant::now());
    }

    /// Flushes, then ends every subscription (their [`next`](Subscription::next) returns
    /// `None` once they have read the final states), forgets every job and stops the flush
    /// task. Later [`publish`](Hub::publish) calls fail with [`StreamError::Closed`];
    /// [`seed`](Hub::seed) does nothing and [`subscribe`](Hub::subscribe) returns `None`.
    pub fn close(&self) {
        let inner = &*self.inner;
        if inner.closed.swap(true, Ordering::AcqRel) {
            return;
        }
        inner.flush(Instant::now());
        for shard in inner.shards.iter() {
            // Dropping the slots drops their senders, which ends the subscriptions.
            let slots: Vec<_> = lock(shard).drain().collect();
            drop(slots);
        }
        lock(&inner.dirty).clear();
        lock(&inner.finished).clear();
        inner.stop.notify_one();
        tracing::debug!("stream hub closed");
    }

    /// True once [`close`](Hub::close) was called.
    pub fn is_closed(&self) -> bool {
        self.inner.closed.load(Ordering::Acquire)
    }

    /// How many jobs and subscriptions the hub holds (walks every job).
    pub fn stats(&self) -> HubStats {
        let mut stats = HubStats::default();
        for shard in self.inner.shards.iter() {
            let shard = lock(shard);
            stats.jobs += shard.len();
            stats.subscribers += shard.values().map(|s| s.tx.receiver_count()).sum::<usize>();
        }
        stats
    }
}

impl fmt::Debug for Hub {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Hub")
            .field("config", &self.inner.config)
            .field("closed", &self.is_closed())
            .finish_non_exhaustive()
    }
}

impl Inner {
    fn shard(&self, job_id: &str) -> &Shard {
        // Truncation is intended: only the low bits pick the shard.
        let index = (self.hasher.hash_one(job_id) as usize) & (SHARDS - 1);
        &self.shards[index]
    }

    /// A new job whose first state, emitted at once, is `update` over a fresh state.
    fn create(&self, job_id: &str, update: Update, now: Instant) -> Arc<Slot> {
        let mut eta = Eta::default();
        if let Some(progress) = update.progress {
            eta.observe(now, progress);
        }
        let version = update.version.unwrap_or(0);
        let mut fields = Fields::fresh();
        fields.merge(update);
        let state = SlotState {
            fields,
            seq: next_event_id(0, version),
            version,
            last_emit: Some(now),
            unsent: false,
            queued: false,
            removed: false,
            eta,
        };
        let first = event(job_id, &state);
        Arc::new(Slot {
            job_id: job_id.to_owned(),
            tx: watch::Sender::new(Arc::new(Emitted::new(first))),
            state: Mutex::new(state),
        })
    }

    /// Merges a validated update into a live job whose state lock is held.
    fn apply(
        &self,
        slot: &Arc<Slot>,
        mut state: MutexGuard<'_, SlotState>,
        update: Update,
        now: Instant,
    ) -> Result<(), StreamError> {
        if state.fields.status.is_terminal() && state.fields.would_change(&update) {
            return Err(StreamError::Terminal {
                job_id: slot.job_id.clone(),
            });
        }
        // A committed state newer than what the slot knows was coalesced by whoever wrote
        // it (at most one per job per tick): it goes out at once, not a tick later again.
        let committed = update
            .version
            .is_some_and(|version| version > state.version);
        if let Some(version) = update.version {
            state.version = state.version.max(version);
        }
        if state.fields.status.is_terminal() {
            return Ok(());
        }
        if let Some(progress) = update.progress {
            state.eta.observe(now, progress);
        }
        let merged = state.fields.merge(update);
        if !merged.changed {
            return Ok(());
        }
        state.unsent = true;
        let quiet = state
            .last_emit
            .is_none_or(|at| now.saturating_duration_since(at) >= self.config.emit_interval);
        if merged.urgent || quiet || committed {
            slot.emit_if_changed(&mut state, now);
            if state.fields.status.is_terminal() {
                drop(state);
                self.finished_now(Arc::clone(slot), now);
            }
        } else if !state.queued {
            state.queued = true;
            lock(&self.dirty).push(Arc::clone(slot));
        }
        Ok(())
    }

    /// Lists a job that just reached a terminal status for clean-up.
    fn finished_now(&self, slot: Arc<Slot>, now: Instant) {
        lock(&self.finished).push((slot, now));
    }

    /// Emits every job with unsent changes.
    fn flush(&self, now: Instant) -> usize {
        let dirty = std::mem::take(&mut *lock(&self.dirty));
        let mut emitted = 0;
        for slot in dirty {
            let mut state = lock(&slot.state);
            state.queued = false;
            if slot.emit_if_changed(&mut state, now) {
                emitted += 1;
            }
        }
        emitted
    }

    /// Removes finished jobs that nobody watched for `idle_grace`.
    fn clean_up(&self, now: Instant) {
        let grace = self.config.idle_grace;
        let mut expired = Vec::new();
        {
            let mut finished = lock(&self.finished);
            if finished.is_empty() {
                return;
            }
            finished.retain_mut(|(slot, idle_since)| {
                if slot.tx.receiver_count() > 0 {
                    *idle_since = now;
                    true
                } else if now.saturating_duration_since(*idle_since) >= grace {
                    expired.push(Arc::clone(slot));
                    false
                } else {
                    true
                }
            });
        }
        let mut kept = Vec::new();
        for slot in expired {
            let mut shard = lock(self.shard(&slot.job_id));
            if slot.tx.receiver_count() > 0 {
                // Subscribed since the check above: keep it for another grace period.
                kept.push((slot, now));
            } else if shard
                .get(&slot.job_id)
                .is_some_and(|held| Arc::ptr_eq(held, &slot))
            {
                shard.remove(&slot.job_id);
                lock(&slot.state).removed = true;
                tracing::debug!(job.id = %slot.job_id, "finished job removed from stream hub");
            }
        }
        if !kept.is_empty() {
            lock(&self.finished).extend(kept);
        }
    }
}

impl Drop for Inner {
    /// The last hub is gone: send what is pending (its subscribers then see their jobs'
    /// final states and the end), and stop the flush task.
    fn drop(&mut self) {
        if !self.closed.load(Ordering::Acquire) {
            self.flush(Instant::now());
        }
        self.stop.notify_one();
    }
}

/// Ticks every `period`: flushes, then cleans up. Holds only a weak reference, so it ends
/// when the last [`Hub`] is dropped, or when told to stop.
async fn flush_task(hub: Weak<Inner>, stop: Arc<Notify>, period: Duration) {
    let mut ticker = tokio::time::interval_at(Instant::now() + period, period);
    ticker.set_missed_tick_behavior(MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            biased;
            () = stop.notified() => break,
            _ = ticker.tick() => {}
        }
        let Some(inner) = hub.upgrade() else { break };
        if inner.closed.load(Ordering::Acquire) {
            break;
        }
        let now = Instant::now();
        inner.flush(now);
        inner.clean_up(now);
    }
    tracing::trace!("stream hub flush task ended");
}
