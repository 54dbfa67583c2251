//! `cargo xtask release [--dry-run] [--skip-tests]`: checks that the tree is ready for a
//! release and builds the archive of the two binaries.
//!
//! In order: every crate's version is the workspace version, the library crates carry their
//! publish metadata, `CHANGELOG.md` has a section for the version and the license files exist;
//! the git tree is clean (`--dry-run` only warns); `cargo package --list` succeeds for each
//! library crate; `cargo test --workspace` passes (unless `--skip-tests`); then the release
//! build of `skill-fleet-server` and `skill-fleet` is packed with the README, the licenses,
//! the changelog and `docs/` into `<target dir>/dist/skill-fleet-<version>-<target>.tar.gz`,
//! its checksum goes to `<target dir>/dist/SHA256SUMS`, and the changelog section is printed.
//! The target directory is the one cargo reports (`cargo metadata`), so `CARGO_TARGET_DIR`
//! and `build.target-dir` are honoured; the packed binaries are stripped of their symbols.
//!
//! Nothing is published, tagged or pushed. Uses the `git`, `tar`, `strip` and `sha256sum`
//! commands.

use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode};

use crate::{Result, project_root};

const USAGE: &str = "usage: cargo xtask release [--dry-run] [--skip-tests]";

/// The crates published to crates.io; the binaries ship in the archive instead.
const LIBRARY_CRATES: [&str; 5] = [
    "skill-fleet-types",
    "skill-fleet-jobs",
    "skill-fleet-stream",
    "skill-fleet-api",
    "skill-fleet-client",
];

/// The test kit: `publish = false`, never packaged; its workspace entry has no version, so
/// `cargo package` drops it from the published crates' dev-dependencies.
const TEST_SUPPORT_CRATE: &str = "skill-fleet-testkit";

/// `(package, binary)` pairs built and packed.
const BINARIES: [(&str, &str); 2] = [
    ("skill-fleet-server", "skill-fleet-server"),
    ("skill-fleet-cli", "skill-fleet"),
];

/// Files and directories of the repository root that go into the archive.
const PACKED: [&str; 6] = [
    "README.md",
    "LICENSE",
    "LICENSE-MIT",
    "LICENSE-APACHE",
    "CHANGELOG.md",
    "docs",
];

/// Manifest keys every library crate must set (directly or `.workspace = true`).
const PUBLISH_KEYS: [&str; 6] = [
    "license",
    "description",
    "repository",
    "readme",
    "keywords",
    "categories",
];

struct Options {
    dry_run: bool,
    skip_tests: bool,
}

pub fn run(args: &[String]) -> Result<ExitCode> {
    let mut options = Options {
        dry_run: false,
        skip_tests: false,
    };
    for arg in args {
        match arg.as_str() {
            "--dry-run" => options.dry_run = true,
            "--skip-tests" => options.skip_tests = true,
            "--" => {}
            _ => {
                eprintln!("{USAGE}");
                return Ok(ExitCode::from(2));
            }
        }
    }
    let root = project_root();

    let version = workspace_version(&root)?;
    println!(
        "release {version}{}",
        if options.dry_run { " (dry run)" } else { "" }
    );
    check_crates(&root, &version)?;
    let changelog = changelog_section(&root, &version)?;
    for file in PACKED {
        if !root.join(file).exists() {
            return Err(format!("`{file}` is missing; it goes into the archive").into());
        }
    }
    println!("ok: versions, publish metadata, changelog section, license files");

    check_git_clean(&root, options.dry_run)?;

    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".to_owned());
    for krate in LIBRARY_CRATES {
        let mut command = Command::new(&cargo);
        command
            .current_dir(&root)
            .args(["package", "--list", "--quiet", "-p", krate]);
        if options.dry_run {
            command.arg("--allow-dirty");
        }
        let output = command.output()?;
        if !output.status.success() {
            return Err(format!(
                "`cargo package --list -p {krate}` failed:\n{}",
                String::from_utf8_lossy(&output.stderr).trim_end()
            )
            .into());
        }
        let listed = String::from_utf8_lossy(&output.stdout);
        if krate == "skill-fleet-jobs" {
            check_migrations_packaged(&root, &listed)?;
        }
        let files = listed.lines().count();
        println!("ok: cargo package --list -p {krate} ({files} files)");
    }

    if options.skip_tests {
        println!("skipping cargo test --workspace (--skip-tests)");
    } else {
        println!("running cargo test --workspace…");
        cargo_run(&cargo, &root, &["test", "--workspace", "--quiet"])?;
    }

    println!("building release binaries…");
    let mut build = vec!["build", "--release", "--quiet"];
    for (package, _) in BINARIES {
        build.extend(["-p", package]);
    }
    cargo_run(&cargo, &root, &build)?;

    let target = host_triple()?;
    let target_dir = target_directory(metadata_command(&cargo, &root))?;
    let archive = pack(&root, &target_dir, &version, &target)?;
    println!("{changelog}");
    if options.dry_run {
        println!("dry run: nothing was tagged or published");
    } else {
        println!("next: `git tag v{version} && git push --tags`, then publish the library crates");
    }
    println!("archive: {}", archive.display());
    Ok(ExitCode::SUCCESS)
}

/// Runs cargo with `args` in the repository root; a non-zero exit is an error.
fn cargo_run(cargo: &str, root: &Path, args: &[&str]) -> Result {
    let status = Command::new(cargo).current_dir(root).args(args).status()?;
    if !status.success() {
        return Err(format!("`cargo {}` failed ({status})", args.join(" ")).into());
    }
    Ok(())
}

/// The value of `key = "…"` in the `[section]` table of a manifest.
fn manifest_value(manifest: &str, section: &str, key: &str) -> Option<String> {
    let header = format!("[{section}]");
    let mut inside = false;
    for line in manifest.lines().map(str::trim) {
        if line.starts_with('[') {
            inside = line == header;
            continue;
        }
        if !inside {
            continue;
        }
        let Some((name, value)) = line.split_once('=') else {
            continue;
        };
        if name.trim() == key {
            return Some(value.trim().trim_matches('"').to_owned());
        }
    }
    None
}

/// Whether the `[package]` table of a manifest sets `key` or `key.workspace`.
fn package_sets(manifest: &str, key: &str) -> bool {
    manifest_value(manifest, "package", key).is_some()
        || manifest_value(manifest, "package", &format!("{key}.workspace")).as_deref()
            == Some("true")
}

fn read(path: &Path) -> Result<String> {
    std::fs::read_to_string(path)
        .map_err(|err| format!("cannot read `{}`: {err}", path.display()).into())
}

/// `[workspace.package] version` of the root manifest.
fn workspace_version(root: &Path) -> Result<String> {
    let manifest = read(&root.join("Cargo.toml"))?;
    manifest_value(&manifest, "workspace.package", "version")
        .ok_or_else(|| "no `version` in [workspace.package] of Cargo.toml".into())
}

/// Every crate under `crates/` has the workspace version; the library crates have their
/// publish metadata and README; the workspace dependency entries name the same version.
fn check_crates(root: &Path, version: &str) -> Result {
    let mut problems = Vec::new();
    let mut dirs: Vec<PathBuf> = std::fs::read_dir(root.join("crates"))?
        .filter_map(|entry| entry.ok().map(|entry| entry.path()))
        .filter(|path| path.join("Cargo.toml").is_file())
        .collect();
    dirs.sort();
    for dir in &dirs {
        let manifest = read(&dir.join("Cargo.toml"))?;
        let name = manifest_value(&manifest, "package", "name")
            .unwrap_or_else(|| dir.display().to_string());
        let own = manifest_value(&manifest, "package", "version");
        let inherits = package_sets(&manifest, "version") && own.is_none();
        match own {
            Some(own) if own != version => {
                problems.push(format!("{name}: version {own}, workspace {version}"));
            }
            None if !inherits => problems.push(format!("{name}: no version")),
            _ => {}
        }
        if LIBRARY_CRATES.contains(&name.as_str()) {
            for key in PUBLISH_KEYS {
                if !package_sets(&manifest, key) {
                    problems.push(format!("{name}: no `{key}` in [package]"));
                }
            }
            if let Some(readme) = manifest_value(&manifest, "package", "readme")
                && !dir.join(&readme).is_file()
            {
                problems.push(format!("{name}: readme `{readme}` is missing"));
            }
        }
    }
    let root_manifest = read(&root.join("Cargo.toml"))?;
    for line in root_manifest.lines() {
        let Some((name, spec)) = line.split_once('=') else {
            continue;
        };
        let name = name.trim();
        if !name.starts_with("skill-fleet-")
            || !spec.contains("path =")
            || name == TEST_SUPPORT_CRATE
        {
            continue;
        }
        let wanted = format!("version = \"{version}\"");
        if !spec.contains(&wanted) {
            problems.push(format!("[workspace.dependencies] {name}: not `{wanted}`"));
        }
    }
    if problems.is_empty() {
        Ok(())
    } else {
        Err(format!("crate manifests:\n  {}", problems.join("\n  ")).into())
    }
}

/// The `## [version]` section of `CHANGELOG.md`, heading included.
fn changelog_section(root: &Path, version: &str) -> Result<String> {
    let changelog = read(&root.join("CHANGELOG.md"))?;
    let heading = format!("## [{version}]");
    let mut section = Vec::new();
    for line in changelog.lines() {
        if section.is_empty() {
            if line.starts_with(&heading) {
                section.push(line);
            }
            continue;
        }
        // The next version, or the link definitions at the bottom.
        if line.starts_with("## ") || (line.starts_with('[') && line.contains("]: ")) {
            break;
        }
        section.push(line);
    }
    if section.is_empty() {
        return Err(format!("CHANGELOG.md has no `{heading}` section").into());
    }
    Ok(section.join("\n").trim_end().to_owned())
}

/// An error when `git status` shows changes; only a warning in a dry run.
fn check_git_clean(root: &Path, dry_run: bool) -> Result {
    let output = Command::new("git")
        .current_dir(root)
        .args(["status", "--porcelain"])
        .output()
        .map_err(|err| format!("cannot run git: {err}"))?;
    if !output.status.success() {
        return Err(format!(
            "`git status` failed: {}",
            String::from_utf8_lossy(&output.stderr).trim_end()
        )
        .into());
    }
    let changes = String::from_utf8_lossy(&output.stdout).lines().count();
    match (changes, dry_run) {
        (0, _) => println!("ok: git tree is clean"),
        (n, true) => println!("warning: git tree has {n} uncommitted changes (dry run goes on)"),
        (n, false) => {
            return Err(format!(
                "git tree has {n} uncommitted changes: commit or stash them, or use --dry-run"
            )
            .into());
        }
    }
    Ok(())
}

/// The host target triple, from `rustc -vV`.
fn host_triple() -> Result<String> {
    let rustc = std::env::var("RUSTC").unwrap_or_else(|_| "rustc".to_owned());
    let output = Command::new(rustc).arg("-vV").output()?;
    String::from_utf8_lossy(&output.stdout)
        .lines()
        .find_map(|line| line.strip_prefix("host: "))
        .map(str::to_owned)
        .ok_or_else(|| "`rustc -vV` printed no host triple".into())
}

/// `cargo metadata` for the workspace, without its dependencies (no network).
fn metadata_command(cargo: &str, root: &Path) -> Command {
    let mut command = Command::new(cargo);
    command
        .current_dir(root)
        .args(["metadata", "--format-version", "1", "--no-deps"]);
    command
}

/// The target directory cargo builds into, as `metadata` reports it: `CARGO_TARGET_DIR`,
/// `build.target-dir` or `<root>/target`.
fn target_directory(mut metadata: Command) -> Result<PathBuf> {
    let output = metadata
        .output()
        .map_err(|err| format!("cannot run cargo metadata: {err}"))?;
    if !output.status.success() {
        return Err(format!(
            "`cargo metadata` failed:\n{}",
            String::from_utf8_lossy(&output.stderr).trim_end()
        )
        .into());
    }
    let metadata: serde_json::Value = serde_json::from_slice(&output.stdout)
        .map_err(|err| format!("cannot parse cargo metadata's output: {err}"))?;
    metadata["target_directory"]
        .as_str()
        .map(PathBuf::from)
        .ok_or_else(|| "cargo metadata reports no `target_directory`".into())
}

/// Removes the symbols of a packed binary (`strip`), so the archive ships no debug data.
fn strip(binary: &Path) -> Result {
    let status = Command::new("strip")
        .arg(binary)
        .status()
        .map_err(|err| format!("cannot run strip on `{}`: {err}", binary.display()))?;
    if !status.success() {
        return Err(format!("strip failed on `{}` ({status})", binary.display()).into());
    }
    Ok(())
}

/// Packs the binaries (from `<target_dir>/release`, stripped) and the documents into
/// `<target_dir>/dist/<name>.tar.gz`, writes `<target_dir>/dist/SHA256SUMS` and returns the
/// archive's path.
fn pack(root: &Path, target_dir: &Path, version: &str, target: &str) -> Result<PathBuf> {
    let dist = target_dir.join("dist");
    let name = format!("skill-fleet-{version}-{target}");
    let stage = dist.join(&name);
    if stage.exists() {
        std::fs::remove_dir_all(&stage)?;
    }
    std::fs::create_dir_all(&stage)?;
    let release = target_dir.join("release");
    for (_, binary) in BINARIES {
        let file = format!("{binary}{}", std::env::consts::EXE_SUFFIX);
        copy(&release.join(&file), &stage.join(&file))?;
        strip(&stage.join(&file))?;
    }
    for item in PACKED {
        copy(&root.join(item), &stage.join(item))?;
    }

    let archive_name = format!("{name}.tar.gz");
    let status = Command::new("tar")
        .current_dir(&dist)
        .args(["-czf", &archive_name, &name])
        .status()
        .map_err(|err| format!("cannot run tar: {err}"))?;
    if !status.success() {
        return Err(format!("tar failed ({status})").into());
    }
    std::fs::remove_dir_all(&stage)?;

    let output = Command::new("sha256sum")
        .current_dir(&dist)
        .arg(&archive_name)
        .output()
        .map_err(|err| format!("cannot run sha256sum: {err}"))?;
    if !output.status.success() {
        return Err(format!("sha256sum failed ({})", output.status).into());
    }
    std::fs::write(dist.join("SHA256SUMS"), &output.stdout)?;

    let archive = dist.join(&archive_name);
    let size = std::fs::metadata(&archive)?.len();
    println!(
        "packed {archive_name} ({:.1} MiB), sha256 {}",
        size as f64 / (1024.0 * 1024.0),
        String::from_utf8_lossy(&output.stdout)
            .split_whitespace()
            .next()
            .unwrap_or_default()
    );
    Ok(archive)
}

/// Copies a file, or a directory recursively.
fn copy(from: &Path, to: &Path) -> Result {
    if from.is_dir() {
        std::fs::create_dir_all(to)?;
        for entry in std::fs::read_dir(from)? {
            let entry = entry?;
            copy(&entry.path(), &to.join(entry.file_name()))?;
        }
    } else {
        std::fs::copy(from, to)
            .map_err(|err| format!("cannot copy `{}`: {err}", from.display()))?;
    }
    Ok(())
}

/// The store embeds its migrations at build time, so its package must carry every one of
/// them, for each backend (`crates/skill-fleet-jobs/migrations` links to the root
/// `migrations/`, which holds `sqlite/` and `postgres/`).
fn check_migrations_packaged(root: &Path, listed: &str) -> Result {
    for backend in std::fs::read_dir(root.join("migrations"))? {
        let backend = backend?;
        if !backend.file_type()?.is_dir() {
            continue;
        }
        let backend_name = backend.file_name().to_string_lossy().into_owned();
        for entry in std::fs::read_dir(backend.path())? {
            let name = entry?.file_name().to_string_lossy().into_owned();
            for file in ["up.sql", "down.sql"] {
                let path = format!("migrations/{backend_name}/{name}/{file}");
                if !listed.lines().any(|line| line.trim() == path) {
                    return Err(format!(
                        "skill-fleet-jobs would be packaged without `{path}`: check the \
                         crates/skill-fleet-jobs/migrations link"
                    )
                    .into());
                }
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_target_directory_follows_cargo_target_dir() {
        let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".to_owned());
        let elsewhere = tempfile::tempdir().expect("temp dir");
        let mut metadata = metadata_command(&cargo, &project_root());
        metadata.env("CARGO_TARGET_DIR", elsewhere.path());
        assert_eq!(
            target_directory(metadata).expect("target directory"),
            elsewhere.path()
        );
        let mut metadata = metadata_command(&cargo, &project_root());
        metadata.env_remove("CARGO_TARGET_DIR");
        let default = target_directory(metadata).expect("target directory");
        assert_ne!(default, elsewhere.path());
    }
}
