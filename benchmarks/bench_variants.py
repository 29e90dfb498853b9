"""Dense vs layer ticket vs shrunk ticket: latency side by side, speed-up ratios printed last.

    python benchmarks/bench_variants.py [--run-dir runs/default] [--iterations 300]

Uses the stored models and ONNX files of a `compressor run` output directory (runs the
embedded default first when the directory has no report). All variants are timed in one
process, taking turns in blocks of iterations, for onnxruntime (CPU) and torch (CPU, and
CUDA when present), so machine load hits every variant alike. The timed iterations are split
into --repeats runs; the run-to-run CV of the medians and any measurement warnings (noisy
timings, a busy or throttled machine) are printed before the speed-ups.
"""

from __future__ import annotations

import sys
from pathlib import Path

from run_args import bench_config, parse_run_args

from compressor.models.store import load_model
from compressor.workflows.deliver import time_variants
from compressor.workflows.pipeline import VARIANTS
from deploy.bench import LatencyRecord
from deploy.machine.cpus import default_threads
from deploy.results.files import format_table
from deploy.session import BenchSession


def main() -> int:
    args, run_dir, _ = parse_run_args(__doc__.split("\n")[0])
    stored = {name: load_model(run_dir / name / "model") for name in VARIANTS}
    config = bench_config(args)
    threads = args.threads or default_threads()
    session = BenchSession(threads)
    monitor = session.monitor
    records = time_variants(
        {n: s.model for n, s in stored.items()},
        {n: run_dir / n / "model.onnx" for n in VARIANTS},
        _input_shape(run_dir),
        config,
        threads=threads,
        monitor=monitor,
    )
    written = session.finish(records, run_dir / "bench_variants.json")
    fingerprint, path, warnings = session.fingerprint, written.path, written.warnings
    print(format_table(records))
    machine = f"{fingerprint.get('cpu_model')} ({fingerprint.get('fingerprint_id')})"
    print(f"\nresults: {path}\nmachine: {machine}, {threads} threads")
    _print_variation(records, config.repeats)
    for line in warnings:
        print(f"warning: {line}")
    accuracy = {n: s.info["accuracy"] for n, s in stored.items()}
    print("\nspeed-up over dense (ratio of median latencies), accuracy from the run:")
    p50 = {(r.model, r.backend, r.device, r.batch): r.p50_ms for r in records}
    run_cv = {(r.model, r.backend, r.device, r.batch): r.run_cv for r in records}
    for key, ms in sorted(p50.items()):
        model, backend, device, batch = key
        if model == "dense":
            continue
        dense = p50[("dense", backend, device, batch)]
        noise = _run_cvs(run_cv[("dense", backend, device, batch)], run_cv[key])
        print(
            f"  {model:<7} {backend:<12} {device:<5} batch {batch:<3} {dense / ms:5.2f}x "
            f"(dense {dense:.3f} ms -> {ms:.3f} ms{noise}; accuracy {accuracy['dense']:.4f} -> "
            f"{accuracy[model]:.4f})"
        )
    return 0


def _print_variation(records: list[LatencyRecord], repeats: int) -> None:
    """The run-to-run CV of every record's median, summarised in one line, worst named."""
    measured = [r for r in records if r.run_cv is not None]
    if not measured:
        print("\nrun-to-run variation: not measured (one run per model; use --repeats 3)")
        return
    worst = max(measured, key=lambda r: r.run_cv)
    middle = sorted(r.run_cv for r in measured)[len(measured) // 2]
    print(
        f"\nrun-to-run variation of the medians ({repeats} runs each): median CV "
        f"{middle:.1%}, worst {worst.run_cv:.1%} ({worst.model} {worst.backend} {worst.device} "
        f"batch {worst.batch}); speed-ups within about twice that are noise"
    )


def _run_cvs(dense_cv: float | None, variant_cv: float | None) -> str:
    if dense_cv is None or variant_cv is None:
        return ""
    return f", run CV {dense_cv:.1%}/{variant_cv:.1%}"


def _input_shape(run_dir: Path) -> tuple:
    import onnx

    model = onnx.load(str(run_dir / "dense" / "model.onnx"), load_external_data=False)
    dims = model.graph.input[0].type.tensor_type.shape.dim
    return tuple(d.dim_value if d.dim_value > 0 else None for d in dims)


if __name__ == "__main__":
    sys.exit(main())
