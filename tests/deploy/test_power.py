"""Power sampling: tegrastats parsing on recorded lines, exact energy on synthetic traces, the
tegrastats sampler against a real subprocess, NVML sampling against a stub and a real GPU.

Recorded tegrastats lines live in tests/deploy/data/tegrastats/*.txt, each file with a header
saying where its lines come from.
"""

from __future__ import annotations

import importlib.util
import stat
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import pytest

from deploy.errors import (
    DeployConfigError,
    DeployInputError,
    MeasurementError,
    MissingDependencyError,
)
from deploy.machine.power import (
    Energy,
    NvmlPowerSampler,
    PowerTrace,
    TegrastatsSampler,
    energy_from_trace,
    open_power_sampler,
    parse_tegrastats_line,
)

TEGRASTATS = Path(__file__).parent / "data" / "tegrastats"


def recorded_lines(name: str) -> list[str]:
    text = (TEGRASTATS / name).read_text()
    return [line for line in text.splitlines() if line and not line.startswith("#")]


# --- parsing ------------------------------------------------------------------------------


def test_orin_jetpack6_lines() -> None:
    first, second = (parse_tegrastats_line(line) for line in recorded_lines("orin_nano_jp6.txt"))
    assert first == {
        "VDD_IN": (2957, 2957),
        "VDD_CPU_GPU_CV": (486, 486),
        "VDD_SOC": (1012, 1012),
    }
    assert second["VDD_IN"] == (4742, 4742) and len(second) == 3


def test_orin_nx_lines_including_three_value_rails() -> None:
    jp5, jp6, newer = (parse_tegrastats_line(line) for line in recorded_lines("orin_nx.txt"))
    assert jp5 == {"VDD_IN": (4915, 4915), "VDD_CPU_GPU_CV": (449, 449), "VDD_SOC": (1431, 1431)}
    assert jp6["VDD_IN"] == (6120, 6120) and jp6["VDD_SOC"] == (2464, 2464)
    # "cpu@50C/50C" temperatures are not rails; the third value of a rail is ignored.
    assert newer == {
        "VDD_IN": (9761, 9761),
        "VDD_CPU_GPU_CV": (4238, 4238),
        "VDD_SOC": (1825, 1825),
    }


def test_agx_orin_rails_and_duplicate_nc() -> None:
    (line,) = recorded_lines("agx_orin_jp5.txt")
    assert parse_tegrastats_line(line) == {
        "VDD_GPU_SOC": (2399, 2399),
        "VDD_CPU_CV": (400, 400),
        "VIN_SYS_5V0": (4032, 4032),
        "NC": (0, 0),
        "VDDQ_VDD2_1V8AO": (301, 301),
    }


def test_jetpack4_lines_without_units() -> None:
    (nano,) = recorded_lines("nano_jp4.txt")
    # RAM 1923/3964MB, SWAP 191/1982MB and IRAM 0/252kB are memory, not rails.
    assert parse_tegrastats_line(nano) == {
        "POM_5V_IN": (1750, 1628),
        "POM_5V_GPU": (0, 0),
        "POM_5V_CPU": (366, 406),
    }
    (xavier,) = recorded_lines("xavier_agx_jp4.txt")
    assert parse_tegrastats_line(xavier) == {
        "GPU": (120, 100),
        "CPU": (468, 450),
        "SOC": (937, 900),
        "CV": (0, 0),
        "VDDRQ": (312, 234),
        "SYS5V": (1458, 1400),
    }


def test_lines_without_rails() -> None:
    assert parse_tegrastats_line("") == {}
    assert parse_tegrastats_line("RAM 2034/3964MB (lfb 25x4MB) CPU [10%@1479] GR3D_FREQ 0%") == {}


# --- energy -------------------------------------------------------------------------------


def trace(times: list[float], watts: list[float], **fields) -> PowerTrace:
    return PowerTrace(
        source="test:rail",
        timestamps_s=tuple(times),
        watts=tuple(watts),
        interval_s=fields.pop("interval_s", 0.1),
        **fields,
    )


def test_constant_power_integrates_exactly() -> None:
    times = [i * 0.1 for i in range(21)]  # 0 .. 2 s
    energy = energy_from_trace(trace(times, [10.0] * 21), inferences=400)
    assert isinstance(energy, Energy)
    assert energy.energy_j == pytest.approx(20.0, abs=1e-9)
    assert energy.avg_power_w == pytest.approx(10.0, abs=1e-9)
    assert energy.seconds == pytest.approx(2.0)
    assert energy.energy_mj_per_inference == pytest.approx(50.0)  # 20 J / 400 calls
    assert (energy.samples, energy.source) == (21, "test:rail")


def test_ramp_with_uneven_sampling_integrates_exactly() -> None:
    times = [0.0, 0.05, 0.3, 0.35, 0.7, 1.0]
    watts = [5 + 10 * t for t in times]  # 5 W -> 15 W: 10 J over one second
    energy = energy_from_trace(trace(times, watts), inferences=10)
    assert energy.energy_j == pytest.approx(10.0, abs=1e-9)
    assert energy.energy_mj_per_inference == pytest.approx(1000.0)


def test_mean_power_fills_the_window_edges() -> None:
    """Samples start and end inside the loop's window; the window's length counts."""
    times = [0.1 * i for i in range(1, 10)]  # 0.1 .. 0.9 s
    energy = energy_from_trace(trace(times, [8.0] * 9, started_s=0.0, stopped_s=1.0), inferences=4)
    assert energy.energy_j == pytest.approx(8.0) and energy.seconds == pytest.approx(1.0)


def test_energy_counter_wins_over_samples() -> None:
    energy = energy_from_trace(
        trace([0.0, 0.5, 1.0], [1.0, 1.0, 1.0], started_s=0.0, stopped_s=1.0, counter_energy_j=3),
        inferences=3,
    )
    assert energy.energy_j == 3 and energy.avg_power_w == 3
    assert energy.source == "test:rail (energy counter)"
    still = trace([0.0, 0.5, 1.0], [2.0] * 3, started_s=0.0, stopped_s=1.0, counter_energy_j=0.0)
    assert energy_from_trace(still, inferences=1).energy_j == 2.0  # counter did not tick


@pytest.mark.parametrize(
    ("times", "stopped", "match"),
    [
        ([0.0], 0.3, "1 sample"),
        ([], 0.3, "0 sample"),
        ([0.0, 0.15], 0.15, "shorter than two sampling intervals"),
    ],
)
def test_too_little_to_integrate_says_to_time_longer(
    times: list[float], stopped: float, match: str
) -> None:
    short = trace(times, [1.0] * len(times), started_s=0.0, stopped_s=stopped)
    with pytest.raises(MeasurementError, match=match) as excinfo:
        energy_from_trace(short, inferences=1)
    assert "--power-seconds" in str(excinfo.value) and "--min-seconds" in str(excinfo.value)


def test_bad_inputs() -> None:
    with pytest.raises(DeployConfigError, match="inferences"):
        energy_from_trace(trace([0, 1, 2], [1, 1, 1]), inferences=0)
    with pytest.raises(DeployInputError, match="backwards"):
        energy_from_trace(trace([0, 2, 1], [1, 1, 1]), inferences=1)


# --- tegrastats sampler against a real subprocess -----------------------------------------

REPLAY = """#!{python}
# Stands in for tegrastats in tests: replays recorded lines, one per --interval ms.
import sys, time
args = sys.argv[1:]
interval = int(args[args.index("--interval") + 1]) / 1000 if "--interval" in args else 1.0
lines = [l for l in open({data!r}).read().splitlines() if l and not l.startswith("#")]
i = 0
while True:
    time.sleep(interval)
    print(lines[i % len(lines)], flush=True)
    i += 1
"""


def fake_tegrastats(directory: Path, recording: str | None) -> Path:
    """An executable named tegrastats printing `recording`'s lines (or nothing at all)."""
    directory.mkdir(parents=True, exist_ok=True)
    script = directory / "tegrastats"
    if recording is None:
        script.write_text(f"#!{sys.executable}\nimport time\ntime.sleep(60)\n")
    else:
        script.write_text(REPLAY.format(python=sys.executable, data=str(TEGRASTATS / recording)))
    script.chmod(script.stat().st_mode | stat.S_IXUSR | stat.S_IXGRP | stat.S_IXOTH)
    return script


def test_tegrastats_sampler_reads_a_real_subprocess(tmp_path: Path) -> None:
    """A real subprocess and real parsing: the fake tegrastats replays recorded Orin Nano output
    (VDD_IN 2957 and 4742 mW alternating) at a 20 ms interval."""
    command = fake_tegrastats(tmp_path, "orin_nano_jp6.txt")
    sampler = TegrastatsSampler(interval_ms=20, command=str(command))
    for _ in range(2):  # restartable: the benchmark samples each model in turn
        with sampler:
            time.sleep(0.4)
        result = sampler.last_trace
        assert result is not None and result.source == "tegrastats:VDD_IN"
        assert len(result.watts) >= 5
        assert set(result.watts) <= {2.957, 4.742} and len(set(result.watts)) == 2
        assert list(result.timestamps_s) == sorted(result.timestamps_s)
        energy = energy_from_trace(result, inferences=100)
        assert 2.957 <= energy.avg_power_w <= 4.742
        assert energy.energy_mj_per_inference == pytest.approx(energy.energy_j * 10)
    assert not sampler.running
    with pytest.raises(ZeroDivisionError), sampler:  # the loop's own error is what surfaces
        _ = 1 / 0
    assert not sampler.running


def test_tegrastats_sums_rails_and_falls_back_to_pom_5v_in(tmp_path: Path) -> None:
    agx = fake_tegrastats(tmp_path / "agx", "agx_orin_jp5.txt")
    summed = TegrastatsSampler(20, "VDD_GPU_SOC+VDD_CPU_CV+VIN_SYS_5V0", str(agx))
    summed.start()
    time.sleep(0.15)
    result = summed.stop()
    assert result.watts and all(w == pytest.approx(2.399 + 0.400 + 4.032) for w in result.watts)
    assert result.source == "tegrastats:VDD_GPU_SOC+VDD_CPU_CV+VIN_SYS_5V0"

    nano = fake_tegrastats(tmp_path / "nano", "nano_jp4.txt")
    with TegrastatsSampler(20, command=str(nano)) as sampler:
        time.sleep(0.1)
    assert sampler.last_trace is not None
    assert sampler.last_trace.source == "tegrastats:POM_5V_IN"
    assert set(sampler.last_trace.watts) == {1.75}


def test_tegrastats_missing_rail_names_the_rails_there(tmp_path: Path) -> None:
    agx = fake_tegrastats(tmp_path, "agx_orin_jp5.txt")
    sampler = TegrastatsSampler(20, command=str(agx))
    with pytest.raises(DeployInputError, match="no rail VDD_IN") as excinfo:
        sampler.start()
    assert "VDD_GPU_SOC, VDD_CPU_CV, VIN_SYS_5V0" in str(excinfo.value)
    assert "VDD_GPU_SOC+VDD_CPU_CV+VIN_SYS_5V0+VDDQ_VDD2_1V8AO" in str(excinfo.value)
    assert not sampler.running and sampler._process is None


def test_tegrastats_printing_no_rails_is_a_clear_error(tmp_path: Path) -> None:
    silent = fake_tegrastats(tmp_path, None)
    sampler = TegrastatsSampler(20, command=str(silent), first_sample_timeout_s=0.5)
    with pytest.raises(MeasurementError, match="no power rails within 0.5 s.*sudo"):
        sampler.start()
    assert not sampler.running
    failing = tmp_path / "bin" / "tegrastats"
    failing.parent.mkdir()
    failing.write_text(
        f"#!{sys.executable}\nimport sys\nsys.stderr.write('must be root\\n')\nsys.exit(1)\n"
    )
    failing.chmod(0o755)
    started = time.monotonic()
    with pytest.raises(MeasurementError, match="it said: must be root"):
        TegrastatsSampler(20, command=str(failing)).start()
    assert time.monotonic() - started < 2  # an exited tegrastats is not waited for


# --- choosing a sampler -------------------------------------------------------------------


def test_open_power_sampler_choices(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    assert open_power_sampler("none") is None
    with pytest.raises(DeployConfigError, match="choose from auto, nvml, tegrastats, none"):
        open_power_sampler("rapl")
    with pytest.raises(MissingDependencyError, match="ships with JetPack"):
        open_power_sampler("tegrastats", tegrastats_command=str(tmp_path / "absent"))
    command = fake_tegrastats(tmp_path / "bin", "orin_nano_jp6.txt")
    chosen = open_power_sampler("tegrastats", tegrastats_command=str(command), interval_s=0.02)
    assert isinstance(chosen, TegrastatsSampler) and chosen.interval_ms == 20
    if importlib.util.find_spec("pynvml") is None:
        monkeypatch.setenv("PATH", str(tmp_path / "bin"))
        assert isinstance(open_power_sampler("auto"), TegrastatsSampler)
        monkeypatch.setenv("PATH", str(tmp_path / "empty"))
        assert open_power_sampler("auto") is None
        with pytest.raises(MissingDependencyError, match="pip install nvidia-ml-py"):
            open_power_sampler("nvml")


def test_sampler_settings_are_checked() -> None:
    with pytest.raises(DeployConfigError, match="interval_ms"):
        TegrastatsSampler(interval_ms=0)
    with pytest.raises(DeployConfigError, match="rail"):
        TegrastatsSampler(rail="VDD_IN+")
    with pytest.raises(DeployConfigError, match="interval_s"):
        NvmlPowerSampler(interval_s=0)
    with pytest.raises(DeployConfigError, match="not started"):
        TegrastatsSampler().stop()


# --- NVML ---------------------------------------------------------------------------------


def stub_nvml(watts: float, *, counter: bool = True) -> SimpleNamespace:
    """pynvml's shape: constant board power, and an energy counter that integrates it."""
    origin = time.monotonic()
    module = SimpleNamespace(
        nvmlInit=lambda: None,
        nvmlShutdown=lambda: None,
        nvmlDeviceGetCount=lambda: 1,
        nvmlDeviceGetHandleByIndex=lambda i: "gpu0",
        nvmlDeviceGetPowerUsage=lambda h: int(watts * 1000),  # mW
    )
    if counter:  # mJ since "driver load"
        module.nvmlDeviceGetTotalEnergyConsumption = lambda h: int(
            1e6 + (time.monotonic() - origin) * watts * 1000
        )
    return module


def test_nvml_sampler_polls_power_and_prefers_the_energy_counter() -> None:
    sampler = NvmlPowerSampler(interval_s=0.01, nvml=stub_nvml(250.0))
    with sampler:
        time.sleep(0.3)
    result = sampler.last_trace
    assert result is not None and result.source == "nvml:gpu0"
    assert len(result.watts) >= 10 and set(result.watts) == {250.0}
    energy = energy_from_trace(result, inferences=30)
    assert energy.source == "nvml:gpu0 (energy counter)"
    assert energy.avg_power_w == pytest.approx(250.0, rel=0.05)
    polled = NvmlPowerSampler(interval_s=0.01, nvml=stub_nvml(40.0, counter=False))
    polled.start()
    time.sleep(0.2)
    energy = energy_from_trace(polled.stop(), inferences=1)
    assert energy.source == "nvml:gpu0" and energy.avg_power_w == pytest.approx(40.0)


def test_nvml_sampler_without_driver() -> None:
    def fail() -> None:
        raise RuntimeError("NVML Shared Library Not Found")

    broken = stub_nvml(1.0)
    broken.nvmlInit = fail
    with pytest.raises(DeployInputError, match="nvidia-smi"):
        NvmlPowerSampler(nvml=broken).start()


@pytest.mark.gpu
def test_real_nvml_sampler_measures_the_gpu() -> None:
    if importlib.util.find_spec("pynvml") is None:
        pytest.skip("pynvml (pip install nvidia-ml-py) is not installed")
    sampler = open_power_sampler("auto")
    if not isinstance(sampler, NvmlPowerSampler):
        pytest.skip("NVML finds no GPU on this machine")
    with sampler:
        time.sleep(0.5)
    assert sampler.last_trace is not None
    energy = energy_from_trace(sampler.last_trace, inferences=1)
    assert 1 < energy.avg_power_w < 2000 and len(sampler.last_trace.watts) >= 10
