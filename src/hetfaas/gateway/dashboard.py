"""The gateway's live dashboard: an HTML shell, its static files, and JSON under /v1/dashboard.

``GET /dashboard`` serves a page that holds no data: its script takes the token from the URL
fragment (``/dashboard#token=hft_...``: a fragment is never sent to the server, so it is in no
request nor log) or asks for it, keeps it in the tab's ``sessionStorage``, and reads every
panel from the JSON routes below with ``Authorization: Bearer``. The shell and its two static
files are the only dashboard paths the guard lets through without a token (see
:mod:`.auth`); the JSON routes need one and show the token's namespace only, beside the
machine-wide figures (workers, slots, the gateway's queue, resources) that every tenant
shares.

Routes (data model in :mod:`.dashboard_data`):

- ``GET /v1/dashboard/summary``: the namespace, its deployed functions, the poll intervals;
- ``GET /v1/dashboard/workers``: capacity, workers and their slots (cores, GPUs);
- ``GET /v1/dashboard/queue``: the gateway's queue and in flight, the executor's, this
  namespace's calls queued and running, and the depth over the last minutes;
- ``GET /v1/dashboard/stream?window=S&until=T&limit=N&buckets=B``: the task stream;
- ``GET /v1/dashboard/batches?since=T&limit=N``: progress of the latest batches;
- ``GET /v1/dashboard/resources?after=T``: the monitor's samples (CPU, memory, GPU, GPU
  memory of the machine and of the gateway's process tree, its workers included) after T;
- ``GET /v1/dashboard/serving``: the model caches of registered serving runtimes;
- ``GET /v1/dashboard/invocations/{id}``: one invocation's detail.

Resources come from :class:`hetfaas.monitor.Sampler`, sampled in the gateway's process every
``interval_s`` (1 s) into a ring of ``size`` samples (one hour), by one thread started and
stopped with the app.
"""

from __future__ import annotations

import collections
import contextlib
import os
import platform
import threading
import time
from collections.abc import AsyncIterator, Callable, Sequence
from importlib import resources as importlib_resources
from typing import Any

import psutil
from fastapi import FastAPI, Query, Request
from fastapi.responses import Response

from . import dashboard_data as data
from .auth import PUBLIC_DASHBOARD
from .errors import NotFound
from .store import Store

STATIC_FILES = {
    "dashboard.js": "text/javascript; charset=utf-8",
    "dashboard.css": "text/css; charset=utf-8",
}
SHELL_PATH = "/dashboard"
STATIC_PREFIX = "/dashboard/static/"
PUBLIC_PATHS = PUBLIC_DASHBOARD
"""The paths that need no token: the shell and its static files (they hold no data)."""

POLL_S = {"stream": 1.0, "queue": 1.0, "resources": 1.0, "workers": 2.0, "batches": 2.0,
          "summary": 10.0, "serving": 5.0}  # fmt: skip
MONITOR_COLUMNS = (
    "t", "machine_cpu_percent", "machine_mem_mb", "cpu_percent", "rss_mb", "processes",
    "gpu_util_percent", "gpu_mem_mb", "gateway_queued", "gateway_inflight",
    "executor_queued", "executor_running", "workers",
)  # fmt: skip
_HEADERS = {
    "Cache-Control": "no-cache",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Content-Security-Policy": "default-src 'none'; script-src 'self'; style-src 'self'; "
    "connect-src 'self'; img-src 'self' data:; frame-ancestors 'none'; base-uri 'none'; "
    "form-action 'none'",
}


class ResourceMonitor:
    """The monitor's samples of this process's tree and machine, with the queue's depth from
    ``queue_probe``, every ``interval_s`` into a ring of the last ``size`` samples."""

    def __init__(
        self,
        queue_probe: Callable[[], dict[str, Any]],
        interval_s: float = 1.0,
        size: int = 3600,
        gpus: bool = True,
    ) -> None:
        self.queue_probe = queue_probe
        self.interval_s = float(interval_s)
        self.ring: collections.deque[tuple[Any, ...]] = collections.deque(maxlen=size)
        self.gpus = gpus
        self.gpu_count = 0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()

    def start(self) -> None:
        """Start sampling (a second call does nothing)."""
        with self._lock:
            if self._thread is not None:
                return
            self._stop.clear()
            self._thread = threading.Thread(
                target=self._run, name="hetfaas-dashboard-monitor", daemon=True
            )
            self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        with self._lock:
            thread, self._thread = self._thread, None
        if thread is not None:
            thread.join(timeout=10)

    @property
    def running(self) -> bool:
        return self._thread is not None

    def _run(self) -> None:
        from ..monitor import Sampler

        sampler = Sampler(os.getpid(), interval_s=max(0.05, self.interval_s), gpus=self.gpus)
        self.gpu_count = sampler.gpu_count
        try:
            while not self._stop.is_set():
                self.sample(sampler)
                self._stop.wait(self.interval_s)
        finally:
            sampler.stop()  # not started: this only lets NVML go

    def sample(self, sampler: Any) -> tuple[Any, ...]:
        """One sample into the ring (the thread's step; the sampler keeps only its last)."""
        try:
            s = sampler.sample_once()
        except Exception:
            return ()
        del sampler.samples[:-1]  # the ring holds them; the sampler needs its last one
        q = self.queue_probe()
        row = (
            round(time.time(), 3), s.machine_cpu_percent, s.machine_mem_mb, s.cpu_percent,
            s.rss_mb, s.processes, s.gpu_util_percent, s.gpu_mem_mb, q.get("queued"),
            q.get("inflight"), q.get("executor_queued"), q.get("executor_running"),
            q.get("workers"),
        )  # fmt: skip
        self.ring.append(row)
        return row

    def columns(self, after: float = 0.0, limit: int | None = None) -> dict[str, list[Any]]:
        """The samples taken after ``after`` (Unix s), the last ``limit`` of them, by column."""
        rows = [r for r in list(self.ring) if r[0] > after]
        if limit is not None:
            rows = rows[-limit:]
        return {c: [r[i] for r in rows] for i, c in enumerate(MONITOR_COLUMNS)}


class Dashboard:
    """What the dashboard's routes read: the engine, store and executor, the monitor, and the
    serving runtimes registered with :meth:`add_serving` (``app.state.dashboard``)."""

    def __init__(self, engine: Any, store: Store, executor: Any, monitor_interval_s: float = 1.0):
        self.engine = engine
        self.store = store
        self.executor = executor
        self.serving: list[Any] = []
        self.monitor = ResourceMonitor(self.queue_counts, monitor_interval_s)
        self._machine: dict[str, Any] | None = None

    def add_serving(self, runtime: Any) -> None:
        """Show ``runtime``'s model caches (a :class:`hetfaas.serving.Runtime`) in the panel."""
        self.serving.append(runtime)

    def remove_serving(self, runtime: Any) -> None:
        with contextlib.suppress(ValueError):
            self.serving.remove(runtime)

    # ------------------------------------------------------------------ executor state

    def backend(self) -> Any:
        return getattr(self.executor, "backend", None)

    def executor_stats(self) -> dict[str, Any]:
        try:
            return dict(self.backend().stats())
        except Exception:
            return {}

    def gateway_counts(self) -> dict[str, Any]:
        """The engine's queue and calls handed over (every namespace)."""
        queued = None
        for _ in range(3):  # its queue may change while it is counted
            try:
                queued = self.engine.queued
                break
            except RuntimeError:
                continue
        return {"queued": queued, "inflight": self.engine.inflight,
                "max_inflight": self.engine.max_inflight}  # fmt: skip

    def queue_counts(self) -> dict[str, Any]:
        stats = self.executor_stats()
        workers = [stats.get(k) for k in ("workers_starting", "workers_idle", "workers_busy")]
        return {
            **self.gateway_counts(),
            "executor_queued": stats.get("queued"), "executor_running": stats.get("running"),
            "workers": sum(w for w in workers if w is not None) if stats else None,
        }  # fmt: skip

    def capacity(self) -> dict[str, Any] | None:
        try:
            cap = self.executor.capacity._asdict()
        except Exception:
            return None
        cap["gpu_names"] = list(cap.get("gpu_names") or ())
        return cap

    def machine(self) -> dict[str, Any]:
        """The machine's processor, cores and memory (read once; no torch import)."""
        if self._machine is None:
            from ..machine import parse_cpuinfo

            try:
                with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as f:
                    info = parse_cpuinfo(f.read())
            except OSError:
                info = {}
            self._machine = {
                "cpu_model": info.get("model") or platform.processor() or platform.machine(),
                "logical_cores": os.cpu_count(), "physical_cores": info.get("physical_cores"),
                "memory_mb": psutil.virtual_memory().total // 2**20,
                "os": platform.platform(), "python": platform.python_version(),
            }  # fmt: skip
        return self._machine

    # ------------------------------------------------------------------ panels

    def workers(self, namespace: str, now: float) -> dict[str, Any]:
        backend = self.backend()
        pids: Sequence[int] | None = None
        with contextlib.suppress(Exception):
            pids = backend.worker_pids()
        rows = data.query_worker_rows(self.store, namespace, now - 3600.0)
        return data.workers_view(
            rows, capacity=self.capacity(), stats=self.executor_stats(), live_pids=pids,
            cores=getattr(backend, "cores", None), gpu_ids=getattr(backend, "gpu_ids", None),
            machine=self.machine(), backend=getattr(backend, "name", "?"),
        )  # fmt: skip

    def queue(self, namespace: str) -> dict[str, Any]:
        history = self.monitor.columns(limit=300)
        keep = ("t", "gateway_queued", "gateway_inflight", "executor_queued", "executor_running")
        stats = self.executor_stats()
        return data.queue_view(
            gateway=self.gateway_counts(), executor=stats,
            open_counts=data.query_open(self.store, namespace),
            history={k: history[k] for k in keep},
        )  # fmt: skip

    def stream(
        self, namespace: str, window_s: float, until: float | None, limit: int, buckets: int
    ) -> dict[str, Any]:
        now = time.time()
        end = now if until is None else until
        since = end - window_s
        ended, running, agg, open_ = data.query_stream(
            self.store, namespace, since, end, limit, buckets
        )
        return data.stream_view(
            ended, running, agg, open_, since=since, until=end, now=now, buckets=buckets
        )

    def resources(self, after: float) -> dict[str, Any]:
        cols = self.monitor.columns(after=after)
        cap = self.capacity() or {}
        return {
            "interval_s": self.monitor.interval_s, "running": self.monitor.running,
            "columns": list(MONITOR_COLUMNS), "samples": cols, "count": len(cols["t"]),
            "cpu_count": os.cpu_count(), "memory_total_mb": self.machine()["memory_mb"],
            "gpu_count": max(self.monitor.gpu_count, int(cap.get("gpus") or 0)),
            "gpu_names": cap.get("gpu_names") or [],
        }  # fmt: skip


def mount_dashboard(
    app: FastAPI,
    *,
    engine: Any,
    store: Store,
    executor: Any,
    deps: list[Any],
    monitor_interval_s: float = 1.0,
) -> Dashboard:
    """Add the dashboard's routes to ``app`` (see the module), and run its resource monitor
    while the app runs (its lifespan). ``deps``: the dependencies of the other /v1 routes
    (the bearer scheme in the schema). The :class:`Dashboard` is ``app.state.dashboard``."""
    dash = Dashboard(engine, store, executor, monitor_interval_s)
    app.state.dashboard = dash
    inner = app.router.lifespan_context

    @contextlib.asynccontextmanager
    async def lifespan(a: Any) -> AsyncIterator[Any]:
        dash.monitor.start()
        try:
            async with inner(a) as state:
                yield state
        finally:
            dash.monitor.stop()

    app.router.lifespan_context = lifespan

    def ns(request: Request) -> str:
        return request.state.principal.namespace

    tags = ["dashboard"]

    @app.get(SHELL_PATH, include_in_schema=False)
    def shell() -> Response:
        return Response(_static("dashboard.html"), media_type="text/html; charset=utf-8",
                        headers=_HEADERS)  # fmt: skip

    @app.get(STATIC_PREFIX + "{name}", include_in_schema=False)
    def static(name: str) -> Response:
        if name not in STATIC_FILES:
            raise NotFound(f"no static file {name!r}")
        return Response(_static(name), media_type=STATIC_FILES[name], headers=_HEADERS)

    @app.get("/v1/dashboard/summary", tags=tags, dependencies=deps)
    def summary(request: Request) -> dict[str, Any]:
        """The token's namespace, its deployed functions and the panels' poll intervals."""
        namespace = ns(request)
        return {
            "namespace": namespace, "poll_s": POLL_S, "now": time.time(),
            "functions": [d.record.as_api() | {"loaded": d.fn is not None, "error": d.error}
                          for d in engine.functions(namespace)],
        }  # fmt: skip

    @app.get("/v1/dashboard/workers", tags=tags, dependencies=deps)
    def workers(request: Request) -> dict[str, Any]:
        """Capacity, the executor's workers by state, and per worker, core and GPU what this
        namespace's latest calls ran there (from their timings)."""
        return dash.workers(ns(request), time.time())

    @app.get("/v1/dashboard/queue", tags=tags, dependencies=deps)
    def queue(request: Request) -> dict[str, Any]:
        """The gateway's queue and calls in flight, the executor's, and this namespace's."""
        return dash.queue(ns(request))

    @app.get("/v1/dashboard/stream", tags=tags, dependencies=deps)
    def stream(
        request: Request,
        window: float = Query(
            60.0, gt=0, le=30 * 86400, allow_inf_nan=False, description="seconds shown"
        ),
        until: float | None = Query(
            None, allow_inf_nan=False, description="end of the window, Unix s (now)"
        ),
        limit: int = Query(data.STREAM_LIMIT, ge=1, le=data.STREAM_MAX_LIMIT),
        buckets: int = Query(data.STREAM_BUCKETS, ge=1, le=data.STREAM_MAX_BUCKETS),
    ) -> dict[str, Any]:
        """The task stream: at most `limit` tasks (the latest to end in the window, and those
        running) with their phases, and every call that ended in it counted per function in
        `buckets` time buckets."""
        return dash.stream(ns(request), window, until, limit, buckets)

    @app.get("/v1/dashboard/batches", tags=tags, dependencies=deps)
    def batches(
        request: Request,
        since: float | None = Query(
            None, allow_inf_nan=False, description="Unix s (default: a day ago)"
        ),
        limit: int = Query(data.BATCHES, ge=1, le=200),
    ) -> dict[str, Any]:
        """The latest batches of this namespace with their calls by state and progress."""
        now = time.time()
        start = now - 86400.0 if since is None else since
        return data.batches_view(data.query_batches(store, ns(request), start, limit), now)

    @app.get("/v1/dashboard/resources", tags=tags, dependencies=deps)
    def resources(
        after: float = Query(0.0, allow_inf_nan=False, description="samples after this, Unix s"),
    ) -> dict[str, Any]:
        """The monitor's samples, by column: the machine's CPU % and memory used, the
        gateway's process tree (its workers) CPU % and memory, GPU utilisation and memory."""
        return dash.resources(after)

    @app.get("/v1/dashboard/serving", tags=tags, dependencies=deps)
    def serving() -> dict[str, Any]:
        """The GPU model caches of the serving runtimes registered with this gateway."""
        return data.serving_view(list(dash.serving))

    @app.get("/v1/dashboard/invocations/{invocation_id}", tags=tags, dependencies=deps)
    def invocation(invocation_id: str, request: Request) -> dict[str, Any]:
        """One invocation: its timings and phases, usage, logs, error and the head of its
        result (404 when it is another namespace's)."""
        try:
            row = store.invocation(invocation_id, ns(request))
        except KeyError:
            raise NotFound(f"no invocation {invocation_id!r} in this namespace") from None
        return data.invocation_detail(row, time.time())

    return dash


_cache: dict[str, bytes] = {}


def _static(name: str) -> bytes:
    """A file of the package's ``static`` folder (read once)."""
    body = _cache.get(name)
    if body is None:
        body = (importlib_resources.files(__package__) / "static" / name).read_bytes()
        _cache[name] = body
    return body


__all__ = ["PUBLIC_PATHS", "Dashboard", "ResourceMonitor", "mount_dashboard"]
