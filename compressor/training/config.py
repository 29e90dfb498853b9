"""How to train (`TrainConfig`, a recipe's `train:` section) and what training returns
(`TrainResult`). A leaf module: the loop, the recipe and the workflows read these."""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, get_args

import torch

from compressor.configs import MAX_SEED, config_kwargs
from compressor.errors import ConfigError

CHECKPOINT_NAME = "checkpoint.pt"
METRICS_NAME = "metrics.jsonl"
CHECKPOINT_FORMAT = 1  # bump when the checkpoint layout changes
NAN_CHECK_EVERY = 25  # steps between loss-finiteness checks (each one is a device sync)
RUNTIME_ONLY_FIELDS = ("device", "amp", "threads", "progress")  # may change on resume
BN_RECALIBRATION_BATCHES = 20  # train.bn_recalibration_batches' default

Schedule = Literal["cosine", "step"]
DeviceName = Literal["auto", "cpu", "cuda"]
ProgressMode = Literal["auto", "bar", "log", "none"]


@dataclass(frozen=True, kw_only=True)
class TrainConfig:
    """How to train; maps one to one onto a recipe's `train:` section."""

    epochs: int  # full passes over the training split
    batch_size: int = 128  # images per SGD step (a smaller training split: one step per epoch)
    lr: float = 0.1  # peak learning rate (after warm-up)
    momentum: float = 0.9
    nesterov: bool = True
    weight_decay: float = 5e-4  # L2 on all parameters, as in the usual CIFAR ResNet recipe
    schedule: Schedule = "cosine"
    milestones: tuple[float, ...] = (0.5, 0.75)  # step schedule: fractions of all steps
    gamma: float = 0.1  # step schedule: lr multiplier at each milestone
    warmup_epochs: int = 0  # linear warm-up from lr/steps to lr
    label_smoothing: float = 0.0  # training loss only
    device: DeviceName = "auto"  # auto = CUDA when available
    amp: bool | None = None  # mixed precision; None = on for CUDA, never on CPU
    seed: int = 0  # seeds torch, the shuffling and the augmentation generators
    threads: int | None = None  # torch.set_num_threads (process-wide); None = leave as is
    progress: ProgressMode = "auto"  # auto = a bar on a terminal, one log line per epoch otherwise
    # Rewinding (the paper's Algorithm 1): save the weights when training reaches these
    # fractions of `epochs` (0 = theta_0) as rewind_eNNN.safetensors beside the checkpoint;
    # and start the epoch count and learning-rate schedule at `start_epoch` (a ticket whose
    # weights were rewound to that epoch retrains the remaining epochs on the original
    # schedule; the paper calls this learning-rate rewinding).
    rewind_points: tuple[float, ...] = ()
    start_epoch: int = 0
    # Batch-norm running statistics re-estimated over this many training batches (no
    # augmentation) before the final validation and the test evaluation: short training or
    # surgery leaves them stale, and eval-mode accuracy can fall to chance. 0 = off.
    bn_recalibration_batches: int = BN_RECALIBRATION_BATCHES

    def __post_init__(self) -> None:
        if isinstance(self.milestones, list):  # recipes give YAML lists
            object.__setattr__(self, "milestones", tuple(self.milestones))
        for field, minimum in (
            ("epochs", 1),
            ("batch_size", 1),
            ("warmup_epochs", 0),
            ("seed", 0),
            ("threads", 1),
            ("bn_recalibration_batches", 0),
        ):
            value = getattr(self, field)
            if not (field == "threads" and value is None):
                _check(field, value, lambda v, m=minimum: v >= m, f"an int >= {minimum}", int)
        for field, ok, expected in (
            ("lr", lambda v: v > 0, "> 0"),
            ("weight_decay", lambda v: v >= 0, ">= 0"),
            ("momentum", lambda v: 0 <= v < 1, "in [0, 1)"),
            ("gamma", lambda v: 0 < v <= 1, "in (0, 1]"),
            ("label_smoothing", lambda v: 0 <= v < 1, "in [0, 1)"),
        ):
            _check(field, getattr(self, field), ok, f"a number {expected}", (int, float))
        _check("seed", self.seed, lambda v: v <= MAX_SEED, f"an int <= {MAX_SEED}", int)
        for field, kind in (
            ("schedule", Schedule),
            ("device", DeviceName),
            ("progress", ProgressMode),
        ):
            if getattr(self, field) not in get_args(kind):
                raise ConfigError(
                    f"train.{field} must be one of {get_args(kind)}, got {getattr(self, field)!r}"
                )
        if not isinstance(self.nesterov, bool) or not isinstance(self.amp, (bool, type(None))):
            raise ConfigError(
                f"train.nesterov and train.amp must be true or false (amp also "
                f"null), got {self.nesterov!r} and {self.amp!r}"
            )
        if self.nesterov and self.momentum == 0:
            raise ConfigError("train.nesterov needs train.momentum > 0; set nesterov: false")
        if self.warmup_epochs >= self.epochs:
            raise ConfigError(
                f"train.warmup_epochs ({self.warmup_epochs}) must be smaller than "
                f"train.epochs ({self.epochs})"
            )
        points = tuple(self.rewind_points)
        if not all(isinstance(p, (int, float)) and not isinstance(p, bool) for p in points) or (
            list(points) != sorted(set(points)) or any(not 0 <= p < 1 for p in points)
        ):
            raise ConfigError(
                f"train.rewind_points must be increasing fractions in [0, 1), got {points}"
            )
        object.__setattr__(self, "rewind_points", points)
        _check("start_epoch", self.start_epoch, lambda v: 0 <= v < self.epochs,
               f"an int in [0, epochs={self.epochs})", int)  # fmt: skip
        ms = self.milestones
        valid = isinstance(ms, tuple) and all(isinstance(m, (int, float)) and 0 < m < 1 for m in ms)
        if not valid or list(ms) != sorted(set(ms)):
            raise ConfigError(f"train.milestones must be increasing fractions in (0, 1), got {ms}")

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> TrainConfig:
        """Build from a recipe mapping; unknown or missing keys are ConfigErrors naming them."""
        return cls(**config_kwargs(cls, d, "train"))

    def to_dict(self) -> dict[str, Any]:
        out = {**dataclasses.asdict(self), "milestones": list(self.milestones)}
        # Left out at their defaults, so recipes and checkpoints written before rewinding
        # and recalibration existed still compare equal on --resume.
        for key, default in (
            ("rewind_points", ()),
            ("start_epoch", 0),
            ("bn_recalibration_batches", BN_RECALIBRATION_BATCHES),
        ):
            if out[key] == default:
                del out[key]
            elif key == "rewind_points":
                out[key] = list(out[key])
        return out

    def rewind_epochs(self) -> list[int]:
        """The epochs at which rewind snapshots are saved."""
        return sorted({round(p * self.epochs) for p in self.rewind_points})


def rewind_path(out_dir: str | Path, epoch: int) -> Path:
    """Where `train` saves the weights reached after `epoch` epochs (0: before training)."""
    return Path(out_dir) / f"rewind_e{epoch:03d}.safetensors"


def _check(field: str, value: Any, ok: Any, expected: str, kind: type | tuple) -> None:
    if (
        isinstance(value, bool)
        or not isinstance(value, kind)
        or (isinstance(value, float) and not math.isfinite(value))
        or not ok(value)
    ):
        raise ConfigError(f"train.{field} must be {expected}, got {value!r}")


@dataclass(frozen=True)
class TrainResult:
    """What a training run produced; the weights themselves stay in the model object."""

    epochs_run: int  # epochs completed in total, resumed ones included
    final_val_acc: float
    best_val_acc: float
    test_acc: float
    test_loss: float
    train_seconds: float  # sum of epoch training times (evaluation excluded)
    epoch_seconds: list[float]
    median_epoch_seconds: float
    checkpoint: str
    metrics: str
    device: str
    # What batch-norm recalibration did before the final evaluations (layers, batches,
    # images; 0 layers: the model has no BatchNorm); None when it is off.
    bn_recalibration: dict[str, Any] | None = None

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def resolve_device(name: str | torch.device) -> torch.device:
    """'auto' -> CUDA when available, else CPU; asking for absent CUDA is a ConfigError."""
    if isinstance(name, torch.device):
        return name
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name not in get_args(DeviceName):
        raise ConfigError(f"train.device must be one of {get_args(DeviceName)}, got {name!r}")
    if name == "cuda" and not torch.cuda.is_available():
        raise ConfigError("train.device is 'cuda' but no CUDA device is available; use 'auto'")
    return torch.device(name)
