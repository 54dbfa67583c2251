"""Executor-protocol programs the worker tests run: ``python worker_programs.py NAME [ARGS]``.

Each uses only the standard library and the SKILL_FLEET_* environment, as any program
the server runs would. Files they leave go into ``$SKILL_FLEET_WORK_DIR``.
"""

from __future__ import annotations

import json
import os
import signal
import sys
import time
from pathlib import Path


def emit(**fields: object) -> None:
    print(json.dumps(fields), flush=True)


def work_dir() -> Path:
    return Path(os.environ["SKILL_FLEET_WORK_DIR"])


def write_pid() -> None:
    (work_dir() / "pid").write_text(str(os.getpid()))


def env() -> int:
    """Writes what it was given to env.json and reports it as the result."""
    facts = {
        "env": {k: v for k, v in os.environ.items() if k.startswith("SKILL_FLEET_")},
        "metadata": json.loads(Path(os.environ["SKILL_FLEET_METADATA"]).read_text()),
        "checkpoint": (
            json.loads(Path(os.environ["SKILL_FLEET_CHECKPOINT"]).read_text())
            if "SKILL_FLEET_CHECKPOINT" in os.environ
            else None
        ),
        "stdin": sys.stdin.read() if sys.stdin is not None else None,
        "own_group": os.getpgid(0) == os.getpid(),
        "cwd": os.getcwd(),
    }
    (work_dir() / "env.json").write_text(json.dumps(facts))
    emit(result={"ok": True}, result_path=str(work_dir() / "env.json"))
    return 0


def report() -> int:
    """A little of everything: log lines, progress, a checkpoint, stderr, bad lines, a
    result replaced by a later one."""
    print("starting up")  # a log line
    emit(step="evaluating", progress=0.25, cost_usd=0.01, message="1/4")
    print('{"hello": "world"}')  # an object with no protocol field: a log line
    print('{"progress": 7}')  # invalid: skipped
    emit(checkpoint={"done": 2})
    sys.stderr.write("a line on stderr\n")
    sys.stderr.flush()
    emit(result={"score": 0.1})
    emit(progress=1.0, metric=0.75, message="4/4")
    emit(result={"score": 0.75}, result_path="scores.json")
    return 0


def fail() -> int:
    for i in range(8):
        sys.stderr.write(f"err {i}\n")
    sys.stderr.flush()
    return 3


def kill_self() -> int:
    sys.stderr.write("about to die\n")
    sys.stderr.flush()
    os.kill(os.getpid(), signal.SIGKILL)
    return 0


def forever() -> int:
    """Progress every 20 ms (none with ``--quiet``) until SIGTERM; then writes
    ``terminated`` and exits 0 (or goes on, with ``--ignore-term``)."""
    ignore = "--ignore-term" in sys.argv
    quiet = "--quiet" in sys.argv

    def on_term(signum: int, frame: object) -> None:
        (work_dir() / "terminated").write_text("yes")
        if not ignore:
            sys.exit(0)

    signal.signal(signal.SIGTERM, on_term)
    write_pid()
    if "--artifact" in sys.argv:
        emit(artifact="a.txt")
    i = 0
    while True:
        i += 1
        if not quiet:
            emit(progress=min(i / 10000, 1.0), message=f"tick {i}")
        time.sleep(0.02)


def coalesce() -> int:
    """Lines for the coalescing test; the last one is a log line that says all is out."""
    emit(step="a", progress=0.1)  # a step change: the first POST
    emit(progress=0.2, message="merged away")
    emit(progress=0.3)
    emit(checkpoint={"n": 1})
    emit(progress=0.4, metric=0.5)
    emit(progress=0.5)
    emit(step="b")
    emit(step="b", progress=0.6)  # same step: progress only
    emit(checkpoint={"n": 2}, progress=0.7)
    emit(progress=0.8)
    emit(progress=0.9, message="last")
    emit(result={"done": True})
    print("all printed", flush=True)
    return 0


def artifacts() -> int:
    """Artifacts every way: through the Reporter (inside and outside the work dir), a file
    left in artifacts/, an announced file also left there (stored once), a bad path."""
    from skill_fleet_worker import Reporter

    reporter = Reporter()  # not installed: its lines and emit()'s share stdout, in order
    out = work_dir() / "out"
    out.mkdir(exist_ok=True)
    (out / "small.txt").write_text("small\n")
    reporter.progress(step="writing", progress=0.1)
    reporter.artifact(out / "small.txt")
    outside = Path(sys.argv[2])
    reporter.artifact(outside, name="big.bin", content_type="application/x-test")
    reporter.progress(progress=0.5)
    not_ours = work_dir().parent / "outside.txt"
    not_ours.write_text("not the job's")
    emit(artifact="../outside.txt")  # outside the work dir: skipped with a note
    leftovers = work_dir() / "artifacts"
    (leftovers / "leftover.csv").write_text("a,b\n1,2\n")
    (leftovers / "escape.txt").symlink_to(not_ours)  # leads outside: skipped with a note
    (leftovers / ".partial").write_text("hidden: never stored")
    emit(result={"ok": True}, result_path="artifact:small.txt")
    return 0


def artifact_forever() -> int:
    """As ``forever``, but it announces an artifact once its SIGTERM handler is set."""
    (work_dir() / "a.txt").write_text("a")
    sys.argv.append("--artifact")
    return forever()


def main() -> int:
    name = sys.argv[1]
    programs = {
        "env": env,
        "report": report,
        "fail": fail,
        "kill-self": kill_self,
        "forever": forever,
        "coalesce": coalesce,
        "artifacts": artifacts,
        "artifact-forever": artifact_forever,
    }
    return programs[name]()


if __name__ == "__main__":
    sys.exit(main())
