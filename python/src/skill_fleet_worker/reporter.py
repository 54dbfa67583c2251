"""Executor-protocol lines on a stdout that nothing else can write to.

A :class:`Reporter` writes one JSON object per line (see ``docs/PROTOCOL.md``): progress,
checkpoints, results. Once installed (:meth:`Reporter.install`), it owns the real stdout:
it keeps a private duplicate of file descriptor 1 for protocol lines and points fd 1 at
stderr, so ``print``, ``os.write(1, ...)``, subprocesses and progress bars of the program
all land on stderr and can never break a protocol line.

Values are checked the way the server checks them (progress in 0..=1, cost finite and not
negative, metric finite, a line at most 1 MiB): a bad value raises ``ValueError`` here
instead of becoming a line the server logs and skips.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import shutil
import signal
import sys
import tempfile
import threading
from collections.abc import Callable
from numbers import Real
from pathlib import Path
from types import FrameType
from typing import Any

from .artifacts import ARTIFACTS_DIR, RESULT_ARTIFACT_PREFIX, validate_content_type, validate_name
from .context import JobContext

#: The server cuts stdout lines longer than this (newline included here).
MAX_LINE_BYTES = 1024 * 1024

_UNSET: Any = object()


class Reporter:
    """Writes executor-protocol lines; thread-safe (one lock per line, written at once).

    ``Reporter()`` reads the job from the environment. Lines go to stdout (fd 1) until
    :meth:`install`, which moves them to a private duplicate of the real stdout.
    """

    def __init__(self, context: JobContext | None = None, *, fd: int | None = None) -> None:
        self.context = context if context is not None else JobContext.from_env()
        #: Set when the server asked the run to stop (SIGTERM: cancel, budget, time limit,
        #: server shutdown). Integrations poll it and stop cleanly within the grace period.
        self.stop_requested = threading.Event()
        self._fd = 1 if fd is None else fd
        self._lock = threading.Lock()
        self._installed = False
        # Its own lock: a stop can come from a signal handler while this thread holds _lock.
        self._stop_lock = threading.RLock()
        self._stop_callbacks: list[Callable[[], None]] = []
        self.lines_written = 0
        #: When set, a SIGTERM after the first raises this in the main thread (a hard stop).
        self.escalate: type[BaseException] | None = None

    # -- installation -------------------------------------------------------------------

    def install(self, *, redirect: bool | None = None, handle_sigterm: bool = True) -> Reporter:
        """Takes over stdout and (optionally) SIGTERM; returns ``self``.

        ``redirect`` (default: only under the server) keeps the real stdout for protocol
        lines and sends everything else written to fd 1 to stderr. Outside the server the
        program's output stays on stdout, mixed with the protocol lines, as a local run
        expects. ``handle_sigterm`` installs a handler that sets :attr:`stop_requested`
        (only possible from the main thread).
        """
        if self._installed:
            return self
        if redirect is None:
            redirect = self.context.under_server
        if redirect:
            for stream in (sys.stdout, sys.__stdout__):
                if stream is not None:
                    with contextlib.suppress(OSError, ValueError):
                        stream.flush()
            # os.dup gives a non-inheritable descriptor: subprocesses cannot write to it.
            self._fd = os.dup(1)
            os.dup2(2, 1)
            # sys.stdout (fd 1) now reaches stderr; make its lines show up as they come.
            reconfigure = getattr(sys.stdout, "reconfigure", None)
            if reconfigure is not None:
                with contextlib.suppress(OSError, ValueError):
                    reconfigure(line_buffering=True)
        if handle_sigterm and threading.current_thread() is threading.main_thread():
            signal.signal(signal.SIGTERM, self._on_sigterm)
        self._installed = True
        return self

    def on_stop(self, callback: Callable[[], None]) -> None:
        """Calls ``callback`` (once) when a stop is requested; at once if it already was.

        It may run inside the SIGTERM handler: keep it short and write no protocol line
        from it (set a flag, write a stop file).
        """
        with self._stop_lock:
            if not self.stop_requested.is_set():
                self._stop_callbacks.append(callback)
                return
        callback()

    def request_stop(self) -> None:
        """Asks the run to stop, as SIGTERM does: sets :attr:`stop_requested`, runs callbacks."""
        with self._stop_lock:
            if self.stop_requested.is_set():
                return
            self.stop_requested.set()
            callbacks, self._stop_callbacks = self._stop_callbacks, []
        for callback in callbacks:
            try:
                callback()
            except Exception as err:  # a failing callback must not hide the stop
                _stderr(f"[skill-fleet] stop callback failed: {err!r}")

    def _on_sigterm(self, signum: int, frame: FrameType | None) -> None:
        if self.stop_requested.is_set():
            if self.escalate is not None:
                raise self.escalate("stopped after SIGTERM")
            return
        _stderr("[skill-fleet] SIGTERM: stopping the run")
        self.request_stop()

    # -- protocol lines -----------------------------------------------------------------

    def progress(
        self,
        *,
        step: str | int | None = None,
        progress: float | None = None,
        cost_usd: float | None = None,
        metric: float | None = None,
        message: str | None = None,
        checkpoint: Any = _UNSET,
    ) -> None:
        """A progress line; fields left out (``None``) keep their values on the server.

        ``progress`` is 0..=1, ``cost_usd`` is **cumulative** (finite, not negative),
        ``metric`` any finite number, ``step`` a string or a whole number.
        """
        fields: dict[str, Any] = {}
        if step is not None:
            if isinstance(step, bool) or not isinstance(step, (str, int)):
                raise ValueError(f"step must be a string or a whole number, got {step!r}")
            fields["step"] = step
        if progress is not None:
            value = _number("progress", progress)
            if not 0.0 <= value <= 1.0:
                raise ValueError(f"progress must be in 0..=1, got {progress!r}")
            fields["progress"] = progress
        if cost_usd is not None:
            value = _number("cost_usd", cost_usd)
            if value < 0.0:
                raise ValueError(f"cost_usd must not be negative, got {cost_usd!r}")
            fields["cost_usd"] = cost_usd
        if metric is not None:
            _number("metric", metric)
            fields["metric"] = metric
        if message is not None:
            if not isinstance(message, str):
                raise ValueError(f"message must be a string, got {type(message).__name__}")
            fields["message"] = message
        if checkpoint is not _UNSET:
            if checkpoint is None:
                raise ValueError("checkpoint must not be null")
            fields["checkpoint"] = checkpoint
        if not fields:
            raise ValueError("a progress line needs at least one field")
        self._emit(fields)

    def checkpoint(self, obj: Any) -> None:
        """A checkpoint: any JSON value but null, stored durably, handed back on resume."""
        self.progress(checkpoint=obj)

    def result(self, obj: Any, result_path: str | os.PathLike[str] | None = None) -> None:
        """The job's result (the last one wins), stored when the process exits 0."""
        if obj is None and result_path is None:
            raise ValueError("a result needs a value or a result_path")
        fields: dict[str, Any] = {}
        if obj is not None:
            fields["result"] = obj
        if result_path is not None:
            fields["result_path"] = os.fspath(result_path)
        self._emit(fields)

    def artifact(
        self,
        path: str | os.PathLike[str],
        name: str | None = None,
        content_type: str | None = None,
    ) -> str:
        """Stores the file at ``path`` as the job's artifact ``name`` (default: its base
        name), now; the same name again replaces it. Returns what a ``result_path`` naming
        it is: ``artifact:NAME`` in a job, the file's own path outside one.

        In a job (the server's executor or the remote worker), a file outside
        ``SKILL_FLEET_WORK_DIR`` is first copied to ``<work dir>/artifacts/NAME``; then the
        line ``{"artifact": "<path in the work dir>", "name": "NAME"}`` (with
        ``"content_type"`` when given) has the server (or the worker, which uploads it)
        store it before it reads the next line. Outside a job (no ``SKILL_FLEET_JOB_ID``)
        nothing is copied or written to stdout: a note on stderr says what would be stored.

        Raises ``ValueError`` for a name or content type the server would refuse and
        ``FileNotFoundError`` / ``IsADirectoryError`` when ``path`` is not a file.
        """
        source = Path(path)
        name = validate_name(source.name if name is None else name)
        if content_type is not None:
            validate_content_type(content_type)
        if not source.exists():
            raise FileNotFoundError(2, "No such file or directory", str(source))
        if not source.is_file():
            raise IsADirectoryError(21, "An artifact must be a regular file", str(source))
        if not self.context.under_server:
            _stderr(
                f"[skill-fleet] artifact {name}: {source} (not running as a job: nothing is "
                "stored; under the server or a worker it would be)"
            )
            return os.fspath(path)
        work_dir = self.context.work_dir.resolve()
        real = source.resolve()
        if not real.is_relative_to(work_dir):
            target = work_dir / ARTIFACTS_DIR / name
            _copy_atomically(real, target)
            real = target
        fields: dict[str, Any] = {"artifact": real.relative_to(work_dir).as_posix(), "name": name}
        if content_type is not None:
            fields["content_type"] = content_type
        self._emit(fields)
        return RESULT_ARTIFACT_PREFIX + name

    def log(self, text: str) -> None:
        """A log line: shown by ``skill-fleet jobs logs``, never read as protocol.

        Text that would parse as a protocol object is written as JSON-quoted text instead,
        so a log line can never move the job's progress.
        """
        if not isinstance(text, str):
            raise ValueError(f"log text must be a string, got {type(text).__name__}")
        for line in text.splitlines() or [""]:
            if line.strip().startswith("{"):
                line = json.dumps(line)
            self._write((line + "\n").encode("utf-8", "replace"))

    def _emit(self, fields: dict[str, Any]) -> None:
        try:
            text = json.dumps(fields, allow_nan=False, separators=(",", ":"))
        except (TypeError, ValueError) as err:
            raise ValueError(f"cannot write a protocol line: {err}") from err
        data = (text + "\n").encode("utf-8")
        if len(data) > MAX_LINE_BYTES:
            raise ValueError(
                f"protocol line of {len(data)} bytes is over the server's limit of "
                f"{MAX_LINE_BYTES} (write big results to a file and pass result_path)"
            )
        self._write(data)

    def _write(self, data: bytes) -> None:
        with self._lock:
            view = memoryview(data)
            while view:
                written = os.write(self._fd, view)
                view = view[written:]
            self.lines_written += 1


def _stderr(text: str) -> None:
    # os.write, not print: this may run in a signal handler that interrupted a print.
    with contextlib.suppress(OSError):
        os.write(2, (text + "\n").encode("utf-8", "replace"))


def _copy_atomically(source: Path, target: Path) -> None:
    """Copies ``source`` to ``target`` through a hidden temporary file in the same directory
    (a name the server never stores), so ``target`` is always whole."""
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, temp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".part", dir=target.parent)
    try:
        with os.fdopen(fd, "wb") as out, source.open("rb") as src:
            shutil.copyfileobj(src, out)
        os.replace(temp, target)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(temp)
        raise


def _number(name: str, value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, Real):
        raise ValueError(f"{name} must be a number, got {value!r}")
    number = float(value)
    if not math.isfinite(number):
        raise ValueError(f"{name} must be finite, got {value!r}")
    return number


_default: Reporter | None = None
_default_lock = threading.Lock()


def get_reporter() -> Reporter:
    """The process's reporter: created from the environment and installed on first use."""
    global _default
    with _default_lock:
        if _default is None:
            _default = Reporter().install()
        return _default
