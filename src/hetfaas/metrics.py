"""Prometheus metrics of hetfaas calls and pools, with ``prometheus-client``.

::

    metrics = hetfaas.metrics.Metrics()
    metrics.track(executor)              # workers by state, calls queued and running
    fut = executor.submit(f, x)
    metrics.observe(fut)                 # counted and timed when it ends
    metrics.serve(9400)                  # http://127.0.0.1:9400/metrics

Series (prefix ``hetfaas_``): ``calls_total{backend,state}`` (COMPLETED, FAILED,
CANCELLED), ``call_phase_seconds{backend,phase}`` (queue, cold_start, transfer_in, compute,
transfer_out, retry, total: histograms), ``call_retries_total{backend}`` (attempts after the
first, of idempotent functions' calls), ``call_cpu_seconds`` and ``call_peak_rss_bytes`` (from
``future.usage`` where it was measured), and, per tracked executor, ``workers{backend,state}``
and ``calls{backend,where}`` (queued, running), read from the backend's ``stats()`` at each
scrape. Nothing is added to a call's hot path: a future is observed by a done-callback.
"""

from __future__ import annotations

import threading
from collections.abc import Iterable, Iterator
from typing import Any

from .exceptions import ConfigurationError

_PHASES = ("queue", "cold_start", "transfer_in", "compute", "transfer_out", "retry", "total")
_BUCKETS = (1e-5, 3e-5, 1e-4, 3e-4, 1e-3, 3e-3, 0.01, 0.03, 0.1, 0.3, 1.0, 3.0, 10.0, 30.0,
            100.0, 300.0)  # fmt: skip


def _client() -> Any:
    try:
        import prometheus_client
    except ImportError as exc:
        raise ConfigurationError(
            "metrics need prometheus-client: pip install prometheus-client"
        ) from exc
    return prometheus_client


class Metrics:
    """hetfaas's series in a Prometheus registry of their own (or the one given)."""

    def __init__(self, registry: Any = None) -> None:
        pc = _client()
        self._pc = pc
        self.registry = registry if registry is not None else pc.CollectorRegistry()
        r = self.registry
        self.calls = pc.Counter("hetfaas_calls", "Calls that ended, by state",
                                ["backend", "state"], registry=r)  # fmt: skip
        self.phases = pc.Histogram("hetfaas_call_phase_seconds", "Phases of ended calls",
                                   ["backend", "phase"], buckets=_BUCKETS, registry=r)  # fmt: skip
        self.retries = pc.Counter("hetfaas_call_retries", "Attempts after the first (retries)",
                                  ["backend"], registry=r)  # fmt: skip
        self.cpu = pc.Histogram("hetfaas_call_cpu_seconds", "CPU seconds of measured calls",
                                ["backend"], buckets=_BUCKETS, registry=r)  # fmt: skip
        self.rss = pc.Gauge("hetfaas_call_peak_rss_bytes", "Peak RSS of the last measured call",
                            ["backend"], registry=r)  # fmt: skip
        self._tracked: list[tuple[str, Any]] = []
        self._lock = threading.Lock()
        r.register(_PoolCollector(self))

    def observe(self, future: Any) -> None:
        """Count and time ``future`` when it ends (at once if it has)."""
        future.add_done_callback(self._record)

    def observe_all(self, futures: Iterable[Any]) -> None:
        for f in futures:
            self.observe(f)

    def _record(self, fut: Any) -> None:
        t = fut.timings
        backend = t.backend if t is not None else "unknown"
        if fut.cancelled():
            state = "CANCELLED"
        else:
            state = "FAILED" if fut.exception() is not None else "COMPLETED"
        self.calls.labels(backend, state).inc()
        if getattr(fut, "attempts", 1) > 1:
            self.retries.labels(backend).inc(fut.attempts - 1)
        if t is not None:
            for phase in _PHASES:
                self.phases.labels(backend, phase).observe(getattr(t, f"{phase}_us") / 1e6)
        usage = getattr(fut, "usage", None)
        if usage is not None:
            self.cpu.labels(backend).observe(usage.cpu_s)
            self.rss.labels(backend).set(usage.peak_rss_mb * 2**20)

    def track(self, executor: Any) -> None:
        """Report ``executor``'s workers and calls at each scrape (its backend's ``stats()``)."""
        with self._lock:
            self._tracked.append((executor.backend.name, executor.backend))

    def text(self) -> str:
        """The exposition text, as a scrape would get it."""
        return self._pc.generate_latest(self.registry).decode()

    def serve(self, port: int = 0, host: str = "127.0.0.1") -> int:
        """Serve ``/metrics`` on ``host:port`` (a thread); the port it listens on."""
        server, _ = self._pc.start_http_server(port, addr=host, registry=self.registry)
        return int(server.server_port)


class _PoolCollector:
    """Reads the tracked backends' ``stats()`` when scraped."""

    def __init__(self, metrics: Metrics) -> None:
        self.m = metrics

    def describe(self) -> list[Any]:
        return []

    def collect(self) -> Iterator[Any]:
        from prometheus_client.core import GaugeMetricFamily

        workers = GaugeMetricFamily("hetfaas_workers", "Workers by state",
                                    labels=["backend", "state"])  # fmt: skip
        calls = GaugeMetricFamily("hetfaas_calls_now", "Calls queued or running now",
                                  labels=["backend", "where"])  # fmt: skip
        with self.m._lock:
            tracked = list(self.m._tracked)
        for name, backend in tracked:
            stats = backend.stats()
            for state in ("starting", "idle", "busy"):
                if f"workers_{state}" in stats:
                    workers.add_metric([name, state], stats[f"workers_{state}"])
            for where in ("queued", "running"):
                if where in stats:
                    calls.add_metric([name, where], stats[where])
        yield workers
        yield calls


__all__ = ["Metrics"]
