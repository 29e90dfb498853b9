"""Describe the machine a measurement was taken on, so results from devices can be merged.

A latency number means nothing without the CPU, core count, thread setting, library versions,
GPU, driver, Jetson power mode and clock state behind it. `fingerprint_id` hashes only what
changes timings (not the hostname or the time), so two result files with the same id are
comparable and re-runs on a re-imaged box with the same hardware and software group together.

GPU servers are probed through NVML (`pynvml`, from the nvidia-ml-py package, imported lazily);
Jetsons through /proc/device-tree/model, /etc/nv_tegra_release, `nvpmodel -q` and
`jetson_clocks --show`. Every probe takes its paths, module or command runner as arguments so
tests feed it recorded text; a missing tool or file gives None fields, never an error.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import importlib.util
import json
import os
import platform
import re
import shutil
import socket
import subprocess
import sys
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from deploy.errors import MeasurementError, MissingDependencyError
from deploy.lazy import lazy_import

# Distributions whose versions are recorded, by the name results use. Several distributions
# provide the same module (onnxruntime vs onnxruntime-gpu); the first one installed wins.
_LIBRARIES: dict[str, tuple[str, ...]] = {
    "numpy": ("numpy",),
    "onnx": ("onnx",),
    "onnxruntime": ("onnxruntime", "onnxruntime-gpu", "onnxruntime-openvino"),
    "torch": ("torch",),
    "tensorrt": ("tensorrt", "tensorrt-cu12", "tensorrt-cu11"),
}

# Fields that affect timing and so go into fingerprint_id; hostname and time do not.
_ID_FIELDS = (
    "os",
    "machine",
    "python",
    "cpu_model",
    "logical_cores",
    "physical_cores",
    "usable_cores",
    "threads",
    "libraries",
    "onnxruntime_providers",
    "gpu_name",
    "gpu_driver",
    "cuda_version",
    "jetson_model",
    "power_mode",
)
# Added later; hashed only when set, so a CPU-only machine keeps the id it had before they
# existed. The JetPack name is left out on purpose: it is derived from l4t_release by a table
# that grows, and a new table entry must not change old ids. Current clock readings and
# NVML's lock heuristic are left out too: they move between two runs of the same setup.
_ID_FIELDS_WHEN_SET = ("l4t_release", "jetson_clocks_locked", "gpu_power_limit_w")

GPU_FIELDS = (
    "gpu_name",
    "gpu_driver",
    "cuda_version",  # the driver's CUDA version (NVML); a Jetson's toolkit version otherwise
    "gpu_count",
    "gpu_memory_mib",
    "gpu_sm_clock_mhz",
    "gpu_sm_clock_max_mhz",
    "gpu_mem_clock_mhz",
    "gpu_mem_clock_max_mhz",
    "gpu_app_clock_mhz",  # applications clock (graphics) and its default: differ after -ac
    "gpu_app_clock_default_mhz",
    "gpu_clock_event_reasons",  # names of NVML's active clock event (throttle) reasons
    "gpu_clocks_locked",
    "gpu_power_limit_w",
    "gpu_persistence_mode",
)
JETSON_FIELDS = (
    "jetson_model",
    "l4t_release",
    "jetpack",
    "power_mode",
    "power_mode_id",
    "jetson_clocks",
    "jetson_clocks_locked",
)

CommandRunner = Callable[[Sequence[str]], "str | None"]
COMMAND_TIMEOUT_S = 5.0  # nvpmodel and jetson_clocks answer in well under a second


def device_fingerprint(
    threads: int | None = None,
    *,
    gpu_probe: Callable[[], dict[str, Any]] | None = None,
    jetson_probe: Callable[[], dict[str, Any]] | None = None,
) -> dict[str, Any]:
    """Hardware and software facts for a result file; `threads` is what the runner used.

    Never imports torch (versions come from package metadata), so it runs on any device.
    `gpu_probe` / `jetson_probe` default to `nvml_gpu_info` / `jetson_info`; tests pass their own.
    """
    gpu = (gpu_probe or nvml_gpu_info)()
    jetson = (jetson_probe or jetson_info)()
    fingerprint: dict[str, Any] = {
        "hostname": socket.gethostname(),
        "os": platform.system(),
        "os_release": platform.release(),
        "platform": platform.platform(),
        "machine": platform.machine(),
        "python": platform.python_version(),
        "cpu_model": cpu_model(),
        "logical_cores": os.cpu_count(),
        "physical_cores": physical_cores(),
        "usable_cores": _usable_cores(),
        "threads": threads,
        "libraries": library_versions(),
        "onnxruntime_providers": _onnxruntime_providers(),
    }
    fingerprint.update({name: gpu.get(name) for name in GPU_FIELDS})
    fingerprint.update({name: jetson.get(name) for name in JETSON_FIELDS})
    if fingerprint["cuda_version"] is None:
        fingerprint["cuda_version"] = jetson.get("cuda_version")
    fingerprint["fingerprint_id"] = fingerprint_id(fingerprint)
    return fingerprint


def fingerprint_id(fingerprint: dict[str, Any]) -> str:
    """Short sha256 of the timing-relevant fields; equal ids mean comparable measurements."""
    relevant = {name: fingerprint.get(name) for name in _ID_FIELDS}
    relevant.update(
        {
            name: fingerprint[name]
            for name in _ID_FIELDS_WHEN_SET
            if fingerprint.get(name) is not None
        }
    )
    blob = json.dumps(relevant, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(blob.encode()).hexdigest()[:12]


def summary_line(fingerprint: dict[str, Any]) -> str:
    """One line for the CLI: what ran where, with the id to match result files."""
    libs = fingerprint.get("libraries") or {}
    threads = fingerprint.get("threads")
    accelerator = _accelerator_summary(fingerprint)
    tensorrt = f", tensorrt {libs['tensorrt']}" if libs.get("tensorrt") else ""
    return (
        f"device: {accelerator + ', CPU ' if accelerator else ''}{fingerprint.get('cpu_model')} "
        f"({fingerprint.get('logical_cores')} logical / {fingerprint.get('physical_cores')} "
        f"physical cores), threads={threads if threads is not None else 'default'}, "
        f"{fingerprint.get('os')} {fingerprint.get('machine')}, "
        f"python {fingerprint.get('python')}, onnxruntime {libs.get('onnxruntime')}{tensorrt} "
        f"[fingerprint {fingerprint.get('fingerprint_id')}]"
    )


def _accelerator_summary(fingerprint: dict[str, Any]) -> str:
    if fingerprint.get("jetson_model"):
        clocks = {True: "locked", False: "not locked", None: "unknown"}[
            fingerprint.get("jetson_clocks_locked")
        ]
        return (
            f"{fingerprint['jetson_model']} (L4T {fingerprint.get('l4t_release') or '?'}, "
            f"JetPack {fingerprint.get('jetpack') or '?'}, power mode "
            f"{fingerprint.get('power_mode') or '?'}, jetson_clocks {clocks})"
        )
    if fingerprint.get("gpu_name"):
        count = fingerprint.get("gpu_count")
        more = f" (1 of {count})" if count and count > 1 else ""
        return (
            f"GPU {fingerprint['gpu_name']}{more} (driver {fingerprint.get('gpu_driver')}, "
            f"CUDA {fingerprint.get('cuda_version')})"
        )
    return ""


# --- warnings about clocks ---------------------------------------------------------------


def clock_warnings(fingerprint: dict[str, Any]) -> list[str]:
    """Lines for the CLI to print when clocks or power mode make timings vary or mislead."""
    warnings: list[str] = []
    if fingerprint.get("jetson_model"):
        locked = fingerprint.get("jetson_clocks_locked")
        if locked is False:
            loose = _unlocked_domains(fingerprint.get("jetson_clocks"))
            warnings.append(
                f"Jetson clocks are not locked ({loose} scale with load, so latency varies "
                "from run to run): run `sudo jetson_clocks` before benchmarking"
            )
        elif locked is None:
            warnings.append(
                "Jetson clock state is unknown (`jetson_clocks --show` needs root): run the "
                "benchmark with sudo, and `sudo jetson_clocks` before it"
            )
        mode = fingerprint.get("power_mode")
        if mode is None:
            warnings.append(
                "nvpmodel power mode is unknown (`nvpmodel -q` gave nothing): results will not "
                "say which power budget they were measured under"
            )
        elif not str(mode).upper().startswith("MAXN"):
            mode_id = fingerprint.get("power_mode_id")
            warnings.append(
                f"nvpmodel power mode is {mode}{f' (id {mode_id})' if mode_id is not None else ''}"
                ", not MAXN: timings hold for that power budget only; for peak numbers pick "
                "the MAXN mode listed in /etc/nvpmodel.conf with `sudo nvpmodel -m <id>`"
            )
    elif fingerprint.get("gpu_name"):
        if fingerprint.get("gpu_clocks_locked") is False:
            top = fingerprint.get("gpu_sm_clock_max_mhz")
            warnings.append(
                "note: GPU clocks are not locked (boost clocks follow temperature and power): "
                f"for steadier numbers run `sudo nvidia-smi -lgc {top or '<max>'}` before "
                "timing and `sudo nvidia-smi -rgc` after"
            )
        if fingerprint.get("gpu_persistence_mode") is False:
            warnings.append(
                "note: GPU persistence mode is off, so the driver may re-initialise between "
                "runs: `sudo nvidia-smi -pm 1`"
            )
    return warnings


def require_locked_clocks(fingerprint: dict[str, Any]) -> None:
    """Raise MeasurementError unless the fingerprint shows locked clocks (Jetson or GPU)."""
    if fingerprint.get("jetson_model"):
        locked = fingerprint.get("jetson_clocks_locked")
        if locked is True:
            return
        why = (
            f"{_unlocked_domains(fingerprint.get('jetson_clocks'))} are not locked"
            if locked is False
            else "their state is unknown (`jetson_clocks --show` needs root; run with sudo)"
        )
        raise MeasurementError(
            f"locked clocks were required, but on {fingerprint['jetson_model']} {why}: "
            "run `sudo jetson_clocks` first"
        )
    if fingerprint.get("gpu_name"):
        if fingerprint.get("gpu_clocks_locked") is True:
            return
        state = "not locked" if fingerprint.get("gpu_clocks_locked") is False else "unknown"
        raise MeasurementError(
            f"locked clocks were required, but the clocks of {fingerprint['gpu_name']} are "
            f"{state} as NVML reports them: lock them with `sudo nvidia-smi -lgc <MHz>` or "
            "`sudo nvidia-smi -ac <mem,sm>` first"
        )
    raise MeasurementError(
        "locked clocks were required, but this machine has no NVML GPU or Jetson whose clocks "
        "deploy can check; leave the requirement off for CPU-only runs"
    )


def _unlocked_domains(clocks: dict[str, Any] | None) -> str:
    names = [name.upper() for name in ("cpu", "gpu", "emc") if (clocks or {}).get(name) is False]
    return "/".join(names) + " clocks" if names else "clocks"


# --- NVML (GPU servers) -------------------------------------------------------------------

# NVML clock types and event-reason bits (nvml.h), so a stub module needs no constants.
_CLOCK_GRAPHICS, _CLOCK_SM, _CLOCK_MEM = 0, 1, 2
_EVENT_REASONS = {
    0x1: "gpu_idle",
    0x2: "applications_clocks_setting",  # also nvmlClocksEventReasonUserDefinedClocks
    0x4: "sw_power_cap",
    0x8: "hw_slowdown",
    0x10: "sync_boost",
    0x20: "sw_thermal_slowdown",
    0x40: "hw_thermal_slowdown",
    0x80: "hw_power_brake_slowdown",
    0x100: "display_clock_setting",
}
_APPLICATIONS_CLOCKS_SETTING = 0x2


def nvml_gpu_info(nvml: Any = None, device_index: int = 0) -> dict[str, Any]:
    """GPU_FIELDS of GPU `device_index` (NVML order, which is PCI order) from NVML.

    `nvml` is the pynvml module (imported lazily when None). No pynvml, no driver or no GPU
    gives {}; a query the GPU does not support leaves its field None.

    Locked clocks are a best effort, since NVML has no "are clocks locked" query: "locked" means
    the application clocks moved off their default (`nvidia-smi -ac`) or the clock event reason
    0x2 is active, which nvml.h names both "applications clocks setting" and "user defined
    clocks" (`nvidia-smi -lgc`). A lock at exactly the boost maximum may read as not locked.
    """
    if nvml is None:
        if importlib.util.find_spec("pynvml") is None:
            return {}
        try:
            nvml = lazy_import("pynvml", "reading GPU facts through NVML")
        except MissingDependencyError:
            return {}
    try:
        nvml.nvmlInit()
    except Exception:  # NVMLError (no driver) or OSError (no libnvidia-ml): no GPU to describe
        return {}
    try:
        count = _query(nvml.nvmlDeviceGetCount)
        if not count or device_index >= count:
            return {"gpu_count": count}
        handle = nvml.nvmlDeviceGetHandleByIndex(device_index)
        return _nvml_device_facts(nvml, handle) | {
            "gpu_driver": _text(_query(nvml.nvmlSystemGetDriverVersion)),
            "cuda_version": _cuda_text(_query(nvml.nvmlSystemGetCudaDriverVersion)),
            "gpu_count": count,
        }
    except Exception:  # a GPU that fell off the bus mid-probe: describe nothing rather than fail
        return {}
    finally:
        _query(nvml.nvmlShutdown)


def _nvml_device_facts(nvml: Any, handle: Any) -> dict[str, Any]:
    memory = _query(nvml.nvmlDeviceGetMemoryInfo, handle)
    app = _query(getattr(nvml, "nvmlDeviceGetApplicationsClock", None), handle, _CLOCK_GRAPHICS)
    app_default = _query(
        getattr(nvml, "nvmlDeviceGetDefaultApplicationsClock", None), handle, _CLOCK_GRAPHICS
    )
    reasons_call = getattr(nvml, "nvmlDeviceGetCurrentClocksEventReasons", None) or getattr(
        nvml, "nvmlDeviceGetCurrentClocksThrottleReasons", None
    )
    reasons = _query(reasons_call, handle)
    limit_mw = _query(getattr(nvml, "nvmlDeviceGetEnforcedPowerLimit", None), handle)
    if limit_mw is None:
        limit_mw = _query(getattr(nvml, "nvmlDeviceGetPowerManagementLimit", None), handle)
    persistence = _query(getattr(nvml, "nvmlDeviceGetPersistenceMode", None), handle)
    return {
        "gpu_name": _text(_query(nvml.nvmlDeviceGetName, handle)),
        "gpu_memory_mib": int(memory.total) // 2**20 if memory is not None else None,
        "gpu_sm_clock_mhz": _query(nvml.nvmlDeviceGetClockInfo, handle, _CLOCK_SM),
        "gpu_sm_clock_max_mhz": _query(nvml.nvmlDeviceGetMaxClockInfo, handle, _CLOCK_SM),
        "gpu_mem_clock_mhz": _query(nvml.nvmlDeviceGetClockInfo, handle, _CLOCK_MEM),
        "gpu_mem_clock_max_mhz": _query(nvml.nvmlDeviceGetMaxClockInfo, handle, _CLOCK_MEM),
        "gpu_app_clock_mhz": app,
        "gpu_app_clock_default_mhz": app_default,
        "gpu_clock_event_reasons": (
            None if reasons is None else [n for b, n in _EVENT_REASONS.items() if reasons & b]
        ),
        "gpu_clocks_locked": _gpu_clocks_locked(app, app_default, reasons),
        "gpu_power_limit_w": None if limit_mw is None else round(limit_mw / 1000, 1),
        "gpu_persistence_mode": None if persistence is None else persistence == 1,
    }


def _gpu_clocks_locked(app: int | None, default: int | None, reasons: int | None) -> bool | None:
    if app is not None and default is not None and app != default:
        return True
    if reasons is not None:
        return bool(reasons & _APPLICATIONS_CLOCKS_SETTING)
    return None if app is None or default is None else False


def _query(call: Callable[..., Any] | None, *args: Any) -> Any:
    """One NVML call, None when unsupported (NVMLError_NotSupported and friends) or absent."""
    if call is None:
        return None
    try:
        return call(*args)
    except Exception:  # NVMLError subclasses differ across pynvml versions; all mean "unknown"
        return None


def _text(value: Any) -> str | None:
    if isinstance(value, bytes):  # pynvml < 11.5 returns bytes
        return value.decode(errors="replace")
    return value


def _cuda_text(version: int | None) -> str | None:
    """NVML's 12040 -> "12.4"."""
    return None if version is None else f"{version // 1000}.{(version % 1000) // 10}"


# --- Jetson -------------------------------------------------------------------------------

# L4T release -> JetPack release, exact entries from NVIDIA's JetPack archive
# (https://developer.nvidia.com/embedded/jetpack-archive), as tabulated in jetson-stats
# (jtop/core/jetson_variables.py, NVIDIA_JETPACK). Releases missing here fall back to the
# major line (R35 -> "5.x", R36 -> "6.x") rather than a guessed minor: L4T 35.1 was JetPack
# 5.0.2 and 35.2.1 was 5.1, so minors do not line up.
L4T_TO_JETPACK = {
    "35.1.0": "5.0.2",
    "35.2.1": "5.1",
    "35.3.1": "5.1.1",
    "35.4.1": "5.1.2",
    "35.5.0": "5.1.3",
    "35.6.0": "5.1.4",
    "36.2.0": "6.0 DP",
    "36.3.0": "6.0",
    "36.4.0": "6.1",
    "36.4.3": "6.2",
    "36.4.4": "6.2.1",
}
L4T_MAJOR_TO_JETPACK = {"32": "4.x", "34": "5.x", "35": "5.x", "36": "6.x", "38": "7.x"}

_L4T_LINE = re.compile(r"R(\d+)\s*\(release\),\s*REVISION:\s*(\d+(?:\.\d+)*)")
_POWER_MODE = re.compile(r"NV Power Mode:\s*(\S+)(?:\s*\(ID:\s*(\d+)\))?")
_KEY_VALUE = re.compile(r"(\w+)=(\S+)")


@dataclass(frozen=True)
class PowerMode:
    """`nvpmodel -q`: the mode's name and number."""

    name: str
    mode_id: int | None


@dataclass(frozen=True)
class JetsonClocks:
    """`jetson_clocks --show` per clock domain; None where the output has no such line.

    locked: the floor is raised to the ceiling (CPU/GPU MinFreq == MaxFreq; EMC FreqOverride=1),
    which is what `jetson_clocks` sets. at_max: the clock reads its maximum right now.
    """

    cpu: bool | None
    gpu: bool | None
    emc: bool | None
    cpu_at_max: bool | None
    gpu_at_max: bool | None
    emc_at_max: bool | None

    @property
    def locked(self) -> bool:
        states = [s for s in (self.cpu, self.gpu, self.emc) if s is not None]
        return bool(states) and all(states)


def run_command(argv: Sequence[str], timeout: float = COMMAND_TIMEOUT_S) -> str | None:
    """stdout of a short command, or None when it is missing, fails or times out."""
    if shutil.which(argv[0]) is None:
        return None
    try:
        completed = subprocess.run(
            list(argv),
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
            stdin=subprocess.DEVNULL,
        )
    except (OSError, subprocess.SubprocessError):
        return None
    if completed.returncode != 0:
        return None
    return completed.stdout or None


def jetson_info(root: Path = Path("/"), run: CommandRunner = run_command) -> dict[str, Any]:
    """JETSON_FIELDS (plus cuda_version) on a Jetson; {} anywhere else.

    A Jetson is a machine with /etc/nv_tegra_release (L4T, also in l4t containers) or a
    device-tree model naming a Jetson. `root` stands for "/" and `run` runs a command; tests
    point both at recorded output.
    """
    model = read_device_tree_model(root / "proc/device-tree/model")
    release = _read_text(root / "etc/nv_tegra_release")
    if release is None and (model is None or "jetson" not in model.lower()):
        return {}
    l4t = parse_l4t_release(release) if release else None
    mode = parse_nvpmodel(run(["nvpmodel", "-q"]))
    clocks = parse_jetson_clocks(run(["jetson_clocks", "--show"]))
    return {
        "jetson_model": model or "unknown Jetson",
        "l4t_release": l4t,
        "jetpack": jetpack_for_l4t(l4t),
        "power_mode": mode.name if mode else None,
        "power_mode_id": mode.mode_id if mode else None,
        "jetson_clocks": (asdict(clocks) | {"locked": clocks.locked}) if clocks else None,
        "jetson_clocks_locked": clocks.locked if clocks else None,
        "cuda_version": jetson_cuda_version(root),
    }


def read_device_tree_model(path: Path) -> str | None:
    """The NUL-terminated board name, e.g. "NVIDIA Jetson AGX Orin Developer Kit"."""
    text = _read_text(path)
    if text is None:
        return None
    return text.replace("\x00", "").strip() or None


def parse_l4t_release(text: str) -> str | None:
    """'# R36 (release), REVISION: 4.0, GCID: ...' -> 'R36.4.0'."""
    match = _L4T_LINE.search(text)
    return f"R{match.group(1)}.{match.group(2)}" if match else None


def jetpack_for_l4t(l4t: str | None) -> str | None:
    """'R36.4.0' -> '6.1'; a release missing from the table -> its major line ('6.x')."""
    if not l4t:
        return None
    version = l4t.lstrip("R")
    parts = version.split(".")
    full = ".".join((parts + ["0", "0"])[:3])
    return L4T_TO_JETPACK.get(full) or L4T_MAJOR_TO_JETPACK.get(parts[0])


def parse_nvpmodel(text: str | None) -> PowerMode | None:
    """`nvpmodel -q`: 'NV Power Mode: MAXN' then the mode number on the next line."""
    if not text:
        return None
    lines = [line.strip() for line in text.splitlines()]
    for index, line in enumerate(lines):
        match = _POWER_MODE.search(line)
        if not match:
            continue
        mode_id = match.group(2)
        if mode_id is None:
            following = next((x for x in lines[index + 1 :] if x), "")
            mode_id = following if following.isdigit() else None
        return PowerMode(name=match.group(1), mode_id=int(mode_id) if mode_id else None)
    return None


def parse_jetson_clocks(text: str | None) -> JetsonClocks | None:
    """`jetson_clocks --show` lines 'cpuN: Online=1 ... MinFreq= MaxFreq= CurrentFreq=',
    'GPU MinFreq= MaxFreq= CurrentFreq=', 'EMC MinFreq= MaxFreq= CurrentFreq= FreqOverride='.

    Other lines (SOC family, DLA/PVA, fan, power mode) are ignored; offline CPUs are skipped.
    """
    if not text:
        return None
    cpus: list[dict[str, int]] = []
    gpu: dict[str, int] | None = None
    emc: dict[str, int] | None = None
    for line in text.splitlines():
        line = line.strip()
        values = {k: int(v) for k, v in _KEY_VALUE.findall(line) if v.isdigit()}
        if not {"MinFreq", "MaxFreq", "CurrentFreq"} <= set(values):
            continue
        if re.match(r"cpu\d+:", line):
            if values.get("Online", 1) == 1:
                cpus.append(values)
        elif line.startswith("GPU "):
            gpu = values
        elif line.startswith("EMC "):
            emc = values
    if not cpus and gpu is None and emc is None:
        return None
    emc_locked = None
    if emc is not None:
        override = emc.get("FreqOverride")
        emc_locked = override == 1 if override is not None else emc["MinFreq"] == emc["MaxFreq"]
    return JetsonClocks(
        cpu=all(c["MinFreq"] == c["MaxFreq"] for c in cpus) if cpus else None,
        gpu=gpu["MinFreq"] == gpu["MaxFreq"] if gpu else None,
        emc=emc_locked,
        cpu_at_max=all(c["CurrentFreq"] == c["MaxFreq"] for c in cpus) if cpus else None,
        gpu_at_max=gpu["CurrentFreq"] == gpu["MaxFreq"] if gpu else None,
        emc_at_max=emc["CurrentFreq"] == emc["MaxFreq"] if emc else None,
    )


def jetson_cuda_version(root: Path = Path("/")) -> str | None:
    """The CUDA toolkit JetPack installed (/usr/local/cuda/version.json or version.txt)."""
    text = _read_text(root / "usr/local/cuda/version.json")
    if text is not None:
        try:
            version = json.loads(text)["cuda"]["version"]
        except (ValueError, KeyError, TypeError):
            version = None
    else:
        legacy = _read_text(root / "usr/local/cuda/version.txt") or ""  # JetPack 4
        found = re.search(r"CUDA Version\s+(\S+)", legacy)
        version = found.group(1) if found else None
    if not isinstance(version, str):
        return None
    return ".".join(version.split(".")[:2])


def _read_text(path: Path) -> str | None:
    try:
        return path.read_text(errors="replace")
    except OSError:  # absent, unreadable, a directory
        return None


# --- CPU and libraries --------------------------------------------------------------------


def cpu_model(cpuinfo: Path = Path("/proc/cpuinfo")) -> str:
    """CPU model name from /proc/cpuinfo; falls back to platform data elsewhere (macOS, ARM)."""
    for key, value in _cpuinfo_pairs(cpuinfo):
        if key in ("model name", "Model", "Hardware") and value:
            return value
    return platform.processor() or platform.machine() or "unknown"


def physical_cores(cpuinfo: Path = Path("/proc/cpuinfo")) -> int | None:
    """Distinct (socket, core) pairs in /proc/cpuinfo; None where the file does not say."""
    cores: set[tuple[str, str]] = set()
    socket_id = "0"
    for key, value in _cpuinfo_pairs(cpuinfo):
        if key == "physical id":
            socket_id = value
        elif key == "core id":
            cores.add((socket_id, value))
    return len(cores) or None


def library_versions() -> dict[str, str | None]:
    """Installed versions from package metadata, without importing the packages."""
    versions: dict[str, str | None] = {}
    for name, distributions in _LIBRARIES.items():
        versions[name] = None
        for distribution in distributions:
            try:
                versions[name] = importlib.metadata.version(distribution)
                break
            except importlib.metadata.PackageNotFoundError:
                continue
    return versions


def _cpuinfo_pairs(cpuinfo: Path) -> list[tuple[str, str]]:
    text = _read_text(cpuinfo)
    if text is None:
        return []
    pairs = []
    for line in text.splitlines():
        key, sep, value = line.partition(":")
        if sep:
            pairs.append((key.strip(), value.strip()))
    return pairs


def _usable_cores() -> int | None:
    """Cores this process may run on (cgroup/affinity limits), which is what timing sees."""
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0))
    return os.cpu_count()


def _onnxruntime_providers() -> list[str] | None:
    # onnxruntime is a deploy dependency and cheap to import; torch is never imported here.
    if "onnxruntime" not in sys.modules and importlib.util.find_spec("onnxruntime") is None:
        return None
    try:
        import onnxruntime
    except ImportError:
        return None
    return list(onnxruntime.get_available_providers())
