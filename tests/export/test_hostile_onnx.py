"""Damaged ONNX files and pickles handed to `export`: the readiness lint (`compressor lint`),
the metadata reader and the FP16/INT8 converters refuse them with export's own errors, in
one line, and never unpickle anything.
"""

from __future__ import annotations

import contextlib
import io
import pickle
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from export.errors import ExportError, ExportInputError, OnnxValidationError
from export.fp16 import convert_fp16
from export.metadata import load_onnx
from export.quantize import quantize_qdq
from export.readiness import check_readiness
from tests.deploy.conftest import build_classifier
from tests.deploy.hostile import armed_pickle, armed_torch_save_archive, damaged_copies


@pytest.fixture(scope="module")
def model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_classifier(tmp_path_factory.mktemp("onnx") / "model.onnx")


def _lint(path: Path) -> tuple[int, str]:
    from compressor.cli import main

    err = io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
        code = main(["lint", str(path)])
    return code, err.getvalue()


@pytest.mark.parametrize(
    "case",
    ["truncated_half", "truncated_to_10_bytes", "bit_flipped", "empty", "text", "zip", "npz"],
)
def test_a_damaged_file_is_refused_by_lint_and_the_metadata_reader(
    case: str, model: Path, tmp_path: Path
) -> None:
    path = damaged_copies(model, tmp_path)[case]
    with pytest.raises(ExportInputError, match="is not an ONNX model"):
        check_readiness(path)
    with pytest.raises(OnnxValidationError, match=r"cannot read .* as an ONNX model|no IR"):
        load_onnx(path)
    code, err = _lint(path)
    assert code != 0 and "Traceback" not in err
    assert err.count("\n") == 1 and err.startswith("compressor: error: ")


@pytest.mark.parametrize("protocol", [0, 2, pickle.HIGHEST_PROTOCOL])
def test_a_pickle_named_onnx_is_never_loaded(protocol: int, model: Path, tmp_path: Path) -> None:
    marker = tmp_path / "MARKER"
    for path in (
        armed_pickle(tmp_path / "model.onnx", marker, protocol),
        armed_torch_save_archive(tmp_path / "weights.onnx", marker),
    ):
        with pytest.raises(ExportInputError, match="pickle.* not an ONNX file.*torch.onnx"):
            check_readiness(path)
        with pytest.raises(OnnxValidationError, match="it is not loaded"):
            load_onnx(path)
        with pytest.raises(ExportInputError, match="pickle"):
            convert_fp16(path, tmp_path / "model.fp16.onnx")
        calibration = np.zeros((2, 1, 8, 8), np.float32)
        with pytest.raises(ExportInputError, match="pickle"):
            quantize_qdq(path, tmp_path / "model.int8.onnx", calibration)
        code, err = _lint(path)
        assert code == 1 and err.count("\n") == 1 and "is a " in err
    assert not marker.exists()
    assert (
        not (tmp_path / "model.fp16.onnx").exists() and not (tmp_path / "model.int8.onnx").exists()
    )


@settings(max_examples=60, deadline=None, database=None, suppress_health_check=list(HealthCheck))
@given(cut=st.integers(min_value=1), flips=st.lists(st.integers(min_value=0), max_size=3))
def test_any_damage_lints_or_is_refused(
    cut: int, flips: list[int], model: Path, tmp_path_factory: pytest.TempPathFactory
) -> None:
    data = bytearray(model.read_bytes())
    for index in flips:
        data[index % len(data)] ^= 0x5A
    path = tmp_path_factory.mktemp("lint") / "model.onnx"
    path.write_bytes(bytes(data[: len(data) - cut % len(data)]))
    with contextlib.suppress(ExportError):
        check_readiness(path)
