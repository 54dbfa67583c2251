"""The remote worker against the real server: claim, heartbeat, fenced events, rescue.

The server runs nothing itself (an empty ``[executors]`` table), so every job waits for a
worker; leases are short so a rescue takes seconds. The program is the bundled
``examples/toy_optimizer.py``, run unchanged.
"""

from __future__ import annotations

import contextlib
import os
import re
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from server import REPO, Server, pid_alive, wait_for

from skill_fleet_worker.client import ApiError, HttpClient, Lease, LeaseLost

TOY = REPO / "examples" / "toy_optimizer.py"
SRC = Path(__file__).resolve().parents[1] / "src"


class WorkerProcess:
    """``python -m skill_fleet_worker worker`` on its own work dir (its own "machine")."""

    def __init__(self, server: Server, root: Path, name: str, *args: str) -> None:
        self.name = name
        self.log_path = root / f"{name}.log"
        self.work_dir = root / name
        env = {**os.environ, "PYTHONPATH": str(SRC)}
        with self.log_path.open("wb") as log:
            self.process = subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "skill_fleet_worker",
                    "worker",
                    "--server",
                    server.url,
                    "--type",
                    "evaluation",
                    "--worker",
                    name,
                    "--work-dir",
                    str(self.work_dir),
                    "--poll-seconds",
                    "0.1",
                    "--max-poll-seconds",
                    "0.5",
                    *args,
                    "--",
                    sys.executable,
                    str(TOY),
                ],
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                env=env,
            )

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def program_pid(self, timeout: float = 60) -> int:
        def found() -> int | None:
            match = re.search(r"toy optimizer pid=(\d+)", self.log())
            return int(match.group(1)) if match else None

        return wait_for(f"{self.name}'s program to start", found, timeout)

    def wait(self, timeout: float = 120) -> int:
        try:
            return self.process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.process.kill()
            raise AssertionError(f"{self.name} did not exit: {self.log()}") from None

    def kill(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait()


@pytest.fixture
def workers(tmp_path: Path) -> Iterator[list[WorkerProcess]]:
    started: list[WorkerProcess] = []
    yield started
    for worker in started:
        worker.kill()


def start(
    workers: list[WorkerProcess], server: Server, tmp_path: Path, name: str, *args: str
) -> WorkerProcess:
    worker = WorkerProcess(server, tmp_path, name, *args)
    workers.append(worker)
    return worker


def steps(server: Server, job_id: str) -> set[str]:
    return {r["step"] for r in server.history(job_id) if r["step"]}


def test_a_job_runs_to_completion_through_the_worker(
    lease_server: Server, workers: list[WorkerProcess], tmp_path: Path
):
    job_id = lease_server.create_job("evaluation", {"trials": 6, "trial_seconds": 0.2})
    worker = start(workers, lease_server, tmp_path, "box-1", "--once")

    def running() -> dict[str, Any] | None:
        job = lease_server.job(job_id)
        return job if job["status"] == "running" and job.get("checkpoint") else None

    job = wait_for("the job to run with a checkpoint", running, timeout=60)
    assert job["lease"]["owner"] == "box-1", job
    assert job["attempt"] == 1
    assert "lease_token" not in job  # only the claimer sees it

    assert worker.wait() == 0, worker.log()
    job = lease_server.job(job_id)
    assert job["status"] == "completed", (job, worker.log())
    assert job["attempt"] == 1
    result = job["result"]
    assert result["trials"] == 6 and result["resumed_from_trial"] is None
    assert job["result_path"] == str(worker.work_dir / job_id / "best_program.json")
    assert Path(job["result_path"]).is_file()
    assert job["checkpoint"]["trial"] == 6  # the last checkpoint, stored durably
    assert job["progress"]["progress"] == 1.0
    assert job["progress"]["metric"] == result["metric"]
    assert {"collecting_traces", "proposing_instructions", "searching_parameters"} <= steps(
        lease_server, job_id
    )
    costs = [r["cost_usd"] for r in lease_server.history(job_id)]
    assert costs == sorted(costs) and costs[-1] == pytest.approx(result["cost_usd"])
    log = worker.log()
    assert "toy optimizer pid=" in log  # the program's log line, on the worker's stderr
    assert f"job {job_id} attempt 1: completed" in log


def test_a_killed_worker_is_rescued_and_a_second_worker_completes_the_job(
    lease_server: Server, workers: list[WorkerProcess], tmp_path: Path
):
    job_id = lease_server.create_job("evaluation", {"trials": 12, "trial_seconds": 0.3})
    first = start(workers, lease_server, tmp_path, "box-1")
    pid = first.program_pid()

    def far_enough() -> dict[str, Any] | None:
        checkpoint = lease_server.job(job_id)["checkpoint"]
        return checkpoint if checkpoint and checkpoint["trial"] >= 2 else None

    checkpoint = wait_for("a few checkpoints", far_enough, timeout=60)
    # The machine goes away: the worker and its program, with no word to the server.
    first.kill()
    with contextlib.suppress(ProcessLookupError):  # it may have died with its worker already
        os.killpg(pid, signal.SIGKILL)
    wait_for("the program to be gone", lambda: not pid_alive(pid), timeout=10)

    job = lease_server.wait_status(job_id, {"queued", "failed", "completed", "cancelled"}, 30)
    assert job["status"] == "queued", job  # the lease expired: rescued, not failed
    assert job["checkpoint"]["trial"] >= checkpoint["trial"]

    second = start(workers, lease_server, tmp_path, "box-2", "--once")
    assert second.wait() == 0, second.log()
    job = lease_server.job(job_id)
    assert job["status"] == "completed", (job, second.log())
    assert job["attempt"] == 2
    # The second machine had no files of the first: it resumed from the server's checkpoint.
    assert not (second.work_dir / job_id / "pid").exists()
    assert job["result"]["resumed_from_trial"] >= checkpoint["trial"]
    assert job["result_path"].startswith(str(second.work_dir))
    assert "resuming at trial" in second.log()
    costs = [r["cost_usd"] for r in lease_server.history(job_id)]
    assert costs == sorted(costs)


def test_a_cancel_reaches_the_worker_through_the_heartbeat(
    lease_server: Server, workers: list[WorkerProcess], tmp_path: Path
):
    # Long trials: after the first lines the program is silent, so only a heartbeat can
    # bring the news.
    job_id = lease_server.create_job("evaluation", {"trials": 3, "trial_seconds": 30})
    worker = start(workers, lease_server, tmp_path, "box-1", "--once")
    pid = worker.program_pid()
    wait_for("the first checkpoint", lambda: lease_server.job(job_id)["checkpoint"], 60)

    status, body = lease_server.request("POST", f"/api/v1/jobs/{job_id}/cancel")
    assert status == 200, body
    assert worker.wait(timeout=30) == 1, worker.log()  # --once: not completed
    wait_for("the program to be stopped", lambda: not pid_alive(pid), timeout=10)
    log = worker.log()
    assert "the job is cancelled" in log, log
    assert "answer to an event" not in log and "event refused" not in log
    job = lease_server.job(job_id)
    assert job["status"] == "cancelled", job  # no complete or fail came after
    assert job["attempt"] == 1


def test_the_client_speaks_the_servers_lease_protocol(lease_server: Server):
    client = HttpClient(lease_server.url, retry_seconds=30)
    assert client.claim(["evaluation"], "probe") is None  # 204: nothing queued
    job_id = lease_server.create_job("evaluation", {"budget_usd": 1.0})
    claim = client.claim(["evaluation"], "probe")
    assert claim is not None and claim.job_id == job_id and claim.attempt == 1
    assert (claim.ttl_seconds, claim.heartbeat_interval_seconds) == (2.0, 0.5)
    assert claim.job["lease"]["owner"] == "probe" and claim.job["status"] == "running"

    ack = client.event(claim.lease, {"step": "a", "progress": 0.5, "checkpoint": {"n": 1}})
    assert (ack.status, ack.durable) == ("running", True)
    beat = client.heartbeat(claim.lease)
    assert not beat.stop and beat.status == "running" and beat.lease_expires_at
    with pytest.raises(ApiError) as refused:  # a value the worker would have skipped
        client.event(claim.lease, {"progress": 7})
    assert refused.value.http_status == 422

    for wrong in (Lease(job_id, 1, "not-the-token"), Lease(job_id, 2, claim.lease.token)):
        with pytest.raises(LeaseLost) as lost:
            client.heartbeat(wrong)
        assert (lost.value.attempt, lost.value.status) == (1, "running")

    job = client.complete(claim.lease, {"score": 1})
    assert job["status"] == "completed"
    again = client.complete(claim.lease, {"score": 1})  # a retry after a lost answer
    assert again["status"] == "completed" and again["result"] == {"score": 1}
    after = client.heartbeat(claim.lease)
    assert after.stop and after.status == "completed"
    with pytest.raises(ApiError) as ended:
        client.event(claim.lease, {"progress": 0.9})
    assert (ended.value.http_status, ended.value.code) == (409, "invalid_transition")

    # A cost past the budget cancels the job: the event's answer says so, then heartbeats.
    job_id = lease_server.create_job("evaluation", {"budget_usd": 0.1})
    claim = client.claim(["evaluation"], "probe")
    assert claim is not None and claim.job_id == job_id
    assert client.event(claim.lease, {"cost_usd": 0.5}).ended
    beat = client.heartbeat(claim.lease)
    assert beat.stop and beat.status == "cancelled" and "budget exceeded" in (beat.reason or "")


def test_the_example_remote_worker_config_is_accepted(tmp_path: Path):
    config = (REPO / "examples" / "remote_worker.toml").read_text()
    server = Server(tmp_path / "server", config).start()
    try:
        status, _ = server.request("GET", "/healthz")
        assert status == 200
        # Its types are left to workers: a claim is accepted (204: nothing queued).
        status, _ = server.request("POST", "/api/v1/jobs/claim", {"types": ["evaluation"]})
        assert status == 204
    finally:
        server.stop()
