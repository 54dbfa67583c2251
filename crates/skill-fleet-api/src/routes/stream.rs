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
//! event.

use std::convert::Infallible;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::extract::State;
use axum::http::{HeaderMap, HeaderValue, header};
use axum::response::{IntoResponse, Response};
use futures_util::Stream;
use serde::Deserialize;
use skill_fleet_stream::{Emitted, Subscription};
use tokio::time::{Instant, Sleep};

use crate::error::ApiError;
use crate::extract::{ApiQuery, JobId};
use crate::state::{AppState, StreamSlot};
use skill_fleet_core::StreamStart;

/// The keep-alive of an idle stream: an empty comment.
const KEEP_ALIVE: Bytes = Bytes::from_static(b":\n\n");

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

enum Source {
    Live(Subscription),
    Finished(Option<Arc<Emitted>>),
    Done,
}

/// Where a stream is in the job's states.
struct Reader {
    source: Source,
    last_seen: Option<u64>,
    /// Whether the subscription's current state was looked at yet.
    read_current: bool,
}

struct Cursor {
    reader: Reader,
    /// Whether a frame went out yet (the first event carries the `retry:` hint).
    sent_any: bool,
    retry: Duration,
    keep_alive: Duration,
    /// When the last frame (an event or a keep-alive) went out.
    last_sent: Instant,
    /// Fires at or after `last_sent + keep_alive`; re-armed only when it fires, so an
    /// event costs no timer update.
    alive: Pin<Box<Sleep>>,
    /// Held while the stream lives; dropped with the cursor when the stream ends or its
    /// body is dropped.
    _slot: StreamSlot,
}

fn sse_frames(
    start: StreamStart,
    slot: StreamSlot,
    last_seen: Option<u64>,
    retry: Duration,
    keep_alive: Duration,
) -> impl Stream<Item = Result<Bytes, Infallible>> + Send + 'static {
    let source = match start {
        StreamStart::Live(subscription) => Source::Live(subscription),
        StreamStart::Finished(event) => Source::Finished(Some(Arc::new(Emitted::new(event)))),
    };
    let now = Instant::now();
    let cursor = Cursor {
        reader: Reader {
            source,
            last_seen,
            read_current: false,
        },
        sent_any: false,
        retry,
        keep_alive,
        last_sent: now,
        alive: Box::pin(tokio::time::sleep_until(now + keep_alive)),
        _slot: slot,
    };
    futures_util::stream::unfold(cursor, |mut cursor| async move {
        let frame = next_frame(&mut cursor).await?;
        cursor.last_sent = Instant::now();
        Some((Ok(frame), cursor))
    })
}

/// The next frame to write: the next state worth sending, or a keep-alive once nothing went
/// out for `keep_alive`; `None` when the stream ends.
async fn next_frame(cursor: &mut Cursor) -> Option<Bytes> {
    loop {
        let state = tokio::select! {
            biased;
            state = cursor.reader.next_state() => state?,
            () = cursor.alive.as_mut() => {
                let due = cursor.last_sent + cursor.keep_alive;
                if Instant::now() >= due {
                    cursor.alive.as_mut().reset(Instant::now() + cursor.keep_alive);
                    return Some(KEEP_ALIVE);
                }
                // Something went out since the timer was set: wait the rest.
                cursor.alive.as_mut().reset(due);
                continue;
            }
        };
        if state.status.is_terminal() {
            cursor.reader.source = Source::Done;
        }
        cursor.reader.last_seen = Some(state.seq);
        let frame = if cursor.sent_any {
            state.sse_frame()
        } else {
            state.sse_frame_with_retry(cursor.retry)
        };
        return match frame {
            Ok(frame) => {
                cursor.sent_any = true;
                Some(frame)
            }
            Err(err) => {
                tracing::error!(job.id = %state.job_id, error = %err, "could not encode stream event");
                None
            }
        };
    }
}

impl Reader {
    /// The next state worth sending: newer than what the client has seen, or terminal.
    /// Cancel-safe (a subscription's `next` is), so the keep-alive can interrupt it.
    async fn next_state(&mut self) -> Option<Arc<Emitted>> {
        loop {
            let state = match &mut self.source {
                Source::Done => return None,
                Source::Finished(event) => event.take()?,
                Source::Live(subscription) if self.read_current => subscription.next().await?,
                Source::Live(subscription) => {
                    self.read_current = true;
                    subscription.current()
                }
            };
            if state.status.is_terminal() || self.last_seen.is_none_or(|seen| state.seq > seen) {
                return Some(state);
            }
        }
    }
}
