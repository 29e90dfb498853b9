"""What one TensorRT build is asked for (`BuildOptions`) and what was decided for it
(`BuildPlan`). A leaf module: the planner, the builder, trtexec and the engine sidecar all
read these, so they live below all of them."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Literal

from deploy.errors import DeployConfigError
from deploy.onnx_info import PRECISIONS

Shape = tuple[int, ...]
ShapeRange = tuple[Shape, Shape, Shape]  # (min, opt, max)


@dataclass(frozen=True, kw_only=True)
class BuildOptions:
    """How to build one engine. Batch sizes fill a dynamic axis 0 when `profile` is None."""

    precision: Literal["fp32", "fp16", "bf16", "int8"] = "fp32"
    workspace_mib: int | None = None  # builder scratch memory cap; None: TensorRT's default
    min_batch: int = 1
    opt_batch: int | None = None  # the batch TensorRT tunes kernels for; None: max_batch
    max_batch: int = 1  # a larger batch at run time is an error, so size it for the benchmark
    profile: Mapping[str, ShapeRange] | None = None  # input -> (min, opt, max) full shapes
    timing_cache: Path | None = None  # reused across builds on the same GPU and TensorRT
    dla_core: int | None = None  # Jetson DLA core; FP16/INT8 only
    gpu_fallback: bool = True  # with DLA: layers the DLA cannot run go to the GPU
    builder_optimization_level: int | None = None  # 0-5, TensorRT default 3
    strongly_typed: bool | Literal["auto"] = "auto"  # auto: on from TensorRT 11 (always there)

    def __post_init__(self) -> None:
        if self.precision not in PRECISIONS:
            raise DeployConfigError(
                f"precision must be one of {PRECISIONS}, got {self.precision!r}"
            )
        _check_int("workspace_mib", self.workspace_mib, 1, optional=True)
        _check_int("min_batch", self.min_batch, 1)
        _check_int("max_batch", self.max_batch, self.min_batch)
        opt = self.max_batch if self.opt_batch is None else self.opt_batch
        _check_int("opt_batch", opt, self.min_batch)
        if opt > self.max_batch:
            raise DeployConfigError(f"opt_batch {opt} is above max_batch {self.max_batch}")
        object.__setattr__(self, "opt_batch", opt)
        _check_int("dla_core", self.dla_core, 0, optional=True)
        _check_int("builder_optimization_level", self.builder_optimization_level, 0, True)
        if (self.builder_optimization_level or 0) > 5:
            raise DeployConfigError(
                f"builder_optimization_level must be 0-5, got {self.builder_optimization_level}"
            )
        if self.strongly_typed not in (True, False, "auto"):
            raise DeployConfigError(
                f"strongly_typed must be true, false or 'auto', got {self.strongly_typed!r}"
            )
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
        shapes = tuple(tuple(shape) for shape in shape_range)
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


def _check_int(name: str, value: object, minimum: int, optional: bool = False) -> None:
    if value is None and optional:
        return
    if not isinstance(value, int) or isinstance(value, bool) or value < minimum:
        raise DeployConfigError(f"{name} must be an integer >= {minimum}, got {value!r}")
