"""Zoo models and block discovery: the facts layer pruning relies on."""

from __future__ import annotations

import pytest
import torch

from compressor.errors import ConfigError
from compressor.models.blocks import discover_blocks, model_macs
from compressor.models.zoo import create_model, list_models

DEPTHS = {
    "resnet8": 1,
    "resnet14": 2,
    "resnet20": 3,
    "resnet32": 5,
    "resnet44": 7,
    "resnet56": 9,
    "resnet110": 18,
}


@pytest.mark.parametrize("name,per_stage", DEPTHS.items())
def test_cifar_resnets_have_the_published_depth(name: str, per_stage: int) -> None:
    model = create_model(name, num_classes=10, in_channels=3)
    blocks = discover_blocks(model, torch.randn(1, 3, 32, 32))
    assert len(blocks) == 3 * per_stage
    convs = sum(isinstance(m, torch.nn.Conv2d) and m.kernel_size == (3, 3) for m in model.modules())
    assert convs + 1 == int(name.removeprefix("resnet"))  # 6n 3x3 convs + stem... + fc = 6n+2
    # Only the first block of stages 2 and 3 changes shape (stride 2, channels x2).
    fixed = [b.name for b in blocks if not b.removable]
    assert fixed == ["layer2.0", "layer3.0"]
    assert [b.stage for b in blocks] == [0] * per_stage + [1] * per_stage + [2] * per_stage


def test_widths_follow_16_32_64_times_the_multiplier() -> None:
    model = create_model("resnet20", num_classes=7, in_channels=1, width=0.5)
    blocks = discover_blocks(model, torch.randn(1, 1, 16, 16))
    assert {b.out_shape[0] for b in blocks} == {8, 16, 32}
    assert model(torch.randn(2, 1, 16, 16)).shape == (2, 7)


def test_projection_shortcut_only_where_the_shape_changes() -> None:
    model = create_model("resnet20")
    with_projection = [
        n
        for n, m in model.named_modules()
        if getattr(m, "shortcut", 0) is not None and hasattr(m, "conv1")
    ]
    assert with_projection == ["layer2.0", "layer3.0"]


def test_discovery_reports_macs_and_leaves_batchnorm_stats_alone() -> None:
    model = create_model("resnet8", num_classes=10, in_channels=1)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    blocks = discover_blocks(model, torch.randn(4, 1, 16, 16))
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    # 16x16x16 output, two 3x3 convs over 16 channels each.
    assert blocks[0].macs == 2 * 16 * 16 * 16 * 16 * 9
    assert sum(b.macs for b in blocks) < model_macs(model, torch.randn(1, 1, 16, 16))


def test_unknown_model_and_bad_arguments_are_named() -> None:
    with pytest.raises(ConfigError, match="unknown model 'resnet57'.*resnet56"):
        create_model("resnet57")
    with pytest.raises(ConfigError, match="resnet20"):
        create_model("resnet20", depth=3)
    assert {"resnet20", "resnet56", "resnet110"} <= set(list_models())


def test_a_model_without_residual_blocks_has_none() -> None:
    model = torch.nn.Sequential(torch.nn.Conv2d(1, 4, 3, padding=1), torch.nn.ReLU())
    assert discover_blocks(model, torch.randn(1, 1, 8, 8)) == []


def test_measurements_give_back_every_module_its_own_mode() -> None:
    """A user's frozen batch norm stays in eval mode inside a model in train mode."""
    from compressor.models.blocks import output_shape
    from compressor.prune.shrink import count_macs_params, find_classifier

    model = create_model("resnet8", num_classes=10, in_channels=1).train()
    model.layer1[0].bn1.eval()
    example = torch.randn(1, 1, 8, 8)
    for measure in (discover_blocks, model_macs, output_shape, find_classifier, count_macs_params):
        measure(model, example)
        assert model.training and not model.layer1[0].bn1.training, measure.__name__
