"""One model input or output as every backend describes it. A leaf module: the ONNX
inspector, the runners and the TensorRT planner all speak it."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class TensorSpec:
    """Name, shape and dtype of one model input or output.

    Dynamic dimensions are None (the ONNX dim_param or an unset dim), so callers can pick
    a batch size or spatial size for them.
    """

    name: str
    shape: tuple[int | None, ...]
    dtype: str  # numpy dtype name, e.g. "float32"
