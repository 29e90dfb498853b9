"""Is the pipeline's side-by-side latency what each file gets alone? Pass/fail, printed last.

    python benchmarks/bench_fairness.py --run-dir runs/default [--retime] [--rounds 3]

For a finished `compressor run` directory: for each variant (dense, ticket, shrunk) and batch
size, the pipeline's onnxruntime FP32 p50 (from the run's latency.json), the p50 of the same
model.onnx timed alone in a fresh process (`deploy bench` with the run's threads, warm-up,
iterations and repeats; one file at a time), and their ratio; then each variant's speed-up
over dense both ways and their relative difference. It passes when every ratio is within
0.8-1.25 and every speed-up within 25% of the stand-alone one, and exits 1 otherwise.

--retime times the run's files side by side again now, with the pipeline's method as it is
today (`deploy.bench.benchmark_side_by_side`), and judges those figures instead of the stored
ones: a run made before a change of method can be compared. --rounds repeats the alone and
side-by-side timings in turn and takes the median of each, so load from other jobs reaches
both alike; the load average is printed beside the figures.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from deploy.bench import BenchConfig, LatencyRecord, benchmark_side_by_side
from deploy.results.files import read_results
from deploy.runners import OnnxRuntimeRunner

VARIANTS = ("dense", "ticket", "shrunk")
RATIO_RANGE = (0.8, 1.25)  # side-by-side p50 / alone p50
SPEEDUP_TOLERANCE = 0.25  # |side-by-side speed-up / alone speed-up - 1|

Key = tuple[str, int]  # (variant, batch)


def main() -> int:
    args = _parse_args()
    run_dir = Path(args.run_dir)
    stored = _stored_records(run_dir, args.batch)
    first = next(iter(stored.values()))
    threads = args.threads or first.threads or 1
    config = BenchConfig(
        batch_sizes=tuple(sorted({batch for _, batch in stored})),
        warmup_iters=args.warmup if args.warmup is not None else first.warmup_iters,
        iterations=args.iterations or first.iterations,
        repeats=args.repeats or first.runs or 1,
    )
    files = {variant: run_dir / variant / "model.onnx" for variant in VARIANTS}
    print(
        f"run {run_dir}: {', '.join(files)}; batch {', '.join(map(str, config.batch_sizes))}; "
        f"{threads} threads, {config.warmup_iters} warm-up, {config.iterations} iterations "
        f"in {config.repeats} runs; {_load()}"
    )
    print(f"the run was timed with: {_method(first)}")
    started = time.perf_counter()
    alone: dict[Key, list[float]] = {key: [] for key in stored}
    now: dict[Key, list[float]] = {key: [] for key in stored}
    timing = None
    for round_index in range(args.rounds):
        for variant, path in files.items():
            for record in _alone(path, variant, config, threads):
                alone[(variant, record.batch)].append(record.p50_ms)
        if args.retime:
            runners = {v: OnnxRuntimeRunner(p, threads=threads) for v, p in files.items()}
            for record in benchmark_side_by_side(runners, config):
                now[(record.model, record.batch)].append(record.p50_ms)
                timing = record.details.get("timing")
        print(f"round {round_index + 1}/{args.rounds} done, {_load()}", file=sys.stderr)
    if args.retime:
        print(f"re-timed side by side now with: {_method_text(timing)}")
    together = (
        {key: statistics.median(values) for key, values in now.items()}
        if args.retime
        else {key: record.p50_ms for key, record in stored.items()}
    )
    alone_p50 = {key: statistics.median(values) for key, values in alone.items()}
    ok = _print_table(stored, together, alone_p50, args.retime)
    ok = _print_speedups(together, alone_p50, config.batch_sizes) and ok
    print(f"\nwall time {time.perf_counter() - started:.0f} s; {_load()}")
    label = "side by side now" if args.retime else "pipeline"
    if ok:
        print(
            f"PASS: every {label}/alone ratio within {RATIO_RANGE[0]}-{RATIO_RANGE[1]} and every "
            f"speed-up within {SPEEDUP_TOLERANCE:.0%} of the stand-alone one"
        )
        return 0
    print(
        f"FAIL: a {label}/alone ratio outside {RATIO_RANGE[0]}-{RATIO_RANGE[1]} or a speed-up "
        f"more than {SPEEDUP_TOLERANCE:.0%} from the stand-alone one (marked * above)"
    )
    return 1


def _parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--run-dir", required=True, help="a finished `compressor run` directory")
    parser.add_argument(
        "--retime", action="store_true", help="time the files side by side again now"
    )
    parser.add_argument(
        "--rounds", type=int, default=1, help="alone/side-by-side timings in turn (median)"
    )
    parser.add_argument("--batch", default="1,8", help="comma-separated batch sizes")
    parser.add_argument("--threads", type=int, default=None, help="default: the run's")
    parser.add_argument("--warmup", type=int, default=None, help="default: the run's")
    parser.add_argument("--iterations", type=int, default=None, help="default: the run's")
    parser.add_argument("--repeats", type=int, default=None, help="default: the run's")
    args = parser.parse_args()
    if args.rounds < 1:
        parser.error("--rounds must be at least 1")
    return args


def _stored_records(run_dir: Path, batch_text: str) -> dict[Key, LatencyRecord]:
    """The run's onnxruntime FP32 CPU records of each variant at the asked batch sizes."""
    path = run_dir / "latency.json"
    if not path.is_file():
        sys.exit(f"{path} not found: give a finished `compressor run` directory")
    batches = tuple(int(b) for b in batch_text.split(","))
    stored = {
        (r.model, r.batch): r
        for r in read_results(path).records
        if r.backend == "onnxruntime" and r.precision == "fp32" and r.device == "cpu"
        and r.model in VARIANTS and r.batch in batches
    }  # fmt: skip
    missing = [f"{v} batch {b}" for v in VARIANTS for b in batches if (v, b) not in stored]
    if "dense" in {v for v, _ in stored} and not missing:
        return stored
    sys.exit(f"{path} has no onnxruntime fp32 record for {', '.join(missing)}; pass --batch")


def _alone(path: Path, name: str, config: BenchConfig, threads: int) -> list[LatencyRecord]:
    """`deploy bench` on one file in a fresh process: what the file gets on its own."""
    with tempfile.TemporaryDirectory() as tmp:
        output = Path(tmp) / "alone.json"
        command = [
            sys.executable, "-m", "deploy", "bench", str(path), "--name", name,
            "--batch", ",".join(map(str, config.batch_sizes)), "--threads", str(threads),
            "--warmup", str(config.warmup_iters), "--iterations", str(config.iterations),
            "--repeats", str(config.repeats), "--power", "none", "--output", str(output),
        ]  # fmt: skip
        done = subprocess.run(command, capture_output=True, text=True, check=False)
        if done.returncode != 0:
            sys.exit(f"deploy bench {path} failed ({done.returncode}): {done.stderr.strip()}")
        return list(read_results(output).records)


def _print_table(
    stored: dict[Key, LatencyRecord],
    together: dict[Key, float],
    alone: dict[Key, float],
    retime: bool,
) -> bool:
    ok = True
    header = "variant  batch  run's p50 ms  " + ("side by side now  " if retime else "")
    print(f"\n{header}alone p50 ms  ratio")
    for key in sorted(stored, key=lambda k: (k[1], VARIANTS.index(k[0]))):
        variant, batch = key
        ratio = together[key] / alone[key]
        good = RATIO_RANGE[0] <= ratio <= RATIO_RANGE[1]
        ok = ok and good
        now = f"{together[key]:>17.3f}  " if retime else ""
        print(
            f"{variant:<7}  {batch:>5}  {stored[key].p50_ms:>12.3f}  {now}{alone[key]:>12.3f}  "
            f"{ratio:5.2f}{'' if good else ' *'}"
        )
    return ok


def _print_speedups(
    together: dict[Key, float], alone: dict[Key, float], batches: tuple[int, ...]
) -> bool:
    ok = True
    print("\nspeed-up over dense: side by side vs alone (relative difference)")
    for batch in batches:
        for variant in VARIANTS[1:]:
            if (variant, batch) not in together:
                continue
            side = together[("dense", batch)] / together[(variant, batch)]
            own = alone[("dense", batch)] / alone[(variant, batch)]
            difference = side / own - 1
            good = abs(difference) <= SPEEDUP_TOLERANCE
            ok = ok and good
            print(
                f"  {variant:<7} batch {batch:<3} {side:5.2f}x vs {own:5.2f}x  "
                f"({difference:+.1%}){'' if good else ' *'}"
            )
    return ok


def _method(record: LatencyRecord) -> str:
    timing = record.details.get("timing")
    spin = record.details.get("intra_op_spin_us", "onnxruntime's default")
    if timing is None:
        return (
            "rounds of one iteration per model (the records predate `timing`), idle threads "
            f"spinning for {spin}"
        )
    return f"{_method_text(timing)}, idle threads spinning for {spin} us"


def _method_text(timing: dict | None) -> str:
    if not timing:
        return "unknown"
    if timing.get("method") == "blocks":
        return (
            f"blocks of {timing['block_iters']} iterations per model, rotated, each after "
            f"{1000 * timing['lead_in_seconds']:g} ms untimed"
        )
    return str(timing.get("method"))


def _load() -> str:
    one, five, _ = os.getloadavg()
    return f"load average {one:.2f} (1 min) {five:.2f} (5 min) on {os.cpu_count()} CPUs"


if __name__ == "__main__":
    sys.exit(main())
