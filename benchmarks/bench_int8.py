"""FP32 vs INT8 (QDQ) on onnxruntime CPU, for dense, ticket and shrunk: latency and accuracy.

    python benchmarks/bench_int8.py [--run-dir runs/default] [--iterations 300] [--batch 1,8]

Uses the ONNX files of a `compressor run` directory (the run writes model.int8.onnx next to
each model.onnx; the embedded default is run first when the directory has no report). All six
files are timed in one process, taking turns in blocks of iterations, so machine load hits them
alike; top-1 accuracy of each file is measured on the test split with onnxruntime, and the
INT8 file twice: on onnxruntime's fused int8 CPU kernels (what is timed) and with the graph
run as written (exact int8 products, TensorRT's INT8 arithmetic). The figure printed last is
each variant's INT8/FP32 latency ratio next to its accuracy change.
"""

from __future__ import annotations

import sys

from run_args import bench_config, parse_run_args

from compressor.data.splits import load_data
from compressor.recipe.sections import recipe_from_dict
from compressor.workflows.pipeline import VARIANTS
from deploy.bench import benchmark_side_by_side
from deploy.evaluate import LabelledData, top1_accuracy
from deploy.machine.cpus import default_threads
from deploy.results.files import format_table
from deploy.runners import OnnxRuntimeRunner
from deploy.session import BenchSession


def main() -> int:
    args, run_dir, report = parse_run_args(__doc__.split("\n")[0])
    files = {}
    for variant in VARIANTS:
        fp32 = run_dir / variant / "model.onnx"
        int8 = run_dir / variant / "model.int8.onnx"
        if not int8.is_file():
            print(f"{int8} is missing: run with export.int8 true", file=sys.stderr)
            return 1
        files[f"{variant}/fp32"], files[f"{variant}/int8"] = fp32, int8
    data = load_data(recipe_from_dict(report["recipe"]).data)
    test = LabelledData(images=data.test.images.numpy(), labels=data.test.labels.numpy())

    threads = args.threads or default_threads()
    runners = {name: OnnxRuntimeRunner(path, threads=threads) for name, path in files.items()}
    config = bench_config(args)
    accuracy = {}
    for name, runner in runners.items():
        with runner:
            accuracy[name] = top1_accuracy(runner, test, batch_size=64).top1
    as_written = {}
    for variant in VARIANTS:
        with OnnxRuntimeRunner(files[f"{variant}/int8"], optimize=False) as runner:
            as_written[variant] = top1_accuracy(runner, test, batch_size=64).top1
    session = BenchSession(threads)
    monitor = session.monitor
    records = benchmark_side_by_side(runners, config, monitor=monitor)
    written = session.finish(records, run_dir / "bench_int8.json")
    fingerprint, path, warnings = session.fingerprint, written.path, written.warnings
    print(format_table(records))
    machine = f"{fingerprint.get('cpu_model')} ({fingerprint.get('fingerprint_id')})"
    print(f"\nresults: {path}\nmachine: {machine}, {threads} threads")
    for line in warnings:
        print(f"warning: {line}")
    print(f"\naccuracy on {len(test)} test images (onnxruntime CPU):")
    print("  (int8 kernels: onnxruntime's fused CPU int8 kernels, the ones timed below;")
    print("   int8 as written: Q/DQ computed exactly, as TensorRT's INT8 kernels do)")
    for variant in VARIANTS:
        fp32, int8 = accuracy[f"{variant}/fp32"], accuracy[f"{variant}/int8"]
        exact = as_written[variant]
        print(
            f"  {variant:<7} fp32 {100 * fp32:6.2f}%  int8 kernels {100 * int8:6.2f}% "
            f"({100 * (int8 - fp32):+.2f} pts)  int8 as written {100 * exact:6.2f}% "
            f"({100 * (exact - fp32):+.2f} pts)"
        )
    p50 = {(r.model, r.batch): r.p50_ms for r in records}
    print("\nINT8 vs FP32, onnxruntime CPU (ratio of median latencies; >1 means INT8 is faster):")
    for batch in config.batch_sizes:
        dense = p50[("dense/fp32", batch)]
        for variant in VARIANTS:
            fp32, int8 = p50[(f"{variant}/fp32", batch)], p50[(f"{variant}/int8", batch)]
            print(
                f"  batch {batch:<3} {variant:<7} fp32 {fp32:7.3f} ms  int8 {int8:7.3f} ms  "
                f"int8 speed-up {fp32 / int8:4.2f}x  over dense fp32 {dense / int8:5.2f}x"
            )
    return 0


if __name__ == "__main__":
    sys.exit(main())
