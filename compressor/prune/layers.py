"""Layer pruning at initialization (the paper's Algorithm 2), as one stage.

Score every removable residual block on theta_0 with a criterion, rank all blocks globally,
remove the lowest-scoring ones in one shot. The result is a physically shallower network
whose kept weights are exactly theta_0's; the dense network is never trained.
"""

from __future__ import annotations

import copy
import sys
from dataclasses import asdict, dataclass, field, fields
from typing import Any

import torch
from torch import nn

from compressor.configs import MAX_SEED, config_kwargs
from compressor.errors import ConfigError, UnsupportedModelError
from compressor.models.blocks import (
    BlockInfo,
    discover_blocks,
    model_macs,
    no_removable_error,
    removable_summary,
    select_patterns,
)
from compressor.models.spec import ModelSpec, remove_blocks_
from compressor.prune.block_criteria import branch_ratios
from compressor.prune.criteria import (
    CRITERIA,
    Aggregation,
    BlockScores,
    get_criterion,
    score_blocks,
)
from compressor.prune.latency import BudgetOutcome, LatencyBudget, prune_to_latency
from compressor.prune.score_checks import score_warnings
from deploy.config_fields import check_fields, names, one_of, real, rule, whole

# Default micro-batch for SNIP/GraSP scoring, measured with GraSP on a torchvision ResNet-50 at
# 224 px, 100 images, 2 cores: all at once 21.2 GB and 3 min 45 s; 16 at a time 5.5 GB, 2 min
# 24 s; 8 at a time 4.0 GB, 1 min 42 s (tensors over glibc's 32 MB mmap threshold, as at 16,
# are mapped and zero-filled anew for every use: 69 s of kernel time against 13 s). On the
# digits default the 15 GraSP blocks removed are the same at 8 and all at once, 2 s vs 1 s.
SCORE_BATCH_SIZE = 8
BRANCH_CHECK_IMAGES = 8  # images of the forward that names the cause of a score warning


_PATTERNS = "a list of name patterns"


def _whole(minimum: int, maximum: int | None = None, *, optional: bool = False) -> dict[str, Any]:
    return whole(minimum, maximum, optional=optional, noun="a whole number")


@dataclass(frozen=True, kw_only=True)
class LayerPruneConfig:
    """How many blocks to remove and how to choose them. Give exactly one amount."""

    # At init: snip | grasp | synflow | random (the paper's default: grasp). The paper's
    # Algorithm 1 criteria for trained weights, hrank | expectabs | kl | pls | cka, score
    # whatever weights the model holds (compressor/prune/block_criteria.py).
    criterion: str = "grasp"
    aggregation: Aggregation = field(  # weight scores -> block score (see criteria.py)
        default="sum", metadata=one_of(("sum", "mean"), expected="'sum' or 'mean'")
    )
    # Remove this many blocks, or this fraction of the removable blocks, or until MACs <=
    # this fraction of the dense MACs, or until the measured latency <= latency_fraction of
    # the dense latency or <= latency_ms (compressor/prune/latency.py): exactly one of these.
    blocks: int | None = field(default=None, metadata=_whole(0, optional=True))
    fraction: float | None = field(default=None, metadata=real(0, 1, optional=True, noun=""))
    macs_target: float | None = field(
        default=None, metadata=real(0, 1, above=True, optional=True, noun="")
    )
    latency_fraction: float | None = field(
        default=None, metadata=real(0, 1, above=True, below=True, optional=True, noun="")
    )
    latency_ms: float | None = field(default=None, metadata=real(0, above=True, optional=True))
    # A table from `deploy profile-blocks` (measured on the target device); None: measured
    # here on latency_backend at latency_precision and latency_batch.
    latency_table: str | None = field(
        default=None,
        metadata=rule(lambda v: v is None or (isinstance(v, str) and v != ""), "a file path"),
    )
    # torch: the table and candidates timed as torch modules, on CUDA when there is one.
    latency_backend: str = field(
        default="onnxruntime", metadata=one_of(("onnxruntime", "tensorrt", "trtexec", "torch"))
    )
    latency_precision: str | None = field(
        default=None,
        metadata=rule(
            lambda v: v is None or v in ("fp32", "fp16", "bf16", "int8"),
            "fp32, fp16, bf16 or int8",
        ),
    )
    latency_batch: int = field(default=1, metadata=_whole(1))
    # Rounds of build, time, remove more while the measurement misses the budget.
    latency_steps: int = field(default=4, metadata=_whole(1))
    # Scoring batch: this many labelled images of each class.
    samples_per_class: int = field(default=10, metadata=_whole(1))
    # SNIP/GraSP: images per forward while scoring (memory follows it; None = all at once)
    score_batch_size: int | None = field(
        default=SCORE_BATCH_SIZE,
        metadata=whole(
            1,
            optional=True,
            expected="a whole number >= 1, or null for the whole scoring batch at once",
        ),
    )
    seed: int = field(default=0, metadata=_whole(0, MAX_SEED))  # scoring batch, random criterion
    # Module-name patterns (fnmatch, e.g. "layer4.*"): only blocks matching `include` (all
    # when empty) and not matching `exclude` may be removed.
    include: tuple[str, ...] = field(default=(), metadata=names(expected=_PATTERNS))
    exclude: tuple[str, ...] = field(default=(), metadata=names(expected=_PATTERNS))

    def __post_init__(self) -> None:
        get_criterion(self.criterion)
        check_fields(self, ConfigError, "prune.{name}: ")
        given = [k for k in AMOUNTS if getattr(self, k) is not None]
        if len(given) != 1:
            raise ConfigError(
                f"prune: give exactly one of {', '.join(AMOUNTS)} (got {given or 'none'})"
            )
        if self.latency_backend == "onnxruntime" and self.latency_precision not in (None, "fp32"):
            raise ConfigError(
                f"prune.latency_precision {self.latency_precision}: onnxruntime times the FP32 "
                "export; other precisions need latency_backend tensorrt or trtexec"
            )
        if self.latency_backend == "torch" and self.latency_precision not in (None, "fp32"):
            raise ConfigError(
                f"prune.latency_precision {self.latency_precision}: the torch backend times "
                "fp32 modules; time another precision with onnxruntime or tensorrt files"
            )
        if self.budget() is None:
            changed = [k for k in _LATENCY_OPTIONS if getattr(self, k) != _DEFAULTS[k]]
            if changed:
                raise ConfigError(
                    f"prune.{changed[0]}: only with prune.latency_fraction or prune.latency_ms"
                )

    def budget(self) -> LatencyBudget | None:
        """The latency budget, when the amount is one."""
        if self.latency_fraction is None and self.latency_ms is None:
            return None
        return LatencyBudget(
            fraction=self.latency_fraction,
            ms=self.latency_ms,
            table=self.latency_table,
            backend=self.latency_backend,
            precision=self.latency_precision,
            batch=self.latency_batch,
            steps=self.latency_steps,
        )

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> LayerPruneConfig:
        return cls(**config_kwargs(cls, data, "prune"))

    def to_dict(self) -> dict[str, Any]:
        """The latency keys only when pruning to latency, so recipes recorded before they
        existed still resume."""
        out = asdict(self)
        if self.budget() is None:
            for key in ("latency_fraction", "latency_ms", *_LATENCY_OPTIONS):
                del out[key]
        return out


AMOUNTS = ("blocks", "fraction", "macs_target", "latency_fraction", "latency_ms")
_LATENCY_OPTIONS = (
    "latency_table",
    "latency_backend",
    "latency_precision",
    "latency_batch",
    "latency_steps",
)
_DEFAULTS = {f.name: f.default for f in fields(LayerPruneConfig)}


@dataclass(frozen=True)
class LayerPruneResult:
    spec: ModelSpec  # the ticket's architecture
    removed: tuple[str, ...]  # in removal order (lowest score first)
    scores: dict[str, float]  # every removable block's score
    blocks: tuple[BlockInfo, ...]  # all blocks of the dense model
    macs_before: int
    macs_after: int
    # Why the scores may not separate the blocks (compressor/prune/score_checks.py); empty if fine.
    warnings: tuple[str, ...] = ()
    # Pruned to a latency budget: the budget, the table and every measured step (latency.py).
    latency: BudgetOutcome | None = None

    def to_dict(self) -> dict[str, Any]:
        return {
            "removed": list(self.removed),
            "scores": self.scores,
            "warnings": list(self.warnings),
            "blocks": [asdict(b) for b in self.blocks],
            "macs_before": self.macs_before,
            "macs_after": self.macs_after,
            "spec": self.spec.to_dict(),
            **({"latency": self.latency.record} if self.latency else {}),
        }


def scoring_batch(
    images: torch.Tensor, labels: torch.Tensor, samples_per_class: int, seed: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """A class-balanced batch, as GraSP uses, chosen deterministically from `seed`."""
    generator = torch.Generator().manual_seed(seed)
    chosen = []
    for cls in torch.unique(labels).tolist():
        index = torch.nonzero(labels == cls).flatten()
        order = torch.randperm(len(index), generator=generator)
        chosen.append(index[order[:samples_per_class]])
    picked = torch.cat(chosen)
    return images[picked], labels[picked]


def count_to_remove(config: LayerPruneConfig, blocks: list[BlockInfo], model_name: str) -> int:
    """Blocks to remove for a count or fraction; MACs targets are resolved while ranking."""
    removable = sum(b.removable for b in blocks)
    if config.fraction is not None:
        return round(config.fraction * removable)
    wanted = config.blocks or 0
    if wanted > removable:
        raise UnsupportedModelError(
            f"remove {wanted} blocks: {model_name} has only {removable} removable blocks "
            f"({removable_summary(blocks)}); lower `blocks` or use a fraction"
        )
    return wanted


def select_blocks(
    blocks: list[BlockInfo],
    scores: dict[str, float],
    config: LayerPruneConfig,
    *,
    dense_macs: int,
    model_name: str,
) -> list[str]:
    """Global ranking, lowest score first; ties broken by forward order (deterministic)."""
    ranked = sorted((b for b in blocks if b.removable), key=lambda b: (scores[b.name], b.index))
    if config.macs_target is None:
        return [b.name for b in ranked[: count_to_remove(config, blocks, model_name)]]
    budget = config.macs_target * dense_macs
    removed, macs = [], dense_macs
    for block in ranked:
        if macs <= budget:
            break
        removed.append(block.name)
        macs -= block.macs
    if macs > budget:
        raise UnsupportedModelError(
            f"prune.macs_target {config.macs_target}: removing all {len(ranked)} removable "
            f"blocks of {model_name} leaves {macs / dense_macs:.2f} of the dense MACs; "
            "raise the target or add channel shrinking"
        )
    return removed


def prune_at_init(
    model: nn.Module,
    spec: ModelSpec,
    images: torch.Tensor,
    labels: torch.Tensor,
    config: LayerPruneConfig,
    *,
    measured: BudgetOutcome | None = None,
) -> tuple[nn.Module, LayerPruneResult]:
    """Score blocks of the untrained `model` (theta_0) and return the shallower ticket
    (the paper's Algorithm 2).

    `model` is not modified; the ticket is a copy with the chosen blocks deleted, so its
    kept weights equal theta_0 exactly. `measured`: a latency-budget choice made before (a
    resumed run), reused rather than timed again, since timings vary between runs.
    """
    return _prune(model, model.state_dict(), spec, images, labels, config, measured)


def prune_after_training(
    trained: nn.Module,
    rewind_state: dict[str, torch.Tensor],
    spec: ModelSpec,
    images: torch.Tensor,
    labels: torch.Tensor,
    config: LayerPruneConfig,
) -> tuple[nn.Module, LayerPruneResult]:
    """Score blocks of the trained dense network and rewind the ticket (Algorithm 1).

    The blocks are chosen on `trained`'s weights (hrank, expectabs, kl, pls and cka are
    meant for these); the ticket keeps the other blocks with the weights of `rewind_state`,
    a state dict of the dense network saved earlier in training (`train.rewind_points`;
    theta_0 for rewinding to initialization). Retrain it with `train.start_epoch` at the
    rewind epoch, so the schedule rewinds with the weights. `trained` is not modified.
    """
    return _prune(trained, rewind_state, spec, images, labels, config)


def _score_warnings(
    model: nn.Module,
    removable: list[BlockInfo],
    scored: BlockScores,
    removed: int,
    config: LayerPruneConfig,
    images: torch.Tensor,
) -> list[str]:
    """Warnings when the scores cannot choose; when one fires, a no-grad forward of a few
    scoring images measures how much the residual branches add, to name the likely cause."""
    order = [b.name for b in removable]
    warnings = score_warnings(scored, order, removed, config.criterion)
    if not warnings:
        return []
    try:
        ratio = max(branch_ratios(model, removable, images[:BRANCH_CHECK_IMAGES]).values())
    except UnsupportedModelError:  # a block that changes shape: no cause to name
        return warnings
    return score_warnings(scored, order, removed, config.criterion, branch_ratio=ratio)


def _log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def _prune(
    model: nn.Module,
    kept_state: dict[str, torch.Tensor],
    spec: ModelSpec,
    images: torch.Tensor,
    labels: torch.Tensor,
    config: LayerPruneConfig,
    measured: BudgetOutcome | None = None,
) -> tuple[nn.Module, LayerPruneResult]:
    blocks = discover_blocks(model, images[:1])
    if not any(b.removable for b in blocks):
        raise no_removable_error(spec.model, blocks)
    blocks = select_patterns(blocks, config.include, config.exclude)
    removable = [b for b in blocks if b.removable]
    if not removable:
        raise UnsupportedModelError(
            f"prune.include/exclude leave no removable block of {spec.model} "
            f"(include {list(config.include)}, exclude {list(config.exclude)})"
        )
    batch = scoring_batch(images, labels, config.samples_per_class, config.seed)
    scored = score_blocks(
        model,
        removable,
        config.criterion,
        batch,
        aggregation=config.aggregation,
        seed=config.seed,
        score_batch_size=config.score_batch_size,
    )
    scores = scored.scores
    dense_macs = model_macs(model, images[:1])
    budget = config.budget()
    outcome = None
    if budget is None:
        removed = select_blocks(
            blocks, scores, config, dense_macs=dense_macs, model_name=spec.model
        )
    else:
        outcome = measured or prune_to_latency(
            model, removable, scores, budget, images, log=_log, every=[b.name for b in blocks]
        )
        removed = outcome.removed
    warnings = _score_warnings(model, removable, scored, len(removed), config, batch[0])
    ticket = copy.deepcopy(model)
    try:
        ticket.load_state_dict(kept_state, strict=True)
    except RuntimeError as exc:
        first = str(exc).strip().splitlines()[0]
        raise UnsupportedModelError(f"the rewind weights do not fit {spec.model}: {first}") from exc
    remove_blocks_(ticket, removed, example=images[:1])
    result = LayerPruneResult(
        spec=spec.with_removed(removed),
        removed=tuple(removed),
        scores=scores,
        blocks=tuple(blocks),
        macs_before=dense_macs,
        macs_after=model_macs(ticket, images[:1]),
        warnings=tuple(warnings + (outcome.warnings if outcome else [])),
        latency=outcome,
    )
    return ticket, result


__all__ = [
    "CRITERIA",
    "LayerPruneConfig",
    "LayerPruneResult",
    "prune_after_training",
    "prune_at_init",
    "select_blocks",
]
