"""Latency statistics from per-iteration timings.

Tail percentiles (p90/p99) matter for deployment as much as the mean: a model that is fast on
average but stalls every hundredth frame misses a real-time budget. The coefficient of
variation tells whether a measurement is stable enough to compare with another.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass

import numpy as np

from deploy.errors import DeployConfigError


@dataclass(frozen=True, kw_only=True)
class LatencyStats:
    """Summary of one series of timed iterations; times in milliseconds."""

    iterations: int
    mean_ms: float
    p50_ms: float  # the median
    p90_ms: float
    p95_ms: float
    p99_ms: float
    std_ms: float  # sample standard deviation (ddof=1); 0 for a single iteration
    min_ms: float
    max_ms: float
    cv: float  # std / mean, unitless; a few percent is a quiet machine
    throughput_ips: float  # images per second = batch / mean seconds

    def to_dict(self) -> dict[str, float | int]:
        return asdict(self)


def latency_stats(seconds: Sequence[float], batch: int) -> LatencyStats:
    """Summarise per-iteration latencies given in seconds for a batch of `batch` images.

    Percentiles use numpy's default linear interpolation between order statistics.
    """
    if isinstance(batch, bool) or not isinstance(batch, int) or batch < 1:
        raise DeployConfigError(f"latency_stats: batch must be an integer >= 1, got {batch!r}")
    times = np.asarray(seconds, dtype=np.float64)
    if times.ndim != 1 or times.size == 0:
        raise DeployConfigError("latency_stats: need at least one timing, got none")
    if not np.all(np.isfinite(times)) or np.any(times < 0):
        raise DeployConfigError("latency_stats: timings must be finite and >= 0 seconds")
    ms = times * 1e3
    mean_ms = float(ms.mean())
    if mean_ms == 0.0:
        raise DeployConfigError("latency_stats: every timing is 0; the clock cannot resolve them")
    std_ms = float(ms.std(ddof=1)) if ms.size > 1 else 0.0
    p50, p90, p95, p99 = (float(v) for v in np.percentile(ms, [50, 90, 95, 99]))
    return LatencyStats(
        iterations=int(ms.size),
        mean_ms=mean_ms,
        p50_ms=p50,
        p90_ms=p90,
        p95_ms=p95,
        p99_ms=p99,
        std_ms=std_ms,
        min_ms=float(ms.min()),
        max_ms=float(ms.max()),
        cv=std_ms / mean_ms,
        throughput_ips=batch / (mean_ms / 1e3),
    )


def run_to_run_cv(medians_ms: Sequence[float]) -> float | None:
    """std / mean of the medians of independent timed runs; None for fewer than two runs.

    Per-iteration CV says how noisy single inferences are; this says how far a *median*
    moves when the same measurement is repeated (thermal drift, frequency changes, a
    background job starting), which is what decides whether two medians differ. Sample
    standard deviation (ddof=1), as in `latency_stats`.
    """
    values = np.asarray(medians_ms, dtype=np.float64)
    if values.size < 2:
        return None
    mean = float(values.mean())
    if not np.all(np.isfinite(values)) or mean <= 0:
        raise DeployConfigError("run_to_run_cv: medians must be finite and their mean > 0")
    return float(values.std(ddof=1)) / mean
