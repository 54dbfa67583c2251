//! Server configuration, declared once: [`Options`] is at the same time the flags (clap), the
//! keys of the TOML file (serde) and, by one rule, the environment variables
//! (`SKILL_FLEET_` and the key in capitals). Flags win over the environment, the environment
//! over the file (`--config`), the file over the defaults; an error names the key and the
//! source that set it (`invalid value for max_body_bytes from SKILL_FLEET_MAX_BODY_BYTES: …`).

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use clap::{Args, CommandFactory, Parser, Subcommand, ValueEnum};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
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
/// Default `lease_ttl_seconds`: six heartbeats, so a lease survives a short network or
/// database blip (docs/CONFIG.md).
pub const DEFAULT_LEASE_TTL_SECONDS: f64 = 90.0;
/// Default `heartbeat_interval_seconds`.
pub const DEFAULT_HEARTBEAT_INTERVAL_SECONDS: f64 = 15.0;
/// Default `rescue_interval_seconds`.
pub const DEFAULT_RESCUE_INTERVAL_SECONDS: f64 = 15.0;
/// Default `max_rescues`.
pub const DEFAULT_MAX_RESCUES: u32 = 3;
/// Longest lease, heartbeat or rescue interval: a day.
pub const MAX_LEASE_SECONDS: f64 = 86_400.0;
/// Largest `max_rescues`.
pub const MAX_MAX_RESCUES: u32 = 1000;
/// Job types that are re-queued (not failed) when the server stopped while they ran.
pub const DEFAULT_RESUMABLE_TYPES: [&str; 2] = ["optimization", "evaluation"];
/// Prefix of the environment variable of each option: `SKILL_FLEET_BIND` for `bind`.
pub const ENV_PREFIX: &str = "SKILL_FLEET_";
/// Keys of the file that are neither flags nor environment variables (tables).
pub const FILE_ONLY_KEYS: [&str; 1] = ["executors"];

/// `skill-fleet-server`: durable job server with live progress.
#[derive(Debug, Parser)]
#[command(
    name = "skill-fleet-server",
    version,
    about,
    after_help = "Each option is also an environment variable (--max-body-bytes: \
                  SKILL_FLEET_MAX_BODY_BYTES) and a key of the --config file (max_body_bytes); \
                  flags win over the environment, the environment over the file. See docs/CONFIG.md."
)]
pub struct Cli {
    /// TOML configuration file (keys as in docs/CONFIG.md).
    #[arg(long, global = true, env = "SKILL_FLEET_CONFIG", value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// What to do; serves the API when left out.
    #[command(subcommand)]
    pub command: Option<Command>,
    /// The options, as flags.
    #[command(flatten)]
    pub options: Options,
}

/// Subcommands besides serving.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Serve the API (the default).
    Serve,
    /// Create or migrate the database, optionally import legacy jobs, print a report, exit.
    /// Refused while a server runs on the database.
    InitDb {
        /// A legacy export (JSON array) or a directory of legacy session files.
        #[arg(long, value_name = "PATH")]
        import: Option<PathBuf>,
    },
    /// Inspect the database (read-only: works beside a running server).
    Db {
        /// What to show.
        #[command(subcommand)]
        command: DbCommand,
    },
}

/// `db` subcommands.
#[derive(Debug, Subcommand)]
pub enum DbCommand {
    /// Who owns the database, schema version, pending migrations and job counts by status.
    Status,
}

/// Log output format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, ValueEnum, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// Human-readable lines.
    #[default]
    Text,
    /// One JSON object per line.
    Json,
}

/// Every option of the server, declared once: each field is a flag (`--max-body-bytes`), a
/// key of the TOML file (`max_body_bytes`) and an environment variable
/// (`SKILL_FLEET_MAX_BODY_BYTES`), except the tables of the file ([`FILE_ONLY_KEYS`]) and
/// hidden flags. A field left `None` by every source takes the default its doc names, which
/// [`Config::resolve`] applies.
#[derive(Debug, Default, Clone, Args, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Options {
    /// SQLite file (a path or `sqlite://` URL) or a PostgreSQL `postgres://` URL, which several
    /// servers may share [default: ./skill-fleet.db].
    #[arg(long, global = true, value_name = "PATH")]
    pub database: Option<String>,
    /// Address to listen on [default: 127.0.0.1:8000]; a non-loopback one requires a token.
    #[arg(long, value_name = "ADDR")]
    pub bind: Option<SocketAddr>,
    /// Bearer token required on every route but /healthz.
    #[arg(long, value_name = "TOKEN")]
    #[serde(serialize_with = "serialize_token")]
    pub auth_token: Option<AuthToken>,
    /// TOML file of tokens with roles (`[[token]]`: name, role, secret_sha256, types);
    /// reloaded on SIGHUP and when it changes.
    #[arg(long, value_name = "FILE")]
    pub tokens_file: Option<PathBuf>,
    /// How often coalesced progress is streamed and persisted, in ms [default: 100].
    #[arg(long, value_name = "MS")]
    pub emit_interval_ms: Option<u64>,
    /// Time-to-live of cached GET responses, in seconds [default: 300].
    #[arg(long, value_name = "SECONDS")]
    pub cache_ttl_seconds: Option<u64>,
    /// Comma-separated job types re-queued after a crash [default: optimization,evaluation].
    #[arg(long, value_delimiter = ',', value_name = "TYPES")]
    pub resumable_types: Option<Vec<String>>,
    /// Legacy jobs to import at start-up (idempotent).
    #[arg(long, value_name = "PATH")]
    pub legacy_import: Option<PathBuf>,
    /// Log format [default: text].
    #[arg(long, value_enum)]
    pub log_format: Option<LogFormat>,
    /// Where job work directories live [default: `skill-fleet-data` beside the database].
    #[arg(long, value_name = "DIR")]
    pub data_dir: Option<PathBuf>,
    /// Most jobs the executor runs at once, over all types [default: 4].
    #[arg(long, value_name = "N")]
    pub max_concurrent_jobs: Option<usize>,
    /// Most SSE streams open at once; more get 503 with Retry-After [default: 10000].
    #[arg(long, value_name = "N")]
    pub max_sse_connections: Option<usize>,
    /// Most progress history rows kept per job; older history is thinned [default: 10000].
    #[arg(long, value_name = "N")]
    pub max_history_rows_per_job: Option<u64>,
    /// Delete finished jobs (their history and files too) this many days after they ended,
    /// checked hourly [default: keep them].
    #[arg(long, value_name = "DAYS")]
    pub retention_days: Option<u64>,
    /// How long a write waits for SQLite's write lock held by another process, in ms
    /// [default: 5000]; past it the write fails with 503 `database is busy`.
    #[arg(long, value_name = "MS")]
    pub busy_timeout_ms: Option<u64>,
    /// Most database connections this server opens (readers, writers, the flush) [default:
    /// 10]; on PostgreSQL N servers open up to N times this, plus one listener each.
    #[arg(long, value_name = "N")]
    pub pool_size: Option<u32>,
    /// Largest request body, in bytes; larger ones get 413 [default: 1048576]. Artifact
    /// uploads have limits of their own.
    #[arg(long, value_name = "BYTES")]
    pub max_body_bytes: Option<usize>,
    /// Largest artifact, in bytes; a larger upload gets 413 and nothing is stored
    /// [default: 268435456, 256 MiB].
    #[arg(long, value_name = "BYTES")]
    pub max_artifact_bytes: Option<u64>,
    /// Most bytes of artifacts one job may hold; an upload past it gets 413 and nothing is
    /// stored [default: 1073741824, 1 GiB].
    #[arg(long, value_name = "BYTES")]
    pub max_job_artifact_bytes: Option<u64>,
    /// Seconds between SIGTERM and SIGKILL when a job's process is stopped [default: 10].
    #[arg(long, value_name = "SECONDS")]
    pub stop_grace_seconds: Option<u64>,
    /// How long a running job's lease lasts after each heartbeat or write, in seconds; a job
    /// whose lease runs out is rescued [default: 90].
    #[arg(long, value_name = "SECONDS")]
    pub lease_ttl_seconds: Option<f64>,
    /// How often workers (and the server, for its own children) renew their leases, in
    /// seconds; below `lease_ttl_seconds` [default: 15].
    #[arg(long, value_name = "SECONDS")]
    pub heartbeat_interval_seconds: Option<f64>,
    /// How often the server looks for expired leases, in seconds [default: 15].
    #[arg(long, value_name = "SECONDS")]
    pub rescue_interval_seconds: Option<f64>,
    /// How many times a job whose lease expired goes back to the queue; the next expiry fails
    /// it [default: 3].
    #[arg(long, value_name = "N")]
    pub max_rescues: Option<u32>,
    /// Job type → command (`[executors.TYPE]` tables of the file only). When the file has
    /// this table it replaces the built-in default (`optimization` → the bundled example
    /// optimizer); an empty table runs nothing.
    #[arg(skip)]
    pub executors: Option<BTreeMap<String, ExecutorConfig>>,
    /// Serve `/_bench/noop`, the do-nothing baseline of `cargo xtask bench` (a flag only).
    #[arg(long, hide = true)]
    #[serde(skip)]
    pub bench_routes: bool,
}

/// The token as the string it is (only for layering the sources; never printed).
fn serialize_token<S: serde::Serializer>(
    token: &Option<AuthToken>,
    serializer: S,
) -> Result<S::Ok, S::Error> {
    match token {
        Some(token) => serializer.serialize_some(token.expose()),
        None => serializer.serialize_none(),
    }
}

/// How the server runs one job type (a `[executors.TYPE]` table of the file).
#[derive(Debug, Clone, Serialize, Deserialize)]
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

/// The names one option goes by; `None` where it has no such name.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct OptionNames {
    /// The flag, `--max-body-bytes`.
    pub flag: Option<String>,
    /// The environment variable, `SKILL_FLEET_MAX_BODY_BYTES`.
    pub env: Option<String>,
    /// The key of the TOML file, `max_body_bytes`.
    pub key: Option<String>,
}

/// Every option the server has, by flag, environment variable and file key, read from the
/// one definition (the clap arguments of [`Cli`] and [`Options`]); hidden flags left out.
pub fn option_names() -> Vec<OptionNames> {
    let option_keys: Vec<String> = Options::augment_args(clap::Command::new("options"))
        .get_arguments()
        .map(|arg| arg.get_id().to_string())
        .collect();
    let mut names: Vec<OptionNames> = Cli::command()
        .get_arguments()
        .filter(|arg| !arg.is_hide_set())
        .filter_map(|arg| {
            let flag = arg.get_long().map(|long| format!("--{long}"))?;
            let id = arg.get_id().to_string();
            Some(if option_keys.contains(&id) {
                OptionNames {
                    flag: Some(flag),
                    env: Some(env_var(&id)),
                    key: Some(id),
                }
            } else {
                OptionNames {
                    flag: Some(flag),
                    env: arg.get_env().map(|env| env.to_string_lossy().into_owned()),
                    key: None,
                }
            })
        })
        .collect();
    names.extend(FILE_ONLY_KEYS.iter().map(|key| OptionNames {
        flag: None,
        env: None,
        key: Some((*key).to_owned()),
    }));
    names
}

/// Second environment variables of some options, read when the first is unset:
/// `SKILL_FLEET_DATABASE_URL`, the name deployments of PostgreSQL-backed services expect.
pub const ENV_ALIASES: &[(&str, &str)] = &[("database", "SKILL_FLEET_DATABASE_URL")];

/// The environment variable of an option: `SKILL_FLEET_` and the key in capitals.
fn env_var(key: &str) -> String {
    format!("{ENV_PREFIX}{}", key.to_ascii_uppercase())
}

/// The flag of an option: `--max-body-bytes` for `max_body_bytes`.
fn flag_of(key: &str) -> String {
    format!("--{}", key.replace('_', "-"))
}

/// Where an option's value came from.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Source {
    /// Its flag.
    Flag,
    /// Its environment variable.
    Env,
    /// The TOML file at this path.
    File(PathBuf),
}

/// The options of every source, layered, and where each set value came from.
#[derive(Debug)]
struct Layered {
    options: Options,
    sources: BTreeMap<String, Source>,
}

impl Layered {
    /// Layers the file (if any) under the environment (read by `env`) under the flags.
    fn gather(cli: &Cli, env: &dyn Fn(&str) -> Option<String>) -> Result<Layered, ServerError> {
        let mut merged = Map::new();
        let mut sources = BTreeMap::new();
        if let Some(path) = &cli.config {
            for (key, value) in file_layer(path)? {
                merged.insert(key.clone(), value);
                sources.insert(key, Source::File(path.clone()));
            }
        }
        for (key, value) in env_layer(env)? {
            merged.insert(key.clone(), value);
            sources.insert(key, Source::Env);
        }
        let flags = serde_json::to_value(&cli.options)
            .map_err(|err| ServerError::Config(format!("flags: {err}")))?;
        if let Value::Object(flags) = flags {
            for (key, value) in flags.into_iter().filter(|(_, value)| !value.is_null()) {
                merged.insert(key.clone(), value);
                sources.insert(key, Source::Flag);
            }
        }
        // Each value was checked alone against its key's type, so this only joins them.
        let mut options: Options = serde_json::from_value(Value::Object(merged))
            .map_err(|err| ServerError::Config(err.to_string()))?;
        options.bench_routes = cli.options.bench_routes;
        Ok(Layered { options, sources })
    }

    /// Where `key`'s value came from: `--bind`, `SKILL_FLEET_BIND`, the file's path, or
    /// `the default`.
    fn source(&self, key: &str) -> String {
        match self.sources.get(key) {
            Some(Source::Flag) => flag_of(key),
            Some(Source::Env) => env_var(key),
            Some(Source::File(path)) => path.display().to_string(),
            None => "the default".to_owned(),
        }
    }

    /// `invalid value for {key} from {source}: {reason}`.
    fn invalid(&self, key: &str, reason: impl std::fmt::Display) -> ServerError {
        ServerError::Config(format!(
            "invalid value for {key} from {}: {reason}",
            self.source(key)
        ))
    }
}

/// A parser's error on one line, whatever it printed.
fn one_line(err: impl std::fmt::Display) -> String {
    let text = err.to_string();
    let lines: Vec<&str> = text
        .lines()
        .map(str::trim)
        .filter(|line| !line.is_empty())
        .collect();
    lines.join(" ")
}

/// The file's keys, each checked against its type.
fn file_layer(path: &Path) -> Result<Map<String, Value>, ServerError> {
    let text = std::fs::read_to_string(path).map_err(|source| ServerError::Io {
        path: path.to_owned(),
        source,
    })?;
    let table: toml::Table = toml::from_str(&text)
        .map_err(|err| ServerError::Config(format!("{}: {err}", path.display())))?;
    let known = known_keys();
    let mut layer = Map::new();
    for (key, value) in table {
        if !known.contains(&key) {
            return Err(ServerError::Config(format!(
                "unknown key `{key}` in {}; the keys are listed in docs/CONFIG.md",
                path.display()
            )));
        }
        let mut single = toml::Table::new();
        single.insert(key.clone(), value.clone());
        // Checked alone, so the error is this key's.
        if let Err(err) = toml::Value::Table(single).try_into::<Options>() {
            return Err(ServerError::Config(format!(
                "invalid value for {key} from {}: {}",
                path.display(),
                one_line(err)
            )));
        }
        let value = serde_json::to_value(&value).map_err(|err| {
            ServerError::Config(format!(
                "invalid value for {key} from {}: {err}",
                path.display()
            ))
        })?;
        layer.insert(key, value);
    }
    Ok(layer)
}

/// The environment variables of the options that are set and not empty, each read as the
/// first of a number, a string and a comma-separated list that its key's type takes.
fn env_layer(env: &dyn Fn(&str) -> Option<String>) -> Result<Map<String, Value>, ServerError> {
    let mut layer = Map::new();
    for key in known_keys() {
        if FILE_ONLY_KEYS.contains(&key.as_str()) {
            continue;
        }
        let name = env_var(&key);
        let alias = ENV_ALIASES
            .iter()
            .find(|(of, _)| *of == key)
            .map(|(_, alias)| *alias);
        let Some(text) = env(&name)
            .filter(|text| !text.is_empty())
            .or_else(|| alias.and_then(env).filter(|text| !text.is_empty()))
        else {
            continue;
        };
        let number = text
            .trim()
            .parse::<i64>()
            .map(Value::from)
            .ok()
            .or_else(|| text.trim().parse::<u64>().map(Value::from).ok());
        let list = Value::Array(text.split(',').map(Value::from).collect());
        let candidates = number
            .into_iter()
            .chain([Value::String(text.clone()), list]);
        let mut first_error = None;
        let mut chosen = None;
        for candidate in candidates {
            let mut single = Map::new();
            single.insert(key.clone(), candidate.clone());
            match serde_json::from_value::<Options>(Value::Object(single)) {
                Ok(_) => {
                    chosen = Some(candidate);
                    break;
                }
                Err(err) => {
                    first_error.get_or_insert_with(|| one_line(err));
                }
            }
        }
        match chosen {
            Some(value) => {
                layer.insert(key, value);
            }
            None => {
                return Err(ServerError::Config(format!(
                    "invalid value for {key} from {name}: {}",
                    first_error.unwrap_or_default()
                )));
            }
        }
    }
    Ok(layer)
}

/// The keys of the file: the options' flags by their ids, and the tables.
fn known_keys() -> Vec<String> {
    Options::augment_args(clap::Command::new("options"))
        .get_arguments()
        .filter(|arg| !arg.is_hide_set())
        .map(|arg| arg.get_id().to_string())
        .chain(FILE_ONLY_KEYS.iter().map(|key| (*key).to_owned()))
        .collect()
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
    /// Tokens with roles, reloaded while the server runs.
    pub tokens_file: Option<PathBuf>,
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
    /// Largest artifact, and most artifact bytes per job.
    pub artifact_limits: skill_fleet_jobs::ArtifactLimits,
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
    /// How long a lease lasts after each renewal.
    pub lease_ttl: Duration,
    /// How often leases are renewed.
    pub heartbeat_interval: Duration,
    /// How often expired leases are looked for.
    pub rescue_interval: Duration,
    /// How many times an expired job goes back to the queue.
    pub max_rescues: u32,
    /// How long a write waits for the database's write lock.
    pub busy_timeout: Duration,
    /// Most database connections in the store's pool.
    pub pool_size: u32,
    /// Job type → command; `None` means the built-in default (the bundled optimizer).
    pub executors: Option<BTreeMap<String, ExecutorConfig>>,
    /// Serve the benchmark baseline route.
    pub bench_routes: bool,
}

impl Config {
    /// Resolves flags over the environment over the file over defaults, and checks the
    /// result.
    pub fn resolve(cli: &Cli) -> Result<Config, ServerError> {
        Config::resolve_with_env(cli, &|name| std::env::var(name).ok())
    }

    /// [`Config::resolve`] with the environment read by `env` (tests give their own).
    pub fn resolve_with_env(
        cli: &Cli,
        env: &dyn Fn(&str) -> Option<String>,
    ) -> Result<Config, ServerError> {
        let layered = Layered::gather(cli, env)?;
        let options = layered.options.clone();
        let bind = match options.bind {
            Some(bind) => bind,
            None => DEFAULT_BIND
                .parse()
                .map_err(|err| ServerError::Config(format!("default bind address: {err}")))?,
        };
        let emit_interval_ms = options.emit_interval_ms.unwrap_or(100);
        if !(1..=60_000).contains(&emit_interval_ms) {
            return Err(layered.invalid(
                "emit_interval_ms",
                format!("emit interval must be between 1 and 60000 ms, got {emit_interval_ms}"),
            ));
        }
        let resumable_types = options
            .resumable_types
            .unwrap_or_else(|| DEFAULT_RESUMABLE_TYPES.map(str::to_owned).to_vec())
            .into_iter()
            .map(|t| t.trim().to_owned())
            .filter(|t| !t.is_empty())
            .collect::<Vec<_>>();
        for job_type in &resumable_types {
            skill_fleet_types::validate_job_type(job_type).map_err(|err| {
                layered.invalid("resumable_types", format!("resumable types: {err}"))
            })?;
        }
        let auth_token = options.auth_token.filter(|token| !token.is_empty());
        let tokens_file = options
            .tokens_file
            .filter(|path| !path.as_os_str().is_empty());
        if !bind.ip().is_loopback() && auth_token.is_none() && tokens_file.is_none() {
            return Err(layered.invalid(
                "bind",
                format!(
                    "binding to {bind} (not loopback) requires a bearer token: set --auth-token or SKILL_FLEET_AUTH_TOKEN, or a tokens file (--tokens-file)"
                ),
            ));
        }
        let database = options
            .database
            .unwrap_or_else(|| DEFAULT_DATABASE.to_owned());
        let data_dir = options
            .data_dir
            .unwrap_or_else(|| default_data_dir(&database));
        // Children run in their own work directories: a relative path would point elsewhere.
        let data_dir = std::path::absolute(&data_dir).map_err(|err| {
            layered.invalid(
                "data_dir",
                format!("data dir {}: {err}", data_dir.display()),
            )
        })?;
        if let Some(executors) = &options.executors {
            for (job_type, executor) in executors {
                check_executor(job_type, executor)
                    .map_err(|reason| layered.invalid("executors", reason))?;
            }
        }
        let max_concurrent_jobs = options.max_concurrent_jobs.unwrap_or(4);
        if max_concurrent_jobs == 0 {
            return Err(layered.invalid(
                "max_concurrent_jobs",
                "max concurrent jobs must be at least 1",
            ));
        }
        let pool_size = options.pool_size.unwrap_or(10);
        if !(2..=1000).contains(&pool_size) {
            return Err(layered.invalid(
                "pool_size",
                format!("pool size must be between 2 and 1000 connections, got {pool_size}"),
            ));
        }
        let busy_timeout_ms = options.busy_timeout_ms.unwrap_or(5000);
        if !(1..=600_000).contains(&busy_timeout_ms) {
            return Err(layered.invalid(
                "busy_timeout_ms",
                format!("busy timeout must be between 1 and 600000 ms, got {busy_timeout_ms}"),
            ));
        }
        let max_sse_connections = options
            .max_sse_connections
            .unwrap_or(skill_fleet_api::DEFAULT_MAX_SSE_CONNECTIONS);
        if max_sse_connections == 0 {
            return Err(layered.invalid(
                "max_sse_connections",
                "max sse connections must be at least 1, got 0",
            ));
        }
        let max_history_rows_per_job = options
            .max_history_rows_per_job
            .unwrap_or(skill_fleet_jobs::DEFAULT_MAX_HISTORY_ROWS_PER_JOB);
        if max_history_rows_per_job == 0 {
            return Err(layered.invalid(
                "max_history_rows_per_job",
                "max history rows per job must be at least 1, got 0",
            ));
        }
        let artifact_limits = skill_fleet_jobs::ArtifactLimits {
            max_bytes: options
                .max_artifact_bytes
                .unwrap_or(skill_fleet_jobs::ArtifactLimits::DEFAULT_MAX_BYTES),
            max_job_bytes: options
                .max_job_artifact_bytes
                .unwrap_or(skill_fleet_jobs::ArtifactLimits::DEFAULT_MAX_JOB_BYTES),
        };
        if artifact_limits.max_bytes == 0 {
            return Err(layered.invalid(
                "max_artifact_bytes",
                "max artifact bytes must be at least 1, got 0",
            ));
        }
        if artifact_limits.max_job_bytes < artifact_limits.max_bytes {
            return Err(layered.invalid(
                "max_job_artifact_bytes",
                format!(
                    "max job artifact bytes ({}) must be at least max_artifact_bytes ({})",
                    artifact_limits.max_job_bytes, artifact_limits.max_bytes
                ),
            ));
        }
        if let Some(days) = options.retention_days
            && !(1..=MAX_RETENTION_DAYS).contains(&days)
        {
            return Err(layered.invalid(
                "retention_days",
                format!("retention days must be between 1 and {MAX_RETENTION_DAYS}, got {days}"),
            ));
        }
        let stop_grace_seconds = options.stop_grace_seconds.unwrap_or(10);
        if stop_grace_seconds > MAX_STOP_GRACE_SECONDS {
            return Err(layered.invalid(
                "stop_grace_seconds",
                format!(
                    "stop grace must be at most {MAX_STOP_GRACE_SECONDS} seconds, got {stop_grace_seconds}"
                ),
            ));
        }
        let cache_ttl_seconds = options.cache_ttl_seconds.unwrap_or(300);
        if cache_ttl_seconds > MAX_CACHE_TTL_SECONDS {
            return Err(layered.invalid(
                "cache_ttl_seconds",
                format!(
                    "cache ttl must be at most {MAX_CACHE_TTL_SECONDS} seconds, got {cache_ttl_seconds}"
                ),
            ));
        }
        let seconds = |key: &str, value: Option<f64>, default: f64, max: f64| {
            let value = value.unwrap_or(default);
            if value.is_finite() && value > 0.0 && value <= max {
                Ok(Duration::from_secs_f64(value))
            } else {
                Err(layered.invalid(
                    key,
                    format!(
                        "{} must be above 0 and at most {max} seconds, got {value}",
                        key.replace('_', " ").trim_end_matches(" seconds")
                    ),
                ))
            }
        };
        let lease_ttl = seconds(
            "lease_ttl_seconds",
            options.lease_ttl_seconds,
            DEFAULT_LEASE_TTL_SECONDS,
            MAX_LEASE_SECONDS,
        )?;
        let heartbeat_interval = seconds(
            "heartbeat_interval_seconds",
            options.heartbeat_interval_seconds,
            DEFAULT_HEARTBEAT_INTERVAL_SECONDS,
            MAX_LEASE_SECONDS,
        )?;
        if heartbeat_interval >= lease_ttl {
            return Err(layered.invalid(
                "heartbeat_interval_seconds",
                format!(
                    "heartbeat interval ({} s) must be shorter than the lease ttl ({} s): a lease must outlive several heartbeats",
                    heartbeat_interval.as_secs_f64(),
                    lease_ttl.as_secs_f64()
                ),
            ));
        }
        let rescue_interval = seconds(
            "rescue_interval_seconds",
            options.rescue_interval_seconds,
            DEFAULT_RESCUE_INTERVAL_SECONDS,
            MAX_LEASE_SECONDS,
        )?;
        let max_rescues = options.max_rescues.unwrap_or(DEFAULT_MAX_RESCUES);
        if max_rescues > MAX_MAX_RESCUES {
            return Err(layered.invalid(
                "max_rescues",
                format!("max rescues must be at most {MAX_MAX_RESCUES}, got {max_rescues}"),
            ));
        }
        Ok(Config {
            lease_ttl,
            heartbeat_interval,
            rescue_interval,
            max_rescues,
            max_sse_connections,
            max_history_rows_per_job,
            retention: options
                .retention_days
                .map(|days| Duration::from_secs(days * 24 * 60 * 60)),
            busy_timeout: Duration::from_millis(busy_timeout_ms),
            pool_size,
            bind,
            database,
            data_dir,
            max_concurrent_jobs,
            stop_grace: Duration::from_secs(stop_grace_seconds),
            executors: options.executors,
            bench_routes: options.bench_routes,
            auth_token,
            tokens_file,
            emit_interval: Duration::from_millis(emit_interval_ms),
            cache_ttl: Duration::from_secs(cache_ttl_seconds),
            resumable_types,
            legacy_import: options.legacy_import,
            log_format: options.log_format.unwrap_or_default(),
            max_body_bytes: options.max_body_bytes.unwrap_or(1024 * 1024),
            artifact_limits,
        })
    }
}

/// The rules of one `[executors.TYPE]` table.
fn check_executor(job_type: &str, executor: &ExecutorConfig) -> Result<(), String> {
    skill_fleet_types::validate_job_type(job_type).map_err(|err| format!("executors: {err}"))?;
    if executor.command.is_empty() || executor.command[0].is_empty() {
        return Err(format!("executors.{job_type}: command must name a program"));
    }
    if executor.max_concurrent == 0 {
        return Err(format!(
            "executors.{job_type}: max_concurrent must be at least 1"
        ));
    }
    if let Some(timeout) = executor.timeout_seconds
        && timeout > MAX_TIMEOUT_SECONDS
    {
        return Err(format!(
            "executors.{job_type}: timeout_seconds must be at most {MAX_TIMEOUT_SECONDS}, got {timeout}"
        ));
    }
    Ok(())
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
    fn a_tokens_file_also_allows_a_non_loopback_bind() {
        let config = resolve(&["--bind", "0.0.0.0:8000", "--tokens-file", "tokens.toml"]).unwrap();
        assert_eq!(config.tokens_file, Some(PathBuf::from("tokens.toml")));
        assert!(config.auth_token.is_none());
        let err = resolve(&["--bind", "0.0.0.0:8000"])
            .unwrap_err()
            .to_string();
        assert!(err.contains("--tokens-file"), "{err}");
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
mod source_tests {
    use super::*;

    /// Resolves `args` with exactly these environment variables.
    fn resolve_env(args: &[&str], env: &[(&str, &str)]) -> Result<Config, ServerError> {
        let mut argv = vec!["skill-fleet-server"];
        argv.extend_from_slice(args);
        let cli = Cli::try_parse_from(argv).unwrap();
        let env: BTreeMap<String, String> = env
            .iter()
            .map(|(name, value)| ((*name).to_owned(), (*value).to_owned()))
            .collect();
        Config::resolve_with_env(&cli, &|name| env.get(name).cloned())
    }

    #[test]
    fn the_database_url_also_comes_from_skill_fleet_database_url() {
        let url = "postgres://postgres@127.0.0.1:5432/fleet";
        let config = resolve_env(&[], &[("SKILL_FLEET_DATABASE_URL", url)]).unwrap();
        assert_eq!(config.database, url);
        let config = resolve_env(
            &[],
            &[
                ("SKILL_FLEET_DATABASE_URL", url),
                ("SKILL_FLEET_DATABASE", "jobs.db"),
            ],
        )
        .unwrap();
        assert_eq!(config.database, "jobs.db", "the option's own name wins");
        let config = resolve_env(
            &["--database", "x.db"],
            &[("SKILL_FLEET_DATABASE_URL", url)],
        )
        .unwrap();
        assert_eq!(config.database, "x.db", "a flag wins");
    }

    #[test]
    fn pool_size_is_bounded() {
        assert_eq!(resolve_env(&[], &[]).unwrap().pool_size, 10);
        assert_eq!(
            resolve_env(&["--pool-size", "32"], &[]).unwrap().pool_size,
            32
        );
        let err = resolve_env(&["--pool-size", "1"], &[])
            .unwrap_err()
            .to_string();
        assert!(err.contains("pool_size") && err.contains("got 1"), "{err}");
    }

    fn file(dir: &tempfile::TempDir, text: &str) -> String {
        let path = dir.path().join("server.toml");
        std::fs::write(&path, text).unwrap();
        path.display().to_string()
    }

    #[test]
    fn flags_win_over_the_environment_which_wins_over_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = file(
            &dir,
            "emit_interval_ms = 250\nmax_body_bytes = 1000\nstop_grace_seconds = 3\n",
        );
        let env = [
            ("SKILL_FLEET_EMIT_INTERVAL_MS", "500"),
            ("SKILL_FLEET_MAX_BODY_BYTES", "2000"),
            ("SKILL_FLEET_RESUMABLE_TYPES", "a,b"),
            ("SKILL_FLEET_AUTH_TOKEN", "12345"),
            // Empty means unset; other SKILL_FLEET_ variables are not options.
            ("SKILL_FLEET_BIND", ""),
            ("SKILL_FLEET_LOG", "debug"),
        ];
        let config = resolve_env(&["--config", &path, "--emit-interval-ms", "7"], &env).unwrap();
        assert_eq!(config.emit_interval, Duration::from_millis(7));
        assert_eq!(config.max_body_bytes, 2000);
        assert_eq!(config.stop_grace, Duration::from_secs(3));
        assert_eq!(config.resumable_types, ["a", "b"]);
        assert_eq!(
            config.auth_token.as_ref().map(AuthToken::expose),
            Some("12345")
        );
        assert_eq!(config.bind.to_string(), DEFAULT_BIND);
        // The file-only options of before are flags too now.
        let config =
            resolve_env(&["--max-body-bytes", "9", "--stop-grace-seconds", "1"], &[]).unwrap();
        assert_eq!(config.max_body_bytes, 9);
        assert_eq!(config.stop_grace, Duration::from_secs(1));
    }

    #[test]
    fn an_error_names_the_key_and_where_it_came_from() {
        let err = resolve_env(&[], &[("SKILL_FLEET_MAX_BODY_BYTES", "lots")]).unwrap_err();
        assert!(
            err.to_string()
                .contains("invalid value for max_body_bytes from SKILL_FLEET_MAX_BODY_BYTES: "),
            "{err}"
        );
        let err = resolve_env(&[], &[("SKILL_FLEET_BIND", "nowhere")]).unwrap_err();
        assert!(
            err.to_string()
                .contains("invalid value for bind from SKILL_FLEET_BIND: "),
            "{err}"
        );

        let dir = tempfile::tempdir().unwrap();
        let path = file(&dir, "max_body_bytes = \"lots\"\n");
        let err = resolve_env(&["--config", &path], &[]).unwrap_err();
        assert!(
            err.to_string()
                .contains(&format!("invalid value for max_body_bytes from {path}: ")),
            "{err}"
        );

        // The range checks say where the value came from, with their old text.
        let path = file(&dir, "emit_interval_ms = 0\n");
        let err = resolve_env(&["--config", &path], &[]).unwrap_err();
        assert!(
            err.to_string().contains(&format!(
                "invalid value for emit_interval_ms from {path}: emit interval must be between 1 and 60000 ms, got 0"
            )),
            "{err}"
        );
        let err = resolve_env(&[], &[("SKILL_FLEET_STOP_GRACE_SECONDS", "3601")]).unwrap_err();
        assert!(
            err.to_string().contains(
                "invalid value for stop_grace_seconds from SKILL_FLEET_STOP_GRACE_SECONDS: stop grace must be at most 3600 seconds"
            ),
            "{err}"
        );
        let err = resolve_env(&["--cache-ttl-seconds", "31536001"], &[]).unwrap_err();
        assert!(
            err.to_string()
                .contains("invalid value for cache_ttl_seconds from --cache-ttl-seconds: cache ttl must be at most"),
            "{err}"
        );
        let err = resolve_env(&[], &[("SKILL_FLEET_BIND", "0.0.0.0:8000")]).unwrap_err();
        assert!(
            err.to_string().contains(
                "invalid value for bind from SKILL_FLEET_BIND: binding to 0.0.0.0:8000 (not loopback) requires a bearer token"
            ),
            "{err}"
        );
        let path = file(
            &dir,
            "[executors.evaluation]\ncommand = [\"python3\"]\ntimeout_seconds = 315360001\n",
        );
        let err = resolve_env(&["--config", &path], &[]).unwrap_err();
        assert!(
            err.to_string().contains(&format!(
                "invalid value for executors from {path}: executors.evaluation: timeout_seconds must be at most"
            )),
            "{err}"
        );
    }

    #[test]
    fn every_option_has_its_flag_its_variable_and_its_key() {
        let names = option_names();
        let find = |key: &str| {
            names
                .iter()
                .find(|n| n.key.as_deref() == Some(key))
                .cloned()
        };
        assert_eq!(
            find("max_body_bytes"),
            Some(OptionNames {
                flag: Some("--max-body-bytes".to_owned()),
                env: Some("SKILL_FLEET_MAX_BODY_BYTES".to_owned()),
                key: Some("max_body_bytes".to_owned()),
            })
        );
        assert_eq!(
            find("executors"),
            Some(OptionNames {
                flag: None,
                env: None,
                key: Some("executors".to_owned())
            })
        );
        let config = names
            .iter()
            .find(|n| n.flag.as_deref() == Some("--config"))
            .unwrap();
        assert_eq!(config.env.as_deref(), Some("SKILL_FLEET_CONFIG"));
        assert_eq!(config.key, None);
        assert!(
            !names
                .iter()
                .any(|n| n.flag.as_deref() == Some("--bench-routes"))
        );
        // Every key of the list is one the file takes (and the flags' rule holds).
        for name in &names {
            if let (Some(key), Some(flag)) = (&name.key, &name.flag) {
                assert_eq!(flag, &flag_of(key));
            }
        }
        for key in known_keys() {
            let mut single = toml::Table::new();
            single.insert(key.clone(), toml::Value::Boolean(true));
            let err = toml::Value::Table(single)
                .try_into::<Options>()
                .unwrap_err();
            assert!(!err.to_string().contains("unknown field"), "{key}: {err}");
        }
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
