"""Checks shared by every config: recipe keys must name dataclass fields, numbers be numbers."""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Collection, Mapping
from typing import Any

from compressor.errors import ConfigError

# Seeds reach torch, numpy and scikit-learn; scikit-learn takes at most 2**32 - 1.
MAX_SEED = 2**32 - 1


def config_kwargs(cls: type, d: Mapping[str, Any], section: str) -> dict[str, Any]:
    """Check a recipe mapping against a config dataclass: unknown or missing keys are named."""
    if not isinstance(d, Mapping):
        raise ConfigError(f"{section} must be a mapping, got {type(d).__name__}")
    fields = dataclasses.fields(cls)
    known = {f.name for f in fields}
    unknown = sorted(str(k) for k in set(d) - known)
    if unknown:
        dotted = ", ".join(f"{section}.{key}" for key in unknown)
        raise ConfigError(f"{section}: unknown key(s) {unknown} ({dotted}); known: {sorted(known)}")
    for f in fields:
        if (
            f.name not in d
            and f.default is dataclasses.MISSING
            and f.default_factory is dataclasses.MISSING
        ):
            raise ConfigError(f"{section}.{f.name} is required")
    return dict(d)


def is_number(value: Any, *, whole: bool = False) -> bool:
    """A finite int or float (a whole number when `whole`), never a bool.

    YAML hands over `yes`, `"0.5"`, `.nan` or a list where a user mistyped a number; each
    validator asks this first, so a comparison such as `0 < value` never meets a str or a
    list (a raw TypeError) and NaN never slips through every range check.
    """
    if isinstance(value, bool):
        return False
    if whole:
        return isinstance(value, int)
    return isinstance(value, int) or (isinstance(value, float) and math.isfinite(value))


def is_seed(value: Any) -> bool:
    """A whole number torch, numpy and scikit-learn all accept as a seed."""
    return is_number(value, whole=True) and 0 <= value <= MAX_SEED


def changed_keys(
    before: Mapping[str, Any], now: Mapping[str, Any], *, free: Collection[str] = ()
) -> list[str]:
    """Keys whose values differ between two saved configs, sorted; those in `free` may change.

    The one comparison behind every "is this resume the same run?" check: a recipe against
    the recipe.json its run started with, a training config against its checkpoint's.
    """
    return sorted(
        k for k in before.keys() | now.keys() if k not in free and before.get(k) != now.get(k)
    )
