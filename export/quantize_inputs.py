"""The arguments of `quantize_qdq` other than its config, checked before any work: the
model's image input, calibration and evaluation images, labels and user metadata. Each
error names the argument, what it got and what the model takes."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import onnx

from deploy.evaluate import LabelledData
from deploy.runners import TensorSpec
from export.errors import ExportInputError
from export.metadata import MetadataValue, checked_metadata


def checked_user_metadata(metadata: Mapping[str, MetadataValue] | None) -> dict[str, str]:
    checked = checked_metadata(metadata or {})
    reserved = ("precision", "quantization", "source_onnx_sha256")
    ours = sorted(k for k in checked if k in reserved or k.startswith("quantization."))
    if ours:
        raise ExportInputError(f"metadata keys {ours} are written by quantize_qdq; rename them")
    return checked


def image_input(model: onnx.ModelProto, path: Path) -> TensorSpec:
    """The one float32 N x C x H x W input; None for dynamic (symbolic or unset) dims."""
    weights = {init.name for init in model.graph.initializer}
    inputs = [value for value in model.graph.input if value.name not in weights]
    tensor = inputs[0].type.tensor_type if len(inputs) == 1 else None
    if tensor is None or tensor.elem_type != onnx.TensorProto.FLOAT or (len(tensor.shape.dim) != 4):
        raise ExportInputError(
            f"{path}: expected one float32 N x C x H x W image input, found "
            f"{[value.name for value in inputs]}; quantize a classifier exported by export_onnx"
        )
    dims = tuple(d.dim_value if d.HasField("dim_value") else None for d in tensor.shape.dim)
    return TensorSpec(inputs[0].name, dims, "float32")


def checked_images(images: Any, spec: TensorSpec, what: str) -> np.ndarray:
    expected = ["?" if d is None else d for d in spec.shape[1:]]
    if not isinstance(images, np.ndarray) or images.dtype.kind != "f":
        kind = images.dtype if isinstance(images, np.ndarray) else type(images).__name__
        raise ExportInputError(
            f"{what}: must be a float numpy array (N x C x H x W, preprocessed), got {kind}"
        )
    fits = images.ndim == 4 and all(
        want in (None, got) for want, got in zip(spec.shape[1:], images.shape[1:], strict=True)
    )
    if not fits or images.shape[0] < 1:
        raise ExportInputError(
            f"{what}: shape {images.shape} does not fit input '{spec.name}', which takes "
            f"N x {' x '.join(map(str, expected))} with N >= 1; preprocess like the model"
        )
    if not np.all(np.isfinite(images)):
        raise ExportInputError(f"{what}: contains NaN or Inf")
    return np.ascontiguousarray(images, dtype=np.float32)


def calibration_subset(images: np.ndarray, samples: int, fixed_batch: int | None) -> np.ndarray:
    """At most `samples` images, evenly spaced so a class-sorted array is still covered;
    with a fixed batch axis, a whole number of batches (the remainder is dropped)."""
    if len(images) > samples:
        images = images[np.linspace(0, len(images) - 1, samples).round().astype(int)]
    if fixed_batch:
        if len(images) < fixed_batch:
            raise ExportInputError(
                f"calibration_images: {len(images)} image(s), but the model's batch axis is "
                f"fixed at {fixed_batch}; give at least {fixed_batch}"
            )
        images = images[: len(images) - len(images) % fixed_batch]
    return images


def checked_eval(images: Any, labels: Any, spec: TensorSpec) -> LabelledData | None:
    if images is None and labels is None:
        return None
    if images is None or labels is None:
        raise ExportInputError("eval_images and eval_labels go together; give both or neither")
    images = checked_images(images, spec, "eval_images")
    labels = np.asarray(labels)
    if labels.ndim != 1 or labels.dtype.kind not in "iu" or len(labels) != len(images):
        raise ExportInputError(
            f"eval_labels: must be {len(images)} integers (one per eval image), got "
            f"{labels.dtype} {labels.shape}"
        )
    return LabelledData(images=images, labels=labels.astype(np.int64))
