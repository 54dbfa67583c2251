//! Retention: finished jobs that ended more than `retention_days` ago are deleted, with their
//! history, cached responses and files, at start-up and then every hour.

use std::path::{Path, PathBuf};
use std::time::Duration;

use skill_fleet_api::AppState;

/// How often old jobs are looked for after the check at start-up.
const CHECK_EVERY: Duration = Duration::from_secs(60 * 60);

/// Prunes now and then every hour, until `shutdown` resolves.
pub async fn run(
    state: AppState,
    data_dir: PathBuf,
    keep: Duration,
    shutdown: impl std::future::Future<Output = ()>,
) {
    let Ok(older_than) = chrono::Duration::from_std(keep) else {
        tracing::error!(?keep, "retention period out of range; nothing is pruned");
        return;
    };
    let mut ticker = tokio::time::interval(CHECK_EVERY);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    tokio::pin!(shutdown);
    loop {
        tokio::select! {
            _ = &mut shutdown => return,
            _ = ticker.tick() => prune_once(&state, &data_dir, older_than).await,
        }
    }
}

async fn prune_once(state: &AppState, data_dir: &Path, older_than: chrono::Duration) {
    let report = match state.service().prune(older_than).await {
        Ok(report) => report,
        Err(err) => {
            tracing::warn!(error = %err, "retention: pruning finished jobs failed; will retry");
            return;
        }
    };
    let mut removed_dirs = 0;
    for id in &report.ids {
        // Ids were validated when the jobs were made; checked again before touching a path.
        if skill_fleet_types::validate_job_id(id).is_err() {
            tracing::warn!(job.id = %id, "retention: not a valid id, its files are left alone");
            continue;
        }
        let dir = data_dir.join("jobs").join(id);
        match tokio::fs::remove_dir_all(&dir).await {
            Ok(()) => removed_dirs += 1,
            Err(err) if err.kind() == std::io::ErrorKind::NotFound => {}
            Err(err) => {
                tracing::warn!(job.id = %id, dir = %dir.display(), error = %err, "retention: cannot remove a job's files");
            }
        }
    }
    if report.jobs > 0 {
        tracing::info!(
            jobs = report.jobs,
            history_rows = report.progress_rows,
            dirs = removed_dirs,
            "retention: deleted finished jobs"
        );
    }
}
