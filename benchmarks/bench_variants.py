"""Dense vs layer ticket vs shrunk ticket: latency side by side, speed-up ratios printed last.

    python benchmarks/bench_variants.py [--run-dir runs/default] [--iterations 300]

Uses the stored models and ONNX files of a `compressor run` output directory (runs the
embedded default first when the directory has no report). All variants are timed in one
process, interleaved iteration by iteration, for onnxruntime (CPU) and torch (CPU, and
CUDA when present), so machine load hits every variant alike.
"""

from __future__ import annotations

import sys
from pathlib import Path

from run_args import bench_config, parse_run_args

from compressor.deliver import time_variants
from compressor.pipeline import VARIANTS
from compressor.store import load_model
from deploy.fingerprint import device_fingerprint
from deploy.results import format_table, write_results


def main() -> int:
    args, run_dir, _ = parse_run_args(__doc__.split("\n")[0])
    stored = {name: load_model(run_dir / name / "model") for name in VARIANTS}
    config = bench_config(args)
    records = time_variants(
        {n: s.model for n, s in stored.items()},
        {n: run_dir / n / "model.onnx" for n in VARIANTS},
        _input_shape(run_dir),
        config,
        threads=args.threads,
    )
    fingerprint = device_fingerprint(threads=args.threads)
    path = write_results(run_dir / "bench_variants.json", records, fingerprint)
    print(format_table(records))
    machine = f"{fingerprint.get('cpu_model')} ({fingerprint.get('fingerprint_id')})"
    print(f"\nresults: {path}\nmachine: {machine}")
    accuracy = {n: s.info["accuracy"] for n, s in stored.items()}
    print("\nspeed-up over dense (ratio of median latencies), accuracy from the run:")
    p50 = {(r.model, r.backend, r.device, r.batch): r.p50_ms for r in records}
    for (model, backend, device, batch), ms in sorted(p50.items()):
        if model == "dense":
            continue
        dense = p50[("dense", backend, device, batch)]
        print(
            f"  {model:<7} {backend:<12} {device:<5} batch {batch:<3} {dense / ms:5.2f}x "
            f"(dense {dense:.3f} ms -> {ms:.3f} ms; accuracy {accuracy['dense']:.4f} -> "
            f"{accuracy[model]:.4f})"
        )
    return 0


def _input_shape(run_dir: Path) -> tuple:
    import onnx

    model = onnx.load(str(run_dir / "dense" / "model.onnx"), load_external_data=False)
    dims = model.graph.input[0].type.tensor_type.shape.dim
    return tuple(d.dim_value if d.dim_value > 0 else None for d in dims)


if __name__ == "__main__":
    sys.exit(main())
