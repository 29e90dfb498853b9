"""Layer pruning at init: amounts, physical removal, kept weights equal theta_0."""

from __future__ import annotations

import copy

import pytest
import torch

from compressor.errors import ConfigError, UnsupportedModelError
from compressor.models.blocks import discover_blocks
from compressor.models.spec import ModelSpec, build_model
from compressor.prune.layers import LayerPruneConfig, prune_at_init

SPEC = ModelSpec(model="resnet20", kwargs={"num_classes": 5, "in_channels": 1})


@pytest.fixture()
def dense_and_data():  # noqa: ANN201
    torch.manual_seed(0)
    images = torch.randn(50, 1, 12, 12)
    labels = torch.arange(50) % 5
    return build_model(SPEC), images, labels


@pytest.mark.parametrize("criterion", ["snip", "grasp", "synflow", "random"])
def test_ticket_is_physically_shallower_and_keeps_theta0(dense_and_data, criterion) -> None:  # noqa: ANN001
    dense, images, labels = dense_and_data
    theta0 = {k: v.clone() for k, v in dense.state_dict().items()}
    ticket, result = prune_at_init(
        dense, SPEC, images, labels, LayerPruneConfig(criterion=criterion, blocks=3)
    )
    assert len(result.removed) == 3
    assert len(discover_blocks(ticket, images)) == 9 - 3
    # The dense model is untouched and every kept weight is theta_0's value: the ticket's
    # blocks are the dense blocks minus the removed ones, in order.
    assert all(torch.equal(theta0[k], v) for k, v in dense.state_dict().items())
    remaining = [b.name for b in discover_blocks(dense, images) if b.name not in result.removed]
    ticket_blocks = [b.name for b in discover_blocks(ticket, images)]
    ticket_state = ticket.state_dict()
    for old, new in zip(remaining, ticket_blocks, strict=True):
        for suffix in ("conv1.weight", "conv2.weight", "bn1.weight", "bn2.running_var"):
            assert torch.equal(theta0[f"{old}.{suffix}"], ticket_state[f"{new}.{suffix}"])
    for key in ("stem.0.weight", "fc.weight", "fc.bias"):
        assert torch.equal(theta0[key], ticket_state[key])
    # Rebuilt from its spec (no masks), the ticket computes the same function.
    rebuilt = build_model(result.spec)
    rebuilt.load_state_dict(ticket_state)
    ticket.eval()
    rebuilt.eval()
    assert ticket(images[:4]).shape == (4, 5)
    assert torch.equal(ticket(images[:4]), rebuilt(images[:4]))
    assert not any(isinstance(m, torch.nn.Identity) for m in ticket.modules())
    assert result.macs_after < result.macs_before


def test_same_seed_same_selection(dense_and_data) -> None:  # noqa: ANN001
    dense, images, labels = dense_and_data
    config = LayerPruneConfig(criterion="grasp", fraction=0.5, seed=7)
    first = prune_at_init(dense, SPEC, images, labels, config)[1].removed
    second = prune_at_init(dense, SPEC, images, labels, config)[1].removed
    assert first == second and len(first) == round(0.5 * 7)


def test_macs_target_is_met(dense_and_data) -> None:  # noqa: ANN001
    dense, images, labels = dense_and_data
    _, result = prune_at_init(dense, SPEC, images, labels, LayerPruneConfig(macs_target=0.6))
    assert result.macs_after <= 0.6 * result.macs_before
    with pytest.raises(UnsupportedModelError, match="macs_target"):
        prune_at_init(dense, SPEC, images, labels, LayerPruneConfig(macs_target=0.05))


def test_too_many_blocks_names_the_counts(dense_and_data) -> None:  # noqa: ANN001
    dense, images, labels = dense_and_data
    with pytest.raises(UnsupportedModelError) as err:
        prune_at_init(dense, SPEC, images, labels, LayerPruneConfig(blocks=8))
    message = str(err.value)
    assert "remove 8 blocks: resnet20 has only 7 removable blocks" in message
    assert "layer1: 3, layer2: 2, layer3: 2" in message


@pytest.mark.parametrize(
    "kwargs,field",
    [
        ({"blocks": 2, "fraction": 0.5}, "exactly one"),
        ({}, "exactly one"),
        ({"fraction": 1.5}, "prune.fraction"),
        ({"blocks": -1}, "prune.blocks"),
        ({"blocks": 1, "criterion": "magnitude"}, "unknown criterion 'magnitude'"),
        ({"blocks": 1, "aggregation": "max"}, "prune.aggregation"),
    ],
)
def test_bad_prune_config_names_the_field(kwargs: dict, field: str) -> None:
    with pytest.raises(ConfigError, match=field):
        LayerPruneConfig(**kwargs)


def test_after_training_the_trained_weights_choose_and_the_rewind_weights_stay(
    dense_and_data,
) -> None:  # noqa: ANN001
    """Algorithm 1: blocks chosen on the trained network, kept weights equal the rewind
    checkpoint (here theta_0), the trained network untouched."""
    from compressor.models.spec import remove_blocks_
    from compressor.prune.layers import prune_after_training

    dense, images, labels = dense_and_data
    theta0 = {k: v.clone() for k, v in dense.state_dict().items()}
    trained = copy.deepcopy(dense)
    with torch.no_grad():
        for p in trained.parameters():
            p.add_(0.05 * torch.randn_like(p))
        trained.layer2[2].bn2.weight.zero_()  # a block whose trained branch is dead
        trained.layer2[2].bn2.bias.zero_()
    trained_state = {k: v.clone() for k, v in trained.state_dict().items()}
    config = LayerPruneConfig(criterion="kl", blocks=1)
    ticket, result = prune_after_training(trained, theta0, SPEC, images, labels, config)
    assert result.removed == ("layer2.2",)
    expected = copy.deepcopy(dense)
    remove_blocks_(expected, list(result.removed))
    assert ticket.state_dict().keys() == expected.state_dict().keys()
    assert all(torch.equal(v, expected.state_dict()[k]) for k, v in ticket.state_dict().items())
    assert all(torch.equal(v, trained_state[k]) for k, v in trained.state_dict().items())
    with pytest.raises(UnsupportedModelError, match="rewind weights do not fit resnet20"):
        prune_after_training(
            trained, {"fc.weight": theta0["fc.weight"]}, SPEC, images, labels, config
        )
