"""The gateway's state machine: deployed functions, accepted calls, their hand-over to an
:class:`hetfaas.Executor`, their end, and what a restart finds.

An invocation is ``QUEUED`` (accepted, durable, not yet handed over), ``RUNNING`` (handed to
the executor), then ``COMPLETED``, ``FAILED`` or ``CANCELLED``. Every transition is a write
through the store (:meth:`Store.submit`), and so is every change of the in-memory queue:
they run one at a time under the store's commit lock, so this module keeps no lock of its
own. A call is handed to the executor only
in an after-commit hook, so a call the store does not show as ``RUNNING`` never ran.

At most ``max_inflight`` calls are handed over at a time (default: the executor's
``max_workers``), the rest wait in the gateway's queue: the calls shown ``RUNNING`` are the
ones the executor is running, and a restart reruns only what has to be rerun. The calls of a
batch invoke go in chunks, as ``Executor.map`` sends them (one executor call runs a chunk,
each item's result or error kept apart; a chunk takes one slot): a chunk's calls are
``RUNNING`` together, share the chunk's timings (with their place in it under ``chunk``) and
its logs (on the first one's record), and a running one cannot be cancelled alone.

On start (:meth:`Engine.start`) the store is read back: ``QUEUED`` calls are queued again in
their order; ``RUNNING`` ones are queued again when their function is idempotent, else they
end ``FAILED`` with :data:`~hetfaas.gateway.errors.RESTART_REASON`.
"""

from __future__ import annotations

import collections
import concurrent.futures as cf
import contextlib
import dataclasses
import itertools
import json
import logging
import threading
import time
from collections.abc import Callable, Iterable
from typing import Any

from .._chunks import MAX_CHUNK, ChunkCall, auto_chunksize
from .._invocation import Timings
from .._resources import Resources
from ..backends import errors as remote_errors
from ..exceptions import CallCancelled, HetfaasError, RemoteError, RemoteTraceback
from ..retry import DEFAULT as DEFAULT_RETRY
from ..retry import Idempotent, policy_of
from . import binary
from .callbacks import CallbackPolicy, post_json
from .errors import RESTART_REASON, BadInput, CallbackRefused, Conflict, GatewayError, NotFound
from .records import (
    Star,
    encode,
    error_name,
    resolve_import,
    resolve_import_allowed,
    tail,
    to_api,
    to_json,
)
from .store import FINAL, FunctionRecord, Store, check_name, new_invocation_id

_log = logging.getLogger("hetfaas.gateway")
PURGE_EVERY_S = 3600.0
_TIMING_FIELDS = tuple(f.name for f in dataclasses.fields(Timings))
CALLBACK_ATTEMPTS = 3


@dataclasses.dataclass
class Deployed:
    """A deployed function as the gateway runs it: ``fn`` is None when its import failed
    (``error`` says why; its calls fail with that)."""

    record: FunctionRecord
    fn: Callable[..., Any] | None
    error: str | None
    view: Any  # the executor's view with the function's resources


class _Call:
    __slots__ = (
        "args", "attempts", "batch", "callback_url", "cancel_requested", "dispatched_at",
        "files", "function", "future", "id", "input", "kwargs", "namespace", "state",
        "submitted_at", "unit",
    )  # fmt: skip

    def __init__(self, id: str, namespace: str, function: str, submitted_at: float) -> None:
        self.id, self.namespace, self.function = id, namespace, function
        self.submitted_at = submitted_at
        self.dispatched_at: float | None = None
        self.state = "QUEUED"
        self.attempts = 0
        self.input: str | None = None
        self.args: list[Any] | None = None
        self.kwargs: dict[str, Any] | None = None
        self.callback_url: str | None = None
        self.batch: str | None = None
        self.files: list[str] | None = None  # a binary call's input files (see .binary)
        self.future: Any = None
        self.cancel_requested = False
        self.unit: _Left | None = None  # shared by the calls of one chunk


class _Left:
    """How many calls of a chunk have not ended yet (the chunk holds one slot till then)."""

    __slots__ = ("n",)

    def __init__(self, n: int) -> None:
        self.n = n


class Engine:
    """Runs the calls a gateway accepts on ``executor``, durably through ``store``.

    ``allowed_modules``: module prefixes functions may be deployed from (``"*"``: any); a
    token holder can run whatever these modules hold, so the default allows none.
    """

    def __init__(
        self,
        store: Store,
        executor: Any,
        *,
        max_inflight: int | None = None,
        allowed_modules: Iterable[str] = (),
        callback_timeout_s: float = 10.0,
        callback_policy: CallbackPolicy | None = None,
        observer: Any = None,
    ) -> None:
        self.store = store
        self.executor = executor
        self.observer = observer  # told of each call handed over and each end (metrics)
        if max_inflight is None:
            try:
                max_inflight = executor.capacity.max_workers
            except Exception:
                max_inflight = 1
        if max_inflight < 1:
            raise BadInput(f"max_inflight must be >= 1, got {max_inflight}")
        self.max_inflight = int(max_inflight)
        self.allowed_modules = tuple(allowed_modules)
        self.callback_timeout_s = callback_timeout_s
        self.callback_policy = callback_policy or CallbackPolicy()
        self._registry: dict[tuple[str, str], Deployed] = {}
        # under the store's commit lock only (in its operations and hooks):
        self._pending: collections.deque[_Call] = collections.deque()
        self._calls: dict[str, _Call] = {}
        self._inflight = 0
        # any thread:
        self._listeners: dict[str, list[Callable[[dict[str, Any]], None]]] = {}
        self._listeners_lock = threading.Lock()
        self._callbacks = cf.ThreadPoolExecutor(4, thread_name_prefix="hetfaas-callback")
        self._stopping = False
        self._stop_event = threading.Event()
        self._purger: threading.Thread | None = None
        self.recovered: dict[str, int] = {}

    # ------------------------------------------------------------------ life cycle

    def start(self, purge_every_s: float | None = PURGE_EVERY_S) -> dict[str, int]:
        """Load the deployed functions, take back what the store holds unfinished (see the
        module), and purge past the retention now and every ``purge_every_s``. On a store
        several gateways share (PostgreSQL), keep this gateway's lease too: at each heartbeat
        load what peers deployed, and take over the calls of peers whose lease expired."""
        for rec in self.store.functions():
            self._registry[(rec.namespace, rec.name)] = self._load(rec)
        out = self.store.submit(self._recover_op, after=self._after_recover).result()
        self.recovered = {k: v for k, v in out.items() if not k.startswith("_")}

        def refresh() -> None:  # in the lease's thread: functions deployed through a peer
            for rec in self.store.functions():
                dep = self._registry.get((rec.namespace, rec.name))
                if dep is None or dep.record.updated_at < rec.updated_at:
                    self._registry[(rec.namespace, rec.name)] = self._load(rec)

        def take_over() -> None:  # a dead peer's unfinished calls: this gateway's now
            if not self._stopping:
                refresh()
                self.store.submit(self._recover_op, after=self._after_recover)

        def lost() -> None:  # this lease expired, a peer may run these calls: hand none over
            self._stopping = True

        self.store.watch_peers(on_tick=refresh, on_orphans=take_over, on_lost=lost)
        if purge_every_s:
            self._purger = threading.Thread(
                target=self._purge_loop, args=(purge_every_s,), name="hetfaas-purge", daemon=True
            )
            self._purger.start()
        return self.recovered

    def stop(self, grace_s: float = 10.0) -> None:
        """Stop handing calls over and wait up to ``grace_s`` for those running; whatever is
        left stays QUEUED or RUNNING in the store, for the next start to take back."""
        self._stopping = True
        self._stop_event.set()
        end = time.monotonic() + grace_s
        while time.monotonic() < end and self.inflight:
            time.sleep(0.02)
        with contextlib.suppress(Exception):
            self.store.submit(lambda conn: None).result(timeout=10)  # flush the writes
        self._callbacks.shutdown(wait=True, cancel_futures=False)

    @property
    def inflight(self) -> int:
        return self._inflight

    @property
    def queued(self) -> int:
        pending = self._pending.copy()  # one C call, atomic under the GIL: the store's
        return sum(1 for c in pending if c.state == "QUEUED")  # writer changes the deque

    def _purge_loop(self, every_s: float) -> None:
        while not self._stop_event.is_set():
            try:
                n = self.store.purge()
                if n:
                    _log.info("hetfaas gateway: purged %d invocations past the retention", n)
                n = binary.sweep(self.store)
                if n:
                    _log.info("hetfaas gateway: removed %d input files of ended calls", n)
            except Exception:
                _log.exception("hetfaas gateway: purge failed")
            self._stop_event.wait(every_s)

    # ------------------------------------------------------------------ functions

    def _load(self, rec: FunctionRecord) -> Deployed:
        try:
            _, fn = resolve_import(rec.import_path)
            view = self.executor.options(resources=Resources(**rec.resources))
        except Exception as exc:
            return Deployed(rec, None, f"cannot load {rec.import_path}: {exc}", None)
        if rec.idempotent and policy_of(fn, None) is None:
            fn = Idempotent(fn, DEFAULT_RETRY)
        return Deployed(rec, fn, None, view)

    def deploy(
        self,
        namespace: str,
        import_path: str,
        *,
        name: str | None = None,
        idempotent: bool = False,
        resources: dict[str, Any] | None = None,
    ) -> tuple[FunctionRecord, bool]:
        """Deploy ``import_path`` in ``namespace`` (again: replaced); (record, created)."""
        _, fn = resolve_import_allowed(import_path, self.allowed_modules)
        name = check_name(name or import_path.rpartition(":")[2].rpartition(".")[2], "name")
        try:
            res = Resources(**(resources or {}))
        except (HetfaasError, TypeError) as exc:
            raise BadInput(f"resources: {exc}") from None
        fields = {f.name: getattr(res, f.name) for f in dataclasses.fields(res)}
        declared = policy_of(fn, None) is not None
        now = time.time()
        old = self._registry.get((namespace, name))
        rec = FunctionRecord(
            namespace, name, import_path, bool(idempotent) or declared, fields,
            old.record.created_at if old else now, now,
        )  # fmt: skip
        deployed = self._load(rec)
        if deployed.fn is None:
            raise BadInput(deployed.error or f"cannot load {import_path}")
        created = self.store.put_function(rec).result()
        self._registry[(namespace, name)] = deployed
        return rec, created

    def function(self, namespace: str, name: str) -> Deployed:
        dep = self._registry.get((namespace, name))
        if dep is None:
            raise NotFound(f"no function {name!r} is deployed in this namespace")
        return dep

    def functions(self, namespace: str) -> list[Deployed]:
        return sorted(
            (d for (ns, _), d in self._registry.items() if ns == namespace),
            key=lambda d: d.record.name,
        )

    # ------------------------------------------------------------------ accept

    def accept(
        self,
        namespace: str,
        name: str,
        inputs: list[tuple[list[Any], dict[str, Any]]],
        *,
        callback_url: str | None = None,
        batch: str | None = None,
        on_end: Callable[[dict[str, Any]], None] | None = None,
        files: list[str] | None = None,
    ) -> tuple[list[str], cf.Future[list[str]]]:
        """Accept calls of ``name``: their ids now, and a future of their states once the
        store holds them (the moment a request may say "accepted"). ``on_end``: as
        :meth:`listen` for each call, registered before the call can end. ``files``: the
        input files of one binary call (:mod:`.binary`), removed when it ends."""
        self.function(namespace, name)
        if self._stopping:
            raise GatewayError("the gateway is shutting down")
        now = time.time()
        batch_id = batch
        calls = []
        for args, kwargs in inputs:
            call = _Call(new_invocation_id(), namespace, name, now)
            call.args, call.kwargs = args, kwargs
            call.input = binary.input_json(args, kwargs, to_json)
            call.callback_url, call.batch, call.files = callback_url, batch_id, files
            calls.append(call)
            if on_end is not None:
                self.listen(call.id, on_end)

        def op(conn: Any) -> tuple[list[str], list[list[_Call]]]:
            conn.executemany(  # first: if it fails, nothing in memory changed
                "INSERT INTO invocations (id, namespace, function, state, submitted_at,"
                " attempts, input, callback_url, batch, owner)"
                " VALUES (?, ?, ?, 'QUEUED', ?, 0, ?, ?, ?, ?)",
                [(c.id, c.namespace, c.function, c.submitted_at, c.input, c.callback_url,
                  c.batch, self.store.owner_id) for c in calls],
            )  # fmt: skip
            for call in calls:
                call.input = None  # kept in the store; args/kwargs stay until handed over
                self._calls[call.id] = call
                self._pending.append(call)
            started = self._fill(conn)
            return [c.state for c in calls], started

        states: cf.Future[list[str]] = cf.Future()

        def forget() -> None:
            if on_end is not None:
                for call in calls:
                    self.unlisten(call.id, on_end)

        def accepted(f: cf.Future[Any]) -> None:
            exc = f.exception()
            if exc is None:
                states.set_result(f.result()[0])
            else:
                forget()
                states.set_exception(exc)

        try:
            fut = self.store.submit(op, after=lambda value: self._after_fill(value[1]))
        except Exception:
            forget()
            raise
        fut.add_done_callback(accepted)
        return [c.id for c in calls], states

    def _fill(self, conn: Any) -> list[list[_Call]]:
        """Mark queued calls RUNNING while there is room (in a store operation); the units
        to hand over once committed: one call, or a chunk of one batch's calls."""
        if self._stopping:
            return []
        units = []
        now = time.time()
        while self._pending and self._inflight < self.max_inflight:
            call = self._pending.popleft()
            if call.state != "QUEUED":
                continue  # cancelled while queued
            unit = [call]
            if call.batch is not None:
                unit += self._take_chunk(call.batch)
            for c in unit:
                c.state, c.dispatched_at = "RUNNING", now
                c.attempts += 1
                if c.args is not None:
                    conn.execute(self._RUN_SQL, (now, c.attempts, c.id))
                    continue
                row = conn.execute(self._RUN_SQL + " RETURNING input", (now, c.attempts, c.id))
                data = json.loads(row.fetchone()[0])  # a call read back after a restart
                c.args, c.kwargs, c.files = binary.input_from(data, self.store)
            if len(unit) > 1:
                left = _Left(len(unit))
                for c in unit:
                    c.unit = left
            self._inflight += 1
            units.append(unit)
        return units

    _RUN_SQL = (
        "UPDATE invocations SET state = 'RUNNING', dispatched_at = ?, attempts = ? WHERE id = ?"
    )

    def _take_chunk(self, batch: str) -> list[_Call]:
        """The calls of ``batch`` that follow at the head of the queue, as many as one chunk
        of it takes (chunks as ``Executor.map`` makes them, for the calls still queued)."""
        head = list(itertools.takewhile(
            lambda c: c.batch == batch, itertools.islice(self._pending, 4 * MAX_CHUNK)
        ))  # fmt: skip
        size = auto_chunksize(1 + len(head), self.max_inflight)
        out = []
        while len(out) < size - 1 and self._pending and self._pending[0].batch == batch:
            c = self._pending.popleft()
            if c.state == "QUEUED":
                out.append(c)
        return out

    def _after_fill(self, units: list[list[_Call]]) -> None:
        """Hand units over (a store hook: after the commit that marked them RUNNING)."""
        if not units:
            return
        try:
            if len(units) == 1:
                self._hand_over(units[0])
                return
            with self.executor.batch():
                for unit in units:
                    self._hand_over(unit)
        except Exception as exc:  # the backend refused the batch: those calls end here
            for unit in units:
                if unit[0].future is not None and not unit[0].future.done():
                    self._finish_later([(c, self._failure(c, exc)) for c in unit])

    def _hand_over(self, unit: list[_Call]) -> None:
        first = unit[0]
        dep = self._registry.get((first.namespace, first.function))
        try:
            if dep is None:
                raise NotFound(f"function {first.function!r} is no longer deployed")
            if dep.fn is None:
                raise BadInput(dep.error or "the function cannot be loaded")
            if len(unit) == 1:
                fut = dep.view.submit(dep.fn, *(first.args or ()), **(first.kwargs or {}))
            else:
                chunk: Any = ChunkCall(Star(dep.fn), True)
                policy = policy_of(dep.fn, None)
                if policy is not None:  # a chunk of an idempotent function is retried too
                    chunk = Idempotent(chunk, policy)
                fut = dep.view.submit(chunk, [(c.args or [], c.kwargs or {}) for c in unit])
            if self.observer is not None:
                self.observer.handed(fut)
        except Exception as exc:
            self._finish_later([(c, self._failure(c, exc)) for c in unit])
            return
        for c in unit:
            c.args = c.kwargs = None
            c.future = fut
        if first.cancel_requested:
            fut.cancel()
        if len(unit) == 1:
            fut.add_done_callback(lambda f, c=first: self._on_done(c, f))
        else:
            fut.add_done_callback(lambda f, u=unit: self._on_chunk_done(u, f))

    # ------------------------------------------------------------------ ends

    def _failure(self, call: _Call, exc: BaseException, state: str = "FAILED") -> dict[str, Any]:
        tb = ""
        if isinstance(exc, RemoteError):
            message, tb = exc.remote_message, exc.remote_traceback
        else:
            message = str(exc)
            if isinstance(exc.__cause__, RemoteTraceback):
                tb = exc.__cause__.tb
        return {
            "state": state, "finished_at": time.time(), "error_type": error_name(exc),
            "error_message": message, "error_traceback": tb, "attempts": call.attempts,
        }  # fmt: skip

    def _on_done(self, call: _Call, fut: Any) -> None:
        """The executor's future of one call ended (any thread): what to write."""
        if self._stopping and fut.cancelled():
            return  # shut down under it: left RUNNING for the next start
        try:
            if fut.cancelled():
                exc = CallCancelled(f"call {call.id} was cancelled")
                out = self._failure(call, exc, "CANCELLED")
            elif fut.exception() is not None:
                out = self._failure(call, fut.exception())
            else:
                out = self._completed(call, fut.result())
            out.update(self._extras(call, fut, out["finished_at"]))
        except Exception as exc:  # never lose the end of a call
            out = self._failure(call, exc)
        self._finish_later([(call, out)])

    def _on_chunk_done(self, unit: list[_Call], fut: Any) -> None:
        """The future of a chunk of a batch's calls ended: each call's own end."""
        if self._stopping and fut.cancelled():
            return
        try:
            if fut.cancelled() or fut.exception() is not None:
                exc = fut.exception() if not fut.cancelled() else CallCancelled("cancelled")
                state = "CANCELLED" if fut.cancelled() else "FAILED"
                outs = [self._failure(c, exc, state) for c in unit]
                per_item_us = None
            else:
                res = fut.result()
                errs = res.errors or {}
                outs = [
                    self._failure(c, remote_errors.decode(errs[i], c.id)) if i in errs
                    else self._completed(c, res.values[i])
                    for i, c in enumerate(unit)
                ]  # fmt: skip
                per_item_us = round(res.per_item_ns / 1e3, 3)
            extras = self._extras(unit[0], fut, outs[0]["finished_at"])
            timings = extras.pop("timings", None)
            for i, (c, out) in enumerate(zip(unit, outs, strict=True)):
                out.update(extras if i == 0 else {**extras, "stdout": "", "stderr": ""})
                if timings is not None:  # the chunk's timings, and where the item sat in it
                    out["timings"] = (timings[:-1] + f',"chunk":{{"size":{len(unit)},'
                                      f'"index":{i},"compute_per_item_us":'
                                      f'{json.dumps(per_item_us)}}}}}')  # fmt: skip
                out["attempts"] = extras["attempts"] + c.attempts - unit[0].attempts
            pairs = list(zip(unit, outs, strict=True))
        except Exception as exc:
            pairs = [(c, self._failure(c, exc)) for c in unit]
        self._finish_later(pairs)

    def _completed(self, call: _Call, value: Any) -> dict[str, Any]:
        out: dict[str, Any] = {"state": "COMPLETED", "finished_at": time.time()}
        try:
            text = to_json(value)
        except (TypeError, ValueError) as err:
            out = self._failure(call, err)
            out["error_type"] = "hetfaas.exceptions.SerializationError"
            out["error_message"] = f"the result is not JSON: {err}"
            return out
        if len(text) > self.store.inline_result_bytes:
            out["result_path"] = self.store.result_file(call.id, text)
        else:
            out["result"] = text
        return out

    def _extras(self, call: _Call, fut: Any, finished_at: float) -> dict[str, Any]:
        """Attempts, timings, start time, usage and logs of an executor's future."""
        out: dict[str, Any] = {
            "attempts": call.attempts + max(0, getattr(fut, "attempts", 1) - 1),
            "stdout": tail(fut.stdout), "stderr": tail(fut.stderr),
        }  # fmt: skip
        timings = fut.timings
        if timings is not None:
            d = {f: getattr(timings, f) for f in _TIMING_FIELDS}
            d["cpus"], d["gpus"] = list(timings.cpus), list(timings.gpus)
            out["timings"] = json.dumps(d, separators=(",", ":"))
            if timings.started_ns:
                ago = (time.perf_counter_ns() - timings.started_ns) / 1e9
                out["started_at"] = finished_at - max(0.0, ago)
        usage = getattr(fut, "usage", None)
        if usage is not None:
            d = dataclasses.asdict(usage)
            d["cpu_efficiency"] = usage.cpu_efficiency
            d["memory_efficiency"] = usage.memory_efficiency
            out["usage"] = to_json(d)
        return out

    def _finish_later(self, pairs: list[tuple[_Call, dict[str, Any]]]) -> None:
        try:
            self.store.submit(lambda conn: self._finish_op(conn, pairs), self._after_finish)
        except Exception:
            _log.exception("hetfaas gateway: cannot record the end of %s", pairs[0][0].id)

    _END_COLUMNS = (
        "state", "finished_at", "started_at", "attempts", "result", "result_path",
        "error_type", "error_message", "error_traceback", "timings", "usage", "stdout",
        "stderr",
    )  # fmt: skip
    _END_SQL = (
        f"UPDATE invocations SET {', '.join(f'{c} = ?' for c in _END_COLUMNS)} WHERE id = ?"
        " AND state NOT IN ('COMPLETED', 'FAILED', 'CANCELLED')"
    )

    def _finish_op(
        self, conn: Any, pairs: list[tuple[_Call, dict[str, Any]]]
    ) -> tuple[list[dict[str, Any]], list[list[_Call]]]:
        """Write the ends of calls (in a store operation); the rows that ended now, and the
        units that their freed room lets start."""
        rows, params = [], []
        for call, out in pairs:
            if self._calls.pop(call.id, None) is None:
                continue  # it ended already (the store shows each end once)
            if call.state == "RUNNING":
                if call.unit is None:
                    self._inflight -= 1
                else:
                    call.unit.n -= 1
                    if call.unit.n == 0:
                        self._inflight -= 1
            call.state = out["state"]
            params.append((*(out.get(c) for c in self._END_COLUMNS), call.id))
            rows.append({
                    "id": call.id, "namespace": call.namespace, "function": call.function,
                    "submitted_at": call.submitted_at, "dispatched_at": call.dispatched_at,
                    "callback_url": call.callback_url, "batch": call.batch, **out,
                })  # fmt: skip
            if call.files:
                rows[-1]["_files"] = call.files
        conn.executemany(self._END_SQL, params)
        return rows, self._fill(conn)

    def _after_finish(self, value: tuple[list[dict[str, Any]], list[list[_Call]]]) -> None:
        rows, started = value
        self._after_fill(started)
        for row in rows:
            if "_files" in row:  # the end is durable: a binary input is not needed again
                binary.remove(row.pop("_files"))
            self._ended(row)

    def _ended(self, row: dict[str, Any]) -> None:
        """An invocation's end is durable: tell whoever waits, and its callback URL."""
        if self.observer is not None:
            with contextlib.suppress(Exception):
                self.observer.ended(row)
        with self._listeners_lock:
            listeners = self._listeners.pop(row["id"], [])
        for fn in listeners:
            try:
                fn(row)
            except Exception:
                _log.exception("hetfaas gateway: a listener failed")
        if row.get("callback_url"):
            with contextlib.suppress(RuntimeError):  # shut down: not delivered
                self._callbacks.submit(self._deliver, row)

    # ------------------------------------------------------------------ waiting

    def listen(self, invocation_id: str, fn: Callable[[dict[str, Any]], None]) -> None:
        """Call ``fn(row)`` (in a store hook) when the invocation's end is durable. Call
        before reading its state from the store, so that no end falls between the two."""
        with self._listeners_lock:
            self._listeners.setdefault(invocation_id, []).append(fn)

    def unlisten(self, invocation_id: str, fn: Callable[[dict[str, Any]], None]) -> None:
        with self._listeners_lock:
            fns = self._listeners.get(invocation_id)
            if fns and fn in fns:
                fns.remove(fn)
                if not fns:
                    del self._listeners[invocation_id]

    def wait(self, ids: list[str], timeout: float | None) -> dict[str, dict[str, Any]]:
        """Block until every id ended or ``timeout``; the rows of those that ended."""
        done: dict[str, dict[str, Any]] = {}
        cond = threading.Condition()

        def on_end(row: dict[str, Any]) -> None:
            with cond:
                done[row["id"]] = row
                cond.notify_all()

        for i in ids:
            self.listen(i, on_end)
        try:
            for i in ids:
                with contextlib.suppress(KeyError):
                    row = self.store.invocation(i)
                    if row["state"] in FINAL:
                        with cond:
                            done.setdefault(i, row)
            end = None if timeout is None else time.monotonic() + timeout
            with cond:
                while len(done) < len(ids):
                    left = None if end is None else end - time.monotonic()
                    if left is not None and left <= 0:
                        break
                    cond.wait(left)
                return dict(done)
        finally:
            for i in ids:
                self.unlisten(i, on_end)

    # ------------------------------------------------------------------ cancel

    def cancel(self, namespace: str, invocation_id: str) -> cf.Future[str]:
        """Cancel a call: "cancelled" (it was queued), "cancelling" (running: its executor
        was asked to stop it). Raises NotFound, or Conflict when it already ended."""
        holder: dict[str, Any] = {}

        def op(conn: Any) -> str:
            call = self._calls.get(invocation_id)
            if call is None or call.namespace != namespace:
                row = conn.execute(
                    "SELECT namespace, state FROM invocations WHERE id = ?", (invocation_id,)
                ).fetchone()
                if row is None or row[0] != namespace:
                    raise NotFound(f"no invocation {invocation_id!r} in this namespace")
                raise Conflict(f"invocation {invocation_id} already ended: {row[1]}")
            holder["call"] = call
            if call.state == "QUEUED":
                out = self._failure(call, CallCancelled("cancelled while queued"), "CANCELLED")
                holder["rows"], holder["started"] = self._finish_op(conn, [(call, out)])
                return "cancelled"
            if call.unit is not None:
                raise Conflict(
                    f"invocation {invocation_id} runs in a chunk of its batch's calls and "
                    "cannot be stopped alone"
                )
            call.cancel_requested = True
            return "cancelling"

        def after(what: str) -> None:
            if what == "cancelled":
                self._after_finish((holder["rows"], holder["started"]))
                return
            fut = holder["call"].future
            if fut is not None:
                fut.cancel()

        return self.store.submit(op, after)

    # ------------------------------------------------------------------ restart

    def _recover_op(self, conn: Any) -> dict[str, Any]:
        """Take back the unfinished calls the store gives this gateway (a store one gateway
        serves: all of them; a shared one: those of dead gateways, see ``take_orphans``)."""
        rows = self.store.take_orphans(conn)
        counts = {"queued": 0, "retried": 0, "failed": 0}
        ended: list[dict[str, Any]] = []
        now = time.time()
        for r in rows:
            if r["id"] in self._calls:
                continue  # this gateway holds it already
            call = _Call(r["id"], r["namespace"], r["function"], r["submitted_at"])
            call.attempts = r["attempts"]
            call.callback_url, call.batch = r["callback_url"], r["batch"]
            dep = self._registry.get((call.namespace, call.function))
            if r["state"] == "RUNNING" and not (dep and dep.record.idempotent):
                out = {
                    "state": "FAILED", "finished_at": now,
                    "error_type": "hetfaas.gateway.errors.GatewayRestarted",
                    "error_message": RESTART_REASON, "error_traceback": "",
                }  # fmt: skip
                conn.execute(
                    "UPDATE invocations SET state = ?, finished_at = ?, error_type = ?,"
                    " error_message = ?, error_traceback = ? WHERE id = ?",
                    (*out.values(), call.id),
                )
                ended.append({**dict(r), "dispatched_at": None, **out})
                counts["failed"] += 1
                continue
            if r["state"] == "RUNNING":
                conn.execute("UPDATE invocations SET state = 'QUEUED' WHERE id = ?", (call.id,))
                counts["retried"] += 1
            else:
                counts["queued"] += 1
            self._calls[call.id] = call
            self._pending.append(call)
        return {**counts, "_started": self._fill(conn), "_ended": ended}

    def _after_recover(self, value: dict[str, Any]) -> None:
        if value["queued"] or value["retried"] or value["failed"]:
            _log.info(
                "hetfaas gateway: took back %d queued calls, %d running ones to retry, and "
                "failed %d running ones (not idempotent)",
                value["queued"], value["retried"], value["failed"],
            )  # fmt: skip
        self._after_fill(value["_started"])
        for row in value["_ended"]:
            self._ended(row)

    # ------------------------------------------------------------------ callbacks

    def _deliver(self, row: dict[str, Any]) -> None:
        """POST the ended invocation's record to its callback URL (a few tries), and keep
        how that went in the record's ``callback``."""
        url = row["callback_url"]
        result = row.get("result")
        if row.get("result_path"):
            with contextlib.suppress(Exception):
                result = self.store.invocation(row["id"])["result"]
        body = encode({**row, "callback_url": None}, result)
        status, error, attempt = None, None, 0
        refused = False
        for attempt in range(1, CALLBACK_ATTEMPTS + 1):
            try:
                status = post_json(url, body, self.callback_timeout_s, self.callback_policy)
                error = None if 200 <= status < 300 else f"HTTP {status}"
            except CallbackRefused as exc:  # the rules will not change by trying again
                error, refused = str(exc), True
                break
            except Exception as exc:
                error = f"{type(exc).__name__}: {exc}"
            if error is None or self._stopping or attempt == CALLBACK_ATTEMPTS:
                break
            time.sleep(0.2 * 2**attempt)
        state = "refused" if refused else "failed" if error else "delivered"
        info = {"state": state, "status": status, "attempts": attempt, "error": error}
        text = json.dumps(info)
        with contextlib.suppress(Exception):
            self.store.submit(
                lambda conn: conn.execute(
                    "UPDATE invocations SET callback = ? WHERE id = ?", (text, row["id"])
                )
            )


__all__ = ["Deployed", "Engine", "encode", "to_api"]
