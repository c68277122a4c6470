"""``GET /metrics``: the gateway's series for Prometheus, beside hetfaas's own.

On the registry of a :class:`hetfaas.metrics.Metrics` (calls by state, phase histograms --
cold starts among them -- CPU and peak RSS from ``future.usage``, and the executor's workers
and calls queued and running, read at each scrape), the gateway adds:

- ``hetfaas_gateway_invocations_total{namespace,function,state}``: invocations that ended
  (COMPLETED, FAILED, CANCELLED), counted when their end is durable; a token reads only its
  own namespace's series (the names of other namespaces' functions are theirs);
- ``hetfaas_gateway_pending_invocations{where}``: invocations accepted and waiting for the executor
  (``queued``) and handed to it (``inflight``), read from the engine at each scrape.

The route needs a token like every other (Prometheus sends one with ``authorization``).
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from ..metrics import Metrics


class GatewayMetrics:
    """What ``/metrics`` serves: the executor's calls and the gateway's invocations."""

    def __init__(self, executor: Any) -> None:
        self.metrics = Metrics()
        self.metrics.track(executor)
        import prometheus_client as pc  # Metrics() above said clearly if it is missing

        self.ended_total = pc.Counter(
            "hetfaas_gateway_invocations", "Invocations that ended, by function and state",
            ["namespace", "function", "state"], registry=self.metrics.registry,
        )  # fmt: skip
        self._engine: Any = None
        self.metrics.registry.register(_EngineCollector(self))

    def bind(self, engine: Any) -> None:
        self._engine = engine

    def handed(self, future: Any) -> None:
        """A call handed to the executor: its phases and usage are counted when it ends."""
        self.metrics.observe(future)

    def ended(self, row: dict[str, Any]) -> None:
        self.ended_total.labels(
            str(row.get("namespace", "?")), str(row.get("function", "?")),
            str(row.get("state", "?")),
        ).inc()  # fmt: skip

    def text(self, namespace: str | None = None) -> str:
        """The exposition text; with ``namespace``, without other namespaces' series."""
        text = self.metrics.text()
        if namespace is None:
            return text
        mine = f'namespace="{namespace}"'
        return "".join(
            line for line in text.splitlines(keepends=True)
            if not (line.startswith("hetfaas_gateway_invocations") and 'namespace="' in line
                    and mine not in line)
        )  # fmt: skip


class _EngineCollector:
    def __init__(self, owner: GatewayMetrics) -> None:
        self.owner = owner

    def collect(self) -> Iterator[Any]:
        from prometheus_client.core import GaugeMetricFamily

        g = GaugeMetricFamily("hetfaas_gateway_pending_invocations",
                              "Invocations not ended, by where", labels=["where"])  # fmt: skip
        engine = self.owner._engine
        if engine is not None:
            g.add_metric(["queued"], engine.queued)
            g.add_metric(["inflight"], engine.inflight)
        yield g
