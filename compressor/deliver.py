"""The delivery end: export a model to checked ONNX, and time variants side by side."""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import torch
from torch import nn

from compressor.data import DataSplits
from compressor.recipe import Recipe
from compressor.spec import ModelSpec
from deploy.bench import BenchConfig, LatencyRecord, benchmark_side_by_side
from deploy.fingerprint import device_fingerprint
from deploy.results import format_table, write_results
from deploy.runners import OnnxRuntimeRunner
from export import ExportConfig, ExportResult, export_onnx


def export_variant(
    model: nn.Module,
    spec: ModelSpec,
    info: dict[str, Any],
    data: DataSplits,
    recipe: Recipe,
    onnx_path: Path,
    log: Callable[[str], None],
) -> ExportResult:
    """ONNX with parity checked on the real validation images and the spec in its metadata."""
    model = model.cpu().eval()
    config = ExportConfig(opset=recipe.export.opset, parity_atol=recipe.export.parity_atol)
    metadata = {
        "variant": info.get("variant"),
        "spec_sha256": spec.sha256(),
        "spec": spec.to_dict(),
        "accuracy": info.get("accuracy"),  # None for an untrained ticket: left out
        "params": info.get("params"),
        "macs": info.get("macs"),
        "dataset": data.name,
        "input_mean": list(data.mean),
        "input_std": list(data.std),
        "class_names": list(data.class_names),
    }
    result = export_onnx(
        model,
        data.val.images[:2],
        onnx_path,
        config,
        parity_inputs=data.val.images,
        metadata={
            k: v if isinstance(v, str) else json.dumps(v)
            for k, v in metadata.items()
            if v is not None
        },
    )
    log(
        f"[export] {info.get('variant', onnx_path.stem)}: {result.path} parity max abs diff "
        f"{result.parity_max_abs_diff:.2e}, top-1 agreement {result.parity_top1_agreement:.4f}"
    )
    return result


def time_variants(
    models: Mapping[str, nn.Module],
    onnx_paths: Mapping[str, Path],
    input_shape: tuple[int | None, ...],
    config: BenchConfig,
    *,
    backends: tuple[str, ...] = ("onnxruntime", "torch"),
    threads: int | None = None,
) -> list[LatencyRecord]:
    """Interleaved timing of all variants per backend, so load on the machine hits all alike.

    onnxruntime runs the ONNX files on the CPU; torch runs the modules on the CPU, and again
    on CUDA when present.
    """
    records: list[LatencyRecord] = []
    if "onnxruntime" in backends:
        runners = {n: OnnxRuntimeRunner(p, threads=threads) for n, p in onnx_paths.items()}
        records += benchmark_side_by_side(runners, config)
    if "torch" in backends:
        from deploy.runners.torch_runner import TorchRunner

        for device in ["cpu"] + (["cuda"] if torch.cuda.is_available() else []):
            runners = {
                n: TorchRunner(m, device=device, input_shape=input_shape, threads=threads)
                for n, m in models.items()
            }
            records += benchmark_side_by_side(runners, config)
    return records


def benchmark_variants(
    models: dict[str, nn.Module],
    onnx_paths: dict[str, Path],
    data: DataSplits,
    recipe: Recipe,
    out_dir: Path,
    log: Callable[[str], None],
) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """The pipeline's benchmark: the recipe's backends and batches, written to latency.json."""
    bench = recipe.bench
    config = BenchConfig(
        batch_sizes=tuple(bench.batch_sizes),
        warmup_iters=bench.warmup_iters,
        iterations=bench.iterations,
    )
    records = time_variants(
        models,
        onnx_paths,
        (None, *data.val.images.shape[1:]),
        config,
        backends=bench.backends,
        threads=bench.threads,
    )
    fingerprint = device_fingerprint(threads=bench.threads)
    results_path = write_results(out_dir / "latency.json", records, fingerprint)
    log(format_table(records))
    log(f"[bench] results written to {results_path}")
    return [r.to_dict() for r in records], fingerprint
