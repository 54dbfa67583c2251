//! `skill-fleet jobs artifacts ID [NAME]`: a job's artifacts as a table, or one of them
//! downloaded: to `PATH.part` first, continued with a range after a cut, checked against its
//! SHA-256, renamed into place, and skipped when the local copy is already current.

use std::io::{self, IsTerminal};
use std::path::{Path, PathBuf};

use clap::Args;
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use serde_json::json;
use skill_fleet_client::{Client, ClientError, Download, partial_path};
use skill_fleet_types::{Artifact, ArtifactList};

use crate::context::{Context, note_cached, out, out_json, out_raw};
use crate::error::{CliError, code};
use crate::format;
use crate::parse::parse_artifact_name;

/// Characters of an artifact's SHA-256 the table shows.
const SHA_PREFIX: usize = 12;

/// Options of `jobs artifacts`.
#[derive(Debug, Args)]
pub struct ArtifactsArgs {
    /// The job's id.
    #[arg(value_name = "ID")]
    pub id: String,
    /// Download this artifact instead of listing them.
    #[arg(value_name = "NAME", value_parser = parse_artifact_name)]
    pub name: Option<String>,
    /// Where to save the download: a file, a directory (the file is NAME in it), or `-`
    /// for stdout [default: ./NAME].
    #[arg(short, long, value_name = "PATH", requires = "name")]
    pub output: Option<PathBuf>,
}

/// Runs `jobs artifacts`.
pub fn run(ctx: &Context, args: &ArtifactsArgs) -> Result<u8, CliError> {
    let client = ctx.client()?;
    match &args.name {
        None => list(ctx, &client, &args.id),
        Some(name) if args.output.as_deref() == Some(Path::new("-")) => {
            to_stdout(&client, &args.id, name)
        }
        Some(name) => {
            let path = target(name, args.output.as_deref());
            to_file(ctx, &client, &args.id, name, &path)
        }
    }
}

fn list(ctx: &Context, client: &Client, id: &str) -> Result<u8, CliError> {
    let fetched = client.list_artifacts(id)?;
    note_cached(fetched.from_cache);
    let list = fetched.value;
    if ctx.json() {
        out_json(&list)?;
    } else if list.artifacts.is_empty() {
        out(format!("job {} has no artifacts", list.job_id))?;
    } else {
        out_raw(&table(&list))?;
    }
    Ok(code::OK)
}

/// The listing as a table, with a line adding up the sizes.
fn table(list: &ArtifactList) -> String {
    let rows: Vec<Vec<String>> = list.artifacts.iter().map(row).collect();
    let mut text = format::table(&["NAME", "SIZE", "SHA256", "TYPE", "CREATED"], &rows);
    let count = list.artifacts.len();
    text.push_str(&format!(
        "{count} artifact{}, {}\n",
        if count == 1 { "" } else { "s" },
        format::bytes(list.total_bytes)
    ));
    text
}

fn row(artifact: &Artifact) -> Vec<String> {
    vec![
        artifact.name.clone(),
        format::bytes(artifact.size),
        sha_prefix(&artifact.sha256),
        format::truncate(&artifact.content_type, 40),
        artifact
            .created_at
            .format("%Y-%m-%d %H:%M:%S UTC")
            .to_string(),
    ]
}

fn sha_prefix(sha256: &str) -> String {
    sha256.chars().take(SHA_PREFIX).collect()
}

/// Where a download goes: `-o PATH`, `PATH/NAME` when PATH is a directory, else `./NAME`.
fn target(name: &str, output: Option<&Path>) -> PathBuf {
    match output {
        Some(dir) if dir.is_dir() => dir.join(name),
        Some(path) => path.to_owned(),
        None => Path::new(".").join(name),
    }
}

fn to_file(
    ctx: &Context,
    client: &Client,
    id: &str,
    name: &str,
    path: &Path,
) -> Result<u8, CliError> {
    let bar = Bar::new();
    let mut progress = |done, total| bar.update(done, total);
    let result = client.download_artifact_to(id, name, path, Some(&mut progress));
    bar.finish();
    let download = result.map_err(|err| with_hint(err, path))?;
    let shown = path.display();
    match download {
        Download::UpToDate { sha256 } => {
            if ctx.json() {
                out_json(&json!({
                    "job_id": id, "name": name, "path": path, "status": "up_to_date",
                    "sha256": sha256,
                }))?;
            } else {
                out(format!(
                    "{shown} is up to date (sha256 {})",
                    sha_prefix(&sha256)
                ))?;
            }
        }
        Download::Fetched(transfer) => {
            if ctx.json() {
                out_json(&json!({
                    "job_id": id, "name": name, "path": path, "status": "downloaded",
                    "size": transfer.size, "sha256": transfer.sha256,
                    "resumed_from": transfer.resumed_from,
                }))?;
            } else {
                let resumed = if transfer.resumed_from > 0 {
                    format!(", resumed after {}", format::bytes(transfer.resumed_from))
                } else {
                    String::new()
                };
                out(format!(
                    "saved {shown} ({}, sha256 {} verified{resumed})",
                    format::bytes(transfer.size),
                    sha_prefix(&transfer.sha256)
                ))?;
            }
        }
    }
    Ok(code::OK)
}

/// A failed download's error, with what became of the partial file and what to do next.
fn with_hint(err: ClientError, path: &Path) -> CliError {
    let part = partial_path(path);
    let hint = match &err {
        ClientError::ArtifactHashMismatch { .. } => Some(format!(
            "{} was not kept; run the same command again to download it whole",
            part.display()
        )),
        // A cut connection, a slow server, a full disk: what came is kept to continue from.
        // (Not for a refusal such as a 404, where resuming cannot help.)
        _ if (err.is_transient()
            || matches!(
                err,
                ClientError::ArtifactIo { .. } | ClientError::ArtifactDownload { .. }
            ))
            && part.metadata().is_ok_and(|m| m.len() > 0) =>
        {
            Some(format!(
                "the partial download is kept in {}; run the same command again to resume it",
                part.display()
            ))
        }
        _ => None,
    };
    match hint {
        Some(hint) => CliError::Hinted {
            error: Box::new(CliError::Client(err)),
            hint,
        },
        None => CliError::Client(err),
    }
}

/// `-o -`: the bytes on stdout, checked once written (a mismatch is an error, exit 1, but
/// the bytes have gone out: do not use them).
fn to_stdout(client: &Client, id: &str, name: &str) -> Result<u8, CliError> {
    let bar = Bar::new();
    let mut progress = |done, total| bar.update(done, total);
    let mut stdout = io::stdout().lock();
    let result = client.download_artifact(id, name, &mut stdout, None, Some(&mut progress));
    bar.finish();
    match result {
        Ok(_) => Ok(code::OK),
        // `… | head -c 100` is not an error.
        Err(ClientError::ArtifactIo { source, .. })
            if source.kind() == io::ErrorKind::BrokenPipe =>
        {
            Err(CliError::Output(source))
        }
        Err(err) => Err(err.into()),
    }
}

/// A byte progress bar on stderr, only when stderr is a terminal.
struct Bar(Option<ProgressBar>);

impl Bar {
    fn new() -> Bar {
        if !io::stderr().is_terminal() {
            return Bar(None);
        }
        let bar = ProgressBar::with_draw_target(None, ProgressDrawTarget::stderr());
        if let Ok(style) = ProgressStyle::with_template(
            "[{bar:30}] {bytes}/{total_bytes} {binary_bytes_per_sec} ETA {eta}",
        ) {
            bar.set_style(style.progress_chars("=> "));
        }
        Bar(Some(bar))
    }

    fn update(&self, done: u64, total: Option<u64>) {
        if let Some(bar) = &self.0 {
            if let Some(total) = total {
                bar.set_length(total);
            }
            bar.set_position(done);
        }
    }

    fn finish(&self) {
        if let Some(bar) = &self.0 {
            bar.finish_and_clear();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn downloads_go_to_name_a_file_or_into_a_directory() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(target("program.json", None), Path::new("./program.json"));
        assert_eq!(
            target("program.json", Some(Path::new("out.json"))),
            Path::new("out.json")
        );
        assert_eq!(
            target("program.json", Some(dir.path())),
            dir.path().join("program.json")
        );
    }

    #[test]
    fn a_failed_download_says_what_became_of_the_partial_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("data.bin");
        std::fs::write(partial_path(&path), b"start").unwrap();
        let cut = || ClientError::Unreachable {
            url: "http://127.0.0.1:1".into(),
            reason: "connection reset".into(),
        };
        let report = with_hint(cut(), &path).report();
        assert!(
            report.ends_with("data.bin.part; run the same command again to resume it"),
            "{report}"
        );
        assert_eq!(with_hint(cut(), &path).exit_code(), 3);
        // A refusal: resuming cannot help, so no hint.
        let not_found = ClientError::Api {
            status: 404,
            code: skill_fleet_types::ErrorCode::NotFound,
            message: "artifact `data.bin` not found".into(),
            url: "u".into(),
        };
        assert!(matches!(with_hint(not_found, &path), CliError::Client(_)));
        let mismatch = ClientError::ArtifactHashMismatch {
            job_id: "j".into(),
            name: "data.bin".into(),
            expected: "a".into(),
            actual: "b".into(),
        };
        let report = with_hint(mismatch, &path).report();
        assert!(
            report.ends_with(
                "data.bin.part was not kept; run the same command again to download it whole"
            ),
            "{report}"
        );
        // No partial file, nothing to say about one.
        std::fs::remove_file(partial_path(&path)).unwrap();
        assert!(matches!(with_hint(cut(), &path), CliError::Client(_)));
    }

    #[test]
    fn the_table_shows_sizes_hash_prefixes_and_a_total() {
        let artifact = |name: &str, size: u64| Artifact {
            name: name.into(),
            size,
            sha256: "ab".repeat(32),
            content_type: "application/json".into(),
            created_at: "2026-01-02T03:04:05Z".parse().unwrap(),
            attempt: Some(1),
        };
        let list = ArtifactList {
            job_id: "j".into(),
            artifacts: vec![artifact("program.json", 1536), artifact("scores.csv", 3)],
            total_bytes: 1539,
        };
        assert_eq!(
            table(&list),
            "NAME          SIZE     SHA256        TYPE              CREATED\n\
             program.json  1.5 KiB  abababababab  application/json  2026-01-02 03:04:05 UTC\n\
             scores.csv    3 B      abababababab  application/json  2026-01-02 03:04:05 UTC\n\
             2 artifacts, 1.5 KiB\n"
        );
    }
}
