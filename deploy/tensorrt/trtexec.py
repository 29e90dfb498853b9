"""NVIDIA's trtexec as a benchmark backend: version-correct command lines and parsed output.

trtexec is not a Runner (it returns timings, not outputs), so it has its own entry point,
`run_trtexec`, which returns the same LatencyRecords as the benchmark harness. Flags differ
across releases (read in trtexec's sampleOptions.cpp per tag, summarised in
`deploy.tensorrt.version`); the numbers come from `--exportTimes` (per-iteration traces, written by
sampleReporting.cpp exportJSONTrace) and the "=== Performance summary ===" block
(sampleReporting.cpp printEpilog), whose warnings are kept with the record.
"""

from __future__ import annotations

import os
import shlex
import shutil
import subprocess
import tempfile
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from deploy.errors import DeployConfigError, DeployError, DeployInputError, MissingDependencyError
from deploy.onnx_info import inspect_onnx
from deploy.records import LatencyRecord
from deploy.tensorrt.engine import BuildOptions, plan_build
from deploy.tensorrt.sidecar import load_engine_info, sidecar_path, verify_engine_file
from deploy.tensorrt.trtexec_output import (
    TrtexecIteration,
    error_lines,
    parse_banner,
    parse_export_times,
    parse_summary,
    record_from_trtexec,
)
from deploy.tensorrt.version import TrtVersion, capabilities

# Where NVIDIA's containers and JetPack install trtexec (it is not on PATH there).
TRTEXEC_LOCATIONS = (Path("/usr/src/tensorrt/bin/trtexec"),)
_BUILDER_FLAG_OPTIONS = {
    "FP16": "--fp16",
    "BF16": "--bf16",
    "INT8": "--int8",
    "GPU_FALLBACK": "--allowGPUFallback",
}


def find_trtexec(path: str | os.PathLike[str] | None = None) -> Path:
    """The trtexec binary: `path` if given, else PATH, else where NVIDIA images put it."""
    if path is not None:
        candidate = Path(path)
        if candidate.is_file() and os.access(candidate, os.X_OK):
            return candidate.resolve()  # "./trtexec" would otherwise be looked up on PATH
        raise DeployInputError(
            f"trtexec not found at {candidate} (not an executable file); "
            "pass --trtexec with the path of the trtexec binary"
        )
    found = shutil.which("trtexec")
    if found:
        return Path(found)
    for candidate in TRTEXEC_LOCATIONS:
        if candidate.is_file() and os.access(candidate, os.X_OK):
            return candidate
    raise MissingDependencyError(
        f"trtexec not found on PATH or at {', '.join(map(str, TRTEXEC_LOCATIONS))}; install "
        "TensorRT (NVIDIA containers and JetPack ship trtexec) or pass --trtexec PATH"
    )


def trtexec_version(path: str | os.PathLike[str], timeout_s: float = 60) -> TrtVersion:
    """Run `trtexec --help` and read its "&&&& RUNNING TensorRT.trtexec [TensorRT v100300]"."""
    try:
        result = subprocess.run(
            [str(path), "--help"], capture_output=True, text=True, timeout=timeout_s, check=False
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise DeployError(f"cannot run {path} --help: {exc}") from exc
    version = parse_banner(result.stdout + result.stderr)
    if version is None:
        raise DeployError(f"{path} --help printed no '[TensorRT vNNNN]' banner; is it trtexec?")
    return version


def trtexec_command(
    trt_version: str | TrtVersion,
    *,
    onnx: str | os.PathLike[str] | None = None,
    engine: str | os.PathLike[str] | None = None,
    save_engine: str | os.PathLike[str] | None = None,
    precision: str | None = None,
    shapes: Mapping[str, Sequence[int]] | None = None,
    profile: Mapping[str, Sequence[Sequence[int]]] | None = None,
    batch: int | None = None,
    warmup_ms: float | None = None,
    duration_s: float | None = None,
    iterations: int | None = None,
    avg_runs: int | None = None,
    percentiles: Sequence[float] | None = None,
    timing_cache: str | os.PathLike[str] | None = None,
    use_cuda_graph: bool | None = None,
    no_data_transfers: bool | None = None,
    spin_wait: bool | None = None,
    dla_core: int | None = None,
    allow_gpu_fallback: bool = True,
    export_times: str | os.PathLike[str] | None = None,
    export_profile: str | os.PathLike[str] | None = None,
    workspace_mib: int | None = None,
    strongly_typed: bool | str = "auto",
    builder_optimization_level: int | None = None,
) -> list[str]:
    """trtexec arguments (without the binary) for `trt_version`; impossible asks raise.

    `shapes` are full run shapes per input (axis 0 becomes `batch`, default 1, where the batch
    is dynamic), as in BenchConfig; `profile` (min, opt, max) builds a dynamic engine instead of
    one for the run shapes. `precision` None means the ONNX graph's own. The inference
    switches left None keep the version's default; pass them to get the same run everywhere.
    """
    caps = capabilities(trt_version)
    if (onnx is None) == (engine is None):
        raise DeployConfigError("trtexec needs exactly one of an ONNX file or an engine")
    args: list[str] = []
    run_batch = 1 if batch is None else batch
    if onnx is not None:
        info = inspect_onnx(onnx)
        run = _run_shapes(info.inputs, shapes, run_batch)
        ranges = profile if profile is not None else {n: (s, s, s) for n, s in run.items()}
        plan = plan_build(
            info,
            BuildOptions(
                precision=precision or info.precision,
                workspace_mib=workspace_mib,
                min_batch=run_batch,
                max_batch=run_batch,
                profile=ranges,
                dla_core=dla_core,
                gpu_fallback=allow_gpu_fallback,
                strongly_typed=strongly_typed,
                builder_optimization_level=builder_optimization_level,
            ),
            caps.version,
        )
        args.append(f"--onnx={onnx}")
        if save_engine is not None:
            args.append(f"--saveEngine={save_engine}")
        if "STRONGLY_TYPED" in plan.network_flags and caps.trtexec_strongly_typed_flag:
            args.append("--stronglyTyped")
        args += [_BUILDER_FLAG_OPTIONS[flag] for flag in plan.builder_flags]
        if profile is not None:
            _check_in_profile(run, plan.profile)
            for label, index in (("min", 0), ("opt", 1), ("max", 2)):
                spec = {name: shapes_[index] for name, shapes_ in plan.profile.items()}
                args.append(f"--{label}Shapes={_shape_spec(spec)}")
        if workspace_mib is not None:  # MiB in every version; 8.6 takes no unit suffix
            args.append(f"--memPoolSize=workspace:{workspace_mib}")
        if timing_cache is not None:
            args.append(f"--timingCacheFile={timing_cache}")
        if builder_optimization_level is not None:
            args.append(f"--builderOptimizationLevel={builder_optimization_level}")
    else:
        build_only = {
            "save_engine": save_engine,
            "profile": profile,
            "timing_cache": timing_cache,
            "workspace_mib": workspace_mib,
            "builder_optimization_level": builder_optimization_level,
        }
        args.append(f"--loadEngine={engine}")
        run = _engine_run_shapes(engine, shapes, batch, build_only)
    if run:
        args.append(f"--shapes={_shape_spec(run)}")
    if dla_core is not None:
        args.append(f"--useDLACore={dla_core}")
    args += _inference_args(caps, warmup_ms, duration_s, iterations, avg_runs, percentiles)
    args += _switches(caps, use_cuda_graph, no_data_transfers, spin_wait, export_profile)
    if export_times is not None:
        args.append(f"--exportTimes={export_times}")
    if export_profile is not None:
        args.append(f"--exportProfile={export_profile}")
    return args


def _engine_run_shapes(
    engine: str | os.PathLike[str],
    shapes: Mapping[str, Sequence[int]] | None,
    batch: int | None,
    build_only: Mapping[str, object],
) -> dict[str, tuple[int, ...]]:
    """The run shapes for a prebuilt engine; build settings cannot apply to it."""
    given = sorted(name for name, value in build_only.items() if value is not None)
    if given:
        raise DeployConfigError(
            f"{given} only apply when trtexec builds from an ONNX file, "
            f"not when it loads the engine {engine}"
        )
    if sidecar_path(engine).is_file():
        return _run_shapes(load_engine_info(engine).inputs, shapes, 1 if batch is None else batch)
    if batch is not None and not shapes:
        raise DeployConfigError(
            f"engine {engine} has no sidecar naming its inputs, so batch {batch} cannot be "
            "applied; pass full input shapes (shapes={name: shape})"
        )
    return {name: tuple(shape) for name, shape in (shapes or {}).items()}


def _run_shapes(
    inputs: Sequence[Any], shapes: Mapping[str, Sequence[int]] | None, batch: int
) -> dict[str, tuple[int, ...]]:
    """Concrete shapes of the dynamic inputs: `shapes` or the model's, axis 0 = batch."""
    if isinstance(batch, bool) or not isinstance(batch, int) or batch < 1:
        raise DeployConfigError(f"batch must be an integer >= 1, got {batch!r}")
    shapes = dict(shapes or {})
    unknown = sorted(set(shapes) - {spec.name for spec in inputs})
    if unknown:
        raise DeployConfigError(
            f"shapes names {unknown}, which are not inputs of the model "
            f"({[spec.name for spec in inputs]})"
        )
    run = {}
    for spec in inputs:
        if spec.shape and spec.shape[0] is not None and spec.shape[0] != batch:
            raise DeployConfigError(
                f"input '{spec.name}' has a fixed batch size of {spec.shape[0]}, cannot run "
                f"batch {batch}; export with a dynamic batch axis or time batch {spec.shape[0]}"
            )
        if None not in spec.shape:
            continue
        shape = list(shapes.get(spec.name, spec.shape))
        if spec.shape[0] is None:
            shape[0] = batch
        if None in shape or len(shape) != len(spec.shape):
            raise DeployConfigError(
                f"input '{spec.name}' has dynamic dims {list(spec.shape)}; give its full shape "
                f"in shapes (e.g. {spec.name}:{batch}x3x224x224)"
            )
        run[spec.name] = tuple(int(d) for d in shape)
    return run


def _check_in_profile(
    run: Mapping[str, Sequence[int]], profile: Mapping[str, Sequence[Sequence[int]]]
) -> None:
    for name, shape in run.items():
        low, _, high = profile[name]
        if any(not lo <= d <= hi for d, lo, hi in zip(shape, low, high, strict=True)):
            raise DeployConfigError(
                f"run shape {list(shape)} for input '{name}' is outside the profile "
                f"(min {list(low)}, max {list(high)}); widen the profile or change the batch"
            )


def _inference_args(
    caps: Any,
    warmup_ms: float | None,
    duration_s: float | None,
    iterations: int | None,
    avg_runs: int | None,
    percentiles: Sequence[float] | None,
) -> list[str]:
    args = []
    for flag, value, minimum in (
        ("--warmUp", warmup_ms, 0),
        ("--duration", duration_s, 0),
        ("--iterations", iterations, 1),
        ("--avgRuns", avg_runs, 1),
    ):
        if value is None:
            continue
        if isinstance(value, bool) or not isinstance(value, (int, float)) or value < minimum:
            raise DeployConfigError(f"trtexec {flag} must be a number >= {minimum}, got {value!r}")
        args.append(f"{flag}={_number(value)}")
    if percentiles is not None:
        if not percentiles or any(not 0 <= float(p) <= 100 for p in percentiles):
            raise DeployConfigError(f"percentiles must lie in [0, 100], got {list(percentiles)}")
        args.append("--percentile=" + ",".join(_number(float(p)) for p in percentiles))
    return args


def _switches(
    caps: Any,
    graph: bool | None,
    no_transfers: bool | None,
    spin: bool | None,
    export_profile: object,
) -> list[str]:
    """CUDA graph / transfers / spin wait: opt-in flags before 11, opt-out flags from 11."""
    if caps.trtexec_defaults_v11:
        pairs = (
            (graph is False, "--noCudaGraph"),
            (no_transfers is False, "--includeDataTransfers"),
            (spin is False, "--noSpinWait"),
        )
    else:  # a profiled run perturbs timing, and before 11 prints no summary unless separate
        pairs = (
            (bool(graph), "--useCudaGraph"),
            (bool(no_transfers), "--noDataTransfers"),
            (bool(spin), "--useSpinWait"),
            (export_profile is not None, "--separateProfileRun"),
        )
    return [flag for wanted, flag in pairs if wanted]


def _shape_spec(shapes: Mapping[str, Sequence[int]]) -> str:
    return ",".join(
        f"{name}:" + "x".join(str(int(d)) for d in shape) for name, shape in shapes.items()
    )


def _number(value: float) -> str:
    return str(int(value)) if float(value).is_integer() else repr(float(value))


def run_trtexec(
    model: str | os.PathLike[str],
    *,
    name: str | None = None,
    batch_sizes: Sequence[int] = (1,),
    precision: str | None = None,
    trtexec: str | os.PathLike[str] | None = None,
    trt_version: str | None = None,
    timeout_s: float = 900,
    **options: Any,
) -> list[LatencyRecord]:
    """Time `model` (an .onnx file, else an engine) with trtexec; one record per batch size.

    `options` are trtexec_command's. Data transfers are included unless asked otherwise, so
    Latency means host-visible latency on every TensorRT version (11 leaves them out).
    """
    if "export_times" in options:
        raise DeployConfigError("run_trtexec writes and reads --exportTimes itself; leave it out")
    model = Path(model)
    source = {"onnx": model} if model.suffix == ".onnx" else {"engine": model}
    # The model file first: a corrupt file or a pickle is named as such, trtexec or not.
    if "onnx" in source:
        info = inspect_onnx(model)
        precision = precision or info.precision
    else:
        engine = verify_engine_file(model, require_sidecar=False)  # a sidecar, if any, must match
        if precision is None:
            precision = engine.precision if engine is not None else "unknown"
    path = find_trtexec(trtexec)
    version = capabilities(trt_version).version if trt_version else trtexec_version(path)
    options.setdefault("no_data_transfers", False)
    records = []
    for batch in batch_sizes:
        with tempfile.TemporaryDirectory(prefix="trtexec-") as workdir:
            times = Path(workdir) / "times.json"
            command = [
                str(path),
                *trtexec_command(
                    version,
                    **source,
                    precision=precision,
                    batch=batch,
                    export_times=times,
                    **options,
                ),
            ]
            log_text = run_trtexec_process(command, timeout_s)
            records.append(
                record_from_trtexec(
                    log_text,
                    times,
                    model=name or model.stem,
                    batch=batch,
                    precision=precision,
                    command=command,
                    trt_version=version,
                )
            )
    return records


def run_trtexec_process(command: list[str], timeout_s: float, what: str = "trtexec") -> str:
    """Run trtexec; its output (stderr merged, in order), or a DeployError with its errors
    (`what` names the run in them, e.g. "trtexec (profiling)")."""
    try:
        result = subprocess.run(
            command,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            timeout=timeout_s,
            check=False,
        )
    except subprocess.TimeoutExpired as exc:
        raise DeployError(
            f"trtexec did not finish within {timeout_s:g} s: {shlex.join(command)}"
        ) from exc
    except OSError as exc:
        raise DeployError(f"cannot run {command[0]}: {exc.strerror or exc}") from exc
    if result.returncode != 0:
        shown = " | ".join(error_lines(result.stdout)) or "no output"
        raise DeployError(
            f"{what} exited with status {result.returncode}: {shown}; "
            f"command: {shlex.join(command)}"
        )
    return result.stdout


__all__ = [
    "TRTEXEC_LOCATIONS",
    "TrtexecIteration",
    "error_lines",
    "find_trtexec",
    "parse_banner",
    "parse_export_times",
    "parse_summary",
    "record_from_trtexec",
    "run_trtexec",
    "trtexec_command",
    "trtexec_version",
]
