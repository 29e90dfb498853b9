"""Architecture spec: everything needed to rebuild a pruned model without pickled code.

A spec names the base model (zoo name + keyword arguments), the blocks removed from it and
the channel sizes of every conv, batch-norm and linear layer that channel shrinking
changed. `build_model(spec)` replays exactly that, so weights saved as plain tensors load
back into the right shapes.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from compressor.errors import ConfigError, UnsupportedModelError
from compressor.zoo import create_model

SPEC_FORMAT = 1


@dataclass(frozen=True, kw_only=True)
class ModelSpec:
    model: str  # zoo name
    kwargs: dict[str, Any] = field(default_factory=dict)  # zoo factory arguments
    removed_blocks: tuple[str, ...] = ()  # names in the base model, e.g. "layer1.3"
    shapes: dict[str, dict[str, int]] = field(default_factory=dict)  # resized layers

    def to_dict(self) -> dict[str, Any]:
        return {
            "format": SPEC_FORMAT,
            "model": self.model,
            "kwargs": dict(self.kwargs),
            "removed_blocks": list(self.removed_blocks),
            "shapes": {name: dict(sizes) for name, sizes in sorted(self.shapes.items())},
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ModelSpec:
        known = {"format", "model", "kwargs", "removed_blocks", "shapes"}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ConfigError(f"model spec: unknown key(s) {unknown}; known: {sorted(known)}")
        if data.get("format", SPEC_FORMAT) != SPEC_FORMAT:
            raise ConfigError(
                f"model spec: format {data.get('format')} is not supported (this version "
                f"reads format {SPEC_FORMAT})"
            )
        if "model" not in data:
            raise ConfigError("model spec: missing key 'model'")
        return cls(
            model=data["model"],
            kwargs=dict(data.get("kwargs", {})),
            removed_blocks=tuple(data.get("removed_blocks", ())),
            shapes={k: dict(v) for k, v in data.get("shapes", {}).items()},
        )

    def sha256(self) -> str:
        """Hash of the canonical JSON: identifies the architecture in ONNX metadata."""
        text = json.dumps(self.to_dict(), sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(text.encode()).hexdigest()

    def with_removed(self, names: list[str] | tuple[str, ...]) -> ModelSpec:
        return ModelSpec(
            model=self.model,
            kwargs=self.kwargs,
            removed_blocks=self.removed_blocks + tuple(names),
            shapes=self.shapes,
        )

    def with_shapes(self, model: nn.Module) -> ModelSpec:
        """The same spec with the current channel sizes of `model` recorded."""
        return ModelSpec(
            model=self.model,
            kwargs=self.kwargs,
            removed_blocks=self.removed_blocks,
            shapes=layer_shapes(model),
        )


def remove_blocks_(model: nn.Module, names: list[str] | tuple[str, ...]) -> None:
    """Delete the named blocks from their containers (no identity placeholder remains).

    Modules are looked up first and deleted by identity afterwards, because deleting from
    an nn.Sequential renumbers the blocks after it.
    """
    modules = dict(model.named_modules())
    targets = []
    for name in names:
        if name not in modules or "." not in name:
            raise UnsupportedModelError(f"cannot remove block '{name}': no such block")
        parent_name = name.rsplit(".", 1)[0]
        parent = modules[parent_name]
        if not isinstance(parent, nn.Sequential | nn.ModuleList):
            raise UnsupportedModelError(
                f"cannot remove block '{name}': its container {type(parent).__name__} is "
                "not an nn.Sequential or nn.ModuleList"
            )
        targets.append((parent, modules[name]))
    for parent, block in targets:
        keys = [key for key, child in parent._modules.items() if child is block]
        index = list(parent._modules).index(keys[0])
        del parent[index]


def layer_shapes(model: nn.Module) -> dict[str, dict[str, int]]:
    """Channel sizes of every conv, batch-norm and linear layer, by module name."""
    shapes: dict[str, dict[str, int]] = {}
    for name, module in model.named_modules():
        if isinstance(module, nn.Conv2d):
            shapes[name] = {
                "in_channels": module.in_channels,
                "out_channels": module.out_channels,
                "groups": module.groups,
            }
        elif isinstance(module, nn.BatchNorm2d):
            shapes[name] = {"num_features": module.num_features}
        elif isinstance(module, nn.Linear):
            shapes[name] = {"in_features": module.in_features, "out_features": module.out_features}
    return shapes


def _resize_(module: nn.Module, sizes: dict[str, int], name: str) -> None:
    """Give a layer new channel sizes with empty parameters; load_state_dict fills them."""

    def empty_like(t: torch.Tensor | None, shape: tuple[int, ...]) -> nn.Parameter | None:
        return None if t is None else nn.Parameter(torch.empty(shape, dtype=t.dtype))

    if isinstance(module, nn.Conv2d):
        module.in_channels, module.out_channels = sizes["in_channels"], sizes["out_channels"]
        module.groups = sizes.get("groups", module.groups)
        kernel = module.kernel_size
        module.weight = empty_like(
            module.weight, (module.out_channels, module.in_channels // module.groups, *kernel)
        )
        module.bias = empty_like(module.bias, (module.out_channels,))
    elif isinstance(module, nn.BatchNorm2d):
        n = module.num_features = sizes["num_features"]
        module.weight = empty_like(module.weight, (n,))
        module.bias = empty_like(module.bias, (n,))
        module.register_buffer("running_mean", torch.zeros(n))
        module.register_buffer("running_var", torch.ones(n))
    elif isinstance(module, nn.Linear):
        module.in_features, module.out_features = sizes["in_features"], sizes["out_features"]
        module.weight = empty_like(module.weight, (module.out_features, module.in_features))
        module.bias = empty_like(module.bias, (module.out_features,))
    else:
        raise UnsupportedModelError(f"spec resizes '{name}', a {type(module).__name__}")


def build_model(spec: ModelSpec) -> nn.Module:
    """Rebuild the architecture a spec describes (weights are whatever the factory made)."""
    model = create_model(spec.model, **spec.kwargs)
    remove_blocks_(model, spec.removed_blocks)
    modules = dict(model.named_modules())
    for name, sizes in spec.shapes.items():
        if name not in modules:
            raise UnsupportedModelError(f"model spec resizes '{name}', which the model lacks")
        current = layer_shapes(modules[name]).get("", {})
        if current != sizes:
            _resize_(modules[name], sizes, name)
    return model
