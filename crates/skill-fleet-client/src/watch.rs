//! `Watch`: a job's live progress over Server-Sent Events, as a blocking iterator.
//!
//! eventsource-client is async, so each `Watch` owns a small current-thread tokio runtime
//! and blocks on it in [`Iterator::next`]. The library's own reconnect logic is switched
//! off: every connection is one eventsource-client stream, and this module decides when
//! to connect again (exponential backoff with jitter, `Last-Event-ID` with the last
//! sequence seen) and when to give up ([`WatchOptions::reconnect_for`]).

use std::sync::Arc;
use std::time::{Duration, Instant};

use es::Client as _;
use eventsource_client as es;
use futures_util::StreamExt;
use skill_fleet_types::{Backoff, StreamEvent};
use tokio::sync::watch as signal;

use crate::client::api_error;
use crate::error::{ClientError, io_unreachable_reason};

/// How a [`Watch`] connects and reconnects.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WatchOptions {
    /// Give up with [`ClientError::Unreachable`] after this long without a working
    /// connection (default 5 minutes).
    pub reconnect_for: Duration,
    /// First reconnect delay; it doubles on every failure (default 250 ms).
    pub backoff_initial: Duration,
    /// Largest reconnect delay (default 10 s).
    pub backoff_max: Duration,
    /// Reconnect when nothing at all (not even a keep-alive comment) arrives for this long
    /// (default 60 s; the server sends a keep-alive every 15 s).
    pub idle_timeout: Duration,
    /// Connect timeout of each attempt (default 5 s).
    pub connect_timeout: Duration,
    /// Whether a failing *first* connection is retried like a dropped one. Off by default:
    /// a watch of a server that is not running fails at once instead of waiting minutes.
    pub retry_initial: bool,
}

impl Default for WatchOptions {
    fn default() -> Self {
        WatchOptions {
            reconnect_for: Duration::from_secs(300),
            backoff_initial: Duration::from_millis(250),
            backoff_max: Duration::from_secs(10),
            idle_timeout: Duration::from_secs(60),
            connect_timeout: Duration::from_secs(5),
            retry_initial: false,
        }
    }
}

/// Stops a [`Watch`] from another thread (a Ctrl-C handler): its blocked
/// [`Iterator::next`] returns `None` at once and [`Watch::was_stopped`] turns true. The job
/// itself is not touched.
#[derive(Debug, Clone)]
pub struct StopHandle(Arc<signal::Sender<bool>>);

impl StopHandle {
    /// Asks the watch to stop.
    pub fn stop(&self) {
        self.0.send_replace(true);
    }
}

/// A job's live states, oldest first, ending after the terminal one.
///
/// Yields `Ok(event)` for every state the server sends (the first is the job's current
/// state), reconnecting on its own when the connection drops. Ends (`None`) after a
/// terminal state, after an error (yielded once), or when stopped through a
/// [`StopHandle`]. Must not be used from inside an async runtime (it blocks).
pub struct Watch {
    runtime: tokio::runtime::Runtime,
    conn: Connection,
    stop_tx: Arc<signal::Sender<bool>>,
    stop_rx: signal::Receiver<bool>,
    done: bool,
    stopped: bool,
    finished: bool,
}

impl std::fmt::Debug for Watch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Watch")
            .field("job_id", &self.conn.job_id)
            .field("url", &self.conn.url)
            .field("last_event_id", &self.conn.last_event_id)
            .field("done", &self.done)
            .finish_non_exhaustive()
    }
}

impl Watch {
    /// Builds the runtime and makes the first connection.
    pub(crate) fn connect(
        job_id: String,
        url: String,
        base: String,
        headers: Vec<(String, String)>,
        options: WatchOptions,
    ) -> Result<Watch, ClientError> {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|err| ClientError::Stream {
                job_id: job_id.clone(),
                url: url.clone(),
                reason: format!("cannot start the stream runtime: {err}"),
            })?;
        let backoff = Backoff::new(options.backoff_initial, options.backoff_max);
        let mut conn = Connection {
            job_id,
            url,
            base,
            headers,
            options,
            stream: None,
            last_event_id: None,
            last_seq: None,
            backoff,
        };
        runtime.block_on(conn.open(true))?;
        let (stop_tx, stop_rx) = signal::channel(false);
        Ok(Watch {
            runtime,
            conn,
            stop_tx: Arc::new(stop_tx),
            stop_rx,
            done: false,
            stopped: false,
            finished: false,
        })
    }

    /// A handle that stops this watch from another thread.
    pub fn stop_handle(&self) -> StopHandle {
        StopHandle(Arc::clone(&self.stop_tx))
    }

    /// True once the watch ended because it was stopped, not because the job finished.
    pub fn was_stopped(&self) -> bool {
        self.stopped
    }

    /// True once a terminal state was yielded.
    pub fn is_finished(&self) -> bool {
        self.finished
    }

    /// The job being watched.
    pub fn job_id(&self) -> &str {
        &self.conn.job_id
    }

    /// The last SSE id seen (the job's stream sequence), sent as `Last-Event-ID` on
    /// reconnect.
    pub fn last_event_id(&self) -> Option<&str> {
        self.conn.last_event_id.as_deref()
    }
}

impl Iterator for Watch {
    type Item = Result<StreamEvent, ClientError>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.done {
            return None;
        }
        let mut stop = self.stop_rx.clone();
        let conn = &mut self.conn;
        let outcome = self.runtime.block_on(async {
            tokio::select! {
                biased;
                _ = stop.wait_for(|stop| *stop) => None,
                item = conn.next_event() => Some(item),
            }
        });
        match outcome {
            None => {
                self.stopped = true;
                self.done = true;
                None
            }
            Some(Ok(event)) => {
                if event.status.is_terminal() {
                    self.finished = true;
                    self.done = true;
                }
                Some(Ok(event))
            }
            Some(Err(err)) => {
                self.done = true;
                Some(Err(err))
            }
        }
    }
}

type SseStream = es::BoxStream<es::Result<es::SSE>>;

/// One job's stream: the open connection, if any, and what is needed to open the next.
struct Connection {
    job_id: String,
    url: String,
    base: String,
    headers: Vec<(String, String)>,
    options: WatchOptions,
    stream: Option<SseStream>,
    last_event_id: Option<String>,
    last_seq: Option<u64>,
    backoff: Backoff,
}

/// Why one connection attempt failed.
enum Attempt {
    /// The server answered with an error that reconnecting will not fix.
    Fatal(ClientError),
    /// The network or a 5xx; worth another try. The reason, and whether it means "nothing
    /// answers there".
    Retry { reason: String, unreachable: bool },
}

impl Connection {
    /// The next state to yield, reconnecting as needed.
    async fn next_event(&mut self) -> Result<StreamEvent, ClientError> {
        loop {
            if self.stream.is_none() {
                self.open(false).await?;
            }
            let Some(stream) = self.stream.as_mut() else {
                continue;
            };
            match stream.next().await {
                Some(Ok(es::SSE::Event(event))) => {
                    if event.data.trim().is_empty() {
                        continue;
                    }
                    let state: StreamEvent =
                        serde_json::from_str(&event.data).map_err(|source| {
                            ClientError::Decode {
                                url: self.url.clone(),
                                source,
                            }
                        })?;
                    self.backoff.reset();
                    self.last_event_id = Some(
                        event
                            .id
                            .filter(|id| !id.is_empty())
                            .unwrap_or_else(|| state.seq.to_string()),
                    );
                    let repeated = self.last_seq.is_some_and(|seen| state.seq <= seen);
                    if repeated && !state.status.is_terminal() {
                        continue;
                    }
                    self.last_seq = Some(state.seq);
                    return Ok(state);
                }
                Some(Ok(_)) => continue, // comments (keep-alives) and connection details
                Some(Err(_)) | None => {
                    // Dropped (server gone, idle timeout, end of stream before a terminal
                    // state): wait a little, then connect again from the last id.
                    self.stream = None;
                    tokio::time::sleep(self.backoff.next_delay()).await;
                }
            }
        }
    }

    /// Connects, retrying with backoff until [`WatchOptions::reconnect_for`] has passed
    /// (or, for the first connection without `retry_initial`, not at all).
    async fn open(&mut self, initial: bool) -> Result<(), ClientError> {
        let lost_at = Instant::now();
        loop {
            let (reason, unreachable) = match self.attempt().await {
                Ok(stream) => {
                    self.stream = Some(stream);
                    return Ok(());
                }
                Err(Attempt::Fatal(err)) => return Err(err),
                Err(Attempt::Retry {
                    reason,
                    unreachable,
                }) => (reason, unreachable),
            };
            if initial && !self.options.retry_initial {
                return Err(if unreachable {
                    ClientError::Unreachable {
                        url: self.base.clone(),
                        reason,
                    }
                } else {
                    self.stream_error(reason)
                });
            }
            let waited = lost_at.elapsed();
            if waited >= self.options.reconnect_for {
                return Err(ClientError::Unreachable {
                    url: self.base.clone(),
                    reason: format!("{reason}; gave up reconnecting after {}s", waited.as_secs()),
                });
            }
            let delay = self
                .backoff
                .next_delay()
                .min(self.options.reconnect_for - waited);
            tokio::time::sleep(delay).await;
        }
    }

    /// One connection attempt, up to the response headers.
    async fn attempt(&mut self) -> Result<SseStream, Attempt> {
        let mut builder = es::ClientBuilder::for_url(&self.url)
            .map_err(|err| Attempt::Fatal(self.stream_error(err.to_string())))?
            .connect_timeout(self.options.connect_timeout)
            .read_timeout(self.options.idle_timeout)
            .reconnect(es::ReconnectOptions::reconnect(false).build());
        for (name, value) in &self.headers {
            builder = builder
                .header(name, value)
                .map_err(|err| Attempt::Fatal(self.stream_error(err.to_string())))?;
        }
        if let Some(id) = &self.last_event_id {
            builder = builder.last_event_id(id.clone());
        }
        let mut stream = builder.build().stream();
        match stream.next().await {
            Some(Ok(es::SSE::Connected(_))) => Ok(stream),
            Some(Ok(_)) => Err(Attempt::Retry {
                reason: "event before the response headers".to_owned(),
                unreachable: false,
            }),
            Some(Err(es::Error::UnexpectedResponse(response, body))) => {
                let status = response.status();
                let body = body.body_bytes().await.unwrap_or_default();
                let err = api_error(&self.url, status, &String::from_utf8_lossy(&body));
                if (400..500).contains(&status) && status != 408 && status != 429 {
                    Err(Attempt::Fatal(err))
                } else {
                    Err(Attempt::Retry {
                        reason: err.to_string(),
                        unreachable: false,
                    })
                }
            }
            Some(Err(err)) => {
                let unreachable = unreachable_reason(&err);
                Err(Attempt::Retry {
                    unreachable: unreachable.is_some(),
                    reason: unreachable.unwrap_or_else(|| describe(&err)),
                })
            }
            None => Err(Attempt::Retry {
                reason: "connection closed before the response".to_owned(),
                unreachable: false,
            }),
        }
    }

    fn stream_error(&self, reason: String) -> ClientError {
        ClientError::Stream {
            job_id: self.job_id.clone(),
            url: self.url.clone(),
            reason,
        }
    }
}

/// "Nothing answers there", from an eventsource-client error's cause chain.
fn unreachable_reason(err: &es::Error) -> Option<String> {
    if matches!(err, es::Error::TimedOut) {
        return Some("connect timed out".to_owned());
    }
    let mut cause: Option<&(dyn std::error::Error + 'static)> = err.source();
    while let Some(current) = cause {
        if let Some(io) = current.downcast_ref::<std::io::Error>()
            && let Some(reason) = io_unreachable_reason(io.kind())
        {
            return Some(reason);
        }
        cause = current.source();
    }
    None
}

/// An eventsource-client error with its causes, lowercase.
fn describe(err: &es::Error) -> String {
    let mut text = err.to_string();
    let mut cause: Option<&(dyn std::error::Error + 'static)> = err.source();
    while let Some(current) = cause {
        text.push_str(": ");
        text.push_str(&current.to_string());
        cause = current.source();
    }
    text.to_lowercase()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_refused_connection_is_unreachable() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        drop(listener);
        let base = format!("http://127.0.0.1:{port}");
        let err = Watch::connect(
            "job".into(),
            format!("{base}/api/v1/jobs/job/stream"),
            base.clone(),
            Vec::new(),
            WatchOptions::default(),
        )
        .unwrap_err();
        match err {
            ClientError::Unreachable { url, reason } => {
                assert_eq!(url, base);
                assert_eq!(reason, "connection refused");
            }
            other => panic!("expected unreachable, got {other}"),
        }
    }

    #[test]
    fn retrying_gives_up_after_reconnect_for() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        drop(listener);
        let base = format!("http://127.0.0.1:{port}");
        let options = WatchOptions {
            reconnect_for: Duration::from_millis(300),
            backoff_initial: Duration::from_millis(10),
            retry_initial: true,
            ..WatchOptions::default()
        };
        let err = Watch::connect(
            "job".into(),
            format!("{base}/api/v1/jobs/job/stream"),
            base,
            Vec::new(),
            options,
        )
        .unwrap_err();
        assert!(err.is_unreachable(), "{err}");
        assert!(err.to_string().contains("gave up reconnecting"), "{err}");
    }
}
