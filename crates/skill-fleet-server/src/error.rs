//! `ServerError`: why the server could not start or a subcommand failed.

use std::path::PathBuf;

/// Start-up and subcommand failures. Printed once, with their cause chain, by `main`.
#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    /// Bad configuration (flags, environment or file).
    #[error("configuration: {0}")]
    Config(String),
    /// A file could not be read.
    #[error("cannot read {}: {source}", path.display())]
    Io {
        /// The file.
        path: PathBuf,
        /// The cause.
        source: std::io::Error,
    },
    /// The tokens file is invalid (the reason names the token).
    #[error("tokens file {}: {reason}", path.display())]
    TokensFile {
        /// The file.
        path: PathBuf,
        /// What is wrong, naming the token by its place in the file and its name.
        reason: String,
    },
    /// The listener could not be bound.
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        /// The address.
        addr: std::net::SocketAddr,
        /// The cause.
        source: std::io::Error,
    },
    /// Another process (a running server, `init-db`) holds the database's lock; nothing was
    /// read or written. The store's error names the database and the holder.
    #[error("{0}; stop it or choose another --database")]
    DatabaseInUse(skill_fleet_jobs::StoreError),
    /// The job store failed.
    #[error(transparent)]
    Store(#[from] skill_fleet_jobs::StoreError),
    /// The HTTP layer failed at start-up.
    #[error(transparent)]
    Core(#[from] skill_fleet_core::CoreError),
    /// Serving failed.
    #[error("server: {0}")]
    Serve(std::io::Error),
}
