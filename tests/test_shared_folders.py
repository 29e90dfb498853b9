"""Hostile paths in shared folders: nothing followed, nothing of ours overwritten, no writer
lost, no late failure, no leftovers (issue 14, classes 1-5).

Every case goes through the real commands or the one write path every command uses
(`deploy.files`), on real files, links, FIFOs and sockets made in a temporary folder.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from compressor.cli import main as compressor_main
from compressor.errors import InputError
from compressor.models.spec import ModelSpec, build_model
from compressor.models.store import save_model
from compressor.outdir import exclusive_out_dir
from deploy.cli import main as deploy_main
from deploy.files import atomic_write_text
from tests.deploy.conftest import build_classifier

ROOT = Path(__file__).resolve().parents[1]
SPEC = ModelSpec(model="resnet8", kwargs={"num_classes": 10, "in_channels": 1, "width": 0.5})
RECIPE = {
    "model": {"name": "resnet8", "width": 0.5},
    "data": {"name": "digits", "image_size": 8, "limit_train": 128},
    "prune": {"criterion": "snip", "blocks": 1},
    "train": {"epochs": 1, "batch_size": 64, "progress": "none", "device": "cpu"},
    "export": {"int8": False, "fp16": False, "bf16": False},
}
FAST_BENCH = ["--backend", "onnxruntime", "--batch", "1", "--warmup", "1", "--iterations", "3"]


def one_line(capsys: pytest.CaptureFixture[str], prog: str) -> str:
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"{prog}: error: "), lines
    return lines[0]


@pytest.fixture
def recipe(tmp_path: Path) -> Path:
    path = tmp_path / "recipe.yaml"
    path.write_text(json.dumps(RECIPE))
    return path


@pytest.fixture
def trained_model(tmp_path: Path) -> Path:
    """A stored model with a recorded accuracy, as `compressor train` leaves one."""
    torch.manual_seed(0)
    info = {"accuracy": 0.9, "dataset": "digits", "input_shape": [1, 8, 8]}
    return save_model(build_model(SPEC), SPEC, tmp_path / "run" / "dense" / "model", info)


# --- 1. links and special files where the project writes ---------------------------------


def test_a_link_planted_as_the_lock_is_refused_and_its_target_kept(
    tmp_path: Path, recipe: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out, precious = tmp_path / "o", tmp_path / "v"
    out.mkdir()
    precious.write_text("precious\n")
    (out / ".lock").symlink_to(precious)
    assert compressor_main(["prune", str(recipe), "--out", str(out)]) == 1
    line = one_line(capsys, "compressor")
    assert ".lock" in line and "symbolic link" in line
    assert precious.read_text() == "precious\n"
    assert sorted(p.name for p in out.iterdir()) == [".lock"]  # no ticket written either


@pytest.mark.parametrize("kind", ["link", "fifo", "socket"])
def test_no_write_goes_through_a_link_or_replaces_a_special_file(tmp_path: Path, kind: str) -> None:
    target, precious = tmp_path / "result.json", tmp_path / "precious.txt"
    precious.write_text("precious")
    if kind == "link":
        target.symlink_to(precious)
    elif kind == "fifo":
        os.mkfifo(target)
    else:
        server = socket.socket(socket.AF_UNIX)
        server.bind(str(target))
    with pytest.raises(OSError, match="result.json is a"):  # deploy.errors.UnsafePathError
        atomic_write_text(target, "{}")
    assert precious.read_text() == "precious"
    assert target.is_symlink() if kind == "link" else not target.is_file()
    assert not list(tmp_path.glob(".*.tmp"))


def test_export_refuses_a_fifo_as_its_output(
    tmp_path: Path, recipe: Path, trained_model: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    fifo = tmp_path / "n.onnx"
    os.mkfifo(fifo)
    assert compressor_main(["export", str(trained_model), str(recipe), "--out", str(fifo)]) == 1
    assert "FIFO" in one_line(capsys, "compressor")
    assert not fifo.is_file() and fifo.exists()


# --- 2. outputs that would overwrite what the project made -------------------------------


def test_prune_never_replaces_a_trained_model(
    recipe: Path, trained_model: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    before = {p.name: p.read_bytes() for p in trained_model.iterdir()}
    assert compressor_main(["prune", str(recipe), "--out", str(trained_model)]) == 1
    assert f"--out {trained_model} is a stored model" in one_line(capsys, "compressor")
    assert {p.name: p.read_bytes() for p in trained_model.iterdir()} == before


@pytest.mark.parametrize("target", ["weights.safetensors", "spec.json", "new.onnx"])
def test_export_never_writes_into_the_model_it_reads(
    recipe: Path, trained_model: Path, capsys: pytest.CaptureFixture[str], target: str
) -> None:
    before = {p.name: p.read_bytes() for p in trained_model.iterdir()}
    out = trained_model / target
    assert compressor_main(["export", str(trained_model), str(recipe), "--out", str(out)]) != 0
    assert str(out) in one_line(capsys, "compressor")
    assert {p.name: p.read_bytes() for p in trained_model.iterdir()} == before


def test_training_into_the_folder_of_its_own_input_is_refused(
    recipe: Path, trained_model: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = trained_model.parent  # would write out/model: the input itself
    assert compressor_main(["train", str(trained_model), str(recipe), "--out", str(out)]) == 1
    assert "would overwrite the input" in one_line(capsys, "compressor")


def test_a_finished_training_can_still_be_resumed_in_its_own_folder(
    tmp_path: Path, recipe: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """out/model is train's own output: --resume after it was written (the soak killed a run
    right there) must not be refused as "overwriting a stored model"."""
    ticket, out = tmp_path / "ticket", tmp_path / "trained"
    assert compressor_main(["prune", str(recipe), "--out", str(ticket)]) == 0
    assert compressor_main(["train", str(ticket), str(recipe), "--out", str(out)]) == 0
    assert (out / "model" / "spec.json").is_file()
    capsys.readouterr()
    resumed = ["train", str(ticket), str(recipe), "--out", str(out), "--resume"]
    assert compressor_main(resumed) == 0, capsys.readouterr().err


# --- 3. two writers of one result file ---------------------------------------------------


def test_a_second_bench_writing_the_same_results_is_refused_and_the_first_keeps_its_records(
    tmp_path: Path,
) -> None:
    model = build_classifier(tmp_path / "m.onnx")
    output = tmp_path / "results.json"
    command = [sys.executable, "-m", "deploy", "bench", str(model), *FAST_BENCH]
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    first = subprocess.Popen(
        [*command, "--min-seconds", "3", "--output", str(output), "--name", "first"],
        env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    lock = tmp_path / ".results.json.lock"
    deadline = time.monotonic() + 60
    while not lock.exists() and first.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    second = subprocess.run(
        [*command, "--output", str(output), "--name", "second"],
        env=env, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    out, err = first.communicate(timeout=120)
    assert first.returncode == 0, err
    assert second.returncode == 1
    assert "is being written by process" in second.stderr and "results written" not in second.stdout
    records = json.loads(output.read_text())["records"]
    assert {r["model"] for r in records} == {"first"}
    assert not lock.exists()


# --- 4. every output checked before any work ---------------------------------------------


def _no_timing(*args: object, **kwargs: object) -> None:
    raise AssertionError("timing started although the output cannot be written")


def test_an_unwritable_results_path_fails_before_any_timing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    import deploy.cli

    monkeypatch.setattr(deploy.cli, "benchmark", _no_timing)
    model = build_classifier(tmp_path / "m.onnx")
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    argv = ["bench", str(model), *FAST_BENCH, "--output", str(blocker / "r.json")]
    assert deploy_main(argv) == 1
    assert "is not a directory" in one_line(capsys, "deploy")


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into read-only folders anyway")
def test_a_read_only_results_folder_fails_before_any_timing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    import deploy.cli

    monkeypatch.setattr(deploy.cli, "benchmark", _no_timing)
    model = build_classifier(tmp_path / "m.onnx")
    folder = tmp_path / "ro"
    folder.mkdir(mode=0o555)
    argv = ["bench", str(model), *FAST_BENCH, "--output", str(folder / "r.json")]
    assert deploy_main(argv) == 1
    assert "no permission to write" in one_line(capsys, "deploy")


def test_export_to_an_unwritable_place_fails_before_loading_anything(
    tmp_path: Path, recipe: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    missing_model = tmp_path / "not-loaded-yet"  # the output is checked first
    argv = ["export", str(missing_model), str(recipe), "--out", str(blocker / "m.onnx")]
    assert compressor_main(argv) == 1
    assert "is not a directory" in one_line(capsys, "compressor")


# --- 5. work folders left by killed exports ------------------------------------------------


def test_work_folders_of_killed_exports_are_swept_and_live_ones_kept(tmp_path: Path) -> None:
    out = tmp_path / "run" / "dense"
    out.mkdir(parents=True)
    # What an INT8 export killed mid-way leaves: its work folder beside the target.
    script = (
        "import os, signal, sys, tempfile\n"
        "folder = tempfile.mkdtemp(prefix='.model.int8.onnx.', dir=sys.argv[1])\n"
        "open(os.path.join(folder, 'int8.onnx'), 'wb').write(b'x' * 1000)\n"
        "os.kill(os.getpid(), signal.SIGKILL)\n"
    )
    killed = subprocess.run([sys.executable, "-c", script, str(out)])
    assert killed.returncode == -signal.SIGKILL
    left = list(out.glob(".model.int8.onnx.*"))
    assert len(left) == 1 and left[0].is_dir()
    with exclusive_out_dir(tmp_path / "run"):  # the next run on the folder sweeps
        pass
    assert not left[0].exists()
    from deploy.files import work_directory

    with work_directory(out / "model.fp16.onnx") as live:
        with exclusive_out_dir(tmp_path / "run"):
            pass
        assert live.is_dir()  # a live writer's work folder is never swept
    assert not live.exists()


@pytest.mark.parametrize("name", ["SIGTERM", "SIGHUP"])
def test_sigterm_or_sighup_during_work_leaves_no_work_folder(tmp_path: Path, name: str) -> None:
    script = (
        "import sys, time\n"
        "from deploy.signals import stop_on_termination\n"
        "from deploy.files import work_directory\n"
        "stop_on_termination()\n"
        "with work_directory(sys.argv[1]) as folder:\n"
        "    print(folder, flush=True)\n"
        "    time.sleep(60)\n"
    )
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    child = subprocess.Popen(
        [sys.executable, "-c", script, str(tmp_path / "m.int8.onnx")],
        env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    folder = Path(child.stdout.readline().strip())
    assert folder.is_dir()
    child.send_signal(getattr(signal, name))
    _, stderr = child.communicate(timeout=60)
    assert child.returncode != 0 and "Terminated" in stderr  # the exception unwound the block
    assert not folder.exists()


def test_an_exclusive_out_dir_refuses_a_lock_that_is_a_fifo(tmp_path: Path) -> None:
    os.mkfifo(tmp_path / ".lock")
    with pytest.raises(InputError, match="FIFO"), exclusive_out_dir(tmp_path):
        pass
