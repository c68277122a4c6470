"""The HTTP gateway: a FastAPI app over an :class:`~hetfaas.gateway.engine.Engine`.

Routes (all under ``/v1`` need ``Authorization: Bearer <token>``; see
:mod:`hetfaas.gateway.auth`):

- ``POST /v1/functions``: deploy ``{"import_path": "pkg.mod:fn", "name", "idempotent",
  "resources"}``; 201 when new, 200 when it replaced a deployment;
- ``GET /v1/functions``, ``GET /v1/functions/{name}``;
- ``POST /v1/functions/{name}/invoke?wait=S``: run ``{"args": [...], "kwargs": {...}}`` and
  wait up to S seconds (default 60): 200 with the record and its result, or 202 with the id;
- ``POST /v1/functions/{name}/async``: 202 with the id at once; ``callback_url`` in the body
  is POSTed the record when the call ends;
- ``POST /v1/functions/{name}/batch?wait=S``: ``{"inputs": [{"args", "kwargs"}, ...]}`` -> 202
  with the ids and the batch id, or (all ended within S) 200 with their states, results and
  errors in order; the calls run in chunks (see :mod:`hetfaas.gateway.engine`);
- ``GET /v1/invocations/{id}?wait=S``: the record (waiting up to S for its end);
- ``POST /v1/invocations/wait``: ``{"ids": [...], "timeout": S}`` -> the records of those that
  ended, as soon as one has (the Python client's futures use it);
- ``GET /v1/invocations?function=&state=&since=&until=&batch=&limit=``: records, newest first,
  with timings, usage and logs (results by id);
- ``DELETE /v1/invocations/{id}``: cancel; 200 with the record, 202 while a running call is
  being stopped, 409 once it ended;
- ``GET /healthz``: no token.

Bodies are JSON, or on ``invoke`` and ``async`` one array or tensor file streamed to disk and
passed by reference (see :mod:`hetfaas.gateway.binary`): the gateway never unpickles request
bytes. An invocation another namespace
owns is a 404, as one that does not exist. Errors are JSON: ``{"error": code, "detail": ...}``
(422 validation errors are FastAPI's own ``detail`` list).
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import json
from collections.abc import AsyncIterator, Callable
from typing import Annotated, Any

from fastapi import Depends, FastAPI, Query, Request
from fastapi.encoders import jsonable_encoder
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, PlainTextResponse, Response
from fastapi.security import HTTPBearer
from pydantic import BaseModel, ConfigDict, Field
from starlette.exceptions import HTTPException as StarletteHTTPException

from . import binary
from .auth import PUBLIC_DOCS, FailureLimiter, Guard, RateLimiter, TokenCache
from .callbacks import CallbackPolicy
from .engine import Engine, encode, to_api
from .errors import BadInput, Conflict, GatewayError, NotFound, StoreError
from .store import FINAL, STATES, Store, new_invocation_id

DEFAULT_MAX_BODY_BYTES = 5_000_000  # Globus Compute's submission cap
DEFAULT_MAX_BINARY_BYTES = 1 << 30  # an array body (streamed to disk, not held in memory)
DEFAULT_WAIT_S = 60.0  # OpenWhisk's blocking bound
MAX_BATCH = 10_000


class ResourcesIn(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)  # no bool for a number
    cpus: int = Field(1, ge=1)
    gpus: float = Field(0, ge=0)
    memory_mb: int | None = Field(None, gt=0)
    timeout_s: float | None = Field(None, gt=0)


class DeployIn(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)  # no bool for a number
    import_path: str = Field(..., examples=["mypkg.tasks:score"])
    name: str | None = Field(None, description="default: the function's own name")
    idempotent: bool = Field(False, description="safe to run again after a crash or restart")
    resources: ResourcesIn = Field(default_factory=ResourcesIn)


class InvokeIn(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)  # no bool for a number
    args: list[Any] = Field(default_factory=list)
    kwargs: dict[str, Any] = Field(default_factory=dict)


class AsyncIn(InvokeIn):
    callback_url: str | None = Field(
        None, pattern=r"^https?://", description="POSTed the record when the call ends"
    )


class BatchIn(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)  # no bool for a number
    inputs: list[InvokeIn] = Field(..., min_length=1, max_length=MAX_BATCH)
    callback_url: str | None = Field(None, pattern=r"^https?://")


class WaitIn(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)  # no bool for a number
    ids: list[str] = Field(..., min_length=1, max_length=MAX_BATCH)
    timeout: float = Field(10.0, ge=0, le=300)


class Accepted(BaseModel):
    id: str
    state: str
    location: str


class ErrorOut(BaseModel):
    error: str = Field(..., description="a code: unauthorized, bad_input, not_found, ...")
    detail: Any = Field(..., description="what was wrong (a list for a body's validation)")


_ERRORS: dict[int | str, dict[str, Any]] = {
    status: {"model": ErrorOut, "description": text}
    for status, text in [
        (401, "no token, or an invalid or revoked one"),
        (403, "not allowed (a module outside --allow-module)"),
        (404, "no such function or invocation in this token's namespace"),
        (409, "in conflict with the invocation's state"),
        (411, "a binary body without a Content-Length"),
        (413, "a body over this token's limit"),
        (415, "a body that is neither JSON nor an array"),
        (422, "a bad input: the detail says which"),
        (429, "over this token's rate (see Retry-After)"),
        (503, "the store is unavailable"),
    ]
}


def _json(body: Any, status: int = 200, headers: dict[str, str] | None = None) -> Response:
    return JSONResponse(body, status_code=status, headers=headers)


def create_app(
    store: Store,
    executor: Any,
    *,
    allowed_modules: tuple[str, ...] | list[str] = (),
    max_body_bytes: int = DEFAULT_MAX_BODY_BYTES,
    max_binary_bytes: int = DEFAULT_MAX_BINARY_BYTES,
    rate_per_s: float | None = None,
    default_wait_s: float = DEFAULT_WAIT_S,
    max_wait_s: float = 300.0,
    max_inflight: int | None = None,
    cors_origins: tuple[str, ...] | list[str] = (),
    public_docs: bool = True,
    grace_s: float = 10.0,
    purge_every_s: float | None = 3600.0,
    metrics: bool = True,
    dashboard: bool = True,
    callback_allow: tuple[str, ...] | list[str] = (),
    failed_tokens_per_min: float | None = 10.0,
    loop_delivery: bool = True,
) -> FastAPI:
    """The gateway's app over ``store`` and ``executor`` (neither is closed by the app).

    ``allowed_modules``: module prefixes functions may be deployed from (``"*"``: any;
    default none). ``max_body_bytes`` (JSON), ``max_binary_bytes`` (an array body) and
    ``rate_per_s``: limits of tokens that have none of their own (``None`` rate: unlimited).
    ``cors_origins``: off unless given. ``callback_allow``: the hosts, names and networks
    callbacks may go to (default: anywhere but link-local and multicast networks; see
    :mod:`.callbacks`). ``failed_tokens_per_min``: invalid tokens a client address may send
    (a burst of twice that first; ``None``: no limit; see :mod:`.auth`).
    ``public_docs``: serve the OpenAPI schema and docs without a token. ``metrics``: serve
    ``/metrics`` for Prometheus (with a token; see :mod:`.metrics`). ``loop_delivery``: the
    executor's backend completes its futures in the server's event loop when it can
    (:meth:`~hetfaas.backends.base.Backend.deliver_on`; the local pool does), so a call's
    end is recorded and answered without a hop between threads; False: in its own thread.
    """
    observer = None
    if metrics:
        from .metrics import GatewayMetrics

        observer = GatewayMetrics(executor)
    engine = Engine(store, executor, max_inflight=max_inflight, allowed_modules=allowed_modules,
                    callback_policy=CallbackPolicy.parse(callback_allow),
                    observer=observer)  # fmt: skip
    if observer is not None:
        observer.bind(engine)

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        await asyncio.to_thread(engine.start, purge_every_s)
        backend = getattr(executor, "backend", None)
        hand_back = None
        if loop_delivery and hasattr(backend, "deliver_on"):
            hand_back = backend.deliver_on(asyncio.get_running_loop())
        try:
            yield
            await asyncio.to_thread(engine.stop, grace_s)
        finally:
            if hand_back is not None:
                hand_back()

    app = FastAPI(
        title="hetfaas gateway",
        version="1",
        summary="Python functions as serverless calls, over HTTP",
        lifespan=lifespan,
        responses=_ERRORS,
    )
    app.state.engine = engine
    bearer = HTTPBearer(auto_error=False, description="a token from `hetfaas token create`")
    public = ("/healthz", *(PUBLIC_DOCS if public_docs else ()))
    app.add_middleware(
        Guard,  # type: ignore[arg-type]
        tokens=TokenCache(store),
        limiter=RateLimiter(),
        failures=FailureLimiter(failed_tokens_per_min) if failed_tokens_per_min else None,
        rate_per_s=rate_per_s,
        max_body_bytes=max_body_bytes,
        max_binary_bytes=max_binary_bytes,
        public=public,
    )
    if cors_origins:
        from fastapi.middleware.cors import CORSMiddleware

        app.add_middleware(
            CORSMiddleware,  # type: ignore[arg-type]
            allow_origins=list(cors_origins),
            allow_methods=["GET", "POST", "DELETE"],
            allow_headers=["Authorization", "Content-Type"],
        )

    @app.exception_handler(GatewayError)
    async def _gateway_error(request: Request, exc: GatewayError) -> Response:
        return _json({"error": exc.code, "detail": str(exc)}, exc.status, exc.headers)

    @app.exception_handler(RequestValidationError)
    async def _validation_error(request: Request, exc: RequestValidationError) -> Response:
        # the errors without the input (it may be any bytes: FastAPI's own handler fails)
        errors = [{k: e[k] for k in ("type", "loc", "msg") if k in e} for e in exc.errors()]
        return _json({"error": "bad_input", "detail": jsonable_encoder(errors)}, 422)

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(request: Request, exc: StarletteHTTPException) -> Response:
        if exc.status_code == 400:  # FastAPI's "error parsing the body": not UTF-8 JSON
            return _json({"error": "bad_input", "detail": "the body is not JSON (UTF-8)"}, 422)
        code = {404: "not_found", 405: "method_not_allowed"}.get(exc.status_code, "error")
        return _json({"error": code, "detail": exc.detail}, exc.status_code, exc.headers)

    @app.exception_handler(UnicodeEncodeError)
    async def _not_unicode(request: Request, exc: UnicodeEncodeError) -> Response:
        # text with a lone surrogate (JSON's "\ud800") that the store cannot encode as UTF-8
        detail = "text in the request is not valid Unicode (a lone surrogate)"
        return _json({"error": "bad_input", "detail": detail}, 422)

    @app.exception_handler(StoreError)
    async def _store_error(request: Request, exc: StoreError) -> Response:
        return _json({"error": "store_unavailable", "detail": str(exc)}, 503)

    def ns(request: Request) -> str:
        return request.state.principal.namespace

    deps = [Depends(bearer)]

    # ---------------------------------------------------------------- health

    @app.get("/healthz", tags=["health"])
    async def healthz() -> dict[str, str]:
        return {"status": "ok"}

    if observer is not None:

        @app.get("/metrics", tags=["health"], dependencies=deps, response_class=PlainTextResponse)
        async def metrics_text(request: Request) -> Response:
            """Prometheus' text format: the executor's series (machine-wide) and this token's
            namespace's invocations."""
            text = await asyncio.to_thread(observer.text, ns(request))
            return Response(text, media_type="text/plain; version=0.0.4; charset=utf-8")

    # ---------------------------------------------------------------- functions

    @app.post("/v1/functions", tags=["functions"], status_code=201, dependencies=deps)
    def deploy(body: DeployIn, request: Request) -> Response:
        rec, created = engine.deploy(
            ns(request),
            body.import_path,
            name=body.name,
            idempotent=body.idempotent,
            resources=body.resources.model_dump(),
        )
        return _json({**rec.as_api(), "created": created}, 201 if created else 200)

    @app.get("/v1/functions", tags=["functions"], dependencies=deps)
    def list_functions(request: Request) -> dict[str, Any]:
        return {"functions": [d.record.as_api() for d in engine.functions(ns(request))]}

    @app.get("/v1/functions/{name}", tags=["functions"], dependencies=deps)
    def get_function(name: str, request: Request) -> dict[str, Any]:
        return engine.function(ns(request), name).record.as_api()

    # ---------------------------------------------------------------- invoke

    async def accept_and_wait(
        request: Request,
        name: str,
        inputs: list[tuple[list[Any], dict[str, Any]]],
        wait: float,
        callback_url: str | None = None,
        batch: str | None = None,
        files: list[str] | None = None,
    ) -> tuple[list[str], list[str], dict[str, dict[str, Any]]]:
        loop = asyncio.get_running_loop()
        futs: dict[str, asyncio.Future[dict[str, Any]]] = {}

        def on_end(row: dict[str, Any]) -> None:
            _call_in(loop, _settle, futs, row)

        try:
            ids, states_fut = engine.accept(
                ns(request), name, inputs, callback_url=callback_url, batch=batch,
                on_end=on_end if wait > 0 else None, files=files,
            )  # fmt: skip
        except BaseException:
            if files:
                binary.remove(files)
            raise
        for i in ids:
            futs[i] = loop.create_future()
        try:
            states = (
                states_fut.result() if states_fut.done() else await asyncio.wrap_future(states_fut)
            )
            if wait <= 0:
                return ids, states, {}
            await asyncio.wait(futs.values(), timeout=wait)
        finally:
            for i, f in futs.items():
                if not f.done():
                    engine.unlisten(i, on_end)
        return ids, states, {i: f.result() for i, f in futs.items() if f.done()}

    def accepted(ids: list[str], states: list[str]) -> dict[str, Any]:
        return {"id": ids[0], "state": states[0], "location": f"/v1/invocations/{ids[0]}"}

    # The two hot routes read their body and query themselves (the same checks as the
    # models, which still describe them in the schema): FastAPI's validation of them is
    # tens of microseconds per call.
    wait_param = {
        "name": "wait", "in": "query", "required": False,
        "description": "seconds to wait for the end",
        "schema": {"type": "number", "minimum": 0, "maximum": max_wait_s,
                   "default": default_wait_s},
    }  # fmt: skip

    @app.post(
        "/v1/functions/{name}/invoke",
        tags=["invoke"],
        dependencies=deps,
        responses={202: {"model": Accepted, "description": "still running after `wait`"}},
        openapi_extra={"parameters": [wait_param, *_BINARY_HEADERS],
                       **_body_schema(InvokeIn)},
    )  # fmt: skip
    async def invoke(name: str, request: Request) -> Response:
        """Run the function and wait up to `wait` seconds: 200 with the record and its
        `result` (the record's `state` says whether the call failed), else 202 with the id.
        The body is JSON, or one array (raw with `X-Dtype`/`X-Shape`, .npy, safetensors)."""
        wait = _wait_param(request.query_params.get("wait"), default_wait_s, max_wait_s)
        kind = binary.media_kind(request.headers.get("content-type"))
        if kind is not None:
            args, kwargs, files = await read_binary(request, name, kind)
            ids, states, done = await accept_and_wait(
                request, name, [(args, kwargs)], wait, files=files
            )
        else:
            body = _invoke_body(await request.body(), with_callback=False)
            ids, states, done = await accept_and_wait(request, name, [body[:2]], wait)
        if ids[0] in done:
            return Response(record_bytes(done[ids[0]]), media_type="application/json")
        return _json(accepted(ids, states), 202, {"Location": f"/v1/invocations/{ids[0]}"})

    @app.post(
        "/v1/functions/{name}/async",
        tags=["invoke"],
        status_code=202,
        dependencies=deps,
        response_model=Accepted,
        openapi_extra={"parameters": [*_BINARY_HEADERS, _CALLBACK_HEADER],
                       **_body_schema(AsyncIn)},
    )  # fmt: skip
    async def invoke_async(name: str, request: Request) -> Response:
        """Accept the call and answer at once with its id; `callback_url` (with a binary
        body: the `X-Hetfaas-Callback` header) gets its record."""
        kind = binary.media_kind(request.headers.get("content-type"))
        files = None
        if kind is not None:
            callback_url = request.headers.get("x-hetfaas-callback")
            engine.callback_policy.check_url(callback_url)
            args, kwargs, files = await read_binary(request, name, kind)
        else:
            args, kwargs, callback_url = _invoke_body(await request.body(), with_callback=True)
            engine.callback_policy.check_url(callback_url)
        ids, states, _ = await accept_and_wait(
            request, name, [(args, kwargs)], 0, callback_url, files=files
        )
        return _json(accepted(ids, states), 202, {"Location": f"/v1/invocations/{ids[0]}"})

    async def read_binary(
        request: Request, name: str, kind: str
    ) -> tuple[list[Any], dict[str, Any], list[str]]:
        engine.function(ns(request), name)  # a 404 before a byte of the body is written
        length = int(request.headers["content-length"])  # the guard made sure it is there
        return await binary.receive(request.stream(), kind, request.headers, length, store)

    @app.post(
        "/v1/functions/{name}/batch", tags=["invoke"], dependencies=deps,
        responses={202: {"description": "accepted; some calls still run after `wait`"}},
    )  # fmt: skip
    async def invoke_batch(
        name: str,
        request: Request,
        body: BatchIn,
        wait: float = Query(0.0, ge=0, le=max_wait_s),
    ) -> Response:
        """Many calls in one request: 202 with their ids and the batch's id (a filter of the
        invocation list), or, when all ended within `wait`, 200 with their states, results
        and errors in input order (the full records: `GET /v1/invocations?batch=ID`)."""
        engine.callback_policy.check_url(body.callback_url)
        batch_id = new_invocation_id()
        ids, states, done = await accept_and_wait(
            request, name, [(i.args, i.kwargs) for i in body.inputs], wait, body.callback_url,
            batch=batch_id,
        )  # fmt: skip
        head = f'{{"batch":"{batch_id}","ids":{_ids_json(ids)},"states":'
        if len(done) < len(ids):
            now = [done[i]["state"] if i in done else s for i, s in zip(ids, states, strict=True)]
            return Response(head + json.dumps(now) + "}", 202, media_type="application/json")
        rows = [done[i] for i in ids]
        results = ",".join(result_text(r) or "null" for r in rows)
        errors = json.dumps([
            {"type": r["error_type"], "message": r.get("error_message") or ""}
            if r.get("error_type") else None for r in rows
        ])  # fmt: skip
        text = (f'{head}{json.dumps([r["state"] for r in rows])},"results":[{results}],'
                f'"errors":{errors}}}')  # fmt: skip
        return Response(text, media_type="application/json")

    def result_text(row: dict[str, Any]) -> str | None:
        result = row.get("result")
        if result is None and row.get("result_path"):
            result = store.invocation(row["id"])["result"]
        return result

    # ---------------------------------------------------------------- records

    def record_bytes(row: dict[str, Any]) -> bytes:
        return encode(row, result_text(row))

    async def wait_for(namespace: str, ids: list[str], timeout: float) -> dict[str, Any]:
        """The rows of ``ids`` (missing: None), after waiting up to ``timeout`` for any."""
        loop = asyncio.get_running_loop()
        futs = {i: loop.create_future() for i in ids}

        def on_end(row: dict[str, Any]) -> None:
            _call_in(loop, _settle, futs, row)

        for i in ids:
            engine.listen(i, on_end)
        try:
            found = store.invocations_by_id(ids, namespace)
            rows: dict[str, Any] = {i: found.get(i) for i in ids}
            open_ids = [i for i in ids if rows[i] is not None and rows[i]["state"] not in FINAL]
            if timeout > 0 and open_ids and len(open_ids) == len(found):
                end = loop.time() + timeout
                pending = [futs[i] for i in open_ids]
                await asyncio.wait(pending, timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
                if len(open_ids) > 1:  # gather those ending close to it: fewer polls
                    await asyncio.wait(pending, timeout=max(0.0, min(0.02, end - loop.time())))
                for i in open_ids:
                    if futs[i].done():
                        rows[i] = futs[i].result()
            return rows
        finally:
            for i in ids:
                engine.unlisten(i, on_end)

    @app.get("/v1/invocations/{invocation_id}", tags=["invocations"], dependencies=deps)
    async def get_invocation(
        invocation_id: str, request: Request, wait: float = Query(0.0, ge=0, le=max_wait_s)
    ) -> Response:
        """The invocation's record with its result (waiting up to `wait` s for its end)."""
        rows = await wait_for(ns(request), [invocation_id], wait)
        row = rows[invocation_id]
        if row is None:
            raise NotFound(f"no invocation {invocation_id!r} in this namespace")
        return Response(record_bytes(row), media_type="application/json")

    @app.post("/v1/invocations/wait", tags=["invocations"], dependencies=deps)
    async def wait_invocations(body: WaitIn, request: Request) -> Response:
        """Wait up to `timeout` s until one of `ids` has ended; the records of those that
        did (`done`), the ids still running (`pending`) and unknown ones (`missing`)."""
        ids = list(dict.fromkeys(body.ids))
        rows = await wait_for(ns(request), ids, body.timeout)
        done = [record_bytes(r) for r in rows.values() if r is not None and r["state"] in FINAL]
        pending = [i for i, r in rows.items() if r is not None and r["state"] not in FINAL]
        missing = [i for i, r in rows.items() if r is None]
        tail = f'],"pending":{_ids_json(pending)},"missing":{_ids_json(missing)}}}'
        return Response(
            b'{"done":[' + b",".join(done) + tail.encode(), media_type="application/json"
        )

    @app.get("/v1/invocations", tags=["invocations"], dependencies=deps)
    def list_invocations(
        request: Request,
        function: str | None = None,
        state: str | None = Query(
            None, description=" | ".join(STATES), pattern=f"(?i)^({'|'.join(STATES)})$"
        ),
        since: _Time = None,
        until: _Time = None,
        batch: str | None = None,
        limit: int = Query(100, ge=1, le=1000),
    ) -> dict[str, Any]:
        """Invocations of this namespace, newest first, with timings, usage and logs."""
        if state is not None and state.upper() not in STATES:
            raise BadInput(f"state must be one of {', '.join(STATES)}, got {state!r}")
        rows = store.invocations(
            ns(request), function=function, state=state.upper() if state else None,
            since=_seconds(since), until=_seconds(until), batch=batch, limit=limit,
        )  # fmt: skip
        return {"invocations": [to_api(r) for r in rows], "count": len(rows)}

    @app.delete("/v1/invocations/{invocation_id}", tags=["invocations"], dependencies=deps)
    async def cancel_invocation(invocation_id: str, request: Request) -> Response:
        """Cancel: a queued call is dropped, a running one stopped (200 with its record once
        it ended, 202 while it is being stopped); 409 when it had already ended."""
        namespace = ns(request)
        loop = asyncio.get_running_loop()
        futs = {invocation_id: loop.create_future()}

        def on_end(row: dict[str, Any]) -> None:
            _call_in(loop, _settle, futs, row)

        engine.listen(invocation_id, on_end)
        try:
            try:
                await asyncio.wrap_future(engine.cancel(namespace, invocation_id))
            except (NotFound, Conflict):
                raise
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(asyncio.shield(futs[invocation_id]), 5.0)
        finally:
            engine.unlisten(invocation_id, on_end)
        fut = futs[invocation_id]
        if fut.done():
            return Response(record_bytes(fut.result()), media_type="application/json")
        return _json({"id": invocation_id, "state": "RUNNING", "cancel": "requested"}, 202)

    if dashboard:  # GET /dashboard and /v1/dashboard/... (see .dashboard)
        from .dashboard import mount_dashboard

        mount_dashboard(app, engine=engine, store=store, executor=executor, deps=deps)
    return app


def _body_schema(model: type[BaseModel]) -> dict[str, Any]:
    schema = model.model_json_schema()
    content: dict[str, Any] = {"application/json": {"schema": schema}}
    if model in (InvokeIn, AsyncIn):
        raw = {"schema": {"type": "string", "format": "binary"}}
        content.update({media: raw for media in binary.MEDIA})
    return {"requestBody": {"required": True, "content": content}}


def _header(name: str, description: str) -> dict[str, Any]:
    return {"name": name, "in": "header", "required": False, "description": description,
            "schema": {"type": "string"}}  # fmt: skip


_BINARY_HEADERS = [
    _header("X-Dtype", "an application/octet-stream body's numpy dtype (float32)"),
    _header("X-Shape", "an application/octet-stream body's shape (1000,1000)"),
    _header("X-Hetfaas-Array", "numpy (default) or torch: what the function receives"),
    _header("X-Hetfaas-Param", "pass the array as this keyword, not the first argument"),
    _header("X-Hetfaas-Args", "a binary body's other positional arguments (a JSON list)"),
    _header("X-Hetfaas-Kwargs", "a binary body's keyword arguments (a JSON object)"),
]
_CALLBACK_HEADER = _header("X-Hetfaas-Callback", "a binary async invoke's callback URL")


def _invoke_body(raw: bytes, with_callback: bool) -> tuple[Any, Any, str | None]:
    """``{"args": [...], "kwargs": {...}}`` (and ``callback_url``) -> (args, kwargs, url)."""
    try:
        body = json.loads(raw) if raw else {}
    except (ValueError, UnicodeDecodeError):
        raise BadInput("the body is not JSON (UTF-8)") from None
    except RecursionError:
        raise BadInput("the body's JSON nests too deep") from None
    if not isinstance(body, dict):
        raise BadInput('the body must be an object: {"args": [...], "kwargs": {...}}')
    allowed = ("args", "kwargs", "callback_url") if with_callback else ("args", "kwargs")
    extra = sorted(set(body) - set(allowed))
    if extra:
        raise BadInput(f"unknown field(s) {extra}; the body takes {', '.join(allowed)}")
    args, kwargs, url = body.get("args", []), body.get("kwargs", {}), body.get("callback_url")
    if not isinstance(args, list):
        raise BadInput(f"args must be a list, got {type(args).__name__}")
    if not isinstance(kwargs, dict):
        raise BadInput(f"kwargs must be an object, got {type(kwargs).__name__}")
    return args, kwargs, url


_Time = Annotated[float | datetime.datetime | None, Query(description="Unix seconds or ISO 8601")]


def _seconds(t: float | datetime.datetime | None) -> float | None:
    """Unix seconds of a time filter (a naive time is UTC)."""
    if isinstance(t, datetime.datetime):
        return (t if t.tzinfo else t.replace(tzinfo=datetime.timezone.utc)).timestamp()
    return t


def _wait_param(raw: str | None, default: float, most: float) -> float:
    if raw is None:
        return default
    try:
        wait = float(raw)
    except ValueError:
        wait = -1.0
    if not 0 <= wait <= most:
        raise BadInput(f"wait must be a number of seconds in [0, {most:g}], got {raw!r}")
    return wait


def _call_in(loop: asyncio.AbstractEventLoop, fn: Callable[..., None], *args: Any) -> None:
    """``fn(*args)`` at ``loop``'s next turn: from its own thread (a call's end delivered in
    the loop, see ``loop_delivery``) without waking it through its self-pipe. (Never at once:
    an end may come inside the ``accept`` that registered its listener.)"""
    try:
        here = asyncio.get_running_loop() is loop
    except RuntimeError:
        here = False
    if here:
        loop.call_soon(fn, *args)
    else:
        loop.call_soon_threadsafe(fn, *args)


def _settle(futs: dict[str, asyncio.Future[dict[str, Any]]], row: dict[str, Any]) -> None:
    fut = futs.get(row["id"])
    if fut is not None and not fut.done():
        fut.set_result(row)


def _ids_json(ids: list[str]) -> str:
    return json.dumps(ids)


__all__ = ["DEFAULT_MAX_BINARY_BYTES", "DEFAULT_MAX_BODY_BYTES", "DEFAULT_WAIT_S", "create_app"]
