"""A checkpoint is an input like any other: its size, its fields and its weights are checked
before `--resume` trusts them.

The zip CRCs (train._load_checkpoint) catch flipped bytes; they cannot catch a checkpoint
that was written by hand, by another tool, or by an older run that went wrong: an epoch of
-3 trains 3 epochs too many, metrics that are not a list of numbers fail later with a
TypeError, weights that are NaN would be "resumed" only to fail at the first step with advice
to resume from the very same file.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from compressor.errors import InputError

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
