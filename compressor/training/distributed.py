"""Data-parallel training under `torchrun`: process group, rank queries, sharding, DDP wrapping.

`torchrun --nproc_per_node=N -m compressor run recipe.yaml` starts N copies of the same
command with WORLD_SIZE, RANK and LOCAL_RANK in the environment; `init_from_env` turns that
into a process group. Without torchrun every function here is a cheap no-op (world size 1,
rank 0), so the same code and recipe run unchanged on one process.

Every rank holds the whole dataset in memory (see compressor/data/splits.py), draws the same global
batch from the same generator and trains on its own contiguous part of it (`shard_slice`);
the recipe's `batch_size` is the global batch. Only rank 0 writes files: callers guard writes
with `is_main_process()` and put a `barrier()` between rank 0 writing a file and any other
rank reading it.
"""

from __future__ import annotations

import inspect
import os
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist
from torch import nn

from compressor.errors import ConfigError
from compressor.models.blocks import evaluating

__all__ = [
    "DistInfo",
    "all_reduce_sum",
    "average_batchnorm_statistics_",
    "barrier",
    "broadcast_object",
    "cleanup",
    "gather_objects",
    "init_from_env",
    "is_main_process",
    "local_batch_size",
    "rank",
    "shard_slice",
    "synced_batchnorm",
    "world_size",
    "wrap_ddp",
]

BATCHNORMS = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d)


@dataclass(frozen=True)
class DistInfo:
    """Where this process stands in the job; world size 1 and rank 0 without torchrun."""

    rank: int  # 0..world_size-1, over all nodes
    world_size: int  # processes in the job
    local_rank: int  # index on this node: the CUDA device this process trains on

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1


def _initialized() -> bool:
    return dist.is_available() and dist.is_initialized()


def _env_int(name: str, default: int, minimum: int) -> int:
    raw = os.environ.get(name)
    if raw is None:
        return default
    try:
        value = int(raw)
    except ValueError:
        value = minimum - 1
    if value < minimum:
        raise ConfigError(
            f"environment variable {name} must be an int >= {minimum}, got {raw!r}; "
            "start distributed runs with torchrun, which sets it"
        )
    return value


def _env_info() -> DistInfo:
    """The job layout torchrun announced in the environment (validated, nothing started)."""
    size = _env_int("WORLD_SIZE", 1, 1)
    if size == 1:
        return DistInfo(rank=0, world_size=1, local_rank=0)
    if "RANK" not in os.environ:
        raise ConfigError(f"WORLD_SIZE is {size} but RANK is not set; start the run with torchrun")
    rank_ = _env_int("RANK", 0, 0)
    if rank_ >= size:
        raise ConfigError(f"RANK {rank_} is outside 0..{size - 1} (WORLD_SIZE {size})")
    return DistInfo(rank=rank_, world_size=size, local_rank=_env_int("LOCAL_RANK", rank_, 0))


def _current() -> DistInfo:
    if _initialized():
        local = _env_int("LOCAL_RANK", dist.get_rank(), 0)
        return DistInfo(rank=dist.get_rank(), world_size=dist.get_world_size(), local_rank=local)
    return _env_info()


def init_from_env(device: str | torch.device = "auto") -> DistInfo:
    """Join the process group torchrun describes; idempotent, and a no-op without torchrun.

    `device` is the training device ("auto", "cpu", "cuda"): CUDA training uses NCCL and the
    GPU numbered LOCAL_RANK, anything else Gloo. A group someone else started is kept as is.
    """
    if _initialized():
        return _current()
    info = _env_info()
    if not info.distributed:
        return info
    if not dist.is_available():
        raise ConfigError("WORLD_SIZE > 1 but this torch build has no torch.distributed")
    kind = torch.device(device).type if str(device) != "auto" else "auto"
    on_cuda = kind in ("auto", "cuda") and torch.cuda.is_available()
    if on_cuda:
        if info.local_rank >= torch.cuda.device_count():
            raise ConfigError(
                f"LOCAL_RANK {info.local_rank} needs GPU {info.local_rank} but there are "
                f"{torch.cuda.device_count()}; lower torchrun's --nproc_per_node"
            )
        torch.cuda.set_device(info.local_rank)
    try:
        dist.init_process_group(backend="nccl" if on_cuda else "gloo")
    except ValueError as exc:  # a rendezvous variable (MASTER_ADDR, ...) is missing
        raise ConfigError(f"cannot start the process group: {exc}; use torchrun") from exc
    return _current()


def world_size() -> int:
    return _current().world_size


def rank() -> int:
    return _current().rank


def is_main_process() -> bool:
    """Rank 0, the one process that writes files and prints; True without torchrun."""
    return _current().is_main


def _group_ready() -> bool:
    """Whether collectives must run; calling them before `init_from_env` is a bug."""
    if _initialized():
        return dist.get_world_size() > 1
    if _env_info().distributed:
        raise RuntimeError(
            "call compressor.training.distributed.init_from_env() before collectives"
        )
    return False


def barrier() -> None:
    """Wait until every rank got here (e.g. after rank 0 wrote a file the others read)."""
    if not _group_ready():
        return
    if dist.get_backend() == "nccl":  # name the GPU, else NCCL guesses and warns
        dist.barrier(device_ids=[torch.cuda.current_device()])
    else:
        dist.barrier()


def broadcast_object(obj: Any) -> Any:
    """Rank 0's `obj` on every rank (pickled: keep it small); `obj` itself without torchrun."""
    if not _group_ready():
        return obj
    holder = [obj if dist.get_rank() == 0 else None]
    dist.broadcast_object_list(holder, src=0)
    return holder[0]


def gather_objects(obj: Any) -> list[Any]:
    """Every rank's `obj`, in rank order, on every rank (`[obj]` without a process group)."""
    if not _group_ready():
        return [obj]
    gathered: list[Any] = [None] * dist.get_world_size()
    dist.all_gather_object(gathered, obj)
    return gathered


def all_reduce_sum(tensor: torch.Tensor) -> torch.Tensor:
    """Sum `tensor` over ranks in place (on the device the group's backend uses); returned."""
    if _group_ready():
        dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
    return tensor


def cleanup() -> None:
    """End of a run: leave the process group so the process exits without NCCL warnings."""
    if _initialized():
        dist.destroy_process_group()


def local_batch_size(global_batch: int, world: int) -> int:
    """Images per rank per step; unequal shares would make DDP's gradient mean a wrong one."""
    if global_batch % world:
        lower = max(world, global_batch - global_batch % world)
        raise ConfigError(
            f"train.batch_size ({global_batch}) is the global batch and must be divisible "
            f"by the {world} processes; use {lower} or {lower + world}"
        )
    return global_batch // world


def shard_slice(batch_len: int, rank_: int, world: int) -> slice:
    """Rank `rank_`'s contiguous part of a batch of `batch_len`; sizes differ by at most one."""
    share, extra = divmod(batch_len, world)
    start = rank_ * share + min(rank_, extra)
    return slice(start, start + share + (rank_ < extra))


def wrap_ddp(
    model: nn.Module, device: torch.device, example: torch.Tensor | None = None
) -> nn.Module:
    """`model` in DistributedDataParallel, without syncing buffers at every forward.

    Rank 0's buffers reach every rank when the wrapper is built; after that each rank keeps
    its own batch-norm statistics and `average_batchnorm_statistics_` merges them once per
    epoch, which saves a broadcast per step and estimates over every rank's batches. DDP's
    search for unused parameters costs a graph walk per step, so it is switched on only when
    one forward on `example` leaves a parameter without a gradient (an auxiliary head a
    user's model never calls); otherwise DDP would stop with "Expected to have finished
    reduction".
    """
    if device.type != "cuda" and dist.get_backend() == "nccl":
        raise ConfigError(
            f"the process group uses NCCL, which cannot train on {device.type}; set "
            "train.device to cuda, or start the group for CPU (init_from_env('cpu'))"
        )
    options = inspect.signature(nn.parallel.DistributedDataParallel).parameters
    key = "forward_sync_buffers" if "forward_sync_buffers" in options else "broadcast_buffers"
    device_ids = None  # CPU: DDP wants none
    if device.type == "cuda":
        device_ids = [device.index if device.index is not None else torch.cuda.current_device()]
    unused = example is not None and _has_unused_parameters(model, example)
    return nn.parallel.DistributedDataParallel(
        model, device_ids=device_ids, find_unused_parameters=unused, **{key: False}
    )


def _has_unused_parameters(model: nn.Module, example: torch.Tensor) -> bool:
    params = [p for p in model.parameters() if p.requires_grad]
    with evaluating(model), torch.enable_grad():  # no batch-norm statistics change, no dropout
        output = model(example[:1])
        grads = torch.autograd.grad(output.float().sum(), params, allow_unused=True)
    return any(g is None for g in grads)


@torch.no_grad()
def average_batchnorm_statistics_(model: nn.Module) -> None:
    """Make every rank's BatchNorm running mean and variance the mean over ranks.

    The mean of per-rank running means is exactly the running mean of the global batches
    (equal shares, and the update is linear); the mean of per-rank variances leaves out the
    spread between the ranks' batch means, a small underestimate for random shards.
    """
    world = world_size()
    if world == 1:
        return
    for module in model.modules():
        if isinstance(module, BATCHNORMS) and module.running_mean is not None:
            for stat in (module.running_mean, module.running_var):
                all_reduce_sum(stat).div_(world)


@contextmanager
def synced_batchnorm(model: nn.Module, enabled: bool) -> Iterator[nn.Module]:
    """Swap `model`'s BatchNorm layers for SyncBatchNorm inside the block, then swap back.

    SyncBatchNorm computes statistics over the global batch but runs on GPUs only (on CPU,
    torch 2.13 raises "SyncBatchNorm expected input tensor to be on GPU or XPU"). The
    replacement shares the original's parameters and buffers, so on exit the caller's
    plain BatchNorm layers hold the trained state, even when training raised.
    """
    swapped: list[tuple[nn.Module, str, nn.Module]] = []
    if enabled:
        for parent in list(model.modules()):
            for name, child in list(parent.named_children()):
                if isinstance(child, BATCHNORMS):
                    setattr(parent, name, nn.SyncBatchNorm.convert_sync_batchnorm(child))
                    swapped.append((parent, name, child))
    try:
        yield model
    finally:
        for parent, name, original in swapped:
            setattr(parent, name, original)
