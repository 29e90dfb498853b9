"""TensorRT-readiness lint on real ONNX files: the exported CNN, hand-built graphs, and
onnxruntime's own QDQ output. No TensorRT anywhere: the lint is what stands in for it."""

from __future__ import annotations

import ast
import json
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper
from onnxruntime.quantization import QuantFormat, QuantType, quantize_static

import export.readiness as readiness
from export import ExportConfigError, ExportInputError, OnnxValidationError
from export.readiness import Finding, ReadinessReport, check_readiness
from tests.export.tiny_models import INPUT_SHAPE, Exported

FLOAT = TensorProto.FLOAT


def _save(
    path: Path,
    nodes: Sequence[onnx.NodeProto],
    inputs: Sequence[onnx.ValueInfoProto],
    outputs: Sequence[onnx.ValueInfoProto],
    initializers: Sequence[onnx.TensorProto] = (),
    *,
    opset: int = 17,
    domains: Sequence[str] = (),
) -> Path:
    """Build, check with onnx.checker, and save a model; returns its path."""
    graph = helper.make_graph(nodes, path.stem, inputs, outputs, initializer=list(initializers))
    imports = [helper.make_opsetid("", opset)] + [helper.make_opsetid(d, 1) for d in domains]
    model = helper.make_model(graph, opset_imports=imports)
    onnx.checker.check_model(model)
    onnx.save(model, path)
    return path


def _tensor(name: str, values: np.ndarray | list, dtype: type = np.float32) -> onnx.TensorProto:
    return numpy_helper.from_array(np.asarray(values, dtype=dtype), name)


def _value(name: str, shape: Sequence[int | str | None], dtype: int = FLOAT) -> onnx.ValueInfoProto:
    return helper.make_tensor_value_info(name, dtype, list(shape))


def _codes(report: ReadinessReport) -> set[str]:
    return {f.code for f in report.findings}


def _only(report: ReadinessReport, code: str) -> Finding:
    found = [f for f in report.findings if f.code == code]
    assert len(found) == 1, report.format()
    return found[0]


def _qdq_conv(
    path: Path,
    *,
    act_zero: int = 0,
    act_type: type = np.int8,
    weight_axis: int = 0,
    quantized_weight: bool = True,
) -> Path:
    """input -> Q -> DQ -> Conv (INT8 weights through a per-channel DQ) -> Relu -> output."""
    rng = np.random.default_rng(0)
    weight = rng.integers(-127, 128, size=(3, 2, 1, 1)).astype(np.int8)
    channels = weight.shape[weight_axis]
    nodes = [
        helper.make_node("QuantizeLinear", ["input", "s", "zp"], ["q"], name="act_q"),
        helper.make_node("DequantizeLinear", ["q", "s", "zp"], ["dq"], name="act_dq"),
        helper.make_node(
            "DequantizeLinear", ["w_q", "w_s", "w_zp"], ["w"], name="w_dq", axis=weight_axis
        ),
        helper.make_node("Conv", ["dq", "w" if quantized_weight else "w_float"], ["conv"],
                         name="conv"),
        helper.make_node("Relu", ["conv"], ["output"], name="relu"),
    ]  # fmt: skip
    initializers = [
        _tensor("s", 0.05),
        _tensor("zp", act_zero, act_type),
        _tensor("w_q", weight, np.int8),
        _tensor("w_s", np.full(channels, 0.01)),
        _tensor("w_zp", np.zeros(channels), np.int8),
        _tensor("w_float", weight * 0.01),
    ]
    io = ([_value("input", [1, 2, 4, 4])], [_value("output", [1, 3, 4, 4])])
    return _save(path, nodes, *io, initializers)


# --- The project's own export --------------------------------------------------------------
def test_exported_cnn_has_no_errors_and_only_asks_for_a_batch_profile(exported: Exported) -> None:
    report = check_readiness(exported.result.path, trt_version="10")
    assert report.ok, report.format()
    finding = _only(report, "dynamic-dim-no-profile")
    assert "'input' axis 0" in finding.message and "--minShapes=input:1x1x16x16" in finding.message
    assert _codes(report) == {"dynamic-dim-no-profile"}


def test_exported_cnn_with_a_valid_profile_has_no_findings(exported: Exported) -> None:
    shapes = tuple((batch, *INPUT_SHAPE) for batch in (1, 8, 32))
    report = check_readiness(exported.result.path, trt_version="10.8", profiles={"input": shapes})
    assert report.findings == (), report.format()
    assert report.format().endswith("no findings for TensorRT 10.8")


def test_exported_cnn_for_tensorrt_8_6_warns_that_opset_18_is_newer_than_17(
    exported: Exported,
) -> None:
    report = check_readiness(exported.result.path, trt_version="8.6")
    assert report.ok
    assert "opsets 9-17" in _only(report, "opset-too-new").message


# --- Operators ------------------------------------------------------------------------------
@pytest.mark.parametrize("name", ["det_node", ""])
def test_unsupported_op_is_an_error_naming_the_node(tmp_path: Path, name: str) -> None:
    node = helper.make_node("Det", ["x"], ["y"], name=name)  # "N" in every operators.md read
    path = _save(tmp_path / "det.onnx", [node], [_value("x", [2, 3, 3])], [_value("y", [2])])
    report = check_readiness(path, trt_version="11")
    finding = _only(report, "unsupported-op")
    assert (finding.severity, finding.node, finding.op_type) == ("error", name or "Det#0", "Det")
    assert "Det" in finding.message and "plugin" in finding.message
    assert not report.ok


def test_custom_domain_op_is_an_error_naming_the_domain(tmp_path: Path) -> None:
    node = helper.make_node("FancyNorm", ["x"], ["y"], name="fancy", domain="com.example")
    io = ([_value("x", [1, 4])], [_value("y", [1, 4])])
    path = _save(tmp_path / "custom.onnx", [node], *io, domains=["com.example"])
    finding = _only(check_readiness(path), "custom-op")
    assert finding.severity == "error" and finding.node == "fancy"
    assert "'com.example'" in finding.message and "plugin" in finding.message


def _deform_conv(path: Path) -> Path:
    inputs = ["x", "w", "offset"]
    node = helper.make_node("DeformConv", inputs, ["y"], name="deform", kernel_shape=[2, 2])
    io = [_value("x", [1, 1, 4, 4]), _value("w", [1, 1, 2, 2]), _value("offset", [1, 8, 3, 3])]
    return _save(path, [node], io, [_value("y", [1, 1, 3, 3])], opset=19)


@pytest.mark.parametrize(
    ("version", "expected"),
    [
        ("10.0", "unsupported-op"),  # DeformConv came with the 10.1 parser
        ("10", "op-needs-newer-release"),  # some 10.x has it, 10.0 does not
        ("10.1", None),
        ("11.x", None),
    ],
)
def test_operator_support_depends_on_the_declared_release(
    tmp_path: Path, version: str, expected: str | None
) -> None:
    report = check_readiness(_deform_conv(tmp_path / "deform.onnx"), trt_version=version)
    op_codes = _codes(report) & {"unsupported-op", "op-needs-newer-release"}
    assert op_codes == ({expected} if expected else set()), report.format()


def test_opset_below_9_is_an_error(tmp_path: Path) -> None:
    node = helper.make_node("Relu", ["x"], ["y"])
    path = _save(tmp_path / "old.onnx", [node], [_value("x", [1])], [_value("y", [1])], opset=8)
    assert _only(check_readiness(path), "opset-too-old").severity == "error"


# --- Dynamic shapes and profiles ------------------------------------------------------------
@pytest.fixture()
def dynamic_model(tmp_path: Path) -> Path:
    node = helper.make_node("Relu", ["images"], ["out"])
    io = ([_value("images", ["N", 3, "H", 8])], [_value("out", ["N", 3, "H", 8])])
    return _save(tmp_path / "dynamic.onnx", [node], *io)


def test_each_dynamic_axis_without_a_profile_is_a_warning(dynamic_model: Path) -> None:
    report = check_readiness(dynamic_model)
    messages = [f.message for f in report.findings if f.code == "dynamic-dim-no-profile"]
    assert report.ok and len(messages) == 2
    assert "'images' axis 0 ('N')" in messages[0] and "'images' axis 2 ('H')" in messages[1]
    assert "--optShapes=images:8x3x8x8" in messages[0]


def test_a_valid_profile_silences_the_dynamic_axis_warning(dynamic_model: Path) -> None:
    profile = ((1, 3, 8, 8), (4, 3, 16, 8), (16, 3, 32, 8))
    report = check_readiness(dynamic_model, profiles={"images": profile})
    assert report.findings == (), report.format()


@pytest.mark.parametrize(
    ("profile", "problem"),
    [
        (((8, 3, 8, 8), (4, 3, 8, 8), (1, 3, 8, 8)), "min <= opt <= max"),
        (((1, 3, 8), (4, 3, 8), (8, 3, 8)), "rank [3], the input has rank 4"),
        (((1, 4, 8, 8), (1, 4, 8, 8), (1, 4, 8, 8)), "axis 1 is static (3)"),
    ],
)
def test_an_invalid_profile_is_an_error(dynamic_model: Path, profile: tuple, problem: str) -> None:
    finding = _only(check_readiness(dynamic_model, profiles={"images": profile}), "profile-invalid")
    assert finding.severity == "error" and problem in finding.message


def test_a_profile_for_an_unknown_input_is_an_error_and_a_malformed_one_raises(
    dynamic_model: Path,
) -> None:
    shapes = ((1, 3, 8, 8),) * 3
    report = check_readiness(dynamic_model, profiles={"image": shapes, "images": shapes})
    assert "'image'" in _only(report, "profile-unknown-input").message
    with pytest.raises(ExportConfigError, match=r"profiles\['images'\]"):
        check_readiness(dynamic_model, profiles={"images": ((1, 3, 8, 8), (4, 3, 8, 8))})


# --- Q/DQ -----------------------------------------------------------------------------------
def test_symmetric_int8_per_channel_qdq_conv_has_no_qdq_findings(tmp_path: Path) -> None:
    report = check_readiness(_qdq_conv(tmp_path / "qdq.onnx"), trt_version="10")
    assert report.findings == (), report.format()
    assert check_readiness(tmp_path / "qdq.onnx", trt_version="8.6").ok


def test_non_zero_zero_point_is_an_error_naming_the_node(tmp_path: Path) -> None:
    report = check_readiness(_qdq_conv(tmp_path / "zp.onnx", act_zero=3))
    nodes = sorted(f.node for f in report.findings if f.code == "qdq-zero-point")
    assert nodes == ["act_dq", "act_q"] and not report.ok
    assert "zero point 3 is not 0" in report.errors[0].message


def test_uint8_quantization_is_an_error_naming_the_node(tmp_path: Path) -> None:
    report = check_readiness(_qdq_conv(tmp_path / "u8.onnx", act_zero=0, act_type=np.uint8))
    uint8 = [f for f in report.findings if f.code == "qdq-uint8"]
    assert sorted(f.node for f in uint8) == ["act_dq", "act_q"]
    assert all(f.severity == "error" and "INT8" in f.message for f in uint8)
    assert "qdq-zero-point" not in _codes(report)


def test_per_channel_weight_scale_off_the_output_channel_axis_is_an_error(
    tmp_path: Path,
) -> None:
    report = check_readiness(_qdq_conv(tmp_path / "axis.onnx", weight_axis=1))
    finding = _only(report, "qdq-weight-axis")
    assert finding.node == "w_dq" and "axis 1" in finding.message and "axis=0" in finding.message


def test_float_conv_weights_in_a_qdq_model_are_a_warning(tmp_path: Path) -> None:
    report = check_readiness(_qdq_conv(tmp_path / "float_w.onnx", quantized_weight=False))
    finding = _only(report, "qdq-weight-not-quantized")
    assert (finding.severity, finding.node, finding.op_type) == ("warning", "conv", "Conv")
    assert report.ok


@pytest.mark.parametrize("after", [None, "Add"])
def test_dequantize_feeding_softmax_is_unfusable_unless_an_int8_layer_made_it(
    tmp_path: Path, after: str | None
) -> None:
    """x -> Q -> DQ -> Softmax is a stranded pair; x + x -> Q -> DQ -> Softmax is the INT8
    output of a fused Add, which TensorRT keeps."""
    nodes = [helper.make_node("Add", ["x", "x"], ["sum"], name="add")] if after else []
    nodes += [
        helper.make_node("QuantizeLinear", ["sum" if after else "x", "s", "zp"], ["q"], name="q"),
        helper.make_node("DequantizeLinear", ["q", "s", "zp"], ["dq"], name="dq_to_softmax"),
        helper.make_node("Softmax", ["dq"], ["y"], name="softmax"),
    ]
    initializers = [_tensor("s", 0.1), _tensor("zp", 0, np.int8)]
    io = ([_value("x", [1, 10])], [_value("y", [1, 10])])
    report = check_readiness(_save(tmp_path / "sm.onnx", nodes, *io, initializers))
    assert report.ok
    if after:
        assert report.findings == (), report.format()
        return
    finding = _only(report, "qdq-unfusable")
    assert (finding.severity, finding.node) == ("warning", "dq_to_softmax")
    assert "Softmax 'softmax'" in finding.message


class _Images:
    """onnxruntime CalibrationDataReader: four random 8x8 single-channel images."""

    def __init__(self) -> None:
        rng = np.random.default_rng(0)
        self._batches = iter([{"input": rng.standard_normal((1, 1, 8, 8), np.float32)}] * 4)

    def get_next(self) -> dict[str, np.ndarray] | None:
        return next(self._batches, None)


@pytest.fixture(scope="module")
def float_classifier(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Conv + Relu + GlobalAveragePool + Flatten + Gemm, batch 1, the deploy tests' model."""
    from tests.deploy.conftest import build_classifier

    return build_classifier(tmp_path_factory.mktemp("ort") / "float.onnx", batch=1)


@pytest.mark.parametrize(
    ("options", "expected"),
    [
        ({}, {"qdq-zero-point", "qdq-dtype"}),  # 1.32 defaults: asymmetric QInt8, INT32 bias
        (
            {"activation_type": QuantType.QUInt8, "weight_type": QuantType.QUInt8},
            {"qdq-uint8", "qdq-zero-point", "qdq-dtype"},
        ),
        ({"extra_options": {"ActivationSymmetric": True}}, {"qdq-dtype"}),  # INT32 bias DQ
        ({"extra_options": {"ActivationSymmetric": True, "QuantizeBias": False}}, set()),
    ],
    ids=["defaults", "quint8", "symmetric", "symmetric-float-bias"],
)
def test_onnxruntime_quantize_static_output(
    float_classifier: Path, tmp_path: Path, options: dict, expected: set[str]
) -> None:
    out = tmp_path / "qdq.onnx"
    quantize_static(
        str(float_classifier), str(out), _Images(), quant_format=QuantFormat.QDQ,
        per_channel=True, **options,
    )  # fmt: skip
    report = check_readiness(out, trt_version="10")
    assert {f.code for f in report.errors} == expected, report.format()
    assert report.ok == (not expected)
    if not expected:  # onnxruntime's default placement builds, but TensorRT cannot fuse it
        assert {f.code for f in report.findings} == {"qdq-before-activation", "qdq-output"}
        assert {f.severity for f in report.findings} == {"warning"}, report.format()


# --- Types, DLA, versions, inputs -----------------------------------------------------------
def test_int64_data_is_flagged_for_8_6_only_and_double_always(tmp_path: Path) -> None:
    nodes = [
        helper.make_node("Gather", ["table", "idx"], ["rows"], name="lookup"),
        helper.make_node("Cast", ["x"], ["x64"], to=TensorProto.DOUBLE, name="to_double"),
    ]
    inits = [
        _tensor("table", np.arange(20).reshape(10, 2), np.int64),
        _tensor("idx", [1], np.int64),
    ]
    io = [_value("x", [1])], [_value("rows", [1, 2], TensorProto.INT64), _value("x64", [1], 11)]
    path = _save(tmp_path / "types.onnx", nodes, *io, inits)
    old, new = check_readiness(path, trt_version="8.6"), check_readiness(path, trt_version="10")
    assert "'table'" in _only(old, "int64-weights").message  # "idx" is an index: fine
    assert "int64-weights" not in _codes(new)
    assert "to_double" in _only(new, "double-tensor").message


def test_dla_flags_ops_it_cannot_run_and_releases_without_dla(tmp_path: Path) -> None:
    node = helper.make_node("Div", ["a", "b"], ["y"], name="divide")
    io = [_value("a", [1, 4]), _value("b", [1, 4])], [_value("y", [1, 4])]
    path = _save(tmp_path / "div.onnx", [node], *io)
    jetpack6 = check_readiness(path, trt_version="10.3", dla=True)
    assert _only(jetpack6, "dla-unsupported-op").node == "divide" and jetpack6.ok
    assert "dla-unavailable" not in _codes(jetpack6)
    no_dla = check_readiness(path, trt_version="11.1", dla=True)
    assert _only(no_dla, "dla-unavailable").severity == "error"
    assert not {c for c in _codes(check_readiness(path, trt_version="10.3")) if "dla" in c}


def _bf16_conv(path: Path) -> Path:
    """float32 input -> Cast to BF16 -> Conv (BF16 weights) -> Cast to float32, at opset 22."""
    bf16 = TensorProto.BFLOAT16
    nodes = [
        helper.make_node("Cast", ["input"], ["x"], to=bf16, name="to_bf16"),
        helper.make_node("Conv", ["x", "w"], ["y"], name="conv"),
        helper.make_node("Cast", ["y"], ["output"], to=FLOAT, name="to_fp32"),
    ]
    weight = helper.make_tensor("w", bf16, [3, 2, 1, 1], np.linspace(-1, 1, 6).tolist())
    io = [_value("input", [1, 2, 4, 4])], [_value("output", [1, 3, 4, 4])]
    return _save(path, nodes, *io, [weight], opset=22)


def test_bf16_graph_is_clean_on_11_and_refused_where_tensorrt_has_no_bf16(tmp_path: Path) -> None:
    path = _bf16_conv(tmp_path / "conv.bf16.onnx")
    assert check_readiness(path, trt_version="11").findings == ()
    old = _only(check_readiness(path, trt_version="8.6"), "bf16-unsupported")
    assert old.severity == "error" and "9.0 added it" in old.message
    dla = check_readiness(path, trt_version="10.3", dla=True)
    assert _only(dla, "dla-bf16").severity == "warning"
    # opset 22 is newer than 10.3 documents; "export with opset 20" would lose bfloat16 Conv.
    too_new = _only(check_readiness(path, trt_version="10.3"), "opset-too-new").message
    assert "BF16 builder flag" in too_new and "export with opset 20" not in too_new


def test_fp32_graph_on_11_points_at_the_fp16_and_bf16_files(tmp_path: Path) -> None:
    node = helper.make_node("Relu", ["x"], ["y"])
    path = _save(tmp_path / "relu.onnx", [node], [_value("x", [1])], [_value("y", [1])])
    note = _only(check_readiness(path, trt_version="11"), "strongly-typed-fp32").message
    assert "model.fp16.onnx" in note and "model.bf16.onnx" in note
    assert {
        f.code for f in check_readiness(path, trt_version="11").findings if "bf16" in f.code
    } == set()


@pytest.mark.parametrize("version", ["7", "9.2", "10.99", "8", "banana", "", "12"])
def test_unknown_trt_version_raises_export_config_error(tmp_path: Path, version: str) -> None:
    with pytest.raises(ExportConfigError, match="trt_version"):
        check_readiness(tmp_path / "never-read.onnx", trt_version=version)


@pytest.mark.parametrize(
    "version", ["8.6", "10", "10.x", "10.16", "10.8.0.43", "11", "11.x", "11.5"]
)
def test_known_trt_versions_are_accepted(tmp_path: Path, version: str) -> None:
    node = helper.make_node("Relu", ["x"], ["y"])
    path = _save(tmp_path / "relu.onnx", [node], [_value("x", [1])], [_value("y", [1])])
    assert check_readiness(path, trt_version=version).trt_version == version


def test_missing_and_non_onnx_files_raise_export_input_error(tmp_path: Path) -> None:
    with pytest.raises(ExportInputError, match="not found"):
        check_readiness(tmp_path / "missing.onnx")
    text = tmp_path / "notes.onnx"
    text.write_text("this is a text file, not a protobuf\n")
    with pytest.raises(ExportInputError, match="not an ONNX model"):
        check_readiness(text)


def test_a_model_failing_the_checker_raises_onnx_validation_error(tmp_path: Path) -> None:
    graph = helper.make_graph([helper.make_node("Relu", ["x"], ["y"])], "g", [], [])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    with pytest.raises(OnnxValidationError, match="onnx.checker"):
        check_readiness(model)


def test_report_serialises_to_json_and_formats_one_line_per_finding(dynamic_model: Path) -> None:
    report = check_readiness(dynamic_model, trt_version="11")
    data = json.loads(json.dumps(report.to_dict()))
    assert data["ok"] is True and data["counts"] == {"error": 0, "warning": 2, "info": 1}
    assert data["findings"][0]["code"] == "dynamic-dim-no-profile"
    assert len(report.format().splitlines()) == len(report.findings) == 3
    with pytest.raises(ValueError, match="severity"):
        Finding("fatal", "x", None, None, "bad severity")  # type: ignore[arg-type]


def test_readiness_module_imports_neither_torch_nor_onnxruntime() -> None:
    tree = ast.parse(Path(readiness.__file__).read_text())
    imported = {alias.name.split(".")[0] for n in ast.walk(tree) if isinstance(n, ast.Import)
                for alias in n.names}  # fmt: skip
    imported |= {n.module.split(".")[0] for n in ast.walk(tree)
                 if isinstance(n, ast.ImportFrom) and n.module}  # fmt: skip
    assert not imported & {"torch", "onnxruntime"}
