"""The timed phase of a benchmark: independent runs of rotated blocks of iterations.

One long series gives one median and no idea how far that median would move if measured
again. So the timed phase is split into `repeats` runs, and each run meets its share of the
stopping rule: `iterations / repeats` timed iterations per model at least, `min_seconds /
repeats` of timed time per model at least, `max_seconds / repeats` of wall time at most. The
spread of the per-run medians is the run-to-run variation (`deploy.stats.run_to_run_cv`).

Several models share the machine in turns: each round, every model runs one block of
`block_iters` iterations, in an order rotated each round (the rotation carries across runs),
so drift and background load still reach every model alike. When other models are being
timed, a block starts with untimed iterations for `lead_in_seconds` (one at least): the
previous model's intra-op threads keep spinning for a while after its last call (onnxruntime
and OpenMP both spin before they sleep; see `deploy.runners.onnxruntime.SPIN_DURATION_US`)
and its weights fill the caches, and a model timed in the middle of that is slower than it is
on its own. Measured on a 2-core CPU with ResNet-56 variants,
iteration-by-iteration rounds (`block_iters=1`, `lead_in_seconds=0`) put the dense model's
batch-8 median at 8.4-8.9 ms against 2.3-2.4 ms on its own; blocks give what each file gets
alone, within noise (benchmarks/bench_fairness.py checks it on a finished run).

The garbage collector is paused inside a run, so a collection never lands inside one model's
timed iteration, and runs between runs, so garbage does not pile up over a long phase.
"""

from __future__ import annotations

import gc
import math
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from deploy.machine.state import MachineMonitor
from deploy.records import BenchConfig
from deploy.runners.base import Runner


def iterations_per_run(iterations: int, repeats: int) -> list[int]:
    """Split `iterations` over `repeats` runs as evenly as possible, at least one each."""
    base, extra = divmod(iterations, repeats)
    return [max(1, base + (1 if run < extra else 0)) for run in range(repeats)]


def timing_method(config: BenchConfig, models: int) -> dict[str, Any]:
    """How the models were timed, as each record's `details["timing"]` says it (JSON-safe).

    "blocks": turns of `block_iters` iterations per model; "rounds": one iteration per model
    per round (`block_iters` 1 without a lead-in, the method before blocks); "alone": one
    model, nothing to take turns with.
    """
    if models == 1:
        method = "alone"
    elif config.block_iters == 1 and config.lead_in_seconds == 0:
        method = "rounds"
    else:
        method = "blocks"
    return {
        "method": method,
        "models": models,
        "block_iters": config.block_iters,
        "lead_in_seconds": config.lead_in_seconds if models > 1 else 0.0,
        "repeats": config.repeats,
    }


def timed_runs(
    runners: Mapping[str, Runner],
    feeds: Mapping[str, dict[str, np.ndarray]],
    config: BenchConfig,
    monitor: MachineMonitor | None = None,
) -> dict[str, list[list[int]]]:
    """Nanoseconds per timed iteration, per model, per run: {name: [run 1, run 2, ...]}.

    With a `monitor`, the machine is sampled at the start, between runs and at the end.
    """
    names = list(runners)
    runs: dict[str, list[list[int]]] = {name: [] for name in names}
    limits = _Limits(
        min_ns=math.ceil(config.min_seconds * 1e9 / config.repeats),
        cap_ns=int(config.max_seconds * 1e9 / config.repeats),
        block=config.block_iters,
        lead_in_ns=int(config.lead_in_seconds * 1e9) if len(names) > 1 else 0,
    )
    targets = iterations_per_run(config.iterations, config.repeats)
    if monitor is not None:
        monitor.sample("start")
    rounds_done = 0
    for index, target in enumerate(targets):
        gc.collect()
        timings, rounds_done = _timed_blocks(
            runners, feeds, target, limits, first_round=rounds_done
        )
        for name in names:
            runs[name].append(timings[name])
        if monitor is not None:
            monitor.sample("end" if index == len(targets) - 1 else "during")
    return runs


@dataclass(frozen=True, kw_only=True)
class _Limits:
    """The stopping rule of one run and the shape of its blocks."""

    min_ns: int  # timed time per model, at least
    cap_ns: int  # wall time of the run, at most
    block: int  # timed iterations per model per turn
    lead_in_ns: int  # untimed iterations at the start of each turn for this long (0: none)


def _timed_blocks(
    runners: Mapping[str, Runner],
    feeds: Mapping[str, dict[str, np.ndarray]],
    target: int,
    limits: _Limits,
    *,
    first_round: int,
) -> tuple[dict[str, list[int]], int]:
    """Run rounds of blocks until every model has `target` timed iterations and `min_ns` of
    timed time, or `cap_ns` of wall time passed (each model still gets one iteration per
    block); returns the timings and the index of the next round.

    The last block before `target` is cut short, so a run times exactly `target` iterations
    per model unless `min_ns` asks for more.
    """
    names = list(runners)
    timings: dict[str, list[int]] = {name: [] for name in names}
    totals = dict.fromkeys(names, 0)
    gc_was_enabled = gc.isenabled()
    gc.disable()
    round_index = first_round
    try:
        started = time.perf_counter_ns()
        while True:
            done = min(len(t) for t in timings.values())
            size = min(limits.block, target - done) if done < target else limits.block
            shift = round_index % len(names)
            for name in names[shift:] + names[:shift]:
                runner, feed = runners[name], feeds[name]
                _lead_in(runner, feed, limits.lead_in_ns)
                for _ in range(size):
                    start = time.perf_counter_ns()
                    runner.infer(feed)
                    runner.synchronize()
                    elapsed = time.perf_counter_ns() - start
                    timings[name].append(elapsed)
                    totals[name] += elapsed
                    if time.perf_counter_ns() - started >= limits.cap_ns:
                        break
            round_index += 1
            done = min(len(t) for t in timings.values())
            if done >= target and min(totals.values()) >= limits.min_ns:
                break
            if time.perf_counter_ns() - started >= limits.cap_ns:
                break
    finally:
        if gc_was_enabled:
            gc.enable()
    return timings, round_index


def _lead_in(runner: Runner, feed: dict[str, np.ndarray], duration_ns: int) -> None:
    """Untimed iterations for `duration_ns` (one at least; none for 0), while the threads of
    the model timed before go idle and this model's weights come back into the caches."""
    if duration_ns <= 0:
        return
    started = time.perf_counter_ns()
    while True:
        runner.infer(feed)
        runner.synchronize()
        if time.perf_counter_ns() - started >= duration_ns:
            return
