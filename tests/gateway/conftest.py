"""A real gateway for the tests: uvicorn in a thread on a free 127.0.0.1 port, over a real
local pool and a SQLite store in a temporary folder (one per test module)."""

from __future__ import annotations

import contextlib
import dataclasses
import uuid
from collections.abc import Iterator
from typing import Any

import pytest

import hetfaas

pytest.importorskip("fastapi")
httpx = pytest.importorskip("httpx")

from hetfaas.gateway import BackgroundServer, Store, create_app  # noqa: E402

FUNCS = "tests.gateway.funcs"


@dataclasses.dataclass
class Gateway:
    url: str
    store: Store
    app: Any
    executor: hetfaas.Executor

    def tenant(self, **token_options: Any) -> Tenant:
        """A new namespace, its token, and an HTTP client speaking as it."""
        namespace = f"ns-{uuid.uuid4().hex[:8]}"
        info, token = self.store.create_token(namespace, **token_options)
        http = httpx.Client(
            base_url=self.url, headers={"Authorization": f"Bearer {token}"}, timeout=30
        )
        return Tenant(namespace, token, info.id, http)


@dataclasses.dataclass
class Tenant:
    namespace: str
    token: str
    token_id: str
    http: Any

    def deploy(self, fn: str, **body: Any) -> Any:
        resp = self.http.post("/v1/functions", json={"import_path": f"{FUNCS}:{fn}", **body})
        assert resp.status_code in (200, 201), resp.text
        return resp.json()


@contextlib.contextmanager
def own_gateway(
    db: Any, executor_options: dict[str, Any] | None = None, **options: Any
) -> Iterator[Gateway]:
    """A real gateway over the store file ``db`` on a local pool (``executor_options``; one
    worker by default), with ``options`` for create_app; stopped, and its pool and store
    closed, at the end."""
    store = Store(db)
    executor = hetfaas.Executor(**(executor_options or {"max_workers": 1}))
    app = create_app(store, executor, **{"allowed_modules": [FUNCS], "purge_every_s": None,
                                         "grace_s": 1.0, **options})  # fmt: skip
    server = BackgroundServer(app)
    server.start()
    try:
        yield Gateway(server.url, store, app, executor)
    finally:
        server.stop()
        executor.shutdown(wait=False, cancel_futures=True)
        store.close()


@pytest.fixture(scope="module")
def gateway(tmp_path_factory):
    # failed tokens unlimited: the schema run sends hundreds (the limit: test_auth.py)
    with own_gateway(tmp_path_factory.mktemp("gateway") / "gateway.db",
                     {"capture_output": True}, max_inflight=2, max_body_bytes=200_000,
                     failed_tokens_per_min=None) as gw:  # fmt: skip
        yield gw
