"""Soak: kill `compressor train` with SIGKILL over and over, resume it, count what survives.

    python benchmarks/soak_resume.py [--cycles 50] [--seed 0] [--epochs 40] [--work DIR]

Each cycle resumes the run in progress and kills it: half the time from outside after a
random delay, half the time from inside one of its file writes (a checkpoint, the metrics,
the stored model's weights or spec: mid-data, before the rename or just after it). A run that
finishes anyway is compared with an uninterrupted run of the same seed, and the next cycle
starts a new one. After every kill, every file that was complete before it must still be
there and readable. Printed last: cycles, kills survived, runs finished, runs identical to
the uninterrupted one (weights bit for bit, metrics apart from wall-clock times), files lost.
The same checks, fewer cycles, run in the default tests (tests/compressor/test_crash_resume.py).
"""

from __future__ import annotations

import argparse
import contextlib
import random
import sys
import tempfile
import time
from pathlib import Path

import yaml

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # tests.faults, from a checkout

from compressor.cli import main as compressor_main  # noqa: E402
from tests.faults import (  # noqa: E402
    lost_files,
    random_fault,
    readable_files,
    run_compressor,
    small_training_recipe,
    stale_temporaries,
    training_differences,
)

# What one training run writes, and how often at most in the part a kill leaves to do.
WRITES = {"checkpoint.pt": 3, "metrics.jsonl": 3, "weights.safetensors": 1, "spec.json": 1}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--cycles", type=int, default=50, help="kill/resume cycles")
    parser.add_argument("--seed", type=int, default=0, help="seed of the kill schedule")
    parser.add_argument("--epochs", type=int, default=40, help="epochs of the run being killed")
    parser.add_argument("--work", type=Path, default=None, help="work directory (default: tmp)")
    args = parser.parse_args()
    work = args.work or Path(tempfile.mkdtemp(prefix="soak-"))
    work.mkdir(parents=True, exist_ok=True)
    recipe = work / "recipe.yaml"
    recipe.write_text(yaml.safe_dump(small_training_recipe("soak", args.epochs)))
    with contextlib.redirect_stdout(sys.stderr):
        if compressor_main(["prune", str(recipe), "--out", str(work / "ticket")]) != 0:
            return 1
    reference = run_compressor(_train(work, recipe, work / "reference"))
    if reference.returncode != 0:
        print(reference.stderr, file=sys.stderr)
        return 1
    print(f"uninterrupted run: {reference.seconds:.1f} s (process start included)")

    rng, started = random.Random(args.seed), time.monotonic()
    names = ("killed", "killed_in_write", "finished", "identical", "lost", "torn", "temporaries")
    counts = dict.fromkeys(names, 0)
    generation, before = 0, {}
    out = work / f"run{generation}"
    for cycle in range(1, args.cycles + 1):
        if rng.random() < 0.5:
            how = f"outside after {(delay := rng.uniform(1.0, reference.seconds)):.1f}s"
            outcome = run_compressor(_train(work, recipe, out, resume=True), kill_after=delay)
        else:
            fault = random_fault(rng, WRITES)
            how = f"inside write {fault.nth} of {fault.matching}, {fault.phase}"
            outcome = run_compressor(_train(work, recipe, out, resume=True), fault=fault)
        after = readable_files(out)
        lost = lost_files(before, after)
        torn = [name for name, data in after.items() if data is None]
        counts["lost"] += len(lost)
        counts["torn"] += len(torn)
        if outcome.killed:
            counts["killed"] += 1
            counts["killed_in_write"] += how.startswith("inside")
            state = "killed"
        elif outcome.returncode == 0:
            counts["finished"] += 1
            counts["temporaries"] += len(stale_temporaries(out))
            differences = training_differences(out, work / "reference")
            counts["identical"] += not differences
            state = "finished, " + ("identical" if not differences else "; ".join(differences))
            generation += 1
            out, after = work / f"run{generation}", {}
        else:
            print(outcome.stderr, file=sys.stderr)
            state = f"failed with exit code {outcome.returncode}"
        print(f"cycle {cycle:3d}: {how}: {state}" + (f"; LOST {lost}" if lost else ""))
        before = after
    if out.exists():  # finish the run in progress
        final = run_compressor(_train(work, recipe, out, resume=True))
        if final.returncode == 0:
            counts["finished"] += 1
            counts["identical"] += not training_differences(out, work / "reference")
            counts["temporaries"] += len(stale_temporaries(out))
    minutes = (time.monotonic() - started) / 60
    print(f"work directory: {work}; {minutes:.1f} min")
    print(
        f"soak: {args.cycles} cycles, {counts['killed']} SIGKILLs survived "
        f"({counts['killed_in_write']} inside a file write), "
        f"{counts['finished']} runs finished, {counts['identical']}/{counts['finished']} "
        f"identical to the uninterrupted run, files lost {counts['lost']}, torn files "
        f"{counts['torn']}, temporaries left {counts['temporaries']}"
    )
    ok = counts["lost"] == counts["torn"] == counts["temporaries"] == 0
    return 0 if ok and counts["identical"] == counts["finished"] else 1


def _train(work: Path, recipe: Path, out: Path, resume: bool = False) -> list[str]:
    argv = ["train", str(work / "ticket"), str(recipe), "--out", str(out)]
    return [*argv, "--resume"] if resume else argv


if __name__ == "__main__":
    sys.exit(main())
