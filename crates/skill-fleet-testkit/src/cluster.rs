//! Several real `skill-fleet-server` binaries on one PostgreSQL database: a [`Cluster`].
//!
//! [`Cluster::start`] creates a fresh database on the test PostgreSQL (see [`crate::postgres`]:
//! it skips with a printed reason, or fails under `CI`, when there is none) and starts N
//! servers on it, each on 127.0.0.1:0 with a data directory of its own in one temporary
//! directory and the same TOML configuration. A server can be SIGKILLed ([`Cluster::kill`]),
//! stopped ([`Cluster::terminate`]) and started again on its data directory
//! ([`Cluster::restart`]), and more can join ([`Cluster::add`]). Dropping the cluster kills
//! every server, then drops the database it made ([`Cluster::spawn_on_url`] runs on one it
//! leaves alone).
//!
//! The servers' stderr is captured and printed when a failing test drops them.

use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus};

use crate::error::TestkitError;
use crate::postgres::{PostgresDatabase, TestPostgres};
use crate::server::{TestServer, command};

/// N servers on one PostgreSQL database; see the module docs.
#[derive(Debug)]
pub struct Cluster {
    /// Slot `i` holds server `i` while it runs. Declared first: fields drop in order, so the
    /// servers die before their database is dropped.
    servers: Vec<Option<TestServer>>,
    binary: PathBuf,
    /// Every server's configuration file.
    config: PathBuf,
    /// Extra flags every server gets.
    flags: Vec<String>,
    dir: tempfile::TempDir,
    /// The database's url.
    url: String,
    /// The database, when the cluster made it: held to be dropped with the cluster, last.
    _database: Option<PostgresDatabase>,
}

impl Cluster {
    /// `servers` servers of `binary` on a fresh database of the test PostgreSQL, configured by
    /// `config` (TOML, as `--config`); `None` when there is no PostgreSQL (the reason is
    /// printed; under `CI` this panics instead). Panics when a server does not start.
    pub fn start(binary: &Path, servers: usize, config: &str) -> Option<Cluster> {
        let postgres = TestPostgres::get()?;
        Some(Cluster::start_on(postgres, binary, servers, config))
    }

    /// Like [`Cluster::start`] on a given PostgreSQL (a [`crate::postgres::PostgresCluster`]
    /// a test restarts).
    pub fn start_on(
        postgres: &TestPostgres,
        binary: &Path,
        servers: usize,
        config: &str,
    ) -> Cluster {
        Cluster::spawn(postgres.database(), binary, servers, config, &[])
            .unwrap_or_else(|err| panic!("{err}"))
    }

    /// `servers` servers of `binary` on `database`, configured by `config` (TOML) and `flags`;
    /// the error of the first server that does not start. The database is dropped with the
    /// cluster.
    pub fn spawn(
        database: PostgresDatabase,
        binary: &Path,
        servers: usize,
        config: &str,
        flags: &[&str],
    ) -> Result<Cluster, TestkitError> {
        let url = database.url.clone();
        Cluster::spawn_inner(url, Some(database), binary, servers, config, flags)
    }

    /// Like [`Cluster::spawn`] on an existing database, which is left as it is when the
    /// cluster is dropped.
    pub fn spawn_on_url(
        url: &str,
        binary: &Path,
        servers: usize,
        config: &str,
        flags: &[&str],
    ) -> Result<Cluster, TestkitError> {
        Cluster::spawn_inner(url.to_owned(), None, binary, servers, config, flags)
    }

    fn spawn_inner(
        url: String,
        database: Option<PostgresDatabase>,
        binary: &Path,
        servers: usize,
        config: &str,
        flags: &[&str],
    ) -> Result<Cluster, TestkitError> {
        let dir = tempfile::Builder::new()
            .prefix("sf-cluster-")
            .tempdir()
            .map_err(|source| TestkitError::Write {
                path: std::env::temp_dir(),
                source,
            })?;
        let config_path = dir.path().join("server.toml");
        std::fs::write(&config_path, config).map_err(|source| TestkitError::Write {
            path: config_path.clone(),
            source,
        })?;
        let mut cluster = Cluster {
            servers: Vec::new(),
            binary: binary.to_owned(),
            config: config_path,
            flags: flags.iter().map(|flag| (*flag).to_owned()).collect(),
            dir,
            url,
            _database: database,
        };
        for _ in 0..servers {
            cluster.try_add()?;
        }
        Ok(cluster)
    }

    /// The database's url (`postgres://…`).
    pub fn database_url(&self) -> &str {
        &self.url
    }

    /// How many servers the cluster has had (running or not): the valid indices.
    pub fn len(&self) -> usize {
        self.servers.len()
    }

    /// Whether the cluster has no servers.
    pub fn is_empty(&self) -> bool {
        self.servers.is_empty()
    }

    /// Server `i`; panics when it is not running.
    pub fn server(&self, i: usize) -> &TestServer {
        self.servers
            .get(i)
            .and_then(Option::as_ref)
            .unwrap_or_else(|| panic!("server {i} of the cluster is not running"))
    }

    /// Server `i`, when it runs.
    pub fn get(&self, i: usize) -> Option<&TestServer> {
        self.servers.get(i).and_then(Option::as_ref)
    }

    /// The running servers with their indices.
    pub fn running(&self) -> impl Iterator<Item = (usize, &TestServer)> {
        self.servers
            .iter()
            .enumerate()
            .filter_map(|(i, server)| server.as_ref().map(|server| (i, server)))
    }

    /// Server `i`'s data directory (work directories of the jobs it runs).
    pub fn data_dir(&self, i: usize) -> PathBuf {
        self.dir.path().join(format!("server-{i}"))
    }

    /// The command that starts server `i`: 127.0.0.1:0, the cluster's database, configuration
    /// and flags, its own data directory.
    pub fn command(&self, i: usize) -> Command {
        let mut command = command(&self.binary, Path::new(&self.url));
        command
            .env_remove("SKILL_FLEET_DATABASE_URL")
            .arg("--config")
            .arg(&self.config)
            .arg("--data-dir")
            .arg(self.data_dir(i))
            .args(&self.flags);
        command
    }

    /// Starts one more server; its index.
    pub fn add(&mut self) -> usize {
        self.try_add().unwrap_or_else(|err| panic!("{err}"))
    }

    /// Starts one more server; its index, or why it did not start.
    pub fn try_add(&mut self) -> Result<usize, TestkitError> {
        let i = self.servers.len();
        self.servers.push(None);
        self.try_restart(i)?;
        Ok(i)
    }

    /// SIGKILLs server `i` (no shutdown code runs) and waits for it to be gone.
    pub fn kill(&mut self, i: usize) {
        if let Some(server) = self.servers.get_mut(i).and_then(Option::take) {
            server.kill();
        }
    }

    /// SIGTERM to server `i` (a graceful stop); its exit status.
    pub fn terminate(&mut self, i: usize) -> ExitStatus {
        let server = self
            .servers
            .get_mut(i)
            .and_then(Option::take)
            .unwrap_or_else(|| panic!("server {i} of the cluster is not running"));
        server.terminate()
    }

    /// Starts server `i` again (after [`Cluster::kill`] or [`Cluster::terminate`]) on its data
    /// directory; panics when it does not start.
    pub fn restart(&mut self, i: usize) -> &TestServer {
        self.try_restart(i).unwrap_or_else(|err| panic!("{err}"));
        self.server(i)
    }

    /// [`Cluster::restart`], with the reason when it does not start.
    pub fn try_restart(&mut self, i: usize) -> Result<&TestServer, TestkitError> {
        assert!(i < self.servers.len(), "the cluster has no server {i}");
        assert!(
            self.servers[i].is_none(),
            "server {i} of the cluster is already running"
        );
        let data_dir = self.data_dir(i);
        std::fs::create_dir_all(&data_dir).map_err(|source| TestkitError::Write {
            path: data_dir,
            source,
        })?;
        let server = TestServer::spawn_capturing(self.command(i))?;
        Ok(self.servers[i].insert(server))
    }

    /// The jobs whose processes server `i` runs now: the `SKILL_FLEET_JOB_ID` of each child
    /// process of the server (Linux: read from `/proc`; empty elsewhere or when it runs none).
    pub fn children(&self, i: usize) -> Vec<JobProcess> {
        self.get(i)
            .map(|server| job_processes(server.child.id()))
            .unwrap_or_default()
    }
}

/// A process a server runs for a job.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JobProcess {
    /// Its pid.
    pub pid: u32,
    /// The job it runs.
    pub job_id: String,
}

/// The child processes of `parent` that run a job (their environment names one), read from
/// `/proc`.
pub fn job_processes(parent: u32) -> Vec<JobProcess> {
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    let mut found: Vec<JobProcess> = entries
        .filter_map(Result::ok)
        .filter_map(|entry| entry.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| parent_of(*pid) == Some(parent))
        .filter_map(|pid| {
            Some(JobProcess {
                pid,
                job_id: job_of(pid)?,
            })
        })
        .collect();
    found.sort_by_key(|process| process.pid);
    found
}

/// The parent pid of a live (not zombie) process.
fn parent_of(pid: u32) -> Option<u32> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name (field 2) may hold spaces: count fields after its closing paren.
    let mut fields = stat.get(stat.rfind(')')? + 1..)?.split_whitespace();
    let state = fields.next()?;
    if state == "Z" {
        return None;
    }
    fields.next()?.parse().ok()
}

/// The `SKILL_FLEET_JOB_ID` in a process's environment.
fn job_of(pid: u32) -> Option<String> {
    let environ = std::fs::read(format!("/proc/{pid}/environ")).ok()?;
    environ.split(|&byte| byte == 0).find_map(|pair| {
        let value = pair.strip_prefix(b"SKILL_FLEET_JOB_ID=")?;
        Some(String::from_utf8_lossy(value).into_owned())
    })
}

/// Whether process `pid` is gone (or a zombie, dead but not yet reaped).
pub fn process_gone(pid: u32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Err(_) => true,
        Ok(stat) => stat
            .rfind(')')
            .and_then(|i| stat.get(i + 1..))
            .and_then(|rest| rest.split_whitespace().next())
            .is_some_and(|state| state == "Z"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn this_process_is_its_parents_child_and_runs_no_job() {
        let me = std::process::id();
        assert!(parent_of(me).is_some());
        assert!(!process_gone(me));
        assert!(job_processes(me).is_empty());
        assert!(process_gone(u32::MAX));
    }
}
