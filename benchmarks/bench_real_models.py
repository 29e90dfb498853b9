"""Real-scale latency: torchvision ResNet-50 and MobileNetV2 at 224 px, dense vs pruned vs shrunk.

    /work/tvenv/bin/python benchmarks/bench_real_models.py [--models resnet50,mobilenet_v2]
        [--iterations 30] [--batch 1,8] [--output results/bench_real_models.json]

Random weights: latency only, no accuracy. For each model: the dense network; the
layer-pruned one (25% of the removable blocks removed by the project's own layer pruning at
init, `compressor.prune.layers.prune_at_init`, SynFlow on random data); and that one with 30%
of its channels removed by Torch-Pruning (`compressor.prune.shrink.shrink_channels_`). Each is
exported with the project's exporter (`export.export_onnx`, parity checked) and the three
files are timed side by side on onnxruntime CPU with the fair method
(`deploy.bench.benchmark_side_by_side`: blocks of iterations per model in rotated order,
idle threads' spinning bounded). Needs torchvision (the second venv: /work/tvenv). The table
gives p50 and run-to-run CV; the speed-ups over dense are printed last.
"""

from __future__ import annotations

import argparse
import copy
import os
import sys
import tempfile
import time
from pathlib import Path

import torch

from compressor.models.spec import ModelSpec
from compressor.prune.layers import LayerPruneConfig, prune_at_init
from compressor.prune.shrink import ShrinkConfig, count_macs_params, shrink_channels_
from deploy.bench import BenchConfig, LatencyRecord, benchmark_side_by_side
from deploy.machine.cpus import default_threads
from deploy.machine.fingerprint import device_fingerprint
from deploy.machine.stability import timing_warnings
from deploy.machine.state import MachineMonitor
from deploy.results.files import format_table, write_results
from deploy.runners import OnnxRuntimeRunner
from export import ExportConfig, export_onnx

SIZE = 224
CLASSES = 1000
PRUNE_FRACTION = 0.25  # of the removable blocks
SHRINK_RATIO = 0.3  # of the channels of each prunable group


def main() -> int:
    args = _parse_args()
    started = time.perf_counter()
    torch.manual_seed(0)
    threads = args.threads or default_threads()
    config = BenchConfig(
        batch_sizes=tuple(int(b) for b in args.batch.split(",")),
        warmup_iters=args.warmup,
        iterations=args.iterations,
        repeats=args.repeats,
    )
    print(f"{threads} threads, {_load()}", flush=True)
    records: list[LatencyRecord] = []
    monitor = MachineMonitor()
    with tempfile.TemporaryDirectory() as tmp:
        for name in args.models.split(","):
            files = _variants(name, Path(tmp), args.scoring_images)
            runners = {v: OnnxRuntimeRunner(p, threads=threads) for v, p in files.items()}
            print(f"[{name}] timing side by side ({_elapsed(started)})", flush=True)
            records += benchmark_side_by_side(runners, config, monitor=monitor)
    fingerprint = device_fingerprint(threads=threads)
    warnings = timing_warnings(records, monitor.samples)
    print()
    print(format_table(records))
    if args.output:
        print(f"\nresults: {write_results(args.output, records, fingerprint, warnings)}")
    for line in warnings:
        print(f"warning: {line}")
    print(f"\nwall time {_elapsed(started)}; {_load()}")
    print("\nspeed-up over dense (ratio of p50 latencies), onnxruntime CPU fp32:")
    p50 = {(r.model, r.batch): r for r in records}
    for (model, batch), record in p50.items():
        base, _, variant = model.partition("/")
        if variant == "dense":
            continue
        dense = p50[(f"{base}/dense", batch)]
        print(
            f"  {base:<13} {variant:<14} batch {batch:<2} {dense.p50_ms / record.p50_ms:5.2f}x "
            f"(dense {dense.p50_ms:.2f} ms -> {record.p50_ms:.2f} ms; run CV "
            f"{_pct(dense.run_cv)}/{_pct(record.run_cv)})"
        )
    return 0


def _variants(name: str, out: Path, scoring_images: int) -> dict[str, Path]:
    """Dense, layer-pruned and layer-pruned + shrunk ONNX files of torchvision `name`."""
    import torchvision.models

    dense = getattr(torchvision.models, name)(num_classes=CLASSES).eval()
    spec = ModelSpec(model=name, factory=f"torchvision.models:{name}")
    images = torch.randn(scoring_images, 3, SIZE, SIZE)
    labels = torch.arange(scoring_images) % CLASSES
    config = LayerPruneConfig(criterion="synflow", fraction=PRUNE_FRACTION)
    pruned, result = prune_at_init(dense, spec, images, labels, config)
    example = torch.randn(1, 3, SIZE, SIZE)
    shrunk = copy.deepcopy(pruned)  # shrink_channels_ works in place
    shrink = shrink_channels_(shrunk, example, ShrinkConfig(ratio=SHRINK_RATIO))
    models = {"dense": dense, "pruned": pruned, "pruned+shrunk": shrunk}
    macs = {v: count_macs_params(m, example)[0] for v, m in models.items()}
    removable = sum(b.removable for b in result.blocks)
    print(
        f"[{name}] removed {len(result.removed)} of {removable} removable blocks "
        f"({', '.join(result.removed)}); {SHRINK_RATIO:.0%} of the pruned model's channels "
        f"shrunk: params {shrink.params_before / 1e6:.1f}M -> {shrink.params_after / 1e6:.1f}M; "
        "GMACs " + ", ".join(f"{v} {m / 1e9:.2f}" for v, m in macs.items()),
        flush=True,
    )
    files = {}
    for variant, model in models.items():
        path = out / name / variant.replace("+", "_") / "model.onnx"
        path.parent.mkdir(parents=True, exist_ok=True)
        result_export = export_onnx(model.eval(), example, path, ExportConfig())
        print(
            f"[{name}] exported {variant}: parity max abs diff "
            f"{result_export.parity_max_abs_diff:.1e}",
            flush=True,
        )
        files[f"{name}/{variant}"] = path
    return files


def _parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--models", default="resnet50,mobilenet_v2", help="torchvision names")
    parser.add_argument("--batch", default="1,8", help="comma-separated batch sizes")
    parser.add_argument("--iterations", type=int, default=30, help="timed, per model and batch")
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--repeats", type=int, default=3, help="runs for the run-to-run CV")
    parser.add_argument("--threads", type=int, default=None, help="default: usable CPUs")
    parser.add_argument(
        "--scoring-images", type=int, default=4, help="random images SynFlow scores on"
    )
    parser.add_argument("--output", type=Path, default=None, help="also write a result file")
    return parser.parse_args()


def _pct(value: float | None) -> str:
    return "-" if value is None else f"{value:.1%}"


def _elapsed(started: float) -> str:
    return f"{time.perf_counter() - started:.0f} s"


def _load() -> str:
    one, five, _ = os.getloadavg()
    return f"load average {one:.2f} (1 min) {five:.2f} (5 min) on {os.cpu_count()} CPUs"


if __name__ == "__main__":
    sys.exit(main())
