"""Any model on any data: `data.channels` on every dataset, and channel mismatches explained.

Real files in the real formats (CIFAR's pickled batches, PNG folders), the real digits, and
models a user would bring: one hard-wired to RGB (as CIFAR code from other projects is), one
to gray, one with a functional first convolution.
"""

from __future__ import annotations

import importlib
import pickle
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

from compressor.data.config import DataConfig
from compressor.data.splits import load_data
from compressor.errors import ConfigError, UnsupportedModelError
from compressor.models.channels import first_layer_channels, luminance_uint8
from compressor.models.source import factory_kwargs
from compressor.recipe.sections import recipe_from_dict
from compressor.workflows.stages import dense_model

# --- data side -------------------------------------------------------------------------------


def _raw(split, data) -> torch.Tensor:
    """Pixels on the 0..1 scale again (normalisation undone)."""
    mean, std = torch.tensor(data.mean), torch.tensor(data.std)
    return split.images * std[:, None, None] + mean[:, None, None]


def test_digits_to_3_channels_replicates_gray_and_mean_std_follow():
    gray = load_data(DataConfig(image_size=16))
    rgb = load_data(DataConfig(image_size=16, channels=3))
    assert rgb.in_channels == 3 and rgb.train.images.shape[1:] == (3, 16, 16)
    assert len(rgb.mean) == len(rgb.std) == 3
    assert rgb.mean[0] == rgb.mean[1] == rgb.mean[2] == pytest.approx(gray.mean[0], rel=1e-6)
    for split_gray, split_rgb in ((gray.train, rgb.train), (gray.test, rgb.test)):
        for c in range(3):  # same images, same split, each channel the gray one
            assert torch.allclose(split_rgb.images[:, c], split_gray.images[:, 0], atol=1e-5)
        assert torch.equal(split_rgb.labels, split_gray.labels)


def test_channels_left_out_of_the_recorded_config_until_set():
    assert "channels" not in DataConfig().to_dict()  # old runs' recipe.json still resumes
    assert DataConfig(channels=3).to_dict()["channels"] == 3
    assert DataConfig.from_dict(DataConfig(channels=3).to_dict()) == DataConfig(channels=3)


def test_luminance_is_pillows_L_conversion_bit_for_bit():
    rgb = np.random.default_rng(0).integers(0, 256, (5, 3, 7, 9), dtype=np.uint8)
    ours = luminance_uint8(rgb)
    for i in range(len(rgb)):
        pillow = np.asarray(Image.fromarray(rgb[i].transpose(1, 2, 0), "RGB").convert("L"))
        assert np.array_equal(ours[i, 0], pillow)


def _write_cifar10(root: Path, per_batch: int = 10) -> tuple[Path, np.ndarray]:
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    rng = np.random.default_rng(1)
    test = rng.integers(0, 256, (per_batch, 3072), dtype=np.uint8)
    for i in range(1, 6):
        data = rng.integers(0, 256, (per_batch, 3072), dtype=np.uint8)
        batch = {b"data": data, b"labels": [j % 10 for j in range(per_batch)]}
        (folder / f"data_batch_{i}").write_bytes(pickle.dumps(batch, protocol=2))
    test_batch = {b"data": test, b"labels": [j % 10 for j in range(per_batch)]}
    (folder / "test_batch").write_bytes(pickle.dumps(test_batch, protocol=2))
    meta = {b"label_names": [f"c{i}".encode() for i in range(10)]}
    (folder / "batches.meta").write_bytes(pickle.dumps(meta, protocol=2))
    return folder, test


def test_cifar_to_gray_matches_a_folder_of_the_same_pngs_read_as_gray(tmp_path):
    folder, test = _write_cifar10(tmp_path)
    gray = load_data(DataConfig(name="cifar10", root=str(folder), channels=1, val_fraction=0.2))
    assert gray.in_channels == 1 and gray.test.images.shape[1:] == (1, 32, 32)
    assert len(gray.mean) == 1
    pictures = test.reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1)
    # The same pictures as PNG files, read by the image-folder loader in gray.
    for i, picture in enumerate(pictures[:4]):
        (tmp_path / "png" / f"c{i % 2}").mkdir(parents=True, exist_ok=True)
        Image.fromarray(picture, "RGB").save(tmp_path / "png" / f"c{i % 2}" / f"{i}.png")
    from compressor.data.imagefolder import read_image

    for i in range(4):
        png = read_image(tmp_path / "png" / f"c{i % 2}" / f"{i}.png", 32, 32, "L")
        ours = (_raw(gray.test, gray)[i, 0] * 255).round().to(torch.uint8).numpy()
        assert np.array_equal(ours, png[0])
    # Gray data needs a 1-value mean; a 3-value one is refused naming the channel count.
    with pytest.raises(ConfigError, match=r"data.mean must be a list of 1 number"):
        DataConfig(name="cifar10", root=str(folder), channels=1, mean=[0.5] * 3, std=[0.2] * 3)


def test_cifar_rgb_by_default_and_back_to_3_from_gray_is_not_needed(tmp_path):
    folder, _ = _write_cifar10(tmp_path)
    rgb = load_data(DataConfig(name="cifar10", root=str(folder), val_fraction=0.2))
    again = load_data(DataConfig(name="cifar10", root=str(folder), val_fraction=0.2, channels=3))
    assert rgb.in_channels == again.in_channels == 3
    assert torch.equal(rgb.train.images, again.train.images)


def test_gray_pngs_as_rgb_folder_replicate_the_gray_channel(tmp_path):
    rng = np.random.default_rng(2)
    for name in ("a", "b"):
        (tmp_path / name).mkdir()
        for i in range(8):
            pixels = rng.integers(0, 256, (10, 10), dtype=np.uint8)
            Image.fromarray(pixels, "L").save(tmp_path / name / f"{i}.png")
    config = DataConfig(
        name="imagefolder",
        root=str(tmp_path),
        image_size=8,
        resize=10,
        val_fraction=0.25,
        test_fraction=0.25,
    )
    data = load_data(config)
    raw = _raw(data.train, data)
    assert data.in_channels == 3
    assert torch.allclose(raw[:, 0], raw[:, 1], atol=1e-6)
    assert torch.allclose(raw[:, 0], raw[:, 2], atol=1e-6)


@pytest.mark.parametrize("bad", [2, 4, True, 3.0, "3"])
def test_channels_other_than_1_or_3_are_refused_for_every_dataset(bad):
    for name in ("digits", "cifar10", "imagefolder"):
        with pytest.raises(ConfigError, match="data.channels must be 1 .grayscale. or 3"):
            DataConfig(name=name, channels=bad)


# --- model side ------------------------------------------------------------------------------

# Models as users bring them: an RGB CIFAR ResNet stem hard-wired to 3 channels, a gray one,
# and a first convolution written with F.conv2d on a raw weight (no nn.Conv module).
USER_MODELS = """
import torch
from torch import nn
import torch.nn.functional as F


def cifar_rgb(num_classes=10):
    return nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
        nn.Linear(8, num_classes),
    )


def gray_only(num_classes=10):
    net = cifar_rgb(num_classes)
    net[0] = nn.Conv2d(1, 8, 3, padding=1)
    return net


def four_channels(num_classes=10):
    net = cifar_rgb(num_classes)
    net[0] = nn.Conv2d(4, 8, 3, padding=1)
    return net


class Functional(nn.Module):
    def __init__(self, num_classes):
        super().__init__()
        self.weight = nn.Parameter(torch.randn(8, 3, 3, 3))
        self.head = nn.Linear(8, num_classes)

    def forward(self, x):
        return self.head(F.conv2d(x, self.weight, padding=1).mean(dim=(2, 3)))


def functional(num_classes=10):
    return Functional(num_classes)


def takes_channels(num_classes=10, in_channels=3):
    net = cifar_rgb(num_classes)
    net[0] = nn.Conv2d(in_channels, 8, 3, padding=1)
    return net


def takes_any(**kwargs):
    return cifar_rgb(**kwargs)
"""


@pytest.fixture(scope="module")
def models_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("user") / "user_models.py"
    path.write_text(USER_MODELS)
    return path


def _dense(models_file: Path, name: str, kwargs: dict | None = None, **data: object):
    recipe = recipe_from_dict(
        {
            "model": {"factory": f"{models_file}:{name}", "kwargs": kwargs or {}},
            "data": {"name": "digits", "image_size": 16, "limit_train": 50, **data},
        }
    )
    return dense_model(recipe, load_data(recipe.data))


@pytest.mark.parametrize(
    ("name", "data", "expected"),
    [
        (
            "cifar_rgb",
            {},
            r"wants 3-channel images \(its first layer 0 takes 3\) but the data gives 1 "
            r"\(digits\); set data.channels: 3 to convert the images$",
        ),
        ("gray_only", {"channels": 3}, r"wants 1-channel .* gives 3 .*set data.channels: 1"),
        ("functional", {}, r"wants 3-channel images but the data gives 1 .*data.channels: 3"),
        ("four_channels", {}, r"wants 4-channel .*data.channels makes 1 or 3 channels only"),
    ],
)
def test_first_layer_mismatch_says_which_side_wants_what_and_the_fix(
    models_file: Path, name: str, data: dict, expected: str
):
    with pytest.raises(UnsupportedModelError, match=expected) as caught:
        _dense(models_file, name, **data)
    assert "\n" not in str(caught.value) and "expected input" not in str(caught.value)


def test_the_fix_the_message_gives_works(models_file: Path):
    model, spec = _dense(models_file, "cifar_rgb", channels=3)
    assert first_layer_channels(model, torch.zeros(1, 3, 16, 16)) == ("0", 3)
    assert spec.kwargs == {"num_classes": 10}


def test_channel_count_goes_only_to_factories_that_name_it(models_file: Path):
    named = factory_kwargs(f"{models_file}:takes_channels", {}, 10, 1)
    assert named == {"num_classes": 10, "in_channels": 1}
    # **kwargs factories (torchvision's builders) get num_classes only, never in_channels.
    assert factory_kwargs(f"{models_file}:takes_any", {}, 10, 1) == {"num_classes": 10}
    assert factory_kwargs(f"{models_file}:cifar_rgb", {}, 10, 1) == {"num_classes": 10}
    model, _ = _dense(models_file, "takes_channels")  # built for the gray digits
    assert first_layer_channels(model, torch.zeros(1, 1, 16, 16)) == ("0", 1)


@pytest.mark.parametrize(
    ("kwargs", "expected"),
    [
        ({"in_channels": 3}, r"model.kwargs.in_channels: 3, but the data gives 1-channel "
                             r"images; set data.channels: 3"),
        ({"in_chans": 4}, r"model.kwargs.in_chans: 4, .*data.channels converts images to 1 or 3"),
        ({"num_classes": 1000}, r"model.kwargs.num_classes: 1000, but the data has 10 classes"),
    ],
)  # fmt: skip
def test_explicit_kwargs_that_contradict_the_data_are_refused(
    models_file: Path, kwargs: dict, expected: str
):
    with pytest.raises(ConfigError, match=expected):
        _dense(models_file, "takes_channels", kwargs)


def test_explicit_kwargs_that_agree_with_the_data_are_kept(models_file: Path):
    model, spec = _dense(models_file, "takes_channels", {"in_channels": 3}, channels=3)
    assert spec.kwargs == {"in_channels": 3, "num_classes": 10}


# --- torchvision and timm, as they really are (the .venv-tv of .ci/run) ----------------------


def _require(name: str) -> None:
    try:
        importlib.import_module(name)
    except (ImportError, RuntimeError) as exc:  # RuntimeError: a build for another torch
        pytest.skip(f"{name} cannot be imported here ({type(exc).__name__}); .ci/run tests it")


@pytest.mark.torchvision
@pytest.mark.parametrize("name", ["resnet18", "mobilenet_v2"])
def test_torchvision_builders_get_num_classes_and_a_gray_hint(name: str):
    _require("torchvision")
    target = f"torchvision.models:{name}"
    assert factory_kwargs(target, {}, 10, 1) == {"num_classes": 10}  # ResNet(in_channels=) fails
    gray = recipe_from_dict(
        {"model": {"factory": target}, "data": {"image_size": 32, "limit_train": 50}}
    )
    with pytest.raises(UnsupportedModelError, match=r"wants 3-channel .* data.channels: 3"):
        dense_model(gray, load_data(gray.data))
    rgb = recipe_from_dict(
        {"model": {"factory": target}, "data": {"image_size": 32, "limit_train": 50, "channels": 3}}
    )
    model, spec = dense_model(rgb, load_data(rgb.data))
    assert spec.kwargs == {"num_classes": 10}


@pytest.mark.torchvision
def test_timm_gets_in_chans_so_gray_digits_need_no_conversion():
    _require("timm")
    kwargs = {"model_name": "resnet18"}
    assert factory_kwargs("timm:create_model", kwargs, 10, 1) == {
        "model_name": "resnet18",
        "num_classes": 10,
        "in_chans": 1,
    }
    recipe = recipe_from_dict(
        {
            "model": {"factory": "timm:create_model", "kwargs": kwargs},
            "data": {"image_size": 32, "limit_train": 50},
        }
    )
    model, _ = dense_model(recipe, load_data(recipe.data))
    assert first_layer_channels(model, torch.zeros(1, 1, 32, 32)) == ("conv1", 1)


def test_first_layer_probe_leaves_the_model_as_it_was():
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4)).train()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    assert first_layer_channels(model, torch.randn(2, 1, 8, 8)) == ("0", 3)
    assert model.training
    assert not model[0]._forward_pre_hooks
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
