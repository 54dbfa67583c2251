#!/usr/bin/env python3
"""A small prompt-optimizer stand-in that speaks the skill-fleet executor protocol.

It does a real (cheap) search: successive halving over the parameters of a toy objective
(temperature, number of few-shot demos, instruction variant), with phases named like a
prompt optimizer's, a simulated cost per model call, a checkpoint after every trial, and
resume from the checkpoint. See docs/PROTOCOL.md.

Protocol in one breath: print one JSON object per line on stdout.
  {"step": ..., "progress": 0..1, "cost_usd": cumulative, "metric": ..., "message": ...}
  {"checkpoint": {...}}                     stored durably; handed back on resume
  {"result": {...}, "result_path": "..."}   the final result
Anything else on stdout is kept as a log line; exit 0 means completed.

Metadata (all optional): trials (default 12), trial_seconds (default 0.4), seed (default 7),
cost_per_call (default 0.002), calls_per_trial (default 25), fail_at_trial (testing aid).
"""

import json
import math
import os
import random
import sys
import time


def emit(**fields):
    print(json.dumps(fields), flush=True)


def load_json(path, default):
    if not path:
        return default
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except (OSError, ValueError) as err:
        print(f"could not read {path}: {err}", file=sys.stderr)
        return default


def objective(params, rng):
    """A noisy toy score in [0, 1]: best near temperature 0.7, 4 demos, variant 'cot'."""
    t, demos, variant = params["temperature"], params["demos"], params["instruction"]
    score = 0.9 - 0.6 * (t - 0.7) ** 2 - 0.015 * (demos - 4) ** 2
    score += {"plain": 0.0, "cot": 0.05, "expert": 0.03}[variant]
    score += rng.gauss(0, 0.01)
    return max(0.0, min(1.0, score))


def main():
    metadata = load_json(os.environ.get("SKILL_FLEET_METADATA"), {})
    checkpoint = load_json(os.environ.get("SKILL_FLEET_CHECKPOINT"), None)
    trials = int(metadata.get("trials", 12))
    trial_seconds = float(metadata.get("trial_seconds", 0.4))
    cost_per_call = float(metadata.get("cost_per_call", 0.002))
    calls_per_trial = int(metadata.get("calls_per_trial", 25))
    fail_at = metadata.get("fail_at_trial")
    rng = random.Random(int(metadata.get("seed", 7)))

    # A log line (not JSON): shows up in `skill-fleet jobs logs`.
    print(f"toy optimizer pid={os.getpid()} attempt={os.environ.get('SKILL_FLEET_ATTEMPT')}", flush=True)

    if checkpoint:
        state = checkpoint
        print(f"resuming at trial {state['trial']} of {trials} (attempt {os.environ.get('SKILL_FLEET_ATTEMPT')})")
    else:
        emit(step="collecting_traces", progress=0.0, message="Collecting traces...")
        time.sleep(trial_seconds)
        candidates = [
            {"temperature": round(rng.uniform(0.0, 1.5), 2), "demos": rng.randint(0, 8),
             "instruction": rng.choice(["plain", "cot", "expert"])}
            for _ in range(max(trials, 2))
        ]
        state = {"trial": 0, "candidates": candidates, "scores": {}, "cost_usd": 0.0,
                 "best": None, "resumed_from": None}
        emit(step="proposing_instructions", progress=0.05, cost_usd=0.0,
             message=f"Proposing instructions... ({len(candidates)} candidates)")
        emit(checkpoint=state)

    if checkpoint:
        state["resumed_from"] = state["trial"]
        emit(step="searching_parameters", message=f"Resumed from trial {state['trial']}")

    # Successive halving: each round scores the surviving candidates with more samples.
    total = trials
    while state["trial"] < total:
        i = state["trial"]
        if fail_at is not None and i == int(fail_at):
            print(f"simulated failure at trial {i}", file=sys.stderr)
            sys.exit(3)
        survivors = sorted(state["candidates"], key=lambda c: -state["scores"].get(json.dumps(c, sort_keys=True), 0.0))
        keep = max(1, math.ceil(len(survivors) / (2 ** (i * 3 // max(total, 1)))))
        candidate = survivors[i % keep]
        time.sleep(trial_seconds)
        score = objective(candidate, rng)
        key = json.dumps(candidate, sort_keys=True)
        state["scores"][key] = max(score, state["scores"].get(key, 0.0))
        state["cost_usd"] = round(state["cost_usd"] + cost_per_call * calls_per_trial, 6)
        if state["best"] is None or score > state["best"]["metric"]:
            state["best"] = {"params": candidate, "metric": round(score, 4)}
        state["trial"] = i + 1
        emit(step="searching_parameters",
             progress=round(0.05 + 0.95 * state["trial"] / total, 4),
             cost_usd=state["cost_usd"],
             metric=state["best"]["metric"],
             message=f"Trial {state['trial']}/{total}: score {score:.3f}")
        emit(checkpoint=state)

    result_path = os.path.join(os.environ.get("SKILL_FLEET_WORK_DIR", "."), "best_program.json")
    with open(result_path, "w", encoding="utf-8") as f:
        json.dump(state["best"], f, indent=2)
    emit(result={"best_params": state["best"]["params"], "metric": state["best"]["metric"],
                 "trials": total, "cost_usd": state["cost_usd"],
                 "resumed_from_trial": state["resumed_from"]},
         result_path=result_path)


if __name__ == "__main__":
    main()
