//! What every command gets: the global options, a client built from them, and stdout.

use std::io::{self, Write};

use serde::Serialize;
use skill_fleet_client::Client;

use crate::cli::Global;
use crate::error::CliError;

/// The variable the token is read from when neither `--token` nor `SKILL_FLEET_TOKEN` is set.
const FALLBACK_TOKEN_ENV: &str = "SKILL_FLEET_AUTH_TOKEN";

/// The global options and what is built from them.
#[derive(Debug)]
pub struct Context {
    /// The options as parsed.
    pub global: Global,
}

impl Context {
    /// A context for `global`.
    pub fn new(global: Global) -> Context {
        Context { global }
    }

    /// True when output should be JSON.
    pub fn json(&self) -> bool {
        self.global.json
    }

    /// A client of the configured server, marked as the CLI, with the local cache unless
    /// `--no-cache`.
    pub fn client(&self) -> Result<Client, CliError> {
        let mut client = Client::new(&self.global.server)
            .map_err(|err| CliError::Usage(err.to_string()))?
            .with_source("cli");
        // `--token` / `SKILL_FLEET_TOKEN`, else the server's own `SKILL_FLEET_AUTH_TOKEN` (an
        // admin's shell that runs both).
        let token = self.global.token.clone().or_else(|| {
            std::env::var(FALLBACK_TOKEN_ENV)
                .ok()
                .filter(|token| !token.is_empty())
        });
        if let Some(token) = token {
            client = client.with_token(token);
        }
        if !self.global.no_cache
            && let Some(cache) = skill_fleet_client::Cache::from_env()
        {
            client = client.with_cache(cache);
        }
        Ok(client)
    }
}

/// Writes one line to stdout; a closed pipe comes back as an error the caller passes up.
pub fn out(line: impl AsRef<str>) -> Result<(), CliError> {
    let mut stdout = io::stdout().lock();
    stdout.write_all(line.as_ref().as_bytes())?;
    stdout.write_all(b"\n")?;
    stdout.flush()?;
    Ok(())
}

/// Writes text as is (tables end with their own newline).
pub fn out_raw(text: &str) -> Result<(), CliError> {
    let mut stdout = io::stdout().lock();
    stdout.write_all(text.as_bytes())?;
    stdout.flush()?;
    Ok(())
}

/// Writes a value as one line of JSON.
pub fn out_json<T: Serialize>(value: &T) -> Result<(), CliError> {
    let text =
        serde_json::to_string(value).map_err(|err| CliError::Output(io::Error::other(err)))?;
    out(text)
}

/// Says on stderr that a response came from the local cache after a `304`.
pub fn note_cached(from_cache: bool) {
    if from_cache {
        eprintln!("(cached)");
    }
}
