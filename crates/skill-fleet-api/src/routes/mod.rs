//! Route handlers, one module per resource.

pub mod health;
pub mod jobs;
pub mod stream;
