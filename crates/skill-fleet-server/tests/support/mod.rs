//! Starts the real `skill-fleet-server` binary on 127.0.0.1:0 against a temp database.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

pub struct Server {
    pub child: Child,
    pub base: String,
}

/// The server on 127.0.0.1:0 with no executors: jobs wait for the test to play the worker.
pub fn server_command(database: &Path) -> Command {
    server_command_with_config(database, "[executors]\n")
}

/// The server on 127.0.0.1:0 with this TOML configuration (written beside the database).
pub fn server_command_with_config(database: &Path, config: &str) -> Command {
    let config_path = database.with_extension("toml");
    std::fs::write(&config_path, config).expect("write server config");
    let mut command = server_command_with_defaults(database);
    command.arg("--config").arg(&config_path);
    command
}

/// The server with its built-in default executors (`optimization` → the bundled optimizer).
pub fn server_command_with_defaults(database: &Path) -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_skill-fleet-server"));
    command
        .arg("--bind")
        .arg("127.0.0.1:0")
        .arg("--database")
        .arg(database)
        .env("SKILL_FLEET_LOG", "warn")
        .env_remove("SKILL_FLEET_AUTH_TOKEN")
        .env_remove("SKILL_FLEET_CONFIG")
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit());
    command
}

/// Polls `check` every 20 ms until it returns `Some`, or panics after `seconds`.
pub fn wait_for<T>(what: &str, seconds: u64, mut check: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + Duration::from_secs(seconds);
    loop {
        if let Some(value) = check() {
            return value;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

impl Server {
    pub fn start(database: &Path) -> Server {
        Server::start_with(server_command(database))
    }

    pub fn start_with(mut command: Command) -> Server {
        let mut child = command.spawn().expect("start skill-fleet-server");
        let stdout = child.stdout.take().expect("stdout");
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let mut lines = BufReader::new(stdout).lines();
            while let Some(Ok(line)) = lines.next() {
                if let Some(url) = line.strip_prefix("listening on ") {
                    let _ = tx.send(url.trim().to_owned());
                }
            }
        });
        let base = rx
            .recv_timeout(Duration::from_secs(60))
            .expect("server did not say where it listens");
        Server { child, base }
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

    /// SIGKILL: no shutdown code runs.
    pub fn kill(mut self) {
        self.child.kill().expect("kill");
        self.child.wait().expect("wait");
    }

    /// SIGTERM, then wait for the exit status.
    pub fn terminate(mut self) -> std::process::ExitStatus {
        let status = Command::new("kill")
            .arg("-TERM")
            .arg(self.child.id().to_string())
            .status()
            .expect("run kill");
        assert!(status.success());
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Some(status) = self.child.try_wait().expect("wait") {
                return status;
            }
            assert!(Instant::now() < deadline, "server did not stop on SIGTERM");
            std::thread::sleep(Duration::from_millis(20));
        }
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

pub fn temp_db() -> (tempfile::TempDir, PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("skill-fleet.db");
    (dir, path)
}
