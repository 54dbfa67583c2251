//! Runs the real `skill-fleet-server` binary on 127.0.0.1 (port 0 unless told) against a
//! temp database, and the real `skill-fleet` binary against it with its own cache dir.
#![allow(dead_code)]

use std::io::{BufRead, BufReader, Read};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::OnceLock;
use std::sync::mpsc::{self, Receiver, RecvTimeoutError};
use std::time::{Duration, Instant};

use serde_json::Value;

/// How long any one wait in these tests may take before it fails.
pub const DEADLINE: Duration = Duration::from_secs(60);

/// The server binary next to the CLI binary; built once if it is missing.
pub fn server_binary() -> &'static Path {
    static BINARY: OnceLock<PathBuf> = OnceLock::new();
    BINARY.get_or_init(|| {
        let cli = Path::new(env!("CARGO_BIN_EXE_skill-fleet"));
        let server = cli.with_file_name(format!(
            "skill-fleet-server{}",
            std::env::consts::EXE_SUFFIX
        ));
        if !server.exists() {
            let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".to_owned());
            let mut build = Command::new(cargo);
            build
                .args(["build", "-p", "skill-fleet-server"])
                .current_dir(env!("CARGO_MANIFEST_DIR"));
            if cli
                .parent()
                .and_then(Path::file_name)
                .is_some_and(|dir| dir == "release")
            {
                build.arg("--release");
            }
            let status = build
                .status()
                .expect("run cargo build -p skill-fleet-server");
            assert!(status.success(), "cargo build -p skill-fleet-server failed");
        }
        assert!(server.exists(), "no server binary at {}", server.display());
        server
    })
}

/// A running server; killed on drop.
pub struct Server {
    pub child: Child,
    pub base: String,
    pub port: u16,
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
        loop {
            let mut child = Command::new(server_binary())
                .arg("--config")
                .arg(&config)
                .arg("--bind")
                .arg(format!("127.0.0.1:{port}"))
                .arg("--database")
                .arg(database)
                .args(extra)
                .env("SKILL_FLEET_LOG", "warn")
                .env_remove("SKILL_FLEET_AUTH_TOKEN")
                .env_remove("SKILL_FLEET_CONFIG")
                .env_remove("SKILL_FLEET_BIND")
                .env_remove("SKILL_FLEET_DATABASE")
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .spawn()
                .expect("start skill-fleet-server");
            let lines = lines_of(child.stdout.take().expect("stdout"));
            let stderr = collect(child.stderr.take().expect("stderr"));
            match lines.recv_timeout(DEADLINE) {
                Ok(line) => {
                    let base = line
                        .strip_prefix("listening on ")
                        .unwrap_or_else(|| panic!("unexpected first line {line:?}"))
                        .trim()
                        .to_owned();
                    let port = base
                        .rsplit(':')
                        .next()
                        .and_then(|p| p.parse().ok())
                        .expect("port");
                    return Server { child, base, port };
                }
                Err(_) => {
                    // A restart on a fixed port can race the old socket; try again briefly.
                    let _ = child.kill();
                    let _ = child.wait();
                    let err = stderr
                        .recv_timeout(Duration::from_secs(5))
                        .unwrap_or_default();
                    assert!(
                        port != 0 && Instant::now() < deadline,
                        "server did not start: {err}"
                    );
                }
            }
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    pub fn get(&self, path: &str) -> (u16, Value) {
        call(agent().get(&self.url(path)).call())
    }

    pub fn post(&self, path: &str, body: Value) -> (u16, Value) {
        call(agent().post(&self.url(path)).send_json(body))
    }

    /// POSTs and asserts the status.
    pub fn post_ok(&self, path: &str, body: Value, status: u16) -> Value {
        let (got, body) = self.post(path, body);
        assert_eq!(got, status, "POST {path}: {body}");
        body
    }

    /// SIGKILL: no shutdown code runs.
    pub fn kill(mut self) {
        self.child.kill().expect("kill");
        self.child.wait().expect("wait");
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub fn agent() -> ureq::Agent {
    ureq::Agent::config_builder()
        .http_status_as_error(false)
        .timeout_global(Some(Duration::from_secs(30)))
        .build()
        .into()
}

fn call(result: Result<ureq::http::Response<ureq::Body>, ureq::Error>) -> (u16, Value) {
    let mut response = result.expect("request");
    let status = response.status().as_u16();
    let text = response.body_mut().read_to_string().unwrap_or_default();
    let body = serde_json::from_str(&text).unwrap_or(Value::String(text));
    (status, body)
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

/// A temp directory with a database path and a cache directory.
pub struct Dirs {
    pub dir: tempfile::TempDir,
}

impl Dirs {
    pub fn new() -> Dirs {
        Dirs {
            dir: tempfile::tempdir().expect("tempdir"),
        }
    }

    pub fn db(&self) -> PathBuf {
        self.dir.path().join("skill-fleet.db")
    }

    pub fn cache(&self) -> PathBuf {
        self.dir.path().join("cache")
    }
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
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    command
}

/// Runs the CLI to the end (within [`DEADLINE`]).
pub fn run(server: &str, cache: &Path, args: &[&str]) -> Output {
    let mut child = cli(server, cache)
        .args(args)
        .spawn()
        .expect("run skill-fleet");
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
    let deadline = Instant::now() + DEADLINE;
    while !check() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(25));
    }
}
