//! [`Backoff`]: the one retry back-off of skill-fleet, shared by the client's reconnects and
//! the server's retries of writes the database refused.

use std::hash::{BuildHasher, RandomState};
use std::time::Duration;

/// Exponential backoff with jitter: each delay is drawn from the upper half of
/// `initial · 2ⁿ`, capped at `max`.
#[derive(Debug)]
pub struct Backoff {
    initial: Duration,
    max: Duration,
    attempt: u32,
    random: RandomState,
    draws: u64,
}

impl Backoff {
    /// Delays start at `initial` and double up to `max`.
    pub fn new(initial: Duration, max: Duration) -> Backoff {
        Backoff {
            initial,
            max: max.max(initial),
            attempt: 0,
            random: RandomState::new(),
            draws: 0,
        }
    }

    /// Starts over from `initial` (after a success).
    pub fn reset(&mut self) {
        self.attempt = 0;
    }

    /// The delay before the next try.
    pub fn next_delay(&mut self) -> Duration {
        let factor = 1u32.checked_shl(self.attempt.min(20)).unwrap_or(u32::MAX);
        let ceiling = self.initial.saturating_mul(factor).min(self.max);
        self.attempt = self.attempt.saturating_add(1);
        self.draws = self.draws.wrapping_add(1);
        // A fraction in [0, 1) from a randomly keyed hash: jitter without a rand crate.
        let fraction = (self.random.hash_one(self.draws) >> 11) as f64 / (1u64 << 53) as f64;
        ceiling.mul_f64(0.5 + fraction / 2.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_with_jitter_up_to_the_cap_and_resets() {
        let mut backoff = Backoff::new(Duration::from_millis(250), Duration::from_secs(10));
        let delays: Vec<_> = (0..10).map(|_| backoff.next_delay()).collect();
        let ceilings = [
            250u64, 500, 1000, 2000, 4000, 8000, 10_000, 10_000, 10_000, 10_000,
        ];
        for (delay, ceiling) in delays.iter().zip(ceilings) {
            let ceiling = Duration::from_millis(ceiling);
            assert!(
                *delay >= ceiling / 2 && *delay <= ceiling,
                "{delay:?} vs {ceiling:?}"
            );
        }
        backoff.reset();
        assert!(backoff.next_delay() <= Duration::from_millis(250));
    }
}
