"""What one TensorRT build is asked for (`BuildOptions`) and what was decided for it
(`BuildPlan`). A leaf module: the planner, the builder, trtexec and the engine sidecar all
read these, so they live below all of them."""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

from deploy.config_fields import check_fields, flag, is_sequence, one_of, plain_tuple, rule, whole
from deploy.errors import DeployConfigError
from deploy.onnx_info import PRECISIONS

Shape = tuple[int, ...]
ShapeRange = tuple[Shape, Shape, Shape]  # (min, opt, max)


@dataclass(frozen=True, kw_only=True)
class BuildOptions:
    """How to build one engine. Batch sizes fill a dynamic axis 0 when `profile` is None."""

    precision: Literal["fp32", "fp16", "bf16", "int8"] = field(
        default="fp32", metadata=one_of(PRECISIONS)
    )
    # Builder scratch memory cap; None: TensorRT's default.
    workspace_mib: int | None = field(default=None, metadata=whole(1, optional=True))
    min_batch: int = field(default=1, metadata=whole(1))
    # The batch TensorRT tunes kernels for; None: max_batch.
    opt_batch: int | None = field(default=None, metadata=whole(1, optional=True))
    # A larger batch at run time is an error, so size it for the benchmark.
    max_batch: int = field(default=1, metadata=whole(1))
    profile: Mapping[str, ShapeRange] | None = field(  # input -> (min, opt, max) full shapes
        default=None,
        metadata=rule(
            lambda v: v is None or isinstance(v, Mapping),
            "a mapping of input names to (min, opt, max) shapes",
        ),
    )
    # Reused across builds on the same GPU and TensorRT.
    timing_cache: Path | None = field(
        default=None,
        metadata=rule(lambda v: v is None or isinstance(v, str | os.PathLike), "a file path"),
    )
    dla_core: int | None = field(default=None, metadata=whole(0, optional=True))  # FP16/INT8
    # With DLA: layers the DLA cannot run go to the GPU.
    gpu_fallback: bool = field(default=True, metadata=flag())
    builder_optimization_level: int | None = field(  # 0-5, TensorRT default 3
        default=None, metadata=whole(0, 5, optional=True, expected="0-5")
    )
    # auto: on from TensorRT 11 (always there).
    strongly_typed: bool | Literal["auto"] = field(
        default="auto",
        metadata=rule(lambda v: type(v) is bool or v == "auto", "true, false or 'auto'"),
    )

    def __post_init__(self) -> None:
        check_fields(self, DeployConfigError, "{name} ")
        if self.max_batch < self.min_batch:
            raise DeployConfigError(
                f"max_batch must be an integer >= {self.min_batch}, got {self.max_batch!r}"
            )
        opt = self.max_batch if self.opt_batch is None else self.opt_batch
        if opt < self.min_batch:
            raise DeployConfigError(f"opt_batch must be an integer >= {self.min_batch}, got {opt}")
        if opt > self.max_batch:
            raise DeployConfigError(f"opt_batch {opt} is above max_batch {self.max_batch}")
        object.__setattr__(self, "opt_batch", opt)
        if self.timing_cache is not None:
            object.__setattr__(self, "timing_cache", Path(self.timing_cache))
        if self.profile is not None:
            object.__setattr__(self, "profile", _normalize_profile(self.profile))

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["timing_cache"] = None if self.timing_cache is None else str(self.timing_cache)
        if self.profile is not None:
            data["profile"] = {k: [list(s) for s in r] for k, r in self.profile.items()}
        return data

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> BuildOptions:
        unknown = sorted(set(data) - set(cls.__dataclass_fields__))
        if unknown:
            raise DeployConfigError(f"unknown build options {unknown}")
        return cls(**data)


@dataclass(frozen=True)
class BuildPlan:
    """Everything version-dependent about one build, decided before TensorRT is imported."""

    tensorrt_version: str
    precision: str
    strongly_typed: bool
    network_flags: tuple[str, ...]  # trt.NetworkDefinitionCreationFlag member names
    builder_flags: tuple[str, ...]  # trt.BuilderFlag member names
    profile: dict[str, ShapeRange]  # dynamic inputs only; empty for a fully static model
    workspace_bytes: int | None
    dla_core: int | None
    builder_optimization_level: int | None
    timing_cache: Path | None
    min_compute_capability: tuple[int, int] | None  # checked against the GPU at build time
    notes: tuple[str, ...] = ()  # deprecations worth telling the user about


def _normalize_profile(profile: Mapping[str, Sequence[Sequence[int]]]) -> dict[str, ShapeRange]:
    result: dict[str, ShapeRange] = {}
    for name, shape_range in dict(profile).items():
        ranges = shape_range if is_sequence(shape_range) else ()
        shapes = tuple(plain_tuple(s) if is_sequence(s) else () for s in ranges)
        ints = all(
            isinstance(d, int) and not isinstance(d, bool) and d >= 1
            for shape in shapes
            for d in shape
        )
        if len(shapes) != 3 or not ints or len({len(s) for s in shapes}) != 1:
            raise DeployConfigError(
                f"profile for '{name}' must be (min, opt, max) shapes of integers >= 1 with the "
                f"same rank, got {shape_range!r}"
            )
        if any(not (lo <= mid <= hi) for lo, mid, hi in zip(*shapes, strict=True)):
            raise DeployConfigError(
                f"profile for '{name}' needs min <= opt <= max on every axis, got "
                f"min {list(shapes[0])}, opt {list(shapes[1])}, max {list(shapes[2])}"
            )
        result[str(name)] = shapes  # type: ignore[assignment]
    return result
