//! The real `skill-fleet-server` binary as a test's server: bound to 127.0.0.1:0 on a temp
//! database, found by the `listening on http://…` line it prints (within [`DEADLINE`]),
//! stopped with SIGTERM or SIGKILL, started again on the same database by starting a new one.
//!
//! The kit never builds the binary: the server crate's tests pass
//! `env!("CARGO_BIN_EXE_skill-fleet-server")`, `cargo xtask soak` its release build.

use std::io::{BufRead, BufReader, Read};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use crate::error::TestkitError;
use crate::http::Endpoint;
use crate::wait::DEADLINE;

/// `binary` on 127.0.0.1:0 against `database`, logging warnings, with no token or
/// configuration file from the environment; stdout is read by [`TestServer::spawn`], stderr
/// goes where the test's goes unless the command says otherwise.
pub fn command(binary: &Path, database: &Path) -> Command {
    let mut command = Command::new(binary);
    command
        .arg("--bind")
        .arg("127.0.0.1:0")
        .arg("--database")
        .arg(database)
        .env("SKILL_FLEET_LOG", "warn")
        .env_remove("SKILL_FLEET_AUTH_TOKEN")
        .env_remove("SKILL_FLEET_TOKENS_FILE")
        .env_remove("SKILL_FLEET_CONFIG")
        .env_remove("SKILL_FLEET_BIND")
        .env_remove("SKILL_FLEET_DATABASE")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit());
    command
}

/// Writes `config` (TOML) beside `database` and returns its path.
pub fn write_config(database: &Path, config: &str) -> Result<PathBuf, TestkitError> {
    let path = database.with_extension("toml");
    std::fs::write(&path, config).map_err(|source| TestkitError::Write {
        path: path.clone(),
        source,
    })?;
    Ok(path)
}

/// A running server; killed on drop (and, if the test is failing, its captured stderr
/// printed).
#[derive(Debug)]
pub struct TestServer {
    /// The server process.
    pub child: Child,
    /// `http://127.0.0.1:PORT`, and the calls against it (the server derefs to it).
    pub endpoint: Endpoint,
    /// The address it listens on.
    pub addr: SocketAddr,
    /// Its port.
    pub port: u16,
    /// Its stderr so far, when started with [`TestServer::spawn_capturing`].
    stderr: Option<Arc<Mutex<String>>>,
}

impl TestServer {
    /// Starts `command` (see [`command`]) and waits for its `listening on` line. The command's
    /// stdout is taken over; its stderr is left as the command set it.
    pub fn spawn(command: Command) -> Result<TestServer, TestkitError> {
        TestServer::spawn_inner(command, false)
    }

    /// Like [`TestServer::spawn`], with stderr captured: in the error when the server does
    /// not start, in [`TestServer::stderr`], and printed when a failing test drops it.
    pub fn spawn_capturing(command: Command) -> Result<TestServer, TestkitError> {
        TestServer::spawn_inner(command, true)
    }

    /// [`TestServer::spawn`], panicking with the reason when the server does not start.
    pub fn start(command: Command) -> TestServer {
        TestServer::spawn(command).unwrap_or_else(|err| panic!("{err}"))
    }

    /// [`TestServer::spawn_capturing`], panicking with the reason (and the server's stderr)
    /// when the server does not start.
    pub fn start_capturing(command: Command) -> TestServer {
        TestServer::spawn_capturing(command).unwrap_or_else(|err| panic!("{err}"))
    }

    fn spawn_inner(mut command: Command, capture: bool) -> Result<TestServer, TestkitError> {
        let binary = PathBuf::from(command.get_program());
        command.stdout(Stdio::piped());
        if capture {
            command.stderr(Stdio::piped());
        }
        let mut child = command.spawn().map_err(|source| TestkitError::Spawn {
            binary: binary.clone(),
            source,
        })?;
        let stderr = if capture {
            child.stderr.take().map(collect_into)
        } else {
            None
        };
        let Some(stdout) = child.stdout.take() else {
            unreachable!("stdout was set to a pipe above");
        };
        let lines = listening_lines(stdout);
        let started = Instant::now();
        let line = match lines.recv_timeout(DEADLINE) {
            Ok(line) => line,
            Err(_) => {
                let _ = child.kill();
                let _ = child.wait();
                return Err(TestkitError::NotListening {
                    binary,
                    seconds: DEADLINE.as_secs(),
                    stderr: stderr
                        .as_ref()
                        .map(|text| read(text, started))
                        .unwrap_or_default(),
                });
            }
        };
        let addr = line
            .strip_prefix("http://")
            .and_then(|addr| addr.parse::<SocketAddr>().ok());
        let Some(addr) = addr else {
            let _ = child.kill();
            let _ = child.wait();
            return Err(TestkitError::BadAddress { binary, line });
        };
        Ok(TestServer {
            child,
            endpoint: Endpoint { base: line },
            addr,
            port: addr.port(),
            stderr,
        })
    }

    /// What the server wrote to stderr so far (empty unless it was started capturing).
    pub fn stderr(&self) -> String {
        self.stderr
            .as_ref()
            .map(|text| text.lock().unwrap_or_else(PoisonError::into_inner).clone())
            .unwrap_or_default()
    }

    /// SIGKILL: no shutdown code runs.
    pub fn kill(mut self) {
        self.kill_now();
    }

    /// SIGTERM, then the exit status (panics if the server has not stopped within
    /// [`DEADLINE`]).
    pub fn terminate(mut self) -> ExitStatus {
        self.signal_terminate();
        let deadline = Instant::now() + DEADLINE;
        loop {
            match self.child.try_wait() {
                Ok(Some(status)) => return status,
                Ok(None) => {}
                Err(err) => panic!("cannot wait for server {}: {err}", self.child.id()),
            }
            assert!(
                Instant::now() < deadline,
                "server {} did not stop on SIGTERM within {DEADLINE:?}",
                self.child.id()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    fn kill_now(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    #[cfg(unix)]
    fn signal_terminate(&self) {
        use nix::sys::signal::{Signal, kill};
        use nix::unistd::Pid;
        let pid = Pid::from_raw(self.child.id() as i32);
        if let Err(err) = kill(pid, Signal::SIGTERM) {
            panic!("cannot send SIGTERM to server {pid}: {err}");
        }
    }

    #[cfg(not(unix))]
    fn signal_terminate(&self) {
        panic!("SIGTERM needs a unix system");
    }
}

impl std::ops::Deref for TestServer {
    type Target = Endpoint;

    fn deref(&self) -> &Endpoint {
        &self.endpoint
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        self.kill_now();
        if std::thread::panicking() {
            let stderr = self.stderr();
            if !stderr.is_empty() {
                eprintln!("--- stderr of the server at {} ---\n{stderr}", self.base);
            }
        }
    }
}

/// The address of each `listening on ADDR` line of `stdout`, as they come; the pipe is read
/// to its end so the server never blocks on it.
fn listening_lines(stdout: impl Read + Send + 'static) -> mpsc::Receiver<String> {
    let (sender, receiver) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines() {
            let Ok(line) = line else { break };
            if let Some(url) = line.strip_prefix("listening on ") {
                let _ = sender.send(url.trim().to_owned());
            }
        }
    });
    receiver
}

/// A pipe read into a shared string as it comes.
fn collect_into(mut pipe: impl Read + Send + 'static) -> Arc<Mutex<String>> {
    let text = Arc::new(Mutex::new(String::new()));
    let filled = Arc::clone(&text);
    std::thread::spawn(move || {
        let mut buffer = [0u8; 4096];
        while let Ok(read) = pipe.read(&mut buffer) {
            if read == 0 {
                break;
            }
            filled
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .push_str(&String::from_utf8_lossy(&buffer[..read]));
        }
    });
    text
}

/// The captured text, once the (killed) server's pipe is likely drained: a short grace after
/// `since`, never a condition the caller's correctness depends on.
fn read(text: &Arc<Mutex<String>>, since: Instant) -> String {
    let grace = since + DEADLINE + Duration::from_millis(200);
    while Instant::now() < grace && Arc::strong_count(text) > 1 {
        std::thread::sleep(Duration::from_millis(10));
    }
    text.lock().unwrap_or_else(PoisonError::into_inner).clone()
}
