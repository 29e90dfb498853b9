"""Block discovery: which residual blocks a model has and which of them can be removed.

A block is removable when its output shape equals its input shape on an example input:
then the residual `x + f(x)` can become `x` and the block can be deleted outright. Models
tell us their candidate blocks through `residual_blocks()` (the zoo does); the shapes are
always measured, never trusted from the declaration.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from compressor.errors import UnsupportedModelError


@dataclass(frozen=True)
class BlockInfo:
    """One residual block as layer pruning sees it."""

    name: str  # qualified module name, e.g. "layer2.3"
    index: int  # position in forward order among all blocks
    stage: int  # stage index (0-based); blocks of a stage share a resolution
    in_shape: tuple[int, ...]  # per-sample input shape (C, H, W)
    out_shape: tuple[int, ...]
    removable: bool  # in_shape == out_shape
    params: int
    macs: int  # multiply-accumulates for one sample


def candidate_blocks(model: nn.Module) -> list[tuple[str, int]]:
    """(name, stage) of the model's residual blocks, from its `residual_blocks()` method."""
    declare = getattr(model, "residual_blocks", None)
    if declare is None:
        raise UnsupportedModelError(
            f"{type(model).__name__} does not declare its residual blocks (no "
            "`residual_blocks()` method); use a zoo model (`compressor blocks --list`)"
        )
    return list(declare())


def _conv_linear_macs(module: nn.Module, output: torch.Tensor) -> int:
    """MACs of one conv or linear call, per sample."""
    if isinstance(module, nn.Conv2d):
        per_out = (
            module.in_channels // module.groups * module.kernel_size[0] * module.kernel_size[1]
        )
        return int(output[0].numel() * per_out)
    if isinstance(module, nn.Linear):
        return int(output[0].numel() * module.in_features)
    return 0


@torch.no_grad()
def discover_blocks(model: nn.Module, example_input: torch.Tensor) -> list[BlockInfo]:
    """Run the model once on `example_input` and describe each declared block.

    The model runs in eval mode on a copy of one sample so discovery changes nothing
    (batch-norm running statistics stay as they were).
    """
    declared = candidate_blocks(model)
    modules = dict(model.named_modules())
    missing = [name for name, _ in declared if name not in modules]
    if missing:
        raise UnsupportedModelError(f"declared blocks not found in the model: {missing}")
    shapes: dict[str, tuple[tuple[int, ...], tuple[int, ...]]] = {}
    macs: dict[str, int] = {name: 0 for name, _ in declared}
    hooks = []
    for name, _ in declared:
        block = modules[name]

        def record_shape(mod, args, out, name=name):  # noqa: ANN001
            shapes[name] = (tuple(args[0].shape[1:]), tuple(out.shape[1:]))

        hooks.append(block.register_forward_hook(record_shape))
        for leaf in block.modules():
            if isinstance(leaf, nn.Conv2d | nn.Linear):

                def count(mod, args, out, name=name):  # noqa: ANN001
                    macs[name] += _conv_linear_macs(mod, out)

                hooks.append(leaf.register_forward_hook(count))
    was_training = model.training
    model.eval()
    try:
        model(example_input[:1])
    finally:
        for hook in hooks:
            hook.remove()
        model.train(was_training)
    infos = []
    for index, (name, stage) in enumerate(declared):
        if name not in shapes:
            raise UnsupportedModelError(f"block '{name}' did not run in the forward pass")
        in_shape, out_shape = shapes[name]
        infos.append(
            BlockInfo(
                name=name,
                index=index,
                stage=stage,
                in_shape=in_shape,
                out_shape=out_shape,
                removable=in_shape == out_shape,
                params=sum(p.numel() for p in modules[name].parameters()),
                macs=macs[name],
            )
        )
    return infos


def model_macs(model: nn.Module, example_input: torch.Tensor) -> int:
    """Conv and linear MACs of the whole model for one sample (what block removal changes)."""
    total = 0
    hooks = []
    for leaf in model.modules():
        if isinstance(leaf, nn.Conv2d | nn.Linear):

            def count(mod, args, out):  # noqa: ANN001
                nonlocal total
                total += _conv_linear_macs(mod, out)

            hooks.append(leaf.register_forward_hook(count))
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            model(example_input[:1])
    finally:
        for hook in hooks:
            hook.remove()
        model.train(was_training)
    return total


def removable_summary(blocks: list[BlockInfo]) -> str:
    """'stage 1: 8, stage 2: 8, stage 3: 8' — used in error messages."""
    per_stage: dict[int, int] = {}
    for block in blocks:
        per_stage.setdefault(block.stage, 0)
        per_stage[block.stage] += int(block.removable)
    return ", ".join(f"stage {stage + 1}: {n}" for stage, n in sorted(per_stage.items()))
