"""Which data to train on and how to augment it (`DataConfig`, `AugmentConfig`: a recipe's
`data:` section). A leaf module: the loaders, the training loop and the recipe read these."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal, get_args

from compressor.configs import MAX_SEED, config_kwargs
from compressor.data.imagefolder import CENTRE_CROP_RATIO, IMAGEFOLDER_SIZE
from compressor.errors import ConfigError
from compressor.models.channels import CHANNEL_CHOICES
from deploy.config_fields import check_fields, flag, is_int, one_of, real, rule, whole

DatasetName = Literal["digits", "cifar10", "cifar100", "imagefolder"]
DIGITS_NATIVE_SIZE = 16  # digits are 8x8; 16x16 leaves room for two stride-2 stages
CIFAR_NATIVE_SIZE = 32
# DataConfig options added after runs were already recorded: left out of to_dict() while at
# their defaults, so a recipe.json written before they existed still matches on --resume.
OMITTED_AT_DEFAULT = ("channels", "resize", "mean", "std", "max_memory_gb")
IMAGENET_HINT = "ImageNet's are mean [0.485, 0.456, 0.406], std [0.229, 0.224, 0.225]"
MIN_IMAGE_SIZE = 4  # smaller images cannot pass through even one pooling stage meaningfully


def _int(minimum: int, maximum: int | None = None, *, optional: bool = False) -> dict[str, Any]:
    return whole(minimum, maximum, optional=optional, noun="an int")


_fraction = real(0, 1, above=True, below=True)


@dataclass(frozen=True, kw_only=True)
class AugmentConfig:
    """Train-time augmentation; the defaults per dataset come from `default_augment`."""

    # Pixels of zero padding before a random crop back to size; 0 = off.
    crop_padding: int = field(metadata=whole(0, noun="an int"))
    hflip: bool = field(metadata=flag())  # random horizontal flip with probability 0.5

    def __post_init__(self) -> None:
        check_fields(self, ConfigError, "augment.{name} ")

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

    name: DatasetName = field(default="digits", metadata=one_of(get_args(DatasetName)))
    # CIFAR: the extracted folder or its parent; imagefolder: the folder.
    root: str | None = field(
        default=None, metadata=rule(lambda v: v is None or isinstance(v, str), "a path string")
    )
    # None = native (digits 16 via bilinear upsampling, CIFAR 32); imagefolder: 224 (crop size)
    image_size: int | None = field(default=None, metadata=_int(MIN_IMAGE_SIZE, optional=True))
    # Share of the training data held out for validation.
    val_fraction: float = field(default=0.1, metadata=_fraction)
    # Share of all images held out for test: digits, and image folders without a test/ folder
    # (CIFAR has its own test batch).
    test_fraction: float = field(default=0.2, metadata=_fraction)
    seed: int = field(default=0, metadata=_int(0, MAX_SEED))  # split seed: same seed, same split
    augment: AugmentConfig | None = None  # None = the dataset's default (see default_augment)
    # Keep only this many training images (quick tests).
    limit_train: int | None = field(default=None, metadata=_int(1, optional=True))
    # The options below are left out of to_dict() at their defaults (OMITTED_AT_DEFAULT).
    # 1 = gray (RGB by ITU-R 601 luminance), 3 = RGB (gray replicated); None = the dataset's
    # own: digits 1, CIFAR and image folders 3. Set it to what the model's first layer takes.
    channels: int | None = field(
        default=None,
        metadata=rule(
            lambda v: v is None or (is_int(v) and v in CHANNEL_CHOICES),
            "1 (grayscale) or 3 (RGB)",
            normalize=lambda v: v if v is None else int(v),
        ),
    )
    # imagefolder only: shorter side before the centre crop; None = image_size / 0.875 (256)
    resize: int | None = field(default=None, metadata=_int(MIN_IMAGE_SIZE, optional=True))
    mean: tuple[float, ...] | None = None  # per channel, 0..1 pixel scale; None = from train
    std: tuple[float, ...] | None = None  # given with mean (both or neither)
    # Refuse datasets whose float32 splits (at image_size) need more.
    max_memory_gb: float = field(default=8.0, metadata=real(0, above=True))

    def __post_init__(self) -> None:
        check_fields(self, ConfigError, "data.{name} ")
        if isinstance(self.augment, Mapping):  # a recipe's nested `augment:` mapping
            object.__setattr__(self, "augment", AugmentConfig.from_dict(self.augment))
        if self.augment is not None and not isinstance(self.augment, AugmentConfig):
            raise ConfigError(f"data.augment must be an AugmentConfig, got {self.augment!r}")
        self._check_folder_options()
        for name in ("mean", "std"):
            self._check_channel_values(name)
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
        if self.resize is not None and self.resize < self.resolved_image_size:
            raise ConfigError(
                f"data.resize must be >= data.image_size ({self.resolved_image_size}): the "
                f"centre crop is taken from the resized image, got {self.resize}"
            )

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
        for name in OMITTED_AT_DEFAULT:
            if out[name] == defaults[name]:
                del out[name]
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
