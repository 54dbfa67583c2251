//! [`Subscription`]: one subscriber's view of a job, with `watch` semantics.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use futures_util::Stream;
use skill_fleet_types::StreamEvent;

use crate::emitted::Emitted;
use tokio::sync::watch;

/// A subscriber's handle on one job's emitted states.
///
/// Holds one latest-value slot (a `tokio::sync::watch` receiver), so its memory does not
/// grow however far behind it falls: a slow subscriber skips straight to the newest state.
/// Dropping it unsubscribes.
///
/// "Seen" is tracked by `seq`: a new subscription has seen nothing, so its first
/// [`next`](Subscription::next) returns the job's current state at once, unless
/// [`current`](Subscription::current) was called first.
#[derive(Debug)]
pub struct Subscription {
    rx: watch::Receiver<Arc<Emitted>>,
    /// `seq + 1` of the newest state returned; 0 when none was.
    seen: AtomicU64,
}

impl Subscription {
    pub(crate) fn new(rx: watch::Receiver<Arc<Emitted>>) -> Subscription {
        Subscription {
            rx,
            seen: AtomicU64::new(0),
        }
    }

    /// Marks `event` seen; false if it (or a newer state) already was.
    fn see(&self, event: &StreamEvent) -> bool {
        see(&self.seen, event)
    }

    /// The latest emitted state of the job; it counts as seen, so
    /// [`next`](Subscription::next) waits for a newer one.
    pub fn current(&self) -> Arc<Emitted> {
        let event = Arc::clone(&self.rx.borrow());
        self.see(&event);
        event
    }

    /// Waits for a state newer than the last one seen and returns it; if several were
    /// emitted meanwhile, only the newest.
    ///
    /// Returns `None` once the job was removed from the hub, or the hub was closed or
    /// dropped, after handing out any final state not yet seen.
    ///
    /// Cancel-safe: dropping the future loses nothing.
    pub async fn next(&mut self) -> Option<Arc<Emitted>> {
        // The state is looked at only when it may be one not seen yet: nothing was handed
        // out, the channel says a newer one was sent (or the job ended, which may leave a
        // final state), or `changed` just said so (it marks the newest as read). With
        // thousands of subscribers, the wait after each state then costs no lock and no
        // reference count.
        let mut changed = self.seen.load(Ordering::Acquire) == 0;
        loop {
            if changed || !matches!(self.rx.has_changed(), Ok(false)) {
                let current = self.rx.borrow_and_update();
                if see(&self.seen, &current) {
                    return Some(Arc::clone(&current));
                }
            }
            self.rx.changed().await.ok()?;
            changed = true;
        }
    }

    /// True while the job is in the hub: the hub was not closed or dropped and the job was
    /// not removed.
    pub fn is_live(&self) -> bool {
        self.rx.has_changed().is_ok()
    }

    /// The states as a [`Stream`]: each item is what [`next`](Subscription::next) would
    /// return, and the stream ends where `next` returns `None`.
    pub fn into_stream(self) -> impl Stream<Item = Arc<Emitted>> + Send + 'static {
        futures_util::stream::unfold(self, |mut subscription| async move {
            let event = subscription.next().await?;
            Some((event, subscription))
        })
    }
}

/// Marks `event` seen in `seen` (`seq + 1` of the newest state handed out); false if it (or
/// a newer state) already was.
fn see(seen: &AtomicU64, event: &StreamEvent) -> bool {
    let mark = event.seq.saturating_add(1);
    seen.fetch_max(mark, Ordering::AcqRel) < mark
}
