//! `skill-fleet jobs show ID`: one job, every field; for a running job, its lease (owner,
//! last renewal, expiry).

use skill_fleet_types::Job;

use crate::context::{Context, note_cached, out, out_json};
use crate::error::{CliError, code};
use crate::format;

/// Runs `jobs show`.
pub fn run(ctx: &Context, id: &str) -> Result<u8, CliError> {
    let fetched = ctx.client()?.job(id)?;
    note_cached(fetched.from_cache);
    if ctx.json() {
        out_json(&fetched.value)?;
    } else {
        for (key, value) in fields(&fetched.value) {
            out(format!("{key:<12} {value}").trim_end())?;
        }
    }
    Ok(code::OK)
}

/// The job as `key: value` pairs, in reading order; empty fields left out.
fn fields(job: &Job) -> Vec<(&'static str, String)> {
    let p = &job.progress;
    let time = |t: &chrono::DateTime<chrono::Utc>| t.format("%Y-%m-%d %H:%M:%S UTC").to_string();
    let mut fields = vec![
        ("id:", job.id.clone()),
        ("type:", job.job_type.clone()),
        ("status:", job.status.to_string()),
    ];
    if let Some(lease) = &job.lease {
        fields.push(("lease:", format::lease(lease, chrono::Utc::now())));
    }
    fields.extend([
        (
            "progress:",
            format!(
                "{} {}",
                format::percent(p.progress),
                format::activity(job.status, p.step.as_deref())
            ),
        ),
        ("cost:", format::dollars(p.cost_usd)),
    ]);
    let mut optional = |key, value: Option<String>| {
        if let Some(value) = value.filter(|v| !v.is_empty()) {
            fields.push((key, value));
        }
    };
    optional("step:", p.step.clone());
    optional("message:", p.message.clone());
    optional("metric:", p.metric.map(format::metric));
    optional(
        "eta:",
        p.eta_seconds
            .filter(|_| !job.status.is_terminal())
            .map(format::eta),
    );
    optional("error:", job.error.clone());
    optional("result:", job.result.as_ref().map(format::compact));
    optional("result_path:", job.result_path.clone());
    optional("attempt:", Some(job.attempt.to_string()));
    optional("source:", Some(job.source.clone()));
    optional("created:", Some(time(&job.created_at)));
    optional("started:", job.started_at.as_ref().map(time));
    optional("completed:", job.completed_at.as_ref().map(time));
    optional("updated:", Some(time(&job.updated_at)));
    optional("version:", Some(job.version.to_string()));
    if !job.metadata.is_empty() {
        optional(
            "metadata:",
            Some(format::compact(&serde_json::Value::Object(
                job.metadata.clone(),
            ))),
        );
    }
    optional("checkpoint:", job.checkpoint.as_ref().map(format::compact));
    fields
}
