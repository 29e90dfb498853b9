"""What `export_onnx` is asked to do (`ExportConfig`) and what it returns (`ExportResult`).

A leaf module: the exporter, its graph checks and its parity check all read the config, so
it lives below all three.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any, Literal, get_args

import numpy as np
import onnx

from export.errors import ExportConfigError

Exporter = Literal["dynamo", "torchscript"]
MIN_OPSET = 17  # dynamo emits 18 and converts down; below 17 ops go missing (LayerNorm)
CONFIG_VERSION = 1  # bump when a field changes meaning, so old recipes fail loudly
RESERVED_PREFIX = "export."  # metadata keys this package writes; user keys may not use it
BATCH_DIM_NAME = "batch"
# Measured max |onnxruntime - torch| / max |torch logit| (FP32, CPU): see README; a wrong op
# or changed weights moves logits by their own size (a ratio near 1), far above this.
PARITY_RTOL = 1e-4


@dataclass(frozen=True, kw_only=True)
class ExportConfig:
    """How to export and how strictly onnxruntime must agree with torch."""

    opset: int = 18  # ONNX opset; the dynamo exporter's native one is 18
    dynamic_batch: bool = True  # symbolic batch axis: one file serves every batch size
    input_name: str = "input"
    output_name: str = "logits"
    # Allowed max |onnxruntime - torch| = parity_atol + parity_rtol * max |torch output|:
    # float rounding grows with the logits' size (export/parity.py parity_tolerance).
    parity_atol: float = 1e-4  # the absolute part, for outputs near zero
    parity_rtol: float = PARITY_RTOL  # the part relative to the largest |torch output|
    require_top1_agreement: float = 1.0  # fraction of inputs whose argmax must agree
    parity_batch_size: int = 64  # inputs per parity batch (bounds memory on big val sets)
    exporter: Exporter = "dynamo"  # "torchscript": deprecated, for models dynamo can't trace
    optimize: bool = True  # constant folding and conv-bn fusion in the exporter
    keep_node_metadata: bool = False  # dynamo's per-node stack traces; off: reproducible bytes

    def __post_init__(self) -> None:
        newest = onnx.defs.onnx_opset_version()
        if _not_int(self.opset) or not MIN_OPSET <= self.opset <= newest:
            raise ExportConfigError(
                f"ExportConfig.opset: must be an integer from {MIN_OPSET} to {newest} (the "
                f"newest this onnx {onnx.__version__} knows), got {self.opset!r}"
            )
        for name in ("dynamic_batch", "optimize", "keep_node_metadata"):
            if not isinstance(getattr(self, name), bool):
                raise ExportConfigError(
                    f"ExportConfig.{name}: must be true or false, got {getattr(self, name)!r}"
                )
        for name in ("input_name", "output_name"):
            if not isinstance(getattr(self, name), str) or not getattr(self, name):
                raise ExportConfigError(
                    f"ExportConfig.{name}: must be a non-empty string, got {getattr(self, name)!r}"
                )
        if self.input_name == self.output_name:
            raise ExportConfigError(
                f"ExportConfig.output_name: must differ from input_name ('{self.input_name}')"
            )
        for name in ("parity_atol", "parity_rtol"):
            tol = getattr(self, name)
            if isinstance(tol, bool) or not isinstance(tol, int | float) or not 0 <= tol < np.inf:
                raise ExportConfigError(
                    f"ExportConfig.{name}: must be a finite number >= 0, got {tol!r}"
                )
        top1 = self.require_top1_agreement
        if isinstance(top1, bool) or not isinstance(top1, int | float) or not 0 <= top1 <= 1:
            raise ExportConfigError(
                f"ExportConfig.require_top1_agreement: must be a fraction in [0, 1] (1.0 = every "
                f"input), got {top1!r}"
            )
        if _not_int(self.parity_batch_size) or self.parity_batch_size < 1:
            raise ExportConfigError(
                f"ExportConfig.parity_batch_size: must be an integer >= 1, "
                f"got {self.parity_batch_size!r}"
            )
        if self.exporter not in get_args(Exporter):
            raise ExportConfigError(
                f"ExportConfig.exporter: must be one of {list(get_args(Exporter))}, "
                f"got {self.exporter!r}"
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

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready: path as a string, shapes as lists."""
        out = asdict(self)
        out["path"] = str(self.path)
        out["input_shape"] = list(self.input_shape)
        out["output_shape"] = list(self.output_shape)
        return out


def _not_int(value: object) -> bool:
    return isinstance(value, bool) or not isinstance(value, int)
