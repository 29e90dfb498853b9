"""Datasets as in-memory tensors: sklearn's digits (offline default), CIFAR-10/100, image folders.

A dataset is a normalised float32 tensor plus labels per split; batching, shuffling and
augmentation are a few torch ops driven by explicit `torch.Generator`s, which makes training
exactly reproducible and resumable on CPU (no DataLoader workers, no hidden global RNG use).
The price is memory: every split lives in RAM (or on the GPU) at its final size.

Image folders ("imagefolder": torchvision's one-sub-folder-per-class layout) are read by
`compressor.data.imagefolder`, decoded once, up front, into that same design; a folder whose float32
splits would exceed `max_memory_gb` is refused before decoding (digits and CIFAR before resizing,
so an `image_size` typo cannot ask for 100 GiB). Use `limit_train` or a smaller `image_size` for
large folders; a streaming loader is out of scope.

CIFAR is read from the dataset's official "python version" files, which are pickles. They are
opened with a restricted unpickler that only rebuilds numpy arrays, so a tampered file cannot
run code; anything else is reported as a corrupt file.
"""

from __future__ import annotations

import pickle
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from compressor.data import imagefolder
from compressor.data.config import (
    AugmentConfig,
    DataConfig,
    default_augment,
)
from compressor.errors import ConfigError, InputError
from compressor.models.channels import luminance_uint8, to_channels

__all__ = [
    "AugmentConfig",
    "DataConfig",
    "DataSplits",
    "Split",
    "augment_batch",
    "default_augment",
    "iterate_batches",
    "load_data",
]

CIFAR_FILES: dict[str, tuple[str, list[str], str, str, str]] = {
    # name: (folder, train files, test file, meta file, label key)
    "cifar10": (
        "cifar-10-batches-py",
        [f"data_batch_{i}" for i in range(1, 6)],
        "test_batch",
        "batches.meta",
        "labels",
    ),
    "cifar100": ("cifar-100-python", ["train"], "test", "meta", "fine_labels"),
}
CIFAR_SOURCE = "https://www.cs.toronto.edu/~kriz/cifar.html"


@dataclass(frozen=True)
class Split:
    """One split: normalised float32 images (N, C, H, W) and int64 labels (N,)."""

    images: torch.Tensor
    labels: torch.Tensor

    def __len__(self) -> int:
        return int(self.labels.shape[0])


@dataclass(frozen=True)
class DataSplits:
    """Train/val/test plus what a model and an exporter need to know about the input."""

    train: Split
    val: Split
    test: Split
    num_classes: int
    in_channels: int
    image_size: int
    mean: tuple[float, ...]  # per channel: the config's, or computed on the resized train split
    std: tuple[float, ...]
    name: str
    class_names: tuple[str, ...]
    augment: AugmentConfig  # the config's augmentation, or the dataset default when it had none


def load_data(config: DataConfig) -> DataSplits:
    """Load, split (deterministically from `config.seed`), resize and normalise a dataset."""
    loaders = {"digits": _load_digits, "imagefolder": _load_imagefolder}
    train, val, test, class_names = loaders.get(config.name, _load_cifar)(config)
    keep = _limited_train(len(train[1]), config)
    if keep is not None:
        train = (train[0][keep], train[1][keep])
    size = config.resolved_image_size
    if config.name != "imagefolder":  # image folders were checked before decoding
        counts = [len(y) for _, y in (train, val, test)]
        channels = int(train[0].shape[1])
        imagefolder.check_memory(counts, channels, size, config.max_memory_gb, config.name)
    tensors = [_resize(torch.from_numpy(x), size) for x, _ in (train, val, test)]
    if config.mean is not None and config.std is not None:
        mean, std = torch.tensor(config.mean), torch.tensor(config.std)
    else:
        mean = tensors[0].mean(dim=(0, 2, 3))
        std = tensors[0].std(dim=(0, 2, 3)).clamp_min(1e-6)  # guard constant channels
    splits = [  # in place: the arrays are ours, and CIFAR as float32 is 600 MB
        Split(
            x.sub_(mean[:, None, None]).div_(std[:, None, None]),
            torch.from_numpy(y.astype(np.int64)),
        )
        for x, (_, y) in zip(tensors, (train, val, test), strict=True)
    ]
    return DataSplits(
        train=splits[0],
        val=splits[1],
        test=splits[2],
        num_classes=len(class_names),
        in_channels=int(tensors[0].shape[1]),
        image_size=size,
        mean=config.mean or tuple(float(m) for m in mean),  # given values exactly, not float32
        std=config.std or tuple(float(s) for s in std),
        name=config.name,
        class_names=tuple(class_names),
        augment=config.resolved_augment,
    )


Arrays = tuple[np.ndarray, np.ndarray]


def _limited_train(n: int, config: DataConfig) -> np.ndarray | None:
    """Sorted indices of the `limit_train` training images kept, or None to keep all n."""
    if config.limit_train is None or config.limit_train >= n:
        return None
    return np.sort(np.random.default_rng(config.seed).permutation(n)[: config.limit_train])


def _resize(images: torch.Tensor, size: int) -> torch.Tensor:
    if images.shape[-1] == size and images.shape[-2] == size:
        return images
    return F.interpolate(images, size=(size, size), mode="bilinear", align_corners=False)


def _stratified_split(labels: np.ndarray, fraction: float, seed: int, what: str):
    """Indices (kept, held_out); stratified so every class keeps its share in both parts."""
    from sklearn.model_selection import train_test_split

    try:
        return train_test_split(
            np.arange(len(labels)), test_size=fraction, random_state=seed, stratify=labels
        )
    except ValueError as exc:
        raise ConfigError(f"data.{what}={fraction} cannot be split stratified: {exc}") from exc


def _load_digits(config: DataConfig) -> tuple[Arrays, Arrays, Arrays, list[str]]:
    from sklearn.datasets import load_digits

    bunch = load_digits()
    images = (bunch.images.astype(np.float32) / 16.0)[:, None]  # 0..16 -> 0..1, one channel
    images = to_channels(images, config.resolved_channels)  # 8x8: replicated before resizing
    labels = bunch.target.astype(np.int64)
    pool, test = _stratified_split(labels, config.test_fraction, config.seed, "test_fraction")
    train_i, val_i = _stratified_split(
        labels[pool], config.val_fraction, config.seed, "val_fraction"
    )
    train, val = np.sort(pool[train_i]), np.sort(pool[val_i])
    test = np.sort(test)
    names = [str(c) for c in bunch.target_names]
    return (
        (images[train], labels[train]),
        (images[val], labels[val]),
        (images[test], labels[test]),
        names,
    )


class _ArrayOnlyUnpickler(pickle.Unpickler):
    """Rebuilds dicts, lists, bytes and numpy arrays only: the CIFAR files need nothing else."""

    ALLOWED = {
        ("numpy.core.multiarray", "_reconstruct"),
        ("numpy._core.multiarray", "_reconstruct"),
        ("numpy", "ndarray"),
        ("numpy", "dtype"),
        ("_codecs", "encode"),  # how Python 3 writes bytes at protocol 2 (re-saved copies)
    }

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) not in self.ALLOWED:
            raise pickle.UnpicklingError(f"refusing to load {module}.{name}")
        if module == "numpy.core.multiarray":  # files pickled by numpy 1.x / Python 2
            module = "numpy._core.multiarray" if hasattr(np, "_core") else module
        return super().find_class(module, name)


def _read_pickle(path: Path) -> dict[bytes, Any]:
    try:
        with path.open("rb") as handle:
            content = _ArrayOnlyUnpickler(handle, encoding="bytes").load()
    except Exception as exc:  # unpickling garbage can raise almost any type: all mean corrupt
        raise InputError(
            f"{path} is not a readable CIFAR batch file ({exc}); "
            f"re-extract the python version from {CIFAR_SOURCE}"
        ) from exc
    if not isinstance(content, dict):
        raise InputError(f"{path} does not hold a dict as CIFAR batch files do; re-extract it")
    return {k.encode() if isinstance(k, str) else k: v for k, v in content.items()}


def _cifar_dir(config: DataConfig) -> Path:
    folder, train_files, test_file, meta_file, _ = CIFAR_FILES[config.name]
    expected = [*train_files, test_file, meta_file]
    title = "CIFAR-10" if config.name == "cifar10" else "CIFAR-100"
    hint = (
        f"expected the files {', '.join(expected)} in {config.root!r} or in its "
        f"subfolder {folder}/; download the {title} python version from {CIFAR_SOURCE} "
        "and extract it there"
    )
    if config.root is None:
        raise InputError(f"data.root is required for {config.name}: {hint}")
    root = Path(config.root).expanduser()
    if not root.is_dir():
        raise InputError(f"{config.name} directory {root} does not exist: {hint}")
    for candidate in (root, root / folder):
        if all((candidate / f).is_file() for f in expected):
            return candidate
    base = root / folder if (root / folder).is_dir() else root
    missing = [f for f in expected if not (base / f).is_file()]
    raise InputError(f"{config.name} files missing in {base}: {', '.join(missing)}; {hint}")


def _cifar_batch(path: Path, label_key: str, channels: int) -> Arrays:
    batch = _read_pickle(path)
    data, labels = batch.get(b"data"), batch.get(label_key.encode())
    shape = getattr(data, "shape", None)
    if (
        not isinstance(data, np.ndarray)
        or data.dtype != np.uint8
        or data.ndim != 2
        or data.shape[1] != 3072
        or labels is None
        or len(labels) != data.shape[0]
    ):
        raise InputError(
            f"{path}: expected b'data' as an N x 3072 uint8 array and N "
            f"b'{label_key}', got data of shape {shape} and "
            f"{'no' if labels is None else len(labels)} labels; the file is "
            "corrupt or from another dataset"
        )
    pixels = data.reshape(-1, 3, 32, 32)
    if channels == 1:  # on the bytes, as Pillow's convert("L"): same as a folder of PNGs
        pixels = luminance_uint8(pixels)
    images = pixels.astype(np.float32) / 255.0
    return images, np.asarray(labels, dtype=np.int64)


def _load_cifar(config: DataConfig) -> tuple[Arrays, Arrays, Arrays, list[str]]:
    _, train_files, test_file, meta_file, label_key = CIFAR_FILES[config.name]
    base = _cifar_dir(config)
    channels = config.resolved_channels
    parts = [_cifar_batch(base / f, label_key, channels) for f in train_files]
    images = np.concatenate([p[0] for p in parts])
    labels = np.concatenate([p[1] for p in parts])
    test = _cifar_batch(base / test_file, label_key, channels)
    names_key = b"label_names" if config.name == "cifar10" else b"fine_label_names"
    raw_names = _read_pickle(base / meta_file).get(names_key)
    if not isinstance(raw_names, list) or not raw_names:
        raise InputError(f"{base / meta_file} lacks {names_key!r}; re-extract the dataset")
    names = [n.decode() if isinstance(n, bytes) else str(n) for n in raw_names]
    for what, y in (("train", labels), ("test", test[1])):
        if y.min() < 0 or y.max() >= len(names):
            raise InputError(f"{base}: {what} labels outside 0..{len(names) - 1}; corrupt files")
    train_i, val_i = _stratified_split(labels, config.val_fraction, config.seed, "val_fraction")
    train_i, val_i = np.sort(train_i), np.sort(val_i)
    return (images[train_i], labels[train_i]), (images[val_i], labels[val_i]), test, names


# --- image folders ------------------------------------------------------------------------------


def _load_imagefolder(config: DataConfig) -> tuple[Arrays, Arrays, Arrays, list[str]]:
    """List, split, check the memory estimate, then decode: nothing is decoded before the check.

    Reading the folder is `compressor.data.imagefolder`'s; splitting it is ours, seeded as for the
    other datasets. Splits without a folder of their own are carved out of train.
    """
    parts, classes = imagefolder.list_folder(config.root)
    train = parts.pop("train", None) or parts.pop("all")
    if "test" not in parts:
        train, parts["test"] = _carve(train, config.test_fraction, config.seed, "test_fraction")
    if "val" not in parts:
        train, parts["val"] = _carve(train, config.val_fraction, config.seed, "val_fraction")
    keep = _limited_train(len(train[1]), config)  # before decoding: a big folder stays cheap
    if keep is not None:
        train = imagefolder.subset(train, keep)
    splits = (train, parts["val"], parts["test"])
    size, channels = config.resolved_image_size, config.resolved_channels
    counts = [len(labels) for _, labels in splits]
    imagefolder.check_memory(counts, channels, size, config.max_memory_gb)
    arrays = [
        (imagefolder.decode_images(paths, size, config.resolved_resize, channels), labels)
        for paths, labels in splits
    ]
    return arrays[0], arrays[1], arrays[2], classes


def _carve(
    files: imagefolder.Files, fraction: float, seed: int, what: str
) -> tuple[imagefolder.Files, imagefolder.Files]:
    """Split off a stratified `fraction` of `files`; both parts keep the listing order."""
    kept, held_out = (np.sort(i) for i in _stratified_split(files[1], fraction, seed, what))
    return imagefolder.subset(files, kept), imagefolder.subset(files, held_out)


def augment_batch(
    images: torch.Tensor, config: AugmentConfig, generator: torch.Generator
) -> torch.Tensor:
    """Random crop after zero padding, then random horizontal flip, per sample.

    Images are already normalised, so the zero padding is the dataset mean colour rather than
    black. Random numbers come from `generator` (a CPU generator) and are moved to the
    images' device, so the same generator state gives the same batch on any device.
    """
    n, _, height, width = images.shape
    out = images
    if config.crop_padding > 0:
        pad = config.crop_padding
        padded = F.pad(images, (pad, pad, pad, pad))
        dy = torch.randint(0, 2 * pad + 1, (n,), generator=generator).to(images.device)
        dx = torch.randint(0, 2 * pad + 1, (n,), generator=generator).to(images.device)
        rows = dy[:, None] + torch.arange(height, device=images.device)  # (N, H)
        cols = dx[:, None] + torch.arange(width, device=images.device)  # (N, W)
        c, padded_w = padded.shape[1], padded.shape[3]
        out = padded.gather(2, rows[:, None, :, None].expand(n, c, height, padded_w))
        out = out.gather(3, cols[:, None, None, :].expand(n, c, height, width))
    if config.hflip:
        flip = (torch.rand(n, generator=generator) < 0.5).to(images.device)
        out = torch.where(flip[:, None, None, None], out.flip(3), out)
    return out


def iterate_batches(
    split: Split,
    batch_size: int,
    *,
    shuffle: bool,
    generator: torch.Generator | None = None,
    drop_last: bool = False,
) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """Yield (images, labels) batches; the order is drawn from `generator` when shuffling."""
    if batch_size < 1:
        raise ConfigError(f"batch_size must be >= 1, got {batch_size}")
    n = len(split)
    order = torch.randperm(n, generator=generator) if shuffle else torch.arange(n)
    stop = n - n % batch_size if drop_last else n
    for start in range(0, stop, batch_size):
        index = order[start : start + batch_size]
        yield split.images[index], split.labels[index]
