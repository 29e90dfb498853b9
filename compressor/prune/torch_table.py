"""A per-block latency table measured in torch itself (CPU, or CUDA where the model will run
in torch), and torch-timed candidates: `prune.latency_backend: torch`.

The same table as `deploy profile-blocks` makes from ONNX subgraphs (deploy.profiling), with
modules instead of files: each block's module alone, an identity per block input shape for
the per-call cost (the runner's host-device copies included, which the block's own timing
also pays), the whole model and its skeleton (every block removed), timed side by side.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence

import torch
from torch import nn

from compressor.models.blocks import BlockInfo
from compressor.models.spec import remove_blocks_
from deploy.bench import benchmark_side_by_side
from deploy.machine.state import MachineMonitor
from deploy.profiling.blocks_file import BlockEntry
from deploy.profiling.profile_blocks import NETWORK, SKELETON, table_from_records
from deploy.profiling.table import LatencyTable
from deploy.records import BenchConfig, LatencyRecord
from deploy.runners.torch_runner import TorchRunner


def torch_device() -> str:
    """Where torch tables and candidates are timed: the GPU when there is one."""
    return "cuda" if torch.cuda.is_available() else "cpu"


def torch_block_table(
    model: nn.Module,
    blocks: Sequence[BlockInfo],
    example: torch.Tensor,
    config: BenchConfig,
    fingerprint: dict,
    *,
    threads: int | None,
    monitor: MachineMonitor | None = None,
) -> LatencyTable:
    """The latency table of `model`'s `blocks`, timed as torch modules on `torch_device()`."""
    device = torch_device()
    shape = tuple(example.shape[1:])

    def runner(module: nn.Module, per_sample: tuple[int, ...]) -> TorchRunner:
        return TorchRunner(
            copy.deepcopy(module).eval(),
            input_shape=(None, *per_sample),
            device=device,
            threads=threads,
        )

    skeleton = copy.deepcopy(model)
    remove_blocks_(skeleton, [b.name for b in blocks])
    runners = {NETWORK: runner(model, shape), SKELETON: runner(skeleton, shape)}
    baseline_of = {}
    for block in blocks:
        runners[f"block:{block.name}"] = runner(model.get_submodule(block.name), block.in_shape)
        key = "x".join(map(str, block.in_shape))
        baseline_of[block.name] = key
        if f"baseline:{key}" not in runners:
            runners[f"baseline:{key}"] = runner(nn.Identity(), block.in_shape)
    records = benchmark_side_by_side(runners, config, monitor=monitor)
    entries = [
        BlockEntry(b.name, b.name, b.name, b.stage, b.index, b.macs, b.params) for b in blocks
    ]
    return table_from_records(
        records,
        entries,
        baseline_of,
        model_sha256="",  # a module in memory, not a file
        backend="torch",
        precision="fp32",
        threads=threads,
        fingerprint=fingerprint,
    )


def time_modules(
    models: dict[str, nn.Module],
    example: torch.Tensor,
    config: BenchConfig,
    *,
    threads: int | None,
    monitor: MachineMonitor | None = None,
) -> list[LatencyRecord]:
    """Time modules side by side on `torch_device()` (a candidate beside dense)."""
    shape = (None, *example.shape[1:])
    runners = {
        name: TorchRunner(
            copy.deepcopy(m).eval(), input_shape=shape, device=torch_device(), threads=threads
        )
        for name, m in models.items()
    }
    return benchmark_side_by_side(runners, config, monitor=monitor)


__all__ = ["time_modules", "torch_block_table", "torch_device"]
