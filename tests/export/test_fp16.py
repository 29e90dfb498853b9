"""convert_fp16 on real exports: FP16 tensors, float32 I/O, parity, blocked ops, failures."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from onnx import TensorProto, helper, numpy_helper
from torch import nn

from deploy.evaluate import LabelledData, top1_accuracy
from deploy.runners import OnnxRuntimeRunner
from export import ExportConfig, export_onnx, file_sha256, read_metadata
from export.errors import ExportConfigError, ExportInputError, ParityError
from export.fp16 import DEFAULT_OP_BLOCK_LIST, FP16Config, FP16Result, convert_fp16
from tests.export.test_quantize import train_digits_model
from tests.export.tiny_models import INPUT_SHAPE, NUM_CLASSES, USER_METADATA, Exported

FLOAT, FLOAT16 = TensorProto.FLOAT, TensorProto.FLOAT16


def _elem_types(values: list[onnx.ValueInfoProto]) -> list[int]:
    return [value.type.tensor_type.elem_type for value in values]


@pytest.fixture(scope="module")
def fp16(exported: Exported, tmp_path_factory: pytest.TempPathFactory) -> FP16Result:
    out = tmp_path_factory.mktemp("fp16") / "model.fp16.onnx"
    return convert_fp16(exported.result.path, out, parity_inputs=exported.parity_inputs.numpy())


def test_every_weight_and_tensor_is_fp16_with_float32_io(fp16: FP16Result) -> None:
    model = onnx.load(str(fp16.path))
    graph = model.graph
    floats = [init for init in graph.initializer if init.data_type in (FLOAT, FLOAT16)]
    assert floats and all(init.data_type == FLOAT16 for init in floats)
    assert fp16.converted_initializers == len(floats) and fp16.clamped_values == 0
    assert _elem_types(graph.input) == [FLOAT] and _elem_types(graph.output) == [FLOAT]
    first, last = graph.node[0], graph.node[-1]  # Cast right after the input, before the output
    assert (first.op_type, first.input[0]) == ("Cast", "input")
    assert (last.op_type, last.output[0]) == ("Cast", "logits")
    assert [attr.i for attr in first.attribute] == [FLOAT16]
    assert [attr.i for attr in last.attribute] == [FLOAT]
    inferred = onnx.shape_inference.infer_shapes(model, strict_mode=True).graph.value_info
    assert set(_elem_types(inferred)) <= {FLOAT16, TensorProto.INT64}
    assert fp16.float32_nodes == 0


def test_parity_with_fp32_is_within_the_fp16_tolerance(fp16: FP16Result) -> None:
    assert fp16.max_abs_diff is not None and fp16.tolerance is not None
    assert 0 < fp16.max_abs_diff <= fp16.tolerance
    assert fp16.top1_agreement == 1.0


@pytest.mark.parametrize("batch", [1, 7])
def test_float32_callers_run_any_batch_size(
    fp16: FP16Result, exported: Exported, batch: int
) -> None:
    images = exported.parity_inputs[:batch].numpy()
    with OnnxRuntimeRunner(fp16.path) as runner:
        assert runner.input_specs[0].shape == (None, *INPUT_SHAPE)
        logits = runner.infer({"input": images})["logits"]
    with torch.inference_mode():
        expected = exported.model(exported.parity_inputs[:batch]).numpy()
    assert logits.dtype == np.float32 and logits.shape == (batch, NUM_CLASSES)
    np.testing.assert_allclose(logits, expected, atol=fp16.tolerance, rtol=0)


def test_metadata_keeps_the_source_and_says_fp16(fp16: FP16Result, exported: Exported) -> None:
    written = read_metadata(fp16.path)
    assert written == fp16.metadata
    assert {key: written[key] for key in USER_METADATA} == USER_METADATA
    assert written["export.opset"] == "18"
    assert written["precision"] == "fp16"
    assert written["source_onnx_sha256"] == file_sha256(exported.result.path)
    assert fp16.sha256 == file_sha256(fp16.path)
    assert sorted(p.name for p in fp16.path.parent.iterdir()) == ["model.fp16.onnx"]


def test_keep_io_types_false_gives_fp16_inputs_and_outputs(
    exported: Exported, tmp_path: Path
) -> None:
    images = exported.parity_inputs.numpy()
    result = convert_fp16(
        exported.result.path,
        tmp_path / "io16.onnx",
        FP16Config(keep_io_types=False),
        parity_inputs=images,
    )
    graph = onnx.load(str(result.path)).graph
    assert _elem_types(graph.input) == [FLOAT16] and _elem_types(graph.output) == [FLOAT16]
    assert "Cast" not in {node.op_type for node in graph.node}
    assert result.max_abs_diff <= result.tolerance and result.top1_agreement == 1.0
    with OnnxRuntimeRunner(result.path) as runner:
        assert runner.input_specs[0].dtype == "float16"
        logits = runner.infer({"input": images[:3].astype(np.float16)})["logits"]
    assert logits.dtype == np.float16


def test_trained_model_keeps_its_predictions(tmp_path: Path) -> None:
    model, _, test_images, test_labels = train_digits_model()
    source = tmp_path / "digits.onnx"
    export_onnx(
        model, torch.from_numpy(test_images[:1]), source, ExportConfig(exporter="torchscript")
    )
    result = convert_fp16(source, tmp_path / "digits.fp16.onnx", parity_inputs=test_images)
    assert result.top1_agreement == 1.0
    data = LabelledData(images=test_images, labels=test_labels)
    with OnnxRuntimeRunner(source) as fp32, OnnxRuntimeRunner(result.path) as half:
        fp32_top1, fp16_top1 = top1_accuracy(fp32, data).top1, top1_accuracy(half, data).top1
    assert fp32_top1 > 0.9 and fp16_top1 == fp32_top1


def test_blocked_op_keeps_float32_weights_between_casts(exported: Exported, tmp_path: Path) -> None:
    result = convert_fp16(
        exported.result.path,
        tmp_path / "gemm32.onnx",
        FP16Config(op_block_list=(*DEFAULT_OP_BLOCK_LIST, "Gemm")),
        parity_inputs=exported.parity_inputs.numpy(),
    )
    graph = onnx.load(str(result.path)).graph
    types = {init.name: init.data_type for init in graph.initializer}
    assert types["fc.weight"] == FLOAT and types["fc.bias"] == FLOAT
    assert types["stem.0.weight"] == FLOAT16
    producers = {out: node for node in graph.node for out in node.output}
    gemm = next(node for node in graph.node if node.op_type == "Gemm")
    cast = producers[gemm.input[0]]
    assert cast.op_type == "Cast" and [attr.i for attr in cast.attribute] == [FLOAT]
    assert gemm.output[0] == "logits"  # already float32: no Cast before the output
    assert result.float32_nodes == 1 and result.max_abs_diff <= result.tolerance


class _ResizeRange(nn.Module):
    """Upsampling (Resize: float32-only `scales`) and torch.arange (Range: no float16)."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(1, 4, 3, padding=1)
        self.fc = nn.Linear(4, NUM_CLASSES)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = nn.functional.interpolate(torch.relu(self.conv(x)), scale_factor=2.0)
        ramp = torch.arange(y.shape[-1], dtype=torch.float32) / y.shape[-1]
        return self.fc((y * (1 + ramp)).mean((2, 3)))


def test_float32_only_inputs_and_ops_stay_float32(tmp_path: Path) -> None:
    torch.manual_seed(0)
    images = torch.randn(16, *INPUT_SHAPE)
    source = tmp_path / "resize.onnx"
    export_onnx(_ResizeRange().eval(), images[:1], source, ExportConfig(exporter="torchscript"))
    result = convert_fp16(source, tmp_path / "resize16.onnx", parity_inputs=images.numpy())
    model = onnx.load(str(result.path))
    graph = model.graph
    types = {i.name: i.data_type for i in graph.initializer}
    for value in onnx.shape_inference.infer_shapes(model).graph.value_info:
        types[value.name] = value.type.tensor_type.elem_type
    for node in graph.node:
        if node.op_type == "Constant":
            types[node.output[0]] = node.attribute[0].t.data_type
    resize = next(node for node in graph.node if node.op_type == "Resize")
    assert types[resize.input[0]] == FLOAT16 and types[resize.input[2]] == FLOAT  # scales
    float_range = next(node for node in graph.node if node.op_type == "Range")
    assert {types[name] for name in float_range.input} == {FLOAT}
    assert types[float_range.output[0]] == FLOAT
    assert result.float32_nodes >= 1 and result.max_abs_diff <= result.tolerance


def _handmade(path: Path, weight: list[float], square: bool = False) -> Path:
    """input (N x 3) * weight [then squared] -> output: an FP16 overflow when asked for."""
    second = ["scaled", "scaled"] if square else ["scaled", "one"]
    nodes = [
        helper.make_node("Mul", ["input", "w"], ["scaled"]),
        helper.make_node("Mul", second, ["output"]),
    ]
    graph = helper.make_graph(
        nodes,
        "handmade",
        [helper.make_tensor_value_info("input", FLOAT, ["batch", 3])],
        [helper.make_tensor_value_info("output", FLOAT, ["batch", 3])],
        [
            numpy_helper.from_array(np.array(weight, np.float32), "w"),
            *([] if square else [numpy_helper.from_array(np.ones(3, np.float32), "one")]),
        ],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)], ir_version=10)
    onnx.save(model, str(path))
    return path


def test_weights_beyond_fp16_range_are_clamped_with_a_warning(tmp_path: Path) -> None:
    source = _handmade(tmp_path / "big.onnx", [1e5, -7e4, 2.0])
    with pytest.warns(UserWarning, match="2 weight value"):
        result = convert_fp16(source, tmp_path / "big16.onnx")
    assert result.clamped_values == 2 and result.max_abs_diff is None
    weights = {
        i.name: numpy_helper.to_array(i) for i in onnx.load(str(result.path)).graph.initializer
    }
    np.testing.assert_array_equal(weights["w"], np.array([65504, -65504, 2], np.float16))


def test_constant_nodes_become_fp16(tmp_path: Path) -> None:
    """Constant(value_float), ConstantOfShape (default float32 zeros) and Cast(to=FLOAT)."""
    nodes = [
        helper.make_node("Constant", [], ["two"], value_float=2.0),
        helper.make_node("Shape", ["input"], ["shape"]),
        helper.make_node("ConstantOfShape", ["shape"], ["zeros"]),
        helper.make_node("Cast", ["shape"], ["shape_float"], to=FLOAT),
        helper.make_node("Add", ["input", "zeros"], ["same"]),
        helper.make_node("Mul", ["same", "two"], ["doubled"]),
        helper.make_node("ReduceSum", ["shape_float"], ["size"], keepdims=1),
        helper.make_node("Add", ["doubled", "size"], ["output"]),
    ]
    graph = helper.make_graph(
        nodes,
        "constants",
        [helper.make_tensor_value_info("input", FLOAT, ["batch", 3])],
        [helper.make_tensor_value_info("output", FLOAT, ["batch", 3])],
    )
    source = tmp_path / "constants.onnx"
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)], ir_version=10)
    onnx.save(model, str(source))
    inputs = np.arange(12, dtype=np.float32).reshape(4, 3)
    result = convert_fp16(source, tmp_path / "constants16.onnx", parity_inputs=inputs)
    assert result.max_abs_diff == 0.0 and result.converted_initializers == 1
    converted = onnx.load(str(result.path))
    for value in onnx.shape_inference.infer_shapes(converted).graph.value_info:
        if value.name in ("two", "zeros", "shape_float", "same", "doubled", "size"):
            assert value.type.tensor_type.elem_type == FLOAT16, value.name
    with OnnxRuntimeRunner(result.path) as runner:
        output = runner.infer({"input": inputs})["output"]
    np.testing.assert_array_equal(output, 2 * inputs + 7)  # shape (4, 3): 4 + 3 = 7


def test_overflow_is_a_parity_error_and_nothing_is_written(tmp_path: Path) -> None:
    source = _handmade(tmp_path / "square.onnx", [300.0, 1.0, 1.0], square=True)
    inputs = np.ones((4, 3), np.float32)  # 300**2 = 90000 > 65504: inf in float16
    with pytest.raises(ParityError, match=r"overflow .* '(output|scaled)' reaches 9e\+04"):
        convert_fp16(source, tmp_path / "square16.onnx", parity_inputs=inputs)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["square.onnx"]
    blocked = FP16Config(op_block_list=("Mul",))
    result = convert_fp16(source, tmp_path / "square16.onnx", blocked, parity_inputs=inputs)
    assert result.max_abs_diff == 0.0 and result.float32_nodes == 2


def test_bad_inputs_are_input_errors(exported: Exported, tmp_path: Path) -> None:
    with pytest.raises(ExportInputError, match="not found"):
        convert_fp16(tmp_path / "missing.onnx", tmp_path / "out.onnx")
    garbage = tmp_path / "garbage.onnx"
    garbage.write_bytes(b"\x00\xffnot onnx" * 20)
    with pytest.raises(ExportInputError, match="not an ONNX model"):
        convert_fp16(garbage, tmp_path / "out.onnx")
    with pytest.raises(ExportInputError, match="float numpy array"):
        convert_fp16(
            exported.result.path, tmp_path / "out.onnx", parity_inputs=np.zeros((2, 3), np.int64)
        )
    with pytest.raises(ExportInputError, match="parity_inputs do not fit"):
        convert_fp16(
            exported.result.path,
            tmp_path / "out.onnx",
            parity_inputs=np.zeros((2, 1, 8, 8), np.float32),
        )
    with pytest.raises(ExportConfigError, match="rtol"):
        convert_fp16(exported.result.path, tmp_path / "out.onnx", rtol=-1.0)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["garbage.onnx"]


@pytest.mark.parametrize(
    ("options", "match"),
    [
        ({"keep_io_types": "yes"}, r"keep_io_types: must be true or false"),
        ({"op_block_list": "Resize"}, r"op_block_list: must be a list of ONNX op types"),
        ({"op_block_list": ("resize",)}, r"\['resize'\] are not ONNX op types"),
    ],
)
def test_bad_config_is_a_config_error(options: dict, match: str) -> None:
    with pytest.raises(ExportConfigError, match=match):
        FP16Config(**options)
