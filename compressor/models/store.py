"""The model store: an architecture spec (JSON) plus weights (safetensors), nothing pickled.

Loading rebuilds the architecture from the spec and fills it with tensors, so a model file
from someone else can never execute code. The spec file records a SHA-256 of the weights,
checked on every load: a truncated, edited or swapped weights file is refused.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from compressor.atomic import atomic_write_bytes, atomic_write_text
from compressor.errors import ConfigError, InputError, UnsupportedModelError
from compressor.models.spec import ModelSpec, build_for_weights
from deploy.errors import UnsafePathError, first_line
from deploy.paths import check_readable_file, path_kind, read_regular_bytes

SPEC_FILE = "spec.json"
WEIGHTS_FILE = "weights.safetensors"


@dataclass(frozen=True)
class StoredModel:
    model: nn.Module
    spec: ModelSpec
    info: dict[str, Any]  # what the saver recorded (accuracy, params, MACs, data, ...)
    directory: Path


def save_model(
    model: nn.Module, spec: ModelSpec, directory: str | Path, info: dict[str, Any] | None = None
) -> Path:
    """Write `directory/spec.json` and `directory/weights.safetensors` atomically."""
    from safetensors.torch import save

    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    weights = save(state)
    atomic_write_bytes(directory / WEIGHTS_FILE, weights)
    document = {
        "spec": spec.to_dict(),
        "spec_sha256": spec.sha256(),
        "weights_file": WEIGHTS_FILE,
        "weights_sha256": hashlib.sha256(weights).hexdigest(),
        "info": info or {},
    }
    atomic_write_text(directory / SPEC_FILE, json.dumps(document, indent=2, sort_keys=True))
    return directory


def load_model(directory: str | Path, *, factory: str | None = None) -> StoredModel:
    """Rebuild a stored model; any missing, corrupt or mismatching file is an InputError.

    A spec that names a factory is only followed when the caller names the same factory
    (`factory`, from the user's own recipe): a model directory is data, and a spec.json
    edited to name `os:system` or a file shipped beside it must not run anything.
    """
    from safetensors.torch import load

    directory = Path(directory)
    if directory.is_file():  # e.g. a model.pt: never unpickled, it could run code
        raise InputError(
            f"{directory} is a file, not a stored model directory ({SPEC_FILE} + "
            f"{WEIGHTS_FILE}); pickled models (.pt, .pth, .pkl) are not loaded, as unpickling "
            "can run code: rebuild the model and save it with compressor.models.store.save_model"
        )
    spec_path, weights_path = directory / SPEC_FILE, directory / WEIGHTS_FILE
    for path in (spec_path, weights_path):
        if path.exists() and not path.is_file():
            kind = "model spec" if path == spec_path else "weights file"
            raise InputError(
                f"{kind} {path} is {path_kind(path.stat().st_mode)}, not a regular file; "
                "a stored model is two plain files"
            )
        if not path.is_file():
            raise InputError(
                f"not a stored model: {path} is missing (a model directory holds "
                f"{SPEC_FILE} and {WEIGHTS_FILE}, as written by `compressor` stages)"
            )
    _check_weights_file(weights_path)
    try:
        document = json.loads(read_regular_bytes(spec_path, "model spec", max_bytes=64 << 20))
        spec = ModelSpec.from_dict(document["spec"])
        expected_sha = document["weights_sha256"]
        if not isinstance(expected_sha, str) or not isinstance(document.get("info", {}), dict):
            raise TypeError("weights_sha256 must be a string and info a mapping")
    except (ValueError, KeyError, TypeError, AttributeError, RecursionError, OSError) as exc:
        reason = " ".join(str(exc).split()) or type(exc).__name__
        raise InputError(f"{spec_path} is not a valid model spec: {reason}") from exc
    weights = weights_path.read_bytes()
    actual_sha = hashlib.sha256(weights).hexdigest()
    if actual_sha != expected_sha:
        raise InputError(
            f"{weights_path} does not match its spec (sha256 {actual_sha[:12]}..., spec "
            f"records {expected_sha[:12]}...): the file was changed, truncated or swapped"
        )
    try:
        state = load(weights)
    except Exception as exc:  # safetensors raises its own error type for corrupt headers
        raise InputError(f"{weights_path} is not a readable safetensors file: {exc}") from exc
    _check_factory(spec, factory, spec_path)
    _check_shapes(spec, state, weights_path)
    _check_dtypes(state, weights_path)
    try:  # sized on the meta device first: an edited spec cannot ask for terabytes
        model = build_for_weights(spec, {key: list(t.shape) for key, t in state.items()})
    except (ConfigError, UnsupportedModelError) as exc:
        first = first_line(exc)
        raise InputError(
            f"{spec_path} does not describe the model in {weights_path}: {first}"
        ) from exc
    check_finite(state, weights_path, {name for name, _ in model.named_parameters()})
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        first = str(exc).strip().splitlines()[0]
        raise InputError(f"{weights_path} does not fit the spec's architecture: {first}") from exc
    model.eval()
    return StoredModel(model, spec, dict(document.get("info", {})), directory)


def _check_weights_file(path: Path) -> None:
    """A regular file exactly as long as its safetensors header says, checked before the
    whole file is read (a link to /dev/zero or a huge file would otherwise be read whole)."""
    try:
        size = check_readable_file(path, "weights file")
        with path.open("rb") as handle:
            header_bytes = int.from_bytes(handle.read(8), "little")
            if not 2 <= header_bytes <= min(size - 8, 100 << 20):
                raise ValueError(f"a header of {header_bytes} bytes in a file of {size}")
            header = json.loads(handle.read(header_bytes))
        ends = [v["data_offsets"][1] for k, v in header.items() if k != "__metadata__"]
        declared = 8 + header_bytes + max(ends, default=0)
    except UnsafePathError as exc:
        raise InputError(str(exc)) from exc
    except (OSError, ValueError, KeyError, TypeError, IndexError, AttributeError) as exc:
        raise InputError(f"{path} is not a readable safetensors file: {first_line(exc)}") from exc
    if declared != size:
        raise InputError(
            f"{path} declares {declared:,} bytes of header and tensors but holds {size:,}: "
            "the file was changed, truncated or swapped"
        )


def _check_dtypes(state: dict[str, torch.Tensor], weights_path: Path) -> None:
    """Stored models are float32: that is what was trained and measured. Weights re-saved in
    another precision would be cast back silently while the spec (and every ONNX file's
    metadata) kept the float32 accuracy, which they no longer reach."""
    other = {
        name: str(t.dtype).removeprefix("torch.")
        for name, t in state.items()
        if t.is_floating_point() and t.dtype != torch.float32
    }
    if other:
        name, dtype = next(iter(other.items()))
        raise InputError(
            f"{weights_path} holds {dtype} tensors ({name}{', ...' if len(other) > 1 else ''}); "
            "stored models are float32, the precision their recorded accuracy was measured "
            "in: save the float32 weights, and make FP16 files with export.fp16"
        )


def _check_shapes(spec: ModelSpec, state: dict[str, torch.Tensor], weights_path: Path) -> None:
    """Every tensor shape the spec sets must be the one the weights file holds: checked
    before anything is allocated, so an edited spec cannot ask for terabytes."""
    for name, sizes in spec.shapes.items():
        for key, shape in sizes["tensors"].items():
            full = f"{name}.{key}" if name else key
            if full in state and list(state[full].shape) != list(shape):
                raise InputError(
                    f"{weights_path} holds {full} as {list(state[full].shape)} but the spec "
                    f"says {list(shape)}: the files do not belong together"
                )


def check_finite(state: dict[str, torch.Tensor], weights_path: Path, parameters: set[str]) -> None:
    """NaN or Inf weights would only surface later as a NaN loss blamed on the lr. A buffer
    may hold -inf on purpose (an attention mask), so only parameters are held to Inf."""
    for key, tensor in state.items():
        if not tensor.is_floating_point():
            continue
        bad = ~tensor.isfinite() if key in parameters else tensor.isnan()
        if bool(bad.any()):
            kind = "NaN" if bool(tensor.isnan().any()) else "Inf"
            raise InputError(
                f"{weights_path} holds {kind} values in {key}: the model diverged or the file "
                "was damaged; use an earlier model or retrain it"
            )


def _check_factory(spec: ModelSpec, trusted: str | None, spec_path: Path) -> None:
    if spec.factory is None or spec.factory == trusted:
        return
    if trusted is None:
        raise InputError(
            f"{spec_path} names the model factory '{spec.factory}', but the recipe names none; "
            "a stored model only calls the factory your recipe names (model.factory)"
        )
    raise InputError(
        f"{spec_path} names the model factory '{spec.factory}', but the recipe names "
        f"'{trusted}'; a stored model only calls the factory your recipe names"
    )


def load_state_dict_file(path: str | Path) -> dict[str, torch.Tensor]:
    """Weights from a safetensors file (used by tests and tools that compare weights)."""
    from safetensors.torch import load_file

    return load_file(str(path))
