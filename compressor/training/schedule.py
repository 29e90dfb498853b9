"""The learning-rate schedule and the epoch's batches, as functions of the config: the
schedule is a function of global steps, so it depends on how an epoch is cut into steps."""

from __future__ import annotations

import math
from collections.abc import Callable

from compressor.training.config import TrainConfig


def lr_factor(config: TrainConfig, steps_per_epoch: int) -> Callable[[int], float]:
    """Multiplier of `config.lr` at a global step (0-based): warm-up, then cosine or steps."""
    total = config.epochs * steps_per_epoch
    warmup = config.warmup_epochs * steps_per_epoch
    boundaries = [round(m * total) for m in config.milestones]

    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        if config.schedule == "cosine":
            return 0.5 * (1.0 + math.cos(math.pi * (step - warmup) / max(1, total - warmup)))
        return config.gamma ** sum(step >= b for b in boundaries)

    return factor


def epoch_layout(n: int, batch_size: int, world: int) -> tuple[int, bool]:
    """(steps per epoch, whether the trailing partial batch is dropped).

    The trailing batch is kept when every process gets at least two of its images: a share of
    one image breaks BatchNorm. With one process only a trailing batch of one is dropped.
    """
    tail = n % batch_size
    keep = tail >= 2 * world
    return n // batch_size + keep, tail > 0 and not keep
