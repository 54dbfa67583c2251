//! Artifacts of the server's own children: a file a `{"artifact": PATH}` line names is stored
//! when the line is read; the files left directly in the work directory's `artifacts/` are
//! stored when the child exits, before its end is written. Either way the upload is the
//! run's own (fenced by its lease) and goes through the same [`JobService`] path as a remote
//! worker's `PUT`.

use std::path::{Component, Path, PathBuf};

use sha2::{Digest, Sha256};
use skill_fleet_core::{CoreError, JobService};
use skill_fleet_jobs::Writer;
use skill_fleet_types::{Artifact, validate_artifact_name};
use tokio::io::AsyncReadExt;

/// The directory of the work directory whose files become artifacts at exit.
pub const ARTIFACTS_DIR: &str = "artifacts";

/// How much of a file is read at a time.
const READ_BYTES: usize = 256 * 1024;

/// Why a file was not stored.
#[derive(Debug, thiserror::Error)]
pub enum FileRefused {
    /// The path is not a file inside the work directory.
    #[error("artifact `{path}`: {reason}")]
    Path {
        /// The path as the child gave it.
        path: String,
        /// What is wrong with it.
        reason: String,
    },
    /// The file could not be read.
    #[error("artifact `{}`: cannot read: {source}", path.display())]
    Read {
        /// The file.
        path: PathBuf,
        /// The cause.
        source: std::io::Error,
    },
    /// The service refused or failed (lease lost, job ended, too large, storage fault).
    #[error(transparent)]
    Core(#[from] CoreError),
}

/// The file `relative` names inside `work_dir`: a relative path without `..`, which after
/// symbolic links are followed is still inside the work directory and is a regular file.
pub fn file_in(work_dir: &Path, relative: &str) -> Result<PathBuf, FileRefused> {
    let refuse = |reason: &str| FileRefused::Path {
        path: relative.to_owned(),
        reason: reason.to_owned(),
    };
    let path = Path::new(relative);
    if relative.is_empty()
        || !path
            .components()
            .all(|part| matches!(part, Component::Normal(_) | Component::CurDir))
    {
        return Err(refuse(
            "must be a relative path inside the work directory, without `..`",
        ));
    }
    let root = work_dir
        .canonicalize()
        .map_err(|source| FileRefused::Read {
            path: work_dir.to_owned(),
            source,
        })?;
    let file = work_dir
        .join(path)
        .canonicalize()
        .map_err(|source| FileRefused::Read {
            path: work_dir.join(path),
            source,
        })?;
    if !file.starts_with(&root) {
        return Err(refuse("leads outside the work directory"));
    }
    if !file.is_file() {
        return Err(refuse("is not a regular file"));
    }
    Ok(file)
}

/// Stores the file `relative` (inside `work_dir`) as artifact `name` (default: the file's own
/// name) of job `job_id`, streamed from disk.
pub async fn store_file(
    service: &JobService,
    job_id: &str,
    work_dir: &Path,
    relative: &str,
    name: Option<&str>,
    content_type: Option<&str>,
    writer: Writer,
) -> Result<Artifact, FileRefused> {
    let file = file_in(work_dir, relative)?;
    let name = match name {
        Some(name) => name.to_owned(),
        None => Path::new(relative)
            .file_name()
            .and_then(|name| name.to_str())
            .unwrap_or_default()
            .to_owned(),
    };
    let read_error = |source| FileRefused::Read {
        path: file.clone(),
        source,
    };
    let mut reader = tokio::fs::File::open(&file).await.map_err(read_error)?;
    let size = reader.metadata().await.map_err(read_error)?.len();
    let mut upload = service
        .begin_artifact(job_id, &name, content_type, Some(size), writer)
        .await?;
    let mut buffer = vec![0_u8; READ_BYTES];
    loop {
        let read = reader.read(&mut buffer).await.map_err(read_error)?;
        if read == 0 {
            break;
        }
        upload.write(&buffer[..read]).await?;
    }
    Ok(upload.finish().await?.artifact)
}

/// The SHA-256 of a file, lowercase hex.
async fn sha256_of(path: &Path) -> std::io::Result<String> {
    let mut reader = tokio::fs::File::open(path).await?;
    let mut hasher = Sha256::new();
    let mut buffer = vec![0_u8; READ_BYTES];
    loop {
        let read = reader.read(&mut buffer).await?;
        if read == 0 {
            return Ok(format!("{:x}", hasher.finalize()));
        }
        hasher.update(&buffer[..read]);
    }
}

/// Stores the files directly under `work_dir/artifacts/`, by name, skipping those stored
/// already with the same bytes (a `{"artifact"}` line may have named them). Files that cannot
/// be artifacts (a subdirectory, a name outside the rule) are reported through `skipped` and
/// left; a refusal of the service (lease lost, job ended) ends the collection.
pub async fn collect(
    service: &JobService,
    job_id: &str,
    work_dir: &Path,
    writer: &Writer,
    mut skipped: impl FnMut(String),
) -> Result<usize, FileRefused> {
    let dir = work_dir.join(ARTIFACTS_DIR);
    let mut entries = match std::fs::read_dir(&dir) {
        Ok(entries) => entries
            .filter_map(|entry| entry.ok())
            .map(|entry| entry.file_name())
            .collect::<Vec<_>>(),
        Err(err) if err.kind() == std::io::ErrorKind::NotFound => return Ok(0),
        Err(source) => return Err(FileRefused::Read { path: dir, source }),
    };
    entries.sort();
    let stored = service.artifacts(job_id).await?;
    let mut count = 0;
    for entry in entries {
        let Some(name) = entry.to_str() else {
            skipped(format!(
                "{ARTIFACTS_DIR}/{}: the name is not UTF-8",
                entry.to_string_lossy()
            ));
            continue;
        };
        if let Err(err) = validate_artifact_name(name) {
            skipped(format!("{ARTIFACTS_DIR}/{name}: {err}"));
            continue;
        }
        let relative = format!("{ARTIFACTS_DIR}/{name}");
        let file = match file_in(work_dir, &relative) {
            Ok(file) => file,
            Err(err) => {
                skipped(err.to_string());
                continue;
            }
        };
        let same = match stored.iter().find(|artifact| artifact.name == name) {
            Some(artifact) if std::fs::metadata(&file).is_ok_and(|m| m.len() == artifact.size) => {
                sha256_of(&file)
                    .await
                    .is_ok_and(|sha256| sha256 == artifact.sha256)
            }
            _ => false,
        };
        if same {
            continue;
        }
        match store_file(
            service,
            job_id,
            work_dir,
            &relative,
            None,
            None,
            writer.clone(),
        )
        .await
        {
            Ok(_) => count += 1,
            Err(FileRefused::Core(err)) if err.lease_lost() || err.job_has_ended() => {
                return Err(FileRefused::Core(err));
            }
            Err(err) => skipped(err.to_string()),
        }
    }
    Ok(count)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_regular_files_inside_the_work_directory_qualify() {
        let dir = tempfile::tempdir().expect("temp dir");
        let work = dir.path().join("work");
        std::fs::create_dir_all(work.join("out")).expect("mkdir");
        std::fs::write(work.join("out/a.json"), b"{}").expect("write");
        std::fs::write(dir.path().join("secret"), b"x").expect("write");
        assert!(file_in(&work, "out/a.json").is_ok());
        assert!(file_in(&work, "./out/a.json").is_ok());
        for bad in [
            "",
            "/etc/passwd",
            "../secret",
            "out/../../secret",
            "out",
            "missing.json",
        ] {
            assert!(file_in(&work, bad).is_err(), "{bad}");
        }
        #[cfg(unix)]
        {
            std::os::unix::fs::symlink(dir.path().join("secret"), work.join("link"))
                .expect("symlink");
            let refused = file_in(&work, "link");
            assert!(
                matches!(&refused, Err(FileRefused::Path { reason, .. }) if reason.contains("outside")),
                "{refused:?}"
            );
        }
    }
}
