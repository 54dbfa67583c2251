//! Validators shared by the server and its clients: ids, types, metadata and progress numbers.

use serde_json::{Map, Value};

/// Longest job id or job type accepted.
pub const MAX_ID_LEN: usize = 64;

/// What [`validate_job_id`] accepts, as a regular expression (the OpenAPI document's
/// `pattern`; a test ties the two together).
pub const JOB_ID_PATTERN: &str = "^[A-Za-z0-9_-]{1,64}$";

/// What [`validate_job_type`] accepts, as a regular expression.
pub const JOB_TYPE_PATTERN: &str = "^[a-z0-9_-]{1,64}$";

/// Largest metadata object accepted, serialized as JSON.
pub const MAX_METADATA_BYTES: usize = 64 * 1024;

/// Why a value was refused. Messages are lowercase and name the value at fault.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum ValidationError {
    /// A job id outside `[A-Za-z0-9_-]{1,64}`.
    #[error("invalid job id `{0}`: expected 1 to 64 characters of A-Z, a-z, 0-9, `_` or `-`")]
    JobId(String),
    /// A job type outside `[a-z0-9_-]{1,64}`.
    #[error("invalid job type `{0}`: expected 1 to 64 characters of a-z, 0-9, `_` or `-`")]
    JobType(String),
    /// Metadata larger than [`MAX_METADATA_BYTES`].
    #[error("metadata is {0} bytes, more than the limit of {MAX_METADATA_BYTES}")]
    MetadataTooLarge(usize),
    /// Progress outside `0..=1` or not a number.
    #[error("progress must be between 0 and 1, got {0}")]
    Progress(f64),
    /// Cost negative or not finite.
    #[error("cost_usd must be a finite number of dollars, at least 0, got {0}")]
    Cost(f64),
    /// Metric not finite.
    #[error("metric must be a finite number, got {0}")]
    Metric(f64),
    /// A limit in the metadata (`budget_usd`, `time_limit_seconds`, …) is not a positive
    /// number.
    #[error("metadata `{field}` must be {expected}, got {got}")]
    Limit {
        /// The metadata key.
        field: &'static str,
        /// What it must be.
        expected: &'static str,
        /// What it was, as JSON.
        got: String,
    },
    /// A worker write's `attempt` / `lease_token` pair is incomplete or malformed.
    #[error("invalid fence: {0}")]
    Fence(&'static str),
    /// A claim's worker name outside `[A-Za-z0-9_.:@/-]{1,128}`.
    #[error(
        "invalid worker name `{0}`: expected 1 to 128 characters of A-Z, a-z, 0-9, `_`, `.`, `:`, `@`, `/` or `-`"
    )]
    WorkerName(String),
    /// An artifact name outside `[A-Za-z0-9._-]{1,128}` or starting with `.`.
    #[error(
        "invalid artifact name `{0}`: expected 1 to 128 characters of A-Z, a-z, 0-9, `.`, `_` or `-`, not starting with `.`"
    )]
    ArtifactName(String),
    /// A content type that is not `type/subtype` (with optional parameters) of printable
    /// ASCII, at most 127 characters.
    #[error(
        "invalid content type `{0}`: expected `type/subtype`, at most 127 printable characters"
    )]
    ContentType(String),
}

/// Share of the budget at which a warning is emitted, unless the metadata sets
/// `budget_warning_fraction`.
pub const DEFAULT_BUDGET_WARNING_FRACTION: f64 = 0.8;

/// The spending and time limits a job's metadata may carry, enforced by the server for every
/// job, whoever runs it.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct JobLimits {
    /// `budget_usd`: the job is cancelled once its reported cumulative cost passes this.
    pub budget_usd: Option<f64>,
    /// `budget_warning_fraction`: share of the budget at which one warning is emitted.
    pub budget_warning_fraction: f64,
    /// `time_limit_seconds`: the job is cancelled this long after it started.
    pub time_limit_seconds: Option<f64>,
}

impl JobLimits {
    /// Reads and checks the limits in a job's metadata: each must be a finite number > 0
    /// (the warning fraction at most 1); absent or `null` means no limit.
    pub fn from_metadata(metadata: &Map<String, Value>) -> Result<JobLimits, ValidationError> {
        let positive =
            |field: &'static str, max: Option<f64>| -> Result<Option<f64>, ValidationError> {
                match metadata.get(field) {
                    None | Some(Value::Null) => Ok(None),
                    Some(value) => match value.as_f64() {
                        Some(n) if n.is_finite() && n > 0.0 && max.is_none_or(|max| n <= max) => {
                            Ok(Some(n))
                        }
                        _ => Err(ValidationError::Limit {
                            field,
                            expected: if max.is_some() {
                                "a number above 0 and at most 1"
                            } else {
                                "a number above 0"
                            },
                            got: value.to_string(),
                        }),
                    },
                }
            };
        Ok(JobLimits {
            budget_usd: positive("budget_usd", None)?,
            budget_warning_fraction: positive("budget_warning_fraction", Some(1.0))?
                .unwrap_or(DEFAULT_BUDGET_WARNING_FRACTION),
            time_limit_seconds: positive("time_limit_seconds", None)?,
        })
    }
}

fn shown(value: &str) -> String {
    value.chars().take(MAX_ID_LEN + 16).collect()
}

/// Checks a job id: `[A-Za-z0-9_-]{1,64}`, so it can never be a path or escape a directory.
pub fn validate_job_id(id: &str) -> Result<(), ValidationError> {
    let ok = (1..=MAX_ID_LEN).contains(&id.len())
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-');
    if ok {
        Ok(())
    } else {
        Err(ValidationError::JobId(shown(id)))
    }
}

/// Checks a job type: `[a-z0-9_-]{1,64}`.
pub fn validate_job_type(job_type: &str) -> Result<(), ValidationError> {
    let ok = (1..=MAX_ID_LEN).contains(&job_type.len())
        && job_type
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_' || b == b'-');
    if ok {
        Ok(())
    } else {
        Err(ValidationError::JobType(shown(job_type)))
    }
}

/// Checks that metadata serializes to at most [`MAX_METADATA_BYTES`].
pub fn validate_metadata(metadata: &Map<String, Value>) -> Result<(), ValidationError> {
    let size = Value::Object(metadata.clone()).to_string().len();
    if size > MAX_METADATA_BYTES {
        Err(ValidationError::MetadataTooLarge(size))
    } else {
        Ok(())
    }
}

/// Checks a progress fraction: finite and in `0..=1`.
pub fn validate_progress(progress: f64) -> Result<(), ValidationError> {
    if (0.0..=1.0).contains(&progress) {
        Ok(())
    } else {
        Err(ValidationError::Progress(progress))
    }
}

/// Checks a cumulative cost: finite and not negative.
pub fn validate_cost(cost_usd: f64) -> Result<(), ValidationError> {
    if cost_usd.is_finite() && cost_usd >= 0.0 {
        Ok(())
    } else {
        Err(ValidationError::Cost(cost_usd))
    }
}

/// Checks a metric: any finite number.
pub fn validate_metric(metric: f64) -> Result<(), ValidationError> {
    if metric.is_finite() {
        Ok(())
    } else {
        Err(ValidationError::Metric(metric))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn job_ids_cannot_be_paths() {
        for good in [
            "a",
            "job-1",
            "JOB_2",
            "0190c3e2-7b7a-7c00-8000-000000000000",
        ] {
            assert_eq!(validate_job_id(good), Ok(()), "{good}");
        }
        let too_long = "x".repeat(65);
        for bad in ["", "../etc", "a/b", "a b", "é", ".", too_long.as_str()] {
            assert!(validate_job_id(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn job_types_are_lowercase_words() {
        assert_eq!(validate_job_type("optimization"), Ok(()));
        assert_eq!(validate_job_type("eval-2_b"), Ok(()));
        for bad in ["", "Optimization", "a.b", "a/b"] {
            assert!(validate_job_type(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn metadata_is_bounded() {
        let mut small = Map::new();
        small.insert("model".into(), Value::from("gpt-4o-mini"));
        assert_eq!(validate_metadata(&small), Ok(()));
        let mut big = Map::new();
        big.insert("blob".into(), Value::from("x".repeat(MAX_METADATA_BYTES)));
        assert!(matches!(
            validate_metadata(&big),
            Err(ValidationError::MetadataTooLarge(_))
        ));
    }

    #[test]
    fn limits_must_be_positive_numbers() {
        let metadata = |json: &str| serde_json::from_str::<Map<String, Value>>(json).unwrap();
        let limits = JobLimits::from_metadata(&metadata(
            r#"{"budget_usd": 2, "time_limit_seconds": 3600.5, "model": "m"}"#,
        ))
        .unwrap();
        assert_eq!(limits.budget_usd, Some(2.0));
        assert_eq!(limits.time_limit_seconds, Some(3600.5));
        assert_eq!(
            limits.budget_warning_fraction,
            DEFAULT_BUDGET_WARNING_FRACTION
        );
        let none = JobLimits::from_metadata(&metadata(r#"{"budget_usd": null}"#)).unwrap();
        assert_eq!(none.budget_usd, None);
        for bad in [
            r#"{"budget_usd": 0}"#,
            r#"{"budget_usd": -1}"#,
            r#"{"budget_usd": "2.00"}"#,
            r#"{"time_limit_seconds": 0}"#,
            r#"{"budget_warning_fraction": 1.5}"#,
        ] {
            let err = JobLimits::from_metadata(&metadata(bad)).unwrap_err();
            assert!(err.to_string().starts_with("metadata `"), "{bad}: {err}");
        }
    }

    #[test]
    fn numbers_are_checked() {
        assert!(validate_progress(0.0).is_ok() && validate_progress(1.0).is_ok());
        assert!(validate_progress(-0.1).is_err() && validate_progress(f64::NAN).is_err());
        assert!(validate_cost(0.0).is_ok() && validate_cost(12.5).is_ok());
        assert!(validate_cost(-1.0).is_err() && validate_cost(f64::INFINITY).is_err());
        assert!(validate_metric(-1.0).is_ok() && validate_metric(f64::NAN).is_err());
    }
}

/// The patterns the OpenAPI document states are the validators' rules: same characters, same
/// lengths (no regex engine here: each pattern is a character class and a count, expanded).
#[cfg(test)]
mod pattern_tests {
    use crate::{
        ARTIFACT_NAME_PATTERN, JOB_ID_PATTERN, JOB_TYPE_PATTERN, MAX_ARTIFACT_NAME_LEN, MAX_ID_LEN,
        MAX_WORKER_NAME_LEN, WORKER_NAME_PATTERN, validate_artifact_name, validate_job_id,
        validate_job_type, validate_worker_name,
    };

    /// The bytes of a class body such as `A-Za-z0-9_-` (a `-` last is itself).
    fn class(body: &str) -> Vec<u8> {
        let bytes = body.as_bytes();
        let mut out = Vec::new();
        let mut i = 0;
        while i < bytes.len() {
            if i + 2 < bytes.len() && bytes[i + 1] == b'-' {
                out.extend(bytes[i]..=bytes[i + 2]);
                i += 3;
            } else {
                out.push(bytes[i]);
                i += 1;
            }
        }
        out
    }

    /// `^[CLASS]{1,N}$` as its class and `N`.
    fn simple(pattern: &str) -> (Vec<u8>, usize) {
        let inner = pattern
            .strip_prefix("^[")
            .unwrap()
            .strip_suffix("}$")
            .unwrap();
        let (body, count) = inner.split_once("]{1,").unwrap();
        (class(body), count.parse().unwrap())
    }

    fn check(pattern: &str, max: usize, validate: impl Fn(&str) -> bool) {
        let (allowed, count) = simple(pattern);
        assert_eq!(count, max, "{pattern}");
        for byte in 0u8..=127 {
            let one = (byte as char).to_string();
            assert_eq!(
                validate(&one),
                allowed.contains(&byte),
                "{pattern}: {one:?}"
            );
        }
        assert!(!validate(""), "{pattern}: empty");
        assert!(validate(&"a".repeat(max)), "{pattern}: {max} characters");
        assert!(
            !validate(&"a".repeat(max + 1)),
            "{pattern}: {} characters",
            max + 1
        );
        assert!(!validate("é"), "{pattern}: non-ASCII");
    }

    #[test]
    fn the_documented_patterns_are_the_validators_rules() {
        check(JOB_ID_PATTERN, MAX_ID_LEN, |s| validate_job_id(s).is_ok());
        check(JOB_TYPE_PATTERN, MAX_ID_LEN, |s| {
            validate_job_type(s).is_ok()
        });
        check(WORKER_NAME_PATTERN, MAX_WORKER_NAME_LEN, |s| {
            validate_worker_name(s).is_ok()
        });
        // `^[FIRST][REST]{0,N-1}$`
        let inner = ARTIFACT_NAME_PATTERN.strip_prefix("^[").unwrap();
        let (first, rest) = inner.split_once("][").unwrap();
        let (rest, count) = rest.split_once("]{0,").unwrap();
        let count: usize = count.strip_suffix("}$").unwrap().parse().unwrap();
        assert_eq!(count + 1, MAX_ARTIFACT_NAME_LEN);
        let (first, rest) = (class(first), class(rest));
        for byte in 0u8..=127 {
            let c = byte as char;
            assert_eq!(
                validate_artifact_name(&c.to_string()).is_ok(),
                first.contains(&byte),
                "{c:?} first"
            );
            assert_eq!(
                validate_artifact_name(&format!("a{c}")).is_ok(),
                rest.contains(&byte),
                "{c:?} after the first"
            );
        }
        assert!(validate_artifact_name(&"a".repeat(MAX_ARTIFACT_NAME_LEN)).is_ok());
        assert!(validate_artifact_name(&"a".repeat(MAX_ARTIFACT_NAME_LEN + 1)).is_err());
    }
}
