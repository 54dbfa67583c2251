"""The real skill-fleet-server for tests: find the binary, start it on port 0, stop it.

The binary is ``$SKILL_FLEET_SERVER_BIN``, else ``<repo>/target/debug/skill-fleet-server``.
When it (or DSPy) is missing, tests skip with the reason; with ``CI`` set they fail instead,
so a CI run cannot pass by testing nothing.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import pytest

REPO = Path(__file__).resolve().parents[2]
EXAMPLE = REPO / "examples" / "dspy_optimize.py"
T = TypeVar("T")


def unavailable(reason: str) -> None:
    """Skips the test, or fails it under CI."""
    if os.environ.get("CI"):
        pytest.fail(f"{reason} (CI is set: failing instead of skipping)")
    print(f"skipping: {reason}", file=sys.stderr)
    pytest.skip(reason)


def server_binary() -> Path:
    configured = os.environ.get("SKILL_FLEET_SERVER_BIN")
    candidates = [Path(configured)] if configured else []
    candidates.append(REPO / "target" / "debug" / "skill-fleet-server")
    for candidate in candidates:
        if candidate.is_file() and os.access(candidate, os.X_OK):
            return candidate
    unavailable(
        "skill-fleet-server binary not found (set SKILL_FLEET_SERVER_BIN or build "
        f"{REPO / 'target/debug/skill-fleet-server'}); looked at {[str(c) for c in candidates]}"
    )
    raise AssertionError("unreachable")


def require_dspy() -> None:
    try:
        import dspy  # noqa: F401
    except ImportError as err:
        unavailable(f"dspy is not installed ({err}): pip install './python[dspy]'")


def wait_for(what: str, check: Callable[[], T | None], timeout: float = 60.0) -> T:
    """Polls ``check`` until it returns something truthy, or fails after ``timeout``."""
    deadline = time.monotonic() + timeout
    delay = 0.02
    last: Any = None
    while True:
        last = check()
        if last:
            return last
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(delay)
        delay = min(delay * 1.5, 0.25)


class Server:
    """One server process on its own database, data dir and config under ``root``."""

    def __init__(self, root: Path, config: str) -> None:
        self.binary = server_binary()
        self.root = root
        root.mkdir(parents=True, exist_ok=True)
        (root / "server.toml").write_text(config, encoding="utf-8")
        self.process: subprocess.Popen[bytes] | None = None
        self.url = ""
        self.runs = 0

    def start(self) -> Server:
        self.runs += 1
        log = self.root / f"server-{self.runs}.log"
        with log.open("wb") as out:
            self.process = subprocess.Popen(
                [str(self.binary), "--bind", "127.0.0.1:0",
                 "--database", str(self.root / "db.sqlite"),
                 "--data-dir", str(self.root / "data"),
                 "--config", str(self.root / "server.toml")],
                stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
            )  # fmt: skip
        process = self.process

        def listening() -> str | None:
            if process.poll() is not None:
                raise AssertionError(f"server exited {process.returncode}: {log.read_text()}")
            match = re.search(r"listening on (http://127\.0\.0\.1:\d+)", log.read_text())
            return match.group(1) if match else None

        self.url = wait_for("the server to listen", listening, timeout=60)
        return self

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self.process = None

    def kill(self) -> None:
        assert self.process is not None
        self.process.kill()
        self.process.wait()
        self.process = None

    def log(self) -> str:
        return "\n".join(
            p.read_text(errors="replace") for p in sorted(self.root.glob("server-*.log"))
        )

    # -- HTTP -----------------------------------------------------------------------------

    def request(self, method: str, path: str, body: Any = None) -> tuple[int, Any]:
        data = None if body is None else json.dumps(body).encode()
        request = urllib.request.Request(self.url + path, data=data, method=method)
        if data is not None:
            request.add_header("content-type", "application/json")
        try:
            with urllib.request.urlopen(request, timeout=30) as response:
                raw = response.read()
                return response.status, json.loads(raw) if raw else None
        except urllib.error.HTTPError as err:
            raw = err.read()
            return err.code, json.loads(raw) if raw else None

    def get(self, path: str) -> Any:
        status, body = self.request("GET", path)
        assert status == 200, (status, body)
        return body

    def create_job(self, job_type: str, metadata: dict[str, Any]) -> str:
        status, body = self.request("POST", "/api/v1/jobs",
                                    {"type": job_type, "metadata": metadata})  # fmt: skip
        assert status == 201, (status, body)
        return str(body["id"])

    def job(self, job_id: str) -> dict[str, Any]:
        return dict(self.get(f"/api/v1/jobs/{job_id}"))

    def wait_status(self, job_id: str, statuses: set[str], timeout: float = 120) -> dict:
        def done() -> dict | None:
            job = self.job(job_id)
            return job if job["status"] in statuses else None

        try:
            return wait_for(f"job {job_id} to be {statuses}", done, timeout)
        except AssertionError as err:
            raise AssertionError(
                f"{err}; job: {self.job(job_id)}; logs: {self.logs(job_id)}"
            ) from None

    def history(self, job_id: str) -> list[dict[str, Any]]:
        records: list[dict[str, Any]] = []
        after: int | None = None
        while True:
            query = "?limit=1000" + ("" if after is None else f"&after={after}")
            page = self.get(f"/api/v1/jobs/{job_id}/progress{query}")
            records.extend(page["records"])
            after = page.get("next_after")
            if after is None or not page["records"]:
                return records

    def logs(self, job_id: str) -> Any:
        _, body = self.request("GET", f"/api/v1/jobs/{job_id}/logs")
        return body


#: A server that runs nothing itself (an empty ``[executors]`` table: every job waits for a
#: worker), with short leases so a rescue takes seconds.
LEASE_CONFIG = """\
stop_grace_seconds = 5
lease_ttl_seconds = 2
heartbeat_interval_seconds = 0.5
rescue_interval_seconds = 1
max_rescues = 3

[executors]
"""


def dspy_config(*, grace: int = 10, timeout: int | None = None) -> str:
    """A server config with a `dspy` executor running the example through the runner."""
    command = [sys.executable, "-m", "skill_fleet_worker.dspy", "run", str(EXAMPLE)]
    lines = [
        f"stop_grace_seconds = {grace}",
        "emit_interval_ms = 50",
        "[executors.dspy]",
        f"command = {json.dumps(command)}",
        "resumable = true",
        "max_concurrent = 2",
    ]
    if timeout is not None:
        lines.append(f"timeout_seconds = {timeout}")
    return "\n".join(lines) + "\n"


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # A zombie still answers kill(0): look at its state.
    try:
        state = Path(f"/proc/{pid}/stat").read_text().split(")")[-1].split()[0]
    except OSError:
        return False
    return state != "Z"
