//! [`Emitted`]: one state a job emitted, shared by all its subscribers, with its encodings
//! built at most once.

use std::fmt;
use std::io::Write as _;
use std::ops::{Deref, Range};
use std::sync::OnceLock;
use std::time::Duration;

use bytes::Bytes;
use skill_fleet_types::StreamEvent;

/// One emitted state of a job: the [`StreamEvent`] (it dereferences to it) and its
/// encodings, built the first time one is asked for and then shared by every subscriber
/// (each gets a reference-counted [`Bytes`], no copy). With 10,000 subscribers on one job,
/// each state is serialized once, not 10,000 times.
///
/// The encodings are the state's compact JSON ([`json`](Emitted::json)) and its
/// `text/event-stream` frame ([`sse_frame`](Emitted::sse_frame)): `id: <seq>`, one `data:`
/// line holding the JSON, a blank line. Compact JSON has no line breaks (they are escaped
/// inside strings), so one `data:` line always holds it.
pub struct Emitted {
    event: StreamEvent,
    encoded: OnceLock<Result<Encoded, serde_json::Error>>,
}

/// The frame, and where its parts are.
struct Encoded {
    /// `id: <seq>\ndata: <json>\n\n`.
    frame: Bytes,
    /// Where the `data:` line starts.
    data_line: usize,
    /// Where the JSON is.
    json: Range<usize>,
}

impl Emitted {
    /// Wraps a state; nothing is encoded until asked.
    pub fn new(event: StreamEvent) -> Emitted {
        Emitted {
            event,
            encoded: OnceLock::new(),
        }
    }

    /// The state.
    pub fn event(&self) -> &StreamEvent {
        &self.event
    }

    /// The state as compact JSON (a `StreamEvent` on the wire), encoded once.
    ///
    /// # Errors
    ///
    /// When the state cannot be serialized (not expected of a `StreamEvent`; kept, and
    /// returned again on every call).
    pub fn json(&self) -> Result<Bytes, &serde_json::Error> {
        let encoded = self.encoded()?;
        Ok(encoded.frame.slice(encoded.json.clone()))
    }

    /// The state's `text/event-stream` frame, `id: <seq>\ndata: <json>\n\n`, encoded once
    /// and shared.
    ///
    /// # Errors
    ///
    /// As [`json`](Emitted::json).
    pub fn sse_frame(&self) -> Result<Bytes, &serde_json::Error> {
        Ok(self.encoded()?.frame.clone())
    }

    /// The frame with a `retry:` field (in milliseconds) between the id and the data, as a
    /// stream's first event carries it: `id: <seq>\nretry: <ms>\ndata: <json>\n\n`. Built on
    /// each call (once per stream) from the shared encoding.
    ///
    /// # Errors
    ///
    /// As [`json`](Emitted::json).
    pub fn sse_frame_with_retry(&self, retry: Duration) -> Result<Bytes, &serde_json::Error> {
        let encoded = self.encoded()?;
        let (head, data) = encoded.frame.split_at(encoded.data_line);
        let mut frame = Vec::with_capacity(encoded.frame.len() + 32);
        frame.extend_from_slice(head);
        // Writing into a Vec cannot fail.
        let _ = writeln!(frame, "retry: {}", retry.as_millis());
        frame.extend_from_slice(data);
        Ok(Bytes::from(frame))
    }

    fn encoded(&self) -> Result<&Encoded, &serde_json::Error> {
        self.encoded.get_or_init(|| encode(&self.event)).as_ref()
    }
}

fn encode(event: &StreamEvent) -> Result<Encoded, serde_json::Error> {
    let mut frame = Vec::with_capacity(320);
    // Writing into a Vec cannot fail.
    let _ = writeln!(frame, "id: {}", event.seq);
    let data_line = frame.len();
    frame.extend_from_slice(b"data: ");
    let start = frame.len();
    serde_json::to_writer(&mut frame, event)?;
    let json = start..frame.len();
    frame.extend_from_slice(b"\n\n");
    Ok(Encoded {
        frame: Bytes::from(frame),
        data_line,
        json,
    })
}

impl Deref for Emitted {
    type Target = StreamEvent;

    fn deref(&self) -> &StreamEvent {
        &self.event
    }
}

impl From<StreamEvent> for Emitted {
    fn from(event: StreamEvent) -> Emitted {
        Emitted::new(event)
    }
}

/// Two emitted states are equal when their states are.
impl PartialEq for Emitted {
    fn eq(&self, other: &Emitted) -> bool {
        self.event == other.event
    }
}

impl fmt::Debug for Emitted {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("Emitted").field(&self.event).finish()
    }
}

#[cfg(test)]
mod tests {
    use skill_fleet_types::JobStatus;

    use super::*;

    fn event() -> StreamEvent {
        StreamEvent {
            job_id: "j".into(),
            seq: 42,
            status: JobStatus::Running,
            step: Some("two\nlines".into()),
            progress: 0.5,
            cost_usd: 1.25,
            metric: None,
            eta_seconds: Some(3.0),
            message: None,
            at: chrono::DateTime::from_timestamp(1_700_000_000, 0).unwrap_or_default(),
        }
    }

    #[test]
    fn frames_carry_the_id_and_one_data_line_of_json() {
        let emitted = Emitted::new(event());
        let json = serde_json::to_string(&event()).unwrap();
        assert_eq!(&emitted.json().unwrap()[..], json.as_bytes());
        let frame = emitted.sse_frame().unwrap();
        assert_eq!(frame, format!("id: 42\ndata: {json}\n\n").as_bytes());
        let first = emitted
            .sse_frame_with_retry(Duration::from_millis(2500))
            .unwrap();
        assert_eq!(
            first,
            format!("id: 42\nretry: 2500\ndata: {json}\n\n").as_bytes()
        );
        // Built once: every call shares the same bytes.
        assert_eq!(frame.as_ptr(), emitted.sse_frame().unwrap().as_ptr());
        assert_eq!(emitted.seq, 42);
        assert_eq!(emitted, Emitted::from(event()));
    }
}
