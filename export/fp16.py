"""FP32 ONNX -> FP16 ONNX graph: how strongly typed TensorRT 11 gets an FP16 engine.

TensorRT 11 dropped the FP16 builder flag: a tensor is FP16 because the ONNX says so. This
rewrites the graph itself (no onnxconverter-common), with the rules shared with the BF16
writer (`export.precision_graph`, `export.low_precision`): float32 initializers, Constant
tensors, intermediate tensors and Cast(to=FLOAT) become float16; inputs and ops the opset's
schemas define in float32 only stay float32, as do the ops of `FP16Config.op_block_list`; with
`keep_io_types` the graph still takes and returns float32 through Casts.

Given parity inputs, the file is run against the FP32 file with onnxruntime. Its CPU provider
has few FP16 kernels: it casts the FP16 weights back to float32 and drops the Casts between
ops, so the comparison measures the weight rounding, not FP16 activations. Overflow (an
activation beyond +-65504, inf in FP16) is therefore checked separately, from the FP32
activations' range on the same inputs.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from onnx import TensorProto, numpy_helper

from export.low_precision import (
    LowPrecisionConfig,
    LowPrecisionResult,
    Writer,
    write_low_precision,
)
from export.precision_graph import DEFAULT_OP_BLOCK_LIST, FloatFormat

__all__ = [
    "DEFAULT_ATOL",
    "DEFAULT_OP_BLOCK_LIST",
    "DEFAULT_RTOL",
    "FP16",
    "FP16Config",
    "FP16Result",
    "FP16_MAX",
    "convert_fp16",
]

FP16_MAX = 65504.0  # largest finite float16; larger float32 values are clamped to it
# Parity tolerance, relative to the largest FP32 logit: FP16 keeps 11 significant bits (a
# rounding error of up to 2**-11 = 4.9e-4 per tensor). Measured max |FP16 - FP32| / max |logit|:
# 3e-4 to 7e-4 on the default pipeline's ResNet-56 variants and a small digits CNN, 2e-3 on a
# badly conditioned one. 1% leaves 5-30x headroom for TensorRT's FP16 activations, and still
# catches real faults (a lost Cast, a clamped weight), which move logits by their own size.
DEFAULT_RTOL = 1e-2
DEFAULT_ATOL = 1e-3


@dataclass(frozen=True, kw_only=True)
class FP16Config(LowPrecisionConfig):
    """Which ops stay float32 and whether the graph keeps float32 inputs and outputs."""


@dataclass(frozen=True)
class FP16Result(LowPrecisionResult):
    """What `convert_fp16` wrote, and how far its outputs are from the FP32 file's."""


def _encode_fp16(values: np.ndarray, name: str) -> tuple[TensorProto, int]:
    clamped = int(np.sum(np.abs(values) > FP16_MAX))
    half = np.clip(values, -FP16_MAX, FP16_MAX).astype(np.float16)  # numpy rounds to nearest
    return numpy_helper.from_array(half, name), clamped


FP16 = FloatFormat(name="fp16", label="FP16", onnx_type=TensorProto.FLOAT16, encode=_encode_fp16)
_WRITER = Writer(fmt=FP16, config_name="FP16Config", max_value=FP16_MAX)


def convert_fp16(
    fp32_onnx: str | os.PathLike[str],
    out_path: str | os.PathLike[str],
    config: FP16Config = FP16Config(),  # noqa: B008 - frozen, so sharing is safe
    *,
    parity_inputs: np.ndarray | None = None,
    atol: float = DEFAULT_ATOL,
    rtol: float = DEFAULT_RTOL,
) -> FP16Result:
    """Write the FP16 graph of `fp32_onnx` to `out_path` atomically, checked and, with
    `parity_inputs` (N x ... float images), compared with the FP32 file on onnxruntime.

    Raises ParityError when an activation computed in FP16 would overflow on those inputs,
    or when max |FP16 - FP32| exceeds atol + rtol * max |FP32 output|; the FP16 file is then
    not written (call without parity_inputs to write it for inspection).
    """
    return write_low_precision(
        Path(fp32_onnx),
        Path(out_path),
        config,
        _WRITER,
        FP16Result,
        parity_inputs=parity_inputs,
        atol=atol,
        rtol=rtol,
    )
