"""A DSPy callback that reports an optimization run over the executor protocol.

It hooks DSPy's public extension points only:

- ``dspy.utils.callback.BaseCallback`` in ``dspy.settings.callbacks`` (appended in place, and
  put back by a watcher thread if the program later replaces the list; an LM call seen
  twice is counted once, by ``call_id``, and cost is read from each LM's history);
- a ``logging.Handler`` on MIPROv2's logger for its phases and ``Trial n / M`` lines;
- GEPA's own callbacks, added to ``dspy.GEPA(gepa_kwargs=...)`` when its compile starts,
  and GEPA's ``log_dir`` (state, resume, ``gepa.stop`` file) inside the job's work dir.

Everything is guarded by one lock: DSPy fires callbacks from its evaluator threads.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import os
import re
import threading
import time
from collections.abc import Sized
from pathlib import Path
from typing import Any

from dspy.utils.callback import BaseCallback

from ..reporter import Reporter

#: MIPROv2's logger (``dspy/teleprompt/mipro_optimizer_v2.py``).
MIPRO_LOGGER = "dspy.teleprompt.mipro_optimizer_v2"

_TRIAL = re.compile(r"Trial (\d+) / (\d+)")
# MIPROv2's phase banners: (text in the log line, progress, step, message).
_MIPRO_PHASES = (
    ("STEP 1: BOOTSTRAP", 0.0, "bootstrapping_demos", "MIPROv2: bootstrapping few-shot demos"),
    ("STEP 2: PROPOSE", 0.1, "proposing_instructions", "MIPROv2: proposing instructions"),
    ("STEP 3: FINDING", 0.2, "searching_parameters", "MIPROv2: searching parameters"),
)


class StopRun(BaseException):
    """Raised from a callback once the server asked the run to stop.

    A ``BaseException`` on purpose: DSPy catches ``Exception`` from callbacks, from
    evaluated examples and in its optimizers' loops, so only this stops them all.
    """


def _snake(name: str) -> str:
    return re.sub(r"(?<=[a-z0-9])(?=[A-Z])", "_", name).lower()


class SkillFleetCallback(BaseCallback):
    """Turns DSPy events into progress, cost, metric, checkpoint and stop handling."""

    def __init__(
        self,
        reporter: Reporter,
        *,
        emit_interval: float = 0.25,
        gepa_soft_stop_seconds: float = 3.0,
        base_cost_usd: float = 0.0,
    ) -> None:
        self.reporter = reporter
        self.emit_interval = emit_interval
        self.gepa_soft_stop_seconds = gepa_soft_stop_seconds
        self._lock = threading.RLock()
        # LM accounting.
        self._lm_calls: dict[str, Any] = {}
        self._last_entry: dict[int, tuple[Any, Any]] = {}
        self.base_cost_usd = base_cost_usd
        self.cost_usd = 0.0
        self.prompt_tokens = 0
        self.completion_tokens = 0
        self.lm_calls = 0
        self.cache_hits = 0
        # Optimizer phases.
        self._compiles: list[tuple[str, str, Any]] = []  # (call_id, class name, instance)
        self.optimizer: str | None = None
        self.compiled_program: Any = None
        self._student: Any = None
        self._trainset_size = 0
        self._examples_tried = 0
        self._step: str | None = None
        self._progress = 0.0
        self._trial: tuple[int, int] | None = None
        self._mipro_minibatch = True
        #: Score of the last evaluation after the optimizer finished (the program's own).
        self.final_score: float | None = None
        # Scores, always 0..1 (DSPy's Evaluate reports percentages: divided by 100).
        self._evaluations: dict[str, Any] = {}
        self.trials = 0
        self.best_score: float | None = None
        self.best_program: Any = None
        self._gepa_best_candidate: dict[str, str] | None = None
        # GEPA.
        self.gepa_log_dir: Path | None = None
        self.gepa_first_iteration: int | None = None
        self.gepa_iteration = 0
        self.gepa_metric_calls = 0
        self.gepa_metric_calls_at_start: int | None = None
        self._gepa_count = 0
        self._stop_deadline: float | None = None
        self._last_emit = 0.0
        self._handler = _MiproLogHandler(self)
        self._attached = False
        self.watch_interval = 0.5
        self._watcher: threading.Thread | None = None
        self._stop_watching = threading.Event()
        #: DSPy's disk cache directory as the runner configured it (for checkpoints).
        self.cache_dir: str | None = None
        #: Where the cumulative cost is kept for the next attempt (set by the runner).
        self.cost_file: Path | None = None
        self._persisted_cost: float | None = None

    # -- attachment ---------------------------------------------------------------------

    def attach(self) -> SkillFleetCallback:
        """Adds the callback to ``dspy.settings.callbacks`` and MIPROv2's logger."""
        self._ensure_global()
        logger = logging.getLogger(MIPRO_LOGGER)
        if self._handler not in logger.handlers:
            logger.addHandler(self._handler)
        if logger.getEffectiveLevel() > logging.INFO:
            logger.setLevel(logging.INFO)
        self.reporter.on_stop(self._on_stop)
        self._attached = True
        if self._watcher is None:
            self._watcher = threading.Thread(
                target=self._watch, name="skill-fleet-dspy-callbacks", daemon=True
            )
            self._watcher.start()
        return self

    def _watch(self) -> None:
        # A program that replaces the global list (dspy.configure(callbacks=[...])) would
        # silence this callback; put it back within a watch interval. LM cost is not lost
        # meanwhile: history entries are counted from where the last count stopped.
        while not self._stop_watching.wait(self.watch_interval):
            if self._attached:
                self._ensure_global()

    def detach(self) -> None:
        import dspy

        callbacks = dspy.settings.get("callbacks") or []
        if self in callbacks:
            callbacks.remove(self)
        logging.getLogger(MIPRO_LOGGER).removeHandler(self._handler)
        self._attached = False
        self._stop_watching.set()
        if self._watcher is not None:
            self._watcher.join()
            self._watcher = None
        self._stop_watching.clear()

    def _ensure_global(self) -> None:
        import dspy

        callbacks = dspy.settings.get("callbacks")
        if callbacks is None:
            return
        if not any(cb is self for cb in callbacks):
            # Appended in place, not through dspy.configure (which only the thread that
            # configured first may call).
            callbacks.append(self)

    # -- stop ---------------------------------------------------------------------------

    def _on_stop(self) -> None:
        # Runs in the SIGTERM handler: no protocol line, no lock that a writer may hold.
        if self.gepa_log_dir is not None and self._gepa_active():
            with contextlib.suppress(OSError):
                (self.gepa_log_dir / "gepa.stop").touch()
            self._stop_deadline = time.monotonic() + self.gepa_soft_stop_seconds
        else:
            self._stop_deadline = time.monotonic()

    def _gepa_active(self) -> bool:
        return any(name == "GEPA" for _, name, _ in self._compiles)

    def check_stop(self) -> None:
        """Raises :class:`StopRun` once a stop was requested (and GEPA's soft stop is over)."""
        if not self.reporter.stop_requested.is_set():
            return
        deadline = self._stop_deadline
        if deadline is not None and time.monotonic() < deadline and self._gepa_active():
            return  # GEPA is given a moment to stop at its next iteration, by itself
        raise StopRun("the server asked the run to stop")

    # -- LM calls: cost and tokens --------------------------------------------------------

    def on_lm_start(self, call_id: str, instance: Any, inputs: dict[str, Any]) -> None:
        with self._lock:
            if call_id in self._lm_calls:
                return  # seen through both the global and the LM's own callbacks
            self._lm_calls[call_id] = instance
        self.check_stop()

    def on_lm_end(
        self, call_id: str, outputs: dict[str, Any] | None, exception: BaseException | None = None
    ) -> None:
        with self._lock:
            instance = self._lm_calls.pop(call_id, None)
            if instance is None:
                return
            self._count_history(instance)
            self._maybe_emit()

    def _count_history(self, instance: Any) -> None:
        history = getattr(instance, "history", None)
        if not isinstance(history, list):
            return
        key = id(instance)
        known = self._last_entry.get(key)
        last = known[1] if known is not None and known[0] is instance else None
        # Walk back from the end to the last entry counted: usually one step, whatever the
        # length of the history (DSPy keeps up to 10,000 entries per LM).
        fresh: list[Any] = []
        index = len(history) - 1
        while index >= 0:
            try:
                entry = history[index]
            except IndexError:  # trimmed meanwhile by another thread
                break
            if entry is last:
                break
            fresh.append(entry)
            index -= 1
        if not fresh:
            return
        for entry in reversed(fresh):
            self._count_entry(entry)
        self._last_entry[key] = (instance, fresh[0])

    def _count_entry(self, entry: Any) -> None:
        if not isinstance(entry, dict):
            return
        self.lm_calls += 1
        usage = entry.get("usage") or {}
        response = entry.get("response")
        # A cache hit keeps the cost of the call that filled the cache but bills nothing:
        # DSPy marks it on the response (legacy) or leaves its usage empty.
        if getattr(response, "cache_hit", False) or not usage:
            self.cache_hits += 1
            return
        cost = entry.get("cost")
        if isinstance(cost, (int, float)) and math.isfinite(cost) and cost > 0:
            self.cost_usd += float(cost)
        if isinstance(usage, dict):
            self.prompt_tokens += _int(usage.get("prompt_tokens"))
            self.completion_tokens += _int(usage.get("completion_tokens"))

    @property
    def total_cost_usd(self) -> float:
        """Cost of this job so far: earlier attempts (from the checkpoint) plus this one."""
        return round(self.base_cost_usd + self.cost_usd, 10)

    # -- modules: BootstrapFewShot's examples ---------------------------------------------

    def on_module_start(self, call_id: str, instance: Any, inputs: dict[str, Any]) -> None:
        self.check_stop()
        if not self._compiles or self._compiles[0][1] != "BootstrapFewShot":
            return
        from dspy.utils.callback_context import ACTIVE_CALL_ID

        # A module called directly by the outermost compile: one trainset example tried.
        if ACTIVE_CALL_ID.get() != self._compiles[0][0]:
            return
        with self._lock:
            self._examples_tried += 1
            if self._trainset_size:
                self._progress = min(1.0, self._examples_tried / self._trainset_size)
            self._emit(
                message=f"BootstrapFewShot: example {self._examples_tried}/{self._trainset_size}"
            )

    # -- evaluations: trials --------------------------------------------------------------

    def on_evaluate_start(self, call_id: str, instance: Any, inputs: dict[str, Any]) -> None:
        self.check_stop()
        with self._lock:
            self._evaluations[call_id] = inputs.get("program")

    def on_evaluate_end(
        self, call_id: str, outputs: Any | None, exception: BaseException | None = None
    ) -> None:
        with self._lock:
            program = self._evaluations.pop(call_id, None)
            if exception is not None or outputs is None or self._gepa_active():
                return  # GEPA's own callbacks report its scores
            score = getattr(outputs, "score", outputs)
            if isinstance(score, bool) or not isinstance(score, (int, float)):
                return
            if not math.isfinite(score):
                return
            metric = float(score) / 100.0  # Evaluate reports a percentage
            if not self._compiles and self.optimizer is not None:
                # The program evaluates what the optimizer returned: not a trial.
                self.final_score = metric
                self._emit(
                    metric=metric,
                    message=f"evaluation of the optimized program: score {metric:.3f}",
                    force=True,
                )
                return
            self.trials += 1
            label = (
                f"Trial {self._trial[0]}/{self._trial[1]}"
                if self._trial
                else (f"Evaluation {self.trials}")
            )
            if self._trial:
                n, m = self._trial
                self._progress = max(self._progress, 0.2 + 0.8 * min(n, m) / m)
            if self.best_score is None or metric > self.best_score:
                self.best_score = metric
                if program is not None:
                    try:
                        self.best_program = program.deepcopy()
                    except Exception:
                        self.best_program = program
            self._emit(
                metric=metric,
                message=f"{label}: score {metric:.3f} (best {self.best_score:.3f})",
                force=True,
            )
            self._checkpoint_cache()

    # -- compiles: optimizer phases -------------------------------------------------------

    def on_compile_start(self, call_id: str, instance: Any, inputs: dict[str, Any]) -> None:
        self._ensure_global()
        self.check_stop()
        name = type(instance).__name__
        with self._lock:
            outermost = not self._compiles
            self._compiles.append((call_id, name, instance))
            if name == "GEPA":
                self._configure_gepa(instance)
            if not outermost:
                return
            self.optimizer = name
            self._trial = None
            self._mipro_minibatch = bool(inputs.get("minibatch", True))
            self._student = inputs.get("student")
            trainset = inputs.get("trainset")
            self._trainset_size = len(trainset) if isinstance(trainset, Sized) else 0
            self._examples_tried = 0
            self._progress = 0.0
            step = {"BootstrapFewShot": "bootstrapping", "GEPA": "gepa_evaluating_seed"}.get(
                name, _snake(name)
            )
            self._emit(
                step=step,
                message=f"{name}: compiling on {self._trainset_size} examples",
                force=True,
            )
            if name != "GEPA":
                self._checkpoint_cache()

    def on_compile_end(
        self, call_id: str, outputs: Any | None, exception: Exception | None = None
    ) -> None:
        with self._lock:
            index = next(
                (i for i, (cid, _, _) in enumerate(self._compiles) if cid == call_id), None
            )
            if index is None:
                return
            _, name, _ = self._compiles.pop(index)
            if index != 0:
                return
            if exception is None and outputs is not None:
                self.compiled_program = outputs
                self._progress = 1.0
                self._emit(step="compiled", message=f"{name} finished", force=True)

    def _configure_gepa(self, instance: Any) -> None:
        from ..context import JobContext

        context: JobContext = self.reporter.context
        self._gepa_count += 1
        if getattr(instance, "log_dir", None) is None:
            suffix = "" if self._gepa_count == 1 else f"-{self._gepa_count}"
            log_dir = context.work_dir / f"gepa{suffix}"
            log_dir.mkdir(parents=True, exist_ok=True)
            instance.log_dir = str(log_dir)
        self.gepa_log_dir = Path(instance.log_dir)
        stop_file = self.gepa_log_dir / "gepa.stop"
        if stop_file.exists() and not self.reporter.stop_requested.is_set():
            stop_file.unlink()  # left by the stop of an earlier attempt
        kwargs = getattr(instance, "gepa_kwargs", None)
        if isinstance(kwargs, dict):
            callbacks = list(kwargs.get("callbacks") or [])
            if not any(isinstance(cb, GepaCallback) for cb in callbacks):
                callbacks.append(GepaCallback(self))
            kwargs["callbacks"] = callbacks
        if self.reporter.stop_requested.is_set():
            stop_file.touch()

    # -- GEPA events (through GepaCallback) -----------------------------------------------

    def gepa_iteration_start(self, iteration: int) -> None:
        with self._lock:
            if self.gepa_first_iteration is None:
                self.gepa_first_iteration = iteration
            self.gepa_iteration = iteration
            self._emit(step="gepa_search", message=self._gepa_message(), force=True)

    def gepa_budget(self, used: int, delta: int, remaining: int | None) -> None:
        with self._lock:
            if self.gepa_metric_calls_at_start is None:
                self.gepa_metric_calls_at_start = max(0, used - delta)
            self.gepa_metric_calls = used
            if remaining is not None and used + remaining > 0:
                self._progress = min(1.0, used / (used + remaining))
            self._maybe_emit()

    def gepa_valset(self, average: float, candidate: dict[str, str], is_best: bool) -> None:
        with self._lock:
            if not math.isfinite(average):
                return
            self.trials += 1
            if self.best_score is None or average > self.best_score or is_best:
                self.best_score = (
                    average if self.best_score is None else max(average, self.best_score)
                )
                self._gepa_best_candidate = dict(candidate)
            self._emit(
                metric=float(average),
                message=self._gepa_message(f"valset score {average:.3f}"),
                force=True,
            )

    def gepa_state_saved(self, iteration: int, run_dir: str | None) -> None:
        with self._lock:
            self.reporter.checkpoint(self.checkpoint_state(iteration=iteration))

    def _gepa_message(self, extra: str = "") -> str:
        best = "" if self.best_score is None else f" (best {self.best_score:.3f})"
        head = f"GEPA iteration {self.gepa_iteration}, {self.gepa_metric_calls} metric calls"
        return f"{head}{': ' + extra if extra else ''}{best}"

    # -- MIPROv2 log lines ----------------------------------------------------------------

    def mipro_log(self, text: str) -> None:
        with self._lock:
            for marker, progress, step, message in _MIPRO_PHASES:
                if marker in text:
                    self._progress = progress
                    self._emit(step=step, message=message, force=True)
                    return
            if match := _TRIAL.search(text):
                n, m = int(match.group(1)), int(match.group(2))
                if not self._mipro_minibatch:
                    m += 1  # without minibatches, trial 1 is the default program's extra one
                if m > 0:
                    self._trial = (n, m)
                    self._progress = max(self._progress, 0.2 + 0.8 * (min(n, m) - 1) / m)
                    self._emit(message=f"Trial {n}/{m}", force=True)

    # -- lines ----------------------------------------------------------------------------

    def _tokens_text(self) -> str:
        tokens = self.prompt_tokens + self.completion_tokens
        return (
            f"{self.lm_calls} LM calls ({self.cache_hits} cached), {tokens} tokens "
            f"({self.prompt_tokens} in, {self.completion_tokens} out)"
        )

    def _maybe_emit(self) -> None:
        now = time.monotonic()
        if now - self._last_emit >= self.emit_interval:
            self._emit()

    def _emit(
        self,
        *,
        step: str | None = None,
        metric: float | None = None,
        message: str | None = None,
        force: bool = False,
    ) -> None:
        # Called with self._lock held: lines leave in the order their values were made,
        # so the reported cumulative cost never goes down.
        if self.reporter.stop_requested.is_set() and step is None and metric is None:
            return  # the server no longer reads our stdout
        if step is not None and step == self._step:
            step = None  # a step is written once, when it changes
        if step is not None:
            self._step = step
        self._last_emit = time.monotonic()
        if message is not None:
            message = f"{message} · {self._tokens_text()}"
        self._persist_cost()
        self.reporter.progress(
            step=step,
            progress=round(min(1.0, max(0.0, self._progress)), 6),
            cost_usd=self.total_cost_usd,
            metric=metric,
            message=message,
        )

    def _persist_cost(self) -> None:
        # Written before the line that reports it: whatever cost the server has seen, a
        # later attempt starts from at least that, so the job's cost never goes down (a
        # checkpoint alone would miss the calls made after it).
        if self.cost_file is None:
            return
        cost = self.total_cost_usd
        if cost == self._persisted_cost:
            return
        temporary = self.cost_file.with_suffix(".tmp")
        temporary.write_text(json.dumps({"cost_usd": cost, "lm_calls": self.lm_calls}))
        os.replace(temporary, self.cost_file)
        self._persisted_cost = cost

    def flush(self) -> None:
        """Writes the latest cost and progress now."""
        with self._lock:
            self._emit()

    # -- checkpoints and results ----------------------------------------------------------

    def checkpoint_state(self, **extra: Any) -> dict[str, Any]:
        state: dict[str, Any] = {
            "cost_usd": self.total_cost_usd,
            "lm_calls": self.lm_calls,
            "best_score": self.best_score,
            "attempt": self.reporter.context.attempt,
        }
        if self.gepa_log_dir is not None:
            state.update(
                kind="gepa_log_dir",
                log_dir=str(self.gepa_log_dir),
                metric_calls_used=self.gepa_metric_calls,
            )
        else:
            state.update(kind="dspy_cache", cache_dir=self.cache_dir)
        state.update(extra)
        return state

    def _checkpoint_cache(self) -> None:
        if self.gepa_log_dir is None and not self.reporter.stop_requested.is_set():
            self.reporter.checkpoint(self.checkpoint_state())

    def best_so_far(self) -> Any:
        """The best program known now: compiled, else best evaluated, else GEPA's best."""
        if self.compiled_program is not None:
            return self.compiled_program
        if self.best_program is not None:
            return self.best_program
        if self._gepa_best_candidate is not None and self._student is not None:
            program = self._student.deepcopy()
            for name, predictor in program.named_predictors():
                if name in self._gepa_best_candidate:
                    predictor.signature = predictor.signature.with_instructions(
                        self._gepa_best_candidate[name]
                    )
            return program
        return None


class GepaCallback:
    """GEPA's callback protocol (``gepa.core.callbacks.GEPACallback``), forwarded."""

    def __init__(self, owner: SkillFleetCallback) -> None:
        self.owner = owner

    def on_iteration_start(self, event: dict[str, Any]) -> None:
        self.owner.gepa_iteration_start(int(event.get("iteration", 0)))

    def on_budget_updated(self, event: dict[str, Any]) -> None:
        self.owner.gepa_budget(
            int(event.get("metric_calls_used", 0)),
            int(event.get("metric_calls_delta", 0)),
            event.get("metric_calls_remaining"),
        )

    def on_valset_evaluated(self, event: dict[str, Any]) -> None:
        self.owner.gepa_valset(
            float(event.get("average_score", 0.0)),
            dict(event.get("candidate") or {}),
            bool(event.get("is_best_program")),
        )

    def on_state_saved(self, event: dict[str, Any]) -> None:
        self.owner.gepa_state_saved(int(event.get("iteration", 0)), event.get("run_dir"))


class _MiproLogHandler(logging.Handler):
    def __init__(self, owner: SkillFleetCallback) -> None:
        super().__init__(level=logging.INFO)
        self.owner = owner

    def emit(self, record: logging.LogRecord) -> None:
        try:
            self.owner.mipro_log(record.getMessage())
        except StopRun:
            raise
        except Exception:
            self.handleError(record)


def _int(value: Any) -> int:
    return value if isinstance(value, int) and not isinstance(value, bool) else 0
