//! Security defaults of the real server: the token never reaches logs or child processes,
//! CORS is closed, and no request can make the server touch a path outside its directories.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use crate::support;

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::Stdio;

use serde_json::{Value, json};
use support::{Server, agent, server_command_with_config, temp_db, wait_for};

const TOKEN: &str = "tok-5b1f0c2e9a7d4e68b3c1";

/// Everything a stream says, once it closes.
fn collect(mut stream: impl Read + Send + 'static) -> std::thread::JoinHandle<Vec<u8>> {
    std::thread::spawn(move || {
        let mut all = Vec::new();
        let _ = stream.read_to_end(&mut all);
        all
    })
}

fn authorized(server: &Server, method: &str, path: &str, body: Option<Value>) -> (u16, String) {
    let url = server.url(path);
    let bearer = format!("Bearer {TOKEN}");
    let agent = agent();
    let result = match body {
        Some(body) => agent
            .post(&url)
            .header("authorization", &bearer)
            .send_json(body),
        None if method == "GET" => agent.get(&url).header("authorization", &bearer).call(),
        None => agent
            .post(&url)
            .header("authorization", &bearer)
            .send_empty(),
    };
    let mut response = result.expect("request");
    let status = response.status().as_u16();
    (
        status,
        response.body_mut().read_to_string().unwrap_or_default(),
    )
}

#[test]
fn the_token_never_reaches_logs_or_child_processes() {
    let (_dir, db) = temp_db();
    // The child prints its whole environment, which the server keeps as the job's log.
    let config = "[executors.envdump]\ncommand = [\"sh\", \"-c\", \"env; echo done\"]\n";
    let mut command = server_command_with_config(&db, config);
    command
        .env("SKILL_FLEET_AUTH_TOKEN", TOKEN)
        .env("SKILL_FLEET_LOG", "trace")
        .stderr(Stdio::piped());
    let mut server = Server::start_with(command);
    let stderr = collect(server.child.stderr.take().unwrap());

    // Without the token (or with a wrong one) nothing but /healthz answers.
    let (status, _) = server.get("/api/v1/jobs");
    assert_eq!(status, 401);
    let wrong = agent()
        .get(&server.url("/api/v1/jobs"))
        .header("authorization", "Bearer tok-5b1f0c2e9a7d4e68b3c2")
        .call()
        .unwrap();
    assert_eq!(wrong.status().as_u16(), 401);
    assert_eq!(server.get("/healthz").0, 200);

    let (status, body) = authorized(
        &server,
        "POST",
        "/api/v1/jobs",
        Some(json!({"id": "env", "type": "envdump"})),
    );
    assert_eq!(status, 201, "{body}");
    wait_for("the job to complete", 60, || {
        let (_, body) = authorized(&server, "GET", "/api/v1/jobs/env", None);
        body.contains("\"completed\"").then_some(())
    });
    let (status, logs) = authorized(&server, "GET", "/api/v1/jobs/env/logs", None);
    assert_eq!(status, 200, "{logs}");
    assert!(
        logs.contains("SKILL_FLEET_JOB_ID"),
        "child env not logged: {logs}"
    );
    assert!(!logs.contains(TOKEN), "the child saw the token: {logs}");

    // The stream routes take the token in the query; a finished job's stream ends at once.
    let stream = agent()
        .get(&server.url(&format!("/api/v1/jobs/env/stream?token={TOKEN}")))
        .call()
        .unwrap();
    assert_eq!(stream.status().as_u16(), 200);
    let status = server.terminate();
    assert!(status.success());

    let output = stderr.join().unwrap();
    let text = String::from_utf8_lossy(&output);
    assert!(
        text.contains("TRACE") || text.contains("DEBUG"),
        "trace logging was not on, so this proves nothing: {text}"
    );
    assert!(
        !text.contains(TOKEN),
        "the token is in the server's log output"
    );
}

#[test]
fn cors_is_closed_by_default() {
    let (_dir, db) = temp_db();
    let server = Server::start_with(server_command_with_config(&db, "[executors]\n"));
    let preflight = agent()
        .options(&server.url("/api/v1/jobs"))
        .header("origin", "https://evil.example")
        .header("access-control-request-method", "POST")
        .header("access-control-request-headers", "content-type")
        .call()
        .unwrap();
    assert!(
        preflight.status().as_u16() >= 400,
        "a preflight is not approved"
    );
    let simple = agent()
        .get(&server.url("/api/v1/jobs"))
        .header("origin", "https://evil.example")
        .call()
        .unwrap();
    assert_eq!(simple.status().as_u16(), 200);
    for response in [&preflight, &simple] {
        let cors: Vec<_> = response
            .headers()
            .keys()
            .filter(|name| name.as_str().starts_with("access-control-"))
            .collect();
        assert!(cors.is_empty(), "CORS headers sent: {cors:?}");
    }
}

/// Every file under `root`, relative to it.
fn files_under(root: &Path) -> Vec<PathBuf> {
    let mut found = Vec::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(dir) = stack.pop() {
        for entry in std::fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                stack.push(path.clone());
            }
            found.push(path.strip_prefix(root).unwrap().to_path_buf());
        }
    }
    found.sort();
    found
}

#[test]
fn ids_that_look_like_paths_never_reach_the_file_system() {
    let (dir, db) = temp_db();
    // The server's directory sits inside `outer`, so an escape would land in `outer`.
    let outer = dir.path().to_path_buf();
    let db = {
        let inner = outer.join("server");
        std::fs::create_dir(&inner).unwrap();
        drop(db);
        inner.join("skill-fleet.db")
    };
    let config = "[executors.noop]\ncommand = [\"sh\", \"-c\", \"echo ok\"]\n";
    let server = Server::start_with(server_command_with_config(&db, config));
    let before = files_under(&outer);

    let hostile = [
        "..",
        "%2e%2e",
        "..%2F..%2Fescaped",
        "%2E%2E%2Fescaped",
        "a%2Fb",
        "a%00b",
        "%2Fetc%2Fpasswd",
        "..%5C..%5Cescaped",
        "~root",
        "escaped%20x",
    ];
    for id in hostile {
        for route in ["", "/logs", "/result", "/progress", "/stream"] {
            let path = format!("/api/v1/jobs/{id}{route}");
            let (status, body) = server.get(&path);
            assert!(
                status == 400 || status == 404,
                "GET {path}: {status} {body}"
            );
        }
        for route in ["/complete", "/fail", "/cancel", "/resume", "/events"] {
            let path = format!("/api/v1/jobs/{id}{route}");
            let (status, body) = server.post(&path, json!({"error": "x", "progress": 0.5}));
            assert!(
                status == 400 || status == 404,
                "POST {path}: {status} {body}"
            );
        }
    }
    for id in [
        "../escaped",
        "..",
        "a/b",
        "/etc/passwd",
        "a\\b",
        "a\0b",
        ".",
    ] {
        let (status, body) = server.post("/api/v1/jobs", json!({"id": id, "type": "noop"}));
        assert_eq!(status, 422, "create with id {id:?}: {body}");
    }
    // A real job still runs and writes where it should.
    let (status, _) = server.post("/api/v1/jobs", json!({"id": "fine", "type": "noop"}));
    assert_eq!(status, 201);
    wait_for("the job to complete", 60, || {
        let (_, job) = server.get("/api/v1/jobs/fine");
        (job["status"] == "completed").then_some(())
    });
    drop(server);

    let after = files_under(&outer);
    let new: Vec<_> = after.iter().filter(|path| !before.contains(path)).collect();
    assert!(
        !new.is_empty(),
        "the real job wrote nothing, so this proves nothing"
    );
    for path in new {
        assert!(
            path.starts_with("server"),
            "a file appeared outside the server's directory: {}",
            path.display()
        );
        let text = path.to_string_lossy();
        assert!(
            !text.contains("escaped") && !text.contains(".."),
            "a hostile id reached the file system: {text}"
        );
    }
    // No process was started for a hostile id either: only `fine` has a work directory.
    let jobs = db.parent().unwrap().join("skill-fleet-data").join("jobs");
    if jobs.exists() {
        let names: Vec<_> = std::fs::read_dir(&jobs)
            .unwrap()
            .map(|entry| entry.unwrap().file_name().into_string().unwrap())
            .collect();
        assert_eq!(names, ["fine"], "work directories: {names:?}");
    }
}
