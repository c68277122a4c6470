"""Invocation records as the API shows them, results as JSON, and the import of deployed
functions: the gateway's pure helpers (no state, no framework)."""

from __future__ import annotations

import dataclasses
import json
import sys
import types
from collections.abc import Callable, Iterable
from typing import Any

from .._imports import import_callable
from ..exceptions import RemoteError
from .errors import BadInput, Forbidden
from .store import LOG_BYTES, iso


def resolve_import(path: str) -> tuple[str, Callable[..., Any]]:
    """``pkg.mod:fn`` (or ``pkg.mod:Class.attr``) -> (module name, the callable); BadInput."""
    return import_callable(path, BadInput)


def module_allowed(module: str, allowed: Iterable[str]) -> bool:
    return any(a == "*" or module == a or module.startswith(a + ".") for a in allowed)


def error_name(exc: BaseException) -> str:
    """``ValueError`` for builtins, ``hetfaas.exceptions.CallTimeout`` for the rest."""
    if isinstance(exc, RemoteError):
        return exc.type_name
    cls = type(exc)
    if cls.__module__ == "builtins":
        return cls.__qualname__
    return f"{cls.__module__}.{cls.__qualname__}"


def json_default(obj: Any) -> Any:
    if hasattr(obj, "tolist"):  # numpy arrays and scalars, torch tensors
        return obj.tolist()
    if isinstance(obj, (set, frozenset)):
        return sorted(obj, key=repr)
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return dataclasses.asdict(obj)
    raise TypeError(f"a {type(obj).__name__} is not JSON")


def to_json(value: Any) -> str:
    return json.dumps(value, default=json_default, separators=(",", ":"))


def tail(text: str | None) -> str:
    text = text or ""
    return text if len(text) <= LOG_BYTES else text[-LOG_BYTES:]


def to_api(row: dict[str, Any], parse: bool = True) -> dict[str, Any]:
    """An invocation's row as the API shows it, without its result (see :func:`encode`);
    ``parse=False`` leaves ``timings`` and ``usage`` out too."""
    sub, disp, fin = row["submitted_at"], row.get("dispatched_at"), row.get("finished_at")
    error = None
    if row.get("error_type"):
        error = {
            "type": row["error_type"],
            "message": row.get("error_message") or "",
            "traceback": row.get("error_traceback") or "",
        }
    callback = None
    if row.get("callback_url"):
        callback = {"url": row["callback_url"], **json.loads(row.get("callback") or "{}")}
    api = {
        "id": row["id"],
        "namespace": row["namespace"],
        "function": row["function"],
        "state": row["state"],
        "submitted_at": iso(sub),
        "dispatched_at": iso(disp),
        "started_at": iso(row.get("started_at")),
        "finished_at": iso(fin),
        "attempts": row.get("attempts") or 0,
        "gateway": {
            "queue_ms": None if disp is None else round((disp - sub) * 1e3, 3),
            "total_ms": None if fin is None else round((fin - sub) * 1e3, 3),
        },
        "error": error,
        "stdout": row.get("stdout") or "",
        "stderr": row.get("stderr") or "",
        "callback": callback,
        "batch": row.get("batch"),
    }
    if parse:
        api["timings"] = json.loads(row["timings"]) if row.get("timings") else None
        api["usage"] = json.loads(row["usage"]) if row.get("usage") else None
    return api


def encode(row: dict[str, Any], result_text: str | None) -> bytes:
    """The JSON of a record, with its timings, usage and result (JSON text in the row)
    spliced in rather than decoded and encoded again."""
    body = json.dumps(to_api(row, parse=False), separators=(",", ":"))
    return "".join((
        body[:-1], ',"timings":', row.get("timings") or "null", ',"usage":',
        row.get("usage") or "null", ',"result":', result_text or "null", "}",
    )).encode()  # fmt: skip


def resolve_import_allowed(path: str, allowed: Iterable[str]) -> tuple[str, Callable[..., Any]]:
    """:func:`resolve_import` of a path in an allowed module, whose callable is defined there
    too: an attribute path cannot reach past it (``allowed.mod:os.system`` is refused, as is a
    name the module imported from elsewhere; a C accelerator module ``_name`` counts as
    ``name``)."""
    allowed = tuple(allowed)
    module = path.partition(":")[0]

    def refuse(what: str) -> Forbidden:
        return Forbidden(
            f"{what} is not among this gateway's allowed modules "
            f"({', '.join(allowed) or 'none'}): start it with --allow-module {module}"
        )

    if not module_allowed(module, allowed):
        raise refuse(f"module {module!r}")
    module_name, fn = resolve_import(path)
    obj: Any = sys.modules.get(module_name)
    for attr in path.partition(":")[2].split(".")[:-1]:
        obj = getattr(obj, attr, None)
        if isinstance(obj, types.ModuleType):
            raise Forbidden(f"{path!r} reaches into module {obj.__name__!r} through an attribute")
    owner = getattr(fn, "__module__", None)  # "_operator" for operator's C functions
    if not isinstance(owner, str) or not module_allowed(owner.lstrip("_"), allowed):
        raise refuse(f"{path!r} is defined in {owner!r}, which")
    return module_name, fn


class Star:
    """``fn(*args, **kwargs)`` from one ``(args, kwargs)`` item: what a chunk of a batch's
    calls maps over (see :class:`hetfaas._chunks.ChunkCall`)."""

    __slots__ = ("fn",)

    def __init__(self, fn: Callable[..., Any]) -> None:
        self.fn = fn

    def __getstate__(self) -> Callable[..., Any]:
        return self.fn

    def __setstate__(self, fn: Callable[..., Any]) -> None:
        self.fn = fn

    def __call__(self, args: list[Any], kwargs: dict[str, Any]) -> Any:
        return self.fn(*args, **kwargs)


__all__ = [
    "Star",
    "encode",
    "error_name",
    "module_allowed",
    "resolve_import",
    "resolve_import_allowed",
    "tail",
    "to_api",
    "to_json",
]
