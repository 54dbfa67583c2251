"""The runner without the server: targets, exit statuses, the hard stop."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from server import require_dspy, wait_for

HERE = Path(__file__).resolve().parent


def start(
    tmp_path: Path, target: str, *extra: str, env_extra: dict[str, str] | None = None
) -> subprocess.Popen[bytes]:
    require_dspy()
    metadata = tmp_path / "metadata.json"
    metadata.write_text("{}")
    env = {k: v for k, v in os.environ.items() if not k.startswith("SKILL_FLEET_")}
    env.update({
        "SKILL_FLEET_JOB_ID": "job-1", "SKILL_FLEET_JOB_TYPE": "dspy", "SKILL_FLEET_ATTEMPT": "1",
        "SKILL_FLEET_METADATA": str(metadata), "SKILL_FLEET_WORK_DIR": str(tmp_path / "work"),
        "PYTHONPATH": str(HERE),
    })  # fmt: skip
    env.update(env_extra or {})
    return subprocess.Popen(
        [sys.executable, "-m", "skill_fleet_worker.dspy", "run", *extra, target],
        stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env,
        start_new_session=True,
    )  # fmt: skip


def test_a_returned_module_is_the_result(tmp_path: Path):
    process = start(tmp_path, "programs:returns_a_program")
    out, err = process.communicate(timeout=120)
    assert process.returncode == 0, err.decode()
    lines = [json.loads(line) for line in out.decode().splitlines()]
    result = lines[-1]
    # The saved program is stored as the artifact program.json (the file is already in the
    # work dir: no copy), and the result names the artifact.
    assert {"artifact": "program.json", "name": "program.json"} in lines[:-1]
    assert result["result_path"] == "artifact:program.json"
    program = tmp_path / "work" / "program.json"
    assert result["result"]["program_path"] == str(program)
    assert json.loads(program.read_text())["demos"]
    assert not (tmp_path / "work" / "artifacts").exists()
    assert result["result"]["optimizer"] is None and result["result"]["cost_usd"] == 0


def test_outside_a_job_the_result_is_the_programs_file(tmp_path: Path):
    require_dspy()
    env = {k: v for k, v in os.environ.items() if not k.startswith("SKILL_FLEET_")}
    env["PYTHONPATH"] = str(HERE)
    process = subprocess.run(
        [sys.executable, "-m", "skill_fleet_worker.dspy", "run", "programs:returns_a_program"],
        stdin=subprocess.DEVNULL, capture_output=True, env=env, cwd=tmp_path, timeout=120,
    )  # fmt: skip
    assert process.returncode == 0, process.stderr.decode()
    lines = [json.loads(line) for line in process.stdout.decode().splitlines()
             if line.startswith("{")]  # fmt: skip
    program = tmp_path / "skill-fleet-work" / "program.json"
    assert lines[-1]["result_path"] == str(program) and program.is_file()
    assert not any("artifact" in line for line in lines)  # no artifact line outside a job
    assert "artifact program.json" in process.stderr.decode()  # but a note says so


def test_a_failing_program_exits_1_with_its_traceback(tmp_path: Path):
    process = start(tmp_path, "programs:fails")
    out, err = process.communicate(timeout=120)
    assert process.returncode == 1
    assert "RuntimeError: the program failed" in err.decode()
    assert not any("result" in json.loads(line) for line in out.decode().splitlines())


def test_a_main_thread_with_no_dspy_event_is_stopped_hard(tmp_path: Path):
    process = start(tmp_path, "programs:sleeps_forever", "--stop-seconds", "0.2")
    assert process.stderr is not None
    wait_for("the program to start",
             lambda: (tmp_path / "work" / "dspy_cache").exists() or process.poll() is not None,
             timeout=60)  # fmt: skip
    # The runner is up once its first line is out.
    assert process.stdout is not None
    first = json.loads(process.stdout.readline())
    assert first["step"] == "starting"
    sent = time.monotonic()
    process.send_signal(signal.SIGTERM)
    try:
        status = process.wait(timeout=15)
    except subprocess.TimeoutExpired:
        process.kill()
        pytest.fail("the runner did not stop")
    assert status == 143, process.stderr.read().decode()
    assert time.monotonic() - sent < 10
    stopped = json.loads((tmp_path / "work" / "stopped_result.json").read_text())
    assert stopped["stopped"] is True and stopped["program_path"] is None


def test_a_resumed_attempt_starts_from_the_cost_already_spent(tmp_path: Path):
    work = tmp_path / "work"
    work.mkdir()
    # Attempt 1 reported $0.50 and was killed after its last checkpoint, at $0.20.
    (work / "skill_fleet_cost.json").write_text('{"cost_usd": 0.5}')
    checkpoint = tmp_path / "checkpoint.json"
    checkpoint.write_text('{"kind": "dspy_cache", "cost_usd": 0.2}')
    process = start(tmp_path, "programs:returns_a_program", env_extra={
        "SKILL_FLEET_ATTEMPT": "2", "SKILL_FLEET_CHECKPOINT": str(checkpoint),
    })  # fmt: skip
    out, err = process.communicate(timeout=120)
    assert process.returncode == 0, err.decode()
    lines = [json.loads(line) for line in out.decode().splitlines()]
    assert lines[0]["cost_usd"] == 0.5 and "resuming" in lines[0]["message"]
    assert lines[-1]["result"]["cost_usd"] == 0.5


def test_a_rerun_replays_paid_calls_from_the_cache_in_the_work_dir(tmp_path: Path):
    first = start(tmp_path, "programs:cached_calls")
    out, err = first.communicate(timeout=120)
    assert first.returncode == 0, err.decode()
    assert f"cache dir: {tmp_path / 'work' / 'dspy_cache'}" in err.decode()
    result = json.loads(out.decode().splitlines()[-1])["result"]
    assert (result["cost_usd"], result["lm_calls"], result["cache_hits"]) == (0.03, 3, 0)

    again = start(tmp_path, "programs:cached_calls", env_extra={"SKILL_FLEET_ATTEMPT": "2"})
    out, err = again.communicate(timeout=120)
    assert again.returncode == 0, err.decode()
    result = json.loads(out.decode().splitlines()[-1])["result"]
    # Three calls replayed from the disk cache: nothing new billed; the job's cost is
    # what attempt 1 spent.
    assert (result["lm_calls"], result["cache_hits"]) == (3, 3)
    assert result["cost_usd"] == pytest.approx(0.03)
