"""Which data to train on and how to augment it (`DataConfig`, `AugmentConfig`: a recipe's
`data:` section). A leaf module: the loaders, the training loop and the recipe read these."""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal, get_args

from compressor.configs import MAX_SEED, config_kwargs
from compressor.data.imagefolder import CENTRE_CROP_RATIO, IMAGEFOLDER_SIZE
from compressor.errors import ConfigError
from compressor.models.channels import CHANNEL_CHOICES

DatasetName = Literal["digits", "cifar10", "cifar100", "imagefolder"]
DIGITS_NATIVE_SIZE = 16  # digits are 8x8; 16x16 leaves room for two stride-2 stages
CIFAR_NATIVE_SIZE = 32
# DataConfig options added after runs were already recorded: left out of to_dict() while at
# their defaults, so a recipe.json written before they existed still matches on --resume.
OMITTED_AT_DEFAULT = ("channels", "resize", "mean", "std", "max_memory_gb")
IMAGENET_HINT = "ImageNet's are mean [0.485, 0.456, 0.406], std [0.229, 0.224, 0.225]"
MIN_IMAGE_SIZE = 4  # smaller images cannot pass through even one pooling stage meaningfully

@dataclass(frozen=True, kw_only=True)
class AugmentConfig:
    """Train-time augmentation; the defaults per dataset come from `default_augment`."""

    crop_padding: int  # pixels of zero padding before a random crop back to size; 0 = off
    hflip: bool  # random horizontal flip with probability 0.5

    def __post_init__(self) -> None:
        if (
            isinstance(self.crop_padding, bool)
            or not isinstance(self.crop_padding, int)
            or self.crop_padding < 0
        ):
            raise ConfigError(
                f"augment.crop_padding must be an int >= 0, got {self.crop_padding!r}"
            )
        if not isinstance(self.hflip, bool):
            raise ConfigError(f"augment.hflip must be true or false, got {self.hflip!r}")

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> AugmentConfig:
        return cls(**config_kwargs(cls, d, "augment"))

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def default_augment(name: str, image_size: int | None = None) -> AugmentConfig:
    """Digits are not mirror-symmetric (a flipped 3 is not a 3), so they get no flip.

    Folder images are padded by an eighth of their size, as CIFAR's 4 pixels are of 32.
    """
    if name == "digits":
        return AugmentConfig(crop_padding=1, hflip=False)
    if name == "imagefolder":
        return AugmentConfig(crop_padding=(image_size or IMAGEFOLDER_SIZE) // 8, hflip=True)
    return AugmentConfig(crop_padding=4, hflip=True)


@dataclass(frozen=True, kw_only=True)
class DataConfig:
    """Which dataset to load and how to split it; maps one to one onto a recipe's `data:`."""

    name: DatasetName = "digits"
    root: str | None = None  # CIFAR: the extracted folder or its parent; imagefolder: the folder
    # None = native (digits 16 via bilinear upsampling, CIFAR 32); imagefolder: 224 (crop size)
    image_size: int | None = None
    val_fraction: float = 0.1  # share of the training data held out for validation
    # Share of all images held out for test: digits, and image folders without a test/ folder.
    test_fraction: float = 0.2  # CIFAR has its own test batch
    seed: int = 0  # split seed: same seed, same split
    augment: AugmentConfig | None = None  # None = the dataset's default (see default_augment)
    limit_train: int | None = None  # keep only this many training images (quick tests)
    # The options below are left out of to_dict() at their defaults (OMITTED_AT_DEFAULT).
    # 1 = gray (RGB by ITU-R 601 luminance), 3 = RGB (gray replicated); None = the dataset's
    # own: digits 1, CIFAR and image folders 3. Set it to what the model's first layer takes.
    channels: int | None = None
    # imagefolder only: shorter side before the centre crop; None = image_size / 0.875 (256)
    resize: int | None = None
    mean: tuple[float, ...] | None = None  # per channel, 0..1 pixel scale; None = from train
    std: tuple[float, ...] | None = None  # given with mean (both or neither)
    max_memory_gb: float = 8.0  # refuse datasets whose float32 splits (at image_size) need more

    def __post_init__(self) -> None:
        if self.name not in get_args(DatasetName):
            raise ConfigError(
                f"data.name must be one of {get_args(DatasetName)}, got {self.name!r}"
            )
        if self.root is not None and not isinstance(self.root, str):
            raise ConfigError(f"data.root must be a path string, got {self.root!r}")
        _check_int("image_size", self.image_size, MIN_IMAGE_SIZE, optional=True)
        _check_int("seed", self.seed, 0)
        if self.seed > MAX_SEED:
            raise ConfigError(f"data.seed must be at most {MAX_SEED}, got {self.seed}")
        _check_int("limit_train", self.limit_train, 1, optional=True)
        for field in ("val_fraction", "test_fraction"):
            value = getattr(self, field)
            if (
                isinstance(value, bool)
                or not isinstance(value, (int, float))
                or not 0.0 < value < 1.0
            ):
                raise ConfigError(f"data.{field} must be a number in (0, 1), got {value!r}")
        if isinstance(self.augment, Mapping):  # a recipe's nested `augment:` mapping
            object.__setattr__(self, "augment", AugmentConfig.from_dict(self.augment))
        if self.augment is not None and not isinstance(self.augment, AugmentConfig):
            raise ConfigError(f"data.augment must be an AugmentConfig, got {self.augment!r}")
        self._check_folder_options()
        for field in ("mean", "std"):
            self._check_channel_values(field)
        if (self.mean is None) != (self.std is None):
            raise ConfigError(
                "data.mean and data.std go together: give both or neither (neither = computed "
                f"on the train split); {IMAGENET_HINT}"
            )

    def _check_folder_options(self) -> None:
        if self.resize is not None and self.name != "imagefolder":
            raise ConfigError(
                f"data.resize applies to imagefolder only, not {self.name} ({self.name} is "
                "resized to data.image_size); remove it"
            )
        if self.channels is not None and (
            isinstance(self.channels, bool)
            or not isinstance(self.channels, int)
            or self.channels not in CHANNEL_CHOICES
        ):
            raise ConfigError(
                f"data.channels must be 1 (grayscale) or 3 (RGB), got {self.channels!r}"
            )
        _check_int("resize", self.resize, MIN_IMAGE_SIZE, optional=True)
        if self.resize is not None and self.resize < self.resolved_image_size:
            raise ConfigError(
                f"data.resize must be >= data.image_size ({self.resolved_image_size}): the "
                f"centre crop is taken from the resized image, got {self.resize}"
            )
        gb = self.max_memory_gb
        if isinstance(gb, bool) or not isinstance(gb, (int, float)) or not 0 < gb < math.inf:
            raise ConfigError(f"data.max_memory_gb must be a number > 0, got {gb!r}")

    def _check_channel_values(self, field: str) -> None:
        """Lists (from YAML or JSON) become tuples of floats, so configs compare equal."""
        value, channels = getattr(self, field), self.resolved_channels
        if value is None:
            return
        if (
            isinstance(value, (str, bytes))
            or not isinstance(value, Sequence)
            or len(value) != channels
            or any(isinstance(v, bool) or not isinstance(v, (int, float)) for v in value)
        ):
            raise ConfigError(
                f"data.{field} must be a list of {channels} number(s), one per channel of "
                f"{self.name}, got {value!r}"
            )
        value = tuple(float(v) for v in value)
        if not all((0.0 <= v <= 1.0) if field == "mean" else (0.0 < v <= 1.0) for v in value):
            allowed = "[0, 1]" if field == "mean" else "(0, 1]"
            raise ConfigError(
                f"data.{field} is on the 0..1 pixel scale, so each value must be in {allowed}, "
                f"got {list(value)}; {IMAGENET_HINT}"
            )
        object.__setattr__(self, field, value)

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> DataConfig:
        """Build from a recipe mapping; an unknown key is a ConfigError that names it."""
        return cls(**config_kwargs(cls, d, "data"))

    def to_dict(self) -> dict[str, Any]:
        out = dataclasses.asdict(self)
        defaults = {f.name: f.default for f in dataclasses.fields(self)}
        for field in OMITTED_AT_DEFAULT:
            if out[field] == defaults[field]:
                del out[field]
        return out

    @property
    def resolved_augment(self) -> AugmentConfig:
        if self.augment is not None:
            return self.augment
        return default_augment(self.name, self.resolved_image_size)

    @property
    def resolved_image_size(self) -> int:
        if self.image_size is not None:
            return self.image_size
        if self.name == "imagefolder":
            return IMAGEFOLDER_SIZE
        return DIGITS_NATIVE_SIZE if self.name == "digits" else CIFAR_NATIVE_SIZE

    @property
    def resolved_channels(self) -> int:
        if self.channels is not None:
            return self.channels
        return 1 if self.name == "digits" else 3

    @property
    def resolved_resize(self) -> int:
        """Imagefolder: the shorter side's length before the centre crop."""
        if self.resize is not None:
            return self.resize
        return round(self.resolved_image_size / CENTRE_CROP_RATIO)


def _check_int(field: str, value: Any, minimum: int, *, optional: bool = False) -> None:
    if value is None and optional:
        return
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ConfigError(f"data.{field} must be an int >= {minimum}, got {value!r}")
