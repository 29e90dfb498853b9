"""The onnxruntime runner and the backend registry on real ONNX files."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from deploy.errors import DeployConfigError, DeployInputError
from deploy.runners import OnnxRuntimeRunner, make_runner


def test_make_runner_builds_an_onnxruntime_runner_that_classifies(classifier: Path) -> None:
    runner = make_runner("onnxruntime", classifier, threads=1)
    assert isinstance(runner, OnnxRuntimeRunner)
    assert not runner.is_active
    with runner:
        assert runner.is_active
        assert [(s.name, s.shape, s.dtype) for s in runner.input_specs] == [
            ("input", (None, 1, 8, 8), "float32")
        ]
        out = runner.infer({"input": np.zeros((5, 1, 8, 8), np.float32)})
    assert not runner.is_active
    assert out["logits"].shape == (5, 3)
    assert np.isfinite(out["logits"]).all()


@pytest.mark.parametrize(
    ("backend", "message"),
    [("tensorrt", "not available yet"), ("tflite", "unknown backend 'tflite'")],
)
def test_unknown_or_planned_backend_is_a_config_error(
    backend: str, message: str, classifier: Path
) -> None:
    with pytest.raises(DeployConfigError, match=message):
        make_runner(backend, classifier)


def test_wrong_input_shape_names_the_axis(classifier: Path) -> None:
    with (
        make_runner("onnxruntime", classifier) as runner,
        pytest.raises(DeployInputError, match=r"input 'input' axis 2 is 9, the model expects 8"),
    ):
        runner.infer({"input": np.zeros((1, 1, 9, 8), np.float32)})


def test_missing_file_is_an_input_error(tmp_path: Path) -> None:
    with pytest.raises(DeployInputError, match="ONNX file not found"):
        OnnxRuntimeRunner(tmp_path / "absent.onnx").__enter__()
