"""Stdout hygiene: whatever a program writes, only protocol lines reach the real stdout."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

NOISY = textwrap.dedent(
    """
    import os, subprocess, sys, threading
    from skill_fleet_worker import Reporter
    import tqdm

    reporter = Reporter().install()
    print("a print")
    print("{\\"progress\\": 0.99}")            # looks like protocol: must not be read as such
    sys.stdout.write("no newline, then more")
    os.write(1, b"raw write to fd 1\\n")
    subprocess.run([sys.executable, "-c", "print('from a subprocess'); "
                    "import os; os.write(1, b'subprocess fd 1\\\\n')"], check=True)
    subprocess.run(["sh", "-c", "echo from a shell"], check=True)
    for _ in tqdm.tqdm(range(50), file=sys.stdout):   # a bar on stdout, like DSPy's
        pass
    for _ in tqdm.tqdm(range(50)):
        pass
    def worker(n):
        for i in range(20):
            print(f"thread {n} line {i}")
            reporter.progress(progress=(n * 20 + i) / 100, cost_usd=0.01 * i, message=f"t{n}")
    threads = [threading.Thread(target=worker, args=(n,)) for n in range(4)]
    [t.start() for t in threads]; [t.join() for t in threads]
    reporter.checkpoint({"done": 80})
    reporter.result({"ok": True})
    print("a last print")
    """
)


def run_noisy(tmp_path: Path, env_extra: dict[str, str]) -> subprocess.CompletedProcess[bytes]:
    script = tmp_path / "noisy.py"
    script.write_text(NOISY)
    env = {k: v for k, v in os.environ.items() if not k.startswith("SKILL_FLEET_")}
    env.update(env_extra)
    return subprocess.run([sys.executable, str(script)], stdin=subprocess.DEVNULL,
                          capture_output=True, env=env, timeout=60, check=True)  # fmt: skip


def test_only_protocol_lines_reach_stdout_under_the_server(tmp_path: Path):
    metadata = tmp_path / "metadata.json"
    metadata.write_text("{}")
    done = run_noisy(tmp_path, {
        "SKILL_FLEET_JOB_ID": "job-1", "SKILL_FLEET_JOB_TYPE": "t",
        "SKILL_FLEET_ATTEMPT": "1", "SKILL_FLEET_METADATA": str(metadata),
        "SKILL_FLEET_WORK_DIR": str(tmp_path),
    })  # fmt: skip
    lines = done.stdout.decode().splitlines()
    assert len(lines) == 82
    known = {"step", "progress", "cost_usd", "metric", "message", "checkpoint", "result"}
    for line in lines:
        value = json.loads(line)  # every line is JSON ...
        assert isinstance(value, dict) and value and set(value) <= known, line  # ... protocol
    assert json.loads(lines[-1]) == {"result": {"ok": True}}
    assert json.loads(lines[-2]) == {"checkpoint": {"done": 80}}
    stderr = done.stderr.decode()
    for text in ["a print", '{"progress": 0.99}', "no newline, then more", "raw write to fd 1",
                 "from a subprocess", "subprocess fd 1", "from a shell", "50/50",
                 "thread 3 line 19", "a last print"]:  # fmt: skip
        assert text in stderr, text


def test_outside_the_server_output_stays_on_stdout(tmp_path: Path):
    done = run_noisy(tmp_path, {})
    stdout = done.stdout.decode()
    assert "a print" in stdout and "from a subprocess" in stdout
    assert '{"result":{"ok":true}}' in stdout.splitlines()
