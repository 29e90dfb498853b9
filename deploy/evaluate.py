"""Top-1 accuracy of any runner on a labelled evaluation file, so a latency has its price.

A labelled evaluation file is an `.npz` with two arrays: `images` (N x C x H x W, already
preprocessed the way the model expects, any float dtype) and `labels` (N integers); an
optional `class_names` array of strings. It is read with `allow_pickle=False`, so a file that
smuggles Python objects is refused rather than executed. `compressor bundle` writes one.
"""

from __future__ import annotations

import os
import zipfile
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from deploy.errors import DeployConfigError, DeployInputError, MeasurementError, first_line
from deploy.files import atomic_file
from deploy.machine.memory import available_memory_bytes, format_bytes, tensor_bytes
from deploy.paths import check_readable_file
from deploy.runners.base import Runner


@dataclass(frozen=True)
class LabelledData:
    """Preprocessed images and their integer labels, as read from an evaluation file."""

    images: np.ndarray
    labels: np.ndarray
    class_names: tuple[str, ...] = ()

    def __len__(self) -> int:
        return int(self.labels.shape[0])


@dataclass(frozen=True)
class Accuracy:
    """Top-1 accuracy as a fraction, and how many images it is over."""

    top1: float
    samples: int


def save_labelled(
    path: str | os.PathLike[str],
    images: np.ndarray,
    labels: np.ndarray,
    class_names: tuple[str, ...] | list[str] = (),
) -> Path:
    """Write an evaluation file (uncompressed npz); the format `load_labelled` reads."""
    data = _checked(np.asarray(images), np.asarray(labels), Path(path))
    path = Path(path)
    arrays = {"images": data[0], "labels": data[1]}
    if class_names:
        arrays["class_names"] = np.asarray([str(n) for n in class_names], dtype=np.str_)
    with atomic_file(path) as handle:  # creates the parent directory
        np.savez(handle, **arrays)
    return path


def load_labelled(path: str | os.PathLike[str]) -> LabelledData:
    """Read an evaluation file; every way it can be wrong is a DeployInputError naming it."""
    path = Path(path)
    if path.exists() and not path.is_file():  # a FIFO or device would hang or never end
        check_readable_file(path, "evaluation file")
    if not path.is_file():
        raise DeployInputError(f"evaluation file not found: {path}")
    if not zipfile.is_zipfile(path):  # np.load would try it as a pickle
        raise DeployInputError(
            f"evaluation file {path} is not a readable .npz file; write it with "
            "numpy.savez(path, images=..., labels=...)"
        )
    try:
        _check_declared_sizes(path)
        with np.load(path, allow_pickle=False) as archive:
            names = set(archive.files)
            missing = sorted({"images", "labels"} - names)
            if missing:
                raise DeployInputError(
                    f"evaluation file {path} lacks the arrays {missing}; it needs 'images' "
                    f"(N x C x H x W floats) and 'labels' (N integers), found {sorted(names)}"
                )
            images, labels = archive["images"], archive["labels"]
            class_names = (
                tuple(str(n) for n in archive["class_names"]) if "class_names" in names else ()
            )
    except DeployInputError:
        raise
    except ValueError as exc:
        if "allow_pickle" not in str(exc):  # a corrupt .npy header, not an object array
            raise _unreadable(path, exc) from exc
        raise DeployInputError(
            f"evaluation file {path} holds Python objects, which are not loaded (pickle); "
            "save plain numeric arrays"
        ) from exc
    # zlib.error: a corrupt compressed member; NotImplementedError and RuntimeError: a zip
    # feature Python lacks (compression method, encryption), in an .npz a damaged header.
    except (OSError, EOFError, zipfile.BadZipFile, zlib.error, NotImplementedError,
            RuntimeError) as exc:  # fmt: skip
        raise _unreadable(path, exc) from exc
    except MemoryError as exc:
        raise DeployInputError(
            f"evaluation file {path} does not fit in memory ({format_bytes(path.stat().st_size)} "
            "on disk); evaluate on fewer images"
        ) from exc
    images, labels = _checked(images, labels, path)
    return LabelledData(images=images, labels=labels, class_names=class_names)


def _unreadable(path: Path, exc: BaseException) -> DeployInputError:
    reason = first_line(exc)
    return DeployInputError(
        f"evaluation file {path} is not a readable .npz file ({reason}); write it with "
        "numpy.savez(path, images=..., labels=...)"
    )


def _check_declared_sizes(path: Path) -> None:
    """Read each array's .npy header, not its data, and refuse sizes the file cannot hold or
    memory cannot take before numpy allocates them: a damaged header can declare terabytes."""
    total = 0
    with zipfile.ZipFile(path) as archive:
        for info in archive.infolist():
            if not info.filename.endswith(".npy"):
                continue
            with archive.open(info) as member:
                version = np.lib.format.read_magic(member)
                if version not in ((1, 0), (2, 0)):
                    continue  # 3.0 (UTF-8 field names) has no public reader; np.load checks it
                read_header = getattr(np.lib.format, f"read_array_header_{version[0]}_0")
                shape, _, dtype = read_header(member)
            size = tensor_bytes(shape, dtype.itemsize)
            if size > info.file_size:
                raise DeployInputError(
                    f"evaluation file {path}: '{info.filename[:-4]}' declares shape "
                    f"{list(shape)} {dtype} ({format_bytes(size)}) but holds "
                    f"{format_bytes(info.file_size)}; the file is truncated or corrupt"
                )
            total += size
    available = available_memory_bytes()
    if available is not None and total > available:
        raise DeployInputError(
            f"evaluation file {path} holds {format_bytes(total)} of arrays and "
            f"{format_bytes(available)} of memory is available; evaluate on fewer images"
        )


def top1_accuracy(runner: Runner, data: LabelledData, batch_size: int = 32) -> Accuracy:
    """Top-1 accuracy of an entered runner over all of `data`, in batches of `batch_size`."""
    scores = class_scores(runner, data, batch_size)
    return Accuracy(top1=float(np.mean(scores.argmax(axis=1) == data.labels)), samples=len(data))


def class_scores(runner: Runner, data: LabelledData, batch_size: int = 32) -> np.ndarray:
    """The model's class scores (N x classes, float32) for every image of `data`.

    The first output is taken as the logits; trailing 1-sized axes (N x classes x 1 x 1, as
    some classic ONNX models emit) are flattened. Images that do not fit the model's input,
    and labels beyond its classes, are refused before anything is trusted.
    """
    specs = runner.input_specs
    if len(specs) != 1:
        raise DeployInputError(
            f"accuracy needs a model with one image input; this one takes "
            f"{[spec.name for spec in specs]}"
        )
    spec = specs[0]
    expected = spec.shape[1:]
    got = data.images.shape[1:]
    if len(expected) != len(got) or any(
        want is not None and want != have for want, have in zip(expected, got, strict=True)
    ):
        raise DeployInputError(
            f"evaluation images are {list(got)} per image but the model's input "
            f"'{spec.name}' expects {['?' if d is None else d for d in expected]}; "
            "the evaluation file must match the model's preprocessing"
        )
    if spec.dtype not in ("float16", "float32", "float64", "bfloat16"):
        raise DeployInputError(
            f"the model's input '{spec.name}' is {spec.dtype}, and evaluation files hold "
            f"preprocessed float images ({data.images.dtype}); casting them would change them"
        )
    rows = []
    for outputs in run_batches(runner, data.images, batch_size):
        logits = np.asarray(next(iter(outputs.values())), dtype=np.float32)
        logits = logits.reshape(logits.shape[0], -1)
        if np.isnan(logits).any():
            start = sum(len(row) for row in rows)
            bad = int(np.isnan(logits).any(axis=1).sum())
            raise MeasurementError(
                f"the model's scores are NaN for {bad} of images {start}-{start + len(logits) - 1}"
                " (their pixels are finite), so top-1 would be meaningless; the model overflows "
                "(an FP16 graph?) or is broken"
            )
        if logits.shape[1] < 2:
            raise DeployInputError(
                f"the model's first output has {logits.shape[1]} value(s) per image; top-1 "
                "accuracy needs class scores (N x classes)"
            )
        if not rows and int(data.labels.max()) >= logits.shape[1]:
            raise DeployInputError(
                f"evaluation labels go up to {int(data.labels.max())} but the model scores "
                f"{logits.shape[1]} classes; the evaluation file does not belong to this model"
            )
        rows.append(logits)
    return np.concatenate(rows)


def run_batches(
    runner: Runner, images: np.ndarray, batch_size: int = 32
) -> Iterator[dict[str, np.ndarray]]:
    """Run an entered one-input runner over `images` in batches; yields each batch's outputs.

    A model with a fixed batch axis is fed batches of exactly that size: the last one is
    padded and the padding rows are cut from the outputs, so callers see one row per image.
    Images are cast to the input's dtype (an FP16-input model gets float16).
    """
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise DeployConfigError(f"batch_size must be an integer >= 1, got {batch_size!r}")
    (spec,) = runner.input_specs
    fixed = spec.shape[0] if spec.shape and spec.shape[0] is not None else None
    step = fixed or batch_size
    dtype = np.dtype(spec.dtype)
    for start in range(0, len(images), step):
        chunk = images[start : start + step]
        real = chunk.shape[0]
        if fixed is not None and real < step:
            pad = np.zeros((step - real, *chunk.shape[1:]), dtype=chunk.dtype)
            chunk = np.concatenate([chunk, pad])
        outputs = runner.infer({spec.name: np.ascontiguousarray(chunk, dtype=dtype)})
        yield {
            name: value[:real] if value.ndim and value.shape[0] == step else value
            for name, value in ((n, np.asarray(v)) for n, v in outputs.items())
        }


def _checked(images: np.ndarray, labels: np.ndarray, path: Path) -> tuple[np.ndarray, np.ndarray]:
    if images.dtype.kind != "f":
        raise DeployInputError(
            f"evaluation file {path}: 'images' must be floating point (preprocessed), "
            f"got {images.dtype}"
        )
    if images.ndim < 2 or images.shape[0] == 0:
        raise DeployInputError(
            f"evaluation file {path}: 'images' must be N x ... with N >= 1, got shape "
            f"{images.shape}"
        )
    if labels.ndim != 1 or labels.dtype.kind not in "iu":
        raise DeployInputError(
            f"evaluation file {path}: 'labels' must be a 1-D integer array, got "
            f"{labels.dtype} {labels.shape}"
        )
    if labels.shape[0] != images.shape[0]:
        raise DeployInputError(
            f"evaluation file {path}: {images.shape[0]} images but {labels.shape[0]} labels"
        )
    if not np.all(np.isfinite(images)):
        bad = int((~np.isfinite(images)).reshape(images.shape[0], -1).any(axis=1).sum())
        raise DeployInputError(
            f"evaluation file {path}: 'images' contains NaN or Inf ({bad} of "
            f"{images.shape[0]} images); preprocessing went wrong, fix it and save again"
        )
    if labels.dtype.kind == "u" and labels.size and labels.max() > np.iinfo(np.int64).max:
        raise DeployInputError(
            f"evaluation file {path}: 'labels' go up to {labels.max()}, beyond any class index"
        )
    labels = labels.astype(np.int64)
    if labels.size and labels.min() < 0:
        raise DeployInputError(
            f"evaluation file {path}: 'labels' must be class indices >= 0, got "
            f"{int(labels.min())} ({int(np.sum(labels < 0))} of {labels.size} labels negative)"
        )
    return images, labels
