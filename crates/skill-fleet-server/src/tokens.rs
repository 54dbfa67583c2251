//! The tokens file (`tokens_file`): `[[token]]` tables with `name`, `role`, `secret_sha256`
//! and, for a worker, optional `types`; read at start-up, and again on SIGHUP or when the
//! file changes (checked every second), so tokens rotate without a restart. A file that
//! fails to read on a reload keeps the tokens in use and logs why.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use serde::Deserialize;
use skill_fleet_api::access::{Role, Token, Tokens, parse_sha256_hex};
use tokio::sync::watch;

use crate::error::ServerError;

/// How often the file's modification time and length are compared.
pub const POLL_INTERVAL: Duration = Duration::from_secs(1);

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct TokensFile {
    #[serde(default)]
    token: Vec<TokenEntry>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct TokenEntry {
    name: String,
    role: String,
    secret_sha256: String,
    types: Option<Vec<String>>,
}

/// Reads and checks the tokens file: a name of `[A-Za-z0-9_.@-]{1,64}`, unique; a known role;
/// a SHA-256 in hex; `types` only on a worker token, each a valid job type. An error names
/// the file and the token (its place in the file and its name).
pub fn load(path: &Path) -> Result<Vec<Token>, ServerError> {
    let fail = |reason: String| ServerError::TokensFile {
        path: path.to_owned(),
        reason,
    };
    let text = std::fs::read_to_string(path).map_err(|source| ServerError::Io {
        path: path.to_owned(),
        source,
    })?;
    let file: TokensFile = toml::from_str(&text).map_err(|err| fail(one_line(&err)))?;
    let mut tokens: Vec<Token> = Vec::with_capacity(file.token.len());
    for (index, entry) in file.token.into_iter().enumerate() {
        let which = format!("token {} (`{}`)", index + 1, entry.name);
        let valid_name = !entry.name.is_empty()
            && entry.name.len() <= 64
            && entry
                .name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || "_.@-".contains(c));
        if !valid_name {
            return Err(fail(format!(
                "{which}: a name is 1 to 64 of A-Z a-z 0-9 _ . @ -"
            )));
        }
        if tokens.iter().any(|t| *t.caller().name == *entry.name) {
            return Err(fail(format!("{which}: the name is used twice")));
        }
        let role: Role = entry
            .role
            .parse()
            .map_err(|err| fail(format!("{which}: {err}")))?;
        let hash = parse_sha256_hex(&entry.secret_sha256)
            .map_err(|err| fail(format!("{which}: {err}")))?;
        if let Some(types) = &entry.types {
            if role != Role::Worker {
                return Err(fail(format!(
                    "{which}: only a worker token has types (this one is {role})"
                )));
            }
            if types.is_empty() {
                return Err(fail(format!(
                    "{which}: types is empty; leave it out to allow every type"
                )));
            }
            for job_type in types {
                skill_fleet_types::validate_job_type(job_type)
                    .map_err(|err| fail(format!("{which}: {err}")))?;
            }
        }
        tokens.push(Token::new(entry.name, role, hash, entry.types));
    }
    Ok(tokens)
}

fn one_line(err: &impl std::fmt::Display) -> String {
    err.to_string()
        .lines()
        .map(str::trim)
        .filter(|line| !line.is_empty())
        .collect::<Vec<_>>()
        .join(" ")
}

/// The live tokens of a server: `--auth-token`'s and, with a tokens file, the file's. An
/// error names the file.
pub fn live(
    auth_token: Option<&skill_fleet_api::AuthToken>,
    tokens_file: Option<&Path>,
) -> Result<Arc<Tokens>, ServerError> {
    let file = tokens_file.map(load).transpose()?;
    Tokens::new(auth_token, file)
        .map(Arc::new)
        .map_err(|reason| ServerError::TokensFile {
            path: tokens_file.map(Path::to_owned).unwrap_or_default(),
            reason,
        })
}

/// What tells a file changed: modification time, length and inode.
fn stamp(path: &Path) -> Option<(SystemTime, u64, u64)> {
    use std::os::unix::fs::MetadataExt;
    let meta = std::fs::metadata(path).ok()?;
    Some((meta.modified().ok()?, meta.len(), meta.ino()))
}

/// Reloads `path` into `tokens` on SIGHUP and whenever the file changes, until `stop`.
pub async fn watch_file(path: PathBuf, tokens: Arc<Tokens>, mut stop: watch::Receiver<bool>) {
    let mut hangup = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()) {
        Ok(signal) => Some(signal),
        Err(err) => {
            tracing::warn!(error = %err, "cannot listen for SIGHUP; the tokens file is reloaded when it changes");
            None
        }
    };
    let mut seen = stamp(&path);
    let mut tick = tokio::time::interval(POLL_INTERVAL);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        let hung_up = tokio::select! {
            _ = stop.changed() => return,
            _ = tick.tick() => false,
            Some(()) = async {
                match hangup.as_mut() {
                    Some(signal) => signal.recv().await,
                    None => std::future::pending().await,
                }
            } => true,
        };
        if *stop.borrow() {
            return;
        }
        let now = stamp(&path);
        if !hung_up && now == seen {
            continue;
        }
        seen = now;
        let why = if hung_up {
            "SIGHUP"
        } else {
            "the file changed"
        };
        let loaded = {
            let path = path.clone();
            tokio::task::spawn_blocking(move || load(&path)).await
        };
        let result = match loaded {
            Ok(Ok(file)) => tokens.replace(file).map_err(|reason| {
                ServerError::TokensFile {
                    path: path.clone(),
                    reason,
                }
                .to_string()
            }),
            Ok(Err(err)) => Err(err.to_string()),
            Err(err) => Err(err.to_string()),
        };
        match result {
            Ok(()) => tracing::info!(
                path = %path.display(),
                tokens = ?tokens.names(),
                "tokens file reloaded ({why})"
            ),
            Err(error) => tracing::error!(
                path = %path.display(),
                %error,
                "tokens file not reloaded ({why}); the tokens in use stay"
            ),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(dir: &tempfile::TempDir, text: &str) -> PathBuf {
        let path = dir.path().join("tokens.toml");
        std::fs::write(&path, text).expect("write");
        path
    }

    const HASH: &str = "2cf24dba5fb0a30e26e83b2ac5b9e29e1b161e5c1fa7425e73043362938b9824";

    #[test]
    fn a_good_file_loads() {
        let dir = tempfile::tempdir().expect("dir");
        let path = write(
            &dir,
            &format!(
                "[[token]]\nname = \"ci\"\nrole = \"read\"\nsecret_sha256 = \"{HASH}\"\n\n\
                 [[token]]\nname = \"gpu\"\nrole = \"worker\"\nsecret_sha256 = \"{HASH}\"\ntypes = [\"optimization\"]\n"
            ),
        );
        let tokens = load(&path).expect("load");
        assert_eq!(tokens.len(), 2);
        assert_eq!(tokens[1].caller().role, Role::Worker);
        let live = live(None, Some(&path)).expect("live");
        // `hello` hashes to HASH; the first token of the file wins.
        assert_eq!(
            live.find("hello").map(|c| c.name.to_string()),
            Some("ci".to_owned())
        );
    }

    #[test]
    fn errors_name_the_file_and_the_token() {
        let dir = tempfile::tempdir().expect("dir");
        let cases = [
            (
                format!("[[token]]\nname = \"a\"\nrole = \"root\"\nsecret_sha256 = \"{HASH}\"\n"),
                "token 1 (`a`): unknown role `root`",
            ),
            (
                "[[token]]\nname = \"a\"\nrole = \"read\"\nsecret_sha256 = \"abc\"\n".to_owned(),
                "token 1 (`a`): secret_sha256 must be 64 hex digits",
            ),
            (
                format!(
                    "[[token]]\nname = \"a\"\nrole = \"read\"\nsecret_sha256 = \"{HASH}\"\n\
                     [[token]]\nname = \"a\"\nrole = \"admin\"\nsecret_sha256 = \"{HASH}\"\n"
                ),
                "token 2 (`a`): the name is used twice",
            ),
            (
                format!(
                    "[[token]]\nname = \"a\"\nrole = \"read\"\nsecret_sha256 = \"{HASH}\"\ntypes = [\"t\"]\n"
                ),
                "token 1 (`a`): only a worker token has types",
            ),
            (
                format!("[[token]]\nname = \"a b\"\nrole = \"read\"\nsecret_sha256 = \"{HASH}\"\n"),
                "token 1 (`a b`): a name is",
            ),
            (
                format!("[[token]]\nname = \"a\"\nrole = \"read\"\nsecret = \"{HASH}\"\n"),
                "unknown field `secret`",
            ),
        ];
        for (text, expected) in cases {
            let path = write(&dir, &text);
            let err = load(&path).expect_err(expected).to_string();
            assert!(err.contains(expected), "{err}");
            assert!(err.contains(&path.display().to_string()), "{err}");
        }
    }

    #[test]
    fn the_auth_token_is_the_admin_and_its_name_is_taken() {
        let dir = tempfile::tempdir().expect("dir");
        let path = write(
            &dir,
            &format!("[[token]]\nname = \"admin\"\nrole = \"read\"\nsecret_sha256 = \"{HASH}\"\n"),
        );
        let token = skill_fleet_api::AuthToken::new("t");
        let err = live(Some(&token), Some(&path))
            .expect_err("name taken")
            .to_string();
        assert!(err.contains("taken by the --auth-token token"), "{err}");
        assert!(live(None, Some(&path)).is_ok());
    }
}
