"""Backends by name. Each is imported only when asked for, so optional engines cost nothing."""

from __future__ import annotations

import importlib
import inspect
from typing import Any

from ..exceptions import ConfigurationError, UnknownBackendError
from .base import Backend, CallSpec, Capacity

_REGISTRY: dict[str, str | type[Backend]] = {
    "local": "hetfaas.backends.local:LocalBackend",
    "submitit-local": "hetfaas.backends.submitit_backend:SubmititLocalBackend",
    "slurm": "hetfaas.backends.submitit_backend:SlurmBackend",
    "ray": "hetfaas.backends.ray_backend:RayBackend",
    "parsl": "hetfaas.backends.parsl_backend:ParslBackend",
    "slurm-pilot": "hetfaas.backends.pilot.backend:SlurmPilotBackend",
}


def register(name: str, target: str | type[Backend]) -> None:
    """Register a backend by name: a ``"module:Class"`` path (imported lazily) or a class."""
    if isinstance(target, type):
        if not issubclass(target, Backend):
            raise TypeError(f"{target!r} is not a hetfaas Backend subclass")
        missing = sorted(getattr(target, "__abstractmethods__", ()))
        if missing:
            raise TypeError(f"{target.__qualname__} does not implement {', '.join(missing)}")
        _REGISTRY[name] = target  # kept as is: a class defined anywhere, even in a function
        return
    if ":" not in target:
        raise ValueError(f"backend target must be 'module:Class', got {target!r}")
    _REGISTRY[name] = target


def available() -> list[str]:
    return sorted(_REGISTRY)


def create(name: str, **options: Any) -> Backend:
    if name == "slurm" and "pilot" in options:
        # Executor("slurm", pilot=...): warm pilot blocks (hetfaas.backends.pilot) instead of
        # a Slurm job per call; pilot=None or False keeps the job per call.
        pilot = options.pop("pilot")
        if pilot is not None and pilot is not False:
            name, options["pilot"] = "slurm-pilot", pilot
    try:
        target = _REGISTRY[name]
    except KeyError:
        raise UnknownBackendError(name, list(_REGISTRY)) from None
    if isinstance(target, type):
        cls: Any = target
    else:
        module, _, cls_name = target.partition(":")
        try:
            cls = getattr(importlib.import_module(module), cls_name)
        except (ImportError, AttributeError) as exc:
            raise ConfigurationError(f"backend {name!r} is not available here: {exc}") from exc
    if not (isinstance(cls, type) and issubclass(cls, Backend)):
        raise TypeError(f"{target} is not a hetfaas Backend subclass")
    params = inspect.signature(cls).parameters
    if not any(p.kind is p.VAR_KEYWORD for p in params.values()):
        unknown = sorted(set(options) - set(params))
        if unknown:
            raise ConfigurationError(
                f"unknown option(s) {unknown} for backend {name!r}; it takes: "
                f"{', '.join(sorted(params))}"
            )
    return cls(**options)


__all__ = ["Backend", "CallSpec", "Capacity", "available", "create", "register"]
