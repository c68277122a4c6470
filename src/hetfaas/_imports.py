"""``pkg.mod:fn`` import paths: one parser for every place that names a function by text (the
gateway's deployments, the advisor's command line)."""

from __future__ import annotations

import importlib
from collections.abc import Callable
from typing import Any

from .exceptions import ConfigurationError


def import_callable(
    path: str, error: type[Exception] = ConfigurationError
) -> tuple[str, Callable[..., Any]]:
    """``pkg.mod:fn`` (or ``pkg.mod:Class.attr``) -> (module name, the callable it names).

    A malformed path, a module that fails to import, a missing attribute or an object that
    is not callable raise ``error`` with a message naming which."""
    module_name, sep, attrs = path.partition(":")
    if not sep or not module_name or not attrs:
        raise error(f"import path must be 'pkg.mod:function', got {path!r}")
    try:
        obj: Any = importlib.import_module(module_name)
    except Exception as exc:
        raise error(f"cannot import {module_name!r}: {type(exc).__name__}: {exc}") from exc
    for attr in attrs.split("."):
        try:
            obj = getattr(obj, attr)
        except AttributeError:
            raise error(f"{path!r}: {module_name} has no attribute {attrs!r}") from None
    if not callable(obj):
        raise error(f"{path!r} is not callable (a {type(obj).__name__})")
    return module_name, obj


__all__ = ["import_callable"]
