//! The rescue sweep: every `rescue_interval`, jobs whose lease expired are taken back from
//! their lost owners, unless the database was unusable less than one lease ago (the outage
//! guard: owners could not renew while it was down, so their leases say nothing yet).

use std::time::Duration;

use skill_fleet_jobs::{RescuePolicy, RescueScope};

use crate::service::JobService;

/// How long an artifact upload may go without a chunk before the sweep discards it (its
/// writer crashed, or its server did, on a database others share).
pub const ABANDONED_UPLOAD_IDLE: Duration = Duration::from_secs(3600);

/// How the sweep runs.
#[derive(Debug, Clone)]
pub struct RescueSettings {
    /// Time between sweeps.
    pub interval: Duration,
    /// What happens to a rescued job.
    pub policy: RescuePolicy,
}

/// Sweeps every `settings.interval` until `shutdown` resolves. Each sweep first checks the
/// outage guard: the database must have been usable for one full lease
/// ([`JobService::healthy_for`] at least the store's lease ttl), which is also the case one
/// lease after the service started, so a restarted server gives remote workers a full lease
/// to reach it again before their jobs are taken back.
pub async fn run_rescuer(
    service: &JobService,
    settings: RescueSettings,
    shutdown: impl std::future::Future<Output = ()>,
) {
    let ttl = service.store().lease_policy().ttl;
    let mut ticker = tokio::time::interval(settings.interval);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut paused = false;
    tokio::pin!(shutdown);
    loop {
        tokio::select! {
            () = &mut shutdown => return,
            _ = ticker.tick() => {
                let healthy = service.healthy_for();
                if healthy < ttl {
                    if !paused {
                        tracing::debug!(
                            healthy_ms = healthy.as_millis() as u64,
                            "rescue paused: the database was unavailable less than one lease ago"
                        );
                    }
                    paused = true;
                    continue;
                }
                paused = false;
                if let Err(err) = service
                    .rescue(RescueScope::Expired, settings.policy.clone())
                    .await
                {
                    tracing::warn!(error = %err, "rescue sweep failed; retrying next interval");
                }
                match service.discard_abandoned_uploads(ABANDONED_UPLOAD_IDLE).await {
                    Ok(0) => {}
                    Ok(discarded) => tracing::info!(discarded, "discarded abandoned artifact uploads"),
                    Err(err) => tracing::warn!(error = %err, "sweep of abandoned uploads failed; retrying next interval"),
                }
            }
        }
    }
}
