"""Crash and resume, with real kills: SIGKILL mid-training and mid-file, then --resume.

Every child is a real `compressor` process (see tests/faults.py). After each kill no file
that was complete before it may be missing or unreadable, and the resumed run must end with
the weights of an uninterrupted run bit for bit (CPU, one thread) and the same metrics
apart from wall-clock times. The soak variant is benchmarks/soak_resume.py.
"""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest
import yaml

from compressor.cli import main
from tests.faults import (
    Fault,
    lost_files,
    random_fault,
    readable_files,
    run_compressor,
    small_training_recipe,
    stale_temporaries,
    training_differences,
)

RECIPE = small_training_recipe("crash", epochs=4)


@pytest.fixture(scope="module")
def setup(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("crash")
    recipe = root / "recipe.yaml"
    recipe.write_text(yaml.safe_dump(RECIPE))
    assert main(["prune", str(recipe), "--out", str(root / "ticket")]) == 0
    reference = run_compressor(
        ["train", str(root / "ticket"), str(recipe), "--out", str(root / "ref")]
    )
    assert reference.returncode == 0, reference.stderr
    return {"recipe": recipe, "ticket": root / "ticket", "reference": root / "ref"}


def _train(setup: dict[str, Path], out: Path, *extra: str) -> list[str]:
    return ["train", str(setup["ticket"]), str(setup["recipe"]), "--out", str(out), *extra]


@pytest.mark.parametrize(
    "fault",
    [
        Fault("checkpoint.pt", nth=2, phase="data", cut=0.5),
        # The last checkpoint is in, its metrics.jsonl is not, and no epoch is left to run:
        # the resumed run must still bring metrics.jsonl up to date (the soak found this).
        Fault("checkpoint.pt", nth=4, phase="renamed"),
        Fault("weights.safetensors", nth=1, phase="renamed"),  # model without its spec.json
    ],
    ids=lambda f: f"{f.matching}-{f.nth}-{f.phase}",
)
def test_killed_mid_write_resumes_to_identical_weights(
    setup: dict[str, Path], tmp_path: Path, fault: Fault
) -> None:
    out = tmp_path / "out"
    killed = run_compressor(_train(setup, out), fault=fault)
    assert killed.killed, killed.stderr
    assert not any(data is None for data in readable_files(out).values()), "a torn file"
    if fault.phase != "renamed":
        assert stale_temporaries(out), "the kill should have left the temporary it was writing"
    if fault.nth == 2 and fault.phase == "data":  # once is enough: it costs a process
        refused = run_compressor(_train(setup, out))
        assert refused.returncode == 1 and "--resume" in refused.stderr
        assert len(refused.stderr.strip().splitlines()) == 1
    resumed = run_compressor(_train(setup, out, "--resume"))
    assert resumed.returncode == 0, resumed.stderr
    assert training_differences(out, setup["reference"]) == []
    assert json.loads(resumed.stdout)["accuracy"] > 0.3  # ten classes: chance is 0.1
    assert stale_temporaries(out) == []  # the resumed run swept what the killed one left


def test_random_kills_lose_nothing_and_change_nothing(setup: dict[str, Path], tmp_path: Path):
    """Kills at random moments and random writes, one after another, then a clean finish."""
    rng = random.Random(20261123)
    out = tmp_path / "out"
    before = readable_files(out) if out.exists() else {}
    kills = 0
    for cycle in range(3):
        if cycle == 1:
            outcome = run_compressor(_train(setup, out, "--resume"), kill_after=rng.uniform(2, 6))
        else:  # the metrics are rewritten by every resume, even of a finished run: a sure kill
            writes = (
                {"checkpoint.pt": 1, "metrics.jsonl": 1} if cycle == 0 else {"metrics.jsonl": 1}
            )
            outcome = run_compressor(
                _train(setup, out, "--resume"), fault=random_fault(rng, writes)
            )
        after = readable_files(out)
        assert lost_files(before, after) == [], f"cycle {cycle}"
        assert not any(data is None for data in after.values()), f"cycle {cycle}: a torn file"
        kills += outcome.killed
        before = after
    assert kills >= 2
    finished = run_compressor(_train(setup, out, "--resume"))
    assert finished.returncode == 0, finished.stderr
    assert training_differences(out, setup["reference"]) == []


def test_a_model_killed_between_its_two_files_is_refused_then_resume_repairs_it(
    setup: dict[str, Path], tmp_path: Path
) -> None:
    """Killed after the weights were renamed in but before spec.json was written: the
    half-stored model is refused by name, not loaded, and --resume completes it."""
    out = tmp_path / "out"
    killed = run_compressor(_train(setup, out), fault=Fault("weights.safetensors", phase="renamed"))
    assert killed.killed
    assert (out / "model" / "weights.safetensors").is_file()
    assert not (out / "model" / "spec.json").exists()
    refused = run_compressor(
        ["export", str(out / "model"), str(setup["recipe"]), "--out", str(tmp_path / "m.onnx")]
    )
    assert refused.returncode == 1 and "Traceback" not in refused.stderr
    assert "spec.json is missing" in refused.stderr.strip().splitlines()[-1]
    assert not (tmp_path / "m.onnx").exists()
    resumed = run_compressor(_train(setup, out, "--resume"))
    assert resumed.returncode == 0, resumed.stderr
    assert training_differences(out, setup["reference"]) == []


def test_a_full_disk_mid_checkpoint_is_one_line_and_resumes_to_identical_weights(
    setup: dict[str, Path], tmp_path: Path
) -> None:
    """The disk fills up halfway through the second checkpoint: the user reads which folder
    is full and how much is free, the first checkpoint is intact, and --resume finishes."""
    import torch

    out = tmp_path / "out"
    full = run_compressor(_train(setup, out), fault=Fault("checkpoint.pt", 2, "enospc", 0.5))
    assert full.returncode == 1, full.stderr
    lines = full.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("compressor: error: no space left"), lines
    assert str(out / "train") in lines[0] and "free" in lines[0] and "Errno" not in lines[0]
    state = torch.load(out / "train" / "checkpoint.pt", weights_only=True)
    assert state["epoch"] == 1 and not stale_temporaries(out)
    resumed = run_compressor(_train(setup, out, "--resume"))
    assert resumed.returncode == 0, resumed.stderr
    assert training_differences(out, setup["reference"]) == []


def test_sigterm_stops_like_ctrl_c_and_resumes_to_identical_weights(
    setup: dict[str, Path], tmp_path: Path
) -> None:
    """SIGHUP takes the same path (deploy.signals); tests/test_shared_folders.py sends both."""
    import os
    import signal
    import subprocess
    import sys
    import time

    from tests.faults import ROOT, child_env

    out = tmp_path / "out"
    command = [sys.executable, "-m", "compressor", *_train(setup, out)]
    child = subprocess.Popen(
        command, cwd=ROOT, env=child_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        text=True,
    )  # fmt: skip
    deadline = time.monotonic() + 120
    while not (out / "train" / "checkpoint.pt").exists() and time.monotonic() < deadline:
        time.sleep(0.02)
    name = "SIGTERM"
    os.kill(child.pid, signal.SIGTERM)
    _, stderr = child.communicate(timeout=120)
    if child.returncode == 0:  # finished in the meantime: nothing to stop
        pytest.skip("training finished before the signal arrived")
    assert child.returncode == 128 + getattr(signal, name), stderr
    lines = stderr.strip().splitlines()
    assert lines == [f"compressor: interrupted ({name}); rerun with --resume to continue"]
    assert not stale_temporaries(out)
    resumed = run_compressor(_train(setup, out, "--resume"))
    assert resumed.returncode == 0, resumed.stderr
    assert training_differences(out, setup["reference"]) == []
