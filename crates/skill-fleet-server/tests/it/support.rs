//! Starts the real `skill-fleet-server` binary on 127.0.0.1:0 against a temp database,
//! through the test kit's [`TestServer`].
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

use std::ops::{Deref, DerefMut};
use std::path::Path;
use std::process::Command;

use skill_fleet_testkit::TestServer;
use skill_fleet_testkit::server::{command, write_config};

pub use skill_fleet_testkit::http::call;
pub use skill_fleet_testkit::{agent, temp_db, wait_for};

/// This crate's server binary, which cargo builds for these tests.
const BINARY: &str = env!("CARGO_BIN_EXE_skill-fleet-server");

/// The server on 127.0.0.1:0 with no executors: jobs wait for the test to play the worker.
pub fn server_command(database: &Path) -> Command {
    server_command_with_config(database, "[executors]\n")
}

/// The server on 127.0.0.1:0 with this TOML configuration (written beside the database).
pub fn server_command_with_config(database: &Path, config: &str) -> Command {
    let config_path = write_config(database, config).expect("write server config");
    let mut command = server_command_with_defaults(database);
    command.arg("--config").arg(&config_path);
    command
}

/// The server with its built-in default executors (`optimization` → the bundled optimizer).
pub fn server_command_with_defaults(database: &Path) -> Command {
    command(Path::new(BINARY), database)
}

/// The job `id` as the server has it (asserting a 200).
pub fn job(server: &Server, id: &str) -> serde_json::Value {
    let (status, body) = server.get(&format!("/api/v1/jobs/{id}"));
    assert_eq!(status, 200, "{body}");
    body
}

/// Waits up to `seconds` for job `id` to be in status `want`; the job then.
pub fn wait_status(server: &Server, id: &str, want: &str, seconds: u64) -> serde_json::Value {
    wait_for(&format!("job {id} to be {want}"), seconds, || {
        let job = job(server, id);
        (job["status"] == want).then_some(job)
    })
}

/// A running server (the kit's [`TestServer`]); killed on drop.
pub struct Server(TestServer);

impl Server {
    pub fn start(database: &Path) -> Server {
        Server::start_with(server_command(database))
    }

    pub fn start_with(command: Command) -> Server {
        Server(TestServer::start(command))
    }

    /// With stderr captured (read it with `stderr()`).
    pub fn start_capturing(command: Command) -> Server {
        Server(TestServer::start_capturing(command))
    }

    /// SIGKILL: no shutdown code runs.
    pub fn kill(self) {
        self.0.kill();
    }

    /// SIGTERM, then wait for the exit status.
    pub fn terminate(self) -> std::process::ExitStatus {
        self.0.terminate()
    }
}

impl Deref for Server {
    type Target = TestServer;

    fn deref(&self) -> &TestServer {
        &self.0
    }
}

impl DerefMut for Server {
    fn deref_mut(&mut self) -> &mut TestServer {
        &mut self.0
    }
}

/// The fence (`attempt` + `lease_token`) of a claim's answer, as a heartbeat's body.
pub fn fence(claimed: &serde_json::Value) -> serde_json::Value {
    serde_json::json!({"attempt": claimed["attempt"], "lease_token": claimed["lease_token"]})
}

/// `body` (an object) with the fence of a claim's answer added.
pub fn with_fence(mut body: serde_json::Value, claimed: &serde_json::Value) -> serde_json::Value {
    let map = body.as_object_mut().expect("a JSON object body");
    map.insert("attempt".into(), claimed["attempt"].clone());
    map.insert("lease_token".into(), claimed["lease_token"].clone());
    body
}
