//! The client's integration tests, one binary.

mod proptest_cache;
