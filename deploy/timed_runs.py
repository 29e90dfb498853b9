"""The timed phase of a benchmark: independent runs of interleaved, rotated rounds.

One long series gives one median and no idea how far that median would move if measured
again. So the timed phase is split into `repeats` runs; each run is a series of rounds
(every model once, the order rotated each round and the rotation carried across runs), and
each run meets its share of the stopping rule: `iterations / repeats` rounds at least,
`min_seconds / repeats` of timed time per model at least, `max_seconds / repeats` at most.
The spread of the per-run medians is the run-to-run variation (`deploy.stats.run_to_run_cv`).
The garbage collector is paused inside a run, so a collection never lands inside one model's
timed iteration, and runs between runs, so garbage does not pile up over a long phase.
"""

from __future__ import annotations

import gc
import math
import time
from collections.abc import Mapping
from typing import TYPE_CHECKING

import numpy as np

from deploy.runners.base import Runner

if TYPE_CHECKING:
    from deploy.bench import BenchConfig
    from deploy.machine_state import MachineMonitor


def iterations_per_run(iterations: int, repeats: int) -> list[int]:
    """Split `iterations` over `repeats` runs as evenly as possible, at least one each."""
    base, extra = divmod(iterations, repeats)
    return [max(1, base + (1 if run < extra else 0)) for run in range(repeats)]


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
    min_ns = math.ceil(config.min_seconds * 1e9 / config.repeats)
    cap_ns = int(config.max_seconds * 1e9 / config.repeats)
    targets = iterations_per_run(config.iterations, config.repeats)
    if monitor is not None:
        monitor.sample("start")
    rounds_done = 0
    for index, target in enumerate(targets):
        gc.collect()
        timings, rounds_done = _timed_rounds(
            runners, feeds, target, min_ns, cap_ns, first_round=rounds_done
        )
        for name in names:
            runs[name].append(timings[name])
        if monitor is not None:
            monitor.sample("end" if index == len(targets) - 1 else "during")
    return runs


def _timed_rounds(
    runners: Mapping[str, Runner],
    feeds: Mapping[str, dict[str, np.ndarray]],
    rounds: int,
    min_ns: int,
    cap_ns: int,
    *,
    first_round: int,
) -> tuple[dict[str, list[int]], int]:
    """Run rounds until `rounds` are done and every model has `min_ns` of timed time, or
    `cap_ns` of wall time passed; returns the timings and the index of the next round."""
    names = list(runners)
    timings: dict[str, list[int]] = {name: [] for name in names}
    totals = dict.fromkeys(names, 0)
    gc_was_enabled = gc.isenabled()
    gc.disable()
    round_index = first_round
    try:
        started = time.perf_counter_ns()
        while True:
            shift = round_index % len(names)
            for name in names[shift:] + names[:shift]:
                runner, feed = runners[name], feeds[name]
                start = time.perf_counter_ns()
                runner.infer(feed)
                runner.synchronize()
                elapsed = time.perf_counter_ns() - start
                timings[name].append(elapsed)
                totals[name] += elapsed
            round_index += 1
            if round_index - first_round >= rounds and min(totals.values()) >= min_ns:
                break
            if time.perf_counter_ns() - started >= cap_ns:
                break
    finally:
        if gc_was_enabled:
            gc.enable()
    return timings, round_index
