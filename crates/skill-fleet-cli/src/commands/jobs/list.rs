//! `skill-fleet jobs list`: a table of jobs, newest first, with the owner of each running
//! one.

use clap::Args;
use skill_fleet_client::JobFilter;
use skill_fleet_types::{Job, JobStatus};

use crate::context::{Context, note_cached, out, out_json, out_raw};
use crate::error::{CliError, code};
use crate::format;

/// Options of `jobs list`.
#[derive(Debug, Args)]
pub struct ListArgs {
    /// Only jobs in this status (queued, running, completed, failed, cancelled).
    #[arg(long, value_name = "STATUS")]
    pub status: Option<JobStatus>,
    /// Only jobs of this type (optimization, evaluation, …).
    #[arg(long = "type", value_name = "TYPE")]
    pub job_type: Option<String>,
    /// At most this many jobs (the server caps it at 500).
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u32).range(1..))]
    pub limit: Option<u32>,
    /// Continue after a previous page (its `next_cursor`).
    #[arg(long, value_name = "CURSOR")]
    pub cursor: Option<String>,
}

/// Runs `jobs list`.
pub fn run(ctx: &Context, args: &ListArgs) -> Result<u8, CliError> {
    let client = ctx.client()?;
    let filter = JobFilter {
        status: args.status,
        job_type: args.job_type.clone(),
        limit: args.limit,
        cursor: args.cursor.clone(),
    };
    let fetched = client.jobs(&filter)?;
    note_cached(fetched.from_cache);
    let list = fetched.value;
    if ctx.json() {
        out_json(&list)?;
        return Ok(code::OK);
    }
    if list.jobs.is_empty() {
        out("no jobs")?;
    } else {
        let rows: Vec<Vec<String>> = list.jobs.iter().map(row).collect();
        out_raw(&format::table(
            &[
                "ID",
                "TYPE",
                "STATUS",
                "OWNER",
                "PROGRESS",
                "STEP",
                "COST",
                "ETA",
                "RESULT/ERROR",
            ],
            &rows,
        ))?;
    }
    if let Some(cursor) = &list.next_cursor {
        out(format!("more: skill-fleet jobs list --cursor {cursor}"))?;
    }
    Ok(code::OK)
}

/// `$1.20`, or `$1.20/$2.00` when the job has a budget.
fn spent(job: &Job) -> String {
    let cost = format::dollars(job.progress.cost_usd);
    match job
        .metadata
        .get("budget_usd")
        .and_then(serde_json::Value::as_f64)
    {
        Some(budget) => format!("{cost}/{}", format::dollars(budget)),
        None => cost,
    }
}

/// Who runs the job (its lease's owner) while it runs; `-` otherwise.
fn owner(job: &Job) -> String {
    match &job.lease {
        Some(lease) if job.status == JobStatus::Running => format::truncate(&lease.owner, 20),
        _ => "-".to_owned(),
    }
}

fn row(job: &Job) -> Vec<String> {
    let progress = &job.progress;
    let eta = match (job.status, progress.eta_seconds) {
        (JobStatus::Running, Some(eta)) => format::eta(eta),
        _ => "-".to_owned(),
    };
    vec![
        format::truncate(&job.id, 36),
        format::truncate(&job.job_type, 16),
        job.status.to_string(),
        owner(job),
        format::percent(progress.progress),
        format::truncate(progress.step.as_deref().unwrap_or("-"), 24),
        spent(job),
        eta,
        format::truncate(&format::outcome(job), 40),
    ]
}
