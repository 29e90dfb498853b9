"""The parity tolerance scales with the logits: parity_atol + parity_rtol * max |torch output|.

Float rounding grows with the size of the values a network sums; a fixed absolute bound that
suits logits near 1 fails a real network whose logits reach tens (a torchvision ResNet-18
trained briefly: 2.75e-4 against 1e-4). A fault still fails: it moves logits by their own size.
"""

from __future__ import annotations

import copy
from pathlib import Path

import onnx
import pytest
import torch

from compressor.errors import ConfigError
from compressor.recipe.sections import recipe_from_dict
from export import ExportConfig, ExportConfigError, ParityError, check_parity, export_onnx
from export.config import PARITY_RTOL
from tests.export.tiny_models import Exported, make_tiny_resnet


def _shifted(exported: Exported, by: float) -> torch.nn.Module:
    """The exported model with every logit moved by `by`: a known |onnxruntime - torch|."""
    model = copy.deepcopy(exported.model)
    with torch.no_grad():
        model.fc.bias += by
    return model


def test_default_rtol_and_its_validation_names_the_field():
    assert ExportConfig().parity_rtol == PARITY_RTOL > 0
    for bad in (-1e-6, float("nan"), float("inf"), True, "1e-4"):
        with pytest.raises(ExportConfigError, match="ExportConfig.parity_rtol"):
            ExportConfig(parity_rtol=bad)
    config = ExportConfig(parity_rtol=1e-3)
    assert ExportConfig.from_dict(config.to_dict()) == config


def test_tolerance_is_atol_plus_rtol_times_the_largest_logit(exported: Exported):
    inputs = exported.parity_inputs[:50]
    parity = check_parity(exported.model, exported.result.path, inputs, ExportConfig())
    scale = parity.max_abs_output
    assert scale > 0
    assert parity.tolerance == pytest.approx(1e-4 + PARITY_RTOL * scale)
    gap = 1e-4 + 0.5 * 1e-2 * scale  # above parity_atol, inside atol + 1e-2 * scale
    shifted = _shifted(exported, gap)
    passed = check_parity(shifted, exported.result.path, inputs, ExportConfig(parity_rtol=1e-2))
    assert passed.max_abs_diff == pytest.approx(gap, rel=1e-2)
    assert passed.top1_agreement == 1.0  # a shift of every logit keeps the argmax
    with pytest.raises(ParityError) as caught:
        check_parity(shifted, exported.result.path, inputs, ExportConfig(parity_rtol=0.0))
    message = str(caught.value)
    assert f"= {passed.max_abs_diff:.3g}, allowed 0.0001" in message  # measured and allowed
    assert "parity_atol=0.0001 + parity_rtol=0 x max |torch output|" in message
    assert "export.parity_rtol" in message and "\n" not in message


def test_a_real_fault_fails_whatever_the_default_tolerance(exported: Exported):
    broken = copy.deepcopy(exported.model)
    with torch.no_grad():
        broken.fc.weight.mul_(-1.0)  # the head inverted: logits move by their own size
    with pytest.raises(ParityError, match="allowed"):
        check_parity(broken, exported.result.path, exported.parity_inputs, ExportConfig())


def test_large_logits_pass_by_rtol_where_the_fixed_atol_fails(tmp_path: Path):
    """A real export whose logits reach ~1e5: float32 rounding alone exceeds 1e-4 there."""
    model = make_tiny_resnet()
    with torch.no_grad():
        model.fc.weight.mul_(1e5)
    inputs = torch.randn(32, 1, 16, 16, generator=torch.Generator().manual_seed(3))
    result = export_onnx(model, inputs[:1], tmp_path / "big.onnx", parity_inputs=inputs)
    assert result.parity_max_abs_diff > 1e-4  # what failed before parity_rtol existed
    assert result.parity_max_abs_diff <= result.parity_tolerance
    props = {p.key: p.value for p in onnx.load(result.path).metadata_props}
    assert props["export.parity_rtol"] == f"{PARITY_RTOL:g}"
    assert float(props["export.parity_tolerance"]) == pytest.approx(result.parity_tolerance)
    with pytest.raises(ParityError, match="parity_rtol=0 "):
        check_parity(model, result.path, inputs, ExportConfig(parity_rtol=0.0))


def test_recipe_key_export_parity_rtol_reaches_the_export_config():
    recipe = recipe_from_dict({"export": {"parity_rtol": 1e-3, "parity_atol": 1e-5}})
    config = recipe.export.export_config()
    assert (config.parity_rtol, config.parity_atol) == (1e-3, 1e-5)
    assert recipe.to_dict()["export"]["parity_rtol"] == 1e-3
    with pytest.raises(ConfigError, match=r"^export.parity_rtol: must be a finite number >= 0"):
        recipe_from_dict({"export": {"parity_rtol": -1}})
