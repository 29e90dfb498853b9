"""Small real ONNX classifiers built with onnx.helper, run by real onnxruntime."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

OPSET = 17


def build_classifier(
    path: Path,
    *,
    channels: int = 4,
    classes: int = 3,
    spatial: tuple[int | str, int | str] = (8, 8),
    batch: int | str = "N",
    seed: int = 0,
    dtype: type = np.float32,
) -> Path:
    """Conv(1->channels, 3x3) + Relu + GlobalAveragePool + Flatten + Gemm(channels->classes).

    Input "input" [batch, 1, H, W], output "logits" [batch, classes]. String dims are dynamic.
    `dtype=np.float16` makes an FP16 graph (weights, input and output), as TensorRT 11 wants.
    """
    rng = np.random.default_rng(seed)
    weights = [
        numpy_helper.from_array(rng.standard_normal(shape).astype(dtype), name)
        for name, shape in (
            ("conv_w", (channels, 1, 3, 3)),
            ("conv_b", (channels,)),
            ("fc_w", (classes, channels)),
            ("fc_b", (classes,)),
        )
    ]
    elem = TensorProto.FLOAT16 if dtype == np.float16 else TensorProto.FLOAT
    nodes = [
        helper.make_node("Conv", ["input", "conv_w", "conv_b"], ["conv"], pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["conv"], ["relu"]),
        helper.make_node("GlobalAveragePool", ["relu"], ["pool"]),
        helper.make_node("Flatten", ["pool"], ["flat"]),
        helper.make_node("Gemm", ["flat", "fc_w", "fc_b"], ["logits"], transB=1),
    ]
    graph = helper.make_graph(
        nodes,
        "tiny_classifier",
        [helper.make_tensor_value_info("input", elem, [batch, 1, *spatial])],
        [helper.make_tensor_value_info("logits", elem, [batch, classes])],
        initializer=weights,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)])
    onnx.checker.check_model(model)
    onnx.save(model, path)
    return path


@pytest.fixture(scope="session")
def onnx_models(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Named model files: a dense and a narrower ("shrunk") classifier with a dynamic batch,
    one with dynamic spatial dims, and one with a fixed batch of 1."""
    root = tmp_path_factory.mktemp("onnx")
    return {
        "dense": build_classifier(root / "dense.onnx", channels=8),
        "shrunk": build_classifier(root / "shrunk.onnx", channels=2, seed=1),
        "dynamic_hw": build_classifier(root / "dynamic_hw.onnx", spatial=("H", "W")),
        "fixed_batch": build_classifier(root / "fixed_batch.onnx", batch=1),
    }


@pytest.fixture()
def classifier(onnx_models: dict[str, Path]) -> Path:
    return onnx_models["dense"]


def fp16_classifier(path: Path, *, classes: int = 3, seed: int = 0) -> Path:
    """The conftest classifier with float16 weights and float16 input/output (an FP16 ONNX)."""
    return build_classifier(path, channels=4, classes=classes, seed=seed, dtype=np.float16)


def qdq_classifier(source: Path, path: Path) -> Path:
    """INT8 explicit quantization of `source` with onnxruntime's quantize_static (QDQ format)."""
    from onnxruntime.quantization import (
        CalibrationDataReader,
        QuantFormat,
        QuantType,
        quantize_static,
    )

    class Digits(CalibrationDataReader):
        def __init__(self) -> None:
            rng = np.random.default_rng(0)
            batches = [rng.standard_normal((1, 1, 8, 8)).astype(np.float32) for _ in range(4)]
            self._batches = iter({"input": batch} for batch in batches)

        def get_next(self) -> dict[str, np.ndarray] | None:
            return next(self._batches, None)

    quantize_static(
        str(source),
        str(path),
        Digits(),
        quant_format=QuantFormat.QDQ,
        activation_type=QuantType.QInt8,
        weight_type=QuantType.QInt8,
    )
    return path


@pytest.fixture(scope="session")
def models(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """FP32, FP16 and INT8 (QDQ) versions of the classifier, a dynamic-spatial one and a
    fixed-batch one: the files the TensorRT planner and trtexec tests build from."""
    root = tmp_path_factory.mktemp("trt_models")
    fp32 = build_classifier(root / "model.onnx")
    return {
        "fp32": fp32,
        "fp16": fp16_classifier(root / "model.fp16.onnx"),
        "int8": qdq_classifier(fp32, root / "model.int8.onnx"),
        "dynamic_hw": build_classifier(root / "dynamic_hw.onnx", spatial=("H", "W")),
        "fixed_batch": build_classifier(root / "fixed_batch.onnx", batch=1),
    }
