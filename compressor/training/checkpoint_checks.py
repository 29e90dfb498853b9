"""A checkpoint is an input like any other: its size, its fields and its weights are checked
before `--resume` trusts them.

The zip CRCs (load_checkpoint) catch flipped bytes; they cannot catch a checkpoint
that was written by hand, by another tool, or by an older run that went wrong: an epoch of
-3 trains 3 epochs too many, metrics that are not a list of numbers fail later with a
TypeError, weights that are NaN would be "resumed" only to fail at the first step with advice
to resume from the very same file.
"""

from __future__ import annotations

import math
import socket
import zipfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from compressor.errors import InputError
from compressor.training.distributed import gather_objects
from deploy.errors import UnsafePathError, first_line
from deploy.paths import check_readable_file

# The numbers every metrics row holds (train._train_loop writes them).
METRIC_FIELDS = (
    "epoch",
    "train_loss",
    "train_acc",
    "val_loss",
    "val_acc",
    "lr",
    "epoch_seconds",
    "elapsed_seconds",
)
ADVICE = "delete it to start over or choose another output directory"


def checkpoint_size_limit(model: torch.nn.Module) -> int:
    """The most bytes a checkpoint of `model` can plausibly take: the weights, the
    optimizer's state (momentum: one more copy), generous room for the rest."""
    weights = sum(t.numel() * t.element_size() for t in model.state_dict().values())
    return 4 * weights + (256 << 20)


def check_checkpoint_fields(
    state: Mapping[str, Any], path: Path, start_epoch: int, epochs: int
) -> None:
    """Raise InputError naming the first field of `state` that a resume cannot use."""
    epoch = state.get("epoch")
    if isinstance(epoch, bool) or not isinstance(epoch, int) or not start_epoch <= epoch <= epochs:
        raise InputError(
            f"cannot resume from {path}: its epoch is {_show(epoch)}, expected a whole number "
            f"from {start_epoch} to {epochs} (train.epochs); {ADVICE}"
        )
    metrics = state.get("metrics")
    if not isinstance(metrics, list):
        raise InputError(
            f"cannot resume from {path}: its metrics are {_show(metrics)}, not a list of rows; "
            f"{ADVICE}"
        )
    if len(metrics) != epoch - start_epoch:
        raise InputError(
            f"cannot resume from {path}: it holds {len(metrics)} metrics rows for "
            f"{epoch - start_epoch} epochs trained; {ADVICE}"
        )
    for row_number, row in enumerate(metrics, start=1):
        if not isinstance(row, dict):
            raise InputError(
                f"cannot resume from {path}: metrics row {row_number} is not a mapping; {ADVICE}"
            )
        for key in METRIC_FIELDS:
            value = row.get(key)
            if (
                isinstance(value, bool)
                or not isinstance(value, int | float)
                or not math.isfinite(value)
            ):
                raise InputError(
                    f"cannot resume from {path}: metrics row {row_number} has {key} = "
                    f"{_show(value)}, not a finite number; {ADVICE}"
                )
    for key in ("model", "optimizer", "scheduler", "config", "rng", "augment", "data"):
        if not isinstance(state.get(key), dict):
            raise InputError(
                f"cannot resume from {path}: its {key!r} is {_show(state.get(key))}, not a "
                f"mapping; {ADVICE}"
            )
    bad = [
        name
        for name, tensor in state["model"].items()
        if not isinstance(tensor, torch.Tensor)
        or (tensor.is_floating_point() and not bool(tensor.isfinite().all()))
    ]
    if bad:
        raise InputError(
            f"cannot resume from {path}: its weights are not finite numbers ({', '.join(bad[:3])}"
            f"{', ...' if len(bad) > 3 else ''}), so training from it would fail at once; "
            f"{ADVICE}"
        )


def _show(value: Any) -> str:
    """A field's value for a message: short, one line, its type when it is not a number."""
    if isinstance(value, bool | int | float | str) or value is None:
        return repr(value)[:40]
    return f"of type {type(value).__name__}"


def load_checkpoint(path: Path, max_bytes: int) -> dict[str, Any]:
    """The checkpoint's contents; a damaged file is an InputError and stays as it is.

    torch.load does not check the zip's CRCs, so flipped bytes inside a tensor would resume
    from silently corrupted weights: zipfile checks them first. Unpickling damaged data can
    raise almost any exception type; to the user they all mean the same.
    """
    advice = "delete it to start over or choose another output directory"
    try:  # a link to /dev/zero or a FIFO would be read forever, a huge file into memory
        check_readable_file(path, "checkpoint", max_bytes=max_bytes)
    except UnsafePathError as exc:
        raise InputError(f"cannot resume: {str(exc).split('; ')[0]}; {advice}") from exc
    try:
        with zipfile.ZipFile(path) as archive:
            damaged = archive.testzip()
        if damaged is not None:
            raise InputError(
                f"cannot read checkpoint {path}: its record {damaged} fails its CRC check "
                f"(the file is damaged); {advice}"
            )
        state = torch.load(path, map_location="cpu", weights_only=True)
    except InputError:
        raise
    except Exception as exc:
        first = first_line(exc)
        if "Weights only load failed" in first:  # torch's 1,000-character explanation
            first = "it holds Python objects besides tensors, which could run code: not loaded"
        raise InputError(f"cannot read checkpoint {path} ({first}); {advice}") from exc
    if not isinstance(state, dict):
        raise InputError(f"{path} holds a {type(state).__name__}, not a checkpoint; {advice}")
    return state


def refuse_to_overwrite(checkpoint_path: Path, resume: bool) -> None:
    if checkpoint_path.exists() and not resume:
        raise InputError(
            f"{checkpoint_path} already exists; pass --resume to continue that run "
            "or choose another output directory"
        )


def check_same_file(path: Path) -> None:
    """On resume, every rank must see the same files (a checkpoint, a finished stage's model):
    the nodes of a multi-node job share the output folder. Without a shared file system rank
    0 alone would find the checkpoint and resume while the others started over, training a
    model nobody asked for, or skip a stage the others train; every rank raises this error
    instead. A fresh run needs no shared folder: rank 0 alone writes and nobody reads."""
    views = gather_objects((socket.gethostname(), path.is_file()))
    if len({seen for _, seen in views}) > 1:
        seen = [f"rank {r} on {host}" for r, (host, found) in enumerate(views) if found]
        blind = [f"rank {r} on {host}" for r, (host, found) in enumerate(views) if not found]
        raise InputError(
            f"--resume: {path} is seen by {', '.join(seen)} but not by {', '.join(blind)}; "
            "every node must see the same output folder: put --out on a file system all "
            "nodes share (NFS, Lustre, a cloud file share) at the same path"
        )
