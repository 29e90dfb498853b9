"""An example model of the kind a user brings: not from the project's zoo.

A small pre-activation residual network with depthwise convolutions, squeeze-excitation and
SiLU, built with plain `torch.nn`. `recipes/custom-model.yaml` names it as
`recipes/models/preact_se.py:build`; any file or importable module works the same way.
"""

from __future__ import annotations

import torch
from torch import nn


class SqueezeExcite(nn.Module):
    def __init__(self, channels: int, reduction: int = 4) -> None:
        super().__init__()
        self.reduce = nn.Conv2d(channels, max(1, channels // reduction), 1)
        self.expand = nn.Conv2d(max(1, channels // reduction), channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        scale = x.mean((2, 3), keepdim=True)
        return x * torch.sigmoid(self.expand(nn.functional.silu(self.reduce(scale))))


class PreActBlock(nn.Module):
    """x + branch(x): BN-SiLU-conv3x3-BN-SiLU-depthwise3x3-SE-conv1x1."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.branch = nn.Sequential(
            nn.BatchNorm2d(channels),
            nn.SiLU(),
            nn.Conv2d(channels, channels, 3, padding=1, bias=False),
            nn.BatchNorm2d(channels),
            nn.SiLU(),
            nn.Conv2d(channels, channels, 3, padding=1, groups=channels, bias=False),
            SqueezeExcite(channels),
            nn.Conv2d(channels, channels, 1, bias=False),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.branch(x)


class PreActSENet(nn.Module):
    def __init__(self, num_classes: int, in_channels: int, widths: tuple[int, ...], depth: int):
        super().__init__()
        self.stem = nn.Conv2d(in_channels, widths[0], 3, padding=1, bias=False)
        stages = []
        for index, width in enumerate(widths):
            blocks: list[nn.Module] = []
            if index > 0:  # downsample between stages: not a residual block
                blocks.append(nn.Conv2d(widths[index - 1], width, 3, 2, 1, bias=False))
            blocks += [PreActBlock(width) for _ in range(depth)]
            stages.append(nn.Sequential(*blocks))
        self.stages = nn.Sequential(*stages)
        self.norm = nn.BatchNorm2d(widths[-1])
        self.head = nn.Linear(widths[-1], num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = nn.functional.silu(self.norm(self.stages(self.stem(x))))
        return self.head(x.mean((2, 3)))


def build(
    num_classes: int = 1000, in_channels: int = 3, width: int = 16, depth: int = 3
) -> nn.Module:
    """num_classes and in_channels are filled from the dataset by `compressor`."""
    return PreActSENet(num_classes, in_channels, (width, 2 * width, 4 * width), depth)
