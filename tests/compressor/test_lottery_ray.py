"""The lottery grid on Ray: the same cells as the one-process grid, and a killed worker resumes.

Real Ray (a local cluster the command starts, two worker processes), real training of the
issue's small grid (ResNet-8 on the digits, 2 epochs, seeds 0 and 1, GraSP and random at
initialization, p = 1), in one CPU thread per cell, so that every float sum is the same in
both executors and the accuracies must match exactly.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from compressor.recipe.sections import recipe_from_dict
from compressor.workflows.lottery.summary import summarise
from compressor.workflows.lottery.summary_tables import render_markdown
from deploy.machine.fingerprint import cpu_model
from tests.faults import ROOT, child_env

ray = pytest.importorskip("ray", reason="Ray is not installed (bash install.sh --test adds it)")

SMALL_GRID = {
    "version": 1,
    "name": "ray-grid",
    "seed": 0,
    "model": {"name": "resnet8", "width": 1.0},
    "data": {"name": "digits", "image_size": 16},
    "prune": {"criterion": "grasp", "blocks": 1, "samples_per_class": 10},
    "train": {"epochs": 2, "batch_size": 128, "lr": 0.05, "progress": "none", "threads": 1},
    "experiment": {
        "seeds": [0, 1],
        "blocks": [1],
        "at_init": ["grasp", "random"],
        "scratch": [],
        "filter_criteria": [],
        "after_training": [],
        "lmc_seeds": [],
        "energy_source": "declared",
        "power_watts": 5,
    },
}
CELLS = [
    "dense-s0",
    "dense-s1",
    "init-grasp-p1-s0",
    "init-grasp-p1-s1",
    "init-random-p1-s0",
    "init-random-p1-s1",
]
# Summary columns that come from wall time (and so differ between any two runs).
TIMED = {"train_seconds", "train_seconds_saved", "speedup", "co2_g", "co2_saved"}


def _lottery(args: list[str], **popen: object) -> subprocess.Popen[str]:
    command = [sys.executable, "-m", "compressor", "lottery", *args]
    return subprocess.Popen(
        command, cwd=ROOT, env=child_env(), text=True, stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT, **popen,
    )  # fmt: skip


def _finish(process: subprocess.Popen[str], timeout: float = 300) -> str:
    output, _ = process.communicate(timeout=timeout)
    assert process.returncode == 0, output[-4000:]
    return output


def _results(out: Path) -> dict[str, dict]:
    return {key: json.loads((out / "cells" / key / "result.json").read_text()) for key in CELLS}


def _deterministic(out: Path) -> list[dict]:
    rows = json.loads((out / "summary.json").read_text())["rows"]
    return [{k: v for k, v in row.items() if k not in TIMED} for row in rows]


@pytest.fixture(scope="module")
def grids(tmp_path_factory):
    """The small grid in one process, then with `--executor ray --workers 2`."""
    base = tmp_path_factory.mktemp("ray-grid")
    recipe = base / "grid.yaml"
    recipe.write_text(yaml.safe_dump(SMALL_GRID))
    local = _finish(_lottery([str(recipe), "--out", str(base / "local")]))
    on_ray = _finish(
        _lottery([str(recipe), "--out", str(base / "ray"), "--executor", "ray", "--workers", "2"])
    )
    return base, recipe, {"local": local, "ray": on_ray}


def test_ray_grid_gives_the_accuracies_of_the_one_process_grid(grids):
    base, _, outputs = grids
    local, on_ray = _results(base / "local"), _results(base / "ray")
    for key in CELLS:
        assert on_ray[key]["accuracy"] == local[key]["accuracy"], key
        assert on_ray[key]["val_accuracy"] == local[key]["val_accuracy"], key
        assert on_ray[key]["removed_blocks"] == local[key]["removed_blocks"], key
        assert on_ray[key]["macs"] == local[key]["macs"]
    assert local["dense-s0"]["accuracy"] > 0.3  # chance is 0.1: the cells really trained
    assert _deterministic(base / "ray") == _deterministic(base / "local")
    # Ray ran the cells: its progress lines, two workers, every cell trained once
    assert "[ray] cells on a Ray cluster on this machine; each on 1 CPU thread(s)" in outputs["ray"]
    assert "at most 2 at once" in outputs["ray"]
    for key in CELLS:  # each cell trained once, by a Ray worker
        assert outputs["ray"].count(f"] {key}: accuracy") == 1, key
    assert "finished meanwhile" not in outputs["ray"]
    assert "6 done, 0 running, 0 left" in outputs["ray"]
    side_by_side = "Some cells trained as Ray tasks, side by side"
    assert side_by_side in (base / "ray" / "summary.md").read_text()
    assert "Ray tasks" not in (base / "local" / "summary.md").read_text()
    for out in ("local", "ray"):
        assert "time left: about" in outputs[out]  # the estimate, in both executors


def test_cells_on_gpus_of_one_kind_are_comparable_and_other_kinds_are_flagged(grids):
    """Every Ray task sees its GPU as cuda:0 and reads its energy on its own GPU: the summary
    compares cells by device kind and energy method, not by index."""
    base, _, _ = grids
    recipe = recipe_from_dict(SMALL_GRID)
    results = list(_results(base / "ray").values())
    assert {r["device_kind"] for r in results} == {f"cpu: {cpu_model()}"}
    assert json.loads((base / "ray" / "summary.json").read_text())["devices"] == [
        f"cpu: {cpu_model()}"
    ]
    on_gpus = [
        {**r, "device": "cuda:0", "device_kind": "cuda: NVIDIA H200",
         "energy": {**r["energy"], "method": f"nvml:gpu{n}", "estimate": False}}
        for n, r in enumerate(results)
    ]  # fmt: skip
    summary = summarise(on_gpus, 1.0)
    assert summary["devices"] == ["cuda: NVIDIA H200"] and summary["energy_methods"] == ["nvml"]
    assert "**Warning:** the cells ran on" not in render_markdown(summary, recipe, None)
    on_gpus[0]["device_kind"] = "cuda: NVIDIA A100-SXM4-80GB"
    mixed = summarise(on_gpus, 1.0)
    assert "**Warning:** the cells ran on ['cuda: NVIDIA A100-SXM4-80GB', 'cuda: NVIDIA H200']" in (
        render_markdown(mixed, recipe, None)
    )


def test_summary_only_rewrites_the_summary_without_training(grids):
    base, recipe, _ = grids
    out = base / "ray"
    before = {key: (out / "cells" / key / "result.json").stat().st_mtime_ns for key in CELLS}
    (out / "summary.md").unlink()
    output = _finish(_lottery(["--out", str(out), "--summary-only"]))  # its own recipe.json
    assert "all 6 cells finished; writing the summary again" in output
    assert (out / "summary.md").is_file()
    assert _deterministic(out) == _deterministic(base / "local")
    after = {key: (out / "cells" / key / "result.json").stat().st_mtime_ns for key in CELLS}
    assert after == before


def test_summary_only_names_the_cells_that_have_not_finished(grids, tmp_path):
    base, recipe, _ = grids
    copy = tmp_path / "grid"
    subprocess.run(["cp", "-r", str(base / "local"), str(copy)], check=True)
    subprocess.run(["rm", "-r", str(copy / "cells" / "init-random-p1-s1")], check=True)
    process = _lottery([str(recipe), "--out", str(copy), "--summary-only"])
    output, _ = process.communicate(timeout=120)
    assert process.returncode == 1
    assert output.strip().splitlines()[-1] == (
        f"compressor: error: --summary-only: 1 of 6 cells of this grid have not finished in "
        f"{copy} (init-random-p1-s1); run without --summary-only (with --resume) to train them"
    )


@pytest.mark.slow
def test_a_worker_killed_mid_cell_resumes_from_the_cells_checkpoint(grids, tmp_path):
    """SIGKILL the Ray worker training a cell after its first epoch's checkpoint: Ray starts
    the task again, it resumes at epoch 2, nothing finished is trained again, and the summary
    equals the uninterrupted grid's on every column that does not come from wall time."""
    base, recipe, _ = grids
    out = tmp_path / "killed"
    target = out / "cells" / "init-grasp-p1-s0"
    process = _lottery([str(recipe), "--out", str(out), "--executor", "ray", "--workers", "2"])
    deadline = time.monotonic() + 240
    metrics = target / "train" / "metrics.jsonl"
    while not (metrics.is_file() and metrics.read_text().strip()):  # written after the checkpoint
        assert process.poll() is None and time.monotonic() < deadline, "the cell never started"
        time.sleep(0.01)
    killed_pid = json.loads((target / ".lock").read_text())["pid"]
    first_epoch = metrics.read_text().splitlines()
    finished = {
        key: (out / "cells" / key / "result.json").stat().st_mtime_ns
        for key in CELLS
        if (out / "cells" / key / "result.json").is_file()
    }
    os.kill(killed_pid, signal.SIGKILL)
    assert not (target / "result.json").exists(), "the cell finished before the kill"
    assert [json.loads(line)["epoch"] for line in first_epoch] == [1]
    output = _finish(process)

    assert json.loads((target / ".lock").read_text())["pid"] != killed_pid  # another try
    records = metrics.read_text().splitlines()
    assert [json.loads(line)["epoch"] for line in records] == [1, 2]
    assert records[0] == first_epoch[0]  # resumed at epoch 2: epoch 1 was not trained again
    for key, mtime in finished.items():  # nothing finished before the kill was recomputed
        assert (out / "cells" / key / "result.json").stat().st_mtime_ns == mtime, key
    assert "6 done, 0 running, 0 left" in output and ": failed:" not in output
    assert _deterministic(out) == _deterministic(base / "local")
    assert (
        _results(out)["init-grasp-p1-s0"]["accuracy"]
        == (_results(base / "local")["init-grasp-p1-s0"]["accuracy"])
    )


@pytest.mark.slow
def test_a_cell_that_fails_is_named_and_the_others_finish(grids, tmp_path):
    """dense-s1's checkpoint is damaged: that cell fails for good (no retry: it raised), the
    cells that need it are not started, seed 0's cells are kept, and the grid says which
    and how to go on. Once the damaged folder is deleted, --resume trains only seed 1."""
    base, recipe, _ = grids
    out = tmp_path / "grid"
    subprocess.run(["cp", "-r", str(base / "local"), str(out)], check=True)
    for key in ("dense-s1", "init-grasp-p1-s1", "init-random-p1-s1"):
        subprocess.run(["rm", "-r", str(out / "cells" / key)], check=True)
    (out / "summary.md").unlink()
    damaged = out / "cells" / "dense-s1" / "train" / "checkpoint.pt"
    damaged.parent.mkdir(parents=True)
    damaged.write_bytes(b"not a checkpoint")
    kept = {key: (out / "cells" / key / "result.json").read_text() for key in CELLS[::2]}

    ray_args = ["--executor", "ray", "--workers", "2", "--resume"]
    process = _lottery([str(recipe), "--out", str(out), *ray_args])
    output, _ = process.communicate(timeout=300)
    assert process.returncode == 1, output[-3000:]
    last = output.strip().splitlines()[-1]
    assert last.startswith("compressor: error: 1 cell(s) failed: dense-s1: ")
    assert str(damaged) in last
    assert "; 2 not started, as they need a failed cell: init-grasp-p1-s1, init-random-p1-s1." in (
        last
    )
    assert "1 failed, 2 blocked by a failed cell" in output
    assert last.endswith(
        f"The other 3 cells are finished and kept in {out}; fix the cause and rerun with "
        "--resume to train only what is missing"
    )
    assert {key: (out / "cells" / key / "result.json").read_text() for key in kept} == kept
    assert not (out / "summary.md").exists()  # no summary of an unfinished grid

    subprocess.run(["rm", "-r", str(out / "cells" / "dense-s1")], check=True)
    again = _finish(_lottery([str(recipe), "--out", str(out), *ray_args]))
    assert again.count("finished before, kept") == 3
    assert _deterministic(out) == _deterministic(base / "local")


@pytest.mark.slow
def test_two_runs_on_one_grid_share_its_cells(grids, tmp_path):
    """Locks are per cell: a second one-process run with --resume on the same --out trains
    the cells the first does not hold instead of being refused, and no cell is trained twice
    (the trainer's own lock would refuse the second, failing that run)."""
    base, recipe, _ = grids
    out = tmp_path / "shared"
    first = _lottery([str(recipe), "--out", str(out)])
    deadline = time.monotonic() + 120
    while not (out / "recipe.json").is_file():
        assert first.poll() is None and time.monotonic() < deadline, "the first run never began"
        time.sleep(0.05)
    second = _lottery([str(recipe), "--out", str(out), "--resume"])
    outputs = [_finish(first), _finish(second)]
    for key in CELLS:
        metrics = (out / "cells" / key / "train" / "metrics.jsonl").read_text().splitlines()
        assert [json.loads(line)["epoch"] for line in metrics] == [1, 2], key
    trained = [
        key for key in CELLS for text in outputs if f"{key}: accuracy" in text
    ]  # each cell trained by exactly one of the runs
    assert sorted(trained) == sorted(CELLS)
    assert _deterministic(out) == _deterministic(base / "local")
