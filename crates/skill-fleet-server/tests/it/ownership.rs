//! One server per SQLite database, with the real binary: a second server on the same file
//! (by a relative or an absolute path) is refused before it touches a row, naming the
//! owner; the lock goes with the owner's process (SIGTERM or SIGKILL); `init-db` refuses
//! beside a running server and `db status` works beside it, naming the owner.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use crate::support;

use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use support::{Server, temp_db};

/// The server binary with no executors, on `database` as given (relative to `dir`), its
/// stdout and stderr captured.
fn server_in(dir: &Path, database: &str) -> Command {
    std::fs::write(dir.join("skill-fleet.toml"), "[executors]\n").expect("write config");
    let mut command = Command::new(env!("CARGO_BIN_EXE_skill-fleet-server"));
    command
        .current_dir(dir)
        .args(["--bind", "127.0.0.1:0", "--database", database])
        .arg("--config")
        .arg(dir.join("skill-fleet.toml"))
        .env("SKILL_FLEET_LOG", "warn")
        .env_remove("SKILL_FLEET_AUTH_TOKEN")
        .env_remove("SKILL_FLEET_CONFIG")
        .env_remove("SKILL_FLEET_DATABASE")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    command
}

/// Runs a command that must exit by itself; kills it and fails the test after `seconds`.
fn run_to_exit(mut command: Command, seconds: u64) -> Output {
    let mut child = command.spawn().expect("spawn");
    let deadline = Instant::now() + Duration::from_secs(seconds);
    loop {
        if child.try_wait().expect("wait").is_some() {
            return child.wait_with_output().expect("output");
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            let output = child.wait_with_output().expect("output");
            panic!(
                "did not exit within {seconds} s; stdout: {} stderr: {}",
                String::from_utf8_lossy(&output.stdout),
                String::from_utf8_lossy(&output.stderr)
            );
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// A running job: created, then started by its first event.
fn running_job(server: &Server, id: &str) -> Value {
    let (status, body) = server.post("/api/v1/jobs", json!({"id": id, "type": "optimization"}));
    assert_eq!(status, 201, "{body}");
    let (status, ack) = server.post(
        &format!("/api/v1/jobs/{id}/events"),
        json!({"step": "collecting_traces", "progress": 0.1}),
    );
    assert_eq!(status, 202, "{ack}");
    let (status, job) = server.get(&format!("/api/v1/jobs/{id}"));
    assert_eq!(status, 200, "{job}");
    assert_eq!(job["status"], "running", "{job}");
    job
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

#[test]
fn a_second_server_on_the_same_file_is_refused_and_the_first_keeps_its_job() {
    let (dir, db) = temp_db();
    let first = Server::start(&db);
    let before = running_job(&first, "opt");
    let pid = first.child.id().to_string();

    // The same file by the name the first server was given, by a relative name and by a
    // `sqlite://` URL.
    let absolute = db.display().to_string();
    let url = format!("sqlite://{absolute}");
    for database in [
        absolute.as_str(),
        "skill-fleet.db",
        "./skill-fleet.db",
        &url,
    ] {
        let output = run_to_exit(server_in(dir.path(), database), 60);
        let stderr = text(&output.stderr);
        assert!(!output.status.success(), "{database}: {stderr}");
        assert_eq!(stderr.trim_end().lines().count(), 1, "{database}: {stderr}");
        assert!(
            stderr.contains(&format!("database {database} is in use by another skill-fleet-server (pid {pid}, {}, since ", first.base)),
            "{database}: {stderr}"
        );
        assert!(
            stderr.contains("stop it or choose another --database"),
            "{stderr}"
        );
        assert!(
            !text(&output.stdout).contains("listening on"),
            "{database}: the second server listened"
        );
    }

    // The first server's job was not touched: same attempt, still running, same version.
    let (status, after) = first.get("/api/v1/jobs/opt");
    assert_eq!(status, 200, "{after}");
    assert_eq!(after["status"], "running", "{after}");
    assert_eq!(after["attempt"], before["attempt"], "{after}");
    assert_eq!(after["version"], before["version"], "{after}");
    // And it still takes the job's events.
    let (status, ack) = first.post("/api/v1/jobs/opt/events", json!({"progress": 0.2}));
    assert_eq!(status, 202, "{ack}");
}

#[test]
fn the_lock_goes_with_the_server_whether_it_stops_or_is_killed() {
    let (_dir, db) = temp_db();
    let first = Server::start(&db);
    running_job(&first, "opt");
    assert!(first.terminate().success());

    // After SIGTERM.
    let second = Server::start(&db);
    // It runs the job again; then it is killed mid-run.
    let (status, ack) = second.post("/api/v1/jobs/opt/events", json!({"progress": 0.3}));
    assert_eq!(status, 202, "{ack}");
    let (_, job) = second.get("/api/v1/jobs/opt");
    assert_eq!(job["status"], "running", "{job}");
    let second_pid = second.child.id();
    second.kill();

    // After SIGKILL the lock file is still there, naming the dead server: it must not block.
    let lock = db.with_extension("db.lock");
    let stale = std::fs::read_to_string(&lock).expect("the lock file stays");
    assert!(stale.contains(&second_pid.to_string()), "{stale}");
    let third = Server::start(&db);
    assert_eq!(third.get("/readyz").0, 200);
    let (_, job) = third.get("/api/v1/jobs/opt");
    // The job the killed server left running was recovered by the third, not by a rival.
    assert_eq!(job["status"], "queued", "{job}");
    let now = std::fs::read_to_string(&lock).expect("lock file");
    assert!(now.contains(&third.child.id().to_string()), "{now}");
    assert!(now.contains(&third.base), "{now}");
}

#[test]
fn init_db_is_refused_and_db_status_works_beside_a_running_server() {
    let (dir, db) = temp_db();
    let subcommand = |args: &[&str]| {
        let mut command = server_in(dir.path(), "skill-fleet.db");
        command.args(args);
        run_to_exit(command, 60)
    };
    let server = Server::start(&db);
    running_job(&server, "opt");
    let pid = server.child.id().to_string();

    let output = subcommand(&["init-db"]);
    let stderr = text(&output.stderr);
    assert!(!output.status.success(), "{stderr}");
    assert!(
        stderr.contains(&format!(
            "database skill-fleet.db is in use by another skill-fleet-server (pid {pid}, {}",
            server.base
        )),
        "{stderr}"
    );

    let output = subcommand(&["db", "status"]);
    let stdout = text(&output.stdout);
    assert!(output.status.success(), "{stdout} {}", text(&output.stderr));
    assert!(
        stdout.contains(&format!(
            "owner: skill-fleet-server pid {pid} at {} (since ",
            server.base
        )),
        "{stdout}"
    );
    assert!(stdout.contains("pending migrations: none"), "{stdout}");
    assert!(stdout.contains("running"), "{stdout}");

    // Once the server is gone, both work and nobody owns the database.
    assert!(server.terminate().success());
    let output = subcommand(&["db", "status"]);
    let stdout = text(&output.stdout);
    assert!(output.status.success(), "{stdout}");
    assert!(stdout.contains("owner: none"), "{stdout}");
    let output = subcommand(&["init-db"]);
    assert!(output.status.success(), "{}", text(&output.stderr));
    assert!(
        text(&output.stdout).contains("database skill-fleet.db is ready"),
        "{}",
        text(&output.stdout)
    );
}
