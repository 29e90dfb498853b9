"""Pretrained weights for the dense model (`model.weights`): tensors only, never code.

A weights file is either safetensors or a PyTorch state dict read with
`torch.load(weights_only=True)`: pickle's restricted mode, which builds tensors, numbers,
strings and containers and refuses every other global. A checkpoint that carries code (a
pickled model, an object whose `__reduce__` calls `os.system`) is refused before anything in
it runs; there is no switch to unpickle it fully.

Checkpoints come wrapped: `{'state_dict': ...}` (Lightning and most training scripts),
`{'model': ...}`, `{'model_state_dict': ...}`, with a `module.` (DataParallel, DDP) or
`_orig_mod.` (torch.compile) prefix on every key. Those are unwrapped. What still does not
fit the model (missing, unexpected or misshapen tensors) is named and refused unless the
recipe sets `model.weights_strict: false`, which loads the tensors that fit and keeps the
rest at their seeded initial values: an ImageNet checkpoint with a 1000-class head on a
10-class dataset.
"""

from __future__ import annotations

import hashlib
import io
import os
import pickle
import re
import warnings
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from compressor.errors import InputError
from compressor.models.store import check_finite
from deploy.paths import path_kind

# Keys under which checkpoints keep the model's state dict, tried in this order.
WRAPPER_KEYS = ("state_dict", "model_state_dict", "model", "module", "net")
# Prefixes a wrapper adds to every key: DataParallel/DDP, torch.compile.
KEY_PREFIXES = ("module.", "_orig_mod.")
SHOWN_NAMES = 3  # names listed in one line before "and N more"

_SHA_CACHE: dict[tuple[str, int, int, int], str] = {}  # (path, size, mtime, inode) -> sha256


@dataclass(frozen=True, kw_only=True)
class PretrainedWeights:
    """What `load_pretrained_` put into a model, and what it left at its initial values."""

    path: str  # the resolved file
    sha256: str
    loaded: int  # tensors copied from the file
    missing: tuple[str, ...] = ()  # in the model, not in the file
    unexpected: tuple[str, ...] = ()  # in the file, not in the model
    mismatched: tuple[str, ...] = ()  # "name: file [..] vs model [..]"

    @property
    def skipped(self) -> int:
        return len(self.missing) + len(self.unexpected) + len(self.mismatched)

    def problems(self) -> str:
        """One line: '2 missing (fc.weight, fc.bias), 1 shape mismatch (...)'."""
        parts = [
            f"{len(names)} {label} ({name_list(names)})"
            for label, names in (
                ("missing from the file", self.missing),
                ("unexpected in the file", self.unexpected),
                ("with another shape", self.mismatched),
            )
            if names
        ]
        return ", ".join(parts)

    def to_info(self) -> dict[str, Any]:
        """Facts stored with the model (spec.json info) so its origin stays on record."""
        return {
            "file": self.path,
            "sha256": self.sha256,
            "loaded_tensors": self.loaded,
            "missing": list(self.missing),
            "unexpected": list(self.unexpected),
            "mismatched": list(self.mismatched),
        }


def name_list(names: tuple[str, ...] | list[str]) -> str:
    shown = ", ".join(names[:SHOWN_NAMES])
    return shown if len(names) <= SHOWN_NAMES else f"{shown} and {len(names) - SHOWN_NAMES} more"


def resolve_weights_path(path: str) -> Path:
    """Relative to the working directory, like data.root and a model.factory file."""
    resolved = Path(path).expanduser().resolve()
    if not resolved.is_file():
        what = path_kind(resolved.stat().st_mode) if resolved.exists() else "not found"
        raise InputError(
            f"model.weights: {path} is {what} (resolved to {resolved}); give a .safetensors "
            "file or a state dict saved with torch.save"
        )
    return resolved


def weights_sha256(path: str) -> str:
    """SHA-256 of the file; cached per (path, size, mtime) as recipes hash it more than once."""
    resolved = resolve_weights_path(path)
    stat = resolved.stat()
    key = (str(resolved), stat.st_size, stat.st_mtime_ns, stat.st_ino)
    if key not in _SHA_CACHE:
        digest = hashlib.sha256()
        with resolved.open("rb") as f:
            for chunk in iter(lambda: f.read(1 << 20), b""):
                digest.update(chunk)
        _SHA_CACHE[key] = digest.hexdigest()
    return _SHA_CACHE[key]


def read_weights(
    path: str, expected_sha256: str | None = None
) -> tuple[dict[str, torch.Tensor], str]:
    """(state dict, sha256) of a weights file, unwrapped and unprefixed; nothing unpickled
    beyond tensors and plain containers."""
    resolved = resolve_weights_path(path)
    data = resolved.read_bytes()
    sha = hashlib.sha256(data).hexdigest()
    if expected_sha256 is not None and sha != expected_sha256.lower():
        raise InputError(
            f"model.weights: {path} has sha256 {sha[:12]}... but model.weights_sha256 is "
            f"{expected_sha256[:12]}...: it is another file; point model.weights at the "
            "recorded file or remove model.weights_sha256"
        )
    raw = _read_safetensors(data, path) if _is_safetensors(data) else _read_pickled(data, path)
    return _strip_prefixes(_unwrap(raw, path)), sha


def _is_safetensors(data: bytes) -> bool:
    """safetensors: an 8-byte little-endian header length, then a JSON header."""
    if len(data) < 10:
        return False
    size = int.from_bytes(data[:8], "little")
    return 2 <= size <= len(data) - 8 and data[8:9] == b"{"


def _read_safetensors(data: bytes, path: str) -> dict[str, torch.Tensor]:
    from safetensors.torch import load

    try:
        return load(data)
    except Exception as exc:  # safetensors raises its own error type for corrupt headers
        raise InputError(
            f"model.weights: {path} is not a readable safetensors file: {exc}"
        ) from exc


def _read_pickled(data: bytes, path: str) -> Any:
    # torch.save writes a zip (or, before torch 1.6, a pickle: protocol 2+ starts with 0x80);
    # anything else is not a checkpoint, and torch would call it an unsupported pickle.
    if not (data.startswith(b"PK\x03\x04") or data.startswith(b"\x80")):
        raise InputError(
            f"model.weights: {path} is neither a safetensors file nor a torch.save state dict "
            f"(it starts with {data[:8]!r})"
        )
    try:
        with warnings.catch_warnings():  # protocol notes from torch's restricted unpickler
            warnings.simplefilter("ignore")
            return torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        found = re.search(r"GLOBAL ([\w.]+)", str(exc))
        what = f" ({found.group(1)})" if found else ""
        raise InputError(
            f"model.weights: refused {path}: it holds Python objects other than tensors{what}, "
            "and unpickling them could run code; save only the weights "
            "(torch.save(model.state_dict(), path)) or use a .safetensors file"
        ) from exc
    except Exception as exc:  # truncated zip, not a torch file at all, ...
        raise InputError(
            f"model.weights: {path} is neither a safetensors file nor a torch.save state dict "
            f"({type(exc).__name__}: {_first_line(exc)})"
        ) from exc


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def _unwrap(obj: Any, path: str) -> dict[str, torch.Tensor]:
    """The state dict inside a training checkpoint ({'state_dict': ..., 'epoch': 3, ...})."""
    for _ in range(3):  # {'model': {'state_dict': ...}} and similar
        if not isinstance(obj, Mapping) or _all_tensors(obj):
            break
        inner = next((obj[k] for k in WRAPPER_KEYS if isinstance(obj.get(k), Mapping)), None)
        if inner is None:
            break
        obj = inner
    if not isinstance(obj, Mapping) or not obj or not _all_tensors(obj):
        keys = sorted(str(k) for k in obj) if isinstance(obj, Mapping) else []
        shape = f"a mapping with keys {name_list(keys)}" if keys else f"a {type(obj).__name__}"
        raise InputError(
            f"model.weights: {path} holds {shape}, not a state dict of tensors (looked under "
            f"{', '.join(WRAPPER_KEYS)}); save model.state_dict()"
        )
    return {str(k): v for k, v in obj.items()}


def _all_tensors(obj: Mapping[Any, Any]) -> bool:
    return bool(obj) and all(isinstance(v, torch.Tensor) for v in obj.values())


def _strip_prefixes(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """'module.layer1.0.conv1.weight' -> 'layer1.0.conv1.weight' when every key has it."""
    changed = bool(state)
    while changed:
        changed = False
        for prefix in KEY_PREFIXES:
            if all(k.startswith(prefix) for k in state):
                state = {k[len(prefix) :]: v for k, v in state.items()}
                changed = True
    return state


def match_weights(
    model: nn.Module, state: dict[str, torch.Tensor], path: str, sha: str
) -> tuple[dict[str, torch.Tensor], PretrainedWeights]:
    """(the tensors that fit, the account of what fits and what does not)."""
    own = model.state_dict()
    # A BatchNorm's step counter is not a weight; checkpoints from before torch 0.4.1 and
    # some converters leave it out, and a missing counter changes nothing the model computes.
    missing = tuple(k for k in own if k not in state and not k.endswith("num_batches_tracked"))
    unexpected = tuple(k for k in state if k not in own)
    mismatched = tuple(
        f"{k}: file {list(state[k].shape)} vs model {list(own[k].shape)}"
        for k in state
        if k in own and state[k].shape != own[k].shape
    )
    fitting = {k: v for k, v in state.items() if k in own and v.shape == own[k].shape}
    report = PretrainedWeights(
        path=path,
        sha256=sha,
        loaded=len(fitting),
        missing=missing,
        unexpected=unexpected,
        mismatched=mismatched,
    )
    return fitting, report


def load_pretrained_(
    model: nn.Module,
    path: str,
    *,
    strict: bool = True,
    expected_sha256: str | None = None,
    log: Callable[[str], None] | None = None,
) -> PretrainedWeights:
    """Copy a weights file into `model` in place; with `strict`, anything that does not fit
    is an InputError naming the tensors, as a half-loaded network trains to the wrong thing."""
    state, sha = read_weights(path, expected_sha256)
    fitting, report = match_weights(model, state, str(resolve_weights_path(path)), sha)
    name = os.path.basename(path)
    if not fitting:
        raise InputError(
            f"model.weights: no tensor in {path} fits the model ({report.problems()}); is it "
            "the checkpoint of another architecture?"
        )
    if report.skipped and strict:
        raise InputError(
            f"model.weights: {path} does not fit the model: {report.problems()}; fix the file "
            f"or set model.weights_strict: false to load the {report.loaded} tensors that fit "
            "and keep the rest at their initial values"
        )
    parameters = {k for k, _ in model.named_parameters()}
    check_finite(fitting, Path(path), parameters)
    model.load_state_dict(fitting, strict=False)
    if log is not None:
        log(f"[model] weights: {report.loaded} tensors from {name} (sha256 {sha[:12]})")
        if report.skipped:
            log(
                f"[model] warning: {report.skipped} tensors of {name} not loaded "
                f"(model.weights_strict: false): {report.problems()}; those keep their "
                "initial values"
            )
    return report


def describe_pretrained(
    model: nn.Module, path: str, expected_sha256: str | None = None
) -> dict[str, Any]:
    """What `load_pretrained_` did to a model of this architecture, for the stored info."""
    state, sha = read_weights(path, expected_sha256)
    return match_weights(model, state, str(resolve_weights_path(path)), sha)[1].to_info()
