//! `xtask bench-sse-client`: the subscribers of the SSE fan-out section, in their own process
//! (spawned by `cargo xtask bench`, so neither process needs 20k file descriptors).
//!
//! Holds N plain-TCP SSE streams (raw HTTP/1.1 GET, minimal chunked and SSE parsing) and
//! talks to its parent over stdin/stdout, one line each:
//! - it connects in `--steps` steps, printing `connected K` after each (K streams have their
//!   first event) and waiting for `next` before the following step;
//! - `start` opens the counting window, `stop` closes it and makes it print
//!   `result {json}` (events per subscriber, event→client latency percentiles) and exit.
//!
//! With `--stall` the streams read their response head and first event and then never read
//! again (receive buffer of 4 KiB, so the server's writes back up within seconds). With
//! `--latency-from-message` an event's latency is measured from the `sent_us=MICROS` (Unix
//! time) its `message` carries, put there by whoever posted the event, instead of from its
//! `at` (the emitting server's time): the cluster section's subscribers are on another
//! server than the one the events are posted to.

use std::io::{BufRead, Write};
use std::net::SocketAddr;
use std::process::ExitCode;
use std::sync::atomic::{AtomicU8, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use serde_json::json;
use tokio::net::TcpSocket;
use tokio::sync::{Semaphore, mpsc};

use super::http::{self, Conn};
use super::stats::Latencies;
use crate::Result;

const USAGE: &str = "usage: xtask bench-sse-client --addr IP:PORT --path PATH --connections N \
                     [--steps K] [--stall] [--threads T] [--latency-from-message]";

/// Phases of the counting window.
const BEFORE: u8 = 0;
const COUNTING: u8 = 1;

struct Options {
    addr: SocketAddr,
    path: String,
    connections: usize,
    steps: usize,
    stall: bool,
    threads: usize,
    from_message: bool,
}

fn parse(args: &[String]) -> std::result::Result<Options, String> {
    let mut addr = None;
    let mut path = None;
    let mut connections = None;
    let mut steps = 1;
    let mut stall = false;
    let mut threads = 1;
    let mut from_message = false;
    let mut iter = args.iter();
    while let Some(arg) = iter.next() {
        let mut value = || iter.next().cloned().ok_or(format!("{arg} needs a value"));
        match arg.as_str() {
            "--addr" => addr = Some(value()?.parse().map_err(|e| format!("--addr: {e}"))?),
            "--path" => path = Some(value()?),
            "--connections" => {
                connections = Some(
                    value()?
                        .parse()
                        .map_err(|e| format!("--connections: {e}"))?,
                )
            }
            "--steps" => steps = value()?.parse().map_err(|e| format!("--steps: {e}"))?,
            "--threads" => threads = value()?.parse().map_err(|e| format!("--threads: {e}"))?,
            "--stall" => stall = true,
            "--latency-from-message" => from_message = true,
            other => return Err(format!("unknown argument `{other}`")),
        }
    }
    Ok(Options {
        addr: addr.ok_or("--addr is required")?,
        path: path.ok_or("--path is required")?,
        connections: connections.ok_or("--connections is required")?,
        steps: steps.max(1),
        stall,
        threads: threads.max(1),
        from_message,
    })
}

pub fn run(args: &[String]) -> Result<ExitCode> {
    let options = match parse(args) {
        Ok(options) => options,
        Err(err) => {
            eprintln!("{err}\n{USAGE}");
            return Ok(ExitCode::from(2));
        }
    };
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(options.threads)
        .enable_all()
        .build()?;
    runtime.block_on(client(options))?;
    Ok(ExitCode::SUCCESS)
}

/// What one subscriber saw inside the counting window.
#[derive(Default)]
struct Seen {
    events: u64,
    latencies_us: Vec<u32>,
}

fn say(line: &str) -> Result {
    let mut stdout = std::io::stdout().lock();
    writeln!(stdout, "{line}")?;
    stdout.flush()?;
    Ok(())
}

async fn client(options: Options) -> Result {
    let (tx, mut commands) = mpsc::unbounded_channel::<String>();
    std::thread::spawn(move || {
        for line in std::io::stdin().lock().lines() {
            let Ok(line) = line else { break };
            if tx.send(line.trim().to_owned()).is_err() {
                break;
            }
        }
    });
    let mut wait_for = async |word: &str| -> Result {
        loop {
            match commands.recv().await {
                Some(line) if line == word => return Ok(()),
                Some(_) => continue,
                None => return Err(format!("stdin closed while waiting for `{word}`").into()),
            }
        }
    };

    let phase = Arc::new(AtomicU8::new(BEFORE));
    let errors = Arc::new(AtomicU64::new(0));
    let connect_slots = Arc::new(Semaphore::new(200));
    let request = Arc::new(http::get(&options.path, &[("Accept", "text/event-stream")]));
    let mut seen: Vec<Arc<Mutex<Seen>>> = Vec::with_capacity(options.connections);
    let per_step = options.connections.div_ceil(options.steps);
    let mut connected = 0;
    let mut started = 0;
    for step in 0..options.steps {
        let count = per_step.min(options.connections - started);
        started += count;
        let mut readies = Vec::with_capacity(count);
        for _ in 0..count {
            let (ready_tx, ready_rx) = tokio::sync::oneshot::channel();
            let stats = Arc::new(Mutex::new(Seen::default()));
            seen.push(stats.clone());
            tokio::spawn(subscriber(Subscriber {
                addr: options.addr,
                request: request.clone(),
                stall: options.stall,
                from_message: options.from_message,
                stats,
                phase: phase.clone(),
                errors: errors.clone(),
                slots: connect_slots.clone(),
                ready: ready_tx,
            }));
            readies.push(ready_rx);
        }
        for ready in readies {
            if matches!(ready.await, Ok(true)) {
                connected += 1;
            }
        }
        say(&format!("connected {connected}"))?;
        if step + 1 < options.steps {
            wait_for("next").await?;
        }
    }
    wait_for("start").await?;
    phase.store(COUNTING, Ordering::SeqCst);
    wait_for("stop").await?;
    phase.store(2, Ordering::SeqCst);

    let mut counts = Vec::with_capacity(seen.len());
    let mut latencies = Latencies::default();
    for stats in &seen {
        let mut stats = stats.lock().unwrap_or_else(PoisonError::into_inner);
        counts.push(stats.events);
        latencies.merge(Latencies::from(std::mem::take(&mut stats.latencies_us)));
    }
    let total: u64 = counts.iter().sum();
    let result = json!({
        "subscribers": options.connections,
        "connected": connected,
        "errors": errors.load(Ordering::SeqCst),
        "events_total": total,
        "events_min": counts.iter().min().copied().unwrap_or(0),
        "events_max": counts.iter().max().copied().unwrap_or(0),
        "events_mean": total as f64 / counts.len().max(1) as f64,
        "latency_samples": latencies.len(),
        "latency_p50_ms": latencies.quantile_ms(0.5),
        "latency_p90_ms": latencies.quantile_ms(0.9),
        "latency_p99_ms": latencies.quantile_ms(0.99),
        "latency_max_ms": latencies.quantile_ms(1.0),
    });
    say(&format!("result {result}"))?;
    // Leave at once: dropping 10k streams one by one is not part of the measurement.
    std::process::exit(0);
}

struct Subscriber {
    addr: SocketAddr,
    request: Arc<Vec<u8>>,
    stall: bool,
    from_message: bool,
    stats: Arc<Mutex<Seen>>,
    phase: Arc<AtomicU8>,
    errors: Arc<AtomicU64>,
    slots: Arc<Semaphore>,
    ready: tokio::sync::oneshot::Sender<bool>,
}

async fn open(sub: &Subscriber, out: &mut Vec<u8>) -> std::io::Result<Conn> {
    let socket = TcpSocket::new_v4()?;
    if sub.stall {
        socket.set_recv_buffer_size(4096)?;
    }
    let stream = socket.connect(sub.addr).await?;
    let mut conn = Conn::from_stream(stream)?;
    let head = conn.start_stream(&sub.request).await?;
    if head.status != 200 {
        return Err(std::io::Error::other(format!(
            "stream answered {}",
            head.status
        )));
    }
    // Until the first event (the job's current state) is in.
    while !has_event(out) {
        if !conn.read_stream(out).await? {
            return Err(std::io::Error::other("stream ended before its first event"));
        }
    }
    if let Some(end) = find(out, b"\n\n") {
        out.drain(..end + 2);
    }
    Ok(conn)
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

fn has_event(buf: &[u8]) -> bool {
    find(buf, b"\n\n").is_some_and(|end| find(&buf[..end], b"data:").is_some())
}

async fn subscriber(sub: Subscriber) {
    let mut out = Vec::with_capacity(1024);
    let opened = {
        let _slot = sub.slots.acquire().await;
        tokio::time::timeout(Duration::from_secs(60), open(&sub, &mut out)).await
    };
    let Ok(Ok(mut conn)) = opened else {
        sub.errors.fetch_add(1, Ordering::Relaxed);
        let _ = sub.ready.send(false);
        return;
    };
    let _ = sub.ready.send(true);
    if sub.stall {
        // Hold the socket, never read it again.
        std::future::pending::<()>().await;
        drop(conn);
        return;
    }
    loop {
        match conn.read_stream(&mut out).await {
            Ok(true) => {}
            Ok(false) | Err(_) => {
                if sub.phase.load(Ordering::Relaxed) == BEFORE
                    || sub.phase.load(Ordering::Relaxed) == COUNTING
                {
                    sub.errors.fetch_add(1, Ordering::Relaxed);
                }
                return;
            }
        }
        let counting = sub.phase.load(Ordering::Relaxed) == COUNTING;
        let mut start = 0;
        while let Some(end) = find(&out[start..], b"\n\n") {
            let event = &out[start..start + end];
            start += end + 2;
            if !counting || find(event, b"data:").is_none() {
                continue;
            }
            let latency = if sub.from_message {
                message_latency_us(event)
            } else {
                event_latency_us(event)
            };
            let mut stats = sub.stats.lock().unwrap_or_else(PoisonError::into_inner);
            stats.events += 1;
            if let Some(latency) = latency {
                stats.latencies_us.push(latency);
            }
        }
        out.drain(..start);
    }
}

/// Now minus the event's `at` (its emit time), in microseconds.
fn event_latency_us(event: &[u8]) -> Option<u32> {
    const KEY: &[u8] = b"\"at\":\"";
    let begin = find(event, KEY)? + KEY.len();
    let len = event[begin..].iter().position(|&b| b == b'"')?;
    let text = std::str::from_utf8(&event[begin..begin + len]).ok()?;
    let at = chrono::DateTime::parse_from_rfc3339(text).ok()?;
    let micros = (chrono::Utc::now() - at.to_utc()).num_microseconds()?;
    Some(u32::try_from(micros.max(0)).unwrap_or(u32::MAX))
}

/// Now minus the `sent_us=MICROS` (Unix time) in the event's message, in microseconds.
fn message_latency_us(event: &[u8]) -> Option<u32> {
    const KEY: &[u8] = b"sent_us=";
    let begin = find(event, KEY)? + KEY.len();
    let len = event[begin..].iter().position(|b| !b.is_ascii_digit())?;
    let sent: i64 = std::str::from_utf8(&event[begin..begin + len])
        .ok()?
        .parse()
        .ok()?;
    let micros = chrono::Utc::now().timestamp_micros() - sent;
    Some(u32::try_from(micros.max(0)).unwrap_or(u32::MAX))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn latency_comes_from_the_at_field() {
        let at = (chrono::Utc::now() - chrono::Duration::milliseconds(50)).to_rfc3339();
        let event = format!("id: 7\ndata: {{\"job_id\":\"j\",\"seq\":7,\"at\":\"{at}\"}}");
        let micros = event_latency_us(event.as_bytes()).expect("latency");
        assert!((50_000..5_000_000).contains(&micros), "{micros}");
        assert_eq!(event_latency_us(b"data: {}"), None);
    }

    #[test]
    fn latency_can_come_from_the_message() {
        let sent = chrono::Utc::now().timestamp_micros() - 40_000;
        let event = format!("id: 7\ndata: {{\"message\":\"sent_us={sent}\",\"at\":\"x\"}}");
        let micros = message_latency_us(event.as_bytes()).expect("latency");
        assert!((40_000..5_000_000).contains(&micros), "{micros}");
        assert_eq!(message_latency_us(b"data: {\"message\":null}"), None);
    }

    #[test]
    fn events_are_recognised() {
        assert!(has_event(b"retry: 2000\nid: 1\ndata: {}\n\n"));
        assert!(!has_event(b":keep-alive\n\n"));
        assert!(!has_event(b"data: {}\n"));
    }
}
