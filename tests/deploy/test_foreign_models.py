"""`deploy bench` on classification models this project did not make.

The `onnx` wheel ships "light" versions of classic ImageNet models (SqueezeNet, ShuffleNet,
ResNet-50, ...) in its backend test data: the real graphs, with weights generated in-graph.
Their input names (`data_0`, `gpu_0/data_0`), opset 9 and N x 1000 x 1 x 1 outputs are
nothing like ours, which is the point.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest

from deploy.cli import main
from deploy.evaluate import save_labelled
from deploy.onnx_info import inspect_onnx
from deploy.results.files import read_results
from deploy.runners import OnnxRuntimeRunner

LIGHT = Path(onnx.__file__).parent / "backend" / "test" / "data" / "light"
MODELS = ("squeezenet", "shufflenet", "resnet50")


@pytest.mark.parametrize("name", MODELS)
def test_bench_with_accuracy_on_a_model_we_did_not_make(
    name: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    model = LIGHT / f"light_{name}.onnx"
    if not model.is_file():
        pytest.skip(f"this onnx wheel does not ship {model.name}")
    (spec,) = inspect_onnx(model).inputs
    images = np.random.default_rng(0).random((3, *spec.shape[1:]), dtype=np.float32)
    with OnnxRuntimeRunner(model) as runner:
        logits = [
            next(iter(runner.infer({spec.name: images[i : i + 1]}).values())) for i in range(3)
        ]
    labels = np.array([int(np.argmax(out)) for out in logits])
    labels[0] = (labels[0] + 1) % 1000  # one of three wrong: accuracy 2/3
    data = save_labelled(tmp_path / "eval.npz", images, labels)
    output = tmp_path / "r.json"
    args = ["bench", str(model), "--warmup", "1", "--iterations", "3", "--threads", "1"]
    assert main([*args, "--data", str(data), "--output", str(output)]) == 0, capsys.readouterr()
    (record,) = read_results(output).records
    assert (record.model, record.backend, record.precision, record.batch) == (
        f"light_{name}",
        "onnxruntime",
        "fp32",
        1,
    )
    assert 0 < record.min_ms <= record.p50_ms <= record.max_ms
    assert record.accuracy == pytest.approx(2 / 3) and record.accuracy_samples == 3
