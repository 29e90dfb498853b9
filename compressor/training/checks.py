"""What `train` checks before its first step, and how it reports a batch too big for memory.

Each check turns a failure that would otherwise surface late and misleadingly into one line
naming the data or the setting to change: NaN pixels become a "loss became NaN, lower lr"
after an epoch; a label beyond the model's classes an IndexError deep in cross_entropy; a
1-channel model fed RGB images a convolution traceback; an empty validation split an error
only after the first epoch's training; a batch too big for memory an allocator traceback.
"""

from __future__ import annotations

import re

import torch
from torch import nn

from compressor.data.splits import DataSplits
from compressor.errors import CompressorError, InputError, TrainingError
from deploy.errors import first_line

CHUNK = 4096  # images checked at a time: the finiteness mask stays small for big splits


def check_splits(data: DataSplits) -> None:
    """Every split non-empty, its images finite floats (N, C, H, W), its labels in range."""
    for name in ("train", "val", "test"):
        split = getattr(data, name)
        images, labels, n = split.images, split.labels, len(split)
        if n == 0:
            raise InputError(f"the {name} split is empty: {data.name} gave it no images")
        if images.ndim != 4 or len(images) != n or not images.is_floating_point():
            raise InputError(
                f"the {name} split holds {images.dtype} images of shape {tuple(images.shape)} "
                f"for {n} labels; expected float (N, C, H, W) images, one per label"
            )
        bad = torch.cat(
            [
                (~torch.isfinite(images[i : i + CHUNK])).flatten(1).any(dim=1)
                for i in range(0, n, CHUNK)
            ]
        )
        if bool(bad.any()):
            count, first = int(bad.sum()), int(bad.nonzero()[0, 0])
            raise InputError(
                f"the {name} split holds NaN or Inf pixels in {count} of {n} images (the "
                f"first is image {first}); clean or drop them before training"
            )
        if labels.is_floating_point() or labels.is_complex() or labels.dtype == torch.bool:
            raise InputError(f"the {name} split's labels are {labels.dtype}; expected integers")
        low, high = int(labels.min()), int(labels.max())
        if low < 0 or high >= data.num_classes:
            raise InputError(
                f"the {name} split has labels from {low} to {high}, but the data declares "
                f"{data.num_classes} classes (labels 0 to {data.num_classes - 1})"
            )


@torch.no_grad()
def check_model_fits(model: nn.Module, data: DataSplits, device: torch.device) -> None:
    """One validation image through the model (eval mode, so nothing it holds changes)."""
    example = data.val.images[:1].to(device)
    size = "x".join(map(str, example.shape[1:]))
    was_training = model.training
    model.eval()
    try:
        logits = model(example)
    except CompressorError:
        raise
    except Exception as exc:  # the model's own code: any type; all mean "wrong input"
        if is_out_of_memory(exc):
            raise TrainingError(
                f"one {size} image does not fit in memory ({_allocation(exc)}); "
                "lower data.image_size or the model's width"
            ) from exc
        first = first_line(exc)
        raise InputError(
            f"the model cannot run on this data's {size} images ({data.name}): "
            f"{type(exc).__name__}: {first}"
        ) from exc
    finally:
        model.train(was_training)
    shape = tuple(logits.shape) if isinstance(logits, torch.Tensor) else type(logits).__name__
    if shape != (1, data.num_classes):
        raise InputError(
            f"the model outputs {shape} for one {size} image, but the data has "
            f"{data.num_classes} classes: expected (1, {data.num_classes})"
        )


def is_out_of_memory(exc: BaseException) -> bool:
    """The CPU allocator and CUDA both report a refused allocation as a RuntimeError."""
    if isinstance(exc, MemoryError | torch.cuda.OutOfMemoryError):  # torch 2.4 has this name
        return True
    text = str(exc)
    return isinstance(exc, RuntimeError) and (
        "can't allocate memory" in text
        or "not enough memory" in text
        or "out of memory" in text.lower()
    )


def batch_too_big(
    exc: BaseException, shape: tuple[int, ...], batch_size: int, checkpoint: str
) -> TrainingError:
    """The one line for a training step whose memory could not be allocated."""
    size = "x".join(map(str, shape[1:]))
    return TrainingError(
        f"batch of {shape[0]} images ({size}) does not fit in memory ({_allocation(exc)}); "
        f"lower train.batch_size (now {batch_size}) or data.image_size; {checkpoint}"
    )


def _allocation(exc: BaseException) -> str:
    """'an allocation of 64.0 GiB was refused' from the allocator's message, when it says."""
    found = re.search(r"tried to allocate (\d+) bytes", str(exc))
    if found:
        return f"an allocation of {int(found.group(1)) / 2**30:,.1f} GiB was refused"
    found = re.search(r"[Tt]ried to allocate ([\d.]+ [KMGT]iB)", str(exc))
    return f"an allocation of {found.group(1)} was refused" if found else type(exc).__name__
