"""export_onnx end to end on a tiny residual CNN: file, graph, batch sizes, parity, failures."""

from __future__ import annotations

import copy
import hashlib
from contextlib import nullcontext

import numpy as np
import onnx
import pytest
import torch

from deploy.runners import OnnxRuntimeRunner
from export import (
    ExportConfig,
    ExportConfigError,
    ExportInputError,
    ParityError,
    UnsupportedModelError,
    check_parity,
    export_onnx,
    file_sha256,
    read_metadata,
)
from tests.export.tiny_models import (
    INPUT_SHAPE,
    NUM_CLASSES,
    PARITY_SAMPLES,
    USER_METADATA,
    Exported,
    TinyResNet,
    make_tiny_resnet,
)


def test_exported_file_passes_full_checker_with_symbolic_batch(exported: Exported) -> None:
    path = exported.result.path
    onnx.checker.check_model(str(path), full_check=True)
    model = onnx.load(str(path))
    batch_dim = model.graph.input[0].type.tensor_type.shape.dim[0]
    assert batch_dim.dim_param and not batch_dim.HasField("dim_value")
    assert exported.result.input_shape == (None, *INPUT_SHAPE)
    assert exported.result.output_shape == (None, NUM_CLASSES)
    assert [i.name for i in model.graph.input] == ["input"]
    assert [o.name for o in model.graph.output] == ["logits"]
    assert {imp.version for imp in model.opset_import if imp.domain in ("", "ai.onnx")} == {18}


@pytest.mark.parametrize("batch", [1, 7])
def test_onnxruntime_runs_any_batch_size_and_matches_torch(exported: Exported, batch: int) -> None:
    images = torch.randn(batch, *INPUT_SHAPE)
    with OnnxRuntimeRunner(exported.result.path) as runner:
        logits = runner.infer({"input": images.numpy()})["logits"]
    with torch.inference_mode():
        expected = exported.model(images).numpy()
    assert logits.shape == (batch, NUM_CLASSES)
    np.testing.assert_allclose(logits, expected, atol=1e-4, rtol=0)


def test_parity_over_200_inputs_is_within_tolerance_with_full_top1(exported: Exported) -> None:
    result = exported.result
    assert result.parity_samples == PARITY_SAMPLES
    assert 0 <= result.parity_max_abs_diff <= 1e-4
    assert result.parity_top1_agreement == 1.0


def test_batch_norm_is_folded_and_no_training_ops_remain(exported: Exported) -> None:
    op_types = {node.op_type for node in onnx.load(str(exported.result.path)).graph.node}
    assert "Conv" in op_types and "Add" in op_types and "Gemm" in op_types
    assert not op_types & {"BatchNormalization", "Dropout"}


def test_metadata_holds_user_keys_producer_and_parity(exported: Exported) -> None:
    metadata = read_metadata(exported.result.path)
    assert {key: metadata[key] for key in USER_METADATA} == USER_METADATA
    assert metadata["export.torch_version"] == torch.__version__
    assert metadata["export.opset"] == "18"
    assert "dynamo" in metadata["export.exporter"]
    assert metadata["export.parity_samples"] == str(PARITY_SAMPLES)
    assert float(metadata["export.parity_top1_agreement"]) == 1.0
    assert exported.result.metadata == metadata


def test_result_hash_and_size_describe_the_file_on_disk(exported: Exported) -> None:
    result = exported.result
    data = result.path.read_bytes()
    assert result.sha256 == hashlib.sha256(data).hexdigest() == file_sha256(result.path)
    assert result.size_bytes == len(data)
    as_dict = result.to_dict()
    assert as_dict["path"] == str(result.path) and as_dict["input_shape"][0] is None
    assert result.export_seconds > 0


def test_file_is_self_contained(exported: Exported, tmp_path) -> None:
    assert sorted(p.name for p in exported.folder.iterdir()) == ["model.onnx"]
    model = onnx.load(str(exported.result.path), load_external_data=False)
    assert all(init.data_location == onnx.TensorProto.DEFAULT for init in model.graph.initializer)
    # A copy alone in another folder still runs: nothing points at side files.
    moved = tmp_path / "copy.onnx"
    moved.write_bytes(exported.result.path.read_bytes())
    with OnnxRuntimeRunner(moved) as runner:
        assert runner.infer({"input": np.zeros((2, *INPUT_SHAPE), np.float32)})["logits"].shape == (
            2,
            NUM_CLASSES,
        )


def test_check_parity_returns_the_numbers_for_an_unchanged_model(exported: Exported) -> None:
    max_diff, top1 = check_parity(
        exported.model, exported.result.path, exported.parity_inputs[:20], ExportConfig()
    )
    assert max_diff <= 1e-4 and top1 == 1.0


def test_check_parity_fails_when_torch_weights_changed_after_export(exported: Exported) -> None:
    changed = copy.deepcopy(exported.model)
    with torch.no_grad():
        changed.fc.weight.copy_(torch.randn_like(changed.fc.weight))
    config = ExportConfig()
    with pytest.raises(ParityError) as caught:
        check_parity(changed, exported.result.path, exported.parity_inputs, config)
    message = str(caught.value)
    assert "parity_atol=0.0001" in message and "top-1 agreement" in message
    assert "kept" in message and str(exported.result.path) in message
    assert exported.result.path.is_file()


class ExportSensitiveNet(TinyResNet):
    """Computes something else while being exported: what a parity check exists to catch."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        logits = super().forward(x)
        if torch.compiler.is_exporting():
            logits = logits + 0.5
        return logits


def test_export_raises_parity_error_and_keeps_the_file(tmp_path) -> None:
    model = ExportSensitiveNet()
    model.load_state_dict(make_tiny_resnet().state_dict())
    path = tmp_path / "model.onnx"
    with pytest.raises(ParityError, match=r"max \|onnxruntime - torch\| = 0\.5"):
        export_onnx(model.eval(), torch.randn(4, *INPUT_SHAPE), path)
    assert path.is_file() and "export.parity_samples" not in read_metadata(path)


def test_torchscript_exporter_gives_same_contract_and_restores_model_mode(tmp_path) -> None:
    model = make_tiny_resnet().train()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    result = export_onnx(
        model,
        torch.randn(1, *INPUT_SHAPE),
        tmp_path / "legacy.onnx",
        ExportConfig(exporter="torchscript", opset=17),  # TensorRT 8.5/8.6 read opset <= 17
        parity_inputs=torch.randn(50, *INPUT_SHAPE),
    )
    written = onnx.load(result.path).opset_import
    assert {o.version for o in written if o.domain in ("", "ai.onnx")} == {17}
    assert model.training, "export must give the model back in train mode"
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert result.input_shape == (None, *INPUT_SHAPE)
    assert result.parity_max_abs_diff <= 1e-4 and result.parity_top1_agreement == 1.0
    assert "torchscript" in read_metadata(result.path)["export.exporter"]
    with OnnxRuntimeRunner(result.path) as runner:
        assert (
            runner.infer({"input": np.ones((7, *INPUT_SHAPE), np.float32)})["logits"].shape[0] == 7
        )


def test_dynamo_is_not_asked_for_an_opset_it_does_not_write() -> None:
    with pytest.raises(ExportConfigError, match="use exporter torchscript for opset 17"):
        ExportConfig(opset=17)


def test_static_batch_export_checks_parity_on_a_partial_last_batch(tmp_path) -> None:
    result = export_onnx(
        make_tiny_resnet(),
        torch.randn(4, *INPUT_SHAPE),
        tmp_path / "static.onnx",
        ExportConfig(dynamic_batch=False, exporter="torchscript"),
        parity_inputs=torch.randn(10, *INPUT_SHAPE),  # 4 + 4 + 2 (padded)
    )
    assert result.input_shape == (4, *INPUT_SHAPE)
    assert result.parity_samples == 10 and result.parity_top1_agreement == 1.0


def test_model_torch_cannot_trace_is_an_unsupported_model_error(tmp_path) -> None:
    class DataDependent(torch.nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return x.flatten(1) if x.sum() > 0 else -x.flatten(1)

    with pytest.raises(UnsupportedModelError, match="data-dependent"):
        export_onnx(DataDependent(), torch.randn(1, *INPUT_SHAPE), tmp_path / "m.onnx")
    assert list(tmp_path.iterdir()) == []


def test_float64_parity_inputs_are_rejected_before_exporting(tmp_path) -> None:
    with pytest.raises(ExportInputError, match="float32"):
        export_onnx(
            make_tiny_resnet(),
            torch.randn(1, *INPUT_SHAPE),
            tmp_path / "m.onnx",
            parity_inputs=torch.randn(8, *INPUT_SHAPE, dtype=torch.float64),
        )
    assert not (tmp_path / "m.onnx").exists()


@pytest.mark.parametrize(
    ("metadata", "named"),
    [({"export.opset": "13"}, "export.opset"), ({"class_names": ["cat", "dog"]}, "class_names")],
)
def test_bad_metadata_is_rejected_before_exporting(tmp_path, metadata: dict, named: str) -> None:
    with pytest.raises(ExportInputError, match=named):
        export_onnx(
            make_tiny_resnet(), torch.randn(1, *INPUT_SHAPE), tmp_path / "m.onnx", metadata=metadata
        )
    assert list(tmp_path.iterdir()) == []


class ForcedDropoutNet(torch.nn.Module):
    """Dropout forced on in forward: eval() cannot turn it off, so the export must refuse."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = torch.nn.Conv2d(INPUT_SHAPE[0], 4, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.nn.functional.dropout(self.conv(x), 0.5, training=True).flatten(1)


@pytest.mark.parametrize("exporter", ["dynamo", "torchscript"])
def test_training_mode_ops_are_refused(tmp_path, exporter: str) -> None:
    with (
        (
            pytest.warns(UserWarning, match="train=True")
            if exporter == "torchscript"
            else nullcontext()
        ),
        pytest.raises(UnsupportedModelError, match="training-mode ops"),
    ):
        export_onnx(
            ForcedDropoutNet(),
            torch.randn(2, *INPUT_SHAPE),
            tmp_path / "m.onnx",
            ExportConfig(exporter=exporter),
        )


def test_single_channel_images_with_numpy_style_strides_export(tmp_path) -> None:
    # numpy's images[:, None] (or an NHWC -> NCHW permute) gives the channel axis stride 1;
    # torch.export rejects such an example with a dynamic batch unless it is re-laid out.
    images = torch.randn(5, *INPUT_SHAPE[1:], INPUT_SHAPE[0]).permute(0, 3, 1, 2)
    assert images.stride()[1] == 1
    result = export_onnx(make_tiny_resnet(), images[:1], tmp_path / "m.onnx", parity_inputs=images)
    assert result.input_shape[0] is None and result.parity_top1_agreement == 1.0


def test_file_carries_no_local_source_paths(exported: Exported) -> None:
    # torch's per-node stack traces would name this checkout's files and make the SHA-256
    # depend on where the export ran.
    data = exported.result.path.read_bytes()
    assert b"tiny_models.py" not in data and b"site-packages" not in data
    model = onnx.load(str(exported.result.path))
    assert all(len(node.metadata_props) == 0 for node in model.graph.node)
