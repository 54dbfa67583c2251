//! Artifacts end to end with the real binary: a child's files stored (its `artifacts/`
//! directory and `{"artifact"}` lines) and downloaded intact; SIGKILL of the server in the
//! middle of a large upload leaves the artifact absent and an earlier one whole; a worker
//! whose lease was lost cannot upload.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::io::Read;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, mpsc};

use diesel::prelude::*;
use serde_json::{Value, json};
use sha2::{Digest, Sha256};

use crate::support::{self, Server, job, temp_db, wait_for, wait_status};

fn sha256_hex(bytes: &[u8]) -> String {
    format!("{:x}", Sha256::digest(bytes))
}

/// `GET path` as raw bytes, with the status and the `ETag`.
fn download(server: &Server, path: &str) -> (u16, Option<String>, Vec<u8>) {
    let mut response = support::agent().get(&server.url(path)).call().unwrap();
    let status = response.status().as_u16();
    let etag = response
        .headers()
        .get("etag")
        .map(|v| v.to_str().unwrap().to_owned());
    let mut bytes = Vec::new();
    response
        .body_mut()
        .as_reader()
        .read_to_end(&mut bytes)
        .unwrap();
    (status, etag, bytes)
}

/// `PUT` of `bytes` as artifact `name` of job `id` with a claim's fence.
fn upload(server: &Server, id: &str, name: &str, claimed: &Value, bytes: &[u8]) -> (u16, Value) {
    support::call(
        support::agent()
            .put(&server.url(&format!("/api/v1/jobs/{id}/artifacts/{name}")))
            .header("skill-fleet-attempt", claimed["attempt"].to_string())
            .header(
                "skill-fleet-lease-token",
                claimed["lease_token"].as_str().unwrap(),
            )
            .send(bytes),
    )
}

fn artifact_names(server: &Server, id: &str) -> Vec<String> {
    let (status, list) = server.get(&format!("/api/v1/jobs/{id}/artifacts"));
    assert_eq!(status, 200, "{list}");
    list["artifacts"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a["name"].as_str().unwrap().to_owned())
        .collect()
}

/// A child that leaves a 3 MB file in `artifacts/`, names another file by a protocol line,
/// tries three files that cannot be artifacts, and names its program as its result.
const WRITER: &str = r#"
[executors.writer]
command = ["sh", "-c", "mkdir -p artifacts/sub out && head -c 3000000 /dev/urandom > artifacts/weights.bin && printf '{\"instructions\": \"be brief\"}' > out/program.json && echo '{\"artifact\": \"out/program.json\"}' && echo '{\"artifact\": \"../../escape.json\"}' && echo x > artifacts/.hidden && echo '{\"progress\": 0.9}' && echo '{\"result\": {\"ok\": true}, \"result_path\": \"artifact:program.json\"}'"]
"#;

#[test]
fn a_child_s_files_are_stored_and_downloaded_intact() {
    let (_dir, db) = temp_db();
    let server = Server::start_with(support::server_command_with_config(&db, WRITER));
    server.post_ok("/api/v1/jobs", json!({"id": "w1", "type": "writer"}), 201);
    let done = wait_status(&server, "w1", "completed", 60);
    assert_eq!(done["result_path"], "artifact:program.json", "{done}");
    assert_eq!(
        artifact_names(&server, "w1"),
        ["program.json", "weights.bin"]
    );

    let work = db.parent().unwrap().join("skill-fleet-data/jobs/w1");
    for (name, file) in [
        ("weights.bin", work.join("artifacts/weights.bin")),
        ("program.json", work.join("out/program.json")),
    ] {
        let on_disk = std::fs::read(&file).unwrap();
        let (status, etag, bytes) = download(&server, &format!("/api/v1/jobs/w1/artifacts/{name}"));
        assert_eq!(status, 200);
        assert_eq!(sha256_hex(&bytes), sha256_hex(&on_disk), "{name}");
        assert_eq!(etag, Some(format!("\"{}\"", sha256_hex(&on_disk))));
    }
    let (_, result) = server.get("/api/v1/jobs/w1/result");
    assert_eq!(
        result["result_url"], "/api/v1/jobs/w1/artifacts/program.json",
        "{result}"
    );
    // What could not be stored is said in the job's stderr tail.
    let (_, logs) = server.get("/api/v1/jobs/w1/logs");
    let stderr = logs["stderr"].to_string();
    for refused in ["../../escape.json", ".hidden", "artifacts/sub"] {
        assert!(stderr.contains(refused), "{refused} not reported: {stderr}");
    }
    assert_eq!(job(&server, "w1")["status"], "completed");
}

#[test]
fn a_result_naming_a_missing_artifact_fails_the_job_and_says_why() {
    let (_dir, db) = temp_db();
    let config = r#"
[executors.liar]
command = ["sh", "-c", "echo '{\"result_path\": \"artifact:nowhere.json\"}'"]
"#;
    let server = Server::start_with(support::server_command_with_config(&db, config));
    server.post_ok("/api/v1/jobs", json!({"id": "l1", "type": "liar"}), 201);
    let failed = wait_status(&server, "l1", "failed", 60);
    assert!(
        failed["error"]
            .as_str()
            .unwrap()
            .contains("names no stored artifact of job `l1`"),
        "{failed}"
    );
}

/// The rows of the artifact tables in the SQLite file, read beside the server.
fn artifact_rows(db: &Path) -> (i64, i64, i64) {
    #[derive(QueryableByName)]
    struct Counts {
        #[diesel(sql_type = diesel::sql_types::BigInt)]
        stored: i64,
        #[diesel(sql_type = diesel::sql_types::BigInt)]
        writing: i64,
        #[diesel(sql_type = diesel::sql_types::BigInt)]
        chunks: i64,
    }
    let mut conn = diesel::SqliteConnection::establish(db.to_str().unwrap()).unwrap();
    let counts: Counts = diesel::sql_query(
        "SELECT (SELECT COUNT(*) FROM artifacts WHERE state = 'stored') AS stored, \
         (SELECT COUNT(*) FROM artifacts WHERE state = 'writing') AS writing, \
         (SELECT COUNT(*) FROM artifact_chunks) AS chunks",
    )
    .get_result(&mut conn)
    .unwrap();
    (counts.stored, counts.writing, counts.chunks)
}

/// A body of `total` pattern bytes that counts what was read and, past `pause_after`, tells
/// `reached` once and then feeds slowly (so the server is killed while it still reads).
struct SlowBody {
    sent: Arc<AtomicU64>,
    total: u64,
    pause_after: u64,
    reached: Option<mpsc::Sender<()>>,
}

impl Read for SlowBody {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let sent = self.sent.load(Ordering::SeqCst);
        if sent >= self.total {
            return Ok(0);
        }
        if sent >= self.pause_after {
            if let Some(reached) = self.reached.take() {
                let _ = reached.send(());
            }
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
        let n = buf.len().min(64 * 1024).min((self.total - sent) as usize);
        for (i, byte) in buf[..n].iter_mut().enumerate() {
            *byte = ((sent + i as u64) % 251) as u8;
        }
        self.sent.fetch_add(n as u64, Ordering::SeqCst);
        Ok(n)
    }
}

#[test]
fn sigkill_during_a_large_upload_leaves_it_absent_and_earlier_ones_whole() {
    let (_dir, db) = temp_db();
    let server = Server::start(&db);
    server.post_ok("/api/v1/jobs", json!({"id": "k1", "type": "remote"}), 201);
    let (status, claimed) = server.post(
        "/api/v1/jobs/claim",
        json!({"types": ["remote"], "worker": "w"}),
    );
    assert_eq!(status, 200, "{claimed}");
    let whole: Vec<u8> = (0..3_500_000_u32).map(|i| (i % 253) as u8).collect();
    let (status, stored) = upload(&server, "k1", "whole.bin", &claimed, &whole);
    assert_eq!(status, 201, "{stored}");

    // 64 MiB announced; the server is killed after 8 MiB went out.
    let sent = Arc::new(AtomicU64::new(0));
    let (reached_tx, reached_rx) = mpsc::channel();
    let body = SlowBody {
        sent: Arc::clone(&sent),
        total: 64 << 20,
        pause_after: 8 << 20,
        reached: Some(reached_tx),
    };
    let url = server.url("/api/v1/jobs/k1/artifacts/big.bin");
    let (attempt, token) = (
        claimed["attempt"].to_string(),
        claimed["lease_token"].as_str().unwrap().to_owned(),
    );
    let uploader = std::thread::spawn(move || {
        support::agent()
            .put(&url)
            .header("skill-fleet-attempt", attempt)
            .header("skill-fleet-lease-token", token)
            .send(ureq::SendBody::from_owned_reader(body))
            .map(|response| response.status().as_u16())
    });
    reached_rx
        .recv_timeout(std::time::Duration::from_secs(60))
        .expect("8 MiB of the upload sent");
    // The server has stored part of it (uploads in flight are never listed).
    wait_for("part of the upload in the database", 30, || {
        let (_, writing, _) = artifact_rows(&db);
        (writing == 1).then_some(())
    });
    assert_eq!(artifact_names(&server, "k1"), ["whole.bin"]);
    server.kill();
    let answered = uploader.join().unwrap();
    assert!(
        answered.is_err(),
        "the upload cannot have been answered: {answered:?}"
    );
    assert!(sent.load(Ordering::SeqCst) < 64 << 20);

    let server = Server::start(&db);
    assert_eq!(
        artifact_names(&server, "k1"),
        ["whole.bin"],
        "big.bin is absent"
    );
    let (status, _, bytes) = download(&server, "/api/v1/jobs/k1/artifacts/whole.bin");
    assert_eq!(status, 200);
    assert_eq!(sha256_hex(&bytes), sha256_hex(&whole), "whole.bin is whole");
    let (status, _) = server.get("/api/v1/jobs/k1/artifacts/big.bin");
    assert_eq!(status, 404);
    // The restart discarded what the cut upload had written.
    let (stored, writing, chunks) = artifact_rows(&db);
    assert_eq!(
        (stored, writing, chunks),
        (1, 0, 4),
        "only whole.bin's 4 chunks are left"
    );
}

#[test]
fn a_worker_whose_lease_was_lost_cannot_upload() {
    let (_dir, db) = temp_db();
    let config = "lease_ttl_seconds = 1.0\nheartbeat_interval_seconds = 0.25\n\
                  rescue_interval_seconds = 0.1\nresumable_types = [\"remote\"]\n[executors]\n";
    let server = Server::start_with(support::server_command_with_config(&db, config));
    server.post_ok("/api/v1/jobs", json!({"id": "r1", "type": "remote"}), 201);
    let (_, claimed) = server.post(
        "/api/v1/jobs/claim",
        json!({"types": ["remote"], "worker": "lost"}),
    );
    assert_eq!(claimed["attempt"], 1, "{claimed}");
    // No heartbeats: the sweep takes the job back.
    wait_for("the job rescued", 30, || {
        (job(&server, "r1")["status"] == "queued").then_some(())
    });
    let (status, body) = upload(&server, "r1", "late.json", &claimed, b"{}");
    assert_eq!(status, 409, "{body}");
    assert_eq!(body["error"]["code"], "lease_lost", "{body}");
    assert!(artifact_names(&server, "r1").is_empty());
}
