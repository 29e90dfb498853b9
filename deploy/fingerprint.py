"""Describe the machine a measurement was taken on, so results from devices can be merged.

A latency number means nothing without the CPU, core count, thread setting and library
versions behind it. `fingerprint_id` hashes only what changes timings (not the hostname or the
time), so two result files with the same id are comparable and re-runs on a re-imaged box
with the same hardware and software group together.
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
from pathlib import Path
from typing import Any

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


def device_fingerprint(threads: int | None = None) -> dict[str, Any]:
    """Hardware and software facts for a result file; `threads` is what the runner used.

    Never imports torch (versions come from package metadata), so it runs on any device.
    GPU and Jetson fields are None until NVML/Jetson probing is added.
    """
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
        "gpu_name": None,
        "gpu_driver": None,
        "cuda_version": None,
        "jetson_model": None,
        "power_mode": None,
    }
    fingerprint["fingerprint_id"] = fingerprint_id(fingerprint)
    return fingerprint


def fingerprint_id(fingerprint: dict[str, Any]) -> str:
    """Short sha256 of the timing-relevant fields; equal ids mean comparable measurements."""
    relevant = {name: fingerprint.get(name) for name in _ID_FIELDS}
    blob = json.dumps(relevant, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(blob.encode()).hexdigest()[:12]


def summary_line(fingerprint: dict[str, Any]) -> str:
    """One line for the CLI: what ran where, with the id to match result files."""
    libs = fingerprint.get("libraries", {})
    threads = fingerprint.get("threads")
    return (
        f"device: {fingerprint.get('cpu_model')} "
        f"({fingerprint.get('logical_cores')} logical / {fingerprint.get('physical_cores')} "
        f"physical cores), threads={threads if threads is not None else 'default'}, "
        f"{fingerprint.get('os')} {fingerprint.get('machine')}, "
        f"python {fingerprint.get('python')}, onnxruntime {libs.get('onnxruntime')} "
        f"[fingerprint {fingerprint.get('fingerprint_id')}]"
    )


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
    except OSError:
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
