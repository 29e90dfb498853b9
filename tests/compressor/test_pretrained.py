"""`model.weights`: the dense model starts from a pretrained file, and nothing in it runs.

A small ResNet is trained once (the "pretrained" source), saved the ways users save
checkpoints (a DDP-prefixed `{'state_dict': ...}` .pth, a safetensors file), and loaded
through the recipe: theta_0 must be those weights, measured by the source's own accuracy.
"""

from __future__ import annotations

import hashlib
import json
import os
import pickle
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from compressor.cli import main
from compressor.data.splits import DataSplits, load_data
from compressor.errors import ConfigError, InputError
from compressor.models.store import load_model
from compressor.recipe.sections import recipe_from_dict
from compressor.training.config import TrainConfig
from compressor.training.evaluate import evaluate
from compressor.training.loop import train
from compressor.workflows.stages import dense_model

BASE = {
    "name": "pretrained",
    "model": {"name": "resnet8", "width": 0.5},
    "data": {"name": "digits", "image_size": 8},
    "prune": {"criterion": "snip", "blocks": 1},
    "train": {"epochs": 1, "batch_size": 64, "lr": 0.02, "progress": "none"},
    "shrink": {"ratio": 0.5, "round_to": 4, "fine_tune_epochs": 1},
    "export": {"int8": False, "fp16": False, "bf16": False},
    "bench": {"backends": ["onnxruntime"], "batch_sizes": [1], "iterations": 5, "warmup_iters": 1},
}


def with_weights(weights: str, **model: object) -> dict:
    return {**BASE, "model": {**BASE["model"], "weights": weights, **model}}


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


class RunsShellCommand:
    """Unpickling this runs `os.system(command)`: what a hostile checkpoint carries."""

    def __init__(self, command: str) -> None:
        self.command = command

    def __reduce__(self) -> tuple:
        return (os.system, (self.command,))


@pytest.fixture(scope="module")
def data() -> DataSplits:
    return load_data(recipe_from_dict(BASE).data)


@pytest.fixture(scope="module")
def source(tmp_path_factory: pytest.TempPathFactory, data: DataSplits) -> dict:
    """A trained model (seed 7, not the recipes' seed 0) and its accuracy on the test split."""
    model, _ = dense_model(recipe_from_dict({**BASE, "seed": 7}), data)
    config = TrainConfig(epochs=2, batch_size=64, lr=0.05, seed=7, progress="none")
    train(model, data, config, tmp_path_factory.mktemp("source") / "train")
    model.eval()
    accuracy, _ = evaluate(model, data.test)
    assert accuracy > 0.5  # far above chance (0.1): starting from it is visible
    state = {k: v.detach().clone() for k, v in model.state_dict().items()}
    return {"state": state, "accuracy": accuracy}


def save_as(kind: str, state: dict[str, torch.Tensor], path: Path) -> Path:
    if kind == "pth":  # what a DDP training script writes: wrapped, every key prefixed
        wrapped = {"module." + k: v for k, v in state.items()}
        torch.save({"epoch": 2, "state_dict": wrapped, "best_acc": 0.9}, path)
    else:
        save_file({k: v.contiguous() for k, v in state.items()}, str(path))
    return path


def write_recipe(directory: Path, recipe: dict) -> Path:
    path = directory / "recipe.yaml"
    path.write_text(json.dumps(recipe))
    return path


@pytest.mark.parametrize("kind", ["pth", "safetensors"])
def test_prune_and_train_start_from_the_pretrained_file(
    kind: str,
    source: dict,
    data: DataSplits,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    monkeypatch.chdir(tmp_path)  # the recipe names the file relative to the working directory
    weights = save_as(kind, source["state"], tmp_path / f"source.{kind}")
    recipe_dict = with_weights(f"source.{kind}")

    dense, _ = dense_model(recipe_from_dict(recipe_dict), data)  # theta_0 of every stage
    assert all(torch.equal(v, source["state"][k]) for k, v in dense.state_dict().items())
    assert evaluate(dense, data.test)[0] == source["accuracy"]  # the source's accuracy, exactly
    assert f"tensors from source.{kind} (sha256 {sha256(weights)[:12]})" in capsys.readouterr().err

    recipe = write_recipe(tmp_path, recipe_dict)
    assert main(["prune", str(recipe), "--out", "ticket"]) == 0
    ticket = load_model(tmp_path / "ticket")
    assert ticket.info["pretrained"]["sha256"] == sha256(weights)
    removed = ticket.spec.removed_blocks
    kept = {k: v for k, v in ticket.model.named_parameters()}
    assert len(removed) == 1 and kept  # the ticket inherits the file's weights, less a block
    assert all(torch.equal(v, source["state"][k]) for k, v in kept.items())

    assert main(["train", "ticket", str(recipe), "--out", "trained"]) == 0
    trained = load_model(tmp_path / "trained" / "model")
    assert trained.info["epochs"] == 1
    assert trained.info["accuracy"] > 0.5  # one epoch from pretrained weights, not from chance
    moved = any(not torch.equal(v, source["state"][k]) for k, v in trained.model.named_parameters())
    assert moved  # it really trained


def test_a_pickle_carrying_code_is_refused_and_never_runs(
    source: dict, data: DataSplits, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    marker = tmp_path / "payload-ran"
    hostile = tmp_path / "hostile.pth"
    payload = {"state_dict": source["state"], "hook": RunsShellCommand(f"touch {marker}")}
    torch.save(payload, hostile)
    raw = tmp_path / "hostile.pkl"  # a plain pickle (protocol 2, as old torch.save wrote)
    raw.write_bytes(pickle.dumps(RunsShellCommand(f"touch {marker}"), protocol=2))

    for path in (hostile, raw):
        with pytest.raises(InputError) as caught:
            dense_model(recipe_from_dict(with_weights(str(path))), data)
        message = str(caught.value)
        assert "\n" not in message
        assert str(path) in message and "refused" in message and "system" in message
        assert not marker.exists()

    recipe = write_recipe(tmp_path, with_weights(str(hostile)))
    assert main(["prune", str(recipe), "--out", str(tmp_path / "ticket")]) == 1
    err = capsys.readouterr().err.strip()
    assert err.startswith("compressor: error: model.weights: refused") and "\n" not in err
    assert not marker.exists() and not (tmp_path / "ticket").exists()

    # The file is truly hostile: full unpickling (what this project never does) runs it.
    torch.load(hostile, weights_only=False)
    assert marker.exists()


def test_missing_unexpected_and_misshapen_tensors_are_named(
    source: dict, data: DataSplits, tmp_path: Path
) -> None:
    state = dict(source["state"])
    names = [k for k in state if k.endswith(".weight")]
    for name in names[:5]:
        del state[name]
    for i in range(4):
        state[f"aux_head.{i}.weight"] = torch.zeros(3)
    state["fc.bias"] = torch.zeros(1000)  # an ImageNet-sized head
    path = save_as("pth", state, tmp_path / "other.pth")

    with pytest.raises(InputError) as caught:
        dense_model(recipe_from_dict(with_weights(str(path))), data)
    message = str(caught.value)
    assert "\n" not in message
    assert f"5 missing from the file ({', '.join(names[:3])} and 2 more)" in message
    assert (
        "4 unexpected in the file (aux_head.0.weight, aux_head.1.weight, aux_head.2.weight"
        in message
    )
    assert "1 with another shape (fc.bias: file [1000] vs model [10])" in message
    assert "model.weights_strict: false" in message


def test_non_strict_loads_what_fits_and_records_the_rest(
    source: dict,
    data: DataSplits,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """An ImageNet-style checkpoint on a 10-class dataset: the head is skipped and named, the
    stored ticket says so, every other tensor is the file's."""
    state = dict(source["state"])
    state["fc.weight"] = torch.zeros(1000, state["fc.weight"].shape[1])
    state["fc.bias"] = torch.zeros(1000)
    path = save_as("safetensors", state, tmp_path / "imagenet.safetensors")
    recipe = recipe_from_dict(with_weights(str(path), weights_strict=False))

    dense, _ = dense_model(recipe, data)
    err = capsys.readouterr().err
    assert "2 tensors of imagenet.safetensors not loaded" in err
    assert "fc.weight: file [1000, 32] vs model [10, 32]" in err
    seeded, _ = dense_model(recipe_from_dict(BASE), data)  # the same seed, no weights
    for key, value in dense.state_dict().items():
        expected = seeded.state_dict()[key] if key.startswith("fc.") else state[key]
        assert torch.equal(value, expected), key

    monkeypatch.chdir(tmp_path)
    recipe_file = write_recipe(tmp_path, with_weights(str(path), weights_strict=False))
    assert main(["prune", str(recipe_file), "--out", "ticket"]) == 0
    info = load_model(tmp_path / "ticket").info["pretrained"]
    assert info["sha256"] == sha256(path)
    assert sorted(m.split(":")[0] for m in info["mismatched"]) == ["fc.bias", "fc.weight"]


def test_resume_with_another_file_under_the_same_name_is_refused(
    source: dict, tmp_path: Path
) -> None:
    from compressor.workflows.pipeline import run_pipeline

    path = save_as("pth", source["state"], tmp_path / "w.pth")
    recipe = recipe_from_dict(with_weights(str(path)))
    recorded = recipe.to_dict()["model"]
    assert recorded["weights_sha256"] == sha256(path)  # what recipe.json records
    out = tmp_path / "run"
    out.mkdir()
    (out / "recipe.json").write_text(json.dumps(recipe.to_dict()))  # as a run leaves it
    save_as("pth", {**source["state"], "fc.bias": torch.ones(10)}, path)
    with pytest.raises(ConfigError, match=r"\['model'\]"):
        run_pipeline(recipe, out, resume=True, log=lambda _: None)


def test_recipe_values_and_files_are_checked(
    source: dict, data: DataSplits, tmp_path: Path
) -> None:
    with pytest.raises(ConfigError, match=r"model\.weights: must be a file path"):
        recipe_from_dict(with_weights(5))  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match=r"model\.weights_strict: must be true or false"):
        recipe_from_dict(with_weights("a.pth", weights_strict="no"))
    with pytest.raises(ConfigError, match="only with model.weights"):
        recipe_from_dict({**BASE, "model": {"name": "resnet8", "weights_strict": False}})
    with pytest.raises(InputError, match=r"model\.weights: nope\.pth is not found"):
        dense_model(recipe_from_dict(with_weights("nope.pth")), data)

    path = save_as("pth", source["state"], tmp_path / "w.pth")
    pinned = with_weights(str(path), weights_sha256="0" * 64)
    with pytest.raises(InputError, match="model.weights_sha256 is 000000000000"):
        dense_model(recipe_from_dict(pinned), data)

    torch.save({"epoch": 3, "optimizer": {"lr": 0.1}}, tmp_path / "no_model.pth")
    with pytest.raises(InputError, match="keys epoch, optimizer, not a state dict"):
        dense_model(recipe_from_dict(with_weights(str(tmp_path / "no_model.pth"))), data)
    (tmp_path / "text.pth").write_text("not weights at all")
    with pytest.raises(InputError, match="neither a safetensors file nor a torch.save"):
        dense_model(recipe_from_dict(with_weights(str(tmp_path / "text.pth"))), data)
    renamed = {f"encoder.{k}": v for k, v in source["state"].items()}
    save_as("safetensors", renamed, tmp_path / "renamed.safetensors")
    with pytest.raises(InputError, match="no tensor in .* fits the model"):
        dense_model(recipe_from_dict(with_weights(str(tmp_path / "renamed.safetensors"))), data)
