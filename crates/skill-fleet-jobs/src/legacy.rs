//! Import of jobs from the old Python job manager: a JSON array export, or a directory of
//! per-job session files (`.skill_fleet_sessions/<uuid>.json`).

use std::fs;
use std::path::Path;

use chrono::{DateTime, NaiveDateTime, Utc};
use diesel::prelude::*;
use serde_json::{Map, Value};
use skill_fleet_types::{JobStatus, validate_job_id, validate_job_type, validate_metadata};

use crate::error::{Result, StoreError};
use crate::models::jobs::{JobRow, create_body};
use crate::models::legacy_imports::NewLegacyImport;
use crate::models::truncate_micros;
use crate::schema::jobs;
use crate::store::JobStore;

/// `source` of every imported job.
pub const LEGACY_SOURCE: &str = "memory_migration";
/// Error of a job that was `running` in the legacy export.
pub const IMPORTED_RUNNING_ERROR: &str = "interrupted: imported while running";
/// Type of a legacy job that names none.
pub const DEFAULT_LEGACY_TYPE: &str = "optimization";

/// What [`JobStore::import_legacy`] did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ImportReport {
    /// Jobs inserted.
    pub imported: usize,
    /// Records whose id already existed.
    pub skipped: usize,
    /// Records (or files) that could not be imported.
    pub failed: usize,
    /// One line per failure: where, and why.
    pub errors: Vec<String>,
}

/// One record read from the legacy source: where it came from and its JSON, or why it
/// could not be read.
struct Record {
    origin: String,
    fallback_id: Option<String>,
    value: std::result::Result<Value, String>,
}

fn io_error(path: &Path) -> impl FnOnce(std::io::Error) -> StoreError + '_ {
    move |source| StoreError::Io {
        path: path.to_owned(),
        source,
    }
}

fn read_records(path: &Path) -> Result<Vec<Record>> {
    if fs::metadata(path).map_err(io_error(path))?.is_dir() {
        let mut files = Vec::new();
        for entry in fs::read_dir(path).map_err(io_error(path))? {
            let file = entry.map_err(io_error(path))?.path();
            if file.extension().is_some_and(|ext| ext == "json") && file.is_file() {
                files.push(file);
            }
        }
        files.sort();
        return Ok(files
            .into_iter()
            .map(|file| Record {
                origin: file.display().to_string(),
                fallback_id: file
                    .file_stem()
                    .and_then(|stem| stem.to_str())
                    .map(str::to_owned),
                value: fs::read_to_string(&file)
                    .map_err(|err| err.to_string())
                    .and_then(|text| {
                        serde_json::from_str(&text).map_err(|err| format!("not valid json: {err}"))
                    }),
            })
            .collect());
    }
    let text = fs::read_to_string(path).map_err(io_error(path))?;
    let origin = path.display().to_string();
    match serde_json::from_str(&text) {
        Ok(Value::Array(items)) => Ok(items
            .into_iter()
            .enumerate()
            .map(|(index, value)| Record {
                origin: format!("{origin}[{index}]"),
                fallback_id: None,
                value: Ok(value),
            })
            .collect()),
        Ok(_) => Err(StoreError::InvalidInput(format!(
            "legacy export `{origin}` is not a json array of jobs"
        ))),
        Err(err) => Err(StoreError::InvalidInput(format!(
            "legacy export `{origin}` is not valid json: {err}"
        ))),
    }
}

fn take_string(
    map: &mut Map<String, Value>,
    keys: &[&str],
) -> std::result::Result<Option<String>, String> {
    for key in keys {
        match map.remove(*key) {
            None | Some(Value::Null) => {}
            Some(Value::String(text)) => return Ok(Some(text)),
            Some(Value::Number(n)) => return Ok(Some(n.to_string())),
            Some(other) => return Err(format!("`{key}` is not a string: {other}")),
        }
    }
    Ok(None)
}

fn take_number(
    map: &mut Map<String, Value>,
    key: &str,
) -> std::result::Result<Option<f64>, String> {
    match map.remove(key) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::Number(n)) => n
            .as_f64()
            .filter(|f| f.is_finite())
            .map(Some)
            .ok_or_else(|| format!("`{key}` is not a finite number")),
        Some(other) => Err(format!("`{key}` is not a number: {other}")),
    }
}

/// A fraction from 0..=1, or a percentage from 0..=100.
fn fraction(value: f64, key: &str) -> std::result::Result<f64, String> {
    if (0.0..=1.0).contains(&value) {
        Ok(value)
    } else if (0.0..=100.0).contains(&value) {
        Ok(value / 100.0)
    } else {
        Err(format!("`{key}` {value} is outside 0..=1 and 0..=100"))
    }
}

fn percent(value: f64, key: &str) -> std::result::Result<f64, String> {
    if (0.0..=100.0).contains(&value) {
        Ok(value / 100.0)
    } else {
        Err(format!("`{key}` {value} is outside 0..=100"))
    }
}

fn parse_time(value: &Value, key: &str) -> std::result::Result<NaiveDateTime, String> {
    let parsed = match value {
        Value::String(text) => DateTime::parse_from_rfc3339(text)
            .map(|t| t.with_timezone(&Utc))
            .ok()
            .or_else(|| {
                ["%Y-%m-%dT%H:%M:%S%.f", "%Y-%m-%d %H:%M:%S%.f"]
                    .iter()
                    .find_map(|format| NaiveDateTime::parse_from_str(text, format).ok())
                    .map(|naive| naive.and_utc())
            }),
        Value::Number(n) => n
            .as_f64()
            .filter(|secs| secs.is_finite())
            .and_then(|secs| DateTime::from_timestamp_micros((secs * 1e6) as i64)),
        _ => None,
    };
    parsed
        .map(truncate_micros)
        .ok_or_else(|| format!("`{key}` is not a timestamp: {value}"))
}

fn take_time(
    map: &mut Map<String, Value>,
    key: &str,
) -> std::result::Result<Option<NaiveDateTime>, String> {
    match map.remove(key) {
        None | Some(Value::Null) => Ok(None),
        Some(value) => parse_time(&value, key).map(Some),
    }
}

fn legacy_status(status: &str) -> std::result::Result<(JobStatus, bool), String> {
    let mapped = match status {
        "queued" | "pending" => JobStatus::Queued,
        s if s.starts_with("pending_") => JobStatus::Queued,
        "running" => return Ok((JobStatus::Failed, true)),
        "completed" => JobStatus::Completed,
        "failed" => JobStatus::Failed,
        "cancelled" | "canceled" => JobStatus::Cancelled,
        other => return Err(format!("unknown status `{other}`")),
    };
    Ok((mapped, false))
}

/// Turns one legacy record into a job row (version left 0 for the caller to stamp).
fn legacy_row(
    value: Value,
    fallback_id: Option<&str>,
    now: NaiveDateTime,
) -> std::result::Result<JobRow, String> {
    let Value::Object(mut map) = value else {
        return Err("not a json object".into());
    };
    let id = match take_string(&mut map, &["id"])? {
        Some(id) => {
            map.remove("job_id");
            id
        }
        None => take_string(&mut map, &["job_id"])?
            .or_else(|| fallback_id.map(str::to_owned))
            .ok_or("no `id` or `job_id`")?,
    };
    validate_job_id(&id).map_err(|err| err.to_string())?;
    let job_type = take_string(&mut map, &["type", "job_type"])?
        .unwrap_or_else(|| DEFAULT_LEGACY_TYPE.to_owned());
    validate_job_type(&job_type).map_err(|err| err.to_string())?;
    let status_text = take_string(&mut map, &["status"])?.ok_or("no `status`")?;
    let (status, was_running) = legacy_status(&status_text)?;

    let mut progress = 0.0;
    let mut step = None;
    let mut message = None;
    let mut cost_usd = 0.0;
    let mut metric = None;
    let mut eta_seconds = None;
    match map.remove("progress") {
        None | Some(Value::Null) => {}
        Some(Value::Number(n)) => {
            progress = fraction(n.as_f64().unwrap_or(f64::NAN), "progress")?;
        }
        Some(Value::Object(mut inner)) => {
            if let Some(p) = take_number(&mut inner, "progress")? {
                progress = fraction(p, "progress.progress")?;
            } else if let Some(p) = take_number(&mut inner, "percent")? {
                progress = percent(p, "progress.percent")?;
            }
            step = take_string(&mut inner, &["step"])?;
            message = take_string(&mut inner, &["message"])?;
            cost_usd = take_number(&mut inner, "cost_usd")?.unwrap_or(0.0);
            if cost_usd < 0.0 {
                return Err(format!("`progress.cost_usd` {cost_usd} is negative"));
            }
            metric = take_number(&mut inner, "metric")?;
            eta_seconds = take_number(&mut inner, "eta_seconds")?;
        }
        Some(other) => return Err(format!("`progress` is not a number or object: {other}")),
    }
    if let Some(p) = take_number(&mut map, "progress_percent")? {
        progress = percent(p, "progress_percent")?;
    }
    if let Some(phase) = take_string(&mut map, &["current_phase"])? {
        step = Some(phase);
    }
    if let Some(text) = take_string(&mut map, &["progress_message"])? {
        message = Some(text);
    }
    let result = map.remove("result").filter(|v| !v.is_null());
    let result_path = take_string(&mut map, &["result_path"])?;
    let error = match map.remove("error") {
        None | Some(Value::Null) => None,
        Some(Value::String(text)) => Some(text),
        Some(other) => Some(other.to_string()),
    };
    let created_at = take_time(&mut map, "created_at")?.unwrap_or(now);
    let updated_at = take_time(&mut map, "updated_at")?.unwrap_or(created_at);

    let mut metadata = match map.remove("metadata") {
        None | Some(Value::Null) => Map::new(),
        Some(Value::Object(meta)) => meta,
        Some(other) => return Err(format!("`metadata` is not an object: {other}")),
    };
    for (key, value) in map {
        metadata.entry(key).or_insert(value);
    }
    validate_metadata(&metadata).map_err(|err| err.to_string())?;

    let error = if was_running {
        Some(IMPORTED_RUNNING_ERROR.to_owned())
    } else {
        error
    };
    Ok(JobRow {
        create_body: create_body(&job_type, &metadata).to_string(),
        metadata: Value::Object(metadata).to_string(),
        id,
        job_type,
        status: status.as_str().to_owned(),
        source: LEGACY_SOURCE.to_owned(),
        progress,
        step,
        message,
        cost_usd,
        metric,
        eta_seconds,
        checkpoint: None,
        attempt: i32::from(status != JobStatus::Queued),
        result_path,
        result: result.map(|v| v.to_string()),
        error,
        created_at,
        started_at: None,
        completed_at: status.is_terminal().then_some(updated_at),
        updated_at,
        version: 0,
        lease_token: None,
        lease_owner: None,
        lease_open: 0,
        lease_expires_at: None,
        lease_renewed_at: None,
        rescues: 0,
        not_before: None,
    })
}

impl JobStore {
    /// Imports jobs of the old Python job manager from `path` (a JSON array export or a
    /// directory of session files `<uuid>.json`), in one transaction, and records the import
    /// in `legacy_imports`.
    ///
    /// Mapping, per record:
    /// - id: `id`, else `job_id`, else (session files) the file name without `.json`;
    /// - type: `type`, else `job_type`, else `optimization`;
    /// - status: `queued`, `pending` and `pending_*` → queued; `completed` → completed;
    ///   `failed` → failed; `cancelled` / `canceled` → cancelled. A legacy `running` job cannot
    ///   still be running (its process is gone), so it is imported as **failed** with the error
    ///   [`IMPORTED_RUNNING_ERROR`]; `skill-fleet jobs resume <id>` queues it again;
    /// - progress: `progress` as a number (0..=1, or 0..=100 read as a percentage) or an object
    ///   (`progress`/`percent`, `step`, `message`, `cost_usd`, `metric`, `eta_seconds`);
    ///   `progress_percent` (0..=100), `current_phase` (→ step) and `progress_message`
    ///   (→ message) from session files;
    /// - `result`, `result_path`, `error`, `created_at`, `updated_at` (RFC 3339, naive ISO 8601
    ///   read as UTC, or Unix seconds); terminal jobs get `completed_at = updated_at`;
    /// - `metadata` (an object) is kept, and every other field is added to it (never replacing
    ///   a metadata key).
    ///
    /// Imported jobs have `source = "memory_migration"`, `attempt` 0 when queued and 1 otherwise.
    /// An id that already exists is skipped, so importing twice imports nothing new. A bad
    /// record, or a broken file in a directory, is counted as failed with a reason; it never
    /// stops the import.
    ///
    /// Idempotent: ids that exist are skipped. Bad records and broken files are counted in
    /// [`ImportReport::failed`] with a reason. Errors only when `path` cannot be read, or is
    /// a file that is not a JSON array.
    pub fn import_legacy(&self, path: &Path) -> Result<ImportReport> {
        let records = read_records(path)?;
        self.write(|conn| {
            let stamp = self.stamp(conn)?;
            let mut report = ImportReport::default();
            for record in records {
                let row = record
                    .value
                    .and_then(|value| legacy_row(value, record.fallback_id.as_deref(), stamp.now));
                let mut row = match row {
                    Ok(row) => row,
                    Err(reason) => {
                        report.failed += 1;
                        report.errors.push(format!("{}: {reason}", record.origin));
                        continue;
                    }
                };
                let exists = jobs::table
                    .find(&row.id)
                    .select(jobs::id)
                    .first::<String>(conn)
                    .optional()?
                    .is_some();
                if exists {
                    report.skipped += 1;
                    continue;
                }
                row.version = stamp.version(conn)?;
                row.insert(conn)?;
                report.imported += 1;
            }
            let count = |n: usize| i32::try_from(n).unwrap_or(i32::MAX);
            NewLegacyImport {
                path: &path.display().to_string(),
                imported: count(report.imported),
                skipped: count(report.skipped),
                failed: count(report.failed),
                imported_at: stamp.now,
            }
            .insert(conn)?;
            tracing::info!(
                path = %path.display(),
                imported = report.imported,
                skipped = report.skipped,
                failed = report.failed,
                "imported legacy jobs"
            );
            Ok(report)
        })
    }
}
