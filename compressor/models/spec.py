"""Architecture spec: everything needed to rebuild a pruned model without pickled code.

A spec names the base model (a zoo name, or a factory import path, plus keyword
arguments), the blocks removed from it and, after channel shrinking, the sizes of every
layer: the shapes of each module's own parameters and buffers and the size attributes its
forward reads (`groups`, `normalized_shape`, ...). `build_model(spec)` replays exactly that,
so weights saved as plain tensors load back into the right shapes, for any architecture.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import torch
from torch import nn

from compressor.errors import CompressorError, ConfigError, UnsupportedModelError
from compressor.models.blocks import output_shape
from compressor.models.source import build_from_factory, load_factory
from compressor.models.zoo import create_model

SPEC_FORMAT = 2
MAX_DIMS = 8  # no layer of a vision model has a parameter of more dimensions
# Size attributes Torch-Pruning changes and forwards read; recorded when a module has them.
SIZE_ATTRS = (
    "in_channels",
    "out_channels",
    "groups",
    "num_features",
    "in_features",
    "out_features",
    "normalized_shape",
    "num_groups",
    "num_channels",
    "num_parameters",
    "embed_dim",
    "num_heads",
    "head_dim",
)


@dataclass(frozen=True, kw_only=True)
class ModelSpec:
    model: str  # zoo name, or a display name for a factory model
    kwargs: dict[str, Any] = field(default_factory=dict)  # factory arguments
    factory: str | None = None  # "file.py:fn" or "package.module:fn"; None: the zoo
    removed_blocks: tuple[str, ...] = ()  # names in the base model, e.g. "layer1.3"
    # module name -> {"attrs": size attributes, "tensors": own parameter/buffer shapes}
    shapes: dict[str, dict[str, Any]] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "format": SPEC_FORMAT,
            "model": self.model,
            "kwargs": dict(self.kwargs),
            "removed_blocks": list(self.removed_blocks),
            "shapes": {name: sizes for name, sizes in sorted(self.shapes.items())},
        }
        if self.factory is not None:
            out["factory"] = self.factory
        return out

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ModelSpec:
        known = {"format", "model", "kwargs", "factory", "removed_blocks", "shapes"}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ConfigError(f"model spec: unknown key(s) {unknown}; known: {sorted(known)}")
        if data.get("format", SPEC_FORMAT) != SPEC_FORMAT:
            raise ConfigError(
                f"model spec: format {data.get('format')} is not supported (this version "
                f"reads format {SPEC_FORMAT}; re-run the stage that wrote it)"
            )
        if "model" not in data:
            raise ConfigError("model spec: missing key 'model'")
        _check_types(data)
        return cls(
            model=data["model"],
            kwargs=dict(data.get("kwargs", {})),
            factory=data.get("factory"),
            removed_blocks=tuple(data.get("removed_blocks", ())),
            shapes={k: dict(v) for k, v in data.get("shapes", {}).items()},
        )

    def sha256(self) -> str:
        """Hash of the canonical JSON: identifies the architecture in ONNX metadata."""
        text = json.dumps(self.to_dict(), sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(text.encode()).hexdigest()

    def with_removed(self, names: list[str] | tuple[str, ...]) -> ModelSpec:
        return replace(self, removed_blocks=self.removed_blocks + tuple(names))

    def with_shapes(self, model: nn.Module) -> ModelSpec:
        """The same spec with the current channel sizes of `model` recorded."""
        return replace(self, shapes=layer_shapes(model))


def _check_types(data: dict[str, Any]) -> None:
    """A hand-edited spec.json fails here, in one line, rather than deep inside torch."""

    def is_size(value: Any) -> bool:
        return isinstance(value, int) and not isinstance(value, bool) and value >= 0

    def is_shape(value: Any) -> bool:
        return isinstance(value, list) and len(value) <= MAX_DIMS and all(map(is_size, value))

    problems = []
    if not isinstance(data["model"], str):
        problems.append("'model' must be a string")
    if not isinstance(data.get("kwargs", {}), dict):
        problems.append("'kwargs' must be a mapping")
    if not isinstance(data.get("factory") or "", str):
        problems.append("'factory' must be a string")
    removed = data.get("removed_blocks", [])
    if not isinstance(removed, list) or not all(isinstance(n, str) for n in removed):
        problems.append("'removed_blocks' must be a list of module names")
    shapes = data.get("shapes", {})
    if not isinstance(shapes, dict):
        problems.append("'shapes' must be a mapping")
        shapes = {}
    for name, sizes in shapes.items():
        ok = (
            isinstance(sizes, dict)
            and isinstance(sizes.get("attrs"), dict)
            and isinstance(sizes.get("tensors"), dict)
            and all(is_shape(v) for v in sizes["tensors"].values())
            and all(is_size(v) or is_shape(v) for v in sizes["attrs"].values())
        )
        if not ok:
            problems.append(
                f"shapes of '{name}' must be {{attrs: {{name: int}}, tensors: {{name: [sizes]}}}}"
            )
            break
    if problems:
        raise ConfigError(f"model spec: {'; '.join(problems)}")


def remove_blocks_(
    model: nn.Module, names: list[str] | tuple[str, ...], example: torch.Tensor | None = None
) -> None:
    """Delete the named blocks from their containers (no identity placeholder remains).

    Modules are looked up first and deleted by identity afterwards, because deleting from
    an nn.Sequential renumbers the blocks after it. With `example`, the shallower model is
    run once: a forward that indexes its ModuleList by position, or a block that was not a
    true residual, fails here with the block names instead of later in training.
    """
    modules = dict(model.named_modules())
    targets = []
    for name in names:
        if not name or name not in modules:
            raise UnsupportedModelError(f"cannot remove block '{name}': no such block")
        parent = modules[name.rsplit(".", 1)[0] if "." in name else ""]
        if not isinstance(parent, nn.Sequential | nn.ModuleList):
            raise UnsupportedModelError(
                f"cannot remove block '{name}': its container {type(parent).__name__} is "
                "not an nn.Sequential or nn.ModuleList"
            )
        targets.append((parent, modules[name]))
    before = output_shape(model, example) if example is not None and names else None
    for parent, block in targets:
        keys = [key for key, child in parent._modules.items() if child is block]
        index = list(parent._modules).index(keys[0])
        del parent[index]
    if before is not None:
        try:
            after = output_shape(model, example)
        except Exception as exc:
            raise UnsupportedModelError(
                f"the model no longer runs without blocks {list(names)}: "
                f"{type(exc).__name__}: {str(exc).strip().splitlines()[0]}"
            ) from exc
        if after != before:
            raise UnsupportedModelError(
                f"removing blocks {list(names)} changed the output shape {before} -> {after}"
            )


def layer_shapes(model: nn.Module) -> dict[str, dict[str, Any]]:
    """Sizes of every module that owns parameters or buffers, by module name."""
    shapes: dict[str, dict[str, Any]] = {}
    for name, module in model.named_modules():
        tensors = {
            key: list(t.shape)
            for key, t in (*module._parameters.items(), *module._buffers.items())
            if t is not None
        }
        if not tensors:
            continue
        attrs = {}
        for attr in SIZE_ATTRS:
            value = getattr(module, attr, None)
            if isinstance(value, int) and not isinstance(value, bool):
                attrs[attr] = value
            elif isinstance(value, tuple | list) and all(isinstance(v, int) for v in value):
                attrs[attr] = list(value)
        shapes[name] = {"attrs": attrs, "tensors": tensors}
    return shapes


def _resize_(module: nn.Module, sizes: dict[str, Any], name: str) -> None:
    """Give a module the recorded sizes with empty tensors; load_state_dict fills them."""
    try:
        attrs, tensors = sizes["attrs"], sizes["tensors"]
    except (KeyError, TypeError) as exc:
        raise ConfigError(f"model spec: shapes of '{name}' need 'attrs' and 'tensors'") from exc
    for attr, value in attrs.items():
        if attr not in SIZE_ATTRS or not hasattr(module, attr):
            raise UnsupportedModelError(
                f"model spec sets '{name}.{attr}', which a {type(module).__name__} lacks"
            )
        setattr(module, attr, tuple(value) if isinstance(value, list) else value)
    for key, shape in tensors.items():
        store = module._parameters if key in module._parameters else module._buffers
        current = store.get(key)
        if current is None:
            raise UnsupportedModelError(f"model spec sizes '{name}.{key}', which the model lacks")
        if list(current.shape) == list(shape):
            continue
        empty = torch.empty(tuple(shape), dtype=current.dtype)
        is_param = store is module._parameters
        store[key] = nn.Parameter(empty, current.requires_grad) if is_param else empty


def build_model(spec: ModelSpec) -> nn.Module:
    """Rebuild the architecture a spec describes (weights are whatever the factory made).

    A zoo model is sized on the meta device first, which allocates nothing: a width or class
    count too large for this machine is refused in one line, instead of the allocator failing
    with a traceback or the machine swapping. (A factory is the user's code and is only
    called once here: it may download or print.)
    """
    if spec.factory is None:
        _check_memory(*_dry_run(spec), spec)
    model = _base_model(spec)
    _shape_(model, spec)
    return model


def build_for_weights(spec: ModelSpec, shapes: Mapping[str, Sequence[int]]) -> nn.Module:
    """The architecture of `spec`, about to be filled with weights of these `shapes`.

    Built on the meta device first and compared with `shapes`, so a spec.json edited to ask
    for 10**12 channels, or one that does not belong to the weights, is refused before anything
    is allocated. A zoo model is then materialised straight at the stored sizes with its tensors
    uninitialised: the caller's strict `load_state_dict` fills every one, and the larger base
    model is never allocated. A factory model is built for real (its forward may rely on
    buffers no state dict holds); if it cannot run on the meta device, unchecked, as before.
    """
    if spec.factory is not None:
        load_factory(spec.factory)  # imported for real first: its module-level tensors too
    dry, base_bytes = _dry_run(spec)
    if dry is not None:
        _check_against(dry, spec, shapes)
        persistent = set(dry.state_dict())
        if spec.factory is None and all(name in persistent for name, _ in dry.named_buffers()):
            return dry.to_empty(device="cpu")
        _check_memory(dry, base_bytes, spec)  # the base model is built for real next
    model = _base_model(spec)
    _shape_(model, spec)
    return model


def _dry_run(spec: ModelSpec) -> tuple[nn.Module | None, int]:
    """The spec's model on the meta device and the bytes of its base model (before blocks are
    removed and layers resized); None when a factory model cannot be built there."""
    try:
        with torch.device("meta"):
            model = _base_model(spec)
            base_bytes = _state_bytes(model)
            _shape_(model, spec)
    except Exception as exc:  # e.g. a width so large the sizes overflow
        if spec.factory is not None:  # maybe only the meta device: the real build will tell
            return None, 0
        if isinstance(exc, CompressorError):
            raise
        raise ConfigError(
            f"model spec: cannot build {spec.model} with {spec.kwargs}: "
            f"{type(exc).__name__}: {(str(exc).strip().splitlines() or [''])[0]}"
        ) from exc
    return model, base_bytes


def _base_model(spec: ModelSpec) -> nn.Module:
    if spec.factory is not None:
        return build_from_factory(spec.factory, dict(spec.kwargs))
    return create_model(spec.model, **spec.kwargs)


def _shape_(model: nn.Module, spec: ModelSpec) -> None:
    """Remove the spec's blocks and give every recorded layer its recorded sizes."""
    remove_blocks_(model, spec.removed_blocks)
    modules = dict(model.named_modules())
    for name, sizes in spec.shapes.items():
        if name not in modules:
            raise UnsupportedModelError(f"model spec resizes '{name}', which the model lacks")
        _resize_(modules[name], sizes, name)


def _check_against(model: nn.Module, spec: ModelSpec, shapes: Mapping[str, Sequence[int]]) -> None:
    built = {key: list(t.shape) for key, t in model.state_dict().items()}
    wanted = {key: list(shape) for key, shape in shapes.items()}
    missing, extra = sorted(set(built) - set(wanted)), sorted(set(wanted) - set(built))
    if missing or extra:
        raise UnsupportedModelError(
            f"the spec's {spec.model} has tensors the weights lack {missing[:3]} and the "
            f"weights hold tensors it lacks {extra[:3]}"
        )
    for key, shape in built.items():
        if shape != wanted[key]:
            raise UnsupportedModelError(
                f"the spec builds {key} as {shape} but the weights hold {wanted[key]}"
            )


def _state_bytes(model: nn.Module) -> int:
    return sum(t.numel() * t.element_size() for t in model.state_dict().values())


def _check_memory(model: nn.Module | None, base_bytes: int, spec: ModelSpec) -> None:
    """The weights of the base model (the larger one) must fit in this machine's memory."""
    total = max(base_bytes, _state_bytes(model) if model is not None else 0)
    memory = _physical_memory()
    if memory is not None and total > memory:
        raise ConfigError(
            f"model {spec.model} with {spec.kwargs} needs {total / 2**30:,.1f} GiB for its "
            f"weights alone, more than this machine's {memory / 2**30:.1f} GiB of memory; "
            "lower its width or number of classes"
        )


def _physical_memory() -> int | None:
    """Bytes of RAM, or None where the OS does not say (then nothing is refused)."""
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (AttributeError, ValueError, OSError):
        return None
