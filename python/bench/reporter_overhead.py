#!/usr/bin/env python3
"""What the skill-fleet callback costs a DSPy run, and how many lines the reporter writes.

1. A DSPy evaluation of 1,000 examples with DummyLM, without and with
   SkillFleetCallback (its lines drained from a pipe, as the server reads them),
   interleaved and repeated; the ratio of the medians is the overhead (goal: <= 1.05x).
2. Protocol lines per second from one thread and from four, to a drained pipe.

    python python/bench/reporter_overhead.py [--examples 1000] [--repeats 5] [--threads 1]
        [--latency-ms 0] [--lines 200000]
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import threading
import time
from collections.abc import Callable

from skill_fleet_worker import JobContext, Reporter


class Drain:
    """A pipe whose read end a thread empties; ``fd`` is its write end."""

    def __init__(self) -> None:
        self.read_fd, self.fd = os.pipe()
        self.bytes = 0
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        while chunk := os.read(self.read_fd, 1 << 16):
            self.bytes += len(chunk)

    def close(self) -> None:
        os.close(self.fd)
        self.thread.join()
        os.close(self.read_fd)


def evaluation(examples: int, threads: int, latency: float = 0.0) -> Callable[[], float]:
    import dspy
    from dspy.utils.dummies import DummyLM

    class SlowLM(DummyLM):
        def update_history(self, entry):
            time.sleep(latency)  # a model's latency, without a model
            super().update_history(entry)

    lm = SlowLM({"": {"answer": "Paris"}}) if latency else DummyLM({"": {"answer": "Paris"}})
    devset = [
        dspy.Example(question=f"What is the capital of country {i}?", answer="Paris").with_inputs(
            "question"
        )
        for i in range(examples)
    ]
    program = dspy.Predict("question -> answer")
    evaluate = dspy.Evaluate(devset=devset, metric=lambda e, p, t=None: e.answer == p.answer,
                             num_threads=threads, display_progress=False)  # fmt: skip

    def run() -> float:
        lm.history.clear()
        start = time.perf_counter()
        with dspy.context(lm=lm):
            result = evaluate(program)
        elapsed = time.perf_counter() - start
        assert result.score == 100.0, result
        return elapsed

    return run


def overhead(examples: int, repeats: int, threads: int, latency: float) -> None:
    import logging

    import dspy

    from skill_fleet_worker.dspy import SkillFleetCallback

    logging.getLogger("dspy").setLevel(logging.WARNING)
    run = evaluation(examples, threads, latency)
    run()  # warm up imports and caches
    drain = Drain()
    reporter = Reporter(JobContext(), fd=drain.fd)
    callback = SkillFleetCallback(reporter)
    without, empty, with_ = [], [], []
    for _ in range(repeats):
        dspy.settings.callbacks[:] = []
        without.append(run())
        # DSPy's own price of having any callback: a BaseCallback that does nothing.
        dspy.settings.callbacks[:] = [dspy.utils.callback.BaseCallback()]
        empty.append(run())
        dspy.settings.callbacks[:] = []
        callback.attach()
        with_.append(run())
        callback.detach()
    drain.close()
    base, noop, hooked = (statistics.median(x) for x in (without, empty, with_))
    print(f"evaluation of {examples} examples, {threads} thread(s), LM latency "
          f"{latency * 1000:.0f} ms, median of {repeats}:")  # fmt: skip
    print(f"  without callback:      {base:.3f} s   ({examples / base:,.0f} examples/s)")
    print(f"  with a no-op callback: {noop:.3f} s   ({noop / base:.3f}x: DSPy's dispatch)")
    print(f"  with SkillFleetCallback: {hooked:.3f} s ({examples / hooked:,.0f} examples/s)")
    print(f"  ratio: {hooked / base:.3f}x (goal <= 1.05x), {hooked / noop:.3f}x over the no-op; "
          f"{callback.lm_calls} LM calls counted, {reporter.lines_written} lines, "
          f"{drain.bytes} bytes written")  # fmt: skip


def lines_per_second(total: int, writers: int) -> float:
    drain = Drain()
    reporter = Reporter(JobContext(), fd=drain.fd)

    def work(n: int) -> None:
        for i in range(total // writers):
            reporter.progress(progress=i / total, cost_usd=i * 0.001, metric=0.5,
                              message=f"trial {i} of writer {n}")  # fmt: skip

    threads = [threading.Thread(target=work, args=(n,)) for n in range(writers)]
    start = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    elapsed = time.perf_counter() - start
    drain.close()
    return reporter.lines_written / elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--examples", type=int, default=1000)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--lines", type=int, default=200_000)
    parser.add_argument(
        "--latency-ms",
        type=float,
        default=0.0,
        help="simulated LM latency per call (default 0: DummyLM as is)",
    )
    options = parser.parse_args()
    try:
        overhead(options.examples, options.repeats, options.threads,
                 options.latency_ms / 1000)  # fmt: skip
    except ImportError as err:
        print(f"skipping the DSPy part: {err}", file=sys.stderr)
    for writers in (1, 4):
        rate = lines_per_second(options.lines, writers)
        print(f"reporter: {rate:,.0f} protocol lines/s from {writers} thread(s)")


if __name__ == "__main__":
    main()
