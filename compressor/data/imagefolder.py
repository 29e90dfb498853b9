"""Image folders on disk: layout, file listing, memory estimate, decoding with Pillow.

Kept apart from `compressor.data.splits` because it is file and image handling (folder layouts,
Pillow, the ImageNet eval transform) that digits and CIFAR never use, while data.py keeps what
every dataset shares: the config, the seeded splits, normalisation. data.py decides how the
listed files are split; this module only lists, checks and decodes, and takes plain values, so
it needs no `DataConfig` and imports nothing from data.py.

Images are decoded once, up front, with the usual ImageNet eval transform (shorter side resized,
centre crop) into in-memory float32 arrays. At 224x224 an image costs 588 KiB as float32, so
15,000 images already need 8 GiB; the image count is known before decoding, and a folder whose
estimate exceeds `max_memory_gb` is refused at once instead of swapping or being killed minutes
later.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from compressor.errors import ConfigError, InputError
from deploy.errors import UnsafePathError
from deploy.paths import check_readable_file

if TYPE_CHECKING:
    from PIL import Image

__all__ = [
    "CENTRE_CROP_RATIO",
    "IMAGEFOLDER_SIZE",
    "IMAGE_EXTENSIONS",
    "SPLIT_FOLDERS",
    "Files",
    "check_memory",
    "decode_images",
    "list_folder",
    "read_image",
    "subset",
]

IMAGEFOLDER_SIZE = 224  # the usual input of ImageNet-style models
CENTRE_CROP_RATIO = 0.875  # ImageNet eval transform: shorter side to 224 / 0.875 = 256, crop 224
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff")
SPLIT_FOLDERS = ("train", "val", "test")

Files = tuple[list[Path], np.ndarray]  # image paths and their int64 labels


def list_folder(root: str | None) -> tuple[dict[str, Files], list[str]]:
    """The image files of each split found under `root`, and the sorted class names.

    The splits are "train", "val", "test" for those folders present when `root` holds train/,
    else "all" for a root laid out as one sub-folder per class. Label = index in class names.
    """
    folders = _split_folders(root)
    classes = _class_names(folders)
    return {split: _list_split(folder, classes) for split, folder in folders.items()}, classes


def subset(files: Files, index: np.ndarray) -> Files:
    """The files at `index`, in that order."""
    return [files[0][i] for i in index], files[1][index]


def check_memory(
    counts: list[int], channels: int, size: int, max_memory_gb: float, name: str = "imagefolder"
) -> None:
    """Refuse before decoding (or resizing) when the float32 splits would not fit the budget."""
    gib = sum(counts) * channels * size * size * 4 / 2**30
    if gib > max_memory_gb:
        raise ConfigError(
            f"{name}: {sum(counts)} images (train/val/test {'/'.join(map(str, counts))}) "
            f"at {channels}x{size}x{size} need about {gib:.2f} GiB as in-memory float32 "
            f"tensors, more than data.max_memory_gb={max_memory_gb}; "
            "raise data.max_memory_gb if the machine has the memory, or lower data.image_size "
            "or set data.limit_train"
        )


def decode_images(paths: list[Path], size: int, resize: int, channels: int) -> np.ndarray:
    """(N, channels, size, size) float32 in 0..1, through `read_image` one file at a time.

    Decoded into a preallocated uint8 array first, so the peak is one float32 copy, not a list
    of images plus the stacked result.
    """
    pixels = np.empty((len(paths), channels, size, size), dtype=np.uint8)
    for i, path in enumerate(paths):
        pixels[i] = read_image(path, size, resize, "L" if channels == 1 else "RGB")
    images = pixels.astype(np.float32)
    del pixels
    images /= 255.0
    return images


MAX_IMAGE_BYTES = 1 << 30  # one image file; far beyond any photo


def read_image(path: Path, size: int, resize: int, mode: str) -> np.ndarray:
    """torchvision's Resize(resize) then CenterCrop(size) on a PIL image, as (C, size, size)."""
    from PIL import Image

    try:  # a FIFO named .png would hang the read, a device never end
        check_readable_file(path, "image", max_bytes=MAX_IMAGE_BYTES)
    except UnsafePathError as exc:
        raise InputError(f"{str(exc).split('; ')[0]}; replace or remove it") from exc
    try:
        with Image.open(path) as original:
            image = _eight_bit(original, path).convert(mode)  # decodes: corrupt data fails here
        width, height = image.size
        if min(width, height) != resize:
            if width <= height:
                shape = (resize, int(resize * height / width))
            else:
                shape = (int(resize * width / height), resize)
            image = image.resize(shape, Image.Resampling.BILINEAR)
    except (MemoryError, InputError):
        raise
    except Exception as exc:  # Pillow reports bad files with many types: all mean unreadable
        reason = (str(exc).splitlines() or [type(exc).__name__])[0]
        raise InputError(
            f"{path} is not a readable image ({reason}); replace or remove it"
        ) from exc
    width, height = image.size
    left, top = round((width - size) / 2), round((height - size) / 2)
    crop = np.asarray(image.crop((left, top, left + size, top + size)))
    return crop[None] if crop.ndim == 2 else crop.transpose(2, 0, 1)


def _eight_bit(image: Image.Image, path: Path) -> Image.Image:
    """16-bit greyscale scaled to 8 bits; Pillow's own convert clips it at 255 instead, which
    turns a 16-bit PNG almost white. Float images have no agreed range, so they are refused."""
    if image.mode == "F":
        raise InputError(
            f"{path} is a 32-bit float image, whose pixel range is not defined; save it as an "
            "8- or 16-bit image"
        )
    if not image.mode.startswith("I"):  # "I;16", "I;16B", "I": 16-bit PNG and TIFF
        return image
    from PIL import Image

    pixels = np.asarray(image, dtype=np.float64) / 257.0  # 65535 -> 255
    return Image.fromarray(np.clip(np.rint(pixels), 0, 255).astype(np.uint8))


def _split_folders(root: str | None) -> dict[str, Path]:
    """{"train": ..., "val"/"test": ...} when the root holds train/, else {"all": root}."""
    if root is None:
        raise InputError(
            "data.root is required for imagefolder: a folder with one sub-folder of images per "
            "class, or with train/ and val/ and/or test/ folders laid out that way"
        )
    path = Path(root).expanduser()
    if not path.is_dir():
        raise InputError(f"imagefolder root {path} does not exist or is not a folder")
    subfolders = _visible_folders(path)
    if "train" not in subfolders:
        return {"all": path}
    others = [name for name in subfolders if name not in SPLIT_FOLDERS]
    if others:
        raise InputError(
            f"imagefolder root {path} holds train/, so its sub-folders are read as splits, but "
            f"{others} is not one of train, val, test; rename or move it"
        )
    return {name: path / name for name in SPLIT_FOLDERS if name in subfolders}


def _visible_folders(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.is_dir() and not p.name.startswith("."))


def _class_names(folders: dict[str, Path]) -> list[str]:
    """Sorted class folder names, the same in every split; label = index in this list."""
    names = {split: _visible_folders(folder) for split, folder in folders.items()}
    reference_split = "train" if "train" in names else "all"
    reference = names[reference_split]
    for split, found in names.items():
        if found != reference:
            missing = sorted(set(reference) - set(found))
            extra = sorted(set(found) - set(reference))
            raise InputError(
                f"imagefolder class folders differ between {folders[reference_split]} and "
                f"{folders[split]}: {folders[split]} lacks {missing} and has extra {extra}; "
                "every split needs the same class folders"
            )
    if len(reference) < 2:
        raise InputError(
            f"imagefolder {folders[reference_split]} has {len(reference)} class folder(s) "
            f"{reference}; need at least 2 (one sub-folder of images per class)"
        )
    return reference


def _list_split(folder: Path, classes: list[str]) -> Files:
    paths: list[Path] = []
    labels: list[int] = []
    for label, name in enumerate(classes):
        found = _list_images(folder / name)
        if not found:
            raise InputError(
                f"imagefolder class folder {folder / name} holds no images "
                f"({' '.join(IMAGE_EXTENSIONS)}); add some or remove the folder"
            )
        paths += found
        labels += [label] * len(found)
    return paths, np.asarray(labels, dtype=np.int64)


def _list_images(folder: Path) -> list[Path]:
    """Image files below `folder` (sub-folders too, as torchvision), sorted; hidden ones skipped."""
    found: list[Path] = []
    for parent, subfolders, names in os.walk(folder):
        subfolders[:] = sorted(d for d in subfolders if not d.startswith("."))
        found += [
            Path(parent, name)
            for name in sorted(names)
            if not name.startswith(".") and name.lower().endswith(IMAGE_EXTENSIONS)
        ]
    return found
