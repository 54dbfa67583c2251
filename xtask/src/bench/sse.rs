//! Section `sse`: one running job fed ~2,000 events/s, followed by 1k, 5k and 10k SSE
//! subscribers held by a second process (`xtask bench-sse-client`), then 1k subscribers that
//! stop reading. A fresh server per level, so RSS slopes start from a clean heap.

use std::io::{BufRead, BufReader, Write};
use std::net::SocketAddr;
use std::process::{Child, ChildStdin, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use tokio::task::JoinHandle;

use super::Ctx;
use super::http::{self, Conn};
use super::ingest::create_jobs;
use super::report::{Row, Section};
use super::server::{Server, cpu_time, unsent_bytes, with_raised_fd_limit};
use super::stats::slope;
use crate::Result;

/// Events per second posted to the job.
const FEED_RATE: f64 = 2000.0;
/// Connections the feeder posts over.
const FEED_CONNECTIONS: usize = 4;
/// The server's default emit interval.
const EMIT_INTERVAL: Duration = Duration::from_millis(100);
const GOAL_KIB_PER_SUBSCRIBER: f64 = 25.0;
const GOAL_P99_MS_AT_1K: f64 = 120.0;
/// "Flat": the stalled subscribers may add at most this much RSS while events flow.
const GOAL_STALL_GROWTH_KIB_PER_SUBSCRIBER: f64 = 1.0;
/// At 10k subscribers on one job: share of ticks delivered to the mean subscriber, and to
/// the worst one.
const GOAL_SHARE_MEAN_AT_10K: f64 = 0.99;
const GOAL_SHARE_MIN_AT_10K: f64 = 0.95;

/// Posts progress events to one job at a fixed rate over keep-alive connections.
struct Feeder {
    stop: Arc<AtomicBool>,
    acked: Arc<AtomicU64>,
    tasks: Vec<JoinHandle<()>>,
    started: Instant,
}

impl Feeder {
    fn start(addr: SocketAddr, job: &str, limit: Duration) -> Feeder {
        let stop = Arc::new(AtomicBool::new(false));
        let acked = Arc::new(AtomicU64::new(0));
        let started = Instant::now();
        let period = Duration::from_secs_f64(FEED_CONNECTIONS as f64 / FEED_RATE);
        let tasks = (0..FEED_CONNECTIONS)
            .map(|lane| {
                let (stop, acked) = (stop.clone(), acked.clone());
                let path = format!("/api/v1/jobs/{job}/events");
                tokio::spawn(async move {
                    let Ok(mut conn) = Conn::connect(addr).await else {
                        return;
                    };
                    let mut next = Instant::now() + period.mul_f64(lane as f64 / 4.0);
                    let mut n: u64 = 0;
                    while !stop.load(Ordering::Relaxed) && started.elapsed() < limit {
                        tokio::time::sleep_until(next.into()).await;
                        next += period;
                        if Instant::now() > next + Duration::from_secs(1) {
                            next = Instant::now();
                        }
                        n += 1;
                        let body = format!(
                            r#"{{"progress":{:.4},"cost_usd":{:.4},"message":"feeder {lane} event {n}"}}"#,
                            (n % 10_000) as f64 / 10_000.0,
                            n as f64 * 0.0001
                        );
                        match conn.request(&http::post_json(&path, &body)).await {
                            Ok(r) if r.status == 202 => {
                                acked.fetch_add(1, Ordering::Relaxed);
                            }
                            Ok(_) => {}
                            Err(_) => return,
                        }
                    }
                })
            })
            .collect();
        Feeder {
            stop,
            acked,
            tasks,
            started,
        }
    }

    /// Stops and returns the achieved rate (acknowledged events per second).
    async fn finish(self) -> f64 {
        self.stop.store(true, Ordering::Relaxed);
        for task in self.tasks {
            let _ = task.await;
        }
        self.acked.load(Ordering::Relaxed) as f64 / self.started.elapsed().as_secs_f64()
    }
}

/// The subscriber process and its line protocol.
pub struct ClientProc {
    pub child: Child,
    stdin: ChildStdin,
    lines: mpsc::Receiver<String>,
}

impl ClientProc {
    /// `n` subscribers to `path` on `addr`, connected in `steps`; `extra` flags of
    /// `bench-sse-client`.
    pub fn spawn(
        ctx: &Ctx,
        addr: SocketAddr,
        path: &str,
        n: usize,
        steps: usize,
        stall: bool,
        extra: &[&str],
    ) -> Result<ClientProc> {
        let mut command = with_raised_fd_limit(&ctx.xtask_bin);
        command
            .arg("bench-sse-client")
            .arg("--addr")
            .arg(addr.to_string())
            .arg("--path")
            .arg(path)
            .arg("--connections")
            .arg(n.to_string())
            .arg("--steps")
            .arg(steps.to_string())
            .stdin(Stdio::piped())
            .stdout(Stdio::piped());
        if stall {
            command.arg("--stall");
        }
        command.args(extra);
        let mut child = command
            .spawn()
            .map_err(|err| format!("cannot start the SSE client: {err}"))?;
        let stdin = child.stdin.take().ok_or("SSE client has no stdin")?;
        let stdout = child.stdout.take().ok_or("SSE client has no stdout")?;
        let (tx, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        Ok(ClientProc {
            child,
            stdin,
            lines,
        })
    }

    pub fn send(&mut self, word: &str) -> Result {
        writeln!(self.stdin, "{word}")?;
        self.stdin.flush()?;
        Ok(())
    }

    /// The next line starting with `prefix` (the rest of it), waiting at most `timeout`.
    pub fn expect(&mut self, prefix: &str, timeout: Duration) -> Result<String> {
        let deadline = Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(line) => {
                    if let Some(rest) = line.strip_prefix(prefix) {
                        return Ok(rest.trim().to_owned());
                    }
                }
                Err(_) => {
                    return Err(format!("SSE client: no `{prefix}` line within {timeout:?}").into());
                }
            }
        }
    }
}

impl Drop for ClientProc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A server with one running job and the feeder posting to it.
async fn fed_server(ctx: &Ctx, name: &str) -> Result<(Server, String, Feeder)> {
    let server = ctx.start_server(name, false)?;
    let ids = create_jobs(server.addr, "sse", "bench_sse", 1).await?;
    let job = ids[0].clone();
    let first = http::once(
        server.addr,
        &http::post_json(&format!("/api/v1/jobs/{job}/events"), r#"{"progress":0.0}"#),
    )
    .await?;
    if first.status != 202 {
        return Err(format!("starting the SSE job: status {}", first.status).into());
    }
    let feeder = Feeder::start(server.addr, &job, Duration::from_secs(600));
    Ok((server, job, feeder))
}

/// Blocking waits (the client's lines) off the async workers that run the feeder.
pub async fn blocking<T: Send + 'static>(
    call: impl FnOnce() -> Result<T> + Send + 'static,
) -> Result<T> {
    tokio::task::spawn_blocking(call)
        .await
        .map_err(|err| format!("blocking task failed: {err}"))?
}

struct Level {
    connected: u64,
    share_mean: f64,
    share_min: f64,
    p50_ms: f64,
    p99_ms: f64,
    kib_per_subscriber: f64,
    kib_per_subscriber_end: f64,
    cpu_percent: f64,
    /// Server CPU time over the window per event the subscribers received in it.
    cpu_us_per_event: f64,
    /// The part of the server's CPU time spent in the kernel (system time).
    kernel_share: f64,
    /// Time the server's threads were runnable but waited for a CPU, over the window (100% =
    /// one thread waiting all the time).
    run_queue_wait_percent: f64,
    client_cpu_percent: f64,
    feed_rate: f64,
    data: Value,
}

async fn fanout(ctx: &Ctx, n: usize) -> Result<Level> {
    let (server, job, feeder) = fed_server(ctx, &format!("sse-{n}")).await?;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let rss0 = server.rss_kib();
    let steps = 5;
    let mut client = ClientProc::spawn(
        ctx,
        server.addr,
        &format!("/api/v1/jobs/{job}/stream"),
        n,
        steps,
        false,
        &[],
    )?;
    let mut points = vec![(0.0, rss0 as f64)];
    for step in 0..steps {
        let (line, returned) = blocking(move || {
            let mut client = client;
            let line = client.expect("connected", Duration::from_secs(120));
            Ok((line, client))
        })
        .await?;
        client = returned;
        let connected: f64 = line?
            .parse()
            .map_err(|err| format!("bad client line: {err}"))?;
        tokio::time::sleep(Duration::from_millis(300)).await;
        points.push((connected, server.rss_kib() as f64));
        if step + 1 < steps {
            client.send("next")?;
        }
    }
    tokio::time::sleep(ctx.warmup()).await;
    let window = ctx.sse_window();
    let client_pid = client.child.id();
    let (user0, system0) = server.cpu_times();
    let waited0 = server.run_queue_wait();
    let client_cpu0 = cpu_time(client_pid);
    let t0 = Instant::now();
    client.send("start")?;
    tokio::time::sleep(window).await;
    client.send("stop")?;
    let elapsed = t0.elapsed();
    let (user1, system1) = server.cpu_times();
    let waited = server.run_queue_wait().saturating_sub(waited0);
    let system = system1.saturating_sub(system0);
    let cpu = user1.saturating_sub(user0) + system;
    let client_cpu = cpu_time(client_pid).saturating_sub(client_cpu0);
    let rss_end = server.rss_kib();
    let (result, client) = blocking(move || {
        let mut client = client;
        let line = client.expect("result", Duration::from_secs(60));
        Ok((line, client))
    })
    .await?;
    drop(client);
    let feed_rate = feeder.finish().await;
    let result: Value = serde_json::from_str(&result?)?;
    let expected = elapsed.as_secs_f64() / EMIT_INTERVAL.as_secs_f64();
    let get = |key: &str| result[key].as_f64().unwrap_or(0.0);
    let kib_slope = slope(&points);
    drop(server);
    Ok(Level {
        connected: result["connected"].as_u64().unwrap_or(0),
        share_mean: get("events_mean") / expected,
        share_min: get("events_min") / expected,
        p50_ms: get("latency_p50_ms"),
        p99_ms: get("latency_p99_ms"),
        kib_per_subscriber: kib_slope,
        kib_per_subscriber_end: (rss_end as f64 - rss0 as f64) / n as f64,
        cpu_percent: 100.0 * cpu.as_secs_f64() / elapsed.as_secs_f64(),
        cpu_us_per_event: 1e6 * cpu.as_secs_f64() / get("events_total").max(1.0),
        kernel_share: system.as_secs_f64() / cpu.as_secs_f64().max(1e-9),
        run_queue_wait_percent: 100.0 * waited.as_secs_f64() / elapsed.as_secs_f64(),
        client_cpu_percent: 100.0 * client_cpu.as_secs_f64() / elapsed.as_secs_f64(),
        feed_rate,
        data: json!({
            "subscribers": n,
            "window_seconds": elapsed.as_secs_f64(),
            "expected_ticks": expected,
            "client": result,
            "rss_kib_points": points,
            "rss_kib_before": rss0,
            "rss_kib_end": rss_end,
            "server_cpu_seconds": cpu.as_secs_f64(),
            "server_system_cpu_seconds": system.as_secs_f64(),
            "server_run_queue_wait_seconds": waited.as_secs_f64(),
            "client_cpu_seconds": client_cpu.as_secs_f64(),
            "feed_rate": feed_rate,
        }),
    })
}

struct Stall {
    subscribers: usize,
    before_kib: u64,
    after_kib: u64,
    max_kib: u64,
    unsent_bytes: u64,
    feed_rate: f64,
    seconds: f64,
}

async fn stalled(ctx: &Ctx, n: usize) -> Result<Stall> {
    let (server, job, feeder) = fed_server(ctx, "sse-stall").await?;
    let client = ClientProc::spawn(
        ctx,
        server.addr,
        &format!("/api/v1/jobs/{job}/stream"),
        n,
        1,
        true,
        &[],
    )?;
    let (line, client) = blocking(move || {
        let mut client = client;
        let line = client.expect("connected", Duration::from_secs(120));
        Ok((line, client))
    })
    .await?;
    line?;
    tokio::time::sleep(Duration::from_secs(1)).await;
    let before = server.rss_kib();
    let t0 = Instant::now();
    let mut max = before;
    while t0.elapsed() < ctx.stall_window() {
        tokio::time::sleep(Duration::from_millis(500)).await;
        max = max.max(server.rss_kib());
    }
    let after = server.rss_kib();
    let unsent = unsent_bytes(server.addr.port());
    let feed_rate = feeder.finish().await;
    drop(client);
    drop(server);
    Ok(Stall {
        subscribers: n,
        before_kib: before,
        after_kib: after,
        max_kib: max,
        unsent_bytes: unsent,
        feed_rate,
        seconds: t0.elapsed().as_secs_f64(),
    })
}

pub async fn run(ctx: &Ctx) -> Result<Section> {
    let levels: &[usize] = if ctx.quick {
        &[1000]
    } else {
        &[1000, 5000, 10000]
    };
    let mut section = Section {
        key: "sse",
        title: "3. SSE fan-out: GET /api/v1/jobs/{id}/stream".to_owned(),
        ..Section::default()
    };
    let mut data = Vec::new();
    let mut cpu_per_event_at_1k = None;
    for &n in levels {
        let level = fanout(ctx, n).await?;
        let k = format!("{}k", n / 1000);
        section.rows.push(Row::new(
            format!("{k}: subscribers connected"),
            level.connected as f64,
            "",
        ));
        let mut share_mean = Row::new(
            format!("{k}: share of ticks delivered, mean"),
            level.share_mean,
            "",
        );
        let mut share_min = Row::new(
            format!("{k}: share of ticks delivered, worst subscriber"),
            level.share_min,
            "",
        );
        if n == 10000 {
            share_mean = share_mean.goal(
                format!("≥ {GOAL_SHARE_MEAN_AT_10K:.2} at 10k"),
                level.share_mean >= GOAL_SHARE_MEAN_AT_10K,
            );
            share_min = share_min.goal(
                format!("≥ {GOAL_SHARE_MIN_AT_10K:.2} at 10k"),
                level.share_min >= GOAL_SHARE_MIN_AT_10K,
            );
        }
        section.rows.push(share_mean);
        section.rows.push(share_min);
        section.rows.push(Row::new(
            format!("{k}: event→client latency p50"),
            level.p50_ms,
            "ms",
        ));
        let mut p99 = Row::new(format!("{k}: event→client latency p99"), level.p99_ms, "ms");
        if n == 1000 {
            p99 = p99.goal(
                format!("≤ {GOAL_P99_MS_AT_1K:.0} ms"),
                level.p99_ms <= GOAL_P99_MS_AT_1K,
            );
        }
        section.rows.push(p99);
        let mut rss = Row::new(
            format!("{k}: server RSS per subscriber (slope)"),
            level.kib_per_subscriber,
            "KiB",
        );
        if n == 10000 || (ctx.quick && n == *levels.last().unwrap_or(&0)) {
            let label = if n == 10000 {
                "≤ 25 KiB at 10k"
            } else {
                "≤ 25 KiB (goal is at 10k)"
            };
            rss = rss.goal(label, level.kib_per_subscriber <= GOAL_KIB_PER_SUBSCRIBER);
        }
        section.rows.push(rss);
        section.rows.push(Row::new(
            format!("{k}: server RSS growth / subscribers, end of window"),
            level.kib_per_subscriber_end,
            "KiB",
        ));
        section.rows.push(Row::new(
            format!("{k}: server CPU (100% = one core)"),
            level.cpu_percent,
            "%",
        ));
        let mut per_event = Row::new(
            format!("{k}: server CPU per delivered event"),
            level.cpu_us_per_event,
            "µs",
        );
        match cpu_per_event_at_1k {
            None if n == 1000 => cpu_per_event_at_1k = Some(level.cpu_us_per_event),
            Some(at_1k) if at_1k > 0.0 => {
                per_event = per_event.baseline(at_1k, level.cpu_us_per_event / at_1k);
            }
            _ => {}
        }
        section.rows.push(per_event);
        section.rows.push(Row::new(
            format!("{k}: share of server CPU in the kernel"),
            level.kernel_share,
            "",
        ));
        section.rows.push(Row::new(
            format!("{k}: server threads waiting for a CPU (100% = one thread)"),
            level.run_queue_wait_percent,
            "%",
        ));
        section.rows.push(Row::new(
            format!("{k}: subscriber process CPU (100% = one core)"),
            level.client_cpu_percent,
            "%",
        ));
        section.rows.push(Row::new(
            format!("{k}: events posted"),
            level.feed_rate,
            "ev/s",
        ));
        data.push(level.data);
    }
    let stall = stalled(ctx, 1000).await?;
    let growth = stall.after_kib as f64 - stall.before_kib as f64;
    let limit = GOAL_STALL_GROWTH_KIB_PER_SUBSCRIBER * stall.subscribers as f64;
    section.rows.push(Row::new(
        "1k stalled: server RSS before",
        stall.before_kib as f64 / 1024.0,
        "MiB",
    ));
    section.rows.push(
        Row::new(
            format!("1k stalled: server RSS after {:.0} s", stall.seconds),
            stall.after_kib as f64 / 1024.0,
            "MiB",
        )
        .goal(
            format!("flat (growth ≤ {:.0} MiB)", limit / 1024.0),
            growth <= limit,
        ),
    );
    section.rows.push(Row::new(
        "1k stalled: server RSS max",
        stall.max_kib as f64 / 1024.0,
        "MiB",
    ));
    section.rows.push(Row::new(
        "1k stalled: bytes stuck in server socket buffers",
        stall.unsent_bytes as f64 / 1024.0,
        "KiB",
    ));
    section.rows.push(Row::new(
        "1k stalled: events posted",
        stall.feed_rate,
        "ev/s",
    ));
    section.notes.push(format!(
        "one job fed {FEED_RATE:.0} events/s over {FEED_CONNECTIONS} connections; subscribers \
         held by a second process (raw TCP, 1 tokio thread); share of ticks = events received \
         in a {:.0} s window / (window / {} ms emit interval); latency = receive time − the \
         event's `at`; CPU per delivered event = server CPU time over the window / events \
         all subscribers received in it (baseline: the 1k level's); waiting for a CPU = the \
         server threads' run-queue wait over the window (/proc/PID/task/*/schedstat): high \
         means the machine, not the server, held delivery back; RSS slope = least squares over 5 connection steps taken while events \
         flow, fresh server per level; CPU from /proc/PID/stat over the window",
        ctx.sse_window().as_secs_f64(),
        EMIT_INTERVAL.as_millis()
    ));
    section.notes.push(
        "stalled subscribers read their first event, then never read again (4 KiB receive \
         buffer); the unsent-bytes row shows the server's writes really are backed up"
            .to_owned(),
    );
    section.data = json!({
        "levels": data,
        "stalled": {
            "subscribers": stall.subscribers,
            "rss_kib_before": stall.before_kib,
            "rss_kib_after": stall.after_kib,
            "rss_kib_max": stall.max_kib,
            "unsent_bytes": stall.unsent_bytes,
            "seconds": stall.seconds,
            "feed_rate": stall.feed_rate,
        },
    });
    Ok(section)
}
