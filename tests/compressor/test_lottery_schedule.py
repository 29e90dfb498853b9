"""Which cells wait for which, the progress line, the executor flags and the GPU energy is read on.

Fast and without Ray: the grids run in tests/compressor/test_lottery_ray.py.
"""

from __future__ import annotations

import pytest
import torch

from compressor.cli import main
from compressor.errors import ConfigError
from compressor.workflows.lottery import schedule
from compressor.workflows.lottery.cells import Cell, plan
from compressor.workflows.lottery.energy import physical_gpu_index
from compressor.workflows.lottery.executor_config import ExecutorConfig
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
    progress.fail("after-kl-p1-r50-s0")
    assert progress.line() == "[grid] 2 done, 0 running, 0 left, 1 failed"


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"executor": "dask"}, "--executor must be one of ('local', 'ray'), got 'dask'"),
        ({"executor": "ray", "workers": 0}, "--workers must be an integer >= 1, got 0"),
        ({"executor": "ray", "threads": True}, "--threads must be an integer >= 1, got True"),
        ({"executor": "ray", "retries": -1}, "--retries must be an integer >= 0, got -1"),
        ({"workers": 2}, "--workers only apply to --executor ray; add --executor ray"),
        ({"address": "auto", "threads": 2}, "--address, --threads only apply to --executor ray"),
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
        "compressor: error: --workers only apply to --executor ray; add --executor ray, or "
        "leave them out (the one-process grid uses the recipe's train.threads)"
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
    assert "pip install 'layer-lottery-deploy[ray]'" in line
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
        (None, torch.device("cuda", 2), 2),  # torch sees every GPU: its numbering is NVML's
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
