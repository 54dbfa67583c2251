//! Server configuration: flags, then `SKILL_FLEET_*` environment variables, then an optional
//! TOML file (`--config`), then defaults — the first that sets a value wins.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use clap::{Args, Parser, Subcommand, ValueEnum};
use serde::Deserialize;
use skill_fleet_api::AuthToken;

use crate::error::ServerError;

/// Default address: loopback only, so nothing is exposed without a token.
pub const DEFAULT_BIND: &str = "127.0.0.1:8000";
/// Default database file, relative to the working directory.
pub const DEFAULT_DATABASE: &str = "./skill-fleet.db";
/// Longest `cache_ttl_seconds`: a year. Longer makes no sense for a job server, and the
/// response cache cannot hold an entry for 1000 years or more.
pub const MAX_CACHE_TTL_SECONDS: u64 = 365 * 24 * 60 * 60;
/// Longest `retention_days`: a century.
pub const MAX_RETENTION_DAYS: u64 = 36_500;
/// Longest `stop_grace_seconds`: an hour (shutdown waits this long plus 10 s; a deadline of
/// `now + u64::MAX` seconds overflows and panics).
pub const MAX_STOP_GRACE_SECONDS: u64 = 60 * 60;
/// Longest `executors.*.timeout_seconds`: ten years (a run's deadline is `now + timeout`).
pub const MAX_TIMEOUT_SECONDS: u64 = 10 * 365 * 24 * 60 * 60;
/// Job types that are re-queued (not failed) when the server stopped while they ran.
pub const DEFAULT_RESUMABLE_TYPES: [&str; 2] = ["optimization", "evaluation"];

/// `skill-fleet-server`: durable job server with live progress.
#[derive(Debug, Parser)]
#[command(name = "skill-fleet-server", version, about)]
pub struct Cli {
    /// TOML configuration file (keys as in docs/CONFIG.md).
    #[arg(long, global = true, env = "SKILL_FLEET_CONFIG", value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// Database path or `sqlite://` URL [default: ./skill-fleet.db].
    #[arg(long, global = true, env = "SKILL_FLEET_DATABASE", value_name = "PATH")]
    pub database: Option<String>,
    /// What to do; serves the API when left out.
    #[command(subcommand)]
    pub command: Option<Command>,
    /// Options of the server.
    #[command(flatten)]
    pub serve: ServeArgs,
}

/// Subcommands besides serving.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Serve the API (the default).
    Serve,
    /// Create or migrate the database, optionally import legacy jobs, print a report, exit.
    InitDb {
        /// A legacy export (JSON array) or a directory of legacy session files.
        #[arg(long, value_name = "PATH")]
        import: Option<PathBuf>,
    },
    /// Inspect the database.
    Db {
        /// What to show.
        #[command(subcommand)]
        command: DbCommand,
    },
}

/// `db` subcommands.
#[derive(Debug, Subcommand)]
pub enum DbCommand {
    /// Schema version, pending migrations and job counts by status.
    Status,
}

/// Log output format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, ValueEnum, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// Human-readable lines.
    #[default]
    Text,
    /// One JSON object per line.
    Json,
}

/// Flags of `serve`.
#[derive(Debug, Default, Args)]
pub struct ServeArgs {
    /// Address to listen on [default: 127.0.0.1:8000]; a non-loopback one requires a token.
    #[arg(long, env = "SKILL_FLEET_BIND", value_name = "ADDR")]
    pub bind: Option<SocketAddr>,
    /// Bearer token required on every route but /healthz.
    #[arg(
        long,
        env = "SKILL_FLEET_AUTH_TOKEN",
        value_name = "TOKEN",
        hide_env_values = true
    )]
    pub auth_token: Option<AuthToken>,
    /// How often coalesced progress is streamed and persisted, in ms [default: 100].
    #[arg(long, env = "SKILL_FLEET_EMIT_INTERVAL_MS", value_name = "MS")]
    pub emit_interval_ms: Option<u64>,
    /// Time-to-live of cached GET responses, in seconds [default: 300].
    #[arg(long, env = "SKILL_FLEET_CACHE_TTL_SECONDS", value_name = "SECONDS")]
    pub cache_ttl_seconds: Option<u64>,
    /// Comma-separated job types re-queued after a crash [default: optimization,evaluation].
    #[arg(
        long,
        env = "SKILL_FLEET_RESUMABLE_TYPES",
        value_delimiter = ',',
        value_name = "TYPES"
    )]
    pub resumable_types: Option<Vec<String>>,
    /// Legacy jobs to import at start-up (idempotent).
    #[arg(long, env = "SKILL_FLEET_LEGACY_IMPORT", value_name = "PATH")]
    pub legacy_import: Option<PathBuf>,
    /// Log format [default: text].
    #[arg(long, env = "SKILL_FLEET_LOG_FORMAT", value_enum)]
    pub log_format: Option<LogFormat>,
    /// Where job work directories live [default: `skill-fleet-data` beside the database].
    #[arg(long, env = "SKILL_FLEET_DATA_DIR", value_name = "DIR")]
    pub data_dir: Option<PathBuf>,
    /// Most jobs the executor runs at once, over all types [default: 4].
    #[arg(long, env = "SKILL_FLEET_MAX_CONCURRENT_JOBS", value_name = "N")]
    pub max_concurrent_jobs: Option<usize>,
    /// Most SSE streams open at once; more get 503 with Retry-After [default: 10000].
    #[arg(long, env = "SKILL_FLEET_MAX_SSE_CONNECTIONS", value_name = "N")]
    pub max_sse_connections: Option<usize>,
    /// Most progress history rows kept per job; older history is thinned [default: 10000].
    #[arg(long, env = "SKILL_FLEET_MAX_HISTORY_ROWS_PER_JOB", value_name = "N")]
    pub max_history_rows_per_job: Option<u64>,
    /// Delete finished jobs (their history and files too) this many days after they ended,
    /// checked hourly [default: keep them].
    #[arg(long, env = "SKILL_FLEET_RETENTION_DAYS", value_name = "DAYS")]
    pub retention_days: Option<u64>,
    /// How long a write waits for SQLite's write lock held by another process, in ms
    /// [default: 5000]; past it the write fails with 503 `database is busy`.
    #[arg(long, env = "SKILL_FLEET_BUSY_TIMEOUT_MS", value_name = "MS")]
    pub busy_timeout_ms: Option<u64>,
    /// Serve `/_bench/noop`, the do-nothing baseline of `cargo xtask bench`.
    #[arg(long, hide = true)]
    pub bench_routes: bool,
}

/// The TOML file: every key optional, unknown keys refused.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileConfig {
    /// See `--bind`.
    pub bind: Option<SocketAddr>,
    /// See `--database`.
    pub database: Option<String>,
    /// See `--auth-token`.
    pub auth_token: Option<AuthToken>,
    /// See `--emit-interval-ms`.
    pub emit_interval_ms: Option<u64>,
    /// See `--cache-ttl-seconds`.
    pub cache_ttl_seconds: Option<u64>,
    /// See `--resumable-types`.
    pub resumable_types: Option<Vec<String>>,
    /// See `--legacy-import`.
    pub legacy_import: Option<PathBuf>,
    /// See `--log-format`.
    pub log_format: Option<LogFormat>,
    /// Largest request body, in bytes [default: 1 MiB].
    pub max_body_bytes: Option<usize>,
    /// See `--data-dir`.
    pub data_dir: Option<PathBuf>,
    /// See `--max-concurrent-jobs`.
    pub max_concurrent_jobs: Option<usize>,
    /// See `--max-sse-connections`.
    pub max_sse_connections: Option<usize>,
    /// See `--max-history-rows-per-job`.
    pub max_history_rows_per_job: Option<u64>,
    /// See `--retention-days`.
    pub retention_days: Option<u64>,
    /// See `--busy-timeout-ms`.
    pub busy_timeout_ms: Option<u64>,
    /// Seconds between SIGTERM and SIGKILL when a job is stopped [default: 10].
    pub stop_grace_seconds: Option<u64>,
    /// Job type → command. When the file has this table it replaces the built-in default
    /// (`optimization` → the bundled example optimizer); an empty table runs nothing.
    pub executors: Option<BTreeMap<String, ExecutorConfig>>,
}

/// How the server runs one job type (a `[executors.TYPE]` table of the file).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ExecutorConfig {
    /// Program and arguments, e.g. `["python3", "optimize.py"]`.
    pub command: Vec<String>,
    /// Working directory [default: the job's work directory].
    pub working_dir: Option<PathBuf>,
    /// Extra environment variables.
    #[serde(default)]
    pub env: BTreeMap<String, String>,
    /// Longest a run may take, in seconds [default: no limit].
    pub timeout_seconds: Option<u64>,
    /// Whether an interrupted run is queued again with its checkpoint [default: true].
    #[serde(default = "default_true")]
    pub resumable: bool,
    /// Jobs of this type running at once [default: 2].
    #[serde(default = "default_max_concurrent")]
    pub max_concurrent: usize,
}

fn default_true() -> bool {
    true
}

fn default_max_concurrent() -> usize {
    2
}

impl FileConfig {
    /// Reads and parses a TOML configuration file.
    pub fn load(path: &Path) -> Result<FileConfig, ServerError> {
        let text = std::fs::read_to_string(path).map_err(|source| ServerError::Io {
            path: path.to_owned(),
            source,
        })?;
        toml::from_str(&text)
            .map_err(|err| ServerError::Config(format!("{}: {err}", path.display())))
    }
}

/// The resolved configuration.
#[derive(Debug, Clone)]
pub struct Config {
    /// Address to listen on.
    pub bind: SocketAddr,
    /// Database path or URL.
    pub database: String,
    /// Bearer token, if any (its `Debug` is redacted).
    pub auth_token: Option<AuthToken>,
    /// Coalescing interval of streams and progress writes.
    pub emit_interval: Duration,
    /// TTL of cached GET responses.
    pub cache_ttl: Duration,
    /// Job types re-queued after a crash.
    pub resumable_types: Vec<String>,
    /// Legacy jobs to import at start-up.
    pub legacy_import: Option<PathBuf>,
    /// Log format.
    pub log_format: LogFormat,
    /// Largest request body.
    pub max_body_bytes: usize,
    /// Where job work directories live.
    pub data_dir: PathBuf,
    /// Most jobs the executor runs at once.
    pub max_concurrent_jobs: usize,
    /// Most SSE streams open at once.
    pub max_sse_connections: usize,
    /// Most progress history rows kept per job.
    pub max_history_rows_per_job: u64,
    /// How long finished jobs are kept; `None` keeps them.
    pub retention: Option<Duration>,
    /// Time between SIGTERM and SIGKILL.
    pub stop_grace: Duration,
    /// How long a write waits for the database's write lock.
    pub busy_timeout: Duration,
    /// Job type → command; `None` means the built-in default (the bundled optimizer).
    pub executors: Option<BTreeMap<String, ExecutorConfig>>,
    /// Serve the benchmark baseline route.
    pub bench_routes: bool,
}

impl Config {
    /// Resolves flags/env over the file over defaults, and checks the result.
    pub fn resolve(cli: &Cli) -> Result<Config, ServerError> {
        let file = match &cli.config {
            Some(path) => FileConfig::load(path)?,
            None => FileConfig::default(),
        };
        let args = &cli.serve;
        let bind = match args.bind.or(file.bind) {
            Some(bind) => bind,
            None => DEFAULT_BIND
                .parse()
                .map_err(|err| ServerError::Config(format!("default bind address: {err}")))?,
        };
        let emit_interval_ms = args
            .emit_interval_ms
            .or(file.emit_interval_ms)
            .unwrap_or(100);
        if !(1..=60_000).contains(&emit_interval_ms) {
            return Err(ServerError::Config(format!(
                "emit interval must be between 1 and 60000 ms, got {emit_interval_ms}"
            )));
        }
        let resumable_types = args
            .resumable_types
            .clone()
            .or(file.resumable_types)
            .unwrap_or_else(|| DEFAULT_RESUMABLE_TYPES.map(str::to_owned).to_vec())
            .into_iter()
            .map(|t| t.trim().to_owned())
            .filter(|t| !t.is_empty())
            .collect::<Vec<_>>();
        for job_type in &resumable_types {
            skill_fleet_types::validate_job_type(job_type)
                .map_err(|err| ServerError::Config(format!("resumable types: {err}")))?;
        }
        let auth_token = args
            .auth_token
            .clone()
            .or(file.auth_token)
            .filter(|token| !token.is_empty());
        if !bind.ip().is_loopback() && auth_token.is_none() {
            return Err(ServerError::Config(format!(
                "binding to {bind} (not loopback) requires a bearer token: set --auth-token or SKILL_FLEET_AUTH_TOKEN"
            )));
        }
        let database = cli
            .database
            .clone()
            .or(file.database)
            .unwrap_or_else(|| DEFAULT_DATABASE.to_owned());
        let data_dir = args
            .data_dir
            .clone()
            .or(file.data_dir)
            .unwrap_or_else(|| default_data_dir(&database));
        // Children run in their own work directories: a relative path would point elsewhere.
        let data_dir = std::path::absolute(&data_dir).map_err(|err| {
            ServerError::Config(format!("data dir {}: {err}", data_dir.display()))
        })?;
        if let Some(executors) = &file.executors {
            for (job_type, executor) in executors {
                skill_fleet_types::validate_job_type(job_type)
                    .map_err(|err| ServerError::Config(format!("executors: {err}")))?;
                if executor.command.is_empty() || executor.command[0].is_empty() {
                    return Err(ServerError::Config(format!(
                        "executors.{job_type}: command must name a program"
                    )));
                }
                if executor.max_concurrent == 0 {
                    return Err(ServerError::Config(format!(
                        "executors.{job_type}: max_concurrent must be at least 1"
                    )));
                }
                if let Some(timeout) = executor.timeout_seconds
                    && timeout > MAX_TIMEOUT_SECONDS
                {
                    return Err(ServerError::Config(format!(
                        "executors.{job_type}: timeout_seconds must be at most {MAX_TIMEOUT_SECONDS}, got {timeout}"
                    )));
                }
            }
        }
        let max_concurrent_jobs = args
            .max_concurrent_jobs
            .or(file.max_concurrent_jobs)
            .unwrap_or(4);
        if max_concurrent_jobs == 0 {
            return Err(ServerError::Config(
                "max concurrent jobs must be at least 1".to_owned(),
            ));
        }
        let busy_timeout_ms = args
            .busy_timeout_ms
            .or(file.busy_timeout_ms)
            .unwrap_or(5000);
        if !(1..=600_000).contains(&busy_timeout_ms) {
            return Err(ServerError::Config(format!(
                "busy timeout must be between 1 and 600000 ms, got {busy_timeout_ms}"
            )));
        }
        let max_sse_connections = args
            .max_sse_connections
            .or(file.max_sse_connections)
            .unwrap_or(skill_fleet_api::DEFAULT_MAX_SSE_CONNECTIONS);
        if max_sse_connections == 0 {
            return Err(ServerError::Config(
                "max sse connections must be at least 1, got 0".to_owned(),
            ));
        }
        let max_history_rows_per_job = args
            .max_history_rows_per_job
            .or(file.max_history_rows_per_job)
            .unwrap_or(skill_fleet_jobs::DEFAULT_MAX_HISTORY_ROWS_PER_JOB);
        if max_history_rows_per_job == 0 {
            return Err(ServerError::Config(
                "max history rows per job must be at least 1, got 0".to_owned(),
            ));
        }
        let retention_days = args.retention_days.or(file.retention_days);
        if let Some(days) = retention_days
            && !(1..=MAX_RETENTION_DAYS).contains(&days)
        {
            return Err(ServerError::Config(format!(
                "retention days must be between 1 and {MAX_RETENTION_DAYS}, got {days}"
            )));
        }
        let stop_grace_seconds = file.stop_grace_seconds.unwrap_or(10);
        if stop_grace_seconds > MAX_STOP_GRACE_SECONDS {
            return Err(ServerError::Config(format!(
                "stop grace must be at most {MAX_STOP_GRACE_SECONDS} seconds, got {stop_grace_seconds}"
            )));
        }
        let cache_ttl_seconds = args
            .cache_ttl_seconds
            .or(file.cache_ttl_seconds)
            .unwrap_or(300);
        if cache_ttl_seconds > MAX_CACHE_TTL_SECONDS {
            return Err(ServerError::Config(format!(
                "cache ttl must be at most {MAX_CACHE_TTL_SECONDS} seconds, got {cache_ttl_seconds}"
            )));
        }
        Ok(Config {
            max_sse_connections,
            max_history_rows_per_job,
            retention: retention_days.map(|days| Duration::from_secs(days * 24 * 60 * 60)),
            busy_timeout: Duration::from_millis(busy_timeout_ms),
            bind,
            database,
            data_dir,
            max_concurrent_jobs,
            stop_grace: Duration::from_secs(stop_grace_seconds),
            executors: file.executors,
            bench_routes: args.bench_routes,
            auth_token,
            emit_interval: Duration::from_millis(emit_interval_ms),
            cache_ttl: Duration::from_secs(cache_ttl_seconds),
            resumable_types,
            legacy_import: args.legacy_import.clone().or(file.legacy_import),
            log_format: args.log_format.or(file.log_format).unwrap_or_default(),
            max_body_bytes: file.max_body_bytes.unwrap_or(1024 * 1024),
        })
    }
}

/// `skill-fleet-data` beside the database file (or in the working directory for URLs that
/// are not plain paths).
fn default_data_dir(database: &str) -> PathBuf {
    let path = database
        .strip_prefix("sqlite://")
        .or_else(|| database.strip_prefix("file:"))
        .unwrap_or(database);
    let path = path.split('?').next().unwrap_or(path);
    match Path::new(path).parent() {
        Some(parent) if !parent.as_os_str().is_empty() && path != ":memory:" => {
            parent.join("skill-fleet-data")
        }
        _ => PathBuf::from("skill-fleet-data"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn cli_is_well_formed() {
        Cli::command().debug_assert();
    }

    fn resolve(args: &[&str]) -> Result<Config, ServerError> {
        let mut argv = vec!["skill-fleet-server"];
        argv.extend_from_slice(args);
        Config::resolve(&Cli::try_parse_from(argv).unwrap())
    }

    #[test]
    fn defaults_are_safe() {
        let config = resolve(&[]).unwrap();
        assert_eq!(config.bind.to_string(), DEFAULT_BIND);
        assert_eq!(config.database, DEFAULT_DATABASE);
        assert_eq!(config.emit_interval, Duration::from_millis(100));
        assert_eq!(config.resumable_types, ["optimization", "evaluation"]);
        assert!(config.auth_token.is_none());
    }

    #[test]
    fn non_loopback_bind_needs_a_token() {
        let err = resolve(&["--bind", "0.0.0.0:8000"]).unwrap_err();
        assert!(err.to_string().contains("requires a bearer token"), "{err}");
        let config = resolve(&["--bind", "0.0.0.0:8000", "--auth-token", "t"]).unwrap();
        assert_eq!(config.auth_token.as_ref().map(AuthToken::expose), Some("t"));
    }

    #[test]
    fn a_debug_printed_config_does_not_show_the_token() {
        let config = resolve(&["--auth-token", "tok-debug-secret"]).unwrap();
        let printed = format!("{config:?}");
        assert!(printed.contains("AuthToken(<redacted>)"), "{printed}");
        assert!(!printed.contains("tok-debug-secret"), "{printed}");
    }

    #[test]
    fn flags_win_over_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("server.toml");
        std::fs::write(
            &path,
            "bind = \"127.0.0.1:9000\"\nemit_interval_ms = 250\ndatabase = \"file.db\"\n",
        )
        .unwrap();
        let path = path.to_str().unwrap();
        let config = resolve(&["--config", path, "--bind", "127.0.0.1:9001"]).unwrap();
        assert_eq!(config.bind.port(), 9001);
        assert_eq!(config.emit_interval, Duration::from_millis(250));
        assert_eq!(config.database, "file.db");
    }

    #[test]
    fn limits_come_from_flags_env_or_file_and_zero_is_refused() {
        let config = resolve(&[]).unwrap();
        assert_eq!(config.max_sse_connections, 10_000);
        assert_eq!(config.max_history_rows_per_job, 10_000);

        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("server.toml");
        std::fs::write(
            &path,
            "max_sse_connections = 50\nmax_history_rows_per_job = 500\n",
        )
        .unwrap();
        let path = path.to_str().unwrap();
        let config = resolve(&["--config", path]).unwrap();
        assert_eq!(config.max_sse_connections, 50);
        assert_eq!(config.max_history_rows_per_job, 500);
        let config = resolve(&[
            "--config",
            path,
            "--max-sse-connections",
            "7",
            "--max-history-rows-per-job",
            "70",
        ])
        .unwrap();
        assert_eq!(config.max_sse_connections, 7);
        assert_eq!(config.max_history_rows_per_job, 70);

        let err = resolve(&["--max-sse-connections", "0"]).unwrap_err();
        assert!(
            err.to_string()
                .contains("max sse connections must be at least 1"),
            "{err}"
        );
        let err = resolve(&["--max-history-rows-per-job", "0"]).unwrap_err();
        assert!(
            err.to_string()
                .contains("max history rows per job must be at least 1"),
            "{err}"
        );
    }

    #[test]
    fn unknown_file_keys_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("server.toml");
        std::fs::write(&path, "bnd = \"127.0.0.1:9000\"\n").unwrap();
        let err = resolve(&["--config", path.to_str().unwrap()]).unwrap_err();
        assert!(err.to_string().contains("bnd"), "{err}");
    }
}

#[cfg(test)]
mod executor_config_tests {
    use super::*;

    #[test]
    fn data_dir_defaults_beside_the_database() {
        assert_eq!(
            default_data_dir("./skill-fleet.db"),
            PathBuf::from("./skill-fleet-data")
        );
        assert_eq!(
            default_data_dir("/var/lib/sf/jobs.db"),
            PathBuf::from("/var/lib/sf/skill-fleet-data")
        );
        assert_eq!(
            default_data_dir("sqlite:///tmp/x.db"),
            PathBuf::from("/tmp/skill-fleet-data")
        );
        assert_eq!(
            default_data_dir("jobs.db"),
            PathBuf::from("skill-fleet-data")
        );
    }

    #[test]
    fn executors_come_from_the_file_and_are_checked() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("server.toml");
        std::fs::write(
            &path,
            "[executors.evaluation]\ncommand = [\"python3\", \"eval.py\"]\ntimeout_seconds = 60\n",
        )
        .unwrap();
        let cli = Cli::try_parse_from(["s", "--config", path.to_str().unwrap()]).unwrap();
        let config = Config::resolve(&cli).unwrap();
        let executors = config.executors.unwrap();
        let evaluation = &executors["evaluation"];
        assert_eq!(evaluation.command, ["python3", "eval.py"]);
        assert!(evaluation.resumable);
        assert_eq!(evaluation.max_concurrent, 2);

        std::fs::write(&path, "[executors.evaluation]\ncommand = []\n").unwrap();
        let cli = Cli::try_parse_from(["s", "--config", path.to_str().unwrap()]).unwrap();
        let err = Config::resolve(&cli).unwrap_err();
        assert!(
            err.to_string().contains("command must name a program"),
            "{err}"
        );
    }
}
