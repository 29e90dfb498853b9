"""The one way configs are checked: rules declared on the fields (deploy.config_fields)."""

from __future__ import annotations

import dataclasses
import importlib
import inspect
import math
import pkgutil
from dataclasses import dataclass, field

import numpy as np
import pytest

from deploy.config_fields import (
    RULE,
    check_fields,
    flag,
    names,
    one_of,
    problems,
    real,
    whole,
)


class Bad(ValueError):
    pass


@dataclass(frozen=True, kw_only=True)
class Example:
    count: int = field(default=1, metadata=whole(1))
    ratio: float = field(default=0.5, metadata=real(0, 1, below=True))
    limit: float | None = field(default=None, metadata=real(0, above=True, optional=True))
    on: bool = field(default=True, metadata=flag())
    mode: str = field(default="a", metadata=one_of(("a", "b")))
    tags: tuple[str, ...] = field(default=(), metadata=names(expected="a list of tags"))
    pair: tuple[int, ...] = field(
        default=(1, 2),
        metadata=problems(lambda v: None if len(set(v)) == len(v) else "lists a value twice"),
    )

    def __post_init__(self) -> None:
        check_fields(self, Bad, "example.{name}: ")


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"count": 0}, "example.count: must be an integer >= 1, got 0"),
        ({"count": True}, "example.count: must be an integer >= 1, got True"),
        ({"count": 2.0}, "example.count: must be an integer >= 1, got 2.0"),
        ({"ratio": 1}, "example.ratio: must be a number in [0, 1), got 1"),
        ({"ratio": math.nan}, "example.ratio: must be a number in [0, 1), got nan"),
        ({"ratio": "0.5"}, "example.ratio: must be a number in [0, 1), got '0.5'"),
        ({"limit": 0}, "example.limit: must be a number > 0, got 0"),
        ({"on": "yes"}, "example.on: must be true or false, got 'yes'"),
        ({"mode": ["a"]}, "example.mode: must be one of ('a', 'b'), got ['a']"),
        ({"tags": "x"}, "example.tags: must be a list of tags, got 'x'"),
        ({"pair": (3, 3)}, "example.pair: lists a value twice, got (3, 3)"),
    ],
)
def test_a_broken_rule_is_one_line_naming_the_field(kwargs: dict, message: str) -> None:
    with pytest.raises(Bad) as caught:
        Example(**kwargs)
    assert str(caught.value) == message


def test_good_values_are_normalized_to_plain_json_safe_values() -> None:
    example = Example(count=np.int64(3), ratio=np.float32(0.25), tags=["x", "y"])
    assert type(example.count) is int and example.count == 3
    assert type(example.ratio) is float and example.ratio == 0.25
    assert example.tags == ("x", "y")
    assert Example(limit=None).limit is None


def _config_classes() -> list[type]:
    """Every dataclass of the three packages that is a config: it checks itself on creation
    and its name says it is settings (Config, Section, Options, Limits)."""
    found = []
    for package in ("compressor", "export", "deploy"):
        root = importlib.import_module(package)
        for info in pkgutil.walk_packages(root.__path__, f"{package}."):
            if info.name.endswith("__main__"):
                continue
            module = importlib.import_module(info.name)
            for _, cls in inspect.getmembers(module, inspect.isclass):
                named = cls.__name__.endswith(("Config", "Section", "Options", "Limits"))
                if (
                    cls.__module__ == info.name
                    and dataclasses.is_dataclass(cls)
                    and named
                    and "__post_init__" in vars(cls)
                ):
                    found.append(cls)
    return found


def test_every_config_declares_its_field_rules_and_checks_them() -> None:
    classes = _config_classes()
    assert len(classes) >= 15, [c.__name__ for c in classes]
    for cls in classes:
        ruled = [f.name for f in dataclasses.fields(cls) if RULE in f.metadata]
        assert ruled, f"{cls.__name__} declares no field rule"
        assert "check_fields(" in inspect.getsource(cls.__post_init__), cls.__name__


@pytest.mark.parametrize(
    "make",
    [
        lambda: importlib.import_module("deploy").BenchConfig(shapes=None),
        lambda: importlib.import_module("deploy").BenchConfig(shapes={"x": 3}),
        lambda: importlib.import_module("deploy").BenchConfig(batch_sizes=b"x"),
        lambda: importlib.import_module("deploy").BuildOptions(profile=[1]),
        lambda: importlib.import_module("deploy").BuildOptions(profile={"x": 1}),
        lambda: importlib.import_module("deploy").BuildOptions(timing_cache=3),
        lambda: importlib.import_module("deploy").BuildOptions(strongly_typed=0),
        lambda: importlib.import_module("compressor").TrainConfig(epochs=3, milestones=[0.5, "x"]),
        lambda: importlib.import_module("compressor").TrainConfig(epochs=3, milestones=[[0.5]]),
        lambda: importlib.import_module("compressor").TrainConfig(epochs=3, rewind_points=[None]),
    ],
)
def test_hostile_values_are_the_configs_own_one_line_error(make) -> None:  # noqa: ANN001
    from compressor.errors import ConfigError
    from deploy.errors import DeployConfigError

    with pytest.raises((ConfigError, DeployConfigError)) as caught:
        make()
    assert "\n" not in str(caught.value) and " must be " in str(caught.value)


def test_numpy_values_in_lists_leave_configs_json_safe() -> None:
    import json

    import compressor

    train = compressor.TrainConfig(epochs=3, milestones=[np.float32(0.5)])
    data = compressor.DataConfig(channels=np.int64(1))
    recipe = compressor.recipe_from_dict(
        {"experiment": {"seeds": [np.int64(1)]}, "bench": {"batch_sizes": [np.int64(1)]}}
    )
    for config in (train, data, recipe):
        json.dumps(config.to_dict())
    assert recipe.bench.batch_sizes == (1,) and type(recipe.bench.batch_sizes[0]) is int
