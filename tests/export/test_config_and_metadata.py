"""ExportConfig validation and the metadata helpers, on tiny hand-built ONNX files (no torch)."""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

from export import (
    ExportConfig,
    ExportConfigError,
    ExportInputError,
    OnnxValidationError,
    file_sha256,
    read_metadata,
    write_metadata,
)


def test_defaults_match_the_documented_contract() -> None:
    config = ExportConfig()
    assert (config.opset, config.dynamic_batch, config.exporter) == (18, True, "dynamo")
    assert (config.input_name, config.output_name) == ("input", "logits")
    assert (config.parity_atol, config.require_top1_agreement) == (1e-4, 1.0)
    assert config.parity_batch_size == 64


def test_opset_13_is_rejected_naming_opset() -> None:
    with pytest.raises(ExportConfigError, match="opset") as caught:
        ExportConfig(opset=13)
    assert "13" in str(caught.value) and "17" in str(caught.value)
    assert isinstance(caught.value, ValueError)


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("opset", 99),
        ("opset", 18.0),
        ("parity_atol", -1e-6),
        ("parity_atol", float("nan")),
        ("require_top1_agreement", 1.5),
        ("parity_batch_size", 0),
        ("exporter", "tensorflow"),
        ("input_name", ""),
        ("output_name", "input"),
        ("dynamic_batch", "yes"),
    ],
)
def test_invalid_settings_name_their_field(field: str, value: object) -> None:
    with pytest.raises(ExportConfigError, match=f"ExportConfig.{field}"):
        ExportConfig(**{field: value})


def test_config_round_trips_through_a_dict_and_rejects_unknown_keys() -> None:
    config = ExportConfig(opset=17, parity_atol=1e-3, exporter="torchscript")
    assert ExportConfig.from_dict(config.to_dict()) == config
    with pytest.raises(ExportConfigError, match="parity_tol"):
        ExportConfig.from_dict({"opset": 18, "parity_tol": 1e-3})


def _tiny_onnx(path: Path, props: dict[str, str] | None = None) -> Path:
    """input -> Relu -> logits with a symbolic batch: the smallest valid classifier graph."""
    graph = helper.make_graph(
        [helper.make_node("Relu", ["input"], ["logits"])],
        "tiny",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["batch", 10])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", 10])],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    if props:
        helper.set_model_props(model, props)
    onnx.save(model, str(path))
    return path


def test_write_metadata_merges_replaces_and_leaves_no_temp_files(tmp_path: Path) -> None:
    path = _tiny_onnx(tmp_path / "m.onnx", {"accuracy": "0.5", "params": "10"})
    merged = write_metadata(path, {"accuracy": "0.75", "macs": 1234})
    assert merged == {"accuracy": "0.75", "params": "10", "macs": "1234"}
    assert read_metadata(path) == merged
    assert write_metadata(path, {"only": "this"}, replace=True) == {"only": "this"}
    assert read_metadata(path) == {"only": "this"}
    onnx.checker.check_model(str(path), full_check=True)  # still a valid model
    assert [p.name for p in tmp_path.iterdir()] == ["m.onnx"]


def test_non_string_metadata_values_are_rejected_with_the_key(tmp_path: Path) -> None:
    path = _tiny_onnx(tmp_path / "m.onnx")
    with pytest.raises(ExportInputError, match="class_names"):
        write_metadata(path, {"class_names": ["cat", "dog"]})
    assert read_metadata(path) == {}


@pytest.mark.parametrize("damage", ["truncated", "text"])
def test_corrupt_onnx_is_a_validation_error_naming_the_file(tmp_path: Path, damage: str) -> None:
    path = _tiny_onnx(tmp_path / "broken.onnx", {"accuracy": "0.9"})
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2] if damage == "truncated" else b"not an onnx model\n")
    with pytest.raises(OnnxValidationError, match="broken.onnx"):
        read_metadata(path)


def test_missing_file_is_a_validation_error_naming_it(tmp_path: Path) -> None:
    with pytest.raises(OnnxValidationError, match="absent.onnx"):
        read_metadata(tmp_path / "absent.onnx")


def test_file_sha256_is_the_sha256_of_the_bytes(tmp_path: Path) -> None:
    path = tmp_path / "blob.bin"
    path.write_bytes(np.arange(300_000, dtype=np.int32).tobytes())  # spans several chunks
    assert file_sha256(path) == hashlib.sha256(path.read_bytes()).hexdigest()
