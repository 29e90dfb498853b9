"""Hostile labelled evaluation files (`deploy bench --data`): images of the wrong size,
channel count or dtype, NaN/Inf, empty arrays, labels out of range, damaged or forged .npz
files, and a model whose scores come out NaN.

Each is a DeployInputError (or a MeasurementError for NaN scores) that names what was
expected and what was found; none is a traceback, an allocation of what a header claims, or
a silently wrong accuracy.
"""

from __future__ import annotations

import contextlib
import io
import re
import zipfile
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from deploy.errors import DeployInputError, MeasurementError
from deploy.evaluate import LabelledData, class_scores, load_labelled
from deploy.results.files import read_results
from deploy.runners.base import Runner, TensorSpec
from tests.deploy.hostile import armed_pickle, run_deploy

FAST = ["--warmup", "0", "--iterations", "2", "--threads", "1"]
IMAGES = np.random.default_rng(0).standard_normal((4, 1, 8, 8)).astype(np.float32)
LABELS = np.array([0, 1, 2, 0])


def _bench_with(arrays: dict[str, np.ndarray], model: Path, folder: Path) -> tuple[int, str]:
    path = folder / "eval.npz"
    np.savez(path, **arrays)
    outcome = run_deploy(["bench", str(model), *FAST, "--data", str(path)], folder)
    return outcome.code, outcome.error_line() if outcome.code else ""


@pytest.mark.parametrize(
    ("images", "labels", "message"),
    [
        (IMAGES[:, :, :4, :4], LABELS, r"are \[1, 4, 4\] per image but the model's input"),
        (np.repeat(IMAGES, 3, axis=1), LABELS, r"are \[3, 8, 8\] per image .* \[1, 8, 8\]"),
        (np.zeros((4, 8, 8), np.float32), LABELS, r"are \[8, 8\] per image .* \[1, 8, 8\]"),
        ((IMAGES * 50).astype(np.uint8), LABELS, "must be floating point .* got uint8"),
        (IMAGES.astype(np.int64), LABELS, "must be floating point .* got int64"),
        (
            np.where(np.arange(256).reshape(4, 1, 8, 8) == 5, np.nan, IMAGES),
            LABELS,
            r"contains NaN or Inf \(1 of 4 images\)",
        ),
        (
            np.where(np.arange(256).reshape(4, 1, 8, 8) > 200, np.inf, IMAGES),
            LABELS,
            r"contains NaN or Inf \(1 of 4 images\)",
        ),
        (IMAGES[:0], LABELS[:0], r"must be N x ... with N >= 1, got shape \(0, 1, 8, 8\)"),
        (IMAGES.reshape(-1), LABELS, r"must be N x ... with N >= 1, got shape \(256,\)"),
        (IMAGES, np.array([0, 1, 2, 7]), "labels go up to 7 but the model scores 3 classes"),
        (IMAGES, np.array([0, -1, 2, 0]), "must be class indices >= 0, got -1"),
        (IMAGES, LABELS.astype(np.float32), "must be a 1-D integer array, got float32"),
        (IMAGES, LABELS.reshape(2, 2), r"must be a 1-D integer array, got int64 \(2, 2\)"),
        (IMAGES, LABELS[:3], "4 images but 3 labels"),
    ],
)
def test_evaluation_data_the_model_cannot_take_is_named(
    images: np.ndarray, labels: np.ndarray, message: str, classifier: Path, tmp_path: Path
) -> None:
    code, line = _bench_with({"images": images, "labels": labels}, classifier, tmp_path)
    assert code == 1
    assert re.search(message, line), line
    assert not (tmp_path / "results").exists()


def test_float64_images_are_accepted_and_cast(classifier: Path, tmp_path: Path) -> None:
    """'any float dtype' (the file format's promise): same accuracy as float32."""
    for dtype in (np.float32, np.float64):
        images = IMAGES.astype(dtype)
        output = tmp_path / f"{np.dtype(dtype).name}.json"
        path = tmp_path / "eval.npz"
        np.savez(path, images=images, labels=LABELS)
        argv = ["bench", str(classifier), *FAST, "--data", str(path), "--output", str(output)]
        assert run_deploy(argv, tmp_path).code == 0
    accuracies = {p.stem: read_results(p).records[0].accuracy for p in tmp_path.glob("*.json")}
    assert len(set(accuracies.values())) == 1, accuracies


def test_a_pickle_named_npz_is_refused_and_not_loaded(classifier: Path, tmp_path: Path) -> None:
    data = armed_pickle(tmp_path / "eval.npz", tmp_path / "MARKER")
    outcome = run_deploy(["bench", str(classifier), *FAST, "--data", str(data)], tmp_path)
    assert outcome.code == 1 and "is not a readable .npz file" in outcome.error_line()
    assert not (tmp_path / "MARKER").exists()


def _npz_bytes(compressed: bool) -> bytes:
    buffer = io.BytesIO()
    (np.savez_compressed if compressed else np.savez)(buffer, images=IMAGES, labels=LABELS)
    return buffer.getvalue()


@settings(max_examples=150, deadline=None, database=None, suppress_health_check=list(HealthCheck))
@given(
    compressed=st.booleans(),
    cut=st.integers(min_value=0, max_value=10_000),
    patches=st.lists(
        st.tuples(st.integers(min_value=0), st.binary(min_size=1, max_size=4)), max_size=3
    ),
)
def test_a_damaged_npz_reads_or_is_refused(
    compressed: bool, cut: int, patches: list, tmp_path_factory: pytest.TempPathFactory
) -> None:
    data = bytearray(_npz_bytes(compressed))
    for offset, chunk in patches:
        offset %= len(data)
        data[offset : offset + len(chunk)] = chunk
    path = tmp_path_factory.mktemp("npz") / "eval.npz"
    path.write_bytes(bytes(data[: max(0, len(data) - cut)]))
    with contextlib.suppress(DeployInputError):
        loaded = load_labelled(path)
        assert loaded.images.dtype.kind == "f" and np.isfinite(loaded.images).all()
        assert loaded.labels.min() >= 0 and len(loaded.labels) == len(loaded.images)


def _forged_npz(path: Path, shape: tuple[int, ...]) -> Path:
    """An .npz whose images header claims `shape` but which holds 64 bytes of data."""
    member = io.BytesIO()
    header = {"descr": "<f4", "fortran_order": False, "shape": shape}
    np.lib.format.write_array_header_1_0(member, header)
    member.write(b"\x00" * 64)
    labels = io.BytesIO()
    np.lib.format.write_array(labels, LABELS)
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("images.npy", member.getvalue())
        archive.writestr("labels.npy", labels.getvalue())
    return path


def test_a_header_claiming_terabytes_is_refused_without_allocating(tmp_path: Path) -> None:
    path = _forged_npz(tmp_path / "forged.npz", (1_000_000_000, 3, 224, 224))
    with pytest.raises(DeployInputError, match=r"declares shape \[1000000000, 3, 224, 224\]"):
        load_labelled(path)
    with pytest.raises(DeployInputError, match="holds 192 bytes; the file is truncated"):
        load_labelled(_forged_npz(tmp_path / "short.npz", (4, 1, 8, 8)))


def test_a_file_larger_than_memory_is_refused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "eval.npz"
    np.savez(path, images=IMAGES, labels=LABELS)
    monkeypatch.setattr("deploy.evaluate.available_memory_bytes", lambda: 512)
    with pytest.raises(DeployInputError, match="1.0 KiB of arrays and 512 bytes of memory"):
        load_labelled(path)


class _NaNScores(Runner):
    """A runner whose model answers NaN for the second batch (an FP16 overflow, say)."""

    backend = "fake"

    def __init__(self) -> None:
        self.calls = 0

    @property
    def input_specs(self) -> list[TensorSpec]:
        return [TensorSpec("input", (None, 1, 8, 8), "float32")]

    def _infer(self, feed: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        self.calls += 1
        scores = np.ones((len(feed["input"]), 3), np.float32)
        if self.calls == 2:
            scores[1, 0] = np.nan
        return {"logits": scores}


def test_nan_scores_are_a_measurement_error_not_an_accuracy() -> None:
    data = LabelledData(images=IMAGES, labels=LABELS)
    with pytest.raises(MeasurementError, match="scores are NaN for 1 of images 2-3"):
        class_scores(_NaNScores(), data, batch_size=2)


def test_a_model_that_takes_integers_is_not_fed_cast_floats() -> None:
    class Uint8Input(_NaNScores):
        @property
        def input_specs(self) -> list[TensorSpec]:
            return [TensorSpec("input", (None, 1, 8, 8), "uint8")]

    data = LabelledData(images=IMAGES, labels=LABELS)
    with pytest.raises(DeployInputError, match="input 'input' is uint8, and evaluation files"):
        class_scores(Uint8Input(), data)
