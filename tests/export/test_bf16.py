"""convert_bf16 on real exports: bfloat16 weights rounded as torch rounds them, float32 I/O,
parity against the float32 emulation, top-1 on real data, TensorRT 11 lint, opset rules."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from onnx import TensorProto, helper, numpy_helper

from compressor.cli import main
from compressor.workflows.deliver import bf16_source
from deploy.errors import DeployConfigError, DeployInputError
from deploy.evaluate import LabelledData, top1_accuracy
from deploy.onnx_info import inspect_onnx
from deploy.runners import OnnxRuntimeRunner
from deploy.tensorrt.engine import plan_build
from deploy.tensorrt.options import BuildOptions
from export import ExportConfig, export_onnx, file_sha256, read_metadata
from export.bf16 import BF16_MAX, BF16Config, BF16Result, bfloat16_bits, convert_bf16
from export.emulation import EMULATION, ONNXRUNTIME, float32_emulation, onnxruntime_or_emulation
from export.errors import ExportConfigError
from export.readiness import check_readiness
from tests.export.test_quantize import train_digits_model
from tests.export.tiny_models import INPUT_SHAPE, NUM_CLASSES, Exported

FLOAT, BFLOAT16, INT64 = TensorProto.FLOAT, TensorProto.BFLOAT16, TensorProto.INT64
PROFILE = {"input": ((1, *INPUT_SHAPE), (8, *INPUT_SHAPE), (32, *INPUT_SHAPE))}


def _torch_bits(values: np.ndarray) -> np.ndarray:
    """torch's float32 -> bfloat16 rounding, as bit patterns."""
    rounded = torch.from_numpy(np.array(values, np.float32)).to(torch.bfloat16)
    return rounded.view(torch.int16).numpy().view(np.uint16)


def _stored_bits(tensor: onnx.TensorProto) -> np.ndarray:
    assert tensor.data_type == BFLOAT16
    return np.frombuffer(tensor.raw_data, "<u2").reshape(tuple(tensor.dims))


@pytest.fixture(scope="module")
def bf16(exported: Exported, tmp_path_factory: pytest.TempPathFactory) -> BF16Result:
    out = tmp_path_factory.mktemp("bf16") / "model.bf16.onnx"
    return convert_bf16(exported.result.path, out, parity_inputs=exported.parity_inputs.numpy())


def test_weights_are_bfloat16_rounded_to_nearest_even_as_torch_rounds_them(
    bf16: BF16Result, exported: Exported
) -> None:
    source = {
        i.name: numpy_helper.to_array(i) for i in onnx.load(exported.result.path).graph.initializer
    }
    written = onnx.load(str(bf16.path)).graph.initializer
    floats = [i for i in written if i.data_type in (FLOAT, BFLOAT16)]
    assert floats and all(i.data_type == BFLOAT16 for i in floats)
    assert bf16.converted_initializers == len(floats) and bf16.clamped_values == 0
    for tensor in floats:
        values = source[tensor.name]
        np.testing.assert_array_equal(_stored_bits(tensor), _torch_bits(values), tensor.name)
        truncated = (values.view(np.uint32) >> 16).astype(np.uint16)
        assert tensor.name == "fc.bias" or np.any(_stored_bits(tensor) != truncated)


def test_rounding_matches_torch_on_ties_subnormals_and_specials() -> None:
    rng = np.random.default_rng(0)
    exponents = rng.integers(-40, 38, 50_000).astype(np.float32)
    values = rng.standard_normal(50_000).astype(np.float32) * np.float32(10.0) ** exponents
    ties = (values.view(np.uint32) & np.uint32(0xFFFF0000)) | np.uint32(0x8000)  # half-way
    specials = np.array([0.0, -0.0, np.inf, -np.inf, 1e-45, -1e-40, 1.0 + 2**-8], np.float32)
    values = np.concatenate([values, ties.view(np.float32), specials])
    values = values[np.isfinite(values) | np.isinf(values)]
    bits, clamped = bfloat16_bits(values)
    assert clamped == 0
    np.testing.assert_array_equal(bits, _torch_bits(values))
    assert bits[-1] == 0x3F80  # 1 + 2**-8 is a tie between 1 and 1 + 2**-7: even (1) wins
    nan_bits, _ = bfloat16_bits(np.array([np.nan], np.float32))
    assert np.isnan(np.array(nan_bits.astype(np.uint32) << 16, np.uint32).view(np.float32))[0]


def test_values_that_would_round_to_inf_are_clamped_and_counted() -> None:
    """torch turns 3.4e38 into inf; a weight is better kept at bfloat16's largest finite."""
    bits, clamped = bfloat16_bits(np.array([3.4e38, -3.4e38, BF16_MAX], np.float32))
    assert clamped == 2
    widened = (bits.astype(np.uint32) << 16).view(np.float32)
    np.testing.assert_array_equal(widened, np.array([BF16_MAX, -BF16_MAX, BF16_MAX], np.float32))


def test_io_stays_float32_and_every_op_computes_in_bf16_at_opset_22(
    bf16: BF16Result, exported: Exported
) -> None:
    model = onnx.load(str(bf16.path))
    graph = model.graph
    assert [v.type.tensor_type.elem_type for v in graph.input] == [FLOAT]
    assert [v.type.tensor_type.elem_type for v in graph.output] == [FLOAT]
    first, last = graph.node[0], graph.node[-1]
    assert (first.op_type, first.input[0], first.attribute[0].i) == ("Cast", "input", BFLOAT16)
    assert (last.op_type, last.output[0], last.attribute[0].i) == ("Cast", "logits", FLOAT)
    inferred = onnx.shape_inference.infer_shapes(model, strict_mode=True).graph.value_info
    assert {v.type.tensor_type.elem_type for v in inferred} <= {BFLOAT16, INT64}
    assert bf16.float32_nodes == 0 and bf16.opset == 22
    written = read_metadata(bf16.path)
    assert written == bf16.metadata
    assert written["precision"] == "bf16" and written["bf16.keep_io_types"] == "true"
    assert (written["bf16.opset"], written["bf16.source_opset"]) == ("22", "18")
    assert written["source_onnx_sha256"] == file_sha256(exported.result.path)
    assert sorted(p.name for p in bf16.path.parent.iterdir()) == ["model.bf16.onnx"]


def test_onnxruntime_cpu_cannot_run_bf16_so_parity_uses_the_float32_emulation(
    bf16: BF16Result,
) -> None:
    try:  # what the fallback rests on; a future onnxruntime with BF16 kernels takes the file
        with OnnxRuntimeRunner(bf16.path):
            expected = ONNXRUNTIME
    except DeployInputError as exc:
        assert "NOT_IMPLEMENTED" in str(exc)
        assert "BF16 graph" in str(exc) and "--backend tensorrt" in str(exc)  # what to do
        expected = EMULATION
    assert bf16.parity_method == expected
    # BF16 keeps 8 significant bits: measurable, and within the stated tolerance.
    assert bf16.max_abs_diff is not None and bf16.tolerance is not None
    assert 0 < bf16.max_abs_diff <= bf16.tolerance
    assert bf16.top1_agreement >= 0.98


def test_the_emulation_rounds_every_bf16_tensor_and_computes_between_in_float32(
    bf16: BF16Result, exported: Exported
) -> None:
    model = onnx.load(str(bf16.path))
    emulated = float32_emulation(model, BFLOAT16)
    types = {i.data_type for i in emulated.graph.initializer}
    assert BFLOAT16 not in types
    low = [n for n in model.graph.node if n.op_type in ("Conv", "Relu", "Add", "Gemm")]
    watched = [n.output[0] for n in low]
    emulated.graph.output.extend(helper.make_tensor_value_info(n, FLOAT, None) for n in watched)
    session_path = bf16.path.parent.parent / "emulated.onnx"
    onnx.save(emulated, str(session_path))
    images = exported.parity_inputs[:16].numpy()
    with OnnxRuntimeRunner(session_path, optimize=False) as runner:
        outputs = runner.infer({"input": images})
    for name in watched:  # every activation holds bfloat16 values: low 16 bits zero
        bits = np.ascontiguousarray(outputs[name], np.float32).view(np.uint32)
        assert np.all(bits & np.uint32(0xFFFF) == 0), name
    with OnnxRuntimeRunner(exported.result.path) as fp32:
        reference = fp32.infer({"input": images})["logits"]
    assert 0 < np.max(np.abs(outputs["logits"] - reference)) <= bf16.tolerance


def test_trained_model_keeps_its_top1_on_real_data(tmp_path: Path) -> None:
    model, _, test_images, test_labels = train_digits_model()
    source = tmp_path / "digits.onnx"
    export_onnx(model, torch.from_numpy(test_images[:1]), source, ExportConfig())
    result = convert_bf16(source, tmp_path / "digits.bf16.onnx", parity_inputs=test_images)
    data = LabelledData(images=test_images, labels=test_labels)
    with OnnxRuntimeRunner(source) as fp32:
        fp32_top1 = top1_accuracy(fp32, data).top1
    with onnxruntime_or_emulation(result.path, BFLOAT16) as (runner, _):
        bf16_top1 = top1_accuracy(runner, data).top1
    assert fp32_top1 > 0.9 and abs(bf16_top1 - fp32_top1) <= 0.01
    assert result.top1_agreement >= 0.99 and result.max_abs_diff <= result.tolerance


def test_tensorrt_11_lint_is_clean_and_the_planner_takes_the_bf16_file(
    bf16: BF16Result, exported: Exported, capsys: pytest.CaptureFixture[str]
) -> None:
    assert check_readiness(bf16.path, trt_version="11", profiles=PROFILE).findings == ()
    profile = "input:" + ",".join("x".join(map(str, shape)) for shape in PROFILE["input"])
    assert main(["lint", str(bf16.path), "--trt-version", "11", "--profile", profile]) == 0
    assert "no findings for TensorRT 11" in capsys.readouterr().out
    info = inspect_onnx(bf16.path)
    assert info.precision == "bf16"
    plan = plan_build(info, BuildOptions(precision="bf16", max_batch=8), "11.1")
    assert plan.strongly_typed and plan.builder_flags == () and plan.precision == "bf16"
    with pytest.raises(DeployConfigError, match=r"is an fp32 graph; pass the BF16 ONNX .*bf16"):
        plan_build(inspect_onnx(exported.result.path), BuildOptions(precision="bf16"), "11.1")


@pytest.mark.parametrize(
    ("trt_version", "builds_from"),
    [("11.1", "bf16"), ("10.15", "bf16"), ("10.3", "fp32"), ("10.0", "fp32")],
)
def test_bf16_engines_build_from_the_file_the_installed_tensorrt_parses(
    bf16: BF16Result, exported: Exported, trt_version: str, builds_from: str
) -> None:
    """The opset-22 BF16 graph on releases documenting opset 22, else FP32 + the BF16 flag."""
    fp32 = exported.result.path
    chosen = bf16_source(fp32, bf16.path, trt_version)
    assert chosen == {"bf16": bf16.path, "fp32": fp32}[builds_from]
    plan = plan_build(inspect_onnx(chosen), BuildOptions(precision="bf16"), trt_version)
    assert plan.precision == "bf16"
    assert plan.strongly_typed == trt_version.startswith("11")  # 10.x: the BF16 flag


def test_opset_none_keeps_the_file_opset_and_conv_in_float32(
    exported: Exported, tmp_path: Path
) -> None:
    result = convert_bf16(
        exported.result.path,
        tmp_path / "opset18.bf16.onnx",
        BF16Config(opset=None),
        parity_inputs=exported.parity_inputs.numpy(),
    )
    graph = onnx.load(str(result.path)).graph
    types = {i.name: i.data_type for i in graph.initializer}
    convs = [n for n in graph.node if n.op_type == "Conv"]
    assert result.opset == 18 and result.float32_nodes == len(convs) == 6
    assert all(types[n.input[1]] == FLOAT for n in convs)  # Conv-18 has no bfloat16
    assert types["fc.weight"] == BFLOAT16  # Gemm has had it since opset 13
    assert result.max_abs_diff <= result.tolerance
    report = check_readiness(result.path, trt_version="11", profiles=PROFILE)
    (note,) = [f for f in report.findings if f.code == "bf16-float32-ops"]
    assert (
        note.severity == "info" and "6 Conv node(s)" in note.message and "opset 22" in note.message
    )


def _mul_graph(path: Path, opset: int) -> Path:
    """input (N x 3) * weight -> output, at `opset`."""
    graph = helper.make_graph(
        [helper.make_node("Mul", ["input", "w"], ["output"])],
        "mul",
        [helper.make_tensor_value_info("input", FLOAT, ["batch", 3])],
        [helper.make_tensor_value_info("output", FLOAT, ["batch", 3])],
        [numpy_helper.from_array(np.array([0.5, 3.0, -2.0], np.float32), "w")],
    )
    ir = 7 if opset < 15 else 10
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)], ir_version=ir)
    onnx.save(model, str(path))
    return path


def test_an_opset_without_bfloat16_is_a_clear_config_error(tmp_path: Path) -> None:
    source = _mul_graph(tmp_path / "opset12.onnx", 12)
    with pytest.raises(ExportConfigError, match=r"opset 12, and ONNX has no bfloat16 .* opset 13"):
        convert_bf16(source, tmp_path / "out.onnx", BF16Config(opset=None))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["opset12.onnx"]
    inputs = np.arange(12, dtype=np.float32).reshape(4, 3)
    raised = convert_bf16(source, tmp_path / "out.onnx", parity_inputs=inputs)  # to opset 22
    assert raised.opset == 22 and raised.max_abs_diff == 0.0  # small integers are exact


@pytest.mark.parametrize(
    ("options", "match"),
    [
        ({"opset": 12}, r"BF16Config.opset: must be an opset from 13"),
        ({"opset": "22"}, r"BF16Config.opset: must be an opset"),
        ({"opset": 99}, r"BF16Config.opset: must be an opset"),
        ({"keep_io_types": "yes"}, r"BF16Config.keep_io_types: must be true or false"),
        ({"op_block_list": ("conv",)}, r"BF16Config.op_block_list: \['conv'\] are not ONNX"),
    ],
)
def test_bad_config_is_a_config_error(options: dict, match: str) -> None:
    with pytest.raises(ExportConfigError, match=match):
        BF16Config(**options)


def test_keep_io_types_false_gives_bf16_inputs_and_outputs(
    exported: Exported, tmp_path: Path
) -> None:
    result = convert_bf16(
        exported.result.path,
        tmp_path / "io.bf16.onnx",
        BF16Config(keep_io_types=False),
        parity_inputs=exported.parity_inputs.numpy(),
    )
    graph = onnx.load(str(result.path)).graph
    assert [v.type.tensor_type.elem_type for v in graph.input] == [BFLOAT16]
    assert [v.type.tensor_type.elem_type for v in graph.output] == [BFLOAT16]
    assert "Cast" not in {node.op_type for node in graph.node}
    assert result.max_abs_diff <= result.tolerance and result.top1_agreement >= 0.98
    with onnxruntime_or_emulation(result.path, BFLOAT16) as (runner, method):
        logits = runner.infer({"input": exported.parity_inputs[:3].numpy()})["logits"]
    assert method == EMULATION and logits.shape == (3, NUM_CLASSES)


def test_blocked_op_keeps_float32_weights_between_casts(exported: Exported, tmp_path: Path) -> None:
    result = convert_bf16(
        exported.result.path,
        tmp_path / "gemm32.bf16.onnx",
        BF16Config(op_block_list=("Gemm",)),
        parity_inputs=exported.parity_inputs.numpy(),
    )
    graph = onnx.load(str(result.path)).graph
    types = {init.name: init.data_type for init in graph.initializer}
    assert types["fc.weight"] == FLOAT and types["stem.0.weight"] == BFLOAT16
    gemm = next(node for node in graph.node if node.op_type == "Gemm")
    assert gemm.output[0] == "logits" and result.float32_nodes == 1
