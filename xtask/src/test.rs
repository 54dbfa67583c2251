//! `cargo xtask test`: the whole test suite, as CI runs it: `cargo test --workspace`, then the
//! Python package's checks and tests (`python/ci.sh`: its virtual environment, ruff, mypy,
//! pytest) against the server binary that `cargo test` built.
//!
//! Without `python3` the Python part is skipped with a printed reason, and fails instead when
//! the `CI` variable is set.

use std::path::PathBuf;
use std::process::{Command, ExitCode};

use crate::project_root;

const USAGE: &str = "usage: cargo xtask test [--rust-only | --python-only] [-- CARGO_TEST_ARGS…]";

/// Runs the suite; exit 1 when any part failed.
pub fn run(args: &[String]) -> crate::Result<ExitCode> {
    let (ours, cargo_args) = match args.iter().position(|a| a == "--") {
        Some(at) => (&args[..at], &args[at + 1..]),
        None => (args, &[][..]),
    };
    let (mut rust, mut python) = (true, true);
    for arg in ours {
        match arg.as_str() {
            "--rust-only" => python = false,
            "--python-only" => rust = false,
            _ => {
                eprintln!("unknown argument `{arg}`\n{USAGE}");
                return Ok(ExitCode::from(2));
            }
        }
    }
    let root = project_root();
    let mut failed = Vec::new();
    if rust {
        println!("$ cargo test --workspace {}", cargo_args.join(" "));
        let status = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()))
            .args(["test", "--workspace"])
            .args(cargo_args)
            .current_dir(&root)
            .status()?;
        if !status.success() {
            failed.push("cargo test --workspace");
        }
    }
    if python && !run_python(&root)? {
        failed.push("python/ci.sh");
    }
    if failed.is_empty() {
        println!("xtask test: every part passed");
        Ok(ExitCode::SUCCESS)
    } else {
        eprintln!("xtask test: failed: {}", failed.join(", "));
        Ok(ExitCode::FAILURE)
    }
}

/// The Python part; false when it failed (or, under `CI`, could not run).
fn run_python(root: &std::path::Path) -> crate::Result<bool> {
    let python = std::env::var("PYTHON").unwrap_or_else(|_| "python3".into());
    let found = Command::new(&python)
        .arg("--version")
        .output()
        .is_ok_and(|out| out.status.success());
    if !found {
        let under_ci = std::env::var_os("CI").is_some_and(|v| !v.is_empty());
        println!(
            "python tests skipped: `{python}` not found (install Python 3.10 or newer{})",
            if under_ci { "; failing under CI" } else { "" }
        );
        return Ok(!under_ci);
    }
    let server = target_dir(root).join("debug").join("skill-fleet-server");
    if !server.exists() {
        // `cargo test` builds it for the server's integration tests; `--python-only` may not.
        let status = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()))
            .args(["build", "-p", "skill-fleet-server"])
            .current_dir(root)
            .status()?;
        if !status.success() {
            return Ok(false);
        }
    }
    println!(
        "$ python/ci.sh  (SKILL_FLEET_SERVER_BIN={})",
        server.display()
    );
    let status = Command::new("bash")
        .arg(root.join("python").join("ci.sh"))
        .env("SKILL_FLEET_SERVER_BIN", &server)
        .env("PYTHON", &python)
        .current_dir(root)
        .status()?;
    Ok(status.success())
}

/// Where cargo puts build output: `CARGO_TARGET_DIR`, else `target/` at the root.
fn target_dir(root: &std::path::Path) -> PathBuf {
    match std::env::var_os("CARGO_TARGET_DIR") {
        Some(dir) => {
            let dir = PathBuf::from(dir);
            if dir.is_absolute() {
                dir
            } else {
                root.join(dir)
            }
        }
        None => root.join("target"),
    }
}
