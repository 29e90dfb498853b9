"""Wall time of the lottery grid: one process against Ray workers, on the same machine, same run.

    python benchmarks/bench_lottery_ray.py                 # the default digits grid (89 cells)
    python benchmarks/bench_lottery_ray.py --seeds 0 --epochs 5      # a third, a third as long
    python benchmarks/bench_lottery_ray.py --workers 4 --threads 2   # another split of cores

Both grids run through the CLI, as a user runs them, one after the other into fresh folders:
`compressor lottery` (one process, the recipe's threads: all cores) and `compressor lottery
--executor ray --workers W --threads T`. Printed: each grid's wall time, the cells' summed
training time (how busy the workers were), the mean absolute per-cell accuracy difference
(the thread counts differ, so float sums and accuracies may differ a little; the test suite
compares equal thread counts, where they are identical), and, from the grid's dependency
structure, the wall time Ray could reach with N GPUs: the driver's schedule simulated with N
slots, each cell lasting its epochs (so never below the longest chain of cells that wait for
each other, dense -> ticket -> LMC twin). That last figure is a model, not a measurement.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

from compressor.workflows.lottery.cells import Cell, plan
from compressor.workflows.lottery.recipes import lottery_recipe
from compressor.workflows.lottery.schedule import dependencies

ROOT = Path(__file__).resolve().parents[1]


def _run(args: list[str]) -> float:
    started = time.perf_counter()
    done = subprocess.run(
        [sys.executable, "-m", "compressor", "lottery", *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
    )
    seconds = time.perf_counter() - started
    if done.returncode != 0:
        sys.exit(f"compressor lottery {' '.join(args)} failed:\n{done.stderr[-3000:]}")
    return seconds


def _cells(out: Path) -> dict[str, dict]:
    return {
        path.parent.name: json.loads(path.read_text())
        for path in sorted((out / "cells").glob("*/result.json"))
    }


def _critical_path(cells: list[Cell], epochs: int) -> int:
    """Epochs along the longest chain of cells that must run one after another."""
    needs = dependencies(cells)
    longest: dict[str, int] = {}
    for cell in cells:  # plan order is a topological order
        before = max((longest[key] for key in needs[cell.key]), default=0)
        longest[cell.key] = before + cell.epochs_to_train(epochs)
    return max(longest.values())


def _simulated_wall(cells: list[Cell], epochs: int, workers: int) -> float:
    """Wall time, in epochs, of the Ray driver's schedule with `workers` slots: whenever a
    slot is free the first cell in plan order whose cells it reads have finished starts.
    Every epoch is taken to cost the same (a dense epoch costs more than a ticket's)."""
    needs = dependencies(cells)
    pending, running, done, now = list(cells), [], set(), 0.0
    while pending or running:
        for cell in list(pending):
            if len(running) >= workers:
                break
            if all(key in done for key in needs[cell.key]):
                pending.remove(cell)
                running.append((now + cell.epochs_to_train(epochs), cell.key))
        running.sort()
        now, key = running.pop(0)
        done.add(key)
    return now


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=None, help="default: 0 1 2")
    parser.add_argument("--epochs", type=int, default=None, help="default: the recipe's 15")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--threads", type=int, default=1, help="CPU threads per Ray worker")
    args = parser.parse_args()

    recipe = lottery_recipe()
    if args.seeds is not None:
        lmc = [s for s in recipe.experiment.lmc_seeds if s in args.seeds] or args.seeds[:1]
        experiment = dataclasses.replace(
            recipe.experiment, seeds=tuple(args.seeds), lmc_seeds=tuple(lmc)
        )
        recipe = dataclasses.replace(recipe, experiment=experiment)
    if args.epochs is not None:
        recipe = dataclasses.replace(
            recipe, train=dataclasses.replace(recipe.train, epochs=args.epochs)
        )
    cells = plan(recipe.experiment)
    epochs = recipe.train.epochs
    total = sum(cell.epochs_to_train(epochs) for cell in cells)
    chain = _critical_path(cells, epochs)
    print(f"grid: {len(cells)} cells, {total} epochs; longest chain {chain} epochs")

    with tempfile.TemporaryDirectory(prefix="bench-lottery-") as tmp:
        base = Path(tmp)
        path = base / "grid.yaml"
        path.write_text(yaml.safe_dump(recipe.to_dict()))
        local = _run([str(path), "--out", str(base / "local")])
        print(f"one process: {local:.0f} s", flush=True)
        ray_args = ["--executor", "ray", "--workers", str(args.workers)]
        ray_args += ["--threads", str(args.threads)]
        on_ray = _run([str(path), "--out", str(base / "ray"), *ray_args])
        print(f"ray, {args.workers} workers x {args.threads} thread(s): {on_ray:.0f} s", flush=True)
        a, b = _cells(base / "local"), _cells(base / "ray")

    assert a.keys() == b.keys() == {cell.key for cell in cells}
    busy_a = sum(r["train_seconds"] for r in a.values())
    busy_b = sum(r["train_seconds"] for r in b.values())
    gaps = [abs(a[k]["accuracy"] - b[k]["accuracy"]) for k in a]
    dense = [a[k]["accuracy"] for k in a if k.startswith("dense-")]
    print(f"cells' training time summed: one process {busy_a:.0f} s, ray {busy_b:.0f} s")
    print(
        f"accuracy: dense mean {100 * statistics.mean(dense):.2f}% (one process); per-cell "
        f"|one process - ray| mean {100 * statistics.mean(gaps):.2f} points, "
        f"max {100 * max(gaps):.2f}, identical in {sum(g == 0 for g in gaps)} of {len(gaps)}"
    )
    print("expected on N GPUs, one cell each (the driver's schedule simulated, not measured):")
    for n in (1, 2, 4, 8, 16, 32):
        wall = _simulated_wall(cells, epochs, n)
        print(f"  N={n:2d}: {wall:5.0f} epoch-times of wall, {total / wall:4.1f}x one GPU")
    print(
        f"WALL TIME: one process {local:.0f} s, ray {args.workers}x{args.threads} {on_ray:.0f} s, "
        f"speed-up {local / on_ray:.2f}x"
    )


if __name__ == "__main__":
    main()
