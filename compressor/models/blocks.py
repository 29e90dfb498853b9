"""Block discovery on any `nn.Module`: which residual blocks it has and which can be removed.

Nothing is declared by the model. One forward pass on an example input (eval mode, grad
on) records, for every module, the autograd node of its input and of its output, and reads
the autograd graph in between:

- a module is a *residual block* when its output is an addition (possibly followed by
  parameter-free element-wise ops such as ReLU) whose two operands both depend on the
  module's input: a skip connection, whatever the shortcut is (identity, 1x1 projection,
  option-A zero padding);
- it is *removable* when, in addition, one operand of that addition is the input itself
  (an identity shortcut, or a chain of residual additions back to it, as in a pre-norm
  transformer block), the output has the input's shape, and the block sits in an
  `nn.Sequential` or `nn.ModuleList`, so deleting it leaves a working network
  (x + f(x) becomes x).

Reading autograd rather than tracing the code means Python control flow, in-place ops and
lambdas in the forward do not matter. A module that contains residual blocks (a stage) is
not itself a block: the innermost residual modules are the blocks. Blocks are grouped into
stages by their container ("layer1", "features", ...).
"""

from __future__ import annotations

import fnmatch
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, replace
from typing import Any

import torch
from torch import nn

from compressor.errors import ConfigError, UnsupportedModelError

CONTAINERS = (nn.Sequential, nn.ModuleList)
# A residual block's forward graph is small; this only stops a pathological walk.
_MAX_WALK = 200_000


@dataclass(frozen=True)
class BlockInfo:
    """One residual block as layer pruning sees it."""

    name: str  # qualified module name, e.g. "layer2.3"
    index: int  # position in forward order among all blocks
    stage: int  # 0-based index of the block's container in forward order
    in_shape: tuple[int, ...]  # per-sample input shape, e.g. (C, H, W)
    out_shape: tuple[int, ...]
    removable: bool
    params: int
    macs: int  # conv and linear multiply-accumulates for one sample
    container: str = ""  # the Sequential/ModuleList holding it ("" for the model root)
    reason: str = ""  # why it is not removable ("" when it is)


@contextmanager
def evaluating(model: nn.Module) -> Iterator[nn.Module]:
    """Eval mode for a measurement, then every module's own flag back: `model.train(was)`
    would also flip submodules a user keeps in eval mode (frozen batch norms)."""
    modes = [(module, module.training) for module in model.modules()]
    model.eval()
    try:
        yield model
    finally:
        for module, training in modes:
            module.training = training


def _is_param(node: Any) -> bool:
    return node is not None and type(node).__name__ == "AccumulateGrad"


def _inputs(node: Any) -> list[Any]:
    return [n for n, _ in node.next_functions if n is not None]


def _reaches(start: Any, target: Any) -> bool:
    """Whether `target` is upstream of `start` in the autograd graph (or is `start`)."""
    stack, seen = [start], set()
    while stack and len(seen) < _MAX_WALK:
        node = stack.pop()
        if node is target:
            return True
        if id(node) in seen or _is_param(node):
            continue
        seen.add(id(node))
        stack.extend(_inputs(node))
    return False


def _output_add(output_node: Any) -> Any | None:
    """The addition a module's output comes from, through one-input ops: parameter-free
    ones such as ReLU, and normalisations, so a post-norm block LayerNorm(x + f(x)) (the
    original transformer, BERT) counts as residual like a pre-norm one."""
    node = output_node
    for _ in range(64):
        if node is None:
            return None
        if node.name().startswith("AddBackward"):
            return node
        inputs = _inputs(node)
        data = [n for n in inputs if not _is_param(n)]
        if len(data) != 1 or (len(inputs) > 1 and "Norm" not in node.name()):
            return None
        node = data[0]
    return None


def _identity_operand(add: Any, input_node: Any) -> bool:
    """An operand is the input itself, or a residual addition that has the input as one
    (two residuals in one block), possibly normalised in between (post-norm)."""
    for operand in _inputs(add):
        while operand is not input_node and "Norm" in operand.name():
            data = [n for n in _inputs(operand) if not _is_param(n)]
            if len(data) != 1:
                break
            operand = data[0]
        if operand is input_node:
            return True
        if operand.name().startswith("AddBackward") and _identity_operand(operand, input_node):
            return True
    return False


@dataclass
class _Seen:
    in_shape: tuple[int, ...]
    out_shape: tuple[int, ...]
    residual: bool
    identity: bool


def _conv_linear_macs(module: nn.Module, output: torch.Tensor) -> int:
    """MACs of one conv or linear call, per sample."""
    if isinstance(module, nn.Conv1d | nn.Conv2d | nn.Conv3d):
        per_out = module.in_channels // module.groups * int(torch.tensor(module.kernel_size).prod())
        return int(output[0].numel() * per_out)
    if isinstance(module, nn.Linear):
        return int(output[0].numel() * module.in_features)
    return 0


def _trace(model: nn.Module, example_input: torch.Tensor) -> tuple[dict[str, _Seen], dict]:
    """One eval-mode forward recording each module's residual structure and MACs."""
    modules = dict(model.named_modules())
    seen: dict[str, _Seen] = {}
    input_nodes: dict[str, Any] = {}
    leaf_macs: dict[str, int] = {}
    hooks = []

    def before(name: str):  # noqa: ANN202
        def hook(module: nn.Module, args: tuple) -> None:
            if args and isinstance(args[0], torch.Tensor):
                input_nodes[name] = args[0].grad_fn

        return hook

    def after(name: str):  # noqa: ANN202
        def hook(module: nn.Module, args: tuple, out: Any) -> None:
            leaf_macs[name] = leaf_macs.get(name, 0) + (
                _conv_linear_macs(module, out) if isinstance(out, torch.Tensor) else 0
            )
            node = input_nodes.get(name)
            if node is None or not isinstance(out, torch.Tensor) or name in seen:
                return
            add = _output_add(out.grad_fn)
            operands = _inputs(add) if add is not None else []
            residual = len(operands) == 2 and all(_reaches(op, node) for op in operands)
            seen[name] = _Seen(
                in_shape=tuple(args[0].shape[1:]),
                out_shape=tuple(out.shape[1:]),
                residual=residual,
                identity=residual and _identity_operand(add, node),
            )

        return hook

    for name, module in modules.items():
        if name:  # the root is never a block
            hooks.append(module.register_forward_pre_hook(before(name)))
            hooks.append(module.register_forward_hook(after(name)))
    try:
        with evaluating(model), torch.enable_grad():
            # A non-leaf input: every module input then has an autograd node to compare.
            start = example_input[:1].detach().clone().requires_grad_(True)
            model(start * 1.0)
    finally:
        for hook in hooks:
            hook.remove()
    return seen, leaf_macs


def discover_blocks(model: nn.Module, example_input: torch.Tensor) -> list[BlockInfo]:
    """Every residual block of `model` in forward order, each marked removable or not.

    The model runs once in eval mode on one sample, so discovery changes nothing (batch-norm
    running statistics stay as they were).
    """
    seen, leaf_macs = _trace(model, example_input)
    modules = dict(model.named_modules())
    residual = [name for name, s in seen.items() if s.residual]

    def in_container(name: str) -> bool:
        return isinstance(modules[name.rsplit(".", 1)[0] if "." in name else ""], CONTAINERS)

    # A stage of blocks also "ends in an addition": a residual module holding residual
    # blocks of a Sequential/ModuleList is a stage, not a block. A residual part that is an
    # attribute of a block (ConvNeXt V2's GRN adds its input back) does not hide the block.
    inner = [
        n for n in residual if not any(o.startswith(n + ".") and in_container(o) for o in residual)
    ]
    containers: list[str] = []
    infos = []
    for index, name in enumerate(inner):
        info = seen[name]
        parent = name.rsplit(".", 1)[0] if "." in name else ""
        if parent not in containers:
            containers.append(parent)
        reason = ""
        if not isinstance(modules[parent], CONTAINERS):
            kind = type(modules[parent]).__name__
            reason = f"its parent is a {kind}, not a Sequential/ModuleList"
        if not info.identity:
            reason = "its shortcut is not the identity"
        if info.in_shape != info.out_shape:
            reason = "it changes the shape"
        infos.append(
            BlockInfo(
                name=name,
                index=index,
                stage=containers.index(parent),
                in_shape=info.in_shape,
                out_shape=info.out_shape,
                removable=not reason,
                params=sum(p.numel() for p in modules[name].parameters()),
                macs=sum(m for leaf, m in leaf_macs.items() if leaf.startswith(name + ".")),
                container=parent,
                reason=reason,
            )
        )
    return infos


def select_patterns(
    blocks: Sequence[BlockInfo], include: Iterable[str] = (), exclude: Iterable[str] = ()
) -> list[BlockInfo]:
    """Restrict removal to blocks whose names match `include` and not `exclude` (fnmatch
    patterns such as "layer3.*"). A pattern that matches no block is a ConfigError: a typo
    must not silently widen or empty the search."""
    include, exclude = list(include), list(exclude)
    names = [b.name for b in blocks]
    for key, patterns in (("include", include), ("exclude", exclude)):
        for pattern in patterns:
            if not fnmatch.filter(names, pattern):
                shown = ", ".join(names[:8]) + (", ..." if len(names) > 8 else "")
                raise ConfigError(
                    f"prune.{key}: pattern '{pattern}' matches no residual block "
                    f"(blocks: {shown or 'none'})"
                )
    out = []
    for block in blocks:
        if include and not any(fnmatch.fnmatchcase(block.name, p) for p in include):
            block = replace(block, removable=False, reason=block.reason or "not in prune.include")
        if any(fnmatch.fnmatchcase(block.name, p) for p in exclude):
            block = replace(block, removable=False, reason=block.reason or "in prune.exclude")
        out.append(block)
    return out


def model_macs(model: nn.Module, example_input: torch.Tensor) -> int:
    """Conv and linear MACs of the whole model for one sample (what block removal changes)."""
    total = 0
    hooks = []
    for leaf in model.modules():
        if isinstance(leaf, nn.Conv1d | nn.Conv2d | nn.Conv3d | nn.Linear):

            def count(mod, args, out):  # noqa: ANN001
                nonlocal total
                total += _conv_linear_macs(mod, out)

            hooks.append(leaf.register_forward_hook(count))
    try:
        with evaluating(model), torch.no_grad():
            model(example_input[:1])
    finally:
        for hook in hooks:
            hook.remove()
    return total


def output_shape(model: nn.Module, example: torch.Tensor) -> tuple[int, ...]:
    """The model's output shape on one sample, in eval mode, without touching its state."""
    with evaluating(model), torch.no_grad():
        output = model(example[:1])
    if not isinstance(output, torch.Tensor):
        raise UnsupportedModelError(
            f"the model's forward returns a {type(output).__name__}, not a logits tensor; "
            "give a factory whose model returns the logits alone"
        )
    return tuple(output.shape)


def removable_summary(blocks: Sequence[BlockInfo]) -> str:
    """'layer1: 8, layer2: 8, layer3: 8' — used in error messages."""
    per_container: dict[str, int] = {}
    for block in blocks:
        key = block.container or "(root)"
        per_container[key] = per_container.get(key, 0) + int(block.removable)
    return ", ".join(f"{key}: {n}" for key, n in per_container.items())


def no_removable_error(model_name: str, blocks: Sequence[BlockInfo]) -> UnsupportedModelError:
    """One line saying why nothing can be removed, with the first block's reason."""
    if not blocks:
        return UnsupportedModelError(
            f"{model_name} has no residual block (no module whose output adds a skip "
            "connection to its input); layer pruning needs residual blocks"
        )
    first = blocks[0]
    return UnsupportedModelError(
        f"{model_name} has no removable block: {len(blocks)} residual block(s) found, none "
        f"removable (e.g. '{first.name}': {first.reason})"
    )
