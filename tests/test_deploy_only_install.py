"""The deploy-only install, for real: a fresh venv made by `install.sh --deploy-only` (the
[deploy] extra, pinned by constraints.txt, packages from the index), without torch.

There `deploy bench` measures an ONNX file and `deploy report` reports it, as on a Jetson or
server that never installs the pipeline; `compressor` says in one line which extra it needs.
About 20 s to install here (most of it onnxruntime and matplotlib), so it is a `slow` test.
"""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

REPO_ROOT = Path(__file__).resolve().parents[1]

pytestmark = pytest.mark.slow


def _tiny_classifier(path: Path) -> Path:
    """input [N, 8] -> Gemm -> Relu -> Gemm -> logits [N, 3], dynamic batch, weights fixed."""
    rng = np.random.default_rng(0)
    weights = [
        numpy_helper.from_array(rng.standard_normal(shape).astype(np.float32), name)
        for name, shape in (("w1", (8, 16)), ("b1", (16,)), ("w2", (16, 3)), ("b2", (3,)))
    ]
    graph = helper.make_graph(
        [
            helper.make_node("Gemm", ["input", "w1", "b1"], ["hidden"]),
            helper.make_node("Relu", ["hidden"], ["active"]),
            helper.make_node("Gemm", ["active", "w2", "b2"], ["logits"]),
        ],
        "tiny",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["N", 8])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", 3])],
        initializer=weights,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8  # what onnxruntime releases of the last years all read
    onnx.checker.check_model(model)
    onnx.save(model, path)
    return path


def _run(*command: str | Path, cwd: Path, timeout: int = 300) -> subprocess.CompletedProcess:
    env = {key: value for key, value in os.environ.items() if key != "PYTHONPATH"}
    return subprocess.run(
        [str(part) for part in command],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


def test_deploy_benchmarks_and_reports_in_a_venv_without_torch(tmp_path: Path) -> None:
    venv = tmp_path / "venv"
    install = REPO_ROOT / "install.sh"
    installed = _run("bash", install, "--deploy-only", "--venv", venv, cwd=tmp_path)
    assert installed.returncode == 0, installed.stderr[-3000:]
    assert "ready for deploy" in installed.stdout
    bin_dir = venv / "bin"

    no_torch = _run(bin_dir / "python", "-c", "import torch", cwd=tmp_path)
    assert no_torch.returncode != 0 and "No module named 'torch'" in no_torch.stderr
    listed = _run(bin_dir / "python", "-m", "pip", "list", "--format=json", cwd=tmp_path)
    names = {p["name"].lower() for p in json.loads(listed.stdout)}
    assert {"onnx", "onnxruntime", "numpy", "matplotlib"} <= names
    assert not names & {"torch", "torch-pruning", "onnxscript", "safetensors", "scikit-learn"}

    helped = _run(bin_dir / "deploy", "--help", cwd=tmp_path)
    assert helped.returncode == 0 and "bench" in helped.stdout

    model = _tiny_classifier(tmp_path / "tiny.onnx")
    bench = _run(
        bin_dir / "deploy", "bench", model, "--batch", "1,4", "--iterations", "5",
        "--warmup", "1", "--output", "results.json", cwd=tmp_path,
    )  # fmt: skip
    assert bench.returncode == 0, bench.stderr
    results = json.loads((tmp_path / "results.json").read_text())
    text = json.dumps(results)
    assert "onnxruntime" in text and "tiny" in text

    report = _run(bin_dir / "deploy", "report", "results.json", "--out", "report", cwd=tmp_path)
    assert report.returncode == 0, report.stderr
    markdown = (tmp_path / "report" / "report.md").read_text()
    assert "| tiny |" in markdown and "batch 4" in markdown
    assert (tmp_path / "report" / "report.html").is_file()

    recipe = REPO_ROOT / "recipes" / "quick.yaml"
    pipeline = _run(bin_dir / "compressor", "run", recipe, "--out", "run", cwd=tmp_path)
    assert pipeline.returncode == 1
    assert pipeline.stderr.count("\n") == 1, pipeline.stderr
    assert "the pipeline needs the 'torch' package" in pipeline.stderr
    assert "pip install 'layer-lottery-deploy[pipeline]'" in pipeline.stderr
