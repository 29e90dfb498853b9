"""ONNX -> TensorRT engine: a version-aware plan, then a small build with the Python API.

`plan_build` decides everything that depends on the TensorRT version (network flags, builder
flags, whether the ONNX must already be FP16 / BF16 or carry Q/DQ nodes, the optimization
profile) from the ONNX file and a version string, without importing TensorRT, so it is tested
on any machine. `build_engine` only carries the plan out, then writes the engine and its sidecar
(`deploy.tensorrt.sidecar`: where the engine may run) atomically.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from deploy.errors import DeployConfigError, DeployError, DeployInputError
from deploy.lazy import lazy_import
from deploy.onnx_info import OnnxInfo, inspect_onnx
from deploy.tensor_spec import TensorSpec
from deploy.tensorrt.dtypes import TRT_DTYPES
from deploy.tensorrt.options import BuildOptions, BuildPlan, ShapeRange
from deploy.tensorrt.sidecar import (
    REBUILD_HINT,
    SIDECAR_SCHEMA,
    EngineInfo,
    GpuIdentity,
    check_engine_compatible,
    gpu_identity,
    load_engine_info,
    save_engine,
    sidecar_path,
    write_atomic,
)
from deploy.tensorrt.version import TrtVersion, capabilities

_PASS_ONNX = {
    "fp16": "pass the FP16 ONNX (`compressor export` writes model.fp16.onnx)",
    "bf16": "pass the BF16 ONNX (`compressor export` writes model.bf16.onnx, at opset 22)",
    "int8": "pass the QDQ ONNX (`compressor export` writes model.int8.onnx)",
    "fp32": "pass the FP32 ONNX",
}


def plan_build(info: OnnxInfo, options: BuildOptions, trt_version: str | TrtVersion) -> BuildPlan:
    """Decide flags, profile and precision route for `info` on TensorRT `trt_version`.

    The ONNX graph must agree with the precision asked for: a strongly typed build (always on
    TensorRT 11) runs the graph's own types, so FP16 needs an FP16 graph, BF16 a BF16 graph
    (`export.bf16`) and INT8 Q/DQ nodes; INT8 needs Q/DQ nodes on every version (explicit
    quantization only, no calibration).
    """
    caps = capabilities(trt_version)
    version, want, graph = caps.version, options.precision, info.precision
    strongly = _strongly_typed(
        options.strongly_typed, caps.strongly_typed_available, caps.strongly_typed_only, version
    )
    if options.dla_core is not None and want not in ("fp16", "int8"):
        raise DeployConfigError(
            f"precision {want} cannot run on DLA core {options.dla_core}: DLA runs FP16 or INT8 "
            "only; build with precision fp16 or int8, or leave dla_core unset for the GPU"
        )
    name = info.path.name
    if want == "int8" and graph != "int8":
        raise DeployConfigError(
            f"precision int8 needs Q/DQ nodes in the ONNX (explicit quantization) and {name} has "
            f"none; deploy does not calibrate (calibrators are deprecated since TensorRT 10.1 and "
            f"gone in 11); {_PASS_ONNX['int8']}"
        )
    if strongly and graph != want:
        why = "was asked for a strongly typed network"
        if caps.strongly_typed_only:
            why = "builds only strongly typed networks"
        raise DeployConfigError(
            f"precision {want} on TensorRT {version}: TensorRT {version.major} {why}, which run "
            f"the types in the graph, and {name} is an {graph} graph; {_PASS_ONNX[want]}"
        )
    if graph not in ("fp32", want):
        raise DeployConfigError(
            f"precision {want}: {name} is an {graph} graph, so the engine would not be {want}; "
            f"{_PASS_ONNX[want]}, or ask for precision {graph}"
        )
    if want == "bf16" and not caps.bf16:
        raise DeployConfigError(f"precision bf16 needs TensorRT 9 or newer, this is {version}")
    network_flags = ["EXPLICIT_BATCH"] if caps.explicit_batch_flag else []
    builder_flags: list[str] = []
    notes: list[str] = []
    if strongly and not caps.strongly_typed_only:
        network_flags.append("STRONGLY_TYPED")
    if not strongly and want != "fp32":
        builder_flags.append({"fp16": "FP16", "bf16": "BF16", "int8": "INT8"}[want])
        if caps.precision_flags_deprecated:
            notes.append(
                f"BuilderFlag.{builder_flags[0]} is deprecated since TensorRT 10.12 and gone in "
                f"11; strongly_typed=True with a {want} ONNX is the route that lasts"
            )
    if options.dla_core is not None and options.gpu_fallback:
        builder_flags.append("GPU_FALLBACK")
    if options.builder_optimization_level is not None and not caps.builder_optimization_level:
        raise DeployConfigError(
            f"builder_optimization_level needs TensorRT 8.6 or newer; this is {version}: "
            "leave it out"
        )
    return BuildPlan(
        tensorrt_version=str(version),
        precision=want,
        strongly_typed=strongly,
        network_flags=tuple(network_flags),
        builder_flags=tuple(builder_flags),
        profile=_plan_profile(info, options),
        workspace_bytes=None if options.workspace_mib is None else options.workspace_mib << 20,
        dla_core=options.dla_core,
        builder_optimization_level=options.builder_optimization_level,
        timing_cache=options.timing_cache,
        min_compute_capability=(8, 0) if want == "bf16" else None,
        notes=tuple(notes),
    )


def _strongly_typed(asked: bool | str, available: bool, only: bool, version: TrtVersion) -> bool:
    if asked == "auto":
        return only
    if asked and not available:
        raise DeployConfigError(
            f"strongly_typed needs TensorRT 9 or newer, this is {version}; leave it 'auto'"
        )
    if not asked and only:
        raise DeployConfigError(
            f"strongly_typed=False: TensorRT {version} builds only strongly typed networks; "
            "leave it 'auto' and pass an ONNX of the precision you want"
        )
    return bool(asked)


def _plan_profile(info: OnnxInfo, options: BuildOptions) -> dict[str, ShapeRange]:
    """Profile shapes for every dynamic input: from `options.profile`, else batch sizes."""
    specs = {spec.name: spec for spec in info.inputs}
    given = dict(options.profile or {})
    unknown = sorted(set(given) - set(specs))
    if unknown:
        raise DeployConfigError(
            f"profile names {unknown}, which are not inputs of {info.path.name} "
            f"(inputs: {sorted(specs)})"
        )
    profile: dict[str, ShapeRange] = {}
    for spec in info.inputs:
        dynamic = [axis for axis, dim in enumerate(spec.shape) if dim is None]
        if spec.name in given:
            _check_range(spec, given[spec.name])
            if dynamic:
                profile[spec.name] = given[spec.name]
        elif dynamic == [0]:
            rest = tuple(int(d) for d in spec.shape[1:])  # type: ignore[arg-type]
            batches = (options.min_batch, options.opt_batch, options.max_batch)
            profile[spec.name] = tuple((int(b), *rest) for b in batches)  # type: ignore[assignment]
        elif dynamic:
            raise DeployConfigError(
                f"input '{spec.name}' of {info.path.name} has dynamic dims at axes {dynamic} "
                f"(shape {_fmt(spec.shape)}); give its (min, opt, max) shapes in the profile"
            )
    return profile


def _check_range(spec: TensorSpec, shape_range: ShapeRange) -> None:
    for label, shape in zip(("min", "opt", "max"), shape_range, strict=True):
        if len(shape) != len(spec.shape):
            raise DeployConfigError(
                f"profile {label} shape {list(shape)} for input '{spec.name}' has {len(shape)} "
                f"dims, the model expects {len(spec.shape)} {_fmt(spec.shape)}"
            )
        fixed = [
            a
            for a, (got, want) in enumerate(zip(shape, spec.shape, strict=True))
            if want is not None and got != want
        ]
        if fixed:
            raise DeployConfigError(
                f"profile {label} shape {list(shape)} for input '{spec.name}' changes fixed "
                f"axes {fixed} of {_fmt(spec.shape)}"
            )


_LOGGER: Any = None


def trt_logger(trt: Any) -> Any:
    """One TensorRT logger per process: TensorRT warns when builders and runtimes get
    different ones (NVIDIA's samples keep a single module-level logger too)."""
    global _LOGGER
    if _LOGGER is None:
        _LOGGER = trt.Logger(trt.Logger.WARNING)
    return _LOGGER


def build_engine(
    onnx_path: str | os.PathLike[str],
    engine_path: str | os.PathLike[str],
    options: BuildOptions | None = None,
    *,
    log: Callable[[str], object] = print,
) -> EngineInfo:
    """Build a TensorRT engine from an ONNX file; writes the engine and its sidecar atomically."""
    options = options or BuildOptions()
    onnx_path, engine_path = Path(onnx_path), Path(engine_path)
    info = inspect_onnx(onnx_path)  # a non-ONNX file fails here, before TensorRT is touched
    trt = lazy_import("tensorrt", "building a TensorRT engine")
    plan = plan_build(info, options, trt.__version__)
    gpu = gpu_identity(0)
    needed = plan.min_compute_capability
    if needed and tuple(gpu.compute_capability) < needed:
        have = ".".join(map(str, gpu.compute_capability))
        raise DeployConfigError(
            f"precision {plan.precision} needs compute capability {needed[0]}.{needed[1]} or "
            f"newer (Ampere); {gpu.name} has {have}; build fp16 instead"
        )
    for note in plan.notes:
        log(f"note: {note}")
    log(
        f"building {engine_path.name} from {onnx_path.name}: {plan.precision}, TensorRT "
        f"{plan.tensorrt_version}, {gpu.name}"
    )
    logger = trt_logger(trt)
    builder = trt.Builder(logger)
    flags = 0
    for name in plan.network_flags:
        flags |= 1 << int(getattr(trt.NetworkDefinitionCreationFlag, name))
    network = builder.create_network(flags)
    parser = trt.OnnxParser(network, logger)
    if not parser.parse_from_file(str(onnx_path)):
        errors = [_parser_error(parser.get_error(i)) for i in range(parser.num_errors)]
        raise DeployInputError(
            f"TensorRT {plan.tensorrt_version} cannot parse {onnx_path.name}: "
            + ("; ".join(errors) or "no error reported")
        )
    config = _builder_config(trt, builder, plan)
    cache = _load_timing_cache(config, plan.timing_cache, log)
    serialized = builder.build_serialized_network(network, config)
    if serialized is None:
        raise DeployError(
            f"TensorRT {plan.tensorrt_version} could not build an engine from {onnx_path.name} "
            "(its log above says why); try a larger workspace_mib or another precision"
        )
    engine_bytes = bytes(memoryview(serialized))
    if cache is not None and plan.timing_cache is not None:
        write_atomic(plan.timing_cache, bytes(memoryview(config.get_timing_cache().serialize())))
    inputs = [_tensor_spec(network.get_input(i)) for i in range(network.num_inputs)]
    outputs = [_tensor_spec(network.get_output(i)) for i in range(network.num_outputs)]
    info = save_engine(
        engine_path,
        engine_bytes,
        plan=plan,
        options=options,
        gpu=gpu,
        onnx_path=onnx_path,
        inputs=inputs,
        outputs=outputs,
    )
    log(f"engine written to {engine_path} ({len(engine_bytes) / 2**20:.1f} MiB)")
    return info


def _builder_config(trt: Any, builder: Any, plan: BuildPlan) -> Any:
    config = builder.create_builder_config()
    if plan.workspace_bytes is not None:
        config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, plan.workspace_bytes)
    for name in plan.builder_flags:
        config.set_flag(getattr(trt.BuilderFlag, name))
    if plan.builder_optimization_level is not None:
        config.builder_optimization_level = plan.builder_optimization_level
    if plan.profile:
        profile = builder.create_optimization_profile()
        for name, (low, opt, high) in plan.profile.items():
            profile.set_shape(name, low, opt, high)
        config.add_optimization_profile(profile)
    if plan.dla_core is not None:
        if plan.dla_core >= builder.num_DLA_cores:
            raise DeployConfigError(
                f"dla_core {plan.dla_core} does not exist: this device has "
                f"{builder.num_DLA_cores} DLA cores (Jetson AGX Orin/Xavier have 2, GPUs none)"
            )
        config.default_device_type = trt.DeviceType.DLA
        config.DLA_core = plan.dla_core
    return config


def _load_timing_cache(config: Any, path: Path | None, log: Callable[[str], object]) -> Any:
    """Start from the cache file when there is one; a cache from another GPU starts afresh."""
    if path is None:
        return None
    cache = config.create_timing_cache(path.read_bytes() if path.is_file() else b"")
    # create_timing_cache gives None for a corrupt blob or one from another TensorRT version.
    if cache is None or not config.set_timing_cache(cache, ignore_mismatch=False):
        log(f"timing cache {path} was made by another GPU or TensorRT; starting a new one")
        cache = config.create_timing_cache(b"")
        config.set_timing_cache(cache, ignore_mismatch=False)
    return cache


def _parser_error(error: Any) -> str:
    node = error.node_name() if hasattr(error, "node_name") else ""  # node_name() from 10.0
    where = f"node '{node}'" if node else f"node #{error.node()}"
    return f"{where}: {error.desc()}"


def _tensor_spec(tensor: Any) -> TensorSpec:
    """A network input/output (trt.ITensor) as a TensorSpec; -1 dims become None."""
    dtype = getattr(tensor.dtype, "name", str(tensor.dtype).rsplit(".", 1)[-1])
    shape = tuple(None if int(d) < 0 else int(d) for d in tensor.shape)
    return TensorSpec(name=tensor.name, shape=shape, dtype=TRT_DTYPES.get(dtype, dtype.lower()))


def _fmt(shape: Sequence[int | None]) -> str:
    return "[" + ", ".join("?" if d is None else str(d) for d in shape) + "]"


__all__ = [
    "REBUILD_HINT",
    "SIDECAR_SCHEMA",
    "BuildOptions",
    "BuildPlan",
    "EngineInfo",
    "GpuIdentity",
    "build_engine",
    "check_engine_compatible",
    "gpu_identity",
    "load_engine_info",
    "plan_build",
    "save_engine",
    "sidecar_path",
]
