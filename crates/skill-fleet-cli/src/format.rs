//! Text formatting shared by the commands: percentages, dollars, ETAs, step names, progress
//! lines and tables.

use chrono::{DateTime, Utc};
use serde_json::Value;
use skill_fleet_types::{Job, JobLease, JobStatus, StreamEvent};

/// `0.35` → `35%` (rounded down, so a job shows 100% only when it is).
pub fn percent(progress: f64) -> String {
    let clamped = if progress.is_finite() {
        progress.clamp(0.0, 1.0)
    } else {
        0.0
    };
    format!("{}%", (clamped * 100.0 + 1e-9).floor() as u32)
}

/// `0.854` → `$0.85`.
pub fn dollars(cost_usd: f64) -> String {
    format!("${cost_usd:.2}")
}

/// A metric with at most four decimals and no trailing zeros: `0.84`, `0.8412`, `12`.
pub fn metric(value: f64) -> String {
    let text = format!("{value:.4}");
    let text = text.trim_end_matches('0').trim_end_matches('.');
    if text.is_empty() || text == "-" {
        "0".to_owned()
    } else {
        text.to_owned()
    }
}

/// Seconds as `45s`, `5m30s`, `1h02m`, `2d03h`.
pub fn eta(seconds: f64) -> String {
    if !seconds.is_finite() || seconds < 0.0 {
        return "-".to_owned();
    }
    let total = seconds.round() as u64;
    let (d, h, m, s) = (
        total / 86_400,
        total / 3600 % 24,
        total / 60 % 60,
        total % 60,
    );
    if d > 0 {
        format!("{d}d{h:02}h")
    } else if h > 0 {
        format!("{h}h{m:02}m")
    } else if m > 0 {
        format!("{m}m{s:02}s")
    } else {
        format!("{s}s")
    }
}

/// A span of time in words: `3 s` under 100 seconds, else as [`eta`] (`5m30s`).
pub fn span(seconds: f64) -> String {
    if seconds.is_finite() && seconds.round() < 100.0 {
        format!("{} s", seconds.max(0.0).round() as u64)
    } else {
        eta(seconds)
    }
}

/// A running job's lease as of `now`: `owner gpu-box-3, renewed 3 s ago, expires in 87 s`
/// (or `expired 2 s ago`, until the rescue sweep takes the job back).
pub fn lease(lease: &JobLease, now: DateTime<Utc>) -> String {
    let seconds =
        |from: DateTime<Utc>, to: DateTime<Utc>| (to - from).num_milliseconds() as f64 / 1000.0;
    let renewed = seconds(lease.renewed_at, now).max(0.0);
    let left = seconds(now, lease.expires_at);
    let expiry = if left >= 0.0 {
        format!("expires in {}", span(left))
    } else {
        format!("expired {} ago", span(-left))
    };
    format!(
        "owner {}, renewed {} ago, {expiry}",
        lease.owner,
        span(renewed)
    )
}

/// `proposing_instructions` → `Proposing instructions...`; a bare number → `Step 3...`.
pub fn pretty_step(step: &str) -> String {
    let step = step.trim();
    if !step.is_empty() && step.bytes().all(|b| b.is_ascii_digit()) {
        return format!("Step {step}...");
    }
    let words = step
        .split(|c: char| c == '_' || c == '-' || c.is_whitespace())
        .filter(|word| !word.is_empty())
        .collect::<Vec<_>>()
        .join(" ");
    let mut chars = words.chars();
    match chars.next() {
        Some(first) => format!("{}{}...", first.to_uppercase(), chars.as_str()),
        None => "Working...".to_owned(),
    }
}

/// What the job is doing, for a progress line: its step, else its status.
pub fn activity(status: JobStatus, step: Option<&str>) -> String {
    match (status, step) {
        (JobStatus::Queued, None) => "Waiting to start...".to_owned(),
        (_, Some(step)) if !step.trim().is_empty() => pretty_step(step),
        (JobStatus::Running, _) => "Running...".to_owned(),
        (status, _) => format!("{}...", capitalized(status.as_str())),
    }
}

/// One plain progress line: `[35%] Proposing instructions... ($0.85)`.
pub fn progress_line(event: &StreamEvent) -> String {
    format!(
        "[{}] {} ({})",
        percent(event.progress),
        activity(event.status, event.step.as_deref()),
        dollars(event.cost_usd)
    )
}

/// The last line of a watch: `Done! Final metric: 0.84 (Cost: $2.30)`, `Failed: <error>`
/// or `Cancelled: <error>`; `None` for a job that is not finished.
pub fn final_line(
    status: JobStatus,
    metric_value: Option<f64>,
    cost_usd: f64,
    error: Option<&str>,
) -> Option<String> {
    let error = error.filter(|e| !e.trim().is_empty());
    match status {
        JobStatus::Completed => Some(match metric_value {
            Some(value) => format!(
                "Done! Final metric: {} (Cost: {})",
                metric(value),
                dollars(cost_usd)
            ),
            None => format!("Done! (Cost: {})", dollars(cost_usd)),
        }),
        JobStatus::Failed => Some(format!("Failed: {}", error.unwrap_or("unknown error"))),
        JobStatus::Cancelled => Some(format!("Cancelled: {}", error.unwrap_or("cancelled"))),
        JobStatus::Queued | JobStatus::Running => None,
    }
}

/// At most `max` characters, the last one `…` when cut.
pub fn truncate(text: &str, max: usize) -> String {
    let count = text.chars().count();
    if count <= max {
        return text.to_owned();
    }
    let mut out: String = text.chars().take(max.saturating_sub(1)).collect();
    out.push('…');
    out
}

/// A job's result or error in one short line, for tables.
pub fn outcome(job: &Job) -> String {
    match job.status {
        JobStatus::Failed | JobStatus::Cancelled => job.error.clone().unwrap_or_default(),
        _ => match (&job.result, &job.result_path) {
            (Some(result), _) => compact(result),
            (None, Some(path)) => path.clone(),
            (None, None) => String::new(),
        },
    }
}

/// A size in bytes for people: `512 B`, `1.5 KiB`, `12.0 MiB`, `1.2 GiB`.
pub fn bytes(size: u64) -> String {
    const UNITS: [&str; 5] = ["KiB", "MiB", "GiB", "TiB", "PiB"];
    if size < 1024 {
        return format!("{size} B");
    }
    let mut value = size as f64 / 1024.0;
    let mut unit = 0;
    // Rounded to one decimal, 1023.96 KiB reads as 1024.0 KiB: go up a unit first.
    while value >= 1023.95 && unit + 1 < UNITS.len() {
        value /= 1024.0;
        unit += 1;
    }
    format!("{value:.1} {}", UNITS[unit])
}

/// JSON on one line.
pub fn compact(value: &Value) -> String {
    serde_json::to_string(value).unwrap_or_default()
}

fn capitalized(text: &str) -> String {
    let mut chars = text.chars();
    match chars.next() {
        Some(first) => format!("{}{}", first.to_uppercase(), chars.as_str()),
        None => String::new(),
    }
}

/// A plain-text table: a header row and left-aligned columns two spaces apart, without
/// trailing spaces.
pub fn table(header: &[&str], rows: &[Vec<String>]) -> String {
    let mut widths: Vec<usize> = header.iter().map(|h| h.chars().count()).collect();
    for row in rows {
        for (width, cell) in widths.iter_mut().zip(row) {
            *width = (*width).max(cell.chars().count());
        }
    }
    let mut out = String::new();
    let header: Vec<String> = header.iter().map(|h| (*h).to_owned()).collect();
    for row in std::iter::once(&header).chain(rows) {
        let mut line = String::new();
        for (i, (cell, width)) in row.iter().zip(&widths).enumerate() {
            if i > 0 {
                line.push_str("  ");
            }
            line.push_str(cell);
            let pad = width - cell.chars().count();
            line.extend(std::iter::repeat_n(' ', pad));
        }
        out.push_str(line.trim_end());
        out.push('\n');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::Utc;

    fn event(status: JobStatus, step: Option<&str>, progress: f64, cost: f64) -> StreamEvent {
        StreamEvent {
            job_id: "j".into(),
            seq: 1,
            status,
            step: step.map(str::to_owned),
            progress,
            cost_usd: cost,
            metric: None,
            eta_seconds: None,
            message: None,
            at: Utc::now(),
        }
    }

    #[test]
    fn steps_are_prettified() {
        assert_eq!(
            pretty_step("proposing_instructions"),
            "Proposing instructions..."
        );
        assert_eq!(pretty_step("collecting-traces"), "Collecting traces...");
        assert_eq!(pretty_step("bootstrap"), "Bootstrap...");
        assert_eq!(pretty_step("3"), "Step 3...");
        assert_eq!(pretty_step("__"), "Working...");
        assert_eq!(pretty_step("évaluation_finale"), "Évaluation finale...");
    }

    #[test]
    fn progress_lines_look_like_the_design() {
        let line = progress_line(&event(
            JobStatus::Running,
            Some("proposing_instructions"),
            0.35,
            0.85,
        ));
        assert_eq!(line, "[35%] Proposing instructions... ($0.85)");
        assert_eq!(
            progress_line(&event(JobStatus::Queued, None, 0.0, 0.0)),
            "[0%] Waiting to start... ($0.00)"
        );
        assert_eq!(
            progress_line(&event(JobStatus::Running, None, 0.999, 1.234)),
            "[99%] Running... ($1.23)"
        );
        assert_eq!(percent(0.29), "29%");
        assert_eq!(percent(1.0), "100%");
        assert_eq!(percent(f64::NAN), "0%");
    }

    #[test]
    fn final_lines() {
        assert_eq!(
            final_line(JobStatus::Completed, Some(0.84), 2.3, None).unwrap(),
            "Done! Final metric: 0.84 (Cost: $2.30)"
        );
        assert_eq!(
            final_line(JobStatus::Completed, None, 0.0, None).unwrap(),
            "Done! (Cost: $0.00)"
        );
        assert_eq!(
            final_line(JobStatus::Failed, None, 0.0, Some("boom")).unwrap(),
            "Failed: boom"
        );
        assert_eq!(
            final_line(
                JobStatus::Cancelled,
                None,
                2.31,
                Some("budget exceeded: $2.31 of $2.00")
            )
            .unwrap(),
            "Cancelled: budget exceeded: $2.31 of $2.00"
        );
        assert_eq!(final_line(JobStatus::Running, None, 0.0, None), None);
    }

    #[test]
    fn numbers_and_durations() {
        assert_eq!(metric(0.84), "0.84");
        assert_eq!(metric(0.84123), "0.8412");
        assert_eq!(metric(12.0), "12");
        assert_eq!(metric(-0.5), "-0.5");
        assert_eq!(eta(45.2), "45s");
        assert_eq!(eta(330.0), "5m30s");
        assert_eq!(eta(3720.0), "1h02m");
        assert_eq!(eta(2.0 * 86_400.0 + 3.0 * 3600.0), "2d03h");
        assert_eq!(eta(f64::NAN), "-");
    }

    #[test]
    fn leases_read_as_owner_renewal_and_expiry() {
        let now = Utc::now();
        let held = JobLease {
            owner: "gpu-box-3".into(),
            renewed_at: now - chrono::Duration::milliseconds(3_200),
            expires_at: now + chrono::Duration::milliseconds(86_800),
        };
        assert_eq!(
            lease(&held, now),
            "owner gpu-box-3, renewed 3 s ago, expires in 87 s"
        );
        let stale = JobLease {
            owner: "old-box".into(),
            renewed_at: now - chrono::Duration::seconds(150),
            expires_at: now - chrono::Duration::seconds(2),
        };
        assert_eq!(
            lease(&stale, now),
            "owner old-box, renewed 2m30s ago, expired 2 s ago"
        );
        // A clock a little ahead of ours is "just now", not a negative age.
        let ahead = JobLease {
            renewed_at: now + chrono::Duration::seconds(1),
            ..held
        };
        assert!(lease(&ahead, now).contains("renewed 0 s ago"));
        assert_eq!(span(99.4), "99 s");
        assert_eq!(span(100.0), "1m40s");
    }

    #[test]
    fn sizes_read_in_binary_units() {
        assert_eq!(bytes(0), "0 B");
        assert_eq!(bytes(1023), "1023 B");
        assert_eq!(bytes(1024), "1.0 KiB");
        assert_eq!(bytes(1536), "1.5 KiB");
        assert_eq!(bytes(1024 * 1024 - 1), "1.0 MiB");
        assert_eq!(bytes(3 * 1024 * 1024 + 300 * 1024), "3.3 MiB");
        assert_eq!(bytes(256 << 20), "256.0 MiB");
        assert_eq!(bytes(5 << 30), "5.0 GiB");
        assert_eq!(bytes(u64::MAX), "16384.0 PiB");
    }

    #[test]
    fn tables_align_and_truncation_marks_the_cut() {
        assert_eq!(truncate("abcdef", 4), "abc…");
        assert_eq!(truncate("abc", 4), "abc");
        let text = table(
            &["ID", "STATUS"],
            &[
                vec!["a".into(), "running".into()],
                vec!["long-id".into(), "".into()],
            ],
        );
        assert_eq!(text, "ID       STATUS\na        running\nlong-id\n");
    }
}
