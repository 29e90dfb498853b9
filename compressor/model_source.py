"""Models the project did not write: a factory named by an import path.

A factory is `path/to/file.py:name` (a Python file on this machine) or
`package.module:name` (anything importable: an installed package such as timm, or a module
under the current directory, as uvicorn and gunicorn resolve their targets). It is called
with the recipe's keyword arguments and must return an `nn.Module` whose forward maps an
image batch to logits.

Importing a factory runs that file's code by design: it is the user's model definition. A
stored model only names the factory; nothing inside a model directory is ever executed
(compressor/store.py refuses a factory that lives inside the directory it loads).
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

# Keyword arguments filled from the dataset when the factory declares them and the recipe
# does not set them, so `def build(num_classes=1000)` fits a 10-class dataset unasked;
# num_classes also goes to a factory taking **kwargs (torchvision builders, timm).
DATA_KWARGS = ("num_classes", "in_channels")


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
    """The recipe's kwargs plus num_classes/in_channels where the factory takes them."""
    factory = load_factory(target)
    try:
        params = inspect.signature(factory).parameters
    except (TypeError, ValueError):  # builtins and some C extensions have no signature
        params = {}
    data = {"num_classes": num_classes, "in_channels": in_channels}
    filled = dict(kwargs)
    for key in DATA_KWARGS:
        if key in params and key not in filled:
            filled[key] = data[key]
    # torchvision's builders and timm.create_model take num_classes through **kwargs.
    takes_any = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values())
    if takes_any and "num_classes" not in filled:
        filled["num_classes"] = num_classes
    return filled


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
