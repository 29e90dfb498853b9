"""Scoring at scale: micro-batches give the whole batch's scores in the memory of one
micro-batch, scoring reports progress, and scores that cannot separate the blocks warn."""

from __future__ import annotations

import importlib
import json
import math
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from torch import nn

from compressor.cli import main
from compressor.data.splits import load_data
from compressor.errors import ConfigError
from compressor.models.blocks import discover_blocks
from compressor.models.zoo import create_model
from compressor.prune import micro_batches
from compressor.prune.criteria import BlockScores, block_scores, weight_scores
from compressor.prune.layers import SCORE_BATCH_SIZE, LayerPruneConfig, prune_at_init
from compressor.prune.score_checks import score_warnings
from compressor.recipe.sections import load_recipe
from compressor.workflows.stages import dense_model
from tests.compressor.test_pipeline_cli import write_recipe

ROOT = Path(__file__).resolve().parents[2]


def _group_norm(model: nn.Module) -> nn.Module:
    """The zoo model with per-image GroupNorm for batch norm: no batch statistics, as in
    ConvNeXt or a ViT, so a micro-batch computes exactly its share of the whole batch."""
    for name, child in model.named_children():
        if isinstance(child, nn.BatchNorm2d):
            setattr(model, name, nn.GroupNorm(1, child.num_features))
        else:
            _group_norm(child)
    return model


def _batch(count: int = 18) -> tuple[torch.Tensor, torch.Tensor]:
    torch.manual_seed(0)
    return torch.randn(count, 1, 12, 12), torch.arange(count) % 4


@pytest.mark.parametrize("criterion", ["snip", "grasp"])
def test_micro_batches_give_the_whole_batch_scores(criterion: str) -> None:
    torch.manual_seed(0)
    model = _group_norm(create_model("resnet14", num_classes=4, in_channels=1))
    batch = _batch()
    blocks = [b for b in discover_blocks(model, batch[0][:1]) if b.removable]
    whole = weight_scores(model, criterion, batch, score_batch_size=None)
    whole_blocks = block_scores(model, blocks, criterion, batch)
    scale = max(float(s.abs().max()) for s in whole.values())
    block_scale = max(abs(v) for v in whole_blocks.values())
    for size in (4, 5):  # 5: the last micro-batch holds 3 images, weighted by 3/18
        parts = weight_scores(model, criterion, batch, score_batch_size=size)
        for name, value in whole.items():
            torch.testing.assert_close(parts[name], value, rtol=1e-4, atol=1e-5 * scale)
        by_block = block_scores(model, blocks, criterion, batch, score_batch_size=size)
        for name, value in whole_blocks.items():
            assert by_block[name] == pytest.approx(value, abs=1e-5 * block_scale)


@pytest.mark.parametrize("criterion", ["snip", "grasp"])
def test_one_micro_batch_is_the_whole_batch_bit_for_bit(criterion: str) -> None:
    """Batch norm in train mode normalises each micro-batch by its own statistics, so a
    batch-norm model's scores match the whole batch exactly when one micro-batch holds it."""
    torch.manual_seed(0)
    model = create_model("resnet8", num_classes=4, in_channels=1)
    batch = _batch()
    whole = weight_scores(model, criterion, batch, score_batch_size=None)
    one = weight_scores(model, criterion, batch, score_batch_size=len(batch[0]))
    assert all(torch.equal(one[name], value) for name, value in whole.items())


def test_the_default_recipe_removes_the_same_blocks_in_micro_batches() -> None:
    recipe = load_recipe(ROOT / "recipes" / "default.yaml")
    data = load_data(recipe.data)
    dense, spec = dense_model(recipe, data)
    assert recipe.prune.score_batch_size == SCORE_BATCH_SIZE == 8  # 100 images: 13 of them
    cuts = {}
    for size in (None, SCORE_BATCH_SIZE):
        config = LayerPruneConfig(**{**recipe.prune.to_dict(), "score_batch_size": size})
        _, result = prune_at_init(dense, spec, data.train.images, data.train.labels, config)
        assert result.warnings == ()  # a healthy model: the scores separate the blocks
        cuts[size] = sorted(result.removed)
    assert len(cuts[None]) == 15 and cuts[None] == cuts[SCORE_BATCH_SIZE]


MEMORY_SCRIPT = """
import json, re, sys, torch
from pathlib import Path
from compressor.prune.criteria import weight_scores
from compressor.models.zoo import create_model
torch.manual_seed(0)
model = create_model("resnet8", num_classes=10, in_channels=3)
images, labels = torch.randn(64, 3, 20, 20), torch.arange(64) % 10
def peak_mb():  # this process's own peak: ru_maxrss would carry the parent's over exec
    status = Path("/proc/self/status").read_text()
    return int(re.search(r"VmHWM:\\s+(\\d+) kB", status).group(1)) / 1024
weight_scores(model, "grasp", (images[:8], labels[:8]), score_batch_size=8)  # warm up
base = peak_mb()
size = None if sys.argv[1] == "all" else int(sys.argv[1])
weight_scores(model, "grasp", (images, labels), score_batch_size=size)
print(json.dumps({"base": base, "grown": peak_mb() - base}))
"""


@pytest.mark.skipif(sys.platform != "linux", reason="reads the peak from Linux's /proc")
def test_peak_memory_follows_the_micro_batch_not_the_scoring_set() -> None:
    """GraSP on 64 images, in micro-batches of 8 and all at once, each in a fresh process
    (the peak resident size of a process only grows)."""
    grown = {}
    for size in ("8", "all"):
        run = subprocess.run(
            [sys.executable, "-c", MEMORY_SCRIPT, size], capture_output=True, text=True, cwd=ROOT
        )
        assert run.returncode == 0, run.stderr
        grown[size] = json.loads(run.stdout.splitlines()[-1])
    assert grown["all"]["grown"] > 20, grown  # MB: GraSP's double-backward graph of 64 images
    assert grown["8"]["grown"] < grown["all"]["grown"] / 5, grown


def test_progress_lines_count_micro_batches_with_elapsed_time(capsys, monkeypatch) -> None:  # noqa: ANN001
    torch.manual_seed(0)
    model = create_model("resnet8", num_classes=4, in_channels=1)
    weight_scores(model, "grasp", _batch(16), score_batch_size=4)
    assert capsys.readouterr().err == ""  # quick scoring stays quiet
    monkeypatch.setattr(micro_batches, "PROGRESS_SECONDS", 0.0)
    weight_scores(model, "grasp", _batch(16), score_batch_size=4)
    lines = capsys.readouterr().err.splitlines()
    assert len(lines) == 8  # two passes (gradient, Hessian-gradient) x 4 micro-batches
    assert lines[-1].startswith("[prune] grasp: micro-batch 8/8 (16 images, 4 at a time), ")
    assert lines[-1].endswith(" s") and float(lines[-1].split(", ")[-1][:-2]) >= 0


@pytest.mark.parametrize("bad", [0, -1, 2.5, "8", True])
def test_score_batch_size_is_validated(bad: object) -> None:
    with pytest.raises(ConfigError, match=r"^prune\.score_batch_size: must be a whole number"):
        LayerPruneConfig(blocks=1, score_batch_size=bad)
    assert LayerPruneConfig(blocks=1, score_batch_size=None).score_batch_size is None


ZERO_INIT_FACTORY = """
from torch import nn
from compressor.models.zoo import create_model

def build(num_classes, in_channels):
    # Each block's last batch norm starts at zero, as timm's ResNets do (zero_init_last).
    model = create_model("resnet14", num_classes=num_classes, in_channels=in_channels)
    for module in model.modules():
        if hasattr(module, "bn2"):
            nn.init.zeros_(module.bn2.weight)
    return model
"""


def test_zero_initialised_branches_warn_in_prune_json_and_on_the_console(
    tmp_path: Path,
    capsys,  # noqa: ANN001
) -> None:
    factory = tmp_path / "zero_init.py"
    factory.write_text(textwrap.dedent(ZERO_INIT_FACTORY))
    recipe = write_recipe(
        tmp_path,
        {"model": {"factory": f"{factory}:build"}, "prune": {"criterion": "grasp", "blocks": 1}},
        blocks=1,
    )
    assert main(["prune", str(recipe), "--out", str(tmp_path / "p")]) == 0
    out, err = capsys.readouterr()
    saved = json.loads((tmp_path / "p" / "prune.json").read_text())["warnings"]
    assert len(saved) == 1 and json.loads(out)["warnings"] == saved
    assert saved[0].startswith("every grasp block score is 0 (every block's residual branch")
    assert "first in forward order; prune from pretrained weights" in saved[0]
    assert f"[prune] warning: {saved[0]}" in err.splitlines()


def _scored(*values: float, reference: float | None = 1.0) -> tuple[BlockScores, list[str]]:
    order = [f"b{i}" for i in range(len(values))]
    return BlockScores(dict(zip(order, values, strict=True)), reference), order


def test_score_warnings_name_the_reason() -> None:
    assert score_warnings(*_scored(0.3, 0.1, 0.2), 1, "snip") == []  # a clear order
    assert score_warnings(*_scored(0.0, 0.0, 0.0), 0, "snip") == []  # nothing removed
    assert score_warnings(*_scored(0.0, 0.0, 0.0), 3, "snip") == []  # everything removed
    assert score_warnings(*_scored(0.0, 0.0, 0.0), 1, "random") == []
    (nan,) = score_warnings(*_scored(0.1, math.nan, math.inf), 1, "grasp")
    assert nan.startswith("2 of 3 grasp block scores are NaN or infinite (b1, b2)")
    (tie,) = score_warnings(*_scored(0.5, 0.2, 0.2 * (1 + 1e-8)), 1, "synflow")
    assert tie.startswith("synflow scores tie at the cut: 'b1' (removed) and 'b2' (kept)")
    small = score_warnings(*_scored(3e-11, -2e-11, 1e-11, reference=1e-3), 1, "grasp")
    assert small == [
        "every grasp block score is below 3e-11, 3e-08 of the largest score outside the "
        "blocks (0.001): the blocks barely count for grasp at these weights, so the ranking "
        "says little about what they do; prune from pretrained weights (model.weights) or "
        "after training, or use criterion: random for an honest baseline"
    ]
    # Scores small next to the largest block but apart from each other are a real order.
    assert score_warnings(*_scored(5.0e-8, 4.7e-8, 3e-2), 1, "synflow") == []


@pytest.mark.torchvision
@pytest.mark.parametrize("criterion", ["grasp", "snip"])
def test_convnext_layer_scale_warns_and_a_torchvision_resnet_does_not(criterion: str) -> None:
    """ConvNeXt's layer scale (1e-6) switches every branch off at init."""
    try:
        timm = importlib.import_module("timm")
        models = importlib.import_module("torchvision.models")
    except (ImportError, RuntimeError) as exc:  # RuntimeError: a build for another torch
        pytest.skip(f"timm/torchvision cannot be imported here ({type(exc).__name__})")
    from compressor.models.spec import ModelSpec

    torch.manual_seed(0)
    images, labels = torch.randn(10, 3, 64, 64), torch.arange(10) % 10
    config = LayerPruneConfig(criterion=criterion, blocks=3, samples_per_class=1)
    convnext = timm.create_model("convnext_atto", num_classes=10)
    _, result = prune_at_init(convnext, ModelSpec(model="convnext_atto"), images, labels, config)
    (warning,) = result.warnings
    assert warning.startswith(f"every {criterion} block score is below ")
    assert "residual branch adds at most 3e-07 of its input" in warning
    resnet = models.resnet18(num_classes=10)
    _, result = prune_at_init(resnet, ModelSpec(model="resnet18"), images, labels, config)
    assert result.warnings == ()
