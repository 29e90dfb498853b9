"""What every benchmark here shares: the command line and a finished run directory to time.

Each benchmark is run as `python benchmarks/<name>.py`, so this module is imported from the
script's own folder.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from compressor.recipe.sections import load_recipe
from compressor.workflows.pipeline import run_pipeline
from deploy.bench import BenchConfig


def parse_run_args(description: str) -> tuple[argparse.Namespace, Path, dict[str, Any]]:
    """Arguments, the run directory and its report; runs the pipeline first when it has none."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--run-dir", default="runs/default")
    parser.add_argument("--recipe", default=None, help="recipe used if the run must be made")
    parser.add_argument("--batch", default="1,8", help="comma-separated batch sizes")
    parser.add_argument("--iterations", type=int, default=300)
    parser.add_argument("--warmup", type=int, default=30)
    parser.add_argument(
        "--repeats", type=int, default=3, help="independent timed runs (run-to-run CV)"
    )
    parser.add_argument(
        "--threads", type=int, default=None, help="intra-op threads (default: usable CPUs)"
    )
    args = parser.parse_args()
    run_dir = Path(args.run_dir)
    report_path = run_dir / "report.json"
    if not report_path.is_file():
        print(f"no report in {run_dir}: running the pipeline first", file=sys.stderr)
        run_pipeline(load_recipe(args.recipe), run_dir)
    try:
        report = json.loads(report_path.read_text())
    except ValueError:
        sys.exit(f"{report_path} is not valid JSON; rerun `compressor run` or pick another run")
    return args, run_dir, report


def bench_config(args: argparse.Namespace) -> BenchConfig:
    return BenchConfig(
        batch_sizes=tuple(int(b) for b in args.batch.split(",")),
        warmup_iters=args.warmup,
        iterations=args.iterations,
        repeats=args.repeats,
    )
