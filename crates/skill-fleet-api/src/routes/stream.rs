//! `GET /api/v1/jobs/{id}/stream`: a job's live progress as Server-Sent Events.
//!
//! The first event is the job's current state, at once. Then every emitted state (the hub
//! coalesces bursts to about one per tick; a slow client only ever gets the newest). A
//! terminal state is sent and the stream ends. The stream also ends when the server shuts
//! down (the hub closes every subscription), so open streams never block shutdown.
//!
//! At most [`crate::ApiConfig::max_sse_connections`] streams are open at once: each holds a
//! [`StreamSlot`] for its whole life (the slot lives in the stream's body, so it is released
//! when the stream ends for any reason: terminal state, client gone, shutdown). Past the
//! limit a new stream is refused with `503` and `Retry-After`.
//!
//! Fan-out: every subscriber of a job is sent the same bytes. Each emitted state carries
//! its `text/event-stream` frame, encoded once by the first stream that sends it
//! ([`Emitted::sse_frame`]); the others clone a reference count. So the body is written
//! here (the frames, the `retry:` hint on the first one, keep-alive comments, the headers
//! axum's `Sse` would set) rather than through `Sse`, which would encode every event again
//! for every subscriber. The keep-alive timer is re-armed only when it fires, not after every
//! event, and not looked at before its deadline.

use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::extract::State;
use axum::http::{HeaderMap, HeaderValue, header};
use axum::response::{IntoResponse, Response};
use futures_util::Stream;
use serde::Deserialize;
use skill_fleet_stream::Emitted;
use tokio::time::{Instant, Sleep};

use crate::error::ApiError;
use crate::extract::{ApiQuery, JobId};
use crate::state::{AppState, StreamSlot};
use skill_fleet_core::StreamStart;

/// The keep-alive of an idle stream: an empty comment.
const KEEP_ALIVE: Bytes = Bytes::from_static(b":\n\n");

/// The resolution of tokio's timers.
const TIMER_GRANULARITY: Duration = Duration::from_millis(1);

/// `Retry-After` of a stream refused because too many are open, in seconds.
pub const STREAM_RETRY_AFTER_SECONDS: u64 = 5;

/// Query of the stream routes: browsers cannot set `Last-Event-ID` on a new `EventSource`, so
/// it may also come as `lastEventId`.
#[derive(Debug, Default, Deserialize)]
pub struct StreamQuery {
    /// The last sequence number the client has seen.
    #[serde(rename = "lastEventId")]
    pub last_event_id: Option<String>,
    /// The bearer token, for clients that cannot set headers (a browser's `EventSource`);
    /// checked by the auth layer, only on the stream routes.
    pub token: Option<String>,
}

/// `GET /api/v1/jobs/{id}/stream` and `GET /api/v1/optimization/{job_id}/stream`.
#[utoipa::path(
    get,
    path = "/api/v1/jobs/{id}/stream",
    operation_id = "stream_job",
    tag = "stream",
    summary = "Follow a job's progress (SSE)",
    params(crate::openapi::StreamParams),
    responses(crate::openapi::StreamResponses),
    security(("bearer" = []), ("token" = []))
)]
pub async fn stream(
    State(state): State<AppState>,
    JobId(id): JobId,
    headers: HeaderMap,
    ApiQuery(query): ApiQuery<StreamQuery>,
) -> Result<Response, ApiError> {
    // Taken first: a full server refuses before any database work.
    let Some(slot) = state.try_open_stream() else {
        // No free slot: every one of the `max` slots is taken.
        let max = state.max_streams();
        return Err(ApiError::AtLimit {
            message: format!("too many open streams: {max} of {max}; retry later"),
            retry_after_seconds: STREAM_RETRY_AFTER_SECONDS,
        });
    };
    let last_seen = headers
        .get("last-event-id")
        .and_then(|value| value.to_str().ok())
        .map(str::to_owned)
        .or(query.last_event_id)
        .and_then(|value| value.trim().parse::<u64>().ok());
    let start = state.service().stream(&id).await?;
    let config = state.config();
    let frames = sse_frames(
        start,
        slot,
        last_seen,
        config.sse_retry,
        config.sse_keep_alive,
    );
    let mut response = Body::from_stream(frames).into_response();
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/event-stream"),
    );
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    Ok(response)
}

/// The job's states, as the stream reads them.
type States = Pin<Box<dyn Stream<Item = Arc<Emitted>> + Send>>;

/// The body of one stream: the frames of the states worth sending, the `retry:` hint on
/// the first, keep-alive comments while nothing else goes out.
///
/// Polled by hand rather than built from combinators, because with thousands of
/// subscribers on one job every poll runs thousands of times a tick: a woken stream reads
/// the newest state and hands out its shared frame, and looks at its keep-alive timer only
/// when the timer may have fired (its deadline passed) or was never polled by this task.
struct Frames {
    /// `None` once the stream is over (a terminal state went out, or the states ended).
    states: Option<States>,
    last_seen: Option<u64>,
    /// Whether a frame went out yet (the first event carries the `retry:` hint).
    sent_any: bool,
    retry: Duration,
    keep_alive: Duration,
    /// When the last frame (an event or a keep-alive) went out.
    last_sent: Instant,
    /// Fires at `alive_at`, which is at or before `last_sent + keep_alive`; re-armed only
    /// when it fires, so an event costs no timer update.
    alive: Pin<Box<Sleep>>,
    alive_at: Instant,
    /// The waker the timer was last polled with: while the same task polls, the timer needs
    /// no polling before its deadline.
    alive_waker: Option<Waker>,
    /// Held while the stream lives; dropped with the body when the stream ends or its
    /// connection goes.
    _slot: StreamSlot,
}

fn sse_frames(
    start: StreamStart,
    slot: StreamSlot,
    last_seen: Option<u64>,
    retry: Duration,
    keep_alive: Duration,
) -> Frames {
    let states: States = match start {
        // A new subscription has seen nothing: its first state is the current one, at once.
        StreamStart::Live(subscription) => Box::pin(subscription.into_stream()),
        StreamStart::Finished(event) => {
            Box::pin(futures_util::stream::iter([Arc::new(Emitted::new(event))]))
        }
    };
    let now = Instant::now();
    Frames {
        states: Some(states),
        last_seen,
        sent_any: false,
        retry,
        keep_alive,
        last_sent: now,
        alive: Box::pin(tokio::time::sleep_until(now + keep_alive)),
        alive_at: now + keep_alive,
        alive_waker: None,
        _slot: slot,
    }
}

impl Frames {
    /// The frame of a state worth sending (newer than what the client has seen, or
    /// terminal); `None` for one to skip. Ends the stream after a terminal state, or when
    /// the state cannot be encoded.
    fn frame(&mut self, state: &Emitted) -> Option<Bytes> {
        let terminal = state.status.is_terminal();
        if !terminal && self.last_seen.is_some_and(|seen| state.seq <= seen) {
            return None;
        }
        if terminal {
            self.states = None;
        }
        self.last_seen = Some(state.seq);
        let frame = if self.sent_any {
            state.sse_frame()
        } else {
            state.sse_frame_with_retry(self.retry)
        };
        match frame {
            Ok(frame) => {
                self.sent_any = true;
                Some(frame)
            }
            Err(err) => {
                tracing::error!(job.id = %state.job_id, error = %err, "could not encode stream event");
                self.states = None;
                None
            }
        }
    }

    /// A keep-alive if nothing went out for `keep_alive`, else pending (with the timer set
    /// to wake this task).
    fn poll_keep_alive(&mut self, cx: &mut Context<'_>) -> Poll<Bytes> {
        loop {
            let now = Instant::now();
            let registered = self
                .alive_waker
                .as_ref()
                .is_some_and(|waker| waker.will_wake(cx.waker()));
            // (A millisecond early already counts as due: the timer fires on whole
            // milliseconds.)
            if registered && now + TIMER_GRANULARITY < self.alive_at {
                return Poll::Pending;
            }
            if self.alive.as_mut().poll(cx).is_pending() {
                self.alive_waker = Some(cx.waker().clone());
                return Poll::Pending;
            }
            // Fired: re-armed for a full interval after the last frame, polled again to
            // register it.
            let due = self.last_sent + self.keep_alive;
            let next = if now >= due {
                now + self.keep_alive
            } else {
                due
            };
            self.alive.as_mut().reset(next);
            self.alive_at = next;
            self.alive_waker = None;
            if now >= due {
                return Poll::Ready(KEEP_ALIVE);
            }
        }
    }
}

impl Stream for Frames {
    type Item = Result<Bytes, Infallible>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = &mut *self;
        loop {
            let Some(states) = this.states.as_mut() else {
                return Poll::Ready(None);
            };
            match states.as_mut().poll_next(cx) {
                Poll::Ready(Some(state)) => {
                    if let Some(frame) = this.frame(&state) {
                        this.last_sent = Instant::now();
                        return Poll::Ready(Some(Ok(frame)));
                    }
                }
                Poll::Ready(None) => {
                    this.states = None;
                    return Poll::Ready(None);
                }
                Poll::Pending => break,
            }
        }
        match this.poll_keep_alive(cx) {
            Poll::Ready(frame) => {
                this.last_sent = Instant::now();
                Poll::Ready(Some(Ok(frame)))
            }
            Poll::Pending => Poll::Pending,
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use futures_util::StreamExt;
    use skill_fleet_stream::{Hub, HubConfig, JobStatus, Update};

    use super::*;

    const KEEP_ALIVE_EVERY: Duration = Duration::from_secs(1);

    async fn next_frame(frames: &mut Frames) -> Option<String> {
        let frame = tokio::time::timeout(Duration::from_secs(60), frames.next())
            .await
            .unwrap()?;
        let Ok(frame) = frame;
        Some(String::from_utf8(frame.to_vec()).unwrap())
    }

    #[tokio::test(start_paused = true)]
    async fn keep_alives_go_out_only_after_a_quiet_interval() {
        let hub = Hub::new(HubConfig::default());
        hub.publish("j", Update::progress(0.1)).unwrap();
        let start = StreamStart::Live(hub.subscribe("j").unwrap());
        let retry = Duration::from_secs(2);
        let mut frames = sse_frames(start, StreamSlot::alone(), None, retry, KEEP_ALIVE_EVERY);
        let first = next_frame(&mut frames).await.unwrap();
        assert!(
            first.starts_with("id: 1\nretry: 2000\ndata: {"),
            "{first:?}"
        );

        // Events more often than the interval: no keep-alive between them.
        for step in 0..5 {
            tokio::time::sleep(Duration::from_millis(700)).await;
            hub.publish("j", Update::step(format!("s{step}"))).unwrap();
            let frame = next_frame(&mut frames).await.unwrap();
            assert!(frame.starts_with("id: "), "{frame:?}");
            assert!(!frame.contains("retry:"), "only the first event: {frame:?}");
        }

        // Quiet: a keep-alive one interval after the last event, then one per interval.
        let quiet_since = Instant::now();
        for n in 1..=3 {
            assert_eq!(next_frame(&mut frames).await.unwrap(), ":\n\n");
            let waited = Instant::now() - quiet_since;
            assert!(
                waited >= KEEP_ALIVE_EVERY * n
                    && waited <= KEEP_ALIVE_EVERY * n + TIMER_GRANULARITY * 2,
                "keep-alive {n} after {waited:?}"
            );
        }

        // The terminal state ends the stream.
        hub.publish("j", Update::status(JobStatus::Completed))
            .unwrap();
        let last = next_frame(&mut frames).await.unwrap();
        assert!(last.contains("\"completed\""), "{last:?}");
        assert_eq!(next_frame(&mut frames).await, None);
    }

    #[tokio::test(start_paused = true)]
    async fn states_the_client_has_are_skipped_and_a_finished_job_is_one_event() {
        let hub = Hub::new(HubConfig::default());
        hub.publish("j", Update::progress(0.1)).unwrap();
        let start = StreamStart::Live(hub.subscribe("j").unwrap());
        let retry = Duration::from_secs(2);
        let mut frames = sse_frames(start, StreamSlot::alone(), Some(1), retry, KEEP_ALIVE_EVERY);
        hub.publish("j", Update::step("b")).unwrap();
        let first = next_frame(&mut frames).await.unwrap();
        assert!(first.starts_with("id: 2\nretry: 2000\n"), "{first:?}");

        let done = hub.current("j").unwrap().event().clone();
        let start = StreamStart::Finished(skill_fleet_types::StreamEvent {
            status: JobStatus::Failed,
            ..done
        });
        let mut frames = sse_frames(
            start,
            StreamSlot::alone(),
            Some(99),
            retry,
            KEEP_ALIVE_EVERY,
        );
        let only = next_frame(&mut frames).await.unwrap();
        assert!(
            only.contains("\"failed\""),
            "a terminal state always: {only:?}"
        );
        assert_eq!(next_frame(&mut frames).await, None);
    }
}
