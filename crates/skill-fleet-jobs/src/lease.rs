//! Ownership of running jobs: who may write to a job ([`Writer`], one rule: [`admits`]),
//! heartbeats, and the rescue sweep that takes jobs back from lost owners.
//!
//! # The lease
//!
//! Every start gives the job a lease in its row: `lease_token` (random, 128 bits),
//! `lease_owner`, `lease_expires_at` (the write's time plus [`LeasePolicy::ttl`]), with
//! `attempt` counting starts. A claim's lease is *fenced*: only writes carrying its `attempt`
//! and `lease_token` land. A job started by a token-less event gets an *open* lease (owner
//! [`ANONYMOUS_OWNER`]): token-less writes keep working on it, as they did before leases,
//! but it expires and is rescued like any other (and, having no holder that could send a
//! heartbeat, does not outlive the server run that accepted it), and once rescued and
//! claimed, the token-less writer is refused like any stale one.
//!
//! Every write of the owner renews the lease in its own transaction (progress, heartbeat);
//! an end (complete, fail, cancel) clears the expiry and keeps token and attempt, so a
//! retried complete with the same token is recognised and answered, not refused. Going back
//! to the queue (requeue, rescue, resume) clears the lease: every earlier token is stale.
//!
//! # Rescue
//!
//! [`JobStore::rescue`] re-reads, inside its own write transaction, which running jobs are
//! expired (or, at start-up, owned by an earlier run of this server), so a job completed a
//! moment before is never touched: the completion committed first and the job is no longer
//! running. Each rescued job gets a `lease_expired` history row and goes back to `queued`
//! (checkpoint kept, not claimable before its back-off) or, when its type is not resumable
//! or it has been rescued [`RescuePolicy::max_rescues`] times already, to `failed`.
//!
//! On PostgreSQL several servers sweep at once: the sweep's read locks the rows it takes
//! (`FOR UPDATE SKIP LOCKED`), so two sweeps never rescue one job twice, and a row another
//! write holds (a completion, a heartbeat) is left to the next sweep, which re-reads it.
//!
//! Times come from the database's clock: on SQLite that is this machine's clock, which the
//! one process owning the file also writes with; on PostgreSQL the database server's, which
//! every server sharing it writes with ([`crate::backend`]).

use std::time::Duration;

use chrono::NaiveDateTime;
use diesel::prelude::*;
use skill_fleet_types::{Fence, Job, JobStatus};

use crate::backend::{Active, Conn};
use crate::error::{Result, StoreError};
use crate::lifecycle::{Change, apply};
use crate::models::job_progress::{FLAG_EVENT, HistoryInsert};
use crate::models::jobs::JobRow;
use crate::models::store_state::Stamp;
use crate::recovery::INTERRUPTED_ERROR;
use crate::schema::jobs;
use crate::store::JobStore;

/// The owner of a lease taken by a token-less event.
pub const ANONYMOUS_OWNER: &str = "anonymous";

/// The error of a job whose lease expired and that is not put back in the queue.
pub const LEASE_EXPIRED_ERROR: &str = "lease expired: worker lost";

/// The `event` of the history row a rescue leaves.
pub const LEASE_EXPIRED_EVENT: &str = "lease_expired";

/// The prefix of the lease owner the server's own runs write (`server:<boot epoch>`).
pub const SERVER_OWNER_PREFIX: &str = "server:";

/// How long a lease lasts; part of [`crate::StoreOptions`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LeasePolicy {
    /// A lease expires this long after its last renewal.
    pub ttl: Duration,
}

impl LeasePolicy {
    /// The default lease: 90 seconds (six heartbeats of 15 s).
    pub const DEFAULT_TTL: Duration = Duration::from_secs(90);
}

impl Default for LeasePolicy {
    fn default() -> Self {
        LeasePolicy {
            ttl: LeasePolicy::DEFAULT_TTL,
        }
    }
}

/// Who makes a write, which decides whether it may land ([`admits`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Writer {
    /// A worker proving it owns the job: the claim's attempt and token.
    Owner(Fence),
    /// A worker write that carries no token: lands on a queued job (starting it with an open
    /// lease) or on a job whose lease is open, never on a job a claim owns.
    Unfenced,
    /// The operator or the program embedding the store, which own every job: no check.
    Operator,
}

impl Writer {
    /// The writer of a body that may carry a fence.
    pub fn of(fence: Option<Fence>) -> Writer {
        fence.map_or(Writer::Unfenced, Writer::Owner)
    }
}

/// What a job's row says about its lease, as far as [`admits`] needs it.
#[derive(Clone, PartialEq, Eq)]
pub struct HeldLease {
    /// The attempt that holds it.
    pub attempt: u32,
    /// Its token.
    pub token: String,
    /// Who holds it.
    pub owner: String,
    /// Whether token-less writes are accepted (a job started by a token-less event).
    pub open: bool,
}

impl std::fmt::Debug for HeldLease {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HeldLease")
            .field("attempt", &self.attempt)
            .field("owner", &self.owner)
            .field("open", &self.open)
            .finish_non_exhaustive()
    }
}

impl HeldLease {
    /// The lease in a row: `None` when no token is set (a queued job, a row from before
    /// leases).
    pub(crate) fn of_row(row: &JobRow) -> Option<HeldLease> {
        Some(HeldLease {
            attempt: u32::try_from(row.attempt).unwrap_or(0),
            token: row.lease_token.clone()?,
            owner: row.lease_owner.clone().unwrap_or_default(),
            open: row.lease_open != 0,
        })
    }

    /// The fence a write of this lease's holder carries.
    pub fn fence(&self) -> Fence {
        Fence {
            attempt: self.attempt,
            lease_token: self.token.clone(),
        }
    }
}

/// Whether `writer` may write to job `id`, which is in `status` at `attempt` with the lease
/// `held`. The one fencing rule of skill-fleet: the store applies it inside every write
/// transaction, the server's live state applies it before a coalesced event is accepted.
///
/// - [`Writer::Owner`]: its attempt and token must be the lease's, whatever the status
///   (a job that ended keeps its lease's token, so its owner hears "ended", not "lost");
/// - [`Writer::Unfenced`]: refused on a running job whose lease is not open;
/// - [`Writer::Operator`]: any write.
///
/// A refusal is [`StoreError::LeaseLost`] with the job's current attempt and status.
pub fn admits(
    id: &str,
    status: JobStatus,
    attempt: u32,
    held: Option<&HeldLease>,
    writer: &Writer,
) -> Result<()> {
    let lost = |reason: String| StoreError::LeaseLost {
        id: id.to_owned(),
        attempt,
        status,
        reason,
    };
    match writer {
        Writer::Operator => Ok(()),
        Writer::Owner(fence) => match held {
            Some(lease) if lease.attempt == fence.attempt && lease.token == fence.lease_token => {
                Ok(())
            }
            Some(lease) if lease.attempt != fence.attempt => Err(lost(format!(
                "attempt {} does not own it, attempt {} of {} does",
                fence.attempt, lease.attempt, lease.owner
            ))),
            Some(_) => Err(lost(format!(
                "attempt {} does not hold its lease (wrong lease_token)",
                fence.attempt
            ))),
            None => Err(lost(format!(
                "attempt {} does not own it: no lease is held (it went back to the queue)",
                fence.attempt
            ))),
        },
        Writer::Unfenced => match held {
            Some(lease) if status == JobStatus::Running && !lease.open => Err(lost(format!(
                "it is owned by {} (attempt {}); its writes carry attempt and lease_token",
                lease.owner, lease.attempt
            ))),
            _ => Ok(()),
        },
    }
}

impl JobRow {
    /// Whether `writer` may write to this row as it is ([`admits`]).
    pub(crate) fn admits(&self, writer: &Writer) -> Result<()> {
        let attempt = u32::try_from(self.attempt).unwrap_or(0);
        let held = HeldLease::of_row(self);
        admits(&self.id, self.job_status()?, attempt, held.as_ref(), writer)
    }
}

/// A fresh lease token: 128 random bits from the operating system, as 32 hex digits.
pub(crate) fn new_token() -> String {
    uuid::Uuid::new_v4().simple().to_string()
}

/// What [`JobStore::heartbeat`] found.
#[derive(Debug, Clone, PartialEq)]
pub struct Heartbeat {
    /// The job after the heartbeat.
    pub job: Job,
    /// False when the job had ended (a cancel, a budget, a time limit): the worker stops.
    pub renewed: bool,
}

/// Which running jobs [`JobStore::rescue`] takes back.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RescueScope {
    /// Jobs whose lease expired (or that hold none, as rows from before leases).
    Expired,
    /// Jobs owned by an earlier run of this server (`server:<run>` but not `current`), jobs
    /// under an open lease (no holder could heartbeat for them: the server held them on the
    /// token-less writer's behalf, as it always did), and jobs that hold no lease: at
    /// start-up, they are lost by definition. Claimed jobs of remote workers are not: their
    /// workers may still be alive, and get a full lease to reach the restarted server.
    EarlierRuns {
        /// This run's owner name.
        current: String,
    },
}

/// What happens to a rescued job.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RescuePolicy {
    /// Types that go back to the queue; the others fail on their first rescue.
    pub resumable_types: Vec<String>,
    /// Most times a job goes back to the queue; the next expiry fails it.
    pub max_rescues: u32,
    /// The wait before a job rescued once can be claimed again; doubled for each further
    /// rescue, up to [`RescuePolicy::backoff_max`].
    pub backoff_first: Duration,
    /// The longest wait.
    pub backoff_max: Duration,
}

impl RescuePolicy {
    /// The wait before a job rescued `rescues` times (≥ 1) may be claimed again.
    pub fn backoff(&self, rescues: u32) -> Duration {
        let doublings = rescues.saturating_sub(1).min(30);
        self.backoff_first
            .saturating_mul(1 << doublings)
            .min(self.backoff_max)
    }
}

/// One job [`JobStore::rescue`] took back.
#[derive(Debug, Clone, PartialEq)]
pub struct Rescued {
    /// The job as it is now (`queued` or `failed`).
    pub job: Job,
    /// Who had lost it, and its attempt.
    pub lost_owner: Option<String>,
    /// The history row's message: what happened and why.
    pub message: String,
}

/// What [`JobStore::rescue`] did.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct RescueReport {
    /// Jobs put back in the queue, oldest first.
    pub requeued: Vec<Rescued>,
    /// Jobs failed (not resumable, or rescued too often).
    pub failed: Vec<Rescued>,
}

impl RescueReport {
    /// Whether nothing was rescued.
    pub fn is_empty(&self) -> bool {
        self.requeued.is_empty() && self.failed.is_empty()
    }
}

fn to_i32(n: u32) -> i32 {
    i32::try_from(n).unwrap_or(i32::MAX)
}

impl JobStore {
    /// The lease of a job and its state, for a server that fences writes before they reach
    /// the database (coalesced progress).
    pub fn get_with_lease(&self, id: &str) -> Result<(Job, Option<HeldLease>)> {
        let row = JobRow::find(&mut *self.conn()?, id)?;
        let held = HeldLease::of_row(&row);
        Ok((row.into_job()?, held))
    }

    /// Renews the lease of a running job whose owner `fence` names, for another
    /// [`LeasePolicy::ttl`]. A job that ended from outside is returned unchanged with
    /// `renewed: false`; a fence that does not own the job is [`StoreError::LeaseLost`].
    pub fn heartbeat(&self, id: &str, fence: &Fence) -> Result<Heartbeat> {
        let writer = Writer::Owner(fence.clone());
        self.write_if(
            |conn| {
                let mut row = JobRow::find_for_write(conn, id)?;
                row.admits(&writer)?;
                let status = row.job_status()?;
                if status != JobStatus::Running {
                    return Ok(Heartbeat {
                        job: row.into_job()?,
                        renewed: false,
                    });
                }
                let stamp = self.stamp(conn)?;
                row.lease_expires_at = Some(stamp.lease_until);
                row.lease_renewed_at = Some(stamp.now);
                row.updated_at = stamp.now;
                row.version = stamp.version(conn)?;
                row.save(conn)?;
                Ok(Heartbeat {
                    job: row.into_job()?,
                    renewed: true,
                })
            },
            |beat| beat.renewed,
        )
    }

    /// Renews the leases of running jobs whose writers own them, in one write transaction
    /// (the coalesced form of [`JobStore::heartbeat`]: a server answers heartbeats from
    /// memory and writes their renewals every tick). Each renewal is fenced in its own
    /// `UPDATE … WHERE`; the ids renewed, with the batch's version.
    pub fn renew_leases(&self, renewals: &[(String, Fence)]) -> Result<Vec<(String, u64)>> {
        if renewals.is_empty() {
            return Ok(Vec::new());
        }
        self.write_if(
            |conn| {
                // Job rows before the version (the store's lock order, see `backend`).
                let mut ids: Vec<&str> = renewals.iter().map(|(id, _)| id.as_str()).collect();
                ids.sort_unstable();
                ids.dedup();
                Active::lock_jobs(conn, &ids)?;
                let stamp = self.stamp(conn)?;
                let version = stamp.version(conn)?;
                let mut renewed = Vec::with_capacity(renewals.len());
                for (id, fence) in renewals {
                    let attempt = i32::try_from(fence.attempt).unwrap_or(i32::MAX);
                    let updated = diesel::update(
                        jobs::table
                            .find(id)
                            .filter(jobs::status.eq(JobStatus::Running.as_str()))
                            .filter(jobs::attempt.eq(attempt))
                            .filter(jobs::lease_token.eq(&fence.lease_token)),
                    )
                    .set((
                        jobs::lease_expires_at.eq(stamp.lease_until),
                        jobs::lease_renewed_at.eq(stamp.now),
                        jobs::updated_at.eq(stamp.now),
                        jobs::version.eq(version),
                    ))
                    .execute(conn)?;
                    if updated == 1 {
                        renewed.push((id.clone(), u64::try_from(version).unwrap_or(0)));
                    }
                }
                Ok(renewed)
            },
            |renewed| !renewed.is_empty(),
        )
    }

    /// The running jobs `scope` names now, with their leases, read without writing: what a
    /// server takes hold of (its live state of each) before [`JobStore::rescue_these`]
    /// re-reads and rescues them.
    pub fn rescue_candidates(&self, scope: &RescueScope) -> Result<Vec<(Job, Option<HeldLease>)>> {
        let mut conn = self.conn()?;
        let now = self.stamp(&mut conn)?.now;
        let rows = rescuable(&mut conn, scope, now, None)?;
        rows.into_iter()
            .map(|row| {
                let held = HeldLease::of_row(&row);
                Ok((row.into_job()?, held))
            })
            .collect()
    }

    /// Takes back the running jobs `scope` names, in one write transaction that reads them
    /// itself (so a job that ended or was renewed a moment earlier is not among them): each
    /// gets a `lease_expired` history row, then goes back to the queue or fails as `policy`
    /// says; see `admits` for who may write meanwhile.
    pub fn rescue(&self, scope: &RescueScope, policy: &RescuePolicy) -> Result<RescueReport> {
        self.rescue_within(scope, policy, None)
    }

    /// Like [`JobStore::rescue`], among the jobs `ids` only.
    pub fn rescue_these(
        &self,
        scope: &RescueScope,
        policy: &RescuePolicy,
        ids: &[String],
    ) -> Result<RescueReport> {
        self.rescue_within(scope, policy, Some(ids))
    }

    fn rescue_within(
        &self,
        scope: &RescueScope,
        policy: &RescuePolicy,
        only: Option<&[String]>,
    ) -> Result<RescueReport> {
        self.write_if(
            |conn| {
                let stamp = self.stamp(conn)?;
                let rows = rescuable(conn, scope, stamp.now, only)?;
                let mut report = RescueReport::default();
                for mut row in rows {
                    let rescued = self.rescue_one(conn, &mut row, scope, policy, &stamp)?;
                    if row.job_status()? == JobStatus::Queued {
                        report.requeued.push(rescued);
                    } else {
                        report.failed.push(rescued);
                    }
                }
                if !report.is_empty() {
                    tracing::info!(
                        requeued = report.requeued.len(),
                        failed = report.failed.len(),
                        "rescued jobs whose owner was lost"
                    );
                }
                Ok(report)
            },
            |report| !report.is_empty(),
        )
    }

    fn rescue_one(
        &self,
        conn: &mut Conn,
        row: &mut JobRow,
        scope: &RescueScope,
        policy: &RescuePolicy,
        stamp: &Stamp,
    ) -> Result<Rescued> {
        let lost_owner = row.lease_owner.clone();
        let attempt = row.attempt;
        let rescues = u32::try_from(row.rescues).unwrap_or(0).saturating_add(1);
        let resumable = policy.resumable_types.contains(&row.job_type);
        let why = match scope {
            RescueScope::Expired => "lease expired: worker lost",
            RescueScope::EarlierRuns { .. } => "server stopped while running",
        };
        let owner = lost_owner.as_deref().unwrap_or("no owner");
        let requeue = resumable && rescues <= policy.max_rescues;
        let message = if requeue {
            let wait = policy.backoff(rescues);
            row.not_before = stamp
                .now
                .checked_add_signed(chrono::Duration::from_std(wait).unwrap_or_default());
            format!(
                "{why} ({owner}, attempt {attempt}); back in the queue, claimable in {:.1} s \
                 (rescue {rescues} of at most {})",
                wait.as_secs_f64(),
                policy.max_rescues
            )
        } else if resumable {
            format!(
                "{why} ({owner}, attempt {attempt}); failed: rescued {} times already \
                 (max_rescues {})",
                rescues - 1,
                policy.max_rescues
            )
        } else {
            format!(
                "{why} ({owner}, attempt {attempt}); failed: type `{}` is not resumable",
                row.job_type
            )
        };
        row.rescues = to_i32(rescues);
        // The lost owner hears `lease_lost` from now on, even when the job fails here (a
        // job that ended otherwise keeps its token, so its owner hears that it ended).
        row.lease_token = None;
        row.lease_open = 0;
        // The event row first, so that a failed job's terminal row stays its last.
        let progress = crate::lifecycle::row_progress(row);
        let event = HistoryInsert {
            job_id: &row.id,
            progress: &progress,
            flags: FLAG_EVENT,
            attempt: Some(attempt),
            event: Some(LEASE_EXPIRED_EVENT),
            message: Some(&message),
        };
        Active::insert_history(conn, &[event], stamp.now)?;
        crate::models::job_progress::count_history_row(conn, &row.id)?;
        let error = match scope {
            RescueScope::Expired => LEASE_EXPIRED_ERROR,
            RescueScope::EarlierRuns { .. } => INTERRUPTED_ERROR,
        };
        let change = if requeue {
            Change::Requeue
        } else {
            Change::Fail(error)
        };
        if let Some(rows) = apply(conn, row, change, stamp)? {
            self.cap_history(conn, &row.id, rows)?;
        }
        tracing::info!(job.id = %row.id, %message, "rescued job");
        Ok(Rescued {
            job: row.clone().into_job()?,
            lost_owner,
            message,
        })
    }
}

/// The running jobs `scope` names (among `only`, when given), oldest first, read inside the
/// rescue's transaction. On PostgreSQL the rows are locked as they are read, skipping rows
/// another write holds: another server's sweep (which takes them), a completion or a
/// heartbeat (after which the job is no longer rescuable, or is again on the next sweep).
fn rescuable(
    conn: &mut Conn,
    scope: &RescueScope,
    now: NaiveDateTime,
    only: Option<&[String]>,
) -> Result<Vec<JobRow>> {
    let running = jobs::table
        .filter(jobs::status.eq(JobStatus::Running.as_str()))
        .order((jobs::created_at.asc(), jobs::id.asc()));
    // One query per backend (`as_select` is typed by the backend it runs on), with or
    // without the id restriction.
    macro_rules! load_all {
        ($query:expr) => {
            match conn {
                Conn::Postgres(pg) => $query
                    .select(JobRow::as_select())
                    .for_update()
                    .skip_locked()
                    .load(pg)?,
                Conn::Sqlite(sqlite) => $query.select(JobRow::as_select()).load(sqlite)?,
            }
        };
    }
    macro_rules! load {
        ($query:expr) => {
            match only {
                Some(ids) => load_all!($query.filter(jobs::id.eq_any(ids))),
                None => load_all!($query),
            }
        };
    }
    let rows = match scope {
        RescueScope::Expired => load!(
            running.filter(
                jobs::lease_expires_at
                    .is_null()
                    .or(jobs::lease_expires_at.le(now)),
            )
        ),
        RescueScope::EarlierRuns { current } => load!(
            running.filter(
                jobs::lease_expires_at
                    .is_null()
                    .or(jobs::lease_open.eq(1))
                    .or(jobs::lease_owner
                        .like(format!("{SERVER_OWNER_PREFIX}%"))
                        .and(jobs::lease_owner.ne(current))),
            )
        ),
    };
    Ok(rows)
}
