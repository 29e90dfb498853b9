"""The one registry of block criteria: a name, what it scores, and whether it needs data.

Every criterion, weight-level (`compressor.prune.criteria`) or block-level
(`compressor.prune.block_criteria`), is added with `register_criterion`; this module imports
neither scorer module, so both scorer modules can register without importing each other.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TypeVar

import torch
from torch import nn

from compressor.errors import ConfigError
from compressor.models.blocks import BlockInfo
from compressor.prune.micro_batches import MicroBatches

Batch = tuple[torch.Tensor, torch.Tensor]  # (images, labels)
WeightScorer = Callable[[nn.Module, MicroBatches | None, int], dict[str, torch.Tensor]]
BlockScorer = Callable[[nn.Module, list[BlockInfo], Batch, int], dict[str, float]]
_F = TypeVar("_F", WeightScorer, BlockScorer)


@dataclass(frozen=True)
class Criterion:
    name: str
    score_weights: WeightScorer | None  # None: scores whole blocks (random, block-level)
    needs_data: bool  # False for data-free criteria (SynFlow, random)
    description: str
    score_blocks: BlockScorer | None = None  # block-level criteria; None for weight-level
    after_training: bool = False  # meant for trained weights (Algorithm 1), not theta_0


CRITERIA: dict[str, Criterion] = {}


def register_criterion(  # noqa: ANN201
    name: str,
    *,
    needs_data: bool,
    description: str,
    whole_blocks: bool = False,
    after_training: bool = False,
):
    """Decorator: register a weight scorer, or with `whole_blocks` a block scorer.

    Criteria for initial weights list before those for trained weights whichever module is
    imported first, so error messages and the lottery grid keep one order.
    """

    def decorate(fn: _F) -> _F:
        criterion = Criterion(
            name,
            None if whole_blocks else fn,
            needs_data,
            description,
            score_blocks=fn if whole_blocks else None,
            after_training=after_training,
        )
        add_criterion(criterion)
        return fn

    return decorate


def add_criterion(criterion: Criterion) -> None:
    """Register a Criterion as it is; `register_criterion` is the usual way in, this one is
    for a criterion without a scorer of its own ("random": `score_blocks` draws per block)."""
    entries = sorted(
        [*CRITERIA.items(), (criterion.name, criterion)], key=lambda e: e[1].after_training
    )
    CRITERIA.clear()
    CRITERIA.update(entries)


def get_criterion(name: str) -> Criterion:
    if not isinstance(name, str) or name not in CRITERIA:
        raise ConfigError(
            f"prune.criterion: unknown criterion '{name}'; choose one of {', '.join(CRITERIA)}"
        )
    return CRITERIA[name]
