//! The tokens file with the real binary: tokens rotate without a restart (the file changes,
//! or SIGHUP), a file that breaks on reload keeps the tokens in use, and a secret never
//! appears in the server's log, in an error body or in `/metrics`.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use crate::support;

use std::path::{Path, PathBuf};
use std::process::Stdio;

use serde_json::{Value, json};
use sha2::{Digest, Sha256};
use skill_fleet_testkit::TestServer;
use support::{Server, agent, server_command, temp_db, wait_for};

const SECRET_A: &str = "rotate-a-9d1e4f7a2b6c";
const SECRET_B: &str = "rotate-b-3c8a0e5d1f94";
const ADMIN: &str = "admin-7e2b9f41d0c3a8";

fn hex_sha256(secret: &str) -> String {
    Sha256::digest(secret.as_bytes())
        .iter()
        .map(|byte| format!("{byte:02x}"))
        .collect()
}

fn entry(name: &str, role: &str, secret: &str) -> String {
    format!(
        "[[token]]\nname = \"{name}\"\nrole = \"{role}\"\nsecret_sha256 = \"{}\"\n\n",
        hex_sha256(secret)
    )
}

/// Replaces the file's content the way an editor or a deploy does: a new file renamed over it.
fn rewrite(path: &Path, text: &str) {
    let next = path.with_extension("next");
    std::fs::write(&next, text).unwrap();
    std::fs::rename(&next, path).unwrap();
}

fn start(db: &Path, tokens: &Path) -> Server {
    let mut command = server_command(db);
    command
        .arg("--tokens-file")
        .arg(tokens)
        .env("SKILL_FLEET_LOG", "debug")
        .stderr(Stdio::piped());
    Server::start_capturing(command)
}

/// `method path` with `secret` as the bearer token: status and body.
fn call(
    server: &TestServer,
    method: &str,
    path: &str,
    secret: &str,
    body: Option<Value>,
) -> (u16, Value) {
    let url = server.url(path);
    let bearer = format!("Bearer {secret}");
    let mut response = match (method, body) {
        ("GET", _) => agent().get(&url).header("authorization", &bearer).call(),
        (_, Some(body)) => agent()
            .post(&url)
            .header("authorization", &bearer)
            .send_json(body),
        (_, None) => agent()
            .post(&url)
            .header("authorization", &bearer)
            .send_empty(),
    }
    .expect("request");
    let status = response.status().as_u16();
    let text = response.body_mut().read_to_string().unwrap_or_default();
    (
        status,
        serde_json::from_str(&text).unwrap_or(Value::String(text)),
    )
}

fn tokens_file(db: &Path, text: &str) -> PathBuf {
    let path = db.with_file_name("tokens.toml");
    std::fs::write(&path, text).unwrap();
    path
}

/// Waits until A is refused and B works.
fn wait_for_rotation(server: &TestServer, what: &str) {
    wait_for(what, 20, || {
        let a = call(server, "GET", "/api/v1/jobs", SECRET_A, None).0;
        let b = call(server, "GET", "/api/v1/jobs", SECRET_B, None).0;
        (a == 401 && b == 200).then_some(())
    });
}

#[test]
fn a_changed_tokens_file_takes_effect_without_a_restart() {
    let (_dir, db) = temp_db();
    let path = tokens_file(&db, &entry("a", "read", SECRET_A));
    let server = start(&db, &path);
    assert_eq!(call(&server, "GET", "/api/v1/jobs", SECRET_A, None).0, 200);
    assert_eq!(call(&server, "GET", "/api/v1/jobs", SECRET_B, None).0, 401);

    rewrite(&path, &entry("b", "read", SECRET_B));
    wait_for_rotation(&server, "the changed file to replace token a by token b");

    // A file that breaks keeps the tokens in use, and says why in the log.
    rewrite(
        &path,
        "[[token]]\nname = \"c\"\nrole = \"root\"\nsecret_sha256 = \"00\"\n",
    );
    wait_for("the failed reload to be logged", 20, || {
        server
            .stderr()
            .contains("tokens file not reloaded")
            .then_some(())
    });
    assert_eq!(call(&server, "GET", "/api/v1/jobs", SECRET_B, None).0, 200);
    assert!(
        server.stderr().contains("unknown role `root`"),
        "{}",
        server.stderr()
    );
}

#[test]
fn sighup_reloads_the_tokens_file() {
    let (_dir, db) = temp_db();
    let path = tokens_file(&db, &entry("a", "read", SECRET_A));
    let server = start(&db, &path);
    assert_eq!(call(&server, "GET", "/api/v1/jobs", SECRET_A, None).0, 200);
    // Written in place with the same length and the modification time put back, so only
    // the signal can tell the server.
    let before = std::fs::metadata(&path).unwrap().modified().unwrap();
    let text = entry("b", "read", SECRET_B);
    assert_eq!(text.len(), entry("a", "read", SECRET_A).len());
    std::fs::write(&path, &text).unwrap();
    std::fs::File::options()
        .write(true)
        .open(&path)
        .unwrap()
        .set_modified(before)
        .unwrap();
    let pid = nix::unistd::Pid::from_raw(i32::try_from(server.child.id()).unwrap());
    nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGHUP).unwrap();
    wait_for_rotation(&server, "SIGHUP to replace token a by token b");
    assert!(server.stderr().contains("SIGHUP"), "{}", server.stderr());
}

#[test]
fn roles_hold_on_the_real_server_and_secrets_never_show() {
    let (_dir, db) = temp_db();
    let path = tokens_file(
        &db,
        &format!(
            "{}{}",
            entry("ops-alice", "admin", ADMIN),
            entry("ci", "read", SECRET_A)
        ),
    );
    let server = start(&db, &path);
    let (status, created) = call(
        &server,
        "POST",
        "/api/v1/jobs",
        ADMIN,
        Some(json!({"id": "j", "type": "t"})),
    );
    assert_eq!(status, 201, "{created}");
    let (status, refused) = call(&server, "POST", "/api/v1/jobs/j/cancel", SECRET_A, None);
    assert_eq!(status, 403, "{refused}");
    assert_eq!(refused["error"]["code"], "forbidden");
    assert!(
        refused["error"]["message"]
            .as_str()
            .unwrap()
            .contains("`ci` (role read)"),
        "{refused}"
    );
    let (status, unauthorized) = call(&server, "GET", "/api/v1/jobs", SECRET_B, None);
    assert_eq!(status, 401);
    let (status, cancelled) = call(&server, "POST", "/api/v1/jobs/j/cancel", ADMIN, None);
    assert_eq!(status, 200, "{cancelled}");
    let (status, metrics) = call(&server, "GET", "/metrics", SECRET_A, None);
    assert_eq!(status, 200);
    assert_eq!(metrics["auth"]["unauthorized"], 1);
    let names: Vec<&str> = metrics["auth"]["tokens"]
        .as_array()
        .unwrap()
        .iter()
        .map(|token| token["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["ci", "ops-alice"]);
    // The 403 was logged, naming the token: the log is on and says who.
    let log = server.stderr();
    assert!(log.contains("ci"), "{log}");
    for secret in [ADMIN, SECRET_A, SECRET_B] {
        for (what, text) in [
            ("the log", log.clone()),
            ("a 403", refused.to_string()),
            ("a 401", unauthorized.to_string()),
            ("/metrics", metrics.to_string()),
        ] {
            assert!(!text.contains(secret), "{what} shows a secret: {text}");
        }
    }
}

#[test]
fn a_bad_tokens_file_stops_the_server_naming_the_file_and_the_token() {
    let (_dir, db) = temp_db();
    let path = tokens_file(
        &db,
        &format!(
            "{}[[token]]\nname = \"b\"\nrole = \"read\"\nsecret_sha256 = \"xyz\"\n",
            entry("a", "read", SECRET_A)
        ),
    );
    let output = server_command(&db)
        .arg("--tokens-file")
        .arg(&path)
        .stderr(Stdio::piped())
        .output()
        .unwrap();
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains(&path.display().to_string()), "{stderr}");
    assert!(
        stderr.contains("token 2 (`b`): secret_sha256 must be 64 hex digits"),
        "{stderr}"
    );
}
