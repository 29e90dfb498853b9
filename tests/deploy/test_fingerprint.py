"""Device fingerprint: the facts behind a latency number, and an id that groups runs.

Jetson probes are fed recorded `nvpmodel -q` / `jetson_clocks --show` output and files from
tests/deploy/data/jetson (provenance in their headers and README.md); NVML probing is fed a
stub module shaped like pynvml, and checked against a real GPU under the `gpu` marker.
"""

from __future__ import annotations

import importlib.util
import json
import os
import platform
import shutil
import sys
from collections.abc import Sequence
from pathlib import Path
from types import SimpleNamespace

import pytest

from deploy.errors import MeasurementError
from deploy.machine.fingerprint import (
    GPU_FIELDS,
    JETSON_FIELDS,
    clock_warnings,
    cpu_model,
    device_fingerprint,
    fingerprint_id,
    jetpack_for_l4t,
    jetson_info,
    nvml_gpu_info,
    parse_jetson_clocks,
    parse_l4t_release,
    parse_nvpmodel,
    physical_cores,
    require_locked_clocks,
    run_command,
    summary_line,
)

JETSON_DATA = Path(__file__).parent / "data" / "jetson"
NO_DEVICE = {"gpu_probe": dict, "jetson_probe": dict}  # probes that find no GPU and no Jetson


def recorded(name: str) -> str:
    return (JETSON_DATA / name).read_text()


def test_fields_describe_this_machine() -> None:
    fp = device_fingerprint(threads=2, **NO_DEVICE)
    assert fp["logical_cores"] == os.cpu_count()
    assert fp["python"] == platform.python_version()
    assert fp["threads"] == 2
    assert fp["cpu_model"]
    import numpy

    assert fp["libraries"]["numpy"] == numpy.__version__
    assert fp["libraries"]["onnxruntime"]
    assert "CPUExecutionProvider" in fp["onnxruntime_providers"]
    for later in (*GPU_FIELDS, *JETSON_FIELDS):
        assert fp[later] is None
    assert len(fp["fingerprint_id"]) == 12


@pytest.mark.skipif(
    importlib.util.find_spec("pynvml") is not None or Path("/etc/nv_tegra_release").exists(),
    reason="this machine has NVML or is a Jetson; the default probes would find a device",
)
def test_default_probes_find_nothing_on_a_plain_cpu_machine() -> None:
    fp = device_fingerprint(threads=1)
    assert fp["gpu_name"] is None and fp["jetson_model"] is None and clock_warnings(fp) == []


def test_id_is_stable_and_tracks_only_timing_relevant_fields() -> None:
    first, second = device_fingerprint(threads=1), device_fingerprint(threads=1)
    assert first["fingerprint_id"] == second["fingerprint_id"]
    assert fingerprint_id(first | {"hostname": "elsewhere"}) == first["fingerprint_id"]
    assert device_fingerprint(threads=4)["fingerprint_id"] != first["fingerprint_id"]
    changed_lib = first | {"libraries": first["libraries"] | {"onnxruntime": "0.0.1"}}
    assert fingerprint_id(changed_lib) != first["fingerprint_id"]


def test_new_fields_leave_old_cpu_ids_unchanged_and_split_jetson_setups() -> None:
    """Fields added with the Jetson/NVML probes hash only when set: a CPU-only result file
    written before them keeps its id, and a Jetson run locked vs unlocked gets two ids."""
    fp = device_fingerprint(threads=1, **NO_DEVICE)
    old_style = {k: v for k, v in fp.items() if k not in ("l4t_release", "jetson_clocks_locked")}
    assert fingerprint_id(old_style) == fp["fingerprint_id"]
    jetson = fp | {"jetson_model": "NVIDIA Jetson AGX Orin Developer Kit", "l4t_release": "R36.4.3"}
    locked, unlocked = (
        jetson | {"jetson_clocks_locked": True},
        jetson | {"jetson_clocks_locked": False},
    )
    assert fingerprint_id(locked) != fingerprint_id(unlocked)
    # Derived names and momentary clock readings must not split comparable runs.
    assert fingerprint_id(locked | {"jetpack": "6.2"}) == fingerprint_id(locked)
    assert fingerprint_id(fp | {"gpu_sm_clock_mhz": 1980}) == fingerprint_id(fp)


def test_cpuinfo_parsing(tmp_path: Path) -> None:
    cpuinfo = tmp_path / "cpuinfo"
    blocks = [
        f"processor\t: {i}\nmodel name\t: Test CPU 9000\nphysical id\t: {i // 4}\n"
        f"core id\t\t: {(i // 2) % 2}\n"
        for i in range(8)
    ]  # 2 sockets x 2 cores x 2 hyperthreads
    cpuinfo.write_text("\n".join(blocks))
    assert cpu_model(cpuinfo) == "Test CPU 9000"
    assert physical_cores(cpuinfo) == 4
    assert physical_cores(tmp_path / "absent") is None
    assert cpu_model(tmp_path / "absent")  # falls back to platform data, never empty


def test_summary_line_names_cpu_threads_and_id() -> None:
    fp = device_fingerprint(threads=3, **NO_DEVICE)
    line = summary_line(fp)
    assert "\n" not in line
    assert fp["cpu_model"] in line and "threads=3" in line and fp["fingerprint_id"] in line


# --- Jetson -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "l4t", "jetpack"),
    [
        (recorded("nv_tegra_release_r35.4.1"), "R35.4.1", "5.1.2"),
        (recorded("nv_tegra_release_r36.4.3"), "R36.4.3", "6.2"),
        (
            "# R36 (release), REVISION: 4.0, GCID: 37537400, BOARD: generic, EABI: aarch64",
            "R36.4.0",
            "6.1",
        ),
        ("# R35 (release), REVISION: 9.9, GCID: 1", "R35.9.9", "5.x"),  # not in the table
        ("# R36 (release), REVISION: 7.0", "R36.7.0", "6.x"),
        ("# R32 (release), REVISION: 7.1, GCID: 1", "R32.7.1", "4.x"),
    ],
)
def test_l4t_release_and_jetpack(text: str, l4t: str, jetpack: str) -> None:
    assert parse_l4t_release(text) == l4t
    assert jetpack_for_l4t(l4t) == jetpack


def test_l4t_garbage_gives_none() -> None:
    assert parse_l4t_release("not a release file") is None
    assert jetpack_for_l4t(None) is None and jetpack_for_l4t("R99.1.0") is None


def test_nvpmodel_output() -> None:
    maxn = parse_nvpmodel(recorded("nvpmodel_q_nano_maxn.txt"))
    assert maxn is not None and (maxn.name, maxn.mode_id) == ("MAXN", 0)
    verbose = parse_nvpmodel(recorded("nvpmodel_q_orin_nano_25w.txt"))
    assert verbose is not None and (verbose.name, verbose.mode_id) == ("25W", 1)
    inline = parse_nvpmodel("NV Power Mode: MAXN_SUPER  (ID: 2)\n")
    assert inline is not None and (inline.name, inline.mode_id) == ("MAXN_SUPER", 2)
    fan_first = parse_nvpmodel("NV Fan Mode:quiet\nNV Power Mode: MODE_15W_6CORE\n2\n")
    assert fan_first is not None and (fan_first.name, fan_first.mode_id) == ("MODE_15W_6CORE", 2)
    assert parse_nvpmodel("") is None and parse_nvpmodel("NVPM ERROR: bad") is None


@pytest.mark.parametrize(
    ("name", "cpu", "gpu", "emc", "locked"),
    [
        ("jetson_clocks_show_agx_orin_unlocked.txt", False, False, False, False),
        ("jetson_clocks_show_orin_nano_unlocked.txt", False, False, False, False),
        ("jetson_clocks_show_nano_unlocked.txt", False, False, False, False),
        ("jetson_clocks_show_nano_locked.txt", True, True, True, True),
        ("jetson_clocks_show_tx1_locked.txt", True, True, True, True),
    ],
)
def test_jetson_clocks_show(name: str, cpu: bool, gpu: bool, emc: bool, locked: bool) -> None:
    clocks = parse_jetson_clocks(recorded(name))
    assert clocks is not None
    assert (clocks.cpu, clocks.gpu, clocks.emc, clocks.locked) == (cpu, gpu, emc, locked)


def test_jetson_clocks_at_max_and_ignored_lines() -> None:
    orin = parse_jetson_clocks(recorded("jetson_clocks_show_agx_orin_unlocked.txt"))
    assert orin is not None
    # Some cores idle below max, GPU at its floor, EMC below max.
    assert (orin.cpu_at_max, orin.gpu_at_max, orin.emc_at_max) == (False, False, False)
    nano = parse_jetson_clocks(recorded("jetson_clocks_show_nano_unlocked.txt"))
    assert nano is not None and nano.emc_at_max is True and nano.emc is False
    # DLA/PVA lines have MinFreq=0 and must not count as unlocked clocks; offline cores neither.
    locked = recorded("jetson_clocks_show_nano_locked.txt") + (
        "DLA0_CORE:   Online=1 MinFreq=0 MaxFreq=1600000000 CurrentFreq=1600000000\n"
        "cpu3: Online=0 Governor=schedutil MinFreq=102000 MaxFreq=1479000 CurrentFreq=0 "
        "IdleStates: WFI=1 c7=1\n"
    )
    parsed = parse_jetson_clocks(locked)
    assert parsed is not None and parsed.locked
    assert parse_jetson_clocks("Please run as root") is None


def _jetson_root(tmp_path: Path, model: str, release: str | None) -> Path:
    (tmp_path / "proc/device-tree").mkdir(parents=True)
    shutil.copy(JETSON_DATA / model, tmp_path / "proc/device-tree/model")
    if release is not None:
        (tmp_path / "etc").mkdir()
        shutil.copy(JETSON_DATA / release, tmp_path / "etc/nv_tegra_release")
    return tmp_path


def _runner(outputs: dict[str, str | None]):
    calls: list[list[str]] = []

    def run(argv: Sequence[str]) -> str | None:
        calls.append(list(argv))
        return outputs.get(argv[0])

    run.calls = calls  # type: ignore[attr-defined]
    return run


def test_jetson_info_from_recorded_orin_nano(tmp_path: Path) -> None:
    root = _jetson_root(tmp_path, "device_tree_model_orin_nano_super", "nv_tegra_release_r36.4.3")
    (root / "usr/local/cuda").mkdir(parents=True)
    (root / "usr/local/cuda/version.json").write_text(
        json.dumps({"cuda": {"name": "CUDA SDK", "version": "12.6.68"}})
    )
    run = _runner(
        {
            "nvpmodel": recorded("nvpmodel_q_orin_nano_25w.txt"),
            "jetson_clocks": recorded("jetson_clocks_show_orin_nano_unlocked.txt"),
        }
    )
    info = jetson_info(root, run)
    assert (
        info["jetson_model"] == "NVIDIA Jetson Orin Nano Engineering Reference Developer Kit Super"
    )
    assert (info["l4t_release"], info["jetpack"]) == ("R36.4.3", "6.2")
    assert (info["power_mode"], info["power_mode_id"]) == ("25W", 1)
    assert info["jetson_clocks_locked"] is False
    assert info["jetson_clocks"]["gpu"] is False and info["jetson_clocks"]["locked"] is False
    assert info["cuda_version"] == "12.6"
    assert ["nvpmodel", "-q"] in run.calls and ["jetson_clocks", "--show"] in run.calls

    fp = device_fingerprint(threads=None, gpu_probe=dict, jetson_probe=lambda: info)
    assert fp["cuda_version"] == "12.6" and fp["jetson_model"] == info["jetson_model"]
    line = summary_line(fp)
    assert "Orin Nano" in line and "R36.4.3" in line and "JetPack 6.2" in line and "25W" in line
    warnings = clock_warnings(fp)
    assert any("sudo jetson_clocks" in w and "CPU/GPU/EMC" in w for w in warnings)
    assert any("25W" in w and "MAXN" in w for w in warnings)
    with pytest.raises(MeasurementError, match="sudo jetson_clocks"):
        require_locked_clocks(fp)


def test_jetson_locked_maxn_passes(tmp_path: Path) -> None:
    root = _jetson_root(tmp_path, "device_tree_model_agx_orin", "nv_tegra_release_r35.4.1")
    run = _runner(
        {
            "nvpmodel": recorded("nvpmodel_q_nano_maxn.txt"),
            "jetson_clocks": recorded("jetson_clocks_show_nano_locked.txt"),
        }
    )
    fp = device_fingerprint(gpu_probe=dict, jetson_probe=lambda: jetson_info(root, run))
    assert fp["jetpack"] == "5.1.2" and fp["jetson_clocks_locked"] is True
    assert clock_warnings(fp) == []
    require_locked_clocks(fp)  # no error


def test_jetson_without_root_says_state_unknown(tmp_path: Path) -> None:
    """Without sudo, `jetson_clocks --show` fails: the fields are None, nothing raises."""
    root = _jetson_root(tmp_path, "device_tree_model_agx_orin", None)
    info = jetson_info(root, _runner({}))
    assert info["jetson_model"] == "NVIDIA Jetson AGX Orin Developer Kit"
    assert info["l4t_release"] is None and info["power_mode"] is None
    assert info["jetson_clocks_locked"] is None
    fp = device_fingerprint(gpu_probe=dict, jetson_probe=lambda: info)
    warnings = clock_warnings(fp)
    assert any("unknown" in w and "sudo" in w for w in warnings)
    with pytest.raises(MeasurementError, match="unknown"):
        require_locked_clocks(fp)


def test_not_a_jetson(tmp_path: Path) -> None:
    run = _runner({"nvpmodel": "NV Power Mode: MAXN\n0\n"})
    assert jetson_info(tmp_path, run) == {}
    pi = _jetson_root(tmp_path / "pi", "device_tree_model_raspberry_pi", None)
    assert jetson_info(pi, run) == {}
    assert run.calls == []  # no commands run on a machine that is not a Jetson


def test_run_command_gives_none_for_missing_failing_or_slow_commands() -> None:
    assert run_command(["no-such-command-deploy-test"]) is None
    assert run_command([sys.executable, "-c", "print('NV Power Mode: MAXN')"]) == (
        "NV Power Mode: MAXN\n"
    )
    assert run_command([sys.executable, "-c", "import sys; sys.exit(3)"]) is None
    assert run_command([sys.executable, "-c", "import time; time.sleep(5)"], timeout=0.2) is None


# --- NVML ---------------------------------------------------------------------------------


class _NotSupported(Exception):
    """Stands in for pynvml.NVMLError_NotSupported."""


def _fake_nvml(**overrides):
    """A module shaped like pynvml for an H100 whose application clocks are at default."""

    def unsupported(*_args):
        raise _NotSupported

    calls = {"init": 0, "shutdown": 0}

    def init() -> None:
        calls["init"] += 1

    def shutdown() -> None:
        calls["shutdown"] += 1

    clocks = {1: 1980, 2: 2619}  # SM, memory (current)
    max_clocks = {1: 1980, 2: 2619}
    module = SimpleNamespace(
        nvmlInit=init,
        nvmlShutdown=shutdown,
        nvmlDeviceGetCount=lambda: 2,
        nvmlDeviceGetHandleByIndex=lambda i: f"handle{i}",
        nvmlSystemGetDriverVersion=lambda: "550.54.15",
        nvmlSystemGetCudaDriverVersion=lambda: 12040,
        nvmlDeviceGetName=lambda h: b"NVIDIA H100 80GB HBM3",  # old pynvml returns bytes
        nvmlDeviceGetMemoryInfo=lambda h: SimpleNamespace(total=81559 * 2**20),
        nvmlDeviceGetClockInfo=lambda h, kind: clocks[kind],
        nvmlDeviceGetMaxClockInfo=lambda h, kind: max_clocks[kind],
        nvmlDeviceGetApplicationsClock=lambda h, kind: 1755,
        nvmlDeviceGetDefaultApplicationsClock=lambda h, kind: 1755,
        nvmlDeviceGetCurrentClocksEventReasons=lambda h: 0x1,  # idle
        nvmlDeviceGetEnforcedPowerLimit=lambda h: 700000,
        nvmlDeviceGetPersistenceMode=lambda h: 0,
        calls=calls,
        unsupported=unsupported,
    )
    for name, value in overrides.items():
        setattr(module, name, unsupported if value == "unsupported" else value)
    return module


def test_nvml_facts_from_a_stub_module() -> None:
    nvml = _fake_nvml()
    info = nvml_gpu_info(nvml)
    assert info["gpu_name"] == "NVIDIA H100 80GB HBM3"
    assert (info["gpu_driver"], info["cuda_version"], info["gpu_count"]) == ("550.54.15", "12.4", 2)
    assert info["gpu_memory_mib"] == 81559
    assert (info["gpu_sm_clock_mhz"], info["gpu_sm_clock_max_mhz"]) == (1980, 1980)
    assert (info["gpu_mem_clock_mhz"], info["gpu_mem_clock_max_mhz"]) == (2619, 2619)
    assert info["gpu_clock_event_reasons"] == ["gpu_idle"]
    assert info["gpu_clocks_locked"] is False
    assert info["gpu_power_limit_w"] == 700.0 and info["gpu_persistence_mode"] is False
    assert nvml.calls == {"init": 1, "shutdown": 1}

    fp = device_fingerprint(gpu_probe=lambda: info, jetson_probe=dict)
    assert "GPU NVIDIA H100 80GB HBM3 (1 of 2) (driver 550.54.15, CUDA 12.4)" in summary_line(fp)
    notes = clock_warnings(fp)
    assert any("nvidia-smi -lgc 1980" in n for n in notes)
    assert any("persistence" in n for n in notes)
    with pytest.raises(MeasurementError, match="not locked"):
        require_locked_clocks(fp)


def test_nvml_lock_heuristics_and_unsupported_queries() -> None:
    app_clocks_set = nvml_gpu_info(_fake_nvml(nvmlDeviceGetApplicationsClock=lambda h, k: 1410))
    assert app_clocks_set["gpu_clocks_locked"] is True
    held = nvml_gpu_info(_fake_nvml(nvmlDeviceGetCurrentClocksEventReasons=lambda h: 0x2))
    assert held["gpu_clocks_locked"] is True
    require_locked_clocks(device_fingerprint(gpu_probe=lambda: held, jetson_probe=dict))
    old_api = _fake_nvml(nvmlDeviceGetCurrentClocksThrottleReasons=lambda h: 0x4 | 0x20)
    del old_api.nvmlDeviceGetCurrentClocksEventReasons  # pynvml before the rename
    assert nvml_gpu_info(old_api)["gpu_clock_event_reasons"] == [
        "sw_power_cap",
        "sw_thermal_slowdown",
    ]
    consumer = nvml_gpu_info(
        _fake_nvml(
            nvmlDeviceGetApplicationsClock="unsupported",
            nvmlDeviceGetCurrentClocksEventReasons="unsupported",
            nvmlDeviceGetEnforcedPowerLimit="unsupported",
            nvmlDeviceGetPowerManagementLimit=lambda h: 450000,
        )
    )
    assert consumer["gpu_clocks_locked"] is None and consumer["gpu_clock_event_reasons"] is None
    assert consumer["gpu_power_limit_w"] == 450.0 and consumer["gpu_name"]


def test_nvml_without_driver_or_gpus_gives_nothing() -> None:
    assert nvml_gpu_info(_fake_nvml(nvmlInit="unsupported")) == {}
    no_gpus = _fake_nvml(nvmlDeviceGetCount=lambda: 0)
    assert nvml_gpu_info(no_gpus) == {"gpu_count": 0}
    assert no_gpus.calls["shutdown"] == 1


def test_cpu_only_machine_cannot_require_locked_clocks() -> None:
    fp = device_fingerprint(**NO_DEVICE)
    assert clock_warnings(fp) == []
    with pytest.raises(MeasurementError, match="no NVML GPU or Jetson"):
        require_locked_clocks(fp)


@pytest.mark.gpu
def test_real_nvml_describes_the_gpu() -> None:
    if importlib.util.find_spec("pynvml") is None:
        pytest.skip("pynvml (pip install nvidia-ml-py) is not installed")
    info = nvml_gpu_info()
    if not info.get("gpu_name"):
        pytest.skip("NVML finds no GPU on this machine")
    assert info["gpu_driver"] and info["cuda_version"] and info["gpu_count"] >= 1
    assert info["gpu_memory_mib"] > 1000 and info["gpu_sm_clock_max_mhz"] > 0
    fp = device_fingerprint(threads=1, jetson_probe=dict)
    assert info["gpu_name"] in summary_line(fp)
