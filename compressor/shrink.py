"""Channel shrinking with Torch-Pruning's dependency graph: channels are removed for real.

Torch-Pruning groups every layer coupled to a channel (convs, batch norms, the residual
adds that tie a whole stage together) and removes the same channels from all of them, so
the result is a smaller dense network, not a mask. Channel counts are rounded to
`round_to` (8 by default: TensorRT's tensor-core kernels want multiples of 8; odd counts
are why pruned models are often no faster on GPUs and Jetsons).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import nn

from compressor.configs import config_kwargs
from compressor.errors import ConfigError

Importance = Literal["magnitude", "taylor", "lamp"]
# Granularity of a MACs-target search: the ratio grows in this many steps up to the cap.
_MACS_SEARCH_STEPS = 20
_MAX_RATIO = 0.9


@dataclass(frozen=True, kw_only=True)
class ShrinkConfig:
    importance: Importance = "magnitude"  # L2 magnitude | first-order Taylor | LAMP
    ratio: float | None = 0.5  # fraction of channels removed from each prunable group
    macs_target: float | None = None  # or: shrink until MACs <= this fraction of before
    round_to: int = 8  # kept channel counts are multiples of this (tensor cores like 8)
    fine_tune_epochs: int = 5  # short training after shrinking
    fine_tune_lr: float = 0.01  # lower than training's: the weights are already trained

    def __post_init__(self) -> None:
        if self.importance not in ("magnitude", "taylor", "lamp"):
            raise ConfigError(
                f"shrink.importance: unknown importance '{self.importance}'; "
                "choose magnitude, taylor or lamp"
            )
        if (self.ratio is None) == (self.macs_target is None):
            raise ConfigError("shrink: give exactly one of ratio or macs_target")
        if self.ratio is not None and not 0 <= self.ratio < 1:
            raise ConfigError(f"shrink.ratio: must be in [0, 1), got {self.ratio}")
        if self.macs_target is not None and not 0 < self.macs_target <= 1:
            raise ConfigError(f"shrink.macs_target: must be in (0, 1], got {self.macs_target}")
        if not isinstance(self.round_to, int) or self.round_to < 1:
            raise ConfigError(f"shrink.round_to: must be a whole number >= 1, got {self.round_to}")
        if self.fine_tune_epochs < 0 or self.fine_tune_lr <= 0:
            raise ConfigError("shrink: fine_tune_epochs must be >= 0 and fine_tune_lr > 0")

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ShrinkConfig:
        data = config_kwargs(cls, data, "shrink")
        if "macs_target" in data and "ratio" not in data:
            data["ratio"] = None
        return cls(**data)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class ShrinkResult:
    params_before: int
    params_after: int
    macs_before: int  # Torch-Pruning's counter, one sample
    macs_after: int
    channels: dict[str, tuple[int, int]]  # conv name -> (out channels before, after)
    unpruned: tuple[str, ...]  # convs whose channels were left as they were

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _importance(name: Importance):  # noqa: ANN202 - a Torch-Pruning importance object
    import torch_pruning as tp

    if name == "magnitude":
        return tp.importance.GroupMagnitudeImportance(p=2)
    if name == "taylor":
        return tp.importance.GroupTaylorImportance()
    return tp.importance.LAMPImportance(p=2)


def find_classifier(model: nn.Module) -> nn.Module:
    """The output layer, whose channels are the classes and must never be pruned."""
    declared = getattr(model, "classifier", None)
    if callable(declared):
        return declared()
    linears = [m for m in model.modules() if isinstance(m, nn.Linear)]
    if not linears:
        raise ConfigError("shrink: cannot find the classifier (no nn.Linear in the model)")
    return linears[-1]


def count_macs_params(model: nn.Module, example: torch.Tensor) -> tuple[int, int]:
    import torch_pruning as tp

    was_training = model.training
    model.eval()
    macs, params = tp.utils.count_ops_and_params(model, example[:1])
    model.train(was_training)
    return int(macs), int(params)


def shrink_channels_(
    model: nn.Module,
    example: torch.Tensor,
    config: ShrinkConfig,
    calibration: tuple[torch.Tensor, torch.Tensor] | None = None,
) -> ShrinkResult:
    """Remove channels from `model` in place; `calibration` (images, labels) feeds Taylor."""
    import torch_pruning as tp

    if config.importance == "taylor" and calibration is None:
        raise ConfigError("shrink.importance 'taylor' needs a calibration batch of labelled images")
    convs_before = {n: m.out_channels for n, m in model.named_modules() if isinstance(m, nn.Conv2d)}
    macs_before, params_before = count_macs_params(model, example)
    target_ratio = config.ratio if config.ratio is not None else _MAX_RATIO
    steps = 1 if config.ratio is not None else _MACS_SEARCH_STEPS
    pruner = tp.pruner.BasePruner(
        model,
        example[:1],
        importance=_importance(config.importance),
        pruning_ratio=target_ratio,
        iterative_steps=steps,
        ignored_layers=[find_classifier(model)],
        round_to=config.round_to,
    )
    model.eval()
    for _ in range(steps):
        if config.importance == "taylor":
            _taylor_gradients(model, calibration)
        pruner.step()
        macs, _ = count_macs_params(model, example)
        if config.macs_target is not None and macs <= config.macs_target * macs_before:
            break
    model.zero_grad(set_to_none=True)
    macs_after, params_after = count_macs_params(model, example)
    after = {n: m.out_channels for n, m in model.named_modules() if isinstance(m, nn.Conv2d)}
    return ShrinkResult(
        params_before=params_before,
        params_after=params_after,
        macs_before=macs_before,
        macs_after=macs_after,
        channels={n: (convs_before[n], after[n]) for n in after if n in convs_before},
        unpruned=tuple(n for n in after if n in convs_before and after[n] == convs_before[n]),
    )


def _taylor_gradients(model: nn.Module, batch: tuple[torch.Tensor, torch.Tensor]) -> None:
    """Taylor importance reads .grad: one loss and backward on the calibration batch."""
    images, labels = batch
    model.zero_grad(set_to_none=True)
    F.cross_entropy(model(images), labels).backward()
