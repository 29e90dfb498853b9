"""How to train (`TrainConfig`, a recipe's `train:` section) and what training returns
(`TrainResult`). A leaf module: the loop, the recipe and the workflows read these."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, get_args

import torch

from compressor.configs import MAX_SEED, config_kwargs
from compressor.errors import ConfigError
from deploy.config_fields import (
    check_fields,
    flag,
    fractions,
    one_of,
    real,
    whole,
)

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

    epochs: int = field(metadata=whole(1, noun="an int"))  # full passes over the training split
    # Images per SGD step (a smaller training split: one step per epoch).
    batch_size: int = field(default=128, metadata=whole(1, noun="an int"))
    lr: float = field(default=0.1, metadata=real(0, above=True))  # peak rate (after warm-up)
    momentum: float = field(default=0.9, metadata=real(0, 1, below=True))
    nesterov: bool = field(default=True, metadata=flag())
    # L2 on all parameters, as in the usual CIFAR ResNet recipe.
    weight_decay: float = field(default=5e-4, metadata=real(0))
    schedule: Schedule = field(default="cosine", metadata=one_of(get_args(Schedule)))
    # Step schedule: fractions of all steps, increasing, in (0, 1).
    milestones: tuple[float, ...] = field(
        default=(0.5, 0.75),
        metadata=fractions(open_low=True),
    )
    gamma: float = field(default=0.1, metadata=real(0, 1, above=True))  # step lr multiplier
    warmup_epochs: int = field(default=0, metadata=whole(0, noun="an int"))  # linear warm-up
    label_smoothing: float = field(default=0.0, metadata=real(0, 1, below=True))  # train loss
    device: DeviceName = field(default="auto", metadata=one_of(get_args(DeviceName)))
    # Mixed precision; None = on for CUDA, never on CPU.
    amp: bool | None = field(default=None, metadata=flag(optional=True))
    # Seeds torch, the shuffling and the augmentation generators.
    seed: int = field(default=0, metadata=whole(0, MAX_SEED, noun="an int"))
    # torch.set_num_threads (process-wide); None = leave as is.
    threads: int | None = field(default=None, metadata=whole(1, optional=True, noun="an int"))
    # auto = a bar on a terminal, one log line per epoch otherwise.
    progress: ProgressMode = field(default="auto", metadata=one_of(get_args(ProgressMode)))
    # Rewinding (the paper's Algorithm 1): save the weights when training reaches these
    # fractions of `epochs` (0 = theta_0) as rewind_eNNN.safetensors beside the checkpoint;
    # and start the epoch count and learning-rate schedule at `start_epoch` (a ticket whose
    # weights were rewound to that epoch retrains the remaining epochs on the original
    # schedule; the paper calls this learning-rate rewinding).
    rewind_points: tuple[float, ...] = field(
        default=(),
        metadata=fractions(),
    )
    start_epoch: int = field(default=0, metadata=whole(0, noun="an int"))
    # Batch-norm running statistics re-estimated over this many training batches (no
    # augmentation) before the final validation and the test evaluation: short training or
    # surgery leaves them stale, and eval-mode accuracy can fall to chance. 0 = off.
    bn_recalibration_batches: int = field(
        default=BN_RECALIBRATION_BATCHES, metadata=whole(0, noun="an int")
    )

    def __post_init__(self) -> None:
        check_fields(self, ConfigError, "train.{name} ")
        if self.nesterov and self.momentum == 0:
            raise ConfigError("train.nesterov needs train.momentum > 0; set nesterov: false")
        if self.warmup_epochs >= self.epochs:
            raise ConfigError(
                f"train.warmup_epochs ({self.warmup_epochs}) must be smaller than "
                f"train.epochs ({self.epochs})"
            )
        if self.start_epoch >= self.epochs:
            raise ConfigError(
                f"train.start_epoch must be an int in [0, epochs={self.epochs}), "
                f"got {self.start_epoch!r}"
            )

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
