"""What the machine was doing while a benchmark timed: load, other processes, clocks, heat.

A latency taken while another job ran, while the hypervisor stole CPU time, or while a hot
Jetson throttled its clocks is a number about that moment, not about the model. The
benchmark samples the machine before, between and after its timed runs
(`benchmark_side_by_side(..., monitor=MachineMonitor())`), and `deploy.machine.stability` turns the
samples into warnings. Everything is read from files any user may read, so nothing needs
root:

- `os.getloadavg()`: runnable tasks, averaged over a minute, for the whole machine;
- /proc/stat: CPU time spent busy and stolen per CPU, against this process's own CPU time
  (`os.times`, threads and waited-for children included), so other processes' share of the
  CPUs we ran on is known for the timed window itself;
- sysfs thermal zones: temperature against the zone's passive / hot / critical trip point
  (where the kernel starts to throttle), on any Linux;
- sysfs clock frequencies on boards with an integrated GPU (Jetson): the GPU's devfreq
  `cur_freq` / `max_freq` and each usable CPU's cpufreq `scaling_cur_freq` /
  `scaling_max_freq`. Skipped elsewhere: an x86 CPU below its turbo ceiling under load is
  normal, not a sign of trouble.

A file that is missing or unreadable gives None or an empty tuple, never an error; tests
point `sysfs_root` / `proc_root` at a fake tree.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from pathlib import Path

from deploy.machine.cpus import usable_cpus

# devfreq device-tree node names of Jetson integrated GPUs (Nano/TX1 gm20b, TX2 gp10b,
# Xavier gv11b, Orin ga10b; "gpu" on boards whose node is named generically), as jetson-stats
# looks them up.
INTEGRATED_GPU_NODES = frozenset({"gm20b", "gp10b", "gv11b", "ga10b", "gpu"})
# Trip point types at which the kernel lowers clocks ("active" ones only start fans).
THROTTLING_TRIPS = ("passive", "hot", "critical")
# Fields of a /proc/stat cpu line: user nice system idle iowait irq softirq steal.
_BUSY_FIELDS = (0, 1, 2, 5, 6)
_STEAL_FIELD = 7


@dataclass(frozen=True, kw_only=True)
class ClockReading:
    """One clock domain: what it ran at and the ceiling it may run at now (MHz)."""

    domain: str  # "GPU 17000000.ga10b", "CPU 3"
    current_mhz: float
    max_mhz: float


@dataclass(frozen=True, kw_only=True)
class ThermalReading:
    """One thermal zone with the lowest trip point at which the kernel throttles."""

    zone: str  # the zone's type, e.g. "gpu-thermal", or its directory name
    temp_c: float
    trip_c: float
    trip_type: str  # passive, hot or critical


@dataclass(frozen=True, kw_only=True)
class MachineSample:
    """The machine at one moment; `phase` is "start", "during" or "end" of a timed phase."""

    phase: str
    monotonic_s: float
    load_1min: float | None  # None where the OS has no load average
    online_cpus: int
    usable_cpus: tuple[int, ...]
    own_cpu_s: float  # this process's user + system CPU seconds (threads, waited children)
    busy_cpu_s: float | None  # busy CPU seconds summed over `usable_cpus` (/proc/stat)
    steal_cpu_s: float | None  # time the hypervisor gave those CPUs to other guests
    clocks: tuple[ClockReading, ...] = ()
    thermal: tuple[ThermalReading, ...] = ()


class MachineMonitor:
    """Takes `MachineSample`s on request and keeps them in `samples`, in order.

    Paths to read are found once, at construction (trip points do not move), so a sample
    between two timed runs costs a few dozen small file reads.
    """

    def __init__(
        self,
        *,
        sysfs_root: Path = Path("/sys"),
        proc_root: Path = Path("/proc"),
        check_clocks: bool | None = None,
    ) -> None:
        self.samples: list[MachineSample] = []
        self._proc_stat = Path(proc_root) / "stat"
        self._sysfs = Path(sysfs_root)
        self._gpus = _integrated_gpus(self._sysfs)
        # None: read clocks where an integrated GPU says this is a Jetson-like board.
        self._check_clocks = bool(self._gpus) if check_clocks is None else check_clocks
        self._zones = _thermal_zones(self._sysfs)
        self._ticks_per_s = _clock_ticks()

    def sample(self, phase: str) -> MachineSample:
        """Read the machine now and append the sample to `samples`."""
        cpus = usable_cpus()
        busy, steal = _proc_stat_seconds(self._proc_stat, cpus, self._ticks_per_s)
        times = os.times()
        sample = MachineSample(
            phase=phase,
            monotonic_s=time.monotonic(),
            load_1min=_load_1min(),
            online_cpus=os.cpu_count() or len(cpus),
            usable_cpus=cpus,
            own_cpu_s=times.user + times.system + times.children_user + times.children_system,
            busy_cpu_s=busy,
            steal_cpu_s=steal,
            clocks=self._clocks(cpus) if self._check_clocks else (),
            thermal=self._temperatures(),
        )
        self.samples.append(sample)
        return sample

    def _clocks(self, cpus: tuple[int, ...]) -> tuple[ClockReading, ...]:
        readings = []
        for name, folder in self._gpus.items():
            current, ceiling = _read_int(folder / "cur_freq"), _read_int(folder / "max_freq")
            if current is not None and ceiling:
                readings.append(
                    ClockReading(
                        domain=f"GPU {name}", current_mhz=current / 1e6, max_mhz=ceiling / 1e6
                    )
                )
        for cpu in cpus:
            folder = self._sysfs / f"devices/system/cpu/cpu{cpu}/cpufreq"
            current = _read_int(folder / "scaling_cur_freq")
            ceiling = _read_int(folder / "scaling_max_freq")
            if current is not None and ceiling:  # kHz
                readings.append(
                    ClockReading(
                        domain=f"CPU {cpu}", current_mhz=current / 1e3, max_mhz=ceiling / 1e3
                    )
                )
        return tuple(readings)

    def _temperatures(self) -> tuple[ThermalReading, ...]:
        readings = []
        for zone, temp_path, trip_c, trip_type in self._zones:
            millidegrees = _read_int(temp_path)
            if millidegrees is not None:
                reading = ThermalReading(
                    zone=zone, temp_c=millidegrees / 1000, trip_c=trip_c, trip_type=trip_type
                )
                readings.append(reading)
        return tuple(readings)


def _load_1min() -> float | None:
    try:
        return float(os.getloadavg()[0])
    except (OSError, AttributeError):  # no load average (Windows, some sandboxes)
        return None


def _clock_ticks() -> int:
    try:
        return int(os.sysconf("SC_CLK_TCK")) or 100
    except (ValueError, OSError, AttributeError):
        return 100  # USER_HZ on every Linux architecture that ships it


def _proc_stat_seconds(
    path: Path, cpus: tuple[int, ...], ticks_per_s: int
) -> tuple[float | None, float | None]:
    """Busy and stolen CPU seconds since boot, summed over `cpus`; (None, None) without it."""
    try:
        text = path.read_text()
    except OSError:
        return None, None
    wanted = {f"cpu{cpu}" for cpu in cpus}
    busy = steal = 0
    found = False
    for line in text.splitlines():
        name, _, rest = line.partition(" ")
        if name not in wanted:
            continue
        values = [int(v) for v in rest.split() if v.isdigit()]
        if len(values) <= _STEAL_FIELD:
            continue
        busy += sum(values[i] for i in _BUSY_FIELDS)
        steal += values[_STEAL_FIELD]
        found = True
    if not found:
        return None, None
    return busy / ticks_per_s, steal / ticks_per_s


def _integrated_gpus(sysfs: Path) -> dict[str, Path]:
    """devfreq folders of integrated GPUs by device name, e.g. {"17000000.ga10b": path}."""
    gpus = {}
    root = sysfs / "class/devfreq"
    try:
        entries = sorted(root.iterdir())
    except OSError:
        return {}
    for entry in entries:
        node = _read_text(entry / "device/of_node/name")
        name = (node or entry.name.rpartition(".")[2]).replace("\x00", "").strip()
        if name in INTEGRATED_GPU_NODES:
            gpus[entry.name] = entry
    return gpus


def _thermal_zones(sysfs: Path) -> list[tuple[str, Path, float, str]]:
    """(zone name, temp file, lowest throttling trip in C, its type) per zone that has one."""
    zones = []
    try:
        entries = sorted((sysfs / "class/thermal").glob("thermal_zone*"))
    except OSError:
        return []
    for entry in entries:
        trips = []
        for type_file in entry.glob("trip_point_*_type"):
            trip_type = (_read_text(type_file) or "").strip()
            millidegrees = _read_int(type_file.with_name(type_file.name[: -len("type")] + "temp"))
            # Disabled trips read as absurd values (e.g. 255 C or below zero).
            if trip_type in THROTTLING_TRIPS and millidegrees and 0 < millidegrees < 200_000:
                trips.append((millidegrees / 1000, trip_type))
        if trips:
            trip_c, trip_type = min(trips)
            zone = (_read_text(entry / "type") or entry.name).strip()
            zones.append((zone, entry / "temp", trip_c, trip_type))
    return zones


def _read_text(path: Path) -> str | None:
    try:
        return path.read_text(errors="replace")
    except OSError:  # absent, unreadable, a directory, or a sensor that errors out (EINVAL)
        return None


def _read_int(path: Path) -> int | None:
    text = _read_text(path)
    try:
        return int(text.strip()) if text is not None else None
    except ValueError:
        return None
