//! `cargo xtask new-migration NAME`: creates `migrations/{sqlite,postgres}/<YYYY-MM-DD-HHMMSS>_<name>/`,
//! one migration per backend under the same name (each backend embeds its own folder).

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
    let dirs = ["sqlite", "postgres"].map(|backend| {
        project_root()
            .join("migrations")
            .join(backend)
            .join(format!("{stamp}_{name}"))
    });
    if let Some(dir) = dirs.iter().find(|dir| dir.exists()) {
        return Err(format!("`{}` already exists", dir.display()).into());
    }
    for dir in &dirs {
        create(dir)?;
    }
    println!(
        "write both, so that they make the same tables; then run `cargo xtask schema` and commit"
    );
    Ok(ExitCode::SUCCESS)
}

fn create(dir: &std::path::Path) -> Result {
    fs::create_dir_all(dir).map_err(|err| format!("cannot create `{}`: {err}", dir.display()))?;
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
    Ok(())
}
