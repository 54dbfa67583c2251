//! End to end: artifacts against a real server (in-process). A worker uploads two (one
//! spanning several of the store's 1 MiB chunks) under its fence; the client and the CLI
//! list and download them intact; an unchanged file is a 304 (`up to date`); a download cut
//! midway resumes with a range and ends byte-identical; a corrupt partial file fails the
//! SHA-256 check and is reported; an upload under a lost lease is refused and stores
//! nothing; a result naming an artifact shows its URL.

use crate::lease::SHORT_LEASES;
use crate::support;

use std::fs;
use std::io::{self, Write};
use std::path::Path;

use serde_json::Value;
use skill_fleet_client::types::{ClaimedJob, CompleteRequest, ErrorCode, Fence};
use skill_fleet_client::{
    Client, ClientError, Download, Lease, LeaseState, partial_path, sha256_hex,
};
use support::{Dirs, Server, create_and_claim, eventually, run, run_in};

/// The big artifact: three whole 1 MiB chunks and a piece of a fourth.
const BIG: usize = 3 * 1024 * 1024 + 12_345;

/// `length` bytes that are not all alike, so a misplaced range shows.
fn bytes(length: usize, seed: u32) -> Vec<u8> {
    (0..length as u32)
        .map(|i| (i.wrapping_mul(2_654_435_761).wrapping_add(seed) >> 13) as u8)
        .collect()
}

fn sha(data: &[u8]) -> String {
    sha256_hex(data).expect("hash")
}

fn program(version: u32) -> Vec<u8> {
    format!("{{\"program\": \"optimized\", \"version\": {version}}}\n").into_bytes()
}

/// Claims a job of `job_type` as `worker` as soon as one is queued (once the rescue sweep
/// has taken a job back and its back-off has passed).
fn claim_when_queued(client: &Client, job_type: &str, worker: &str) -> ClaimedJob {
    let mut claimed = None;
    eventually("a rescued job to be claimed again", || {
        claimed = client
            .claim(&[job_type.to_owned()], Some(worker))
            .expect("claim");
        claimed.is_some()
    });
    claimed.expect("claimed")
}

/// A running job `id` holding `program.json` (uploaded from a reader, its type guessed by
/// the server) and `data.bin` ([`BIG`] bytes, uploaded from a file); returns the big one's
/// bytes and the claim's fence.
fn job_with_two_artifacts(client: &Client, dir: &Path, id: &str) -> (Vec<u8>, Fence) {
    let claimed = create_and_claim(client, id, "sweep", "uploader");
    let fence = claimed.fence();
    let stored = client
        .upload_artifact(id, "program.json", &mut &program(1)[..], None, Some(&fence))
        .expect("upload program.json");
    assert_eq!(stored.name, "program.json");
    assert_eq!(stored.size, program(1).len() as u64);
    assert_eq!(stored.sha256, sha(&program(1)));
    assert_eq!(stored.content_type, "application/json");
    assert_eq!(stored.attempt, Some(1));

    let data = bytes(BIG, 7);
    let file = dir.join("upload-data.bin");
    fs::write(&file, &data).expect("write the upload");
    let stored = client
        .upload_artifact_file(id, "data.bin", &file, None, Some(&fence))
        .expect("upload data.bin");
    assert_eq!(
        (stored.size, stored.sha256.as_str()),
        (BIG as u64, sha(&data).as_str())
    );
    assert_eq!(stored.content_type, "application/octet-stream");
    (data, fence)
}

#[test]
fn the_client_lists_and_downloads_artifacts_intact() {
    let dirs = Dirs::new();
    let server = Server::start(&dirs.db());
    let client = Client::new(&server.base).expect("client");
    let (data, fence) = job_with_two_artifacts(&client, dirs.path(), "art-1");

    let list = client.list_artifacts("art-1").expect("list").value;
    assert_eq!(list.job_id, "art-1");
    let names: Vec<&str> = list.artifacts.iter().map(|a| a.name.as_str()).collect();
    assert_eq!(names, ["data.bin", "program.json"]);
    assert_eq!(list.total_bytes, (BIG + program(1).len()) as u64);
    assert_eq!(list.artifacts[0].sha256, sha(&data));

    // To a file: whole, hash-checked, with progress from 0 to the size.
    let path = dirs.path().join("data.bin");
    let mut reports = Vec::new();
    let mut progress = |done, total| reports.push((done, total));
    let done = client
        .download_artifact_to("art-1", "data.bin", &path, Some(&mut progress))
        .expect("download");
    match &done {
        Download::Fetched(transfer) => {
            assert_eq!(transfer.size, BIG as u64);
            assert_eq!(transfer.sha256, sha(&data));
            assert_eq!(transfer.resumed_from, 0);
            assert_eq!(
                transfer.content_type.as_deref(),
                Some("application/octet-stream")
            );
        }
        other => panic!("expected a download, got {other:?}"),
    }
    assert!(fs::read(&path).expect("downloaded") == data, "bytes differ");
    assert!(!partial_path(&path).exists());
    assert_eq!(reports.first(), Some(&(0, Some(BIG as u64))));
    assert_eq!(reports.last(), Some(&(BIG as u64, Some(BIG as u64))));
    assert!(reports.windows(2).all(|w| w[0].0 <= w[1].0), "{reports:?}");

    // Again, unchanged: the server says 304 and nothing is downloaded.
    let done = client
        .download_artifact_to("art-1", "data.bin", &path, None)
        .expect("revalidate");
    assert_eq!(done, Download::UpToDate { sha256: sha(&data) });

    // Into a writer.
    let mut out = Vec::new();
    client
        .download_artifact("art-1", "program.json", &mut out, None, None)
        .expect("download into a writer");
    assert_eq!(out, program(1));

    // The same name again replaces it; a copy of the old version is then out of date.
    let old = dirs.path().join("program.json");
    fs::write(&old, program(1)).expect("write");
    let replaced = client
        .upload_artifact(
            "art-1",
            "program.json",
            &mut &program(2)[..],
            None,
            Some(&fence),
        )
        .expect("replace");
    assert_eq!(replaced.sha256, sha(&program(2)));
    let done = client
        .download_artifact_to("art-1", "program.json", &old, None)
        .expect("download the new version");
    assert!(matches!(done, Download::Fetched(_)), "{done:?}");
    assert_eq!(fs::read(&old).expect("read"), program(2));

    // Unknown artifacts and jobs are the server's 404, and write nothing.
    let missing = dirs.path().join("missing.bin");
    let err = client
        .download_artifact_to("art-1", "missing.bin", &missing, None)
        .unwrap_err();
    assert_eq!(err.code(), Some(ErrorCode::NotFound), "{err}");
    assert!(!missing.exists() && !partial_path(&missing).exists());
    let err = client.list_artifacts("no-such-job").unwrap_err();
    assert_eq!(err.code(), Some(ErrorCode::NotFound), "{err}");

    // A result naming an artifact carries its URL.
    client
        .complete(
            "art-1",
            &CompleteRequest {
                result_path: Some("artifact:program.json".into()),
                ..Default::default()
            },
            Some(&fence),
        )
        .expect("complete");
    let result = client.result("art-1").expect("result").value;
    assert_eq!(
        result.result_url.as_deref(),
        Some("/api/v1/jobs/art-1/artifacts/program.json")
    );
}

/// A writer that takes `left` bytes and then fails, like a download cut midway.
struct CutAfter {
    taken: Vec<u8>,
    left: usize,
}

impl Write for CutAfter {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        if self.left == 0 {
            return Err(io::Error::new(io::ErrorKind::StorageFull, "cut here"));
        }
        let n = buf.len().min(self.left);
        self.taken.extend_from_slice(&buf[..n]);
        self.left -= n;
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

#[test]
fn a_cut_download_resumes_and_a_corrupt_one_is_refused() {
    let dirs = Dirs::new();
    let server = Server::start(&dirs.db());
    let client = Client::new(&server.base).expect("client");
    let (data, _) = job_with_two_artifacts(&client, dirs.path(), "art-2");
    let path = dirs.path().join("data.bin");
    let part = partial_path(&path);

    // Cut by the writer after 1.5 MiB; what it took is the partial file.
    let mut cut = CutAfter {
        taken: Vec::new(),
        left: 1536 * 1024,
    };
    let err = client
        .download_artifact("art-2", "data.bin", &mut cut, None, None)
        .unwrap_err();
    assert!(
        matches!(
            &err,
            ClientError::ArtifactIo {
                action: "write",
                ..
            }
        ),
        "{err}"
    );
    assert_eq!(cut.taken.len(), 1536 * 1024);
    fs::write(&part, &cut.taken).expect("write the partial file");
    let mut first = None;
    let mut progress = |done, _| {
        first.get_or_insert(done);
    };
    let done = client
        .download_artifact_to("art-2", "data.bin", &path, Some(&mut progress))
        .expect("resume");
    match &done {
        Download::Fetched(transfer) => assert_eq!(transfer.resumed_from, 1536 * 1024),
        other => panic!("expected a resumed download, got {other:?}"),
    }
    assert_eq!(first, Some(1536 * 1024));
    assert!(fs::read(&path).expect("read") == data, "bytes differ");
    assert!(!part.exists());

    // A partial file with a wrong byte: the rest comes, the whole fails the check, the
    // partial file goes and the target is not touched.
    fs::remove_file(&path).expect("remove");
    let mut wrong = data[..2 * 1024 * 1024 + 1].to_vec();
    wrong[1_000_000] ^= 0x55;
    fs::write(&part, &wrong).expect("write the partial file");
    let err = client
        .download_artifact_to("art-2", "data.bin", &path, None)
        .unwrap_err();
    match &err {
        ClientError::ArtifactHashMismatch {
            job_id,
            name,
            expected,
            actual,
        } => {
            assert_eq!((job_id.as_str(), name.as_str()), ("art-2", "data.bin"));
            assert_eq!(expected, &sha(&data));
            assert_ne!(actual, expected);
        }
        other => panic!("expected a hash mismatch, got {other}"),
    }
    assert!(!part.exists() && !path.exists());
    // The next try starts over and succeeds.
    client
        .download_artifact_to("art-2", "data.bin", &path, None)
        .expect("download again");
    assert!(fs::read(&path).expect("read") == data, "bytes differ");
}

#[test]
fn an_upload_under_a_lost_lease_is_refused_and_stores_nothing() {
    let dirs = Dirs::new();
    let server = Server::start_with(&dirs.db(), 0, &SHORT_LEASES);
    let client = Client::new(&server.base).expect("client");
    // `evaluation` is resumable: a rescue puts it back in the queue.
    let stale = create_and_claim(&client, "lost-1", "evaluation", "worker-1");
    let stale_fence = stale.fence();

    // A wrong token on the attempt that holds the job.
    let wrong = Fence {
        attempt: stale_fence.attempt,
        lease_token: "not-the-token".into(),
    };
    let err = client
        .upload_artifact("lost-1", "a.txt", &mut &b"x"[..], None, Some(&wrong))
        .unwrap_err();
    assert_eq!(err.code(), Some(ErrorCode::LeaseLost), "{err}");

    // No heartbeats: the rescue sweep takes the job back and another worker claims it.
    let fresh = claim_when_queued(&client, "evaluation", "worker-2");
    assert_eq!(fresh.job.id, "lost-1");
    assert_eq!(fresh.job.attempt, stale_fence.attempt + 1);
    // Heartbeats from now on, so the new owner keeps the job however slow this machine is.
    let owner = Lease::new(client.clone(), fresh).expect("lease");

    // The first attempt's fence no longer owns the job: refused, through the client…
    let err = client
        .upload_artifact(
            "lost-1",
            "a.txt",
            &mut &b"late"[..],
            None,
            Some(&stale_fence),
        )
        .unwrap_err();
    assert_eq!(err.code(), Some(ErrorCode::LeaseLost), "{err}");
    // …and through a lease, which then counts as lost (its own heartbeat may say so
    // first, and then nothing is sent at all).
    let lease = Lease::new(client.clone(), stale).expect("lease");
    let err = lease
        .upload_artifact("b.txt", &mut &b"late"[..], None)
        .unwrap_err();
    assert!(
        err.code() == Some(ErrorCode::LeaseLost) || matches!(err, ClientError::LeaseNotHeld { .. }),
        "{err}"
    );
    assert!(
        matches!(lease.state(), LeaseState::Lost { .. }),
        "{:?}",
        lease.state()
    );
    let err = lease
        .upload_artifact("b.txt", &mut &b"late"[..], None)
        .unwrap_err();
    assert!(matches!(err, ClientError::LeaseNotHeld { .. }), "{err}");

    // Nothing was stored; the owner's upload is.
    let list = client.list_artifacts("lost-1").expect("list").value;
    assert!(list.artifacts.is_empty(), "{list:?}");
    let stored = owner
        .upload_artifact("a.txt", &mut &b"mine"[..], Some("text/plain"))
        .expect("the owner uploads");
    assert_eq!(stored.attempt, Some(2));
    let list = client.list_artifacts("lost-1").expect("list").value;
    let names: Vec<&str> = list.artifacts.iter().map(|a| a.name.as_str()).collect();
    assert_eq!(names, ["a.txt"]);
}

#[test]
fn the_cli_lists_downloads_resumes_and_reports() {
    let dirs = Dirs::new();
    let server = Server::start(&dirs.db());
    let client = Client::new(&server.base).expect("client");
    let (data, fence) = job_with_two_artifacts(&client, dirs.path(), "art-3");
    let cache = dirs.cache();
    let work = dirs.path().join("work");
    fs::create_dir_all(&work).expect("mkdir");
    let cli = |args: &[&str]| run_in(&server.base, &cache, &work, args);

    // The table, and the JSON listing.
    let out = cli(&["jobs", "artifacts", "art-3"]);
    out.assert_code(0);
    let lines: Vec<&str> = out.stdout.lines().collect();
    assert_eq!(lines.len(), 4, "{}", out.stdout);
    for column in ["NAME", "SIZE", "SHA256", "TYPE", "CREATED"] {
        assert!(lines[0].contains(column), "{}", out.stdout);
    }
    assert!(lines[1].starts_with("data.bin "), "{}", out.stdout);
    assert!(lines[1].contains(" 3.0 MiB "), "{}", out.stdout);
    assert!(lines[1].contains(&sha(&data)[..12]), "{}", out.stdout);
    assert!(!lines[1].contains(&sha(&data)[..13]), "{}", out.stdout);
    assert!(
        lines[1].contains("application/octet-stream"),
        "{}",
        out.stdout
    );
    assert!(lines[2].starts_with("program.json ") && lines[2].contains("application/json"));
    assert_eq!(lines[3], "2 artifacts, 3.0 MiB");
    let out = cli(&["jobs", "artifacts", "art-3", "--json", "--no-cache"]);
    out.assert_code(0);
    let json = out.json();
    assert_eq!(json["job_id"], "art-3");
    assert_eq!(json["artifacts"][0]["sha256"], Value::from(sha(&data)));

    // Download to ./NAME, then again: up to date.
    let out = cli(&["jobs", "artifacts", "art-3", "data.bin"]);
    out.assert_code(0);
    assert!(
        out.stdout.starts_with("saved ./data.bin (3.0 MiB, sha256 "),
        "{}",
        out.stdout
    );
    let path = work.join("data.bin");
    assert!(fs::read(&path).expect("read") == data, "bytes differ");
    let out = cli(&["jobs", "artifacts", "art-3", "data.bin"]);
    out.assert_code(0);
    assert_eq!(
        out.stdout,
        format!("./data.bin is up to date (sha256 {})\n", &sha(&data)[..12])
    );

    // A cut download: the partial file is continued.
    fs::remove_file(&path).expect("remove");
    let part = partial_path(&path);
    fs::write(&part, &data[..1024 * 1024 + 17]).expect("write the partial file");
    let out = cli(&["jobs", "artifacts", "art-3", "data.bin", "--json"]);
    out.assert_code(0);
    assert_eq!(out.json()["status"], "downloaded");
    assert_eq!(out.json()["resumed_from"], 1024 * 1024 + 17);
    assert!(fs::read(&path).expect("read") == data, "bytes differ");
    assert!(!part.exists());

    // A corrupt partial file: reported, not kept, the target untouched.
    fs::remove_file(&path).expect("remove");
    let mut wrong = data[..1024 * 1024].to_vec();
    wrong[10] ^= 1;
    fs::write(&part, &wrong).expect("write the partial file");
    let out = cli(&["jobs", "artifacts", "art-3", "data.bin"]);
    out.assert_code(1);
    assert!(
        out.stderr.starts_with(&format!(
            "error: artifact `data.bin` of job `art-3` failed its sha256 check: expected {}, got ",
            sha(&data)
        )),
        "{}",
        out.stderr
    );
    assert!(
        out.stderr
            .contains("./data.bin.part was not kept; run the same command again"),
        "{}",
        out.stderr
    );
    assert_eq!(out.stderr.lines().count(), 1, "{}", out.stderr);
    assert!(!part.exists() && !path.exists());

    // -o into a directory, -o a file, -o - to stdout.
    let elsewhere = dirs.path().join("elsewhere");
    fs::create_dir_all(&elsewhere).expect("mkdir");
    let target = elsewhere.display().to_string();
    run(
        &server.base,
        &cache,
        &["jobs", "artifacts", "art-3", "program.json", "-o", &target],
    )
    .assert_code(0);
    assert_eq!(
        fs::read(elsewhere.join("program.json")).expect("read"),
        program(1)
    );
    let file = elsewhere.join("p.json").display().to_string();
    run(
        &server.base,
        &cache,
        &["jobs", "artifacts", "art-3", "program.json", "-o", &file],
    )
    .assert_code(0);
    assert_eq!(
        fs::read(elsewhere.join("p.json")).expect("read"),
        program(1)
    );
    let out = cli(&["jobs", "artifacts", "art-3", "program.json", "-o", "-"]);
    out.assert_code(0);
    assert_eq!(out.stdout.as_bytes(), program(1));
    // `… -o - | head -c 10`: 3 MiB into a pipe closed at once is not an error.
    let mut child = support::cli(&server.base, &cache)
        .args(["jobs", "artifacts", "art-3", "data.bin", "-o", "-"])
        .spawn()
        .expect("run skill-fleet");
    drop(child.stdout.take());
    let mut stderr = String::new();
    io::Read::read_to_string(child.stderr.as_mut().expect("stderr"), &mut stderr)
        .expect("read stderr");
    let status = support::wait(&mut child, support::DEADLINE);
    assert_eq!(status.code(), Some(0), "{stderr}");
    assert!(stderr.is_empty(), "{stderr}");

    // Refusals: an unknown artifact (1), a name that is a path (2), no server (3).
    let out = cli(&["jobs", "artifacts", "art-3", "nope.txt"]);
    out.assert_code(1);
    assert!(out.stderr.starts_with("error: "), "{}", out.stderr);
    assert!(!work.join("nope.txt").exists() && !work.join("nope.txt.part").exists());
    cli(&["jobs", "artifacts", "art-3", "../escape"]).assert_code(2);
    let dead = format!("http://127.0.0.1:{}", support::dead_port());
    run_in(
        &dead,
        &cache,
        &work,
        &["jobs", "artifacts", "art-3", "data.bin"],
    )
    .assert_code(3);

    // jobs results shows where the artifact a result names is, and how to get it.
    client
        .complete(
            "art-3",
            &CompleteRequest {
                result_path: Some("artifact:program.json".into()),
                ..Default::default()
            },
            Some(&fence),
        )
        .expect("complete");
    let out = cli(&["jobs", "results", "art-3", "--no-cache"]);
    out.assert_code(0);
    assert!(
        out.stdout.contains(&format!(
            "result_url:  {}/api/v1/jobs/art-3/artifacts/program.json\n",
            server.base
        )),
        "{}",
        out.stdout
    );
    assert!(
        out.stdout
            .contains("download:    skill-fleet jobs artifacts art-3 program.json\n"),
        "{}",
        out.stdout
    );
    let out = cli(&["jobs", "results", "art-3", "--json", "--no-cache"]);
    out.assert_code(0);
    assert_eq!(
        out.json()["result_url"],
        "/api/v1/jobs/art-3/artifacts/program.json"
    );
}

#[test]
fn an_upload_past_the_limit_is_refused_with_413_and_stores_nothing() {
    let dirs = Dirs::new();
    let server = Server::start_with(&dirs.db(), 0, &["--max-artifact-bytes", "100000"]);
    let client = Client::new(&server.base).expect("client");
    let fence = create_and_claim(&client, "big-1", "sweep", "uploader").fence();
    let data = bytes(BIG, 3);
    let file = dirs.path().join("big.bin");
    fs::write(&file, &data).expect("write");

    // From a file, its Content-Length says it all: refused before the body is sent.
    let err = client
        .upload_artifact_file("big-1", "big.bin", &file, None, Some(&fence))
        .unwrap_err();
    assert_eq!(err.code(), Some(ErrorCode::PayloadTooLarge), "{err:?}");
    assert_eq!(err.status(), Some(413), "{err}");
    assert!(err.to_string().contains("100000"), "{err}");
    // Chunked from a reader, the server finds out part way: it reads (and drops) the rest
    // of the body so that the client hears the 413, never a reset connection.
    for _ in 0..5 {
        let err = client
            .upload_artifact("big-1", "big.bin", &mut &data[..], None, Some(&fence))
            .unwrap_err();
        assert!(
            matches!(err, ClientError::Api { status: 413, .. }),
            "expected the 413, got {err:?}"
        );
        assert_eq!(err.code(), Some(ErrorCode::PayloadTooLarge), "{err:?}");
    }

    let list = client.list_artifacts("big-1").expect("list").value;
    assert!(list.artifacts.is_empty(), "{list:?}");
    // The connection is still good for the next call.
    client
        .upload_artifact("big-1", "small.txt", &mut &b"fits"[..], None, Some(&fence))
        .expect("a small upload");
}
