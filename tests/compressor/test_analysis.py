"""Linear CKA, stage CKA and linear mode connectivity: the properties the theory promises."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from compressor.errors import ConfigError
from compressor.models.spec import remove_blocks_
from compressor.models.zoo import create_model
from compressor.workflows.lottery.analysis import (
    error_barrier,
    interpolate_state,
    linear_cka,
    recompute_bn_stats,
    stage_cka,
)


def _gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _model(name: str = "resnet8", seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return create_model(name, num_classes=10, in_channels=1, width=0.5)


def _snapshot(model: nn.Module) -> dict[str, torch.Tensor]:
    return {key: value.clone() for key, value in model.state_dict().items()}


def _same_state(model: nn.Module, snapshot: dict[str, torch.Tensor]) -> bool:
    state = model.state_dict()
    return state.keys() == snapshot.keys() and all(
        torch.equal(state[key], value) for key, value in snapshot.items()
    )


# --- linear_cka ---------------------------------------------------------------------------


def test_cka_of_a_representation_with_itself_is_one() -> None:
    x = torch.randn(40, 7, generator=_gen())
    assert linear_cka(x, x) == pytest.approx(1.0, abs=1e-9)
    maps = torch.randn(12, 3, 4, 4, generator=_gen(1))  # flattened per example; n << p
    assert linear_cka(maps, maps) == pytest.approx(1.0, abs=1e-9)


def test_cka_is_invariant_to_rotation_scaling_and_shift() -> None:
    x, y = torch.randn(60, 6, generator=_gen()), torch.randn(60, 4, generator=_gen(1))
    y = y + 0.5 * x[:, :4]  # related, so the reference value is well inside (0, 1)
    q, _ = torch.linalg.qr(torch.randn(6, 6, generator=_gen(2), dtype=torch.float64))
    x64 = x.double()
    reference = linear_cka(x, y)
    assert 0.1 < reference < 0.9
    assert linear_cka(x64 @ q, y) == pytest.approx(reference, abs=1e-9)
    assert linear_cka(x64 @ q, x) == pytest.approx(1.0, abs=1e-9)
    assert linear_cka(3.7 * x, 0.01 * y) == pytest.approx(reference, abs=1e-9)
    assert linear_cka(x + 100.0, y) == pytest.approx(reference, abs=1e-6)


def test_gram_and_feature_space_forms_agree() -> None:
    """20 examples of 3 features use the feature-space form; zero-padding to 40 features
    (which leaves CKA unchanged) switches to the n x n Gram form."""
    x = torch.randn(20, 3, generator=_gen(), dtype=torch.float64)
    y = torch.randn(20, 3, generator=_gen(1), dtype=torch.float64) + x
    pad = torch.zeros(20, 37, dtype=torch.float64)
    small = linear_cka(x, y)
    assert linear_cka(torch.cat([x, pad], 1), torch.cat([y, pad], 1)) == pytest.approx(
        small, abs=1e-12
    )


def test_cka_is_not_invariant_to_a_general_invertible_map() -> None:
    x = torch.randn(200, 5, generator=_gen(), dtype=torch.float64)
    stretch = torch.diag(torch.tensor([1.0, 1.0, 1.0, 1.0, 10.0], dtype=torch.float64))
    assert torch.linalg.matrix_rank(stretch) == 5
    assert linear_cka(x, x @ stretch) < 0.7  # about 0.47: one feature dominates


def test_cka_is_symmetric_and_in_the_unit_interval() -> None:
    for seed in range(5):
        x = torch.randn(30, 8, generator=_gen(seed))
        y = torch.randn(30, 3, generator=_gen(seed + 10)) + x[:, :3] * seed / 4
        value = linear_cka(x, y)
        assert 0.0 <= value <= 1.0
        assert linear_cka(y, x) == pytest.approx(value, abs=1e-12)


def test_cka_of_independent_features_is_near_zero_when_n_is_large() -> None:
    x, y = torch.randn(500, 5, generator=_gen()), torch.randn(500, 5, generator=_gen(1))
    assert linear_cka(x, y) < 0.2  # about q/n = 0.01 in expectation


@pytest.mark.parametrize(
    "x, y, message",
    [
        (torch.randn(1, 4), torch.randn(1, 4), "at least 2 examples"),
        (torch.randn(5, 4), torch.randn(6, 4), "same examples"),
        (torch.full((5, 4), 3.0), torch.randn(5, 4), "same for every example"),
        (torch.randn(5, 4), torch.tensor([[float("nan")]] * 5), "NaN"),
    ],
)
def test_cka_rejects_undefined_inputs(x: torch.Tensor, y: torch.Tensor, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        linear_cka(x, y)


# --- stage_cka ----------------------------------------------------------------------------


def test_stage_cka_of_a_model_with_itself_is_one_and_changes_nothing() -> None:
    model = _model()
    model.train()
    model.layer2.eval()  # a mixed mode must come back as it was
    before = _snapshot(model)
    images = torch.randn(16, 1, 8, 8, generator=_gen())
    result = stage_cka(model, model, images, batch_size=5)
    assert list(result) == ["layer1", "layer2", "layer3"]
    assert all(value == pytest.approx(1.0, abs=1e-9) for value in result.values())
    assert _same_state(model, before)
    assert model.training and model.layer1.training and not model.layer2.training


def test_stage_cka_dense_vs_a_ticket_with_a_block_removed() -> None:
    dense = _model("resnet14")
    ticket = copy.deepcopy(dense)
    remove_blocks_(ticket, ["layer1.0"])
    dense_before, ticket_before = _snapshot(dense), _snapshot(ticket)
    images = torch.randn(24, 1, 8, 8, generator=_gen())
    result = stage_cka(dense, ticket, images)
    assert list(result) == ["layer1", "layer2", "layer3"]
    assert all(0.0 <= value <= 1.0 for value in result.values())
    assert result["layer1"] < 1.0 - 1e-6  # the stage that lost a block computes otherwise
    assert _same_state(dense, dense_before) and _same_state(ticket, ticket_before)
    assert dense.training and ticket.training


def test_stage_cka_still_compares_a_stage_that_lost_all_its_blocks() -> None:
    dense = _model("resnet8")
    ticket = copy.deepcopy(dense)
    remove_blocks_(ticket, ["layer1.0"])  # layer1 is now an empty Sequential: the identity
    result = stage_cka(dense, ticket, torch.randn(12, 1, 8, 8, generator=_gen()))
    assert list(result) == ["layer1", "layer2", "layer3"]


def test_stage_cka_rejects_a_single_image() -> None:
    model = _model()
    with pytest.raises(ConfigError, match="at least 2"):
        stage_cka(model, model, torch.randn(1, 1, 8, 8))


# --- interpolate_state --------------------------------------------------------------------


def _two_states() -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    state_a, state_b = _model(seed=0).state_dict(), _model(seed=1).state_dict()
    state_a["stem.1.num_batches_tracked"].fill_(3)
    state_b["stem.1.num_batches_tracked"].fill_(7)
    state_b["stem.1.running_mean"].add_(1.0)  # buffers differ too
    return state_a, state_b


def test_interpolation_end_points_midpoint_and_integer_buffers() -> None:
    state_a, state_b = _two_states()
    start, end, middle = (interpolate_state(state_a, state_b, a) for a in (0, 1.0, 0.5))
    for key, a in state_a.items():
        b = state_b[key]
        if a.is_floating_point():
            assert torch.equal(start[key], a) and torch.equal(end[key], b), key
            assert torch.allclose(middle[key], (a + b) / 2, atol=1e-6), key
        else:  # num_batches_tracked: from a, whatever alpha
            assert torch.equal(start[key], a) and torch.equal(end[key], a), key
    assert end["stem.1.num_batches_tracked"].item() == 3
    start["fc.weight"].add_(1.0)  # the result owns its tensors
    assert not torch.equal(start["fc.weight"], state_a["fc.weight"])


def test_interpolation_rejects_different_architectures() -> None:
    state_a, state_b = _two_states()
    del state_b["fc.bias"]
    with pytest.raises(ConfigError, match="fc.bias"):
        interpolate_state(state_a, state_b, 0.5)
    wider = create_model("resnet8", num_classes=10, in_channels=1, width=1.0).state_dict()
    with pytest.raises(ConfigError, match="'stem.0.weight' has shape"):
        interpolate_state(state_a, wider, 0.5)
    with pytest.raises(ConfigError, match="alpha"):
        interpolate_state(state_a, state_a, 1.5)


# --- error_barrier ------------------------------------------------------------------------


def _accuracy_on(images: torch.Tensor, labels: torch.Tensor):  # noqa: ANN202
    def evaluate(model: nn.Module) -> float:
        model.eval()
        with torch.no_grad():
            return (model(images).argmax(1) == labels).float().mean().item()

    return evaluate


def test_identical_models_have_no_barrier_and_a_flat_curve() -> None:
    model_a = _model()
    model_b = copy.deepcopy(model_a)
    before = _snapshot(model_a)
    images = torch.randn(32, 1, 8, 8, generator=_gen())
    labels = torch.randint(0, 10, (32,), generator=_gen(1))
    result = error_barrier(model_a, model_b, _accuracy_on(images, labels))
    assert len(result["alphas"]) == 11 and result["alphas"][0] == 0 and result["alphas"][-1] == 1
    assert len(set(result["errors"])) == 1
    assert abs(result["barrier"]) < 1e-12 and abs(result["barrier_mean"]) < 1e-12
    assert _same_state(model_a, before) and model_a.training


def _flat(state: dict[str, torch.Tensor]) -> torch.Tensor:
    return torch.cat([v.double().flatten() for v in state.values() if v.is_floating_point()])


def test_barrier_formula_on_a_known_curve() -> None:
    """error(alpha) = 0.1 + 0.4 alpha + 0.3 * 4 alpha (1 - alpha), alpha read back from the
    parameters: the rise over the straight line peaks at 0.3 (alpha 0.5); the highest
    error is 0.632 (alpha 0.7), 0.332 above the end points' mean 0.3."""
    model_a, model_b = _model(seed=0), _model(seed=1)
    theta_a, theta_b = _flat(model_a.state_dict()), _flat(model_b.state_dict())
    direction = theta_b - theta_a

    def evaluate(model: nn.Module) -> float:
        alpha = float((_flat(model.state_dict()) - theta_a) @ direction / (direction @ direction))
        return 1.0 - (0.1 + 0.4 * alpha + 1.2 * alpha * (1 - alpha))

    result = error_barrier(model_a, model_b, evaluate)
    assert result["barrier"] == pytest.approx(0.3, abs=1e-5)
    assert result["barrier_alpha"] == 0.5
    assert result["barrier_mean"] == pytest.approx(0.332, abs=1e-5)
    assert result["excess"][0] == 0 and abs(result["excess"][-1]) < 1e-12
    assert result["errors"][0] == pytest.approx(0.1, abs=1e-6)


def test_error_barrier_checks_its_inputs() -> None:
    model = _model()
    with pytest.raises(ConfigError, match=r"layer1\.1\.conv1\.weight"):
        error_barrier(model, _model("resnet14"), lambda m: 1.0)
    with pytest.raises(ConfigError, match="start at 0 and end at 1"):
        error_barrier(model, model, lambda m: 1.0, alphas=[0.0, 0.5])
    with pytest.raises(ConfigError, match=r"evaluate\(model, split\)\[0\]"):
        error_barrier(model, model, lambda m: (0.5, 1.2))


def test_recompute_bn_stats_averages_the_batches_and_restores_the_model() -> None:
    norm = nn.BatchNorm1d(3, momentum=0.3)
    model = nn.Sequential(nn.Identity(), norm).eval()
    batches = [torch.randn(8, 3, generator=_gen(s)) + 5.0 for s in range(3)]
    recompute_bn_stats((batch, torch.zeros(8)) for batch in batches)(model)
    assert torch.allclose(norm.running_mean, torch.cat(batches).mean(0), atol=1e-5)
    assert norm.momentum == 0.3 and not norm.training and not model.training


def test_error_barrier_runs_the_bn_hook_on_a_copy_at_every_alpha() -> None:
    model_a, model_b = _model(seed=0), _model(seed=1)
    before = _snapshot(model_a)
    seen = []
    hook = recompute_bn_stats([torch.randn(8, 1, 8, 8, generator=_gen())])

    def recompute(model: nn.Module) -> None:
        seen.append(model)
        hook(model)

    result = error_barrier(
        model_a, model_b, lambda m: 0.5, alphas=[0, 0.5, 1], recompute_bn=recompute
    )
    assert len(seen) == 3 and all(m is not model_a and m is not model_b for m in seen)
    assert result["errors"] == [0.5, 0.5, 0.5]
    assert _same_state(model_a, before)
