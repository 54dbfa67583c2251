//! The one error type of the test kit, for the parts that report instead of panicking.

use std::path::PathBuf;

/// What went wrong while starting a server or running the kill loop.
#[derive(Debug, thiserror::Error)]
pub enum TestkitError {
    /// A file or directory could not be written.
    #[error("cannot write `{path}`")]
    Write {
        /// The file or directory.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The server binary could not be started.
    #[error("cannot start `{binary}`")]
    Spawn {
        /// The program that was run.
        binary: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The server did not print `listening on http://…` in time.
    #[error("`{binary}` did not say where it listens within {seconds} s; its stderr:\n{stderr}")]
    NotListening {
        /// The program that was run.
        binary: PathBuf,
        /// How long it was given.
        seconds: u64,
        /// What it wrote to stderr, when the kit captured it (else empty).
        stderr: String,
    },
    /// The `listening on` line did not hold an address.
    #[error("`{binary}` printed `listening on {line}`, which is not an address")]
    BadAddress {
        /// The program that was run.
        binary: PathBuf,
        /// The rest of the line.
        line: String,
    },
}
