//! Logging setup: `tracing` with an env filter (`SKILL_FLEET_LOG` or `RUST_LOG`), text or JSON.

use std::io::IsTerminal;

use tracing_subscriber::EnvFilter;

use crate::config::LogFormat;

/// Installs the global subscriber. Logs go to stderr; stdout is kept for machine-readable
/// lines (the listening address, reports).
pub fn init_logging(format: LogFormat) {
    let filter = EnvFilter::try_from_env("SKILL_FLEET_LOG")
        .or_else(|_| EnvFilter::try_from_default_env())
        .unwrap_or_else(|_| EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal());
    let result = match format {
        LogFormat::Text => builder.try_init(),
        LogFormat::Json => builder.json().try_init(),
    };
    // A subscriber already installed (tests calling in twice) is fine.
    let _ = result;
}
