"""The remote worker against a stub lease-protocol server (tests/stub_server.py).

No fixed sleeps: every wait is on a condition with a deadline.
"""

from __future__ import annotations

import io
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import pytest
from server import pid_alive, wait_for
from stub_server import Call, StubServer, error, lease_lost

from skill_fleet_worker.client import (
    ApiError,
    Backoff,
    HttpClient,
    Lease,
    LeaseLost,
    Unreachable,
)
from skill_fleet_worker.protocol import Invalid, Log, Message, Result, parse_line, read_line
from skill_fleet_worker.worker import (
    INTERRUPTED_ERROR,
    Ending,
    EventQueue,
    Outcome,
    Tail,
    Worker,
)

HERE = Path(__file__).resolve().parent
SRC = HERE.parent / "src"
PROGRAM = [sys.executable, str(HERE / "worker_programs.py")]
FENCE = {"attempt", "lease_token"}


class Sink(io.RawIOBase):
    """The worker's stderr, kept for the test (thread-safe)."""

    def __init__(self) -> None:
        super().__init__()
        self.data = bytearray()
        self.lock = threading.Lock()

    def writable(self) -> bool:
        return True

    def write(self, b: Any) -> int:
        with self.lock:
            self.data.extend(b)
        return len(b)

    def text(self) -> str:
        with self.lock:
            return self.data.decode("utf-8", "replace")


def fast_client(url: str, **kwargs: Any) -> HttpClient:
    kwargs.setdefault("retry_seconds", 15.0)
    return HttpClient(url, backoff=lambda: Backoff(first=0.01, maximum=0.05), **kwargs)


def make_worker(stub: StubServer, tmp_path: Path, *program: str, **kwargs: Any) -> Worker:
    sink = kwargs.pop("output", None) or Sink()
    command = kwargs.pop("command", None) or [*PROGRAM, *program]
    kwargs.setdefault("grace_seconds", 5.0)
    kwargs.setdefault("poll_seconds", 0.01)
    kwargs.setdefault("max_poll_seconds", 0.05)
    client = fast_client(stub.url, log=lambda text: sink.write(f"[client] {text}\n".encode()))
    return Worker(
        client,
        ["evaluation"],
        command,
        name="test-worker",
        work_dir=tmp_path / "work",
        output=sink,
        **kwargs,
    )


def output(worker: Worker) -> str:
    stream = worker.output._stream
    assert isinstance(stream, Sink)
    return stream.text()


def fields(call: Call) -> dict[str, Any]:
    """An event's progress fields, without the fence."""
    assert call.body.keys() >= FENCE, call.body
    return {k: v for k, v in call.body.items() if k not in FENCE}


def merged(calls: list[Call]) -> dict[str, Any]:
    state: dict[str, Any] = {}
    for call in calls:
        state.update({k: v for k, v in fields(call).items() if k != "checkpoint"})
    return state


def no_run_threads_left() -> bool:
    return not [
        t
        for t in threading.enumerate()
        if t.name in ("skill-fleet-heartbeat", "skill-fleet-events") and t.is_alive()
    ]


def once_started(tmp_path: Path, stub: StubServer, answer: Any) -> Any:
    """A handler that answers ``answer`` once the program has set its SIGTERM handler (it
    writes its pid file after), the stub's default before."""
    pid_file = tmp_path / "work" / "job-1" / "pid"

    def handler(call: Call) -> Any:
        if pid_file.is_file() and pid_file.read_text():
            return answer
        return stub.default(call)

    return handler


def program_pid(worker: Worker, job_id: str = "job-1") -> int:
    path = worker.work_dir / job_id / "pid"
    return int(wait_for("the program's pid file", lambda: path.is_file() and path.read_text()))


# -- the line protocol ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("line", "expected"),
    [
        (
            '{"step": "proposing_instructions", "progress": 0.35, "cost_usd": 0.85}',
            Message({"step": "proposing_instructions", "progress": 0.35, "cost_usd": 0.85}),
        ),
        ('{"step": 3}', Message({"step": "3"})),  # a whole number is the same step as "3"
        (
            '  {"checkpoint": {"trial": 3}, "progress": 1}\r',
            Message({"checkpoint": {"trial": 3}, "progress": 1}),
        ),
        (
            '{"result": {"score": 0.84}, "result_path": "out/best.json"}',
            Message(None, Result({"score": 0.84}, "out/best.json")),
        ),
        ('{"result": 1, "progress": 0.5, "trial_id": 17}', Message({"progress": 0.5}, Result(1))),
        ('{"result": null}', Message(None, Result(None, None))),
        ('{"progress": null, "message": "m"}', Message({"message": "m"})),
        ("Loading model...", Log("Loading model...")),
        ("", Log("")),
        ("[1, 2]", Log("[1, 2]")),
        ("{not json", Log("{not json")),
        ('{"hello": "world"}', Log('{"hello": "world"}')),
        ('{"progress": null}', Log('{"progress": null}')),
        ('{"progress": NaN}', Log('{"progress": NaN}')),  # not JSON to the server
        ('{"a": 1} trailing', Log('{"a": 1} trailing')),
    ],
)
def test_lines_are_classified_as_the_server_does(line: str, expected: Any):
    assert parse_line(line) == expected


@pytest.mark.parametrize(
    "line",
    [
        '{"progress": 7}',
        '{"progress": -0.1}',
        '{"cost_usd": -1}',
        '{"progress": "half"}',
        '{"progress": true}',
        '{"metric": "0.5"}',
        '{"step": 1.5}',
        '{"step": false}',
        '{"step": 9223372036854775808}',
        '{"message": 3}',
        '{"result_path": 3}',
        '{"result": {"a": 1}, "progress": 2}',
    ],
)
def test_bad_values_are_invalid_and_skipped(line: str):
    parsed = parse_line(line)
    assert isinstance(parsed, Invalid), parsed
    assert parsed.line == line and parsed.reason


def test_read_line_bounds_huge_lines_and_keeps_a_last_unterminated_one():
    stream = io.BufferedReader(io.BytesIO(b"x" * 100 + b"\nsecond\r\nthird"))  # type: ignore[arg-type]
    assert read_line(stream, limit=10) == b"x" * 10
    assert read_line(stream, limit=10) == b"second"
    assert read_line(stream, limit=10) == b"third"
    assert read_line(stream, limit=10) is None


def test_the_tail_is_bounded_and_cuts_long_lines():
    tail = Tail(max_lines=3)
    for i in range(10):
        tail.push(f"line {i}")
    assert tail.lines() == ["line 7", "line 8", "line 9"]
    assert tail.last(2) == "line 8\nline 9"
    tail.push("é" * 5000)
    assert tail.lines()[-1].endswith("[cut at 4096 bytes]")


# -- the event queue ----------------------------------------------------------------------------


def test_the_queue_merges_progress_behind_a_post_in_flight_and_keeps_durable_ones():
    queue = EventQueue()
    queue.put({"step": "a", "progress": 0.1}, durable=True)
    assert queue.take() == {"step": "a", "progress": 0.1}  # now in flight
    queue.put({"progress": 0.2, "message": "m"}, durable=False)
    queue.put({"progress": 0.3}, durable=False)
    queue.put({"checkpoint": 1}, durable=True)
    queue.put({"checkpoint": 2}, durable=True)  # never merged with another checkpoint
    queue.put({"progress": 0.4}, durable=False)
    queue.put({"metric": 1.0}, durable=False)
    assert queue.merged == 2
    assert not queue.join(timeout=0.01)
    taken = []
    for _ in range(4):
        queue.done()
        item = queue.take()
        assert item is not None
        taken.append(item)
    queue.done()
    assert taken == [
        {"progress": 0.3, "message": "m"},
        {"checkpoint": 1},
        {"checkpoint": 2},
        {"progress": 0.4, "metric": 1.0},
    ]
    assert queue.join(timeout=1)


def test_the_queue_holds_the_reader_back_when_durable_updates_pile_up():
    queue = EventQueue(max_durable=1)
    queue.put({"checkpoint": 1}, durable=True)
    put = threading.Event()

    def second() -> None:
        queue.put({"checkpoint": 2}, durable=True)
        put.set()

    thread = threading.Thread(target=second)
    thread.start()
    assert not put.wait(0.05)  # blocked: one durable update already waits
    assert queue.take() == {"checkpoint": 1}
    assert put.wait(5)
    queue.done()
    assert queue.take() == {"checkpoint": 2}
    queue.close()
    thread.join()
    assert queue.take() is None
    assert queue.put({"progress": 1}, durable=False) is False


# -- the HTTP client ----------------------------------------------------------------------------


def test_the_client_raises_lease_lost_with_the_jobs_attempt_and_status():
    with StubServer() as stub:
        stub.on["heartbeat"] = lambda call: lease_lost(attempt=3, status="queued")
        client = fast_client(stub.url, token="secret")
        with pytest.raises(LeaseLost) as caught:
            client.heartbeat(Lease("job-1", 2, "tok"))
        err = caught.value
        assert (err.http_status, err.code, err.attempt, err.status) == (
            409,
            "lease_lost",
            3,
            "queued",
        )
        [call] = stub.of("heartbeat")
        assert call.body == {"attempt": 2, "lease_token": "tok"}
        assert call.headers["Authorization"] == "Bearer secret"
        assert call.headers["Content-Type"] == "application/json"


def test_a_403_is_forbidden_naming_the_token_and_is_not_retried():
    from skill_fleet_worker import Forbidden

    message = (
        "token `ci` (role read) may not call POST /api/v1/jobs/claim: it needs the worker role"
    )
    with StubServer() as stub:
        stub.on["fail"] = lambda call: error(403, "forbidden", message)
        client = fast_client(stub.url, token="secret")
        with pytest.raises(Forbidden) as caught:
            client.fail(Lease("job-1", 1, "tok"), "boom")
        assert (caught.value.http_status, caught.value.code) == (403, "forbidden")
        assert "`ci` (role read)" in str(caught.value)
        assert isinstance(caught.value, ApiError)
        assert len(stub.of("fail")) == 1


def test_the_client_retries_502_503_504_408_429_but_no_other_error():
    with StubServer() as stub:
        client = fast_client(stub.url)
        lease = Lease("job-1", 1, "tok")
        stub.answer_first(
            "complete",
            [
                error(503, "unavailable"),
                error(502, "bad_gateway"),
                error(504, "timeout"),
                error(429, "slow_down"),
                error(408, "timeout"),
            ],
        )
        job = client.complete(lease, {"score": 1})
        assert job["status"] == "completed"
        bodies = [c.body for c in stub.of("complete")]
        assert len(bodies) == 6 and all(b == bodies[0] for b in bodies)  # same token each time
        for status, code in [
            (400, "bad_request"),
            (404, "not_found"),
            (409, "invalid_transition"),
            (422, "invalid_input"),
            (500, "internal"),
        ]:
            stub.on["fail"] = lambda call, s=status, c=code: error(s, c, "no")
            before = len(stub.of("fail"))
            with pytest.raises(ApiError) as caught:
                client.fail(lease, "boom")
            assert (caught.value.http_status, caught.value.code) == (status, code)
            assert not isinstance(caught.value, LeaseLost)
            assert len(stub.of("fail")) == before + 1  # not retried


def test_the_client_retries_connection_errors_until_its_deadline():
    with socket.socket() as sock:  # a port nothing listens on
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    tries: list[str] = []
    client = fast_client(f"http://127.0.0.1:{port}", retry_seconds=0.3, log=tries.append)
    started = time.monotonic()
    with pytest.raises(Unreachable) as caught:
        client.claim(["evaluation"])
    assert not caught.value.aborted
    assert 0.1 < time.monotonic() - started < 5
    assert len(tries) >= 3 and "retrying" in tries[0]
    abort = threading.Event()
    abort.set()
    with pytest.raises(Unreachable) as caught:
        client.claim(["evaluation"], abort=abort)
    assert caught.value.aborted


def test_backoff_doubles_from_0_2_to_5_seconds_with_jitter():
    backoff = Backoff()
    delays = [backoff.next_delay() for _ in range(8)]
    bases = [0.2, 0.4, 0.8, 1.6, 3.2, 5.0, 5.0, 5.0]
    assert all(base / 2 <= d <= base for d, base in zip(delays, bases, strict=True))


def test_a_claim_returns_none_on_204_and_the_lease_on_200():
    with StubServer(ttl=30, interval=5) as stub:
        client = fast_client(stub.url)
        assert client.claim(["evaluation"], "w1") is None
        stub.add_job("job-9", attempt=2, checkpoint={"done": 1})
        claim = client.claim(["evaluation"], "w1")
        assert claim is not None
        assert (claim.job_id, claim.attempt, claim.lease.token) == ("job-9", 2, "token-job-9-2")
        assert (claim.ttl_seconds, claim.heartbeat_interval_seconds) == (30, 5)
        assert claim.checkpoint == {"done": 1} and "lease_token" not in claim.job
        assert stub.of("claim")[0].body == {"types": ["evaluation"], "worker": "w1"}


# -- running jobs ---------------------------------------------------------------------------------


def test_a_job_runs_to_completion_with_its_progress_checkpoint_and_last_result(tmp_path: Path):
    with StubServer() as stub:
        stub.add_job()
        worker = make_worker(stub, tmp_path, "report")
        outcome = worker.run_once()
        assert outcome is not None and outcome.ending is Ending.COMPLETED, outcome
        assert outcome.exit_code == 0 and outcome.job and outcome.job["status"] == "completed"
        [complete] = stub.of("complete")
        assert complete.body == {
            "result": {"score": 0.75},
            "result_path": "scores.json",
            "attempt": 1,
            "lease_token": "token-job-1-1",
        }
        events = stub.of("events")
        assert all(e.job_id == "job-1" for e in events)
        assert [fields(e)["checkpoint"] for e in events if "checkpoint" in e.body] == [{"done": 2}]
        assert merged(events) == {
            "step": "evaluating",
            "progress": 1.0,
            "cost_usd": 0.01,
            "metric": 0.75,
            "message": "4/4",
        }
        assert not stub.of("fail")
        text = output(worker)
        assert "starting up\n" in text and '{"hello": "world"}\n' in text  # log lines
        assert "a line on stderr\n" in text  # the program's stderr, forwarded
        assert "skipped invalid line (progress must be in 0..=1, got 7)" in text
        assert '"progress": 0.25' not in text  # protocol lines are not echoed
        assert no_run_threads_left()


def test_the_program_gets_the_environment_the_servers_executor_gives(tmp_path: Path):
    with StubServer() as stub:
        stub.add_job("job-7", attempt=2, checkpoint={"done": 3}, metadata={"prompts": ["a"]})
        base = {
            **{k: v for k, v in os.environ.items() if not k.startswith("SKILL_FLEET_")},
            "SKILL_FLEET_TOKEN": "secret",
            "SKILL_FLEET_AUTH_TOKEN": "secret",
            "SKILL_FLEET_CHECKPOINT": "/stale/path",
        }
        worker = make_worker(stub, tmp_path, "env", env=base, cwd=tmp_path)
        outcome = worker.run_once()
        assert outcome is not None and outcome.completed, (outcome, output(worker))
        job_dir = tmp_path / "work" / "job-7"
        facts = json.loads((job_dir / "env.json").read_text())
        assert facts["env"] == {
            "SKILL_FLEET_JOB_ID": "job-7",
            "SKILL_FLEET_JOB_TYPE": "evaluation",
            "SKILL_FLEET_ATTEMPT": "2",
            "SKILL_FLEET_METADATA": str(job_dir / "metadata.json"),
            "SKILL_FLEET_WORK_DIR": str(job_dir),
            "SKILL_FLEET_CHECKPOINT": str(job_dir / "checkpoint.json"),
        }
        assert facts["metadata"] == {"prompts": ["a"]}
        assert facts["checkpoint"] == {"done": 3}
        assert facts["stdin"] == ""  # stdin is closed (/dev/null)
        assert facts["own_group"] is True
        assert facts["cwd"] == str(tmp_path)
        assert stub.of("complete")[0].body["result_path"] == str(job_dir / "env.json")

        # The next attempt on this machine: same directory, no checkpoint (the file of the
        # earlier attempt is removed, not handed over).
        (job_dir / "kept.txt").write_text("from attempt 2")
        stub.add_job("job-7", attempt=3, checkpoint=None)
        outcome = worker.run_once()
        assert outcome is not None and outcome.completed
        facts = json.loads((job_dir / "env.json").read_text())
        assert "SKILL_FLEET_CHECKPOINT" not in facts["env"] and facts["checkpoint"] is None
        assert not (job_dir / "checkpoint.json").exists()
        assert (job_dir / "kept.txt").read_text() == "from attempt 2"


def test_a_non_zero_exit_fails_the_job_with_the_last_stderr_lines(tmp_path: Path):
    with StubServer() as stub:
        stub.add_job()
        worker = make_worker(stub, tmp_path, "fail")
        outcome = worker.run_once()
        assert outcome is not None and outcome.ending is Ending.FAILED
        assert outcome.exit_code == 3
        [fail] = stub.of("fail")
        assert fail.body == {
            "error": "exit status 3: err 3\nerr 4\nerr 5\nerr 6\nerr 7",
            "attempt": 1,
            "lease_token": "token-job-1-1",
        }
        assert not stub.of("complete")


def test_a_program_killed_by_a_signal_fails_the_job_so(tmp_path: Path):
    with StubServer() as stub:
        stub.add_job()
        worker = make_worker(stub, tmp_path, "kill-self")
        outcome = worker.run_once()
        assert outcome is not None and outcome.exit_code == -9
        assert stub.of("fail")[0].body["error"] == "killed by signal 9: about to die"


def test_a_program_that_cannot_start_fails_the_job(tmp_path: Path):
    with StubServer() as stub:
        stub.add_job()
        worker = make_worker(stub, tmp_path, command=[str(tmp_path / "no-such-program")])
        outcome = worker.run_once()
        assert outcome is not None and outcome.ending is Ending.FAILED
        error_text = stub.of("fail")[0].body["error"]
        assert error_text.startswith(f"cannot start `{tmp_path / 'no-such-program'}`:")


def test_every_call_is_retried_on_503_then_succeeds(tmp_path: Path):
    with StubServer(interval=0.05) as stub:
        stub.add_job()
        unavailable = error(503, "unavailable", "disk full: the change was not saved")
        stub.answer_first("claim", [unavailable, error(502, "bad_gateway")])
        stub.answer_first("heartbeat", [unavailable, unavailable])
        stub.answer_first("events", [unavailable, error(504, "gateway_timeout")])
        stub.answer_first("complete", [unavailable, unavailable])
        worker = make_worker(stub, tmp_path, "report")
        outcome = worker.run_once()
        assert outcome is not None and outcome.ending is Ending.COMPLETED, outcome
        assert len(stub.of("claim")) == 3
        completes = stub.of("complete")
        assert len(completes) == 3 and completes[0].body == completes[2].body
        assert merged(stub.of("events"))["progress"] == 1.0
        assert "retrying in" in output(worker)


def test_a_lease_is_as_fresh_as_the_claim_try_that_got_it_not_the_first_try(tmp_path: Path):
    with StubServer(ttl=1.0, interval=0.2) as stub:  # fenced after 0.8 s without an ack
        stub.add_job()
        tries = 40  # at 10..50 ms apart: longer than 0.8 s in all
        stub.answer_first("claim", [error(503, "unavailable")] * tries)
        worker = make_worker(stub, tmp_path, "report")
        outcome = worker.run_once()
        claims = stub.of("claim")
        assert claims[-1].at - claims[0].at > 0.8
        assert outcome is not None and outcome.ending is Ending.COMPLETED, outcome


def test_a_refused_result_fails_the_job_instead_of_retrying(tmp_path: Path):
    with StubServer() as stub:
        stub.add_job()
        stub.on["complete"] = lambda call: error(422, "invalid_input", "result too large")
        worker = make_worker(stub, tmp_path, "report")
        outcome = worker.run_once()
        assert outcome is not None and outcome.ending is Ending.FAILED
        assert len(stub.of("complete")) == 1
        assert "the server refused the result" in stub.of("fail")[0].body["error"]


def test_lease_lost_on_a_heartbeat_stops_the_program_and_writes_nothing_more(tmp_path: Path):
    with StubServer(interval=0.05) as stub:
        stub.add_job()
        stub.on["heartbeat"] = once_started(tmp_path, stub, lease_lost(3, "running"))
        worker = make_worker(stub, tmp_path, "forever", "--quiet")
        outcome = worker.run_once()
        assert outcome is not None and outcome.ending is Ending.LEASE_LOST, outcome
        assert "lease lost (the job is running at attempt 3)" in outcome.detail
        assert (tmp_path / "work" / "job-1" / "terminated").is_file()  # SIGTERM reached it
        pid = int((tmp_path / "work" / "job-1" / "pid").read_text())
        assert not pid_alive(pid)
        assert no_run_threads_left()
        # The 409 was the last word: no heartbeat after it, no event, no complete or fail.
        heartbeats = stub.of("heartbeat")
        assert [c.action for c in stub.calls] == ["claim"] + ["heartbeat"] * len(heartbeats)
        assert not [c for c in stub.calls if c.at > heartbeats[-1].at]


def test_lease_lost_on_an_event_stops_the_program_and_writes_nothing_more(tmp_path: Path):
    with StubServer(ttl=60, interval=30) as stub:  # no heartbeat during the test
        stub.add_job()
        stub.on["events"] = lambda call: lease_lost()
        worker = make_worker(stub, tmp_path, "forever")
        outcome = worker.run_once()
        assert outcome is not None and outcome.ending is Ending.LEASE_LOST, outcome
        assert (tmp_path / "work" / "job-1" / "terminated").is_file()
        assert no_run_threads_left()
        assert [c.action for c in stub.calls] == ["claim", "events"]


def test_stop_true_on_a_heartbeat_stops_the_program_without_complete_or_fail(tmp_path: Path):
    with StubServer(interval=0.05) as stub:
        stub.add_job()

        stop = (
            200,
            {
                "job_id": "job-1",
                "attempt": 1,
                "status": "cancelled",
                "stop": True,
                "reason": "budget exceeded: 0.5 > 0.1",
                "lease_expires_at": None,
            },
        )
        answer = once_started(tmp_path, stub, stop)
        stopped_at: list[int] = []

        def heartbeat(call: Call) -> Any:
            status, body = answer(call)
            if body.get("stop"):
                stopped_at.append(call.index)
            return status, body

        stub.on["heartbeat"] = heartbeat
        worker = make_worker(stub, tmp_path, "forever")
        outcome = worker.run_once()
        assert outcome is not None and outcome.ending is Ending.STOPPED, outcome
        assert outcome.detail == "the job is cancelled: budget exceeded: 0.5 > 0.1"
        # The program exits 0 on SIGTERM: still no complete (the job is cancelled).
        assert outcome.exit_code == 0
        assert (tmp_path / "work" / "job-1" / "terminated").is_file()
        assert not stub.of("complete") and not stub.of("fail")
        # No heartbeat after the one that said stop.
        assert stopped_at == [len(stub.of("heartbeat")) - 1]


def test_an_event_answered_with_a_terminal_status_stops_the_program(tmp_path: Path):
    with StubServer(ttl=60, interval=30) as stub:
        stub.add_job()
        stub.on["events"] = lambda call: (
            202,
            {"job_id": "job-1", "status": "cancelled", "durable": True},
        )
        worker = make_worker(stub, tmp_path, "forever")
        outcome = worker.run_once()
        assert outcome is not None and outcome.ending is Ending.STOPPED
        assert "cancelled" in outcome.detail
        assert not stub.of("complete") and not stub.of("fail")
        assert len(stub.of("events")) == 1


@pytest.mark.parametrize("how", ["503", "hang"])
def test_a_worker_whose_heartbeats_go_unanswered_fences_itself(tmp_path: Path, how: str):
    with StubServer(ttl=1.0, interval=0.2) as stub:
        stub.add_job()
        if how == "503":
            stub.on["heartbeat"] = lambda call: error(503, "unavailable")
        else:
            stub.gate("heartbeat")  # never answered while the test runs
        worker = make_worker(stub, tmp_path, "forever", "--quiet")
        code = worker.run_forever()  # a fenced worker exits non-zero, whatever the mode
        assert code == 1 and worker.fenced
        claimed = stub.of("claim")[-1].at
        text = output(worker)
        assert "no heartbeat acknowledged for 0.8s" in text, text
        assert "job job-1 attempt 1: fenced" in text
        pid_file = tmp_path / "work" / "job-1" / "pid"
        if pid_file.is_file() and pid_file.read_text():  # it may not have got that far
            assert not pid_alive(int(pid_file.read_text()))
        assert not stub.of("complete") and not stub.of("fail") and not stub.of("events")
        # Every heartbeat was sent before the lease (1 s) could have expired.
        assert all(c.at < claimed + 1.0 for c in stub.of("heartbeat"))
        assert len(stub.of("claim")) == 1  # and it did not claim again


def test_a_program_that_ignores_sigterm_is_killed_after_the_grace(tmp_path: Path):
    with StubServer(interval=0.05) as stub:
        stub.add_job()
        stop = (200, {"stop": True, "status": "cancelled", "reason": "by a user"})
        stub.on["heartbeat"] = once_started(tmp_path, stub, stop)
        worker = make_worker(stub, tmp_path, "forever", "--ignore-term", grace_seconds=0.3)
        outcome = worker.run_once()
        assert outcome is not None and outcome.ending is Ending.STOPPED
        assert outcome.exit_code == -signal.SIGKILL
        assert (tmp_path / "work" / "job-1" / "terminated").is_file()
        assert "ignored SIGTERM for 0.3s: killing it" in output(worker)


def test_progress_is_coalesced_behind_a_post_in_flight_checkpoints_and_steps_are_not(
    tmp_path: Path,
):
    with StubServer(ttl=60, interval=30) as stub:
        stub.add_job()
        gate = stub.gate("events")
        worker = make_worker(stub, tmp_path, "coalesce")
        done: list[Outcome | None] = []
        thread = threading.Thread(target=lambda: done.append(worker.run_once()))
        thread.start()
        # The first event is held; the reader has read every line once the last one (a log
        # line, printed in order) is out.
        stub.wait("the first event", lambda: stub.of("events"))
        wait_for("all lines read", lambda: "all printed" in output(worker), timeout=20)
        gate.set()
        thread.join(timeout=30)
        [outcome] = done
        assert outcome is not None and outcome.completed, outcome
        assert [fields(c) for c in stub.of("events")] == [
            {"step": "a", "progress": 0.1},  # in flight while the rest was read
            {"progress": 0.3, "message": "merged away"},
            {"checkpoint": {"n": 1}},
            {"progress": 0.5, "metric": 0.5},
            {"step": "b"},
            {"step": "b", "progress": 0.6},
            {"checkpoint": {"n": 2}, "progress": 0.7},
            {"progress": 0.9, "message": "last"},
        ]
        # Everything was sent before the complete, in order.
        calls = [c.action for c in stub.calls]
        assert calls.index("complete") > max(i for i, a in enumerate(calls) if a == "events")


def test_run_forever_takes_job_after_job_until_stopped(tmp_path: Path):
    with StubServer() as stub:
        stub.add_job("job-1")
        stub.add_job("job-2")
        worker = make_worker(stub, tmp_path, "report")
        codes: list[int] = []
        thread = threading.Thread(target=lambda: codes.append(worker.run_forever()))
        thread.start()
        stub.wait("two completes", lambda: len(stub.of("complete")) == 2)
        stub.wait("polling again", lambda: len(stub.of("claim")) >= 4)  # 204s, backing off
        worker.request_stop()
        thread.join(timeout=10)
        assert codes == [0]
        assert [c.job_id for c in stub.of("complete")] == ["job-1", "job-2"]


def test_request_stop_interrupts_a_run_and_leaves_the_job_to_the_rescue(tmp_path: Path):
    with StubServer() as stub:
        stub.add_job()
        worker = make_worker(stub, tmp_path, "forever")
        done: list[Outcome | None] = []
        thread = threading.Thread(target=lambda: done.append(worker.run_once()))
        thread.start()
        program_pid(worker)
        worker.request_stop(signal.SIGTERM)
        thread.join(timeout=10)
        [outcome] = done
        assert outcome is not None and outcome.ending is Ending.INTERRUPTED
        assert "SIGTERM" in outcome.detail
        assert not stub.of("fail") and not stub.of("complete")


# -- the command line -------------------------------------------------------------------------


def cli(stub: StubServer, tmp_path: Path, *args: str, program: list[str]) -> subprocess.Popen[str]:
    env = {**os.environ, "PYTHONPATH": str(SRC)}
    return subprocess.Popen(
        [
            sys.executable,
            "-m",
            "skill_fleet_worker",
            "worker",
            "--server",
            stub.url,
            "--type",
            "evaluation",
            "--work-dir",
            str(tmp_path / "work"),
            "--poll-seconds",
            "0.05",
            *args,
            "--",
            *PROGRAM,
            *program,
        ],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )


def test_the_cli_runs_one_job_with_once_and_exits_0_when_it_completed(tmp_path: Path):
    with StubServer() as stub:
        stub.add_job()
        process = cli(stub, tmp_path, "--once", "--worker", "box-1", program=["report"])
        out, err = process.communicate(timeout=60)
        assert process.returncode == 0, err
        assert out == ""  # the worker writes to stderr only
        assert "starting up" in err and "job job-1 attempt 1: completed" in err
        assert stub.of("claim")[0].body == {"types": ["evaluation"], "worker": "box-1"}

        stub.add_job("job-2")
        process = cli(stub, tmp_path, "--once", program=["fail"])
        _, err = process.communicate(timeout=60)
        assert process.returncode == 1, err


def test_the_cli_says_how_to_use_it():
    env = {**os.environ, "PYTHONPATH": str(SRC)}
    for args in [
        [],
        ["worker", "--server", "http://127.0.0.1:9", "--type", "evaluation"],
        ["worker", "--type", "evaluation", "--", "true"],
        ["worker", "--server", "ftp://x", "--type", "evaluation", "--", "true"],
    ]:
        env.pop("SKILL_FLEET_URL", None)
        result = subprocess.run(
            [sys.executable, "-m", "skill_fleet_worker", *args],
            capture_output=True,
            text=True,
            env=env,
            timeout=60,
        )
        assert result.returncode == 2, (args, result.stderr)
        assert "usage" in result.stderr, (args, result.stderr)


@pytest.mark.parametrize("fail_on_signal", [False, True])
def test_sigterm_to_the_worker_stops_the_program(tmp_path: Path, fail_on_signal: bool):
    with StubServer() as stub:
        stub.add_job()
        extra = ["--fail-on-signal"] if fail_on_signal else []
        process = cli(stub, tmp_path, *extra, program=["forever"])
        pid_file = tmp_path / "work" / "job-1" / "pid"
        wait_for("the program to start", pid_file.is_file, timeout=30)
        wait_for("the pid", pid_file.read_text, timeout=5)
        process.send_signal(signal.SIGTERM)
        _, err = process.communicate(timeout=30)
        assert process.returncode == 0, err  # the loop ends cleanly on SIGTERM
        assert (tmp_path / "work" / "job-1" / "terminated").is_file()
        assert not pid_alive(int(pid_file.read_text()))
        assert not stub.of("complete")
        if fail_on_signal:
            assert [c.body["error"] for c in stub.of("fail")] == [INTERRUPTED_ERROR]
        else:
            assert not stub.of("fail")  # the lease expires; the server rescues the job
            assert "the job is left to the server's rescue" in err


def test_a_killed_worker_takes_its_program_with_it(tmp_path: Path):
    with StubServer() as stub:
        stub.add_job()
        process = cli(stub, tmp_path, program=["forever"])
        pid = program_pid_file(tmp_path)
        process.kill()
        process.communicate(timeout=30)
        wait_for("the program to die with its worker", lambda: not pid_alive(pid), timeout=10)


def program_pid_file(tmp_path: Path) -> int:
    path = tmp_path / "work" / "job-1" / "pid"
    return int(wait_for("the program's pid", lambda: path.is_file() and path.read_text(), 30))
