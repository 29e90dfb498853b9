"""Representation and landscape analysis of tickets: linear CKA and linear mode connectivity.

- `linear_cka` / `stage_cka`: how similar two networks' internal representations are
  (Kornblith et al., ICML 2019). A dense network and its ticket have different block names,
  so `stage_cka` compares them where they always line up: at the output of each stage.
- `interpolate_state` / `error_barrier`: whether two trained copies of one architecture
  sit in one linearly connected basin (Frankle et al., ICML 2020, "Linear Mode
  Connectivity and the Lottery Ticket Hypothesis"). `evaluate_fn(model) -> accuracy`
  keeps this independent of the data code; `recompute_bn_stats` builds the usual
  batch-norm reset for interpolated networks.

Nothing here changes the models it is given: forwards run in eval mode without grad, each
module's training flag is restored, and interpolation runs on a private copy.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

import torch
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm

from compressor.errors import ConfigError, UnsupportedModelError
from compressor.models.blocks import discover_blocks, evaluating
from compressor.prune.cka import linear_cka
from compressor.training.bn_recalibration import average_bn_statistics_

DEFAULT_ALPHAS = tuple(i / 10 for i in range(11))  # 0.0, 0.1, ..., 1.0, exact end points


# --- CKA per stage ------------------------------------------------------------------------


def _device(model: nn.Module) -> torch.device:
    return next(model.parameters(), torch.empty(0)).device


def _stage_names(model: nn.Module, images: torch.Tensor) -> list[str]:
    """Containers of the model's residual blocks ("layer1", ...), in forward order."""
    blocks = discover_blocks(model, images[:1].to(_device(model)))
    return list(dict.fromkeys(block.container for block in blocks))


def _stage_outputs(
    model: nn.Module, names: Sequence[str], images: torch.Tensor, batch_size: int
) -> dict[str, torch.Tensor]:
    """Each named module's output on `images`, flattened per example, on the CPU."""
    modules = dict(model.named_modules())
    outputs: dict[str, list[torch.Tensor]] = {name: [] for name in names}

    def record(name: str):  # noqa: ANN202
        def hook(module: nn.Module, args: tuple, out: Any) -> None:
            if not isinstance(out, torch.Tensor):
                raise UnsupportedModelError(
                    f"stage_cka: stage '{name}' returns a {type(out).__name__}, not a tensor"
                )
            outputs[name].append(out.detach().flatten(1).cpu())

        return hook

    hooks = [modules[name].register_forward_hook(record(name)) for name in names]
    device = _device(model)
    try:
        with evaluating(model), torch.no_grad():
            for count, start in enumerate(range(0, len(images), batch_size), start=1):
                model(images[start : start + batch_size].to(device))
                for name in names:
                    if len(outputs[name]) != count:
                        raise UnsupportedModelError(
                            f"stage_cka: stage '{name}' ran {len(outputs[name]) - count + 1} "
                            "times in one forward; CKA needs exactly one output per example"
                        )
    finally:
        for hook in hooks:
            hook.remove()
    return {name: torch.cat(parts) for name, parts in outputs.items()}


def stage_cka(
    model_a: nn.Module, model_b: nn.Module, images: torch.Tensor, *, batch_size: int = 256
) -> dict[str, float]:
    """Linear CKA between two models' stage outputs on `images`: {stage: cka}.

    A stage is a container of residual blocks as `discover_blocks` reports it ("layer1",
    "layer2", ... of the zoo ResNets). The output of the container module itself is
    compared, so a ticket that lost blocks of a stage, even all of them (an empty
    nn.Sequential passes its input on), still lines up with the dense model. Stages are
    those of either model whose module exists in both, in model_a's forward order; the
    model root ("") is a stage when blocks sit directly in it, and its output is then the
    model output.

    Both models run in eval mode without grad on each one's own device; state and each
    module's training flag are left as they were. Memory: all n outputs of every stage are
    kept on the CPU (n x C x H x W floats per stage and model, float64 inside linear_cka),
    so a few hundred to a few thousand images is the practical range.
    """
    if not isinstance(images, torch.Tensor) or images.ndim < 2 or len(images) < 2:
        shape = tuple(images.shape) if isinstance(images, torch.Tensor) else type(images).__name__
        raise ConfigError(f"stage_cka: images must be a batch of at least 2 inputs, got {shape}")
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ConfigError(f"stage_cka: batch_size must be an integer >= 1, got {batch_size!r}")
    modules_a, modules_b = dict(model_a.named_modules()), dict(model_b.named_modules())
    found = _stage_names(model_a, images) + _stage_names(model_b, images)
    candidates = dict.fromkeys(found)
    names = [name for name in candidates if name in modules_a and name in modules_b]
    if not names:
        raise UnsupportedModelError(
            f"stage_cka: the models share no stage (stages found: {list(candidates) or 'none'})"
        )
    outputs_a = _stage_outputs(model_a, names, images, batch_size)
    outputs_b = _stage_outputs(model_b, names, images, batch_size)
    return {name: linear_cka(outputs_a[name], outputs_b[name]) for name in names}


# --- linear mode connectivity -------------------------------------------------------------


def _check_alpha(alpha: float, where: str) -> float:
    if isinstance(alpha, bool) or not isinstance(alpha, int | float) or not 0 <= alpha <= 1:
        raise ConfigError(f"{where}: alpha must be a number in [0, 1], got {alpha!r}")
    return float(alpha)


def interpolate_state(
    state_a: Mapping[str, Any], state_b: Mapping[str, Any], alpha: float
) -> dict[str, Any]:
    """(1 - alpha) * a + alpha * b for every floating-point tensor of two state dicts.

    Integer and bool tensors (num_batches_tracked) and non-tensor entries are taken from
    `state_a`, copied. Floating-point entries use torch.lerp, which returns a exactly at
    alpha = 0 and b exactly at alpha = 1; b is moved to a's device. Batch-norm running
    statistics are floating-point buffers and are interpolated like the weights (see
    `error_barrier` on why they are often recomputed). The result owns its tensors.

    Raises ConfigError naming the key when the keys, shapes or dtypes differ (two
    different architectures, such as a dense network and its ticket, cannot be
    interpolated), or when alpha is not in [0, 1].
    """
    alpha = _check_alpha(alpha, "interpolate_state")
    only_a = [key for key in state_a if key not in state_b]
    only_b = [key for key in state_b if key not in state_a]
    if only_a or only_b:
        raise ConfigError(
            f"interpolate_state: the state dicts have different keys (only in a: "
            f"{only_a[:5] or 'none'}, only in b: {only_b[:5] or 'none'}); both models must "
            "have the same architecture"
        )
    out: dict[str, Any] = {}
    for key, a in state_a.items():
        b = state_b[key]
        if not isinstance(a, torch.Tensor):
            out[key] = copy.deepcopy(a)
            continue
        if not isinstance(b, torch.Tensor) or a.shape != b.shape:
            got = tuple(b.shape) if isinstance(b, torch.Tensor) else type(b).__name__
            raise ConfigError(
                f"interpolate_state: '{key}' has shape {tuple(a.shape)} in a and {got} in b"
            )
        if not (a.is_floating_point() or a.is_complex()):
            out[key] = a.detach().clone()
        elif a.dtype != b.dtype:
            raise ConfigError(f"interpolate_state: '{key}' is {a.dtype} in a and {b.dtype} in b")
        else:
            out[key] = torch.lerp(a.detach(), b.detach().to(a.device), alpha)
    return out


def _check_alphas(alphas: Sequence[float]) -> list[float]:
    values = [_check_alpha(alpha, "error_barrier") for alpha in alphas]
    if len(values) < 2 or values[0] != 0 or values[-1] != 1:
        raise ConfigError(
            f"error_barrier: alphas must start at 0 and end at 1 (the barrier is measured "
            f"against the two end points), got {list(alphas)}"
        )
    if any(later <= earlier for earlier, later in zip(values, values[1:], strict=False)):
        raise ConfigError(f"error_barrier: alphas must be strictly increasing, got {values}")
    return values


def _check_accuracy(accuracy: Any, alpha: float) -> float:
    if isinstance(accuracy, torch.Tensor) and accuracy.numel() == 1:
        accuracy = accuracy.item()
    if isinstance(accuracy, bool) or not isinstance(accuracy, int | float):
        raise ConfigError(
            f"error_barrier: evaluate_fn must return the accuracy as a number, got "
            f"{type(accuracy).__name__} at alpha={alpha} (with compressor.training.loop.evaluate, "
            "use `lambda model: evaluate(model, split)[0]`)"
        )
    if not (math.isfinite(accuracy) and 0 <= accuracy <= 1):
        raise ConfigError(
            f"error_barrier: evaluate_fn returned {accuracy} at alpha={alpha}; "
            "expected an accuracy in [0, 1]"
        )
    return float(accuracy)


def error_barrier(
    model_a: nn.Module,
    model_b: nn.Module,
    evaluate_fn: Callable[[nn.Module], float],
    *,
    alphas: Sequence[float] = DEFAULT_ALPHAS,
    recompute_bn: Callable[[nn.Module], None] | None = None,
) -> dict[str, Any]:
    """Error along the straight line between two trained networks of one architecture.

    At each alpha a private copy of `model_a` gets `interpolate_state(a, b, alpha)`, then
    `recompute_bn(copy)` when given, then `evaluate_fn(copy)` returns its accuracy;
    error = 1 - accuracy. The models passed in are not modified.

    Returns a JSON-ready dict:
      alphas, errors: the curve; excess: error(alpha) - ((1 - alpha) e0 + alpha e1), the
      rise above the straight line between the end points' errors e0 = error(0) and
      e1 = error(1);
      barrier: max excess (>= 0, as the end points have excess 0), at barrier_alpha;
      barrier_mean: max error - (e0 + e1) / 2, the rise above the mean of the end points.
    The two agree when e0 = e1. The paper's instability is, as we read it, the mean form
    (sup error minus the mean of the end points); the linear form is the one of Entezari
    et al. (2022) and later work, and does not count an end point's own higher error as
    a barrier. Networks are "linearly mode connected" when the barrier is about the
    noise (Frankle et al. use 2 points of error).

    Batch norm: by default (recompute_bn=None) the running means and variances are
    interpolated like the weights, so an interpolated network normalises with statistics
    that do not match its own activations; this alone can inflate the barrier (variance
    collapse, Jordan et al. 2022, REPAIR). The usual remedy is to re-estimate them at each
    alpha on a few training batches: pass `recompute_bn_stats(batches)`. It runs at every
    alpha, end points included, so all points are measured the same way.
    """
    values = _check_alphas(alphas)
    state_a = {key: value.detach().clone() for key, value in model_a.state_dict().items()}
    state_b = model_b.state_dict()
    interpolate_state(state_a, state_b, 0.0)  # a mismatch fails here, before any evaluation
    probe = copy.deepcopy(model_a)
    errors = []
    for alpha in values:
        probe.load_state_dict(interpolate_state(state_a, state_b, alpha))
        if recompute_bn is not None:
            recompute_bn(probe)
        errors.append(1.0 - _check_accuracy(evaluate_fn(probe), alpha))
    first, last = errors[0], errors[-1]
    excess = [error - ((1 - a) * first + a * last) for a, error in zip(values, errors, strict=True)]
    peak = max(range(len(values)), key=excess.__getitem__)
    return {
        "alphas": values,
        "errors": errors,
        "excess": excess,
        "barrier": excess[peak],
        "barrier_alpha": values[peak],
        "barrier_mean": max(errors) - (first + last) / 2,
    }


def recompute_bn_stats(batches: Iterable[Any]) -> Callable[[nn.Module], None]:
    """A `recompute_bn` hook: re-estimate every batch norm's running statistics.

    `batches` are input tensors, or (inputs, labels) pairs as a loader yields them; they
    are kept and reused at every alpha (a few training batches, augmentation off, is the
    usual choice). The hook resets each tracking batch norm, sets momentum=None (a plain
    average over the batches instead of an exponential one), runs the batches with only
    the batch norms in train mode (dropout stays off) and without grad, then restores
    momentum and every module's training flag.
    """
    inputs = [batch[0] if isinstance(batch, tuple | list) else batch for batch in batches]
    if not inputs or not all(isinstance(batch, torch.Tensor) for batch in inputs):
        raise ConfigError(
            "recompute_bn_stats: batches must be a non-empty sequence of input tensors "
            "or (inputs, labels) pairs"
        )

    def recompute(model: nn.Module) -> None:
        norms = [m for m in model.modules() if isinstance(m, _BatchNorm) and m.track_running_stats]
        device = _device(model)
        average_bn_statistics_(model, norms, (batch.to(device) for batch in inputs))

    return recompute
