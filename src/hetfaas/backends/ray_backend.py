"""Ray as a hetfaas backend: ``Executor("ray")``.

Each call is one Ray task running :func:`remote.run_payload` on the call's pickled
:class:`remote.Payload`, with the call's resources as the task's ``num_cpus``/``num_gpus``/
``memory``, and no retries (``max_retries=0``): a worker that dies fails its call with
:class:`WorkerDied`. Futures are settled through :mod:`hetfaas.backends.contract` only. Each
function becomes a Ray remote function of its own, once (by digest and resources), so Ray ships
it to each worker once and a call carries only its pickled arguments (``bytes``, which Ray
handles faster than objects); a function over a megabyte pickled travels with each call.

Completion, without a thread per call: a caller blocked in ``future.result()`` ``ray.get``\\ s
its own task, as a Ray user would. A watcher thread ``ray.wait``\\ s on the calls nobody waits
for (from 2 ms after their dispatch: callers usually wait at once) and, with more than a few
in flight, fetches finished tasks in batches while waiting callers leave it to them. A single
submit does not wake the watcher unless it sleeps (nothing sent for 0.25 s): on a small VM a
thread wake-up costs about as much as Ray's own work for a no-op call. While calls are in
flight it polls every 1 to 20 ms, so a lone call nobody waits on (``add_done_callback``,
``as_completed``) may be noticed up to ~20 ms late. Whoever claims a call settles it.

``cancel()`` of a call in Ray (queued for resources or running: Ray does not tell) claims it
and calls ``ray.cancel(force=True)``, which kills its worker if it runs; it raises
:class:`CallCancelled`. ``shutdown(cancel_futures=True)`` cancels every call still in Ray.

``timeout_s`` is run time in the Ray worker from the moment it takes the call up; waiting in
Ray's queue or for a worker to start does not count. Only a timed call has a watchdog:

- at ``timeout_s`` a watchdog thread writes a marker in Ray's internal key-value store (GCS)
  and ends the worker (``os._exit(124)``); told by Ray that the worker died, the caller reads
  the marker and raises :class:`CallTimeout`. Granularity: the worker stops within a few ms of
  ``timeout_s``; the caller hears of it when Ray reports the death (tens of ms here).
- C code that holds the GIL starves that thread: ``SIGALRM`` (default action, no Python)
  kills the worker 2 s later. A call that ran 1 s (or half its ``timeout_s``) has left its
  start in the store, so that is still a :class:`CallTimeout`; one that held the GIL from its
  first millisecond leaves nothing and is reported as :class:`WorkerDied`.
- Caller-side backstop: the watcher reads the start markers of timed calls ``timeout_s`` after
  their dispatch (calls not started are looked at again every 0.5 to 5 s, one store listing
  for all); a call still unsettled 5 s past its start plus ``timeout_s`` (a stopped or
  unreachable worker) is cancelled with ``ray.cancel(force=True)``: :class:`CallTimeout`.

The watchdog owns ``SIGALRM`` while a timed call runs. Markers live under a prefix per backend
in the ``hetfaas`` namespace; those left by killed workers are removed at shutdown.
"""

from __future__ import annotations

import collections
import contextlib
import heapq
import itertools
import logging
import os
import pickle
import threading
import time
import uuid
from typing import Any

from .._future import Future
from .._resources import Resources
from ..exceptions import (
    CallCancelled,
    CallTimeout,
    ConfigurationError,
    EngineError,
    ExecutorShutdownError,
    RemoteError,
    ResourceError,
    WorkerDied,
)  # fmt: skip
from . import contract
from .base import Backend, CallSpec, Capacity
from .ray_worker import KV_NS, PACK_MAX, kv_store, make_runner, run_call, run_call_timed, touch
from .remote import Payload, Reply, complete, fail

_POLL_MIN_S = 0.001  # the watcher's ray.wait timeout right after something happened
_POLL_MAX_S = 0.02  # ... growing to this while nothing happens
_GRACE_S = 0.002  # the watcher takes up a call nobody waits on this long after its dispatch
_LINGER_S = 0.25  # the watcher sleeps (a submit must wake it) after this long with nothing
_SELF_FETCH_MAX = 4  # a waiting caller fetches its own call while at most this many are in Ray
_WATCH_MAX = 64  # the watcher's ray.wait looks at most at this many (the oldest) calls
_TIMED_GET_S = 1.0  # a caller waiting on a timed call looks up this often (backstop settled?)
_MiB = 1 << 20
_log = logging.getLogger(__name__)

# timeout_s (see the module docstring)
_BACKSTOP_S = 5.0  # the caller cancels a call this long past its start plus timeout_s
_RECHECK_S = (0.5, 5.0)  # a timed call not started yet is looked at again this often

# One Ray runtime per process. The backends that share one this module started count here;
# the last of them to shut down stops it. A runtime someone else started is left alone.
_session_lock = threading.Lock()
_session_users = 0
_tasks: dict[bool, Any] = {}  # run_call / run_call_timed as Ray remote functions, made once
_task_options: dict[tuple[tuple[int, float, int | None], bool], Any] = {}
_runners: collections.OrderedDict[Any, Any] = collections.OrderedDict()  # see _runner
_RUNNERS_MAX = 256


def _import_ray() -> Any:
    try:
        import ray
    except ImportError as exc:
        raise ConfigurationError("backend 'ray' needs Ray: pip install 'ray[default]'") from exc
    return ray


# ------------------------------------------------------------------ in the caller


class _Prepared:
    __slots__ = ("future", "key", "marker", "payload", "registered", "shipped", "timeout_s")

    def __init__(
        self, future: Future, payload: Payload, key: tuple[int, float, int | None],
        timeout_s: float | None, marker: bytes | None,
    ) -> None:  # fmt: skip
        self.future = future
        self.payload = payload
        # A function of ordinary size becomes a Ray task of its own (made once), and the
        # call ships its arguments only; a huge one (a closure over big data) goes each time.
        self.registered = len(payload.fn) < PACK_MAX
        if self.registered:
            self.shipped: Any = payload.args
        elif len(payload.args) < PACK_MAX:
            self.shipped = pickle.dumps(payload, protocol=5)
        else:
            self.shipped = payload
        self.key = key
        self.timeout_s = timeout_s
        self.marker = marker  # timed calls: where its worker marks its start and its timeout


class _Call:
    """A call in Ray's hands."""

    __slots__ = (
        "backend", "future", "marker", "payload", "ref", "sent", "start_ns", "timeout_s",
        "waiters",
    )  # fmt: skip

    def __init__(self, backend: RayBackend, p: _Prepared, ref: Any, now: float) -> None:
        self.backend = backend
        self.future = p.future
        self.payload = p.payload
        self.ref = ref
        self.sent = now
        self.timeout_s = p.timeout_s
        self.marker = p.marker
        self.start_ns = 0  # timed calls: when it started in its worker, once the caller knows
        self.waiters = 0  # threads fetching it themselves: the watcher leaves it to them

    def help(self, fut: Future, deadline: float | None) -> None:
        """The future's waiter hook: the waiting thread fetches the result itself."""
        self.backend._wait_for(self, deadline)

    def cancel(self, fut: Future) -> bool:
        """The future's canceller: stop the task in Ray."""
        return self.backend._cancel(self)


class RayBackend(Backend):
    """Calls as Ray tasks, on a local Ray started here or on a cluster.

    Options: ``address`` (None: start a local Ray with this machine's cores, unless this
    process already runs one; else the address to connect to, e.g. ``"auto"`` or
    ``"ray://head:10001"``), ``namespace``, ``runtime_env`` (Ray's, for the workers: pip
    packages, ``working_dir``, environment variables, ...), ``init_kwargs`` (anything else for
    ``ray.init``; they override the defaults here).
    """

    name = "ray"

    def __init__(
        self,
        address: str | None = None,
        namespace: str | None = None,
        runtime_env: dict[str, Any] | None = None,
        init_kwargs: dict[str, Any] | None = None,
    ) -> None:
        self._ray = ray = _import_ray()
        self._exc = ray.exceptions
        self._owns_session = _join_session(ray, address, namespace, runtime_env, init_kwargs)
        self._lock = threading.Lock()
        self._idle = threading.Condition(self._lock)
        self._live: dict[Any, _Call] = {}  # object ref -> call, until one side claims it
        self._unsettled = 0  # dispatched calls whose future is not settled yet
        self._timers: list[tuple[float, int, _Call]] = []  # timed calls' next look
        self._timer_seq = itertools.count()
        self._wake = threading.Event()
        self._sleeping = False  # the watcher waits for a submit to wake it
        self._last_sent = 0.0
        self._marker_prefix = f"t:{uuid.uuid4().hex}:".encode()
        self._timed_sent = False
        self._closing = False
        self._closed = False
        self._stop = False
        self._nodes: list[dict[str, float]] = []
        self._fitting: set[tuple[int, float, int | None]] = set()  # requests some node fits
        try:
            self._refresh_nodes()
        except BaseException:
            _leave_session(ray, self._owns_session)
            raise
        self._watcher = threading.Thread(target=self._watch, name="hetfaas-ray", daemon=True)
        self._watcher.start()

    # -------------------------------------------------------------- Backend API

    def capacity(self) -> Capacity:
        totals = self._ray.cluster_resources()
        cpus = int(totals.get("CPU", 0))
        names: list[str] = []
        for node in self._ray.nodes():
            if not node.get("Alive", False):
                continue
            res = node.get("Resources", {})
            kind = next(
                (k.split(":", 1)[1] for k in res if k.startswith("accelerator_type:")), "GPU"
            )
            names += [kind] * int(res.get("GPU", 0))
        return Capacity(
            cpus, int(totals.get("GPU", 0)), tuple(names), cpus,
            int(totals.get("memory", 0) // _MiB),
        )  # fmt: skip

    def prepare(self, spec: CallSpec) -> _Prepared:
        res = spec.resources
        key = (res.cpus, float(res.gpus), res.memory_mb)
        if key not in self._fitting:
            if not self._fits(res):
                self._refresh_nodes()  # the cluster may have grown since
                if not self._fits(res):
                    raise ResourceError(self._why_not(res))
            self._fitting.add(key)
        payload = Payload.build(spec.fn, spec.args, spec.kwargs, res)
        timeout_s = res.timeout_s
        marker = None
        if timeout_s is not None:
            marker = self._marker_prefix + spec.future.invocation_id.encode()
        return _Prepared(spec.future, payload, key, timeout_s, marker)

    def dispatch(self, prepared: list[Any]) -> None:
        if self._closing:
            raise ExecutorShutdownError("this executor is shut down; it accepts no calls")
        wake = len(prepared) > 1  # a batch: the watcher will fetch most of it
        for i, p in enumerate(prepared):
            fut = p.future
            if not contract.start(fut):
                continue  # cancelled while it waited in a batch
            try:
                ref = self._send(p)
            except Exception as exc:
                err = EngineError(f"Ray refused the task: {type(exc).__name__}: {exc}")
                fail(fut, p.payload, err, self.name)
                for rest in prepared[i + 1 :]:
                    if contract.start(rest.future):
                        fail(rest.future, rest.payload, err, self.name)
                raise err from exc
            now = time.monotonic()
            call = _Call(self, p, ref, now)
            fut.engine_id = ref.task_id().hex()
            contract.attach(fut, waiter=call.help, canceller=call.cancel)
            with self._lock:
                self._live[ref] = call
                self._unsettled += 1
                if p.timeout_s is not None:  # first look: it cannot have timed out sooner
                    self._timed_sent = True
                    heapq.heappush(self._timers, (now + p.timeout_s, next(self._timer_seq), call))
                if self._sleeping:
                    self._sleeping = False
                    wake = True
            self._last_sent = now
        if wake:
            self._wake.set()

    def _send(self, p: _Prepared) -> Any:
        timed = p.timeout_s is not None
        if p.registered:
            task = _runner(self._ray, p.payload, p.key, timed)
        else:
            task = _remote(self._ray, p.key, timed)
        if timed:
            return task.remote(p.shipped, float(p.timeout_s), p.marker)  # type: ignore[arg-type]
        return task.remote(p.shipped)

    def warmup(self, n: int, resources: Resources) -> None:
        """Start up to ``n`` Ray workers for ``resources`` and wait until they ran a task."""
        if not self._fits(resources):
            raise ResourceError(self._why_not(resources))
        cap = self.capacity()
        per_task = max(resources.cpus, 1)
        n = max(1, min(n, cap.cpus // per_task or 1))
        opts = _ray_options(resources.cpus, float(resources.gpus), resources.memory_mb)
        busy = self._ray.remote(max_retries=0)(touch).options(**opts)
        self._ray.get([busy.remote(0.2) for _ in range(n)])

    def cancel_pending(self) -> None:
        """Cancel every call still in Ray (Ray cannot tell waiting tasks from running ones)."""
        self._cancel_live(lambda iid: CallCancelled(f"call {iid} was cancelled in Ray", iid))

    def _cancel_live(self, error: Any) -> None:
        """Cancel every call in Ray; each fails with ``error(invocation_id)``."""
        with self._lock:
            calls = list(self._live.values())
            self._live.clear()
        for call in calls:
            with contextlib.suppress(Exception):
                self._ray.cancel(call.ref, force=True)
            self._fail(call, error(call.future.invocation_id))

    def shutdown(self, wait: bool = True, cancel_futures: bool = False) -> None:
        with self._lock:
            if self._closing:
                return
            self._closing = True
        self._wake.set()
        if cancel_futures:
            self.cancel_pending()
        if wait:
            with self._idle:
                while self._unsettled:
                    self._idle.wait()
        elif self._owns_session:  # Ray stops with us: what still runs dies with it
            self._cancel_live(lambda iid: WorkerDied("executor shut down while the call ran", iid))
        if self._owns_session or wait:
            self._stop = True
            self._wake.set()
            self._watcher.join(timeout=10)
        # else the watcher settles the calls still in a Ray we leave running, then exits
        if self._timed_sent and not self._live:  # markers killed workers left behind
            with contextlib.suppress(Exception):
                kv_store()._internal_kv_del(
                    self._marker_prefix, del_by_prefix=True, namespace=KV_NS
                )
        with self._lock:
            self._closed = True
        if self._owns_session:
            self._owns_session = False
            _leave_session(self._ray, True)

    # -------------------------------------------------------------- resources

    def _refresh_nodes(self) -> None:
        nodes = [n.get("Resources", {}) for n in self._ray.nodes() if n.get("Alive", False)]
        self._nodes = nodes

    def _fits(self, res: Resources) -> bool:
        mem = res.memory_mb * _MiB if res.memory_mb is not None else 0
        return any(
            n.get("CPU", 0) >= res.cpus
            and n.get("GPU", 0) >= res.gpus
            and n.get("memory", 0) >= mem
            for n in self._nodes
        )

    def _why_not(self, res: Resources) -> str:
        best = max(self._nodes, key=lambda n: (n.get("GPU", 0), n.get("CPU", 0)), default={})
        wanted = f"cpus={res.cpus}, gpus={res.gpus}"
        if res.memory_mb is not None:
            wanted += f", memory_mb={res.memory_mb}"
        return (
            f"{wanted}: no node of this Ray cluster ({len(self._nodes)} node(s)) has that much; "
            f"the largest has {int(best.get('CPU', 0))} CPUs, {int(best.get('GPU', 0))} GPUs, "
            f"{int(best.get('memory', 0) // _MiB)} MB of memory"
        )

    # -------------------------------------------------------------- completion

    def _claim(self, call: _Call) -> bool:
        """Whoever takes a call out of ``_live`` settles it; everyone else leaves it alone."""
        with self._lock:
            return self._live.pop(call.ref, None) is not None

    def _cancel(self, call: _Call) -> bool:
        ref = call.ref
        if ref is None or not self._claim(call):
            return False  # it ended (or is ending) meanwhile
        with contextlib.suppress(Exception):
            self._ray.cancel(ref, force=True)
        if call.marker is not None:
            self._drop_marker(call.marker)
        self._settled(call)  # Future.cancel settles the future itself
        return True

    def _finish(self, call: _Call, reply: Any = None, error: BaseException | None = None) -> None:
        """Settle a claimed call from its task's outcome (fetched if not given)."""
        if reply is None and error is None:
            try:
                reply = self._ray.get(call.ref)
            except Exception as exc:  # a Ray error, or a reply that cannot be unpickled here
                error = exc
        if error is None and isinstance(reply, bytes):
            try:
                reply = Reply(*pickle.loads(reply))
            except Exception as exc:  # cannot happen unless hetfaas differs over there
                error = exc
        if error is not None:
            self._fail(call, self._translate(call, error))
            return
        try:
            complete(call.future, call.payload, reply, self.name)
        finally:
            self._settled(call)

    def _fail(self, call: _Call, exc: BaseException) -> None:
        try:
            fail(call.future, call.payload, exc, self.name)
        finally:
            self._settled(call)

    def _settled(self, call: _Call) -> None:
        # A settled call may linger in the timer heap: it keeps neither its task's objects nor
        # its result alive.
        call.ref = call.payload = call.future = None  # type: ignore[assignment]
        with self._idle:
            self._unsettled -= 1
            if not self._unsettled and self._closing:
                self._idle.notify_all()

    def _translate(self, call: _Call, err: BaseException) -> BaseException:
        ex = self._exc
        iid = call.future.invocation_id
        name = call.payload.fn_name
        if isinstance(err, ex.TaskCancelledError):
            return CallCancelled(f"call {iid} ({name}) was cancelled in Ray", iid)
        if isinstance(err, ex.RuntimeEnvSetupError):
            return EngineError(f"call {iid} ({name}): Ray could not set up its runtime_env: {err}")
        if isinstance(err, ex.RayTaskError):  # the wrapper itself failed in the worker
            cause = getattr(err, "cause", None) or err
            return RemoteError(
                type(cause).__qualname__, str(cause), getattr(err, "traceback_str", ""), iid
            )
        if not isinstance(err, ex.RayError):
            return err
        hint = ""
        if call.marker is not None:  # a timed call: did its watchdog (or alarm) end it?
            mark = self._markers([call]).get(call.marker)
            self._drop_marker(call.marker)
            limit = f"timeout_s={call.timeout_s}"
            if mark and (mark[0] == "X" or time.time_ns() >= mark[1] + call.timeout_s * 1e9):  # type: ignore[operator]
                return CallTimeout(f"call {iid} ({name}) ran past its {limit} in its worker", iid)
            hint = f"; if it held the GIL past its {limit}, its alarm ended it"
        if isinstance(err, ex.OutOfMemoryError):
            return WorkerDied(f"call {iid} ({name}): Ray's memory monitor killed its worker", iid)
        reason = f"{type(err).__name__}: {str(err).strip().splitlines()[0] if str(err) else ''}"
        return WorkerDied(f"call {iid} ({name}): the Ray worker died ({reason}){hint}", iid)

    # -------------------------------------------------------------- timed calls' markers

    def _markers(self, calls: list[_Call]) -> dict[bytes, tuple[str, int]]:
        """The markers of these timed calls that their workers wrote: key -> (kind, start)."""
        kv = kv_store()
        out: dict[bytes, tuple[str, int]] = {}
        try:
            keys: Any = [c.marker for c in calls]
            if len(keys) > 2:  # one listing, then only the calls that wrote something
                keys = set(kv._internal_kv_list(self._marker_prefix, namespace=KV_NS))
                keys = [c.marker for c in calls if c.marker in keys]
            for key in keys:
                value = kv._internal_kv_get(key, namespace=KV_NS)
                if value and value[:1] in (b"S", b"X") and value[1:].isdigit():
                    out[key] = (value[:1].decode(), int(value[1:]))
        except Exception:  # the store is out of reach: nothing known
            pass
        return out

    def _drop_marker(self, key: bytes) -> None:
        with contextlib.suppress(Exception):
            kv_store()._internal_kv_del(key, namespace=KV_NS)

    def _fire_timers(self) -> None:
        """Timed calls due for a look: learn when each started, and cancel one past its start
        plus timeout_s plus the backstop's margin (its worker did not stop itself)."""
        now = time.monotonic()
        due: list[_Call] = []
        with self._lock:
            while self._timers and self._timers[0][0] <= now:
                _, _, call = heapq.heappop(self._timers)
                if call.ref is not None and call.ref in self._live:
                    due.append(call)
            if len(self._timers) > 64 and len(self._timers) > 2 * len(self._live):
                self._timers = [t for t in self._timers if t[2].ref is not None]
                heapq.heapify(self._timers)
        if not due:
            return
        unknown = [call for call in due if not call.start_ns]
        found = self._markers(unknown) if unknown else {}
        wall = time.time_ns()
        again: list[tuple[float, _Call]] = []
        for call in due:
            if call.start_ns:  # the backstop's time
                self._backstop(call)
                continue
            mark = found.get(call.marker)  # type: ignore[arg-type]
            timeout_s: float = call.timeout_s  # type: ignore[assignment]
            if mark is None:  # not started yet (or just ended): look again later
                again.append((now + min(max(timeout_s, _RECHECK_S[0]), _RECHECK_S[1]), call))
                continue
            kind, call.start_ns = mark
            end_ns = wall if kind == "X" else call.start_ns + int(timeout_s * 1e9)
            again.append((now + max(0.0, (end_ns - wall) / 1e9) + _BACKSTOP_S, call))
        with self._lock:
            for when, call in again:
                heapq.heappush(self._timers, (when, next(self._timer_seq), call))

    def _backstop(self, call: _Call) -> None:
        ref = call.ref
        if ref is None or not self._claim(call):
            return
        with contextlib.suppress(Exception):
            self._ray.cancel(ref, force=True)
        self._drop_marker(call.marker)  # type: ignore[arg-type]
        iid, name = call.future.invocation_id, call.payload.fn_name
        why = f"ran past its timeout_s={call.timeout_s}, its worker did not stop: task cancelled"
        self._fail(call, CallTimeout(f"call {iid} ({name}) {why}", iid))

    # -------------------------------------------------------------- fetching

    def _wait_for(self, call: _Call, deadline: float | None) -> None:
        """Wait for the call in the calling thread, up to ``deadline`` (monotonic)."""
        with self._lock:
            if call.ref not in self._live or len(self._live) > _SELF_FETCH_MAX:
                return  # many calls in flight: the watcher fetches them in batches
            call.waiters += 1
        try:
            self._fetch(call, call.ref, deadline)
        finally:
            with self._lock:
                call.waiters -= 1
                handover = call.waiters == 0 and call.ref is not None and call.ref in self._live
            if handover:  # not settled here: the watcher takes it back
                self._wake.set()

    def _fetch(self, call: _Call, ref: Any, deadline: float | None) -> None:
        get_timeout = self._exc.GetTimeoutError
        timed = call.marker is not None
        while True:
            left = None if deadline is None else deadline - time.monotonic()
            if left is not None and left <= 0:
                return
            if timed:  # the watcher's backstop may settle it: look up now and then
                left = _TIMED_GET_S if left is None else min(left, _TIMED_GET_S)
            try:
                reply = self._ray.get(ref, timeout=left)
            except get_timeout:
                if call.ref is None:
                    return
                continue
            except Exception as exc:
                if self._claim(call):
                    self._finish(call, error=exc)
                return
            if self._claim(call):
                self._finish(call, reply)
            return

    def _watch(self) -> None:
        ray = self._ray
        delay = _POLL_MIN_S
        while not self._stop:
            self._wake.clear()
            now = time.monotonic()
            if self._timers and self._timers[0][0] <= now:
                self._fire_timers()
            refs: list[Any] = []
            young = None  # when the oldest call nobody waits on yet is due for a look
            with self._lock:
                if not self._live and self._closing:
                    return
                # The oldest calls first, and not too many: ray.wait's cost grows with the
                # number of refs, and tasks mostly end in the order they were sent.
                for ref, call in self._live.items():
                    if call.waiters:
                        continue
                    if now - call.sent < _GRACE_S:  # its caller is likely to wait on it
                        young = call.sent + _GRACE_S if young is None else young  # the oldest
                        continue
                    refs.append(ref)
                    if len(refs) >= _WATCH_MAX:
                        break
                next_timer = self._timers[0][0] if self._timers else None
                deep = not self._live and now - self._last_sent > _LINGER_S
                if deep:
                    self._sleeping = True  # a submit wakes it
            until = None if next_timer is None else max(0.0, next_timer - now)
            if not refs:  # nothing to watch (or only calls their callers fetch)
                timeout = until
                if not deep:
                    timeout = delay if until is None else min(delay, until)
                    if young is not None:
                        timeout = min(timeout, max(0.0, young - now))
                woke = self._wake.wait(timeout)
                self._sleeping = False
                delay = _POLL_MIN_S if woke else min(_POLL_MAX_S, delay * 2)
                continue
            timeout = delay if until is None else min(delay, until)
            try:
                # With many calls in flight, wake for several at a time: each wake-up takes
                # CPU from Ray's own workers on a small machine.
                want = max(1, min(len(refs), len(self._live) // 16))
                ready, rest = ray.wait(refs, num_returns=want, timeout=timeout)
                if ready and rest:
                    more, _ = ray.wait(rest, num_returns=len(rest), timeout=0)
                    ready += more
            except Exception as exc:  # Ray itself is gone
                self._abandon(exc)
                return
            with self._lock:
                claimed = [self._live.pop(r) for r in ready if r in self._live]
            replies: list[Any] = [None] * len(claimed)
            if len(claimed) > 1:  # one ray.get for all of them; any error: one by one
                with contextlib.suppress(Exception):
                    replies = ray.get([call.ref for call in claimed])
            for call, reply in zip(claimed, replies, strict=True):
                try:
                    self._finish(call, reply)
                except Exception:  # never let one call stop the watcher
                    _log.exception("hetfaas: settling a Ray call failed")
            delay = _POLL_MIN_S if ready or self._wake.is_set() else min(_POLL_MAX_S, delay * 2)

    def _abandon(self, exc: BaseException) -> None:
        with self._lock:
            calls = list(self._live.values())
            self._live.clear()
        why = f"Ray stopped while the call ran ({type(exc).__name__}: {exc})"
        for call in calls:
            self._fail(call, WorkerDied(why, call.future.invocation_id))


# ------------------------------------------------------------------ the Ray runtime


def _join_session(
    ray: Any,
    address: str | None,
    namespace: str | None,
    runtime_env: dict[str, Any] | None,
    init_kwargs: dict[str, Any] | None,
) -> bool:
    """Make sure Ray runs in this process; True when this module started it."""
    global _session_users
    with _session_lock:
        if ray.is_initialized():
            if _session_users:
                _session_users += 1
                return True
            return False  # the caller's own Ray: used, never stopped here
        kwargs: dict[str, Any] = {"logging_level": logging.ERROR}
        if address is None:
            kwargs["num_cpus"] = len(os.sched_getaffinity(0))
            kwargs["include_dashboard"] = False
        else:
            kwargs["address"] = address
        if namespace is not None:
            kwargs["namespace"] = namespace
        if runtime_env is not None:
            kwargs["runtime_env"] = runtime_env
        kwargs.update(init_kwargs or {})
        try:
            ray.init(**kwargs)
        except (TypeError, ValueError) as exc:
            raise ConfigurationError(f"ray.init({kwargs}) rejected its options: {exc}") from exc
        except Exception as exc:
            where = f"the Ray cluster at {address}" if address else "a local Ray"
            raise EngineError(f"could not start {where}: {type(exc).__name__}: {exc}") from exc
        _session_users = 1
        return True


def _leave_session(ray: Any, owned: bool) -> None:
    global _session_users
    if not owned:
        return
    with _session_lock:
        _session_users -= 1
        if _session_users <= 0:
            _session_users = 0
            ray.shutdown()


def _ray_options(cpus: int, gpus: float, memory_mb: int | None) -> dict[str, Any]:
    opts: dict[str, Any] = {"num_cpus": cpus, "num_gpus": gpus}
    if memory_mb is not None:
        opts["memory"] = memory_mb * _MiB
    return opts


def _remote(ray: Any, key: tuple[int, float, int | None], timed: bool) -> Any:
    """``run_call`` (or ``run_call_timed``) as a Ray task with these resources (made once
    per kind)."""
    fn = _task_options.get((key, timed))
    if fn is None:
        task = _tasks.get(timed)
        if task is None:  # Ray's defaults: 1 CPU, no GPU, no memory reservation
            runner = run_call_timed if timed else run_call
            task = ray.remote(max_retries=0, retry_exceptions=False)(runner)
            _tasks[timed] = task
        # The defaults need no .options(), which costs a little at each call.
        fn = task if key == (1, 0.0, None) else task.options(**_ray_options(*key))
        _task_options[(key, timed)] = fn
    return fn


def _runner(ray: Any, payload: Payload, key: tuple[int, float, int | None], timed: bool) -> Any:
    """The Ray task of ``payload``'s function with these resources, made once (the most
    recently used few hundred are kept)."""
    ident = (payload.digest, key, payload.sys_path, timed)
    fn = _runners.get(ident)
    if fn is not None:
        _runners.move_to_end(ident)
        return fn
    run = make_runner(
        payload.digest, payload.fn, payload.fn_name, payload.sys_path, payload.cpus,
        payload.gpus, timed,
    )  # fmt: skip
    fn = ray.remote(max_retries=0, retry_exceptions=False)(run)
    if key != (1, 0.0, None):  # Ray's defaults need no .options(), which costs at each call
        fn = fn.options(**_ray_options(*key))
    _runners[ident] = fn
    if len(_runners) > _RUNNERS_MAX:
        _runners.popitem(last=False)
    return fn
