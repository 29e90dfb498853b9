"""Files that lie about themselves: sizes, fields, types and names (issue 14, classes 8 and
10-12). Each is refused in one line before it is read whole, trained on or shown.

The bundle's script (classes 6 and 7) is tested on a real run in
tests/compressor/test_pipeline_cli.py; a full disk and SIGTERM/SIGHUP mid-training in
tests/compressor/test_crash_resume.py.
"""

from __future__ import annotations

import errno
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from onnx import TensorProto, helper, numpy_helper
from torch import nn

from compressor.cli import main as compressor_main
from compressor.data.config import DataConfig
from compressor.data.splits import load_data
from compressor.errors import ConfigError, InputError
from compressor.models.spec import ModelSpec, build_model
from compressor.models.store import load_model, save_model
from compressor.recipe.sections import load_recipe
from compressor.training.config import TrainConfig
from compressor.training.loop import train
from deploy.cli import main as deploy_main
from tests.deploy.conftest import build_classifier

ROOT = Path(__file__).resolve().parents[1]
ENV = {**os.environ, "PYTHONPATH": str(ROOT)}
FAST_BENCH = ["--backend", "onnxruntime", "--batch", "1", "--warmup", "1", "--iterations", "3"]


def one_line(capsys: pytest.CaptureFixture[str], prog: str) -> str:
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"{prog}: error: "), lines
    return lines[0]


# --- 8. unbounded reads ------------------------------------------------------------------


def external_data_model(folder: Path, *, data_bytes: int, length: int | None = None) -> Path:
    """Add(x, w) where w, 4 floats (16 bytes), lives in w.bin of `data_bytes` (sparse)."""
    weight = numpy_helper.from_array(np.ones(4, np.float32), "w")
    weight.ClearField("raw_data")
    weight.data_location = TensorProto.EXTERNAL
    weight.external_data.add(key="location", value="w.bin")
    if length is not None:
        weight.external_data.add(key="length", value=str(length))
    x, y = (helper.make_tensor_value_info(n, TensorProto.FLOAT, [1, 4]) for n in ("x", "y"))
    graph = helper.make_graph([helper.make_node("Add", ["x", "w"], ["y"])], "g", [x], [y], [weight])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 9
    path = folder / "m.onnx"
    path.write_bytes(model.SerializeToString())
    with open(folder / "w.bin", "wb") as handle:
        handle.truncate(data_bytes)  # a sparse file: no disk used
    return path


@pytest.mark.parametrize("command", ["bench", "lint"])
def test_external_data_larger_than_its_tensor_is_refused_before_it_is_read(
    tmp_path: Path, command: str
) -> None:
    model = external_data_model(tmp_path, data_bytes=3 << 30)  # 3 GiB for 16 bytes
    argv = ["-m", "deploy", "bench", str(model), *FAST_BENCH, "--output", str(tmp_path / "r.json")]
    if command == "lint":
        argv = ["-m", "compressor", "lint", str(model)]
    result = subprocess.run(
        [sys.executable, *argv], env=ENV, capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 1, result.stderr
    assert "tensor 'w' has shape [4] (16 B) but w.bin holds 3.0 GiB" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1


def test_a_length_that_disagrees_with_the_shape_is_refused(tmp_path: Path, capsys) -> None:  # noqa: ANN001
    model = external_data_model(tmp_path, data_bytes=1 << 20, length=1 << 20)
    assert deploy_main(["bench", str(model), *FAST_BENCH]) == 1
    assert "its external data entry says offset 0, length 1048576" in one_line(capsys, "deploy")


def test_missing_external_data_names_the_file(tmp_path: Path, capsys) -> None:  # noqa: ANN001
    model = external_data_model(tmp_path, data_bytes=16)
    (tmp_path / "w.bin").unlink()
    assert deploy_main(["bench", str(model), *FAST_BENCH]) == 1
    assert "keeps its weights in w.bin, which is missing" in one_line(capsys, "deploy")


@pytest.fixture(scope="module")
def digits():  # noqa: ANN201
    return load_data(DataConfig(image_size=8, limit_train=128))


def small_net() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(1, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU(),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 10),
    )  # fmt: skip


CONFIG = TrainConfig(epochs=2, batch_size=64, progress="none", threads=1, device="cpu")


@pytest.fixture(scope="module")
def finished(digits, tmp_path_factory: pytest.TempPathFactory) -> Path:  # noqa: ANN001
    out = tmp_path_factory.mktemp("finished")
    train(small_net(), digits, CONFIG, out)
    return out / "checkpoint.pt"


def test_a_checkpoint_that_is_a_link_to_dev_zero_is_refused(digits, tmp_path: Path) -> None:  # noqa: ANN001
    (tmp_path / "checkpoint.pt").symlink_to("/dev/zero")
    with pytest.raises(InputError, match="checkpoint .* is a character device"):
        train(small_net(), digits, CONFIG, tmp_path, resume=True)


def test_weights_that_are_a_link_to_dev_zero_are_refused(tmp_path: Path) -> None:
    spec = ModelSpec(model="resnet8", kwargs={"num_classes": 10, "in_channels": 1, "width": 0.5})
    folder = save_model(build_model(spec), spec, tmp_path / "m")
    (folder / "weights.safetensors").unlink()
    (folder / "weights.safetensors").symlink_to("/dev/zero")
    with pytest.raises(InputError, match="weights file .* is a character device"):
        load_model(folder)


def test_a_fifo_among_result_files_is_skipped_not_waited_on(tmp_path: Path) -> None:
    results = tmp_path / "results"
    model = build_classifier(tmp_path / "m.onnx")
    assert deploy_main(["bench", str(model), *FAST_BENCH, "--output", str(results / "a.json")]) == 0
    os.mkfifo(results / "b.json")
    report = subprocess.run(
        [sys.executable, "-m", "deploy", "report", str(results), "--out", str(tmp_path / "r")],
        env=ENV, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert report.returncode == 0, report.stderr
    assert (
        "b.json: a FIFO (named pipe), not a result file"
        in (tmp_path / "r" / "report.md").read_text()
    )


def test_results_to_dev_stdout_through_a_pipe_are_refused_not_hung(tmp_path: Path) -> None:
    model = build_classifier(tmp_path / "m.onnx")
    argv = ["-m", "deploy", "bench", str(model), *FAST_BENCH, "--output", "/dev/stdout"]
    result = subprocess.run(  # stdout is a pipe, as in `deploy bench ... | cat`
        [sys.executable, *argv], env=ENV, capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 1
    assert "--output /dev/stdout is a" in result.stderr and result.stdout == ""


# --- 10. checkpoint fields -----------------------------------------------------------------


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"metrics": torch.zeros(2)}, "its metrics are of type Tensor, not a list"),
        ({"metrics": b"\x00\x01"}, "its metrics are of type bytes, not a list"),
        ({"metrics": [{}, {}]}, "metrics row 1 has epoch = None"),
        ({"epoch": -3}, "its epoch is -3"),
        ({"epoch": 2.5}, "its epoch is 2.5"),
        ({"nan": True}, "weights are not finite"),
    ],
    ids=["tensor", "bytes", "empty-dicts", "negative-epoch", "float-epoch", "nan-weights"],
)
def test_a_checkpoint_with_odd_fields_is_refused_in_one_line_and_kept(
    digits,
    finished: Path,
    tmp_path: Path,
    change: dict,
    message: str,
    capsys,  # noqa: ANN001
) -> None:
    state = torch.load(finished, weights_only=True)
    if change.pop("nan", False):
        first = next(iter(state["model"]))
        state["model"][first] = torch.full_like(state["model"][first], float("nan"))
    state.update(change)
    torch.save(state, tmp_path / "checkpoint.pt")
    before = (tmp_path / "checkpoint.pt").read_bytes()
    with pytest.raises(InputError, match=message) as raised:
        train(small_net(), digits, CONFIG, tmp_path, resume=True)
    assert "\n" not in str(raised.value) and "--resume" not in str(raised.value)
    assert (tmp_path / "checkpoint.pt").read_bytes() == before


# --- 11. messages that point the right way -------------------------------------------------


def test_a_full_disk_during_int8_export_says_so(tmp_path: Path, monkeypatch) -> None:  # noqa: ANN001
    """onnx reports a file cut short by a full disk as "Wire format was corrupt"; the
    user must read that the disk is full, not that the model needs preprocess=False."""
    from export.quantize import QuantizeConfig, quantize_qdq

    model = build_classifier(tmp_path / "m.onnx")
    real_save = onnx.save_model

    def save_on_a_full_disk(proto, path, *args, **kwargs):  # noqa: ANN001, ANN002, ANN003, ANN202
        if "preprocessed" in str(path) or "int8" in str(path):
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return real_save(proto, path, *args, **kwargs)

    monkeypatch.setattr(onnx, "save_model", save_on_a_full_disk)
    monkeypatch.setattr(onnx, "save", save_on_a_full_disk)
    images = np.random.default_rng(0).standard_normal((8, 1, 8, 8)).astype(np.float32)
    with pytest.raises(OSError, match="no space left on the disk of") as raised:  # DiskFullError
        quantize_qdq(model, tmp_path / "m.int8.onnx", images, QuantizeConfig())
    assert "preprocess" not in str(raised.value)
    assert not list(tmp_path.glob(".m.int8.onnx.*"))


def test_weights_saved_in_another_precision_are_refused(tmp_path: Path) -> None:
    spec = ModelSpec(model="resnet8", kwargs={"num_classes": 10, "in_channels": 1, "width": 0.5})
    folder = save_model(build_model(spec).half(), spec, tmp_path / "m", {"accuracy": 0.9})
    with pytest.raises(InputError, match="holds float16 tensors .* stored models are float32"):
        load_model(folder)


# --- 11 and 12. recipes and names ----------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("train:\n  epochs: 2\n  epochs: 500\n", "key 'epochs' is given twice (lines 2 and 3)"),
        ("", "is empty"),
        ("# only a comment\n", "is empty"),
        ('version: "1"\n', "version must be the number 1, got '1' (str)"),
        ("version: 2\n", "version 2 is not supported"),
        ('name: "a\\nb"\n', "name must be one line of printable text"),
    ],
    ids=["duplicate-key", "empty", "comment-only", "version-text", "version-2", "name-newline"],
)
def test_recipes_that_would_be_taken_quietly_are_refused(
    tmp_path: Path, text: str, message: str
) -> None:
    path = tmp_path / "recipe.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError, match=message.replace("(", r"\(").replace(")", r"\)")):
        load_recipe(path)


def test_a_duplicate_key_is_one_line_from_the_cli(tmp_path: Path, capsys) -> None:  # noqa: ANN001
    path = tmp_path / "recipe.yaml"
    path.write_text("train:\n  epochs: 2\n  epochs: 500\n")
    assert compressor_main(["blocks", str(path)]) == 2
    assert "given twice" in one_line(capsys, "compressor")


def test_a_name_with_a_newline_is_refused_and_a_bar_is_escaped_in_the_report(
    tmp_path: Path,
    capsys,  # noqa: ANN001
) -> None:
    model = build_classifier(tmp_path / "m.onnx")
    results = tmp_path / "results"
    assert deploy_main(["bench", str(model), *FAST_BENCH, "--name", "a\nb"]) == 2
    assert "--name must be one line" in one_line(capsys, "deploy")
    argv = ["bench", str(model), *FAST_BENCH, "--name", "a|b", "--output", str(results / "r.json")]
    assert deploy_main(argv) == 0
    assert deploy_main(["report", str(results), "--out", str(tmp_path / "rep")]) == 0
    lines = (tmp_path / "rep" / "report.md").read_text().splitlines()
    header = next(line for line in lines if line.startswith("| model"))
    row = next(line for line in lines if line.startswith("| a"))
    assert row.startswith("| a\\|b")
    unescaped_bars = len(re.findall(r"(?<!\\)\|", row))
    assert unescaped_bars == header.count("|")  # the table keeps its columns


def test_deploy_build_never_replaces_a_file_that_is_not_its_engine(tmp_path: Path, capsys) -> None:  # noqa: ANN001
    model = build_classifier(tmp_path / "m.onnx")
    results = tmp_path / "r.json"
    results.write_text("{}")
    assert deploy_main(["build", str(model), "--output", str(results)]) == 1
    assert "is not an engine built by deploy (no sidecar r.json.json" in one_line(capsys, "deploy")
    assert deploy_main(["build", str(model), "--output", str(model)]) == 1
    assert "is the ONNX file itself" in one_line(capsys, "deploy")
    assert results.read_text() == "{}"


def test_a_fifo_in_an_image_folder_is_named_not_waited_on(tmp_path: Path) -> None:
    from compressor.data.imagefolder import read_image

    os.mkfifo(tmp_path / "bad.png")
    with pytest.raises(InputError, match=r"bad.png is a FIFO .*; replace or remove it"):
        read_image(tmp_path / "bad.png", 8, 8, "L")
