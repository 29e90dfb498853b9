"""NVIDIA GPU facts through NVML, and the one place that loads pynvml.

pynvml comes from the nvidia-ml-py package and is imported lazily: `import_nvml` raises
MissingDependencyError saying what to install, `optional_nvml` gives None instead. The probes
take the module as an argument so tests feed them a stub shaped like pynvml; a missing driver
or GPU gives {} or 0, never an error.
"""

from __future__ import annotations

import importlib.util
from collections.abc import Callable
from typing import Any

from deploy.errors import MissingDependencyError
from deploy.lazy import lazy_import

NVML_HINT = "pip install nvidia-ml-py (it provides the pynvml module)"

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


# --- loading pynvml -----------------------------------------------------------------------


def import_nvml(needed_for: str) -> Any:
    """The pynvml module, or MissingDependencyError naming `needed_for` and the package."""
    try:
        return lazy_import("pynvml", needed_for)
    except MissingDependencyError as exc:
        raise MissingDependencyError(
            f"{needed_for} needs the 'pynvml' module, which is not installed; {NVML_HINT}"
        ) from exc


def optional_nvml() -> Any | None:
    """The pynvml module, or None where it is not installed (never raises)."""
    if importlib.util.find_spec("pynvml") is None:
        return None
    try:
        return import_nvml("reading GPU facts through NVML")
    except MissingDependencyError:
        return None


def shutdown_quietly(nvml: Any) -> None:
    """nvmlShutdown, ignoring errors: shutting down twice or after a lost GPU leaves nothing."""
    _query(nvml.nvmlShutdown)


# --- probes -------------------------------------------------------------------------------


def nvml_gpu_count(nvml: Any = None) -> int:
    """GPUs NVML sees; 0 without pynvml or a driver (never raises)."""
    if nvml is None:
        nvml = optional_nvml()
        if nvml is None:
            return 0
    try:
        nvml.nvmlInit()
    except Exception:  # no driver
        return 0
    try:
        return int(nvml.nvmlDeviceGetCount())
    except Exception:
        return 0
    finally:
        shutdown_quietly(nvml)


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
        nvml = optional_nvml()
        if nvml is None:
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
        shutdown_quietly(nvml)


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
