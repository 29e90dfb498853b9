"""Datasets: digits splits, CIFAR files in their real format, augmentation and batching."""

from __future__ import annotations

import os
import pickle
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import torch
from sklearn.datasets import load_digits

from compressor.data.config import AugmentConfig, DataConfig, default_augment
from compressor.data.splits import augment_batch, iterate_batches, load_data
from compressor.errors import ConfigError, InputError


@pytest.fixture(scope="module")
def dt_digits():
    return load_data(DataConfig())


def _pixels(split, data) -> list[tuple[int, ...]]:
    """Undo normalisation of native-size (8x8) digits back to their 0..16 integer pixels."""
    mean, std = torch.tensor(data.mean), torch.tensor(data.std)
    raw = split.images * std[:, None, None] + mean[:, None, None]
    return [tuple(row) for row in (raw * 16).round().to(torch.int64).flatten(1).tolist()]


def test_digits_splits_use_every_image_exactly_once():
    data = load_data(DataConfig(image_size=8))
    assert len(data.train) + len(data.val) + len(data.test) == 1797
    used = Counter()
    for split in (data.train, data.val, data.test):
        used.update(zip(_pixels(split, data), split.labels.tolist(), strict=True))
    bunch = load_digits()
    expected = Counter(
        (tuple(int(v) for v in img.flatten()), int(y))
        for img, y in zip(bunch.images, bunch.target, strict=True)
    )
    assert used == expected  # same multiset: no image lost, none in two splits


def test_digits_split_sizes_and_stratification(dt_digits):
    assert (len(dt_digits.train), len(dt_digits.val), len(dt_digits.test)) == (1293, 144, 360)
    overall = np.bincount(load_digits().target, minlength=10) / 1797
    for split in (dt_digits.train, dt_digits.val, dt_digits.test):
        share = np.bincount(split.labels.numpy(), minlength=10) / len(split)
        assert np.abs(share - overall).max() < 0.02
    assert dt_digits.num_classes == 10 and dt_digits.class_names == tuple("0123456789")


def test_digits_split_is_deterministic_by_seed(dt_digits):
    again = load_data(DataConfig(seed=0))
    other = load_data(DataConfig(seed=1))
    assert torch.equal(again.val.images, dt_digits.val.images)
    assert torch.equal(again.test.labels, dt_digits.test.labels)
    assert not torch.equal(other.val.labels, dt_digits.val.labels)


@pytest.mark.parametrize("size", [16, 12])
def test_digits_shapes_and_normalisation(size):
    data = load_data(DataConfig(image_size=size))
    for split in (data.train, data.val, data.test):
        assert split.images.shape[1:] == (1, size, size)
        assert split.images.dtype == torch.float32 and split.labels.dtype == torch.int64
    assert (data.image_size, data.in_channels) == (size, 1)
    assert abs(float(data.train.images.mean())) < 1e-4
    assert abs(float(data.train.images.std()) - 1.0) < 1e-3


def test_native_digits_size_is_16_and_limit_train_subsamples(dt_digits):
    assert dt_digits.image_size == 16 and dt_digits.augment == default_augment("digits")
    small = load_data(DataConfig(limit_train=100))
    assert len(small.train) == 100 and len(small.val) == len(dt_digits.val)


def test_default_augmentation_per_dataset():
    assert default_augment("digits") == AugmentConfig(crop_padding=1, hflip=False)
    assert default_augment("cifar10") == AugmentConfig(crop_padding=4, hflip=True)
    assert default_augment("cifar100") == AugmentConfig(crop_padding=4, hflip=True)


# --- CIFAR in the dataset's own "python version" format -------------------------------------


def _dump(path: Path, obj: dict, *, numpy1_globals: bool = False) -> None:
    """Pickle like the official files; optionally with numpy 1.x module names as they have."""
    blob = pickle.dumps(obj, protocol=2)
    if numpy1_globals:
        blob = blob.replace(b"cnumpy._core.multiarray\n", b"cnumpy.core.multiarray\n")
    path.write_bytes(blob)


def _images(n: int, offset: int) -> np.ndarray:
    return ((np.arange(n * 3072).reshape(n, 3072) + offset) % 256).astype(np.uint8)


def _write_cifar10(root: Path, per_batch: int = 20, n_test: int = 10) -> Path:
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    for i in range(1, 6):
        labels = [(j + i) % 10 for j in range(per_batch)]
        _dump(
            folder / f"data_batch_{i}",
            {b"data": _images(per_batch, i), b"labels": labels, b"batch_label": b"training batch"},
            numpy1_globals=i == 1,
        )
    _dump(
        folder / "test_batch",
        {b"data": _images(n_test, 0), b"labels": [j % 10 for j in range(n_test)]},
    )
    names = [
        b"airplane",
        b"automobile",
        b"bird",
        b"cat",
        b"deer",
        b"dog",
        b"frog",
        b"horse",
        b"ship",
        b"truck",
    ]
    _dump(folder / "batches.meta", {b"label_names": names, b"num_cases_per_batch": per_batch})
    return folder


def _write_cifar100(root: Path, n_train: int = 200, n_test: int = 50) -> Path:
    folder = root / "cifar-100-python"
    folder.mkdir(parents=True)
    for name, n in (("train", n_train), ("test", n_test)):
        fine = [j % 100 for j in range(n)]
        _dump(
            folder / name,
            {
                b"data": _images(n, 7),
                b"fine_labels": fine,
                b"coarse_labels": [f // 5 for f in fine],
            },
        )
    _dump(
        folder / "meta",
        {
            b"fine_label_names": [f"class{i}".encode() for i in range(100)],
            b"coarse_label_names": [f"super{i}".encode() for i in range(20)],
        },
    )
    return folder


@pytest.mark.parametrize("point_at", ["parent", "folder"])
def test_cifar10_loads_from_real_format(tmp_path, point_at):
    folder = _write_cifar10(tmp_path)
    root = tmp_path if point_at == "parent" else folder
    data = load_data(DataConfig(name="cifar10", root=str(root), val_fraction=0.2))
    assert (len(data.train), len(data.val), len(data.test)) == (80, 20, 10)
    assert data.train.images.shape[1:] == (3, 32, 32) and data.image_size == 32
    assert data.num_classes == 10 and data.class_names[0] == "airplane"
    assert data.in_channels == 3 and len(data.mean) == 3
    written = Counter((j + i) % 10 for i in range(1, 6) for j in range(20))
    assert Counter(data.train.labels.tolist() + data.val.labels.tolist()) == written
    assert data.test.labels.tolist() == [j % 10 for j in range(10)]
    # the official row layout is 1024 red, then green, then blue values, each row-major
    mean, std = torch.tensor(data.mean), torch.tensor(data.std)
    raw = (data.test.images[0] * std[:, None, None] + mean[:, None, None]) * 255
    expected = torch.from_numpy(_images(1, 0).reshape(3, 32, 32).astype(np.float32))
    assert torch.allclose(raw, expected, atol=1e-2)
    assert data.augment == AugmentConfig(crop_padding=4, hflip=True)


def test_cifar100_loads_fine_labels_and_resizes(tmp_path):
    _write_cifar100(tmp_path)
    data = load_data(
        DataConfig(name="cifar100", root=str(tmp_path), val_fraction=0.5, image_size=16)
    )
    assert (len(data.train), len(data.val), len(data.test)) == (100, 100, 50)
    assert data.num_classes == 100 and data.class_names[99] == "class99"
    assert data.test.images.shape == (50, 3, 16, 16)
    assert sorted(data.train.labels.tolist()) == list(range(100))  # stratified: one per class


def test_cifar_missing_directory_names_the_expected_files(tmp_path):
    with pytest.raises(InputError, match="does not exist") as info:
        load_data(DataConfig(name="cifar10", root=str(tmp_path / "nowhere")))
    for name in ("data_batch_1", "data_batch_5", "test_batch", "batches.meta", "python version"):
        assert name in str(info.value)
    with pytest.raises(InputError, match="data.root is required"):
        load_data(DataConfig(name="cifar100"))


def test_cifar_missing_files_are_named(tmp_path):
    folder = _write_cifar10(tmp_path)
    (folder / "data_batch_3").unlink()
    (folder / "batches.meta").unlink()
    with pytest.raises(InputError) as info:
        load_data(DataConfig(name="cifar10", root=str(tmp_path)))
    message = str(info.value)
    assert "missing" in message and "data_batch_3" in message and "batches.meta" in message
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(InputError, match="train, test, meta"):
        load_data(DataConfig(name="cifar100", root=str(empty)))


def test_corrupt_or_hostile_cifar_files_are_input_errors(tmp_path):
    folder = _write_cifar10(tmp_path)
    (folder / "test_batch").write_bytes(b"not a pickle at all")
    with pytest.raises(InputError, match="test_batch"):
        load_data(DataConfig(name="cifar10", root=str(tmp_path)))
    # a pickle that would call a function on load is refused, not executed
    (folder / "test_batch").write_bytes(pickle.dumps({b"data": os.getcwd}, protocol=2))
    with pytest.raises(InputError, match="refusing"):
        load_data(DataConfig(name="cifar10", root=str(tmp_path)))
    _dump(folder / "test_batch", {b"data": np.zeros((3, 100), np.uint8), b"labels": [0, 1, 2]})
    with pytest.raises(InputError, match="3072"):
        load_data(DataConfig(name="cifar10", root=str(tmp_path)))


# --- configs ----------------------------------------------------------------------------------


def test_config_round_trips_and_rejects_unknown_keys():
    config = DataConfig(
        name="cifar10",
        root="/data",
        image_size=24,
        seed=3,
        augment=AugmentConfig(crop_padding=2, hflip=False),
    )
    assert DataConfig.from_dict(config.to_dict()) == config
    with pytest.raises(ConfigError, match="data.nmae"):
        DataConfig.from_dict({"nmae": "digits"})
    with pytest.raises(ConfigError, match="augment.flip"):
        DataConfig.from_dict({"augment": {"crop_padding": 1, "flip": True}})
    with pytest.raises(ConfigError, match="augment.hflip is required"):
        DataConfig.from_dict({"augment": {"crop_padding": 1}})


@pytest.mark.parametrize(
    "bad, field",
    [
        ({"name": "mnist"}, "data.name"),
        ({"val_fraction": 1.5}, "data.val_fraction"),
        ({"test_fraction": 0}, "data.test_fraction"),
        ({"image_size": 2}, "data.image_size"),
        ({"limit_train": 0}, "data.limit_train"),
        ({"seed": True}, "data.seed"),
        ({"augment": {"crop_padding": -1, "hflip": True}}, "augment.crop_padding"),
    ],
)
def test_invalid_values_name_the_field(bad, field):
    with pytest.raises(ConfigError, match=field):
        DataConfig.from_dict(bad)


# --- augmentation and batching ----------------------------------------------------------------


def test_augment_keeps_shape_and_is_deterministic_by_generator(dt_digits):
    images = dt_digits.train.images[:64]
    config = AugmentConfig(crop_padding=2, hflip=True)
    first = augment_batch(images, config, torch.Generator().manual_seed(5))
    second = augment_batch(images, config, torch.Generator().manual_seed(5))
    other = augment_batch(images, config, torch.Generator().manual_seed(6))
    assert first.shape == images.shape
    assert torch.equal(first, second) and not torch.equal(first, other)


def test_hflip_flips_about_half_and_nothing_else():
    images = torch.randn(200, 3, 5, 7)
    out = augment_batch(
        images, AugmentConfig(crop_padding=0, hflip=True), torch.Generator().manual_seed(0)
    )
    flipped = [torch.equal(o, i.flip(-1)) for o, i in zip(out, images, strict=True)]
    kept = [torch.equal(o, i) for o, i in zip(out, images, strict=True)]
    assert all(f or k for f, k in zip(flipped, kept, strict=True))
    assert 60 < sum(flipped) < 140


def test_crop_is_a_shifted_window_of_the_zero_padded_image():
    images = torch.randn(16, 2, 6, 6)
    out = augment_batch(
        images, AugmentConfig(crop_padding=2, hflip=False), torch.Generator().manual_seed(1)
    )
    padded = torch.nn.functional.pad(images, (2, 2, 2, 2))
    for o, p in zip(out, padded, strict=True):
        windows = [p[:, y : y + 6, x : x + 6] for y in range(5) for x in range(5)]
        assert any(torch.equal(o, w) for w in windows)
    assert not torch.equal(out, images)  # some sample moved


def test_iterate_batches_covers_each_sample_once(dt_digits):
    split = dt_digits.val
    seen = [
        y
        for _, labels in iterate_batches(
            split, 50, shuffle=True, generator=torch.Generator().manual_seed(0)
        )
        for y in labels.tolist()
    ]
    assert sorted(seen) == sorted(split.labels.tolist())
    ordered = torch.cat([x for x, _ in iterate_batches(split, 50, shuffle=False)])
    assert torch.equal(ordered, split.images)
    sizes = [len(y) for _, y in iterate_batches(split, 50, shuffle=False, drop_last=True)]
    assert sizes == [50, 50]
