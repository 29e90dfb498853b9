"""Export is tried on the untrained model first: an export fault costs seconds, not the run."""

from __future__ import annotations

import tempfile
import time
from pathlib import Path

import pytest
import torch

from compressor.cli import main
from compressor.data.config import DataConfig
from compressor.data.splits import load_data
from compressor.models.spec import ModelSpec, build_model
from compressor.recipe.sections import ExportSection
from compressor.workflows.export_probe import probe_export
from tests.compressor.test_pipeline_cli import write_recipe

SPEC = ModelSpec(model="resnet8", kwargs={"num_classes": 10, "in_channels": 1, "width": 0.5})

# A model that computes something else while being exported: its ONNX file would fail the
# parity check after all the training; the probe catches it before the first epoch.
SNEAKY = """
import torch
from torch import nn


class Sneaky(nn.Module):
    def __init__(self, num_classes):
        super().__init__()
        self.conv = nn.Conv2d(1, 8, 3, padding=1)
        self.head = nn.Linear(8, num_classes)

    def forward(self, x):
        logits = self.head(torch.relu(self.conv(x)).mean(dim=(2, 3)))
        if torch.compiler.is_exporting():
            logits = logits + 0.5
        return logits


def build(num_classes=10):
    return Sneaky(num_classes)
"""


@pytest.fixture
def system_tmp(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """The system temporary directory, redirected so the test sees what is left in it."""
    folder = tmp_path / "system-tmp"
    folder.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(folder))
    return folder


def test_probe_leaves_no_file_and_the_model_and_rng_as_they_were(system_tmp: Path):
    data = load_data(DataConfig(image_size=8, limit_train=64))
    torch.manual_seed(0)
    model = build_model(SPEC).train()
    weights = {k: v.clone() for k, v in model.state_dict().items()}
    rng = torch.get_rng_state()
    lines: list[str] = []
    seconds = probe_export(model, data, ExportSection(), "untrained dense", lines.append)
    assert seconds > 0 and not list(system_tmp.glob("compressor-export-probe-*"))
    assert model.training and torch.equal(torch.get_rng_state(), rng)
    assert all(torch.equal(weights[k], v) for k, v in model.state_dict().items())
    assert len(lines) == 1 and "untrained dense model exports to ONNX" in lines[0]
    assert "parity" in lines[0] and "allowed" in lines[0]


def test_run_stops_before_training_on_an_export_fault(
    tmp_path: Path, system_tmp: Path, capsys: pytest.CaptureFixture[str]
):
    model_file = tmp_path / "sneaky.py"
    model_file.write_text(SNEAKY)
    recipe = write_recipe(
        tmp_path, {"name": "sneaky", "model": {"factory": f"{model_file}:build"}}, blocks=1
    )
    out = tmp_path / "run"
    started = time.perf_counter()
    assert main(["run", str(recipe), "--out", str(out)]) == 1
    seconds = time.perf_counter() - started
    error = capsys.readouterr().err.strip().splitlines()[-1]
    assert error.startswith("compressor: error: export check of the untrained dense model ")
    assert "nothing was trained" in error and "parity check failed" in error
    assert "export.parity_rtol" in error
    assert not (out / "dense").exists() and not list(out.rglob("*.onnx"))  # run dir: clean
    kept = list(system_tmp.rglob("*.onnx"))  # the failing graph, kept where the message says
    assert len(kept) == 1 and str(kept[0]) in error
    assert seconds < 60  # an export and 8 images, not an epoch
