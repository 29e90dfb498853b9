"""One check shared by every config's `from_dict`: recipe keys must name dataclass fields."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

from compressor.errors import ConfigError


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
