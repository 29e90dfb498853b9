"""Hostile and wrong inputs: corrupt files, pickles, odd images, NaN, tiny data, huge batches.

Each case checks what the user sees: the project's own error type, a message naming the
file or setting, one line from the CLI with its exit code, and files left as they were. The
property-based half (recipes, specs, command lines) is in test_properties.py.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import pathlib
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

from compressor.cli import main
from compressor.data.config import DataConfig
from compressor.data.imagefolder import read_image
from compressor.data.splits import Split, load_data
from compressor.errors import InputError, TrainingError
from compressor.models.spec import ModelSpec, build_model
from compressor.models.store import load_model, save_model
from compressor.training.config import TrainConfig
from compressor.training.loop import train

TINY_RECIPE = {
    "model": {"name": "resnet8", "width": 0.5},
    "data": {"name": "digits", "image_size": 8},
    "prune": {"criterion": "snip", "blocks": 1},
    "train": {"epochs": 1, "batch_size": 64, "progress": "none", "device": "cpu"},
    "shrink": {"ratio": 0.5, "round_to": 4, "fine_tune_epochs": 1},
    "export": {"int8": False, "fp16": False, "bf16": False},
}
SPEC = ModelSpec(model="resnet8", kwargs={"num_classes": 10, "in_channels": 1, "width": 0.5})


class TouchOnUnpickle:
    """Unpickling this creates `path`: proof that a file was unpickled when it should not be."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def __reduce__(self):  # noqa: ANN204
        return (pathlib.Path.touch, (self.path,))


def recipe_file(tmp_path: Path, name: str = "recipe.yaml", **sections: dict) -> Path:
    path = tmp_path / name
    path.write_text(json.dumps({**TINY_RECIPE, **sections}))
    return path


def cli(capsys: pytest.CaptureFixture[str], *argv: object) -> tuple[int, list[str]]:
    """Run `compressor ARGV` in-process: (exit code, stderr lines)."""
    try:
        code = main([str(a) for a in argv])
    except SystemExit as exc:
        code = exc.code
    return code, capsys.readouterr().err.strip().splitlines()


def assert_one_line(result: tuple[int, list[str]], code: int, *names: object) -> str:
    got, lines = result
    assert got == code, lines
    assert len(lines) == 1 and lines[0].startswith("compressor: error: "), lines
    for name in names:
        assert str(name) in lines[0], lines
    return lines[0]


def tree_bytes(folder: Path) -> dict[str, bytes]:
    """Every file's bytes; hidden ones (the output directory's lock) are not results."""
    return {
        str(p.relative_to(folder)): p.read_bytes()
        for p in folder.rglob("*")
        if p.is_file() and not p.name.startswith(".")
    }


@pytest.fixture(scope="module")
def ticket(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A stored resnet8 for 1x8x8 digits, as `compressor prune` would leave it."""
    torch.manual_seed(0)
    directory = tmp_path_factory.mktemp("ticket") / "ticket"
    return save_model(build_model(SPEC), SPEC, directory, {"variant": "ticket"})


@pytest.fixture
def model_copy(ticket: Path, tmp_path: Path) -> Path:
    return Path(shutil.copytree(ticket, tmp_path / "model"))


# --- corrupt stored models ------------------------------------------------------------------


@pytest.mark.parametrize("cut", [0, 7, 100, 0.5, -1])
def test_truncated_weights_are_named_in_one_line(
    model_copy: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], cut: float
) -> None:
    weights = model_copy / "weights.safetensors"
    data = weights.read_bytes()
    weights.write_bytes(data[: int(len(data) * cut) if isinstance(cut, float) else cut])
    result = cli(capsys, "train", model_copy, recipe_file(tmp_path), "--out", tmp_path / "o")
    assert_one_line(result, 1, weights, "truncated")
    assert not (tmp_path / "o" / "train" / "checkpoint.pt").exists()


@pytest.mark.parametrize("where", ["header length", "header"])
def test_damaged_weights_with_a_matching_hash_are_still_refused(
    model_copy: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], where: str
) -> None:
    """Someone 'fixed' the hash in spec.json: the safetensors reader still objects."""
    weights = model_copy / "weights.safetensors"
    data = bytearray(weights.read_bytes())
    at = {"header length": 3, "header": 20}[where]
    data[at : at + 2] = b"\xff\xff"
    weights.write_bytes(bytes(data))
    document = json.loads((model_copy / "spec.json").read_text())
    document["weights_sha256"] = hashlib.sha256(bytes(data)).hexdigest()
    (model_copy / "spec.json").write_text(json.dumps(document))
    onnx = tmp_path / "m.onnx"
    result = cli(capsys, "export", model_copy, recipe_file(tmp_path), "--out", onnx)
    assert_one_line(result, 1, weights, "not a readable safetensors file")
    assert not onnx.exists()


@pytest.mark.parametrize("text", ['{"spec": {"model": "resn', "", "\x00\xff garbage", "[]"])
def test_garbage_spec_json_is_named_in_one_line(
    model_copy: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], text: str
) -> None:
    (model_copy / "spec.json").write_text(text, encoding="latin-1")
    result = cli(capsys, "shrink", model_copy, recipe_file(tmp_path), "--out", tmp_path / "o")
    assert_one_line(result, 1, model_copy / "spec.json", "is not a valid model spec")


def test_a_spec_asking_for_10_to_the_12_classes_is_refused_before_allocating(
    model_copy: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    document = json.loads((model_copy / "spec.json").read_text())
    document["spec"]["kwargs"]["num_classes"] = 10**12
    (model_copy / "spec.json").write_text(json.dumps(document))
    result = cli(capsys, "train", model_copy, recipe_file(tmp_path), "--out", tmp_path / "o")
    assert_one_line(result, 1, "spec.json", "fc.weight as [1000000000000, 32]", "[10, 32]")


def test_nan_weights_are_refused_when_the_model_is_loaded(model_copy: Path, tmp_path: Path) -> None:
    from safetensors.torch import load, save

    weights = model_copy / "weights.safetensors"
    state = load(weights.read_bytes())
    state["fc.weight"][0, 0] = float("nan")
    data = save(state)
    weights.write_bytes(data)
    document = json.loads((model_copy / "spec.json").read_text())
    document["weights_sha256"] = hashlib.sha256(data).hexdigest()
    (model_copy / "spec.json").write_text(json.dumps(document))
    with pytest.raises(InputError, match="holds NaN values in fc.weight"):
        load_model(model_copy)


# --- pickles offered where a model or checkpoint goes ---------------------------------------


@pytest.mark.parametrize("command", ["train", "shrink", "export"])
def test_a_pickled_model_is_never_unpickled(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], command: str
) -> None:
    marker = tmp_path / "unpickled"
    model = tmp_path / "model.pt"
    torch.save(TouchOnUnpickle(marker), model)
    result = cli(capsys, command, model, recipe_file(tmp_path), "--out", tmp_path / "o")
    assert_one_line(result, 1, model, "is a file, not a stored model directory", "pickled")
    assert not marker.exists()


def test_a_pickle_behind_a_weights_name_or_a_factory_path_is_never_unpickled(
    model_copy: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    marker = tmp_path / "unpickled"
    weights = model_copy / "weights.safetensors"
    torch.save(TouchOnUnpickle(marker), weights)
    document = json.loads((model_copy / "spec.json").read_text())
    document["weights_sha256"] = hashlib.sha256(weights.read_bytes()).hexdigest()
    (model_copy / "spec.json").write_text(json.dumps(document))
    result = cli(capsys, "train", model_copy, recipe_file(tmp_path), "--out", tmp_path / "o")
    assert_one_line(result, 1, weights, "not a readable safetensors file")
    factory = {"factory": f"{weights}:build"}
    result = cli(capsys, "prune", recipe_file(tmp_path, model=factory), "--out", tmp_path / "p")
    assert_one_line(result, 1, weights, "cannot load", "as a Python file")
    assert not marker.exists()


# --- training checkpoints -------------------------------------------------------------------


def small_net(width: int = 8) -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(1, width, 3, padding=1), nn.BatchNorm2d(width), nn.ReLU(),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(width, 10),
    )  # fmt: skip


def small_config(**changes: object) -> TrainConfig:
    settings = {"epochs": 1, "batch_size": 64, "lr": 0.05, "progress": "none", "threads": 2}
    return TrainConfig(**{**settings, "device": "cpu", **changes})


@pytest.fixture(scope="module")
def small_data():  # noqa: ANN201
    return load_data(DataConfig(image_size=8, limit_train=128))


@pytest.fixture(scope="module")
def trained_run(small_data, tmp_path_factory: pytest.TempPathFactory) -> Path:  # noqa: ANN001
    """An output directory holding a finished run's checkpoint.pt and metrics.jsonl."""
    out = tmp_path_factory.mktemp("run")
    train(small_net(), small_data, small_config(), out)
    return out


def _damage(path: Path, how: str, marker: Path) -> None:
    data = bytearray(path.read_bytes())
    if how == "truncated":
        path.write_bytes(bytes(data[: len(data) // 3]))
    elif how == "flipped byte":  # inside a tensor: torch.load itself would not notice
        data[len(data) // 2] ^= 0x10
        path.write_bytes(bytes(data))
    elif how == "garbage":
        path.write_bytes(b"\x00garbage" * 50)
    else:  # a checkpoint whose pickle would run code
        torch.save({"format": 1, "model": TouchOnUnpickle(marker)}, path)


@pytest.mark.parametrize("how", ["truncated", "flipped byte", "garbage", "pickle"])
def test_resuming_from_a_damaged_checkpoint_refuses_and_keeps_it(
    small_data,
    trained_run: Path,
    tmp_path: Path,
    how: str,  # noqa: ANN001
) -> None:
    out = Path(shutil.copytree(trained_run, tmp_path / "run"))
    marker = tmp_path / "unpickled"
    _damage(out / "checkpoint.pt", how, marker)
    before = tree_bytes(out)
    with pytest.raises(InputError, match="cannot read checkpoint") as info:
        train(small_net(), small_data, small_config(), out, resume=True)
    assert str(out / "checkpoint.pt") in str(info.value) and "\n" not in str(info.value)
    assert how != "pickle" or "could run code: not loaded" in str(info.value)
    assert tree_bytes(out) == before  # nothing overwritten, nothing deleted
    assert not marker.exists()


def test_resuming_another_models_checkpoint_refuses_and_keeps_it(
    small_data,
    trained_run: Path,
    tmp_path: Path,  # noqa: ANN001
) -> None:
    out = Path(shutil.copytree(trained_run, tmp_path / "run"))
    before = tree_bytes(out)
    with pytest.raises(InputError, match="does not belong to this model") as info:
        train(small_net(width=16), small_data, small_config(), out, resume=True)
    assert "size mismatch for 0.weight" in str(info.value)
    assert tree_bytes(out) == before


# --- NaN, empty and tiny data ---------------------------------------------------------------


def _with(data, split: str, **changes: torch.Tensor):  # noqa: ANN001, ANN202
    return dataclasses.replace(data, **{split: Split(**{**vars(getattr(data, split)), **changes})})


@pytest.mark.parametrize("split,value", [("train", float("nan")), ("val", float("inf"))])
def test_nan_or_inf_pixels_are_refused_before_training_and_keep_the_checkpoint(
    small_data,
    trained_run: Path,
    tmp_path: Path,
    split: str,
    value: float,  # noqa: ANN001
) -> None:
    images = getattr(small_data, split).images.clone()
    images[5, 0, 3, 3] = value
    bad = _with(small_data, split, images=images)
    out = Path(shutil.copytree(trained_run, tmp_path / "run"))
    before = tree_bytes(out)
    match = (
        f"the {split} split holds NaN or Inf pixels in 1 of .* images \\(the first is image 5\\)"
    )
    with pytest.raises(InputError, match=match):
        train(small_net(), bad, small_config(), out, resume=True)
    assert tree_bytes(out) == before
    with pytest.raises(InputError, match=match):
        train(small_net(), bad, small_config(), tmp_path / "fresh")
    assert not (tmp_path / "fresh" / "checkpoint.pt").exists()


def test_an_empty_split_or_labels_beyond_the_classes_are_refused_before_training(
    small_data,
    tmp_path: Path,  # noqa: ANN001
) -> None:
    empty = _with(
        small_data, "val", images=small_data.val.images[:0], labels=small_data.val.labels[:0]
    )
    with pytest.raises(InputError, match="the val split is empty"):
        train(small_net(), empty, small_config(), tmp_path / "a")
    labels = small_data.train.labels.clone()
    labels[0] = 12
    with pytest.raises(InputError, match="labels from 0 to 12, but the data declares 10 classes"):
        train(
            small_net(), _with(small_data, "train", labels=labels), small_config(), tmp_path / "b"
        )
    assert not list(tmp_path.rglob("checkpoint.pt"))


def test_a_batch_larger_than_the_training_split_is_one_step_per_epoch(
    small_data,
    tmp_path: Path,  # noqa: ANN001
) -> None:
    """Documented in TrainConfig.batch_size: all 128 images form the epoch's single batch."""
    result = train(small_net(), small_data, small_config(batch_size=1000, epochs=2), tmp_path)
    state = torch.load(result.checkpoint, weights_only=True)
    assert state["steps_per_epoch"] == 1 and result.epochs_run == 2


# --- images ---------------------------------------------------------------------------------


def _image_kinds(folder: Path, shade: int) -> None:
    """RGB, greyscale, RGBA, palette, 1-bit and 16-bit PNGs of different sizes."""
    folder.mkdir(parents=True)
    Image.new("RGB", (12, 9), (shade, 20, 20)).save(folder / "rgb.png")
    Image.new("L", (9, 14), shade).save(folder / "grey.png")
    Image.new("RGBA", (20, 11), (shade, 20, 20, 0)).save(folder / "rgba.png")
    Image.new("P", (10, 10), 3).save(folder / "palette.png")
    Image.new("1", (16, 8), 1).save(folder / "bits.png")
    Image.fromarray(np.full((11, 13), shade * 257, np.uint16)).save(folder / "deep.png")


@pytest.mark.parametrize("channels", [1, 3])
def test_images_of_every_kind_and_size_load_as_the_configured_channels(
    tmp_path: Path, channels: int
) -> None:
    _image_kinds(tmp_path / "dark", 40)
    _image_kinds(tmp_path / "light", 200)
    config = DataConfig(
        name="imagefolder", root=str(tmp_path), image_size=8, channels=channels,
        val_fraction=0.25, test_fraction=0.25,
    )  # fmt: skip
    data = load_data(config)
    assert data.train.images.shape[1:] == (channels, 8, 8)
    assert len(data.train) + len(data.val) + len(data.test) == 12
    # A 16-bit PNG is scaled to 8 bits, not clipped at 255 (which made it nearly white).
    deep = read_image(tmp_path / "dark" / "deep.png", 8, 8, "L")
    assert deep.dtype == np.uint8 and np.all(deep == 40)


def test_a_float_image_is_refused_with_its_name(tmp_path: Path) -> None:
    path = tmp_path / "f.tif"
    Image.fromarray(np.full((10, 10), 0.5, np.float32)).save(path)
    with pytest.raises(InputError, match="32-bit float image") as info:
        read_image(path, 8, 8, "RGB")
    assert str(path) in str(info.value)


@pytest.fixture(scope="module")
def rgb_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("rgb")
    for label, colour in enumerate([(200, 30, 30), (30, 30, 200)]):
        (root / f"class{label}").mkdir()
        for i in range(8):
            Image.new("RGB", (10 + i, 12), colour).save(root / f"class{label}" / f"{i}.png")
    return root


@pytest.mark.parametrize(
    "command,channels,message",
    [
        ("train", 3, "the model cannot run on this data's 3x8x8 images"),
        ("shrink", 3, "shrink: the model cannot run on this data's 3x8x8 images"),
        ("export", 3, "to have 1 channels, but got 3 channels"),
        ("train", 1, "the model outputs (1, 10) for one 1x8x8 image, but the data has 2 classes"),
        ("export", 1, "but the data has 2 classes"),
    ],
)
def test_data_of_another_channel_or_class_count_is_named(
    ticket: Path,
    rgb_folder: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    command: str,
    channels: int,
    message: str,
) -> None:
    data = {"name": "imagefolder", "root": str(rgb_folder), "image_size": 8,
            "channels": channels, "val_fraction": 0.25, "test_fraction": 0.25}  # fmt: skip
    before = tree_bytes(ticket)
    out = tmp_path / ("o.onnx" if command == "export" else "o")
    result = cli(capsys, command, ticket, recipe_file(tmp_path, data=data), "--out", out)
    assert_one_line(result, 1, message)
    assert tree_bytes(ticket) == before and not list(tmp_path.rglob("checkpoint.pt"))
    assert not out.is_file()


# --- memory ---------------------------------------------------------------------------------


def test_a_refused_allocation_mid_run_is_a_training_error_keeping_the_checkpoint(
    small_data,
    tmp_path: Path,  # noqa: ANN001
) -> None:
    """A real allocator refusal in epoch 2 (a petabyte: beyond any address space)."""
    model, calls = small_net(), {"n": 0}

    def grow(module: nn.Module, inputs: object, output: torch.Tensor) -> None:
        calls["n"] += module.training
        if calls["n"] > 2:  # two steps per epoch: the first step of epoch 2
            output.new_empty(2**48)

    model[0].register_forward_hook(grow)
    with pytest.raises(
        TrainingError, match="batch of 64 images .1x8x8. does not fit in memory"
    ) as info:
        train(model, small_data, small_config(epochs=2), tmp_path)
    message = str(info.value)
    assert "lower train.batch_size (now 64)" in message
    assert f"the last good checkpoint (epoch 1) is at {tmp_path / 'checkpoint.pt'}" in message
    assert torch.load(tmp_path / "checkpoint.pt", weights_only=True)["epoch"] == 1


@pytest.mark.skipif(sys.platform != "linux", reason="needs RLIMIT_AS (Linux)")
@pytest.mark.slow  # half a minute: the export check of a wide model at 192 px
def test_a_batch_too_big_for_memory_is_one_line_from_the_cli(tmp_path: Path) -> None:
    """ResNet-8 x16 at 192x192: the first convolution of a 1024-image batch needs 36 GiB.

    The process runs under an 8 GiB address-space limit, so the allocation is refused at once
    on any machine, however much memory it has or however it overcommits.
    """
    import resource

    spec = ModelSpec(model="resnet8", kwargs={"num_classes": 10, "in_channels": 1, "width": 16})
    model = save_model(build_model(spec), spec, tmp_path / "wide")
    before = tree_bytes(model)
    recipe = recipe_file(
        tmp_path,
        model={"name": "resnet8", "width": 16},
        data={"name": "digits", "image_size": 192},
        train={"epochs": 1, "batch_size": 1024, "progress": "none", "device": "cpu"},
    )

    def limit() -> None:
        resource.setrlimit(resource.RLIMIT_AS, (8 * 2**30, 8 * 2**30))

    command = [sys.executable, "-m", "compressor", "train", str(model), str(recipe), "--out", "o"]
    result = subprocess.run(
        command, cwd=tmp_path, capture_output=True, text=True, preexec_fn=limit, timeout=300
    )
    lines = result.stderr.strip().splitlines()
    assert result.returncode == 1 and len(lines) == 1, result.stderr[-3000:]
    assert lines[0].startswith("compressor: error: batch of 1024 images (1x192x192) does not fit")
    assert "lower train.batch_size (now 1024)" in lines[0] and "no checkpoint" in lines[0]
    assert tree_bytes(model) == before and not (tmp_path / "o" / "train" / "checkpoint.pt").exists()


@pytest.mark.parametrize(
    "sections,message",
    [
        ({"data": {"name": "digits", "image_size": 4096}}, "need about 112.31 GiB"),
        ({"model": {"name": "resnet56", "width": 100000}}, "GiB for its weights alone"),
    ],
)
def test_data_or_weights_beyond_memory_are_refused_before_allocating(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], sections: dict, message: str
) -> None:
    result = cli(capsys, "prune", recipe_file(tmp_path, **sections), "--out", tmp_path / "o")
    assert_one_line(result, 2, message)
    assert not (tmp_path / "o").exists()


# --- recipe files ---------------------------------------------------------------------------

# Nine lines that expand to 9**9 values: saving such a recipe (or a spec made from it) hung.
BILLION_LAUGHS = b"a: &a [1, 1, 1, 1, 1, 1, 1, 1, 1]\n" + b"".join(
    b"%c: &%c [%s]\n" % (c, c, b", ".join([b"*%c" % (c - 1)] * 9)) for c in b"bcdefghi"
)


@pytest.mark.parametrize(
    "content,message",
    [
        (b"\xff\xfe\x00\x81", "is not UTF-8 text"),
        (b"[" * 5000 + b"]" * 5000, "nested too deeply"),
        (BILLION_LAUGHS, "expands to more than 100,000 values"),
        (b"seed: .nan\n", "recipe: seed must be a whole number"),
        (
            b"train: {epochs: 1, batch_size: '64'}\n",
            "train.batch_size must be an int >= 1, got '64'",
        ),
        (None, "is a directory"),
    ],
)
def test_hostile_recipe_files_are_config_errors_in_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], content: bytes | None, message: str
) -> None:
    path = tmp_path / "recipe.yaml"
    if content is None:
        path.mkdir()
    else:
        path.write_bytes(content)
    assert_one_line(cli(capsys, "blocks", path), 1 if content is None else 2, message)


@pytest.mark.parametrize(
    "argv,message",
    [
        (["prune", "{recipe}", "--out", ""], "argument --out: must name a file or folder"),
        (["blocks", "{recipe}", "--bogus", "a\nb\rc"], "unrecognized arguments: --bogus a\\nb\\rc"),
        (["train"], "the following arguments are required: model"),
    ],
)
def test_bad_arguments_end_in_one_error_line_and_exit_2(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], argv: list[str], message: str
) -> None:
    """argparse's usage, then its error on one line: a typed newline is shown, not obeyed."""
    recipe = str(recipe_file(tmp_path))
    code, lines = cli(capsys, *(a.replace("{recipe}", recipe) for a in argv))
    errors = [line for line in lines if "error:" in line]
    assert code == 2 and errors == [lines[-1]] and message in lines[-1], lines
    assert not list(tmp_path.glob("spec.json"))
