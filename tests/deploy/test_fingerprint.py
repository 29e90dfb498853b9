"""Device fingerprint: the facts behind a latency number, and an id that groups runs."""

from __future__ import annotations

import os
import platform
from pathlib import Path

from deploy.fingerprint import (
    cpu_model,
    device_fingerprint,
    fingerprint_id,
    physical_cores,
    summary_line,
)


def test_fields_describe_this_machine() -> None:
    fp = device_fingerprint(threads=2)
    assert fp["logical_cores"] == os.cpu_count()
    assert fp["python"] == platform.python_version()
    assert fp["threads"] == 2
    assert fp["cpu_model"]
    import numpy

    assert fp["libraries"]["numpy"] == numpy.__version__
    assert fp["libraries"]["onnxruntime"]
    assert "CPUExecutionProvider" in fp["onnxruntime_providers"]
    for later in ("gpu_name", "gpu_driver", "cuda_version", "jetson_model", "power_mode"):
        assert fp[later] is None
    assert len(fp["fingerprint_id"]) == 12


def test_id_is_stable_and_tracks_only_timing_relevant_fields() -> None:
    first, second = device_fingerprint(threads=1), device_fingerprint(threads=1)
    assert first["fingerprint_id"] == second["fingerprint_id"]
    assert fingerprint_id(first | {"hostname": "elsewhere"}) == first["fingerprint_id"]
    assert device_fingerprint(threads=4)["fingerprint_id"] != first["fingerprint_id"]
    changed_lib = first | {"libraries": first["libraries"] | {"onnxruntime": "0.0.1"}}
    assert fingerprint_id(changed_lib) != first["fingerprint_id"]


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
    fp = device_fingerprint(threads=3)
    line = summary_line(fp)
    assert "\n" not in line
    assert fp["cpu_model"] in line and "threads=3" in line and fp["fingerprint_id"] in line
