"""The pipeline's delivery end: export each variant to checked ONNX and time them side by side."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import nn

from compressor.data import DataSplits
from compressor.recipe import Recipe
from compressor.spec import ModelSpec
from deploy.bench import BenchConfig, benchmark_side_by_side
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
    variant_dir: Path,
    log: Callable[[str], None],
) -> ExportResult:
    """ONNX with parity checked on the real validation images and the spec in its metadata."""
    model = model.cpu().eval()
    config = ExportConfig(opset=recipe.export.opset, parity_atol=recipe.export.parity_atol)
    metadata = {
        "variant": info["variant"],
        "spec_sha256": spec.sha256(),
        "spec": spec.to_dict(),
        "accuracy": info["accuracy"],
        "params": info["params"],
        "macs": info["macs"],
        "dataset": data.name,
        "input_mean": list(data.mean),
        "input_std": list(data.std),
        "class_names": list(data.class_names),
    }
    result = export_onnx(
        model,
        data.val.images[:2],
        variant_dir / "model.onnx",
        config,
        parity_inputs=data.val.images,
        metadata={k: v if isinstance(v, str) else _json(v) for k, v in metadata.items()},
    )
    log(
        f"[export] {info['variant']}: {result.path} parity max abs diff "
        f"{result.parity_max_abs_diff:.2e}, top-1 agreement {result.parity_top1_agreement:.4f}"
    )
    return result


def _json(value: Any) -> str:
    import json

    return json.dumps(value)


def benchmark_variants(
    models: dict[str, nn.Module],
    onnx_paths: dict[str, Path],
    data: DataSplits,
    recipe: Recipe,
    out_dir: Path,
    log: Callable[[str], None],
) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """Interleaved timing of all variants per backend, so load on the machine hits all alike."""
    bench = recipe.bench
    config = BenchConfig(
        batch_sizes=tuple(bench.batch_sizes),
        warmup_iters=bench.warmup_iters,
        iterations=bench.iterations,
    )
    records = []
    if "onnxruntime" in bench.backends:
        runners = {n: OnnxRuntimeRunner(p, threads=bench.threads) for n, p in onnx_paths.items()}
        records += _run_all(runners, config)
    if "torch" in bench.backends:
        from deploy.runners.torch_runner import TorchRunner

        shape = (None, *data.val.images.shape[1:])
        devices = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
        for device in devices:
            runners = {
                n: TorchRunner(m, device=device, input_shape=shape, threads=bench.threads)
                for n, m in models.items()
            }
            records += _run_all(runners, config)
    fingerprint = device_fingerprint(threads=bench.threads)
    results_path = write_results(out_dir / "latency.json", records, fingerprint)
    log(format_table(records))
    log(f"[bench] results written to {results_path}")
    return [r.to_dict() for r in records], fingerprint


def _run_all(runners: dict[str, Any], config: BenchConfig) -> list[Any]:
    entered = []
    try:
        for runner in runners.values():
            entered.append(runner.__enter__())
        return benchmark_side_by_side(runners, config)
    finally:
        for runner in entered:
            runner.__exit__(None, None, None)


__all__ = ["benchmark_variants", "export_variant"]
