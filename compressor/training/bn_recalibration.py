"""Batch-norm recalibration: re-estimate running statistics from the weights a model has now.

A BatchNorm layer normalises with its batch's statistics while training and with its
running averages in eval mode. After surgery (blocks removed, channels cut) or a short
training with momentum 0.1 those averages describe another network, and eval-mode accuracy
can collapse to chance while the same weights score well on batch statistics (torchvision
MobileNetV2 on the digits: 9.7% vs 94%). Recalibrating resets every running mean and
variance and averages them exactly (momentum=None, every batch weighted equally) over a few
training batches, forward only; the weights are untouched, so it costs a few forward passes
and never changes what training learns. The result depends only on the weights and the
images, never on the statistics it replaces, so calling it twice gives the same buffers.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import asdict, dataclass
from typing import Any

import torch
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm

from compressor.errors import ConfigError
from compressor.models.blocks import evaluating

__all__ = ["BNRecalibration", "batchnorm_layers", "recalibrate_bn_"]


@dataclass(frozen=True)
class BNRecalibration:
    """What a recalibration did: 0 layers means the model has no tracking BatchNorm."""

    layers: int  # BatchNorm layers whose running statistics were re-estimated
    batches: int  # forward passes the statistics are averaged over
    images: int  # training images seen, in all

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def batchnorm_layers(model: nn.Module) -> list[_BatchNorm]:
    """BatchNorm layers that keep running statistics (SyncBatchNorm and subclasses included)."""
    return [
        m
        for m in _unwrapped(model).modules()
        if isinstance(m, _BatchNorm) and m.track_running_stats and m.running_mean is not None
    ]


def _unwrapped(model: nn.Module) -> nn.Module:
    """DistributedDataParallel's inner module: its forward would broadcast buffers and arm
    gradient hooks that a forward-only pass has no use for."""
    if isinstance(model, nn.parallel.DistributedDataParallel):
        return model.module
    return model


def _batches(n: int, batches: int, batch_size: int, seed: int) -> list[torch.Tensor]:
    """Index sets of whole batches, drawn once from a seeded permutation (no augmentation).

    A permutation, not the first images: a split stored class by class would otherwise give
    statistics of a few classes. Only whole batches, so every batch weighs the same in the
    exact average; a split smaller than one batch is one batch of all of it.
    """
    order = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
    if n <= batch_size:
        return [order]
    count = min(batches, n // batch_size)
    return [order[i * batch_size : (i + 1) * batch_size] for i in range(count)]


@torch.no_grad()
def recalibrate_bn_(
    model: nn.Module,
    images: torch.Tensor,
    batches: int,
    batch_size: int,
    *,
    seed: int = 0,
) -> BNRecalibration:
    """Reset and re-estimate every BatchNorm's running statistics in place.

    `images` are normalised training images (N, C, H, W); up to `batches` whole batches of
    `batch_size` are drawn from them with `seed`. Only the batch norms run in train mode
    (dropout and the like stay off), without gradients and in float32 whatever the training
    precision (eval-mode inference, which these statistics serve, runs in float32 too).
    Every module's train/eval flag and every batch norm's momentum are restored afterwards.
    A model without BatchNorm, or `batches` 0, is left as it is.

    Under torchrun every rank passes the same images and so computes the same statistics;
    a DistributedDataParallel wrapper is looked through.
    """
    if isinstance(batches, bool) or not isinstance(batches, int) or batches < 0:
        raise ConfigError(f"train.bn_recalibration_batches must be an int >= 0, got {batches!r}")
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ConfigError(f"bn recalibration batch_size must be an int >= 1, got {batch_size!r}")
    model = _unwrapped(model)
    norms = batchnorm_layers(model)
    n = int(images.shape[0])
    if not norms or batches == 0:
        return BNRecalibration(layers=0, batches=0, images=0)
    if n < 2:  # a batch of one image has no variance: train-mode BatchNorm refuses it
        raise ConfigError(
            f"batch-norm recalibration needs at least 2 training images, got {n}; set "
            "train.bn_recalibration_batches: 0 to keep the running statistics"
        )
    device = next(iter(model.parameters()), norms[0].running_mean).device
    index_sets = _batches(n, batches, batch_size, seed)
    average_bn_statistics_(model, norms, (images[index].to(device) for index in index_sets))
    seen = sum(len(index) for index in index_sets)
    return BNRecalibration(layers=len(norms), batches=len(index_sets), images=seen)


@torch.no_grad()
def average_bn_statistics_(
    model: nn.Module, norms: list[_BatchNorm], inputs: Iterable[torch.Tensor]
) -> None:
    """Reset `norms` and set their running statistics to the exact average over `inputs`.

    The one place this is done: recalibration here, and the batch-norm hook of the
    mode-connectivity barrier (compressor/workflows/lottery/analysis.py). Only the batch
    norms run in train mode, in float32; every flag and momentum is restored afterwards.
    """
    momenta = [norm.momentum for norm in norms]
    with evaluating(model):  # everything in eval mode, every flag restored afterwards
        try:
            for norm in norms:
                norm.reset_running_stats()
                norm.momentum = None  # cumulative average: each batch counts the same
                norm.train()
            device_type = next(iter(model.parameters()), torch.empty(0)).device.type
            with torch.autocast(device_type, enabled=False):
                for batch in inputs if norms else ():
                    model(batch)
        finally:
            for norm, momentum in zip(norms, momenta, strict=True):
                norm.momentum = momentum
