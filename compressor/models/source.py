"""Models the project did not write: a factory named by an import path.

A factory is `path/to/file.py:name` (a Python file on this machine) or
`package.module:name` (anything importable: an installed package such as timm, or a module
under the current directory, as uvicorn and gunicorn resolve their targets). It is called
with the recipe's keyword arguments and must return an `nn.Module` whose forward maps an
image batch to logits.

Importing a factory runs that file's code by design: it is the user's model definition. A
stored model only names the factory; nothing inside a model directory is ever executed
(compressor/models/store.py refuses a factory that lives inside the directory it loads).
"""

from __future__ import annotations

import hashlib
import importlib
import importlib.util
import inspect
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from torch import nn

from compressor.errors import ConfigError, InputError, UnsupportedModelError
from compressor.models.channels import CHANNEL_CHOICES

# Keyword arguments filled from the dataset when the recipe does not set them, and only for
# a factory that takes them, so `def build(num_classes=1000)` fits a 10-class dataset unasked:
# num_classes when declared or when the factory takes **kwargs (torchvision's builders pass
# those on to a model class that has num_classes, and timm.create_model does too);
# the channel count only when declared by name, or as `in_chans` to timm's factories. Never
# in_channels through **kwargs: torchvision's ResNet(**kwargs) would raise a TypeError on it.
CHANNEL_KWARGS = ("in_channels", "in_chans")  # in_chans: timm's name for it
DATA_KWARGS = ("num_classes", *CHANNEL_KWARGS)


def split_target(target: str) -> tuple[str, str]:
    """'models.py:build' -> ('models.py', 'build'); a missing part is a ConfigError."""
    if not isinstance(target, str) or target.count(":") != 1:
        raise ConfigError(
            f"model.factory: expected 'path/to/file.py:function' or 'package.module:function', "
            f"got {target!r}"
        )
    where, name = (part.strip() for part in target.split(":"))
    if not where or not name.isidentifier():
        raise ConfigError(
            f"model.factory: {target!r} needs a file or module before ':' and a function "
            "name after it"
        )
    return where, name


def is_file_target(where: str) -> bool:
    return where.endswith(".py") or "/" in where or "\\" in where


def resolve_target(target: str) -> str:
    """The canonical form stored in a spec: file paths become absolute (later stages may run
    from another directory); module paths stay as given."""
    where, name = split_target(target)
    if not is_file_target(where):
        return f"{where}:{name}"
    path = Path(where).expanduser().resolve()
    if not path.is_file():
        raise InputError(f"model.factory: file not found: {where} (resolved to {path})")
    return f"{path}:{name}"


def _import_file(path: Path) -> Any:
    # One module name per absolute path, so two files called models.py never collide and a
    # second load of the same file reuses the module (its classes stay the same objects).
    digest = hashlib.sha256(str(path).encode()).hexdigest()[:12]
    module_name = f"compressor_user_{path.stem}_{digest}"
    if module_name in sys.modules:
        return sys.modules[module_name]
    spec = importlib.util.spec_from_file_location(module_name, path)
    if spec is None or spec.loader is None:
        raise InputError(f"model.factory: cannot load {path} as a Python file")
    module = importlib.util.module_from_spec(spec)
    sys.modules[module_name] = module  # dataclasses and torch.export look modules up here
    try:
        spec.loader.exec_module(module)
    except (Exception, SystemExit) as exc:  # a script-style file may call sys.exit
        del sys.modules[module_name]
        raise InputError(
            f"model.factory: importing {path} failed: {type(exc).__name__}: {_first(exc)}"
        ) from exc
    return module


def _import_module(name: str) -> Any:
    added = "" not in sys.path and str(Path.cwd()) not in sys.path
    if added:
        sys.path.insert(0, str(Path.cwd()))
    try:
        return importlib.import_module(name)
    except ModuleNotFoundError as exc:
        raise InputError(
            f"model.factory: cannot import module '{name}' ({_first(exc)}); install it or run "
            "from the directory that holds it"
        ) from exc
    except (Exception, SystemExit) as exc:  # a script-style file may call sys.exit
        raise InputError(
            f"model.factory: importing module '{name}' failed: {type(exc).__name__}: {_first(exc)}"
        ) from exc
    finally:
        if added:
            sys.path.remove(str(Path.cwd()))


def load_factory(target: str) -> Callable[..., nn.Module]:
    """The callable a target names; every way this can fail is one line naming the target."""
    where, name = split_target(target)
    if is_file_target(where):
        path = Path(where).expanduser()
        if not path.is_file():
            raise InputError(f"model.factory: file not found: {where}")
        module = _import_file(path.resolve())
    else:
        module = _import_module(where)
    factory = getattr(module, name, None)
    if factory is None:
        raise InputError(f"model.factory: '{where}' has no attribute '{name}'")
    if not callable(factory):
        raise InputError(f"model.factory: '{target}' is a {type(factory).__name__}, not callable")
    return factory


def factory_kwargs(
    target: str, kwargs: dict[str, Any], num_classes: int, in_channels: int
) -> dict[str, Any]:
    """The recipe's kwargs plus num_classes and the channel count where the factory takes them.

    A value the recipe sets itself must agree with the data: a model built for 3 channels
    or 1000 classes would only fail later, at its first forward or its output check.
    """
    _check_agrees_with_data(kwargs, num_classes, in_channels)
    factory = load_factory(target)
    named, takes_any = _parameters(factory)
    data: dict[str, int] = {}
    if "num_classes" in named or takes_any:
        data["num_classes"] = num_classes
    channel_key = channel_kwarg(target)
    if channel_key is not None and not any(key in kwargs for key in CHANNEL_KWARGS):
        data[channel_key] = in_channels
    filled = dict(kwargs)  # the recipe's order first: spec.json lists them as before
    for key, value in data.items():
        filled.setdefault(key, value)
    return filled


def channel_kwarg(target: str) -> str | None:
    """The keyword through which the factory takes the input channel count, or None.

    Declared by name (`in_channels`, or timm's `in_chans`); or `in_chans` for timm's own
    **kwargs factories, whose every model takes it. Another **kwargs factory gets none:
    torchvision's builders hand their kwargs to a model class without such an argument.
    """
    factory = load_factory(target)
    named, takes_any = _parameters(factory)
    key = next((key for key in CHANNEL_KWARGS if key in named), None)
    if key is None and takes_any and _is_timm(factory):
        return "in_chans"
    return key


def _parameters(factory: Callable[..., Any]) -> tuple[set[str], bool]:
    """(named keyword parameters, whether it also takes **kwargs)."""
    try:
        params = inspect.signature(factory).parameters
    except (TypeError, ValueError):  # builtins and some C extensions have no signature
        return set(), False
    named = {
        name
        for name, p in params.items()
        if p.kind not in (inspect.Parameter.VAR_KEYWORD, inspect.Parameter.VAR_POSITIONAL)
    }
    return named, any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values())


def _is_timm(factory: Callable[..., Any]) -> bool:
    return str(getattr(factory, "__module__", "") or "").split(".")[0] == "timm"


def _check_agrees_with_data(kwargs: dict[str, Any], num_classes: int, in_channels: int) -> None:
    for key in CHANNEL_KWARGS:
        if key in kwargs and kwargs[key] != in_channels:
            convert = (
                f"set data.channels: {kwargs[key]} to convert the images"
                if kwargs[key] in CHANNEL_CHOICES
                else "data.channels converts images to 1 or 3 channels only"
            )
            raise ConfigError(
                f"model.kwargs.{key}: {kwargs[key]!r}, but the data gives {in_channels}-channel "
                f"images; {convert}, or remove {key} from model.kwargs (it is filled from the "
                "data when the factory takes it)"
            )
    if "num_classes" in kwargs and kwargs["num_classes"] != num_classes:
        raise ConfigError(
            f"model.kwargs.num_classes: {kwargs['num_classes']!r}, but the data has "
            f"{num_classes} classes; remove num_classes from model.kwargs (it is filled from "
            "the data when the factory takes it)"
        )


def build_from_factory(target: str, kwargs: dict[str, Any]) -> nn.Module:
    """Call the factory; a raise, a wrong return type or bad arguments are one-line errors."""
    factory = load_factory(target)
    try:
        inspect.signature(factory).bind(**kwargs)
    except TypeError as exc:  # checked apart from the call: a TypeError inside is the model's
        raise ConfigError(
            f"model.kwargs: cannot call '{target}' with {kwargs}: {_first(exc)}"
        ) from exc
    except ValueError:  # no signature to check against; the call itself will tell
        pass
    try:
        model = factory(**kwargs)
    except (Exception, SystemExit) as exc:  # a script-style file may call sys.exit
        raise UnsupportedModelError(
            f"model.factory: '{target}' raised {type(exc).__name__}: {_first(exc)}"
        ) from exc
    if not isinstance(model, nn.Module):
        raise UnsupportedModelError(
            f"model.factory: '{target}' returned a {type(model).__name__}, not a torch nn.Module"
        )
    return model


def _first(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__
