"""What a pipeline run did: per stage, per edge, per call, the critical path and a timeline.

Every figure comes from one place:

- a call's run time, worker and pid from its future's ``timings`` (stamped in the worker; the
  driver's own submit and completion stamps where an engine gives none), its CPU time and peak
  memory from ``future.usage`` (the worker's own measurement where the engine has none);
- a stage's working, blocked, backpressure and queued time from the driver's
  :class:`~hetfaas.pipeline.flow.StageClock`: at every moment a stage not yet done is
  *working* (a call in flight), *blocked* (capacity, but no input ready: the consumer's
  blocked time), *backpressure* (input ready, but an output edge is full) or *queued* (input
  ready, but the executor has no free capacity);
- an edge's peak in flight from the flow's counters (items stored and slots reserved, the
  quantity the bound holds to).

Utilisation of a stage is its busy time (the sum of its calls' run times) over its lifetime
times the most calls it had in flight at once. The critical path is the longest chain of calls
linked by data (an item and the call that produced it; a stateful stage's state and the call
before), each weighted by its run time and its failed attempts: no schedule on any number of
workers could finish sooner, so ``critical_path_s / wall_s`` near 1 means the run is bound by
latency, near 0 by capacity.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any


@dataclass
class TaskRecord:
    """One stage call, as it ended (after its retries)."""

    index: int
    stage: str
    key: str
    ok: bool
    error: str | None
    attempts: int
    submitted_ns: int  # driver's clock (time.perf_counter_ns)
    completed_ns: int
    started_ns: int  # the last attempt's run, in the worker (the driver's stamps if unknown)
    finished_ns: int
    retry_s: float  # failed attempts and the backoff between them
    worker: str
    pid: int
    bytes_in: int = 0
    bytes_out: int = 0
    cpu_s: float = 0.0
    peak_rss_mb: float = 0.0
    gpu_peak_mem_mb: float | None = None
    gpu_util_percent: float | None = None  # mean over the call (NVML), where measured
    fetch_s: float = 0.0
    compute_s: float = 0.0
    put_s: float = 0.0
    emitted: int = 0
    deps: tuple[int, ...] = ()

    @property
    def run_s(self) -> float:
        """The last attempt's run time in its worker."""
        return max(0, self.finished_ns - self.started_ns) / 1e9

    @property
    def duration_s(self) -> float:
        """What this call adds to a chain of calls: its run time and failed attempts."""
        return self.run_s + self.retry_s

    @property
    def span_s(self) -> float:
        """From submit to the result in the driver: the run and every overhead around it
        (queue, cold start, transfers, retries)."""
        return max(0, self.completed_ns - self.submitted_ns) / 1e9


@dataclass
class StageStats:
    """One stage over a run (see the module's doc for where each figure comes from)."""

    name: str
    resources: str
    concurrency: tuple[int, int | None]
    items: int  # calls that succeeded
    failed: int
    skipped: int  # item keys never run because an upstream item failed
    emitted: int  # output items
    retries: int  # attempts beyond the first, over all calls
    bytes_in: int
    bytes_out: int
    busy_s: float
    cpu_s: float
    peak_rss_mb: float
    gpu_peak_mem_mb: float | None
    gpu_util_percent: float | None  # mean over the calls' run time, where measured
    fetch_s: float  # time the calls spent getting inputs from the data plane
    compute_s: float
    put_s: float
    working_s: float
    blocked_s: float
    backpressure_s: float
    queued_s: float
    lifetime_s: float
    peak_workers: int

    @property
    def utilisation(self) -> float:
        denom = self.lifetime_s * max(1, self.peak_workers)
        return min(1.0, self.busy_s / denom) if denom > 0 else 0.0

    @property
    def blocked_fraction(self) -> float:
        return self.blocked_s / self.lifetime_s if self.lifetime_s > 0 else 0.0


@dataclass
class EdgeStats:
    producer: str
    consumer: str
    bound: int
    peak_in_flight: int  # the most items stored and reserved at once: never above bound
    peak_stored: int  # the most items stored and not yet finished with
    items: int


@dataclass
class PipelineStats:
    """A run's stats: ``stages`` by name, ``edges``, ``tasks`` (every call), the critical
    path, ``failures`` and ``skipped``. ``print(stats)`` shows a table;
    :meth:`plot_timeline` draws the calls per worker."""

    name: str
    store: str
    wall_s: float
    items_in: int
    stages: dict[str, StageStats]
    edges: list[EdgeStats]
    tasks: list[TaskRecord]
    critical_path: list[TaskRecord]
    critical_path_s: float
    critical_span_s: float = 0.0  # the longest chain weighted by span_s (with call overheads)
    failures: list[Any] = field(default_factory=list)
    skipped: list[Any] = field(default_factory=list)
    t0_ns: int = 0

    def critical_path_by_stage(self) -> dict[str, float]:
        """Seconds of the critical path spent in each stage."""
        out: dict[str, float] = {}
        for t in self.critical_path:
            out[t.stage] = out.get(t.stage, 0.0) + t.duration_s
        return out

    def as_dict(self) -> dict[str, Any]:
        """Plain data (for JSON): stages with their derived figures, edges, the critical path
        and failures; the calls themselves as ``tasks``."""
        stages = {}
        for name, s in self.stages.items():
            d = asdict(s)
            d["utilisation"] = s.utilisation
            d["blocked_fraction"] = s.blocked_fraction
            stages[name] = d
        return {
            "name": self.name,
            "store": self.store,
            "wall_s": self.wall_s,
            "items_in": self.items_in,
            "stages": stages,
            "edges": [asdict(e) for e in self.edges],
            "critical_path_s": self.critical_path_s,
            "critical_span_s": self.critical_span_s,
            "critical_path": [(t.stage, t.key, t.duration_s) for t in self.critical_path],
            "critical_path_by_stage": self.critical_path_by_stage(),
            "failures": [(f.stage, f.key, repr(f.error), f.attempts) for f in self.failures],
            "skipped": [tuple(s) for s in self.skipped],
            "tasks": [asdict(t) for t in self.tasks],
        }

    def __str__(self) -> str:
        lines = [
            f"pipeline {self.name!r}: {self.items_in} items in {self.wall_s:.2f} s "
            f"through {self.store}"
        ]
        head = (f"{'stage':<12} {'items':>5} {'fail':>4} {'skip':>4} {'in':>9} {'out':>9} "
                f"{'busy s':>7} {'plane s':>7} {'cpu s':>6} {'peak':>8} {'work s':>6} "
                f"{'blocked':>7} {'backpr':>6} {'queued':>6} {'util':>5}")  # fmt: skip
        lines.append(head)
        for s in self.stages.values():
            lines.append(
                f"{s.name[:12]:<12} {s.items:>5} {s.failed:>4} {s.skipped:>4} "
                f"{_bytes(s.bytes_in):>9} {_bytes(s.bytes_out):>9} {s.busy_s:>7.2f} "
                f"{s.fetch_s + s.put_s:>7.2f} "
                f"{s.cpu_s:>6.2f} {s.peak_rss_mb:>5.0f} MB {s.working_s:>6.2f} "
                f"{s.blocked_s:>7.2f} {s.backpressure_s:>6.2f} {s.queued_s:>6.2f} "
                f"{s.utilisation:>5.0%}"
            )
        edges = ", ".join(
            f"{e.producer}->{e.consumer} {e.peak_in_flight}/{e.bound}" for e in self.edges
        )
        lines.append(f"peak in flight per edge (of its bound): {edges}")
        share = self.critical_path_s / self.wall_s if self.wall_s > 0 else 0.0
        by_stage = ", ".join(f"{k} {v:.2f} s" for k, v in self.critical_path_by_stage().items())
        steps = [f"{t.stage}[{t.key}]" for t in self.critical_path]
        if len(steps) > 8:
            steps = [*steps[:4], f"... {len(steps) - 7} more ...", *steps[-3:]]
        lines.append(
            f"critical path {self.critical_path_s:.2f} s ({share:.0%} of wall; "
            f"{self.critical_span_s:.2f} s with call overheads) over "
            f"{len(self.critical_path)} calls: {' -> '.join(steps)}; by stage: {by_stage}"
        )
        if self.failures:
            lines.append(
                "failed: "
                + ", ".join(f"{f.stage}[{f.key}] {type(f.error).__name__}" for f in self.failures)
            )
        if self.skipped:
            lines.append(
                "skipped: "
                + ", ".join(
                    f"{s.stage}[{s.key}] (after {s.failed_stage}[{s.failed_key}])"
                    for s in self.skipped
                )
            )
        return "\n".join(lines)

    def plot_timeline(self, path: str | os.PathLike[str], title: str | None = None) -> str:
        """A PNG of the calls per worker over the run (a task stream): one row per worker, one
        bar per call coloured by stage, failed calls hatched. Returns the path."""
        try:
            from matplotlib.backends.backend_agg import FigureCanvasAgg
            from matplotlib.figure import Figure
            from matplotlib.patches import Patch
        except ImportError as exc:  # pragma: no cover - matplotlib is in the dev/bench extras
            from .errors import PipelineConfigError

            raise PipelineConfigError(
                "plot_timeline needs matplotlib: pip install matplotlib"
            ) from exc
        workers = sorted({t.worker for t in self.tasks})
        row = {w: i for i, w in enumerate(workers)}
        names = list(self.stages)
        colours = {n: f"C{i % 10}" for i, n in enumerate(names)}
        fig = Figure(figsize=(10, 1.2 + 0.45 * max(1, len(workers))))
        FigureCanvasAgg(fig)
        ax = fig.add_subplot(1, 1, 1)
        for t in self.tasks:
            x0 = (t.started_ns - self.t0_ns) / 1e9
            ax.barh(row[t.worker], max(t.run_s, 1e-4), left=x0, height=0.8,
                    color=colours.get(t.stage, "grey"), edgecolor="black", linewidth=0.3,
                    hatch=None if t.ok else "xx")  # fmt: skip
        ax.set_yticks(range(len(workers)))
        ax.set_yticklabels(workers)
        ax.set_xlim(0, max(self.wall_s, 1e-3))
        ax.set_xlabel("seconds since the run started")
        ax.invert_yaxis()
        ax.set_title(title or f"{self.name}: calls per worker ({self.wall_s:.2f} s wall)")
        ax.legend(handles=[Patch(color=colours[n], label=n) for n in names],
                  loc="upper left", bbox_to_anchor=(1.0, 1.0), fontsize="small")  # fmt: skip
        fig.tight_layout()
        out = os.fspath(path)
        fig.savefig(out, dpi=110)
        return out


def _bytes(n: float) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if n < 1000 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000
    return f"{n:.1f} GB"  # pragma: no cover


def critical_path(
    tasks: list[TaskRecord], weight: Callable[[TaskRecord], float] | None = None
) -> tuple[list[TaskRecord], float]:
    """The longest chain of calls linked by data, each weighted by ``weight`` (default
    ``duration_s``), and its length in seconds. A call's dependencies ended before it was
    submitted, so completion order is a topological order."""
    weight = weight or (lambda t: t.duration_s)
    best: dict[int, float] = {}
    prev: dict[int, int | None] = {}
    by_index = {t.index: t for t in tasks}
    for t in sorted(tasks, key=lambda t: (t.completed_ns, t.index)):
        length, p = 0.0, None
        for d in t.deps:
            if d in best and best[d] > length:
                length, p = best[d], d
        best[t.index] = length + weight(t)
        prev[t.index] = p
    if not best:
        return [], 0.0
    end: int | None = max(best, key=lambda i: best[i])
    total = best[end]  # type: ignore[index]
    chain = []
    while end is not None:
        chain.append(by_index[end])
        end = prev[end]
    return chain[::-1], total


def stage_stats(
    name: str,
    resources: str,
    concurrency: tuple[int, int | None],
    tasks: list[TaskRecord],
    counts: Any,
    seconds: dict[str, float],
    lifetime_s: float,
) -> StageStats:
    """One stage's stats from its calls, the flow's counts and the clock's seconds."""
    gpu = [t.gpu_peak_mem_mb for t in tasks if t.gpu_peak_mem_mb is not None]
    util = [(t.gpu_util_percent, t.run_s) for t in tasks if t.gpu_util_percent is not None]
    weight = sum(w for _, w in util)
    mean_util = None
    if util:
        mean_util = sum(u * w for u, w in util) / weight if weight > 0 else util[0][0]
    return StageStats(
        name, resources, concurrency, counts.completed, counts.failed, counts.skipped,
        counts.emitted, sum(t.attempts - 1 for t in tasks),
        sum(t.bytes_in for t in tasks), sum(t.bytes_out for t in tasks),
        sum(t.run_s for t in tasks), sum(t.cpu_s for t in tasks),
        max((t.peak_rss_mb for t in tasks), default=0.0), max(gpu) if gpu else None, mean_util,
        sum(t.fetch_s for t in tasks), sum(t.compute_s for t in tasks),
        sum(t.put_s for t in tasks),
        seconds["working"], seconds["blocked"], seconds["backpressure"], seconds["queued"],
        lifetime_s, counts.peak_running,
    )  # fmt: skip


__all__ = [
    "EdgeStats",
    "PipelineStats",
    "StageStats",
    "TaskRecord",
    "critical_path",
    "stage_stats",
]
