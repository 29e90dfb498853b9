"""Config fields checked from their declaration, the one way every config is validated.

A config dataclass states each field's rule where the field is declared,

    iterations: int = field(default=100, metadata=whole(1))

and its `__post_init__` calls `check_fields(self, DeployConfigError, "{name} ")` before
the checks that relate two fields (pydantic's field constraints and model validators, in a
few lines). The first field that breaks its rule is one line naming
it, "iterations must be an integer >= 1, got 0", with the label format and error type of
the package the config belongs to. YAML hands over `yes`, `"0.5"`, `.nan` or a list where a
number was meant: every rule rejects those before comparing, and never raises anything but
the config's own error.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass
from typing import Any

RULE = "check"  # the key of a field's metadata that holds its Rule


@dataclass(frozen=True)
class Rule:
    problem: Callable[[Any], str | None]  # None for a good value, else what is wrong with it
    normalize: Callable[[Any], Any] | None = None  # applied to good values (list -> tuple)


def rule(
    accepts: Callable[[Any], bool],
    expected: str,
    *,
    normalize: Callable[[Any], Any] | None = None,
) -> dict[str, Rule]:
    """Field metadata: values `accepts` refuses are reported as "must be <expected>"."""
    return problems(lambda v: None if accepts(v) else f"must be {expected}", normalize=normalize)


def problems(
    problem: Callable[[Any], str | None], *, normalize: Callable[[Any], Any] | None = None
) -> dict[str, Rule]:
    """Field metadata for a rule with more than one way to fail, each saying which
    ("lists a value twice"); `problem` returns None for a good value."""
    return {RULE: Rule(problem, normalize)}


def is_int(value: Any) -> bool:
    """An int, never a bool (numpy integers count: arrays hand them over)."""
    return isinstance(value, int) and not isinstance(value, bool) or _is_numpy(value, "integer")


def is_real(value: Any) -> bool:
    """A finite int or float, never a bool."""
    if is_int(value):
        return True
    return (isinstance(value, float) or _is_numpy(value, "floating")) and math.isfinite(value)


def whole(
    minimum: int | None = None,
    maximum: int | None = None,
    *,
    optional: bool = False,
    noun: str = "an integer",
    expected: str | None = None,
) -> dict[str, Rule]:
    """An integer in [minimum, maximum] (either bound may be open-ended); None if optional."""

    def accepts(value: Any) -> bool:
        if value is None:
            return optional
        return is_int(value) and _within(value, minimum, maximum, False, False)

    return rule(
        accepts, expected or _describe(noun, minimum, maximum, False, False), normalize=_plain
    )


def real(
    minimum: float | None = None,
    maximum: float | None = None,
    *,
    above: bool = False,
    below: bool = False,
    optional: bool = False,
    noun: str = "a number",
    expected: str | None = None,
) -> dict[str, Rule]:
    """A finite number from `minimum` to `maximum`; `above`/`below` exclude the bound."""

    def accepts(value: Any) -> bool:
        if value is None:
            return optional
        return is_real(value) and _within(value, minimum, maximum, above, below)

    return rule(
        accepts, expected or _describe(noun, minimum, maximum, above, below), normalize=_plain
    )


def flag(*, optional: bool = False, expected: str = "true or false") -> dict[str, Rule]:
    return rule(lambda v: type(v) is bool or (optional and v is None), expected)


def one_of(choices: Collection[Any], *, expected: str | None = None) -> dict[str, Rule]:
    return rule(lambda v: _hashable(v) and v in choices, expected or f"one of {choices}")


def plain_tuple(value: Any) -> tuple[Any, ...]:
    """A list as a tuple of plain Python values (numpy scalars converted): JSON-safe."""
    return tuple(_plain(v) for v in value)


def is_sequence(value: Any) -> bool:
    """A list, tuple or range; not a string or bytes (sequences of characters)."""
    return isinstance(value, Sequence) and not isinstance(value, str | bytes)


def names(*, expected: str) -> dict[str, Rule]:
    """A list of strings, kept as a tuple."""
    return rule(
        lambda v: is_sequence(v) and all(isinstance(s, str) for s in v),
        expected,
        normalize=tuple,
    )


def wholes(minimum: int = 1, *, expected: str) -> dict[str, Rule]:
    """A non-empty list of integers >= minimum (batch sizes), kept as a tuple."""
    return rule(
        lambda v: is_sequence(v) and len(v) > 0 and all(is_int(n) and n >= minimum for n in v),
        expected,
        normalize=plain_tuple,
    )


def fractions(*, open_low: bool = False) -> dict[str, Rule]:
    """Increasing fractions in [0, 1) ((0, 1) with `open_low`), each once, kept as a tuple."""

    def accepts(value: Any) -> bool:
        if not is_sequence(value):
            return False
        if not all(is_real(v) and (v > 0 if open_low else v >= 0) and v < 1 for v in value):
            return False  # checked before sorting: a string among numbers cannot be sorted
        return list(value) == sorted(set(value))

    interval = "(0, 1)" if open_low else "[0, 1)"
    return rule(accepts, f"increasing fractions in {interval}", normalize=plain_tuple)


def check_fields(config: Any, error: type[Exception], label: str) -> None:
    """Apply every field's rule in declaration order; `label` formats the field's name for
    the message ("train.{name} ", "prune.{name}: ")."""
    for item in dataclasses.fields(config):
        checked = item.metadata.get(RULE)
        if checked is None:
            continue
        value = getattr(config, item.name)
        problem = checked.problem(value)
        if problem is not None:
            raise error(f"{label.format(name=item.name)}{problem}, got {value!r}")
        if checked.normalize is not None:
            object.__setattr__(config, item.name, checked.normalize(value))


def _within(value: float, low: float | None, high: float | None, above: bool, below: bool) -> bool:
    if low is not None and (value <= low if above else value < low):
        return False
    return high is None or not (value >= high if below else value > high)


def _describe(noun: str, low: float | None, high: float | None, above: bool, below: bool) -> str:
    if low is not None and high is not None:
        text = f"in {'(' if above else '['}{low}, {high}{')' if below else ']'}"
    elif low is not None:
        text = f"{'>' if above else '>='} {low}"
    elif high is not None:
        text = f"{'<' if below else '<='} {high}"
    else:
        text = ""
    return f"{noun} {text}".strip()


def _plain(value: Any) -> Any:
    """A numpy scalar as the Python number it holds, so configs stay JSON-safe."""
    return value.item() if type(value).__module__ == "numpy" else value


def _is_numpy(value: Any, kind: str) -> bool:
    numpy = type(value).__module__ == "numpy"
    return numpy and any(base.__name__ == kind for base in type(value).__mro__)


def _hashable(value: Any) -> bool:
    try:
        hash(value)
    except TypeError:
        return False
    return True
