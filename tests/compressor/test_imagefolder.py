"""Image folders: real PNG/JPEG/BMP files in torchvision's one-folder-per-class layout."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from compressor.data.config import AugmentConfig, DataConfig
from compressor.data.splits import load_data
from compressor.errors import ConfigError, InputError
from compressor.models.spec import ModelSpec
from compressor.prune.layers import LayerPruneConfig, prune_at_init
from compressor.recipe.sections import Recipe, load_recipe, recipe_from_dict
from tests.compressor import archs

# Sorted class names give the labels: blue 0, green 1, red 2; each class is its colour.
COLOURS = {
    "red": (200, 30, 30),
    "green": (30, 200, 30),
    "blue": (30, 30, 200),
    "purple": (200, 30, 200),
}
CLASSES = ("blue", "green", "red")
SIZES = ((40, 30), (30, 50))  # (width, height): landscape and portrait, so resize/crop matter
FORMATS = ("png", "jpg", "BMP")  # upper case too: extensions are matched case-insensitively


def _write_class(folder: Path, colour: str, count: int, seed: int) -> None:
    folder.mkdir(parents=True)
    rng = np.random.default_rng(seed)
    for i in range(count):
        width, height = SIZES[i % 2]
        noise = rng.integers(-25, 26, size=(height, width, 3))
        pixels = np.clip(np.add(COLOURS[colour], noise), 0, 255).astype(np.uint8)
        Image.fromarray(pixels).save(folder / f"img{i:02d}.{FORMATS[i % 3]}")


def _write_tree(root: Path, count: int = 12, classes=CLASSES, seed: int = 0) -> Path:
    for k, name in enumerate(classes):
        _write_class(root / name, name, count, seed + k)
    return root


@pytest.fixture(scope="module")
def tree(tmp_path_factory) -> Path:
    """3 classes x 12 images, plus files that must be ignored."""
    root = _write_tree(tmp_path_factory.mktemp("tree"))
    (root / "red" / "notes.txt").write_text("not an image")
    (root / "red" / ".hidden.png").write_bytes(b"garbage that would fail if read")
    (root / ".cache").mkdir()  # a hidden folder is not a class
    return root


def _config(root: Path, **kwargs) -> DataConfig:
    return DataConfig(name="imagefolder", root=str(root), image_size=24, **kwargs)


def _pixels(split, data) -> torch.Tensor:
    mean, std = torch.tensor(data.mean), torch.tensor(data.std)
    return split.images * std[:, None, None] + mean[:, None, None]


def test_single_tree_is_split_stratified_with_folder_names_as_classes(tree):
    data = load_data(_config(tree, test_fraction=0.25, val_fraction=0.2))
    assert data.name == "imagefolder" and data.class_names == CLASSES and data.num_classes == 3
    assert (len(data.train), len(data.val), len(data.test)) == (21, 6, 9)
    for split in (data.train, data.val, data.test):
        assert split.images.shape[1:] == (3, 24, 24) and split.images.dtype == torch.float32
        assert torch.bincount(split.labels, minlength=3).tolist() == [len(split) // 3] * 3
        # each image's strongest channel is its class colour: labels follow sorted folder names
        strongest = _pixels(split, data).mean(dim=(2, 3)).argmax(dim=1)
        assert strongest.tolist() == [
            ("red", "green", "blue").index(CLASSES[y]) for y in split.labels.tolist()
        ]
    rows = [
        tuple(x.flatten().tolist()) for s in (data.train, data.val, data.test) for x in s.images
    ]
    assert len(set(rows)) == 36  # every image once, none in two splits


def test_train_statistics_and_default_transform(tree):
    data = load_data(_config(tree))
    assert (data.image_size, data.in_channels, len(data.mean)) == (24, 3, 3)
    assert data.train.images.mean(dim=(0, 2, 3)).abs().max() < 1e-4
    assert (data.train.images.std(dim=(0, 2, 3)) - 1).abs().max() < 1e-3
    assert data.augment == AugmentConfig(crop_padding=3, hflip=True)  # 24 // 8


def test_defaults_are_the_imagenet_eval_transform_at_224(tmp_path):
    config = DataConfig(name="imagefolder", root=str(_write_tree(tmp_path, count=4)))
    assert (config.resolved_image_size, config.resolved_resize) == (224, 256)
    assert config.resolved_augment == AugmentConfig(crop_padding=28, hflip=True)
    data = load_data(
        DataConfig(name="imagefolder", root=config.root, test_fraction=0.5, val_fraction=0.5)
    )
    assert data.train.images.shape == (3, 3, 224, 224) and data.image_size == 224


def _photo_folder(root: Path, count: int) -> Path:
    """CLASSES x `count` RGB photos of 250-300 px, alternately JPEG and PNG, none of them square."""
    rng = np.random.default_rng(0)
    for name in CLASSES:
        (root / name).mkdir(parents=True)
        for i in range(count):
            width, height = rng.integers(250, 301, size=2)
            height += height == width  # never square: the shorter side decides the resize
            noise = rng.integers(-40, 41, size=(height, width, 3))
            pixels = np.clip(np.add(COLOURS[name], noise), 0, 255).astype(np.uint8)
            Image.fromarray(pixels).save(root / name / f"{i}.{('jpg', 'png')[i % 2]}")
    return root


@pytest.mark.slow  # ~1.5 s alone, but 6-28 s when torch's threads share busy cores
def test_a_224_folder_feeds_layer_pruning_of_mobilenet_v2(tmp_path):
    """The ImageNet-sized path end to end, without training: folder -> 224x224 -> ticket."""
    config = DataConfig(
        name="imagefolder",
        root=str(_photo_folder(tmp_path, count=6)),
        image_size=224,
        test_fraction=1 / 3,  # 18 images: 6 test, 3 val, 9 train; every class in every split
        val_fraction=0.25,
    )
    data = load_data(config)
    splits = (data.train, data.val, data.test)
    assert [tuple(s.images.shape) for s in splits] == [(n, 3, 224, 224) for n in (9, 3, 6)]
    assert all(torch.bincount(s.labels).tolist() == [len(s) // 3] * 3 for s in splits)
    classes = data.num_classes
    kwargs = {"width_mult": 0.25, "num_classes": classes}
    spec = ModelSpec(model="mbv2", factory=f"{archs.__file__}:tv_mobilenet_v2", kwargs=kwargs)
    torch.manual_seed(0)
    model = archs.tv_mobilenet_v2(**kwargs)
    prune = LayerPruneConfig(criterion="snip", blocks=2, samples_per_class=2)
    ticket, result = prune_at_init(model, spec, data.train.images, data.train.labels, prune)
    assert len(result.removed) == 2 and result.spec.removed_blocks == result.removed
    assert result.macs_after < result.macs_before
    images = torch.cat([s.images for s in splits])
    with torch.no_grad():
        logits = ticket.eval()(images)
    assert logits.shape == (18, classes) and torch.isfinite(logits).all()


def _ramp_folder(root: Path) -> Path:
    """Classes a and b of 60x30 images whose pixels hold their column index (+100 in b)."""
    for label, name in enumerate(("a", "b")):
        (root / name).mkdir()
        ramp = np.tile(np.arange(60, dtype=np.uint8), (30, 1)) + 100 * label
        for i in range(4):
            Image.fromarray(np.stack([ramp] * 3, axis=-1)).save(root / name / f"{i}.png")
    return root


def _ramp_config(root: Path, **kwargs) -> DataConfig:
    return DataConfig(
        name="imagefolder", root=str(root), test_fraction=0.5, val_fraction=0.5, **kwargs
    )


def test_given_mean_std_and_the_centre_crop_are_applied_exactly(tmp_path):
    mean, std = [0.5, 0.25, 0.0], [0.5, 1.0, 0.125]
    data = load_data(
        _ramp_config(_ramp_folder(tmp_path), image_size=30, resize=30, mean=mean, std=std)
    )
    assert data.mean == tuple(mean) and data.std == tuple(std)
    for image, label in zip(data.test.images, data.test.labels.tolist(), strict=True):
        # the short side is already 30, so no resize; the crop keeps columns 15..44
        raw = torch.arange(15, 45) + 100 * label
        for c in range(3):
            assert torch.allclose(image[c, 0], (raw / 255 - mean[c]) / std[c], atol=1e-6)


def test_shorter_side_is_resized_before_the_centre_crop(tmp_path):
    data = load_data(_ramp_config(_ramp_folder(tmp_path), image_size=15, mean=[0] * 3, std=[1] * 3))
    # 60x30 -> 34x17 (resize = round(15 / 0.875) = 17), crop columns 10..24 of the 34
    columns = (np.arange(10, 25) + 0.5) * 60 / 34 - 0.5  # centres of the output in the input
    for image, label in zip(data.test.images, data.test.labels.tolist(), strict=True):
        expected = torch.from_numpy(columns + 100 * label).float() / 255
        assert torch.allclose(image[0, 7], expected, atol=1.01 / 255)


def test_grayscale_channels_1(tree):
    data = load_data(_config(tree, channels=1))
    assert data.train.images.shape[1:] == (1, 24, 24)
    assert data.in_channels == 1 and len(data.mean) == 1 and len(data.std) == 1


def test_split_is_deterministic_by_seed(tree):
    first, again, other = (load_data(_config(tree, seed=s)) for s in (0, 0, 1))
    assert torch.equal(first.val.images, again.val.images)
    assert torch.equal(first.test.labels, again.test.labels)
    assert not torch.equal(first.val.images, other.val.images)


def test_limit_train_applies_before_decoding_and_the_memory_check(tree):
    full = load_data(_config(tree))
    per_image_gb = 3 * 24 * 24 * 4 / 2**30
    budget = (len(full.val) + len(full.test) + 5.5) * per_image_gb  # too small for all of train
    with pytest.raises(ConfigError, match="36 images"):
        load_data(_config(tree, max_memory_gb=budget))
    small = load_data(_config(tree, limit_train=5, max_memory_gb=budget))
    assert len(small.train) == 5
    assert torch.equal(small.val.labels, full.val.labels) and len(small.test) == len(full.test)


def test_split_folders_are_used_and_missing_test_is_carved_from_train(tmp_path):
    _write_tree(tmp_path / "train", count=8)
    _write_tree(tmp_path / "val", count=2, seed=10)
    _write_tree(tmp_path / "test", count=3, seed=20)
    data = load_data(_config(tmp_path))
    assert (len(data.train), len(data.val), len(data.test)) == (24, 6, 9)
    assert data.class_names == CLASSES and data.val.labels.tolist() == [0, 0, 1, 1, 2, 2]
    shutil.rmtree(tmp_path / "test")
    carved = load_data(_config(tmp_path, test_fraction=0.25))
    assert (len(carved.train), len(carved.val), len(carved.test)) == (18, 6, 6)
    assert torch.bincount(carved.test.labels).tolist() == [2, 2, 2]


def test_train_folder_alone_carves_val_and_test(tmp_path):
    _write_tree(tmp_path / "train", count=10)
    data = load_data(_config(tmp_path, test_fraction=0.2, val_fraction=0.25))
    assert (len(data.train), len(data.val), len(data.test)) == (18, 6, 6)


# --- errors -----------------------------------------------------------------------------------


def test_missing_root_is_named(tmp_path):
    with pytest.raises(InputError, match="nowhere does not exist"):
        load_data(_config(tmp_path / "nowhere"))
    with pytest.raises(InputError, match="data.root is required for imagefolder"):
        load_data(DataConfig(name="imagefolder"))


def test_empty_class_folder_is_named(tmp_path):
    _write_tree(tmp_path, count=3)
    (tmp_path / "purple").mkdir()
    (tmp_path / "purple" / "readme.txt").write_text("no images here")
    with pytest.raises(InputError, match="holds no images") as info:
        load_data(_config(tmp_path))
    assert str(tmp_path / "purple") in str(info.value)


def test_one_class_only_is_refused(tmp_path):
    _write_tree(tmp_path, count=3, classes=("red",))
    with pytest.raises(InputError, match=r"has 1 class folder\(s\) \['red'\]; need at least 2"):
        load_data(_config(tmp_path))


def test_corrupt_image_is_named_in_one_line(tmp_path):
    _write_tree(tmp_path, count=4)
    (tmp_path / "green" / "x.png").write_bytes(b"\x89PNG but not really" * 10)
    with pytest.raises(InputError, match="is not a readable image") as info:
        load_data(_config(tmp_path, test_fraction=0.3, val_fraction=0.3))
    message = str(info.value)
    assert str(tmp_path / "green" / "x.png") in message and "\n" not in message


def test_class_sets_of_split_folders_must_agree(tmp_path):
    _write_tree(tmp_path / "train", count=4)
    _write_tree(tmp_path / "val", count=2, classes=("blue", "green", "purple"))
    with pytest.raises(InputError, match="class folders differ") as info:
        load_data(_config(tmp_path))
    message = str(info.value)
    assert str(tmp_path / "train") in message and str(tmp_path / "val") in message
    assert "lacks ['red']" in message and "extra ['purple']" in message


def test_stray_folder_beside_train_is_refused(tmp_path):
    _write_tree(tmp_path / "train", count=4)
    _write_tree(tmp_path / "validation", count=2)
    with pytest.raises(InputError, match=r"\['validation'\] is not one of train, val, test"):
        load_data(_config(tmp_path))


def test_memory_cap_names_count_size_and_option(tree):
    with pytest.raises(ConfigError) as info:
        load_data(_config(tree, max_memory_gb=1e-6))
    message = str(info.value)
    assert "36 images" in message and "3x24x24" in message and "GiB" in message
    assert "data.max_memory_gb=1e-06" in message and "raise data.max_memory_gb" in message


# --- configs ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "bad, match",
    [
        ({"name": "digits", "resize": 20}, "data.resize applies to imagefolder only"),
        ({"name": "cifar10", "channels": 2}, "data.channels must be 1 .grayscale. or 3"),
        ({"name": "digits", "resize_to": 20}, r"data.resize_to"),
        ({"channels": 2}, "data.channels must be 1 .grayscale. or 3"),
        ({"image_size": 64, "resize": 60}, r"data.resize must be >= data.image_size \(64\)"),
        ({"resize": 2}, "data.resize must be an int >= 4"),
        ({"mean": [0.5, 0.5], "std": [0.2, 0.2]}, "data.mean must be a list of 3 number"),
        ({"mean": [123.7, 116.3, 103.5], "std": [0.2] * 3}, "data.mean is on the 0..1 pixel scale"),
        ({"mean": [0.5] * 3, "std": [0.2, 0.0, 0.2]}, r"data.std .* must be in \(0, 1\]"),
        ({"mean": [0.5] * 3}, "data.mean and data.std go together"),
        ({"max_memory_gb": 0}, "data.max_memory_gb must be a number > 0"),
        ({"max_memory_gb": True}, "data.max_memory_gb must be a number > 0"),
    ],
)
def test_invalid_folder_options_name_the_field(bad, match):
    with pytest.raises(ConfigError, match=match):
        DataConfig.from_dict({"name": "imagefolder", **bad})


def test_mean_std_are_accepted_for_digits_and_channel_counted():
    data = load_data(DataConfig(mean=[0.25], std=[0.5], limit_train=50))
    assert data.mean == (0.25,) and data.std == (0.5,)
    with pytest.raises(ConfigError, match="list of 1 number"):
        DataConfig(mean=[0.5] * 3, std=[0.2] * 3)


def test_config_round_trips_and_old_recipes_are_unchanged():
    config = DataConfig(
        name="imagefolder",
        root="/data",
        image_size=64,
        resize=80,
        channels=1,
        mean=[0.5],
        std=[0.25],
        max_memory_gb=2,
    )
    assert config.mean == (0.5,)  # lists from YAML/JSON become tuples
    assert DataConfig.from_dict(json.loads(json.dumps(config.to_dict()))) == config
    # options at their defaults are left out, so a recipe.json from before them still matches
    assert set(Recipe().to_dict()["data"]) == {
        "name",
        "root",
        "image_size",
        "val_fraction",
        "test_fraction",
        "seed",
        "augment",
        "limit_train",
    }


def test_recipe_yaml_accepts_the_imagefolder_keys(tree, tmp_path):
    path = tmp_path / "recipe.yaml"
    path.write_text(
        "version: 1\n"
        "data:\n"
        "  name: imagefolder\n"
        f"  root: {tree}\n"
        "  image_size: 16\n"
        "  resize: 20\n"
        "  channels: 3\n"
        "  mean: [0.485, 0.456, 0.406]\n"
        "  std: [0.229, 0.224, 0.225]\n"
        "  max_memory_gb: 0.5\n"
        "  limit_train: 9\n"
        "  augment: {crop_padding: 2, hflip: true}\n"
    )
    recipe = load_recipe(path)
    assert recipe.data.resize == 20 and recipe.data.mean == (0.485, 0.456, 0.406)
    assert recipe_from_dict(json.loads(json.dumps(recipe.to_dict()))) == recipe
    data = load_data(recipe.data)
    assert data.train.images.shape == (9, 3, 16, 16) and data.std == (0.229, 0.224, 0.225)
    assert data.augment == AugmentConfig(crop_padding=2, hflip=True)
