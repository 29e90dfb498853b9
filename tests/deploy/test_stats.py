"""Latency statistics against values worked out by hand."""

from __future__ import annotations

import math

import pytest

from deploy.errors import DeployConfigError
from deploy.stats import latency_stats, run_to_run_cv


def test_four_timings_match_hand_computed_values() -> None:
    # 1, 2, 3, 4 ms for a batch of 2 images.
    stats = latency_stats([0.001, 0.002, 0.003, 0.004], batch=2)
    assert stats.iterations == 4
    assert stats.mean_ms == pytest.approx(2.5)
    assert stats.p50_ms == pytest.approx(2.5)
    # Linear interpolation: rank q * (n - 1) = 2.7, 2.85, 2.97 between 3 ms and 4 ms.
    assert stats.p90_ms == pytest.approx(3.7)
    assert stats.p95_ms == pytest.approx(3.85)
    assert stats.p99_ms == pytest.approx(3.97)
    # Sample std: sqrt((1.5^2 + 0.5^2 + 0.5^2 + 1.5^2) / 3) = sqrt(5 / 3).
    assert stats.std_ms == pytest.approx(math.sqrt(5 / 3))
    assert (stats.min_ms, stats.max_ms) == pytest.approx((1.0, 4.0))
    assert stats.cv == pytest.approx(math.sqrt(5 / 3) / 2.5)
    assert stats.throughput_ips == pytest.approx(800.0)  # 2 images / 2.5 ms


def test_tail_percentiles_of_one_to_hundred_ms() -> None:
    stats = latency_stats([i / 1000 for i in range(1, 101)], batch=1)
    assert stats.p50_ms == pytest.approx(50.5)
    assert stats.p90_ms == pytest.approx(90.1)
    assert stats.p99_ms == pytest.approx(99.01)
    assert stats.throughput_ips == pytest.approx(1000 / 50.5)


def test_single_timing_has_zero_spread() -> None:
    stats = latency_stats([0.010], batch=8)
    assert stats.std_ms == 0.0
    assert stats.cv == 0.0
    assert stats.p99_ms == pytest.approx(10.0)
    assert stats.throughput_ips == pytest.approx(800.0)


@pytest.mark.parametrize(
    ("seconds", "batch", "message"),
    [
        ([], 1, "at least one timing"),
        ([0.001, -0.001], 1, "finite and >= 0"),
        ([0.001, float("nan")], 1, "finite and >= 0"),
        ([0.001], 0, "batch must be an integer >= 1"),
    ],
)
def test_bad_input_is_a_clear_config_error(seconds: list[float], batch: int, message: str) -> None:
    with pytest.raises(DeployConfigError, match=message):
        latency_stats(seconds, batch=batch)


def test_run_to_run_cv_is_the_spread_of_the_run_medians() -> None:
    assert run_to_run_cv([1.0, 2.0, 3.0]) == pytest.approx(0.5)  # std 1 (ddof=1), mean 2
    assert run_to_run_cv([2.0, 2.0]) == 0.0
    assert run_to_run_cv([2.0]) is None  # one run: no run-to-run variation to speak of
    with pytest.raises(DeployConfigError, match="finite"):
        run_to_run_cv([1.0, float("nan")])
