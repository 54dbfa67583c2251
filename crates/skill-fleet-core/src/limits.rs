//! Budgets and time limits: when a job's reported cost or its running time passes what its
//! metadata allows, the job is cancelled and whatever runs it is told to stop.

use chrono::{DateTime, Utc};
use skill_fleet_types::{Job, JobLimits, JobStatus};

use crate::live::LiveJob;

/// A job's limits; ones that do not parse (a legacy import, a database edited by hand) are
/// reported and ignored rather than blocking the job.
pub(crate) fn limits_of(job: &Job) -> JobLimits {
    JobLimits::from_metadata(&job.metadata).unwrap_or_else(|err| {
        tracing::warn!(job.id = %job.id, error = %err, "ignoring invalid limits");
        JobLimits {
            budget_usd: None,
            budget_warning_fraction: skill_fleet_types::DEFAULT_BUDGET_WARNING_FRACTION,
            time_limit_seconds: None,
        }
    })
}

/// What the budget says after an update.
#[derive(Debug, PartialEq)]
pub(crate) enum Budget {
    Fine,
    /// Past the warning fraction, for the first time this server run.
    Warn(String),
    /// Past the budget: the job is cancelled with this reason.
    Exceeded(String),
}

pub(crate) fn check_budget(live: &mut LiveJob) -> Budget {
    let Some(budget) = live.limits.budget_usd else {
        return Budget::Fine;
    };
    let cost = live.progress.cost_usd;
    if cost > budget {
        return Budget::Exceeded(format!("budget exceeded: ${cost:.2} of ${budget:.2}"));
    }
    let fraction = live.limits.budget_warning_fraction;
    if !live.warned && fraction < 1.0 && cost >= budget * fraction {
        live.warned = true;
        let percent = (fraction * 100.0).round();
        return Budget::Warn(format!(
            "budget {percent}% used: ${cost:.2} of ${budget:.2}"
        ));
    }
    Budget::Fine
}

/// Why a running job must stop now for its time limit (counted from `started_at`, which
/// survives restarts, so time the server was down counts), if it must.
pub(crate) fn time_limit_passed(live: &LiveJob, now: DateTime<Utc>) -> Option<String> {
    let (Some(limit), Some(started)) = (live.limits.time_limit_seconds, live.started_at) else {
        return None;
    };
    if live.status != JobStatus::Running {
        return None;
    }
    let ran = (now - started).num_milliseconds() as f64 / 1000.0;
    (ran > limit).then(|| format!("time limit exceeded after {}", format_duration(ran)))
}

/// `1h00m`, `5m03s`, `42s`.
fn format_duration(seconds: f64) -> String {
    let total = seconds.max(0.0).floor() as u64;
    let (h, m, s) = (total / 3600, total % 3600 / 60, total % 60);
    if h > 0 {
        format!("{h}h{m:02}m")
    } else if m > 0 {
        format!("{m}m{s:02}s")
    } else {
        format!("{s}s")
    }
}

#[cfg(test)]
mod tests {
    use skill_fleet_types::Progress;

    use super::*;

    #[test]
    fn durations_read_like_a_clock() {
        assert_eq!(format_duration(3600.4), "1h00m");
        assert_eq!(format_duration(3725.0), "1h02m");
        assert_eq!(format_duration(303.0), "5m03s");
        assert_eq!(format_duration(2.9), "2s");
    }

    fn live(budget: f64, cost: f64) -> LiveJob {
        LiveJob {
            status: JobStatus::Running,
            progress: Progress {
                cost_usd: cost,
                ..Progress::default()
            },
            limits: JobLimits {
                budget_usd: Some(budget),
                budget_warning_fraction: 0.8,
                time_limit_seconds: None,
            },
            warned: false,
            started_at: None,
            attempt: 1,
            lease: None,
        }
    }

    #[test]
    fn the_budget_warns_once_then_stops_the_job() {
        let mut job = live(2.0, 1.5);
        assert!(matches!(check_budget(&mut job), Budget::Fine));
        job.progress.cost_usd = 1.62;
        let Budget::Warn(warning) = check_budget(&mut job) else {
            panic!("no warning")
        };
        assert_eq!(warning, "budget 80% used: $1.62 of $2.00");
        job.progress.cost_usd = 1.9;
        assert!(matches!(check_budget(&mut job), Budget::Fine));
        job.progress.cost_usd = 2.31;
        let Budget::Exceeded(reason) = check_budget(&mut job) else {
            panic!("not stopped")
        };
        assert_eq!(reason, "budget exceeded: $2.31 of $2.00");
    }

    #[test]
    fn a_time_limit_counts_from_the_first_start() {
        let mut job = live(2.0, 0.0);
        job.limits.time_limit_seconds = Some(60.0);
        let started = Utc::now();
        job.started_at = Some(started);
        assert_eq!(
            time_limit_passed(&job, started + chrono::Duration::seconds(59)),
            None
        );
        assert_eq!(
            time_limit_passed(&job, started + chrono::Duration::seconds(303)).as_deref(),
            Some("time limit exceeded after 5m03s")
        );
        job.status = JobStatus::Queued;
        assert_eq!(
            time_limit_passed(&job, started + chrono::Duration::seconds(303)),
            None
        );
    }
}
