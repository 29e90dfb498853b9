"""What a trained stage hands on: `TrainedFacts`, the facts a report needs about one model.

They are stored as the `info` of the model's spec.json (so a resumed run reuses a finished
stage without retraining it) and read back from there; `to_info` and `from_info` are the
one translation between the two.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from compressor.errors import InputError

# Facts older stored models may lack (recorded since later versions); None when absent.
_OPTIONAL = ("device", "bn_recalibration", "dataset", "input_shape")


@dataclass(frozen=True)
class TrainedFacts:
    accuracy: float  # test top-1
    val_accuracy: float
    params: int
    macs: int
    removed_blocks: list[str]
    train_seconds: float
    epoch_seconds: float  # the median epoch
    epochs: int
    device: str | None = None
    # What batch-norm recalibration did before the accuracy above was measured; None: off.
    bn_recalibration: dict[str, Any] | None = None
    # What it was trained on, so a stage run later with another recipe can refuse it.
    dataset: str | None = None
    input_shape: list[int] | None = None
    # Whatever the stage adds: variant, criterion, prune_seconds, pretrained, shrink, ...
    extra: dict[str, Any] = field(default_factory=dict)

    def to_info(self) -> dict[str, Any]:
        info = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
        extra = info.pop("extra")
        return {**info, **extra}

    @classmethod
    def from_info(cls, info: Mapping[str, Any], where: str) -> TrainedFacts:
        names = [f.name for f in dataclasses.fields(cls) if f.name != "extra"]
        missing = [n for n in names if n not in info and n not in _OPTIONAL]
        if missing:
            raise InputError(
                f"{where} records no {', '.join(missing)} of its training; re-run the stage "
                "that wrote it, or choose another --out"
            )
        known = {n: info.get(n) for n in names}
        return cls(**known, extra={k: v for k, v in info.items() if k not in known})
