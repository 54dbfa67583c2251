//! The executor protocol: what one line of a child's stdout means (see docs/PROTOCOL.md).
//!
//! - a JSON object with `result` and/or `result_path`: the job's result (last one wins);
//! - a JSON object with `artifact` (a file's path in the work directory, with optional
//!   `name` and `content_type`): store that file as an artifact now;
//! - a JSON object with any of `step`, `progress`, `cost_usd`, `metric`, `message`,
//!   `checkpoint`: a progress update (fields left out keep their values);
//! - anything else (plain text, JSON that is not an object): a log line.
//!
//! A JSON object whose known fields have the wrong type or an out-of-range value (progress
//! 7, negative cost) is reported and skipped; unknown fields are ignored, so runners can
//! add their own.

use serde_json::{Map, Value};
use skill_fleet_types::ProgressUpdate;

/// Fields of a progress update line.
const PROGRESS_FIELDS: [&str; 6] = [
    "step",
    "progress",
    "cost_usd",
    "metric",
    "message",
    "checkpoint",
];

/// What a line of stdout says.
#[derive(Debug, Clone, PartialEq)]
pub enum Line {
    /// A protocol message: a progress update, a result, or both.
    Message {
        /// The progress part, if the line had progress fields.
        update: Option<ProgressUpdate>,
        /// The result part, if the line had `result` or `result_path`.
        result: Option<JobResult>,
    },
    /// A file to store as an artifact of the job.
    Artifact(ArtifactLine),
    /// Not a protocol message: kept in the log tail.
    Log(String),
    /// A protocol message with a bad value: reported, skipped.
    Invalid {
        /// The line as read.
        line: String,
        /// What is wrong with it.
        reason: String,
    },
}

/// The final result a child reports.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct JobResult {
    /// The JSON result.
    pub result: Option<Value>,
    /// Where the child wrote its result.
    pub result_path: Option<String>,
}

/// A `{"artifact": PATH}` line: store the file at PATH (relative to the work directory) as an
/// artifact.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ArtifactLine {
    /// The file, relative to the work directory (and inside it).
    pub path: String,
    /// The artifact's name; the file's own name when absent.
    pub name: Option<String>,
    /// Its content type; guessed from the name when absent.
    pub content_type: Option<String>,
}

/// Reads one line of a child's stdout.
pub fn parse_line(line: &str) -> Line {
    let trimmed = line.trim();
    if !trimmed.starts_with('{') {
        return Line::Log(line.to_owned());
    }
    let Ok(mut object) = serde_json::from_str::<Map<String, Value>>(trimmed) else {
        return Line::Log(line.to_owned());
    };
    let invalid = |reason: String| Line::Invalid {
        line: line.to_owned(),
        reason,
    };
    if let Some(path) = object.remove("artifact") {
        let text = |field: &str, value: Option<Value>| match value {
            None | Some(Value::Null) => Ok(None),
            Some(Value::String(text)) => Ok(Some(text)),
            Some(other) => Err(format!("{field} must be a string, got {other}")),
        };
        return match (
            text("artifact", Some(path)),
            text("name", object.remove("name")),
            text("content_type", object.remove("content_type")),
        ) {
            (Ok(Some(path)), Ok(name), Ok(content_type)) => Line::Artifact(ArtifactLine {
                path,
                name,
                content_type,
            }),
            (Ok(None), _, _) => invalid("artifact must name a file".to_owned()),
            (Err(reason), _, _) | (_, Err(reason), _) | (_, _, Err(reason)) => invalid(reason),
        };
    }
    let result = if object.contains_key("result") || object.contains_key("result_path") {
        let result_path = match object.remove("result_path") {
            None | Some(Value::Null) => None,
            Some(Value::String(path)) => Some(path),
            Some(other) => return invalid(format!("result_path must be a string, got {other}")),
        };
        Some(JobResult {
            result: object.remove("result").filter(|value| !value.is_null()),
            result_path,
        })
    } else {
        None
    };
    let progress: Map<String, Value> = PROGRESS_FIELDS
        .iter()
        .filter_map(|field| {
            object
                .remove(*field)
                .map(|value| ((*field).to_owned(), value))
        })
        .filter(|(_, value)| !value.is_null())
        .collect();
    let update = if progress.is_empty() {
        None
    } else {
        let update = match serde_json::from_value::<ProgressUpdate>(Value::Object(progress)) {
            Ok(update) => update,
            Err(err) => return invalid(err.to_string()),
        };
        if let Err(err) = update.validate() {
            return invalid(err.to_string());
        }
        Some(update)
    };
    if update.is_none() && result.is_none() {
        // A JSON object that says nothing we know: keep it as a log line.
        return Line::Log(line.to_owned());
    }
    Line::Message { update, result }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn progress_lines_become_updates() {
        let line =
            parse_line(r#"{"step": "proposing_instructions", "progress": 0.35, "cost_usd": 0.85}"#);
        let Line::Message {
            update: Some(update),
            result: None,
        } = line
        else {
            panic!("{line:?}");
        };
        assert_eq!(update.step.as_deref(), Some("proposing_instructions"));
        assert_eq!(update.progress, Some(0.35));
        assert_eq!(update.cost_usd, Some(0.85));
    }

    #[test]
    fn checkpoints_and_results_are_recognised() {
        let line = parse_line(r#"{"checkpoint": {"trial": 3, "best": 0.7}}"#);
        assert!(matches!(
            line,
            Line::Message {
                update: Some(ProgressUpdate {
                    checkpoint: Some(_),
                    ..
                }),
                ..
            }
        ));
        let line = parse_line(r#"{"result": {"score": 0.84}, "result_path": "out/best.json"}"#);
        assert_eq!(
            line,
            Line::Message {
                update: None,
                result: Some(JobResult {
                    result: Some(json!({"score": 0.84})),
                    result_path: Some("out/best.json".to_owned()),
                }),
            }
        );
    }

    #[test]
    fn other_output_is_a_log_line() {
        for text in [
            "Loading model...",
            "",
            "[1, 2]",
            "{not json",
            r#"{"hello": "world"}"#,
        ] {
            assert_eq!(parse_line(text), Line::Log(text.to_owned()), "{text}");
        }
    }

    #[test]
    fn bad_values_are_invalid_not_applied() {
        for text in [
            r#"{"progress": 7}"#,
            r#"{"cost_usd": -1}"#,
            r#"{"progress": "half"}"#,
            r#"{"result_path": 3}"#,
        ] {
            assert!(matches!(parse_line(text), Line::Invalid { .. }), "{text}");
        }
    }

    #[test]
    fn artifact_lines_name_a_file() {
        assert_eq!(
            parse_line(r#"{"artifact": "out/program.json"}"#),
            Line::Artifact(ArtifactLine {
                path: "out/program.json".to_owned(),
                name: None,
                content_type: None,
            })
        );
        assert_eq!(
            parse_line(
                r#"{"artifact": "p.bin", "name": "model.bin", "content_type": "application/x-model"}"#
            ),
            Line::Artifact(ArtifactLine {
                path: "p.bin".to_owned(),
                name: Some("model.bin".to_owned()),
                content_type: Some("application/x-model".to_owned()),
            })
        );
        for text in [
            r#"{"artifact": 3}"#,
            r#"{"artifact": null}"#,
            r#"{"artifact": "a", "name": 1}"#,
        ] {
            assert!(matches!(parse_line(text), Line::Invalid { .. }), "{text}");
        }
    }

    #[test]
    fn unknown_fields_are_ignored() {
        let line = parse_line(r#"{"progress": 0.5, "trial_id": 17}"#);
        assert!(
            matches!(
                line,
                Line::Message {
                    update: Some(_),
                    ..
                }
            ),
            "{line:?}"
        );
    }
}
