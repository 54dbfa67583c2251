//! House rules of the whole workspace, checked by plain `cargo test` (rust-analyzer's "tidy"):
//!
//! - every `.rs` file under `crates/` and `xtask/` starts with a `//!` line (a library root
//!   may start with `#![doc = include_str!(…)]` instead), and every library root denies
//!   missing docs;
//! - no `.unwrap()` outside tests (`#[cfg(test)]` modules, `tests/`, `benches/` and
//!   `examples/` may), and no `.expect(` in the crates' `src/` either;
//! - no unused dependency: each `[dependencies]` entry of a crate is named in the non-test
//!   code of its `src/` (`name::` or `use name`), unless [`LINK_ONLY`] says why it is there;
//! - docs in step with code: every relative link in `README.md` and `docs/*.md` points at a
//!   file that exists, and every `cargo xtask COMMAND` they mention is a command of xtask.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

/// Dependencies no code names, and why each is needed anyway.
const LINK_ONLY: [(&str, &str, &str); 1] = [(
    "skill-fleet-jobs",
    "libsqlite3-sys",
    "links SQLite's bundled C library (its `bundled` feature) under diesel",
)];

fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .ancestors()
        .nth(2)
        .expect("the workspace root is two levels above this crate")
        .to_path_buf()
}

/// Every `.rs` file under `dir`, build output and hidden directories left out.
fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for entry in entries {
        let path = entry.unwrap().path();
        let name = path.file_name().unwrap().to_string_lossy().into_owned();
        if path.is_dir() {
            if name != "target" && !name.starts_with('.') {
                rust_files(&path, out);
            }
        } else if name.ends_with(".rs") {
            out.push(path);
        }
    }
}

fn workspace_rust_files(root: &Path) -> Vec<PathBuf> {
    let mut files = Vec::new();
    rust_files(&root.join("crates"), &mut files);
    rust_files(&root.join("xtask"), &mut files);
    files.sort();
    assert!(
        files.len() > 50,
        "found only {} files under {}",
        files.len(),
        root.display()
    );
    files
}

fn read(path: &Path) -> String {
    std::fs::read_to_string(path)
        .unwrap_or_else(|err| panic!("cannot read {}: {err}", path.display()))
}

/// The part of a file that is not test code: none for files under `tests/`, `benches/` or
/// `examples/`, else everything before the first `#[cfg(test)]`.
fn non_test_code(root: &Path, file: &Path) -> Option<String> {
    let relative = file.strip_prefix(root).unwrap_or(file);
    let in_tests = relative.components().any(|part| {
        ["tests", "benches", "examples"].contains(&part.as_os_str().to_string_lossy().as_ref())
    });
    if in_tests {
        return None;
    }
    let text = read(file);
    Some(
        text.split("#[cfg(test)]")
            .next()
            .unwrap_or_default()
            .to_owned(),
    )
}

fn report(rule: &str, problems: &[String]) {
    assert!(problems.is_empty(), "{rule}:\n  {}", problems.join("\n  "));
}

#[test]
fn every_module_starts_with_a_doc_line() {
    let root = workspace_root();
    let mut problems = Vec::new();
    for file in workspace_rust_files(&root) {
        let text = read(&file);
        let lib_root = file.ends_with("src/lib.rs");
        let documented =
            text.starts_with("//!") || (lib_root && text.starts_with("#![doc = include_str!("));
        if !documented {
            problems.push(format!("{}: does not start with `//!`", file.display()));
        }
        if lib_root && !text.contains("#![deny(missing_docs)]") {
            problems.push(format!("{}: no `#![deny(missing_docs)]`", file.display()));
        }
    }
    report("modules without their docs", &problems);
}

#[test]
fn no_unwrap_or_expect_in_library_code() {
    let root = workspace_root();
    let mut problems = Vec::new();
    for file in workspace_rust_files(&root) {
        let Some(code) = non_test_code(&root, &file) else {
            continue;
        };
        let in_crates = file.starts_with(root.join("crates"));
        for needle in [".unwrap()", ".expect("] {
            if needle == ".expect(" && !in_crates {
                continue;
            }
            let count = code.matches(needle).count();
            if count > 0 {
                problems.push(format!("{}: {count} × `{needle}`", file.display()));
            }
        }
    }
    report("panicking shortcuts outside tests", &problems);
}

/// The names of a manifest's `[dependencies]` (and `[target.…dependencies]`) entries.
fn dependencies(manifest: &toml::Table) -> Vec<String> {
    let mut names = Vec::new();
    let mut tables = vec![manifest.get("dependencies")];
    if let Some(targets) = manifest.get("target").and_then(toml::Value::as_table) {
        tables.extend(targets.values().map(|target| target.get("dependencies")));
    }
    for table in tables.into_iter().flatten() {
        if let Some(table) = table.as_table() {
            names.extend(table.keys().cloned());
        }
    }
    names
}

#[test]
fn every_dependency_is_used() {
    let root = workspace_root();
    let mut manifests: Vec<PathBuf> = std::fs::read_dir(root.join("crates"))
        .unwrap()
        .map(|entry| entry.unwrap().path().join("Cargo.toml"))
        .filter(|manifest| manifest.is_file())
        .collect();
    manifests.push(root.join("xtask/Cargo.toml"));
    manifests.sort();
    let mut problems = Vec::new();
    for manifest_path in &manifests {
        let manifest: toml::Table = read(manifest_path).parse().unwrap();
        let package = manifest["package"]["name"].as_str().unwrap().to_owned();
        let dir = manifest_path.parent().unwrap();
        let mut files = Vec::new();
        rust_files(&dir.join("src"), &mut files);
        // Only code that ships: a dependency named only by unit tests is a dev-dependency.
        let source: String = files
            .iter()
            .filter_map(|file| non_test_code(&root, file))
            .collect();
        for dependency in dependencies(&manifest) {
            if LINK_ONLY
                .iter()
                .any(|(krate, name, _)| *krate == package && *name == dependency)
            {
                continue;
            }
            let name = dependency.replace('-', "_");
            let named = source.contains(&format!("{name}::"))
                || source.contains(&format!("use {name}"))
                || source.contains(&format!("extern crate {name}"));
            if !named {
                problems.push(format!(
                    "{package}: `{dependency}` is in [dependencies] but {}/src never names it",
                    dir.display()
                ));
            }
        }
    }
    report("unused dependencies", &problems);
}

/// `README.md` and every `docs/*.md`.
fn documents(root: &Path) -> Vec<PathBuf> {
    let mut docs: Vec<PathBuf> = std::fs::read_dir(root.join("docs"))
        .unwrap()
        .map(|entry| entry.unwrap().path())
        .filter(|path| path.extension().is_some_and(|ext| ext == "md"))
        .collect();
    docs.push(root.join("README.md"));
    docs.sort();
    docs
}

/// The targets of the inline links `[text](target)` of a Markdown text.
fn link_targets(text: &str) -> Vec<String> {
    let mut targets = Vec::new();
    let mut rest = text;
    while let Some(start) = rest.find("](") {
        rest = &rest[start + 2..];
        let end = rest.find(')').unwrap_or(rest.len());
        let target = rest[..end].split_whitespace().next().unwrap_or_default();
        targets.push(target.to_owned());
        rest = &rest[end..];
    }
    targets
}

#[test]
fn every_doc_link_points_at_a_file() {
    let root = workspace_root();
    let mut problems = Vec::new();
    for doc in documents(&root) {
        let text = read(&doc);
        for target in link_targets(&text) {
            let external = target.contains("://") || target.starts_with("mailto:");
            if external || target.starts_with('#') || target.is_empty() {
                continue;
            }
            let path = target.split('#').next().unwrap_or_default();
            if !doc.parent().unwrap().join(path).exists() {
                problems.push(format!(
                    "{}: link to `{target}`, which does not exist",
                    doc.display()
                ));
            }
        }
    }
    report("broken links in the docs", &problems);
}

/// The commands `xtask/src/main.rs` dispatches on (`"name" =>` and `"a" | "b" =>` arms).
fn xtask_commands(root: &Path) -> BTreeSet<String> {
    let main = read(&root.join("xtask/src/main.rs"));
    let mut commands = BTreeSet::new();
    for line in main.lines() {
        let Some((arm, _)) = line.trim().split_once("=>") else {
            continue;
        };
        for pattern in arm.split('|') {
            if let Some(name) = pattern
                .trim()
                .strip_prefix('"')
                .and_then(|p| p.strip_suffix('"'))
            {
                commands.insert(name.to_owned());
            }
        }
    }
    commands
}

#[test]
fn every_xtask_command_in_the_docs_exists() {
    let root = workspace_root();
    let commands = xtask_commands(&root);
    assert!(
        commands.contains("bench"),
        "no commands found in xtask/src/main.rs: {commands:?}"
    );
    let soak = read(&root.join("xtask/src/soak.rs"));
    let mut docs = documents(&root);
    let mut readmes = Vec::new();
    for entry in std::fs::read_dir(root.join("crates")).unwrap() {
        let readme = entry.unwrap().path().join("README.md");
        if readme.is_file() {
            readmes.push(readme);
        }
    }
    docs.extend(readmes);
    let mut problems = Vec::new();
    for doc in docs {
        let text = read(&doc);
        for mention in text.split("cargo xtask ").skip(1) {
            let mut words = mention.split(|c: char| !(c.is_ascii_alphanumeric() || c == '-'));
            let command = words.next().unwrap_or_default();
            if command.is_empty() || command.starts_with('-') {
                continue;
            }
            if !commands.contains(command) {
                problems.push(format!(
                    "{}: `cargo xtask {command}` is not an xtask command",
                    doc.display()
                ));
                continue;
            }
            if command == "soak" {
                let test = words.next().unwrap_or_default();
                if !test.is_empty() && !soak.contains(&format!("Some(\"{test}\")")) {
                    problems.push(format!(
                        "{}: `cargo xtask soak {test}` is not a soak test",
                        doc.display()
                    ));
                }
            }
        }
    }
    report("xtask commands the docs name but xtask lacks", &problems);
}
