"""Block saliency criteria for layer pruning at initialization (the paper's Algorithm 2).

Each criterion scores every weight of the network on its initial values; `block_scores`
then turns weight scores into one number per residual block. Higher means "keep". Adding
a criterion is one registered function in this file.

Which weights are scored: every parameter with two or more dimensions (conv kernels and
linear matrices), as SNIP, GraSP and SynFlow do; batch-norm affine parameters are left out.

Aggregation (the paper leaves it open): "sum" adds the weight scores of a block — a
block's total contribution, the natural reading of the paper; "mean" divides by the
number of scored weights, which removes the effect of block size (a stage-3 block has 16x
the weights of a stage-1 block at the same depth).

Block-level criteria (hrank, expectabs, kl, pls, cka; `compressor.prune.block_criteria`) score
whole blocks from their activations and are meant for trained weights (the paper's
Algorithm 1, tickets after training); `aggregation` does not apply to them.

SNIP and GraSP walk the scoring batch in micro-batches (`score_batch_size`,
compressor/prune/micro_batches.py), so memory follows the micro-batch, not the scoring set; SynFlow
needs one all-ones image whatever the set.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Literal, TypeVar

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.attention import SDPBackend, sdpa_kernel

from compressor.errors import CompressorError, ConfigError, UnsupportedModelError
from compressor.models.blocks import BlockInfo
from compressor.prune import block_criteria  # noqa: F401  registers the block-level criteria
from compressor.prune.micro_batches import MicroBatches
from compressor.prune.registry import (
    CRITERIA,
    Batch,
    Criterion,
    add_criterion,
    get_criterion,
    register_criterion,
)

__all__ = [
    "CRITERIA",
    "Batch",
    "BlockScores",
    "Criterion",
    "block_scores",
    "get_criterion",
    "register_criterion",
    "score_blocks",
    "weight_scores",
]
Aggregation = Literal["sum", "mean"]
_B = TypeVar("_B")


def _scored_parameters(model: nn.Module) -> dict[str, nn.Parameter]:
    return {name: p for name, p in model.named_parameters() if p.dim() >= 2}


@register_criterion("snip", needs_data=True, description="|gradient x weight| on one batch")
def snip_scores(
    model: nn.Module, batches: MicroBatches | None, seed: int
) -> dict[str, torch.Tensor]:
    """SNIP (Lee et al. 2019): connection sensitivity |dL/dw * w| at initialization, with
    dL/dw the gradient of the scoring set's mean loss, summed over micro-batches."""
    batches = _require_batch(batches, "snip")
    params = _scored_parameters(model)
    model.train()
    grads = _mean_loss_grad(model, batches, list(params.values()))
    return {
        name: (grad * p).abs().detach()
        for (name, p), grad in zip(params.items(), grads, strict=True)
    }


# GraSP divides logits by a temperature so the softmax is not saturated at init (its paper
# uses 200); the value only rescales all scores, it does not change the ranking much.
GRASP_TEMPERATURE = 200.0


@register_criterion(
    "grasp", needs_data=True, description="weight x Hessian-gradient product (gradient flow)"
)
def grasp_scores(
    model: nn.Module, batches: MicroBatches | None, seed: int
) -> dict[str, torch.Tensor]:
    """GraSP (Wang et al. 2020), the paper's default.

    GraSP's removal score is -w * Hg (remove the largest: their removal hurts gradient flow
    least); we return its negation w * Hg so that, like every criterion here, higher = keep.
    Two passes over the micro-batches: g, the gradient of the whole set's loss, without a
    graph; then Hg = sum_i d(g . g_i)/dw with g_i the micro-batch's share of the gradient,
    differentiated twice one micro-batch at a time (H is linear in the loss, so the sum is
    the whole set's Hessian times g).
    """
    batches = _require_batch(batches, "grasp")
    batches.passes = 2
    params = _scored_parameters(model)
    weights = list(params.values())
    model.train()
    grads = _mean_loss_grad(model, batches, weights, temperature=GRASP_TEMPERATURE)
    hessian_grad = [torch.zeros_like(w) for w in weights]
    for images, labels, share in batches:
        loss = F.cross_entropy(model(images) / GRASP_TEMPERATURE, labels) * share
        grads_graph = _grad(loss, weights, create_graph=True)
        grad_dot = sum((g1 * g2).sum() for g1, g2 in zip(grads_graph, grads, strict=True))
        del grads_graph, loss
        for total, part in zip(hessian_grad, _grad(grad_dot, weights), strict=True):
            total.add_(part)
        del grad_dot
    return {
        name: (p * hg).detach() for (name, p), hg in zip(params.items(), hessian_grad, strict=True)
    }


# float32, not the original's float64: with the unit-gain rescaling below the signal stays
# near 1, and on this project's CPU machine float64 gave the same block ranking (relative
# score differences <= 4e-7 on ResNet-56, a torchvision-style ResNet-50 and MobileNetV2).
# float32 took 0.05 s against 0.09 s on MobileNetV2 at 32x32 on an idle 2-core CPU, and
# 2.9 s against 37 s while other jobs loaded the machine.
SYNFLOW_DTYPE = torch.float32


@register_criterion(
    "synflow", needs_data=False, description="data-free synaptic flow: |w| network, all-ones input"
)
def synflow_scores(
    model: nn.Module, batches: MicroBatches | None, seed: int
) -> dict[str, torch.Tensor]:
    """SynFlow (Tanaka et al. 2020): |dR/dw * w| with R the sum of outputs of the |w| network.

    Runs in eval mode (batch norm uses its initial statistics) on an all-ones input, as the
    original; the input shape is taken from `batch` when given.
    """
    model = model.to(SYNFLOW_DTYPE).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.abs_()
        # Rescale each |w| tensor to unit gain (fan-in sum of 1 per output): with |w| the
        # signal grows by a large factor per layer and a ResNet-56 overflows even float64. In a
        # plain chain a per-layer scale multiplies every score alike, so ranks are kept.
        for p in _scored_parameters(model).values():
            fan_in = p[0].numel()
            p.div_(p.mean() * fan_in)
    shape = (1, *batches.images.shape[1:]) if batches is not None else None
    if shape is None:
        raise ConfigError("synflow needs the input shape; pass an example batch")
    params = _scored_parameters(model)
    output = model(torch.ones(shape, dtype=SYNFLOW_DTYPE))
    grads = _grad(output.sum(), list(params.values()))
    return {
        name: (grad * p).abs().float().detach()
        for (name, p), grad in zip(params.items(), grads, strict=True)
    }


# Random scores whole blocks directly (one uniform draw per block, see score_blocks): a
# per-weight random score summed over a block would favour big blocks.
add_criterion(Criterion("random", None, False, "uniform random score per block"))


def _grad(
    output: torch.Tensor, weights: list[torch.Tensor], create_graph: bool = False
) -> list[torch.Tensor]:
    """Gradients, with zeros for weights the forward did not use (an auxiliary head, a
    branch switched off): such a weight has no effect on the loss, so its saliency is 0."""
    grads = torch.autograd.grad(output, weights, create_graph=create_graph, allow_unused=True)
    return [torch.zeros_like(w) if g is None else g for g, w in zip(grads, weights, strict=True)]


def _require_batch(batch: _B | None, name: str) -> _B:
    if batch is None:
        raise ConfigError(f"criterion '{name}' needs a batch of images and labels")
    return batch


def _mean_loss_grad(
    model: nn.Module, batches: MicroBatches, weights: list[torch.Tensor], temperature: float = 1.0
) -> list[torch.Tensor]:
    """Gradient of the mean cross-entropy over all images, one micro-batch's graph at a time:
    each micro-batch's mean loss weighted by its share of the images (share 1.0 for a single
    micro-batch, which leaves the whole-batch result bit for bit)."""
    total = [torch.zeros_like(w) for w in weights]
    for images, labels, share in batches:
        logits = model(images)
        loss = F.cross_entropy(logits / temperature if temperature != 1.0 else logits, labels)
        for acc, grad in zip(total, _grad(loss * share, weights), strict=True):
            acc.add_(grad.detach())
    return total


@dataclass(frozen=True)
class BlockScores:
    """One score per block, and what a block's score is small or large against."""

    scores: dict[str, float]
    # The largest |score| of one scored parameter outside the scored blocks (stem, head,
    # downsampling, kept blocks), aggregated like a block; None for block-level criteria.
    # Block scores a million times below it mean the blocks barely count for the criterion.
    reference: float | None = None


def block_scores(
    model: nn.Module,
    blocks: list[BlockInfo],
    criterion: str,
    batch: Batch | None,
    *,
    aggregation: Aggregation = "sum",
    seed: int = 0,
    score_batch_size: int | None = None,
) -> dict[str, float]:
    """Score each block of `blocks` on the model's current weights (theta_0 at init);
    `score_blocks` with the scores alone."""
    return score_blocks(
        model,
        blocks,
        criterion,
        batch,
        aggregation=aggregation,
        seed=seed,
        score_batch_size=score_batch_size,
    ).scores


def score_blocks(
    model: nn.Module,
    blocks: list[BlockInfo],
    criterion: str,
    batch: Batch | None,
    *,
    aggregation: Aggregation = "sum",
    seed: int = 0,
    score_batch_size: int | None = None,
) -> BlockScores:
    """Score each block of `blocks` on the model's current weights (theta_0 at init).

    `score_batch_size`: SNIP and GraSP walk `batch` this many images at a time (None: all at
    once); see compressor/prune/micro_batches.py.

    A weight-level criterion runs on a deep copy, so the caller's model — theta_0 — is
    untouched (batch norm in train mode would otherwise update its running statistics). A
    block-level criterion (hrank, expectabs, kl, pls, cka) runs the model itself in eval
    mode without gradients, which changes nothing; `aggregation` does not apply to it.
    """
    if aggregation not in ("sum", "mean"):
        raise ConfigError(f"prune.aggregation: must be 'sum' or 'mean', got '{aggregation}'")
    chosen = get_criterion(criterion)
    if chosen.score_weights is None and chosen.score_blocks is None:
        return BlockScores(_random_block_scores(blocks, seed))
    if chosen.score_blocks is not None:
        torch.manual_seed(seed)
        try:
            scored = chosen.score_blocks(model, blocks, _require_batch(batch, criterion), seed)
        except CompressorError:
            raise
        except (RuntimeError, TypeError, ValueError) as exc:
            raise _cannot_score(criterion, exc) from exc
        return BlockScores(scored)
    scores = weight_scores(model, criterion, batch, seed=seed, score_batch_size=score_batch_size)
    result = {}
    for block in blocks:
        prefix = block.name + "."
        parts = [s for name, s in scores.items() if name.startswith(prefix)]
        if not parts:
            raise ConfigError(f"block '{block.name}' has no scored weights")
        result[block.name] = _aggregate(parts, aggregation)
    prefixes = tuple(block.name + "." for block in blocks)
    outside = [
        abs(_aggregate([s], aggregation))
        for name, s in scores.items()
        if not name.startswith(prefixes)
    ]
    return BlockScores(result, max(outside, default=None))


def _aggregate(parts: list[torch.Tensor], aggregation: Aggregation) -> float:
    total = torch.stack([s.double().sum() for s in parts]).sum()
    count = sum(s.numel() for s in parts)
    return float(total / count if aggregation == "mean" else total)


def weight_scores(
    model: nn.Module,
    criterion: str,
    batch: Batch | None,
    *,
    seed: int = 0,
    score_batch_size: int | None = None,
) -> dict[str, torch.Tensor]:
    """Per-weight scores {parameter name: tensor} of a weight-level criterion (snip, grasp,
    synflow), on a deep copy so the caller's model is untouched. Block scores and filter
    pruning at init (compressor/prune/filters.py) both aggregate these."""
    chosen = get_criterion(criterion)
    if chosen.score_weights is None:
        raise ConfigError(
            f"criterion '{criterion}' scores whole blocks, not weights; use one of "
            f"{', '.join(n for n, c in CRITERIA.items() if c.score_weights is not None)}"
        )
    batches = None if batch is None else MicroBatches(*batch, score_batch_size, criterion)
    torch.manual_seed(seed)
    try:
        work = copy.deepcopy(model)
        for p in work.parameters():  # frozen layers of the user's model are scored all the same
            p.requires_grad_(True)
        # GraSP differentiates twice; fused attention kernels have no second derivative.
        with sdpa_kernel(SDPBackend.MATH):
            return chosen.score_weights(work, batches, seed)
    except CompressorError:
        raise
    except (RuntimeError, TypeError, ValueError) as exc:
        raise _cannot_score(criterion, exc) from exc


def _cannot_score(criterion: str, exc: Exception) -> UnsupportedModelError:
    return UnsupportedModelError(
        f"criterion '{criterion}' cannot score this model: {type(exc).__name__}: "
        f"{(str(exc).strip().splitlines() or [''])[0]}; try another criterion"
    )


def _random_block_scores(blocks: list[BlockInfo], seed: int) -> dict[str, float]:
    """One uniform draw per block: block size must not bias a random baseline."""
    generator = torch.Generator().manual_seed(seed)
    draws = torch.rand(len(blocks), generator=generator, dtype=torch.float64)
    return {block.name: float(d) for block, d in zip(blocks, draws, strict=True)}
