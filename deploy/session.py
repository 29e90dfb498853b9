"""One benchmark session, as `deploy bench` and `compressor run` both run it.

The device's fingerprint is taken once, before anything is timed (what the numbers are
about: CPU, GPU, threads, pinned cores, clocks); the machine is sampled around every timed
phase (`monitor`); at the end the records get the warnings they earned (noisy or drifting
timings, a busy or throttled machine: `deploy.machine.stability`) and are written with them,
atomically, to one result file. Timing itself is the caller's: one runner, variants side by
side, TensorRT engines or trtexec.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from deploy.machine.fingerprint import device_fingerprint
from deploy.machine.stability import StabilityLimits, timing_warnings
from deploy.machine.state import MachineMonitor
from deploy.records import LatencyRecord
from deploy.results.files import write_results


@dataclass(frozen=True)
class SessionResult:
    path: Path  # the result file written
    warnings: list[str]  # also in the file, under "warnings"


@dataclass
class BenchSession:
    """`session = BenchSession(threads)`, time with `monitor=session.monitor`, then
    `session.finish(records, path)`."""

    threads: int | None  # the CPU runners' thread count, which the fingerprint records
    pinned_cpus: str | None = None  # the cores the process is pinned to ("0-3"), if any
    limits: StabilityLimits = field(default_factory=StabilityLimits)
    monitor: MachineMonitor = field(default_factory=MachineMonitor)
    fingerprint: dict[str, Any] = field(init=False)

    def __post_init__(self) -> None:
        self.fingerprint = device_fingerprint(threads=self.threads, pinned_cpus=self.pinned_cpus)

    def finish(self, records: Sequence[LatencyRecord], path: Path) -> SessionResult:
        """The records' warnings, and the result file written with both."""
        warnings = timing_warnings(records, self.monitor.samples, self.limits)
        return SessionResult(write_results(path, records, self.fingerprint, warnings), warnings)
