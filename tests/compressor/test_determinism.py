"""Same seed, same result, across processes: the blocks removed, the shrunk architecture,
and on CPU the weights, bit for bit.

Each run is its own process with a different PYTHONHASHSEED, so nothing may depend on set
or dict iteration order of strings, on object ids, or on what ran earlier in the process.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from compressor.cli import main
from tests.faults import run_compressor

RECIPE = {
    "name": "determinism",
    "model": {"name": "resnet14", "width": 0.5},
    "data": {"name": "digits", "image_size": 12, "limit_train": 400},
    "prune": {"criterion": "grasp", "blocks": 2},
    "train": {"epochs": 1, "batch_size": 64, "lr": 0.05, "progress": "none", "threads": 1},
    "shrink": {"ratio": 0.5, "round_to": 4, "fine_tune_epochs": 1},
}


def _recipe(tmp: Path, seed: int) -> Path:
    path = tmp / f"recipe-{seed}.yaml"
    path.write_text(yaml.safe_dump({**RECIPE, "seed": seed}))
    return path


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Prune then shrink (with one fine-tune epoch), twice with seed 0 and once with seed 1."""
    tmp = tmp_path_factory.mktemp("determinism")
    for name, seed, hash_seed in (("a", 0, "1"), ("b", 0, "2")):
        recipe, env = _recipe(tmp, seed), {"PYTHONHASHSEED": hash_seed}
        for argv in (
            ["prune", str(recipe), "--out", str(tmp / name / "ticket")],
            [
                "shrink",
                str(tmp / name / "ticket"),
                str(recipe),
                "--out",
                str(tmp / name / "shrunk"),
            ],
        ):
            done = run_compressor(argv, env=env)
            assert done.returncode == 0, done.stderr
    # Seed 1 only has to differ: pruned in this process, which is faster.
    assert main(["prune", str(_recipe(tmp, 1)), "--out", str(tmp / "other" / "ticket")]) == 0
    return tmp


def _json(path: Path) -> dict:
    return json.loads(path.read_text())


def test_same_seed_removes_the_same_blocks(runs: Path) -> None:
    a, b = _json(runs / "a/ticket/prune.json"), _json(runs / "b/ticket/prune.json")
    assert a["removed"] and a["removed"] == b["removed"]
    assert a == b  # the scores too, to the last digit
    assert (runs / "a/ticket/weights.safetensors").read_bytes() == (
        runs / "b/ticket/weights.safetensors"
    ).read_bytes()


def test_same_seed_gives_the_same_shrunk_architecture_and_weights(runs: Path) -> None:
    a, b = _json(runs / "a/shrunk/model/spec.json"), _json(runs / "b/shrunk/model/spec.json")
    assert a["spec"] == b["spec"]  # every layer's channel count
    assert _json(runs / "a/shrunk/shrink.json") == _json(runs / "b/shrunk/shrink.json")
    assert a["weights_sha256"] == b["weights_sha256"]
    assert (runs / "a/shrunk/model/weights.safetensors").read_bytes() == (
        runs / "b/shrunk/model/weights.safetensors"
    ).read_bytes()
    ticket = _json(runs / "a/ticket/spec.json")["spec"]
    assert a["spec"]["shapes"] != ticket["shapes"]  # shrinking changed the channels for real


def test_another_seed_gives_other_weights(runs: Path) -> None:
    """The seed is what decides: seed 1 starts from other weights (so the check can fail)."""
    assert (runs / "a/ticket/weights.safetensors").read_bytes() != (
        runs / "other/ticket/weights.safetensors"
    ).read_bytes()
