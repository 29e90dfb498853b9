"""quantize_qdq on a CNN trained on the bundled digits: accuracy, TensorRT-ready QDQ, failures."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from onnx import numpy_helper
from sklearn.datasets import load_digits
from torch import nn

from deploy.runners import OnnxRuntimeRunner
from export import ExportConfig, export_onnx, file_sha256, read_metadata
from export.errors import ExportConfigError, ExportError, ExportInputError
from export.quantize import QuantizeConfig, QuantizeResult, quantize_qdq
from tests.export.tiny_models import INPUT_SHAPE, NUM_CLASSES, TinyResNet, make_tiny_resnet


@dataclass(frozen=True)
class Digits:
    """A TinyResNet trained on the digits (16x16), its FP32 export and the data splits."""

    model: TinyResNet
    onnx_path: Path
    train_images: np.ndarray
    test_images: np.ndarray
    test_labels: np.ndarray


def train_digits_model(seed: int = 0) -> tuple[TinyResNet, np.ndarray, np.ndarray, np.ndarray]:
    """About 2 s on 2 CPU cores to ~97% test top-1: real weights, so INT8 errors show."""
    digits = load_digits()
    images = torch.tensor(digits.images, dtype=torch.float32)[:, None] / 16.0
    images = nn.functional.interpolate(images, size=INPUT_SHAPE[1:], mode="bilinear")
    images = (images - 0.5) / 0.5
    labels = torch.tensor(digits.target)
    generator = torch.Generator().manual_seed(seed)
    order = torch.randperm(len(labels), generator=generator)
    train, test = order[:1400], order[1400:]
    torch.manual_seed(seed)
    model = TinyResNet()
    epochs, batch = 6, 64
    optimizer = torch.optim.Adam(model.parameters(), 0.01)
    steps = epochs * -(-len(train) // batch)
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, 0.01, total_steps=steps)
    model.train()
    for _ in range(epochs):
        shuffled = train[torch.randperm(len(train), generator=generator)]
        for start in range(0, len(shuffled), batch):
            index = shuffled[start : start + batch]
            loss = nn.functional.cross_entropy(model(images[index]), labels[index])
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            schedule.step()
    model.eval()
    return model, images[train].numpy(), images[test].numpy(), labels[test].numpy()


@pytest.fixture(scope="module")
def digits(tmp_path_factory: pytest.TempPathFactory) -> Digits:
    model, train_images, test_images, test_labels = train_digits_model()
    path = tmp_path_factory.mktemp("digits") / "model.onnx"
    example = torch.from_numpy(train_images[:1])
    export_onnx(model, example, path, parity_inputs=test_images[:64], metadata={"note": "digits"})
    return Digits(model, path, train_images, test_images, test_labels)


@pytest.fixture(scope="module")
def int8(digits: Digits, tmp_path_factory: pytest.TempPathFactory) -> QuantizeResult:
    out = tmp_path_factory.mktemp("int8") / "model.int8.onnx"
    return quantize_qdq(
        digits.onnx_path,
        out,
        digits.train_images,
        eval_images=digits.test_images,
        eval_labels=digits.test_labels,
        metadata={"run": "test"},
    )


def test_int8_top1_is_within_one_point_of_fp32(int8: QuantizeResult) -> None:
    assert int8.fp32_top1 is not None and int8.int8_top1 is not None
    assert int8.fp32_top1 > 0.9  # well above chance (0.1): the comparison means something
    assert abs(int8.int8_top1 - int8.fp32_top1) <= 0.01
    assert int8.top1_agreement >= 0.98
    assert 0 < int8.max_abs_diff < 2.0
    assert int8.calibration_samples == 256 and int8.calibration_method == "minmax"
    assert int8.eval_samples == 397
    # onnxruntime's own CPU int8 kernels: machine-dependent (lower on x86 without VNNI).
    assert 0.0 <= int8.int8_top1_onnxruntime <= 1.0


@pytest.fixture(scope="module")
def int8_all(digits: Digits, tmp_path_factory: pytest.TempPathFactory) -> QuantizeResult:
    """The placement of config version 1, "all": every input and output of op_types."""
    out = tmp_path_factory.mktemp("int8_all") / "model.int8.onnx"
    config = QuantizeConfig(qdq_placement="all")
    return quantize_qdq(digits.onnx_path, out, digits.train_images, config)


def test_graph_is_tensorrt_int8_qdq(int8_all: QuantizeResult) -> None:
    """Symmetric int8 (zero point 0), per-output-channel weights, float biases; with "all",
    every Conv and Gemm and both inputs of every Add are quantized (the default "tensorrt"
    placement is tested in test_qdq_placement.py)."""
    int8 = int8_all
    graph = onnx.load(str(int8.path)).graph
    inits = {init.name: numpy_helper.to_array(init) for init in graph.initializer}
    qdq = [node for node in graph.node if node.op_type in ("QuantizeLinear", "DequantizeLinear")]
    assert len(qdq) == int8.qdq_nodes > 0
    for node in qdq:
        zero_point = inits[node.input[2]]
        assert zero_point.dtype == np.int8 and not zero_point.any(), node.name
    producers = {out: node for node in graph.node for out in node.output}
    weighted = [node for node in graph.node if node.op_type in ("Conv", "Gemm")]
    assert [node.op_type for node in weighted].count("Conv") == 6
    for node in weighted:
        dequantize = producers[node.input[1]]
        assert dequantize.op_type == "DequantizeLinear"
        weight, scale = inits[dequantize.input[0]], inits[dequantize.input[1]]
        axis = next(attr.i for attr in dequantize.attribute if attr.name == "axis")
        assert weight.dtype == np.int8
        assert scale.shape == (weight.shape[axis],) and axis == 0  # one scale per out channel
        assert inits[node.input[2]].dtype == np.float32  # bias not quantized (no INT32 DQ)
        activation = producers[node.input[0]]
        assert activation.op_type == "DequantizeLinear"
    adds = [node for node in graph.node if node.op_type == "Add"]
    assert adds and all(producers[i].op_type == "DequantizeLinear" for a in adds for i in a.input)


@pytest.mark.parametrize("batch", [1, 7])
def test_batch_axis_stays_dynamic(int8: QuantizeResult, digits: Digits, batch: int) -> None:
    images = digits.test_images[:batch]
    with OnnxRuntimeRunner(int8.path) as runner:
        assert runner.input_specs[0].shape == (None, *INPUT_SHAPE)
        logits = runner.infer({"input": images})["logits"]
    assert logits.shape == (batch, NUM_CLASSES)


def test_metadata_keeps_the_source_and_describes_the_quantization(
    int8: QuantizeResult, digits: Digits
) -> None:
    source = read_metadata(digits.onnx_path)
    written = read_metadata(int8.path)
    assert written == int8.metadata
    assert {key: written[key] for key in source} == source  # export.* keys and the user's
    assert written["run"] == "test"
    assert written["precision"] == "int8" and written["quantization"] == "qdq"
    assert written["quantization.calibration_method"] == "minmax"
    assert written["quantization.calibration_samples"] == "256"
    assert written["source_onnx_sha256"] == file_sha256(digits.onnx_path)
    assert float(written["quantization.int8_top1"]) == pytest.approx(int8.int8_top1, abs=1e-6)
    onnxruntime_top1 = float(written["quantization.int8_top1_onnxruntime"])
    assert onnxruntime_top1 == pytest.approx(int8.int8_top1_onnxruntime, abs=1e-6)
    assert int8.sha256 == file_sha256(int8.path)
    assert sorted(p.name for p in int8.path.parent.iterdir()) == ["model.int8.onnx"]


def _activation_scales(path: Path) -> dict[str, float]:
    graph = onnx.load(str(path)).graph
    inits = {init.name: numpy_helper.to_array(init) for init in graph.initializer}
    return {
        node.input[0]: float(inits[node.input[1]])
        for node in graph.node
        if node.op_type == "QuantizeLinear"
    }


@pytest.mark.parametrize("method", ["entropy", "percentile"])
def test_other_calibration_methods_clip_ranges_and_keep_accuracy(
    method: str, int8: QuantizeResult, digits: Digits, tmp_path: Path
) -> None:
    result = quantize_qdq(
        digits.onnx_path,
        tmp_path / f"{method}.onnx",
        digits.train_images,
        QuantizeConfig(calibration_method=method, calibration_samples=128),
        eval_images=digits.test_images,
        eval_labels=digits.test_labels,
    )
    assert result.calibration_method == method and result.calibration_samples == 128
    assert read_metadata(result.path)["quantization.calibration_method"] == method
    assert abs(result.int8_top1 - result.fp32_top1) <= 0.02
    # Entropy with onnxruntime's default 128 bins would silently equal minmax: some ranges
    # must come out narrower than the full (minmax) range.
    minmax, clipped = _activation_scales(int8.path), _activation_scales(result.path)
    assert minmax.keys() == clipped.keys()
    assert any(clipped[name] < 0.99 * minmax[name] for name in minmax)


def test_fixed_batch_model_calibrates_in_whole_batches(tmp_path: Path) -> None:
    model = TinyResNet().eval()
    source = tmp_path / "fixed.onnx"
    export_onnx(
        model,
        torch.randn(4, *INPUT_SHAPE),
        source,
        ExportConfig(dynamic_batch=False, exporter="torchscript"),
    )
    images = np.random.default_rng(0).standard_normal((10, *INPUT_SHAPE), dtype=np.float32)
    labels = np.arange(10) % NUM_CLASSES
    result = quantize_qdq(
        source, tmp_path / "fixed.int8.onnx", images, eval_images=images, eval_labels=labels
    )
    assert result.calibration_samples == 8  # two batches of 4; the remainder is dropped
    assert result.eval_samples == 10 and result.top1_agreement is not None
    with OnnxRuntimeRunner(result.path) as runner:
        assert runner.input_specs[0].shape == (4, *INPUT_SHAPE)


def test_preprocessing_folds_batch_norm_an_unoptimized_export_left(tmp_path: Path) -> None:
    images = torch.randn(16, *INPUT_SHAPE)
    source = tmp_path / "bn.onnx"
    config = ExportConfig(exporter="torchscript", optimize=False)
    export_onnx(make_tiny_resnet(), images[:1], source, config, parity_inputs=images)
    assert "BatchNormalization" in {node.op_type for node in onnx.load(str(source)).graph.node}
    labels = np.arange(16) % NUM_CLASSES
    images = images.numpy()
    result = quantize_qdq(
        source, tmp_path / "bn.int8.onnx", images, eval_images=images, eval_labels=labels
    )
    ops = {node.op_type for node in onnx.load(str(result.path)).graph.node}
    assert "BatchNormalization" not in ops and "QuantizeLinear" in ops
    assert result.top1_agreement == 1.0


def test_without_eval_data_accuracy_is_none(digits: Digits, tmp_path: Path) -> None:
    plain = quantize_qdq(digits.onnx_path, tmp_path / "a.onnx", digits.train_images[:32])
    assert plain.int8_top1 is None and plain.top1_agreement is None and plain.max_abs_diff is None
    assert plain.int8_top1_onnxruntime is None and plain.eval_samples == 0
    assert "quantization.int8_top1" not in read_metadata(plain.path)


def test_failure_leaves_no_output_and_no_temp_files(digits: Digits, tmp_path: Path) -> None:
    with pytest.raises(ExportError, match="not TensorRT-ready"):
        quantize_qdq(
            digits.onnx_path,
            tmp_path / "none.onnx",
            digits.train_images[:8],
            QuantizeConfig(op_types=("ConvTranspose",)),  # nothing to quantize in this model
        )
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize(
    ("images", "match"),
    [
        (np.zeros((4, 1, 8, 8), np.float32), r"N x 1 x 16 x 16"),
        (np.zeros((4, 16, 16), np.float32), r"N x 1 x 16 x 16"),
        (np.zeros((0, 1, 16, 16), np.float32), r"N >= 1"),
        (np.zeros((4, 1, 16, 16), np.uint8), r"float numpy array"),
        ([[0.0]], r"float numpy array"),
        (np.full((4, 1, 16, 16), np.nan, np.float32), r"NaN"),
    ],
)
def test_bad_calibration_images_are_input_errors(
    digits: Digits, tmp_path: Path, images: object, match: str
) -> None:
    with pytest.raises(ExportInputError, match=match):
        quantize_qdq(digits.onnx_path, tmp_path / "q.onnx", images)
    assert list(tmp_path.iterdir()) == []


def test_bad_sources_and_arguments_are_input_errors(digits: Digits, tmp_path: Path) -> None:
    images = digits.train_images[:8]
    with pytest.raises(ExportInputError, match="not found"):
        quantize_qdq(tmp_path / "missing.onnx", tmp_path / "q.onnx", images)
    garbage = tmp_path / "garbage.onnx"
    garbage.write_bytes(b"this is not a protobuf \x00\xff" * 10)
    with pytest.raises(ExportInputError, match="not an ONNX model"):
        quantize_qdq(garbage, tmp_path / "q.onnx", images)
    with pytest.raises(ExportInputError, match="is the source file"):
        quantize_qdq(digits.onnx_path, digits.onnx_path, images)
    with pytest.raises(ExportInputError, match="give both or neither"):
        quantize_qdq(digits.onnx_path, tmp_path / "q.onnx", images, eval_images=images)
    with pytest.raises(ExportInputError, match="written by quantize_qdq"):
        quantize_qdq(digits.onnx_path, tmp_path / "q.onnx", images, metadata={"precision": "x"})
    quantized = quantize_qdq(digits.onnx_path, tmp_path / "q.onnx", images)
    with pytest.raises(ExportInputError, match="already has Q/DQ nodes"):
        quantize_qdq(quantized.path, tmp_path / "qq.onnx", images)


@pytest.mark.parametrize(
    ("options", "match"),
    [
        ({"calibration_method": "kl"}, r"calibration_method: must be one of \['minmax'"),
        ({"calibration_samples": 0}, r"calibration_samples: must be an integer >= 1"),
        ({"entropy_bins": 128}, r"entropy_bins: must be an integer >= 256"),
        ({"percentile": 100.5}, r"percentile: must be a number in \(50, 100\]"),
        ({"per_channel": "yes"}, r"per_channel: must be true or false"),
        ({"op_types": ("conv",)}, r"op_types: \['conv'\] are not ONNX op types"),
        ({"op_types": ()}, r"op_types: must be a non-empty list"),
    ],
)
def test_bad_config_is_a_config_error(options: dict, match: str) -> None:
    with pytest.raises(ExportConfigError, match=match):
        QuantizeConfig(**options)


def test_config_is_recorded_as_a_versioned_dict() -> None:
    config = QuantizeConfig(calibration_method="percentile", op_types=["Conv", "Gemm"])
    assert config.op_types == ("Conv", "Gemm")
    recorded = config.to_dict()
    assert recorded["version"] == 2 and recorded["op_types"] == ["Conv", "Gemm"]
    assert recorded["qdq_placement"] == "tensorrt" and recorded["quantize_classifier"] is None
    assert QuantizeConfig(**{k: v for k, v in recorded.items() if k != "version"}) == config
