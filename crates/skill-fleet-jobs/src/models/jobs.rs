//! The `jobs` table: the job row, its conversion to the wire [`Job`], and row-level queries.

use chrono::NaiveDateTime;
use diesel::prelude::*;
use serde_json::{Map, Value};
use skill_fleet_types::{Job, JobLease, JobStatus, Progress};

use crate::backend::Conn;
use crate::error::{OrNotFound, Result, StoreError};
use crate::schema::jobs;

/// One `jobs` row, as stored (every column but `history_rows`, which only the history cap
/// reads).
#[derive(Debug, Clone, PartialEq, Queryable, QueryableByName, Selectable, Insertable)]
#[diesel(table_name = jobs, check_for_backend(diesel::sqlite::Sqlite, diesel::pg::Pg))]
pub(crate) struct JobRow {
    pub(crate) id: String,
    pub(crate) job_type: String,
    pub(crate) status: String,
    pub(crate) metadata: String,
    pub(crate) source: String,
    pub(crate) progress: f64,
    pub(crate) step: Option<String>,
    pub(crate) message: Option<String>,
    pub(crate) cost_usd: f64,
    pub(crate) metric: Option<f64>,
    pub(crate) eta_seconds: Option<f64>,
    pub(crate) checkpoint: Option<String>,
    pub(crate) attempt: i32,
    pub(crate) result_path: Option<String>,
    pub(crate) result: Option<String>,
    pub(crate) error: Option<String>,
    pub(crate) create_body: String,
    pub(crate) created_at: NaiveDateTime,
    pub(crate) started_at: Option<NaiveDateTime>,
    pub(crate) completed_at: Option<NaiveDateTime>,
    pub(crate) updated_at: NaiveDateTime,
    pub(crate) version: i64,
    pub(crate) lease_token: Option<String>,
    pub(crate) lease_owner: Option<String>,
    pub(crate) lease_open: i32,
    pub(crate) lease_expires_at: Option<NaiveDateTime>,
    pub(crate) lease_renewed_at: Option<NaiveDateTime>,
    pub(crate) rescues: i32,
    pub(crate) not_before: Option<NaiveDateTime>,
}

/// The columns of [`JobRow`] in order, for hand-written statements that return whole rows.
pub(crate) const JOB_ROW_COLUMNS: &str = "id, job_type, status, metadata, source, progress, \
     step, message, cost_usd, metric, eta_seconds, checkpoint, attempt, result_path, result, \
     error, create_body, created_at, started_at, completed_at, updated_at, version, \
     lease_token, lease_owner, lease_open, lease_expires_at, lease_renewed_at, rescues, \
     not_before";

/// The columns a lifecycle change may touch; `None` writes NULL.
#[derive(Debug, AsChangeset)]
#[diesel(
    table_name = jobs,
    check_for_backend(diesel::sqlite::Sqlite, diesel::pg::Pg),
    treat_none_as_null = true
)]
struct JobChanges<'a> {
    status: &'a str,
    progress: f64,
    step: Option<&'a str>,
    message: Option<&'a str>,
    cost_usd: f64,
    metric: Option<f64>,
    eta_seconds: Option<f64>,
    checkpoint: Option<&'a str>,
    attempt: i32,
    result_path: Option<&'a str>,
    result: Option<&'a str>,
    error: Option<&'a str>,
    started_at: Option<NaiveDateTime>,
    completed_at: Option<NaiveDateTime>,
    updated_at: NaiveDateTime,
    version: i64,
    lease_token: Option<&'a str>,
    lease_owner: Option<&'a str>,
    lease_open: i32,
    lease_expires_at: Option<NaiveDateTime>,
    lease_renewed_at: Option<NaiveDateTime>,
    rescues: i32,
    not_before: Option<NaiveDateTime>,
}

/// The canonical JSON of a create request: what an idempotent create compares.
pub(crate) fn create_body(job_type: &str, metadata: &Map<String, Value>) -> Value {
    serde_json::json!({ "type": job_type, "metadata": metadata })
}

impl JobRow {
    /// Loads one job, or [`StoreError::NotFound`].
    pub(crate) fn find(conn: &mut Conn, id: &str) -> Result<JobRow> {
        jobs::table
            .find(id)
            .select(JobRow::as_select())
            .first(conn)
            .or_not_found(id)
    }

    /// Loads one job to change it, inside a write transaction: on PostgreSQL the row stays
    /// locked (`FOR UPDATE`) until the write ends, so no other server changes it between
    /// this read and the write's own; on SQLite the write holds the database already.
    pub(crate) fn find_for_write(conn: &mut Conn, id: &str) -> Result<JobRow> {
        // One query per backend: `as_select` is typed by the backend it runs on.
        let query = jobs::table.find(id);
        match conn {
            Conn::Postgres(pg) => query.select(JobRow::as_select()).for_update().first(pg),
            Conn::Sqlite(sqlite) => query.select(JobRow::as_select()).first(sqlite),
        }
        .or_not_found(id)
    }

    /// The status of one job, `None` if there is no such job.
    pub(crate) fn find_status(conn: &mut Conn, id: &str) -> Result<Option<JobStatus>> {
        let status: Option<String> = jobs::table
            .find(id)
            .select(jobs::status)
            .first(conn)
            .optional()?;
        status.map(|s| parse_status(id, &s)).transpose()
    }

    /// Inserts this row as a new job.
    pub(crate) fn insert(&self, conn: &mut Conn) -> QueryResult<()> {
        diesel::insert_into(jobs::table)
            .values(self)
            .execute(conn)
            .map(drop)
    }

    /// Writes back the mutable columns of this row.
    pub(crate) fn save(&self, conn: &mut Conn) -> QueryResult<()> {
        let changes = JobChanges {
            status: &self.status,
            progress: self.progress,
            step: self.step.as_deref(),
            message: self.message.as_deref(),
            cost_usd: self.cost_usd,
            metric: self.metric,
            eta_seconds: self.eta_seconds,
            checkpoint: self.checkpoint.as_deref(),
            attempt: self.attempt,
            result_path: self.result_path.as_deref(),
            result: self.result.as_deref(),
            error: self.error.as_deref(),
            started_at: self.started_at,
            completed_at: self.completed_at,
            updated_at: self.updated_at,
            version: self.version,
            lease_token: self.lease_token.as_deref(),
            lease_owner: self.lease_owner.as_deref(),
            lease_open: self.lease_open,
            lease_expires_at: self.lease_expires_at,
            lease_renewed_at: self.lease_renewed_at,
            rescues: self.rescues,
            not_before: self.not_before,
        };
        diesel::update(jobs::table.find(&self.id))
            .set(&changes)
            .execute(conn)
            .map(drop)
    }

    /// The stored status.
    pub(crate) fn job_status(&self) -> Result<JobStatus> {
        parse_status(&self.id, &self.status)
    }

    /// Whether the stored create request equals `body` (compared as JSON values, so key
    /// order does not matter).
    pub(crate) fn same_create_body(&self, body: &Value) -> bool {
        serde_json::from_str::<Value>(&self.create_body).is_ok_and(|stored| stored == *body)
    }

    /// Converts the row to the wire type.
    pub(crate) fn into_job(self) -> Result<Job> {
        let status = self.job_status()?;
        let metadata = match parse_json(&self.id, "metadata", Some(&self.metadata))? {
            Some(Value::Object(map)) => map,
            _ => {
                return Err(StoreError::Corrupt {
                    id: self.id,
                    field: "metadata",
                    reason: "not a json object".into(),
                });
            }
        };
        let checkpoint = parse_json(&self.id, "checkpoint", self.checkpoint.as_deref())?;
        let result = parse_json(&self.id, "result", self.result.as_deref())?;
        let lease = match (status, &self.lease_owner, self.lease_expires_at) {
            (JobStatus::Running, Some(owner), Some(expires_at)) => Some(JobLease {
                owner: owner.clone(),
                expires_at: expires_at.and_utc(),
                renewed_at: self.lease_renewed_at.unwrap_or(expires_at).and_utc(),
            }),
            _ => None,
        };
        Ok(Job {
            lease,
            status,
            progress: Progress {
                progress: self.progress,
                step: self.step,
                message: self.message,
                cost_usd: self.cost_usd,
                metric: self.metric,
                eta_seconds: self.eta_seconds,
            },
            checkpoint,
            attempt: u32::try_from(self.attempt).unwrap_or(0),
            result,
            result_path: self.result_path,
            error: self.error,
            source: self.source,
            metadata,
            created_at: self.created_at.and_utc(),
            started_at: self.started_at.map(|t| t.and_utc()),
            completed_at: self.completed_at.map(|t| t.and_utc()),
            updated_at: self.updated_at.and_utc(),
            version: u64::try_from(self.version).unwrap_or(0),
            job_type: self.job_type,
            id: self.id,
        })
    }
}

fn parse_status(id: &str, status: &str) -> Result<JobStatus> {
    status.parse().map_err(|err| StoreError::Corrupt {
        id: id.to_owned(),
        field: "status",
        reason: format!("{err}"),
    })
}

fn parse_json(id: &str, field: &'static str, text: Option<&str>) -> Result<Option<Value>> {
    text.map(serde_json::from_str)
        .transpose()
        .map_err(|err| StoreError::Corrupt {
            id: id.to_owned(),
            field,
            reason: err.to_string(),
        })
}
