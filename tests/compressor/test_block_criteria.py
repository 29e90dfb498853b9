"""Block-level criteria on trained weights (Algorithm 1): hrank, expectabs, kl, pls, cka."""

from __future__ import annotations

import copy
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from compressor.errors import ConfigError, UnsupportedModelError
from compressor.models.blocks import discover_blocks
from compressor.models.spec import ModelSpec, build_model, remove_blocks_
from compressor.prune.block_criteria import kl_scores, vip_scores
from compressor.prune.criteria import CRITERIA, block_scores
from compressor.prune.layers import LayerPruneConfig, prune_at_init
from compressor.workflows.lottery.analysis import linear_cka

BLOCK_LEVEL = ["hrank", "expectabs", "kl", "pls", "cka"]
# Removing a block whose residual branch is zero changes nothing: these must rank it lowest.
SEES_ZERO_BRANCH = ["expectabs", "kl", "cka"]
SPEC = ModelSpec(model="resnet14", kwargs={"num_classes": 4, "in_channels": 1, "width": 0.5})


def _setup(name: str = "resnet14"):  # noqa: ANN202
    torch.manual_seed(0)
    model = build_model(ModelSpec(model=name, kwargs={**SPEC.kwargs}))
    images = torch.randn(24, 1, 16, 16)
    labels = torch.arange(24) % 4
    blocks = [b for b in discover_blocks(model, images) if b.removable]
    return model, blocks, (images, labels)


def _zero_branch_(model: nn.Module, block: str) -> None:
    """bn2's scale and shift to 0: the block computes relu(0 + x) = x on its post-ReLU input."""
    bn2 = model.get_submodule(block).bn2
    with torch.no_grad():
        bn2.weight.zero_()
        bn2.bias.zero_()


class _Residual(nn.Module):
    def __init__(self, width: int) -> None:
        super().__init__()
        self.fc = nn.Linear(width, width)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + torch.tanh(self.fc(x))


def _mlp() -> nn.Module:
    """Residual blocks with (N, D) outputs: no feature maps."""
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Flatten(), nn.Linear(16, 8), _Residual(8), _Residual(8), _Residual(8), nn.Linear(8, 3)
    )


@pytest.mark.parametrize("model_name", ["resnet8", "resnet14"])
@pytest.mark.parametrize("criterion", BLOCK_LEVEL)
def test_scores_are_finite_deterministic_and_leave_the_model_unchanged(
    model_name: str, criterion: str
) -> None:
    model, blocks, batch = _setup(model_name)
    model.train()
    model.stem[1].eval()  # a user's frozen batch norm keeps its own mode
    before = {k: v.clone() for k, v in model.state_dict().items()}
    first = block_scores(model, blocks, criterion, batch, seed=3)
    second = block_scores(model, blocks, criterion, batch, seed=3)
    assert list(first) == [b.name for b in blocks]
    assert all(math.isfinite(v) for v in first.values())
    assert first == second
    for key, value in model.state_dict().items():
        assert torch.equal(before[key], value), f"{criterion} changed {key}"
    assert model.training and model.layer1[0].bn1.training and not model.stem[1].training


@pytest.mark.parametrize("weak", ["layer1.1", "layer3.1"])
@pytest.mark.parametrize("criterion", SEES_ZERO_BRANCH)
def test_a_block_whose_branch_is_zero_is_ranked_lowest(criterion: str, weak: str) -> None:
    """A block with a zero residual branch outputs its input: removing it changes nothing,
    so the network's softmax is unchanged (kl 0), its output equals its input (cka: CKA 1,
    score 0) and it adds nothing (expectabs 0). hrank and pls look at the block's output
    alone, which is then its predecessor's output: see the next test."""
    model, blocks, batch = _setup()
    _zero_branch_(model, weak)
    scores = block_scores(model, blocks, criterion, batch)
    assert min(scores, key=scores.get) == weak
    assert scores[weak] == pytest.approx(0.0, abs=1e-12)
    assert all(v > 1e-6 for name, v in scores.items() if name != weak)


@pytest.mark.parametrize("criterion", ["hrank", "pls"])
def test_output_criteria_score_a_zero_branch_block_as_its_predecessor(criterion: str) -> None:
    """hrank (rank of the output maps) and pls (class information in the pooled output) see
    what a block outputs, not what it changes: a zero-branch block's output is its input,
    the previous block's output, so it scores exactly as that block does, not lowest."""
    model, blocks, batch = _setup()
    _zero_branch_(model, "layer1.1")
    scores = block_scores(model, blocks, criterion, batch)
    assert scores["layer1.1"] == pytest.approx(scores["layer1.0"], rel=1e-9)


def test_kl_with_the_identity_hook_equals_physical_removal() -> None:
    model, blocks, (images, labels) = _setup()
    model.eval()
    scores = kl_scores(model, blocks, (images, labels), seed=0)
    shallower = copy.deepcopy(model)
    remove_blocks_(shallower, ["layer2.1"])
    with torch.no_grad():
        full = F.log_softmax(model(images).double(), dim=1)
        removed = F.log_softmax(shallower(images).double(), dim=1)
    expected = float((full.exp() * (full - removed)).sum(dim=1).mean())
    assert scores["layer2.1"] == pytest.approx(expected, rel=1e-6)


def test_linear_cka_is_one_for_a_rotated_scaled_copy_and_matches_the_feature_formula() -> None:
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(20, 6, generator=generator, dtype=torch.float64)
    y = torch.randn(20, 5, generator=generator, dtype=torch.float64)
    rotation = torch.linalg.qr(torch.randn(6, 6, generator=generator, dtype=torch.float64))[0]
    assert linear_cka(x, 3.0 * x @ rotation) == pytest.approx(1.0, abs=1e-12)
    xc, yc = x - x.mean(0), y - y.mean(0)  # Kornblith et al., eq. (5)
    expected = torch.linalg.norm(yc.T @ xc) ** 2 / (
        torch.linalg.norm(xc.T @ xc) * torch.linalg.norm(yc.T @ yc)
    )
    assert linear_cka(x, y) == pytest.approx(float(expected), rel=1e-12)


def test_vip_ranks_the_feature_that_carries_the_label_first() -> None:
    rng = np.random.default_rng(0)
    labels = np.arange(40) % 4
    features = rng.normal(size=(40, 6))
    features[:, 3] = labels + 0.1 * rng.normal(size=40)
    vip = vip_scores(features, labels)
    assert int(np.argmax(vip)) == 3
    assert float(np.mean(vip**2)) == pytest.approx(1.0, rel=1e-9)  # VIP's normalisation


@pytest.mark.parametrize("criterion", ["expectabs", "kl", "pls", "cka"])
def test_criteria_without_feature_maps_score_any_residual_model(criterion: str) -> None:
    model = _mlp()
    images, labels = torch.randn(12, 1, 4, 4), torch.arange(12) % 3
    blocks = [b for b in discover_blocks(model, images) if b.removable]
    assert len(blocks) == 3
    scores = block_scores(model, blocks, criterion, (images, labels))
    assert all(math.isfinite(v) for v in scores.values())


def test_errors_are_one_line_and_name_the_criterion() -> None:
    model = _mlp()
    images, labels = torch.randn(12, 1, 4, 4), torch.arange(12) % 3
    blocks = [b for b in discover_blocks(model, images) if b.removable]
    with pytest.raises(UnsupportedModelError, match=r"'hrank' needs \(N, C, H, W\)") as err:
        block_scores(model, blocks, "hrank", (images, labels))
    assert "\n" not in str(err.value)
    with pytest.raises(ConfigError, match="'kl' needs a batch"):
        block_scores(model, blocks, "kl", None)
    with pytest.raises(ConfigError, match="'cka'.*need at least 2"):
        block_scores(model, blocks, "cka", (images[:1], labels[:1]))
    with pytest.raises(ConfigError, match="'pls'.*1 class"):
        block_scores(model, blocks, "pls", (images, torch.zeros(12, dtype=torch.long)))
    model.forward = lambda x: model[5](model[1](model[0](x)))  # skips every block
    for name in ("kl", "cka"):  # kl would otherwise score 0 and remove an unused block
        with pytest.raises(UnsupportedModelError, match="did not run in the model's forward"):
            block_scores(model, blocks, name, (images, labels))


def test_registry_marks_block_level_criteria_and_ignores_aggregation() -> None:
    model, blocks, batch = _setup()
    for name, criterion in CRITERIA.items():
        block_level = name in BLOCK_LEVEL
        assert (criterion.score_blocks is not None) == block_level
        assert criterion.after_training == block_level
        assert criterion.needs_data or not block_level
    for name in ("expectabs", "cka"):
        assert block_scores(model, blocks, name, batch, aggregation="mean") == block_scores(
            model, blocks, name, batch, aggregation="sum"
        )


@pytest.mark.parametrize("criterion", BLOCK_LEVEL)
def test_prune_at_init_accepts_block_level_criteria(criterion: str) -> None:
    model, _, (images, labels) = _setup()
    _zero_branch_(model, "layer2.1")
    config = LayerPruneConfig(criterion=criterion, blocks=1, samples_per_class=6)
    ticket, result = prune_at_init(model, SPEC, images, labels, config)
    assert result.removed == (min(result.scores, key=result.scores.get),)
    assert len(discover_blocks(ticket, images)) == len(discover_blocks(model, images)) - 1
    if criterion in SEES_ZERO_BRANCH:
        assert result.removed == ("layer2.1",)
