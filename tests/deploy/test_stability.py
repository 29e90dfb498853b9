"""Measurement warnings: noisy and drifting timings, a busy machine, a throttled Jetson.

Noise is made on purpose with a real onnxruntime model whose runner sleeps; machine state
comes from a faked load average, a fake /proc/stat and a fake sysfs tree, so every warning
here is deterministic. No test asserts that anything is fast or slow.
"""

from __future__ import annotations

import dataclasses
import os
import shutil
import time
from pathlib import Path

import numpy as np
import pytest

from deploy.bench import BenchConfig, benchmark
from deploy.errors import DeployConfigError
from deploy.machine.cpus import usable_cpus
from deploy.machine.stability import StabilityLimits, timing_warnings
from deploy.machine.state import MachineMonitor, MachineSample
from deploy.runners import OnnxRuntimeRunner


class SleepyRunner(OnnxRuntimeRunner):
    """Real onnxruntime inference plus a sleep chosen per call, to make noise on purpose."""

    def __init__(self, model: Path, sleeps_s) -> None:  # noqa: ANN001 - callable(call) -> s
        super().__init__(model, threads=1)
        self.sleeps_s = sleeps_s
        self.calls = 0

    def _infer(self, feed: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        delay = self.sleeps_s(self.calls)
        self.calls += 1
        if delay:
            time.sleep(delay)
        return super()._infer(feed)


def quiet_monitor(tmp_path: Path) -> MachineMonitor:
    """A monitor that sees no sysfs and no /proc/stat (only the load average)."""
    return MachineMonitor(sysfs_root=tmp_path / "no-sys", proc_root=tmp_path / "no-proc")


def test_noisy_iterations_give_a_per_iteration_cv_warning(classifier: Path) -> None:
    runner = SleepyRunner(classifier, lambda call: 0.01 if call % 2 else 0.0)
    config = BenchConfig(warmup_iters=0, iterations=12, repeats=1)
    (record,) = benchmark(runner, config, "noisy")
    (line,) = timing_warnings([record], limits=StabilityLimits(max_run_cv=1e9))
    assert line.startswith("noisy (onnxruntime cpu fp32, batch 1): per-iteration CV ")
    assert "is above 10.0%" in line and "compare medians" in line
    # The limit is the user's: raised far enough, the same record passes.
    assert timing_warnings([record], limits=StabilityLimits(max_cv=1e9)) == []


def test_a_median_that_drifts_between_runs_gives_a_run_to_run_warning(classifier: Path) -> None:
    # Run 1 (calls 0-3) sleeps 1 ms per call, runs 2 and 3 sleep 20 ms: the median moves.
    runner = SleepyRunner(classifier, lambda call: 0.001 if call < 4 else 0.02)
    config = BenchConfig(warmup_iters=0, iterations=12, repeats=3)
    (record,) = benchmark(runner, config, "drifting")
    assert record.runs == 3 and len(record.run_medians_ms) == 3
    lines = timing_warnings([record], limits=StabilityLimits(max_cv=1e9))
    (line,) = lines
    assert line.startswith("drifting (onnxruntime cpu fp32, batch 1): run-to-run CV ")
    assert "above 5.0% (medians of 3 runs: " in line and "speed-ups smaller" in line


def test_busy_machine_from_the_load_average(
    classifier: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    cpus = os.cpu_count() or 1
    monkeypatch.setattr(os, "getloadavg", lambda: (4.0 * cpus + 2, 1.0, 1.0))
    monitor = quiet_monitor(tmp_path)
    config = BenchConfig(warmup_iters=1, iterations=6)
    with OnnxRuntimeRunner(classifier, threads=1) as runner:
        records = benchmark(runner, config, "dense", monitor=monitor)
    assert [s.phase for s in monitor.samples] == ["start", "during", "during", "end"]
    no_noise = StabilityLimits(max_cv=1e9, max_run_cv=1e9)
    (line,) = timing_warnings(records, monitor.samples, no_noise)
    assert line.startswith(f"machine busy: 1-minute load average {4.0 * cpus + 2:.2f} on {cpus}")
    assert "besides this benchmark's own" in line
    # An idle machine (by the same sensor) gives no warning.
    monkeypatch.setattr(os, "getloadavg", lambda: (0.0, 0.0, 0.0))
    monitor = quiet_monitor(tmp_path)
    with OnnxRuntimeRunner(classifier, threads=1) as runner:
        records = benchmark(runner, config, "dense", monitor=monitor)
    assert timing_warnings(records, monitor.samples, no_noise) == []


def _sample(phase: str, t: float, busy: float, steal: float, own: float) -> MachineSample:
    return MachineSample(
        phase=phase,
        monotonic_s=t,
        load_1min=None,
        online_cpus=2,
        usable_cpus=(0, 1),
        own_cpu_s=own,
        busy_cpu_s=busy,
        steal_cpu_s=steal,
    )


def test_other_processes_and_hypervisor_steal_while_timing() -> None:
    # 2 CPUs x 2 s = 4 CPU-seconds; we used 1, the CPUs were busy 3: others took 2 (50%).
    samples = [_sample("start", 0.0, 100.0, 10.0, 5.0), _sample("end", 2.0, 103.0, 10.5, 6.0)]
    others, steal = timing_warnings([], samples)
    assert others.startswith("machine busy: other processes used 50% of the time of CPU 0-1")
    assert steal.startswith("hypervisor steal: 12% of the time of CPU 0-1")
    # Our own work alone is no warning.
    quiet = [_sample("start", 0.0, 100.0, 10.0, 5.0), _sample("end", 2.0, 104.0, 10.0, 9.0)]
    assert timing_warnings([], quiet) == []
    # Too short a window to judge with 10 ms ticks: nothing is claimed.
    short = [_sample("start", 0.0, 100.0, 10.0, 5.0), _sample("end", 0.1, 100.2, 10.1, 5.0)]
    assert timing_warnings([], short) == []


def test_proc_stat_is_read_for_the_usable_cpus(tmp_path: Path) -> None:
    proc = tmp_path / "proc"
    proc.mkdir()
    cpus = usable_cpus()
    ticks = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100

    def write_stat(user: int, steal: int) -> None:
        lines = ["cpu  1 1 1 1 1 1 1 1 0 0"]
        lines += [f"cpu{c} {user} 0 {user} 500 3 0 0 {steal} 0 0" for c in cpus]
        (proc / "stat").write_text("\n".join(lines) + "\n")

    monitor = MachineMonitor(sysfs_root=tmp_path / "no-sys", proc_root=proc)
    write_stat(100, 7)
    first = monitor.sample("start")
    assert first.busy_cpu_s == pytest.approx(200 * len(cpus) / ticks)
    assert first.steal_cpu_s == pytest.approx(7 * len(cpus) / ticks)
    assert first.own_cpu_s > 0 and first.usable_cpus == cpus
    # Without /proc/stat the figures are unknown, not zero.
    assert quiet_monitor(tmp_path).sample("start").busy_cpu_s is None


def fake_jetson_sysfs(root: Path, *, hot: bool, throttled: bool) -> Path:
    """The sysfs files a Jetson Orin shows any user: GPU devfreq, CPU cpufreq, a thermal zone
    with an active (fan) and a passive (throttling) trip point."""
    gpu = root / "class/devfreq/17000000.ga10b"
    (gpu / "device/of_node").mkdir(parents=True)
    (gpu / "device/of_node/name").write_text("ga10b\x00")
    (gpu / "cur_freq").write_text("306000000\n" if throttled else "1300500000\n")
    (gpu / "max_freq").write_text("1300500000\n")
    for cpu in usable_cpus():
        freq = root / f"devices/system/cpu/cpu{cpu}/cpufreq"
        freq.mkdir(parents=True)
        (freq / "scaling_cur_freq").write_text("1190400\n" if throttled else "2201600\n")
        (freq / "scaling_max_freq").write_text("2201600\n")
    zone = root / "class/thermal/thermal_zone1"
    zone.mkdir(parents=True)
    (zone / "type").write_text("gpu-thermal\n")
    (zone / "temp").write_text("95500\n" if hot else "48000\n")
    (zone / "trip_point_0_type").write_text("active\n")
    (zone / "trip_point_0_temp").write_text("50000\n")  # a fan trip: no throttling
    (zone / "trip_point_1_type").write_text("passive\n")
    (zone / "trip_point_1_temp").write_text("90000\n")
    return root


def test_throttled_jetson_gives_thermal_and_clock_warnings(
    classifier: Path, tmp_path: Path
) -> None:
    sysfs = fake_jetson_sysfs(tmp_path / "sys", hot=True, throttled=True)
    monitor = MachineMonitor(sysfs_root=sysfs, proc_root=tmp_path / "no-proc")
    with OnnxRuntimeRunner(classifier, threads=1) as runner:
        records = benchmark(
            runner, BenchConfig(warmup_iters=1, iterations=3), "dense", monitor=monitor
        )
    limits = StabilityLimits(max_cv=1e9, max_run_cv=1e9, max_load=1e9)
    thermal, cpu = timing_warnings(records, monitor.samples, limits)
    assert thermal.startswith("thermal throttling: zone gpu-thermal reached 95.5 C while timing")
    assert "passive trip point 90.0 C" in thermal
    assert cpu.startswith("CPU ") and "at 1190 of 2202 MHz" in cpu and "jetson_clocks" in cpu
    # A GPU measurement also looks at the GPU clock.
    on_gpu = [dataclasses.replace(r, device="cuda", backend="tensorrt") for r in records]
    lines = timing_warnings(on_gpu, monitor.samples, limits)
    assert any(
        line.startswith("GPU 17000000.ga10b ran at 306 MHz while timing, below its 1300 MHz")
        for line in lines
    )


def test_cool_jetson_at_full_clocks_and_a_machine_without_sysfs_say_nothing(
    classifier: Path, tmp_path: Path
) -> None:
    limits = StabilityLimits(max_cv=1e9, max_run_cv=1e9, max_load=1e9)
    cool = fake_jetson_sysfs(tmp_path / "sys", hot=False, throttled=False)
    for sysfs in (cool, tmp_path / "absent"):
        monitor = MachineMonitor(sysfs_root=sysfs, proc_root=tmp_path / "no-proc")
        with OnnxRuntimeRunner(classifier, threads=1) as runner:
            records = benchmark(
                runner, BenchConfig(warmup_iters=0, iterations=3), "d", monitor=monitor
            )
        on_gpu = [dataclasses.replace(r, device="cuda") for r in records]
        assert timing_warnings(on_gpu, monitor.samples, limits) == []


def test_clocks_are_only_read_on_boards_with_an_integrated_gpu(tmp_path: Path) -> None:
    """An x86 CPU below its turbo ceiling is normal: without a Jetson GPU, no clock readings."""
    sysfs = fake_jetson_sysfs(tmp_path / "sys", hot=False, throttled=True)
    shutil.rmtree(sysfs / "class/devfreq")
    sample = MachineMonitor(sysfs_root=sysfs, proc_root=tmp_path).sample("start")
    assert sample.clocks == () and len(sample.thermal) == 1


@pytest.mark.parametrize("field", ["max_cv", "max_run_cv", "max_load", "max_other_cpu"])
def test_limits_must_be_numbers_at_least_zero(field: str) -> None:
    with pytest.raises(DeployConfigError, match=field):
        StabilityLimits(**{field: -0.1})
