"""`deploy profile-blocks`: time every removable block of a dense ONNX file on this device.

Each block's subgraph, a baseline per block input shape and the whole network are timed
side by side with `deploy bench`'s method (deploy.bench.benchmark_side_by_side: the models
take turns in blocks of iterations, so drift and background load hit all alike, while each
is timed as it runs alone), or one after another by trtexec, which times itself.
"""

from __future__ import annotations

import tempfile
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from deploy.bench import benchmark_side_by_side
from deploy.errors import DeployConfigError
from deploy.files import file_sha256
from deploy.machine.state import MachineMonitor
from deploy.onnx_info import inspect_onnx
from deploy.profiling.blocks_file import BlockEntry, BlocksFile
from deploy.profiling.subgraphs import write_subgraphs
from deploy.profiling.table import BatchTable, BlockLatency, LatencyTable
from deploy.records import BenchConfig, LatencyRecord
from deploy.runners.base import Runner

PROFILE_BACKENDS = ("onnxruntime", "tensorrt", "trtexec")
NETWORK = "network"
SKELETON = "skeleton"


def profile_blocks(
    model_path: str | Path,
    blocks: BlocksFile,
    config: BenchConfig,
    fingerprint: dict[str, Any],
    *,
    backend: str = "onnxruntime",
    precision: str | None = None,
    threads: int | None = None,
    monitor: MachineMonitor | None = None,
    trtexec: str | None = None,
    log: Callable[[str], object] = print,
) -> LatencyTable:
    """The latency table of `model_path`'s blocks at every batch of `config`."""
    model_path = Path(model_path)
    if backend not in PROFILE_BACKENDS:
        raise DeployConfigError(
            f"--backend '{backend}' cannot profile blocks; choose from "
            f"{', '.join(PROFILE_BACKENDS)}"
        )
    held = inspect_onnx(model_path).precision
    if backend == "onnxruntime" and precision not in (None, held):
        raise DeployConfigError(
            f"--precision {precision}: {model_path.name} is a {held} graph and onnxruntime runs "
            "what the file holds; pass the file of that precision, or leave --precision out"
        )
    precision = precision or held
    with tempfile.TemporaryDirectory(prefix="profile-blocks-") as folder:
        cut = write_subgraphs(model_path, blocks, Path(folder))
        files = {NETWORK: model_path, SKELETON: cut.skeleton}
        files.update({f"block:{name}": path for name, path in cut.blocks.items()})
        files.update({f"baseline:{key}": path for key, path in cut.baselines.items()})
        log(
            f"[profile] timing {len(cut.blocks)} blocks, {len(cut.baselines)} baselines, the "
            "network and its skeleton side by side"
        )
        records = time_files(
            files, backend, precision, threads, config, Path(folder), monitor, trtexec, log
        )
    return table_from_records(
        records,
        blocks.blocks,
        cut.baseline_of,
        model_sha256=file_sha256(model_path),
        backend=backend,
        precision=precision,
        threads=threads,
        fingerprint=fingerprint,
    )


def time_files(
    files: dict[str, Path],
    backend: str,
    precision: str | None,
    threads: int | None,
    config: BenchConfig,
    folder: Path,
    monitor: MachineMonitor | None = None,
    trtexec: str | None = None,
    log: Callable[[str], object] = print,
) -> list[LatencyRecord]:
    """Time ONNX files by name: side by side on onnxruntime and TensorRT (engines built into
    `folder`), one after another with trtexec."""
    if backend == "trtexec":
        return _trtexec_records(files, config, precision, trtexec)
    runners = _runners(files, backend, precision, threads, config, folder, log)
    return benchmark_side_by_side(runners, config, monitor=monitor)


def _runners(
    files: dict[str, Path],
    backend: str,
    precision: str | None,
    threads: int | None,
    config: BenchConfig,
    folder: Path,
    log: Callable[[str], object],
) -> dict[str, Runner]:
    if backend == "onnxruntime":
        from deploy.runners.onnxruntime import OnnxRuntimeRunner

        return {name: OnnxRuntimeRunner(path, threads=threads) for name, path in files.items()}
    from deploy.tensorrt.engine import build_engine
    from deploy.tensorrt.options import BuildOptions
    from deploy.tensorrt.runner import TensorRTRunner

    options = BuildOptions(precision=precision or "fp32", max_batch=max(config.batch_sizes))
    runners: dict[str, Runner] = {}
    for index, (name, path) in enumerate(files.items()):
        engine = folder / f"engine_{index:03d}.engine"
        build_engine(path, engine, options, log=log)
        runners[name] = TensorRTRunner(engine)
    return runners


def _trtexec_records(
    files: dict[str, Path], config: BenchConfig, precision: str | None, trtexec: str | None
) -> list[LatencyRecord]:
    from deploy.tensorrt.trtexec import run_trtexec

    records = []
    for name, path in files.items():
        records += run_trtexec(
            path,
            name=name,
            batch_sizes=config.batch_sizes,
            precision=precision,
            trtexec=trtexec,
            iterations=config.iterations,
            duration_s=config.min_seconds or None,
        )
    return records


def table_from_records(
    records: list[LatencyRecord],
    entries: Sequence[BlockEntry],
    baseline_of: Mapping[str, str],
    *,
    model_sha256: str,
    backend: str,
    precision: str,
    threads: int | None,
    fingerprint: dict[str, Any],
) -> LatencyTable:
    """The table from timings named "network", "skeleton", "block:<name>" and
    "baseline:<shape key>" (`baseline_of` maps each block of `entries` to its key), however
    they were timed: ONNX subgraphs here, torch modules in compressor.prune.torch_table."""
    by_key = {(r.model, r.batch): r for r in records}
    batches = {}
    for batch in sorted({r.batch for r in records}):
        network = by_key[(NETWORK, batch)]
        skeleton = by_key[(SKELETON, batch)].p50_ms
        alone = {}
        for entry in entries:
            block = by_key[(f"block:{entry.name}", batch)]
            baseline = by_key[(f"baseline:{baseline_of[entry.name]}", batch)].p50_ms
            alone[entry.name] = (block, baseline, max(0.0, block.p50_ms - baseline))
        total = sum(cost for _, _, cost in alone.values())
        scale = max(0.0, network.p50_ms - skeleton) / total if total > 0 else 0.0
        table = {
            entry.name: BlockLatency(
                ms=alone[entry.name][0].p50_ms,
                baseline_ms=alone[entry.name][1],
                alone_ms=alone[entry.name][2],
                cost_ms=alone[entry.name][2] * scale,
                run_cv=alone[entry.name][0].run_cv,
                macs=entry.macs,
                params=entry.params,
                stage=entry.stage,
            )
            for entry in entries
        }
        batches[batch] = BatchTable(network.p50_ms, network.run_cv, skeleton, scale, table)
    return LatencyTable(
        model_sha256=model_sha256,
        backend=backend,
        precision=precision,
        threads=threads,
        fingerprint=fingerprint,
        batches=batches,
        records=[r.to_dict() for r in records],
    )


__all__ = [
    "NETWORK",
    "PROFILE_BACKENDS",
    "SKELETON",
    "profile_blocks",
    "table_from_records",
    "time_files",
]
