"""Real torchvision and timm models through the whole pipeline (the `torchvision` marker).

These run in the second venv of `.ci/run` (torch 2.14.1 + torchvision 0.29.1 + timm), since
torchvision does not import beside the CPU torch 2.13.0; elsewhere they skip with the reason.
The models are the libraries' own classes, built by the factory path a recipe names, on the
bundled digits made 3-channel (`data.channels: 3`) at 32 px, with random initial weights.
"""

from __future__ import annotations

import importlib
import json
from pathlib import Path

import onnx
import pytest

from compressor.cli import main
from tests.compressor.test_pipeline_cli import write_recipe

pytestmark = pytest.mark.torchvision


def _require(name: str) -> None:
    try:
        importlib.import_module(name)
    except (ImportError, RuntimeError) as exc:  # RuntimeError: a build for another torch
        pytest.skip(
            f"{name} cannot be imported here ({type(exc).__name__}); .ci/run tests it in "
            ".venv-tv (bash install.sh --venv .venv-tv --test --torchvision)"
        )


MODELS = {
    "torchvision-resnet18": {"factory": "torchvision.models:resnet18"},
    "torchvision-mobilenet_v2": {"factory": "torchvision.models:mobilenet_v2"},
    "timm-resnet18": {"factory": "timm:create_model", "kwargs": {"model_name": "resnet18"}},
    "timm-convnext_atto": {
        "factory": "timm:create_model",
        "kwargs": {"model_name": "convnext_atto"},
    },
}


def _recipe(tmp_path: Path, model: dict, **changes: object) -> Path:
    base = {
        "name": "real",
        "model": model,
        "data": {"name": "digits", "image_size": 32, "channels": 3},
        "prune": {"criterion": "snip", "fraction": 0.25},
        "shrink": {"ratio": 0.3, "round_to": 8, "fine_tune_epochs": 1},
    }
    return write_recipe(tmp_path, {**base, **changes}, blocks=1, epochs=3)


@pytest.mark.slow
@pytest.mark.parametrize("name", list(MODELS))
def test_blocks_prune_train_shrink_export_bench(
    name: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    _require(MODELS[name]["factory"].split(".")[0].split(":")[0])
    recipe = _recipe(tmp_path, MODELS[name])
    assert main(["blocks", str(recipe)]) == 0
    listing = capsys.readouterr().out
    assert "removable" in listing.splitlines()[-1]

    out = tmp_path / "run"
    code = main(["run", str(recipe), "--out", str(out)])
    report = json.loads((out / "report.json").read_text())
    dense, ticket, shrunk = report["variants"]
    # Everything is written whatever the accuracy check says.
    for variant in report["variants"]:
        assert Path(variant["onnx"]).is_file()
        onnx.checker.check_model(variant["onnx"])
        assert variant["parity_top1_agreement"] >= 0.99
        assert {r["batch"] for r in variant["latency"] if r["backend"] == "onnxruntime"} == {1}
        assert all(r["p50_ms"] > 0 for r in variant["latency"])
    assert ticket["removed_blocks"], "a quarter of the removable blocks must go"
    assert shrunk["params"] < ticket["params"] < dense["params"]
    # A variant at chance (0.1 on the digits) is never presented as a plain result: either
    # every variant learned, or the collapse is flagged and the exit code says so.
    collapsed = [v["name"] for v in report["variants"] if v["accuracy"] < 0.5]
    flagged = [v["name"] for v in report["variants"] if v.get("comparable") is False]
    if code == 0:
        assert not collapsed and not flagged
    else:
        assert code == 3 and flagged
        assert set(collapsed) <= set(flagged) | {"dense"}


@pytest.mark.slow
def test_resnet50_blocks_and_prune(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    _require("torchvision")
    recipe = _recipe(tmp_path, {"factory": "torchvision.models:resnet50"})
    assert main(["blocks", str(recipe)]) == 0
    lines = capsys.readouterr().out.splitlines()
    # Bottlenecks 3 + 4 + 6 + 3; the first of each stage changes shape, so 12 can go.
    assert lines[-1].endswith("12 of 16 residual blocks are removable")
    out = tmp_path / "ticket"
    assert main(["prune", str(recipe), "--out", str(out)]) == 0
    prune = json.loads((out / "prune.json").read_text())
    assert len(prune["removed"]) == 3  # 25% of 12
    spec = json.loads((out / "spec.json").read_text())
    assert sorted(spec["spec"]["removed_blocks"]) == sorted(prune["removed"])


@pytest.mark.parametrize("name", list(MODELS))
def test_real_blocks_are_cut_out_of_their_onnx_and_profiled(name: str, tmp_path: Path) -> None:
    """blocks.json for torchvision and timm models: every removable block is one subgraph
    of the export, the skeleton cut from the ONNX computes what torch computes with all of
    them removed, and `deploy profile-blocks` makes a table whose parts add up."""
    _require(MODELS[name]["factory"].split(".")[0].split(":")[0])
    import copy

    import numpy as np
    import onnx
    import onnxruntime as ort
    import torch

    from compressor.models.blocks import discover_blocks
    from compressor.models.spec import remove_blocks_
    from compressor.prune.latency import export_with_blocks
    from deploy.cli import main as deploy_main
    from deploy.profiling.blocks_file import read_blocks
    from deploy.profiling.subgraphs import without_blocks
    from deploy.profiling.table import read_table

    entry = MODELS[name]
    module, function = entry["factory"].split(":")
    build = getattr(importlib.import_module(module), function)
    torch.manual_seed(0)
    model = build(**entry.get("kwargs", {}), num_classes=10).eval()
    example = torch.randn(2, 3, 64, 64)
    blocks = [b for b in discover_blocks(model, example[:1]) if b.removable]
    assert blocks
    path = tmp_path / "model.onnx"
    described = export_with_blocks(model, example, path, blocks)
    assert [b.name for b in read_blocks(tmp_path / "blocks.json").blocks] == [
        b.name for b in blocks
    ]
    skeleton = without_blocks(onnx.load(str(path)), [(b.input, b.output) for b in described.blocks])
    shallower = copy.deepcopy(model)
    remove_blocks_(shallower, [b.name for b in blocks])
    session = ort.InferenceSession(skeleton.SerializeToString())
    got = session.run(None, {session.get_inputs()[0].name: example.numpy()})[0]
    with torch.no_grad():
        want = shallower(example).numpy()
    np.testing.assert_allclose(got, want, rtol=1e-3, atol=1e-3)
    out = tmp_path / "table.json"
    args = ["--iterations", "6", "--warmup", "1", "--repeats", "1", "--output", str(out)]
    assert deploy_main(["profile-blocks", str(path), *args]) == 0
    table = read_table(out).batch(1)
    assert set(table.blocks) == {b.name for b in blocks}
    assert 0 < table.skeleton_ms < table.network_ms
