"""The DSPy callback in-process: cost accounting, re-attachment, scores, stop."""

from __future__ import annotations

import json
import os
import threading

import pytest
from server import require_dspy, wait_for
from test_reporter import Pipe

from skill_fleet_worker import JobContext, Reporter


@pytest.fixture
def fleet(tmp_path):
    require_dspy()
    import dspy

    from skill_fleet_worker.dspy import SkillFleetCallback

    pipe = Pipe()
    reporter = Reporter(JobContext(work_dir=tmp_path), fd=pipe.write_fd)
    saved = list(dspy.settings.callbacks)
    callback = SkillFleetCallback(reporter, emit_interval=0.0).attach()
    yield callback, pipe
    pipe.close()
    callback.detach()
    dspy.settings.callbacks[:] = saved


def priced_lm(cost: float = 0.01):
    from dspy.utils.dummies import DummyLM

    class Priced(DummyLM):
        def update_history(self, entry):
            entry["usage"] = {"prompt_tokens": 10, "completion_tokens": 2, "total_tokens": 12}
            entry["cost"] = cost
            super().update_history(entry)

    return Priced({"": {"answer": "Paris"}})


def test_cost_counts_each_call_once_across_copies_and_threads(fleet):
    import dspy

    callback, pipe = fleet
    lm = priced_lm()
    copy = lm.copy(temperature=0.5)  # optimizers copy LMs: a new, empty history
    predict = dspy.Predict("question -> answer")

    def ask(which, n):
        with dspy.context(lm=which):
            for _ in range(n):
                predict(question="capital of France?")

    threads = [threading.Thread(target=ask, args=(lm if i % 2 else copy, 10)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert callback.lm_calls == 40
    assert callback.total_cost_usd == pytest.approx(0.40)
    assert (callback.prompt_tokens, callback.completion_tokens) == (400, 80)
    callback.flush()
    costs = [json.loads(line).get("cost_usd") for line in pipe.lines()]
    costs = [c for c in costs if c is not None]
    assert costs == sorted(costs) and costs[-1] == pytest.approx(0.40)


def test_cache_hits_are_not_billed(fleet):
    callback, _ = fleet

    class Hit:
        cache_hit = True

    class Lm:
        def __init__(self):
            self.history = []

    lm = Lm()
    callback.on_lm_start("a", lm, {})
    lm.history.append({"usage": {"prompt_tokens": 5}, "cost": 0.5, "response": None})
    callback.on_lm_end("a", None)
    callback.on_lm_start("b", lm, {})
    # A hit keeps the cost of the call that filled the cache, with no usage or a flag.
    lm.history.append({"usage": {}, "cost": 0.5, "response": None})
    lm.history.append({"usage": {"prompt_tokens": 5}, "cost": 0.5, "response": Hit()})
    callback.on_lm_end("b", None)
    assert callback.total_cost_usd == pytest.approx(0.5)
    assert (callback.lm_calls, callback.cache_hits) == (3, 2)


def test_a_replaced_callback_list_is_re_attached(fleet):
    import dspy

    callback, _ = fleet
    callback.watch_interval = 0.05
    callback.detach()
    callback.attach()  # restart the watcher with the short interval
    lm = priced_lm()
    predict = dspy.Predict("question -> answer")
    with dspy.context(lm=lm):
        predict(question="capital of France?")
    dspy.settings.callbacks[:] = []  # the program drops every global callback
    with dspy.context(lm=lm):
        predict(question="capital of France?")  # not seen ...
    wait_for("the callback to be back", lambda: callback in dspy.settings.callbacks, 10)
    with dspy.context(lm=lm):
        predict(question="capital of France?")
    # ... but its cost is: the LM's history is counted from where the last count stopped.
    assert callback.lm_calls == 3
    assert callback.total_cost_usd == pytest.approx(0.03)


def test_evaluate_percentages_become_0_to_1_metrics(fleet):
    import dspy

    callback, pipe = fleet
    lm = priced_lm()
    devset = [dspy.Example(question=f"capital of {c}?", answer=a).with_inputs("question")
              for c, a in [("France", "Paris"), ("Italy", "Rome")]]  # fmt: skip
    evaluate = dspy.Evaluate(devset=devset, metric=lambda e, p, t=None: e.answer == p.answer,
                             num_threads=2, display_progress=False)  # fmt: skip
    with dspy.context(lm=lm):
        evaluate(dspy.Predict("question -> answer"))
    lines = [json.loads(line) for line in pipe.lines()]
    assert [line["metric"] for line in lines if "metric" in line] == [0.5]
    assert callback.best_score == 0.5


def test_a_stop_raises_from_the_next_dspy_event(fleet):
    import dspy

    from skill_fleet_worker.dspy import StopRun

    callback, _ = fleet
    callback.reporter.request_stop()
    with dspy.context(lm=priced_lm()), pytest.raises(StopRun):
        dspy.Predict("question -> answer")(question="capital of France?")
    assert os.getpid()  # still here: the stop is an exception, not a kill
