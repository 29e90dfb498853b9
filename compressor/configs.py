"""Helpers shared by every recipe section: its keys must name the config's fields, and
what changed between two saved configs. Field values are checked by the rules each field
declares (deploy.config_fields)."""

from __future__ import annotations

import dataclasses
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
