"""The grid `compressor lottery` runs (`ExperimentConfig`, a recipe's `experiment:` section).

A leaf module: the recipe holds this config and the runner reads it, so it sits below both.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

from compressor.configs import config_kwargs
from compressor.data.corruptions import CORRUPTIONS, SEVERITIES
from compressor.errors import ConfigError
from compressor.prune.registry import CRITERIA
from deploy.config_fields import (
    check_fields,
    fractions,
    is_int,
    is_real,
    plain_tuple,
    problems,
    rule,
    whole,
)

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


def _ints(minimum: int) -> dict[str, Any]:
    """A list of distinct whole numbers >= minimum, kept as a tuple."""

    def problem(value: Any) -> str | None:
        if isinstance(value, str) or not isinstance(value, list | tuple):
            return "must be a list of whole numbers"
        if any(not is_int(v) or v < minimum for v in value):
            return f"must be whole numbers >= {minimum}"
        return "lists a value twice" if len(set(value)) != len(value) else None

    return problems(problem, normalize=plain_tuple)


def _criteria(*, after: bool) -> dict[str, Any]:
    """A list of distinct criterion names, for initial or (`after`) trained weights."""

    def problem(value: Any) -> str | None:
        if isinstance(value, str) or not isinstance(value, list | tuple):
            return "must be a list of criterion names"
        return _criteria_problem(value, after) or (
            "lists a criterion twice" if len(set(value)) != len(value) else None
        )

    return problems(problem, normalize=plain_tuple)


def _criteria_problem(names: Any, after: bool) -> str | None:
    fitting = [n for n, c in CRITERIA.items() if n == "random" or c.after_training == after]
    for name in names:
        if not isinstance(name, str):
            return "must be criterion names"
        if name not in CRITERIA:
            return f"names an unknown criterion '{name}'; choose from {', '.join(fitting)}"
        if name != "random" and CRITERIA[name].after_training != after:
            kind = "trained weights" if CRITERIA[name].after_training else "initial weights"
            return (
                f"has criterion '{name}', which is meant for {kind}; it takes {', '.join(fitting)}"
            )
    return None


@dataclass(frozen=True, kw_only=True)
class ExperimentConfig:
    """The grid `compressor lottery` runs; maps onto a recipe's `experiment:` section."""

    # theta_0 and data order of every cell.
    seeds: tuple[int, ...] = field(default=(0, 1, 2), metadata=_ints(0))
    # p: blocks removed (Algorithm 2, scratch).
    blocks: tuple[int, ...] = field(default=(1, 2, 3, 4, 5), metadata=_ints(1))
    at_init: tuple[str, ...] = field(
        default=("snip", "grasp", "random"), metadata=_criteria(after=False)
    )
    # Re-initialised tickets of these criteria.
    scratch: tuple[str, ...] = field(default=("grasp",), metadata=_criteria(after=False))
    # Filter pruning at matched count ...
    filter_criteria: tuple[str, ...] = field(
        default=("snip", "grasp"), metadata=_criteria(after=False)
    )
    filter_blocks: tuple[int, ...] = field(default=(1,), metadata=_ints(1))  # ... at these p
    after_training: tuple[str, ...] = field(
        default=("hrank", "expectabs", "kl", "pls", "cka", "random"),
        metadata=_criteria(after=True),
    )
    after_training_blocks: tuple[int, ...] = field(default=(3,), metadata=_ints(1))
    # Fractions of training; 0 = theta_0.
    rewind: tuple[float, ...] = field(
        default=(0.5,),
        metadata=fractions(),
    )
    # LMC twins of dense and of this at-init ticket ...
    lmc_criterion: str = field(
        default="grasp", metadata=problems(lambda v: _criteria_problem([v], after=False))
    )
    lmc_blocks: tuple[int, ...] = field(default=(3,), metadata=_ints(1))  # ... at these p ...
    lmc_seeds: tuple[int, ...] = field(default=(0,), metadata=_ints(0))  # ... for these seeds
    # Winning ticket: acc + xi >= dense acc; points, or "std".
    xi: float | str = field(
        default=1.0,
        metadata=rule(lambda v: v == "std" or (is_real(v) and v >= 0), "points >= 0 or 'std'"),
    )
    corruptions: tuple[str, ...] = field(
        default=tuple(CORRUPTIONS),
        metadata=rule(
            lambda v: isinstance(v, list | tuple) and all(c in CORRUPTIONS for c in v),
            f"a list from {list(CORRUPTIONS)}",
            normalize=plain_tuple,
        ),
    )
    severities: tuple[int, ...] = field(default=tuple(SEVERITIES), metadata=_ints(1))
    # CIFAR-10-C .npy folder; None = generate corruptions.
    cifar10c_root: str | None = None
    # Test images corrupted (the first ones).
    robustness_samples: int = field(default=2000, metadata=whole(1, noun="a whole number"))
    energy_source: str = "auto"  # auto | codecarbon | nvml | tegrastats | declared
    power_watts: float | None = None  # declared device power for the estimate
    g_co2_per_kwh: float = WORLD_G_CO2_PER_KWH

    def __post_init__(self) -> None:
        check_fields(self, ConfigError, "experiment.{name} ")
        if not self.seeds:
            raise ConfigError("experiment.seeds must list at least one seed")
        if self.after_training and not self.rewind:
            raise ConfigError(
                "experiment.after_training needs at least one experiment.rewind point"
            )
        if any(s > max(SEVERITIES) for s in self.severities):
            raise ConfigError(f"experiment.severities must be in 1..{max(SEVERITIES)}")
        check_energy_settings(self.energy_source, self.power_watts, self.g_co2_per_kwh)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ExperimentConfig:
        return cls(**config_kwargs(cls, data, "experiment"))

    def to_dict(self) -> dict[str, Any]:
        return {
            f.name: list(v) if isinstance(v := getattr(self, f.name), tuple) else v
            for f in dataclasses.fields(self)
        }
