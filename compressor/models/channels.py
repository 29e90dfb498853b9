"""Channel counts on both sides: images converted to 1 or 3 channels, and what a model wants.

A model built for RGB (torchvision's, timm's, most CIFAR code) meets the bundled gray digits,
or a gray model meets CIFAR. The data side converts the images (`data.channels`): gray to RGB
by replicating the one channel, as Pillow's `convert("RGB")` does; RGB to gray by ITU-R 601-2
luminance with Pillow's exact integer arithmetic, so CIFAR made gray equals the same pictures
read from PNG files by the image-folder loader with `convert("L")`. The model side finds the
channel count the first convolution expects, so a mismatch is reported as "model wants 3,
data gives 1" with the fix, not as the convolution's raw shape error.
"""

from __future__ import annotations

import re

import numpy as np
import torch
from torch import nn

__all__ = [
    "CHANNEL_CHOICES",
    "channel_mismatch",
    "channels_from_message",
    "first_layer_channels",
    "luminance_uint8",
    "mismatch_message",
    "to_channels",
]

CHANNEL_CHOICES = (1, 3)  # what data.channels can make: gray or RGB
# Pillow's "L" conversion: L = (R * 19595 + G * 38470 + B * 7471 + 0x8000) >> 16, i.e. the
# ITU-R 601-2 weights 0.299, 0.587, 0.114 in 16-bit fixed point, rounded.
_LUMA_FIXED = (19595, 38470, 7471)
_LUMA = (0.299, 0.587, 0.114)
# torch's convolution error: "expected input[1, 1, 32, 32] to have 3 channels, but got 1"
_CONV_MESSAGE = re.compile(r"to have (\d+) channels, but got (\d+) channels")


def luminance_uint8(rgb: np.ndarray) -> np.ndarray:
    """(N, 3, H, W) uint8 -> (N, 1, H, W) uint8, bit for bit as Pillow's convert("L")."""
    wide = rgb.astype(np.uint32)
    gray = wide[:, 0] * _LUMA_FIXED[0] + wide[:, 1] * _LUMA_FIXED[1] + wide[:, 2] * _LUMA_FIXED[2]
    return ((gray + 0x8000) >> 16).astype(np.uint8)[:, None]


def to_channels(images: np.ndarray, channels: int) -> np.ndarray:
    """(N, C, H, W) float images as `channels` channels: 1 -> 3 replicates, 3 -> 1 is luminance.

    Images already at that count come back unchanged (the same array).
    """
    have = images.shape[1]
    if have == channels:
        return images
    if (have, channels) == (1, 3):
        return np.repeat(images, 3, axis=1)
    if (have, channels) == (3, 1):
        weights = np.asarray(_LUMA, dtype=images.dtype)[None, :, None, None]
        return (images * weights).sum(axis=1, keepdims=True, dtype=images.dtype)
    raise ValueError(f"cannot convert {have}-channel images to {channels} channels")


class _FirstLayerReached(Exception):
    """Stops the probe forward at the first convolution: nothing after it needs to run."""


@torch.no_grad()
def first_layer_channels(model: nn.Module, example: torch.Tensor) -> tuple[str, int] | None:
    """(name, in_channels) of the first convolution a forward on `example` reaches, or None.

    Found by running the model, not by reading its module order: torchvision and timm
    register layers in the order their authors wrote `__init__`, which need not be the order
    forward calls them. The forward stops at that convolution, so this costs almost nothing
    and works even when the convolution itself would fail on `example`.
    """
    names = {module: name for name, module in model.named_modules()}
    found: list[tuple[str, int]] = []

    def stop(module: nn.Module, _inputs: object) -> None:
        found.append((names[module], int(module.in_channels)))
        raise _FirstLayerReached

    handles = [
        module.register_forward_pre_hook(stop)
        for module in model.modules()
        if isinstance(module, nn.modules.conv._ConvNd)
    ]
    was_training = model.training
    model.eval()  # no batch-norm statistics move during the probe
    try:
        model(example)
    except _FirstLayerReached:
        pass
    except Exception:  # noqa: BLE001 - failed before any convolution: nothing to report
        pass
    finally:
        for handle in handles:
            handle.remove()
        model.train(was_training)
    return found[0] if found else None


def channels_from_message(message: str) -> tuple[int, int] | None:
    """(wanted, given) from torch's convolution error text, for models whose first layer is
    not an nn.Conv (a functional conv on a raw weight); None when the text is another one."""
    match = _CONV_MESSAGE.search(message)
    return (int(match.group(1)), int(match.group(2))) if match else None


def channel_mismatch(
    model: nn.Module, example: torch.Tensor, error: str
) -> tuple[str | None, int, int] | None:
    """(first layer's name or None, channels it wants, channels `example` has) when the
    model failed on `example` because of its input channels; None for any other failure.

    The first convolution is found by a probe forward; a model whose first layer is not an
    nn.Conv falls back to torch's error text, counted only when it names the input's channels.
    """
    given = int(example.shape[1])
    first = first_layer_channels(model, example)
    if first is not None:
        return (first[0], first[1], given) if first[1] != given else None
    parsed = channels_from_message(error)
    if parsed is not None and parsed[1] == given:
        return None, parsed[0], given
    return None


def mismatch_message(
    model_name: str,
    mismatch: tuple[str | None, int, int],
    dataset: str,
    channel_key: str | None,
) -> str:
    """One line: which side wants what, and the recipe key that fixes it."""
    layer, wanted, given = mismatch
    where = f" (its first layer {layer} takes {wanted})" if layer else ""
    if wanted in CHANNEL_CHOICES:
        fix = f"set data.channels: {wanted} to convert the images"
    else:
        fix = f"data.channels makes 1 or 3 channels only, so build the model for {given}"
    if channel_key is not None:
        fix += f", or pass {channel_key}: {given} in model.kwargs"
    return (
        f"model {model_name} wants {wanted}-channel images{where} but the data gives {given} "
        f"({dataset}); {fix}"
    )
