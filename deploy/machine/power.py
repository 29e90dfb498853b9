"""Power sampling while a timed loop runs, and the energy per inference it implies.

    sampler = open_power_sampler("auto")        # NVML on a GPU server, tegrastats on a Jetson
    sampler.start(); run_the_loop(); trace = sampler.stop()
    energy = energy_from_trace(trace, inferences=n_calls)   # energy.energy_mj_per_inference

Samplers are restartable (start/stop as often as needed) and context managers (`with sampler:`
leaves the trace in `sampler.last_trace`). Sources:

- NVML (`NvmlPowerSampler`): a thread polls nvmlDeviceGetPowerUsage (GPU board power, mW);
  where the GPU has the total-energy counter (Volta and later) its difference over the window
  is used instead, since it integrates in hardware and the polled value is itself a
  driver-side average on recent GPUs.
- tegrastats (`TegrastatsSampler`): the JetPack tool prints one line per interval with each
  power rail as "NAME current/average" in mW. The default rail VDD_IN is the module's input,
  so its energy is the whole module's (CPU, GPU, memory, SoC), not the GPU's alone.

pynvml (the nvidia-ml-py package) is imported lazily; this module needs only numpy.
"""

from __future__ import annotations

import contextlib
import re
import shutil
import subprocess
import tempfile
import threading
import time
from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import IO, Any

import numpy as np

from deploy.errors import (
    DeployConfigError,
    DeployError,
    DeployInputError,
    MeasurementError,
    MissingDependencyError,
)
from deploy.machine.nvml import import_nvml, nvml_gpu_count, shutdown_quietly

SOURCES = ("auto", "nvml", "tegrastats", "none")
DEFAULT_RAIL = "VDD_IN"
# What the board input rail is called where VDD_IN is absent (Jetson Nano, TX1: POM_5V_IN).
_BOARD_INPUT_ALIASES = ("POM_5V_IN",)
_TOO_SHORT_HINT = "time longer (raise --power-seconds or --min-seconds) or sample faster"

# "VDD_IN 5123mW/5123mW", JetPack 4 "POM_5V_IN 3000/3100", and the three-value form some newer
# releases print ("VDD_IN 9761mW/9761mW/9761mW"; the third value is ignored). The lookarounds
# keep "RAM 1923/3964MB", "SWAP 0/994MB", "IRAM 0/252kB" and "cpu@50C/50C" out.
_RAIL = re.compile(
    r"(?<![\w@/.])([A-Za-z][A-Za-z0-9_]*) (\d+(?:\.\d+)?)(?:mW)?/(\d+(?:\.\d+)?)(?:mW)?"
    r"(?:/\d+(?:\.\d+)?(?:mW)?)?(?![\w./%@])"
)


def parse_tegrastats_line(line: str) -> dict[str, tuple[float, float]]:
    """Power rails of one tegrastats line: {rail: (current_mw, average_mw)}.

    Lines without rails (tegrastats without root on some boards) give {}. A rail printed
    twice (AGX Orin's unconnected "NC" inputs) keeps its first reading.
    """
    rails: dict[str, tuple[float, float]] = {}
    for name, current, average in _RAIL.findall(line):
        rails.setdefault(name, (float(current), float(average)))
    return rails


@dataclass(frozen=True)
class PowerTrace:
    """Power samples over one sampling window (times from time.monotonic, in seconds)."""

    source: str  # e.g. "nvml:gpu0", "tegrastats:VDD_IN"
    timestamps_s: tuple[float, ...]
    watts: tuple[float, ...]
    interval_s: float  # the sampling interval asked for
    started_s: float | None = None  # the window the caller's loop ran in; None: the samples'
    stopped_s: float | None = None
    counter_energy_j: float | None = None  # hardware energy counter over the window, if any


@dataclass(frozen=True)
class Energy:
    """What a trace says about the loop it covered."""

    avg_power_w: float
    energy_j: float
    seconds: float
    energy_mj_per_inference: float  # one inference = one runner call (a whole batch)
    samples: int
    source: str


def energy_from_trace(trace: PowerTrace, inferences: int) -> Energy:
    """Energy of the window by the trapezoid rule over the samples, per inference.

    The mean power of the samples is applied to the whole window (started_s..stopped_s), which
    fills the edges before the first and after the last sample. Where the trace carries a
    hardware energy counter (NVML) that moved during the window, it is used instead.
    """
    if isinstance(inferences, bool) or not isinstance(inferences, int) or inferences < 1:
        raise DeployConfigError(f"inferences must be an integer >= 1, got {inferences!r}")
    times = np.asarray(trace.timestamps_s, dtype=np.float64)
    watts = np.asarray(trace.watts, dtype=np.float64)
    if times.shape != watts.shape:
        raise DeployInputError(
            f"power trace from {trace.source}: {times.size} timestamps but {watts.size} readings"
        )
    start = trace.started_s if trace.started_s is not None else (times[0] if times.size else 0.0)
    stop = trace.stopped_s if trace.stopped_s is not None else (times[-1] if times.size else 0.0)
    seconds = float(stop - start)
    if seconds < 2 * trace.interval_s:
        raise MeasurementError(
            f"power from {trace.source}: the window was {seconds * 1000:.0f} ms, shorter than two "
            f"sampling intervals ({2 * trace.interval_s * 1000:.0f} ms); {_TOO_SHORT_HINT}"
        )
    if trace.counter_energy_j:  # 0 means the counter did not tick in the window: integrate
        energy_j, source = float(trace.counter_energy_j), f"{trace.source} (energy counter)"
    else:
        if times.size < 2:
            raise MeasurementError(
                f"power from {trace.source}: {times.size} sample(s) in {seconds:.3f} s, at least "
                f"2 are needed to integrate; {_TOO_SHORT_HINT}"
            )
        if np.any(np.diff(times) < 0):
            raise DeployInputError(f"power trace from {trace.source}: timestamps go backwards")
        span = float(times[-1] - times[0])
        integral = float(np.sum((watts[1:] + watts[:-1]) * np.diff(times)) / 2)
        mean_w = integral / span if span > 0 else float(watts.mean())
        energy_j, source = mean_w * seconds, trace.source
    return Energy(
        avg_power_w=energy_j / seconds,
        energy_j=energy_j,
        seconds=seconds,
        energy_mj_per_inference=energy_j * 1000 / inferences,
        samples=int(times.size),
        source=source,
    )


class PowerSampler(ABC):
    """Samples power in the background between start() and stop(); restartable."""

    source: str
    interval_s: float

    def __init__(self) -> None:
        self.last_trace: PowerTrace | None = None
        self._samples: list[tuple[float, float]] = []
        self._lock = threading.Lock()
        self._halt = threading.Event()
        self._thread: threading.Thread | None = None
        self._error: BaseException | None = None
        self._started_s: float | None = None

    @property
    def running(self) -> bool:
        return self._thread is not None

    @abstractmethod
    def start(self) -> None:
        """Begin sampling; errors (missing tool, no GPU, no such rail) surface here."""

    @abstractmethod
    def stop(self) -> PowerTrace:
        """End sampling and return what was sampled since start()."""

    def __enter__(self) -> PowerSampler:
        self.start()
        return self

    def __exit__(self, exc_type: object, *exc_info: object) -> None:
        if not self.running:
            return
        if exc_type is None:
            self.last_trace = self.stop()
        else:  # the loop failed: stop quietly so its own error is the one reported
            with contextlib.suppress(DeployError):
                self.stop()

    def _begin(self, target: Any) -> None:
        if self.running:
            raise DeployConfigError(f"power sampler {self.source} is already running")
        self._samples, self._error, self._started_s = [], None, None
        self._halt.clear()
        self._thread = threading.Thread(target=target, name=f"power-{self.source}", daemon=True)
        self._thread.start()

    def _add(self, watts: float) -> None:
        with self._lock:
            self._samples.append((time.monotonic(), watts))

    def _finish(self, stopped_s: float, counter_energy_j: float | None = None) -> PowerTrace:
        self._halt.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
        self._thread = None
        with self._lock:
            samples = [s for s in self._samples if s[0] <= stopped_s]
        if self._error is not None:
            raise MeasurementError(f"power sampling from {self.source} failed: {self._error}")
        trace = PowerTrace(
            source=self.source,
            timestamps_s=tuple(t for t, _ in samples),
            watts=tuple(w for _, w in samples),
            interval_s=self.interval_s,
            started_s=self._started_s,
            stopped_s=stopped_s,
            counter_energy_j=counter_energy_j,
        )
        self.last_trace = trace
        return trace


class NvmlPowerSampler(PowerSampler):
    """GPU board power through NVML, polled every `interval_s` (NVML order = PCI order)."""

    def __init__(self, device_index: int = 0, interval_s: float = 0.01, *, nvml: Any = None):
        super().__init__()
        if isinstance(device_index, bool) or not isinstance(device_index, int) or device_index < 0:
            raise DeployConfigError(f"device_index must be an integer >= 0, got {device_index!r}")
        if not isinstance(interval_s, (int, float)) or not interval_s > 0:
            raise DeployConfigError(f"interval_s must be a number > 0, got {interval_s!r}")
        self.device_index, self.interval_s = device_index, float(interval_s)
        self.source = f"nvml:gpu{device_index}"
        self._nvml = nvml
        self._handle: Any = None
        self._energy_start_mj: float | None = None

    def start(self) -> None:
        nvml = self._nvml = self._nvml or import_nvml("power sampling through NVML")
        try:
            nvml.nvmlInit()
        except Exception as exc:  # NVMLError: driver not loaded, or no libnvidia-ml
            raise DeployInputError(
                f"NVML cannot start ({exc}): is the NVIDIA driver loaded (does `nvidia-smi` work)?"
            ) from exc
        try:
            self._handle = nvml.nvmlDeviceGetHandleByIndex(self.device_index)
        except Exception as exc:
            shutdown_quietly(nvml)
            raise DeployInputError(
                f"NVML has no GPU {self.device_index} ({exc}); `nvidia-smi -L` lists the GPUs"
            ) from exc
        self._energy_start_mj = self._energy_counter()
        self._begin(self._poll)
        self._started_s = time.monotonic()

    def stop(self) -> PowerTrace:
        if not self.running:
            raise DeployConfigError(f"power sampler {self.source} was not started")
        self._halt.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
        stopped = time.monotonic()
        end_mj = self._energy_counter()
        shutdown_quietly(self._nvml)
        counter = None
        if (
            self._energy_start_mj is not None
            and end_mj is not None
            and end_mj >= self._energy_start_mj
        ):
            counter = (end_mj - self._energy_start_mj) / 1000
        return self._finish(stopped, counter)

    def _poll(self) -> None:
        while not self._halt.is_set():
            try:
                self._add(self._nvml.nvmlDeviceGetPowerUsage(self._handle) / 1000)
            except Exception as exc:  # NVMLError mid-run (GPU lost): report it at stop()
                self._error = exc
                return
            self._halt.wait(self.interval_s)

    def _energy_counter(self) -> float | None:
        """Total energy since the driver loaded, in mJ; None where unsupported (pre-Volta)."""
        call = getattr(self._nvml, "nvmlDeviceGetTotalEnergyConsumption", None)
        try:
            return float(call(self._handle)) if call is not None else None
        except Exception:  # NVMLError_NotSupported
            return None


class TegrastatsSampler(PowerSampler):
    """A Jetson power rail from `tegrastats --interval <ms>`, parsed line by line in a thread.

    `rail` names one rail or several joined by '+', which are summed (on AGX Orin, which has
    no VDD_IN, "VDD_GPU_SOC+VDD_CPU_CV+VIN_SYS_5V0+VDDQ_VDD2_1V8AO" is the module's total).
    The default VDD_IN falls back to POM_5V_IN, the same input rail's name on Nano and TX1;
    the trace's source says which rail was read.
    """

    def __init__(
        self,
        interval_ms: int = 50,
        rail: str = DEFAULT_RAIL,
        command: str = "tegrastats",
        *,
        first_sample_timeout_s: float | None = None,
    ):
        super().__init__()
        if isinstance(interval_ms, bool) or not isinstance(interval_ms, int) or interval_ms < 1:
            raise DeployConfigError(f"interval_ms must be an integer >= 1, got {interval_ms!r}")
        rails = tuple(part.strip() for part in str(rail).split("+"))
        if not all(rails):
            raise DeployConfigError(f"rail must name tegrastats rails joined by '+', got {rail!r}")
        self.interval_ms, self.interval_s = interval_ms, interval_ms / 1000
        self.rails, self.command = rails, command
        self.source = f"tegrastats:{'+'.join(rails)}"
        self.first_sample_timeout_s = first_sample_timeout_s or max(3.0, 10 * self.interval_s)
        self._process: subprocess.Popen[str] | None = None
        self._stderr: IO[str] | None = None
        self._first = threading.Event()
        self._resolved: tuple[str, ...] | None = None

    def start(self) -> None:
        path = shutil.which(self.command)
        if path is None:
            raise MissingDependencyError(_tegrastats_missing(self.command))
        self._first.clear()
        self._resolved = None
        # A file, not a pipe (a full pipe would stall tegrastats); it lives until stop().
        self._stderr = tempfile.TemporaryFile(mode="w+")  # noqa: SIM115
        self._process = subprocess.Popen(
            [path, "--interval", str(self.interval_ms)],
            stdout=subprocess.PIPE,
            stderr=self._stderr,
            stdin=subprocess.DEVNULL,
            text=True,
            bufsize=1,
        )
        self._begin(self._read)
        self._first.wait(self.first_sample_timeout_s)
        with self._lock:
            got_one = bool(self._samples)
        if self._error is not None or not got_one:
            error = self._error
            stderr = self._end_process()
            self._thread = None
            if error is not None:
                raise error
            raise MeasurementError(
                f"{self.command} printed no power rails within {self.first_sample_timeout_s:g} s"
                + (f" (it said: {stderr})" if stderr else "")
                + "; on some boards tegrastats reads the power monitors only as root: run with sudo"
            )
        with self._lock:
            self._started_s = self._samples[0][0]

    def stop(self) -> PowerTrace:
        if not self.running:
            raise DeployConfigError(f"power sampler {self.source} was not started")
        stopped = time.monotonic()
        self._end_process()
        return self._finish(stopped)

    def _read(self) -> None:
        process = self._process
        assert process is not None and process.stdout is not None  # set by start()
        try:
            for line in process.stdout:
                if self._halt.is_set():
                    break
                rails = parse_tegrastats_line(line)
                if not rails:
                    continue
                if self._resolved is None:
                    try:
                        self._resolved = self._resolve(rails)
                    except DeployInputError as exc:
                        self._error = exc
                        return
                if all(name in rails for name in self._resolved):
                    self._add(sum(rails[name][0] for name in self._resolved) / 1000)
                    self._first.set()
        finally:
            self._first.set()  # wake start() also when tegrastats exits or the rail is missing

    def _resolve(self, rails: dict[str, tuple[float, float]]) -> tuple[str, ...]:
        if all(name in rails for name in self.rails):
            return self.rails
        if self.rails == (DEFAULT_RAIL,):
            for alias in _BOARD_INPUT_ALIASES:
                if alias in rails:
                    self.source = f"tegrastats:{alias}"
                    return (alias,)
        connected = [name for name in rails if name != "NC"]
        raise DeployInputError(
            f"tegrastats shows no rail {'+'.join(self.rails)} on this board (its rails: "
            f"{', '.join(rails)}); pass one of them as the rail, or several joined by '+' to sum "
            f"them, e.g. {'+'.join(connected)}"
        )

    def _end_process(self) -> str:
        """Stop tegrastats and the reader; returns the first line tegrastats wrote to stderr."""
        process, self._process = self._process, None
        self._halt.set()
        if process is not None:
            if process.poll() is None:
                process.terminate()
                try:
                    process.wait(timeout=2)
                except subprocess.TimeoutExpired:
                    process.kill()
                    process.wait(timeout=2)
            if self._thread is not None:
                self._thread.join(timeout=5)  # it stops at the pipe's end of file
            if process.stdout is not None:
                process.stdout.close()
        text = ""
        if self._stderr is not None:
            self._stderr.seek(0)
            lines = self._stderr.read().strip().splitlines()
            text = lines[0] if lines else ""
            self._stderr.close()
            self._stderr = None
        return text


def open_power_sampler(
    source: str = "auto",
    *,
    device_index: int = 0,
    rail: str = DEFAULT_RAIL,
    tegrastats_command: str = "tegrastats",
    interval_s: float | None = None,
) -> PowerSampler | None:
    """The sampler `source` asks for: "auto" (NVML with a GPU, else tegrastats, else None),
    "nvml", "tegrastats" or "none" (None). An explicit source that is unavailable is an error
    saying what to install; `interval_s` overrides the source's default interval."""
    choice = str(source).strip().lower()
    if choice not in SOURCES:
        raise DeployConfigError(f"power source {source!r}: choose from {', '.join(SOURCES)}")
    if choice == "none":
        return None
    nvml_interval = interval_s if interval_s is not None else 0.01
    tegra_ms = max(1, round(interval_s * 1000)) if interval_s is not None else 50
    if choice == "auto":
        if nvml_gpu_count() > 0:
            return NvmlPowerSampler(device_index, nvml_interval)
        if shutil.which(tegrastats_command) is not None:
            return TegrastatsSampler(tegra_ms, rail, tegrastats_command)
        return None
    if choice == "nvml":
        nvml = import_nvml("power source 'nvml'")
        if nvml_gpu_count(nvml) == 0:
            raise DeployInputError(
                "power source 'nvml': NVML finds no GPU (is the NVIDIA driver loaded? does "
                "`nvidia-smi` list one?); use --power tegrastats on a Jetson or --power none"
            )
        return NvmlPowerSampler(device_index, nvml_interval, nvml=nvml)
    if shutil.which(tegrastats_command) is None:
        raise MissingDependencyError(_tegrastats_missing(tegrastats_command))
    return TegrastatsSampler(tegra_ms, rail, tegrastats_command)


def _tegrastats_missing(command: str) -> str:
    return (
        f"power source 'tegrastats': command {command!r} not found; it ships with JetPack on "
        "Jetson boards (inside a container, mount /usr/bin/tegrastats); elsewhere use "
        "--power nvml or --power none"
    )
