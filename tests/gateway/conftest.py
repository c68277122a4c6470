"""A real gateway for the tests: uvicorn in a thread on a free 127.0.0.1 port, over a real
local pool and a SQLite store in a temporary folder (one per test module)."""

from __future__ import annotations

import dataclasses
import uuid
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


@pytest.fixture(scope="module")
def gateway(tmp_path_factory):
    store = Store(tmp_path_factory.mktemp("gateway") / "gateway.db")
    executor = hetfaas.Executor(capture_output=True)
    app = create_app(
        store,
        executor,
        allowed_modules=[FUNCS],
        max_inflight=2,
        purge_every_s=None,
        grace_s=1.0,
        max_body_bytes=200_000,
        failed_tokens_per_min=None,  # the schema run sends hundreds of bad tokens (the
    )  # fmt: skip                     limit's own tests: test_app.py)
    server = BackgroundServer(app)
    server.start()
    yield Gateway(server.url, store, app, executor)
    server.stop()
    executor.shutdown(wait=False, cancel_futures=True)
    store.close()
