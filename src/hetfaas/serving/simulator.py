"""Discrete-event simulation of a GPU cluster serving a trace, with the real Scheduler.

Events are arrivals (taken in order from the trace, never put in the heap) and completions (a
heap of ``(time, device)``, at most one per device). A device runs one request at a time; its
service time is the model's inference time, plus its load time on a miss. Faults are device
failures at given times: the device's requests go back to the scheduler and run elsewhere
(the running one from the start). ``check=True`` verifies the whole state's accounting after
every event (slow: for tests).
"""

from __future__ import annotations

import heapq
import time
from collections.abc import Sequence
from dataclasses import dataclass, field

from ..exceptions import ConfigurationError
from .catalog import Catalog
from .policies import Policy, PolicyParams
from .scheduler import Scheduler
from .workload import Trace

GIB = 1 << 30


@dataclass(frozen=True)
class Cluster:
    """``nodes`` x ``gpus_per_node`` devices of ``memory_bytes`` each."""

    nodes: int = 2
    gpus_per_node: int = 2
    memory_bytes: int = 2 * GIB

    def __post_init__(self) -> None:
        if self.nodes < 1 or self.gpus_per_node < 1 or self.memory_bytes < 1:
            raise ConfigurationError(f"a cluster needs nodes, GPUs and memory >= 1: {self}")

    @property
    def capacities(self) -> list[int]:
        return [self.memory_bytes] * (self.nodes * self.gpus_per_node)

    @property
    def node_of(self) -> list[int]:
        return [d // self.gpus_per_node for d in range(self.nodes * self.gpus_per_node)]


@dataclass
class SimResult:
    policy: str
    latency: list[float]  # finish - arrival, per request (NaN when it never finished)
    hit: list[bool]
    device: list[int]
    wall_s: float
    events: int
    max_overtaken: int
    retried: int = 0
    extra: dict = field(default_factory=dict)

    def summary(self) -> dict[str, float]:
        import numpy as np

        lat = np.asarray(self.latency)
        return {
            "avg_latency_s": float(lat.mean()),
            "p99_latency_s": float(np.percentile(lat, 99)),
            "miss_ratio": 1.0 - float(np.mean(self.hit)),
            "max_overtaken": float(self.max_overtaken),
        }


def simulate(
    trace: Trace,
    catalog: Catalog,
    cluster: Cluster | Sequence[int],
    policy: str | Policy = "lalb+o3",
    params: PolicyParams | None = None,
    faults: Sequence[tuple[float, int]] = (),
    check: bool = False,
) -> SimResult:
    """Run ``trace`` through a Scheduler; ``cluster`` may be a Cluster or a list of capacities."""
    if isinstance(cluster, Cluster):
        capacities, nodes = cluster.capacities, cluster.node_of
    else:
        capacities, nodes = list(cluster), None
    if max(trace.models, default=0) >= len(catalog):
        raise ConfigurationError(
            f"the trace asks for model {max(trace.models)} but the catalog has {len(catalog)}"
        )
    sched = Scheduler(
        capacities,
        catalog.sizes,
        catalog.load_times,
        catalog.infer_times,
        policy,
        params,
        nodes,
    )
    state = sched.state
    infer, load_t = state.infer_times, state.load_times
    arrivals, models = trace.arrivals, trace.models
    n = len(models)
    finish = [float("nan")] * n
    hits = [False] * n
    where = [-1] * n
    heap: list[tuple[float, int]] = []
    running = state.running
    failed = state.failed
    submit, next_, complete = sched.submit, sched.next, sched.complete
    push, pop = heapq.heappush, heapq.heappop
    faults = sorted(faults)
    fi = 0
    i = 0
    events = 0
    retried = 0
    inf = float("inf")
    t0 = time.perf_counter()
    while i < n or heap:
        t_arr = arrivals[i] if i < n else inf
        t_done = heap[0][0] if heap else inf
        t_fault = faults[fi][0] if fi < len(faults) else inf
        if t_fault <= t_arr and t_fault <= t_done:
            t, d = faults[fi]
            fi += 1
            for r, m in sched.fail(d):
                retried += 1
                d2 = submit(r, m)
                if running[d2] < 0:
                    st = next_(d2)
                    s = infer[st.model] if st.hit else infer[st.model] + load_t[st.model]
                    hits[st.request] = st.hit
                    where[st.request] = d2
                    push(heap, (t + s, d2))
        elif t_done <= t_arr:
            t, d = pop(heap)
            if failed[d]:
                continue
            finish[complete(d)] = t
            st = next_(d)
            if st is not None:
                r = st.request
                hits[r] = st.hit
                where[r] = d
                push(
                    heap,
                    (t + (infer[st.model] if st.hit else infer[st.model] + load_t[st.model]), d),
                )
        else:
            t = t_arr
            d = submit(i, models[i])
            i += 1
            if running[d] < 0:
                st = next_(d)
                r = st.request
                hits[r] = st.hit
                where[r] = d
                push(
                    heap,
                    (t + (infer[st.model] if st.hit else infer[st.model] + load_t[st.model]), d),
                )
        events += 1
        if check:
            state.check_invariants()
    wall = time.perf_counter() - t0
    latency = [f - a for f, a in zip(finish, arrivals, strict=True)]
    return SimResult(
        sched.policy.name, latency, hits, where, wall, events, state.max_overtaken, retried
    )
