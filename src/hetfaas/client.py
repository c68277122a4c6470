"""The Python client of a hetfaas gateway (``hetfaas serve``): the same code as with an
:class:`hetfaas.Executor`, calls run by name on a remote gateway::

    from hetfaas.client import Client

    with Client("http://127.0.0.1:8000", token) as c:
        c.deploy("mypkg.tasks:score", idempotent=True, cpus=2)
        fut = c.submit("score", 3, weight=0.5)      # a concurrent.futures.Future
        fut.result(timeout=60)                      # its result, or the call's exception
        list(c.map("score", range(100)))            # in order, the first error raised

Arguments and results travel as JSON. :class:`RemoteFuture` works with
``concurrent.futures.wait``/``as_completed`` and has ``invocation_id``, ``state``,
``timings`` (a :class:`hetfaas.Timings`), ``usage``, ``stdout``/``stderr`` and ``attempts``,
as a local future. A call that raised re-raises its exception's type when it is a builtin or
a hetfaas error (else a :class:`~hetfaas.exceptions.RemoteError`), with the remote traceback
as ``__cause__``; nothing is unpickled.

Futures are settled by at most four background threads that long-poll
``POST /v1/invocations/wait``; a 429 is retried after its ``Retry-After`` (a few times).
"""

from __future__ import annotations

import builtins
import concurrent.futures as cf
import threading
import time
from collections.abc import Iterable, Iterator
from typing import Any

import httpx

from ._invocation import State, Timings
from .exceptions import CallCancelled, EngineError, HetfaasError, RemoteError, RemoteTraceback

_STATES = {
    "QUEUED": State.PENDING,
    "RUNNING": State.RUNNING,
    "COMPLETED": State.COMPLETED,
    "FAILED": State.FAILED,
    "CANCELLED": State.CANCELLED,
}
POLL_S = 5.0  # one long-poll's bound
TRACKERS = 4
BATCH = 1000
GIVE_UP_S = 300.0  # a gateway unreachable this long fails the futures waiting on it


def _gateway_error(resp: httpx.Response) -> HetfaasError:
    from .gateway import errors

    try:
        body = resp.json()
    except ValueError:
        body = {"detail": resp.text}
    detail = body.get("detail", body) if isinstance(body, dict) else body
    if isinstance(detail, list):  # FastAPI's validation errors
        detail = "; ".join(
            f"{'.'.join(map(str, d.get('loc', ())))}: {d.get('msg')}" for d in detail
        )
    cls = {
        401: errors.Unauthorized, 403: errors.Forbidden, 404: errors.NotFound,
        409: errors.Conflict, 413: errors.BodyTooLarge, 422: errors.BadInput,
        429: errors.RateLimited,
    }.get(resp.status_code, errors.GatewayError)  # fmt: skip
    exc = cls(f"HTTP {resp.status_code}: {detail}", dict(resp.headers))
    exc.status = resp.status_code
    return exc


def _exception(record: dict[str, Any]) -> BaseException:
    """The exception of a failed record, rebuilt from its type name (never unpickled)."""
    from . import exceptions
    from .gateway import errors as gateway_errors

    err = record.get("error") or {}
    name, message, tb = err.get("type", "Error"), err.get("message", ""), err.get("traceback")
    inv = record.get("id")
    cls: Any = None
    if "." not in name:
        cls = getattr(builtins, name, None)
    else:
        module, _, qual = name.rpartition(".")
        source = {"hetfaas.exceptions": exceptions, "hetfaas.gateway.errors": gateway_errors}
        cls = getattr(source.get(module), qual, None)
    if not (isinstance(cls, type) and issubclass(cls, Exception)):
        return RemoteError(name, message, tb or "", inv)
    if issubclass(cls, HetfaasError):
        exc = cls.__new__(cls)
        Exception.__init__(exc, message)
        if issubclass(cls, exceptions.CallError):
            exc.invocation_id = inv
    else:
        try:
            exc = cls(message)
        except Exception:
            return RemoteError(name, message, tb or "", inv)
    if tb:
        exc.__cause__ = RemoteTraceback(tb)
    return exc


class RemoteFuture(cf.Future):  # type: ignore[type-arg]
    """A call on a gateway; a ``concurrent.futures.Future`` with a local future's fields."""

    def __init__(self, client: Client, invocation_id: str, function: str) -> None:
        super().__init__()
        self._client = client
        self.invocation_id = invocation_id
        self.function = function
        self.record: dict[str, Any] | None = None  # the gateway's record, once ended

    def __repr__(self) -> str:
        return f"<hetfaas.client.RemoteFuture {self.invocation_id} {self.function} {self.state}>"

    @property
    def state(self) -> State:
        if self.record is not None:
            return _STATES.get(self.record["state"], State.FAILED)
        return State.CANCELLED if self.cancelled() else State.PENDING

    @property
    def timings(self) -> Timings | None:
        """Where the call's time went in the executor (None until it ends)."""
        t = (self.record or {}).get("timings")
        if not t:
            return None
        t = dict(t)
        t["cpus"], t["gpus"] = tuple(t.get("cpus", ())), tuple(t.get("gpus", ()))
        known = Timings.__dataclass_fields__
        return Timings(**{k: v for k, v in t.items() if k in known})

    @property
    def usage(self) -> dict[str, Any] | None:
        return (self.record or {}).get("usage")

    @property
    def stdout(self) -> str:
        return (self.record or {}).get("stdout", "")

    @property
    def stderr(self) -> str:
        return (self.record or {}).get("stderr", "")

    @property
    def attempts(self) -> int:
        return int((self.record or {}).get("attempts") or 1)

    def _end(self, record: dict[str, Any]) -> None:
        """Settle from the gateway's record of the ended call."""
        if self.done():
            return
        self.record = record
        try:
            if record["state"] == "COMPLETED":
                self.set_result(record.get("result"))
            elif record["state"] == "CANCELLED":
                if not super().cancel():
                    self.set_exception(_exception(record))
                else:
                    self.set_running_or_notify_cancel()
            else:
                self.set_exception(_exception(record))
        except cf.InvalidStateError:
            pass

    def cancel(self) -> bool:
        """Cancel on the gateway: True if the call was cancelled there (queued, or stopped
        while running); False once it had ended otherwise."""
        if self.done():
            return self.cancelled()
        try:
            record = self._client._cancel(self.invocation_id)
        except HetfaasError:
            return False
        if record is not None:
            self._end(record)
        return self.cancelled()

    def result(self, timeout: float | None = None) -> Any:
        try:
            return super().result(timeout)
        except cf.CancelledError:
            raise CallCancelled(
                f"call {self.invocation_id} was cancelled", self.invocation_id
            ) from None

    def exception(self, timeout: float | None = None) -> BaseException | None:
        try:
            return super().exception(timeout)
        except cf.CancelledError:
            raise CallCancelled(
                f"call {self.invocation_id} was cancelled", self.invocation_id
            ) from None


class _Tracker:
    """Settles futures: up to ``TRACKERS`` threads, each long-polling up to ``BATCH`` ids."""

    def __init__(self, client: Client) -> None:
        self._client = client
        self._lock = threading.Lock()
        self._untracked: dict[str, RemoteFuture] = {}
        self._threads = 0
        self._closed = False

    def add(self, futures: Iterable[RemoteFuture]) -> None:
        with self._lock:
            for f in futures:
                self._untracked[f.invocation_id] = f
            if self._threads < TRACKERS and not self._closed:
                self._threads += 1
                threading.Thread(target=self._run, name="hetfaas-client", daemon=True).start()

    def close(self) -> None:
        self._closed = True

    def _run(self) -> None:
        mine: dict[str, RemoteFuture] = {}
        failing_since: float | None = None
        while True:
            with self._lock:
                while self._untracked and len(mine) < BATCH:
                    k, v = self._untracked.popitem()
                    mine[k] = v
                mine = {k: v for k, v in mine.items() if not v.done()}
                if not mine or self._closed:
                    self._threads -= 1
                    return
            try:
                body = self._client._request(
                    "POST", "/v1/invocations/wait", json={"ids": list(mine), "timeout": POLL_S},
                    timeout=POLL_S + 30,
                )  # fmt: skip
                failing_since = None
            except (httpx.HTTPError, HetfaasError) as exc:
                now = time.monotonic()
                failing_since = failing_since or now
                if now - failing_since > self._client.give_up_s:
                    err = EngineError(f"the gateway {self._client.url} is unreachable: {exc}")
                    for f in mine.values():
                        if not f.done():
                            f.set_exception(err)
                    mine = {}
                time.sleep(0.5)
                continue
            for record in body["done"]:
                fut = mine.pop(record["id"], None)
                if fut is not None:
                    fut._end(record)
            for i in body.get("missing", ()):
                fut = mine.pop(i, None)
                if fut is not None and not fut.done():
                    from .gateway.errors import NotFound

                    fut.set_exception(NotFound(f"the gateway has no invocation {i}"))


class Client:
    """A gateway at ``url`` (``http://127.0.0.1:8000``), as the holder of ``token``."""

    def __init__(
        self, url: str, token: str, *, timeout_s: float = 60.0, give_up_s: float = GIVE_UP_S
    ) -> None:
        self.url = url.rstrip("/")
        self.give_up_s = give_up_s
        self._http = httpx.Client(
            base_url=self.url,
            headers={"Authorization": f"Bearer {token}"},
            timeout=timeout_s,
            limits=httpx.Limits(max_connections=TRACKERS + 16, max_keepalive_connections=16),
        )
        self._tracker = _Tracker(self)

    # ------------------------------------------------------------------ HTTP

    def _request(self, method: str, path: str, *, timeout: float | None = None,
                 **kwargs: Any) -> Any:  # fmt: skip
        for attempt in range(6):
            extra = {} if timeout is None else {"timeout": timeout}
            resp = self._http.request(method, path, **kwargs, **extra)
            if resp.status_code == 429 and attempt < 5:
                try:
                    wait = float(resp.json().get("retry_after_s"))
                except (ValueError, TypeError, AttributeError):
                    wait = float(resp.headers.get("Retry-After", "1"))
                time.sleep(min(max(wait, 0.01), 30.0))
                continue
            if resp.status_code >= 400:
                raise _gateway_error(resp)
            return resp.json()
        raise AssertionError("unreachable")

    def _cancel(self, invocation_id: str) -> dict[str, Any] | None:
        resp = self._http.delete(f"/v1/invocations/{invocation_id}")
        if resp.status_code == 409:
            return self.invocation(invocation_id)
        if resp.status_code >= 400:
            raise _gateway_error(resp)
        body = resp.json()
        if resp.status_code == 202:  # being stopped: its end comes shortly
            body = self._request("GET", f"/v1/invocations/{invocation_id}", params={"wait": 10})
        return body if body.get("state") in ("COMPLETED", "FAILED", "CANCELLED") else None

    # ------------------------------------------------------------------ functions

    def deploy(
        self, import_path: str, name: str | None = None, idempotent: bool = False,
        **resources: Any,
    ) -> dict[str, Any]:  # fmt: skip
        """Deploy ``pkg.mod:fn`` (on the gateway's path) as ``name`` with default resources
        (``cpus``, ``gpus``, ``memory_mb``, ``timeout_s``); its record."""
        body = {"import_path": import_path, "name": name, "idempotent": idempotent,
                "resources": resources}  # fmt: skip
        return self._request("POST", "/v1/functions", json=body)

    def functions(self) -> list[dict[str, Any]]:
        return self._request("GET", "/v1/functions")["functions"]

    # ------------------------------------------------------------------ calls

    def submit(self, name: str, /, *args: Any, **kwargs: Any) -> RemoteFuture:
        """Call function ``name`` with JSON arguments; its future (accepted: durable)."""
        body = self._request(
            "POST", f"/v1/functions/{name}/async", json={"args": list(args), "kwargs": kwargs}
        )
        fut = RemoteFuture(self, body["id"], name)
        self._tracker.add([fut])
        return fut

    def call(self, name: str, /, *args: Any, **kwargs: Any) -> Any:
        """``submit(...).result()`` in one blocking request when the call ends within 60 s."""
        body = self._request(
            "POST", f"/v1/functions/{name}/invoke", json={"args": list(args), "kwargs": kwargs}
        )
        fut = RemoteFuture(self, body["id"], name)
        if "result" in body:  # 200: the record of the ended call (else 202: still running)
            fut._end(body)
        else:
            self._tracker.add([fut])
        return fut.result()

    def map_futures(self, name: str, *iterables: Iterable[Any]) -> list[RemoteFuture]:
        """One call per element (zipped as ``map`` does), sent in batches of 1,000."""
        items = [list(args) for args in zip(*iterables, strict=False)]
        futures: list[RemoteFuture] = []
        for start in range(0, len(items), BATCH):
            chunk = items[start : start + BATCH]
            body = self._request(
                "POST", f"/v1/functions/{name}/batch",
                json={"inputs": [{"args": a} for a in chunk]},
            )  # fmt: skip
            batch = [RemoteFuture(self, i, name) for i in body["ids"]]
            self._tracker.add(batch)
            futures.extend(batch)
        return futures

    def map(
        self, name: str, *iterables: Iterable[Any], timeout: float | None = None
    ) -> Iterator[Any]:
        """Results in order, as ``Executor.map``: the first error is raised when reached;
        ``timeout`` bounds the whole map, counted from this call."""
        end = None if timeout is None else time.monotonic() + timeout
        futures = self.map_futures(name, *iterables)

        def results() -> Iterator[Any]:
            for fut in futures:
                yield fut.result(None if end is None else max(0.0, end - time.monotonic()))

        return results()

    # ------------------------------------------------------------------ records

    def invocation(self, invocation_id: str, wait: float = 0.0) -> dict[str, Any]:
        return self._request(
            "GET", f"/v1/invocations/{invocation_id}", params={"wait": wait},
            timeout=wait + 30,
        )  # fmt: skip

    def invocations(self, **filters: Any) -> list[dict[str, Any]]:
        """``function=``, ``state=``, ``since=``, ``until=``, ``batch=``, ``limit=``."""
        params = {k: v for k, v in filters.items() if v is not None}
        return self._request("GET", "/v1/invocations", params=params)["invocations"]

    # ------------------------------------------------------------------ lifetime

    def close(self) -> None:
        self._tracker.close()
        self._http.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


__all__ = ["Client", "RemoteFuture"]
