"""Warnings that say when a benchmark's numbers should not be trusted as they stand.

trtexec prints a warning when the GPU compute time varies by more than a few percent; a user
comparing two models needs the same honesty from us, and more, since CPU timings on a shared
machine go wrong in more ways. `timing_warnings` reads the records (per-iteration CV,
run-to-run CV of the per-run medians) and the machine samples `deploy.machine.state` took
around the timed runs (load average, other processes' and the hypervisor's share of our
CPUs, thermal trip points, clocks below their ceiling) and returns one line per problem,
saying what was seen, the limit, and what to do. No warning means no evidence of trouble,
not proof of a quiet machine: a sensor that cannot be read says nothing.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

from deploy.config_fields import check_fields, real
from deploy.errors import DeployConfigError
from deploy.machine.cpus import format_cpu_list
from deploy.machine.state import ClockReading, MachineSample
from deploy.records import LatencyRecord

# A clock this far below its ceiling counts as below it (sysfs rounds some rates).
_CLOCK_TOLERANCE = 0.98
# /proc/stat counts in clock ticks (10 ms): judge other processes' share only over a window
# with at least this many CPU-seconds, where a few ticks of rounding do not matter.
_MIN_CPU_SECONDS = 1.0


@dataclass(frozen=True, kw_only=True)
class StabilityLimits:
    """Thresholds above which a warning is raised; all are fractions (0.10 = 10 %)."""

    # Per-iteration std/mean of one record.
    max_cv: float = field(default=0.10, metadata=real(0, noun="a finite number"))
    # std/mean of the per-run medians: medians should agree to a few percent on a quiet box.
    max_run_cv: float = field(default=0.05, metadata=real(0, noun="a finite number"))
    # 1-minute load average besides this benchmark's own threads, per online CPU.
    max_load: float = field(default=0.5, metadata=real(0, noun="a finite number"))
    # Share of the CPU time of the CPUs we ran on that other processes (or the hypervisor,
    # as steal time) took while timing.
    max_other_cpu: float = field(default=0.10, metadata=real(0, noun="a finite number"))

    def __post_init__(self) -> None:
        check_fields(self, DeployConfigError, "{name} ")


def timing_warnings(
    records: Sequence[LatencyRecord],
    samples: Sequence[MachineSample] = (),
    limits: StabilityLimits | None = None,
) -> list[str]:
    """Every warning about `records` and the machine `samples` taken while they were timed."""
    limits = limits or StabilityLimits()
    on_gpu = any(not r.device.lower().startswith("cpu") for r in records)
    return [
        *record_warnings(records, limits),
        *load_warnings(samples, limits),
        *throttle_warnings(samples, gpu=on_gpu),
    ]


def record_warnings(records: Sequence[LatencyRecord], limits: StabilityLimits) -> list[str]:
    """Per record: single iterations too noisy, or medians that moved between runs."""
    lines = []
    for r in records:
        label = f"{r.model} ({r.backend} {r.device} {r.precision}, batch {r.batch})"
        if r.cv > limits.max_cv:
            lines.append(
                f"{label}: per-iteration CV {r.cv:.1%} is above {limits.max_cv:.1%} "
                f"(p50 {r.p50_ms:.3f} ms, p99 {r.p99_ms:.3f} ms, max {r.max_ms:.3f} ms): single "
                "iterations were disturbed, so the tails are not the model's; compare medians"
            )
        if r.run_cv is not None and r.run_cv > limits.max_run_cv:
            medians = ", ".join(f"{m:.3f}" for m in r.run_medians_ms or ())
            lines.append(
                f"{label}: run-to-run CV {r.run_cv:.1%} is above {limits.max_run_cv:.1%} "
                f"(medians of {r.runs} runs: {medians} ms): the median drifted while timing; "
                "speed-ups smaller than that are noise"
            )
    return lines


def load_warnings(samples: Sequence[MachineSample], limits: StabilityLimits) -> list[str]:
    """Machine busy: load average before/after timing, and other processes during it."""
    windows = _timed_windows(samples)
    lines = []
    worst: tuple[float, float, float, int] | None = None  # per CPU, load, own CPUs, online
    for start, end in windows:
        own_cpus = _own_cpus(start, end)
        for sample in (start, end):
            if sample.load_1min is None:
                continue
            others = max(0.0, sample.load_1min - own_cpus)
            per_cpu = others / max(1, sample.online_cpus)
            if worst is None or per_cpu > worst[0]:
                worst = (per_cpu, sample.load_1min, own_cpus, sample.online_cpus)
    if worst is not None and worst[0] > limits.max_load:
        per_cpu, load, own_cpus, online = worst
        lines.append(
            f"machine busy: 1-minute load average {load:.2f} on {online} CPUs around the timed "
            f"runs, {per_cpu:.2f} per CPU besides this benchmark's own {own_cpus:.1f} busy "
            f"CPUs (limit {limits.max_load:.2f}): other work competes for the CPUs; stop it "
            "or re-run when the machine is idle (the load average lags by about a minute)"
        )
    lines += _other_cpu_warnings(windows, limits)
    return lines


def throttle_warnings(samples: Sequence[MachineSample], *, gpu: bool) -> list[str]:
    """Thermal zones at a throttling trip point; clocks below their ceiling (Jetson)."""
    lines = []
    hottest: dict[str, tuple[float, float, str]] = {}
    for sample in samples:
        for zone in sample.thermal:
            if zone.temp_c >= zone.trip_c and zone.temp_c > hottest.get(zone.zone, (-1e9,))[0]:
                hottest[zone.zone] = (zone.temp_c, zone.trip_c, zone.trip_type)
    for name, (temp, trip, trip_type) in sorted(hottest.items()):
        lines.append(
            f"thermal throttling: zone {name} reached {temp:.1f} C while timing, at or above "
            f"its {trip_type} trip point {trip:.1f} C, where the kernel lowers clocks: the "
            "numbers are those of a throttled device; let it cool, improve cooling, re-run"
        )
    slowest: dict[str, ClockReading] = {}
    for sample in samples:
        for clock in sample.clocks:
            if clock.domain.startswith("GPU") and not gpu:
                continue
            if clock.current_mhz < _CLOCK_TOLERANCE * clock.max_mhz:
                kept = slowest.get(clock.domain)
                if kept is None or clock.current_mhz < kept.current_mhz:
                    slowest[clock.domain] = clock
    gpus = [c for c in slowest.values() if c.domain.startswith("GPU")]
    cpus = [c for c in slowest.values() if c.domain.startswith("CPU ")]
    advice = (
        "clocks were throttled or are not locked; run `sudo jetson_clocks` (and a MAXN power "
        "mode for peak numbers), keep the board cool, re-run"
    )
    for clock in sorted(gpus, key=lambda c: c.domain):
        lines.append(
            f"{clock.domain} ran at {clock.current_mhz:.0f} MHz while timing, below its "
            f"{clock.max_mhz:.0f} MHz ceiling: {advice}"
        )
    if cpus:
        lowest = min(cpus, key=lambda c: c.current_mhz / c.max_mhz)
        numbers = format_cpu_list(int(c.domain.split()[1]) for c in cpus)
        lines.append(
            f"CPU {numbers} ran below their clock ceiling while timing (lowest: "
            f"{lowest.domain} at {lowest.current_mhz:.0f} of {lowest.max_mhz:.0f} MHz): "
            f"{advice}"
        )
    return lines


def _timed_windows(samples: Sequence[MachineSample]) -> list[tuple[MachineSample, MachineSample]]:
    """(start, end) sample pairs of each timed phase, in order."""
    windows = []
    start = None
    for sample in samples:
        if sample.phase == "start":
            start = sample
        elif sample.phase == "end" and start is not None:
            windows.append((start, sample))
            start = None
    return windows


def _own_cpus(start: MachineSample, end: MachineSample) -> float:
    """CPUs this process kept busy on average between two samples."""
    wall = end.monotonic_s - start.monotonic_s
    return max(0.0, end.own_cpu_s - start.own_cpu_s) / wall if wall > 0 else 0.0


def _other_cpu_warnings(
    windows: Sequence[tuple[MachineSample, MachineSample]], limits: StabilityLimits
) -> list[str]:
    """Other processes' and the hypervisor's share of our CPUs, over all timed windows."""
    capacity = others = steal = 0.0
    cpus: set[int] = set()
    for start, end in windows:
        if None in (start.busy_cpu_s, end.busy_cpu_s, start.steal_cpu_s, end.steal_cpu_s):
            continue
        wall = end.monotonic_s - start.monotonic_s
        capacity += wall * len(start.usable_cpus)
        own = end.own_cpu_s - start.own_cpu_s
        others += max(0.0, (end.busy_cpu_s - start.busy_cpu_s) - own)
        steal += max(0.0, end.steal_cpu_s - start.steal_cpu_s)
        cpus.update(start.usable_cpus)
    if capacity < _MIN_CPU_SECONDS:
        return []
    lines = []
    where = f"CPU {format_cpu_list(cpus)}"
    if others / capacity > limits.max_other_cpu:
        lines.append(
            f"machine busy: other processes used {others / capacity:.0%} of the time of "
            f"{where} while timing (limit {limits.max_other_cpu:.0%}): they competed with the "
            "timed threads; stop them, or pin the benchmark to idle CPUs with --cpus"
        )
    if steal / capacity > limits.max_other_cpu:
        lines.append(
            f"hypervisor steal: {steal / capacity:.0%} of the time of {where} went to other "
            f"virtual machines while timing (limit {limits.max_other_cpu:.0%}): a shared VM "
            "gives no steady timings; use dedicated cores or bare metal for numbers to publish"
        )
    return lines
