"""Describe the machine a measurement was taken on, so results from devices can be merged.

A latency number means nothing without the CPU, core count, thread setting, library versions,
GPU, driver, Jetson power mode and clock state behind it. `fingerprint_id` hashes only what
changes timings (not the hostname or the time), so two result files with the same id are
comparable and re-runs on a re-imaged box with the same hardware and software group together.

GPU servers are probed through NVML (`deploy.machine.nvml`, pynvml imported lazily); Jetsons through
/proc/device-tree/model, /etc/nv_tegra_release, `nvpmodel -q` and `jetson_clocks --show`
(`deploy.machine.jetson`). Every probe takes its paths, module or command runner as arguments so
tests feed it recorded text; a missing tool or file gives None fields, never an error.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import importlib.util
import json
import os
import platform
import socket
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from deploy.errors import MeasurementError
from deploy.machine.cpus import format_cpu_list, usable_cpus
from deploy.machine.jetson import (
    COMMAND_TIMEOUT_S,
    JETSON_FIELDS,
    L4T_MAJOR_TO_JETPACK,
    L4T_TO_JETPACK,
    CommandRunner,
    JetsonClocks,
    PowerMode,
    jetpack_for_l4t,
    jetson_cuda_version,
    jetson_info,
    parse_jetson_clocks,
    parse_l4t_release,
    parse_nvpmodel,
    read_device_tree_model,
    run_command,
)
from deploy.machine.nvml import GPU_FIELDS, nvml_gpu_info

# The probes lived here before deploy.machine.jetson and deploy.machine.nvml; callers still
# import them from here.
__all__ = [
    "COMMAND_TIMEOUT_S",
    "GPU_FIELDS",
    "JETSON_FIELDS",
    "L4T_MAJOR_TO_JETPACK",
    "L4T_TO_JETPACK",
    "CommandRunner",
    "JetsonClocks",
    "PowerMode",
    "clock_warnings",
    "cpu_model",
    "device_fingerprint",
    "fingerprint_id",
    "jetpack_for_l4t",
    "jetson_cuda_version",
    "jetson_info",
    "library_versions",
    "nvml_gpu_info",
    "parse_jetson_clocks",
    "parse_l4t_release",
    "parse_nvpmodel",
    "physical_cores",
    "read_device_tree_model",
    "require_locked_clocks",
    "run_command",
    "summary_line",
]

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
# pinned_cpus (`--cpus`) is hashed because which cores matter on hybrid CPUs (performance vs
# efficiency cores); unpinned runs leave it None and keep their ids.
_ID_FIELDS_WHEN_SET = ("l4t_release", "jetson_clocks_locked", "gpu_power_limit_w", "pinned_cpus")


def device_fingerprint(
    threads: int | None = None,
    *,
    pinned_cpus: str | None = None,
    gpu_probe: Callable[[], dict[str, Any]] | None = None,
    jetson_probe: Callable[[], dict[str, Any]] | None = None,
) -> dict[str, Any]:
    """Hardware and software facts for a result file; `threads` is what the runner used.

    `pinned_cpus` is the `--cpus` list the process was pinned to ("0-3"), None when not pinned;
    `cpu_affinity` records the CPUs the process could run on either way.

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
        "usable_cores": len(usable_cpus()),  # affinity/cgroup limits: what timing sees
        "cpu_affinity": format_cpu_list(usable_cpus()),
        "pinned_cpus": pinned_cpus,
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
    pinned = fingerprint.get("pinned_cpus")
    pinned_text = f"pinned to CPU {pinned}, " if pinned else ""
    return (
        f"device: {accelerator + ', CPU ' if accelerator else ''}{fingerprint.get('cpu_model')} "
        f"({fingerprint.get('logical_cores')} logical / {fingerprint.get('physical_cores')} "
        f"physical cores), threads={threads if threads is not None else 'default'}, "
        f"{pinned_text}{fingerprint.get('os')} {fingerprint.get('machine')}, "
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
    try:
        text = cpuinfo.read_text(errors="replace")
    except OSError:  # absent, unreadable, a directory
        return []
    pairs = []
    for line in text.splitlines():
        key, sep, value = line.partition(":")
        if sep:
            pairs.append((key.strip(), value.strip()))
    return pairs


def _onnxruntime_providers() -> list[str] | None:
    # onnxruntime is a deploy dependency and cheap to import; torch is never imported here.
    if "onnxruntime" not in sys.modules and importlib.util.find_spec("onnxruntime") is None:
        return None
    try:
        import onnxruntime
    except ImportError:
        return None
    return list(onnxruntime.get_available_providers())
