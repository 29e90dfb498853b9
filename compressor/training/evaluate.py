"""Top-1 accuracy and mean cross-entropy of a model on a split, on any device."""

from __future__ import annotations

import torch
from torch import nn

from compressor.data.splits import Split, iterate_batches
from compressor.errors import InputError
from compressor.training.config import resolve_device


@torch.no_grad()
def evaluate(
    model: nn.Module,
    split: Split,
    *,
    batch_size: int = 256,
    device: str | torch.device | None = None,
) -> tuple[float, float]:
    """(accuracy, mean cross-entropy); on the model's device unless `device` moves it there."""
    if len(split) == 0:
        raise InputError("cannot evaluate on an empty split")
    if device is None:
        device = next(model.parameters(), torch.empty(0)).device
    device = resolve_device(device)
    was_training = model.training
    model.to(device).eval()
    loss_sum, correct = (torch.zeros((), device=device) for _ in range(2))
    for images, labels in iterate_batches(split, batch_size, shuffle=False):
        images, labels = images.to(device), labels.to(device)
        logits = model(images).float()
        loss_sum += nn.functional.cross_entropy(logits, labels, reduction="sum")
        correct += (logits.argmax(dim=1) == labels).sum()
    model.train(was_training)
    return correct.item() / len(split), loss_sum.item() / len(split)
