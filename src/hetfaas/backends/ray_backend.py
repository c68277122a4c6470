"""Ray as a hetfaas backend: ``Executor("ray")``.

Each call becomes one Ray task running :func:`remote.run_payload` on the call's pickled
:class:`remote.Payload`, with the call's resources as the task's ``num_cpus``/``num_gpus``/
``memory``. Ray is not asked to retry (``max_retries=0``): a worker that dies fails its call
with :class:`WorkerDied`.

Completion, without a thread per call: one watcher thread ``ray.wait``\\ s on every task in
flight (the wait times out after 1 ms, growing to 20 ms while nothing happens, so that tasks
dispatched meanwhile join it) and fires the calls' ``timeout_s`` deadlines. A caller blocked in
``future.result()`` does not wait for the watcher: it ``ray.get``\\ s its own task, as a Ray
user would, and the watcher leaves that task alone meanwhile (on a small machine its polling
would slow the caller down). Whichever of the two sees a task's end first settles its future.
(Measured on 2 cores: the watcher beat ``ObjectRef.future()`` callbacks, ~1.4 ms against
~1.7 ms per sequential no-op call, at the same throughput.)

Each function becomes a Ray remote function of its own, once (by its digest and resources):
Ray ships it to each worker once, as it does a user's ``@ray.remote`` function, and a call
carries only its pickled arguments (as ``bytes``, which Ray handles faster than a Python
object). A function over a megabyte pickled (a closure over large data) travels with each call
instead. With more than a few calls in flight the watcher fetches finished tasks in batches
(one ``ray.get`` for many) and the waiting callers leave the fetching to it.

``timeout_s`` counts from the dispatch to Ray (Ray does not tell when a task starts, so the
time the task waits for free resources in Ray counts too); past it the task is cancelled with
``ray.cancel(force=True)``, which kills its worker, and the call raises :class:`CallTimeout`.
Calls are RUNNING once Ray has them: Ray keeps the queue of tasks waiting for resources, and
cannot tell a waiting task from a running one; ``shutdown(cancel_futures=True)`` therefore
cancels every call still in Ray.
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
)
from . import contract
from .base import Backend, CallSpec, Capacity
from .remote import Payload, Reply, complete, fail, run_payload

_POLL_MIN_S = 0.001  # the watcher's ray.wait timeout right after something happened
_POLL_MAX_S = 0.02  # ... growing to this while nothing happens
_GRACE_S = 0.002  # the watcher takes up new calls this long after their dispatch
_SELF_FETCH_MAX = 4  # a waiting caller fetches its own call while at most this many are in Ray
_WATCH_MAX = 64  # the watcher's ray.wait looks at most at this many (the oldest) calls
_MiB = 1 << 20
_log = logging.getLogger(__name__)
_PACK_MAX = 1 << 20  # payloads and replies smaller than this travel through Ray as bytes

# One Ray runtime per process. The backends that share one this module started count here;
# the last of them to shut down stops it. A runtime someone else started is left alone.
_session_lock = threading.Lock()
_session_users = 0
_task: Any = None  # run_payload as a Ray remote function, made once
_task_options: dict[tuple[int, float, int | None], Any] = {}
_runners: collections.OrderedDict[Any, Any] = collections.OrderedDict()  # see _runner
_RUNNERS_MAX = 256


def _import_ray() -> Any:
    try:
        import ray
    except ImportError as exc:
        raise ConfigurationError("backend 'ray' needs Ray: pip install 'ray[default]'") from exc
    return ray


def _run(shipped: bytes | Payload) -> bytes | Reply:
    """The Ray task. Ray (de)serializes a ``bytes`` argument or result faster than a Python
    object, so small payloads and replies are pickled here and travel as bytes; large ones
    travel as themselves (no extra copy)."""
    payload = pickle.loads(shipped) if isinstance(shipped, bytes) else shipped
    reply = run_payload(payload)
    if len(reply.data) < _PACK_MAX:
        return pickle.dumps(reply, protocol=5)
    return reply


def _make_runner(
    digest: bytes, fn: bytes, fn_name: str, sys_path: tuple[str, ...], cpus: int, gpus: float
) -> Any:
    """A Ray task for one function: Ray ships the function (in this closure) to each worker
    once, as it does a user's ``@ray.remote`` function; each call then carries only its
    arguments."""

    def run(args: bytes, submitted_ns: int) -> bytes | Reply:
        payload = Payload(digest, fn, args, cpus, gpus, fn_name, submitted_ns, 0, sys_path)
        reply = run_payload(payload)
        if len(reply.data) < _PACK_MAX:
            return pickle.dumps(reply, protocol=5)
        return reply

    run.__qualname__ = run.__name__ = f"hetfaas:{fn_name}"
    return run


def _touch(hold_s: float) -> int:
    """A task that keeps its worker busy a moment, so that ``warmup`` starts several."""
    time.sleep(hold_s)
    return os.getpid()


class _Prepared:
    __slots__ = ("future", "key", "payload", "registered", "shipped", "timeout_s")

    def __init__(
        self, future: Future, payload: Payload, key: tuple[int, float, int | None], timeout_s: Any
    ) -> None:
        self.future = future
        self.payload = payload
        # A function of ordinary size becomes a Ray task of its own (made once), and the
        # call ships its arguments only; a huge one (a closure over big data) goes each time.
        self.registered = len(payload.fn) < _PACK_MAX
        if self.registered:
            self.shipped: Any = payload.args
        elif len(payload.args) < _PACK_MAX:
            self.shipped = pickle.dumps(payload, protocol=5)
        else:
            self.shipped = payload
        self.key = key
        self.timeout_s = timeout_s


class _Call:
    """A call in Ray's hands."""

    __slots__ = ("backend", "deadline", "future", "payload", "ref", "timeout_s", "waiters")

    def __init__(self, backend: RayBackend, p: _Prepared, ref: Any, now: float) -> None:
        self.backend = backend
        self.future = p.future
        self.payload = p.payload
        self.ref = ref
        self.timeout_s = p.timeout_s
        self.deadline = now + p.timeout_s if p.timeout_s is not None else 0.0
        self.waiters = 0  # threads fetching it themselves: the watcher leaves it to them

    def help(self, fut: Future, deadline: float | None) -> None:
        """The future's waiter hook: the waiting thread fetches the result itself."""
        self.backend._wait_for(self, deadline)


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
        self._timers: list[tuple[float, int, _Call]] = []
        self._timer_seq = itertools.count()
        self._wake = threading.Event()
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
        return _Prepared(spec.future, payload, key, res.timeout_s)

    def dispatch(self, prepared: list[Any]) -> None:
        if self._closing:
            raise ExecutorShutdownError("this executor is shut down; it accepts no calls")
        calls: list[_Call] = []
        try:
            for i, p in enumerate(prepared):
                if not p.future.set_running_or_notify_cancel():
                    continue  # cancelled while it waited in a batch
                try:
                    if p.registered:
                        ref = _runner(self._ray, p.payload, p.key).remote(
                            p.shipped, p.payload.submitted_ns
                        )
                    else:
                        ref = _remote(self._ray, p.key).remote(p.shipped)
                except Exception as exc:
                    err = EngineError(f"Ray refused the task: {type(exc).__name__}: {exc}")
                    p.future.set_exception(err)
                    for rest in prepared[i + 1 :]:
                        if rest.future.set_running_or_notify_cancel():
                            rest.future.set_exception(err)
                    raise err from exc
                call = _Call(self, p, ref, time.monotonic())
                p.future.engine_id = ref.task_id().hex()
                contract.attach(p.future, waiter=call.help)
                calls.append(call)
        finally:
            if calls:
                with self._lock:
                    for call in calls:
                        self._live[call.ref] = call
                        if call.deadline:
                            heapq.heappush(
                                self._timers, (call.deadline, next(self._timer_seq), call)
                            )
                    self._unsettled += len(calls)
                self._wake.set()

    def warmup(self, n: int, resources: Resources) -> None:
        """Start up to ``n`` Ray workers for ``resources`` and wait until they ran a task."""
        if not self._fits(resources):
            raise ResourceError(self._why_not(resources))
        cap = self.capacity()
        per_task = max(resources.cpus, 1)
        n = max(1, min(n, cap.cpus // per_task or 1))
        opts = _ray_options(resources.cpus, float(resources.gpus), resources.memory_mb)
        touch = self._ray.remote(max_retries=0)(_touch).options(**opts)
        self._ray.get([touch.remote(0.2) for _ in range(n)])

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

    def _finish(self, call: _Call, reply: Any = None, error: BaseException | None = None) -> None:
        """Settle a claimed call from its task's outcome (fetched if not given)."""
        if reply is None and error is None:
            try:
                reply = self._ray.get(call.ref)
            except self._exc.RayError as exc:
                error = exc
            except Exception as exc:  # the reply cannot be unpickled here
                error = exc
        if error is not None:
            self._fail(call, self._translate(call, error))
            return
        fut = call.future
        contract.detach(fut)  # lets the finished task's object go
        try:
            if isinstance(reply, bytes):
                try:
                    reply = pickle.loads(reply)
                except Exception as exc:  # cannot happen unless hetfaas differs over there
                    fut.set_exception(exc)
                    return
            complete(fut, call.payload, reply, self.name)
        finally:
            self._settled(call)

    def _fail(self, call: _Call, exc: BaseException) -> None:
        fut = call.future
        contract.detach(fut)
        try:
            fail(fut, call.payload, exc, self.name)
        finally:
            self._settled(call)

    def _settled(self, call: _Call) -> None:
        # A settled call may linger in the timer heap: it keeps neither its task's objects nor
        # its result alive.
        call.ref = call.payload = call.future = None  # type: ignore[assignment]
        with self._idle:
            self._unsettled -= 1
            if not self._unsettled:
                self._idle.notify_all()

    def _translate(self, call: _Call, err: BaseException) -> BaseException:
        ex = self._exc
        iid = call.future.invocation_id
        name = call.payload.fn_name
        if isinstance(err, ex.TaskCancelledError):
            return CallCancelled(f"call {iid} ({name}) was cancelled in Ray", iid)
        if isinstance(err, ex.OutOfMemoryError):
            return WorkerDied(f"call {iid} ({name}): Ray's memory monitor killed its worker", iid)
        if isinstance(err, ex.RuntimeEnvSetupError):
            return EngineError(f"call {iid} ({name}): Ray could not set up its runtime_env: {err}")
        if isinstance(err, ex.RayTaskError):  # the wrapper itself failed in the worker
            cause = getattr(err, "cause", None) or err
            return RemoteError(
                type(cause).__qualname__, str(cause), getattr(err, "traceback_str", ""), iid
            )
        if isinstance(err, ex.RayError):  # worker crash, node died, object lost, ...
            reason = f"{type(err).__name__}: {str(err).strip().splitlines()[0] if str(err) else ''}"
            return WorkerDied(f"call {iid} ({name}): the Ray worker died ({reason})", iid)
        return err

    def _wait_for(self, call: _Call, deadline: float | None) -> None:
        """Wait for the call in the calling thread, up to ``deadline`` (monotonic)."""
        with self._lock:
            if call.ref not in self._live or len(self._live) > _SELF_FETCH_MAX:
                return  # many calls in flight: the watcher fetches them in batches
            call.waiters += 1
        try:
            self._fetch(call, deadline)
        finally:
            with self._lock:
                call.waiters -= 1
                handover = call.waiters == 0 and call.ref in self._live
            if handover:  # not settled here: the watcher takes it back
                self._wake.set()

    def _fetch(self, call: _Call, deadline: float | None) -> None:
        get_timeout = self._exc.GetTimeoutError
        while True:
            now = time.monotonic()
            left = None if deadline is None else deadline - now
            if call.deadline:  # past its timeout_s the watcher cancels and settles it
                to_timeout = call.deadline - now + _POLL_MIN_S
                left = to_timeout if left is None else min(left, to_timeout)
            if left is not None and left <= 0:
                return
            ref = call.ref
            if ref is None:  # settled meanwhile
                return
            try:
                reply = self._ray.get(ref, timeout=left)
            except get_timeout:
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
            with self._lock:
                # The oldest calls first, and not too many: ray.wait's cost grows with the
                # number of refs, and tasks mostly end in the order they were sent.
                refs = list(
                    itertools.islice(
                        (ref for ref, call in self._live.items() if not call.waiters), _WATCH_MAX
                    )
                )
                next_deadline = self._timers[0][0] if self._timers else None
                if not self._live and self._closing:
                    return
            until = None if next_deadline is None else max(0.0, next_deadline - time.monotonic())
            if not refs:  # nothing to watch (or only calls a waiting thread fetches)
                if self._wake.wait(until):
                    # New calls: their callers usually wait for them at once, and fetch
                    # them themselves; give them that moment before competing with them.
                    time.sleep(_GRACE_S)
                else:
                    self._fire_timers()
                delay = _POLL_MIN_S
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
            self._fire_timers()
            delay = _POLL_MIN_S if ready or self._wake.is_set() else min(_POLL_MAX_S, delay * 2)

    def _fire_timers(self) -> None:
        now = time.monotonic()
        expired: list[_Call] = []
        with self._lock:
            while self._timers and self._timers[0][0] <= now:
                _, _, call = heapq.heappop(self._timers)
                if self._live.pop(call.ref, None) is not None:
                    expired.append(call)
            if len(self._timers) > 64 and len(self._timers) > 2 * len(self._live):
                self._timers = [t for t in self._timers if t[2].ref is not None]
                heapq.heapify(self._timers)
        for call in expired:
            with contextlib.suppress(Exception):
                self._ray.cancel(call.ref, force=True)
            iid = call.future.invocation_id
            self._fail(
                call,
                CallTimeout(
                    f"call {iid} ({call.payload.fn_name}) ran past its timeout_s={call.timeout_s}"
                    " (counted from its dispatch to Ray); its task was cancelled",
                    iid,
                ),
            )

    def _abandon(self, exc: BaseException) -> None:
        with self._lock:
            calls = list(self._live.values())
            self._live.clear()
        for call in calls:
            self._fail(
                call,
                WorkerDied(
                    f"Ray stopped while the call ran ({type(exc).__name__}: {exc})",
                    call.future.invocation_id,
                ),
            )


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


def _remote(ray: Any, key: tuple[int, float, int | None]) -> Any:
    """``_run`` as a Ray task with these resources (made once per kind of call)."""
    global _task
    fn = _task_options.get(key)
    if fn is None:
        if _task is None:  # Ray's defaults: 1 CPU, no GPU, no memory reservation
            _task = ray.remote(max_retries=0, retry_exceptions=False)(_run)
        # The defaults need no .options(), which costs a little at each call.
        default = key == (1, 0.0, None)
        fn = _task if default else _task.options(**_ray_options(*key))
        _task_options[key] = fn
    return fn


def _runner(ray: Any, payload: Payload, key: tuple[int, float, int | None]) -> Any:
    """The Ray task of ``payload``'s function with these resources, made once (the most
    recently used few hundred are kept)."""
    ident = (payload.digest, key, payload.sys_path)
    fn = _runners.get(ident)
    if fn is not None:
        _runners.move_to_end(ident)
        return fn
    run = _make_runner(
        payload.digest, payload.fn, payload.fn_name, payload.sys_path, payload.cpus, payload.gpus
    )
    fn = ray.remote(max_retries=0, retry_exceptions=False)(run)
    if key != (1, 0.0, None):  # Ray's defaults need no .options(), which costs at each call
        fn = fn.options(**_ray_options(*key))
    _runners[ident] = fn
    if len(_runners) > _RUNNERS_MAX:
        _runners.popitem(last=False)
    return fn
