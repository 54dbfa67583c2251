//! `CliError`, how each error is printed (once, with its causes) and which exit code it
//! gives.

use std::io;

use skill_fleet_client::ClientError;

/// The documented exit codes.
pub mod code {
    /// Success; for watches, the job completed.
    pub const OK: u8 = 0;
    /// The job failed or was cancelled, or the server refused the request.
    pub const FAILED: u8 = 1;
    /// Bad arguments or values.
    pub const USAGE: u8 = 2;
    /// The server cannot be reached.
    pub const UNREACHABLE: u8 = 3;
    /// A watch stopped with Ctrl-C; the job keeps running.
    pub const INTERRUPTED: u8 = 130;
}

/// Why a command failed.
#[derive(Debug, thiserror::Error)]
pub enum CliError {
    /// A call to the server failed.
    #[error(transparent)]
    Client(#[from] ClientError),
    /// An argument value is not usable (exit code 2).
    #[error("{0}")]
    Usage(String),
    /// Writing the output failed (a closed pipe is not an error).
    #[error("cannot write output")]
    Output(#[source] io::Error),
    /// An error with what to do about it, printed after it on the same line.
    #[error("{error}. {hint}")]
    Hinted {
        /// The error.
        error: Box<CliError>,
        /// What to do next: `run the same command again to resume it`.
        hint: String,
    },
    /// A local file could not be read.
    #[error("cannot read {path}")]
    Read {
        /// The file.
        path: String,
        /// Why.
        #[source]
        source: io::Error,
    },
}

impl From<io::Error> for CliError {
    fn from(err: io::Error) -> Self {
        CliError::Output(err)
    }
}

impl CliError {
    /// The exit code this error gives.
    pub fn exit_code(&self) -> u8 {
        match self {
            CliError::Hinted { error, .. } => error.exit_code(),
            CliError::Client(err) if err.is_unreachable() => code::UNREACHABLE,
            CliError::Client(ClientError::Invalid(_)) | CliError::Usage(_) => code::USAGE,
            _ => code::FAILED,
        }
    }

    /// True for a write to a closed pipe (`skill-fleet jobs list | head -1`): not an error.
    pub fn is_broken_pipe(&self) -> bool {
        matches!(self, CliError::Output(err) if err.kind() == io::ErrorKind::BrokenPipe)
    }

    /// The one line printed for this error: `error: …` with its causes after colons.
    pub fn report(&self) -> String {
        if let CliError::Hinted { error, hint } = self {
            return format!("{}. {hint}", error.report());
        }
        if let CliError::Client(err @ ClientError::Unreachable { .. }) = self {
            return format!("error: {err}. Start it with: skill-fleet-server");
        }
        let mut line = format!("error: {self}");
        let mut source = std::error::Error::source(self);
        // `Client` is transparent: its own message is already on the line.
        if matches!(self, CliError::Client(_)) {
            source = source.and_then(std::error::Error::source);
        }
        while let Some(cause) = source {
            line.push_str(": ");
            line.push_str(&cause.to_string());
            source = cause.source();
        }
        line
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unreachable_is_one_line_with_a_hint_and_exit_code_3() {
        let err = CliError::Client(ClientError::Unreachable {
            url: "http://127.0.0.1:8000".into(),
            reason: "connection refused".into(),
        });
        assert_eq!(
            err.report(),
            "error: cannot reach the skill-fleet server at http://127.0.0.1:8000 (connection refused). Start it with: skill-fleet-server"
        );
        assert_eq!(err.exit_code(), 3);
    }

    #[test]
    fn causes_are_chained_once() {
        let err = CliError::Read {
            path: "meta.json".into(),
            source: io::Error::new(io::ErrorKind::NotFound, "no such file"),
        };
        assert_eq!(err.report(), "error: cannot read meta.json: no such file");
        assert_eq!(err.exit_code(), 1);
        assert!(CliError::Output(io::Error::from(io::ErrorKind::BrokenPipe)).is_broken_pipe());
        assert_eq!(CliError::Usage("bad".into()).exit_code(), 2);
        let hinted = CliError::Hinted {
            error: Box::new(err),
            hint: "try again".into(),
        };
        assert_eq!(
            hinted.report(),
            "error: cannot read meta.json: no such file. try again"
        );
        assert_eq!(hinted.exit_code(), 1);
    }
}
