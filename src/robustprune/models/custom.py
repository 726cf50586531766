"""The user's own model: ``load_factory("package.module:factory")`` imports a function or class that builds it.

The factory is called with no arguments and must return an ``nn.Module`` taking float32 NCHW pixels in [0, 1] and
returning logits (put any normalisation inside the model). The current directory is importable, as with
``python -m``. Every mistake in the spec is a one-line :class:`ConfigError`: a malformed spec, a module that cannot
be imported, a missing attribute, an attribute that is not callable, a factory that fails or returns something
other than an ``nn.Module``.
"""

from __future__ import annotations

import functools
import importlib
import os
import sys
from collections.abc import Callable
from typing import Any

from torch import nn

from robustprune.errors import ConfigError

_FORM = "package.module:factory (e.g. mynets.lenet:build)"


def _first_line(exc: BaseException) -> str:
    return (str(exc).strip().splitlines() or [""])[0][:200]


def _split(spec: str) -> tuple[str, str]:
    spec = str(spec).strip()
    mod, sep, attr = spec.partition(":")
    if not sep or not mod or not attr or ":" in attr or any(not p.isidentifier() for p in mod.split(".")) or \
            any(not p.isidentifier() for p in attr.split(".")):
        raise ConfigError(f"model factory {spec!r} must look like {_FORM}")
    return mod, attr


def load_factory(spec: str) -> Callable[..., nn.Module]:
    """The factory named by ``spec`` (``"package.module:attr"``, ``attr`` may be dotted, e.g. ``Zoo.small``),
    wrapped so that calling it returns an ``nn.Module`` or raises a one-line :class:`ConfigError`."""
    mod_name, attr = _split(spec)
    cwd = os.getcwd()
    if cwd not in sys.path and "" not in sys.path:
        sys.path.insert(0, cwd)
    try:
        module = importlib.import_module(mod_name)
    except ModuleNotFoundError as exc:
        if exc.name and (mod_name == exc.name or mod_name.startswith(exc.name + ".")):
            raise ConfigError(f"cannot import module {mod_name!r} for model factory {spec!r} (no module named "
                              f"{exc.name!r}); install it or run from the folder that holds it") from None
        raise ConfigError(f"importing {mod_name!r} for model factory {spec!r} failed: {type(exc).__name__}: "
                          f"{_first_line(exc)}") from None
    except Exception as exc:  # the user's module raised while importing
        raise ConfigError(f"importing {mod_name!r} for model factory {spec!r} failed: {type(exc).__name__}: "
                          f"{_first_line(exc)}") from None
    obj: Any = module
    for part in attr.split("."):
        if not hasattr(obj, part):
            names = [n for n in dir(module) if not n.startswith("_") and callable(getattr(module, n, None))]
            hint = f"; callables there: {', '.join(names[:8])}" if names else ""
            raise ConfigError(f"module {mod_name!r} has no attribute {attr!r} (model factory {spec!r}){hint}")
        obj = getattr(obj, part)
    if not callable(obj):
        raise ConfigError(f"model factory {spec!r} is a {type(obj).__name__}, not a function or class that returns "
                          "an nn.Module")

    @functools.wraps(obj)
    def factory(*args: Any, **kwargs: Any) -> nn.Module:
        try:
            model = obj(*args, **kwargs)
        except Exception as exc:
            raise ConfigError(f"calling model factory {spec!r} failed: {type(exc).__name__}: "
                              f"{_first_line(exc)}") from None
        if not isinstance(model, nn.Module):
            raise ConfigError(f"model factory {spec!r} returned a {type(model).__name__}, not an nn.Module")
        return model

    factory.spec = spec  # type: ignore[attr-defined]
    return factory


def build_model(spec: str, **kwargs: Any) -> nn.Module:
    """``load_factory(spec)(**kwargs)``."""
    return load_factory(spec)(**kwargs)
