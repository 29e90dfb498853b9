"""A tiny CIFAR-style residual CNN for export tests: every op a pruned ResNet exports."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from export import ExportResult

INPUT_SHAPE = (1, 16, 16)  # one channel, 16x16: CIFAR-like but cheap
NUM_CLASSES = 10
PARITY_SAMPLES = 200
USER_METADATA = {
    "spec_sha256": "ab" * 32,
    "accuracy": "0.9312",
    "params": "12345",
    "macs": "678901",
}


class BasicBlock(nn.Module):
    """conv-bn-relu-conv-bn + shortcut (identity, or 1x1 conv-bn when the shape changes)."""

    def __init__(self, in_channels: int, out_channels: int, stride: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(out_channels)
        self.conv2 = nn.Conv2d(out_channels, out_channels, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(out_channels)
        self.shortcut: nn.Module = nn.Identity()
        if stride != 1 or in_channels != out_channels:
            self.shortcut = nn.Sequential(
                nn.Conv2d(in_channels, out_channels, 1, stride, bias=False),
                nn.BatchNorm2d(out_channels),
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = torch.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return torch.relu(out + self.shortcut(x))


class TinyResNet(nn.Module):
    def __init__(self, num_classes: int = NUM_CLASSES) -> None:
        super().__init__()
        self.stem = nn.Sequential(
            nn.Conv2d(INPUT_SHAPE[0], 8, 3, 1, 1, bias=False), nn.BatchNorm2d(8), nn.ReLU()
        )
        self.block1 = BasicBlock(8, 8, stride=1)
        self.block2 = BasicBlock(8, 16, stride=2)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(16, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.block2(self.block1(self.stem(x)))
        return self.fc(torch.flatten(self.pool(x), 1))


def make_tiny_resnet(seed: int = 0) -> TinyResNet:
    """Random weights, and batch-norm statistics and affines far from their defaults.

    Default BN (mean 0, var 1, weight 1, bias 0) is nearly the identity, which would let a
    wrong BN folding pass parity; shifted, scaled data in train mode makes it matter.
    """
    torch.manual_seed(seed)
    model = TinyResNet()
    for module in model.modules():
        if isinstance(module, nn.BatchNorm2d):
            nn.init.uniform_(module.weight, 0.5, 1.5)
            nn.init.uniform_(module.bias, -0.3, 0.3)
    model.train()
    with torch.no_grad():
        for _ in range(8):
            model(torch.randn(32, *INPUT_SHAPE) * 2.0 + 0.5)
    return model.eval()


@dataclass(frozen=True)
class Exported:
    """One export shared by many tests: the model, what export_onnx returned, its inputs."""

    model: TinyResNet
    result: ExportResult
    parity_inputs: torch.Tensor
    folder: Path
