//! SSE event ids: a job's committed `version` is their high part.
//!
//! Every change to a job bumps its `version` (the store-wide change counter, persisted, so
//! it grows per job on every server and across restarts). The event of a state committed
//! at version `v` has the id `v << VERSION_SHIFT`; live states emitted between two commits
//! (coalesced progress not written yet) count up by one from there, and the first emission
//! after a newer version is learned jumps to that version's id. So ids never go backwards,
//! whichever server a client follows a job through.

/// How far a job's `version` is shifted to make its event id: `2^20` live states fit between
/// two commits (at one state per 100 ms tick, 29 hours without a write), and ids stay below
/// `2^53` (exact in a JavaScript number) while versions stay below `2^33`.
pub const VERSION_SHIFT: u32 = 20;

/// The event id of the state committed at `version`: `version << VERSION_SHIFT` (saturating,
/// never wrapping, for versions past `2^44`).
pub fn version_event_id(version: u64) -> u64 {
    version.saturating_mul(1 << VERSION_SHIFT)
}

/// The version whose event id is at most `seq`: the inverse of [`version_event_id`].
pub fn event_id_version(seq: u64) -> u64 {
    seq >> VERSION_SHIFT
}

/// The id of a job's next emitted state: one more than the last one, and at least the id
/// of the newest version known.
pub(crate) fn next_event_id(previous: u64, version: u64) -> u64 {
    previous.saturating_add(1).max(version_event_id(version))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_jump_to_newer_versions_and_count_up_between_them() {
        assert_eq!(version_event_id(3), 3 << 20);
        assert_eq!(event_id_version((3 << 20) + 7), 3);
        assert_eq!(next_event_id(0, 0), 1, "a job with no known version");
        assert_eq!(next_event_id(0, 3), 3 << 20);
        assert_eq!(next_event_id(3 << 20, 3), (3 << 20) + 1, "a live state");
        assert_eq!(next_event_id((3 << 20) + 9, 4), 4 << 20, "a newer version");
        assert_eq!(
            next_event_id(5 << 20, 4),
            (5 << 20) + 1,
            "an older one never lowers it"
        );
        assert_eq!(version_event_id(u64::MAX), u64::MAX);
        assert_eq!(next_event_id(u64::MAX, 1), u64::MAX);
        // Ids of versions below 2^33 are exact as JavaScript numbers.
        assert!(version_event_id((1 << 33) - 1) < 1 << 53);
    }
}
