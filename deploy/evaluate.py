"""Top-1 accuracy of any runner on a labelled evaluation file, so a latency has its price.

A labelled evaluation file is an `.npz` with two arrays: `images` (N x C x H x W, already
preprocessed the way the model expects, any float dtype) and `labels` (N integers); an
optional `class_names` array of strings. It is read with `allow_pickle=False`, so a file that
smuggles Python objects is refused rather than executed. `compressor bundle` writes one.
"""

from __future__ import annotations

import os
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from deploy.errors import DeployConfigError, DeployInputError
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
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "wb") as handle:
        np.savez(handle, **arrays)
    return path


def load_labelled(path: str | os.PathLike[str]) -> LabelledData:
    """Read an evaluation file; every way it can be wrong is a DeployInputError naming it."""
    path = Path(path)
    if not path.is_file():
        raise DeployInputError(f"evaluation file not found: {path}")
    if not zipfile.is_zipfile(path):  # np.load would try it as a pickle
        raise DeployInputError(
            f"evaluation file {path} is not a readable .npz file; write it with "
            "numpy.savez(path, images=..., labels=...)"
        )
    try:
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
    except ValueError as exc:  # object arrays need pickle, which is refused
        raise DeployInputError(
            f"evaluation file {path} holds Python objects, which are not loaded (pickle); "
            "save plain numeric arrays"
        ) from exc
    except (OSError, zipfile.BadZipFile, EOFError) as exc:
        raise DeployInputError(
            f"evaluation file {path} is not a readable .npz file ({exc}); write it with "
            "numpy.savez(path, images=..., labels=...)"
        ) from exc
    images, labels = _checked(images, labels, path)
    return LabelledData(images=images, labels=labels, class_names=class_names)


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
    rows = []
    for outputs in run_batches(runner, data.images, batch_size):
        logits = np.asarray(next(iter(outputs.values())), dtype=np.float32)
        logits = logits.reshape(logits.shape[0], -1)
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
        raise DeployInputError(f"evaluation file {path}: 'images' contains NaN or Inf")
    return images, labels.astype(np.int64)
