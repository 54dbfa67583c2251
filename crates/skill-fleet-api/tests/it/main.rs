//! The HTTP crate's integration tests, one binary: the router driven with `oneshot` or over a
//! socket bound to 127.0.0.1:0, each test on its own temp database.

mod access;
mod artifacts;
mod caching;
mod cluster;
mod fuzz_router;
mod openapi;
mod proptest_http;
mod routes;
mod sse;
mod support;
