"""Store round trips (ticket and shrunk), channel shrinking, recipe parsing."""

from __future__ import annotations

import json

import pytest
import torch

from compressor.errors import ConfigError, InputError
from compressor.models.spec import ModelSpec, build_model
from compressor.models.store import load_model, save_model
from compressor.prune.layers import LayerPruneConfig, prune_at_init
from compressor.prune.shrink import ShrinkConfig, shrink_channels_
from compressor.recipe.sections import load_recipe, recipe_from_dict

SPEC = ModelSpec(model="resnet14", kwargs={"num_classes": 6, "in_channels": 1})


def _pruned_and_shrunk(importance: str = "magnitude"):  # noqa: ANN202
    torch.manual_seed(1)
    images, labels = torch.randn(36, 1, 12, 12), torch.arange(36) % 6
    ticket, result = prune_at_init(
        build_model(SPEC), SPEC, images, labels, LayerPruneConfig(criterion="snip", blocks=2)
    )
    shrunk = result.spec
    ticket.eval()
    summary = shrink_channels_(
        ticket, images, ShrinkConfig(importance=importance), (images, labels)
    )
    return ticket, shrunk.with_shapes(ticket), summary, images


@pytest.mark.parametrize("importance", ["magnitude", "taylor", "lamp"])
def test_shrinking_removes_channels_for_real(importance: str) -> None:
    model, spec, summary, images = _pruned_and_shrunk(importance)
    assert summary.macs_after < 0.5 * summary.macs_before
    assert summary.params_after < summary.params_before
    widths = {m.out_channels for m in model.modules() if isinstance(m, torch.nn.Conv2d)}
    assert widths == {8, 16, 32}  # half of 16/32/64, multiples of round_to=8
    assert model.fc.out_features == 6  # the classifier keeps its classes
    assert model.eval()(images).shape == (36, 6)


def test_store_round_trip_gives_identical_outputs(tmp_path) -> None:  # noqa: ANN001
    model, spec, _, images = _pruned_and_shrunk()
    model.eval()
    save_model(model, spec, tmp_path / "m", {"accuracy": 0.5})
    stored = load_model(tmp_path / "m")
    assert torch.equal(stored.model(images), model(images))
    assert stored.spec == spec and stored.info["accuracy"] == 0.5
    assert len(stored.spec.removed_blocks) == 2


def test_store_refuses_tampered_and_missing_files(tmp_path) -> None:  # noqa: ANN001
    model, spec, _, _ = _pruned_and_shrunk()
    directory = save_model(model, spec, tmp_path / "m")
    weights = directory / "weights.safetensors"
    data = bytearray(weights.read_bytes())
    data[-1] ^= 0xFF
    weights.write_bytes(bytes(data))
    with pytest.raises(InputError, match="does not match its spec"):
        load_model(directory)
    weights.unlink()
    with pytest.raises(InputError, match="weights.safetensors is missing"):
        load_model(directory)
    doc = json.loads((directory / "spec.json").read_text())
    assert "weights_sha256" in doc and doc["spec"]["model"] == "resnet14"


def test_spec_rejects_unknown_keys() -> None:
    with pytest.raises(ConfigError, match="unknown key"):
        ModelSpec.from_dict({"model": "resnet8", "blocks": []})


def test_recipe_unknown_keys_are_named(tmp_path) -> None:  # noqa: ANN001
    with pytest.raises(ConfigError, match=r"unknown key\(s\) \['trian'\]"):
        recipe_from_dict({"trian": {}})
    with pytest.raises(ConfigError, match="prune: unknown key.*'citerion'"):
        recipe_from_dict({"prune": {"citerion": "snip", "blocks": 1}})
    with pytest.raises(InputError, match="recipe file not found"):
        load_recipe(tmp_path / "nope.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("prune: [unclosed\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_recipe(bad)


def test_recipe_maps_sections_onto_configs(tmp_path) -> None:  # noqa: ANN001
    path = tmp_path / "r.yaml"
    path.write_text(
        "name: quick\nmodel: {name: resnet20, width: 0.5}\n"
        "prune: {criterion: snip, blocks: 3}\ntrain: {epochs: 2, lr: 0.05}\n"
        "shrink: {macs_target: 0.5}\nbench: {batch_sizes: [1, 4], backends: [onnxruntime]}\n"
    )
    recipe = load_recipe(path)
    assert recipe.prune.blocks == 3 and recipe.prune.criterion == "snip"
    assert recipe.train.epochs == 2 and recipe.shrink.macs_target == 0.5
    assert recipe.shrink.ratio is None and recipe.bench.batch_sizes == (1, 4)
    assert recipe_from_dict(recipe.to_dict()) == recipe  # round trip


def test_default_recipe_file_is_the_embedded_default() -> None:
    from pathlib import Path

    from compressor.recipe.sections import Recipe

    root = Path(__file__).resolve().parents[2]
    assert load_recipe(root / "recipes" / "default.yaml") == Recipe()
    for path in sorted((root / "recipes").glob("*.yaml")):
        assert load_recipe(path).name == path.stem  # every shipped recipe parses


def test_recipe_reads_exponent_floats_as_numbers(tmp_path) -> None:  # noqa: ANN001
    path = tmp_path / "r.yaml"
    path.write_text(
        "train: {epochs: 1, lr: 1e-3, weight_decay: 5.0e-4}\nexport: {parity_atol: 1e-5}\n"
    )
    recipe = load_recipe(path)
    assert recipe.train.lr == 1e-3 and recipe.train.weight_decay == 5e-4
    assert recipe.export.parity_atol == 1e-5
