"""The sidecar JSON next to every TensorRT engine, and the GPU identity it records.

TensorRT engines are not portable across TensorRT versions or GPU models, so every engine is
written with `<engine>.json` (schema "deploy.engine/1"): TensorRT version, GPU name, compute
capability, driver, build options, profile shapes, source ONNX path and sha256, I/O specs.
`check_engine_compatible` turns a mismatch into an error that says to rebuild, before
TensorRT is asked to deserialize an engine it cannot run.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from deploy.errors import (
    DeployError,
    DeployInputError,
    EngineMismatchError,
    MissingDependencyError,
    first_line,
)
from deploy.files import atomic_write_bytes, file_sha256
from deploy.lazy import lazy_import
from deploy.model_files import refuse_pickle
from deploy.onnx_info import PRECISIONS
from deploy.tensor_spec import TensorSpec
from deploy.tensorrt.options import BuildOptions, BuildPlan
from deploy.tensorrt.version import parse_trt_version

SIDECAR_SCHEMA = "deploy.engine/1"
REBUILD_HINT = "rebuild the engine on this device with `deploy build`"


@dataclass(frozen=True)
class GpuIdentity:
    """The GPU an engine is built for or run on, as its sidecar records it."""

    name: str
    compute_capability: tuple[int, int]
    driver: str | None = None  # NVIDIA driver version when pynvml can tell
    source: str = ""  # which library answered: torch, cuda-python or pynvml


def gpu_identity(index: int = 0) -> GpuIdentity:
    """Name and compute capability of CUDA device `index`: torch, else cuda-python, else pynvml."""
    driver = _nvml_driver()
    torch = _optional("torch")
    if torch is not None and torch.cuda.is_available():
        name = torch.cuda.get_device_name(index)
        return GpuIdentity(name, tuple(torch.cuda.get_device_capability(index)), driver, "torch")
    cudart = _optional("cuda.bindings.runtime") or _optional("cuda.cudart")
    if cudart is not None:
        err, prop = cudart.cudaGetDeviceProperties(index)
        if err == cudart.cudaError_t.cudaSuccess:
            name = prop.name.decode() if isinstance(prop.name, bytes) else str(prop.name)
            return GpuIdentity(name.rstrip("\x00"), (prop.major, prop.minor), driver, "cuda-python")
    nvml = _optional("pynvml")
    if nvml is not None:
        try:
            nvml.nvmlInit()
            handle = nvml.nvmlDeviceGetHandleByIndex(index)
            name = nvml.nvmlDeviceGetName(handle)
            major, minor = nvml.nvmlDeviceGetCudaComputeCapability(handle)
            name = name.decode() if isinstance(name, bytes) else name
            return GpuIdentity(name, (int(major), int(minor)), driver, "pynvml")
        except Exception as exc:  # pynvml.NVMLError: no driver, no device
            raise DeployError(f"pynvml cannot read CUDA device {index}: {exc}") from exc
    raise MissingDependencyError(
        f"reading the name of CUDA device {index} needs torch with CUDA, cuda-python or pynvml, "
        "and none can see a GPU; pip install nvidia-ml-py (or cuda-python)"
    )


def _optional(module: str) -> Any:
    try:
        return lazy_import(module, "reading the GPU name")
    except ImportError:
        return None


def _nvml_driver() -> str | None:
    nvml = _optional("pynvml")
    if nvml is None:
        return None
    try:
        nvml.nvmlInit()
        version = nvml.nvmlSystemGetDriverVersion()
    except Exception:  # no NVML on Jetson, or no driver: the driver is then unknown
        return None
    return version.decode() if isinstance(version, bytes) else str(version)


@dataclass(frozen=True)
class EngineInfo:
    """An engine file and what its sidecar says about it."""

    engine_path: Path
    sidecar_path: Path
    tensorrt_version: str
    gpu_name: str
    compute_capability: tuple[int, int]
    precision: str
    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]
    sidecar: dict[str, Any] = field(repr=False)

    @property
    def profile(self) -> dict[str, dict[str, list[int]]]:
        return self.sidecar.get("profile", {})


def sidecar_path(engine_path: str | os.PathLike[str]) -> Path:
    """`model.engine` -> `model.engine.json`."""
    path = Path(engine_path)
    return path.with_name(path.name + ".json")


def load_engine_info(engine_path: str | os.PathLike[str]) -> EngineInfo:
    """Read and check `<engine>.json` against the engine file, without TensorRT.

    A missing sidecar is an EngineMismatchError (nothing says where the engine may run); a
    sidecar that is not JSON or lacks a field, and an engine whose SHA-256 is not the one its
    sidecar records (changed, truncated or swapped after the build), are refused too, so
    TensorRT never deserializes bytes nobody vouches for.
    """
    engine_path = Path(engine_path)
    path = sidecar_path(engine_path)
    if not path.is_file():
        onnx_hint = (
            "; it is an ONNX file: build an engine from it with `deploy build`"
            if engine_path.suffix.lower() == ".onnx"
            else ""
        )
        raise EngineMismatchError(
            f"engine {engine_path.name} has no sidecar {path.name}, so nothing says which "
            f"TensorRT and GPU it was built for; {REBUILD_HINT} (or skip the check with "
            f"check_compatibility=False if you know it matches){onnx_hint}"
        )
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError, RecursionError) as exc:
        # ValueError: JSONDecodeError, and integers too long to convert
        reason = first_line(exc)
        raise DeployInputError(f"engine sidecar {path} is not readable JSON: {reason}") from exc
    if not isinstance(data, dict) or data.get("schema") != SIDECAR_SCHEMA:
        found = data.get("schema") if isinstance(data, dict) else type(data).__name__
        raise DeployInputError(
            f"engine sidecar {path} has schema {found!r}, "
            f"expected {SIDECAR_SCHEMA!r}; {REBUILD_HINT}"
        )
    missing = sorted(set(_SIDECAR_FIELDS) - set(data))
    if missing:
        raise DeployInputError(f"engine sidecar {path} lacks {missing}; {REBUILD_HINT}")
    for key, (check, wanted) in _SIDECAR_FIELDS.items():
        if not check(data[key]):
            raise DeployInputError(
                f"engine sidecar {path}: '{key}' must be {wanted}, got {_short(data[key])}; "
                f"{REBUILD_HINT}"
            )
    for key in ("build_options", "profile", "source_onnx"):
        if key in data and not isinstance(data[key], dict):
            raise DeployInputError(
                f"engine sidecar {path}: '{key}' must be an object, got {_short(data[key])}; "
                f"{REBUILD_HINT}"
            )
    _check_engine_bytes(engine_path, data["engine_sha256"], path)
    return EngineInfo(
        engine_path=engine_path,
        sidecar_path=path,
        tensorrt_version=data["tensorrt_version"],
        gpu_name=data["gpu_name"],
        compute_capability=tuple(data["compute_capability"]),  # type: ignore[arg-type]
        precision=data["precision"],
        inputs=tuple(_spec_from_json(s) for s in data["inputs"]),
        outputs=tuple(_spec_from_json(s) for s in data["outputs"]),
        sidecar=data,
    )


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_spec_list(value: object) -> bool:
    return isinstance(value, list) and all(
        isinstance(s, dict)
        and isinstance(s.get("name"), str)
        and isinstance(s.get("dtype"), str)
        and isinstance(s.get("shape"), list)
        and all(d is None or (_is_int(d) and d >= 0) for d in s["shape"])
        for s in value
    )


# Sidecar fields every reader relies on: key -> (check, what it must be).
_SIDECAR_FIELDS: dict[str, tuple[Callable[[object], bool], str]] = {
    "engine_sha256": (
        lambda v: isinstance(v, str) and len(v) == 64 and all(c in "0123456789abcdef" for c in v),
        "a hex SHA-256 (64 lowercase hex digits)",
    ),
    "tensorrt_version": (lambda v: isinstance(v, str) and bool(v), "a version string"),
    "gpu_name": (lambda v: isinstance(v, str), "a string"),
    "compute_capability": (
        lambda v: isinstance(v, list) and len(v) == 2 and all(_is_int(d) and d >= 0 for d in v),
        "[major, minor]",
    ),
    "precision": (lambda v: isinstance(v, str) and v in PRECISIONS, " or ".join(PRECISIONS)),
    "inputs": (_is_spec_list, "a list of {name, shape, dtype} objects"),
    "outputs": (_is_spec_list, "a list of {name, shape, dtype} objects"),
}


def _check_engine_bytes(engine_path: Path, recorded: str, sidecar: Path) -> None:
    """The engine must exist, be no pickle, and hash to the SHA-256 its sidecar recorded."""
    if not engine_path.is_file():
        raise DeployInputError(
            f"TensorRT engine not found: {engine_path} (its sidecar {sidecar.name} is there)"
        )
    refuse_pickle(engine_path, expected="a TensorRT engine")
    actual = _engine_sha256(engine_path)
    if actual != recorded:
        raise EngineMismatchError(
            f"engine {engine_path.name} is not the engine its sidecar {sidecar.name} describes: "
            f"its SHA-256 is {actual[:12]}..., the sidecar records {recorded[:12]}... (changed, "
            f"truncated or swapped after the build); {REBUILD_HINT}"
        )


# (resolved path, size, mtime_ns) -> sha256: the runner and the CLI both read an engine's
# sidecar, and hashing a large engine twice is a wasted second.
_SHA256_CACHE: dict[tuple[str, int, int], str] = {}


def _engine_sha256(path: Path) -> str:
    stat = path.stat()
    key = (str(path.resolve()), stat.st_size, stat.st_mtime_ns)
    if key not in _SHA256_CACHE:
        try:
            _SHA256_CACHE[key] = file_sha256(path)
        except OSError as exc:
            raise DeployInputError(f"cannot read {path}: {exc.strerror or exc}") from exc
    return _SHA256_CACHE[key]


def _short(value: object) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def verify_engine_file(
    engine_path: str | os.PathLike[str], *, require_sidecar: bool = True
) -> EngineInfo | None:
    """Everything about an engine file that can be checked without TensorRT, before it is
    imported: the file exists, is not a pickle, has a well-formed sidecar (unless not
    required and absent) whose SHA-256 matches. Returns the sidecar's info, or None."""
    engine_path = Path(engine_path)
    if engine_path.is_dir():
        raise DeployInputError(f"{engine_path} is a directory; pass a TensorRT engine file")
    if not engine_path.is_file():
        raise DeployInputError(f"TensorRT engine not found: {engine_path}")
    refuse_pickle(engine_path, expected="a TensorRT engine")
    if not require_sidecar and not sidecar_path(engine_path).is_file():
        return None
    return load_engine_info(engine_path)


def check_engine_compatible(
    sidecar: Mapping[str, Any],
    tensorrt_version: str,
    gpu_name: str,
    compute_capability: Sequence[int],
) -> None:
    """Raise EngineMismatchError naming both sides when the engine was built elsewhere.

    TensorRT engines are tied to the TensorRT release and the GPU model they were built with.
    """
    built_version = parse_trt_version(str(sidecar.get("tensorrt_version")))
    here_version = parse_trt_version(tensorrt_version)
    built_cc = tuple(int(v) for v in sidecar.get("compute_capability", ()))
    here_cc = tuple(int(v) for v in compute_capability)
    built_gpu = str(sidecar.get("gpu_name", "")).strip()
    problems = []
    if not built_version.same_release(here_version):
        problems.append("TensorRT version")
    if built_gpu.casefold() != gpu_name.strip().casefold() or built_cc != here_cc:
        problems.append("GPU")
    if problems:
        engine = sidecar.get("engine", "the engine")
        raise EngineMismatchError(
            f"{engine} was built with TensorRT {built_version} on {built_gpu} (compute "
            f"capability {_cc(built_cc)}), this device has TensorRT {here_version} on "
            f"{gpu_name} (compute capability {_cc(here_cc)}): the {' and '.join(problems)} "
            f"{'differ' if len(problems) > 1 else 'differs'}, and TensorRT engines are not "
            f"portable across either; {REBUILD_HINT}"
        )


def save_engine(
    engine_path: str | os.PathLike[str],
    engine_bytes: bytes,
    *,
    plan: BuildPlan,
    options: BuildOptions,
    gpu: GpuIdentity,
    onnx_path: str | os.PathLike[str],
    inputs: Sequence[TensorSpec],
    outputs: Sequence[TensorSpec],
) -> EngineInfo:
    """Write a serialized engine and its sidecar (schema deploy.engine/1), each atomically."""
    engine_path, onnx_path = Path(engine_path), Path(onnx_path)
    sidecar = {
        "schema": SIDECAR_SCHEMA,
        "created": datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "engine": engine_path.name,
        "engine_sha256": hashlib.sha256(engine_bytes).hexdigest(),
        "tensorrt_version": plan.tensorrt_version,
        "gpu_name": gpu.name,
        "compute_capability": list(gpu.compute_capability),
        "driver": gpu.driver,
        "precision": plan.precision,
        "strongly_typed": plan.strongly_typed,
        "network_flags": list(plan.network_flags),
        "builder_flags": list(plan.builder_flags),
        "build_options": options.to_dict(),
        "profile": {
            name: dict(zip(("min", "opt", "max"), map(list, shapes), strict=True))
            for name, shapes in plan.profile.items()
        },
        "source_onnx": {"path": str(onnx_path.resolve()), "sha256": file_sha256(onnx_path)},
        "inputs": [asdict(spec) for spec in inputs],
        "outputs": [asdict(spec) for spec in outputs],
    }
    write_atomic(engine_path, bytes(engine_bytes))
    write_atomic(sidecar_path(engine_path), (json.dumps(sidecar, indent=2) + "\n").encode())
    return load_engine_info(engine_path)


def _spec_from_json(data: Mapping[str, Any]) -> TensorSpec:
    return TensorSpec(name=str(data["name"]), shape=tuple(data["shape"]), dtype=str(data["dtype"]))


def write_atomic(path: Path, data: bytes) -> None:
    """Engines, sidecars and timing caches: atomically, with a DeployInputError on failure."""
    try:
        atomic_write_bytes(path, data)
    except OSError as exc:
        raise DeployInputError(f"cannot write {path}: {exc.strerror or exc}") from exc


def _cc(capability: Sequence[int]) -> str:
    return ".".join(str(v) for v in capability)
