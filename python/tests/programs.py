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
