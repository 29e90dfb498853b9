"""The grid `compressor lottery` runs (`ExperimentConfig`, a recipe's `experiment:` section).

A leaf module: the recipe holds this config and the runner reads it, so it sits below both.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

from compressor.configs import config_kwargs
from compressor.data.corruptions import CORRUPTIONS, SEVERITIES
from compressor.errors import ConfigError
from compressor.prune.registry import CRITERIA

SOURCES = ("auto", "codecarbon", "nvml", "tegrastats", "declared")
# World-average grid intensity, g CO2 per kWh, the default codecarbon itself falls back to.
WORLD_G_CO2_PER_KWH = 475.0


def check_energy_settings(source: str, power_watts: float | None, g_co2_per_kwh: float) -> None:
    if source not in SOURCES:
        raise ConfigError(f"experiment.energy_source must be one of {SOURCES}, got {source!r}")
    if power_watts is not None and (
        isinstance(power_watts, bool)
        or not isinstance(power_watts, int | float)
        or power_watts <= 0
    ):
        raise ConfigError(f"experiment.power_watts must be a number > 0, got {power_watts!r}")
    if source == "declared" and power_watts is None:
        raise ConfigError("experiment.energy_source 'declared' needs experiment.power_watts")
    if (
        isinstance(g_co2_per_kwh, bool)
        or not isinstance(g_co2_per_kwh, int | float)
        or g_co2_per_kwh < 0
    ):
        raise ConfigError(f"experiment.g_co2_per_kwh must be a number >= 0, got {g_co2_per_kwh!r}")


def _ints(value: Any, field_name: str, minimum: int) -> tuple[int, ...]:
    if isinstance(value, str) or not isinstance(value, list | tuple):
        raise ConfigError(f"experiment.{field_name} must be a list of whole numbers")
    if any(isinstance(v, bool) or not isinstance(v, int) or v < minimum for v in value):
        raise ConfigError(
            f"experiment.{field_name} must be whole numbers >= {minimum}, got {list(value)}"
        )
    if len(set(value)) != len(value):
        raise ConfigError(f"experiment.{field_name} lists a value twice: {list(value)}")
    return tuple(value)


def _names(value: Any, field_name: str, *, after: bool) -> tuple[str, ...]:
    if isinstance(value, str) or not isinstance(value, list | tuple):
        raise ConfigError(f"experiment.{field_name} must be a list of criterion names")
    for name in value:
        if not isinstance(name, str):
            raise ConfigError(f"experiment.{field_name} must be criterion names, got {name!r}")
        fitting = [n for n, c in CRITERIA.items() if n == "random" or c.after_training == after]
        if name not in CRITERIA:
            raise ConfigError(
                f"experiment.{field_name}: unknown criterion '{name}'; choose from "
                f"{', '.join(fitting)}"
            )
        if name != "random" and CRITERIA[name].after_training != after:
            kind = "trained weights" if CRITERIA[name].after_training else "initial weights"
            raise ConfigError(
                f"experiment.{field_name}: criterion '{name}' is meant for {kind}; "
                f"{field_name} takes {', '.join(fitting)}"
            )
    if len(set(value)) != len(value):
        raise ConfigError(f"experiment.{field_name} lists a criterion twice: {list(value)}")
    return tuple(value)


@dataclass(frozen=True, kw_only=True)
class ExperimentConfig:
    """The grid `compressor lottery` runs; maps onto a recipe's `experiment:` section."""

    seeds: tuple[int, ...] = (0, 1, 2)  # theta_0 and data order of every cell
    blocks: tuple[int, ...] = (1, 2, 3, 4, 5)  # p: blocks removed (Algorithm 2, scratch)
    at_init: tuple[str, ...] = ("snip", "grasp", "random")
    scratch: tuple[str, ...] = ("grasp",)  # re-initialised tickets of these criteria
    filter_criteria: tuple[str, ...] = ("snip", "grasp")  # filter pruning at matched count
    filter_blocks: tuple[int, ...] = (1,)  # ... of the layer tickets at these p
    after_training: tuple[str, ...] = ("hrank", "expectabs", "kl", "pls", "cka", "random")
    after_training_blocks: tuple[int, ...] = (3,)
    rewind: tuple[float, ...] = (0.5,)  # fractions of training; 0 = theta_0
    lmc_criterion: str = "grasp"  # LMC twins of dense and of this at-init ticket ...
    lmc_blocks: tuple[int, ...] = (3,)  # ... at these p ...
    lmc_seeds: tuple[int, ...] = (0,)  # ... for these seeds
    xi: float | str = 1.0  # winning ticket: acc + xi >= dense acc; points, or "std"
    corruptions: tuple[str, ...] = tuple(CORRUPTIONS)
    severities: tuple[int, ...] = tuple(SEVERITIES)
    cifar10c_root: str | None = None  # CIFAR-10-C .npy folder; None = generate corruptions
    robustness_samples: int = 2000  # test images corrupted (the first ones)
    energy_source: str = "auto"  # auto | codecarbon | nvml | tegrastats | declared
    power_watts: float | None = None  # declared device power for the estimate
    g_co2_per_kwh: float = WORLD_G_CO2_PER_KWH

    def __post_init__(self) -> None:
        put = object.__setattr__
        put(self, "seeds", _ints(self.seeds, "seeds", 0))
        if not self.seeds:
            raise ConfigError("experiment.seeds must list at least one seed")
        for name in ("blocks", "filter_blocks", "after_training_blocks", "lmc_blocks"):
            put(self, name, _ints(getattr(self, name), name, 1))
        put(self, "lmc_seeds", _ints(self.lmc_seeds, "lmc_seeds", 0))
        put(self, "severities", _ints(self.severities, "severities", 1))
        put(self, "at_init", _names(self.at_init, "at_init", after=False))
        put(self, "scratch", _names(self.scratch, "scratch", after=False))
        put(self, "filter_criteria", _names(self.filter_criteria, "filter_criteria", after=False))
        put(self, "after_training", _names(self.after_training, "after_training", after=True))
        _names([self.lmc_criterion], "lmc_criterion", after=False)
        if isinstance(self.rewind, str) or not isinstance(self.rewind, list | tuple):
            raise ConfigError("experiment.rewind must be a list of fractions in [0, 1)")
        rewind = tuple(self.rewind)
        if any(
            isinstance(r, bool) or not isinstance(r, int | float) or not 0 <= r < 1 for r in rewind
        ) or list(rewind) != sorted(set(rewind)):
            raise ConfigError(
                f"experiment.rewind must be increasing fractions in [0, 1), got {rewind}"
            )
        put(self, "rewind", rewind)
        if self.after_training and not self.rewind:
            raise ConfigError(
                "experiment.after_training needs at least one experiment.rewind point"
            )
        if not (
            self.xi == "std"
            or (isinstance(self.xi, int | float) and not isinstance(self.xi, bool) and self.xi >= 0)
        ):
            raise ConfigError(f"experiment.xi must be points >= 0 or 'std', got {self.xi!r}")
        if any(s > max(SEVERITIES) for s in self.severities):
            raise ConfigError(f"experiment.severities must be in 1..{max(SEVERITIES)}")
        if isinstance(self.corruptions, str) or any(c not in CORRUPTIONS for c in self.corruptions):
            raise ConfigError(
                f"experiment.corruptions must be a list from {list(CORRUPTIONS)}, "
                f"got {self.corruptions!r}"
            )
        put(self, "corruptions", tuple(self.corruptions))
        if (
            isinstance(self.robustness_samples, bool)
            or not isinstance(self.robustness_samples, int)
            or self.robustness_samples < 1
        ):
            raise ConfigError(
                "experiment.robustness_samples must be a whole number >= 1, "
                f"got {self.robustness_samples!r}"
            )
        check_energy_settings(self.energy_source, self.power_watts, self.g_co2_per_kwh)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ExperimentConfig:
        return cls(**config_kwargs(cls, data, "experiment"))

    def to_dict(self) -> dict[str, Any]:
        return {
            f.name: list(v) if isinstance(v := getattr(self, f.name), tuple) else v
            for f in dataclasses.fields(self)
        }
