"""Common corruptions at five severities, in the style of CIFAR-10-C, made on the fly.

Hendrycks & Dietterich, "Benchmarking Neural Network Robustness to Common Corruptions and
Perturbations" (ICLR 2019) corrupt CIFAR-10's test set with 15 (+4) corruptions at severities
1..5 and publish the result as CIFAR-10-C. This module re-creates seven of them on any
normalised (N, C, H, W) batch, so that the robustness of a pruned network can be compared with
its dense parent on digits, CIFAR or an image folder alike, and reads the published CIFAR-10-C
files when they are on disk (`load_cifar10c`).

Parameters (`PARAMETERS`) are those of the authors' `make_cifar_c.py` (the CIFAR variant, not
ImageNet-C's larger ones), checked against the copy in github.com/hendrycks/robustness at
commit ca360085 (`ImageNet-C/create_c/make_cifar_c.py`). How each is re-created here:

- gaussian_noise: x + N(0, c^2) per pixel and channel.
- shot_noise: Poisson(x * c) / c.
- impulse_noise: salt and pepper (skimage's `random_noise(mode="s&p")`): each pixel *and channel*
  is replaced with probability c, by 1 or 0 with equal odds.
- defocus_blur: the paper's disk kernel (radius r, antialiased by a 3x3 Gaussian of sigma s, as
  cv2.GaussianBlur does), convolved per channel with reflect-101 borders (cv2's default).
- contrast: (x - m) * c + m, m the per-image, per-channel mean.
- brightness: +c on the HSV value channel, clipped at 1, hue and saturation kept. That equals
  scaling each pixel's channels by min(V + c, 1) / V (V = max over channels; black becomes grey
  c), computed directly, so no colour-space round trip. For one channel it is min(x + c, 1).
- jpeg_compression: real JPEG through Pillow at the paper's quality levels (default 4:2:0
  chroma subsampling for RGB, as the original's `PIL.Image.save` did); images that are not
  three-channel are encoded one channel at a time as greyscale.

Differences from the published files: pixels stay float (CIFAR-10-C stores every result as
uint8; JPEG alone is quantised to uint8 here, because the codec needs it), and the random numbers
come from a `torch.Generator` seeded with `seed`, not numpy's global RNG, so noise values differ
from the published ones while having the same distribution. The same seed gives the same noise
draws at every severity (gaussian and impulse noise grow monotonically, pixel by pixel); noise
for an image depends on its position in the batch, so corrupt a split in one call.

What stays unchanged by design: brightness leaves pixels whose HSV value is already 1 (white);
contrast and defocus_blur leave constant images; impulse noise leaves pixels drawn for salt that
are already 1 (pepper: 0); noise leaves saturated pixels that the noise pushes further out.
"""

from __future__ import annotations

import io
import math
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from compressor.errors import ConfigError, InputError

__all__ = [
    "CIFAR10C_NAMES",
    "CORRUPTIONS",
    "PARAMETERS",
    "SEVERITIES",
    "corrupt",
    "corruption_table",
    "load_cifar10c",
    "mean_corruption_accuracy",
]

SEVERITIES = (1, 2, 3, 4, 5)
PIXEL_TOLERANCE = 0.01  # de-normalised pixels further outside [0, 1] mean a mean/std mismatch
CIFAR10C_SOURCE = "https://zenodo.org/record/2535967"
# Every file of the published CIFAR-10-C (CIFAR-100-C uses the same names and layout).
CIFAR10C_NAMES = (
    "gaussian_noise",
    "shot_noise",
    "impulse_noise",
    "defocus_blur",
    "glass_blur",
    "motion_blur",
    "zoom_blur",
    "snow",
    "frost",
    "fog",
    "brightness",
    "contrast",
    "elastic_transform",
    "pixelate",
    "jpeg_compression",
    "speckle_noise",
    "gaussian_blur",
    "spatter",
    "saturate",
)

# make_cifar_c.py's `c` per corruption, severity 1..5 (see the module docstring).
PARAMETERS: dict[str, tuple[Any, ...]] = {
    "gaussian_noise": (0.04, 0.06, 0.08, 0.09, 0.10),  # noise standard deviation
    "shot_noise": (500, 250, 100, 75, 50),  # photons at full brightness
    "impulse_noise": (0.01, 0.02, 0.03, 0.05, 0.07),  # share of values replaced
    "defocus_blur": ((0.3, 0.4), (0.4, 0.5), (0.5, 0.6), (1, 0.2), (1.5, 0.1)),  # radius, alias
    "contrast": (0.75, 0.5, 0.4, 0.3, 0.15),  # factor on the distance to the mean
    "brightness": (0.05, 0.1, 0.15, 0.2, 0.3),  # added to the HSV value
    "jpeg_compression": (80, 65, 58, 50, 40),  # JPEG quality
}

CorruptionFn = Callable[[torch.Tensor, Any, torch.Generator], torch.Tensor]


# --- the corruptions: pixels in [0, 1] in, pixels out (clipped by `corrupt`) -------------------


def gaussian_noise(pixels: torch.Tensor, sigma: float, generator: torch.Generator) -> torch.Tensor:
    noise = torch.randn(pixels.shape, generator=generator, dtype=pixels.dtype)
    return pixels + sigma * noise.to(pixels.device)


def shot_noise(pixels: torch.Tensor, photons: float, generator: torch.Generator) -> torch.Tensor:
    counts = torch.poisson((pixels * photons).cpu(), generator=generator)
    return counts.to(pixels.device) / photons


def impulse_noise(pixels: torch.Tensor, amount: float, generator: torch.Generator) -> torch.Tensor:
    flipped = torch.rand(pixels.shape, generator=generator) < amount
    salt = torch.rand(pixels.shape, generator=generator) < 0.5
    noisy = torch.where(flipped, salt.to(pixels.dtype), pixels.cpu())
    return noisy.to(pixels.device)


def defocus_blur(
    pixels: torch.Tensor, radius_alias: tuple[float, float], generator: torch.Generator
) -> torch.Tensor:
    del generator  # deterministic
    kernel = torch.from_numpy(_disk_kernel(*radius_alias)).to(pixels.device, pixels.dtype)
    channels, pad = pixels.shape[1], kernel.shape[0] // 2
    # reflect is cv2's default border (BORDER_REFLECT_101); it needs pad < size
    mode = "reflect" if pad < min(pixels.shape[-2:]) else "replicate"
    padded = F.pad(pixels, (pad, pad, pad, pad), mode=mode)
    weight = kernel.expand(channels, 1, *kernel.shape)  # symmetric: correlation = convolution
    return F.conv2d(padded, weight, groups=channels)


def contrast(pixels: torch.Tensor, factor: float, generator: torch.Generator) -> torch.Tensor:
    del generator  # deterministic
    means = pixels.mean(dim=(2, 3), keepdim=True)
    return (pixels - means) * factor + means


def brightness(pixels: torch.Tensor, shift: float, generator: torch.Generator) -> torch.Tensor:
    del generator  # deterministic
    value = pixels.amax(dim=1, keepdim=True)  # HSV value
    brighter = (value + shift).clamp(max=1.0)
    scaled = pixels * (brighter / value.clamp_min(1e-12))
    return torch.where(value > 0, scaled, brighter.expand_as(pixels))  # black: grey, as HSV


def jpeg_compression(
    pixels: torch.Tensor, quality: int, generator: torch.Generator
) -> torch.Tensor:
    del generator  # deterministic
    array = (pixels.detach().cpu().clamp(0, 1) * 255).round().to(torch.uint8).numpy()
    decoded = np.empty_like(array)
    for i, image in enumerate(array):
        if image.shape[0] == 3:
            decoded[i] = _jpeg_round_trip(image.transpose(1, 2, 0), quality).transpose(2, 0, 1)
        else:  # JPEG knows greyscale and RGB only: one greyscale image per channel
            for c, channel in enumerate(image):
                decoded[i, c] = _jpeg_round_trip(channel, quality)
    return torch.from_numpy(decoded).to(pixels.device, pixels.dtype) / 255


CORRUPTIONS: dict[str, CorruptionFn] = {
    "gaussian_noise": gaussian_noise,
    "shot_noise": shot_noise,
    "impulse_noise": impulse_noise,
    "defocus_blur": defocus_blur,
    "contrast": contrast,
    "brightness": brightness,
    "jpeg_compression": jpeg_compression,
}


def _disk_kernel(radius: float, alias_blur: float) -> np.ndarray:
    """make_cifar_c.py's `disk`: a normalised disk on a 17x17 grid, then a 3x3 Gaussian blur.

    Every CIFAR severity has radius <= 8, the original's branch with the 17x17 grid and ksize 3.
    The zero border is trimmed so small images can still be padded by the kernel's half-width.
    """
    span = np.arange(-8, 9)
    xx, yy = np.meshgrid(span, span)
    disk = (xx**2 + yy**2 <= radius**2).astype(np.float64)
    disk /= disk.sum()
    taps = np.exp(-(np.arange(-1, 2) ** 2) / (2 * alias_blur**2))  # cv2.getGaussianKernel(3, s)
    taps /= taps.sum()
    padded = np.pad(disk, 1)  # the disk is far from the edge: any border mode gives the same
    rows = sum(t * padded[k : k + 17, 1:-1] for k, t in enumerate(taps))
    padded = np.pad(rows, 1)
    blurred = sum(t * padded[1:-1, k : k + 17] for k, t in enumerate(taps))
    used = np.flatnonzero(blurred.any(axis=0))
    half = max(abs(used[0] - 8), abs(used[-1] - 8))
    return blurred[8 - half : 9 + half, 8 - half : 9 + half]


def _jpeg_round_trip(image: np.ndarray, quality: int) -> np.ndarray:
    from PIL import Image

    buffer = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(image)).save(buffer, format="JPEG", quality=quality)
    buffer.seek(0)
    with Image.open(buffer) as decoded:
        return np.asarray(decoded)


# --- the entry point ---------------------------------------------------------------------------


def corrupt(
    images: torch.Tensor,
    name: str,
    severity: int,
    *,
    mean: Sequence[float],
    std: Sequence[float],
    seed: int,
) -> torch.Tensor:
    """Corrupt normalised (N, C, H, W) images as `name` at `severity` (1..5).

    `mean`/`std` are the per-channel statistics the images were normalised with (DataSplits'):
    the corruption works on pixels in [0, 1], clips its result there and normalises it again.
    Same seed, same output; shape, dtype and device are kept.
    """
    _check_name(name)
    _check_severity(severity)
    if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
        raise ConfigError(f"corruption seed must be an int >= 0, got {seed!r}")
    if not isinstance(images, torch.Tensor) or images.ndim != 4 or not images.is_floating_point():
        got = (
            f"{images.dtype} tensor of shape {tuple(images.shape)}"
            if isinstance(images, torch.Tensor)
            else type(images).__name__
        )
        raise InputError(f"corrupt() needs normalised float images (N, C, H, W), got {got}")
    channels = images.shape[1]
    if len(mean) != channels or len(std) != channels:
        raise ConfigError(
            f"mean and std need one value per channel ({channels}), got {len(mean)} and "
            f"{len(std)}; pass the DataSplits' mean and std"
        )
    shift = torch.tensor(mean, dtype=images.dtype, device=images.device)[:, None, None]
    scale = torch.tensor(std, dtype=images.dtype, device=images.device)[:, None, None]
    pixels = images * scale + shift
    if images.numel() and (pixels.min() < -PIXEL_TOLERANCE or pixels.max() > 1 + PIXEL_TOLERANCE):
        raise InputError(
            f"de-normalised images span [{pixels.min():.3f}, {pixels.max():.3f}], not [0, 1]: "
            "the mean and std given are not the ones these images were normalised with"
        )
    generator = torch.Generator().manual_seed(seed)
    parameter = PARAMETERS[name][severity - 1]
    corrupted = CORRUPTIONS[name](pixels.clamp(0, 1), parameter, generator)
    return ((corrupted.clamp(0, 1) - shift) / scale).to(images.dtype)


def corruption_table(
    evaluate_fn: Callable[[torch.Tensor, torch.Tensor], float],
    images: torch.Tensor,
    labels: torch.Tensor,
    *,
    mean: Sequence[float],
    std: Sequence[float],
    names: Iterable[str] | None = None,
    severities: Iterable[int] = SEVERITIES,
    seed: int = 0,
) -> list[dict[str, Any]]:
    """Accuracy on the clean images (severity 0), then on every corruption x severity.

    `evaluate_fn(images, labels) -> accuracy` is the caller's: this module knows no model.
    Rows are {"corruption", "severity", "accuracy"}; the clean row's corruption is "clean".
    Names and severities are checked before anything is evaluated.
    """
    chosen = (names,) if isinstance(names, str) else tuple(names or CORRUPTIONS)
    levels = tuple(severities)
    for name in chosen:
        _check_name(name)
    for severity in levels:
        _check_severity(severity)
    rows = [{"corruption": "clean", "severity": 0, "accuracy": float(evaluate_fn(images, labels))}]
    for name in chosen:
        for severity in levels:
            corrupted = corrupt(images, name, severity, mean=mean, std=std, seed=seed)
            accuracy = float(evaluate_fn(corrupted, labels))
            rows.append({"corruption": name, "severity": severity, "accuracy": accuracy})
    return rows


def mean_corruption_accuracy(rows: Iterable[dict[str, Any]]) -> float:
    """Mean accuracy over the corrupted rows of a `corruption_table` (the clean row left out)."""
    accuracies = [row["accuracy"] for row in rows if row["severity"] > 0]
    if not accuracies:
        raise ConfigError("the corruption table has no corrupted rows to average")
    return math.fsum(accuracies) / len(accuracies)


# --- the published CIFAR-10-C files -------------------------------------------------------------


def load_cifar10c(
    root: str | Path,
    name: str,
    severity: int,
    *,
    mean: Sequence[float] | None = None,
    std: Sequence[float] | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """One corruption at one severity from the published files: (images, int64 labels).

    Reads `<root>/<name>.npy` (N x H x W x 3 uint8: severities 1..5 one after another, N/5
    each; 50000 x 32 x 32 x 3 for CIFAR-10-C) and `<root>/labels.npy`, memory-mapped so only
    the severity asked for is read. Images come back as float32 (n, 3, H, W) in [0, 1], or
    normalised with `mean` and `std` when given (pass the clean DataSplits' to compare).
    """
    if name not in CIFAR10C_NAMES:
        raise ConfigError(
            f"unknown CIFAR-10-C corruption {name!r}; one of {', '.join(CIFAR10C_NAMES)}"
        )
    _check_severity(severity)
    if (mean is None) != (std is None):
        raise ConfigError("load_cifar10c: give mean and std together, or neither")
    folder = Path(root).expanduser()
    hint = f"download CIFAR-10-C from {CIFAR10C_SOURCE} and extract it there"
    if not folder.is_dir():
        raise InputError(f"CIFAR-10-C directory {folder} does not exist; {hint}")
    images_path, labels_path = folder / f"{name}.npy", folder / "labels.npy"
    images = _read_npy(images_path, hint)
    labels = _read_npy(labels_path, hint)
    if (
        images.ndim != 4
        or images.shape[-1] != 3
        or images.dtype != np.uint8
        or images.shape[0] == 0
        or images.shape[0] % len(SEVERITIES)
    ):
        raise InputError(
            f"{images_path}: expected N x H x W x 3 uint8 with N a multiple of 5 (50000 x 32 x "
            f"32 x 3 for CIFAR-10-C), got {images.dtype} of shape {images.shape}; {hint}"
        )
    if labels.ndim != 1 or labels.shape[0] != images.shape[0] or labels.dtype.kind not in "iu":
        raise InputError(
            f"{labels_path}: expected {images.shape[0]} integer labels (one per image of "
            f"{images_path.name}), got {labels.dtype} of shape {labels.shape}; {hint}"
        )
    per_severity = images.shape[0] // len(SEVERITIES)
    rows = slice((severity - 1) * per_severity, severity * per_severity)
    pixels = torch.from_numpy(np.ascontiguousarray(images[rows].transpose(0, 3, 1, 2)))
    pixels = pixels.to(torch.float32) / 255
    if mean is not None and std is not None:
        if len(mean) != 3 or len(std) != 3:
            raise ConfigError(f"CIFAR-10-C images have 3 channels; got {len(mean)} means")
        pixels = (pixels - torch.tensor(mean)[:, None, None]) / torch.tensor(std)[:, None, None]
    return pixels, torch.from_numpy(labels[rows].astype(np.int64))


def _read_npy(path: Path, hint: str) -> np.ndarray:
    if not path.is_file():
        raise InputError(f"CIFAR-10-C file {path} is missing; {hint}")
    try:
        return np.load(path, mmap_mode="r", allow_pickle=False)
    except (ValueError, OSError, EOFError) as exc:  # pickled objects, truncated or not .npy
        raise InputError(f"{path} is not a readable .npy array ({exc}); {hint}") from exc


def _check_name(name: str) -> None:
    if name not in CORRUPTIONS:
        raise ConfigError(f"unknown corruption {name!r}; choose one of {', '.join(CORRUPTIONS)}")


def _check_severity(severity: int) -> None:
    if isinstance(severity, bool) or not isinstance(severity, int) or severity not in SEVERITIES:
        raise ConfigError(f"corruption severity must be one of 1, 2, 3, 4, 5, got {severity!r}")
