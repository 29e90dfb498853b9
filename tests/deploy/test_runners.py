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
    [("trtexec", "is not a runner"), ("tflite", "unknown backend 'tflite'")],
)
def test_unknown_or_non_runner_backend_is_a_config_error(
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


def test_precision_is_read_from_the_graph(tmp_path: Path, classifier: Path) -> None:
    import onnx
    from onnx import numpy_helper

    from deploy.onnx_info import inspect_onnx

    info = inspect_onnx(classifier)
    assert info.precision == "fp32" and info.inputs[0].shape == (None, 1, 8, 8)
    model = onnx.load(classifier)
    for init in model.graph.initializer:  # FP16 weights (the graph is not run here)
        init.CopyFrom(
            numpy_helper.from_array(numpy_helper.to_array(init).astype("float16"), init.name)
        )
    onnx.save(model, tmp_path / "half.onnx")
    assert inspect_onnx(tmp_path / "half.onnx").precision == "fp16"
    with OnnxRuntimeRunner(classifier) as runner:
        assert runner.precision == "fp32"


def test_a_file_that_is_not_onnx_is_named(tmp_path: Path) -> None:
    from deploy.onnx_info import inspect_onnx

    bogus = tmp_path / "weights.onnx"
    bogus.write_bytes(b"\xffnot protobuf at all" * 10)  # (b"\x80\x04..." reads as a pickle)
    with pytest.raises(DeployInputError, match="not a readable ONNX file"):
        inspect_onnx(bogus)
