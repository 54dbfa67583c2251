//! Running one job as a child process: environment, stdout protocol, stderr tail, timeout,
//! cancellation (SIGTERM to the process group, SIGKILL after a grace period) and outcome.

use std::path::{Path, PathBuf};
use std::process::{ExitStatus, Stdio};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use skill_fleet_types::{Job, JobLogs};
use tokio::io::{AsyncBufRead, AsyncBufReadExt, AsyncRead, BufReader};
use tokio::process::{Child, Command};
use tokio::sync::watch;

use super::protocol::{ArtifactLine, JobResult, Line, parse_line};
use super::tail::Tail;
use super::{ExecutorSpec, StopReason};

/// Longest stdout line read as one line; the rest of a longer line is skipped.
const MAX_PROTOCOL_LINE: usize = 1024 * 1024;
/// Lines and bytes kept of each output stream.
const TAIL_LINES: usize = 500;
const TAIL_BYTES: usize = 256 * 1024;

/// The output tails of one job, shared with the logs route while the job runs.
#[derive(Debug)]
pub struct Tails {
    /// Non-protocol stdout lines.
    pub stdout: Tail,
    /// stderr lines.
    pub stderr: Tail,
}

impl Default for Tails {
    fn default() -> Self {
        Tails {
            stdout: Tail::new(TAIL_LINES, TAIL_BYTES),
            stderr: Tail::new(TAIL_LINES, TAIL_BYTES),
        }
    }
}

impl Tails {
    /// The tails as the logs route returns them.
    pub fn to_logs(&self, job_id: &str) -> JobLogs {
        JobLogs {
            job_id: job_id.to_owned(),
            stdout: self.stdout.lines(),
            stderr: self.stderr.lines(),
            truncated: self.stdout.truncated() || self.stderr.truncated(),
        }
    }
}

pub(crate) fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

/// What a child reports, handed to the executor in order (each handled before the next
/// line is read).
#[derive(Debug)]
pub enum Report {
    /// A progress update.
    Progress(skill_fleet_types::ProgressUpdate),
    /// A file to store as an artifact now.
    Artifact(ArtifactLine),
}

/// How a run ended.
#[derive(Debug)]
pub enum Outcome {
    /// The process exited by itself.
    Exited {
        /// Its exit status.
        status: ExitStatus,
        /// The last result it reported.
        result: Option<JobResult>,
    },
    /// It was stopped (and killed if it did not stop in time).
    Stopped(StopReason),
    /// It could not be started.
    SpawnFailed(String),
}

/// Where a job's files live: `<data dir>/jobs/<id>/`. The id was validated as
/// `[A-Za-z0-9_-]{1,64}` when the job was created, so it cannot leave the directory.
pub fn work_dir(data_dir: &Path, job_id: &str) -> PathBuf {
    data_dir.join("jobs").join(job_id)
}

/// Writes the metadata and checkpoint files and builds the command.
fn prepare(spec: &ExecutorSpec, job: &Job, dir: &Path) -> std::io::Result<Command> {
    std::fs::create_dir_all(dir)?;
    let metadata_path = dir.join("metadata.json");
    let metadata = serde_json::to_vec_pretty(&job.metadata).map_err(std::io::Error::other)?;
    std::fs::write(&metadata_path, metadata)?;
    let checkpoint_path = dir.join("checkpoint.json");
    let checkpoint = match &job.checkpoint {
        Some(checkpoint) => {
            let bytes = serde_json::to_vec(checkpoint).map_err(std::io::Error::other)?;
            std::fs::write(&checkpoint_path, bytes)?;
            Some(checkpoint_path)
        }
        None => {
            // A stale file from an earlier attempt must not look like a checkpoint.
            match std::fs::remove_file(&checkpoint_path) {
                Ok(()) => {}
                Err(err) if err.kind() == std::io::ErrorKind::NotFound => {}
                Err(err) => return Err(err),
            }
            None
        }
    };

    let (program, args) = spec
        .command
        .split_first()
        .ok_or_else(|| std::io::Error::other("empty command"))?;
    let mut command = Command::new(program);
    command
        .args(args)
        .current_dir(spec.working_dir.as_deref().unwrap_or(dir))
        .envs(&spec.env)
        .env("SKILL_FLEET_JOB_ID", &job.id)
        .env("SKILL_FLEET_JOB_TYPE", &job.job_type)
        .env("SKILL_FLEET_ATTEMPT", job.attempt.to_string())
        .env("SKILL_FLEET_METADATA", &metadata_path)
        .env("SKILL_FLEET_WORK_DIR", dir)
        .env_remove("SKILL_FLEET_CHECKPOINT")
        .env_remove("SKILL_FLEET_AUTH_TOKEN")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    if let Some(path) = checkpoint {
        command.env("SKILL_FLEET_CHECKPOINT", path);
    }
    isolate(&mut command);
    Ok(command)
}

/// Puts the child in its own process group (so a stop reaches its children too) and, on
/// Linux, has the kernel kill it if the server dies, so a restarted server never finds the
/// old run still going next to the resumed one.
#[cfg(unix)]
fn isolate(command: &mut Command) {
    command.process_group(0);
    #[cfg(target_os = "linux")]
    {
        #[allow(unsafe_code)]
        // SAFETY: the closure runs in the forked child before exec and only makes the
        // prctl(PR_SET_PDEATHSIG) system call, which is async-signal-safe; it allocates
        // nothing and touches no lock.
        unsafe {
            command.pre_exec(|| {
                nix::sys::prctl::set_pdeathsig(nix::sys::signal::Signal::SIGKILL)
                    .map_err(std::io::Error::from)
            });
        }
    }
}

#[cfg(not(unix))]
fn isolate(_command: &mut Command) {}

/// Runs the job's process to its end and reports how it ended. Progress and artifact lines go to
/// `on_update` in order, each one handled (a checkpoint persisted) before the next line is
/// read.
pub async fn run<F, Fut>(
    spec: &ExecutorSpec,
    job: &Job,
    dir: &Path,
    tails: Arc<Mutex<Tails>>,
    mut stop: watch::Receiver<Option<StopReason>>,
    grace: Duration,
    mut on_update: F,
) -> Outcome
where
    F: FnMut(Report) -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let mut command = match prepare(spec, job, dir) {
        Ok(command) => command,
        Err(err) => {
            return Outcome::SpawnFailed(format!(
                "cannot prepare work directory {}: {err}",
                dir.display()
            ));
        }
    };
    let mut child = match command.spawn() {
        Ok(child) => child,
        Err(err) => {
            return Outcome::SpawnFailed(format!(
                "cannot start `{}`: {err}",
                spec.command.join(" ")
            ));
        }
    };
    let stderr_task = child
        .stderr
        .take()
        .map(|stderr| tokio::spawn(collect_stderr(stderr, Arc::clone(&tails))));
    let Some(stdout) = child.stdout.take() else {
        return Outcome::SpawnFailed("child has no stdout".to_owned());
    };
    let mut stdout = BufReader::new(stdout);
    let mut result: Option<JobResult> = None;
    let mut stdout_open = true;
    let mut buffer = Vec::new();
    // A timeout too large to be a point in time is no timeout (config refuses those anyway).
    let deadline = spec
        .timeout
        .and_then(|timeout| tokio::time::Instant::now().checked_add(timeout));
    let timeout = async {
        match deadline {
            Some(deadline) => tokio::time::sleep_until(deadline).await,
            None => std::future::pending().await,
        }
    };
    tokio::pin!(timeout);

    let ended = loop {
        tokio::select! {
            line = read_line(&mut stdout, &mut buffer), if stdout_open => match line {
                Ok(Some(line)) => {
                    if !handle_line(&job.id, &line, &tails, &mut result, &mut on_update).await {
                        // The job is no longer running (cancelled from outside): stop reading;
                        // the stop signal follows.
                        stdout_open = false;
                    }
                }
                Ok(None) => stdout_open = false,
                Err(err) => {
                    tracing::warn!(job.id = %job.id, error = %err, "cannot read child stdout");
                    stdout_open = false;
                }
            },
            status = child.wait() => break Ended::Exited(status),
            changed = stop.changed() => {
                let reason = if changed.is_ok() { *stop.borrow() } else { Some(StopReason::Shutdown) };
                if let Some(reason) = reason {
                    break Ended::Stop(reason);
                }
            }
            () = &mut timeout => break Ended::Stop(StopReason::Timeout),
        }
    };

    let outcome = match ended {
        Ended::Exited(Ok(status)) => {
            // Lines written just before exit are still in the pipe; read them (bounded in
            // time, since a grandchild may hold the pipe open).
            let drain = async {
                if !stdout_open {
                    return;
                }
                while let Ok(Some(line)) = read_line(&mut stdout, &mut buffer).await {
                    if !handle_line(&job.id, &line, &tails, &mut result, &mut on_update).await {
                        break;
                    }
                }
            };
            let _ = tokio::time::timeout(Duration::from_secs(5), drain).await;
            Outcome::Exited { status, result }
        }
        Ended::Exited(Err(err)) => {
            Outcome::SpawnFailed(format!("cannot wait for the child: {err}"))
        }
        Ended::Stop(reason) => {
            terminate(&mut child, grace, &job.id).await;
            Outcome::Stopped(reason)
        }
    };
    if let Some(task) = stderr_task {
        let _ = tokio::time::timeout(Duration::from_secs(5), task).await;
    }
    outcome
}

enum Ended {
    Exited(std::io::Result<ExitStatus>),
    Stop(StopReason),
}

async fn handle_line<F, Fut>(
    job_id: &str,
    line: &str,
    tails: &Arc<Mutex<Tails>>,
    result: &mut Option<JobResult>,
    on_update: &mut F,
) -> bool
where
    F: FnMut(Report) -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    match parse_line(line) {
        Line::Log(text) => {
            lock(tails).stdout.push(&text);
            true
        }
        Line::Invalid { line, reason } => {
            tracing::warn!(job.id = %job_id, %reason, "skipped an invalid protocol line");
            lock(tails).stderr.push(&format!(
                "[skill-fleet] skipped invalid line ({reason}): {line}"
            ));
            true
        }
        Line::Message {
            update,
            result: reported,
        } => {
            if let Some(reported) = reported {
                *result = Some(reported);
            }
            match update {
                Some(update) => on_update(Report::Progress(update)).await,
                None => true,
            }
        }
        Line::Artifact(artifact) => on_update(Report::Artifact(artifact)).await,
    }
}

/// Reads one line, at most [`MAX_PROTOCOL_LINE`] bytes of it (the rest of a longer line is
/// skipped). `None` at end of file.
async fn read_line<R: AsyncBufRead + Unpin>(
    reader: &mut R,
    buffer: &mut Vec<u8>,
) -> std::io::Result<Option<String>> {
    buffer.clear();
    let mut saw_any = false;
    loop {
        let available = reader.fill_buf().await?;
        if available.is_empty() {
            break;
        }
        saw_any = true;
        let (chunk, found) = match available.iter().position(|&b| b == b'\n') {
            Some(index) => (&available[..index], Some(index + 1)),
            None => (available, None),
        };
        let room = MAX_PROTOCOL_LINE.saturating_sub(buffer.len());
        buffer.extend_from_slice(&chunk[..chunk.len().min(room)]);
        let consumed = found.unwrap_or(available.len());
        reader.consume(consumed);
        if found.is_some() {
            break;
        }
    }
    if !saw_any {
        return Ok(None);
    }
    if buffer.last() == Some(&b'\r') {
        buffer.pop();
    }
    Ok(Some(String::from_utf8_lossy(buffer).into_owned()))
}

async fn collect_stderr<R: AsyncRead + Unpin>(stderr: R, tails: Arc<Mutex<Tails>>) {
    let mut reader = BufReader::new(stderr);
    let mut buffer = Vec::new();
    while let Ok(Some(line)) = read_line(&mut reader, &mut buffer).await {
        lock(&tails).stderr.push(&line);
    }
}

/// SIGTERM to the child's process group; SIGKILL to the group after `grace`.
async fn terminate(child: &mut Child, grace: Duration, job_id: &str) {
    signal_group(child, false);
    match tokio::time::timeout(grace, child.wait()).await {
        Ok(_) => {}
        Err(_) => {
            tracing::warn!(job.id = %job_id, grace_ms = grace.as_millis() as u64, "child ignored SIGTERM; killing it");
            signal_group(child, true);
            let _ = child.kill().await;
        }
    }
    // Whatever the group leader did, make sure nothing of the group outlives the stop.
    signal_group(child, true);
}

#[cfg(unix)]
fn signal_group(child: &Child, kill: bool) {
    use nix::sys::signal::{Signal, killpg};
    use nix::unistd::Pid;
    let Some(pid) = child.id().and_then(|pid| i32::try_from(pid).ok()) else {
        return;
    };
    let signal = if kill {
        Signal::SIGKILL
    } else {
        Signal::SIGTERM
    };
    // ESRCH (the group is gone already) is the expected end.
    let _ = killpg(Pid::from_raw(pid), signal);
}

#[cfg(not(unix))]
fn signal_group(_child: &Child, _kill: bool) {}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn read_line_bounds_huge_lines_and_handles_a_last_unterminated_line() {
        let mut input = vec![b'x'; MAX_PROTOCOL_LINE + 10];
        input.extend_from_slice(b"\nsecond\r\nthird");
        let mut reader = BufReader::new(&input[..]);
        let mut buffer = Vec::new();
        let first = read_line(&mut reader, &mut buffer).await.unwrap().unwrap();
        assert_eq!(first.len(), MAX_PROTOCOL_LINE);
        assert_eq!(
            read_line(&mut reader, &mut buffer).await.unwrap().unwrap(),
            "second"
        );
        assert_eq!(
            read_line(&mut reader, &mut buffer).await.unwrap().unwrap(),
            "third"
        );
        assert!(read_line(&mut reader, &mut buffer).await.unwrap().is_none());
    }
}
