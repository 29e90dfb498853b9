"""How well a per-block latency table predicts the latency of networks without some blocks.

    python benchmarks/bench_latency_table.py                      # ResNet-56, digits, 16 px
    python benchmarks/bench_latency_table.py --model resnet50 --batch 1 --iterations 30
                                             # torchvision ResNet-50 at 224 px (torchvision venv)
    python benchmarks/bench_latency_table.py --backend torch   # torch modules, CUDA if present

The dense network (random weights: latency does not depend on them) is exported with its
blocks, and `deploy profile-blocks`' measurement makes the table (onnxruntime, CPU). Then
--subsets random block subsets are removed *in torch*, each shallower network is exported and
all of them, with the dense one, are timed side by side. For each subset the table's
prediction is compared with the measurement, as the fraction of the dense latency (what
pruning to a budget compares) and in milliseconds (which also carries the drift between the
table's run and this one), beside the MACs ratio as a predictor.

For ResNet-56 it also prints per-block cost against per-block MACs by stage, and whether the
choice for a 0.5 latency budget (GraSP scores, knapsack on the table) differs from the choice
for a 0.5 MACs target (the same scores, lowest first); both are built and timed with the rest.
The prediction errors are printed last.
"""

from __future__ import annotations

import argparse
import copy
import random
import statistics
import tempfile
from pathlib import Path

import torch
from torch import nn

from compressor.data.config import DataConfig
from compressor.data.splits import load_data
from compressor.models.blocks import BlockInfo, discover_blocks, model_macs
from compressor.models.spec import remove_blocks_
from compressor.models.zoo import create_model
from compressor.prune.criteria import score_blocks
from compressor.prune.knapsack import cover_budget
from compressor.prune.latency import export_with_blocks
from compressor.prune.layers import LayerPruneConfig, scoring_batch, select_blocks
from compressor.prune.torch_table import time_modules, torch_block_table, torch_device
from deploy.machine.cpus import default_threads
from deploy.machine.fingerprint import summary_line
from deploy.profiling.command import format_latency_table
from deploy.profiling.profile_blocks import profile_blocks, time_files
from deploy.profiling.table import LatencyTable
from deploy.records import BenchConfig
from deploy.session import BenchSession
from export.config import ExportConfig
from export.onnx_export import export_onnx


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", choices=("resnet56", "resnet50"), default="resnet56")
    parser.add_argument("--subsets", type=int, default=20)
    parser.add_argument("--batch", default="1,8", help="comma-separated batch sizes")
    parser.add_argument("--iterations", type=int, default=300)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--backend",
        choices=("onnxruntime", "torch"),
        default="onnxruntime",
        help="onnxruntime: ONNX files on the CPU; torch: modules, on CUDA when present",
    )
    args = parser.parse_args()
    batches = tuple(int(b) for b in args.batch.split(","))
    model, example = _model(args.model)
    blocks = [b for b in discover_blocks(model, example[:1]) if b.removable]
    names = [b.name for b in blocks]
    threads = default_threads()
    session = BenchSession(threads)
    config = BenchConfig(
        batch_sizes=batches,
        iterations=args.iterations,
        block_iters=max(1, args.iterations // 3),
        warmup_iters=min(20, args.iterations),
    )
    print(summary_line(session.fingerprint), flush=True)
    rng = random.Random(args.seed)
    subsets = {
        f"subset_{i:02d}": sorted(rng.sample(names, rng.randint(1, len(names) - 1)))
        for i in range(args.subsets)
    }
    torch_backend = args.backend == "torch"
    with tempfile.TemporaryDirectory(prefix="bench-latency-table-") as folder:
        work = Path(folder)
        if torch_backend:
            print(f"torch on {torch_device()}", flush=True)
            table = torch_block_table(
                model, blocks, example, config, session.fingerprint,
                threads=threads, monitor=session.monitor,
            )  # fmt: skip
        else:
            described = export_with_blocks(model, example, work / "dense.onnx", blocks)
            table = profile_blocks(
                work / "dense.onnx", described, config, session.fingerprint, threads=threads
            )
        print(format_latency_table(table), flush=True)
        choices = (
            _choices(model, blocks, example, table, batches) if args.model == "resnet56" else {}
        )
        subsets.update(choices)
        files: dict[str, Path] = {"dense": work / "dense.onnx"}
        modules = {"dense": model}
        macs = {"dense": model_macs(model, example[:1])}
        for name, removed in subsets.items():
            shallower = copy.deepcopy(model)
            remove_blocks_(shallower, removed, example=example[:1])
            macs[name] = model_macs(shallower, example[:1])
            modules[name] = shallower
            if not torch_backend:
                files[name] = work / f"{name}.onnx"
                export_onnx(shallower, example, files[name], ExportConfig())
        print(
            f"timing the dense network and {len(subsets)} shallower ones side by side", flush=True
        )
        if torch_backend:
            records = time_modules(
                modules, example, config, threads=threads, monitor=session.monitor
            )
        else:
            records = time_files(files, "onnxruntime", None, threads, config, work, session.monitor)
    p50 = {(r.model, r.batch): r.p50_ms for r in records}
    cv = {(r.model, r.batch): r.run_cv for r in records}
    if choices:
        _print_stages(table, blocks, batches)
        _print_choices(choices, table, p50, macs, batches)
    summary = []
    for batch in batches:
        dense_table, dense_now = table.batch(batch).network_ms, p50[("dense", batch)]
        print(
            f"\nbatch {batch}: dense {dense_now:.4f} ms in this run (run-to-run CV "
            f"{100 * (cv[('dense', batch)] or 0):.1f}%), {dense_table:.4f} ms in the table's run"
        )
        print(
            f"{'network':<12} {'removed':>7} {'table':>6} {'meas':>6} {'err':>6} "
            f"{'MACs':>6} {'err':>6}"
        )
        errors, ms_errors, macs_errors = [], [], []
        for name in (n for n in subsets if n.startswith("subset_")):
            removed = subsets[name]
            measured = p50[(name, batch)]
            predicted = table.predict_ms(removed, batch)
            fraction, pred_fraction = measured / dense_now, predicted / dense_table
            macs_fraction = macs[name] / macs["dense"]
            errors.append(abs(pred_fraction - fraction) / fraction)
            ms_errors.append(abs(predicted - measured) / measured)
            macs_errors.append(abs(macs_fraction - fraction) / fraction)
            print(
                f"{name:<12} {len(removed):>7} {pred_fraction:>6.3f} {fraction:>6.3f} "
                f"{100 * errors[-1]:>5.1f}% {macs_fraction:>6.3f} {100 * macs_errors[-1]:>5.1f}%"
            )
        summary.append(
            f"{args.model} {table.backend} batch {batch}, {len(errors)} random block subsets, "
            "latency as a "
            f"fraction of dense: table error mean {100 * statistics.mean(errors):.1f}%, worst "
            f"{100 * max(errors):.1f}%; MACs ratio as the predictor mean "
            f"{100 * statistics.mean(macs_errors):.1f}%, worst {100 * max(macs_errors):.1f}%; "
            f"in ms (table run vs this run) mean {100 * statistics.mean(ms_errors):.1f}%, worst "
            f"{100 * max(ms_errors):.1f}%"
        )
    written = session.finish(records, Path(tempfile.gettempdir()) / "bench_latency_table.json")
    for warning in written.warnings[:5]:
        print(f"warning: {warning}")
    print(f"({len(written.warnings)} measurement warnings; all in {written.path})")
    print("\nprediction error of the latency table:")
    for line in summary:
        print(line)
    return 0


def _model(name: str) -> tuple[nn.Module, torch.Tensor]:
    torch.manual_seed(0)
    if name == "resnet50":
        import torchvision

        return torchvision.models.resnet50(weights=None).eval(), torch.randn(2, 3, 224, 224)
    model = create_model("resnet56", num_classes=10, in_channels=1).eval()
    return model, torch.randn(2, 1, 16, 16)


def _choices(
    model: nn.Module,
    blocks: list[BlockInfo],
    example: torch.Tensor,
    table: LatencyTable,
    batches: tuple[int, ...],
) -> dict[str, list[str]]:
    """GraSP's choice for a 0.5 MACs target (lowest scores first) and for a 0.5 latency
    budget at each batch (knapsack on the table), scored on the bundled digits."""
    data = load_data(DataConfig(name="digits", image_size=16))
    batch = scoring_batch(data.train.images, data.train.labels, 10, 0)
    scores = score_blocks(model, blocks, "grasp", batch, score_batch_size=8).scores
    macs = model_macs(model, example[:1])
    config = LayerPruneConfig(macs_target=0.5)
    out = {
        "macs_0.5": sorted(
            select_blocks(blocks, scores, config, dense_macs=macs, model_name="resnet56")
        )
    }
    for size in batches:
        t = table.batch(size)
        costs = {n: b.cost_ms for n, b in t.blocks.items()}
        chosen = cover_budget(
            scores, costs, 0.5 * t.network_ms, candidates=[b.name for b in blocks]
        )
        out[f"latency_0.5_b{size}"] = sorted(chosen)
    return out


def _print_stages(table: LatencyTable, blocks: list[BlockInfo], batches: tuple[int, ...]) -> None:
    """Per stage: MACs per block against latency per block."""
    for batch in batches:
        t = table.batch(batch)
        print(f"\nbatch {batch}: block cost by stage")
        for stage in sorted({b.stage for b in blocks}):
            inside = [b for b in blocks if b.stage == stage]
            costs = [t.blocks[b.name].cost_ms for b in inside]
            mmacs = statistics.mean(b.macs for b in inside) / 1e6
            print(
                f"  stage {stage + 1}: {len(inside)} blocks of {mmacs:.2f} MMACs, cost "
                f"{statistics.mean(costs):.4f} ms mean (min {min(costs):.4f}, max "
                f"{max(costs):.4f}), {1000 * statistics.mean(costs) / mmacs:.2f} us per MMAC"
            )


def _print_choices(
    choices: dict[str, list[str]],
    table: LatencyTable,
    p50: dict[tuple[str, int], float],
    macs: dict[str, int],
    batches: tuple[int, ...],
) -> None:
    print("\nthe same GraSP scores, chosen for MACs or for measured latency:")
    for name, removed in choices.items():
        measured = ", ".join(f"batch {b} {p50[(name, b)] / p50[('dense', b)]:.3f}" for b in batches)
        print(
            f"  {name}: {len(removed)} blocks removed, MACs {macs[name] / macs['dense']:.3f} of "
            f"dense, measured latency {measured} of dense"
        )
        print(f"    {' '.join(removed)}")
    base = set(choices["macs_0.5"])
    for name, removed in choices.items():
        if name != "macs_0.5":
            print(
                f"  {name} vs macs_0.5: only in {name}: {sorted(set(removed) - base)}; only in "
                f"macs_0.5: {sorted(base - set(removed))}"
            )


if __name__ == "__main__":
    raise SystemExit(main())
