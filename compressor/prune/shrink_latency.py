"""Channel shrinking to a measured latency, not to a ratio or MACs.

Channel counts move latency in steps (kernels tile channels; `round_to` keeps multiples of
8), and not in proportion to MACs, so the ratio is searched by measuring: bisection on the
fraction of channels removed, each probe shrunk from the same model, exported and timed side
by side with the unshrunk one; the smallest ratio whose measured latency meets the budget is
kept (the most channels). Every probe is recorded for shrink.json.
"""

from __future__ import annotations

import copy
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import nn

from compressor.errors import ConfigError
from compressor.prune.latency import TIMING
from compressor.prune.shrink import ShrinkConfig, ShrinkResult, shrink_channels_
from deploy.errors import DeployError
from deploy.machine.cpus import default_threads
from deploy.machine.state import MachineMonitor
from deploy.profiling.profile_blocks import time_files
from deploy.records import BenchConfig
from export.config import ExportConfig
from export.onnx_export import export_onnx

MAX_RATIO = 0.9  # the largest fraction of channels a probe removes
GRID = 0.05  # the ratios the upper end of the search is chosen from


def shrink_to_latency(
    model: nn.Module,
    example: torch.Tensor,
    config: ShrinkConfig,
    calibration: tuple[torch.Tensor, torch.Tensor] | None,
    log: Callable[[str], object] = print,
) -> tuple[ShrinkResult, dict[str, Any]]:
    """Shrink `model` in place to the budget of `config`; the result and the search record."""
    threads = default_threads()
    bench = BenchConfig(batch_sizes=(config.latency_batch,), **TIMING)
    monitor = MachineMonitor()
    probes: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="shrink-latency-") as folder:
        work = Path(folder)
        base = work / "unshrunk.onnx"
        export_onnx(model, example, base, ExportConfig())

        def probe(ratio: float) -> float:
            candidate = copy.deepcopy(model)
            result = shrink_channels_(candidate, example, config.at_ratio(ratio), calibration)
            path = work / f"probe_{len(probes)}.onnx"
            export_onnx(candidate, example, path, ExportConfig())
            try:
                records = time_files(
                    {"unshrunk": base, "probe": path}, config.latency_backend, None, threads,
                    bench, work, monitor, log=log,
                )  # fmt: skip
            except DeployError as exc:
                raise ConfigError(
                    f"shrink.latency_backend {config.latency_backend}: {exc}"
                ) from exc
            p50 = {r.model: r.p50_ms for r in records}
            cv = {r.model: r.run_cv for r in records}
            fraction = p50["probe"] / p50["unshrunk"]
            macs = result.macs_after / result.macs_before
            probes.append(
                {
                    "ratio": ratio,
                    "measured_ms": p50["probe"],
                    "unshrunk_ms": p50["unshrunk"],
                    "fraction": fraction,
                    "macs_fraction": macs,
                    "run_cv": cv,
                }
            )
            log(
                f"[shrink] probe ratio {ratio:.3f}: {p50['probe']:.4f} ms, {fraction:.3f} of "
                f"unshrunk {p50['unshrunk']:.4f} ms (MACs {macs:.3f})"
            )
            return fraction

        if config.latency_fraction is not None:
            target = config.latency_fraction
        else:  # the unshrunk model's latency here turns the milliseconds into a fraction
            alone = time_files({"unshrunk": base}, config.latency_backend, None, threads,
                               bench, work, monitor, log=log)  # fmt: skip
            target = float(config.latency_ms) / alone[0].p50_ms
            if target >= 1:
                raise ConfigError(
                    f"shrink.latency_ms {config.latency_ms:g}: the unshrunk model already takes "
                    f"{alone[0].p50_ms:.4g} ms here ({config.latency_backend}, batch "
                    f"{config.latency_batch}); give a smaller budget"
                )
        low, high = 0.0, _fewest_macs_ratio(model, example, config, calibration)
        best = high if probe(high) <= target else None
        if best is not None:
            for _ in range(max(0, config.latency_probes - 1)):
                middle = (low + high) / 2
                if probe(middle) <= target:
                    high = best = middle
                else:
                    low = middle
    warnings = []
    if best is None:
        warnings.append(
            f"even the ratio with the fewest MACs ({high:.2f}) measures "
            f"{probes[0]['fraction']:.3f} of the unshrunk latency, above the budget's "
            f"{target:.3f}; shrunk at {high:.2f}"
        )
        best = high
    for line in warnings:
        log(f"[shrink] warning: {line}")
    result = shrink_channels_(model, example, config.at_ratio(best), calibration)
    record = {
        "budget_fraction": target,
        "budget_ms": config.latency_ms,
        "backend": config.latency_backend,
        "batch": config.latency_batch,
        "ratio": best,
        "probes": probes,
        "warnings": warnings,
    }
    return result, record


def _fewest_macs_ratio(
    model: nn.Module,
    example: torch.Tensor,
    config: ShrinkConfig,
    calibration: tuple[torch.Tensor, torch.Tensor] | None,
) -> float:
    """The smallest grid ratio with the fewest MACs: with `round_to`, Torch-Pruning leaves a
    layer whole once its kept channels would round to none, so MACs are not monotonic in
    the ratio near the top and bisection must stay below that."""
    best_ratio, best_macs = GRID, None
    steps = round(MAX_RATIO / GRID)
    for step in range(1, steps + 1):
        ratio = step * GRID
        candidate = copy.deepcopy(model)
        macs = shrink_channels_(candidate, example, config.at_ratio(ratio), calibration).macs_after
        if best_macs is None or macs < best_macs:
            best_ratio, best_macs = ratio, macs
    return best_ratio


__all__ = ["MAX_RATIO", "shrink_to_latency"]
