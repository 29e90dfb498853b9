"""Which cells wait for which, the progress line, the executor flags and the GPU energy is read on.

Fast and without Ray: the grids run in tests/compressor/test_lottery_ray.py.
"""

from __future__ import annotations

import os
import socket

import pytest
import torch
import yaml

from compressor.cli import main
from compressor.errors import ConfigError
from compressor.recipe.sections import recipe_from_dict
from compressor.workflows.lottery import schedule
from compressor.workflows.lottery.cells import Cell, plan
from compressor.workflows.lottery.energy import physical_gpu_index
from compressor.workflows.lottery.executor_config import ExecutorConfig
from compressor.workflows.lottery.ray_grid import Resources, plan_resources, task_recipe_dict
from compressor.workflows.lottery.recipes import lottery_recipe
from compressor.workflows.lottery.schedule import GridProgress, dependencies


def test_every_cell_waits_for_the_cells_it_reads_on_the_default_grid():
    recipe = lottery_recipe()
    cells = plan(recipe.experiment)
    needs = dependencies(cells)
    assert len(cells) == 89 and set(needs) == {cell.key for cell in cells}
    assert needs["dense-s1"] == ()
    assert needs["init-grasp-p3-s1"] == ("dense-s1",)
    assert needs["after-kl-p3-r50-s2"] == ("dense-s2",)  # its rewind snapshots and scores
    assert needs["scratch-grasp-p2-s0"] == ("dense-s0", "init-grasp-p2-s0")  # the trained ticket
    assert needs["filter-snip-p1-s2"] == ("dense-s2", "init-snip-p1-s2")
    assert needs["lmc-dense-s0"] == ("dense-s0",)
    assert needs["lmc-init-grasp-p3-s0"] == ("dense-s0", "init-grasp-p3-s0")
    order = [cell.key for cell in cells]  # plan order runs every cell after what it reads
    for key, wanted in needs.items():
        assert all(order.index(w) < order.index(key) for w in wanted), key


def test_a_scratch_cell_without_its_init_cell_waits_only_for_dense():
    """scratch: [snip] while at_init has no snip: the ticket is scored again, as before."""
    recipe = lottery_recipe()
    experiment = recipe.experiment.__class__(
        seeds=(0,), blocks=(1,), at_init=("grasp",), scratch=("snip",), lmc_seeds=()
    )
    needs = dependencies(plan(experiment))
    assert needs["scratch-snip-p1-s0"] == ("dense-s0",)


def test_progress_says_done_running_left_and_the_time_left(monkeypatch):
    now = [100.0]
    monkeypatch.setattr(schedule.time, "perf_counter", lambda: now[0])
    cells = [Cell("dense", 0), Cell("init", 0, "grasp", 1), Cell("after", 0, "kl", 1, 0.5)]
    lines: list[str] = []
    progress = GridProgress.of(cells, epochs=10, log=lines.append)
    progress.finished_before("dense-s0")  # an earlier run's: no pace from it
    progress.start("init-grasp-p1-s0")
    assert progress.line() == "[grid] 1 done, 1 running, 1 left; time left: after the first cell"
    now[0] = 160.0
    progress.finish("init-grasp-p1-s0")  # 10 epochs in 60 s; the after cell retrains 5
    progress.report()
    assert lines == ["[grid] 2 done, 0 running, 1 left; time left: about 30 s"]
    progress.fail("after-kl-p1-r50-s0", blocked=True)
    assert progress.line() == "[grid] 2 done, 0 running, 0 left, 1 blocked by a failed cell"


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"executor": "dask"}, "--executor must be one of ('local', 'ray'), got 'dask'"),
        ({"executor": "ray", "workers": 0}, "--workers must be an integer >= 1, got 0"),
        ({"executor": "ray", "threads": True}, "--threads must be an integer >= 1, got True"),
        ({"executor": "ray", "retries": -1}, "--retries must be an integer >= 0, got -1"),
        ({"workers": 2}, "--workers applies only to --executor ray; add --executor ray"),
        ({"address": "auto", "threads": 2}, "--address, --threads apply only to --executor ray"),
        ({"retries": 0}, "--retries applies only to --executor ray; add --executor ray, or leave"),
    ],
)
def test_bad_executor_settings_name_the_flag(kwargs, message):
    with pytest.raises(ConfigError) as caught:
        ExecutorConfig(**kwargs)
    assert str(caught.value).startswith(message)


def test_cli_refuses_ray_flags_without_ray_executor_in_one_line(tmp_path, capsys):
    code = main(["lottery", "--workers", "2", "--out", str(tmp_path / "grid")])
    assert code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [
        "compressor: error: --workers applies only to --executor ray; add --executor ray, or "
        "leave it out"
    ]
    assert not (tmp_path / "grid").exists()


def test_missing_ray_is_one_line_naming_the_extra_before_anything_is_written(
    tmp_path, capsys, monkeypatch
):
    monkeypatch.setitem(__import__("sys").modules, "ray", None)  # `import ray` fails
    code = main(["lottery", "--executor", "ray", "--out", str(tmp_path / "grid")])
    assert code == 1
    (line,) = capsys.readouterr().err.strip().splitlines()
    assert line.startswith("compressor: error: compressor lottery --executor ray needs the 'ray'")
    assert "pip install 'layer-lottery-deploy[pipeline,ray]'" in line
    assert not (tmp_path / "grid").exists()


def test_lottery_under_torchrun_says_to_use_ray(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "1")
    code = main(["lottery", "--out", str(tmp_path / "grid")])
    assert code == 2
    assert "cannot run under torchrun; to train cells on several GPUs or nodes at once use " \
        "--executor ray" in capsys.readouterr().err  # fmt: skip
    assert not (tmp_path / "grid").exists()


def test_summary_only_on_a_folder_without_a_grid(tmp_path, capsys):
    code = main(["lottery", "--summary-only", "--out", str(tmp_path)])
    assert code == 1
    assert capsys.readouterr().err.strip() == (
        f"compressor: error: {tmp_path} holds no lottery grid (no recipe.json); --summary-only "
        "rewrites the summary of a grid run there before"
    )


@pytest.mark.parametrize(
    "visible, device, expected",
    [
        (None, torch.device("cuda", 2), 2),  # no NVML here: mapped by position
        ("3,1", torch.device("cuda", 0), 3),  # Ray gave this task GPUs 3 and 1
        ("3,1", torch.device("cuda", 1), 1),
        ("5", torch.device("cuda"), 5),  # "cuda" is the first visible GPU
        ("3,1", torch.device("cuda", 2), None),  # not a visible GPU: unknown, not GPU 0
        ("0", torch.device("cpu"), None),
    ],
)
def test_energy_is_read_on_the_physical_gpu_the_cell_trains_on(
    monkeypatch, visible, device, expected
):
    if visible is None:
        monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    else:
        monkeypatch.setenv("CUDA_VISIBLE_DEVICES", visible)
    assert physical_gpu_index(device) == expected


def test_a_cell_another_run_finished_counts_as_done_but_not_towards_the_pace(monkeypatch):
    now = [0.0]
    monkeypatch.setattr(schedule.time, "perf_counter", lambda: now[0])
    cells = [Cell("dense", 0), Cell("dense", 1), Cell("dense", 2)]
    progress = GridProgress.of(cells, epochs=10, log=print)
    progress.finish("dense-s0", trained=False)  # read back, not trained here
    assert progress.seconds_left() is None
    progress.start("dense-s1")
    now[0] = 20.0
    progress.finish("dense-s1")
    assert progress.seconds_left() == pytest.approx(20.0)  # 10 epochs left at 0.5 epoch/s


@pytest.mark.parametrize(
    "device, gpus, cpus, flags, threads, expected",
    [
        ("auto", 0, 2, {"workers": 2}, None, Resources(False, 1, 2)),  # cores shared
        ("auto", 0, 16, {}, None, Resources(False, 1, 16)),
        ("auto", 0, 16, {"threads": 4}, None, Resources(False, 4, 4)),
        ("auto", 0, 16, {}, 2, Resources(False, 2, 8)),  # the recipe's train.threads
        ("auto", 8, 64, {}, None, Resources(True, 1, 8)),  # one cell per GPU
        ("cuda", 8, 64, {"workers": 3, "threads": 4}, None, Resources(True, 4, 3)),
        ("cpu", 8, 64, {"workers": 4}, None, Resources(False, 16, 4)),  # GPUs left alone
    ],
)
def test_resources_each_cell_asks_ray_for(device, gpus, cpus, flags, threads, expected):
    executor = ExecutorConfig("ray", **flags)
    assert plan_resources(device, gpus, cpus, executor, threads) == expected


def test_cuda_cells_on_a_cluster_without_gpus_are_refused():
    with pytest.raises(ConfigError, match="train.device is 'cuda' but the Ray cluster has no GPU"):
        plan_resources("cuda", 0, 64, ExecutorConfig("ray"), None)


def test_workers_run_the_recipe_with_their_device_threads_and_absolute_paths(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    recipe = lottery_recipe("data/c10")  # the paper-scale grid, its batches in a relative folder
    on_gpu = task_recipe_dict(recipe, Resources(True, 2, 8))
    assert on_gpu["train"]["device"] == "cuda" and on_gpu["train"]["threads"] == 2
    assert on_gpu["data"]["root"] == str(tmp_path / "data" / "c10")
    on_cpu = task_recipe_dict(recipe, Resources(False, 1, 2))
    assert on_cpu["train"]["device"] == "cpu"  # never a GPU Ray did not hand out
    assert recipe_from_dict(on_cpu).train.threads == 1  # a recipe the worker can read


def test_an_address_nobody_answers_on_fails_at_once_in_one_line(tmp_path, capsys):
    """ray.init retries such an address without end; the probe says so within seconds."""
    pytest.importorskip("ray", reason="Ray is not installed (bash install.sh --test adds it)")
    with socket.socket() as probe:  # a port that was free a moment ago: nothing listens
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    recipe = tmp_path / "grid.yaml"
    recipe.write_text(yaml.safe_dump(TINY_GRID))
    code = main(
        ["lottery", str(recipe), "--executor", "ray", "--address", f"127.0.0.1:{port}",
         "--out", str(tmp_path / "grid")]
    )  # fmt: skip
    assert code == 1
    (line,) = [x for x in capsys.readouterr().err.splitlines() if x.startswith("compressor:")]
    assert line.startswith(f"compressor: error: --address 127.0.0.1:{port}: nothing answers there")
    assert main(["lottery", str(recipe), "--plan", "--out", str(tmp_path / "grid")]) == 0
    # nothing was trained, so the folder is free for the next start, without --resume
    assert not (tmp_path / "grid" / "cells").exists()


def test_more_threads_than_cores_is_refused(tmp_path, capsys):
    pytest.importorskip("ray", reason="Ray is not installed (bash install.sh --test adds it)")
    recipe = tmp_path / "grid.yaml"
    recipe.write_text(yaml.safe_dump(TINY_GRID))
    cores = os.cpu_count() or 1
    argv = ["lottery", str(recipe), "--executor", "ray", "--threads", str(cores + 1)]
    assert main([*argv, "--out", str(tmp_path / "grid")]) == 2
    assert f"--threads {cores + 1}: this machine has {cores} CPU cores" in capsys.readouterr().err


TINY_GRID = {
    "model": {"name": "resnet8", "width": 0.5},
    "data": {"name": "digits", "image_size": 8, "limit_train": 200},
    "train": {"epochs": 1, "batch_size": 64, "progress": "none", "warmup_epochs": 0},
    "experiment": {
        "seeds": [0], "blocks": [1], "at_init": ["random"], "scratch": [],
        "filter_criteria": [], "after_training": [], "lmc_seeds": [],
        "energy_source": "declared", "power_watts": 5,
    },
}  # fmt: skip
