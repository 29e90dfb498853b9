"""`compressor lottery`: the grid, its baselines and measurements, and resuming it."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml
from torch import nn

from compressor.cli import main
from compressor.errors import ConfigError, InputError
from compressor.models.zoo import create_model
from compressor.outdir import exclusive_out_dir, lock_holder
from compressor.prune.filters import block_filters, prune_filters_at_init
from compressor.recipe.sections import load_recipe, recipe_from_dict
from compressor.training.memory import step_memory_bytes
from compressor.workflows.lottery.energy import EnergyMeter
from compressor.workflows.lottery.experiment import ExperimentConfig, plan, run_experiment
from compressor.workflows.lottery.recipes import CIFAR10, DIGITS, lottery_recipe
from compressor.workflows.lottery.summary import summarise
from tests.faults import Fault, run_compressor, stale_temporaries

ROOT = Path(__file__).resolve().parents[2]

# 14 networks of a ResNet-14 on 8x8 digits: every kind of cell, two seeds, in seconds.
TINY = {
    "name": "tiny-lottery",
    "model": {"name": "resnet14", "width": 0.5},
    "data": {"name": "digits", "image_size": 8, "limit_train": 700},
    "prune": {"criterion": "grasp", "blocks": 1, "samples_per_class": 4},
    "train": {"epochs": 3, "batch_size": 64, "lr": 0.1, "progress": "none"},
    "experiment": {
        "seeds": [0, 1],
        "blocks": [1],
        "at_init": ["snip", "random"],
        "scratch": ["snip"],
        "filter_criteria": ["snip"],
        "filter_blocks": [1],
        "after_training": ["kl"],
        "after_training_blocks": [1],
        "rewind": [0.5],
        "lmc_criterion": "snip",
        "lmc_blocks": [1],
        "lmc_seeds": [0],
        "corruptions": ["gaussian_noise", "contrast"],
        "severities": [1, 5],
        "power_watts": 5,
        "energy_source": "declared",
    },
}
# What a rerun of the same seeds must reproduce on CPU (times and energy are measured anew).
DETERMINISTIC = (
    "method", "blocks", "seeds", "accuracy", "accuracy_std", "delta", "wins", "macs", "params",
    "memory", "corrupted", "corrupted_by_name", "cka", "barrier", "target_filters",
    "removed_filters",
)  # fmt: skip


def _write(tmp_path: Path, recipe: dict, name: str = "recipe.yaml") -> Path:
    path = tmp_path / name
    path.write_text(yaml.safe_dump(recipe))
    return path


def _deterministic(summary: dict) -> list[dict]:
    return [{k: row.get(k) for k in DETERMINISTIC} for row in summary["rows"]]


@pytest.fixture(scope="module")
def grid(tmp_path_factory) -> Path:  # noqa: ANN001
    out = tmp_path_factory.mktemp("lottery") / "out"
    run_experiment(recipe_from_dict(TINY), out, log=lambda _: None)
    return out


# --- the grid's results -------------------------------------------------------------------------


def test_every_cell_is_stored_with_its_measurements(grid: Path) -> None:
    keys = [cell.key for cell in plan(recipe_from_dict(TINY).experiment)]
    assert len(keys) == 14
    for key in keys:
        result = json.loads((grid / "cells" / key / "result.json").read_text())
        assert (grid / "cells" / key / "model" / "weights.safetensors").is_file()
        rewound = key.startswith("after")  # rewound to epoch 2 of 3
        assert result["epochs_trained"] == (1 if rewound else 3)
        rows = result["corruptions"]["rows"]
        assert [(r["corruption"], r["severity"]) for r in rows] == [
            ("clean", 0),
            ("gaussian_noise", 1),
            ("gaussian_noise", 5),
            ("contrast", 1),
            ("contrast", 5),
        ]
        assert result["energy"]["estimate"] and result["energy"]["method"] == "declared 5 W"
        assert result["energy"]["energy_kwh"] == pytest.approx(5 * result["train_seconds"] / 3.6e6)
        if not key.startswith("dense"):
            assert set(result["cka_vs_dense"]) == {"layer1", "layer2", "layer3"}
    dense = json.loads((grid / "cells" / "dense-s0" / "result.json").read_text())
    assert dense["accuracy"] > 0.5  # ten classes: chance is 0.1
    assert (grid / "cells" / "dense-s0" / "train" / "rewind_e002.safetensors").is_file()


def test_summary_rows_follow_from_the_cells(grid: Path) -> None:
    summary = json.loads((grid / "summary.json").read_text())
    cells = {p.parent.name: json.loads(p.read_text()) for p in grid.glob("cells/*/result.json")}
    dense_mean = 50 * (cells["dense-s0"]["accuracy"] + cells["dense-s1"]["accuracy"])
    rows = {(r["kind"], r["criterion"], r["blocks"]): r for r in summary["rows"]}
    snip = rows["init", "snip", 1]
    mean = 50 * (cells["init-snip-p1-s0"]["accuracy"] + cells["init-snip-p1-s1"]["accuracy"])
    assert snip["accuracy"] == pytest.approx(mean)
    assert snip["delta"] == pytest.approx(mean - dense_mean)
    assert snip["wins"] == (mean + 1.0 >= dense_mean)
    assert 0 < snip["macs_saved"] < 1 and snip["memory_saved"] > 0
    filters = rows["filter", "snip", 1]
    assert filters["removed_filters"] >= filters["target_filters"] > 0
    assert rows["lmc", None, 0]["twin_of"] == "dense" and rows["lmc", "snip", 1]["barrier"] >= 0
    text = (grid / "summary.md").read_text()
    for heading in ("Table 2", "Table 3", "Algorithm 1", "Linear mode connectivity", "CKA"):
        assert heading in text
    assert "declared 5 W, an estimate" in text
    assert (grid / "delta_vs_p.png").stat().st_size > 1000
    assert (grid / "savings_vs_p.png").stat().st_size > 1000


def test_scratch_has_the_tickets_architecture_but_other_weights(grid: Path) -> None:
    from compressor.models.store import load_model

    ticket = load_model(grid / "cells" / "init-snip-p1-s0" / "model")
    scratch = load_model(grid / "cells" / "scratch-snip-p1-s0" / "model")
    assert ticket.spec.removed_blocks == scratch.spec.removed_blocks
    first = "stem.0.weight"
    assert not torch.equal(ticket.model.state_dict()[first], scratch.model.state_dict()[first])


def test_winning_flag_uses_xi_in_points_or_the_dense_std() -> None:
    def cell(kind: str, seed: int, accuracy: float) -> dict:
        return {
            "kind": kind, "seed": seed, "criterion": None if kind == "dense" else "grasp",
            "blocks": 0 if kind == "dense" else 2, "rewind": None, "accuracy": accuracy,
            "macs": 100 if kind == "dense" else 80, "params": 10, "epochs_trained": 1,
            "step_memory_bytes": {"total": 50}, "train_seconds": 2.0 if kind == "dense" else 1.0,
        }  # fmt: skip

    results = [cell("dense", 0, 0.90), cell("dense", 1, 0.92), cell("init", 0, 0.8975)]
    points = summarise(results, 1.0)["rows"][1]
    assert points["delta"] == pytest.approx(-1.25) and not points["wins"]
    assert points["macs_saved"] == pytest.approx(0.2) and points["speedup"] == pytest.approx(2)
    by_std = summarise(results, "std")  # dense std of 90 and 92 is 1.41 points; 89.75 + 1.41 > 91
    assert by_std["xi_points"] == pytest.approx(2**0.5) and by_std["rows"][1]["wins"]


# --- resuming -----------------------------------------------------------------------------------


def test_killed_grid_resumes_to_the_same_table(grid: Path, tmp_path: Path) -> None:
    recipe = _write(tmp_path, TINY)
    out = tmp_path / "out"
    command = [sys.executable, "-m", "compressor", "lottery", str(recipe), "--out", str(out)]
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    process = subprocess.Popen(command, env=env, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 120
    while len(list(out.glob("cells/*/result.json"))) < 4 and time.monotonic() < deadline:
        time.sleep(0.05)
    process.send_signal(signal.SIGKILL)
    process.wait()
    finished = {p: p.stat().st_mtime_ns for p in out.glob("cells/*/result.json")}
    assert 4 <= len(finished) < 14, "the grid was not killed midway"
    rerun = subprocess.run(command, env=env, capture_output=True, text=True)
    assert rerun.returncode == 1 and "pass --resume" in rerun.stderr
    assert main(["lottery", str(recipe), "--out", str(out), "--resume"]) == 0
    assert {p: p.stat().st_mtime_ns for p in finished} == finished  # never recomputed
    resumed = json.loads((out / "summary.json").read_text())
    uninterrupted = json.loads((grid / "summary.json").read_text())
    assert _deterministic(resumed) == _deterministic(uninterrupted)


def test_grid_killed_inside_file_writes_resumes_to_the_same_table(
    grid: Path, tmp_path: Path
) -> None:
    """SIGKILL halfway through writing a cell's result.json, then inside a checkpoint's
    write before its rename: no torn file is ever read, and the table is the same."""
    recipe = _write(tmp_path, TINY)
    out = tmp_path / "out"
    argv = ["lottery", str(recipe), "--out", str(out)]
    first = run_compressor(argv, fault=Fault("result.json", nth=3, phase="data", cut=0.5))
    assert first.killed
    assert len(list(out.glob("cells/*/result.json"))) == 2  # the third never appeared
    assert stale_temporaries(out)
    second = run_compressor(
        [*argv, "--resume"], fault=Fault("checkpoint.pt", nth=2, phase="before-rename")
    )
    assert second.killed
    assert main([*argv, "--resume"]) == 0
    assert stale_temporaries(out) == []
    resumed = json.loads((out / "summary.json").read_text())
    uninterrupted = json.loads((grid / "summary.json").read_text())
    assert _deterministic(resumed) == _deterministic(uninterrupted)


def test_a_cell_is_held_by_the_run_training_it_and_freed_when_that_run_dies(
    tmp_path: Path,
) -> None:
    """Locks are per cell (two --resume runs share a grid: tests/compressor/test_lottery_ray.py);
    a second run without --resume is refused, and a killed run's cell is free again."""
    recipe = _write(tmp_path, TINY)
    out = tmp_path / "out"
    command = [sys.executable, "-m", "compressor", "lottery", str(recipe), "--out", str(out)]
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    first = subprocess.Popen(command, env=env, stderr=subprocess.DEVNULL)
    cell = out / "cells" / "dense-s0"
    try:
        deadline = time.monotonic() + 120
        while (lock_holder(cell) or {}).get("pid") != first.pid:
            assert time.monotonic() < deadline, "the first run never held its first cell"
            time.sleep(0.05)
        second = subprocess.run(command, env=env, capture_output=True, text=True)
        assert second.returncode == 1
        last = second.stderr.strip().splitlines()[-1]  # after the [data] progress line
        assert last == (
            f"compressor: error: {out} already holds an experiment; pass --resume to continue "
            "or grow it, or choose another --out"
        )
        held = pytest.raises(InputError, match=f"in use by another run \\(process {first.pid}")
        with held, exclusive_out_dir(cell):
            pass
    finally:
        first.send_signal(signal.SIGKILL)
        first.wait()
    # The first run's lock died with it: the cell is free again (resuming is tested above).
    assert lock_holder(cell)["pid"] == first.pid
    with exclusive_out_dir(cell):
        assert lock_holder(cell)["pid"] == os.getpid()


def test_resume_may_grow_the_grid_but_not_change_the_training(grid: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    small = {**TINY, "experiment": {**TINY["experiment"], "seeds": [0], "lmc_seeds": []}}
    run_experiment(recipe_from_dict(small), out, log=lambda _: None)
    before = {p: p.stat().st_mtime_ns for p in out.glob("cells/*/result.json")}
    grown = {**small, "experiment": {**small["experiment"], "seeds": [0, 1]}}
    lines: list[str] = []
    run_experiment(recipe_from_dict(grown), out, resume=True, log=lines.append)
    assert {p: p.stat().st_mtime_ns for p in before} == before
    assert sum("finished before, kept" in line for line in lines) == len(before) == 6
    assert len(list(out.glob("cells/*/result.json"))) == 12
    longer = {**grown, "train": {**TINY["train"], "epochs": 4}}
    with pytest.raises(ConfigError, match=r"\['train.epochs'\] differ"):
        run_experiment(recipe_from_dict(longer), out, resume=True, log=lambda _: None)


# --- baselines and measurements -----------------------------------------------------------------


def _theta0() -> nn.Module:
    torch.manual_seed(0)
    return create_model("resnet14", num_classes=10, in_channels=1, width=0.5)


@pytest.mark.parametrize("criterion", ["snip", "grasp", "random"])
def test_filter_pruning_removes_the_layer_tickets_filter_count(criterion: str) -> None:
    model, theta0 = _theta0(), _theta0()
    images, labels = torch.randn(20, 1, 8, 8), torch.arange(20) % 10
    target = block_filters(model, ["layer1.1"])
    assert target == 16  # two convs of 8 filters
    result = prune_filters_at_init(model, images, target, criterion, (images, labels), seed=0)
    removed = sum(before - after for before, after in result.channels.values())
    assert removed == result.removed_filters and target <= removed < target + 8
    convs = {n: m.out_channels for n, m in model.named_modules() if isinstance(m, nn.Conv2d)}
    assert sum(convs.values()) == sum(b for b, _ in result.channels.values()) - removed
    assert model(images).shape == (20, 10) and result.macs_after < result.macs_before
    # Kept weights are theta_0's: every kept filter of a pruned conv is one of its filters.
    for name, (before, after) in result.channels.items():
        if before != after:
            kept = dict(model.named_modules())[name].weight
            original = dict(theta0.named_modules())[name].weight
            in_kept = kept.shape[1]
            if in_kept == original.shape[1]:
                rows = {tuple(r.flatten().tolist()) for r in original}
                assert all(tuple(r.flatten().tolist()) in rows for r in kept)


def test_filter_pruning_refuses_trained_weight_criteria_and_impossible_counts() -> None:
    images, labels = torch.randn(20, 1, 8, 8), torch.arange(20) % 10
    with pytest.raises(ConfigError, match="meant for trained weights"):
        prune_filters_at_init(_theta0(), images, 8, "kl", (images, labels))
    with pytest.raises(Exception, match="only .* filters asked for can go"):
        prune_filters_at_init(_theta0(), images, 10**6, "random", None)


def test_step_memory_counts_weights_three_times_and_falls_without_blocks() -> None:
    from compressor.models.spec import remove_blocks_

    model = _theta0()
    images, labels = torch.randn(16, 1, 8, 8), torch.arange(16) % 10
    full = step_memory_bytes(model, images, labels)
    weights = sum(p.numel() * 4 for p in model.parameters())
    assert full["weights"] == 3 * weights and full["activations"] > 0
    remove_blocks_(model, ["layer1.1"])
    smaller = step_memory_bytes(model, images, labels)
    assert smaller["activations"] < full["activations"] and smaller["total"] < full["total"]
    # Two convs' inputs (16 x 8 x 8 x 8 floats each) are no longer saved, among others.
    assert full["activations"] - smaller["activations"] >= 2 * 16 * 8 * 8 * 8 * 4


def test_declared_energy_is_power_times_time_and_labelled_an_estimate() -> None:
    with EnergyMeter("declared", power_watts=10, g_co2_per_kwh=400) as meter:
        pass
    reading = meter.reading(3600)
    assert reading.energy_kwh == pytest.approx(0.01) and reading.co2_g == pytest.approx(4.0)
    assert reading.estimate and reading.method == "declared 10 W"
    with EnergyMeter("declared", power_watts=10) as meter:
        pass
    assert meter.reading(0).energy_kwh == 0


def test_energy_settings_are_checked() -> None:
    with pytest.raises(ConfigError, match="needs experiment.power_watts"):
        EnergyMeter("declared")
    with pytest.raises(ConfigError, match="energy_source must be one of"):
        EnergyMeter("rapl")
    with pytest.raises(ConfigError, match="power_watts must be a number > 0"):
        EnergyMeter("auto", power_watts=-3)
    try:
        import codecarbon  # noqa: F401
    except ImportError:
        with pytest.raises(InputError, match="codecarbon is not installed"):
            EnergyMeter("codecarbon").__enter__()


# --- configuration and CLI ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"at_init": ["kl"]}, "meant for trained weights"),
        ({"after_training": ["grasp"]}, "meant for initial weights"),
        ({"at_init": ["magic"]}, "unknown criterion 'magic'"),
        ({"rewind": [1.0]}, "fractions in \\[0, 1\\)"),
        ({"seeds": [0, 0]}, "lists a value twice"),
        ({"blocks": [0]}, "whole numbers >= 1"),
        ({"xi": "wide"}, "points >= 0 or 'std'"),
        ({"corruptions": ["fog"]}, "corruptions must be a list from"),
        ({"severities": [6]}, "severities must be in 1..5"),
        ({"colour": 1}, "colour"),
    ],
)
def test_bad_grid_settings_name_the_field(changes: dict, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        recipe_from_dict({"experiment": changes})


def test_lmc_twins_must_be_cells_of_the_grid() -> None:
    with pytest.raises(ConfigError, match="lmc_seeds: seed 7 is not in experiment.seeds"):
        plan(ExperimentConfig(lmc_seeds=(7,)))
    with pytest.raises(ConfigError, match="must be cells of the grid"):
        plan(ExperimentConfig(blocks=(1, 2)))  # lmc_blocks [3]
    assert plan(ExperimentConfig(blocks=(1, 2), lmc_seeds=()))


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"rewind": [0.9]}, "experiment.rewind 0.9: epoch 3 of 3 leaves nothing to retrain"),
        ({"blocks": [1, 5], "lmc_blocks": [5]}, "removes 5 blocks but resnet14 has 4 removable"),
    ],
)
def test_a_grid_that_cannot_finish_fails_before_writing(
    tmp_path: Path, changes: dict, message: str
) -> None:
    recipe = {**TINY, "experiment": {**TINY["experiment"], **changes}}
    with pytest.raises(ConfigError, match=message):
        run_experiment(recipe_from_dict(recipe), tmp_path / "out", log=lambda _: None)
    assert not (tmp_path / "out").exists()


def test_resume_refuses_a_rewind_point_the_dense_runs_did_not_keep(
    grid: Path, tmp_path: Path
) -> None:
    # Dense runs keep the paper's points (0, 25, 50, 75 %): epochs 0, 1, 2 of 3 here.
    saved = sorted(p.name for p in (grid / "cells" / "dense-s0" / "train").glob("rewind_*"))
    assert saved == [f"rewind_e00{e}.safetensors" for e in (0, 1, 2)]
    out = tmp_path / "out"
    shutil.copytree(grid, out)
    (out / "cells" / "dense-s0" / "train" / "rewind_e002.safetensors").unlink()
    shutil.rmtree(out / "cells" / "after-kl-p1-r50-s0")  # an unfinished Algorithm 1 cell
    with pytest.raises(ConfigError, match="seed 0 was trained without a snapshot at epoch 2"):
        run_experiment(recipe_from_dict(TINY), out, resume=True, log=lambda _: None)


def test_embedded_recipes_equal_the_files_in_recipes() -> None:
    assert load_recipe(ROOT / "recipes" / "lottery.yaml") == lottery_recipe()
    cifar = load_recipe(ROOT / "recipes" / "lottery-cifar10.yaml")
    assert cifar == lottery_recipe(CIFAR10["data"]["root"])
    assert lottery_recipe("/data/c10").data.root == "/data/c10"
    assert DIGITS["model"]["name"] == "resnet32"


def test_plan_counts_the_one_command_grid(capsys: pytest.CaptureFixture) -> None:
    assert main(["lottery", "--plan"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("89 networks to train (3 dense, 45 init, 15 scratch, 6 filter, 18 after")
    assert "1191 epochs" in out


def test_cli_bad_grid_is_one_line_exit_2(tmp_path: Path) -> None:
    recipe = _write(tmp_path, {**TINY, "experiment": {"at_init": ["hrank"]}})
    result = subprocess.run(
        [sys.executable, "-m", "compressor", "lottery", str(recipe), "--out", str(tmp_path / "o")],
        capture_output=True,
        text=True,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )
    assert result.returncode == 2
    assert result.stderr.count("\n") == 1 and "meant for trained weights" in result.stderr
    assert not (tmp_path / "o").exists()
