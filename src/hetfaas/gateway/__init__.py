"""hetfaas as a service: an HTTP gateway (FastAPI on uvicorn) over an Executor.

- :mod:`.store`: the durable store (SQLite, WAL): namespaces, hashed tokens, functions,
  invocations; a retention purge;
- :mod:`.engine`: the state machine from accepted to ended, and what a restart takes back;
- :mod:`.auth`: tokens, rate and body limits in front of every route;
- :mod:`.app`: ``create_app(store, executor, ...)``, the routes under ``/v1``;
- :mod:`.cli`: ``hetfaas serve`` and ``hetfaas token``;
- :mod:`hetfaas.client`: the Python client, whose futures behave like an Executor's.

The store, the engine and the errors need no web framework; ``create_app`` needs the
``serve`` extra (``pip install 'hetfaas[serve]'``).
"""

from __future__ import annotations

from typing import Any

from .engine import Engine
from .errors import (
    RESTART_REASON,
    BadInput,
    BodyTooLarge,
    Conflict,
    Forbidden,
    GatewayError,
    GatewayRestarted,
    NotFound,
    RateLimited,
    StoreError,
    Unauthorized,
)
from .store import Principal, Store, TokenInfo

__all__ = [
    "RESTART_REASON",
    "BackgroundServer",
    "BadInput",
    "BodyTooLarge",
    "Conflict",
    "Engine",
    "Forbidden",
    "GatewayError",
    "GatewayRestarted",
    "NotFound",
    "Principal",
    "RateLimited",
    "Store",
    "StoreError",
    "TokenInfo",
    "Unauthorized",
    "create_app",
]


def __getattr__(name: str) -> Any:
    if name == "create_app":
        from .app import create_app

        return create_app
    if name == "BackgroundServer":
        from .server import BackgroundServer

        return BackgroundServer
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
