"""Which blocks to remove so the predicted latency meets a budget while the most saliency
stays: a 0/1 knapsack, solved exactly by dynamic programming over the latency to save.

Kept saliency is largest when the removed saliency is smallest, so this is a minimum-weight
cover: remove blocks whose costs add up to at least `need_ms` (the dense latency less the
budget), with the least total score. Scores are shifted to start just above zero first (a
criterion's scores may be negative; removing a block never *adds* saliency, and the small
floor makes an extra removal never free). Costs are counted in units of need/RESOLUTION,
rounded down, so a chosen set always saves at least `need_ms` by the table; the exact
optimum is over those units (a few hundred states per block for the block counts of real
networks, 15 to 54).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

from compressor.errors import UnsupportedModelError

RESOLUTION = 10_000  # units the latency to save is counted in


def cover_budget(
    scores: Mapping[str, float],
    costs_ms: Mapping[str, float],
    need_ms: float,
    *,
    candidates: Sequence[str],
    forced: Sequence[str] = (),
) -> list[str]:
    """The blocks of `candidates` to remove, besides `forced` (already removed, their costs
    counted), with the least total score whose costs add up to at least `need_ms`.

    Returned in forward order of `candidates`, `forced` first. Raises UnsupportedModelError
    when even every candidate is not enough.
    """
    forced_set = set(forced)
    free = [name for name in candidates if name not in forced_set]
    need = need_ms - sum(costs_ms[name] for name in forced)
    if need <= 0:
        return list(forced)
    if sum(costs_ms[name] for name in free) < need:
        raise UnsupportedModelError(
            f"the latency budget cannot be met by removing blocks: all {len(candidates)} "
            f"removable blocks together save {sum(costs_ms[n] for n in candidates):.4g} ms by "
            f"the table, {need_ms:.4g} ms are needed; raise the budget, allow more blocks "
            "(prune.include/exclude) or shrink channels too"
        )
    low = min(scores[name] for name in free)
    spread = max(scores[name] for name in free) - low
    floor = 1e-3 * spread if spread > 0 else 1.0
    weight = {name: scores[name] - low + floor for name in free}
    unit = need / RESOLUTION
    units = {name: math.floor(costs_ms[name] / unit) for name in free}
    chosen = _min_weight_cover(free, weight, units, RESOLUTION)
    return list(forced) + [name for name in free if name in chosen]


def _min_weight_cover(
    names: list[str], weight: Mapping[str, float], units: Mapping[str, int], need: int
) -> set[str]:
    """best[c]: least weight covering at least c units (c capped at `need`), item by item."""
    best = [0.0] + [math.inf] * need
    took: list[list[bool]] = []
    for name in names:
        size, w = min(units[name], need), weight[name]
        row = [False] * (need + 1)
        new = best[:]
        for covered in range(need + 1):
            before = max(0, covered - size)
            if best[before] + w < new[covered]:
                new[covered] = best[before] + w
                row[covered] = True
        best = new
        took.append(row)
    if math.isinf(best[need]):  # units rounded down below the need: every block then
        return set(names)
    chosen, covered = set(), need
    for index in range(len(names) - 1, -1, -1):
        if took[index][covered]:
            chosen.add(names[index])
            covered = max(0, covered - min(units[names[index]], need))
    return chosen


__all__ = ["RESOLUTION", "cover_budget"]
