//! Artifacts: the files a job produces (an optimized program, a scores table, a plot), their
//! names, their listing, and how a worker's upload proves it owns the job.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::lease::Fence;
use crate::validate::ValidationError;

/// Longest artifact name accepted.
pub const MAX_ARTIFACT_NAME_LEN: usize = 128;

/// The request header of an artifact upload that carries the claim's `attempt` (with
/// [`LEASE_TOKEN_HEADER`]): the body of an upload is the file, so its fence travels in
/// headers.
pub const ATTEMPT_HEADER: &str = "skill-fleet-attempt";

/// The request header of an artifact upload that carries the claim's `lease_token` (with
/// [`ATTEMPT_HEADER`]).
pub const LEASE_TOKEN_HEADER: &str = "skill-fleet-lease-token";

/// The prefix of a `result_path` that names one of the job's artifacts
/// (`artifact:program.json`).
pub const RESULT_ARTIFACT_PREFIX: &str = "artifact:";

/// The content type of an artifact whose upload named none and whose extension says nothing.
pub const DEFAULT_CONTENT_TYPE: &str = "application/octet-stream";

/// Longest content type kept.
pub const MAX_CONTENT_TYPE_LEN: usize = 127;

/// One stored artifact of a job.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Artifact {
    /// Its name, unique within the job: `[A-Za-z0-9._-]{1,128}`, not starting with `.`.
    pub name: String,
    /// Its length in bytes.
    pub size: u64,
    /// The SHA-256 of its bytes, lowercase hex; its download's strong `ETag` is this, quoted.
    pub sha256: String,
    /// The media type it was uploaded with, or guessed from its name's extension.
    pub content_type: String,
    /// When it was stored (a replaced artifact's time is its replacement's).
    pub created_at: DateTime<Utc>,
    /// The attempt of the job that stored it (`null` for an operator's upload).
    pub attempt: Option<u32>,
}

impl Artifact {
    /// The strong `ETag` of its download: the SHA-256, quoted.
    pub fn etag(&self) -> String {
        format!("\"{}\"", self.sha256)
    }
}

/// Body of `GET /api/v1/jobs/{id}/artifacts`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct ArtifactList {
    /// The job.
    pub job_id: String,
    /// Its stored artifacts, by name.
    pub artifacts: Vec<Artifact>,
    /// Their sizes added up (what counts against the per-job limit).
    pub total_bytes: u64,
}

/// What [`validate_artifact_name`] accepts, as a regular expression (the OpenAPI document's
/// `pattern`).
pub const ARTIFACT_NAME_PATTERN: &str = "^[A-Za-z0-9_-][A-Za-z0-9._-]{0,127}$";

/// Checks an artifact name: 1 to [`MAX_ARTIFACT_NAME_LEN`] characters of `A-Z`, `a-z`,
/// `0-9`, `.`, `_` or `-`, not starting with `.`. So a name is one plain file name: never a
/// path, never `.` or `..`, never hidden, and safe in a URL and a `Content-Disposition`.
pub fn validate_artifact_name(name: &str) -> Result<(), ValidationError> {
    let ok = (1..=MAX_ARTIFACT_NAME_LEN).contains(&name.len())
        && !name.starts_with('.')
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'));
    if ok {
        Ok(())
    } else {
        Err(ValidationError::ArtifactName(
            name.chars().take(MAX_ARTIFACT_NAME_LEN + 16).collect(),
        ))
    }
}

/// Checks a content type as an upload states it: `type/subtype` with optional parameters,
/// printable ASCII, at most [`MAX_CONTENT_TYPE_LEN`] characters.
pub fn validate_content_type(content_type: &str) -> Result<(), ValidationError> {
    let essence = content_type.split(';').next().unwrap_or("").trim();
    let token = |part: &str| {
        !part.is_empty()
            && part
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"!#$&-^_.+".contains(&b))
    };
    let ok = content_type.len() <= MAX_CONTENT_TYPE_LEN
        && content_type.bytes().all(|b| (0x20..0x7f).contains(&b))
        && essence
            .split_once('/')
            .is_some_and(|(kind, sub)| token(kind) && token(sub));
    if ok {
        Ok(())
    } else {
        Err(ValidationError::ContentType(
            content_type
                .chars()
                .take(MAX_CONTENT_TYPE_LEN + 16)
                .collect(),
        ))
    }
}

/// The content type of a file named `name`, from its extension: the few kinds a job
/// produces that a browser previews, else [`DEFAULT_CONTENT_TYPE`].
pub fn content_type_for(name: &str) -> &'static str {
    let extension = name
        .rsplit_once('.')
        .map(|(_, ext)| ext.to_ascii_lowercase())
        .unwrap_or_default();
    match extension.as_str() {
        "json" => "application/json",
        "jsonl" | "ndjson" => "application/x-ndjson",
        "txt" | "log" | "md" => "text/plain; charset=utf-8",
        "csv" => "text/csv; charset=utf-8",
        "tsv" => "text/tab-separated-values; charset=utf-8",
        "html" | "htm" => "text/html; charset=utf-8",
        "png" => "image/png",
        "jpg" | "jpeg" => "image/jpeg",
        "gif" => "image/gif",
        "webp" => "image/webp",
        "svg" => "image/svg+xml",
        "pdf" => "application/pdf",
        "yaml" | "yml" => "application/yaml",
        "toml" => "application/toml",
        "pkl" | "pickle" => "application/octet-stream",
        "gz" => "application/gzip",
        "zip" => "application/zip",
        "parquet" => "application/vnd.apache.parquet",
        _ => DEFAULT_CONTENT_TYPE,
    }
}

/// The artifact a `result_path` names (`artifact:NAME` → `NAME`), if it names one.
pub fn result_artifact(result_path: &str) -> Option<&str> {
    result_path.strip_prefix(RESULT_ARTIFACT_PREFIX)
}

/// The fence of an upload from its two header values (both or neither).
pub fn fence_from_headers(
    attempt: Option<&str>,
    lease_token: Option<&str>,
) -> Result<Option<Fence>, ValidationError> {
    let attempt = attempt
        .map(|value| {
            value
                .trim()
                .parse::<u32>()
                .map_err(|_| ValidationError::Fence("the attempt header is not a whole number"))
        })
        .transpose()?;
    Fence::from_fields(attempt, lease_token.map(str::to_owned))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_plain_file_names() {
        for good in [
            "program.json",
            "scores.csv",
            "a",
            "A-b_c.1.png",
            "x".repeat(128).as_str(),
        ] {
            assert_eq!(validate_artifact_name(good), Ok(()), "{good}");
        }
        for bad in [
            "",
            ".",
            "..",
            ".hidden",
            "../etc/passwd",
            "a/b",
            "a\\b",
            "a b",
            "naïve.txt",
            "a\0b",
            "x".repeat(129).as_str(),
        ] {
            assert!(validate_artifact_name(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn content_types_are_checked_and_guessed() {
        assert_eq!(validate_content_type("application/json"), Ok(()));
        assert_eq!(validate_content_type("text/plain; charset=utf-8"), Ok(()));
        assert!(validate_content_type("json").is_err());
        assert!(validate_content_type("text/\nplain").is_err());
        assert!(validate_content_type(&format!("a/{}", "b".repeat(200))).is_err());
        assert_eq!(content_type_for("program.JSON"), "application/json");
        assert_eq!(content_type_for("plot.png"), "image/png");
        assert_eq!(content_type_for("noextension"), DEFAULT_CONTENT_TYPE);
    }

    #[test]
    fn result_paths_name_artifacts_by_prefix() {
        assert_eq!(
            result_artifact("artifact:program.json"),
            Some("program.json")
        );
        assert_eq!(result_artifact("/tmp/program.json"), None);
    }

    #[test]
    fn upload_fences_come_from_both_headers() {
        assert_eq!(fence_from_headers(None, None), Ok(None));
        let fence = fence_from_headers(Some("2"), Some("tok")).expect("valid");
        assert_eq!(fence.map(|f| f.attempt), Some(2));
        assert!(fence_from_headers(Some("two"), Some("tok")).is_err());
        assert!(fence_from_headers(Some("2"), None).is_err());
    }
}
