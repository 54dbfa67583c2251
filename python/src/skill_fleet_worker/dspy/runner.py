"""``python -m skill_fleet_worker.dspy run TARGET``: a DSPy program as a skill-fleet job.

TARGET is a script (``my_program.py``, run as ``__main__``) or ``module:function`` (called
with no arguments). The program is not changed: it configures its LM and calls
``optimizer.compile(...)`` as usual. The runner

1. installs the reporter (stdout kept for protocol lines, SIGTERM sets a stop flag);
2. points DSPy's disk cache at ``<work dir>/dspy_cache`` so a resumed attempt replays the
   calls already paid for, and adds :class:`SkillFleetCallback`;
3. runs the program; the optimized program is what a ``module:function`` target returns
   when it is a ``dspy.Module``, else the result of the last outermost ``compile``;
4. saves it with ``program.save(<work dir>/program.json)``, stores that file as the job's
   artifact ``program.json`` and reports it as the result (``result_path`` is
   ``artifact:program.json`` in a job, the file's path in a local run).

On a stop (cancel, budget, time limit, server shutdown: SIGTERM), the run is stopped at the
next DSPy event (GEPA first through its ``gepa.stop`` file), the best program so far is
saved the same way, and the process exits 143.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import json
import os
import runpy
import signal
import sys
import threading
import traceback
from pathlib import Path
from typing import Any

from ..reporter import Reporter

#: Exit status after a requested stop (128 + SIGTERM), as a shell reports it.
STOPPED_EXIT = 143
#: In the work dir: the cumulative cost so far, for the next attempt.
COST_FILE = "skill_fleet_cost.json"
#: The artifact the optimized program is stored as.
PROGRAM_ARTIFACT = "program.json"


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m skill_fleet_worker.dspy",
        description="Run a DSPy program as a skill-fleet job (see the package README).",
    )
    sub = parser.add_subparsers(dest="command", required=True)
    run = sub.add_parser("run", help="run a DSPy program and report its optimization")
    run.add_argument("target", help="path/to/program.py or package.module:function")
    run.add_argument("args", nargs=argparse.REMAINDER, help="arguments for the program")
    run.add_argument("--output", help="where to save the program (default: work dir)")
    run.add_argument(
        "--no-cache",
        action="store_true",
        help="leave DSPy's cache where the program or DSPy puts it",
    )
    run.add_argument(
        "--emit-interval",
        type=float,
        default=0.25,
        help="seconds between cost-only progress lines (default 0.25)",
    )
    run.add_argument(
        "--stop-seconds",
        type=float,
        default=3.0,
        help="time GEPA gets to stop by itself after SIGTERM (default 3)",
    )
    return parser


def main(argv: list[str] | None = None) -> int:
    options = _parser().parse_args(argv)
    reporter = Reporter().install()
    return run(
        reporter,
        options.target,
        options.args,
        output=options.output,
        cache=not options.no_cache,
        emit_interval=options.emit_interval,
        stop_seconds=options.stop_seconds,
    )


def run(
    reporter: Reporter,
    target: str,
    args: list[str] | None = None,
    *,
    output: str | None = None,
    cache: bool = True,
    emit_interval: float = 0.25,
    stop_seconds: float = 3.0,
) -> int:
    """Runs ``target`` under ``reporter``; returns the exit status."""
    context = reporter.context
    context.work_dir.mkdir(parents=True, exist_ok=True)
    try:
        import dspy
    except ImportError:
        print(
            "skill_fleet_worker.dspy needs DSPy: pip install 'skill-fleet-worker[dspy]'",
            file=sys.stderr,
        )
        return 2
    from .callback import SkillFleetCallback, StopRun

    if cache:
        dspy.configure_cache(
            enable_disk_cache=True,
            enable_memory_cache=True,
            disk_cache_dir=str(context.work_dir / "dspy_cache"),
        )
    previous = context.checkpoint if isinstance(context.checkpoint, dict) else {}
    cost_file = context.work_dir / COST_FILE
    base_cost = 0.0
    if context.attempt > 1:
        # The cost of earlier attempts: the checkpoint's, or the cost file's if higher
        # (it also has the calls made after the last checkpoint).
        base_cost = max(_cost(previous), _cost(_read_json(cost_file)))
    callback = SkillFleetCallback(
        reporter,
        emit_interval=emit_interval,
        gepa_soft_stop_seconds=stop_seconds,
        base_cost_usd=base_cost,
    )
    callback.cost_file = cost_file
    if cache:
        callback.cache_dir = str(context.work_dir / "dspy_cache")
    callback.attach()
    finished = threading.Event()
    _escalate_after_soft_stop(reporter, finished, stop_seconds)

    resumed = f", resuming ({previous.get('kind', 'checkpoint')})" if context.resuming else ""
    reporter.progress(
        step="starting",
        progress=0.0,
        cost_usd=callback.total_cost_usd,
        message=f"attempt {context.attempt} (pid {os.getpid()}): {target}{resumed}",
    )

    returned: Any = None
    stopped = False
    status = 0
    try:
        try:
            returned = _run_target(target, args or [])
        finally:
            finished.set()  # no hard stop while the best program is being saved
    except StopRun:
        stopped = True
    except SystemExit as exit_:
        code = exit_.code
        if code not in (None, 0):
            status = code if isinstance(code, int) else 1
            if isinstance(code, str):
                print(code, file=sys.stderr)
    except BaseException:
        if reporter.stop_requested.is_set():
            stopped = True  # interrupted while stopping, whatever DSPy turned it into
            traceback.print_exc()
        else:
            traceback.print_exc()
            return 1
    if status != 0:
        return status
    # A stop the program outlived (GEPA stopped by its stop file, nothing ran after) is a
    # stop too: the server no longer reads stdout, so the summary goes to a file.
    stopped = stopped or reporter.stop_requested.is_set()

    program = returned if isinstance(returned, dspy.Module) else callback.best_so_far()
    result: dict[str, Any] = {
        "optimizer": callback.optimizer,
        "score": callback.final_score if callback.final_score is not None else callback.best_score,
        "best_trial_score": callback.best_score,
        "score_scale": "0..1 (DSPy Evaluate percentages divided by 100)",
        "cost_usd": callback.total_cost_usd,
        "lm_calls": callback.lm_calls,
        "cache_hits": callback.cache_hits,
        "prompt_tokens": callback.prompt_tokens,
        "completion_tokens": callback.completion_tokens,
        "trials": callback.trials,
        "attempt": context.attempt,
        "stopped": stopped,
    }
    if callback.gepa_log_dir is not None:
        result["gepa"] = {
            "log_dir": str(callback.gepa_log_dir),
            "first_iteration": callback.gepa_first_iteration,
            "last_iteration": callback.gepa_iteration,
            "metric_calls_at_start": callback.gepa_metric_calls_at_start,
            "metric_calls_used": callback.gepa_metric_calls,
        }
    path: Path | None = None
    if program is not None:
        path = Path(output) if output else context.work_dir / "program.json"
        path.parent.mkdir(parents=True, exist_ok=True)
        try:
            program.save(str(path))
        except Exception:
            traceback.print_exc()
            path = None
    else:
        print(
            "[skill-fleet] no optimized program to save: the program neither returned a "
            "dspy.Module nor finished an optimizer's compile",
            file=sys.stderr,
        )
    result["program_path"] = None if path is None else str(path)
    result_path: str | None = None if path is None else str(path)
    if stopped:
        # The server no longer reads stdout after a stop: keep the result on disk too.
        summary = context.work_dir / "stopped_result.json"
        summary.write_text(json.dumps(result, indent=2), encoding="utf-8")
        print(
            f"[skill-fleet] stopped; best program so far: {result['program_path']}", file=sys.stderr
        )
        return STOPPED_EXIT
    callback.flush()
    if path is not None:
        try:
            # Stored now (the server, or a remote worker, reads this line before the next):
            # the job's result names the stored copy, which outlives this machine's files.
            result_path = reporter.artifact(path, name=PROGRAM_ARTIFACT)
        except (OSError, ValueError):
            traceback.print_exc()
    reporter.progress(
        step="done", progress=1.0, cost_usd=callback.total_cost_usd, message=_done_message(result)
    )
    reporter.result(result, result_path=result_path)
    return 0


def _cost(state: Any) -> float:
    cost = state.get("cost_usd", 0.0) if isinstance(state, dict) else 0.0
    if isinstance(cost, bool) or not isinstance(cost, (int, float)) or not cost >= 0:
        return 0.0
    return float(cost) if cost != float("inf") else 0.0


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


def _done_message(result: dict[str, Any]) -> str:
    score = result["score"]
    scored = "" if score is None else f", score {score:.3f}"
    return f"{result['optimizer'] or 'program'} done{scored}, ${result['cost_usd']:.4f}"


def _run_target(target: str, args: list[str]) -> Any:
    if ":" in target and not target.endswith(".py"):
        module_name, _, function_name = target.partition(":")
        sys.argv = [module_name, *args]
        module = importlib.import_module(module_name)
        function = getattr(module, function_name)
        return function()
    path = Path(target).resolve()
    sys.argv = [str(path), *args]
    sys.path.insert(0, str(path.parent))
    runpy.run_path(str(path), run_name="__main__")
    return None


def _escalate_after_soft_stop(
    reporter: Reporter, finished: threading.Event, soft_seconds: float
) -> None:
    """After a stop and ``soft_seconds``, raises StopRun in the main thread if still running.

    Callbacks stop the run at the next DSPy event; a main thread that waits in a long call
    with no event (a slow LM request) is interrupted by a second SIGTERM to itself, which
    the handler turns into StopRun.
    """
    from .callback import StopRun

    main = threading.main_thread()

    def escalate() -> None:
        if finished.wait(soft_seconds + 1.0):
            return
        if main.is_alive():
            reporter.escalate = StopRun
            with contextlib.suppress(OSError, ValueError):
                signal.pthread_kill(main.ident or 0, signal.SIGTERM)

    def on_stop() -> None:
        threading.Thread(target=escalate, name="skill-fleet-stop", daemon=True).start()

    reporter.on_stop(on_stop)


if __name__ == "__main__":
    sys.exit(main())
