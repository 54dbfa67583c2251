//! ETA estimation from the observed progress rate.
//!
//! Progress observations are sampled at least [`MIN_SPACING`] apart (a burst of reports at
//! one instant counts once), each sample giving a rate in fraction per second. The rates are
//! smoothed with a time-weighted exponential moving average whose time constant is [`TAU`]:
//! a sample covering `dt` seconds gets weight `1 - exp(-dt / TAU)`, so irregular reporting
//! does not skew the average towards bursts.
//!
//! The ETA is `(1 - progress) / rate`, and is `None` until [`MIN_SAMPLES`] samples exist
//! (three progress observations), while the smoothed rate is zero (a stall), and whenever
//! the result would not be a finite, non-negative number. Progress going backwards starts
//! the estimate over.

use skill_fleet_types::JobStatus;
use tokio::time::{Duration, Instant};

/// Shortest time between two observations that form a rate sample.
pub(crate) const MIN_SPACING: Duration = Duration::from_millis(200);

/// Time constant of the moving average, in seconds.
pub(crate) const TAU: f64 = 10.0;

/// Rate samples needed before an ETA is given.
pub(crate) const MIN_SAMPLES: u32 = 2;

/// Smoothed progress rate of one job.
#[derive(Debug, Clone, Default)]
pub(crate) struct Eta {
    /// The observation the next sample is measured from.
    anchor: Option<(Instant, f64)>,
    /// Smoothed rate, fraction per second.
    rate: f64,
    /// Samples taken since the last reset.
    samples: u32,
}

impl Eta {
    /// Records that the job reported `progress` at `now`.
    pub(crate) fn observe(&mut self, now: Instant, progress: f64) {
        let Some((then, before)) = self.anchor else {
            self.anchor = Some((now, progress));
            return;
        };
        if progress < before {
            *self = Eta {
                anchor: Some((now, progress)),
                ..Eta::default()
            };
            return;
        }
        let elapsed = now.saturating_duration_since(then);
        if elapsed < MIN_SPACING {
            return;
        }
        let dt = elapsed.as_secs_f64();
        let rate = (progress - before) / dt;
        if !rate.is_finite() {
            return;
        }
        self.rate = if self.samples == 0 {
            rate
        } else {
            let weight = 1.0 - (-dt / TAU).exp();
            self.rate + weight * (rate - self.rate)
        };
        self.samples = self.samples.saturating_add(1);
        self.anchor = Some((now, progress));
    }

    /// Seconds until done for a job at `progress` with `status`.
    ///
    /// `Some(0.0)` once the job completed or its progress reached 1; `None` for a failed or
    /// cancelled job, which will not finish.
    pub(crate) fn estimate(&self, progress: f64, status: JobStatus) -> Option<f64> {
        if status == JobStatus::Completed || progress >= 1.0 {
            return Some(0.0);
        }
        if status.is_terminal() || self.samples < MIN_SAMPLES || self.rate <= 0.0 {
            return None;
        }
        let eta = (1.0 - progress) / self.rate;
        (eta.is_finite() && eta >= 0.0).then_some(eta)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn feed(eta: &mut Eta, start: Instant, points: &[(u64, f64)]) {
        for &(ms, progress) in points {
            eta.observe(start + Duration::from_millis(ms), progress);
        }
    }

    #[test]
    fn none_until_three_spaced_observations() {
        let start = Instant::now();
        let mut eta = Eta::default();
        feed(&mut eta, start, &[(0, 0.0), (1000, 0.1)]);
        assert_eq!(eta.estimate(0.1, JobStatus::Running), None);
        feed(&mut eta, start, &[(1001, 0.11), (1002, 0.12)]);
        assert_eq!(
            eta.estimate(0.12, JobStatus::Running),
            None,
            "burst counts once"
        );
        feed(&mut eta, start, &[(2000, 0.2)]);
        let got = eta.estimate(0.2, JobStatus::Running);
        assert!(got.is_some_and(|s| (s - 8.0).abs() < 1e-9), "{got:?}");
    }

    #[test]
    fn stall_and_regress_give_no_eta() {
        let start = Instant::now();
        let mut eta = Eta::default();
        feed(&mut eta, start, &[(0, 0.5), (1000, 0.5), (2000, 0.5)]);
        assert_eq!(eta.estimate(0.5, JobStatus::Running), None);
        feed(&mut eta, start, &[(3000, 0.6), (4000, 0.7), (5000, 0.1)]);
        assert_eq!(eta.estimate(0.1, JobStatus::Running), None, "reset");
    }

    #[test]
    fn finished_jobs() {
        let eta = Eta::default();
        assert_eq!(eta.estimate(0.3, JobStatus::Completed), Some(0.0));
        assert_eq!(eta.estimate(1.0, JobStatus::Running), Some(0.0));
        assert_eq!(eta.estimate(0.3, JobStatus::Failed), None);
        assert_eq!(eta.estimate(0.3, JobStatus::Cancelled), None);
    }

    #[test]
    fn smoothing_follows_a_rate_change_gradually() {
        let start = Instant::now();
        let mut eta = Eta::default();
        // 1% per second for 20 s, then 2% per second.
        let mut points: Vec<(u64, f64)> = (0..=20).map(|s| (s * 1000, s as f64 * 0.01)).collect();
        points.extend((21..=25).map(|s| (s * 1000, 0.2 + (s - 20) as f64 * 0.02)));
        feed(&mut eta, start, &points);
        let remaining = 1.0 - 0.3;
        let got = eta.estimate(0.3, JobStatus::Running).unwrap_or(f64::NAN);
        assert!(
            got < remaining / 0.01 && got > remaining / 0.02,
            "between the two rates: {got}"
        );
    }
}
