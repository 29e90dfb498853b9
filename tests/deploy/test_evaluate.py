"""Top-1 accuracy of a real onnxruntime session on labelled evaluation files."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from deploy.errors import DeployInputError
from deploy.evaluate import LabelledData, load_labelled, save_labelled, top1_accuracy
from deploy.runners import OnnxRuntimeRunner


def _images(count: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((count, 1, 8, 8)).astype(np.float32)


def _predictions(model: Path, images: np.ndarray) -> np.ndarray:
    with OnnxRuntimeRunner(model) as runner:
        return runner.infer({"input": images})["logits"].argmax(axis=1)


def test_accuracy_is_the_fraction_of_matching_labels(classifier: Path, tmp_path: Path) -> None:
    images = _images(50)
    labels = _predictions(classifier, images)
    labels[:10] = (labels[:10] + 1) % 3  # 10 of 50 now wrong
    path = save_labelled(tmp_path / "eval.npz", images, labels, ["a", "b", "c"])
    data = load_labelled(path)
    assert data.class_names == ("a", "b", "c") and len(data) == 50
    with OnnxRuntimeRunner(classifier) as runner:
        for batch in (1, 7, 64):  # partial last batches must not change the answer
            result = top1_accuracy(runner, data, batch_size=batch)
            assert result.samples == 50
            assert result.top1 == pytest.approx(0.8)


def test_fixed_batch_model_is_fed_padded_batches(onnx_models: dict[str, Path]) -> None:
    images = _images(5, seed=1)
    labels = _predictions(onnx_models["fixed_batch"], images[:1])
    all_labels = np.concatenate(
        [_predictions(onnx_models["fixed_batch"], images[i : i + 1]) for i in range(5)]
    )
    assert labels[0] == all_labels[0]
    data = LabelledData(images=images, labels=all_labels)
    with OnnxRuntimeRunner(onnx_models["fixed_batch"]) as runner:
        assert top1_accuracy(runner, data, batch_size=32).top1 == 1.0


def test_images_that_do_not_fit_the_model_are_refused(classifier: Path) -> None:
    data = LabelledData(images=_images(4)[:, :, :4, :4], labels=np.zeros(4, dtype=np.int64))
    with (
        OnnxRuntimeRunner(classifier) as runner,
        pytest.raises(DeployInputError, match=r"\[1, 4, 4\] per image .* expects \[1, 8, 8\]"),
    ):
        top1_accuracy(runner, data)


@pytest.mark.parametrize(
    ("arrays", "message"),
    [
        ({"images": np.zeros((2, 1, 8, 8), np.float32)}, r"lacks the arrays \['labels'\]"),
        (
            {"images": np.zeros((2, 1, 8, 8), np.uint8), "labels": np.zeros(2, np.int64)},
            "must be floating point",
        ),
        (
            {"images": np.zeros((2, 1, 8, 8), np.float32), "labels": np.zeros(3, np.int64)},
            "2 images but 3 labels",
        ),
        (
            {"images": np.full((1, 1, 8, 8), np.nan, np.float32), "labels": np.zeros(1, np.int64)},
            "NaN or Inf",
        ),
        (
            {"images": np.zeros((2, 1, 8, 8), np.float32), "labels": np.array([None, 1])},
            "Python objects",
        ),
    ],
)
def test_bad_evaluation_files_name_the_problem(
    tmp_path: Path, arrays: dict[str, np.ndarray], message: str
) -> None:
    path = tmp_path / "bad.npz"
    np.savez(path, **arrays)
    with pytest.raises(DeployInputError, match=message) as info:
        load_labelled(path)
    assert str(path) in str(info.value)


def test_a_file_that_is_not_npz_is_an_input_error(tmp_path: Path) -> None:
    path = tmp_path / "eval.npz"
    path.write_text("not a zip")
    with pytest.raises(DeployInputError, match="not a readable .npz"):
        load_labelled(path)
    with pytest.raises(DeployInputError, match="not found"):
        load_labelled(tmp_path / "absent.npz")


def test_labels_beyond_the_models_classes_are_refused(classifier: Path) -> None:
    data = LabelledData(images=_images(4), labels=np.array([0, 1, 2, 7]))
    with (
        OnnxRuntimeRunner(classifier) as runner,
        pytest.raises(DeployInputError, match="labels go up to 7 but the model scores 3 classes"),
    ):
        top1_accuracy(runner, data)
