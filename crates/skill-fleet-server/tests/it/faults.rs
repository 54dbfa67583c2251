//! Faults against the real server binary, and the promise under each: nothing acknowledged
//! (answered 2xx) is lost, a refused write says so (503 `unavailable`, "the change was not
//! saved"), reads and streams keep working, and the server recovers without a restart.
//!
//! - disk full: the database on a small tmpfs, filled to ENOSPC, then freed;
//! - read-only database: the database files made immutable on a loop-mounted ext4 (Linux
//!   refuses `mount -o remount,ro` with EBUSY while SQLite holds files open for writing, so
//!   this is the nearest fault that can be undone), then made writable again;
//! - a database locked by another process (`BEGIN EXCLUSIVE` from a second connection);
//! - children that flood stdout or close it early; SSE clients that never read;
//! - SIGKILL during ingest, three rounds of `cargo xtask soak kill-loop`'s logic.
//!
//! The storage tests mount file systems and need root: where mounting is not permitted they
//! say so and pass, except under CI (`CI` set), where they fail.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use crate::support;

use skill_fleet_testkit::kill_loop;

use std::io::{BufRead, BufReader, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use diesel::connection::SimpleConnection;
use diesel::{Connection, SqliteConnection};
use serde_json::{Value, json};
use skill_fleet_testkit::http::streaming_agent;
use support::{Server, agent, server_command, server_command_with_config, temp_db, wait_for};

// ---------------------------------------------------------------------------------------------
// Mounts

/// A file system mounted on a temporary directory; unmounted on drop (declare it before the
/// server so the server is dropped first).
struct Mount {
    point: tempfile::TempDir,
    /// The ext4 image behind a loop mount.
    _image: Option<tempfile::TempDir>,
}

impl Mount {
    /// A tmpfs of `size_kib`, or `None` (after saying why) where mounting is not permitted.
    fn tmpfs(size_kib: u64) -> Option<Mount> {
        let point = tempfile::tempdir().unwrap();
        let size = format!("size={size_kib}k");
        run_or_skip(
            "mount",
            &["-t", "tmpfs", "-o", &size, "tmpfs", path_str(point.path())],
        )?;
        Some(Mount {
            point,
            _image: None,
        })
    }

    /// A loop-mounted ext4 image of `size_mib` (journal-less: nothing but our files writes).
    fn ext4(size_mib: u64) -> Option<Mount> {
        let image_dir = tempfile::tempdir().unwrap();
        let image = image_dir.path().join("fs.img");
        std::fs::File::create(&image)
            .unwrap()
            .set_len(size_mib << 20)
            .unwrap();
        run_or_skip(
            "mkfs.ext4",
            &["-q", "-F", "-O", "^has_journal", path_str(&image)],
        )?;
        let point = tempfile::tempdir().unwrap();
        run_or_skip(
            "mount",
            &["-o", "loop", path_str(&image), path_str(point.path())],
        )?;
        Some(Mount {
            point,
            _image: Some(image_dir),
        })
    }

    fn path(&self) -> &Path {
        self.point.path()
    }
}

impl Drop for Mount {
    fn drop(&mut self) {
        let point = self.point.path();
        let unmounted = Command::new("umount")
            .arg(point)
            .status()
            .is_ok_and(|s| s.success());
        if !unmounted {
            // Something still holds a file there: detach now, the kernel finishes later.
            let _ = Command::new("umount").arg("-l").arg(point).status();
        }
    }
}

fn path_str(path: &Path) -> &str {
    path.to_str().unwrap()
}

/// Runs a set-up command; `None` after printing why when it cannot run, a panic under CI.
fn run_or_skip(program: &str, args: &[&str]) -> Option<()> {
    let output = Command::new(program).args(args).output();
    let why = match output {
        Ok(out) if out.status.success() => return Some(()),
        Ok(out) => format!(
            "`{program} {}` failed: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        ),
        Err(err) => format!("cannot run `{program}`: {err}"),
    };
    if std::env::var_os("CI").is_some() {
        panic!("{why} (CI is set: the fault tests need root, mount, mkfs.ext4 and chattr)");
    }
    println!("skipped: {why} (the fault tests need root; run them as root to check)");
    None
}

/// Fills the file system holding `dir` to ENOSPC; the file is removed on drop.
struct Filler(PathBuf);

impl Filler {
    fn fill(dir: &Path) -> Filler {
        let path = dir.join("filler");
        let mut file = std::fs::File::create(&path).unwrap();
        let chunk = vec![0xA5u8; 64 * 1024];
        loop {
            if let Err(err) = file.write_all(&chunk) {
                assert_eq!(err.raw_os_error(), Some(28), "expected ENOSPC: {err}");
                break;
            }
        }
        // What is left is smaller than a chunk: fill it byte-page by page.
        while file.write_all(&chunk[..512]).is_ok() {}
        Filler(path)
    }
}

impl Drop for Filler {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

/// `PRAGMA wal_checkpoint(TRUNCATE)` from a second connection, so every later write must grow
/// the WAL (a full disk then refuses it at once instead of after the WAL's slack is used).
fn truncate_wal(db: &Path) {
    let mut conn = SqliteConnection::establish(path_str(db)).unwrap();
    conn.batch_execute("PRAGMA busy_timeout = 5000;").unwrap();
    let wal = PathBuf::from(format!("{}-wal", db.display()));
    wait_for("the WAL to be truncated", 10, || {
        conn.batch_execute("PRAGMA wal_checkpoint(TRUNCATE);")
            .ok()?;
        (std::fs::metadata(&wal).map(|m| m.len()).unwrap_or(0) == 0).then_some(())
    });
}

fn chattr(flag: &str, db: &Path) {
    for suffix in ["", "-wal"] {
        let file = format!("{}{suffix}", db.display());
        let status = Command::new("chattr")
            .arg(flag)
            .arg(&file)
            .status()
            .unwrap();
        assert!(status.success(), "chattr {flag} {file}");
    }
}

// ---------------------------------------------------------------------------------------------
// HTTP helpers

/// The server logging errors only: the faults here make it warn on purpose.
fn quiet(mut command: Command) -> Command {
    command.env("SKILL_FLEET_LOG", "error");
    command
}

/// A POST with the status, JSON body and `Retry-After` header.
fn post_full(server: &Server, path: &str, body: Value) -> (u16, Value, Option<String>) {
    let mut response = agent().post(&server.url(path)).send_json(body).unwrap();
    let status = response.status().as_u16();
    let retry_after = response
        .headers()
        .get("retry-after")
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    let text = response.body_mut().read_to_string().unwrap_or_default();
    let body = serde_json::from_str(&text).unwrap_or(Value::String(text));
    (status, body, retry_after)
}

fn post_ok(server: &Server, path: &str, body: Value) -> Value {
    let (status, reply) = server.post(path, body);
    assert!(
        (200..300).contains(&status),
        "POST {path} → {status}: {reply}"
    );
    reply
}

fn get_ok(server: &Server, path: &str) -> Value {
    let (status, reply) = server.get(path);
    assert_eq!(status, 200, "GET {path}: {reply}");
    reply
}

/// The write is refused with 503 `unavailable`, a message naming `cause` and saying nothing
/// was saved, and a `Retry-After`.
fn assert_refused(server: &Server, path: &str, body: Value, causes: &[&str]) {
    let (status, reply, retry_after) = post_full(server, path, body);
    assert_eq!(status, 503, "POST {path} during the fault: {reply}");
    assert_eq!(reply["error"]["code"], "unavailable", "{reply}");
    let message = reply["error"]["message"].as_str().unwrap();
    assert!(
        causes.iter().any(|cause| message.contains(cause)),
        "POST {path}: the message should name one of {causes:?}: {message}"
    );
    assert!(message.contains("the change was not saved"), "{message}");
    assert_eq!(retry_after.as_deref(), Some("1"), "{message}");
}

fn addr(server: &Server) -> std::net::SocketAddr {
    server
        .base
        .strip_prefix("http://")
        .unwrap()
        .parse()
        .unwrap()
}

/// An SSE client on its own thread, keeping every `data:` object it read.
struct Sse {
    events: Arc<Mutex<Vec<Value>>>,
}

impl Sse {
    fn open(server: &Server, path: &str) -> Sse {
        let stream = streaming_agent()
            .get(&server.url(path))
            .header("Accept", "text/event-stream")
            .call()
            .unwrap()
            .into_body()
            .into_reader();
        let events = Arc::new(Mutex::new(Vec::new()));
        let sink = Arc::clone(&events);
        std::thread::spawn(move || {
            for line in BufReader::new(stream).lines() {
                let Ok(line) = line else { break };
                if let Some(data) = line.strip_prefix("data:")
                    && let Ok(event) = serde_json::from_str::<Value>(data.trim())
                {
                    sink.lock().unwrap().push(event);
                }
            }
        });
        Sse { events }
    }

    fn wait(&self, what: &str, seconds: u64, check: impl Fn(&Value) -> bool) -> Value {
        wait_for(what, seconds, || {
            self.events
                .lock()
                .unwrap()
                .iter()
                .rev()
                .find(|e| check(e))
                .cloned()
        })
    }
}

fn progress_of(job: &Value) -> f64 {
    job["progress"]["progress"].as_f64().unwrap()
}

// ---------------------------------------------------------------------------------------------
// Storage faults

/// Jobs in the states the storage tests need: `finish` and `steps` running (with a step and a
/// checkpoint), `coalesced` running with progress 0.1 and a stream open on it.
fn seed_storage_jobs(server: &Server) -> Sse {
    for id in ["finish", "steps", "coalesced"] {
        post_ok(server, "/api/v1/jobs", json!({"id": id, "type": "fault"}));
    }
    post_ok(
        server,
        "/api/v1/jobs/finish/events",
        json!({"step": "working", "progress": 0.5}),
    );
    post_ok(
        server,
        "/api/v1/jobs/steps/events",
        json!({"step": "one", "progress": 0.1, "checkpoint": {"k": 1}}),
    );
    post_ok(
        server,
        "/api/v1/jobs/coalesced/events",
        json!({"step": "run", "progress": 0.1}),
    );
    let sse = Sse::open(server, "/api/v1/jobs/coalesced/stream");
    sse.wait("the stream's first state", 10, |e| {
        e["progress"] == json!(0.1)
    });
    sse
}

/// What every storage fault must look like from outside, while it lasts.
fn check_during_fault(server: &Server, sse: &Sse, causes: &[&str]) {
    assert_refused(
        server,
        "/api/v1/jobs",
        json!({"id": "during", "type": "fault"}),
        causes,
    );
    assert_refused(
        server,
        "/api/v1/jobs/steps/events",
        json!({"step": "two", "checkpoint": {"k": 2}}),
        causes,
    );
    // Coalesced progress is taken (not durable, as always) and streamed at once.
    let ack = post_ok(
        server,
        "/api/v1/jobs/coalesced/events",
        json!({"progress": 0.7, "message": "during the fault"}),
    );
    assert_eq!(ack["durable"], false, "{ack}");
    sse.wait(
        "the stream to carry progress made during the fault",
        10,
        |e| e["progress"] == json!(0.7),
    );
    // A refused step change or completion of a job with pending progress must not drop
    // that progress: it is still written once the fault ends.
    assert_refused(
        server,
        "/api/v1/jobs/coalesced/events",
        json!({"step": "never saved"}),
        causes,
    );
    let ack = post_ok(
        server,
        "/api/v1/jobs/finish/events",
        json!({"progress": 0.6}),
    );
    assert_eq!(ack["durable"], false, "{ack}");
    assert_refused(
        server,
        "/api/v1/jobs/finish/complete",
        json!({"result": {"ok": true}}),
        causes,
    );
    // Reads keep working and show the stored state: the refused writes changed nothing.
    let finish = get_ok(server, "/api/v1/jobs/finish");
    assert_eq!(finish["status"], "running", "{finish}");
    let coalesced = get_ok(server, "/api/v1/jobs/coalesced");
    assert_eq!(coalesced["progress"]["step"], "run", "{coalesced}");
    let steps = get_ok(server, "/api/v1/jobs/steps");
    assert_eq!(steps["progress"]["step"], "one", "{steps}");
    assert_eq!(steps["checkpoint"], json!({"k": 1}), "{steps}");
    let (status, missing) = server.get("/api/v1/jobs/during");
    assert_eq!(status, 404, "{missing}");
    let list = get_ok(server, "/api/v1/jobs?limit=50");
    assert_eq!(list["jobs"].as_array().unwrap().len(), 3, "{list}");
    get_ok(server, "/api/v1/jobs/steps/progress");
    // Liveness and readiness stay up: the process serves reads and streams, and a restart
    // would not free the disk.
    assert_eq!(get_ok(server, "/healthz")["status"], "ok");
    let ready = get_ok(server, "/readyz");
    assert_eq!(ready["status"], "ready", "{ready}");
    // Readiness says writes are failing, and why.
    assert_eq!(ready["writes_failing"], true, "{ready}");
    let fault = ready["write_fault"].as_str().unwrap_or_default();
    assert!(
        causes.contains(&fault),
        "/readyz names {fault:?}, expected one of {causes:?}: {ready}"
    );
}

/// After the fault: the pending progress reaches the database without a restart, the refused
/// writes now succeed, and many more writes in a row all succeed (no broken connection left in
/// the pool).
fn check_recovery(server: &Server) {
    wait_for("the coalesced progress to be flushed", 15, || {
        (progress_of(&get_ok(server, "/api/v1/jobs/coalesced")) == 0.7).then_some(())
    });
    let (status, created) = server.post("/api/v1/jobs", json!({"id": "during", "type": "fault"}));
    assert_eq!(status, 201, "{created}");
    post_ok(
        server,
        "/api/v1/jobs/steps/events",
        json!({"step": "two", "checkpoint": {"k": 2}}),
    );
    let done = post_ok(
        server,
        "/api/v1/jobs/finish/complete",
        json!({"result": {"ok": true}}),
    );
    assert_eq!(done["status"], "completed");
    for i in 0..20 {
        let (status, reply) = server.post(
            "/api/v1/jobs",
            json!({"id": format!("after-{i}"), "type": "fault", "metadata": {"i": i}}),
        );
        assert_eq!(status, 201, "write {i} after recovery: {reply}");
        post_ok(
            server,
            &format!("/api/v1/jobs/after-{i}/events"),
            json!({"step": "first"}),
        );
    }
    // Writes commit again: readiness no longer says they fail.
    let ready = get_ok(server, "/readyz");
    assert_eq!(ready["writes_failing"], false, "{ready}");
    assert!(ready["write_fault"].is_null(), "{ready}");
}

/// After a clean restart every acknowledged write is there.
fn check_after_restart(server: &Server) {
    let finish = get_ok(server, "/api/v1/jobs/finish");
    assert_eq!(finish["status"], "completed", "{finish}");
    assert_eq!(finish["result"], json!({"ok": true}));
    // Completion sets progress to 1; the 0.6 taken during the fault is in the history.
    let history = get_ok(server, "/api/v1/jobs/finish/progress");
    let records = history["records"].as_array().unwrap();
    assert!(
        records.iter().any(|r| r["progress"] == json!(0.6)),
        "progress taken during the fault was lost: {history}"
    );
    let steps = get_ok(server, "/api/v1/jobs/steps");
    assert_eq!(steps["progress"]["step"], "two", "{steps}");
    assert_eq!(steps["checkpoint"], json!({"k": 2}));
    let coalesced = get_ok(server, "/api/v1/jobs/coalesced");
    assert_eq!(progress_of(&coalesced), 0.7, "{coalesced}");
    assert_eq!(coalesced["progress"]["message"], "during the fault");
    assert_eq!(
        coalesced["progress"]["step"], "run",
        "a refused step was saved: {coalesced}"
    );
    get_ok(server, "/api/v1/jobs/during");
    for i in 0..20 {
        let job = get_ok(server, &format!("/api/v1/jobs/after-{i}"));
        assert_eq!(job["progress"]["step"], "first", "{job}");
    }
}

#[test]
fn a_full_disk_refuses_writes_clearly_and_recovers_without_a_restart() {
    let Some(mount) = Mount::tmpfs(4 * 1024) else {
        return;
    };
    let db = mount.path().join("skill-fleet.db");
    let server = Server::start_with(quiet(server_command(&db)));
    let sse = seed_storage_jobs(&server);

    truncate_wal(&db);
    let filler = Filler::fill(mount.path());
    check_during_fault(&server, &sse, &["database is full"]);
    // The flusher keeps the progress and retries every tick; it cannot land yet.
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(
        progress_of(&get_ok(&server, "/api/v1/jobs/coalesced")),
        0.1,
        "nothing can be written while the disk is full"
    );

    drop(filler);
    check_recovery(&server);
    assert!(server.terminate().success());
    let server = Server::start_with(quiet(server_command(&db)));
    check_after_restart(&server);
}

/// A child's step change and checkpoint made while the disk is full, and its exit, are saved
/// once space returns: the executor retries them instead of dropping them and leaving the job
/// `running` with no process.
#[test]
fn a_run_that_ends_while_the_disk_is_full_is_settled_once_space_returns() {
    let Some(mount) = Mount::tmpfs(4 * 1024) else {
        return;
    };
    let db = mount.path().join("skill-fleet.db");
    let data = tempfile::tempdir().unwrap();
    let config = r#"
[executors.writer]
command = ["sh", "-c", "echo '{\"step\": \"warmup\"}'; while [ ! -e go ]; do sleep 0.02; done; echo '{\"step\": \"final\", \"checkpoint\": {\"k\": 9}}'; echo '{\"result\": {\"ok\": 1}}'; touch exited; exit 0"]
"#;
    let mut command = quiet(server_command_with_config(&db, config));
    command.arg("--data-dir").arg(data.path());
    let server = Server::start_with(command);
    post_ok(
        &server,
        "/api/v1/jobs",
        json!({"id": "run", "type": "writer"}),
    );
    wait_for("the run to start", 30, || {
        let job = get_ok(&server, "/api/v1/jobs/run");
        (job["progress"]["step"] == "warmup").then_some(())
    });

    truncate_wal(&db);
    let filler = Filler::fill(mount.path());
    let work = data.path().join("jobs/run");
    std::fs::write(work.join("go"), "").unwrap();
    wait_for("the child to exit", 30, || {
        work.join("exited").exists().then_some(())
    });
    let job = get_ok(&server, "/api/v1/jobs/run");
    assert_eq!(job["status"], "running", "{job}");
    assert_eq!(job["progress"]["step"], "warmup", "{job}");

    drop(filler);
    let job = wait_for("the run to be completed", 30, || {
        let job = get_ok(&server, "/api/v1/jobs/run");
        (job["status"] == "completed").then_some(job)
    });
    assert_eq!(job["progress"]["step"], "final", "{job}");
    assert_eq!(job["checkpoint"], json!({"k": 9}), "{job}");
    assert_eq!(job["result"], json!({"ok": 1}), "{job}");
}

#[test]
fn a_read_only_database_refuses_writes_clearly_and_recovers_without_a_restart() {
    let Some(mount) = Mount::ext4(32) else {
        return;
    };
    let db = mount.path().join("skill-fleet.db");
    let server = Server::start_with(quiet(server_command(&db)));
    let sse = seed_storage_jobs(&server);

    chattr("+i", &db);
    let undo = Undo(Some(db.clone()));
    // Parallel reads make the pool open new connections, which SQLite opens read-only now;
    // they must not keep refusing writes once the file is writable again.
    // (A different page size each time: cached responses would not reach the database.)
    let readers: Vec<_> = (0..8)
        .map(|reader| {
            let base = server.base.clone();
            std::thread::spawn(move || {
                for i in 0..25 {
                    let limit = 1 + reader * 25 + i;
                    let response = agent()
                        .get(&format!("{base}/api/v1/jobs?limit={limit}"))
                        .call()
                        .unwrap();
                    assert_eq!(response.status().as_u16(), 200);
                }
            })
        })
        .collect();
    for reader in readers {
        reader.join().unwrap();
    }
    let connections = std::fs::read_dir(format!("/proc/{}/fd", server.child.id()))
        .unwrap()
        .filter_map(|entry| std::fs::read_link(entry.ok()?.path()).ok())
        .filter(|target| target.ends_with("skill-fleet.db"))
        .count();
    println!("database connections after the parallel reads: {connections}");
    // Connections opened before the fault fail with an i/o error (EPERM on write), new ones
    // with SQLITE_READONLY.
    check_during_fault(
        &server,
        &sse,
        &["database is read-only", "database i/o error"],
    );

    drop(undo);
    check_recovery(&server);
    assert!(server.terminate().success());
    let server = Server::start_with(quiet(server_command(&db)));
    check_after_restart(&server);
}

/// Clears the immutable flag on drop, so a failed test does not leave an unmountable file.
struct Undo(Option<PathBuf>);

impl Drop for Undo {
    fn drop(&mut self) {
        if let Some(db) = self.0.take() {
            chattr("-i", &db);
        }
    }
}

#[test]
fn a_database_locked_by_another_process_makes_writes_wait_then_fail_clearly() {
    let (_dir, db) = temp_db();
    let mut command = quiet(server_command(&db));
    command.arg("--busy-timeout-ms").arg("700");
    let server = Server::start_with(command);
    let sse = seed_storage_jobs(&server);

    let mut other = SqliteConnection::establish(path_str(&db)).unwrap();
    other
        .batch_execute("PRAGMA busy_timeout = 5000; BEGIN EXCLUSIVE;")
        .unwrap();
    let started = Instant::now();
    check_during_fault(&server, &sse, &["database is busy"]);
    // Four refused writes, each after the busy timeout (700 ms).
    let took = started.elapsed();
    assert!(
        took >= Duration::from_millis(4 * 650),
        "writes gave up before the busy timeout: {took:?}"
    );
    // Reads do not wait for the lock (WAL), even while a dozen writers wait for it.
    let writers: Vec<_> = (0..12)
        .map(|i| {
            let base = server.base.clone();
            std::thread::spawn(move || {
                let response = agent()
                    .post(&format!("{base}/api/v1/jobs"))
                    .send_json(json!({"id": format!("queued-{i}"), "type": "fault"}))
                    .unwrap();
                response.status().as_u16()
            })
        })
        .collect();
    // (Positions the read among the waiting writers; they cannot answer before 700 ms.)
    std::thread::sleep(Duration::from_millis(150));
    let read = Instant::now();
    // A page size not asked before: a cached response would not reach the database.
    get_ok(&server, "/api/v1/jobs?limit=37");
    let read_took = read.elapsed();
    assert!(
        writers.iter().all(|w| !w.is_finished()),
        "a writer answered before the read did: the read waited for the writers"
    );
    for writer in writers {
        assert_eq!(writer.join().unwrap(), 503);
    }
    println!(
        "locked: 4 refused writes took {:.1} s; a read among 12 waiting writers took {} ms",
        took.as_secs_f64(),
        read_took.as_millis()
    );
    // The read's latency is measured by `cargo xtask bench --only faults`; that it came
    // before every waiting writer is checked above.

    other.batch_execute("ROLLBACK;").unwrap();
    drop(other);
    check_recovery(&server);
    assert!(server.terminate().success());
    let server = Server::start_with(quiet(server_command(&db)));
    check_after_restart(&server);
}

// ---------------------------------------------------------------------------------------------
// Child processes

/// A python child writing `FLOOD_BYTES` (0: forever) of plain lines as fast as it can, with a
/// progress line every 100 of them and a step change every 50 000.
const FLOOD: &str = r#"
import json, os, sys
with open(os.path.join(os.environ["SKILL_FLEET_WORK_DIR"], "pid"), "w") as f:
    f.write(str(os.getpid()))
total = int(os.environ["FLOOD_BYTES"])
block = ("x" * 99 + "\n") * 100
out = sys.stdout
written = 0
n = 0
while total == 0 or written < total:
    out.write(block)
    written += len(block)
    n += 1
    fraction = min(written / total, 1.0) if total else 0.5
    out.write(json.dumps({"progress": fraction, "message": "m" * 200}) + "\n")
    if n % 500 == 0:
        out.write(json.dumps({"step": "block-%d" % (n // 500)}) + "\n")
out.write(json.dumps({"result": {"bytes": written}}) + "\n")
"#;

/// VmRSS of a process in KiB.
fn rss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find_map(|line| line.strip_prefix("VmRSS:"))
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|kib| kib.parse().ok())
        .unwrap_or(0)
}

fn status_of(server: &Server, id: &str) -> String {
    get_ok(server, &format!("/api/v1/jobs/{id}"))["status"]
        .as_str()
        .unwrap()
        .to_owned()
}

/// While a child floods stdout the server answers within a deadline, its memory stays
/// bounded, the log tail is bounded, the job completes; a child flooding forever is
/// cancelled and gone.
#[test]
fn a_child_flooding_stdout_does_not_starve_the_server() {
    let (dir, db) = temp_db();
    let script = dir.path().join("flood.py");
    std::fs::write(&script, FLOOD).unwrap();
    let config = format!(
        r#"
[executors.flood]
command = ["python3", "{script}"]
env = {{ FLOOD_BYTES = "50000000" }}

[executors.flood_forever]
command = ["python3", "{script}"]
env = {{ FLOOD_BYTES = "0" }}
"#,
        script = script.display()
    );
    let server = Server::start_with(server_command_with_config(&db, &config));
    let pid = server.child.id();
    let baseline = rss_kib(pid);
    post_ok(
        &server,
        "/api/v1/jobs",
        json!({"id": "flood", "type": "flood"}),
    );
    post_ok(
        &server,
        "/api/v1/jobs",
        json!({"id": "forever", "type": "flood_forever"}),
    );
    let started = Instant::now();
    let mut peak = baseline;
    let mut slowest = Duration::ZERO;
    let mut samples = 0;
    loop {
        let asked = Instant::now();
        let job = get_ok(&server, "/api/v1/jobs/flood");
        slowest = slowest.max(asked.elapsed());
        samples += 1;
        peak = peak.max(rss_kib(pid));
        if job["status"] == "completed" {
            break;
        }
        assert!(
            ["queued", "running"].contains(&job["status"].as_str().unwrap()),
            "{job}"
        );
        assert!(
            started.elapsed() < Duration::from_secs(120),
            "flood never ended"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    let flood_took = started.elapsed();
    println!(
        "flood: 50 MB in {:.1} s; {samples} GETs during it, slowest {} ms; RSS {} MiB → peak {} MiB",
        flood_took.as_secs_f64(),
        slowest.as_millis(),
        baseline / 1024,
        peak / 1024
    );
    // How slow the slowest GET was is measured by `cargo xtask bench --only faults`.
    assert!(
        peak < baseline + 100 * 1024,
        "memory grew from {baseline} KiB to {peak} KiB during the flood"
    );
    let done = get_ok(&server, "/api/v1/jobs/flood");
    assert_eq!(progress_of(&done), 1.0, "{done}");
    assert!(
        done["result"]["bytes"].as_u64().unwrap() >= 50_000_000,
        "{done}"
    );
    let logs = get_ok(&server, "/api/v1/jobs/flood/logs");
    let lines = logs["stdout"].as_array().unwrap();
    assert!(
        lines.len() <= 500 && !lines.is_empty(),
        "{} lines",
        lines.len()
    );
    assert_eq!(logs["truncated"], true);

    // The endless one is still flooding; cancel stops it.
    assert_eq!(status_of(&server, "forever"), "running");
    let pid_file = dir.path().join("skill-fleet-data/jobs/forever/pid");
    let child: u32 = wait_for("the flooding child's pid", 30, || {
        std::fs::read_to_string(&pid_file).ok()?.trim().parse().ok()
    });
    // How fast the cancel answers is measured by `cargo xtask bench --only faults`.
    let cancelled = post_ok(&server, "/api/v1/jobs/forever/cancel", json!({}));
    assert_eq!(cancelled["status"], "cancelled");
    wait_for("the flooding child to be gone", 30, || {
        let stat = std::fs::read_to_string(format!("/proc/{child}/stat")).ok();
        // Gone, or a zombie waiting to be reaped.
        stat.is_none_or(|s| {
            s.rsplit(')')
                .next()
                .is_some_and(|r| r.trim_start().starts_with('Z'))
        })
        .then_some(())
    });
    assert_eq!(status_of(&server, "forever"), "cancelled");
    assert!(rss_kib(pid) < baseline + 100 * 1024);
}

/// A child that closes stdout and keeps running is not done until it exits; then its exit
/// status decides.
#[test]
fn a_child_closing_stdout_early_ends_with_its_exit_status() {
    let (_dir, db) = temp_db();
    let closer = |code: u8| {
        format!(
            "[executors.closer_{code}]\ncommand = [\"sh\", \"-c\", \"echo '{{\\\"step\\\": \\\"started\\\"}}'; exec 1>&-; sleep 1; touch \\\"$SKILL_FLEET_WORK_DIR/exiting\\\"; exit {code}\"]\n"
        )
    };
    let config = format!("{}{}", closer(0), closer(3));
    let server = Server::start_with(server_command_with_config(&db, &config));
    post_ok(
        &server,
        "/api/v1/jobs",
        json!({"id": "ok", "type": "closer_0"}),
    );
    post_ok(
        &server,
        "/api/v1/jobs",
        json!({"id": "bad", "type": "closer_3"}),
    );
    let data = db.parent().unwrap().join("skill-fleet-data/jobs");
    for (id, want) in [("ok", "completed"), ("bad", "failed")] {
        let marker = data.join(id).join("exiting");
        let job = wait_for(&format!("job {id} to end"), 30, || {
            let job = get_ok(&server, &format!("/api/v1/jobs/{id}"));
            let status = job["status"].as_str().unwrap().to_owned();
            if status == "queued" || status == "running" {
                return None;
            }
            // Terminal only once the process is past its last command.
            assert!(
                marker.exists(),
                "job {id} is {status} before its process exited"
            );
            Some(job)
        });
        assert_eq!(job["status"], want, "{job}");
        assert_eq!(job["progress"]["step"], "started", "{job}");
        if want == "failed" {
            assert!(
                job["error"].as_str().unwrap().starts_with("exit status 3"),
                "{job}"
            );
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Slow SSE clients

/// Fifty SSE clients that never read, while a job publishes large progress as fast as it can:
/// the server's memory stays bounded, a reading client sees the newest state, API calls answer.
#[test]
fn sse_clients_that_never_read_cost_bounded_memory() {
    let (_dir, db) = temp_db();
    let mut command = server_command(&db);
    command.arg("--emit-interval-ms").arg("5");
    let server = Server::start_with(command);
    let pid = server.child.id();
    post_ok(
        &server,
        "/api/v1/jobs",
        json!({"id": "loud", "type": "fault"}),
    );
    post_ok(&server, "/api/v1/jobs/loud/events", json!({"step": "go"}));
    let baseline = rss_kib(pid);

    let request =
        "GET /api/v1/jobs/loud/stream HTTP/1.1\r\nHost: x\r\nAccept: text/event-stream\r\n\r\n";
    let silent: Vec<TcpStream> = (0..50)
        .map(|_| {
            let mut stream = TcpStream::connect(addr(&server)).unwrap();
            stream.write_all(request.as_bytes()).unwrap();
            stream
        })
        .collect();
    wait_for("50 subscribers", 10, || {
        let ready = get_ok(&server, "/readyz");
        (ready["subscribers"].as_u64()? >= 50).then_some(())
    });

    let message = "y".repeat(8 * 1024);
    let publishers: Vec<_> = (0..2)
        .map(|p| {
            let base = server.base.clone();
            let message = message.clone();
            std::thread::spawn(move || {
                let agent = agent();
                let until = Instant::now() + Duration::from_secs(4);
                let mut sent = 0u64;
                while Instant::now() < until {
                    sent += 1;
                    let progress = (sent % 1000) as f64 / 1000.0;
                    let response = agent
                        .post(&format!("{base}/api/v1/jobs/loud/events"))
                        .send_json(json!({"progress": progress, "message": format!("{p}-{sent} {message}")}))
                        .unwrap();
                    assert_eq!(response.status().as_u16(), 202);
                }
                sent
            })
        })
        .collect();
    let mut peak = baseline;
    let mut slowest = Duration::ZERO;
    while publishers.iter().any(|p| !p.is_finished()) {
        peak = peak.max(rss_kib(pid));
        let asked = Instant::now();
        get_ok(&server, "/api/v1/jobs/loud");
        get_ok(&server, "/api/v1/jobs?limit=10");
        slowest = slowest.max(asked.elapsed());
        std::thread::sleep(Duration::from_millis(50));
    }
    let sent: u64 = publishers.into_iter().map(|p| p.join().unwrap()).sum();
    let last = post_ok(
        &server,
        "/api/v1/jobs/loud/events",
        json!({"progress": 0.999, "message": "the newest"}),
    );
    assert_eq!(last["durable"], false);
    // A client that reads gets the newest state promptly.
    let reader = Sse::open(&server, "/api/v1/jobs/loud/stream");
    reader.wait("the newest state on a fresh stream", 10, |e| {
        e["message"] == "the newest"
    });
    let after = rss_kib(pid);
    println!(
        "slow SSE: {sent} events of 8 KiB to 50 silent clients ({} MiB if each were queued \
         for each client); RSS {} MiB → peak {} MiB, {} MiB after; slowest API pair {} ms",
        sent * 8 * 50 / 1024,
        baseline / 1024,
        peak / 1024,
        after / 1024,
        slowest.as_millis()
    );
    assert!(
        peak < baseline + 64 * 1024,
        "memory grew from {baseline} KiB to {peak} KiB with silent clients"
    );
    // How slow the slowest API pair was is measured by `cargo xtask bench --only faults`.
    drop(silent);
}

// ---------------------------------------------------------------------------------------------
// SIGKILL during ingest

/// Three rounds of `cargo xtask soak kill-loop` with the debug binary: every acknowledged
/// creation, step change, checkpoint and terminal state survives SIGKILL.
#[test]
fn sigkill_during_ingest_loses_nothing_acknowledged() {
    let dir = tempfile::tempdir().unwrap();
    let options = kill_loop::Options {
        binary: PathBuf::from(env!("CARGO_BIN_EXE_skill-fleet-server")),
        dir: dir.path().to_owned(),
        rounds: 3,
        round_time: Duration::from_millis(1200),
        workers: 4,
        seed: kill_loop::clock_seed(),
    };
    let report = kill_loop::run(&options, |round| {
        println!(
            "round {}: killed after {} ms, {} acknowledged writes ({} jobs), {} not acknowledged; {} checked after restart ({} ms)",
            round.round,
            round.killed_after.as_millis(),
            round.acknowledged,
            round.jobs,
            round.unacknowledged,
            round.checked,
            round.restart.as_millis()
        );
    })
    .unwrap();
    println!(
        "kill loop: {} rounds, {} acknowledged writes checked, {:.1} s (seed {})",
        report.rounds.len(),
        report.checked,
        report.elapsed.as_secs_f64(),
        options.seed
    );
    assert!(
        report.problems.is_empty(),
        "seed {}: {:#?}",
        options.seed,
        report.problems
    );
    assert_eq!(report.rounds.len(), 3);
    // The loop must have done something to check.
    assert!(
        report.checked > 20,
        "only {} writes checked",
        report.checked
    );
}
