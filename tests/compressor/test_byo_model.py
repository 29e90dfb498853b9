"""`compressor run` end to end on a model named by an import path (not a zoo model)."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import onnx
import pytest

from compressor.cli import main
from tests.compressor.test_pipeline_cli import write_recipe

# A user's model file, written by the test: the project never saw it. Stages of residual
# blocks in an nn.Sequential, GELU, a depthwise conv, a head called `logits`.
USER_MODEL = """
import torch
from torch import nn


class Block(nn.Module):
    def __init__(self, c):
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv2d(c, c, 3, padding=1, groups=c, bias=False), nn.BatchNorm2d(c), nn.GELU(),
            nn.Conv2d(c, c, 1, bias=False), nn.BatchNorm2d(c),
        )

    def forward(self, x):
        return torch.relu(self.body(x) + x)


def make_net(classes, channels=3, width=8, depth=2):
    layers = [nn.Conv2d(channels, width, 3, padding=1), nn.ReLU()]
    layers += [Block(width) for _ in range(depth)]
    layers += [nn.Conv2d(width, 2 * width, 3, 2, 1), nn.ReLU()]
    layers += [Block(2 * width) for _ in range(depth)]
    net = nn.Sequential(*layers, nn.AdaptiveAvgPool2d(1), nn.Flatten())
    net.add_module("logits", nn.Linear(2 * width, classes))
    return net


class DictOut(nn.Module):
    def __init__(self, net):
        super().__init__()
        self.net = net

    def forward(self, x):
        return {"logits": self.net(x)}


def dict_net(classes):
    return DictOut(make_net(classes, channels=1))
"""


def recipe(tmp_path: Path, model: dict) -> Path:
    # Three epochs leave the variants far apart; this test is about the model, not accuracy
    # (tests/compressor/test_accuracy_check.py holds variants to dense's accuracy).
    changes = {"name": "byo", "model": model, "report": {"max_accuracy_drop": 100}}
    return write_recipe(tmp_path, changes, blocks=2, epochs=3)


@pytest.mark.slow
def test_run_prunes_trains_shrinks_exports_and_benchmarks_a_user_model(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (tmp_path / "user_net.py").write_text(USER_MODEL)
    factory = {
        "factory": f"{tmp_path / 'user_net.py'}:make_net",
        "kwargs": {"classes": 10, "channels": 1, "width": 8, "depth": 2},
    }
    out = tmp_path / "run"
    assert main(["run", str(recipe(tmp_path, factory)), "--out", str(out)]) == 0
    report = json.loads((out / "report.json").read_text())
    dense, ticket, shrunk = report["variants"]
    assert len(ticket["removed_blocks"]) == 2
    assert all(v["accuracy"] > 0.2 for v in report["variants"])  # chance is 0.1
    assert shrunk["params"] < ticket["params"] < dense["params"]
    assert all(r["p50_ms"] > 0 for v in report["variants"] for r in v["latency"])
    ops = {
        v["name"]: Counter(n.op_type for n in onnx.load(v["onnx"]).graph.node)
        for v in (dense, ticket)
    }
    # Each removed block is two convs, a GELU (exported as Erf plus an Add) and the
    # residual Add: all gone from the graph.
    assert ops["dense"]["Conv"] - ops["ticket"]["Conv"] == 2 * 2
    assert ops["dense"]["Erf"] - ops["ticket"]["Erf"] == 2
    assert ops["dense"]["Add"] - ops["ticket"]["Add"] == 2 * 2
    spec = json.loads((out / "shrunk" / "model" / "spec.json").read_text())["spec"]
    assert spec["factory"].endswith("user_net.py:make_net")
    assert spec["kwargs"] == factory["kwargs"]
    assert "run" in capsys.readouterr().out
    header = (out / "report.md").read_text().splitlines()[2]  # was "Model `None` on ..."
    assert header.startswith(f"Model `{factory['factory']}` on `digits`"), header


@pytest.mark.parametrize(
    "model,message",
    [
        ({"factory": "nowhere/net.py:make"}, "model.factory: file not found: nowhere/net.py"),
        ({"factory": "no_such_pkg_q:make"}, "cannot import module 'no_such_pkg_q'"),
        ({"factory": "USER:missing"}, "has no attribute 'missing'"),
        (
            {"factory": "USER:make_net", "kwargs": {"classes": 10, "size": 3}},
            "model.kwargs: cannot call",
        ),
        (
            {"factory": "USER:make_net", "kwargs": {"classes": 7, "channels": 1}},
            "outputs shape (1, 7)",
        ),
        ({"factory": "USER:make_net", "width": 2}, "model.width: only for zoo models"),
        ({"factory": "USER:dict_net", "kwargs": {"classes": 10}}, "returns a dict, not a logits"),
    ],
)
def test_bad_factories_are_one_line_errors(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], model: dict, message: str
) -> None:
    (tmp_path / "user_net.py").write_text(USER_MODEL)
    model = {
        k: v.replace("USER", str(tmp_path / "user_net.py")) if isinstance(v, str) else v
        for k, v in model.items()
    }
    code = main(["prune", str(recipe(tmp_path, model)), "--out", str(tmp_path / "p")])
    err = capsys.readouterr().err.strip().splitlines()
    assert code in (1, 2) and len(err) == 1 and message in err[0], err
    assert not (tmp_path / "p").exists()


def test_a_pattern_matching_nothing_and_a_model_without_blocks(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (tmp_path / "user_net.py").write_text(
        USER_MODEL + "\ndef plain(num_classes):\n"
        "    return nn.Sequential(nn.Conv2d(1, 4, 3), nn.ReLU(),"
        " nn.AdaptiveAvgPool2d(1), nn.Flatten(),"
        " nn.Linear(4, num_classes))\n"
    )
    path = recipe(tmp_path, {"factory": f"{tmp_path / 'user_net.py'}:plain"})
    assert main(["prune", str(path), "--out", str(tmp_path / "p")]) == 1
    assert "has no residual block" in capsys.readouterr().err
    data = json.loads(path.read_text())
    data["model"] = {
        "factory": f"{tmp_path / 'user_net.py'}:make_net",
        "kwargs": {"classes": 10, "channels": 1},
    }
    data["prune"]["include"] = ["blocks.*"]
    path.write_text(json.dumps(data))
    assert main(["prune", str(path), "--out", str(tmp_path / "p")]) == 2
    err = capsys.readouterr().err
    assert "prune.include: pattern 'blocks.*' matches no residual block (blocks: 2, 3, 6, 7)" in err
