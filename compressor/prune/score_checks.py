"""Can the block scores choose? Warnings for scores that cannot separate the blocks.

A criterion always returns numbers, and the ranking always removes some blocks, even when
the numbers say nothing: every score equal (timm's ResNets zero-initialise each block's last
batch norm, so at init every branch gradient, and every SNIP/GraSP/SynFlow block score, is
exactly 0), a tie at the cut, NaN/inf, or scores so small that they are rounding noise next
to the rest of the network (ConvNeXt's layer scale 1e-6 switches its branches off at init:
GraSP block scores ~1e-11, SNIP ~1e-5 against ~10 for the stem and head). The blocks removed
are then decided by forward order, noise or a bias of the criterion, and the user should
know: on ConvNeXt-atto GraSP's three lowest blocks changed with the scoring images (three
seeds, three different cuts), SNIP's stayed the earliest blocks whatever the images. The
warnings go to prune.json (`warnings`) and to the console; pruning still runs, since a user
may want such a cut on purpose.

Thresholds, measured with GraSP/SNIP/SynFlow at init on torchvision ResNet-18/50,
MobileNetV2, timm ResNet-18, ConvNeXt-atto and the zoo's ResNet-56 (see the tests):
- NEAR_ZERO: the largest |block score| against the largest |score| of one scored parameter
  outside the blocks (stem, head, downsampling). Healthy models gave ratios of 1e-3 and
  above; ConvNeXt gave 1e-6 (SNIP), 1e-8 (SynFlow) and 1e-8 (GraSP). 1e-4 sits a decade from
  both; the reference has the scale of the same criterion, so no absolute floor is needed
  (GraSP's scale alone moves with the temperature and the loss).
- TIE: two scores closer than 1e-6 of the larger one are equal as far as float32 per-weight
  scores can tell (their relative rounding is ~1e-7 per value); every score within 1e-6 of
  the largest |score| of each other is "all equal" (all zero included). Relative to the pair,
  not to the largest: MobileNetV2's early blocks get SynFlow scores near 5e-8 beside 3e-2 for
  the last ones, yet differ from each other by percents, a real order.
"""

from __future__ import annotations

import math

from compressor.prune.criteria import BlockScores

NEAR_ZERO = 1e-4
TIE = 1e-6
# What to do instead. Not "another criterion at init": where the branches start switched off,
# SNIP, GraSP and SynFlow all fall below NEAR_ZERO (ConvNeXt: 6e-7, 3e-8, 4e-8).
ALTERNATIVE = (
    "prune from pretrained weights (model.weights) or after training, or use criterion: "
    "random for an honest baseline"
)


def score_warnings(
    scored: BlockScores,
    order: list[str],
    removed: int,
    criterion: str,
    *,
    branch_ratio: float | None = None,
) -> list[str]:
    """One-line warnings about `scored` (blocks in forward `order`; `removed` of them cut).

    `branch_ratio`: the largest |branch| / |input| of the blocks (block_criteria.branch_ratios),
    measured by the caller when a warning fires, to name the likely cause.
    """
    values = [scored.scores[name] for name in order]
    if not 0 < removed < len(values) or criterion == "random":
        return []  # nothing to choose: every block stays, or every block goes
    bad = [name for name, v in zip(order, values, strict=True) if not math.isfinite(v)]
    if bad:
        return [
            f"{len(bad)} of {len(values)} {criterion} block scores are NaN or infinite "
            f"({', '.join(bad[:3])}{', ...' if len(bad) > 3 else ''}): the ranking is "
            "meaningless; use another criterion (synflow, snip, random) or check the model's "
            "initialisation"
        ]
    largest = max(abs(v) for v in values)
    cause = _cause(branch_ratio)
    if max(values) - min(values) <= TIE * largest:
        return [
            f"every {criterion} block score is {values[0]:.3g}{cause}: the scores cannot "
            f"separate the blocks and the {removed} removed are simply the first in forward "
            f"order; {ALTERNATIVE}"
        ]
    warnings = []
    if scored.reference and largest < NEAR_ZERO * scored.reference:
        warnings.append(
            f"every {criterion} block score is below {largest:.2g}, "
            f"{largest / scored.reference:.1g} of the largest score outside the blocks "
            f"({scored.reference:.2g}){cause}: the blocks barely count for {criterion} at these "
            f"weights, so the ranking says little about what they do; {ALTERNATIVE}"
        )
    ranked = sorted(range(len(values)), key=lambda i: (values[i], i))
    last, first_kept = ranked[removed - 1], ranked[removed]
    if values[first_kept] - values[last] <= TIE * max(abs(values[first_kept]), abs(values[last])):
        warnings.append(
            f"{criterion} scores tie at the cut: '{order[last]}' (removed) and "
            f"'{order[first_kept]}' (kept) both score {values[last]:.6g}, so forward "
            "order chose between them; use another criterion or more scoring images "
            "(prune.samples_per_class)"
        )
    return warnings


def _cause(branch_ratio: float | None) -> str:
    if branch_ratio is None or branch_ratio > 1e-3:
        return ""
    return (
        f" (every block's residual branch adds at most {branch_ratio:.1g} of its input at "
        "these weights: a layer scale such as ConvNeXt's 1e-6 or a zero-initialised last "
        "norm switches the branches off)"
    )
