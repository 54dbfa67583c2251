//! `ClientError`: every way a call to the server can fail.

use std::path::PathBuf;

use skill_fleet_types::{ErrorCode, ValidationError};

use crate::lease::LeaseState;

/// Why a client call failed. Messages are lowercase and name the URL, id or path at fault.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// Nothing answers at the server's address (connection refused, unknown host, connect
    /// timed out), or a watch could not reconnect for longer than it was told to wait.
    #[error("cannot reach the skill-fleet server at {url} ({reason})")]
    Unreachable {
        /// The server's base URL.
        url: String,
        /// What the network said: `connection refused`, `host not found`, …
        reason: String,
    },
    /// The server answered with our JSON error body (`{"error": {"code", "message"}}`).
    #[error("{message} (HTTP {status} from {url})")]
    Api {
        /// The HTTP status.
        status: u16,
        /// The machine-readable code; match on this, never on the message.
        code: ErrorCode,
        /// The server's message, which names the id or value at fault.
        message: String,
        /// The URL that was requested.
        url: String,
    },
    /// The server answered with a status this client did not expect and no JSON error body.
    #[error("unexpected HTTP {status} from {url}: {body}")]
    UnexpectedStatus {
        /// The HTTP status.
        status: u16,
        /// The URL that was requested.
        url: String,
        /// The start of the response body.
        body: String,
    },
    /// The request failed on the way (timeout, protocol error, TLS, a dropped connection).
    #[error("request to {url} failed")]
    Http {
        /// The URL that was requested.
        url: String,
        /// What ureq reported.
        #[source]
        source: Box<ureq::Error>,
    },
    /// The response was not the JSON this client expects.
    #[error("could not decode the response from {url}")]
    Decode {
        /// The URL that was requested.
        url: String,
        /// What serde reported.
        #[source]
        source: serde_json::Error,
    },
    /// An id, type or number was refused before anything was sent.
    #[error(transparent)]
    Invalid(#[from] ValidationError),
    /// The server URL given to [`crate::Client::new`] cannot be used.
    #[error("invalid server url `{url}`: {reason}")]
    InvalidUrl {
        /// The URL as given.
        url: String,
        /// What is wrong with it.
        reason: String,
    },
    /// The event stream of a job broke in a way reconnecting cannot fix.
    #[error("event stream of job `{job_id}` from {url} failed: {reason}")]
    Stream {
        /// The job being watched.
        job_id: String,
        /// The stream URL.
        url: String,
        /// What went wrong.
        reason: String,
    },
    /// A [`crate::Lease`] refused a write locally because it no longer holds the job (lost,
    /// stopped from outside, or released by its own complete or fail); nothing was sent.
    #[error("lease on job `{job_id}` is {state}; nothing was sent")]
    LeaseNotHeld {
        /// The job.
        job_id: String,
        /// What became of the lease.
        state: LeaseState,
    },
    /// The thread that heartbeats a [`crate::Lease`] could not be started.
    #[error("cannot start the heartbeat thread of job `{job_id}`")]
    HeartbeatThread {
        /// The job.
        job_id: String,
        /// What the operating system said.
        #[source]
        source: std::io::Error,
    },
    /// A downloaded artifact's bytes do not hash to the SHA-256 the server gave as its
    /// `ETag`: a partial download of another version was resumed, the local file was
    /// changed, or the bytes were damaged on the way. Nothing was kept under the target name.
    #[error(
        "artifact `{name}` of job `{job_id}` failed its sha256 check: expected {expected}, got {actual}"
    )]
    ArtifactHashMismatch {
        /// The job.
        job_id: String,
        /// The artifact.
        name: String,
        /// The SHA-256 the server announced (its `ETag`), lowercase hex.
        expected: String,
        /// The SHA-256 of the bytes received (with those already held when resumed).
        actual: String,
    },
    /// An artifact's download answered in a way this client cannot use (a `206` for another
    /// range, no SHA-256 `ETag` to verify against, fewer or more bytes than announced).
    #[error("download of artifact `{name}` of job `{job_id}` from {url} went wrong: {reason}")]
    ArtifactDownload {
        /// The job.
        job_id: String,
        /// The artifact.
        name: String,
        /// The URL that was requested.
        url: String,
        /// What was wrong with the answer.
        reason: String,
    },
    /// The server closed the connection while an artifact's body was being sent, so its
    /// answer could not be read. A server refusing an upload part way (past its size
    /// limit) may end it this way; so may a server that went away. Nothing was stored.
    #[error(
        "the server closed the connection after {sent} bytes of the upload of artifact `{name}` of job `{job_id}` to {url} (an upload past the server's size limit may end this way)"
    )]
    ArtifactUploadCut {
        /// The job.
        job_id: String,
        /// The artifact.
        name: String,
        /// The URL of the upload.
        url: String,
        /// Bytes handed to the connection before it closed.
        sent: u64,
    },
    /// A local file or writer of an artifact transfer failed: the file to upload could not
    /// be read, or the downloaded bytes could not be written.
    #[error("artifact `{name}` of job `{job_id}`: cannot {action} {target}")]
    ArtifactIo {
        /// The job.
        job_id: String,
        /// The artifact.
        name: String,
        /// `read` or `write`.
        action: &'static str,
        /// The file (or `the output`, for a writer).
        target: String,
        /// What the file system said.
        #[source]
        source: std::io::Error,
    },
    /// The local response cache could not be read or written.
    #[error("cache at {} failed", path.display())]
    Cache {
        /// The file or directory at fault.
        path: PathBuf,
        /// What the file system said.
        #[source]
        source: std::io::Error,
    },
}

impl ClientError {
    /// True when the server could not be reached at all (the CLI exits with code 3).
    pub fn is_unreachable(&self) -> bool {
        matches!(self, ClientError::Unreachable { .. })
    }

    /// The server's error code, when the server answered with one.
    pub fn code(&self) -> Option<ErrorCode> {
        match self {
            ClientError::Api { code, .. } => Some(*code),
            _ => None,
        }
    }

    /// True when trying again later may succeed: the server could not be reached, the
    /// request broke on the way (a timeout, a dropped connection), the answer did not
    /// decode, or the server answered 408, 429 or a 5xx.
    pub fn is_transient(&self) -> bool {
        match self {
            ClientError::Unreachable { .. }
            | ClientError::Http { .. }
            | ClientError::Decode { .. } => true,
            ClientError::Api { status, .. } | ClientError::UnexpectedStatus { status, .. } => {
                *status >= 500 || *status == 408 || *status == 429
            }
            _ => false,
        }
    }

    /// The HTTP status, when the server answered.
    pub fn status(&self) -> Option<u16> {
        match self {
            ClientError::Api { status, .. } | ClientError::UnexpectedStatus { status, .. } => {
                Some(*status)
            }
            _ => None,
        }
    }
}

/// The reason a ureq error means "nothing answers there", if it does.
pub(crate) fn unreachable_reason(err: &ureq::Error) -> Option<String> {
    match err {
        ureq::Error::HostNotFound => Some("host not found".to_owned()),
        ureq::Error::ConnectionFailed => Some("connection failed".to_owned()),
        ureq::Error::Timeout(ureq::Timeout::Connect | ureq::Timeout::Resolve) => {
            Some("connect timed out".to_owned())
        }
        ureq::Error::Io(io) => io_unreachable_reason(io.kind()),
        _ => None,
    }
}

/// The reason an I/O error kind means "nothing answers there", if it does.
pub(crate) fn io_unreachable_reason(kind: std::io::ErrorKind) -> Option<String> {
    use std::io::ErrorKind;
    let reason = match kind {
        ErrorKind::ConnectionRefused => "connection refused",
        ErrorKind::ConnectionReset => "connection reset",
        ErrorKind::ConnectionAborted => "connection aborted",
        ErrorKind::NotConnected => "not connected",
        ErrorKind::AddrNotAvailable => "address not available",
        ErrorKind::HostUnreachable => "host unreachable",
        ErrorKind::NetworkUnreachable => "network unreachable",
        ErrorKind::NetworkDown => "network down",
        ErrorKind::TimedOut => "connect timed out",
        _ => return None,
    };
    Some(reason.to_owned())
}

/// At most `max` characters of `text`, for error messages.
pub(crate) fn snippet(text: &str, max: usize) -> String {
    let mut out: String = text.chars().take(max).collect();
    if out.len() < text.len() {
        out.push('…');
    }
    out
}
