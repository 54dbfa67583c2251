"""DSPy optimizations run by the real server through the runner, the program unchanged."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
from server import Server, dspy_config, pid_alive, require_dspy, wait_for

STEPS = {
    "bootstrap": {"starting", "bootstrapping", "compiled", "done"},
    "miprov2": {
        "starting",
        "miprov2",
        "bootstrapping_demos",
        "proposing_instructions",
        "searching_parameters",
        "compiled",
        "done",
    },
    "gepa": {"starting", "gepa_evaluating_seed", "gepa_search", "compiled", "done"},
}
OPTIMIZER = {"bootstrap": "BootstrapFewShot", "miprov2": "MIPROv2", "gepa": "GEPA"}


def load_program(path: str):
    import dspy

    program = dspy.Predict("question -> answer")
    program.load(path)
    return program


def runner_pid(server: Server, job_id: str) -> int:
    def started() -> int | None:
        for record in server.history(job_id):
            match = re.search(r"\(pid (\d+)\)", record.get("message") or "")
            if match:
                return int(match.group(1))
        return None

    return wait_for("the runner's start line", started, timeout=60)


@pytest.mark.parametrize("optimizer", ["bootstrap", "miprov2", "gepa"])
def test_optimization_job_completes_with_steps_cost_metric_and_program(
    dspy_server: Server, optimizer: str
):
    job_id = dspy_server.create_job("dspy", {"optimizer": optimizer, "gepa_metric_calls": 30})
    job = dspy_server.wait_status(job_id, {"completed", "failed", "cancelled"})
    assert job["status"] == "completed", (job, dspy_server.logs(job_id))

    history = dspy_server.history(job_id)
    steps = {r["step"] for r in history if r["step"]}
    assert STEPS[optimizer] <= steps, steps
    costs = [r["cost_usd"] for r in history]
    assert costs == sorted(costs), "the cumulative cost went down"
    assert costs[-1] > 0

    result = job["result"]
    assert result["optimizer"] == OPTIMIZER[optimizer]
    assert result["cost_usd"] == pytest.approx(costs[-1])
    assert result["cost_usd"] == pytest.approx(result["lm_calls"] * 0.001)
    assert result["score"] == pytest.approx(0.75)  # 3 of 4 validation answers are right
    # The saved program is stored as the job's artifact program.json, which the result names
    # (test_server_artifacts.py downloads it).
    assert job["result_path"] == "artifact:program.json"
    assert Path(result["program_path"]).is_file()
    saved = json.loads(Path(result["program_path"]).read_text())
    assert "metadata" in saved
    load_program(result["program_path"])  # a DSPy program loads it

    if optimizer == "miprov2":
        # One metric per trial (DSPy's percentage turned into 0..1), with its trial number.
        trials = [r for r in history if (r["message"] or "").startswith("Trial ")
                  and r["metric"] is not None and "score" in r["message"]]  # fmt: skip
        assert len(trials) >= 3, [r["message"] for r in history]
        assert all(0 <= r["metric"] <= 1 for r in trials)
        assert result["trials"] >= 3
        assert "tokens" in trials[-1]["message"]
    if optimizer == "gepa":
        assert result["gepa"]["log_dir"].endswith("/gepa")
        assert (Path(result["gepa"]["log_dir"]) / "gepa_state.bin").is_file()
        assert result["gepa"]["first_iteration"] == 1


def test_a_budget_below_the_cost_cancels_and_stops_the_run(dspy_server: Server):
    job_id = dspy_server.create_job("dspy", {
        "optimizer": "gepa", "gepa_metric_calls": 400, "call_seconds": 0.01,
        "budget_usd": 0.03,
    })  # fmt: skip
    pid = runner_pid(dspy_server, job_id)
    job = dspy_server.wait_status(job_id, {"completed", "failed", "cancelled"})
    assert job["status"] == "cancelled", job
    assert "budget exceeded" in (job["error"] or ""), job
    # The process is gone on its own: it wrote its summary on the way out, which a SIGKILL
    # after the 10 s grace would not have let it do.
    wait_for("the runner to exit", lambda: not pid_alive(pid), timeout=15)
    work = dspy_server.root / "data" / "jobs" / job_id
    stopped = json.loads((work / "stopped_result.json").read_text())
    assert stopped["stopped"] is True
    assert stopped["program_path"] and Path(stopped["program_path"]).is_file()
    load_program(stopped["program_path"])
    # GEPA stopped through its stop file and left its state for a resume.
    assert (work / "gepa" / "gepa.stop").exists()
    assert (work / "gepa" / "gepa_state.bin").is_file()


def test_sigkill_of_the_server_resumes_gepa_where_it_stopped(tmp_path: Path):
    require_dspy()
    server = Server(tmp_path / "server", dspy_config()).start()
    try:
        job_id = server.create_job("dspy", {
            "optimizer": "gepa", "gepa_metric_calls": 80, "call_seconds": 0.02,
        })  # fmt: skip

        def far_enough() -> dict | None:
            checkpoint = server.job(job_id)["checkpoint"]
            if checkpoint and checkpoint.get("iteration", 0) >= 4:
                return dict(checkpoint)
            return None

        checkpoint = wait_for("GEPA to save its state a few times", far_enough, timeout=90)
        assert checkpoint["kind"] == "gepa_log_dir"
        first_pid = runner_pid(server, job_id)
        server.kill()
        wait_for("the runner to die with the server", lambda: not pid_alive(first_pid), 10)

        server.start()
        job = server.wait_status(job_id, {"completed", "failed", "cancelled"}, timeout=120)
        assert job["status"] == "completed", (job, server.logs(job_id))
        assert job["attempt"] == 2
        result = job["result"]
        assert result["attempt"] == 2
        gepa = result["gepa"]
        # GEPA read its state from the log dir: it went on from the iteration it had
        # saved, with the metric calls already spent, not from zero.
        assert gepa["first_iteration"] >= checkpoint["iteration"], gepa
        assert gepa["metric_calls_at_start"] >= checkpoint["metric_calls_used"] > 0, gepa
        assert gepa["metric_calls_used"] <= 80 + 8
        # The cost of attempt 1 (from its checkpoint) is carried on: it never went down.
        costs = [r["cost_usd"] for r in server.history(job_id)]
        assert costs == sorted(costs)
        assert result["cost_usd"] >= checkpoint["cost_usd"]
    finally:
        server.stop()


def test_a_cancel_stops_miprov2_between_calls_and_keeps_the_best_trial(dspy_server: Server):
    job_id = dspy_server.create_job("dspy", {
        "optimizer": "miprov2", "trials": 60, "call_seconds": 0.02,
    })  # fmt: skip
    pid = runner_pid(dspy_server, job_id)

    def scored_trials() -> bool:
        return any(r["metric"] is not None for r in dspy_server.history(job_id))

    wait_for("a scored trial", scored_trials, timeout=90)
    status, body = dspy_server.request("POST", f"/api/v1/jobs/{job_id}/cancel")
    assert status == 200, body
    wait_for("the runner to exit", lambda: not pid_alive(pid), timeout=15)
    job = dspy_server.job(job_id)
    assert job["status"] == "cancelled"
    work = dspy_server.root / "data" / "jobs" / job_id
    stopped = json.loads((work / "stopped_result.json").read_text())
    assert stopped["stopped"] is True and stopped["optimizer"] == "MIPROv2"
    assert stopped["best_trial_score"] == pytest.approx(0.75)
    load_program(stopped["program_path"])  # the best trial's program, saved on the way out
    assert "StopRun" not in "\n".join(dspy_server.logs(job_id)["stderr"])  # a clean stop


def test_the_example_server_config_is_accepted(tmp_path: Path):
    from server import REPO

    config = (REPO / "examples" / "dspy_server.toml").read_text()
    server = Server(tmp_path / "server", config).start()
    try:
        status, _ = server.request("GET", "/healthz")
        assert status == 200
    finally:
        server.stop()
