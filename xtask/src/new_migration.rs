//! `cargo xtask new-migration NAME`: creates `migrations/<YYYY-MM-DD-HHMMSS>_<name>/`.

use std::fs;
use std::process::ExitCode;

use crate::{Result, project_root};

pub fn run(args: &[String]) -> Result<ExitCode> {
    let [name] = args else {
        eprintln!("usage: cargo xtask new-migration NAME");
        return Ok(ExitCode::from(2));
    };
    let valid = !name.is_empty()
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_');
    if !valid {
        return Err(format!("invalid migration name `{name}`: use a-z, 0-9 and `_`").into());
    }
    let stamp = chrono::Utc::now().format("%Y-%m-%d-%H%M%S");
    let dir = project_root()
        .join("migrations")
        .join(format!("{stamp}_{name}"));
    if dir.exists() {
        return Err(format!("`{}` already exists", dir.display()).into());
    }
    fs::create_dir_all(&dir).map_err(|err| format!("cannot create `{}`: {err}", dir.display()))?;
    for (file, text) in [
        ("up.sql", "-- Your SQL goes here\n"),
        (
            "down.sql",
            "-- This file should undo anything in `up.sql`\n",
        ),
    ] {
        let path = dir.join(file);
        fs::write(&path, text)
            .map_err(|err| format!("cannot write `{}`: {err}", path.display()))?;
        println!("created {}", path.display());
    }
    println!("then run `cargo xtask schema` and commit");
    Ok(ExitCode::SUCCESS)
}
