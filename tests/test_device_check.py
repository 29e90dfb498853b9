"""benchmarks/device_check.py on the CPU (--dry-run): the script a GPU session runs as one call.

Its CUDA parts (CUDA graphs, NVML energy, AMP) only run on the lent GPU machine; here the
same steps run on the CPU with the quick recipe, so a session with a GPU does not spend its
minutes finding a broken script.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_dry_run_writes_every_step_and_times_every_variant(tmp_path: Path) -> None:
    done = subprocess.run(
        [sys.executable, "benchmarks/device_check.py", "--dry-run", "--out", str(tmp_path)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    result = json.loads((tmp_path / "device_check.json").read_text())
    assert result["gpu"]["status"] == "skipped" and "CUDA" in result["gpu"]["reason"]
    assert result["amp_run"]["status"] == "ok"
    assert set(result["amp_run"]["variants"]) == {"dense", "ticket", "shrunk"}
    rows = [r for r in result["cuda_latency"]["rows"] if "p50_ms" in r]
    assert {(r["variant"], r["batch"]) for r in rows} == {
        (v, b) for v in ("dense", "ticket", "shrunk") for b in (1, 8)
    }
    assert all(r["p50_ms"] > 0 and len(r["run_medians_ms"]) == 3 for r in rows)
    graphs = [r for r in result["cuda_latency"]["rows"] if r["mode"] == "cuda_graph"]
    assert graphs and all(r["status"] == "skipped" for r in graphs)
    assert result["energy"]["status"] == "skipped"
    assert result["latency_table"]["status"] == "ok"
    # The summary is printed last, the latency table's prediction error at its end.
    last = done.stdout.strip().splitlines()
    assert "resnet56 torch batch 1, 2 random block subsets" in last[-1]
    assert last[-2].split()[:3] == ["shrunk", "b8", "eager"]
