"""TensorRT tensor types on the host: the one place that maps a trt.DataType to numpy.

numpy has no bfloat16, so a BF16 engine input is fed as float32 (what every other backend
takes) and its outputs come back as float32. On the GPU the bytes must be bfloat16: the torch
buffers convert while copying, the cuda-python buffers copy raw bytes, so for them the host
array is converted to ml_dtypes' bfloat16 first (ml_dtypes comes with onnx).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from deploy.errors import DeployInputError
from deploy.lazy import lazy_import

# trt.DataType member names -> numpy dtype names ("bfloat16" has no numpy type).
TRT_DTYPES = {
    "FLOAT": "float32",
    "HALF": "float16",
    "BF16": "bfloat16",
    "INT8": "int8",
    "UINT8": "uint8",
    "INT32": "int32",
    "INT64": "int64",
    "BOOL": "bool",
}


def dtype_name(trt_dtype: Any) -> str:
    """trt.DataType -> numpy/torch dtype name ("float32", "float16", "bfloat16", ...)."""
    member = getattr(trt_dtype, "name", str(trt_dtype).rsplit(".", 1)[-1])
    if member not in TRT_DTYPES:
        supported = ", ".join(sorted(TRT_DTYPES))
        raise DeployInputError(
            f"the TensorRT runner does not handle tensors of type {member} (it handles {supported})"
        )
    return TRT_DTYPES[member]


def feed_dtype(name: str) -> str:
    """The numpy dtype a caller feeds for a tensor of dtype `name` (float32 for bfloat16)."""
    return "float32" if name == "bfloat16" else name


def host_dtype(name: str) -> np.dtype:
    """The numpy dtype whose bytes are the GPU tensor's bytes (ml_dtypes.bfloat16 for BF16)."""
    if name == "bfloat16":
        return np.dtype(lazy_import("ml_dtypes", "BF16 tensors on the host").bfloat16)
    return np.dtype(name)


def to_device_layout(array: np.ndarray, name: str) -> np.ndarray:
    """`array` as a contiguous host array with the bytes a tensor of dtype `name` holds."""
    return np.ascontiguousarray(array, dtype=host_dtype(name))


def from_device_layout(array: np.ndarray) -> np.ndarray:
    """A host copy of a GPU tensor as callers get it: bfloat16 widened to float32."""
    return array.astype(np.float32) if array.dtype.name == "bfloat16" else array
