"""FP32 ONNX -> BF16 ONNX graph: how strongly typed TensorRT 11 gets a BF16 engine.

TensorRT 11 has no BF16 builder flag: a tensor is BF16 because the ONNX says so. This writer
applies the FP16 writer's rules (`export.precision_graph`, `export.low_precision`) with
bfloat16 as the low type: float32 inputs and outputs through Casts, inputs and ops without a
bfloat16 definition at the file's opset kept float32, `BF16Config.op_block_list` kept float32.

Opset. ONNX allowed bfloat16 in Cast and most element-wise, matrix and reduction ops at opset
13, in LeakyRelu and Where at 16, and in Conv, ConvTranspose, the pools (MaxPool,
AveragePool, GlobalAveragePool, ...), HardSwish and InstanceNormalization only at opset 22
(onnx PR 6099, onnx 1.17). At the pipeline's opset 18 every Conv of a CNN would stay float32,
so by default the graph is first raised to opset 22 with onnx.version_converter
(`BF16Config.opset`); TensorRT 10.15+ and 11 document opsets up to 24 (`export.trt_ops`).
`BF16Config(opset=None)` keeps the file's opset and those ops in float32. Below opset 13 no
standard op takes bfloat16, which is an ExportConfigError.

Weights are rounded to the nearest bfloat16, ties to even (torch's `.to(torch.bfloat16)`
rounding), not truncated; finite values that would round past bfloat16's largest finite
value (3.39e38) are clamped to it. BF16 keeps float32's exponent range, so no activation can
overflow it and there is no range check as FP16 has. onnxruntime's CPU provider has no BF16
kernels, so parity runs the file's float32 emulation (`export.emulation`) unless onnxruntime
loads the file itself; `BF16Result.parity_method` says which.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto

from deploy.config_fields import whole
from export.errors import ExportConfigError, UnsupportedModelError, first_line
from export.low_precision import (
    LowPrecisionConfig,
    LowPrecisionResult,
    Prepare,
    Writer,
    write_low_precision,
)
from export.precision_graph import DEFAULT_OP_BLOCK_LIST, FloatFormat, model_opset

__all__ = [
    "BF16",
    "BF16Config",
    "BF16Result",
    "BF16_FULL_OPSET",
    "BF16_MAX",
    "BF16_MIN_OPSET",
    "DEFAULT_ATOL",
    "DEFAULT_OP_BLOCK_LIST",
    "DEFAULT_RTOL",
    "bfloat16_bits",
    "convert_bf16",
]

BF16_MIN_OPSET = 13  # the first opset with bfloat16 in Cast, Add, MatMul, Gemm, Relu, ...
BF16_FULL_OPSET = 22  # the first with bfloat16 in Conv, ConvTranspose and the pools
BF16_MAX = float(np.array(0x7F7F0000, np.uint32).view(np.float32))  # 3.3895314e38
# Parity tolerance, relative to the largest FP32 logit. BF16 keeps 8 significant bits (a
# relative rounding error of up to 2**-8 = 3.9e-3 per tensor, 8x FP16's), and the emulation
# rounds every activation, not only the weights as onnxruntime's FP16 run does. Measured max
# |BF16 - FP32| / max |logit| on the float32 emulation: 1.2%, 0.62% and 1.05% on the default
# recipe's dense, ticket and shrunk ResNet-56, 1.1% on the tests' digits-trained tiny ResNet,
# 0.52% on its random-weight twin; top-1 agreement 1.0 on all. 5% leaves 4-10x headroom and
# still catches real faults (a lost Cast, a wrong exponent), which move logits by their size.
DEFAULT_RTOL = 5e-2
DEFAULT_ATOL = 1e-3


@dataclass(frozen=True, kw_only=True)
class BF16Config(LowPrecisionConfig):
    """FP16Config's choices, and the opset the BF16 graph is written at."""

    # At least this opset (raised with onnx.version_converter; never lowered): 22, where
    # Conv and the pools accept bfloat16. None: the source's opset, those ops then float32.
    opset: int | None = field(
        default=BF16_FULL_OPSET,
        metadata=whole(
            BF16_MIN_OPSET,
            onnx.defs.onnx_opset_version(),
            optional=True,
            expected=f"an opset from {BF16_MIN_OPSET} (ONNX's first with bfloat16) to "
            f"{onnx.defs.onnx_opset_version()} (this onnx's newest), or None",
        ),
    )


@dataclass(frozen=True)
class BF16Result(LowPrecisionResult):
    """What `convert_bf16` wrote, and how far its outputs are from the FP32 file's."""


def bfloat16_bits(values: np.ndarray) -> tuple[np.ndarray, int]:
    """float32 values -> bfloat16 bit patterns (uint16, same shape), rounded to nearest, ties
    to even; and how many finite values were clamped to +-BF16_MAX instead of becoming inf.

    Adding 0x7FFF plus the kept part's lowest bit, then dropping the low 16 bits, rounds
    half-way cases to the even neighbour; a carry into the exponent is the correct rounding
    up to the next power of two. NaN stays a (quiet) NaN, +-inf stays +-inf.
    """
    floats = np.ascontiguousarray(values, dtype=np.float32)
    bits = floats.view(np.uint32)
    keep_lsb = (bits >> 16) & np.uint32(1)
    rounded = ((bits + np.uint32(0x7FFF) + keep_lsb) >> 16).astype(np.uint16)
    nan = np.isnan(floats)
    rounded[nan] = ((bits[nan] >> 16) | np.uint32(0x0040)).astype(np.uint16)
    overflow = np.isfinite(floats) & ((rounded & np.uint16(0x7F80)) == np.uint16(0x7F80))
    rounded[overflow] = np.where(bits[overflow] >> 31 == 1, 0xFF7F, 0x7F7F).astype(np.uint16)
    return rounded, int(np.sum(overflow))


def _encode_bf16(values: np.ndarray, name: str) -> tuple[TensorProto, int]:
    bits, clamped = bfloat16_bits(values)
    tensor = TensorProto(name=name, data_type=TensorProto.BFLOAT16, dims=values.shape)
    tensor.raw_data = bits.astype("<u2").tobytes()  # ONNX raw_data is little-endian
    return tensor, clamped


BF16 = FloatFormat(name="bf16", label="BF16", onnx_type=TensorProto.BFLOAT16, encode=_encode_bf16)


def convert_bf16(
    fp32_onnx: str | os.PathLike[str],
    out_path: str | os.PathLike[str],
    config: BF16Config = BF16Config(),  # noqa: B008 - frozen, so sharing is safe
    *,
    parity_inputs: np.ndarray | None = None,
    atol: float = DEFAULT_ATOL,
    rtol: float = DEFAULT_RTOL,
) -> BF16Result:
    """Write the BF16 graph of `fp32_onnx` to `out_path` atomically, checked and, with
    `parity_inputs` (N x ... float images), compared with the FP32 file on onnxruntime (the
    float32 emulation where onnxruntime cannot run BF16).

    Raises ExportConfigError when the graph's opset cannot carry bfloat16 (below 13),
    UnsupportedModelError when onnx.version_converter cannot raise it to `config.opset`, and
    ParityError when max |BF16 - FP32| exceeds atol + rtol * max |FP32 output|; the BF16 file
    is then not written (call without parity_inputs to write it for inspection).
    """
    writer = Writer(fmt=BF16, config_name="BF16Config", max_value=None, prepare=_prepare(config))
    return write_low_precision(
        Path(fp32_onnx),
        Path(out_path),
        config,
        writer,
        BF16Result,
        parity_inputs=parity_inputs,
        atol=atol,
        rtol=rtol,
    )


def _prepare(config: BF16Config) -> Prepare:
    """Raise the model to `config.opset` when it is older; refuse an opset without bfloat16."""

    def prepare(model: onnx.ModelProto) -> tuple[onnx.ModelProto, dict[str, str]]:
        source = model_opset(model)
        target = source if config.opset is None else max(source, config.opset)
        if target < BF16_MIN_OPSET:
            raise ExportConfigError(
                f"BF16: the graph is opset {source}, and ONNX has no bfloat16 in any standard "
                f"op before opset {BF16_MIN_OPSET} (Cast, Add, Conv, ... accept only float16, "
                f"float and double there); re-export with opset {BF16_FULL_OPSET} (export.opset "
                f"in a recipe), or set BF16Config.opset to {BF16_FULL_OPSET} to raise it here"
            )
        if target != source:
            model = _raised(model, source, target)
        return model, {"bf16.opset": str(target), "bf16.source_opset": str(source)}

    return prepare


def _raised(model: onnx.ModelProto, source: int, target: int) -> onnx.ModelProto:
    """`model` at opset `target` (onnx.version_converter), with an IR version that allows it."""
    try:
        raised = onnx.version_converter.convert_version(model, target)
    except Exception:  # the converter raises RuntimeError/ValueError from C++
        try:  # its usual complaint is a tensor declared without a shape: infer them, retry
            inferred = onnx.shape_inference.infer_shapes(model)
            raised = onnx.version_converter.convert_version(inferred, target)
        except Exception as exc:
            raise UnsupportedModelError(
                f"BF16: onnx.version_converter cannot raise the graph from opset {source} to "
                f"{target}: {first_line(exc)}; re-export at opset {target}, or keep opset "
                f"{source} with BF16Config(opset=None) (Conv and the pools then stay float32; "
                "in a recipe, export.bf16: false skips the BF16 file)"
            ) from exc
    opsets = [o for o in raised.opset_import if o.domain in ("", "ai.onnx")]
    raised.ir_version = max(raised.ir_version, onnx.helper.find_min_ir_version_for(opsets))
    return raised
