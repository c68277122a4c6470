"""Multi-task models: one architecture, one set of weights per task, in a store (seed 003).

``MultiTask(model_factory, store_url, tasks=[...])`` serves calls ``submit(task, x)`` on warm
workers of the local pool (``workers.WorkerManager``) through the serving ``Runtime``: each
task is a model of an ``InferenceFunction`` whose weights are ``task_uri(store_url, task)``;
the Runtime's scheduler (seed 004's, LALB+O3 by default) sends a call for task T to a worker
where T is resident, or loads T there (evicting what its memory budget cannot keep). Each
worker holds ``tasks_per_worker`` tasks; with fewer slots than tasks, tasks are evicted.

``policy="naive"`` is the baseline that keeps nothing: every call loads its task's weights
from the store into the least-busy worker, runs, and drops them (what a function does when
it cannot count on warm state).

Each call leaves a ``TaskCall``: ``"cold"`` (its weights were loaded for it) or ``"cached"``
(its task was resident), with the cold load, the activation (making the task's module ready
to run: the load for a cold call, finding the resident module for a cached one) and the run,
as measured in the worker, and its latency, as measured here from submit to result.
``summarize(calls)`` gives totals and p50/p99 per kind and the hit rate.

Stores: ``file://`` (a directory), ``s3://bucket/prefix?endpoint=...`` and
``redis://host:port/db/prefix``, as ``functions.STORES`` reads them; task ``t``'s weights are
``<prefix>/t.pt``, the query kept at the end.
"""

from __future__ import annotations

import concurrent.futures
import re
import threading
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from ..exceptions import ConfigurationError, UnknownModel
from .functions import (
    Factory,
    Handler,
    InferenceFunction,
    ModelSpec,
    default_handler,
    module_bytes,
    save_weights,
)
from .policies import POLICIES, Policy, PolicyParams
from .runtime import Runtime
from .workers import Tagged, WorkerManager, WorkerReply, worker_run

NAIVE = "naive"
KINDS = ("cold", "cached")
_TASK_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]*")


def task_uri(store_url: str, task: str) -> str:
    """Where ``task``'s weights are in the store at ``store_url``: ``<path>/<task>.pt``."""
    if not isinstance(task, str) or not _TASK_NAME.fullmatch(task):
        raise ConfigurationError(
            f"a task name is letters, digits, '_', '.' and '-' (not first), not {task!r}"
        )
    parts = urlsplit(store_url)
    if not parts.scheme:  # a plain directory
        return f"{store_url.rstrip('/')}/{task}.pt"
    path = f"{parts.path.rstrip('/')}/{task}.pt"
    return urlunsplit((parts.scheme, parts.netloc, path, parts.query, ""))


@dataclass(frozen=True)
class TaskCall:
    """One call for a task (seconds). ``worker`` is the device index; ``pid`` its process."""

    call: int
    task: str
    kind: str  # "cold" or "cached"
    worker: int
    pid: int
    load_s: float  # weights read, module built and moved to the device (0 when cached)
    activate_s: float  # the task's module made ready to run: the load, or finding it resident
    run_s: float
    latency_s: float  # submit to result, on this process's clock
    worker_loads: int  # loads that worker process had done after this call, by its own count
    error: str = ""

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


class MultiTask:
    """Per-task weights in a store, served from warm workers with cache-aware placement.

    ``model_factory()`` builds the (shared) architecture; task ``t``'s weights are at
    ``task_uri(store_url, t)`` (write them with ``save``). ``workers`` warm workers each
    keep up to ``tasks_per_worker`` tasks (the budget is that many times the model's bytes).
    ``policy`` is a serving policy name (``POLICIES``: ``"lalb+o3"``, ``"lb"``, ...) or
    ``"naive"`` (load on every call, keep nothing). ``device``: ``"cpu"`` or ``"cuda"``
    (default: CUDA when there is a GPU). ``pool_options`` go to each worker's local pool.
    ``manager``: warm workers to use instead of starting ``workers`` new ones (one MultiTask
    at a time; it starts them empty, and ``close`` leaves them running for the next).
    ``records`` holds a ``TaskCall`` per finished call, in the order the calls finished.

    >>> mt = MultiTask(make_net, "file:///tmp/w", tasks=["a", "b", "c"])  # doctest: +SKIP
    >>> mt.submit("b", x).result()  # doctest: +SKIP
    """

    def __init__(
        self,
        model_factory: Factory,
        store_url: str,
        tasks: Sequence[str],
        workers: int = 2,
        tasks_per_worker: int = 1,
        policy: str | Policy = "lalb+o3",
        handler: Handler = default_handler,
        device: str = "",
        params: PolicyParams | None = None,
        manager: WorkerManager | None = None,
        **pool_options: Any,
    ) -> None:
        if not callable(model_factory) or not callable(handler):
            raise ConfigurationError("model_factory and handler must be callable")
        tasks = list(tasks)
        if not tasks or len(set(tasks)) != len(tasks):
            raise ConfigurationError(f"tasks must be a non-empty list of unique names: {tasks!r}")
        if isinstance(policy, str) and policy != NAIVE and policy not in POLICIES:
            known = ", ".join([*POLICIES, NAIVE])
            raise ConfigurationError(f"unknown policy {policy!r}; known: {known}")
        if isinstance(tasks_per_worker, bool) or not isinstance(tasks_per_worker, int):
            raise ConfigurationError(f"tasks_per_worker must be an int, not {tasks_per_worker!r}")
        if tasks_per_worker < 1:
            raise ConfigurationError(f"tasks_per_worker must be >= 1, not {tasks_per_worker}")
        self.store_url = store_url
        self.tasks = tasks
        self.policy = policy if isinstance(policy, str) else policy.name
        self.size_bytes = max(1, module_bytes(model_factory))
        self.function = InferenceFunction(self.size_bytes * tasks_per_worker, device)
        for t in tasks:  # task_uri checks the names, _store the scheme
            self.function.register(t, model_factory, handler, task_uri(store_url, t),
                                   self.size_bytes)  # fmt: skip
        self.manager = manager or WorkerManager(
            workers, self.size_bytes * tasks_per_worker, device, **pool_options
        )
        self._own_manager = manager is None
        if manager is not None:  # lent by the caller: empty workers with this one's budget
            manager.reset(self.size_bytes * tasks_per_worker)
        self.records: list[TaskCall] = []
        self._lock = threading.Lock()
        self._seq = 0
        self._inflight = [0] * len(self.manager.devices)
        self.runtime: Runtime | None = None
        if self.policy != NAIVE:
            self.runtime = Runtime(self.function, [self.manager], policy, params)

    # -- weights ----------------------------------------------------------------------------------
    def uri(self, task: str) -> str:
        """Where ``task``'s weights are."""
        return self.spec(task).weights or ""

    def save(self, task: str, module: Any) -> int:
        """Write ``module``'s state dict as ``task``'s weights; returns the bytes written."""
        return save_weights(module, self.uri(task))

    def spec(self, task: str) -> ModelSpec:
        try:
            return self.function.specs[task]
        except (KeyError, TypeError):
            raise UnknownModel(f"unknown task {task!r}; tasks: {', '.join(self.tasks)}") from None

    # -- calls ------------------------------------------------------------------------------------
    def submit(self, task: str, x: Any) -> concurrent.futures.Future:
        """Run ``x`` through ``task``'s model; the future's result is the handler's output."""
        spec = self.spec(task)
        out: concurrent.futures.Future = concurrent.futures.Future()
        t0 = time.perf_counter()
        with self._lock:
            call = self._seq
            self._seq += 1
            if self.runtime is None:
                worker = min(range(len(self._inflight)), key=self._inflight.__getitem__)
                self._inflight[worker] += 1
        if self.runtime is None:
            try:
                fut = self.manager.call(worker, self.manager.bound(worker_run, spec), (), x, False)
            except BaseException:
                with self._lock:
                    self._inflight[worker] -= 1
                raise
            fut.add_done_callback(lambda f: self._naive_done(f, out, call, task, worker, t0))
            return out
        runtime = self.runtime
        with self._lock:  # one submit at a time: the record appended is this call's
            fut = runtime.submit(task, Tagged(x, call))
            rec = runtime.records[-1]
        fut.add_done_callback(lambda f: self._cached_done(f, out, call, task, rec, t0))
        return out

    def run(self, task: str, x: Any) -> Any:
        """``submit(task, x).result()``."""
        return self.submit(task, x).result()

    def _naive_done(
        self,
        fut: concurrent.futures.Future,
        out: concurrent.futures.Future,
        call: int,
        task: str,
        worker: int,
        t0: float,
    ) -> None:
        latency = time.perf_counter() - t0
        with self._lock:
            self._inflight[worker] -= 1
        exc = fut.exception()
        if exc is not None:
            self._record(TaskCall(call, task, "cold", worker, 0, 0, 0, 0, latency, 0, repr(exc)))
            out.set_exception(exc)
            return
        r: WorkerReply = fut.result()
        self._record(TaskCall(call, task, "cold", worker, r.pid, r.load_s, r.activate_s,
                              r.run_s, latency, r.loads))  # fmt: skip
        out.set_result(r.output)

    def _cached_done(
        self,
        fut: concurrent.futures.Future,
        out: concurrent.futures.Future,
        call: int,
        task: str,
        rec: Any,
        t0: float,
    ) -> None:
        latency = time.perf_counter() - t0
        reply = self.manager.replies.pop(call, None)
        exc = fut.exception()
        if exc is not None or reply is None:
            kind = "cached" if rec.hit else "cold"
            error = repr(exc)
            self._record(TaskCall(call, task, kind, rec.device, 0, rec.load_s, 0, 0, latency, 0,
                                  error))  # fmt: skip
            out.set_exception(exc or RuntimeError(f"call {call}: no reply from the worker"))
            return
        load_s = rec.load_s + reply.load_s  # reply.load_s: the worker had lost the module
        kind = "cold" if load_s > 0 else "cached"
        activate = load_s + reply.activate_s if kind == "cold" else reply.activate_s
        self._record(TaskCall(call, task, kind, rec.device, reply.pid, load_s, activate,
                              reply.run_s, latency, reply.loads))  # fmt: skip
        out.set_result(fut.result())

    def _record(self, call: TaskCall) -> None:
        with self._lock:
            self.records.append(call)

    # -- reports ----------------------------------------------------------------------------------
    def resident(self) -> list[tuple[str, ...]]:
        """The tasks each worker's process holds now, as the worker reports them."""
        return [r.resident for r in self.manager.resident()]

    def stats(self) -> dict[str, Any]:
        """Counters: calls, loads and evictions per worker (asked by this side), hit rate."""
        with self._lock:
            calls = sorted(self.records, key=lambda c: c.call)
        done = [c for c in calls if not c.error]
        cached = sum(c.kind == "cached" for c in done)
        workers = range(len(self.manager.devices))
        return {
            "policy": self.policy,
            "calls": len(calls),
            "errors": len(calls) - len(done),
            "cold": len(done) - cached,
            "cached": cached,
            "hit_rate": cached / len(done) if done else 0.0,
            "loads": [sum(c.kind == "cold" and c.worker == w for c in done) for w in workers],
            "evictions": list(self.manager.evictions),
        }

    def summary(self) -> dict[str, Any]:
        """``summarize(self.records)``."""
        with self._lock:
            calls = list(self.records)
        return summarize(calls)

    def close(self) -> None:
        """Finish the queued calls, then stop the workers (when this object started them)."""
        if self.runtime is not None:
            self.runtime.close()
        if self._own_manager:
            self.manager.close()

    def __enter__(self) -> MultiTask:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return (
            f"MultiTask({len(self.tasks)} tasks, {len(self.manager.devices)} workers, "
            f"{self.policy}, store {urlsplit(self.store_url).scheme or 'file'}://)"
        )


def percentile(values: Sequence[float], q: float) -> float:
    """The ``q``-th percentile (0..100) by linear interpolation; NaN for no values."""
    xs = sorted(values)
    if not xs:
        return float("nan")
    pos = (len(xs) - 1) * q / 100.0
    lo = int(pos)
    hi = min(lo + 1, len(xs) - 1)
    return xs[lo] + (xs[hi] - xs[lo]) * (pos - lo)


def _describe(values: Sequence[float]) -> dict[str, float]:
    return {
        "n": len(values),
        "total_s": sum(values),
        "mean_s": sum(values) / len(values) if values else float("nan"),
        "p50_s": percentile(values, 50),
        "p99_s": percentile(values, 99),
    }


def summarize(calls: Sequence[TaskCall]) -> dict[str, Any]:
    """Totals and p50/p99 of the three kinds of time (cold load, cached activation, run) and
    of the latency of cold and cached calls; the hit rate. Failed calls are counted apart."""
    done = [c for c in calls if not c.error]
    cold = [c for c in done if c.kind == "cold"]
    cached = [c for c in done if c.kind == "cached"]

    def pick(cs: Sequence[TaskCall], name: str) -> list[float]:
        return [getattr(c, name) for c in cs]

    return {
        "calls": len(calls),
        "errors": len(calls) - len(done),
        "hit_rate": len(cached) / len(done) if done else 0.0,
        "cold_load": _describe(pick(cold, "load_s")),
        "cached_activation": _describe(pick(cached, "activate_s")),
        "run": _describe(pick(done, "run_s")),
        "latency_cold": _describe(pick(cold, "latency_s")),
        "latency_cached": _describe(pick(cached, "latency_s")),
        "latency": _describe(pick(done, "latency_s")),
    }
