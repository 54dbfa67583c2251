//! Runs the real server in-process (the `skill-fleet-server` library on a thread with its
//! own tokio runtime, 127.0.0.1, port 0 unless told) against a temp database, and the real
//! `skill-fleet` binary against it with its own cache dir. No server binary is needed, so
//! nothing is built from inside a test.
#![allow(dead_code)]

use std::io::{BufRead, BufReader, Read};
use std::net::SocketAddr;
use std::path::Path;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use clap::Parser;
use serde_json::Value;
use skill_fleet_testkit::http::Endpoint;

pub use skill_fleet_testkit::{DEADLINE, TempDatabase as Dirs};

/// A running in-process server; stopped without a goodbye on drop.
pub struct Server {
    /// `http://127.0.0.1:PORT`, and the calls against it (the server derefs to it).
    pub endpoint: Endpoint,
    pub port: u16,
    /// Fires the kill: the serving future is dropped mid-flight, no shutdown code runs.
    kill: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<JoinHandle<()>>,
}

impl Server {
    /// Starts a server on 127.0.0.1:0.
    pub fn start(database: &Path) -> Server {
        Server::start_on(database, 0)
    }

    /// Starts a server on 127.0.0.1:`port` (0 for any) and waits until it listens.
    pub fn start_on(database: &Path, port: u16) -> Server {
        Server::start_with(database, port, &[])
    }

    /// Like [`Server::start_on`], with extra server arguments.
    pub fn start_with(database: &Path, port: u16, extra: &[&str]) -> Server {
        let deadline = Instant::now() + DEADLINE;
        // No executors: these tests play the worker themselves, so every job type must wait
        // in the queue for them (by default the server runs `optimization` jobs itself).
        let config = database.with_extension("toml");
        std::fs::write(&config, "[executors]\n").expect("write server config");
        let mut args = vec![
            "skill-fleet-server".to_owned(),
            "--config".to_owned(),
            config.display().to_string(),
            "--bind".to_owned(),
            format!("127.0.0.1:{port}"),
            "--database".to_owned(),
            database.display().to_string(),
        ];
        args.extend(extra.iter().map(|arg| (*arg).to_owned()));
        let cli = skill_fleet_server::Cli::try_parse_from(&args).expect("server arguments");
        loop {
            let mut config = skill_fleet_server::Config::resolve(&cli).expect("server config");
            // As if the variable were unset: a token only when the test passes one.
            if !extra.contains(&"--auth-token") {
                config.auth_token = None;
            }
            let (listening_tx, listening) = mpsc::channel::<SocketAddr>();
            let (kill, killed) = tokio::sync::oneshot::channel::<()>();
            let (ended_tx, ended) = mpsc::channel::<String>();
            let thread = std::thread::spawn(move || {
                let runtime = tokio::runtime::Builder::new_multi_thread()
                    .worker_threads(2)
                    .enable_all()
                    .build()
                    .expect("tokio runtime");
                let outcome = runtime.block_on(async move {
                    let serving = skill_fleet_server::serve_until(
                        config,
                        std::future::pending(),
                        move |addr| {
                            let _ = listening_tx.send(addr);
                        },
                    );
                    tokio::select! {
                        result = serving => result.map_err(|err| err.to_string()).err(),
                        _ = killed => None,
                    }
                });
                // Like SIGKILL: every task (listener, connections, SSE streams) is dropped
                // where it stands.
                runtime.shutdown_background();
                if let Some(err) = outcome {
                    let _ = ended_tx.send(err);
                }
            });
            let left = deadline.saturating_duration_since(Instant::now());
            match listening.recv_timeout(left) {
                Ok(addr) => {
                    return Server {
                        endpoint: Endpoint {
                            base: format!("http://{addr}"),
                        },
                        port: addr.port(),
                        kill: Some(kill),
                        thread: Some(thread),
                    };
                }
                Err(_) => {
                    drop(kill);
                    let _ = thread.join();
                    let err = ended.try_recv().unwrap_or_default();
                    // A restart on a fixed port can race the old socket; try again briefly.
                    assert!(
                        port != 0 && Instant::now() < deadline,
                        "server did not start: {err}"
                    );
                    std::thread::sleep(Duration::from_millis(50));
                }
            }
        }
    }

    /// Stops the server the way SIGKILL would: no shutdown code runs, open streams drop
    /// without a goodbye, pending progress is not written. Returns once its port is free.
    pub fn kill(mut self) {
        self.stop_now();
    }

    fn stop_now(&mut self) {
        if let Some(kill) = self.kill.take() {
            let _ = kill.send(());
        }
        if let Some(thread) = self.thread.take() {
            thread.join().expect("server thread");
        }
    }
}

impl std::ops::Deref for Server {
    type Target = Endpoint;

    fn deref(&self) -> &Endpoint {
        &self.endpoint
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        if let Some(kill) = self.kill.take() {
            let _ = kill.send(());
        }
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// Lines of a pipe, as they come, on a channel.
pub fn lines_of(pipe: impl Read + Send + 'static) -> Receiver<String> {
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(pipe).lines() {
            let Ok(line) = line else { break };
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    rx
}

/// All of a pipe, once it closes.
fn collect(mut pipe: impl Read + Send + 'static) -> Receiver<String> {
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let mut text = String::new();
        let _ = pipe.read_to_string(&mut text);
        let _ = tx.send(text);
    });
    rx
}

/// A port on 127.0.0.1 that nothing listens on.
pub fn dead_port() -> u16 {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let port = listener.local_addr().expect("addr").port();
    drop(listener);
    port
}

/// What a finished CLI run printed.
#[derive(Debug)]
pub struct Output {
    pub code: i32,
    pub stdout: String,
    pub stderr: String,
}

impl Output {
    pub fn json(&self) -> Value {
        serde_json::from_str(self.stdout.trim())
            .unwrap_or_else(|err| panic!("stdout is not JSON ({err}): {}", self.stdout))
    }

    pub fn assert_code(&self, code: i32) -> &Output {
        assert_eq!(
            self.code, code,
            "exit code\nstdout:\n{}\nstderr:\n{}",
            self.stdout, self.stderr
        );
        self
    }
}

/// The `skill-fleet` binary, pointed at `server` with its own cache directory.
pub fn cli(server: &str, cache: &Path) -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_skill-fleet"));
    command
        .env("SKILL_FLEET_URL", server)
        .env("SKILL_FLEET_CACHE_DIR", cache)
        .env_remove("SKILL_FLEET_AUTH_TOKEN")
        .env_remove("SKILL_FLEET_TOKEN")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    command
}

/// Runs the CLI to the end (within [`DEADLINE`]).
pub fn run(server: &str, cache: &Path, args: &[&str]) -> Output {
    finish(cli(server, cache).args(args))
}

/// Like [`run`], in the working directory `dir`.
pub fn run_in(server: &str, cache: &Path, dir: &Path, args: &[&str]) -> Output {
    finish(cli(server, cache).args(args).current_dir(dir))
}

fn finish(command: &mut Command) -> Output {
    let mut child = command.spawn().expect("run skill-fleet");
    let stdout = collect(child.stdout.take().expect("stdout"));
    let stderr = collect(child.stderr.take().expect("stderr"));
    let status = wait(&mut child, DEADLINE);
    Output {
        code: status.code().unwrap_or(-1),
        stdout: stdout.recv_timeout(DEADLINE).unwrap_or_default(),
        stderr: stderr.recv_timeout(DEADLINE).unwrap_or_default(),
    }
}

/// Waits for a child, killing it (and failing) after `limit`.
pub fn wait(child: &mut Child, limit: Duration) -> ExitStatus {
    let deadline = Instant::now() + limit;
    loop {
        if let Some(status) = child.try_wait().expect("try_wait") {
            return status;
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            panic!("process did not exit within {limit:?}");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Reads lines until one satisfies `want`; returns every line read so far. Fails at the
/// deadline.
pub fn wait_for_line(
    lines: &Receiver<String>,
    seen: &mut Vec<String>,
    want: impl Fn(&str) -> bool,
) {
    if seen.iter().any(|line| want(line)) {
        return;
    }
    let deadline = Instant::now() + DEADLINE;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match lines.recv_timeout(left) {
            Ok(line) => {
                let done = want(&line);
                seen.push(line);
                if done {
                    return;
                }
            }
            Err(RecvTimeoutError::Timeout) => panic!("line not seen in time; got {seen:#?}"),
            Err(RecvTimeoutError::Disconnected) => panic!("output ended; got {seen:#?}"),
        }
    }
}

/// Polls `check` until it holds or the deadline passes.
pub fn eventually(what: &str, mut check: impl FnMut() -> bool) {
    skill_fleet_testkit::wait_until(what, DEADLINE, || check().then_some(()));
}

/// Creates a job of `job_type` with `id` and claims it as `worker` through `client`.
pub fn create_and_claim(
    client: &skill_fleet_client::Client,
    id: &str,
    job_type: &str,
    worker: &str,
) -> skill_fleet_types::ClaimedJob {
    client
        .create_job(&skill_fleet_types::CreateJob {
            job_type: job_type.into(),
            id: Some(id.into()),
            ..Default::default()
        })
        .expect("create");
    let claimed = client
        .claim(&[job_type.to_owned()], Some(worker))
        .expect("claim")
        .expect("a queued job");
    assert_eq!(claimed.job.id, id);
    claimed
}
