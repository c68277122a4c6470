"""The state of a pipeline run and the decisions taken on it: pure, no processes, no I/O.

:class:`Flow` holds what the driver knows: each stage's ready items (every input present),
partial joins, calls running, and each edge's items in flight. The run feeds it events
(``pull``, ``start``, ``complete``, ``fail``); the decisions are functions of it:

- :func:`items_to_pull`: how many source items to take now (the source edges' room);
- :func:`plan_starts`: which (stage, item) calls to start now;
- :func:`condition`: what a stage is doing (working, blocked, backpressure, queued, done),
  which :class:`StageClock` turns into time.

Backpressure: an edge's items *in flight* are those its producer has stored and its consumer
has not finished with, plus the slots reserved by the producer's running calls (``fanout``
each). A call starts only if every edge out of its stage keeps ``in flight <= bound``, so a
slow consumer stops its producers instead of letting items pile up.

Order and fairness: each stage starts its ready items in key order (so the two sides of a join
advance together). Slots go first to stages below their ``min`` concurrency, then one at a
time round robin, downstream stages first (draining before filling frees memory soonest), as
long as the executor's capacity (cores, GPUs, workers) is not exceeded.

Items are opaque to this module (the run stores ``ItemRef``s); each is freed, as a ref handed
back by ``complete``/``fail``, once every consumer stage is done with it.
"""

from __future__ import annotations

import bisect
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any, NamedTuple

from .graph import SOURCE, Key, Pipeline, key_str

WORKING, BLOCKED, BACKPRESSURE, QUEUED, DONE = (
    "working", "blocked", "backpressure", "queued", "done",
)  # fmt: skip
CONDITIONS = (WORKING, BLOCKED, BACKPRESSURE, QUEUED)


class Budget(NamedTuple):
    """What the executor runs at once (None: no limit known)."""

    cpus: float | None = None
    gpus: float | None = None
    slots: int | None = None


@dataclass
class Edge:
    producer: str
    consumer: str
    bound: int
    stored: int = 0  # items produced and not yet finished with by the consumer
    reserved: int = 0  # slots held by the producer's running calls
    peak: int = 0  # the most items stored at once
    peak_in_flight: int = 0  # the most stored + reserved at once (<= bound)
    items: int = 0  # items that crossed

    @property
    def in_flight(self) -> int:
        return self.stored + self.reserved

    def _mark(self) -> None:
        self.peak = max(self.peak, self.stored)
        self.peak_in_flight = max(self.peak_in_flight, self.in_flight)


@dataclass
class StageFlow:
    name: str
    inputs: tuple[str, ...]
    consumers: tuple[str, ...]
    fanout: int
    min_workers: int
    max_workers: int | None
    cpus: float
    gpus: float
    level: int
    stateful: bool
    ready: list[Key] = field(default_factory=list)  # sorted
    partial: dict[Key, dict[int, Any]] = field(default_factory=dict)
    inputs_of: dict[Key, list[Any]] = field(default_factory=dict)  # ready or running: refs
    running: set[Key] = field(default_factory=set)
    dead: dict[Key, tuple[str, Key]] = field(default_factory=dict)  # key prefix -> cause
    state: Any = None  # the last state ref of a stateful stage
    finished: bool = False
    started: int = 0
    completed: int = 0
    failed: int = 0
    skipped: int = 0
    emitted: int = 0
    peak_running: int = 0


class Failure(NamedTuple):
    """An item that failed at a stage, after its retries."""

    stage: str
    key: str
    error: BaseException
    attempts: int = 1


class Skipped(NamedTuple):
    """Items of ``stage`` under ``key`` never run: ``failed_key`` failed at ``failed_stage``."""

    stage: str
    key: str
    failed_stage: str
    failed_key: str


class Produced(NamedTuple):
    """An item of a sink stage (nobody consumes it): the run's output."""

    stage: str
    key: Key
    ref: Any


class Flow:
    """What the driver knows of a run (see the module's doc). Events mutate it; the decision
    functions only read it."""

    def __init__(self, pipeline: Pipeline, budget: Budget | None = None,
                 default_bound: int | None = None) -> None:  # fmt: skip
        levels = pipeline.levels()
        self.budget = budget or Budget()
        self.stages: dict[str, StageFlow] = {}
        for st in pipeline.stages:
            self.stages[st.name] = StageFlow(
                st.name, st.inputs, tuple(pipeline.consumers(st.name)), st.fanout,
                st.min_workers, st.max_workers, st.resources.cpus, st.resources.gpus,
                levels[st.name], st.stateful,
            )  # fmt: skip
        self.source_consumers = tuple(pipeline.consumers(SOURCE))
        self.edges: dict[tuple[str, str], Edge] = {
            (u, v): Edge(u, v, pipeline.bound(u, v, default_bound)) for u, v in pipeline.edges()
        }
        self.out_edges: dict[str, list[Edge]] = {SOURCE: []}
        for st in pipeline.stages:
            self.out_edges[st.name] = []
        for e in self.edges.values():
            self.out_edges[e.producer].append(e)
        self.descendants = {name: self._descendants(name) for name in self.stages}
        self.source_done = False
        self.pulled = 0
        self._refs: dict[tuple[str, Key], list[Any]] = {}  # item -> [ref, consumers left]
        self.failures: list[Failure] = []
        self.skipped: list[Skipped] = []
        self.outputs: list[Produced] = []

    def _descendants(self, name: str) -> list[str]:
        out: list[str] = []
        todo = [name]
        while todo:
            for c in self.stages[todo.pop()].consumers:
                if c not in out:
                    out.append(c)
                    todo.append(c)
        return [s for s in self.stages if s in out]  # stage order

    # ------------------------------------------------------------------ queries

    @property
    def running(self) -> int:
        return sum(len(s.running) for s in self.stages.values())

    @property
    def finished(self) -> bool:
        return self.source_done and all(s.finished for s in self.stages.values())

    def used(self) -> tuple[float, float, int]:
        cpus = gpus = 0.0
        n = 0
        for s in self.stages.values():
            k = len(s.running)
            cpus += k * s.cpus
            gpus += k * s.gpus
            n += k
        return cpus, gpus, n

    def source_edges(self) -> list[Edge]:
        return [self.edges[(SOURCE, c)] for c in self.source_consumers]

    def producer_done(self, name: str) -> bool:
        return self.source_done if name == SOURCE else self.stages[name].finished

    # ------------------------------------------------------------------ events

    def pull(self, value: Any) -> Key:
        """A source item was taken; returns its key."""
        key = (self.pulled,)
        self.pulled += 1
        self._produce(SOURCE, key, value)
        return key

    def source_exhausted(self) -> list[Any]:
        """The source has no more items; returns the refs to free (joins left unmatched)."""
        self.source_done = True
        return self._settle()

    def start(self, stage: str, key: Key) -> tuple[list[Any], Any]:
        """Start ``stage``'s call on ``key`` (a ready item): its input refs, in the order of
        the stage's inputs, and the state ref to give it (None: the initial state)."""
        s = self.stages[stage]
        i = bisect.bisect_left(s.ready, key)
        if i >= len(s.ready) or s.ready[i] != key:
            raise KeyError(f"item {key_str(key)} is not ready at stage {stage!r}")
        del s.ready[i]
        s.running.add(key)
        s.started += 1
        s.peak_running = max(s.peak_running, len(s.running))
        for e in self.out_edges[stage]:
            e.reserved += s.fanout
            e._mark()
        return [ref for _, ref in s.inputs_of[key]], s.state

    def complete(self, stage: str, key: Key, outputs: Iterable[Any],
                 state: Any = None) -> list[Any]:  # fmt: skip
        """``stage``'s call on ``key`` returned ``outputs`` (refs, in order; for a fan-out stage
        item ``j`` is keyed ``key + (j,)``) and, for a stateful stage, its new state ref.
        Returns the refs no longer needed by anyone (to free)."""
        s = self.stages[stage]
        s.running.remove(key)
        s.completed += 1
        free = self._release_inputs(s, key)
        for e in self.out_edges[stage]:
            e.reserved -= s.fanout
        if s.stateful:
            if s.state is not None:
                free.append(s.state)
            s.state = state
        outs = list(outputs)
        s.emitted += len(outs)
        for j, ref in enumerate(outs):
            out_key = (*key, j) if s.fanout > 1 else key
            free += self._produce(stage, out_key, ref)
        return free + self._settle()

    def fail(self, stage: str, key: Key, error: BaseException, attempts: int = 1) -> list[Any]:
        """``stage``'s call on ``key`` failed for good: the item is reported, the items that
        descend from it are skipped at every downstream stage. Returns the refs to free."""
        s = self.stages[stage]
        s.running.remove(key)
        s.failed += 1
        self.failures.append(Failure(stage, key_str(key), error, attempts))
        for e in self.out_edges[stage]:
            e.reserved -= s.fanout
        free = self._release_inputs(s, key)
        free += self._kill(stage, key, (stage, key))
        return free + self._settle()

    # ------------------------------------------------------------------ inner workings

    def _produce(self, producer: str, key: Key, ref: Any) -> list[Any]:
        consumers = self.source_consumers if producer == SOURCE else self.stages[producer].consumers
        if not consumers:
            self.outputs.append(Produced(producer, key, ref))
            return []
        self._refs[(producer, key)] = [ref, len(consumers)]
        free: list[Any] = []
        for c in consumers:
            free += self._deliver(producer, c, key, ref)
        return free

    def _deliver(self, producer: str, consumer: str, key: Key, ref: Any) -> list[Any]:
        s = self.stages[consumer]
        if self._dead(s, key) is not None:
            return self._drop(producer, key)
        e = self.edges[(producer, consumer)]
        e.stored += 1
        e.items += 1
        e._mark()
        idx = s.inputs.index(producer)
        got = s.partial.setdefault(key, {})
        got[idx] = (producer, ref)
        if len(got) == len(s.inputs):
            del s.partial[key]
            s.inputs_of[key] = [got[i] for i in range(len(s.inputs))]
            bisect.insort(s.ready, key)
        return []

    def _dead(self, s: StageFlow, key: Key) -> tuple[str, Key] | None:
        if not s.dead:
            return None
        for n in range(1, len(key) + 1):
            cause = s.dead.get(key[:n])
            if cause is not None:
                return cause
        return None

    def _drop(self, producer: str, key: Key) -> list[Any]:
        """A consumer is done with ``producer``'s item ``key``: the ref if nobody needs it."""
        entry = self._refs.get((producer, key))
        if entry is None:
            return []
        entry[1] -= 1
        if entry[1] > 0:
            return []
        del self._refs[(producer, key)]
        return [] if producer == SOURCE else [entry[0]]

    def _release_inputs(self, s: StageFlow, key: Key) -> list[Any]:
        free: list[Any] = []
        for producer, _ in s.inputs_of.pop(key):
            self.edges[(producer, s.name)].stored -= 1
            free += self._drop(producer, key)
        return free

    def _release_partial(self, s: StageFlow, key: Key) -> list[Any]:
        free: list[Any] = []
        for producer, _ in s.partial.pop(key).values():
            self.edges[(producer, s.name)].stored -= 1
            free += self._drop(producer, key)
        return free

    def _kill(self, stage: str, key: Key, cause: tuple[str, Key]) -> list[Any]:
        """Mark ``key`` (and the keys under it) dead at every stage below ``stage``."""
        free: list[Any] = []
        for name in self.descendants[stage]:
            d = self.stages[name]
            if self._dead(d, key) is not None:
                continue
            d.dead[key] = cause
            d.skipped += 1
            self.skipped.append(Skipped(name, key_str(key), cause[0], key_str(cause[1])))
            n = len(key)
            for k in [k for k in d.partial if k[:n] == key]:
                free += self._release_partial(d, k)
            for k in [k for k in d.ready if k[:n] == key]:
                d.ready.remove(k)
                free += self._release_inputs(d, k)
        return free

    def _settle(self) -> list[Any]:
        """Mark the stages that can get no more items finished, in stage order (so that a
        stage's end is seen by the next at once); a partial join left when every input has
        ended can never match: it fails. Returns the refs to free."""
        free: list[Any] = []
        for s in self.stages.values():
            if s.finished or not all(self.producer_done(i) for i in s.inputs):
                continue
            for key in sorted(s.partial):
                have = {s.inputs[i] for i in s.partial[key]}
                lacking = [i for i in s.inputs if i not in have]
                err = _unmatched(s.name, key, sorted(have), lacking)
                self.failures.append(Failure(s.name, key_str(key), err))
                s.failed += 1
                free += self._release_partial(s, key)
                free += self._kill(s.name, key, (s.name, key))
            if not s.ready and not s.running and not s.partial:
                s.finished = True
        return free


def _unmatched(stage: str, key: Key, have: list[str], lacking: list[str]) -> BaseException:
    from .errors import PipelineError

    return PipelineError(
        f"item {key_str(key)} of stage {stage!r} came from {', '.join(have)} but never from "
        f"{', '.join(lacking)} (their fan-outs emitted different numbers of items)"
    )


# ---------------------------------------------------------------------- decisions


def items_to_pull(flow: Flow) -> int:
    """Source items to take now: the room left on every edge out of the source."""
    if flow.source_done:
        return 0
    edges = flow.source_edges()
    if not edges:
        return 0
    return max(0, min(e.bound - e.in_flight for e in edges))


def _room(flow: Flow, s: StageFlow, extra: int) -> bool:
    return all(e.in_flight + (extra + 1) * s.fanout <= e.bound for e in flow.out_edges[s.name])


def _fits(budget: Budget, used: list[float], s: StageFlow) -> bool:
    cpus, gpus, n = used
    return (
        (budget.cpus is None or cpus + s.cpus <= budget.cpus + 1e-9)
        and (budget.gpus is None or gpus + s.gpus <= budget.gpus + 1e-9)
        and (budget.slots is None or n + 1 <= budget.slots)
    )


def plan_starts(flow: Flow) -> list[tuple[str, Key]]:
    """The calls to start now, as (stage, key), in the order to start them."""
    used = list(flow.used())
    order = sorted(flow.stages.values(), key=lambda s: (-s.level, list(flow.stages).index(s.name)))
    planned: dict[str, int] = {s.name: 0 for s in order}
    plan: list[tuple[str, Key]] = []

    def can(s: StageFlow, below_min: bool) -> bool:
        k = planned[s.name]
        n = len(s.running) + k
        if k >= len(s.ready):
            return False
        if s.max_workers is not None and n >= s.max_workers:
            return False
        if below_min and n >= s.min_workers:
            return False
        return _room(flow, s, k) and _fits(flow.budget, used, s)

    for below_min in (True, False):
        progress = True
        while progress:
            progress = False
            for s in order:
                if can(s, below_min):
                    plan.append((s.name, s.ready[planned[s.name]]))
                    planned[s.name] += 1
                    used[0] += s.cpus
                    used[1] += s.gpus
                    used[2] += 1
                    progress = True
    return plan


def condition(flow: Flow, stage: str) -> str:
    """What ``stage`` is doing now: ``working`` (a call in flight), ``blocked`` (capacity but
    no input ready), ``backpressure`` (input ready, an output edge full), ``queued`` (input
    ready, no free capacity in the executor or the stage's max), or ``done``."""
    s = flow.stages[stage]
    if s.finished:
        return DONE
    if s.running:
        return WORKING
    if not s.ready:
        return BLOCKED
    if not _room(flow, s, 0):
        return BACKPRESSURE
    return QUEUED


def describe(flow: Flow) -> str:
    """Each stage's state in one line, for errors."""
    lines = []
    for s in flow.stages.values():
        edges = ", ".join(f"->{e.consumer} {e.in_flight}/{e.bound}" for e in flow.out_edges[s.name])
        partial = ", ".join(
            f"{key_str(k)} has {sorted(s.inputs[i] for i in got)}"
            for k, got in list(s.partial.items())[:3]
        )
        lines.append(
            f"{s.name}: {condition(flow, s.name)}, {len(s.ready)} ready, {len(s.running)} "
            f"running, {len(s.partial)} partial joins{' (' + partial + ')' if partial else ''}"
            f"{'; edges ' + edges if edges else ''}"
        )
    return "; ".join(lines)


class StageClock:
    """Each stage's time by condition: call :meth:`observe` after every change of the flow;
    the interval since the last call is added to each stage's condition then. A stage's
    lifetime runs from the start to the moment it was first seen done."""

    def __init__(self, flow: Flow, t0_ns: int) -> None:
        self.t0 = t0_ns
        self.last = t0_ns
        self.seconds = {name: dict.fromkeys(CONDITIONS, 0.0) for name in flow.stages}
        self.ended: dict[str, int] = {}
        self.now = {name: condition(flow, name) for name in flow.stages}

    def observe(self, flow: Flow, t_ns: int) -> None:
        dt = max(0, t_ns - self.last) / 1e9
        for name, cond in self.now.items():
            if cond != DONE:
                self.seconds[name][cond] += dt
        self.last = max(self.last, t_ns)
        for name in flow.stages:
            cond = condition(flow, name)
            if cond == DONE and self.now[name] != DONE:
                self.ended[name] = self.last
            self.now[name] = cond

    def lifetime_s(self, name: str) -> float:
        end = self.ended.get(name, self.last)
        return (end - self.t0) / 1e9


__all__ = [
    "BACKPRESSURE",
    "BLOCKED",
    "CONDITIONS",
    "DONE",
    "QUEUED",
    "WORKING",
    "Budget",
    "Edge",
    "Failure",
    "Flow",
    "Produced",
    "Skipped",
    "StageClock",
    "StageFlow",
    "condition",
    "describe",
    "items_to_pull",
    "plan_starts",
]
