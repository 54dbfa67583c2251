//! The server under test: the release `skill-fleet-server` binary on a temporary database,
//! bound to 127.0.0.1:0, plus what `/proc` says about its memory and CPU.

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use crate::Result;

/// A configuration file that turns the built-in executor off: jobs wait for external workers.
pub const NO_EXECUTORS: &str = "[executors]\n";

/// Runs `program args…` through `sh` with the soft open-files limit raised to the hard limit,
/// so thousands of sockets fit.
pub fn with_raised_fd_limit(program: &Path) -> Command {
    let mut command = Command::new("sh");
    command
        .arg("-c")
        .arg("ulimit -n \"$(ulimit -Hn)\" 2>/dev/null; exec \"$0\" \"$@\"")
        .arg(program);
    command
}

/// A running server; killed on drop.
pub struct Server {
    child: Child,
    pub addr: SocketAddr,
    pub pid: u32,
    /// From spawn to the `listening on` line.
    pub listening_after: Duration,
    log: PathBuf,
}

/// How to start a server.
pub struct ServerSpec<'a> {
    pub binary: &'a Path,
    pub database: &'a Path,
    pub config: &'a Path,
    pub bench_routes: bool,
    /// Server log (its stderr).
    pub log: &'a Path,
    /// More flags (`--data-dir` of a server on a shared database).
    pub args: &'a [String],
}

impl Server {
    pub fn start(spec: &ServerSpec<'_>) -> Result<Server> {
        let log = std::fs::File::create(spec.log)
            .map_err(|err| format!("cannot create `{}`: {err}", spec.log.display()))?;
        let mut command = with_raised_fd_limit(spec.binary);
        command
            .arg("--bind")
            .arg("127.0.0.1:0")
            .arg("--database")
            .arg(spec.database)
            .arg("--config")
            .arg(spec.config)
            // The SSE section holds 10,000 subscribers on one server: measure the fan-out,
            // not the default stream limit (which is exactly 10,000).
            .arg("--max-sse-connections")
            .arg("100000")
            .args(spec.args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(log);
        if spec.bench_routes {
            command.arg("--bench-routes");
        }
        let spawned = Instant::now();
        let mut child = command
            .spawn()
            .map_err(|err| format!("cannot start `{}`: {err}", spec.binary.display()))?;
        let pid = child.id();
        let stdout = child.stdout.take().ok_or("server has no stdout")?;
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            // Keep reading to the end so the server never writes into a closed pipe.
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                let _ = tx.send((line, Instant::now()));
            }
        });
        let mut server = Server {
            child,
            addr: SocketAddr::from(([127, 0, 0, 1], 0)),
            pid,
            listening_after: Duration::ZERO,
            log: spec.log.to_owned(),
        };
        let deadline = spawned + Duration::from_secs(60);
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match rx.recv_timeout(left) {
                Ok((line, at)) => {
                    if let Some(url) = line.strip_prefix("listening on http://") {
                        server.addr = url
                            .trim()
                            .parse()
                            .map_err(|err| format!("bad address in `{line}`: {err}"))?;
                        server.listening_after = at - spawned;
                        return Ok(server);
                    }
                }
                Err(_) => {
                    return Err(format!(
                        "skill-fleet-server did not print `listening on` within 60 s; log:\n{}",
                        server.log_tail()
                    )
                    .into());
                }
            }
        }
    }

    /// The last lines of the server's log.
    pub fn log_tail(&self) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(20)..].join("\n")
    }

    /// Resident memory in KiB (`VmRSS`).
    pub fn rss_kib(&self) -> u64 {
        rss_kib(self.pid)
    }

    /// CPU time used so far (user + system).
    pub fn cpu_time(&self) -> Duration {
        cpu_time(self.pid)
    }

    /// CPU time used so far in user space and in the kernel.
    pub fn cpu_times(&self) -> (Duration, Duration) {
        cpu_times(self.pid)
    }

    /// Time the server's threads waited for a CPU so far.
    pub fn run_queue_wait(&self) -> Duration {
        run_queue_wait(self.pid)
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `VmRSS` of a process in KiB (0 when unreadable).
pub fn rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find_map(|line| line.strip_prefix("VmRSS:"))
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|kib| kib.parse().ok())
        .unwrap_or(0)
}

/// utime + stime of a process from `/proc/PID/stat`.
pub fn cpu_time(pid: u32) -> Duration {
    let (user, system) = cpu_times(pid);
    user + system
}

/// utime and stime (CPU time in user space and in the kernel) of a process from
/// `/proc/PID/stat`.
pub fn cpu_times(pid: u32) -> (Duration, Duration) {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // The command name (field 2) may hold spaces: count fields after its closing paren.
    let Some(rest) = stat.rfind(')').map(|i| &stat[i + 1..]) else {
        return (Duration::ZERO, Duration::ZERO);
    };
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // After the paren: field 3 (state) is index 0, so utime (14) is 11 and stime (15) is 12.
    let ticks = |i: usize| {
        let ticks = fields
            .get(i)
            .and_then(|v| v.parse::<u64>().ok())
            .unwrap_or(0);
        Duration::from_secs_f64(ticks as f64 / clock_ticks() as f64)
    };
    (ticks(11), ticks(12))
}

/// Time the threads of a process spent runnable but waiting for a CPU, summed over its
/// threads (`/proc/PID/task/*/schedstat`, second field; zero where unavailable). High while
/// the process does little means the machine, not the process, is the limit.
pub fn run_queue_wait(pid: u32) -> Duration {
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return Duration::ZERO;
    };
    let nanos: u64 = tasks
        .filter_map(|task| task.ok())
        .filter_map(|task| std::fs::read_to_string(task.path().join("schedstat")).ok())
        .filter_map(|stat| stat.split_whitespace().nth(1)?.parse::<u64>().ok())
        .sum();
    Duration::from_nanos(nanos)
}

/// `getconf CLK_TCK` (100 on Linux in practice).
fn clock_ticks() -> u64 {
    static TICKS: std::sync::OnceLock<u64> = std::sync::OnceLock::new();
    *TICKS.get_or_init(|| {
        Command::new("getconf")
            .arg("CLK_TCK")
            .output()
            .ok()
            .and_then(|out| String::from_utf8(out.stdout).ok())
            .and_then(|text| text.trim().parse().ok())
            .unwrap_or(100)
    })
}

/// Bytes queued in the kernel, not yet sent, on the server's side of established TCP
/// connections on `port` (the `tx_queue` column of `/proc/net/tcp`).
pub fn unsent_bytes(port: u16) -> u64 {
    let table = std::fs::read_to_string("/proc/net/tcp").unwrap_or_default();
    let port_hex = format!(":{port:04X}");
    table
        .lines()
        .skip(1)
        .filter_map(|line| {
            let fields: Vec<&str> = line.split_whitespace().collect();
            let local = fields.get(1)?;
            let state = fields.get(3)?;
            // 01 = ESTABLISHED
            if !local.ends_with(&port_hex) || *state != "01" {
                return None;
            }
            let tx = fields.get(4)?.split(':').next()?;
            u64::from_str_radix(tx, 16).ok()
        })
        .sum()
}
