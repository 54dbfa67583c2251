//! The flusher: writes pending coalesced progress every tick and enforces time limits about
//! once a second, until the server stops.

use std::time::Duration;

use chrono::Utc;
use skill_fleet_jobs::StoreError;

use crate::error::CoreError;
use crate::limits::time_limit_passed;
use crate::service::JobService;

/// How often running jobs are checked against their time limits.
const LIMIT_CHECK_INTERVAL: Duration = Duration::from_secs(1);

impl JobService {
    /// Cancels every running job past its `time_limit_seconds` (counted from `started_at`,
    /// which survives restarts, so time the server was down counts). Called about once a
    /// second by [`run_flusher`].
    pub async fn enforce_time_limits(&self) {
        let now = Utc::now();
        let mut expired = Vec::new();
        for (id, entry) in self.live.entries() {
            // A job busy with an event is checked on the next round.
            let Ok(live) = entry.try_lock() else { continue };
            if let Some(reason) = time_limit_passed(&live, now) {
                expired.push((id, reason));
            }
        }
        for (id, reason) in expired {
            tracing::info!(job.id = %id, %reason, "cancelling job");
            match self.cancel(&id, Some(reason)).await {
                Ok(_) | Err(CoreError::Store(StoreError::InvalidTransition { .. })) => {}
                Err(err) => {
                    tracing::warn!(job.id = %id, error = %err, "could not cancel a job past its time limit")
                }
            }
        }
    }
}

/// Writes pending coalesced progress every `interval`, and cancels jobs past their time
/// limits about once a second, until `shutdown` resolves. The caller flushes once more on
/// shutdown ([`JobService::shutdown`]).
pub async fn run_flusher(
    service: &JobService,
    interval: Duration,
    shutdown: impl std::future::Future<Output = ()>,
) {
    let mut ticker = tokio::time::interval(interval);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut last_limit_check = tokio::time::Instant::now();
    let mut failed_ticks: u64 = 0;
    tokio::pin!(shutdown);
    loop {
        tokio::select! {
            _ = &mut shutdown => return,
            _ = ticker.tick() => {
                // An outage (disk full, read-only) fails every tick: warn once, then say
                // when it ends, instead of ten lines a second.
                match service.flush_pending().await {
                    Ok(_) if failed_ticks > 0 => {
                        tracing::info!(failed_ticks, "progress flush recovered; pending progress written");
                        failed_ticks = 0;
                    }
                    Ok(_) => {}
                    Err(err) => {
                        if failed_ticks == 0 {
                            tracing::warn!(error = %err, "progress flush failed; retrying every tick");
                        } else {
                            tracing::debug!(error = %err, failed_ticks, "progress flush failed again");
                        }
                        failed_ticks += 1;
                    }
                }
                if last_limit_check.elapsed() >= LIMIT_CHECK_INTERVAL {
                    last_limit_check = tokio::time::Instant::now();
                    service.enforce_time_limits().await;
                }
            }
        }
    }
}
