//! A PostgreSQL for tests, found once per test process, and a fresh database per test.
//!
//! Where the server comes from, first that works:
//!
//! 1. `SKILL_FLEET_TEST_POSTGRES_URL` (a `postgres://` url of a role that may create
//!    databases, on 127.0.0.0/8 or `localhost`);
//! 2. `postgres://postgres@127.0.0.1:5432/postgres`, when it answers;
//! 3. a throwaway cluster (`initdb`, `pg_ctl`, from `PATH` or `pg_config --bindir`) in a
//!    temporary directory on a free 127.0.0.1 port, stopped and removed when the test
//!    process exits;
//! 4. none: [`TestPostgres::get`] prints why and returns `None` (the test skips), except
//!    under `CI`, where it panics: CI must test PostgreSQL.
//!
//! A test that restarts PostgreSQL gets a [`PostgresCluster`] of its own instead (never the
//! shared server).
//!
//! Tests never connect outside 127.0.0.0/8. [`TestPostgres::database`] creates
//! `sf_t_<random>` and drops it (terminating its leftover connections first) when the
//! [`PostgresDatabase`] is dropped.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::OnceLock;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use diesel::connection::SimpleConnection;
use diesel::pg::PgConnection;
use diesel::prelude::*;

/// The variable naming the PostgreSQL tests use.
pub const URL_VAR: &str = "SKILL_FLEET_TEST_POSTGRES_URL";

/// The server tried when [`URL_VAR`] is not set.
pub const DEFAULT_URL: &str = "postgres://postgres@127.0.0.1:5432/postgres";

/// A PostgreSQL server tests may create databases on.
#[derive(Debug, Clone)]
pub struct TestPostgres {
    /// A url of the server's maintenance database, as a role that may create databases.
    admin_url: String,
    /// Where it came from, for messages.
    origin: String,
}

/// One test's database, dropped with this value.
#[derive(Debug)]
pub struct PostgresDatabase {
    /// The url to open it with.
    pub url: String,
    name: String,
    admin_url: String,
}

impl TestPostgres {
    /// The PostgreSQL of this test process, found on first use (see the module docs); `None`
    /// with the reason printed when there is none. Panics under `CI` when there is none.
    pub fn get() -> Option<&'static TestPostgres> {
        match TestPostgres::find() {
            Ok(found) => Some(found),
            Err(reason) if std::env::var_os("CI").is_some() => {
                panic!("no PostgreSQL for the tests under CI: {reason}")
            }
            Err(reason) => {
                eprintln!("skipping the PostgreSQL half of this test: {reason}");
                None
            }
        }
    }

    /// The PostgreSQL of this process, found on first use, or why there is none; never
    /// panics (for tools such as `cargo xtask schema` that decide themselves what a missing
    /// PostgreSQL means).
    pub fn find() -> Result<&'static TestPostgres, &'static str> {
        static FOUND: OnceLock<Result<TestPostgres, String>> = OnceLock::new();
        FOUND.get_or_init(find).as_ref().map_err(String::as_str)
    }

    /// Where this server came from (`SKILL_FLEET_TEST_POSTGRES_URL`, the default url, a
    /// throwaway cluster in a directory).
    pub fn origin(&self) -> &str {
        &self.origin
    }

    /// A fresh, empty database `sf_t_<random>`, dropped when the value is dropped.
    pub fn database(&self) -> PostgresDatabase {
        static NEXT: AtomicU64 = AtomicU64::new(0);
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.subsec_nanos());
        let name = format!(
            "sf_t_{}_{}_{nanos:x}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        );
        let mut admin = PgConnection::establish(&self.admin_url).unwrap_or_else(|err| {
            panic!(
                "cannot connect to the test PostgreSQL ({}): {err}",
                self.origin
            )
        });
        admin
            .batch_execute(&format!("CREATE DATABASE {name}"))
            .unwrap_or_else(|err| panic!("cannot create database `{name}`: {err}"));
        PostgresDatabase {
            url: with_database(&self.admin_url, &name),
            name,
            admin_url: self.admin_url.clone(),
        }
    }
}

impl PostgresDatabase {
    /// The database's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Ends every connection to this database whose `application_name` is `application`, as
    /// a restart or a failover would; how many there were.
    pub fn terminate(&self, application: &str) -> u64 {
        self.count(application, "pg_terminate_backend(pid)")
    }

    /// How many connections to this database have `application_name` = `application`.
    pub fn connections(&self, application: &str) -> u64 {
        self.count(application, "*")
    }

    fn count(&self, application: &str, what: &str) -> u64 {
        #[derive(QueryableByName)]
        struct Count {
            #[diesel(sql_type = diesel::sql_types::BigInt)]
            n: i64,
        }
        let mut admin = PgConnection::establish(&self.admin_url)
            .unwrap_or_else(|err| panic!("cannot connect to the test PostgreSQL: {err}"));
        let counted: Count = diesel::sql_query(format!(
            "SELECT count({what}) AS n FROM pg_stat_activity \
             WHERE datname = $1 AND application_name = $2"
        ))
        .bind::<diesel::sql_types::Text, _>(&self.name)
        .bind::<diesel::sql_types::Text, _>(application)
        .get_result(&mut admin)
        .unwrap_or_else(|err| panic!("cannot read pg_stat_activity: {err}"));
        u64::try_from(counted.n).unwrap_or(0)
    }
}

impl Drop for PostgresDatabase {
    fn drop(&mut self) {
        let Ok(mut admin) = PgConnection::establish(&self.admin_url) else {
            eprintln!("cannot connect to drop test database `{}`", self.name);
            return;
        };
        // Two statements, two round trips: `DROP DATABASE` refuses to run in the implicit
        // transaction of a multi-statement query.
        let dropped = admin
            .batch_execute(&format!(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity \
                 WHERE datname = '{}' AND pid <> pg_backend_pid()",
                self.name
            ))
            .and_then(|()| admin.batch_execute(&format!("DROP DATABASE IF EXISTS {}", self.name)));
        if let Err(err) = dropped {
            eprintln!("cannot drop test database `{}`: {err}", self.name);
        }
    }
}

/// `url` with its database name replaced by `name` (the query string kept).
pub fn with_database(url: &str, name: &str) -> String {
    let (base, query) = url
        .split_once('?')
        .map_or((url, None), |(b, q)| (b, Some(q)));
    let scheme_end = base.find("://").map_or(0, |i| i + 3);
    let authority_end = base[scheme_end..]
        .find('/')
        .map_or(base.len(), |i| scheme_end + i);
    let mut out = format!("{}/{name}", &base[..authority_end]);
    if let Some(query) = query {
        out.push('?');
        out.push_str(query);
    }
    out
}

/// The host of a `postgres://` url (`localhost` when it names none: the local socket).
fn host_of(url: &str) -> Option<String> {
    let rest = url
        .strip_prefix("postgres://")
        .or_else(|| url.strip_prefix("postgresql://"))?;
    let authority = rest.split(['/', '?']).next().unwrap_or("");
    let host_port = authority.rsplit_once('@').map_or(authority, |(_, h)| h);
    let host = match host_port.strip_prefix('[') {
        Some(v6) => v6.split(']').next().unwrap_or("").to_owned(),
        None => host_port.split(':').next().unwrap_or("").to_owned(),
    };
    // A `host=` parameter overrides the authority.
    let query_host = url
        .split_once('?')
        .and_then(|(_, q)| q.split('&').find_map(|kv| kv.strip_prefix("host=")));
    Some(match query_host {
        Some(h) => h.to_owned(),
        None if host.is_empty() => "localhost".to_owned(),
        None => host,
    })
}

/// Whether tests may connect to `url`: its host is on 127.0.0.0/8 or is `localhost` (or a
/// local socket directory).
pub fn is_local(url: &str) -> bool {
    let Some(host) = host_of(url) else {
        return false;
    };
    if host == "localhost" || host.starts_with('/') {
        return true;
    }
    host.parse::<std::net::Ipv4Addr>()
        .is_ok_and(|ip| ip.octets()[0] == 127)
}

fn with_connect_timeout(url: &str) -> String {
    let separator = if url.contains('?') { '&' } else { '?' };
    format!("{url}{separator}connect_timeout=3")
}

/// Whether a PostgreSQL answers at `url`, and if not, why.
fn answers(url: &str) -> Result<(), String> {
    let mut conn =
        PgConnection::establish(&with_connect_timeout(url)).map_err(|e| e.to_string())?;
    conn.batch_execute("SELECT 1").map_err(|e| e.to_string())
}

fn find() -> Result<TestPostgres, String> {
    if let Ok(url) = std::env::var(URL_VAR) {
        if !is_local(&url) {
            return Err(format!(
                "{URL_VAR} names a host outside 127.0.0.0/8; tests only connect to this machine"
            ));
        }
        answers(&url).map_err(|err| format!("{URL_VAR} does not answer: {err}"))?;
        return Ok(TestPostgres {
            admin_url: url,
            origin: URL_VAR.to_owned(),
        });
    }
    let default = match answers(DEFAULT_URL) {
        Ok(()) => {
            return Ok(TestPostgres {
                admin_url: DEFAULT_URL.to_owned(),
                origin: DEFAULT_URL.to_owned(),
            });
        }
        Err(err) => err,
    };
    throwaway_cluster().map_err(|cluster| {
        format!(
            "{URL_VAR} is not set, {DEFAULT_URL} does not answer ({}), and no throwaway \
             cluster: {cluster}",
            default.trim()
        )
    })
}

/// The directory of PostgreSQL's server programs: `initdb` on `PATH`, else
/// `pg_config --bindir`.
fn server_bin_dir() -> Option<PathBuf> {
    let on_path = std::env::var_os("PATH")
        .and_then(|path| std::env::split_paths(&path).find(|dir| dir.join("initdb").is_file()));
    if on_path.is_some() {
        return on_path;
    }
    let output = Command::new("pg_config").arg("--bindir").output().ok()?;
    let dir = PathBuf::from(String::from_utf8(output.stdout).ok()?.trim());
    dir.join("initdb").is_file().then_some(dir)
}

/// Whether this process runs as root, which PostgreSQL's server programs refuse.
fn is_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .is_ok_and(|out| String::from_utf8_lossy(&out.stdout).trim() == "0")
}

/// Runs a program, as `user` (through `runuser`) when one is given.
fn run(program: &Path, args: &[&str], user: Option<&str>) -> Result<(), String> {
    let mut command = match user {
        Some(user) => {
            let mut command = Command::new("runuser");
            command.args(["-u", user, "--"]).arg(program);
            command
        }
        None => Command::new(program),
    };
    let output = command
        .args(args)
        .stdin(Stdio::null())
        .output()
        .map_err(|err| format!("cannot run {}: {err}", program.display()))?;
    if output.status.success() {
        Ok(())
    } else {
        Err(format!(
            "{} failed: {}",
            program.display(),
            String::from_utf8_lossy(&output.stderr).trim()
        ))
    }
}

/// The process-wide throwaway cluster: started once, stopped and removed by its watcher when
/// this process exits (tests never stop it themselves).
fn throwaway_cluster() -> Result<TestPostgres, String> {
    PostgresCluster::start().map(PostgresCluster::keep_until_exit)
}

/// A PostgreSQL cluster of its own (`initdb`, `pg_ctl`) in a temporary directory, on a free
/// 127.0.0.1 port, that a test may stop and start again (a PostgreSQL restart, never the
/// machine's shared server). Dropping it stops it at once and removes its directory; a
/// watcher does the same if this process ends without dropping it. As root (which
/// PostgreSQL's programs refuse) the cluster runs as the `postgres` user.
#[derive(Debug)]
pub struct PostgresCluster {
    bin: PathBuf,
    dir: PathBuf,
    data: PathBuf,
    /// The `postgres` options: port, address, socket directory, no fsync.
    options: String,
    user: Option<&'static str>,
    port: u16,
    postgres: TestPostgres,
}

impl PostgresCluster {
    /// A new cluster, started; or why there is none (no `initdb`, it failed, it does not
    /// answer).
    pub fn start() -> Result<PostgresCluster, String> {
        let bin =
            server_bin_dir().ok_or("initdb is neither on PATH nor in `pg_config --bindir`")?;
        let dir = tempfile::Builder::new()
            .prefix("sf-test-pg-")
            .tempdir()
            .map_err(|err| format!("no temporary directory: {err}"))?
            .keep();
        let started = PostgresCluster::init(bin, dir.clone());
        if started.is_err() {
            let _ = std::fs::remove_dir_all(&dir);
        }
        started
    }

    /// A new cluster for a test that must restart PostgreSQL; `None` with the reason printed
    /// when PostgreSQL's server programs are missing (the test skips), except under `CI`,
    /// where it panics.
    pub fn for_test() -> Option<PostgresCluster> {
        match PostgresCluster::start() {
            Ok(cluster) => Some(cluster),
            Err(reason) if std::env::var_os("CI").is_some() => {
                panic!("no throwaway PostgreSQL cluster under CI: {reason}")
            }
            Err(reason) => {
                eprintln!("skipping this test, it needs a PostgreSQL of its own: {reason}");
                None
            }
        }
    }

    fn init(bin: PathBuf, dir: PathBuf) -> Result<PostgresCluster, String> {
        let user = is_root().then_some("postgres");
        let dir_arg = dir.display().to_string();
        if let Some(user) = user {
            run(Path::new("chown"), &[user, &dir_arg], None)?;
        }
        let data = dir.join("data");
        let data_arg = data.display().to_string();
        let initdb_args = [
            "-D",
            &data_arg,
            "-U",
            "postgres",
            "--auth=trust",
            "-E",
            "UTF8",
            "--no-locale",
        ];
        run(&bin.join("initdb"), &initdb_args, user)?;
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|listener| listener.local_addr())
            .map_err(|err| format!("no free port: {err}"))?
            .port();
        let url = format!("postgres://postgres@127.0.0.1:{port}/postgres");
        let cluster = PostgresCluster {
            options: format!("-p {port} -c listen_addresses=127.0.0.1 -k {dir_arg} -c fsync=off"),
            bin,
            dir,
            data,
            user,
            port,
            postgres: TestPostgres {
                admin_url: url,
                origin: format!("a throwaway cluster in {dir_arg}"),
            },
        };
        cluster.start_again()?;
        cluster.watch_this_process()?;
        Ok(cluster)
    }

    /// Stopped and removed when this process ends, however it ends: SIGQUIT is the
    /// postmaster's immediate shutdown, and needs no `pg_ctl` (which refuses to run as root).
    fn watch_this_process(&self) -> Result<(), String> {
        let watcher = format!(
            "while kill -0 {pid} 2>/dev/null; do sleep 1; done; \
             kill -QUIT \"$(head -n 1 '{data}/postmaster.pid')\" 2>/dev/null; sleep 2; \
             rm -rf '{dir}'",
            pid = std::process::id(),
            data = self.data.display(),
            dir = self.dir.display(),
        );
        Command::new("sh")
            .args(["-c", &watcher])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .map(drop)
            .map_err(|err| format!("cannot start the cluster's watcher: {err}"))
    }

    /// Kept running for the rest of this process (its watcher removes it).
    fn keep_until_exit(self) -> TestPostgres {
        let cluster = std::mem::ManuallyDrop::new(self);
        cluster.postgres.clone()
    }

    /// The cluster as the PostgreSQL of a test: [`TestPostgres::database`] makes databases
    /// on it.
    pub fn postgres(&self) -> &TestPostgres {
        &self.postgres
    }

    /// The port it listens on (the same after a restart).
    pub fn port(&self) -> u16 {
        self.port
    }

    /// Stops the server at once (`pg_ctl stop -m immediate`: connections are cut, nothing is
    /// checkpointed, the next start recovers from the WAL, as after a crash) and waits until
    /// it is down.
    pub fn stop(&self) -> Result<(), String> {
        let data = self.data.display().to_string();
        let args = ["-D", &data, "-m", "immediate", "-w", "stop"];
        run(&self.bin.join("pg_ctl"), &args, self.user)
    }

    /// Starts the (stopped) server again on the same port and waits until it answers.
    pub fn start_again(&self) -> Result<(), String> {
        let data = self.data.display().to_string();
        let log = self.dir.join("server.log").display().to_string();
        let args = ["-D", &data, "-o", &self.options, "-l", &log, "-w", "start"];
        run(&self.bin.join("pg_ctl"), &args, self.user)?;
        let deadline = std::time::Instant::now() + Duration::from_secs(20);
        loop {
            match answers(&self.postgres.admin_url) {
                Ok(()) => return Ok(()),
                Err(err) if std::time::Instant::now() > deadline => {
                    return Err(format!("the throwaway cluster does not answer: {err}"));
                }
                Err(_) => std::thread::sleep(Duration::from_millis(100)),
            }
        }
    }
}

impl Drop for PostgresCluster {
    fn drop(&mut self) {
        // Already stopped is fine: the directory goes either way.
        let _ = self.stop();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_local_hosts_are_used() {
        for local in [
            "postgres://postgres@127.0.0.1:5432/postgres",
            "postgresql://u:p@127.5.0.1/db",
            "postgres://localhost/db",
            "postgres:///db",
            "postgres://u@/db?host=/var/run/postgresql",
        ] {
            assert!(is_local(local), "{local}");
        }
        for remote in [
            "postgres://db.example.com/db",
            "postgres://u@10.0.0.1:5432/db",
            "postgres://u@128.0.0.1/db",
            "postgres://u@127.0.0.1/db?host=db.example.com",
            "mysql://127.0.0.1/db",
        ] {
            assert!(!is_local(remote), "{remote}");
        }
    }

    #[test]
    fn the_database_name_is_replaced() {
        assert_eq!(
            with_database("postgres://postgres@127.0.0.1:5432/postgres", "sf_t_1"),
            "postgres://postgres@127.0.0.1:5432/sf_t_1"
        );
        assert_eq!(
            with_database("postgres://127.0.0.1?sslmode=disable", "x"),
            "postgres://127.0.0.1/x?sslmode=disable"
        );
    }
}
