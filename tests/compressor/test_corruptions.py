"""CIFAR-10-C style corruptions: each corruption x severity, the published files, tables."""

from __future__ import annotations

import colorsys
import io
import pickle

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from compressor.data.config import DataConfig
from compressor.data.corruptions import (
    CORRUPTIONS,
    PARAMETERS,
    SEVERITIES,
    corrupt,
    corruption_table,
    load_cifar10c,
    mean_corruption_accuracy,
)
from compressor.data.splits import load_data
from compressor.errors import ConfigError, InputError

NOISES = ("gaussian_noise", "shot_noise", "impulse_noise")


def _normalise(pixels, mean, std):
    return (pixels - torch.tensor(mean)[:, None, None]) / torch.tensor(std)[:, None, None]


def _pixels(images, mean, std):
    return images * torch.tensor(std)[:, None, None] + torch.tensor(mean)[:, None, None]


@pytest.fixture(scope="module")
def batches():
    """Natural-looking images: 48 digits (1 channel, 16x16), 12 smooth RGB images (32x32)."""
    digits = load_data(DataConfig(limit_train=60))
    smooth = torch.rand(12, 3, 5, 5, generator=torch.Generator().manual_seed(1))
    smooth = F.interpolate(smooth, size=(32, 32), mode="bilinear", align_corners=False)
    rgb_mean, rgb_std = (0.5, 0.45, 0.4), (0.25, 0.3, 0.2)
    return {
        "digits": (digits.test.images[:48], digits.mean, digits.std),
        "rgb": (_normalise(smooth, rgb_mean, rgb_std), rgb_mean, rgb_std),
    }


@pytest.fixture(scope="module")
def corrupted(batches):
    """Every batch x corruption x severity, computed once (seed 0)."""
    return {
        (batch, name, severity): corrupt(images, name, severity, mean=mean, std=std, seed=0)
        for batch, (images, mean, std) in batches.items()
        for name in CORRUPTIONS
        for severity in SEVERITIES
    }


def _mean_change(batches, corrupted, batch, name, severity) -> float:
    images, mean, std = batches[batch]
    before = _pixels(images, mean, std)
    after = _pixels(corrupted[batch, name, severity], mean, std)
    return float((after - before).abs().mean())


def test_registry_and_parameters_agree():
    assert set(CORRUPTIONS) == set(PARAMETERS)
    assert all(len(values) == len(SEVERITIES) for values in PARAMETERS.values())
    assert SEVERITIES == (1, 2, 3, 4, 5)


@pytest.mark.parametrize("batch", ["digits", "rgb"])
@pytest.mark.parametrize("name", list(CORRUPTIONS))
def test_corruption_keeps_shape_dtype_and_pixel_range_and_changes_images(
    batches, corrupted, batch, name
):
    images, mean, std = batches[batch]
    for severity in SEVERITIES:
        out = corrupted[batch, name, severity]
        assert out.shape == images.shape and out.dtype == images.dtype
        pixels = _pixels(out, mean, std)
        assert pixels.min() >= -1e-5 and pixels.max() <= 1 + 1e-5, (name, severity)
        assert _mean_change(batches, corrupted, batch, name, severity) > 1e-4, (name, severity)


@pytest.mark.parametrize("batch", ["digits", "rgb"])
@pytest.mark.parametrize("name", list(CORRUPTIONS))
def test_severity_is_monotone(batches, corrupted, batch, name):
    """Mean absolute pixel change grows strictly from severity 1 to 5, for every corruption."""
    changes = [_mean_change(batches, corrupted, batch, name, s) for s in SEVERITIES]
    assert all(a < b for a, b in zip(changes, changes[1:], strict=False)), changes


@pytest.mark.parametrize("name", list(CORRUPTIONS))
def test_same_seed_same_output_and_noise_differs_across_seeds(batches, corrupted, name):
    images, mean, std = batches["rgb"]
    again = corrupt(images, name, 3, mean=mean, std=std, seed=0)
    assert torch.equal(again, corrupted["rgb", name, 3])
    other = corrupt(images, name, 3, mean=mean, std=std, seed=1)
    assert torch.equal(other, again) is (name not in NOISES)  # the rest use no random numbers


@pytest.mark.parametrize("shape", [(2, 2, 9, 13), (1, 1, 2, 3), (3, 3, 8, 8)])
@pytest.mark.parametrize("name", list(CORRUPTIONS))
def test_any_image_size_and_channel_count(name, shape):
    pixels = torch.rand(shape, generator=torch.Generator().manual_seed(2))
    mean, std = (0.5,) * shape[1], (0.3,) * shape[1]
    out = corrupt(_normalise(pixels, mean, std), name, 5, mean=mean, std=std, seed=0)
    assert out.shape == shape and torch.isfinite(out).all()


def test_gaussian_and_impulse_noise_follow_the_paper_parameters():
    grey = torch.full((4, 3, 32, 32), 0.5)
    mean, std = (0.0,) * 3, (1.0,) * 3
    noisy = corrupt(grey, "gaussian_noise", 5, mean=mean, std=std, seed=0)
    assert abs(float((noisy - grey).std()) - 0.10) < 0.005
    impulses = corrupt(grey, "impulse_noise", 5, mean=mean, std=std, seed=0)
    changed = impulses != grey
    assert abs(float(changed.float().mean()) - 0.07) < 0.01  # per value, as skimage's s&p
    assert set(impulses[changed].unique().tolist()) == {0.0, 1.0}
    shots = corrupt(grey, "shot_noise", 1, mean=mean, std=std, seed=0)
    assert torch.allclose(shots * 500, (shots * 500).round(), atol=1e-3)  # Poisson counts / c
    assert abs(float(shots.mean()) - 0.5) < 0.005


def test_brightness_matches_an_hsv_round_trip():
    pixels = torch.tensor([[0.2, 0.5, 0.9], [0.0, 0.0, 0.0], [0.9, 0.95, 0.1], [1.0, 1.0, 1.0]])
    images = pixels.T.reshape(1, 3, 1, 4)
    out = corrupt(images, "brightness", 5, mean=(0.0,) * 3, std=(1.0,) * 3, seed=0)
    for i, rgb in enumerate(pixels.tolist()):
        h, s, v = colorsys.rgb_to_hsv(*rgb)
        expected = colorsys.hsv_to_rgb(h, s, min(v + 0.3, 1.0))
        assert out[0, :, 0, i].tolist() == pytest.approx(expected, abs=1e-6)


def test_contrast_pulls_each_channel_towards_its_image_mean(batches):
    images, mean, std = batches["rgb"]
    out = _pixels(corrupt(images, "contrast", 5, mean=mean, std=std, seed=0), mean, std)
    before = _pixels(images, mean, std)
    centre = before.mean(dim=(2, 3), keepdim=True)
    assert torch.allclose(out, (before - centre) * 0.15 + centre, atol=1e-5)


def test_jpeg_is_a_real_pillow_round_trip_at_the_paper_quality(batches):
    images, mean, std = batches["rgb"]
    out = _pixels(corrupt(images[:1], "jpeg_compression", 5, mean=mean, std=std, seed=0), mean, std)
    uint8 = (_pixels(images[:1], mean, std)[0] * 255).round().to(torch.uint8)
    buffer = io.BytesIO()
    Image.fromarray(uint8.permute(1, 2, 0).numpy()).save(buffer, format="JPEG", quality=40)
    expected = torch.from_numpy(np.array(Image.open(buffer))).permute(2, 0, 1) / 255
    assert torch.allclose(out[0], expected, atol=1e-5)


@pytest.mark.parametrize(
    ("name", "severity", "words"),
    [
        ("fog", 1, "gaussian_noise, shot_noise"),
        ("contrast", 0, "1, 2, 3, 4, 5"),
        ("contrast", 6, "got 6"),
        ("contrast", True, "got True"),
        ("contrast", 2.0, "got 2.0"),
    ],
)
def test_unknown_name_or_severity_is_a_one_line_config_error(batches, name, severity, words):
    images, mean, std = batches["digits"]
    with pytest.raises(ConfigError, match=words) as caught:
        corrupt(images, name, severity, mean=mean, std=std, seed=0)
    assert "\n" not in str(caught.value)


def test_bad_images_or_statistics_are_reported(batches):
    images, mean, std = batches["digits"]
    with pytest.raises(ConfigError, match="one value per channel"):
        corrupt(images, "contrast", 1, mean=(0.5, 0.5, 0.5), std=(0.2,) * 3, seed=0)
    with pytest.raises(InputError, match="not the ones these images were normalised with"):
        corrupt(images, "contrast", 1, mean=(0.0,), std=(1.0,), seed=0)
    with pytest.raises(InputError, match=r"\(N, C, H, W\)"):
        corrupt(images[0], "contrast", 1, mean=mean, std=std, seed=0)
    with pytest.raises(ConfigError, match="seed"):
        corrupt(images, "contrast", 1, mean=mean, std=std, seed=-1)


# --- the published CIFAR-10-C files ------------------------------------------------------------


@pytest.fixture
def fake_cifar10c(tmp_path):
    """The real layout at 4 images per severity: severity s holds images whose pixels are s."""
    images = np.repeat(np.arange(1, 6, dtype=np.uint8), 4)[:, None, None, None]
    images = np.broadcast_to(images, (20, 32, 32, 3)).copy()
    images[:, 0, 0, 0] = np.arange(20)  # tells the images apart
    np.save(tmp_path / "contrast.npy", images)
    np.save(tmp_path / "labels.npy", np.tile(np.arange(4, dtype=np.uint8), 5))
    return tmp_path


def test_load_cifar10c_reads_one_severity_in_the_published_layout(fake_cifar10c):
    images, labels = load_cifar10c(fake_cifar10c, "contrast", 3)
    assert images.shape == (4, 3, 32, 32) and images.dtype == torch.float32
    assert labels.tolist() == [0, 1, 2, 3] and labels.dtype == torch.int64
    assert torch.allclose(images[:, 1], torch.full((4, 32, 32), 3 / 255))
    assert (images[:, 0, 0, 0] * 255).round().tolist() == [8, 9, 10, 11]
    normalised, _ = load_cifar10c(fake_cifar10c, "contrast", 3, mean=(0.5,) * 3, std=(0.25,) * 3)
    assert torch.allclose(normalised, (images - 0.5) / 0.25)


def test_load_cifar10c_reports_missing_or_malformed_files(fake_cifar10c):
    with pytest.raises(InputError, match="brightness.npy is missing"):
        load_cifar10c(fake_cifar10c, "brightness", 1)
    with pytest.raises(InputError, match="does not exist"):
        load_cifar10c(fake_cifar10c / "nowhere", "contrast", 1)
    np.save(fake_cifar10c / "fog.npy", np.zeros((20, 32, 32), dtype=np.uint8))
    with pytest.raises(InputError, match=r"fog\.npy: expected N x H x W x 3 uint8"):
        load_cifar10c(fake_cifar10c, "fog", 1)
    np.save(fake_cifar10c / "snow.npy", np.zeros((19, 32, 32, 3), dtype=np.uint8))
    with pytest.raises(InputError, match="multiple of 5"):
        load_cifar10c(fake_cifar10c, "snow", 1)
    np.save(fake_cifar10c / "frost.npy", np.zeros((10, 32, 32, 3), dtype=np.uint8))
    with pytest.raises(InputError, match=r"labels\.npy: expected 10 integer labels"):
        load_cifar10c(fake_cifar10c, "frost", 1)
    np.save(fake_cifar10c / "pixelate.npy", np.array([{"a": 1}], dtype=object), allow_pickle=True)
    with pytest.raises(InputError, match=r"pixelate\.npy is not a readable \.npy"):
        load_cifar10c(fake_cifar10c, "pixelate", 1)
    (fake_cifar10c / "saturate.npy").write_bytes(pickle.dumps([1, 2]))
    with pytest.raises(InputError, match="saturate.npy"):
        load_cifar10c(fake_cifar10c, "saturate", 1)
    with pytest.raises(ConfigError, match="unknown CIFAR-10-C corruption 'rain'"):
        load_cifar10c(fake_cifar10c, "rain", 1)
    with pytest.raises(ConfigError, match="got 6"):
        load_cifar10c(fake_cifar10c, "contrast", 6)


# --- tables ------------------------------------------------------------------------------------


def test_corruption_table_evaluates_clean_then_every_corruption_and_severity(batches):
    images, mean, std = batches["digits"]
    labels = torch.arange(len(images))
    seen = []

    def mean_pixel(x, y):  # a stand-in for accuracy that tells the inputs apart
        assert torch.equal(y, labels)
        seen.append(x)
        return torch.tensor(float(_pixels(x, mean, std).mean()))

    rows = corruption_table(mean_pixel, images, labels, mean=mean, std=std, severities=(1, 5))
    assert rows[0] == {"corruption": "clean", "severity": 0, "accuracy": mean_pixel(images, labels)}
    assert [(r["corruption"], r["severity"]) for r in rows[1:]] == [
        (name, s) for name in CORRUPTIONS for s in (1, 5)
    ]
    assert all(isinstance(r["accuracy"], float) for r in rows)
    expected = corrupt(images, "brightness", 5, mean=mean, std=std, seed=0)
    assert torch.equal(seen[rows.index(_row(rows, "brightness", 5))], expected)  # row i: call i
    corrupted = [r["accuracy"] for r in rows[1:]]
    assert mean_corruption_accuracy(rows) == pytest.approx(sum(corrupted) / len(corrupted))


def _row(rows, name, severity):
    return next(r for r in rows if r["corruption"] == name and r["severity"] == severity)


def test_corruption_table_checks_names_before_evaluating(batches):
    images, mean, std = batches["digits"]
    calls = []
    with pytest.raises(ConfigError, match="unknown corruption 'rain'"):
        corruption_table(
            calls.append, images, images, mean=mean, std=std, names=["contrast", "rain"]
        )
    assert calls == []
    rows = corruption_table(
        lambda x, y: 1.0, images, images, mean=mean, std=std, names="contrast", severities=[2]
    )
    assert rows == [
        {"corruption": "clean", "severity": 0, "accuracy": 1.0},
        {"corruption": "contrast", "severity": 2, "accuracy": 1.0},
    ]
    with pytest.raises(ConfigError, match="no corrupted rows"):
        mean_corruption_accuracy(rows[:1])
