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

use std::convert::Infallible;
use std::sync::Arc;

use axum::extract::State;
use axum::http::HeaderMap;
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use futures_util::Stream;
use serde::Deserialize;
use skill_fleet_stream::Subscription;
use skill_fleet_types::StreamEvent;

use crate::error::ApiError;
use crate::extract::{ApiQuery, JobId};
use crate::state::{AppState, StreamSlot};
use skill_fleet_core::StreamStart;

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
    let retry = state.config().sse_retry;
    let events = sse_events(start, slot, last_seen, retry);
    Ok(Sse::new(events)
        .keep_alive(KeepAlive::new().interval(state.config().sse_keep_alive))
        .into_response())
}

enum Source {
    Live(Subscription),
    Finished(Option<StreamEvent>),
    Done,
}

struct Cursor {
    source: Source,
    last_seen: Option<u64>,
    /// Whether the subscription's current state was looked at yet.
    read_current: bool,
    /// Whether an event went out yet (the first one carries the `retry:` hint).
    sent_any: bool,
    retry: std::time::Duration,
    /// Held while the stream lives; dropped with the cursor when the stream ends or its
    /// body is dropped.
    _slot: StreamSlot,
}

fn sse_events(
    start: StreamStart,
    slot: StreamSlot,
    last_seen: Option<u64>,
    retry: std::time::Duration,
) -> impl Stream<Item = Result<Event, Infallible>> {
    let source = match start {
        StreamStart::Live(subscription) => Source::Live(subscription),
        StreamStart::Finished(event) => Source::Finished(Some(event)),
    };
    let cursor = Cursor {
        source,
        last_seen,
        read_current: false,
        sent_any: false,
        retry,
        _slot: slot,
    };
    futures_util::stream::unfold(cursor, |mut cursor| async move {
        let state = next_state(&mut cursor).await?;
        if state.status.is_terminal() {
            cursor.source = Source::Done;
        }
        cursor.last_seen = Some(state.seq);
        let mut event = Event::default().id(state.seq.to_string());
        if !cursor.sent_any {
            event = event.retry(cursor.retry);
            cursor.sent_any = true;
        }
        let event = match event.json_data(&*state) {
            Ok(event) => event,
            Err(err) => {
                tracing::error!(job.id = %state.job_id, error = %err, "could not encode stream event");
                return None;
            }
        };
        Some((Ok(event), cursor))
    })
}

/// The next state worth sending: newer than what the client has seen, or terminal.
async fn next_state(cursor: &mut Cursor) -> Option<Arc<StreamEvent>> {
    loop {
        let state = match &mut cursor.source {
            Source::Done => return None,
            Source::Finished(event) => Arc::new(event.take()?),
            Source::Live(subscription) if cursor.read_current => subscription.next().await?,
            Source::Live(subscription) => {
                cursor.read_current = true;
                subscription.current()
            }
        };
        if state.status.is_terminal() || cursor.last_seen.is_none_or(|seen| state.seq > seen) {
            return Some(state);
        }
    }
}
