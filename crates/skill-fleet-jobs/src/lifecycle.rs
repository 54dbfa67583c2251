//! The job lifecycle: the one transition table, and create / claim / finish / resume.

use std::fmt;

use diesel::prelude::*;
use serde_json::{Map, Value};
use skill_fleet_types::{
    CreateJob, Job, JobStatus, Progress, ProgressUpdate, validate_job_id, validate_job_type,
    validate_metadata,
};

use crate::backend::{Active, ClaimWrite, Conn};
use crate::error::{Result, StoreError};
use crate::lease::{HeldLease, Writer};
use crate::models::job_progress::{
    FLAG_CHECKPOINT, FLAG_EVENT, FLAG_TERMINAL, HistoryInsert, count_history_row,
};

/// The `event` of the history row a resume leaves.
pub const RESUMED_EVENT: &str = "resumed";
use crate::models::jobs::{JobRow, create_body};
use crate::models::store_state::Stamp;
use crate::schema::jobs;
use crate::store::JobStore;

/// Something asked of a job. Whether it is allowed depends only on the job's status; see
/// [`transition`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Action {
    /// Start running ([`JobStore::claim`]; a queued job's first progress report starts it
    /// too).
    Start,
    /// Report progress; on a queued job this starts it first.
    Progress,
    /// Finish successfully.
    Complete,
    /// Finish with an error.
    Fail,
    /// Stop on request.
    Cancel,
    /// Put a running job back in the queue (graceful shutdown, crash recovery).
    Requeue,
    /// Put a failed or cancelled job back in the queue.
    Resume,
    /// Store an artifact (a file the job produced); the job keeps its status.
    StoreArtifact,
}

impl Action {
    /// Every action.
    pub const ALL: [Action; 8] = [
        Action::Start,
        Action::Progress,
        Action::Complete,
        Action::Fail,
        Action::Cancel,
        Action::Requeue,
        Action::Resume,
        Action::StoreArtifact,
    ];

    /// The verb used in error messages (`job `x` is completed, cannot cancel`).
    pub fn as_str(self) -> &'static str {
        match self {
            Action::Start => "start",
            Action::Progress => "record progress",
            Action::Complete => "complete",
            Action::Fail => "fail",
            Action::Cancel => "cancel",
            Action::Requeue => "requeue",
            Action::Resume => "resume",
            Action::StoreArtifact => "store an artifact",
        }
    }
}

impl fmt::Display for Action {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The status a job in `from` moves to under `action`, or `None` if the action is refused.
///
/// This is the one transition table of skill-fleet:
///
/// | from | action | to |
/// |---|---|---|
/// | queued | start, progress | running |
/// | queued | cancel | cancelled |
/// | queued | fail | failed |
/// | running | progress, store artifact | running |
/// | running | complete | completed |
/// | running | fail | failed |
/// | running | cancel | cancelled |
/// | running | requeue | queued |
/// | failed, cancelled | resume | queued |
///
/// Everything else (complete a cancelled job, progress on a completed job, …) is refused.
pub const fn transition(from: JobStatus, action: Action) -> Option<JobStatus> {
    use Action as A;
    use JobStatus as S;
    match (from, action) {
        (S::Queued, A::Start | A::Progress) | (S::Running, A::Progress | A::StoreArtifact) => {
            Some(S::Running)
        }
        (S::Queued | S::Running, A::Cancel) => Some(S::Cancelled),
        (S::Queued | S::Running, A::Fail) => Some(S::Failed),
        (S::Running, A::Complete) => Some(S::Completed),
        (S::Running, A::Requeue) | (S::Failed | S::Cancelled, A::Resume) => Some(S::Queued),
        _ => None,
    }
}

/// The status a claimed job gets: the transition table's start of a queued job.
const STARTED: JobStatus = match transition(JobStatus::Queued, Action::Start) {
    Some(status) => status,
    None => panic!("the transition table must let a queued job start"),
};

/// Which queued jobs [`JobStore::claim`] may take. The default takes any type.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ClaimFilter {
    /// Only jobs of these types; any type when empty.
    pub types: Vec<String>,
    /// Never jobs of these types (the server keeps the types it runs itself away from
    /// external workers).
    pub excluded: Vec<String>,
}

/// A job to create.
#[derive(Debug, Clone, PartialEq)]
pub struct NewJob {
    /// The id to use; a UUID v7 (time-sortable) is generated when `None`.
    pub id: Option<String>,
    /// The job type, `[a-z0-9_-]{1,64}`.
    pub job_type: String,
    /// Any JSON object, at most [`skill_fleet_types::MAX_METADATA_BYTES`] serialized.
    pub metadata: Map<String, Value>,
    /// Who creates it: `api`, `cli`, …
    pub source: String,
}

impl NewJob {
    /// A job from the body of `POST /api/v1/jobs`.
    pub fn from_request(request: CreateJob, source: impl Into<String>) -> NewJob {
        NewJob {
            id: request.id,
            job_type: request.job_type,
            metadata: request.metadata.unwrap_or_default(),
            source: source.into(),
        }
    }
}

/// A job [`JobStore::claim`] started, and its lease (the token only the claimer learns).
#[derive(Debug, Clone, PartialEq)]
pub struct Claimed {
    /// The job, now running.
    pub job: Job,
    /// Its new lease.
    pub lease: HeldLease,
}

/// Whether [`JobStore::create`] made a new job or found the same one already there.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Created {
    /// The job was created now.
    New,
    /// A job with this id, type and metadata already existed; it was returned unchanged.
    Existing,
}

/// One lifecycle change with what it carries.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Change<'a> {
    Start,
    Progress {
        update: &'a ProgressUpdate,
        eta_seconds: Option<f64>,
    },
    Complete {
        result: Option<&'a Value>,
        result_path: Option<&'a str>,
    },
    Fail(&'a str),
    Cancel {
        reason: Option<&'a str>,
        actor: Option<&'a str>,
    },
    Requeue,
    Resume {
        actor: Option<&'a str>,
    },
}

impl Change<'_> {
    fn action(&self) -> Action {
        match self {
            Change::Start => Action::Start,
            Change::Progress { .. } => Action::Progress,
            Change::Complete { .. } => Action::Complete,
            Change::Fail(_) => Action::Fail,
            Change::Cancel { .. } => Action::Cancel,
            Change::Requeue => Action::Requeue,
            Change::Resume { .. } => Action::Resume,
        }
    }
}

/// The row's latest progress as the wire type.
pub(crate) fn row_progress(row: &JobRow) -> Progress {
    Progress {
        progress: row.progress,
        step: row.step.clone(),
        message: row.message.clone(),
        cost_usd: row.cost_usd,
        metric: row.metric,
        eta_seconds: row.eta_seconds,
    }
}

/// Writes a progress state back into the row's columns.
fn set_row_progress(row: &mut JobRow, progress: Progress) {
    row.progress = progress.progress;
    row.step = progress.step;
    row.message = progress.message;
    row.cost_usd = progress.cost_usd;
    row.metric = progress.metric;
    row.eta_seconds = progress.eta_seconds;
}

fn to_json_text(value: &Value) -> String {
    value.to_string()
}

/// Applies `change` to `row` and writes it with `stamp`'s version, inside the caller's
/// transaction. Refused changes return [`StoreError::InvalidTransition`] having written
/// nothing. When the change left a history row, returns the job's history row count after
/// it, for [`JobStore::cap_history`].
pub(crate) fn apply(
    conn: &mut Conn,
    row: &mut JobRow,
    change: Change<'_>,
    stamp: &Stamp,
) -> Result<Option<i64>> {
    let from = row.job_status()?;
    let action = change.action();
    let to = transition(from, action).ok_or_else(|| StoreError::InvalidTransition {
        id: row.id.clone(),
        from,
        action,
    })?;
    if from == JobStatus::Queued && to == JobStatus::Running {
        // Starting (each backend's claim statement writes the same): `attempt` counts
        // starts, so a job requeued after a crash shows 2 once it runs again.
        row.attempt = row.attempt.saturating_add(1);
        // A run requeued by recovery or shutdown keeps its start: time limits count from
        // it, server downtime included. `resume` clears it, so a resumed job starts anew.
        if row.started_at.is_none() {
            row.started_at = Some(stamp.now);
        }
        row.error = None;
        row.completed_at = None;
        // A start that is not a claim (a token-less event, or the batch's start of a queued
        // job): an open lease (crate::lease).
        row.lease_token = Some(crate::lease::new_token());
        row.lease_owner = Some(crate::lease::ANONYMOUS_OWNER.to_owned());
        row.lease_open = 1;
        row.not_before = None;
    }
    if to == JobStatus::Running {
        // Every write of a running job renews its lease.
        row.lease_expires_at = Some(stamp.lease_until);
        row.lease_renewed_at = Some(stamp.now);
    } else if to == JobStatus::Queued {
        // Back in the queue: every earlier token is stale.
        row.lease_token = None;
        row.lease_owner = None;
        row.lease_open = 0;
        row.lease_expires_at = None;
        row.lease_renewed_at = None;
    } else {
        // Ended: no expiry to rescue; token and attempt stay, so that the owner's retried
        // complete is recognised and its heartbeat hears that the job ended.
        row.lease_expires_at = None;
    }
    row.status = to.as_str().to_owned();
    let mut history = false;
    let mut flags = 0;
    let mut actor = None;
    let mut event = None;
    match change {
        Change::Start | Change::Requeue => {}
        Change::Progress {
            update,
            eta_seconds,
        } => {
            update.validate()?;
            let mut progress = row_progress(row);
            progress.apply(update.patch());
            set_row_progress(row, progress);
            if let Some(checkpoint) = &update.checkpoint {
                row.checkpoint = Some(to_json_text(checkpoint));
                flags |= FLAG_CHECKPOINT;
            }
            if eta_seconds.is_some() {
                row.eta_seconds = eta_seconds;
            }
            history = true;
        }
        Change::Complete {
            result,
            result_path,
        } => {
            row.progress = 1.0;
            row.eta_seconds = None;
            row.result = result.map(to_json_text);
            row.result_path = result_path.map(str::to_owned);
            history = true;
        }
        Change::Fail(error) => {
            row.error = Some(error.to_owned());
            history = true;
        }
        Change::Cancel { reason, actor: who } => {
            row.error = Some(reason.unwrap_or("cancelled").to_owned());
            history = true;
            actor = who;
        }
        Change::Resume { actor: who } => {
            // When someone known asked (a token's name), an event row says who and when;
            // a resume on a server without tokens leaves the history as it was.
            if who.is_some() {
                history = true;
                flags |= FLAG_EVENT;
                event = Some(RESUMED_EVENT);
                actor = who;
            }
            row.error = None;
            row.completed_at = None;
            row.started_at = None;
            // A resumed job starts its rescue count and back-off afresh.
            row.rescues = 0;
            row.not_before = None;
        }
    }
    if to.is_terminal() {
        row.completed_at = Some(stamp.now);
        flags |= FLAG_TERMINAL;
    }
    row.updated_at = stamp.now;
    row.version = stamp.version(conn)?;
    row.save(conn)?;
    if !history {
        return Ok(None);
    }
    // Every progress report and every terminal state leaves one history row.
    let progress = row_progress(row);
    let mut history_row = HistoryInsert::progress(&row.id, &progress, flags, Some(row.attempt));
    if event.is_some() {
        history_row.event = event;
        history_row.message = None;
    }
    Active::insert_history(conn, &[history_row], stamp.now)?;
    if let Some(actor) = actor {
        // The row just inserted is the job's newest.
        diesel::sql_query(
            "UPDATE job_progress SET actor = $1 \
             WHERE seq = (SELECT MAX(seq) FROM job_progress WHERE job_id = $2)",
        )
        .bind::<diesel::sql_types::Text, _>(actor)
        .bind::<diesel::sql_types::Text, _>(&row.id)
        .execute(conn)?;
    }
    Ok(Some(count_history_row(conn, &row.id)?))
}

impl JobStore {
    /// Creates a job. With an `id` that already exists: the same type and metadata return the
    /// existing job and [`Created::Existing`] (so a retried create is harmless); a different
    /// body is [`StoreError::Conflict`].
    pub fn create(&self, new: &NewJob) -> Result<(Job, Created)> {
        validate_job_type(&new.job_type)?;
        validate_metadata(&new.metadata)?;
        let id = match &new.id {
            Some(id) => {
                validate_job_id(id)?;
                id.clone()
            }
            None => uuid::Uuid::now_v7().to_string(),
        };
        let body = create_body(&new.job_type, &new.metadata);
        // On a shared database two servers may create one id at once: both find no row, one
        // inserts, the other's insert waits for it and then violates the key. Run once more:
        // the second run finds the row and answers as for any repeated create.
        match self.create_once(&id, new, &body) {
            Err(StoreError::Database(diesel::result::Error::DatabaseError(
                diesel::result::DatabaseErrorKind::UniqueViolation,
                _,
            ))) => self.create_once(&id, new, &body),
            other => other,
        }
    }

    fn create_once(&self, id: &str, new: &NewJob, body: &Value) -> Result<(Job, Created)> {
        let id = id.to_owned();
        self.write(|conn| {
            let existing = jobs::table
                .find(&id)
                .select(JobRow::as_select())
                .first(conn)
                .optional()?;
            if let Some(existing) = existing {
                if existing.same_create_body(body) {
                    return Ok((existing.into_job()?, Created::Existing));
                }
                return Err(StoreError::Conflict {
                    id,
                    reason: "it has a different type or metadata".into(),
                });
            }
            let stamp = self.stamp(conn)?;
            let row = JobRow {
                id: id.clone(),
                job_type: new.job_type.clone(),
                status: JobStatus::Queued.as_str().to_owned(),
                metadata: Value::Object(new.metadata.clone()).to_string(),
                source: new.source.clone(),
                progress: 0.0,
                step: None,
                message: None,
                cost_usd: 0.0,
                metric: None,
                eta_seconds: None,
                checkpoint: None,
                attempt: 0,
                result_path: None,
                result: None,
                error: None,
                create_body: body.to_string(),
                created_at: stamp.now,
                started_at: None,
                completed_at: None,
                updated_at: stamp.now,
                version: stamp.version(conn)?,
                lease_token: None,
                lease_owner: None,
                lease_open: 0,
                lease_expires_at: None,
                lease_renewed_at: None,
                rescues: 0,
                not_before: None,
            };
            row.insert(conn)?;
            Ok((row.into_job()?, Created::New))
        })
    }

    /// One job.
    pub fn get(&self, id: &str) -> Result<Job> {
        JobRow::find(&mut *self.conn()?, id)?.into_job()
    }

    /// Applies one change to one job in one immediate transaction, if `writer` may write to
    /// it ([`crate::lease::admits`], checked in the same transaction). A complete or fail
    /// retried by the owner whose first try landed returns the job as it is.
    pub(crate) fn change(&self, id: &str, change: Change<'_>, writer: &Writer) -> Result<Job> {
        self.write(|conn| {
            let mut row = JobRow::find_for_write(conn, id)?;
            row.admits(writer)?;
            let status = row.job_status()?;
            let repeat = matches!(
                (writer, status, change.action()),
                (Writer::Owner(_), JobStatus::Completed, Action::Complete)
                    | (Writer::Owner(_), JobStatus::Failed, Action::Fail)
            );
            if repeat {
                return row.into_job();
            }
            let stamp = self.stamp(conn)?;
            if let Some(history_rows) = apply(conn, &mut row, change, &stamp)? {
                self.cap_history(conn, &row.id, history_rows)?;
            }
            row.into_job()
        })
    }

    /// Takes the oldest queued job (by `created_at`, then id) that `filter` allows and starts
    /// it: `running`, `attempt + 1`, error cleared, `started_at` now unless the job was
    /// requeued mid-run (recovery, shutdown), which keeps its first start. One statement in
    /// one transaction, so two workers never get the same job. `None`, writing nothing, when
    /// the queue holds nothing for them.
    ///
    /// The claim gives the job a fenced lease owned by `owner` (see [`crate::admits`]); jobs
    /// in their rescue back-off are not taken.
    pub fn claim(&self, filter: &ClaimFilter, owner: &str) -> Result<Option<Claimed>> {
        let token = crate::lease::new_token();
        self.write_if(
            |conn| {
                let stamp = self.stamp(conn)?;
                let claim = ClaimWrite {
                    filter,
                    status: STARTED.as_str(),
                    now: stamp.now,
                    version: stamp.version(conn)?,
                    lease_token: &token,
                    lease_owner: owner,
                    lease_until: stamp.lease_until,
                };
                let Some(row) = Active::claim(conn, &claim)? else {
                    return Ok(None);
                };
                let lease = HeldLease::of_row(&row).ok_or_else(|| StoreError::Corrupt {
                    id: row.id.clone(),
                    field: "lease_token",
                    reason: "a claim left no lease".to_owned(),
                })?;
                Ok(Some(Claimed {
                    job: row.into_job()?,
                    lease,
                }))
            },
            Option::is_some,
        )
    }

    /// Completes a running job with an optional JSON result and result path; progress is set
    /// to 1. Only what `writer` may write lands ([`crate::lease::admits`]); the owner's retry
    /// of a complete that landed returns the job unchanged.
    pub fn complete(
        &self,
        id: &str,
        result: Option<Value>,
        result_path: Option<String>,
        writer: &Writer,
    ) -> Result<Job> {
        self.change(
            id,
            Change::Complete {
                result: result.as_ref(),
                result_path: result_path.as_deref(),
            },
            writer,
        )
    }

    /// Fails a queued or running job with `error`, if `writer` may write to it.
    pub fn fail(&self, id: &str, error: &str, writer: &Writer) -> Result<Job> {
        self.change(id, Change::Fail(error), writer)
    }

    /// Cancels a queued or running job; its error becomes `reason`, or `cancelled`. An
    /// operator's action: whoever owns the job hears it at its next write or heartbeat.
    pub fn cancel(&self, id: &str, reason: Option<&str>) -> Result<Job> {
        self.cancel_by(id, reason, None)
    }

    /// [`JobStore::cancel`], its history row naming `actor` (who asked: a token's name).
    pub fn cancel_by(&self, id: &str, reason: Option<&str>, actor: Option<&str>) -> Result<Job> {
        self.change(id, Change::Cancel { reason, actor }, &Writer::Operator)
    }

    /// Puts a failed or cancelled job back in the queue: checkpoint kept, error and
    /// `completed_at` cleared, rescue count reset. The next start increments `attempt`.
    pub fn resume(&self, id: &str) -> Result<Job> {
        self.resume_by(id, None)
    }

    /// [`JobStore::resume`]; with an `actor` (who asked), the history gets a `resumed` event
    /// row naming it.
    pub fn resume_by(&self, id: &str, actor: Option<&str>) -> Result<Job> {
        self.change(id, Change::Resume { actor }, &Writer::Operator)
    }

    /// Puts a running job back in the queue with its checkpoint (graceful shutdown), if
    /// `writer` may write to it.
    pub fn requeue(&self, id: &str, writer: &Writer) -> Result<Job> {
        self.change(id, Change::Requeue, writer)
    }
}
