"""Channel shrinking with Torch-Pruning's dependency graph: channels are removed for real.

Torch-Pruning groups every layer coupled to a channel (convs, batch norms, the residual
adds that tie a whole stage together) and removes the same channels from all of them, so
the result is a smaller dense network, not a mask. Channel counts are rounded to
`round_to` (8 by default: TensorRT's tensor-core kernels want multiples of 8; odd counts
are why pruned models are often no faster on GPUs and Jetsons).
"""

from __future__ import annotations

import fnmatch
from dataclasses import asdict, dataclass, field, fields, replace
from typing import Any, Literal, get_args

import torch
import torch.nn.functional as F
from torch import nn

from compressor.configs import config_kwargs
from compressor.errors import CompressorError, ConfigError, InputError, UnsupportedModelError
from compressor.models.blocks import evaluating, output_shape
from deploy.config_fields import check_fields, names, one_of, real, whole
from deploy.errors import first_line

Importance = Literal["magnitude", "taylor", "lamp"]
# Granularity of a MACs-target search: the ratio grows in this many steps up to the cap.
_MACS_SEARCH_STEPS = 20
_MAX_RATIO = 0.9


@dataclass(frozen=True, kw_only=True)
class ShrinkConfig:
    # L2 magnitude | first-order Taylor | LAMP
    importance: Importance = field(
        default="magnitude",
        metadata=one_of(get_args(Importance), expected="magnitude, taylor or lamp"),
    )
    # Fraction of channels removed from each prunable group.
    ratio: float | None = field(
        default=0.5, metadata=real(0, 1, below=True, optional=True, noun="")
    )
    # Or: shrink until MACs <= this fraction of before.
    macs_target: float | None = field(
        default=None, metadata=real(0, 1, above=True, optional=True, noun="")
    )
    # Or: the smallest ratio whose measured latency is <= this fraction of the unshrunk
    # model's, or <= latency_ms (bisection on the ratio, each probe built, exported and
    # timed side by side with the unshrunk model: compressor/prune/shrink_latency.py).
    latency_fraction: float | None = field(
        default=None, metadata=real(0, 1, above=True, below=True, optional=True, noun="")
    )
    latency_ms: float | None = field(default=None, metadata=real(0, above=True, optional=True))
    latency_backend: str = field(
        default="onnxruntime", metadata=one_of(("onnxruntime", "tensorrt", "trtexec"))
    )
    latency_batch: int = field(default=1, metadata=whole(1, noun="a whole number"))
    latency_probes: int = field(default=6, metadata=whole(1, noun="a whole number"))
    # Kept channel counts are multiples of this (tensor cores like 8).
    round_to: int = field(default=8, metadata=whole(1, noun="a whole number"))
    # Short training after shrinking.
    fine_tune_epochs: int = field(default=5, metadata=whole(0, noun="a whole number"))
    # Lower than training's: the weights are already trained.
    fine_tune_lr: float = field(default=0.01, metadata=real(0, above=True))
    # Module-name patterns (fnmatch) whose output channels are left alone (Torch-Pruning's
    # ignored_layers); the classifier is always left alone.
    exclude: tuple[str, ...] = field(default=(), metadata=names(expected="a list of name patterns"))

    def __post_init__(self) -> None:
        check_fields(self, ConfigError, "shrink.{name}: ")
        given = [k for k in _AMOUNTS if getattr(self, k) is not None]
        if len(given) != 1:
            raise ConfigError(
                f"shrink: give exactly one of {', '.join(_AMOUNTS)} (got {given or 'none'})"
            )
        if not self.by_latency():
            for key in _LATENCY_OPTIONS:
                if getattr(self, key) != _DEFAULTS[key]:
                    raise ConfigError(
                        f"shrink.{key}: only with shrink.latency_fraction or shrink.latency_ms"
                    )

    def by_latency(self) -> bool:
        return self.latency_fraction is not None or self.latency_ms is not None

    def at_ratio(self, ratio: float) -> ShrinkConfig:
        """This config with a fixed ratio instead of its budget: what one probe shrinks by."""
        plain = {key: _DEFAULTS[key] for key in _LATENCY_OPTIONS}
        return replace(
            self, ratio=ratio, macs_target=None, latency_fraction=None, latency_ms=None, **plain
        )

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ShrinkConfig:
        data = config_kwargs(cls, data, "shrink")
        if "ratio" not in data and any(data.get(k) is not None for k in _AMOUNTS[1:]):
            data["ratio"] = None
        return cls(**data)

    def to_dict(self) -> dict[str, Any]:
        """The latency keys only when shrinking to latency, so recipes recorded before they
        existed still resume."""
        out = asdict(self)
        if not self.by_latency():
            for key in ("latency_fraction", "latency_ms", *_LATENCY_OPTIONS):
                del out[key]
        return out


_AMOUNTS = ("ratio", "macs_target", "latency_fraction", "latency_ms")
_LATENCY_OPTIONS = ("latency_backend", "latency_batch", "latency_probes")
_DEFAULTS = {f.name: f.default for f in fields(ShrinkConfig)}


@dataclass(frozen=True)
class ShrinkResult:
    params_before: int
    params_after: int
    macs_before: int  # Torch-Pruning's counter, one sample
    macs_after: int
    channels: dict[str, tuple[int, int]]  # conv/linear name -> (out channels before, after)
    unpruned: tuple[str, ...]  # convs/linears (not the classifier) left as they were
    classifier: str = ""  # the output layer found, never pruned
    ignored: dict[str, str] = field(default_factory=dict)  # layer -> why it was left alone

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _importance(name: Importance):  # noqa: ANN202 - a Torch-Pruning importance object
    import torch_pruning as tp

    if name == "magnitude":
        return tp.importance.GroupMagnitudeImportance(p=2)
    if name == "taylor":
        return tp.importance.GroupTaylorImportance()
    return tp.importance.LAMPImportance(p=2)


def find_classifier(model: nn.Module, example: torch.Tensor) -> tuple[str, nn.Module]:
    """The layer that produces the logits (its outputs are the classes: never pruned).

    Found from the autograd graph of one forward pass: the nearest parameterised module
    upstream of the output, through parameter-free ops such as flatten or pooling. That is
    right whatever the head is called (fc, classifier.1, head) or wherever it was defined.
    """
    produced: dict[int, str] = {}
    keep: list = []  # hold the nodes so their ids stay unique during the walk
    modules = dict(model.named_modules())
    hooks = []
    for name, module in modules.items():
        if name and any(p is not None for p in module._parameters.values()):

            def record(mod, args, out, name=name):  # noqa: ANN001
                if isinstance(out, torch.Tensor) and out.grad_fn is not None:
                    keep.append(out.grad_fn)
                    produced[id(out.grad_fn)] = name

            hooks.append(module.register_forward_hook(record))
    try:
        with evaluating(model), torch.enable_grad():
            output = model(example[:1].detach().clone().requires_grad_(True) * 1.0)
    finally:
        for hook in hooks:
            hook.remove()
    frontier, seen = [output.grad_fn], set()
    while frontier:
        node = frontier.pop(0)
        if node is None or id(node) in seen:
            continue
        if id(node) in produced:
            name = produced[id(node)]
            return name, modules[name]
        seen.add(id(node))
        frontier.extend(n for n, _ in node.next_functions)
    raise ConfigError(
        "shrink: cannot find the classifier (no parameterised layer feeds the output)"
    )


def count_macs_params(model: nn.Module, example: torch.Tensor) -> tuple[int, int]:
    import torch_pruning as tp

    with evaluating(model):
        macs, params = tp.utils.count_ops_and_params(model, example[:1])
    return int(macs), int(params)


def _check_runs(model: nn.Module, example: torch.Tensor) -> None:
    """A model given data of another channel count fails here in one line, not inside
    Torch-Pruning's tracing (a stored ticket records no dataset to compare with)."""
    try:
        output_shape(model, example)
    except CompressorError:
        raise
    except Exception as exc:
        size = "x".join(map(str, example.shape[1:]))
        first = first_line(exc)
        raise InputError(
            f"shrink: the model cannot run on this data's {size} images "
            f"({type(exc).__name__}: {first}); use the data the model was made for"
        ) from exc


def shrink_channels_(
    model: nn.Module,
    example: torch.Tensor,
    config: ShrinkConfig,
    calibration: tuple[torch.Tensor, torch.Tensor] | None = None,
) -> ShrinkResult:
    """Remove channels from `model` in place; `calibration` (images, labels) feeds Taylor."""
    import torch_pruning as tp

    if config.importance == "taylor" and calibration is None:
        raise ConfigError("shrink.importance 'taylor' needs a calibration batch of labelled images")
    _check_runs(model, example)
    head_name, head = find_classifier(model, example)
    before = _prunable_sizes(model, head)
    macs_before, params_before = count_macs_params(model, example)
    outputs_before = output_shape(model, example)
    ignored = {head_name: "the classifier (its outputs are the classes)"}
    ignored.update(_excluded(model, config.exclude))
    ignored.update(_coupled_to_channel_padding(model, example))
    modules = dict(model.named_modules())
    target_ratio = config.ratio if config.ratio is not None else _MAX_RATIO
    steps = 1 if config.ratio is not None else _MACS_SEARCH_STEPS
    model.eval()
    try:
        pruner = tp.pruner.BasePruner(
            model,
            example[:1],
            importance=_importance(config.importance),
            pruning_ratio=target_ratio,
            iterative_steps=steps,
            ignored_layers=[modules[name] for name in ignored],
            round_to=config.round_to,
        )
        for _ in range(steps):
            if config.importance == "taylor":
                _taylor_gradients(model, calibration)
            pruner.step()
            macs, _ = count_macs_params(model, example)
            if config.macs_target is not None and macs <= config.macs_target * macs_before:
                break
        model.zero_grad(set_to_none=True)
        outputs_after = output_shape(model, example)
    except Exception as exc:  # a layer Torch-Pruning's graph did not couple correctly
        raise UnsupportedModelError(
            f"shrink: the model no longer runs after channel pruning ({type(exc).__name__}: "
            f"{str(exc).strip().splitlines()[0]}); leave the layers involved alone with "
            "shrink.exclude, or set shrink.ratio: 0"
        ) from exc
    if outputs_after != outputs_before:
        raise UnsupportedModelError(
            f"shrink: channel pruning changed the output shape {outputs_before} -> {outputs_after}"
        )
    macs_after, params_after = count_macs_params(model, example)
    after = _prunable_sizes(model, head)
    return ShrinkResult(
        params_before=params_before,
        params_after=params_after,
        macs_before=macs_before,
        macs_after=macs_after,
        channels={n: (before[n], after[n]) for n in after if n in before},
        unpruned=tuple(n for n in after if n in before and after[n] == before[n]),
        classifier=head_name,
        ignored=ignored,
    )


def _excluded(model: nn.Module, patterns: tuple[str, ...]) -> dict[str, str]:
    names = [name for name, _ in model.named_modules() if name]
    out = {}
    for pattern in patterns:
        matched = [n for n in names if fnmatch.fnmatchcase(n, pattern)]
        if not matched:
            raise ConfigError(f"shrink.exclude: pattern '{pattern}' matches no module")
        out.update({n: f"shrink.exclude '{pattern}'" for n in matched})
    return out


def _coupled_to_channel_padding(model: nn.Module, example: torch.Tensor) -> dict[str, str]:
    """Layers whose channels flow through a parameter-free channel change (option-A
    shortcuts zero-pad x to twice the channels). Torch-Pruning reads that pad as an
    element-wise op and would prune mismatched channels, so those layers are left alone;
    the channels inside each block are still pruned."""
    import torch_pruning as tp

    changers = _parameter_free_channel_changes(model, example)
    if not changers:
        return {}
    graph = tp.DependencyGraph().build_dependency(model, example_inputs=example[:1])
    reason = f"coupled to the parameter-free channel change in {changers[0]}"
    out = {}
    for name, module in model.named_modules():
        if isinstance(module, nn.Conv1d | nn.Conv2d | nn.Conv3d | nn.Linear):
            prune_out = (
                tp.prune_linear_out_channels
                if isinstance(module, nn.Linear)
                else tp.prune_conv_out_channels
            )
            group = graph.get_pruning_group(module, prune_out, idxs=[0])
            if any("Pad" in str(item.dep.target) for item in group):
                out[name] = reason
    return out


def _parameter_free_channel_changes(model: nn.Module, example: torch.Tensor) -> list[str]:
    """Where the channel count changes without parameters: modules without parameters
    whose output has other channels than their input, and F.pad calls on the channel
    axis written inline in a forward."""
    from torch.overrides import TorchFunctionMode

    found: list[str] = []
    inline: list[str] = []

    class ChannelPads(TorchFunctionMode):
        def __torch_function__(self, func, types, args=(), kwargs=None):  # noqa: ANN001, ANN204
            out = func(*args, **(kwargs or {}))
            pads = getattr(func, "__name__", "") in ("pad", "constant_pad_nd")
            if pads and _changes_channels(args[0] if args else None, out):
                inline.append("an F.pad on the channel axis")
            return out

    hooks = []
    for name, module in model.named_modules():
        if name and not any(True for _ in module.parameters()):

            def check(mod, args, out, name=name):  # noqa: ANN001
                if _changes_channels(args[0] if args else None, out) and name not in found:
                    found.append(name)

            hooks.append(module.register_forward_hook(check))
    try:
        with ChannelPads():
            output_shape(model, example)
    finally:
        for hook in hooks:
            hook.remove()
    return found or inline[:1]


def _changes_channels(x: object, out: object) -> bool:
    return (
        isinstance(x, torch.Tensor)
        and isinstance(out, torch.Tensor)
        and x.dim() == out.dim() >= 3
        and x.shape[1] != out.shape[1]
    )


def _prunable_sizes(model: nn.Module, head: nn.Module) -> dict[str, int]:
    """Output channels of every conv and linear layer except the classifier."""
    sizes = {}
    for name, module in model.named_modules():
        if module is head:
            continue
        if isinstance(module, nn.Conv1d | nn.Conv2d | nn.Conv3d):
            sizes[name] = module.out_channels
        elif isinstance(module, nn.Linear):
            sizes[name] = module.out_features
    return sizes


def _taylor_gradients(model: nn.Module, batch: tuple[torch.Tensor, torch.Tensor]) -> None:
    """Taylor importance reads .grad: one loss and backward on the calibration batch."""
    images, labels = batch
    model.zero_grad(set_to_none=True)
    F.cross_entropy(model(images), labels).backward()
