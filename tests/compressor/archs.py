"""Architectures outside our zoo, for testing block removal on arbitrary nn.Modules.

Written from the papers' descriptions, not copied from any implementation:
- ResNet: He et al. 2016, "Deep Residual Learning for Image Recognition" (ImageNet ResNets,
  with the stride on the 3x3 conv of a bottleneck, "v1.5"; and the CIFAR ResNets of section
  4.2 with parameter-free "option A" shortcuts).
- MobileNetV2: Sandler et al. 2018, "MobileNetV2: Inverted Residuals and Linear Bottlenecks".

Module names follow torchvision (`layer2.0.conv1`, `features.3.conv.1.0`, `fc`, `classifier`)
so that checkpoints and patterns such as "layer2.*" mean the same thing here and there. Every
factory takes `num_classes` and `in_channels` plus a size knob so tests run fast on CPU.
"""

from __future__ import annotations

import importlib
from collections import OrderedDict
from collections.abc import Callable, Sequence
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import nn

# ---------------------------------------------------------------- torchvision-style ResNet


def _init_conv_bn(model: nn.Module, nonlinearity: str) -> None:
    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity=nonlinearity)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.BatchNorm2d):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)


class BasicBlock(nn.Module):
    expansion = 1

    def __init__(self, inplanes: int, planes: int, stride: int = 1, downsample=None) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(inplanes, planes, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.relu = nn.ReLU(inplace=True)  # one module, called twice per forward
        self.conv2 = nn.Conv2d(planes, planes, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.downsample = downsample
        self.stride = stride

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        out += identity
        return self.relu(out)


class Bottleneck(nn.Module):
    expansion = 4

    def __init__(self, inplanes: int, planes: int, stride: int = 1, downsample=None) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(inplanes, planes, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride, 1, bias=False)  # v1.5: stride here
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv3 = nn.Conv2d(planes, planes * self.expansion, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(planes * self.expansion)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = downsample
        self.stride = stride

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        out += identity
        return self.relu(out)


class ResNet(nn.Module):
    def __init__(self, block, layers: Sequence[int], width, num_classes, in_channels) -> None:
        super().__init__()
        self.inplanes = width
        self.conv1 = nn.Conv2d(in_channels, width, 7, 2, 3, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(3, 2, 1)
        self.layer1 = self._make_layer(block, width, layers[0], 1)
        self.layer2 = self._make_layer(block, width * 2, layers[1], 2)
        self.layer3 = self._make_layer(block, width * 4, layers[2], 2)
        self.layer4 = self._make_layer(block, width * 8, layers[3], 2)
        self.avgpool = nn.AdaptiveAvgPool2d((1, 1))
        self.fc = nn.Linear(width * 8 * block.expansion, num_classes)
        _init_conv_bn(self, nonlinearity="relu")

    def _make_layer(self, block, planes: int, count: int, stride: int) -> nn.Sequential:
        downsample = None
        if stride != 1 or self.inplanes != planes * block.expansion:
            downsample = nn.Sequential(
                nn.Conv2d(self.inplanes, planes * block.expansion, 1, stride, bias=False),
                nn.BatchNorm2d(planes * block.expansion),
            )
        blocks = [block(self.inplanes, planes, stride, downsample)]
        self.inplanes = planes * block.expansion
        blocks += [block(self.inplanes, planes) for _ in range(1, count)]
        return nn.Sequential(*blocks)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        return self.fc(torch.flatten(self.avgpool(x), 1))


def tv_resnet(
    block: Literal["basic", "bottleneck"] = "basic",
    layers: Sequence[int] = (2, 2, 2, 2),
    *,
    width: int = 64,
    num_classes: int = 10,
    in_channels: int = 3,
) -> ResNet:
    """torchvision-style ResNet; `width` is the base planes (64 in torchvision, 8 is fast)."""
    blocks = {"basic": BasicBlock, "bottleneck": Bottleneck}
    if block not in blocks or len(layers) != 4:
        raise ValueError(
            f"block must be 'basic' or 'bottleneck' and layers 4 counts, got "
            f"block={block!r}, layers={tuple(layers)}"
        )
    return ResNet(blocks[block], layers, width, num_classes, in_channels)


def tv_resnet18(**kw: Any) -> ResNet:
    return tv_resnet("basic", (2, 2, 2, 2), **kw)


def tv_resnet50(**kw: Any) -> ResNet:
    return tv_resnet("bottleneck", (3, 4, 6, 3), **kw)


# ---------------------------------------------------------------- MobileNetV2

# (expansion t, output channels c, repeats n, first stride s): Table 2 of Sandler et al.
MOBILENET_V2_SETTING = [
    [1, 16, 1, 1], [6, 24, 2, 2], [6, 32, 3, 2], [6, 64, 4, 2],
    [6, 96, 3, 1], [6, 160, 3, 2], [6, 320, 1, 1],
]  # fmt: skip


def _make_divisible(value: float, divisor: int = 8) -> int:
    """Round to a multiple of `divisor`, never more than 10% below `value`."""
    rounded = max(divisor, int(value + divisor / 2) // divisor * divisor)
    return rounded + divisor if rounded < 0.9 * value else rounded


class ConvBNReLU(nn.Sequential):
    """conv, BN, ReLU6 as children "0", "1", "2" (torchvision's Conv2dNormActivation)."""

    def __init__(self, inp: int, oup: int, kernel: int = 3, stride: int = 1, groups: int = 1):
        super().__init__(
            nn.Conv2d(inp, oup, kernel, stride, (kernel - 1) // 2, groups=groups, bias=False),
            nn.BatchNorm2d(oup),
            nn.ReLU6(inplace=True),
        )
        self.out_channels = oup


class InvertedResidual(nn.Module):
    def __init__(self, inp: int, oup: int, stride: int, expand_ratio: int) -> None:
        super().__init__()
        hidden = int(round(inp * expand_ratio))
        self.stride = stride
        self.use_res_connect = stride == 1 and inp == oup
        layers: list[nn.Module] = [] if expand_ratio == 1 else [ConvBNReLU(inp, hidden, 1)]
        layers += [
            ConvBNReLU(hidden, hidden, 3, stride, groups=hidden),  # depthwise
            nn.Conv2d(hidden, oup, 1, bias=False),  # linear bottleneck: no activation
            nn.BatchNorm2d(oup),
        ]
        self.conv = nn.Sequential(*layers)
        self.out_channels = oup

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.conv(x) if self.use_res_connect else self.conv(x)


class MobileNetV2(nn.Module):
    def __init__(self, features: nn.Sequential, classifier: nn.Sequential) -> None:
        super().__init__()
        self.features = features
        self.classifier = classifier
        _init_conv_bn(self, nonlinearity="leaky_relu")  # torchvision's kaiming default here
        for m in self.modules():
            if isinstance(m, nn.Linear):
                nn.init.normal_(m.weight, 0, 0.01)
                nn.init.zeros_(m.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.adaptive_avg_pool2d(self.features(x), (1, 1))
        return self.classifier(torch.flatten(x, 1))


def tv_mobilenet_v2(
    *,
    width_mult: float = 1.0,
    num_classes: int = 10,
    in_channels: int = 3,
    setting: Sequence[Sequence[int]] | None = None,
    last_channel: int | None = None,
    dropout: float = 0.2,
) -> MobileNetV2:
    """MobileNetV2 as torchvision builds it; `width_mult=0.25` and a short `setting` are fast."""
    channels = _make_divisible(32 * width_mult)
    if last_channel is None:
        last_channel = _make_divisible(1280 * max(1.0, width_mult))
    features: list[nn.Module] = [ConvBNReLU(in_channels, channels, 3, 2)]
    for t, c, n, s in setting or MOBILENET_V2_SETTING:
        out = _make_divisible(c * width_mult)
        for i in range(n):
            features.append(InvertedResidual(channels, out, s if i == 0 else 1, t))
            channels = out
    features.append(ConvBNReLU(channels, last_channel, 1))
    classifier = nn.Sequential(nn.Dropout(dropout), nn.Linear(last_channel, num_classes))
    return MobileNetV2(nn.Sequential(*features), classifier)


# ---------------------------------------------------------------- CIFAR ResNet, option A


class LambdaLayer(nn.Module):
    def __init__(self, fn: Callable[[torch.Tensor], torch.Tensor]) -> None:
        super().__init__()
        self.fn = fn

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fn(x)


class OptionABasicBlock(nn.Module):
    """Two 3x3 convs; the shortcut subsamples and zero-pads channels, so it has no weights."""

    def __init__(self, in_planes: int, planes: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_planes, planes, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.shortcut: nn.Module = nn.Sequential()  # empty Sequential is the identity
        if stride != 1 or in_planes != planes:
            pad = planes // 4  # channels double, so a quarter of `planes` goes on each side
            self.shortcut = LambdaLayer(
                lambda x: F.pad(x[:, :, ::2, ::2], (0, 0, 0, 0, pad, pad), "constant", 0)
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(self.bn2(self.conv2(F.relu(self.bn1(self.conv1(x))))) + self.shortcut(x))


class OptionAResNet(nn.Module):
    def __init__(self, per_stage: int, *, width: int, num_classes: int, in_channels: int):
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, width, 3, 1, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        stages, inp = [], width
        for out in (width, 2 * width, 4 * width):
            blocks = [OptionABasicBlock(inp, out, 1 if out == inp else 2)]
            blocks += [OptionABasicBlock(out, out) for _ in range(1, per_stage)]
            stages.append(nn.Sequential(*blocks))
            inp = out
        self.layer1, self.layer2, self.layer3 = stages
        self.linear = nn.Linear(4 * width, num_classes)
        for m in self.modules():
            if isinstance(m, (nn.Conv2d, nn.Linear)):
                nn.init.kaiming_normal_(m.weight)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu(self.bn1(self.conv1(x)))
        x = self.layer3(self.layer2(self.layer1(x)))
        return self.linear(torch.flatten(F.adaptive_avg_pool2d(x, 1), 1))


def option_a_resnet(
    depth: int = 20, *, num_classes: int = 10, in_channels: int = 3, width: int = 16
) -> OptionAResNet:
    """ResNet-`depth` (6n+2) for CIFAR with option-A shortcuts; `width` must be even."""
    if depth < 8 or (depth - 2) % 6:
        raise ValueError(f"depth must be 6n+2 with n >= 1 (20, 32, 56, ...), got {depth}")
    if width < 2 or width % 2:
        raise ValueError(f"width must be even (the zero padding splits channels), got {width}")
    return OptionAResNet(
        (depth - 2) // 6, width=width, num_classes=num_classes, in_channels=in_channels
    )


# ---------------------------------------------------------------- other layer types


class SqueezeExcite(nn.Module):
    def __init__(self, channels: int, reduced: int) -> None:
        super().__init__()
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.reduce = nn.Conv2d(channels, reduced, 1)
        self.act = nn.SiLU()
        self.expand = nn.Conv2d(reduced, channels, 1)
        self.gate = nn.Sigmoid()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.gate(self.expand(self.act(self.reduce(self.pool(x)))))


def _dw_se_branch(inp: int, oup: int, stride: int, act: type[nn.Module]) -> nn.Sequential:
    """1x1 expand, depthwise 3x3, squeeze-excitation, 1x1 project (no final activation)."""
    hidden = inp * 2
    return nn.Sequential(
        nn.Conv2d(inp, hidden, 1, bias=False), nn.BatchNorm2d(hidden), act(),
        nn.Conv2d(hidden, hidden, 3, stride, 1, groups=hidden, bias=False),
        nn.BatchNorm2d(hidden), act(), SqueezeExcite(hidden, max(1, inp // 4)),
        nn.Conv2d(hidden, oup, 1, bias=False), nn.BatchNorm2d(oup),
    )  # fmt: skip


class ResidualDWBlock(nn.Module):
    """Removable: shape-preserving, output is `x + branch(x)`."""

    def __init__(self, channels: int, act: type[nn.Module] = nn.SiLU) -> None:
        super().__init__()
        self.branch = _dw_se_branch(channels, channels, 1, act)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.branch(x)


def exotic_net(*, num_classes: int = 10, in_channels: int = 3, width: int = 16) -> nn.Module:
    """Depthwise convs, squeeze-excitation, SiLU and GELU; removable: blocks.{0,1,4,5}."""
    plain = nn.Sequential(  # same shape but no skip: removing it changes the function
        nn.Conv2d(width, width, 3, 1, 1, bias=False), nn.BatchNorm2d(width), nn.SiLU()
    )
    blocks = nn.Sequential(
        ResidualDWBlock(width, nn.SiLU),
        ResidualDWBlock(width, nn.GELU),
        plain,  # blocks.2
        _dw_se_branch(width, width * 2, 2, nn.SiLU),  # blocks.3: stride 2, 2x channels
        ResidualDWBlock(width * 2, nn.GELU),
        ResidualDWBlock(width * 2, nn.SiLU),
    )
    stem = nn.Sequential(
        nn.Conv2d(in_channels, width, 3, 2, 1, bias=False), nn.BatchNorm2d(width), nn.SiLU()
    )
    return nn.Sequential(OrderedDict(
        stem=stem, blocks=blocks, pool=nn.AdaptiveAvgPool2d(1), flatten=nn.Flatten(),
        head=nn.Linear(width * 2, num_classes),
    ))  # fmt: skip


# ---------------------------------------------------------------- real torchvision if present

LOCAL_MODELS: dict[str, Callable[..., nn.Module]] = {
    "resnet18": tv_resnet18,
    "resnet50": tv_resnet50,
    "mobilenet_v2": tv_mobilenet_v2,
}


def torchvision_or_none() -> Any:
    try:
        return importlib.import_module("torchvision")
    except (ImportError, RuntimeError):  # RuntimeError: a torchvision built for another torch
        return None


def torchvision_or_local(
    name: str, *, num_classes: int = 10, in_channels: int = 3, **kw: Any
) -> nn.Module:
    """torchvision.models.<name> where torchvision imports, else the local definition.

    Only knobs both accept are allowed, so a test means the same with and without it:
    none for the ResNets (torchvision has no base width), `width_mult` and `setting` for
    mobilenet_v2. A stem for `in_channels != 3` is swapped in on torchvision's model.
    """
    if name not in LOCAL_MODELS:
        raise ValueError(f"name must be one of {sorted(LOCAL_MODELS)}, got {name!r}")
    allowed = {"width_mult", "setting"} if name == "mobilenet_v2" else set()
    if unknown := set(kw) - allowed:
        raise TypeError(f"{name}: unsupported arguments {sorted(unknown)}; allowed {allowed}")
    torchvision = torchvision_or_none()
    if torchvision is None:
        return LOCAL_MODELS[name](num_classes=num_classes, in_channels=in_channels, **kw)
    if "setting" in kw:
        kw["inverted_residual_setting"] = kw.pop("setting")
    model = getattr(torchvision.models, name)(weights=None, num_classes=num_classes, **kw)
    if in_channels != 3:
        owner, attr = (model.features[0], "0") if name == "mobilenet_v2" else (model, "conv1")
        old = getattr(owner, attr)
        new = nn.Conv2d(
            in_channels, old.out_channels, old.kernel_size, old.stride, old.padding, bias=False
        )
        nn.init.kaiming_normal_(new.weight, mode="fan_out", nonlinearity="relu")
        setattr(owner, attr, new)
    return model
