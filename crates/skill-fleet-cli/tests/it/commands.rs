//! End to end: every `skill-fleet` command against a real server (in-process), its output and
//! exit code; the local cache (304 → `(cached)`, corrupt entries ignored); unreachable
//! servers and usage errors.

use crate::support;

use serde_json::{Value, json};
use skill_fleet_client::Cache;
use support::{Dirs, Server, dead_port, run};

#[test]
fn optimize_list_show_results_cancel_resume_logs() {
    let dirs = Dirs::new();
    let server = Server::start(&dirs.db());
    let cache = dirs.cache();
    let cli = |args: &[&str]| run(&server.base, &cache, args);

    // optimize: prints the id; options become metadata; the source is `cli`.
    let out = cli(&[
        "optimize",
        "--id",
        "opt-1",
        "--optimizer",
        "miprov2",
        "--model",
        "gpt-4o-mini",
        "--auto",
        "light",
        "--budget",
        "2",
        "--quality-target",
        "0.9",
        "--time-limit",
        "1h30m",
        "--metadata",
        "seed=42",
        "--metadata",
        "note=first run",
    ]);
    out.assert_code(0);
    assert_eq!(out.stdout, "opt-1\n");
    let (status, job) = server.get("/api/v1/jobs/opt-1");
    assert_eq!(status, 200, "{job}");
    assert_eq!(job["type"], "optimization");
    assert_eq!(job["source"], "cli");
    assert_eq!(
        job["metadata"],
        json!({"optimizer": "miprov2", "model": "gpt-4o-mini", "auto": "light",
               "budget_usd": 2.0, "quality_target": 0.9, "time_limit_seconds": 5400,
               "seed": 42, "note": "first run"})
    );
    let out = cli(&["optimize", "--id", "opt-2", "--json"]);
    out.assert_code(0);
    assert_eq!(out.json()["id"], "opt-2");
    assert_eq!(out.json()["status"], "queued");

    // jobs list: a table, and JSON.
    let out = cli(&["jobs", "list"]);
    out.assert_code(0);
    let lines: Vec<&str> = out.stdout.lines().collect();
    assert!(lines[0].starts_with("ID"), "{}", out.stdout);
    for column in [
        "TYPE",
        "STATUS",
        "OWNER",
        "PROGRESS",
        "STEP",
        "COST",
        "ETA",
        "RESULT/ERROR",
    ] {
        assert!(lines[0].contains(column), "{}", out.stdout);
    }
    assert_eq!(lines.len(), 3, "{}", out.stdout);
    assert!(
        lines
            .iter()
            .any(|l| l.starts_with("opt-1 ") && l.contains("queued"))
    );
    // Spent / budget for jobs with a budget.
    assert!(
        lines
            .iter()
            .any(|l| l.starts_with("opt-1 ") && l.contains("$0.00/$2.00")),
        "{}",
        out.stdout
    );
    let out = cli(&["jobs", "list", "--json"]);
    out.assert_code(0);
    assert_eq!(out.json()["jobs"].as_array().map(Vec::len), Some(2));
    let out = cli(&[
        "jobs",
        "list",
        "--status",
        "queued",
        "--type",
        "optimization",
        "--limit",
        "1",
    ]);
    out.assert_code(0);
    assert_eq!(out.stdout.lines().count(), 3, "{}", out.stdout);
    assert!(
        out.stdout.contains("more: skill-fleet jobs list --cursor "),
        "{}",
        out.stdout
    );
    let out = cli(&["jobs", "list", "--status", "completed"]);
    out.assert_code(0);
    assert_eq!(out.stdout, "no jobs\n");

    // jobs show: fields, and JSON.
    let out = cli(&["jobs", "show", "opt-1", "--no-cache"]);
    out.assert_code(0);
    assert!(out.stdout.contains("status:      queued"), "{}", out.stdout);
    assert!(
        out.stdout.contains("\"model\":\"gpt-4o-mini\""),
        "{}",
        out.stdout
    );
    assert!(!out.stderr.contains("(cached)"));
    let out = cli(&["jobs", "show", "opt-1", "--json", "--no-cache"]);
    out.assert_code(0);
    assert_eq!(out.json()["metadata"]["seed"], 42);

    // jobs results: 404 until there is a result.
    let out = cli(&["jobs", "results", "opt-1"]);
    out.assert_code(1);
    assert!(
        out.stderr
            .starts_with("error: job `opt-1` has no result yet"),
        "{}",
        out.stderr
    );
    assert_eq!(out.stderr.lines().count(), 1, "{}", out.stderr);

    server.post_ok(
        "/api/v1/jobs/opt-1/events",
        json!({"step": "proposing_instructions", "progress": 0.35, "cost_usd": 0.85}),
        202,
    );
    let out = cli(&["jobs", "list", "--status", "running"]);
    out.assert_code(0);
    assert!(
        out.stdout.contains("35%") && out.stdout.contains("proposing_instructions"),
        "{}",
        out.stdout
    );
    assert!(out.stdout.contains("$0.85"), "{}", out.stdout);
    // A job started by a token-less event is owned by `anonymous`.
    assert!(
        out.stdout
            .lines()
            .any(|l| l.starts_with("opt-1 ") && l.contains(" running  anonymous ")),
        "{}",
        out.stdout
    );
    server.post_ok(
        "/api/v1/jobs/opt-1/complete",
        json!({"result": {"accuracy": 0.84}, "result_path": "/tmp/opt-1/program.json"}),
        200,
    );
    let out = cli(&["jobs", "results", "opt-1"]);
    out.assert_code(0);
    assert!(out.stdout.contains("\"accuracy\": 0.84"), "{}", out.stdout);
    assert!(
        out.stdout.contains("result_path: /tmp/opt-1/program.json"),
        "{}",
        out.stdout
    );
    let out = cli(&["jobs", "results", "opt-1", "--json"]);
    out.assert_code(0);
    assert_eq!(out.json()["result"], json!({"accuracy": 0.84}));
    assert_eq!(out.json()["job_id"], "opt-1");

    // jobs cancel / resume.
    let out = cli(&["jobs", "cancel", "opt-2", "--reason", "not needed"]);
    out.assert_code(0);
    assert_eq!(out.stdout, "cancelled job opt-2 (status cancelled)\n");
    assert_eq!(server.get("/api/v1/jobs/opt-2").1["error"], "not needed");
    let out = cli(&["jobs", "cancel", "opt-2"]);
    out.assert_code(1);
    assert!(
        out.stderr.starts_with("error: ") && out.stderr.contains("HTTP 409"),
        "{}",
        out.stderr
    );
    let out = cli(&["jobs", "resume", "opt-2", "--json"]);
    out.assert_code(0);
    assert_eq!(out.json()["status"], "queued");
    let out = cli(&["jobs", "cancel", "opt-2", "--json"]);
    out.assert_code(0);
    assert_eq!(out.json()["status"], "cancelled");
    let out = cli(&["jobs", "resume", "opt-2"]);
    out.assert_code(0);
    assert!(
        out.stdout.starts_with("resumed job opt-2 (status queued"),
        "{}",
        out.stdout
    );

    // jobs logs: the route comes with the executor; until then a clean API error.
    let out = cli(&["jobs", "logs", "opt-1"]);
    if out.code == 0 {
        assert!(!out.stdout.is_empty());
        let out = cli(&["jobs", "logs", "opt-1", "--json"]);
        out.assert_code(0);
        assert_eq!(out.json()["job_id"], "opt-1");
    } else {
        out.assert_code(1);
        assert!(
            out.stderr.starts_with("error: ") && out.stderr.contains("404"),
            "{}",
            out.stderr
        );
    }

    // Unknown jobs.
    let out = cli(&["jobs", "show", "nope"]);
    out.assert_code(1);
    assert_eq!(
        out.stderr.trim(),
        format!(
            "error: job `nope` not found (HTTP 404 from {}/api/v1/jobs/nope)",
            server.base
        )
    );
}

#[test]
fn show_and_list_name_a_running_jobs_owner() {
    let dirs = Dirs::new();
    let server = Server::start(&dirs.db());
    let cache = dirs.cache();
    let cli = |args: &[&str]| run(&server.base, &cache, args);
    for id in ["claimed", "waiting"] {
        server.post_ok("/api/v1/jobs", json!({"id": id, "type": "sweep"}), 201);
    }
    let claimed = server.post_ok(
        "/api/v1/jobs/claim",
        json!({"types": ["sweep"], "worker": "gpu-box-3"}),
        200,
    );
    assert_eq!(claimed["id"], "claimed");

    // show: owner, last renewal and expiry in words (the default lease is 90 s).
    let out = cli(&["jobs", "show", "claimed", "--no-cache"]);
    out.assert_code(0);
    let lease = out
        .stdout
        .lines()
        .find_map(|line| line.strip_prefix("lease:").map(str::trim_start))
        .unwrap_or_else(|| panic!("no lease line:\n{}", out.stdout));
    let (renewed, expires) = lease
        .strip_prefix("owner gpu-box-3, renewed ")
        .and_then(|rest| rest.split_once(" ago, expires in "))
        .unwrap_or_else(|| panic!("{lease}"));
    let number = |text: &str| -> u64 {
        text.strip_suffix(" s")
            .and_then(|n| n.parse().ok())
            .unwrap_or_else(|| panic!("`{text}` in {lease}"))
    };
    assert!(number(renewed) <= 60, "{lease}");
    assert!((30..=90).contains(&number(expires)), "{lease}");
    // The lines come in reading order: the lease right after the status.
    let keys: Vec<&str> = out
        .stdout
        .lines()
        .filter_map(|l| l.split_whitespace().next())
        .collect();
    assert_eq!(
        keys[..4],
        ["id:", "type:", "status:", "lease:"],
        "{}",
        out.stdout
    );
    // A job that does not run has no lease line.
    let out = cli(&["jobs", "show", "waiting"]);
    out.assert_code(0);
    assert!(!out.stdout.contains("lease:"), "{}", out.stdout);

    // list: the owner column names the worker of the running job only.
    let out = cli(&["jobs", "list", "--no-cache"]);
    out.assert_code(0);
    let lines: Vec<&str> = out.stdout.lines().collect();
    let owner_at = lines[0].find("OWNER").expect("an OWNER column");
    let owner_of = |id: &str| {
        let line = lines
            .iter()
            .find(|l| l.starts_with(&format!("{id} ")))
            .unwrap_or_else(|| panic!("no row for {id}:\n{}", out.stdout));
        line[owner_at..].split_whitespace().next().unwrap_or("")
    };
    assert_eq!(owner_of("claimed"), "gpu-box-3", "{}", out.stdout);
    assert_eq!(owner_of("waiting"), "-", "{}", out.stdout);

    // --json stays the server's JSON, lease included.
    let out = cli(&["jobs", "show", "claimed", "--json", "--no-cache"]);
    out.assert_code(0);
    let (_, served) = server.get("/api/v1/jobs/claimed");
    assert_eq!(out.json()["lease"]["owner"], "gpu-box-3");
    assert_eq!(out.json()["lease"], served["lease"]);
    assert_eq!(
        out.json()
            .as_object()
            .map(|o| o.keys().cloned().collect::<Vec<_>>()),
        served
            .as_object()
            .map(|o| o.keys().cloned().collect::<Vec<_>>())
    );
}

#[test]
fn a_second_show_is_served_from_the_cache_after_a_304() {
    let dirs = Dirs::new();
    let server = Server::start(&dirs.db());
    let cache_dir = dirs.cache();
    server.post_ok(
        "/api/v1/jobs",
        json!({"id": "c1", "type": "evaluation"}),
        201,
    );
    let cli = |args: &[&str]| run(&server.base, &cache_dir, args);

    let first = cli(&["jobs", "show", "c1", "--json"]);
    first.assert_code(0);
    assert!(!first.stderr.contains("(cached)"), "{}", first.stderr);
    // The entry holds the body and the server's ETag.
    let url = server.url("/api/v1/jobs/c1");
    let cache = Cache::new(&cache_dir);
    let entry = cache.get(&url).expect("a cache entry after the first show");
    assert!(entry.etag.is_some(), "the server sent no ETag: {entry:?}");
    assert_eq!(
        serde_json::from_str::<Value>(&entry.body).unwrap(),
        first.json()
    );

    let second = cli(&["jobs", "show", "c1", "--json"]);
    second.assert_code(0);
    assert_eq!(second.stderr.trim(), "(cached)");
    assert_eq!(second.json(), first.json());
    let human = cli(&["jobs", "show", "c1"]);
    human.assert_code(0);
    assert_eq!(human.stderr.trim(), "(cached)");
    assert!(human.stdout.contains("id:          c1"), "{}", human.stdout);

    // A change on the server is a 200 again and replaces the entry.
    server.post_ok(
        "/api/v1/jobs/c1/events",
        json!({"step": "scoring", "progress": 0.5}),
        202,
    );
    let third = cli(&["jobs", "show", "c1", "--json"]);
    third.assert_code(0);
    assert!(!third.stderr.contains("(cached)"), "{}", third.stderr);
    assert_eq!(third.json()["status"], "running");
    assert_eq!(
        serde_json::from_str::<Value>(&cache.get(&url).unwrap().body).unwrap()["status"],
        "running"
    );

    // --no-cache neither reads nor writes.
    let out = cli(&["jobs", "show", "c1", "--no-cache"]);
    out.assert_code(0);
    assert!(!out.stderr.contains("(cached)"));

    // cache stats / prune / clear.
    let out = cli(&["cache", "stats", "--json"]);
    out.assert_code(0);
    assert_eq!(out.json()["entries"], 1);
    assert!(out.json()["bytes"].as_u64().unwrap() > 0);
    let out = cli(&["cache", "prune", "--older-than", "1h"]);
    out.assert_code(0);
    assert!(
        out.stdout.starts_with("removed 0 entries"),
        "{}",
        out.stdout
    );
    let out = cli(&["cache", "stats"]);
    out.assert_code(0);
    assert!(out.stdout.contains("entries:   1"), "{}", out.stdout);
    let out = cli(&["cache", "clear"]);
    out.assert_code(0);
    assert!(
        out.stdout.starts_with("removed 1 entries"),
        "{}",
        out.stdout
    );
    assert_eq!(cache.get(&url), None);
    let out = cli(&["cache", "prune", "--older-than", "0s", "--json"]);
    out.assert_code(0);
    assert_eq!(out.json()["removed_entries"], 0);
}

#[test]
fn a_corrupt_cache_file_is_ignored_and_replaced() {
    let dirs = Dirs::new();
    let server = Server::start(&dirs.db());
    let cache_dir = dirs.cache();
    server.post_ok(
        "/api/v1/jobs",
        json!({"id": "k1", "type": "evaluation"}),
        201,
    );
    let cli = |args: &[&str]| run(&server.base, &cache_dir, args);
    let url = server.url("/api/v1/jobs/k1");
    let cache = Cache::new(&cache_dir);

    cli(&["jobs", "show", "k1"]).assert_code(0);
    let path = cache.path_for(&url);
    assert!(path.exists(), "no cache file at {}", path.display());
    for junk in [&b"{\"truncated"[..], b"\x00\xff\xfe", b"[]", b""] {
        std::fs::write(&path, junk).unwrap();
        let out = cli(&["jobs", "show", "k1", "--json"]);
        out.assert_code(0);
        assert!(!out.stderr.contains("(cached)"), "{}", out.stderr);
        assert_eq!(out.json()["id"], "k1");
        assert!(
            cache.get(&url).is_some(),
            "the corrupt entry was not replaced"
        );
    }
    // A valid entry whose body no longer decodes is dropped and fetched again.
    let mut entry = cache.get(&url).unwrap();
    entry.body = "{\"not\": \"a job\"}".to_owned();
    cache.put(&entry).unwrap();
    let out = cli(&["jobs", "show", "k1", "--json"]);
    out.assert_code(0);
    assert_eq!(out.json()["id"], "k1");
}

#[test]
fn an_unreachable_server_is_one_line_and_exit_code_3() {
    let dirs = Dirs::new();
    let base = format!("http://127.0.0.1:{}", dead_port());
    let expected = format!(
        "error: cannot reach the skill-fleet server at {base} (connection refused). Start it with: skill-fleet-server\n"
    );
    for args in [
        &["jobs", "list"][..],
        &["jobs", "show", "x"],
        &["jobs", "watch", "x"],
        &["optimize", "--watch"],
        &["--json", "jobs", "results", "x"],
    ] {
        let out = run(&base, &dirs.cache(), args);
        out.assert_code(3);
        assert_eq!(out.stderr, expected, "{args:?}");
        assert_eq!(out.stdout, "", "{args:?}");
    }
    // The default server URL is used when none is given.
    let out = run("", &dirs.cache(), &["--help"]);
    out.assert_code(0);
    assert!(
        out.stdout.contains("http://127.0.0.1:8000"),
        "{}",
        out.stdout
    );
}

#[test]
fn usage_errors_exit_with_code_2() {
    let dirs = Dirs::new();
    let base = format!("http://127.0.0.1:{}", dead_port());
    for args in [
        &[][..],
        &["jobs"],
        &["jobs", "frobnicate"],
        &["jobs", "show"],
        &["jobs", "list", "--status", "done"],
        &["jobs", "list", "--limit", "0"],
        &["optimize", "--optimizer", "adam"],
        &["optimize", "--time-limit", "soon"],
        &["optimize", "--metadata", "novalue"],
        &["cache", "prune", "--older-than", "-1s"],
        &["jobs", "show", "../etc/passwd"],
        &["jobs", "watch", "a/b"],
        &["--server", "localhost:8000", "jobs", "list"],
    ] {
        let out = run(&base, &dirs.cache(), args);
        out.assert_code(2);
        assert!(!out.stderr.is_empty(), "{args:?}");
        assert!(!out.stderr.contains("panicked"), "{}", out.stderr);
    }
    let out = run(&base, &dirs.cache(), &["--help"]);
    out.assert_code(0);
    assert!(out.stdout.contains("Exit codes:"), "{}", out.stdout);
    let out = run(&base, &dirs.cache(), &["--version"]);
    out.assert_code(0);
}

#[test]
fn a_closed_pipe_is_not_an_error() {
    let dirs = Dirs::new();
    let server = Server::start(&dirs.db());
    for i in 0..30 {
        server.post_ok(
            "/api/v1/jobs",
            json!({"id": format!("p{i}"), "type": "evaluation"}),
            201,
        );
    }
    let mut child = support::cli(&server.base, &dirs.cache())
        .args(["jobs", "list"])
        .spawn()
        .unwrap();
    // Close our end of stdout at once: the CLI's writes hit a broken pipe.
    drop(child.stdout.take());
    let mut stderr = String::new();
    std::io::Read::read_to_string(child.stderr.as_mut().unwrap(), &mut stderr).unwrap();
    let status = support::wait(&mut child, support::DEADLINE);
    assert_eq!(status.code(), Some(0), "{stderr}");
    assert!(
        !stderr.contains("error") && !stderr.contains("panicked"),
        "{stderr}"
    );
}

/// A token whose role may not do something: one clear line naming the token and its role,
/// exit 1; the secret nowhere.
#[test]
fn a_forbidden_action_is_one_line_naming_the_token_and_its_role() {
    const SECRET: &str = "cli-read-secret-41c7e9";
    // `printf %s cli-read-secret-41c7e9 | sha256sum`, as docs/OPERATIONS.md says.
    let hash = {
        use sha2::Digest;
        sha2::Sha256::digest(SECRET.as_bytes())
            .iter()
            .map(|byte| format!("{byte:02x}"))
            .collect::<String>()
    };
    let dirs = Dirs::new();
    let tokens = dirs.db().with_file_name("tokens.toml");
    std::fs::write(
        &tokens,
        format!("[[token]]\nname = \"ci\"\nrole = \"read\"\nsecret_sha256 = \"{hash}\"\n"),
    )
    .unwrap();
    let server = Server::start_with(&dirs.db(), 0, &["--tokens-file", tokens.to_str().unwrap()]);
    // The Rust client maps the 403 to its typed error with the code.
    let client = skill_fleet_client::Client::new(&server.base)
        .unwrap()
        .without_cache()
        .with_token(SECRET);
    let err = client.cancel("j", None).unwrap_err();
    assert_eq!(
        err.code(),
        Some(skill_fleet_client::types::ErrorCode::Forbidden),
        "{err}"
    );
    let cache = dirs.cache();
    let out = run(&server.base, &cache, &["--token", SECRET, "jobs", "list"]);
    out.assert_code(0);
    let out = run(
        &server.base,
        &cache,
        &["--token", SECRET, "jobs", "cancel", "j"],
    );
    out.assert_code(1);
    assert_eq!(out.stderr.lines().count(), 1, "{}", out.stderr);
    assert!(
        out.stderr
            .starts_with("error: token `ci` (role read) may not call POST")
            && out.stderr.contains("it needs the admin role")
            && out.stderr.contains("HTTP 403"),
        "{}",
        out.stderr
    );
    assert!(!out.stderr.contains(SECRET), "{}", out.stderr);
    // The token from the environment: `SKILL_FLEET_TOKEN`, else the server's own variable;
    // without either the server answers 401.
    for variable in ["SKILL_FLEET_TOKEN", "SKILL_FLEET_AUTH_TOKEN"] {
        let listed = support::cli(&server.base, &cache)
            .env(variable, SECRET)
            .args(["jobs", "list"])
            .output()
            .unwrap();
        assert!(listed.status.success(), "{variable}: {listed:?}");
    }
    let refused = support::cli(&server.base, &cache)
        .args(["jobs", "list"])
        .output()
        .unwrap();
    assert_eq!(refused.status.code(), Some(1), "{refused:?}");
}
