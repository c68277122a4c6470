"""Exceptions raised inside a call, on their way back to the caller: the one place for it.

Every backend encodes an exception where the function raised it (:func:`encode`) and decodes
it in the caller (:func:`decode`). Three forms, tried in order, each proved by a trial round
trip before it is chosen:

1. the exception pickled as it is (cloudpickle, so classes defined in ``__main__`` travel);
2. its class with ``args`` and ``__dict__``, rebuilt without calling ``__init__`` -- for an
   exception whose constructor takes other arguments than its ``args`` (``E(a, b)`` calling
   ``super().__init__(f"{a}: {b}")``), which plain pickling cannot rebuild;
3. text: a :class:`~hetfaas.exceptions.RemoteError` with the original type's qualified name,
   its message and the remote traceback.

The caller re-raises forms 1 and 2 as the original type with the remote traceback as
``__cause__`` (a :class:`~hetfaas.exceptions.RemoteTraceback`); when the caller cannot
unpickle them (a module it lacks), it falls back to form 3, which always travels.
``BaseException``\\ s that are not ``Exception`` (``SystemExit``, ``KeyboardInterrupt`` raised
by the function) travel as text, so they never stop the caller's own thread.
"""

from __future__ import annotations

import pickle
import traceback
from typing import Any

import cloudpickle

from ..exceptions import RemoteError, RemoteTraceback

AS_IS = 1  # the exception, cloudpickled
REBUILT = 2  # (class, args, __dict__), cloudpickled
TEXT = 3  # only the text below


def qualified_name(cls: type) -> str:
    module = getattr(cls, "__module__", "") or ""
    name = getattr(cls, "__qualname__", cls.__name__)
    return name if module in ("builtins", "__main__", "") else f"{module}.{name}"


def _rebuild(cls: type, args: tuple[Any, ...], state: dict[str, Any]) -> BaseException:
    exc = cls.__new__(cls)
    exc.args = args
    if state:
        exc.__dict__.update(state)
    return exc


def _same(a: BaseException, b: Any) -> bool:
    # by name: a class that travelled by value may come back as a copy of itself
    return qualified_name(type(b)) == qualified_name(type(a)) and _text(b) == _text(a)


def _text(exc: BaseException) -> str:
    try:
        return str(exc)
    except Exception as err:  # a __str__ that raises
        return f"<str() of the exception raised {type(err).__name__}>"


def encode(exc: BaseException, tb: str | None = None) -> bytes:
    """The bytes that carry ``exc`` to the caller; never raises. ``tb`` defaults to the
    traceback of ``exc``. The text form always travels too, for a caller that cannot unpickle
    the others."""
    if tb is None:
        tb = "".join(traceback.format_exception(type(exc), exc, exc.__traceback__))
    form, blob = TEXT, b""
    if isinstance(exc, Exception):
        try:
            blob = cloudpickle.dumps(exc, protocol=5)
            if _same(exc, pickle.loads(blob)):
                form = AS_IS
        except Exception:
            pass
        if form == TEXT:
            try:
                state = dict(getattr(exc, "__dict__", {}))
                blob = cloudpickle.dumps((type(exc), exc.args, state), protocol=5)
                if _same(exc, _rebuild(*pickle.loads(blob))):
                    form = REBUILT
            except Exception:
                blob = b""
    if form == TEXT:
        blob = b""
    return pickle.dumps((form, blob, qualified_name(type(exc)), _text(exc), tb), protocol=5)


def decode(data: bytes, invocation_id: str | None = None) -> BaseException:
    """The exception to raise in the caller for what :func:`encode` made."""
    form, blob, type_name, message, tb = pickle.loads(data)
    if form != TEXT:
        try:
            exc = pickle.loads(blob) if form == AS_IS else _rebuild(*pickle.loads(blob))
            exc.__cause__ = RemoteTraceback(tb)
            return exc
        except Exception as err:  # the caller cannot rebuild it (a module it lacks)
            tb = f"{tb}\n(the caller could not unpickle it: {type(err).__name__}: {err})"
    return RemoteError(type_name, message, tb, invocation_id)


def encode_text(exc: BaseException, tb: str = "") -> bytes:
    """The text form of ``exc`` only (for errors of an engine's own wrapper)."""
    return pickle.dumps((TEXT, b"", qualified_name(type(exc)), _text(exc), tb), protocol=5)


__all__ = ["AS_IS", "REBUILT", "TEXT", "decode", "encode", "encode_text", "qualified_name"]
