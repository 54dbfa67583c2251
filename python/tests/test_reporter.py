"""The reporter: exact protocol lines, values refused before they reach the server."""

from __future__ import annotations

import json
import math
import os
import threading
from pathlib import Path

import pytest

from skill_fleet_worker import JobContext, Reporter
from skill_fleet_worker.reporter import MAX_LINE_BYTES


class Pipe:
    """A pipe whose read end is drained by a thread, so writers never block."""

    def __init__(self) -> None:
        self.read_fd, self.write_fd = os.pipe()
        self.data = bytearray()
        self.closed = False
        self.thread = threading.Thread(target=self._drain, daemon=True)
        self.thread.start()

    def _drain(self) -> None:
        with os.fdopen(self.read_fd, "rb") as f:
            while chunk := f.read1(65536):
                self.data.extend(chunk)

    def lines(self) -> list[str]:
        self.close()
        return self.data.decode().splitlines()

    def close(self) -> None:
        if not self.closed:
            self.closed = True
            os.close(self.write_fd)
            self.thread.join()


@pytest.fixture
def pipe_reporter():
    pipe = Pipe()
    yield Reporter(JobContext(), fd=pipe.write_fd), pipe.lines
    pipe.close()


def test_lines_are_exact_json(pipe_reporter):
    reporter, lines = pipe_reporter
    reporter.progress(step="proposing_instructions", progress=0.35, cost_usd=0.85,
                      metric=0.71, message="Trial 7/20")  # fmt: skip
    reporter.progress(step=3)
    reporter.checkpoint({"trial": 7, "best": [0.7, "x"]})
    reporter.progress(progress=1, checkpoint={"done": True})
    reporter.result({"score": 0.84}, result_path=Path("out/best.json"))
    reporter.result(None, result_path="only/a/path.json")
    reporter.log("plain text")
    reporter.log('{"progress": 0.9}')
    assert lines() == [
        '{"step":"proposing_instructions","progress":0.35,"cost_usd":0.85,"metric":0.71,'
        '"message":"Trial 7/20"}',
        '{"step":3}',
        '{"checkpoint":{"trial":7,"best":[0.7,"x"]}}',
        '{"progress":1,"checkpoint":{"done":true}}',
        '{"result":{"score":0.84},"result_path":"out/best.json"}',
        '{"result_path":"only/a/path.json"}',
        "plain text",
        # A log line that would parse as progress is quoted: it stays a log line.
        '"{\\"progress\\": 0.9}"',
    ]


@pytest.mark.parametrize(
    ("fields", "error"),
    [
        ({"progress": 7}, "progress must be in 0..=1"),
        ({"progress": -0.01}, "progress must be in 0..=1"),
        ({"progress": math.nan}, "progress must be finite"),
        ({"progress": "half"}, "progress must be a number"),
        ({"progress": True}, "progress must be a number"),
        ({"cost_usd": -1}, "cost_usd must not be negative"),
        ({"cost_usd": math.inf}, "cost_usd must be finite"),
        ({"metric": math.nan}, "metric must be finite"),
        ({"metric": "0.5"}, "metric must be a number"),
        ({"step": 1.5}, "step must be a string or a whole number"),
        ({"step": False}, "step must be a string or a whole number"),
        ({"message": 3}, "message must be a string"),
        ({"checkpoint": None}, "checkpoint must not be null"),
        ({"checkpoint": {"x": math.nan}}, "cannot write a protocol line"),
        ({"checkpoint": {"x": object()}}, "cannot write a protocol line"),
        ({}, "needs at least one field"),
    ],
)
def test_bad_values_raise_instead_of_being_skipped_by_the_server(pipe_reporter, fields, error):
    reporter, lines = pipe_reporter
    with pytest.raises(ValueError, match=error):
        reporter.progress(**fields)
    assert lines() == []


def test_results_and_lines_are_bounded(pipe_reporter):
    reporter, lines = pipe_reporter
    with pytest.raises(ValueError, match="needs a value or a result_path"):
        reporter.result(None)
    with pytest.raises(ValueError, match="over the server's limit"):
        reporter.checkpoint({"blob": "x" * MAX_LINE_BYTES})
    assert lines() == []


def test_lines_from_many_threads_never_interleave(pipe_reporter):
    reporter, lines = pipe_reporter
    text = "y" * 5000  # past PIPE_BUF: only the lock keeps such lines whole

    def work(n: int) -> None:
        for i in range(50):
            reporter.progress(metric=n * 1000 + i, message=text)

    threads = [threading.Thread(target=work, args=(n,)) for n in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    written = lines()
    assert len(written) == 400
    assert sorted(json.loads(line)["metric"] for line in written) == sorted(
        n * 1000 + i for n in range(8) for i in range(50)
    )


def test_context_from_the_server_environment(tmp_path: Path):
    metadata = tmp_path / "metadata.json"
    metadata.write_text('{"budget_usd": 2.0, "optimizer": "gepa"}')
    checkpoint = tmp_path / "checkpoint.json"
    checkpoint.write_text('{"kind": "gepa_log_dir", "iteration": 4}')
    context = JobContext.from_env({
        "SKILL_FLEET_JOB_ID": "job-1",
        "SKILL_FLEET_JOB_TYPE": "dspy",
        "SKILL_FLEET_ATTEMPT": "2",
        "SKILL_FLEET_METADATA": str(metadata),
        "SKILL_FLEET_CHECKPOINT": str(checkpoint),
        "SKILL_FLEET_WORK_DIR": str(tmp_path),
    })  # fmt: skip
    assert context == JobContext(
        job_id="job-1", job_type="dspy", attempt=2,
        metadata={"budget_usd": 2.0, "optimizer": "gepa"}, metadata_path=metadata,
        checkpoint={"kind": "gepa_log_dir", "iteration": 4}, checkpoint_path=checkpoint,
        work_dir=tmp_path.resolve(),
    )  # fmt: skip
    assert context.under_server and context.resuming


def test_context_outside_the_server_has_local_defaults():
    context = JobContext.from_env({})
    assert not context.under_server and not context.resuming
    assert (context.attempt, context.metadata, context.checkpoint) == (1, {}, None)
    assert context.work_dir == Path("skill-fleet-work").resolve()


@pytest.mark.parametrize(
    ("env", "error"),
    [
        ({"SKILL_FLEET_ATTEMPT": "two"}, "SKILL_FLEET_ATTEMPT must be a whole number"),
        ({"SKILL_FLEET_ATTEMPT": "0"}, "SKILL_FLEET_ATTEMPT must be 1 or more"),
        ({"SKILL_FLEET_METADATA": "/nonexistent/m.json"}, "cannot read SKILL_FLEET_METADATA"),
    ],
)
def test_context_refuses_what_the_server_never_sets(env, error):
    with pytest.raises(ValueError, match=error):
        JobContext.from_env(env)


def test_metadata_must_be_an_object(tmp_path: Path):
    path = tmp_path / "m.json"
    path.write_text("[1, 2]")
    with pytest.raises(ValueError, match="must be a JSON object"):
        JobContext.from_env({"SKILL_FLEET_METADATA": str(path)})


def test_stop_callbacks_run_once(pipe_reporter):
    reporter, _ = pipe_reporter
    calls = []
    reporter.on_stop(lambda: calls.append("early"))
    reporter.request_stop()
    reporter.request_stop()
    reporter.on_stop(lambda: calls.append("late"))
    assert reporter.stop_requested.is_set()
    assert calls == ["early", "late"]
