//! Waiting for a condition with a deadline: the one way these tests wait, so a loaded machine
//! makes them slower, never wrong.

use std::time::{Duration, Instant};

/// How long any one wait in the suites may take before the test fails.
pub const DEADLINE: Duration = Duration::from_secs(60);

/// How often a condition is checked again.
const POLL: Duration = Duration::from_millis(20);

/// Checks `check` every 20 ms until it returns `Some`, and returns that value; panics with
/// `timed out waiting for {what}` once `deadline` has passed.
pub fn wait_until<T>(what: &str, deadline: Duration, mut check: impl FnMut() -> Option<T>) -> T {
    let give_up = Instant::now() + deadline;
    loop {
        if let Some(value) = check() {
            return value;
        }
        assert!(
            Instant::now() < give_up,
            "timed out waiting for {what} (after {deadline:?})"
        );
        std::thread::sleep(POLL);
    }
}

/// [`wait_until`] with the deadline in whole seconds, as the server suites write it.
pub fn wait_for<T>(what: &str, seconds: u64, check: impl FnMut() -> Option<T>) -> T {
    wait_until(what, Duration::from_secs(seconds), check)
}
