"""Targets for `python -m skill_fleet_worker.dspy run tests.programs:NAME` in the tests."""

from __future__ import annotations

import time


def sleeps_forever() -> None:
    """A main thread that waits with no DSPy event: only the hard stop can end it."""
    print("sleeping", flush=True)
    while True:
        time.sleep(0.05)


def returns_a_program():
    """No optimizer at all: the returned module is the result."""
    import dspy

    program = dspy.Predict("question -> answer")
    program.demos = [dspy.Example(question="capital of France?", answer="Paris")]
    return program


def fails() -> None:
    raise RuntimeError("the program failed")


def cached_calls():
    """Three priced calls through DSPy's cache: a rerun replays them at no cost."""
    import dspy
    from dspy.utils.dummies import DummyLM

    class Priced(DummyLM):
        def update_history(self, entry):
            if entry.get("usage"):  # a replayed call has no usage: nothing billed
                entry["usage"] = {"prompt_tokens": 10, "completion_tokens": 2}
            entry["cost"] = 0.01
            super().update_history(entry)

    lm = Priced({"": {"answer": "Paris"}})
    lm._cache_responses = True  # DummyLM turns DSPy's cache off; a real LM has it on
    dspy.configure(lm=lm)
    program = dspy.Predict("question -> answer")
    for country in ["France", "Italy", "Spain"]:
        program(question=f"capital of {country}?")
    print(f"cache dir: {dspy.cache.disk_cache_dir}")
    return program
