"""A remote worker: runs any executor-protocol program for jobs it claims over HTTP.

``python -m skill_fleet_worker worker --server URL --type evaluation -- python eval.py``
claims a job (``POST /api/v1/jobs/claim``), runs the program as the server's own executor
would (the ``SKILL_FLEET_*`` environment, stdin closed, its own process group), turns its
stdout lines into fenced events and artifact uploads, renews the lease with a heartbeat in
the background, and completes or fails the job when the program exits (after uploading the
files it left in ``<job dir>/artifacts/``, as the server's executor stores them). See
``python/README.md`` for what each stop means.

Threads of one run: a heartbeat thread, an event sender (one POST or artifact upload in
flight at a time, in the order the program wrote them),
a reader for the program's stdout and one for its stderr, and a waiter for its exit; the
calling thread supervises them. Standard library only.
"""

from __future__ import annotations

import contextlib
import enum
import json
import os
import random
import re
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from collections import deque
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import IO, Any

from .artifacts import ARTIFACTS_DIR, ChecksumMismatch, sha256_file, validate_name
from .client import (
    ApiError,
    ArtifactTooLarge,
    Claim,
    HttpClient,
    LeaseLost,
    Unreachable,
)
from .protocol import ArtifactLine, Invalid, Log, Message, Result, parse_line, read_line

__all__ = [
    "DEFAULT_WORK_DIR",
    "ApiError",
    "Ending",
    "EventQueue",
    "HttpClient",
    "LeaseLost",
    "Outcome",
    "Tail",
    "Upload",
    "Worker",
    "default_worker_name",
]

#: Where job directories go by default (``<work dir>/<job id>/``), under the cwd.
DEFAULT_WORK_DIR = "skill-fleet-work"
#: The stderr tail kept per run (as the server: 500 lines, 256 KiB, lines cut at 4 KiB) and
#: how many of its last lines go into a fail message.
TAIL_LINES = 500
TAIL_BYTES = 256 * 1024
TAIL_LINE_BYTES = 4 * 1024
FAIL_TAIL_LINES = 5
#: How long to read lines written just before the exit (a grandchild may hold the pipe).
DRAIN_SECONDS = 5.0
#: Checkpoints and step changes waiting to be sent before the reader waits (back-pressure
#: on the program, as the server gives by writing each before reading the next line).
MAX_PENDING_DURABLE = 64
#: The error of a job failed because its worker was stopped (only with ``fail_on_signal``).
INTERRUPTED_ERROR = "interrupted: worker stopped while running"

_JOB_ID = re.compile(r"^[A-Za-z0-9_-]{1,64}$")
_WORKER_NAME = re.compile(r"^[A-Za-z0-9_.:@/-]{1,128}$")

# Runs between fork and exec of the program, in a Python of its own (no preexec_fn in a
# threaded worker): asks the kernel to SIGKILL the program when the worker dies, as the
# server does for its children, so a rescued job never runs twice on this machine.
_DIE_WITH_WORKER = (
    "import ctypes, os, signal, sys\n"
    "ctypes.CDLL(None).prctl(1, int(signal.SIGKILL), 0, 0, 0)\n"  # PR_SET_PDEATHSIG
    "if os.getppid() != int(sys.argv[1]):\n"
    "    os._exit(137)\n"  # the worker died before the prctl
    "try:\n"
    "    os.execvp(sys.argv[2], sys.argv[2:])\n"
    "except OSError as err:\n"
    "    sys.stderr.write(f'cannot start {sys.argv[2]!r}: {err}\\n')\n"
    "    os._exit(127)\n"
)


class Ending(enum.Enum):
    """How one job ended for this worker."""

    #: The program exited 0 and the job was completed with its last result.
    COMPLETED = "completed"
    #: The program exited non-zero (or could not start) and the job was failed.
    FAILED = "failed"
    #: The server ended the job (a heartbeat's ``stop: true``, an event answered with a
    #: terminal status or a 409): the program was stopped, nothing was reported.
    STOPPED = "stopped"
    #: 409 ``lease_lost``: another attempt owns the job; the program was stopped.
    LEASE_LOST = "lease_lost"
    #: No heartbeat acknowledged for ``ttl - interval``: the worker assumed its lease gone.
    FENCED = "fenced"
    #: The worker was asked to stop (SIGTERM, SIGINT, :meth:`Worker.request_stop`); the job
    #: is left to the server's rescue (or failed, with ``fail_on_signal``).
    INTERRUPTED = "interrupted"
    #: The program ended but the complete/fail call got no answer before its deadline; the
    #: lease will expire and the server rescue the job.
    UNREACHABLE = "unreachable"


@dataclass(frozen=True)
class Outcome:
    """What became of one claimed job."""

    ending: Ending
    job_id: str
    attempt: int
    #: A sentence: ``exit status 3: ...``, ``the job is cancelled: ...``, ...
    detail: str
    #: The program's return code (negative: killed by that signal), if it ran and ended.
    exit_code: int | None = None
    #: The job as the server answered the complete or fail call, if one was accepted.
    job: dict[str, Any] | None = None

    @property
    def completed(self) -> bool:
        return self.ending is Ending.COMPLETED


class Tail:
    """The last lines of a stream, bounded in lines and bytes (each line cut at 4 KiB)."""

    def __init__(self, max_lines: int = TAIL_LINES, max_bytes: int = TAIL_BYTES) -> None:
        self._lines: deque[str] = deque()
        self._bytes = 0
        self._max_lines = max(1, max_lines)
        self._max_bytes = max(TAIL_LINE_BYTES, max_bytes)
        self._lock = threading.Lock()

    def push(self, line: str) -> None:
        line = _cut(line, TAIL_LINE_BYTES)
        size = len(line.encode("utf-8", "replace"))
        with self._lock:
            self._lines.append(line)
            self._bytes += size
            while len(self._lines) > self._max_lines or self._bytes > self._max_bytes:
                old = self._lines.popleft()
                self._bytes -= len(old.encode("utf-8", "replace"))

    def lines(self) -> list[str]:
        with self._lock:
            return list(self._lines)

    def last(self, n: int) -> str:
        """The last ``n`` lines joined with newlines (for a fail message)."""
        with self._lock:
            return "\n".join(list(self._lines)[-n:] if n > 0 else [])


@dataclass(frozen=True)
class Upload:
    """An artifact to upload: the file (inside the job's directory) and its name."""

    path: Path
    name: str
    content_type: str | None = None


#: What the event sender takes: progress fields to POST, or an artifact to upload.
Item = dict[str, Any] | Upload


class EventQueue:
    """Progress and artifact uploads waiting to be sent, one request in flight at a time.

    Progress-only updates that queue up behind a POST in flight are merged into one (the
    newest value of each field wins); checkpoints and step changes are never merged or
    dropped, nor are artifact uploads, and everything is sent in the order written. At most
    ``max_durable`` checkpoints, step changes and uploads wait: past that :meth:`put` blocks
    the reader (and so the program, once its stdout pipe is full) until the sender catches
    up.
    """

    def __init__(self, max_durable: int = MAX_PENDING_DURABLE) -> None:
        self._cond = threading.Condition()
        self._items: deque[tuple[Item, bool]] = deque()
        self._durable = 0
        self._max_durable = max(1, max_durable)
        self._in_flight = False
        self._closed = False
        #: Progress-only updates folded into one already waiting (for tests and stats).
        self.merged = 0

    def put(self, fields: Mapping[str, Any] | Upload, *, durable: bool) -> bool:
        """Queues ``fields`` (an upload is always durable); False when the queue is closed
        (nothing more is sent)."""
        if isinstance(fields, Upload):
            durable = True
        with self._cond:
            if self._closed:
                return False
            if not durable and self._items and not self._items[-1][1]:
                last = self._items[-1][0]
                if isinstance(last, dict) and not isinstance(fields, Upload):
                    last.update(fields)
                    self.merged += 1
                    return True
            if durable:
                while self._durable >= self._max_durable and not self._closed:
                    self._cond.wait()
                if self._closed:
                    return False
                self._durable += 1
            item: Item = fields if isinstance(fields, Upload) else dict(fields)
            self._items.append((item, durable))
            self._cond.notify_all()
            return True

    def take(self) -> Item | None:
        """The next update or upload to send (it is then in flight until :meth:`done`);
        ``None`` once the queue is closed."""
        with self._cond:
            while not self._items and not self._closed:
                self._cond.wait()
            if self._closed:
                return None
            fields, durable = self._items.popleft()
            if durable:
                self._durable -= 1
            self._in_flight = True
            self._cond.notify_all()
            return fields

    def done(self) -> None:
        """The update in flight was answered (or given up)."""
        with self._cond:
            self._in_flight = False
            self._cond.notify_all()

    def join(self, timeout: float | None = None) -> bool:
        """Waits until everything queued was sent (True), or the queue was closed."""
        deadline = None if timeout is None else time.monotonic() + timeout
        with self._cond:
            while (self._items or self._in_flight) and not self._closed:
                remaining = None if deadline is None else deadline - time.monotonic()
                if remaining is not None and remaining <= 0:
                    return False
                self._cond.wait(remaining)
            return not self._items and not self._in_flight

    def close(self) -> None:
        """Drops what waits; nothing more is queued or taken."""
        with self._cond:
            self._closed = True
            self._items.clear()
            self._durable = 0
            self._cond.notify_all()

    @property
    def closed(self) -> bool:
        return self._closed


class _Output:
    """The worker's stderr: the program's stderr and log lines, and the worker's notes,
    each written whole."""

    def __init__(self, stream: IO[bytes] | None) -> None:
        self._stream = stream
        self._lock = threading.Lock()

    def write_line(self, data: bytes) -> None:
        with self._lock:
            stream = self._stream if self._stream is not None else sys.stderr.buffer
            try:
                stream.write(data + b"\n")
                stream.flush()
            except (OSError, ValueError):
                pass

    def note(self, text: str) -> None:
        self.write_line(f"[skill-fleet-worker] {text}".encode("utf-8", "replace"))


def default_worker_name() -> str:
    """``<hostname>-<pid>``, made to fit the server's ``[A-Za-z0-9_.:@/-]{1,128}``."""
    name = re.sub(r"[^A-Za-z0-9_.:@/-]", "-", f"{socket.gethostname()}-{os.getpid()}")
    return name[-128:] or "worker"


class Worker:
    """Claims jobs of ``types`` from ``server`` and runs ``command`` for each.

    ``server`` is a URL or an :class:`HttpClient`. ``work_dir`` holds one directory per
    job (``<work_dir>/<job id>/``, kept across attempts on this machine). ``env`` is the
    base environment of the program (default ``os.environ``; the server token is never
    passed on), ``cwd`` its working directory (default: the worker's). ``output`` is
    where the program's stderr and log lines and the worker's notes go (default stderr).
    """

    def __init__(
        self,
        server: str | HttpClient,
        types: Sequence[str],
        command: Sequence[str],
        *,
        name: str | None = None,
        token: str | None = None,
        work_dir: str | os.PathLike[str] = DEFAULT_WORK_DIR,
        poll_seconds: float = 1.0,
        max_poll_seconds: float = 10.0,
        grace_seconds: float = 10.0,
        fail_on_signal: bool = False,
        env: Mapping[str, str] | None = None,
        cwd: str | os.PathLike[str] | None = None,
        output: IO[bytes] | None = None,
        die_with_worker: bool = True,
    ) -> None:
        if isinstance(types, str):
            types = [types]
        if not types:
            raise ValueError("a worker needs at least one job type")
        if not command:
            raise ValueError("a worker needs a command to run")
        self.name = name if name is not None else default_worker_name()
        if not _WORKER_NAME.match(self.name):
            raise ValueError(f"worker name must match [A-Za-z0-9_.:@/-]{{1,128}}: {self.name!r}")
        if poll_seconds <= 0 or max_poll_seconds <= 0 or grace_seconds < 0:
            raise ValueError("poll and grace seconds must be positive")
        self.output = _Output(output)
        self.client = (
            server
            if isinstance(server, HttpClient)
            else HttpClient(server, token=token, log=self.output.note)
        )
        self.types = list(types)
        self.command = list(command)
        self.work_dir = Path(work_dir).resolve()
        self.poll_seconds = poll_seconds
        self.max_poll_seconds = max(max_poll_seconds, poll_seconds)
        self.grace_seconds = grace_seconds
        self.fail_on_signal = fail_on_signal
        self.env = dict(os.environ if env is None else env)
        self.cwd = None if cwd is None else Path(cwd)
        self.die_with_worker = die_with_worker
        #: Set by the first self-fencing: :meth:`run_forever` then exits 1.
        self.fenced = False
        self._stopping = threading.Event()
        self._lock = threading.Lock()
        self._current: _Run | None = None
        self._rng = random.Random()

    # -- stopping -------------------------------------------------------------------------

    @property
    def stopping(self) -> bool:
        return self._stopping.is_set()

    def request_stop(self, signum: int | None = None) -> None:
        """Stops the worker as SIGTERM does: no new claim; a running program is stopped
        (SIGTERM, SIGKILL after the grace) and its job left to the server's rescue (failed
        with ``fail_on_signal``). A second call kills the program at once."""
        with self._lock:
            first = not self._stopping.is_set()
            self._stopping.set()
            run = self._current
        what = signal.Signals(signum).name if signum else "a stop request"
        if first:
            self.output.note(f"got {what}: stopping" + (" the program" if run else ""))
            if run is not None:
                run.interrupt(f"the worker got {what}")
        elif run is not None:
            self.output.note(f"got {what} again: killing the program now")
            run.hurry.set()

    def install_signal_handlers(self) -> None:
        """SIGTERM and SIGINT call :meth:`request_stop` (from the main thread only).

        The handler only writes the signal number to a pipe; a thread reads it and does the
        work, so no lock is ever taken inside a signal handler.
        """
        read_fd, write_fd = os.pipe()
        os.set_blocking(write_fd, False)

        def handler(signum: int, frame: Any) -> None:
            with contextlib.suppress(OSError):
                os.write(write_fd, bytes([signum]))

        def watch() -> None:
            while True:
                try:
                    data = os.read(read_fd, 64)
                except OSError:
                    return
                if not data:
                    return
                for signum in data:
                    self.request_stop(signum)

        threading.Thread(target=watch, name="skill-fleet-signals", daemon=True).start()
        signal.signal(signal.SIGTERM, handler)
        signal.signal(signal.SIGINT, handler)

    # -- claiming and running -------------------------------------------------------------

    def claim(self) -> Claim | None:
        """Waits for a job: polls, ``poll_seconds`` doubling to ``max_poll_seconds`` while
        nothing is queued. ``None`` once the worker is stopping. Raises :class:`ApiError`
        when the server refuses the claim itself (a wrong token, a type it runs itself)."""
        delay = self.poll_seconds
        while not self._stopping.is_set():
            try:
                claim = self.client.claim(self.types, self.name, abort=self._stopping)
            except Unreachable as err:
                if err.aborted:
                    return None
                self.output.note(f"cannot claim: {err}")
                claim = None
            if claim is not None:
                return claim
            if self._stopping.wait(delay * self._rng.uniform(0.9, 1.1)):
                return None
            delay = min(delay * 2.0, self.max_poll_seconds)
        return None

    def run_once(self) -> Outcome | None:
        """Claims one job (waiting for one) and runs it; ``None`` if stopped first."""
        claim = self.claim()
        if claim is None:
            return None
        return self.run_claim(claim)

    def run_claim(self, claim: Claim) -> Outcome:
        """Runs the program for a job already claimed."""
        run = _Run(self, claim)
        with self._lock:
            self._current = run
            stopping = self._stopping.is_set()
        if stopping:
            run.interrupt("the worker was stopping when the claim came back")
        try:
            outcome = run.run()
        finally:
            with self._lock:
                self._current = None
        if outcome.ending is Ending.FENCED:
            self.fenced = True
        detail = "" if outcome.detail == outcome.ending.value else f": {outcome.detail}"
        self.output.note(
            f"job {outcome.job_id} attempt {outcome.attempt}: {outcome.ending.value}{detail}"
        )
        return outcome

    def run_forever(self) -> int:
        """Runs jobs until :meth:`request_stop` (returns 0) or a self-fencing (returns 1)."""
        while not self._stopping.is_set():
            outcome = self.run_once()
            if outcome is None:
                break
            if outcome.ending is Ending.FENCED:
                return 1
        return 0


class _Run:
    """One claimed job: the program, its readers, the heartbeat and the event sender."""

    def __init__(self, worker: Worker, claim: Claim) -> None:
        self.worker = worker
        self.claim = claim
        self.lease = claim.lease
        self.client = worker.client
        self.note = worker.output.note
        self.lock = threading.Lock()
        #: Set whenever the supervisor should look again (exit, stop).
        self.wake = threading.Event()
        #: The program exited (and was reaped).
        self.exited = threading.Event()
        #: No more writes at all: lease lost, fenced, or the job ended on the server.
        self.silenced = threading.Event()
        #: The heartbeat thread must end.
        self.beats_done = threading.Event()
        #: Kill the program now instead of waiting out the grace (a second signal).
        self.hurry = threading.Event()
        self.ending: Ending | None = None
        self.detail = ""
        self.finishing = False
        self.events = EventQueue()
        self.tail = Tail()
        self.result: Result | None = None
        self.reading = True
        progress = claim.job.get("progress")
        step = progress.get("step") if isinstance(progress, dict) else None
        self.last_step: str | None = step if isinstance(step, str) else None
        self.process: subprocess.Popen[bytes] | None = None
        self.job_dir: Path | None = None
        #: Artifacts this run stored: name -> SHA-256.
        self.stored: dict[str, str] = {}

    # -- stops ------------------------------------------------------------------------------

    def stop(self, ending: Ending, detail: str, *, silence: bool) -> None:
        """Records why the run stops (the first reason wins) and wakes the supervisor."""
        with self.lock:
            first = self.ending is None and not self.finishing
            if first:
                self.ending, self.detail = ending, detail
        if first:
            self.note(f"job {self.lease.job_id} attempt {self.lease.attempt}: {detail}")
        if silence:
            self.silenced.set()
            self.beats_done.set()
        self.events.close()
        self.wake.set()

    def interrupt(self, why: str) -> None:
        # Heartbeats go on until the program is gone: no other worker gets the job while
        # this one may still be writing to its files.
        self.stop(
            Ending.INTERRUPTED,
            f"{why}: stopping the program; the job is left to "
            + ("fail" if self.worker.fail_on_signal else "the server's rescue"),
            silence=False,
        )

    def lost(self, err: LeaseLost) -> None:
        where = []
        if err.status:
            where.append(f"the job is {err.status}")
        if err.attempt is not None:
            where.append(f"at attempt {err.attempt}")
        self.stop(
            Ending.LEASE_LOST,
            "lease lost" + (f" ({' '.join(where)})" if where else "") + f": {err.message}",
            silence=True,
        )

    def ended_elsewhere(self, why: str) -> None:
        self.stop(Ending.STOPPED, why, silence=True)

    # -- the run ----------------------------------------------------------------------------

    def run(self) -> Outcome:
        claim = self.claim
        self.note(f"job {claim.job_id}: claimed attempt {claim.attempt} ({claim.job_type})")
        beats = threading.Thread(target=self.heartbeats, name="skill-fleet-heartbeat", daemon=True)
        sender = threading.Thread(target=self.send_events, name="skill-fleet-events", daemon=True)
        beats.start()
        sender.start()
        try:
            return self.supervise()
        finally:
            # Nothing of this run writes after it: retries still going are aborted.
            self.events.close()
            self.silenced.set()
            self.beats_done.set()
            beats.join(timeout=self.client.timeout + 1)
            sender.join(timeout=self.client.timeout + 1)

    def supervise(self) -> Outcome:
        try:
            job_dir, env = self.prepare()
        except (OSError, ValueError) as err:
            return self.finish_failed(f"cannot prepare the work directory: {err}", None)
        if self.ending is not None:  # stopped before the program started
            return self.finish_stopped(None)
        try:
            process = self.spawn(job_dir, env)
        except OSError as err:
            return self.finish_failed(
                f"cannot start `{' '.join(self.worker.command)}`: {err}", None
            )
        self.process = process
        assert process.stdout is not None and process.stderr is not None
        stdout = threading.Thread(
            target=self.read_stdout, args=(process.stdout,), name="skill-fleet-stdout", daemon=True
        )
        stderr = threading.Thread(
            target=self.read_stderr, args=(process.stderr,), name="skill-fleet-stderr", daemon=True
        )
        waiter = threading.Thread(target=self.wait_exit, name="skill-fleet-waiter", daemon=True)
        stdout.start()
        stderr.start()
        waiter.start()

        while True:
            self.wake.wait()
            self.wake.clear()
            if self.ending is not None or self.exited.is_set():
                break

        if self.ending is not None:
            self.terminate(process)
            stdout.join(timeout=DRAIN_SECONDS)
            stderr.join(timeout=DRAIN_SECONDS)
            self.reading = False
            return self.finish_stopped(process.returncode)

        # Lines written just before the exit are still in the pipe: read them, bounded in
        # time (a grandchild may hold the pipe open), then send what is queued.
        stdout.join(timeout=DRAIN_SECONDS)
        stderr.join(timeout=DRAIN_SECONDS)
        self.reading = False
        self.events.join()
        if self.ending is None and not self.silenced.is_set():
            # As the server's executor: the files left in <job dir>/artifacts/ are stored
            # when the program exits, before the job's end is written.
            self.store_artifacts_dir()
        with self.lock:
            if self.ending is None:
                self.finishing = True
        if not self.finishing:
            return self.finish_stopped(process.returncode)
        self.events.close()
        code = process.returncode
        if code == 0:
            return self.finish_completed(code)
        reason = f"exit status {code}" if code >= 0 else f"killed by signal {-code}"
        tail = self.tail.last(FAIL_TAIL_LINES)
        return self.finish_failed(f"{reason}: {tail}" if tail else reason, code)

    def prepare(self) -> tuple[Path, dict[str, str]]:
        """The job's directory with its metadata (and checkpoint) files; the environment."""
        claim = self.claim
        if not _JOB_ID.match(claim.job_id):
            raise ValueError(f"the server sent a job id that is not a file name: {claim.job_id!r}")
        job_dir = self.worker.work_dir / claim.job_id
        job_dir.mkdir(parents=True, exist_ok=True)
        self.job_dir = job_dir
        metadata_path = job_dir / "metadata.json"
        metadata_path.write_text(json.dumps(claim.metadata, indent=2), encoding="utf-8")
        checkpoint_path = job_dir / "checkpoint.json"
        env = dict(self.worker.env)
        for name in ("SKILL_FLEET_CHECKPOINT", "SKILL_FLEET_TOKEN", "SKILL_FLEET_AUTH_TOKEN"):
            env.pop(name, None)
        if claim.checkpoint is not None:
            checkpoint_path.write_text(json.dumps(claim.checkpoint), encoding="utf-8")
            env["SKILL_FLEET_CHECKPOINT"] = str(checkpoint_path)
        else:
            # A stale file from an earlier attempt must not look like a checkpoint.
            checkpoint_path.unlink(missing_ok=True)
        env.update(
            {
                "SKILL_FLEET_JOB_ID": claim.job_id,
                "SKILL_FLEET_JOB_TYPE": claim.job_type,
                "SKILL_FLEET_ATTEMPT": str(claim.attempt),
                "SKILL_FLEET_METADATA": str(metadata_path),
                "SKILL_FLEET_WORK_DIR": str(job_dir),
            }
        )
        return job_dir, env

    def spawn(self, job_dir: Path, env: dict[str, str]) -> subprocess.Popen[bytes]:
        command = self.worker.command
        if self.worker.die_with_worker and sys.platform.startswith("linux") and sys.executable:
            # Found here, so that a missing program is a start failure, as on the server.
            if shutil.which(command[0], path=env.get("PATH")) is None:
                raise FileNotFoundError(2, "No such file or directory", command[0])
            argv = [sys.executable, "-I", "-S", "-c", _DIE_WITH_WORKER, str(os.getpid()), *command]
        else:
            argv = list(command)
        return subprocess.Popen(
            argv,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            env=env,
            cwd=self.worker.cwd,
            start_new_session=True,  # its own process group: a stop reaches its children
            close_fds=True,
        )

    def wait_exit(self) -> None:
        assert self.process is not None
        self.process.wait()
        self.exited.set()
        self.wake.set()

    def terminate(self, process: subprocess.Popen[bytes]) -> None:
        """SIGTERM to the program's group, SIGKILL after the grace (or at once on a second
        signal); then SIGKILL to whatever of the group is left."""
        if not self.exited.is_set():
            _signal_group(process.pid, signal.SIGTERM)
            deadline = time.monotonic() + self.worker.grace_seconds
            while not self.exited.wait(0.05):
                if self.hurry.is_set() or time.monotonic() >= deadline:
                    if not self.hurry.is_set():
                        self.note(
                            f"job {self.lease.job_id}: the program ignored SIGTERM "
                            f"for {self.worker.grace_seconds:g}s: killing it"
                        )
                    _signal_group(process.pid, signal.SIGKILL)
                    self.exited.wait()
                    break
        _signal_group(process.pid, signal.SIGKILL)

    # -- the program's output ---------------------------------------------------------------

    def read_stdout(self, stream: IO[bytes]) -> None:
        with contextlib.closing(stream):
            while (raw := read_line(stream)) is not None:
                try:
                    self.handle_line(raw)
                except Exception as err:  # a bug here must not stop the reading (and the program)
                    self.note(f"job {self.lease.job_id}: cannot handle a line: {err!r}")

    def handle_line(self, raw: bytes) -> None:
        text = raw.decode("utf-8", "replace")
        line = parse_line(text)
        if isinstance(line, Log):
            self.worker.output.write_line(raw)
        elif isinstance(line, Invalid):
            notice = _cut(
                f"[skill-fleet] skipped invalid line ({line.reason}): {line.line}", TAIL_LINE_BYTES
            )
            self.tail.push(notice)
            self.worker.output.write_line(notice.encode("utf-8", "replace"))
        elif isinstance(line, Message):
            if not self.reading:
                return
            if line.artifact is not None:
                upload = self.resolve_artifact(line.artifact)
                if upload is not None:
                    self.events.put(upload, durable=True)
            if line.result is not None:
                with self.lock:
                    self.result = line.result
            update = line.update
            if update is not None:
                step = update.get("step")
                durable = "checkpoint" in update or (step is not None and step != self.last_step)
                if step is not None:
                    self.last_step = step
                self.events.put(update, durable=durable)

    def resolve_artifact(self, line: ArtifactLine) -> Upload | None:
        """The file an artifact line names, if it is (as the server's executor requires) a
        relative path without ``..`` that, symbolic links followed, is a regular file inside
        the job's directory; else a note, and the line is skipped."""
        assert self.job_dir is not None
        root = self.job_dir.resolve()
        relative = PurePosixPath(line.path)
        if relative.is_absolute() or ".." in relative.parts:
            self.skipped(
                f"artifact {line.name}: {line.path!r} must be a relative path inside the job "
                "directory, without '..'"
            )
            return None
        try:
            path = (root / line.path).resolve(strict=True)
        except (OSError, RuntimeError) as err:
            self.skipped(
                f"artifact {line.name}: cannot find {line.path!r} in the job directory: {err}"
            )
            return None
        if not path.is_relative_to(root):
            self.skipped(f"artifact {line.name}: {line.path!r} is outside the job directory")
            return None
        if not path.is_file():
            self.skipped(f"artifact {line.name}: {line.path!r} is not a regular file")
            return None
        return Upload(path=path, name=line.name, content_type=line.content_type)

    def skipped(self, text: str) -> None:
        """A note on the worker's stderr that also goes into the tail (and so into a fail
        message)."""
        notice = _cut(f"[skill-fleet] {text}", TAIL_LINE_BYTES)
        self.tail.push(notice)
        self.worker.output.write_line(notice.encode("utf-8", "replace"))

    def read_stderr(self, stream: IO[bytes]) -> None:
        with contextlib.closing(stream):
            while (raw := read_line(stream)) is not None:
                self.worker.output.write_line(raw)
                self.tail.push(raw.decode("utf-8", "replace"))

    # -- the server ---------------------------------------------------------------------------

    def heartbeats(self) -> None:
        """Renews the lease every interval; stops the run on ``stop: true``, a 409, or when
        no heartbeat was acknowledged for ``ttl - interval`` (self-fencing)."""
        claim = self.claim
        interval = max(claim.heartbeat_interval_seconds, 0.05)
        ttl = claim.ttl_seconds
        fence_after = ttl - interval if ttl > interval else ttl / 2.0
        clock = time.monotonic
        last_ack = claim.claimed_at
        next_beat = last_ack + interval
        while not self.beats_done.wait(max(0.0, next_beat - clock())):
            sent = clock()
            try:
                answer = self.client.heartbeat(
                    self.lease, deadline=last_ack + fence_after, abort=self.beats_done
                )
            except LeaseLost as err:
                self.lost(err)
                return
            except ApiError as err:
                if err.http_status < 500:
                    self.ended_elsewhere(f"heartbeat refused, stopping: {err}")
                    return
                self.note(f"job {self.lease.job_id}: heartbeat not acknowledged: {err}")
            except Unreachable as err:
                if err.aborted or self.beats_done.is_set():
                    return
                self.fence(fence_after, interval, ttl, err)
                return
            except Exception as err:  # not acknowledged; the fence below still holds
                self.note(f"job {self.lease.job_id}: heartbeat failed: {err!r}")
            else:
                last_ack = max(last_ack, answer.sent_at)
                if answer.stop:
                    status = answer.status or "ended"
                    self.ended_elsewhere(
                        f"the job is {status}" + (f": {answer.reason}" if answer.reason else "")
                    )
                    return
            if clock() >= last_ack + fence_after:
                self.fence(fence_after, interval, ttl, None)
                return
            next_beat = sent + interval

    def fence(self, after: float, interval: float, ttl: float, err: BaseException | None) -> None:
        self.stop(
            Ending.FENCED,
            f"no heartbeat acknowledged for {after:g}s (lease ttl {ttl:g}s - heartbeat interval "
            f"{interval:g}s): assuming the lease is lost; stopping the program and reporting "
            "nothing more" + (f" (last error: {err})" if err else ""),
            silence=True,
        )

    def send_events(self) -> None:
        while (fields := self.events.take()) is not None:
            if isinstance(fields, Upload):
                try:
                    self.upload(fields)
                finally:
                    self.events.done()
                continue
            try:
                answer = self.client.event(self.lease, fields, abort=self.silenced)
            except LeaseLost as err:
                self.lost(err)
            except ApiError as err:
                if err.http_status in (401, 403, 404, 409, 410):
                    self.ended_elsewhere(f"event refused, stopping: {err}")
                else:
                    self.note(f"job {self.lease.job_id}: event refused, skipped: {err}")
            except Unreachable as err:
                if not err.aborted:
                    self.note(f"job {self.lease.job_id}: event not delivered, dropped: {err}")
            except Exception as err:  # a bug must not leave the queue (and so the end) stuck
                self.note(f"job {self.lease.job_id}: event not sent: {err!r}")
            else:
                if answer.ended:
                    self.ended_elsewhere(f"the job is {answer.status} (answer to an event)")
            finally:
                self.events.done()

    def upload(self, upload: Upload) -> bool:
        """Uploads one artifact under the lease; True when it was stored. A 409
        ``lease_lost`` stops the run as any write's does; a refusal that says the job ended
        stops it too; anything else (too large, a file gone, the server unreachable) is a
        note and the upload is skipped, as the server skips a line it cannot store."""
        try:
            artifact = self.client.upload_artifact(
                self.lease,
                upload.path,
                upload.name,
                upload.content_type,
                abort=self.silenced,
            )
        except LeaseLost as err:
            self.lost(err)
        except ArtifactTooLarge as err:
            self.skipped(f"artifact {upload.name} not stored: {err.message}")
        except ApiError as err:
            if err.http_status in (404, 405) and "no route" in err.message:
                # A server from before artifacts: the job itself is fine.
                self.skipped(f"artifact {upload.name} not stored: this server has no artifacts")
            elif err.http_status in (401, 403, 404, 409, 410):
                self.ended_elsewhere(f"artifact upload refused, stopping: {err}")
            else:
                self.skipped(f"artifact {upload.name} refused, skipped: {err}")
        except Unreachable as err:
            if not err.aborted:
                self.skipped(f"artifact {upload.name} not delivered, dropped: {err}")
        except (OSError, ValueError, ChecksumMismatch) as err:
            self.skipped(f"artifact {upload.name} not stored: {err}")
        else:
            self.stored[upload.name] = artifact.sha256
            return True
        return False

    def store_artifacts_dir(self) -> None:
        """Uploads the regular files directly under ``<job dir>/artifacts/`` (named after
        them), but those already stored with the same SHA-256 (by this run, or listed by the
        server)."""
        if self.job_dir is None:
            return
        directory = self.job_dir / ARTIFACTS_DIR
        try:
            entries = sorted(directory.iterdir())
        except FileNotFoundError:
            return
        except OSError as err:
            self.skipped(f"cannot read {directory}: {err}")
            return
        files: list[Upload] = []
        for entry in entries:
            if entry.name.startswith("."):
                continue  # hidden, or a copy still being written: never an artifact name
            try:
                validate_name(entry.name)
            except ValueError as err:
                self.skipped(f"{ARTIFACTS_DIR}/{entry.name} not stored: {err}")
                continue
            upload = self.resolve_artifact(
                ArtifactLine(f"{ARTIFACTS_DIR}/{entry.name}", entry.name)
            )
            if upload is not None:
                files.append(upload)
        if not files:
            return
        known = dict(self.stored)
        with contextlib.suppress(ApiError, Unreachable):
            listed = self.client.list_artifacts(
                self.lease.job_id, deadline=time.monotonic() + 30, abort=self.silenced
            )
            known.update({a.name: a.sha256 for a in listed})
        for upload in files:
            if self.silenced.is_set():
                return
            try:
                digest, _ = sha256_file(upload.path)
            except OSError as err:
                self.skipped(f"artifact {upload.name} not stored: {err}")
                continue
            if known.get(upload.name) == digest:
                continue
            self.upload(upload)

    # -- endings ------------------------------------------------------------------------------

    def outcome(
        self, ending: Ending, detail: str, code: int | None, job: dict[str, Any] | None = None
    ) -> Outcome:
        return Outcome(
            ending=ending,
            job_id=self.lease.job_id,
            attempt=self.lease.attempt,
            detail=detail,
            exit_code=code,
            job=job,
        )

    def finish_stopped(self, code: int | None) -> Outcome:
        assert self.ending is not None
        if self.ending is Ending.INTERRUPTED and self.worker.fail_on_signal:
            self.finishing = True
            outcome = self.finish_failed(INTERRUPTED_ERROR, code)
            if outcome.ending is Ending.FAILED:
                return self.outcome(
                    Ending.INTERRUPTED, f"{self.detail}; failed it", code, outcome.job
                )
            return outcome
        return self.outcome(self.ending, self.detail, code)

    def finish_completed(self, code: int) -> Outcome:
        with self.lock:
            result = self.result or Result()
        try:
            job = self.client.complete(self.lease, result.result, result.result_path)
        except Exception as err:
            return self.refused("complete", err, code)
        return self.outcome(Ending.COMPLETED, "completed", code, job)

    def finish_failed(self, error: str, code: int | None) -> Outcome:
        try:
            job = self.client.fail(self.lease, error)
        except Exception as err:
            return self.refused("fail", err, code)
        return self.outcome(Ending.FAILED, error, code, job)

    def refused(self, call: str, err: Exception, code: int | None) -> Outcome:
        self.beats_done.set()
        if isinstance(err, LeaseLost):
            self.finishing = False
            self.lost(err)
            return self.outcome(Ending.LEASE_LOST, self.detail, code)
        if isinstance(err, ApiError) and err.http_status in (404, 409, 410):
            return self.outcome(Ending.STOPPED, f"{call} refused: {err}", code)
        if isinstance(err, ApiError) and call == "complete" and 400 <= err.http_status < 500:
            # A result the server will not store (too large, not JSON it accepts): failing
            # the job beats leaving it to be rescued and run again for the same refusal.
            return self.finish_failed(f"the server refused the result: {err}", code)
        if isinstance(err, Unreachable):
            return self.outcome(Ending.UNREACHABLE, f"{call} not delivered: {err}", code)
        if isinstance(err, ApiError):
            return self.outcome(Ending.UNREACHABLE, f"{call} refused: {err}", code)
        raise err


def _signal_group(pid: int, sig: signal.Signals) -> None:
    # ESRCH (the group is gone already) is the expected end.
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pid, sig)


def _cut(text: str, limit: int) -> str:
    data = text.encode("utf-8", "replace")
    if len(data) <= limit:
        return text
    return data[:limit].decode("utf-8", "ignore") + f"… [cut at {limit} bytes]"


# -- the command line -------------------------------------------------------------------------

USAGE = """\
python -m skill_fleet_worker worker --server URL --type TYPE [--type TYPE ...] [options] \
-- PROGRAM [ARGS...]"""


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m skill_fleet_worker worker ... -- PROGRAM ARGS``; returns the exit status:
    with ``--once`` 0 when the job completed, else 1; without it 0 after SIGTERM/SIGINT, 1
    after a self-fencing; 2 for a usage error or a claim the server refuses."""
    import argparse

    args = list(sys.argv[1:] if argv is None else argv)
    if "--" in args:
        split = args.index("--")
        args, command = args[:split], args[split + 1 :]
    else:
        command = []
    parser = argparse.ArgumentParser(
        prog="python -m skill_fleet_worker worker",
        usage=USAGE,
        description="Run an executor-protocol program for jobs claimed from a skill-fleet "
        "server (the lease protocol: claim, heartbeat, fenced events, complete or fail).",
    )
    parser.add_argument(
        "--server",
        default=os.environ.get("SKILL_FLEET_URL"),
        help="the server's URL (default $SKILL_FLEET_URL)",
    )
    parser.add_argument(
        "--type",
        dest="types",
        action="append",
        required=True,
        metavar="TYPE",
        help="a job type to claim (repeat for more)",
    )
    parser.add_argument(
        "--worker", dest="name", default=None, help="the lease owner's name (default hostname-pid)"
    )
    parser.add_argument(
        "--token",
        default=None,
        help="bearer token (default $SKILL_FLEET_TOKEN, else $SKILL_FLEET_AUTH_TOKEN)",
    )
    parser.add_argument(
        "--work-dir",
        default=DEFAULT_WORK_DIR,
        help="job directories go in DIR/<job id>/ (default ./skill-fleet-work)",
    )
    parser.add_argument(
        "--cwd", default=None, help="the program's working directory (default: the worker's)"
    )
    parser.add_argument(
        "--once", action="store_true", help="run one job, exit 0 if it completed, 1 otherwise"
    )
    parser.add_argument(
        "--poll-seconds",
        type=float,
        default=1.0,
        help="first wait after an empty claim, doubling (default 1.0)",
    )
    parser.add_argument(
        "--max-poll-seconds",
        type=float,
        default=10.0,
        help="longest wait between empty claims (default 10)",
    )
    parser.add_argument(
        "--grace-seconds",
        type=float,
        default=10.0,
        help="SIGTERM to SIGKILL when stopping the program (default 10)",
    )
    parser.add_argument(
        "--retry-seconds",
        type=float,
        default=600.0,
        help="how long a call to the server is retried (default 600)",
    )
    parser.add_argument(
        "--http-timeout", type=float, default=30.0, help="timeout of one HTTP request (default 30)"
    )
    parser.add_argument(
        "--fail-on-signal",
        action="store_true",
        help="on SIGTERM/SIGINT fail the running job instead of leaving it to the server's rescue",
    )
    options = parser.parse_args(args)
    if not command:
        parser.error("give the program to run after --, e.g. -- python eval.py")
    if not options.server:
        parser.error("--server URL is required (or set SKILL_FLEET_URL)")
    token = (
        options.token
        or os.environ.get("SKILL_FLEET_TOKEN")
        or os.environ.get("SKILL_FLEET_AUTH_TOKEN")
    )
    output = _Output(None)
    try:
        client = HttpClient(
            options.server,
            token=token,
            timeout=options.http_timeout,
            retry_seconds=options.retry_seconds,
            log=output.note,
        )
        worker = Worker(
            client,
            options.types,
            command,
            name=options.name,
            work_dir=options.work_dir,
            cwd=options.cwd,
            poll_seconds=options.poll_seconds,
            max_poll_seconds=options.max_poll_seconds,
            grace_seconds=options.grace_seconds,
            fail_on_signal=options.fail_on_signal,
        )
    except ValueError as err:
        parser.error(str(err))
    worker.install_signal_handlers()
    output.note(f"worker {worker.name}: claiming {', '.join(worker.types)} from {client.server}")
    try:
        if options.once:
            outcome = worker.run_once()
            return 0 if outcome is not None and outcome.completed else 1
        return worker.run_forever()
    except ApiError as err:
        output.note(f"the server refused the claim: {err}")
        return 2
