#!/usr/bin/env python3
"""A real DSPy optimization that runs offline: capital cities with a scripted, priced LM.

It is an ordinary DSPy program: it knows nothing of skill-fleet. Run it under the server
with ``python -m skill_fleet_worker.dspy run examples/dspy_optimize.py`` (see
``examples/dspy_server.toml``); the runner reports phases, cost, trial scores and the
optimized program. Alone, ``python examples/dspy_optimize.py`` just optimizes and prints.

The LM is ``dspy.utils.DummyLM`` (no model calls) made to look like a paid one: each call
records a cost and token counts in its history entry, as ``dspy.LM`` does from LiteLLM.

Settings (all optional) come from the job's metadata file (``SKILL_FLEET_METADATA``) or
the environment variable ``DSPY_EXAMPLE`` (a JSON object):
``optimizer`` (``bootstrap`` default, ``miprov2``, ``gepa``), ``cost_per_call`` (USD,
default 0.001), ``call_seconds`` (simulated latency, default 0), ``gepa_metric_calls``
(default 60), ``trials`` (MIPROv2, default 3), ``threads`` (default 2).
"""

from __future__ import annotations

import json
import os
import time

import dspy
from dspy.utils.dummies import DummyLM

CAPITALS = {
    "France": "Paris", "Japan": "Tokyo", "Italy": "Rome", "Spain": "Madrid",
    "Germany": "Berlin", "Canada": "Ottawa", "Kenya": "Nairobi", "Peru": "Lima",
    "Egypt": "Cairo", "Norway": "Oslo", "Chile": "Santiago", "India": "New Delhi",
}
# The scripted LM gets these wrong, so scores are below 1.
WRONG = {"Canada": "Toronto", "India": "Mumbai", "Peru": "Cusco"}

# Every output field any signature used here asks for, so one fallback answer parses for
# the optimizers' own prompts (MIPROv2's proposer, GEPA's reflection).
FALLBACK = {
    "answer": "unknown",
    "reasoning": "Recall the capital city of the country.",
    "proposed_instruction": "Given a country, answer with the name of its capital city.",
    "program_description": "The program answers with the capital city of a country.",
    "module_description": "Predicts the capital city of the given country.",
    "observations": "Each example is a country and its capital city.",
    "summary": "Questions ask for the capital city of a country.",
    "new_instruction": "Given a country, answer with the name of its capital city.",
    "shortened_instruction": "Answer with the capital city.",
    "improved_instruction": "Given a country, answer with the name of its capital city.",
}


def settings() -> dict:
    path = os.environ.get("SKILL_FLEET_METADATA")
    data: dict = {}
    if path:
        with open(path, encoding="utf-8") as f:
            data = json.load(f)
    data.update(json.loads(os.environ.get("DSPY_EXAMPLE", "{}")))
    return data


class PricedDummyLM(DummyLM):
    """DummyLM whose history entries carry a cost and token counts, like a paid LM's."""

    def __init__(self, answers, *, cost_per_call: float, call_seconds: float = 0.0, **kwargs):
        super().__init__(answers, **kwargs)
        self.cost_per_call = cost_per_call
        self.call_seconds = call_seconds

    def update_history(self, entry):
        if self.call_seconds:
            time.sleep(self.call_seconds)  # a model that takes its time
        prompt = sum(len(str(m.get("content", ""))) for m in entry.get("messages") or [])
        completion = sum(len(str(o)) for o in entry.get("outputs") or [])
        entry["usage"] = {
            "prompt_tokens": prompt // 4,
            "completion_tokens": completion // 4,
            "total_tokens": (prompt + completion) // 4,
        }
        entry["cost"] = self.cost_per_call
        super().update_history(entry)


def make_lm(config: dict) -> PricedDummyLM:
    answers = {
        f"capital of {country}?": {"answer": WRONG.get(country, capital),
                                   "reasoning": "I know this."}
        for country, capital in CAPITALS.items()
    }
    answers[""] = FALLBACK  # matches any prompt: keep it last
    return PricedDummyLM(
        answers,
        cost_per_call=float(config.get("cost_per_call", 0.001)),
        call_seconds=float(config.get("call_seconds", 0.0)),
    )


def make_reflection_lm(config: dict) -> PricedDummyLM:
    """GEPA's reflection LM: its proposer reads JSON, so this one answers in JSON."""
    answers = {"": {"new_instruction": "Given a country, answer with its capital city only."}}
    return PricedDummyLM(
        answers,
        cost_per_call=float(config.get("cost_per_call", 0.001)),
        call_seconds=float(config.get("call_seconds", 0.0)),
        adapter=dspy.JSONAdapter(),
    )


def dataset() -> list[dspy.Example]:
    return [
        dspy.Example(question=f"What is the capital of {country}?", answer=capital)
        .with_inputs("question")
        for country, capital in CAPITALS.items()
    ]


def exact_match(example, prediction, trace=None, pred_name=None, pred_trace=None):
    return float(example.answer.strip().lower() == str(prediction.answer).strip().lower())


def main() -> dspy.Module:
    config = settings()
    lm = make_lm(config)
    dspy.configure(lm=lm)
    data = dataset()
    trainset, valset = data[:8], data[8:]
    student = dspy.Predict("question -> answer")
    threads = int(config.get("threads", 2))
    name = config.get("optimizer", "bootstrap")

    if name == "bootstrap":
        optimizer = dspy.BootstrapFewShot(metric=exact_match, max_bootstrapped_demos=3,
                                          max_labeled_demos=2)
        program = optimizer.compile(student, trainset=trainset)
    elif name == "miprov2":
        optimizer = dspy.MIPROv2(metric=exact_match, auto=None, num_candidates=2,
                                 max_bootstrapped_demos=1, max_labeled_demos=1,
                                 num_threads=threads, verbose=False)
        program = optimizer.compile(student, trainset=trainset, valset=valset,
                                    num_trials=int(config.get("trials", 3)), minibatch=False)
    elif name == "gepa":
        optimizer = dspy.GEPA(metric=exact_match,
                              max_metric_calls=int(config.get("gepa_metric_calls", 60)),
                              reflection_lm=make_reflection_lm(config), num_threads=threads,
                              reflection_minibatch_size=2, track_stats=False)
        program = optimizer.compile(student, trainset=trainset, valset=valset)
    else:
        raise SystemExit(f"unknown optimizer {name!r}: bootstrap, miprov2 or gepa")

    score = dspy.Evaluate(devset=valset, metric=exact_match, num_threads=threads,
                          display_progress=False)(program)
    print(f"{name}: validation score {score.score}%")
    return program


if __name__ == "__main__":
    main()
