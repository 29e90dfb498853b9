"""Every criterion on every tiny model: finite scores, deterministic by seed, theta_0 untouched."""

from __future__ import annotations

import math

import pytest
import torch

from compressor.errors import ConfigError
from compressor.models.blocks import discover_blocks
from compressor.models.zoo import create_model
from compressor.prune.criteria import CRITERIA, block_scores

TINY = ["resnet8", "resnet14"]


def _setup(name: str):  # noqa: ANN202
    torch.manual_seed(0)
    model = create_model(name, num_classes=4, in_channels=1)
    images = torch.randn(16, 1, 12, 12)
    labels = torch.arange(16) % 4
    blocks = [b for b in discover_blocks(model, images) if b.removable]
    return model, blocks, (images, labels)


@pytest.mark.parametrize("model_name", TINY)
@pytest.mark.parametrize("criterion", sorted(CRITERIA))
def test_scores_are_finite_deterministic_and_leave_the_model_unchanged(
    model_name: str, criterion: str
) -> None:
    model, blocks, batch = _setup(model_name)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    first = block_scores(model, blocks, criterion, batch, seed=3)
    second = block_scores(model, blocks, criterion, batch, seed=3)
    assert set(first) == {b.name for b in blocks}
    assert all(math.isfinite(v) for v in first.values())
    assert first == second
    for key, value in model.state_dict().items():
        assert torch.equal(before[key], value), f"{criterion} changed {key}"


@pytest.mark.parametrize("criterion", ["snip", "synflow"])
def test_mean_aggregation_is_the_sum_divided_by_the_weight_count(criterion: str) -> None:
    model, blocks, batch = _setup("resnet14")
    sums = block_scores(model, blocks, criterion, batch, aggregation="sum")
    means = block_scores(model, blocks, criterion, batch, aggregation="mean")
    for block in blocks:
        count = sum(
            p.numel()
            for n, p in model.named_parameters()
            if n.startswith(block.name + ".") and p.dim() >= 2
        )
        assert means[block.name] == pytest.approx(sums[block.name] / count, rel=1e-9)


def test_random_depends_on_the_seed_only() -> None:
    model, blocks, batch = _setup("resnet14")
    assert block_scores(model, blocks, "random", None, seed=1) != block_scores(
        model, blocks, "random", None, seed=2
    )


def test_snip_sees_a_block_whose_weights_are_zeroed() -> None:
    """A block with (near) zero weights contributes nothing: SNIP must rank it lowest."""
    model, blocks, batch = _setup("resnet14")
    weak = blocks[1].name
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.startswith(weak + ".conv"):
                p.mul_(1e-3)
    scores = block_scores(model, blocks, "snip", batch)
    assert min(scores, key=scores.get) == weak


def test_unknown_criterion_and_aggregation_are_named() -> None:
    model, blocks, batch = _setup("resnet8")
    with pytest.raises(ConfigError, match="unknown criterion 'grasp2'.*grasp"):
        block_scores(model, blocks, "grasp2", batch)
    with pytest.raises(ConfigError, match="aggregation"):
        block_scores(model, blocks, "snip", batch, aggregation="max")
    with pytest.raises(ConfigError, match="needs a batch"):
        block_scores(model, blocks, "grasp", None)
