"""What `export_onnx` is asked to do (`ExportConfig`) and what it returns (`ExportResult`).

A leaf module: the exporter, its graph checks and its parity check all read the config, so
it lives below all three.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any, Literal, get_args

import onnx

from deploy.config_fields import check_fields, flag, one_of, real, rule, whole
from export.block_boundaries import BlockBoundary
from export.errors import ExportConfigError

Exporter = Literal["dynamo", "torchscript"]
MIN_OPSET = 17  # dynamo emits 18 and converts down; below 17 ops go missing (LayerNorm)
CONFIG_VERSION = 1  # bump when a field changes meaning, so old recipes fail loudly
RESERVED_PREFIX = "export."  # metadata keys this package writes; user keys may not use it
BATCH_DIM_NAME = "batch"
# Measured max |onnxruntime - torch| / max |torch logit| (FP32, CPU): docs/guide/own-model.md;
# a wrong op or changed weights moves logits by their own size (a ratio near 1), far above this.
PARITY_RTOL = 1e-4


_NEWEST_OPSET = onnx.defs.onnx_opset_version()
_NAME = rule(lambda v: isinstance(v, str) and v != "", "a non-empty string")


@dataclass(frozen=True, kw_only=True)
class ExportConfig:
    """How to export and how strictly onnxruntime must agree with torch."""

    # ONNX opset; the dynamo exporter's native one is 18.
    opset: int = field(
        default=18,
        metadata=whole(
            MIN_OPSET,
            _NEWEST_OPSET,
            expected=f"an integer from {MIN_OPSET} to {_NEWEST_OPSET} (the newest this onnx "
            f"{onnx.__version__} knows)",
        ),
    )
    # Symbolic batch axis: one file serves every batch size.
    dynamic_batch: bool = field(default=True, metadata=flag())
    input_name: str = field(default="input", metadata=_NAME)
    output_name: str = field(default="logits", metadata=_NAME)
    # Allowed max |onnxruntime - torch| = parity_atol + parity_rtol * max |torch output|:
    # float rounding grows with the logits' size (export/parity.py parity_tolerance).
    # The absolute part, for outputs near zero; the part relative to the largest |output|.
    parity_atol: float = field(default=1e-4, metadata=real(0, noun="a finite number"))
    parity_rtol: float = field(default=PARITY_RTOL, metadata=real(0, noun="a finite number"))
    # Fraction of inputs whose argmax must agree.
    require_top1_agreement: float = field(
        default=1.0, metadata=real(0, 1, expected="a fraction in [0, 1] (1.0 = every input)")
    )
    # Inputs per parity batch (bounds memory on big val sets).
    parity_batch_size: int = field(default=64, metadata=whole(1))
    # "torchscript": deprecated, for models dynamo can't trace.
    exporter: Exporter = field(
        default="dynamo",
        metadata=one_of(get_args(Exporter), expected=f"one of {list(get_args(Exporter))}"),
    )
    # Constant folding and conv-bn fusion in the exporter.
    optimize: bool = field(default=True, metadata=flag())
    # dynamo's per-node stack traces; off: reproducible bytes.
    keep_node_metadata: bool = field(default=False, metadata=flag())

    def __post_init__(self) -> None:
        check_fields(self, ExportConfigError, "ExportConfig.{name}: ")
        if self.input_name == self.output_name:
            raise ExportConfigError(
                f"ExportConfig.output_name: must differ from input_name ('{self.input_name}')"
            )
        if self.exporter == "dynamo" and self.opset < 18:
            # torch's dynamo exporter writes opset 18 whatever it is asked for, and onnx's
            # version converter turns its ReduceMean into an invalid opset-17 node.
            raise ExportConfigError(
                f"ExportConfig.opset: the dynamo exporter writes opset 18 or newer, got "
                f"{self.opset}; use exporter torchscript for opset 17 (TensorRT 8.5/8.6)"
            )

    def to_dict(self) -> dict[str, Any]:
        """Plain dict with a version, for result files and recipes."""
        return {"version": CONFIG_VERSION, **asdict(self)}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> ExportConfig:
        """Inverse of to_dict; an unknown key or a newer version is an error naming it."""
        data = dict(data)
        version = data.pop("version", CONFIG_VERSION)
        if version != CONFIG_VERSION:
            raise ExportConfigError(
                f"ExportConfig.version: this code reads version {CONFIG_VERSION}, got {version!r}"
            )
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ExportConfigError(
                f"ExportConfig: unknown key(s) {unknown}; known keys are {sorted(known)}"
            )
        return cls(**data)


@dataclass(frozen=True)
class ExportResult:
    """What `export_onnx` wrote and how closely it matches torch."""

    path: Path
    opset: int
    input_name: str
    output_name: str
    input_shape: tuple[int | None, ...]  # None where the dimension is symbolic
    output_shape: tuple[int | None, ...]
    parity_max_abs_diff: float
    parity_top1_agreement: float
    parity_samples: int
    sha256: str  # of the final file, metadata included
    size_bytes: int
    exporter: str
    export_seconds: float  # torch.onnx.export alone, without checks and parity
    metadata: dict[str, str] = field(default_factory=dict)  # every metadata_prop in the file
    parity_tolerance: float = 0.0  # max_abs_diff allowed: parity_atol + parity_rtol * max |torch|
    # The boundary tensors of the blocks export_onnx was asked about (block_boundaries.py).
    blocks: tuple[BlockBoundary, ...] = ()

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready: path as a string, shapes as lists."""
        out = asdict(self)
        out["path"] = str(self.path)
        out["input_shape"] = list(self.input_shape)
        out["output_shape"] = list(self.output_shape)
        return out
