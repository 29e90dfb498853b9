"""Filter pruning at initialization at a matched filter count: the paper's Table 3 baseline.

A layer ticket removes whole blocks, and with them every filter (conv output channel)
inside. The fair comparison removes the same number of filters from the same theta_0 with
the same criterion, but spread over the network as channels: that is what this module does,
with Torch-Pruning's dependency graph, so coupled layers (a residual stream's convs, batch
norms, the classifier's inputs) lose the same channel together and the result is a smaller
dense network, not a masked one.

Channel score: the criterion's per-weight scores (SNIP, GraSP, SynFlow on theta_0) summed
over every weight the removal of that channel deletes, in every layer of its Torch-Pruning
group: the filter's kernel, and the next layers' input slices. This is the block score's
"sum" aggregation applied to a different unit of removal, so layers and filters are ranked
by one rule. `random` draws one uniform score per channel.

Filters counted: one per conv whose output channel goes. A residual stream's channel is
produced by several convs (the stem and every block's last conv of a stage), so it counts
several filters; channels are taken lowest score first, over all groups, until the count
is reached (it may overshoot by less than one channel's filters; the result says by how
much). Every group keeps at least one channel.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from compressor.errors import ConfigError, UnsupportedModelError
from compressor.models.blocks import output_shape
from compressor.prune.criteria import Batch, get_criterion, weight_scores
from compressor.prune.shrink import count_macs_params, find_classifier


@dataclass(frozen=True)
class FilterPruneResult:
    target_filters: int  # what was asked for (the layer ticket's filter count)
    removed_filters: int  # what was removed (>= target, by less than one channel's filters)
    channels: dict[str, tuple[int, int]]  # conv name -> (out channels before, after)
    macs_before: int
    macs_after: int
    params_before: int
    params_after: int

    def to_dict(self) -> dict[str, Any]:
        return {**self.__dict__, "channels": {k: list(v) for k, v in self.channels.items()}}


def block_filters(model: nn.Module, block_names: list[str] | tuple[str, ...]) -> int:
    """Filters (conv output channels) inside the named blocks: a layer ticket's count."""
    modules = dict(model.named_modules())
    total = 0
    for name in block_names:
        if name not in modules:
            raise ConfigError(f"block '{name}' is not a module of the model")
        total += sum(m.out_channels for m in modules[name].modules() if isinstance(m, nn.Conv2d))
    return total


def _param_scores(
    module: nn.Module, prefix: str, scores: dict[str, torch.Tensor]
) -> dict[str, torch.Tensor]:
    return {
        local: scores[f"{prefix}.{local}" if prefix else local]
        for local, _ in module.named_parameters(recurse=False)
        if (f"{prefix}.{local}" if prefix else local) in scores
    }


def _channel_scores(
    group: Any, names: dict[nn.Module, str], scores: dict[str, torch.Tensor] | None, dg: Any
) -> tuple[dict[int, float], int]:
    """({root channel: summed score}, filters per channel) of one Torch-Pruning group."""
    totals: dict[int, float] = {}
    filters = 0
    for item in group:
        module = item.dep.target.module
        if not isinstance(module, nn.Module) or module not in names:
            continue  # an operation node (add, relu, reshape): no weights
        out = dg.is_out_channel_pruning_fn(item.dep.handler)
        if out and isinstance(module, nn.Conv2d):
            filters += 1
        if scores is None:
            continue
        for tensor in _param_scores(module, names[module], scores).values():
            dim = 0 if out or tensor.dim() < 2 else 1
            if dim >= tensor.dim():
                continue
            for idx, root in zip(item.idxs, item.root_idxs, strict=True):
                value = float(tensor.select(dim, int(idx)).double().sum())
                totals[int(root)] = totals.get(int(root), 0.0) + value
    return totals, filters


def prune_filters_at_init(
    model: nn.Module,
    example: torch.Tensor,
    target_filters: int,
    criterion: str,
    batch: Batch | None,
    *,
    seed: int = 0,
) -> FilterPruneResult:
    """Remove at least `target_filters` filters from `model` (theta_0) in place, lowest
    channel score first; the kept weights are theta_0's, sliced."""
    import torch_pruning as tp

    if (
        isinstance(target_filters, bool)
        or not isinstance(target_filters, int)
        or target_filters < 0
    ):
        raise ConfigError(
            f"filter pruning: target must be a whole number >= 0, got {target_filters!r}"
        )
    chosen = get_criterion(criterion)
    if chosen.after_training:
        raise ConfigError(
            f"filter pruning at init: criterion '{criterion}' is meant for trained weights; "
            "use snip, grasp, synflow or random"
        )
    scores = (
        None if chosen.score_weights is None else weight_scores(model, criterion, batch, seed=seed)
    )
    _, head = find_classifier(model, example[:1])
    shape_before = output_shape(model, example[:1])
    macs_before, params_before = count_macs_params(model, example[:1])
    before = {n: m.out_channels for n, m in model.named_modules() if isinstance(m, nn.Conv2d)}
    model.eval()
    names = {m: n for n, m in model.named_modules()}
    dg = tp.DependencyGraph().build_dependency(model, example[:1])
    groups = list(dg.get_all_groups(ignored_layers=[head], root_module_types=[nn.Conv2d]))
    picked = _pick_channels(groups, names, scores, dg, target_filters, criterion, seed)
    try:
        for g_index, channels in picked.items():
            if not channels:
                continue
            root = groups[g_index][0].dep.target.module
            dg.get_pruning_group(root, tp.prune_conv_out_channels, sorted(channels)).prune()
        shape_after = output_shape(model, example[:1])
    except Exception as exc:
        raise UnsupportedModelError(
            f"filter pruning broke the model ({type(exc).__name__}: "
            f"{str(exc).strip().splitlines()[0]})"
        ) from exc
    if shape_after != shape_before:
        raise UnsupportedModelError(
            f"filter pruning changed the output shape {shape_before} -> {shape_after}"
        )
    macs_after, params_after = count_macs_params(model, example[:1])
    after = {n: m.out_channels for n, m in model.named_modules() if isinstance(m, nn.Conv2d)}
    return FilterPruneResult(
        target_filters=target_filters,
        removed_filters=sum(before[n] - after[n] for n in after),
        channels={n: (before[n], after[n]) for n in after},
        macs_before=macs_before,
        macs_after=macs_after,
        params_before=params_before,
        params_after=params_after,
    )


def _pick_channels(
    groups: list[Any],
    names: dict[nn.Module, str],
    scores: dict[str, torch.Tensor] | None,
    dg: Any,
    target_filters: int,
    criterion: str,
    seed: int,
) -> dict[int, list[int]]:
    """{group index: root channels to remove}, lowest score first, until at least
    `target_filters` filters go; every group keeps one channel. No scores: random."""
    generator = torch.Generator().manual_seed(seed)
    candidates = []  # (score, group index, root channel)
    sizes, per_channel = [], []
    for g_index, group in enumerate(groups):
        totals, filters = _channel_scores(group, names, scores, dg)
        root = group[0].dep.target.module
        size = root.out_channels
        sizes.append(size)
        per_channel.append(filters)
        draws = torch.rand(size, generator=generator, dtype=torch.float64)
        for channel in range(size):
            value = float(draws[channel]) if scores is None else totals.get(channel, 0.0)
            if not math.isfinite(value):
                raise UnsupportedModelError(
                    f"criterion '{criterion}' gave a non-finite filter score"
                )
            candidates.append((value, g_index, channel))
    candidates.sort()
    picked: dict[int, list[int]] = {}
    removed = 0
    for _, g_index, channel in candidates:
        if removed >= target_filters:
            break
        taken = picked.setdefault(g_index, [])
        if len(taken) + 1 >= sizes[g_index] or per_channel[g_index] == 0:
            continue  # a group keeps one channel; a group without convs removes no filter
        taken.append(channel)
        removed += per_channel[g_index]
    if removed < target_filters:
        raise UnsupportedModelError(
            f"filter pruning: only {removed} of the {target_filters} filters asked for can go "
            "while every layer keeps one channel"
        )
    return picked
