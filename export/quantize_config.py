"""How INT8 files are calibrated and where their Q/DQ pairs go: the config of `quantize_qdq`,
in a leaf module so the quantizer's parts (export/quantize_ort.py) can read it without an
import cycle."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any, Literal, get_args

import onnx

from deploy.config_fields import check_fields, flag, one_of, real, whole
from export.errors import ExportConfigError
from export.qdq_placement import PLACEMENTS, QdqPlacement

CalibrationName = Literal["minmax", "entropy", "percentile"]
# 2: qdq_placement and quantize_classifier; the default placement became "tensorrt" (version
# 1 files were written with what is now "all").
CONFIG_VERSION = 2
# Weighted ops TensorRT runs in INT8, plus Add: a quantized residual input lets TensorRT fuse
# the add into the convolution (its Q/DQ placement guide); measured: no accuracy cost here.
DEFAULT_OP_TYPES = ("Conv", "Gemm", "MatMul", "Add")


def _checked_op_types(op_types: Any) -> tuple[str, ...]:
    if isinstance(op_types, str) or not isinstance(op_types, tuple | list) or not op_types:
        raise ExportConfigError(
            f"QuantizeConfig.op_types: must be a non-empty list of ONNX op types such as "
            f"{list(DEFAULT_OP_TYPES)}, got {op_types!r}"
        )
    unknown = [op for op in op_types if not isinstance(op, str) or not onnx.defs.has(op)]
    if unknown:
        raise ExportConfigError(
            f"QuantizeConfig.op_types: {unknown} are not ONNX op types (names are "
            f"case-sensitive, e.g. 'Conv')"
        )
    return tuple(op_types)


@dataclass(frozen=True, kw_only=True)
class QuantizeConfig:
    """How to calibrate and what to quantize. minmax is the default: on the default pipeline's
    three ResNet-56 variants it was within one test image of the best method on each, and it
    is the fastest (entropy's KL search takes seconds per model and lost the most)."""

    calibration_method: CalibrationName = field(
        default="minmax",
        metadata=one_of(
            get_args(CalibrationName), expected=f"one of {list(get_args(CalibrationName))}"
        ),
    )
    # At most this many images, evenly spaced over the array.
    calibration_samples: int = field(default=256, metadata=whole(1))
    # Images per calibration run (a fixed batch axis wins).
    calibration_batch_size: int = field(default=32, metadata=whole(1))
    # One weight scale per output channel (TensorRT's best INT8).
    per_channel: bool = field(default=True, metadata=flag())
    # "percentile": the |activation| percentile kept in range.
    percentile: float = field(
        default=99.99,
        metadata=real(50, 100, above=True, expected="a number in (50, 100], e.g. 99.99"),
    )
    # "entropy": histogram bins; > 128 (the quantized bins) or it is minmax.
    entropy_bins: int = field(default=512, metadata=whole(256))
    op_types: tuple[str, ...] = DEFAULT_OP_TYPES  # ONNX op types whose inputs get Q/DQ
    # onnxruntime's quant_pre_process: shape inference, BN folding.
    preprocess: bool = field(default=True, metadata=flag())
    eval_batch_size: int = field(default=64, metadata=whole(1))  # images per evaluation run
    # Where Q/DQ pairs go (export/qdq_placement.py): "tensorrt", as TensorRT fuses them;
    # "all", onnxruntime's pair on every input and output of op_types (before version 2).
    qdq_placement: QdqPlacement = field(
        default="tensorrt", metadata=one_of(PLACEMENTS, expected=f"one of {list(PLACEMENTS)}")
    )
    # The classifier (last Gemm/MatMul) in INT8? None: the placement's choice, float for
    # "tensorrt" (as ModelOpt: a GEMV gains nothing from INT8), INT8 for "all".
    quantize_classifier: bool | None = field(
        default=None,
        metadata=flag(optional=True, expected="true, false or null (the placement's choice)"),
    )

    def __post_init__(self) -> None:
        check_fields(self, ExportConfigError, "QuantizeConfig.{name}: ")
        object.__setattr__(self, "op_types", _checked_op_types(self.op_types))

    def to_dict(self) -> dict[str, Any]:
        """Plain dict with a version, for result files and recipes."""
        return {"version": CONFIG_VERSION, **asdict(self), "op_types": list(self.op_types)}
