//! The hub's integration tests, one binary.

mod hub;
