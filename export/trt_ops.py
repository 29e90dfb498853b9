"""What TensorRT's ONNX parser and builder accept, per release: the tables readiness checks use.

Where the tables come from (read, not copied; each table says which part it rests on):
- onnx-tensorrt `docs/operators.md` at branches 8.6-GA, 9.0-GA..9.3, 10.0-GA and 10.1-GA, and at
  the parser commits shipped with TensorRT 10.15 and 11.1 (NVIDIA/TensorRT v11.1 `parsers/onnx`
  = onnx/onnx-tensorrt@7c51a63); its `docs/Changelog.md`; the Q/DQ importer
  (`QuantDequantLinearHelper` in builtin_op_importers.cpp 8.6 / onnxOpImporters.cpp 10.1).
- NVIDIA/TensorRT v11.1 `include/NvInfer.h` (IQuantizeLayer, IDequantizeLayer, DLA notes);
  TensorRT docs "DLA Supported Layers and Restrictions" and "Working with DLA" (11.4.1).
- NVIDIA ModelOpt's ONNX INT8 placement for TensorRT (`modelopt/onnx/quantization/int8.py`,
  `ort_utils.py`): which ops TensorRT runs in INT8, per-channel weight axes, no INT32 bias.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from onnx import TensorProto

from export.errors import ExportConfigError

Version = tuple[int, int]


def _ops(names: str) -> frozenset[str]:
    """A set of op names written as one whitespace-separated string (keeps tables compact)."""
    return frozenset(names.split())


# --- What each TensorRT release's ONNX parser accepts ------------------------------------------
# Releases whose tables were read: 8.6 (JetPack 5), 10.0-10.16, 11.0-11.5. A newer release is
# refused rather than guessed: re-read operators.md, then extend this.
MINORS = {8: range(6, 7), 10: range(0, 17), 11: range(0, 6)}
# "Y" rows of operators.md at branch 8.6-GA (the same names as its DEFINE_BUILTIN_OP_IMPORTER
# list). No op was dropped from any later table read, up to 11.1.
SUPPORTED_8_6 = _ops(
    """Abs Acos Acosh Add And ArgMax ArgMin Asin Asinh Atan Atanh AveragePool BatchNormalization
    Cast Ceil Celu Clip Concat Constant ConstantOfShape Conv ConvTranspose Cos Cosh CumSum
    DepthToSpace DequantizeLinear Div Dropout Einsum Elu Equal Erf Exp Expand EyeLike Flatten
    Floor GRU Gather GatherElements GatherND Gemm GlobalAveragePool GlobalLpPool GlobalMaxPool
    Greater GreaterOrEqual GridSample GroupNormalization HardSigmoid HardSwish Identity If
    ImageScaler InstanceNormalization IsInf IsNaN LRN LSTM LayerNormalization LeakyRelu Less
    LessOrEqual Log LogSoftmax Loop LpNormalization LpPool MatMul Max MaxPool Mean
    MeanVarianceNormalization Min Mod Mul Neg NonMaxSuppression NonZero Not OneHot Or PRelu Pad
    ParametricSoftplus Pow QuantizeLinear RNN RandomNormal RandomNormalLike RandomUniform
    RandomUniformLike Range Reciprocal ReduceL1 ReduceL2 ReduceLogSum ReduceLogSumExp ReduceMax
    ReduceMean ReduceMin ReduceProd ReduceSum ReduceSumSquare Relu Reshape Resize
    ReverseSequence RoiAlign Round ScaledTanh Scan Scatter ScatterElements ScatterND Selu Shape
    Shrink Sigmoid Sign Sin Sinh Size Slice Softmax Softplus Softsign SpaceToDepth Split Sqrt
    Squeeze Sub Sum Tan Tanh ThresholdedRelu Tile TopK Transpose Trilu Unsqueeze Upsample Where
    Xor"""
)
# Ops added after 8.6 -> first release that imports them: operators.md diffs between branches
# (CastLike 9.1, Hardmax 9.2, Gelu/Mish 10.0, DeformConv 10.1), Changelog.md (windows 10.4, STFT
# 10.5, Attention 10.14, RMSNormalization/RotaryEmbedding/TensorScatter 10.15, Swish 11.0) and
# the 11.2.1 release notes (DFT, as a cuFFT plugin). Any other default-domain op (Det, Unique,
# Col2Im, Bitwise*, Sequence*, String*, ...) is an "N" row or absent in every table read.
ADDED: dict[str, Version] = {
    "CastLike": (9, 1), "Hardmax": (9, 2), "Gelu": (10, 0), "Mish": (10, 0),
    "DeformConv": (10, 1), "BlackmanWindow": (10, 4), "HammingWindow": (10, 4),
    "HannWindow": (10, 4), "STFT": (10, 5), "Attention": (10, 14), "RMSNormalization": (10, 15),
    "RotaryEmbedding": (10, 15), "TensorScatter": (10, 15), "Swish": (11, 0), "DFT": (11, 2),
}  # fmt: skip
MIN_OPSET = 9  # operators.md 10.x/11.x: "inclusive range of opset 9 to ..."; 8.6 names no floor
# Newest opset as documented: operators.md 8.6: 17, 9.x: 19, 10.0/10.1: 20, 10.15 and 11.1: 24;
# 11.5 release notes: 25. A release in between gets the newest point at or below it, which may
# under-state it (10.2-10.14 were not read).
MAX_OPSET: dict[Version, int] = {(8, 6): 17, (9, 0): 19, (10, 0): 20, (10, 15): 24, (11, 5): 25}
# Quantized types the Q/DQ importer maps to TensorRT: INT8 only in 8.6, FP8 and INT4 from 10.0,
# FP4 from 10.8 (Changelog). UINT8 and INT32 are refused (importer type check, IDequantizeLayer).
_INT8, _FP8, _INT4, _FP4 = (TensorProto.INT8, TensorProto.FLOAT8E4M3FN, TensorProto.INT4,
                            TensorProto.FLOAT4E2M1)  # fmt: skip
QTYPES: dict[Version, frozenset[int]] = {
    (8, 6): frozenset({_INT8}),
    (10, 0): frozenset({_INT8, _FP8, _INT4}),
    (10, 8): frozenset({_INT8, _FP8, _INT4, _FP4}),
}
# Ops TensorRT runs in INT8 when a DequantizeLinear feeds them: ModelOpt's INT8 op list for
# TensorRT, plus GlobalMaxPool and a re-quantizing QuantizeLinear.
INT8_CONSUMERS = _ops(
    "Add AveragePool BatchNormalization Clip Conv ConvTranspose Gemm GlobalAveragePool "
    "GlobalMaxPool MatMul MaxPool Mul QuantizeLinear"
)
# Ops TensorRT moves a Q/DQ across (data movement, or f(q(x)) == q(f(x)) under symmetric
# quantization, as for Relu); ModelOpt leaves them unquantized for that reason.
QDQ_PASS_THROUGH = _ops(
    "Concat Flatten Identity Pad Relu Reshape Slice Split Squeeze Transpose Unsqueeze"
)
# Per-channel weight (input 1) axis TensorRT expects: output channels, K of KCRS for Conv
# (NvInfer.h), axis 1 of a ConvTranspose weight (ModelOpt QDQOpTypePerChannelSupportToAxis).
WEIGHT_AXIS = {"Conv": 0, "ConvTranspose": 1}
# Input positions that carry shapes, axes or indices: INT64 there is expected, not a weight.
_REDUCE = _ops("L1 L2 LogSum LogSumExp Max Mean Min Prod Sum SumSquare")
SHAPE_INPUTS: dict[str, set[int]] = {
    "Reshape": {1}, "Expand": {1}, "Tile": {1}, "Slice": {1, 2, 3, 4}, "Squeeze": {1},
    "Unsqueeze": {1}, "ConstantOfShape": {0}, "Pad": {1, 3}, "Resize": {3}, "Range": {0, 1, 2},
    "TopK": {1}, "Gather": {1}, "GatherElements": {1}, "GatherND": {1}, "ScatterND": {1},
    "ScatterElements": {1}, "OneHot": {1}, "CumSum": {1}, "Split": {1}, "Trilu": {1},
    **{f"Reduce{r}": {1} for r in _REDUCE},
}  # fmt: skip
# Ops with no DLA implementation: NvInfer.h v11.1 allows only SUM/PROD/MAX/MIN/SUB element-wise,
# ABS unary and MAX/AVERAGE pooling on DLA; the DLA layer table lists ReLU, Sigmoid, TanH, Clip
# and LeakyReLU activations and no gather/scatter/top-k/non-zero/NMS/loop/conditional layer.
DLA_UNSUPPORTED = _ops(
    """Div Pow Exp Log Sqrt Reciprocal Neg Sin Cos Tan Asin Acos Atan Sinh Cosh Asinh Acosh
    Atanh Ceil Floor Round Erf Not Sign HardSigmoid HardSwish Elu Selu Celu Softplus Softsign
    ThresholdedRelu Mish Gelu LpPool GlobalLpPool Gather GatherElements GatherND ScatterND
    ScatterElements NonZero NonMaxSuppression TopK ArgMax ArgMin Loop If Scan CumSum Einsum
    Range OneHot"""
)
# BF16: TensorRT 9.0 added the type (DataType::kBF16; deploy.tensorrt.version agrees), on GPUs
# of compute capability 8.0+; DLA has none (FP16/INT8 only). ONNX gives Conv, ConvTranspose and
# the pools bfloat16 only from opset 22 (onnx PR 6099), so a BF16 CNN graph is opset 22+.
BF16_SINCE: Version = (9, 0)
BF16_CONV_OPSET = 22
DEFAULT_DOMAINS = ("", "ai.onnx")
QDQ = ("QuantizeLinear", "DequantizeLinear")


def supported_since(op: str) -> Version | None:
    """First release whose ONNX parser imports default-domain `op`; None if none read does."""
    return ADDED.get(op, (8, 6) if op in SUPPORTED_8_6 else None)


def max_opset(version: Version) -> int:
    """Newest default-domain opset documented for TensorRT `version`."""
    return _at(MAX_OPSET, version)


def quantized_types(version: Version) -> frozenset[int]:
    """TensorProto types the Q/DQ importer of TensorRT `version` maps to TensorRT."""
    return _at(QTYPES, version)


def _at(table: Mapping[Version, Any], version: Version) -> Any:
    """The entry of the newest documented release at or below `version`."""
    return table[max(key for key in table if key <= version)]


@dataclass(frozen=True)
class Target:
    """A declared TensorRT release; `minor` None means "some release of this major"."""

    label: str
    major: int
    minor: int | None

    @property
    def floor(self) -> Version:
        return (self.major, MINORS[self.major][0] if self.minor is None else self.minor)

    @property
    def ceiling(self) -> Version:
        return (self.major, MINORS[self.major][-1] if self.minor is None else self.minor)


def parse_trt_version(text: str) -> Target:
    """'8.6', '10', '10.x', '10.8', '10.8.0.43', '11', '11.x', '11.1' -> a release known here."""
    match = re.fullmatch(r"(\d+)(?:\.(\d+|x)(?:\.\d+)*)?", str(text).strip())
    major = int(match.group(1)) if match else -1
    minor = None if not match or match.group(2) in (None, "x") else int(match.group(2))
    if major not in MINORS or minor not in (None, *MINORS[major]) or (major, minor) == (8, None):
        raise ExportConfigError(
            f"trt_version: unknown TensorRT version {text!r}; use 8.6, 10 / 10.x / 10.0-10.16 "
            "or 11 / 11.x / 11.0-11.5 (the releases whose ONNX operator tables this check knows)"
        )
    return Target(str(text).strip(), major, minor)
