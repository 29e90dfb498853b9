"""Model zoo: one registry, one `create_model` entry point.

Zoo models declare nothing special: layer pruning finds residual blocks in any model by
running it (compressor/models/blocks.py), and models the project did not write come in through
a factory import path (compressor/models/source.py).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from compressor.errors import ConfigError
from deploy.config_fields import is_int, is_real

ModelFactory = Callable[..., nn.Module]
_REGISTRY: dict[str, ModelFactory] = {}


def register_model(name: str) -> Callable[[ModelFactory], ModelFactory]:
    """Register a factory under `name`; adding a model touches only the file that defines it."""

    def decorate(factory: ModelFactory) -> ModelFactory:
        if name in _REGISTRY:
            raise ValueError(f"model '{name}' is registered twice")
        _REGISTRY[name] = factory
        return factory

    return decorate


def list_models() -> list[str]:
    return sorted(_REGISTRY)


def create_model(name: str, **kwargs: Any) -> nn.Module:
    """Build a registered model; unknown names and arguments are ConfigErrors naming them."""
    if name not in _REGISTRY:
        raise ConfigError(
            f"model: unknown model '{name}'; known models: {', '.join(list_models())}"
        )
    try:
        return _REGISTRY[name](**kwargs)
    except TypeError as exc:
        raise ConfigError(f"model: cannot build '{name}' with {kwargs}: {exc}") from exc


class BasicBlock(nn.Module):
    """Two 3x3 convs with a residual add (He et al. 2016, CIFAR variant).

    The shortcut is a 1x1 projection only when the shape changes (option B), so a block
    whose input and output shapes match is a pure residual and can be removed whole.
    """

    def __init__(self, in_channels: int, out_channels: int, stride: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(out_channels)
        self.conv2 = nn.Conv2d(out_channels, out_channels, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(out_channels)
        self.relu = nn.ReLU(inplace=True)
        self.shortcut: nn.Module | None = None
        if stride != 1 or in_channels != out_channels:
            self.shortcut = nn.Sequential(
                nn.Conv2d(in_channels, out_channels, 1, stride, bias=False),
                nn.BatchNorm2d(out_channels),
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.shortcut is None else self.shortcut(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu(out + identity)


class CifarResNet(nn.Module):
    """ResNet-(6n+2) for small images: three stages of 16/32/64 (x width) channels."""

    def __init__(
        self,
        blocks_per_stage: int,
        *,
        num_classes: int = 10,
        in_channels: int = 3,
        width: float = 1.0,
    ) -> None:
        super().__init__()
        if blocks_per_stage < 1:
            raise ConfigError(f"model: blocks_per_stage must be >= 1, got {blocks_per_stage}")
        if not is_real(width) or width <= 0:
            raise ConfigError(f"model: width must be a number > 0, got {width!r}")
        if not is_int(num_classes) or not is_int(in_channels):
            raise ConfigError(
                f"model: num_classes and in_channels must be whole numbers, "
                f"got {num_classes!r} and {in_channels!r}"
            )
        if num_classes < 2 or in_channels < 1:
            raise ConfigError(
                f"model: need num_classes >= 2 and in_channels >= 1, "
                f"got {num_classes} and {in_channels}"
            )
        widths = [max(1, round(base * width)) for base in (16, 32, 64)]
        self.stem = nn.Sequential(
            nn.Conv2d(in_channels, widths[0], 3, 1, 1, bias=False),
            nn.BatchNorm2d(widths[0]),
            nn.ReLU(inplace=True),
        )
        stages = []
        channels = widths[0]
        for stage, out_channels in enumerate(widths):
            blocks = []
            for index in range(blocks_per_stage):
                stride = 2 if stage > 0 and index == 0 else 1
                blocks.append(BasicBlock(channels, out_channels, stride))
                channels = out_channels
            stages.append(nn.Sequential(*blocks))
        self.layer1, self.layer2, self.layer3 = stages
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(channels, num_classes)
        self._init_weights()

    def _init_weights(self) -> None:
        if self.fc.weight.is_meta:  # a size-only dry run (spec.build_model): nothing to fill,
            return  # and normal_ on the meta device costs seconds of imports the first time
        for module in self.modules():
            if isinstance(module, nn.Conv2d):
                nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(module, nn.BatchNorm2d):
                nn.init.ones_(module.weight)
                nn.init.zeros_(module.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stem(x)
        x = self.layer3(self.layer2(self.layer1(x)))
        return self.fc(torch.flatten(self.pool(x), 1))


def _cifar_resnet(depth: int) -> ModelFactory:
    def factory(*, num_classes: int = 10, in_channels: int = 3, width: float = 1.0) -> nn.Module:
        return CifarResNet(
            (depth - 2) // 6, num_classes=num_classes, in_channels=in_channels, width=width
        )

    factory.__name__ = f"resnet{depth}"
    factory.__doc__ = f"CIFAR ResNet-{depth}: {(depth - 2) // 6} basic blocks per stage."
    return factory


# resnet8 and resnet14 are the tiny members used by fast tests.
for _depth in (8, 14, 20, 32, 44, 56, 110):
    register_model(f"resnet{_depth}")(_cifar_resnet(_depth))
