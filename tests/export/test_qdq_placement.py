"""Q/DQ placement of the INT8 file: "tensorrt" (the default) against "all", on the tiny
residual CNN trained on the digits (an identity and a projection-shortcut residual Add), real
onnxruntime quantization and inference, and the lint's explanation of misplaced pairs."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from onnx import TensorProto, helper, numpy_helper

from deploy.runners import OnnxRuntimeRunner
from export import export_onnx, read_metadata
from export.errors import ExportConfigError, ExportError
from export.quantize import QuantizeConfig, QuantizeResult, quantize_qdq
from export.readiness import check_readiness
from tests.export.test_quantize import train_digits_model

PLACEMENT_CODES = {"qdq-before-activation", "qdq-residual-both-inputs", "qdq-output"}


class Graph:
    """A quantized file's nodes with producers and consumers by tensor name."""

    def __init__(self, path: Path) -> None:
        self.proto = onnx.load(str(path))
        self.nodes = list(self.proto.graph.node)
        self.producer = {out: node for node in self.nodes for out in node.output}
        self.inits = {init.name: init for init in self.proto.graph.initializer}

    def of_type(self, op_type: str) -> list[onnx.NodeProto]:
        return [node for node in self.nodes if node.op_type == op_type]

    def made_by(self, tensor: str) -> str:
        node = self.producer.get(tensor)
        return "initializer" if node is None else node.op_type

    def readers(self, tensor: str) -> list[onnx.NodeProto]:
        return [node for node in self.nodes if tensor in node.input]

    def kernel(self, conv: onnx.NodeProto) -> list[int]:
        """A Conv's kernel size, read from its (int8, dequantized) weight."""
        weight = conv.input[1]
        if weight not in self.inits:
            weight = self.producer[weight].input[0]
        return list(self.inits[weight].dims[2:])

    def before_qdq(self, tensor: str) -> onnx.NodeProto:
        """The node whose output a DQ-fed tensor quantized (DQ <- Q <- that node)."""
        quantize = self.producer[self.producer[tensor].input[0]]
        assert quantize.op_type == "QuantizeLinear"
        return self.producer[quantize.input[0]]


class Digits:
    def __init__(self, folder: Path) -> None:
        model, self.train, self.test, self.labels = train_digits_model()
        self.fp32 = folder / "model.onnx"
        example = torch.from_numpy(self.train[:1])
        export_onnx(model, example, self.fp32, parity_inputs=self.test[:64])

    def quantize(self, out: Path, **options: object) -> QuantizeResult:
        config = QuantizeConfig(**options)
        return quantize_qdq(
            self.fp32, out, self.train, config, eval_images=self.test, eval_labels=self.labels
        )


@pytest.fixture(scope="module")
def digits(tmp_path_factory: pytest.TempPathFactory) -> Digits:
    return Digits(tmp_path_factory.mktemp("digits"))


@pytest.fixture(scope="module")
def placed(digits: Digits, tmp_path_factory: pytest.TempPathFactory) -> dict[str, QuantizeResult]:
    """The default ("tensorrt"), "all", and "tensorrt" with the classifier quantized."""
    folder = tmp_path_factory.mktemp("int8")
    return {
        "tensorrt": digits.quantize(folder / "tensorrt.onnx"),
        "all": digits.quantize(folder / "all.onnx", qdq_placement="all"),
        "classifier": digits.quantize(folder / "classifier.onnx", quantize_classifier=True),
    }


def test_tensorrt_is_the_default_and_is_recorded(placed: dict[str, QuantizeResult]) -> None:
    result = placed["tensorrt"]
    assert QuantizeConfig().qdq_placement == "tensorrt" and result.qdq_placement == "tensorrt"
    written = read_metadata(result.path)
    assert written["quantization.qdq_placement"] == "tensorrt"
    assert written["quantization.classifier"] == f"float ({result.float_classifier})"
    assert read_metadata(placed["all"].path)["quantization.classifier"] == "int8"


def test_no_pair_between_a_layer_and_its_activation(placed: dict[str, QuantizeResult]) -> None:
    graph = Graph(placed["tensorrt"].path)
    relus = graph.of_type("Relu")
    assert len(relus) == 5  # stem, two conv1s, two residual Adds
    assert {graph.made_by(relu.input[0]) for relu in relus} == {"Conv", "Add"}
    for quantize in graph.of_type("QuantizeLinear"):  # no output is quantized, but one:
        if graph.made_by(quantize.input[0]) == "Conv":  # the projection shortcut's, for its Add
            dequantize = graph.readers(quantize.output[0])
            assert [n.op_type for r in dequantize for n in graph.readers(r.output[0])] == ["Add"]
    for conv in graph.of_type("Conv"):  # weights and activations quantized at every Conv
        assert graph.made_by(conv.input[0]) == graph.made_by(conv.input[1]) == "DequantizeLinear"


def test_each_residual_add_quantizes_only_its_shortcut(placed: dict[str, QuantizeResult]) -> None:
    graph = Graph(placed["tensorrt"].path)
    adds = graph.of_type("Add")
    assert len(adds) == 2
    identity, projection = adds
    for add in adds:  # the convolution branch in float: TensorRT fuses the Add into it
        assert sorted(graph.made_by(name) for name in add.input) == ["Conv", "DequantizeLinear"]
    shortcut = next(name for name in identity.input if graph.made_by(name) == "DequantizeLinear")
    assert graph.before_qdq(shortcut).op_type == "Relu"  # the block's input: the stem's ReLU
    shortcut = next(name for name in projection.input if graph.made_by(name) == "DequantizeLinear")
    conv = graph.before_qdq(shortcut)  # the 1x1 shortcut conv, not the 3x3 main branch
    assert conv.op_type == "Conv" and graph.kernel(conv) == [1, 1]
    main = next(name for name in projection.input if graph.made_by(name) == "Conv")
    assert graph.kernel(graph.producer[main]) == [3, 3]


def test_classifier_in_float_by_default_and_int8_on_request(
    placed: dict[str, QuantizeResult],
) -> None:
    floating, quantized = Graph(placed["tensorrt"].path), Graph(placed["classifier"].path)
    (gemm,) = floating.of_type("Gemm")
    assert placed["tensorrt"].float_classifier == gemm.name
    assert [floating.made_by(name) for name in gemm.input] == ["Reshape"] + ["initializer"] * 2
    (gemm,) = quantized.of_type("Gemm")
    assert placed["classifier"].float_classifier is None
    assert [quantized.made_by(name) for name in gemm.input[:2]] == ["DequantizeLinear"] * 2
    assert quantized.made_by(quantized.proto.graph.output[0].name) == "Gemm"  # output in float


def test_counts_per_op_type(placed: dict[str, QuantizeResult]) -> None:
    """tensorrt: 5 activations into Convs (stem input, 2 block inputs, 2 mid-block), the
    shared block-1 input also into its Add, the shortcut conv's output into the other Add,
    6 int8 weights. all: also each Conv/Add/Gemm output, both Add inputs, the Gemm."""
    expected = {
        "tensorrt": (6, 12, {"Add": (2, 2), "Conv": (5, 11)}),
        "classifier": (7, 14, {"Add": (2, 2), "Conv": (5, 11), "Gemm": (1, 2)}),
        "all": (15, 22, {"(output)": (1, 1), "Add": (4, 4), "Conv": (5, 11), "Gemm": (1, 2),
                         "Relu": (5, 5)}),
    }  # fmt: skip
    for name, result in placed.items():
        graph = Graph(result.path)
        counts = result.qdq_counts
        quantize, dequantize = (
            len(graph.of_type("QuantizeLinear")),
            len(graph.of_type("DequantizeLinear")),
        )
        assert (counts.quantize, counts.dequantize) == (quantize, dequantize)
        assert quantize + dequantize == result.qdq_nodes
        q, dq, by_type = expected[name]
        assert (counts.quantize, counts.dequantize) == (q, dq), name
        assert counts.by_op_type == {op: {"Q": a, "DQ": b} for op, (a, b) in by_type.items()}
        assert read_metadata(result.path)["quantization.qdq_counts"].startswith('{"DQ": ')


def test_all_quantizes_every_input_and_output_as_before(placed: dict[str, QuantizeResult]) -> None:
    """Config version 1's placement: each Conv/Gemm/Add output is read by a QuantizeLinear
    and each of their activation inputs comes from a DequantizeLinear."""
    graph = Graph(placed["all"].path)
    for node in graph.nodes:
        if node.op_type in ("Conv", "Gemm", "Add"):
            assert [r.op_type for r in graph.readers(node.output[0])] == ["QuantizeLinear"]
            activations = node.input[:1] if node.op_type != "Add" else node.input
            assert {graph.made_by(name) for name in activations} == {"DequantizeLinear"}


@pytest.mark.parametrize("placement", ["tensorrt", "all", "classifier"])
def test_onnxruntime_runs_it_close_to_fp32(
    placed: dict[str, QuantizeResult], digits: Digits, placement: str
) -> None:
    result = placed[placement]
    assert result.fp32_top1 > 0.9 and abs(result.int8_top1 - result.fp32_top1) <= 0.01
    assert result.top1_agreement >= 0.98 and result.max_abs_diff < 2.0
    assert 0.0 <= result.int8_top1_onnxruntime <= 1.0  # onnxruntime's own int8 kernels ran it
    with OnnxRuntimeRunner(digits.fp32) as fp32, OnnxRuntimeRunner(result.path) as int8:
        reference = fp32.infer({"input": digits.test[:7]})["logits"]
        logits = int8.infer({"input": digits.test[:7]})["logits"]
    assert logits.shape == (7, 10) and np.all(np.isfinite(logits))
    assert np.max(np.abs(logits - reference)) < 0.25 * np.max(np.abs(reference))


def test_lint_explains_the_pairs_of_all_and_is_clean_on_tensorrt(
    placed: dict[str, QuantizeResult],
) -> None:
    report = check_readiness(placed["all"].path, trt_version="10")
    placement = [f for f in report.findings if f.code in PLACEMENT_CODES]
    assert report.ok and {f.severity for f in placement} == {"warning"}  # it still builds
    by_code = {code: [f for f in placement if f.code == code] for code in PLACEMENT_CODES}
    assert len(by_code["qdq-before-activation"]) == 5  # one per ReLU
    assert len(by_code["qdq-residual-both-inputs"]) == 2  # one per Add
    assert len(by_code["qdq-output"]) == 1  # the logits
    graph = Graph(placed["all"].path)
    names = {node.name for node in graph.nodes}
    for found in placement:
        assert found.node in names
    relu = by_code["qdq-before-activation"][0].message
    assert "Relu '" in relu and "re-quantize" in relu and "reformat" in relu
    add = by_code["qdq-residual-both-inputs"][1]  # the projection block: names its main conv
    named = [conv for conv in graph.of_type("Conv") if f"Conv '{conv.name}'" in add.message]
    assert [graph.kernel(conv) for conv in named] == [[3, 3]] and "shortcut" in add.message
    for result in (placed["tensorrt"], placed["classifier"]):
        report = check_readiness(result.path, trt_version="10")
        assert report.ok and not [f for f in report.findings if f.code.startswith("qdq")], (
            report.format()
        )


@pytest.mark.parametrize(
    ("options", "match"),
    [
        ({"qdq_placement": "TensorRT"},
         r"QuantizeConfig.qdq_placement: must be one of \['tensorrt', 'all'\], got 'TensorRT'"),
        ({"qdq_placement": None}, r"qdq_placement: must be one of \['tensorrt', 'all'\]"),
        ({"quantize_classifier": "no"}, r"quantize_classifier: must be true, false or null"),
    ],
)  # fmt: skip
def test_bad_placement_is_a_config_error_naming_the_choices(options: dict, match: str) -> None:
    with pytest.raises(ExportConfigError, match=match):
        QuantizeConfig(**options)


def test_nothing_left_to_quantize_is_an_error(digits: Digits, tmp_path: Path) -> None:
    with pytest.raises(
        ExportError, match=r"not TensorRT-ready.*'node_linear'.*quantize_classifier"
    ):
        quantize_qdq(digits.fp32, tmp_path / "q.onnx", digits.train[:8], QuantizeConfig(
            op_types=("Gemm",)))  # fmt: skip
    assert list(tmp_path.iterdir()) == []


def _unnamed_matmul_classifier(path: Path) -> Path:
    """Conv -> Relu -> GlobalAveragePool -> Flatten -> MatMul -> Add(bias), no node names."""
    rng = np.random.default_rng(0)
    weights = {
        "w": rng.standard_normal((4, 1, 3, 3)).astype(np.float32),
        "b": rng.standard_normal(4).astype(np.float32),
        "fc": rng.standard_normal((4, 3)).astype(np.float32),
        "fc_bias": rng.standard_normal(3).astype(np.float32),
    }
    nodes = [
        helper.make_node("Conv", ["input", "w", "b"], ["conv"], pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["conv"], ["relu"]),
        helper.make_node("GlobalAveragePool", ["relu"], ["pool"]),
        helper.make_node("Flatten", ["pool"], ["flat"]),
        helper.make_node("MatMul", ["flat", "fc"], ["mm"]),
        helper.make_node("Add", ["mm", "fc_bias"], ["logits"]),
    ]
    graph = helper.make_graph(
        nodes,
        "unnamed",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["batch", 1, 8, 8])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", 3])],
        [numpy_helper.from_array(value, name) for name, value in weights.items()],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    model.ir_version = 9
    onnx.save(model, str(path))
    return path


def test_unnamed_nodes_and_a_matmul_classifier(tmp_path: Path) -> None:
    source = _unnamed_matmul_classifier(tmp_path / "unnamed.onnx")
    images = np.random.default_rng(1).standard_normal((16, 1, 8, 8)).astype(np.float32)
    # No pre-processing: it would fuse MatMul + Add into a Gemm; the bias Add is under test.
    config = QuantizeConfig(preprocess=False)
    result = quantize_qdq(source, tmp_path / "unnamed.int8.onnx", images, config)
    graph = Graph(result.path)
    (matmul,) = graph.of_type("MatMul")
    assert result.float_classifier == matmul.name and matmul.name  # named to be listed
    assert graph.made_by(matmul.input[0]) == "Flatten"  # the classifier left in float
    (conv,) = graph.of_type("Conv")
    assert graph.made_by(conv.input[0]) == graph.made_by(conv.input[1]) == "DequantizeLinear"
    assert graph.made_by(graph.of_type("Relu")[0].input[0]) == "Conv"
    assert result.qdq_counts.by_op_type == {"Conv": {"Q": 1, "DQ": 2}}


@pytest.mark.parametrize("preprocess", [True, False])
def test_all_without_the_classifier_still_quantizes_unnamed_nodes(
    tmp_path: Path, preprocess: bool
) -> None:
    """onnxruntime excludes by name: an unnamed classifier must not exclude every unnamed
    node (before: nothing quantized, or the other layers silently left in float)."""
    source = _unnamed_matmul_classifier(tmp_path / "unnamed.onnx")
    images = np.random.default_rng(1).standard_normal((16, 1, 8, 8)).astype(np.float32)
    config = QuantizeConfig(qdq_placement="all", quantize_classifier=False, preprocess=preprocess)
    result = quantize_qdq(source, tmp_path / "all.int8.onnx", images, config)
    graph = Graph(result.path)
    (conv,) = graph.of_type("Conv")
    assert graph.made_by(conv.input[0]) == graph.made_by(conv.input[1]) == "DequantizeLinear"
    classifier = next(n for n in graph.nodes if n.op_type in ("MatMul", "Gemm"))
    assert result.float_classifier == classifier.name and classifier.name
    assert graph.made_by(classifier.input[0]) == "Flatten"


def _fork(path: Path) -> Path:
    """Conv -> BN -> Relu (r0); Conv -> BN (b1); Add(r0, b1) -> Relu; b1 also feeds another
    Conv: the conv branch of the residual Add is read twice, so nothing fuses into it."""
    rng = np.random.default_rng(0)
    inits = []

    def tensor(name: str, shape: tuple[int, ...], low: float = -0.3, high: float = 0.3) -> str:
        inits.append(
            numpy_helper.from_array(rng.uniform(low, high, shape).astype(np.float32), name)
        )
        return name

    def conv_bn(name: str, x: str, cin: int) -> list[onnx.NodeProto]:
        ranges = {"s": (0.5, 1.5), "b": (-0.2, 0.2), "m": (-0.2, 0.2), "v": (0.5, 1.5)}
        stats = [tensor(f"{name}_{s}", (4,), *r) for s, r in ranges.items()]
        return [
            helper.make_node(
                "Conv",
                [x, tensor(f"{name}_w", (4, cin, 3, 3))],
                [f"{name}_c"],
                name=f"{name}_conv",
                pads=[1] * 4,
            ),  # fmt: skip
            helper.make_node(
                "BatchNormalization", [f"{name}_c", *stats], [f"{name}_out"], name=f"{name}_bn"
            ),  # fmt: skip
        ]

    nodes = [
        *conv_bn("a", "input", 1),
        helper.make_node("Relu", ["a_out"], ["r0"], name="relu0"),
        *conv_bn("b", "r0", 4),
        helper.make_node("Add", ["r0", "b_out"], ["sum"], name="residual"),
        helper.make_node("Relu", ["sum"], ["r1"], name="relu1"),
        helper.make_node(
            "Conv", ["b_out", tensor("o_w", (4, 4, 3, 3))], ["o"], name="other", pads=[1] * 4
        ),  # fmt: skip
        helper.make_node("Add", ["r1", "o"], ["joined"], name="join"),
        helper.make_node("GlobalAveragePool", ["joined"], ["pool"], name="pool"),
        helper.make_node("Flatten", ["pool"], ["flat"], name="flat"),
        helper.make_node(
            "Gemm", ["flat", tensor("fc", (3, 4))], ["logits"], name="fc", transB=1
        ),  # fmt: skip
    ]
    graph = helper.make_graph(
        nodes,
        "fork",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, [1, 1, 8, 8])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, [1, 3])],
        inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    model.ir_version = 9
    onnx.save(model, str(path))
    return path


def test_a_conv_branch_read_twice_keeps_its_pair_and_lints_clean(tmp_path: Path) -> None:
    """The placement is the same with and without batch-norm folding, and the lint does not
    advise removing a pair another layer needs."""
    source = _fork(tmp_path / "fork.onnx")
    images = np.random.default_rng(1).standard_normal((16, 1, 8, 8)).astype(np.float32)
    for preprocess in (True, False):
        out = tmp_path / f"fork.{preprocess}.int8.onnx"
        quantize_qdq(source, out, images, QuantizeConfig(preprocess=preprocess))
        graph = Graph(out)
        residual = next(n for n in graph.nodes if n.name == "residual")
        made_by = [graph.made_by(name) for name in residual.input]
        assert made_by == ["DequantizeLinear", "DequantizeLinear"], (preprocess, made_by)
        codes = {f.code for f in check_readiness(out, trt_version="10").findings}
        assert not codes & PLACEMENT_CODES, (preprocess, codes)
