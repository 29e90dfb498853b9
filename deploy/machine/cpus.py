"""CPU threads and affinity: how many threads a CPU backend gets, and pinning to CPUs.

A CPU latency means little without the thread count behind it, and a library's "default"
differs between libraries (onnxruntime: physical cores; torch: its own heuristic) and
between versions, so CPU runners always get an explicit count: by default the CPUs this
process may run on (`os.sched_getaffinity`, which honours `taskset` and container cpusets).
Pinning (`--cpus 0-3`) keeps the scheduler from moving the timed threads between cores and
away from cores another job is using; it applies to every thread the process already has
(Linux `sched_setaffinity` pins one thread at a time) and threads started later inherit it.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from pathlib import Path

from deploy.errors import DeployConfigError


def usable_cpus() -> tuple[int, ...]:
    """CPU numbers this process may run on; 0..cpu_count-1 where affinity is unknown."""
    if hasattr(os, "sched_getaffinity"):
        return tuple(sorted(os.sched_getaffinity(0)))
    return tuple(range(os.cpu_count() or 1))


def default_threads() -> int:
    """Intra-op threads a CPU backend gets when none are asked for: one per usable CPU."""
    return max(1, len(usable_cpus()))


def parse_cpu_list(text: str) -> tuple[int, ...]:
    """ "0-3,6" -> (0, 1, 2, 3, 6), the syntax of `taskset -c` and /sys cpu lists."""
    cpus: set[int] = set()
    for part in text.split(","):
        part = part.strip()
        first, dash, last = part.partition("-")
        if not first.isdigit() or (dash and not last.isdigit()):
            raise DeployConfigError(
                f"--cpus: expected CPU numbers and ranges such as 0-3,6, got {part!r} in {text!r}"
            )
        low, high = int(first), int(last) if dash else int(first)
        if high < low:
            raise DeployConfigError(f"--cpus: range {part!r} runs backwards; write {high}-{low}")
        cpus.update(range(low, high + 1))
    return tuple(sorted(cpus))


def format_cpu_list(cpus: Iterable[int]) -> str:
    """(0, 1, 2, 3, 6) -> "0-3,6"; the inverse of `parse_cpu_list`."""
    ordered = sorted(set(cpus))
    ranges: list[str] = []
    start = previous = None
    for cpu in [*ordered, None]:
        if start is not None and (cpu is None or cpu != previous + 1):
            ranges.append(str(start) if start == previous else f"{start}-{previous}")
            start = None
        if cpu is not None and start is None:
            start = cpu
        previous = cpu
    return ",".join(ranges)


def online_cpus(sysfs: Path = Path("/sys")) -> tuple[int, ...]:
    """CPUs the machine has online (/sys/devices/system/cpu/online), whoever may use them."""
    try:
        return parse_cpu_list((sysfs / "devices/system/cpu/online").read_text().strip())
    except (OSError, DeployConfigError):
        return tuple(range(os.cpu_count() or 1))


def pin_process(cpus: Iterable[int], task_dir: Path = Path("/proc/self/task")) -> tuple[int, ...]:
    """Restrict every thread of this process to `cpus`; returns the CPUs now usable.

    The set may be wider than the current affinity (the OS allows that unless a cgroup
    cpuset forbids it). Raises DeployConfigError naming the CPUs there are when one of `cpus`
    does not exist or the OS refuses, and where the OS has no affinity call (macOS).
    """
    wanted = set(cpus)
    if not hasattr(os, "sched_setaffinity"):
        raise DeployConfigError("--cpus: this OS cannot pin threads to CPUs (Linux only)")
    present = set(online_cpus())
    missing = sorted(wanted - present)
    if missing:
        raise DeployConfigError(
            f"--cpus: this machine has no online CPU {format_cpu_list(missing)}; "
            f"it has {format_cpu_list(present)}"
        )
    try:
        os.sched_setaffinity(0, wanted)
    except OSError as exc:  # outside the cgroup's cpuset
        raise DeployConfigError(
            f"--cpus: the OS refused to pin to CPU {format_cpu_list(wanted)} "
            f"({exc.strerror or exc}); this process may use CPU {format_cpu_list(usable_cpus())} "
            "(a container's cpuset or taskset limits it)"
        ) from exc
    try:
        thread_ids = [int(entry.name) for entry in task_dir.iterdir() if entry.name.isdigit()]
    except OSError:  # no /proc: the calling thread is pinned, new threads inherit it
        thread_ids = []
    for thread_id in thread_ids:
        try:
            os.sched_setaffinity(thread_id, wanted)
        except OSError:  # the thread ended meanwhile
            continue
    return usable_cpus()
