"""Running a pipeline on an Executor: the I/O around the pure :mod:`~hetfaas.pipeline.flow`.

The driver loop takes source items while the source edges have room, asks
:func:`~hetfaas.pipeline.flow.plan_starts` which calls to start, submits them through the
public Executor API only (``options`` for each stage's resources, ``submit``, the futures'
outcome, ``timings`` and ``usage``), and feeds each outcome back into the flow. So a pipeline
runs on any backend: the local pool, Submitit/Slurm, Ray, Parsl, the pilot.

Items never pass through the driver: a call's outputs are put into the data plane by its
worker and only references come back (see :mod:`~hetfaas.pipeline.dataplane`); the driver
deletes an item once every consumer stage is done with it, and the run's leftovers at
:meth:`PipelineRun.close`. Source items are ordinary call arguments of the first stages
(so pass small descriptors, or arrays made with :func:`hetfaas.share`).
"""

from __future__ import annotations

import contextlib
import itertools
import os
import queue
import time
import uuid
import weakref
from collections.abc import Iterable
from typing import Any

from .._executor import Executor
from ..exceptions import ResourceError
from ..retry import idempotent
from . import flow as fl
from .dataplane import ItemRef, check_url, get_value, open_store
from .errors import (
    ItemsFailed,
    PipelineConfigError,
    PipelineError,
    PipelineStalled,
    PipelineTimeout,
    UpstreamFailed,
)
from .graph import SOURCE, Key, Pipeline, key_str, parse_key
from .stats import PipelineStats, TaskRecord, critical_path, stage_stats
from .worker import SourceItem, StageCall, TaskReport

WAIT_SLICE_S = 1.0  # the longest the loop sleeps between checks of the run's deadline
_runs = itertools.count(1)


def run(
    pipeline: Pipeline,
    source: Iterable[Any],
    executor: Executor | None = None,
    *,
    store: str | None = None,
    max_in_flight: int | None = None,
    slots: int | None = None,
    keep_outputs: bool = True,
    timeout_s: float | None = None,
    warmup: bool = True,
) -> PipelineRun:
    """Run ``pipeline`` over ``source`` on ``executor`` (a new local pool if None, shut down
    at the end) and return the finished :class:`PipelineRun`.

    - ``store``: the data plane URL (default: the pipeline's, ``shm://``);
    - ``max_in_flight``: the bound of every edge whose consumer stage sets none;
    - ``slots``: the most calls in flight at once (default: the executor's workers; cores and
      GPUs of the executor's capacity are respected either way);
    - ``keep_outputs``: keep the sink stages' items for :meth:`PipelineRun.results` (False:
      count them and drop them);
    - ``timeout_s``: cancel the run past this (:class:`PipelineTimeout`);
    - ``warmup``: start each stage's ``min`` workers before the clock starts.

    Items that fail are reported in ``run.failures`` and their dependents in ``run.skipped``
    (``run.check()`` raises :class:`ItemsFailed` if there are any); a run that cannot go on
    raises :class:`PipelineStalled`.
    """
    if not pipeline.stages:
        raise PipelineConfigError(f"pipeline {pipeline.name!r} has no stages")
    own = executor is None
    ex = Executor() if executor is None else executor
    try:
        r = PipelineRun(pipeline, ex, store or pipeline.store, max_in_flight, slots, keep_outputs)
        r._execute(source, timeout_s, warmup)
    finally:
        if own:
            ex.shutdown(wait=False, cancel_futures=True)
    pipeline._last_stats = r._stats
    return r


def _budget(ex: Executor, slots: int | None) -> fl.Budget:
    try:
        cap = ex.capacity
    except Exception:  # an engine that cannot say: only the stages' own limits apply
        return fl.Budget(slots=slots)
    # 0 cores or workers: an engine that does not know (yet); its GPUs are taken as told
    return fl.Budget(float(cap.cpus) or None, float(cap.gpus), slots or cap.max_workers or None)


def _count(n: float | None) -> str:
    return "an unknown number of" if n is None else f"{n:g}"


def _free_all(url: str, namespace: str) -> None:
    with contextlib.suppress(Exception):  # at exit or after a failure: best effort
        open_store(url).clear(namespace)


class PipelineRun:
    """One run of a pipeline: its outputs, failures, skipped items and stats.

    ``results(stage)`` reads the sink items (by key), ``state(stage)`` a stateful stage's
    final state, ``stats()`` the :class:`~hetfaas.pipeline.stats.PipelineStats`. ``close()``
    (or leaving a ``with`` block) frees what the run still holds in the data plane.
    """

    def __init__(
        self,
        pipeline: Pipeline,
        executor: Executor,
        store: str,
        max_in_flight: int | None,
        slots: int | None,
        keep_outputs: bool,
    ) -> None:
        self.pipeline = pipeline
        self.url = check_url(store)
        # Starts with the driver's pid: shared-memory items of a killed driver are orphans.
        self.namespace = f"{os.getpid()}-pl{next(_runs)}{uuid.uuid4().hex[:6]}"
        self.keep_outputs = keep_outputs
        self._ex = executor
        self.budget = _budget(executor, slots)
        self._check_fits()
        self.flow = fl.Flow(pipeline, self.budget, max_in_flight)
        self.outputs: dict[str, dict[str, ItemRef]] = {s: {} for s in pipeline.sinks()}
        self.states: dict[str, ItemRef | None] = {}
        self.tasks: list[TaskRecord] = []
        self.wall_s = 0.0
        self._stats: PipelineStats | None = None
        self._closed = False
        self._finalizer = weakref.finalize(self, _free_all, self.url, self.namespace)
        sinks = set(pipeline.sinks())
        self._calls: dict[str, Any] = {}
        self._views: dict[str, Executor] = {}
        for i, st in enumerate(pipeline.stages):
            call = StageCall(st.fn, stage=st.name, index=i, url=self.url,
                             namespace=self.namespace, fanout=st.fanout,
                             inline_bytes=pipeline.inline_bytes,
                             keep=keep_outputs or st.name not in sinks, state=st.state)  # fmt: skip
            policy = st.policy
            self._calls[st.name] = idempotent(policy)(call) if policy is not None else call
            self._views[st.name] = executor.options(resources=st.resources)

    def _check_fits(self) -> None:
        b = self.budget
        for st in self.pipeline.stages:
            res = st.resources
            if (b.gpus is not None and res.gpus > b.gpus) or (
                b.cpus is not None and res.cpus > b.cpus
            ):
                raise ResourceError(
                    f"stage {st.name!r} asks for {res.cpus} core(s) and {res.gpus} GPU(s) per "
                    f"call; the executor has {_count(b.cpus)} core(s) and {_count(b.gpus)} "
                    "GPU(s)"
                )

    # ------------------------------------------------------------------ the loop

    def _execute(self, source: Iterable[Any], timeout_s: float | None, warmup: bool) -> None:
        if warmup:
            for st in self.pipeline.stages:
                with contextlib.suppress(Exception):  # an engine that cannot warm up
                    self._ex.warmup(max(1, st.min_workers), st.resources)
        events: queue.SimpleQueue[tuple[str, Key, Any]] = queue.SimpleQueue()
        self._inflight: dict[tuple[str, Key], tuple[Any, int, tuple[int, ...]]] = {}
        self._producer: dict[tuple[str, Key], int] = {}
        self._last_state: dict[str, int] = {}
        it = iter(source)
        flow = self.flow
        t0 = time.perf_counter_ns()
        self.t0_ns = t0
        deadline = None if timeout_s is None else time.monotonic() + timeout_s
        clock = fl.StageClock(flow, t0)
        self.clock = clock
        try:
            while True:
                moved = self._pull(it)
                for stage, key in fl.plan_starts(flow):
                    self._submit(stage, key, events)
                    moved = True
                clock.observe(flow, time.perf_counter_ns())
                if flow.finished:
                    break
                if not self._inflight:
                    if moved:  # calls refused at submit fail at once: look again
                        continue
                    raise PipelineStalled(
                        f"pipeline {self.pipeline.name!r} stalled: {fl.describe(flow)}"
                    )
                left = None if deadline is None else deadline - time.monotonic()
                if left is not None and left <= 0:
                    raise PipelineTimeout(
                        f"pipeline {self.pipeline.name!r} ran past timeout_s={timeout_s}: "
                        f"{fl.describe(flow)}"
                    )
                try:
                    event = events.get(
                        timeout=WAIT_SLICE_S if left is None else min(left, WAIT_SLICE_S)
                    )
                except queue.Empty:
                    continue
                self._finish(*event)
                while True:
                    try:
                        self._finish(*events.get_nowait())
                    except queue.Empty:
                        break
        except BaseException:
            for fut, _, _ in self._inflight.values():
                fut.cancel()
            self.close()
            raise
        t_end = time.perf_counter_ns()
        clock.observe(flow, t_end)
        self.wall_s = (t_end - t0) / 1e9
        self._stats = self._summarise(t0)

    def _pull(self, it: Any) -> bool:
        """Take the source items the flow has room for; whether anything changed."""
        flow = self.flow
        n = fl.items_to_pull(flow)
        for _ in range(n):
            try:
                value = next(it)
            except StopIteration:
                self._free(flow.source_exhausted())
                return True
            flow.pull(SourceItem(value))
        return n > 0

    def _submit(self, stage: str, key: Key, events: queue.SimpleQueue[Any]) -> None:
        inputs, state = self.flow.start(stage, key)
        st = self.pipeline[stage]
        deps = [self._producer[(u, key)] for u in st.inputs if u != SOURCE]
        if st.stateful and stage in self._last_state:
            deps.append(self._last_state[stage])
        submitted = time.perf_counter_ns()
        try:
            fut = self._views[stage].submit(self._calls[stage], key_str(key), tuple(inputs), state)
        except Exception as exc:  # refused at submit (an argument that cannot be pickled, ...)
            self._free(self.flow.fail(stage, key, exc))
            self._record(stage, key, None, exc, submitted, time.perf_counter_ns(), tuple(deps))
            return
        self._inflight[(stage, key)] = (fut, submitted, tuple(deps))
        fut.add_done_callback(lambda f, s=stage, k=key: events.put((s, k, f)))

    def _finish(self, stage: str, key: Key, fut: Any) -> None:
        done = time.perf_counter_ns()
        _, submitted, deps = self._inflight.pop((stage, key))
        try:
            report: TaskReport = fut.result(0)
            error = None
        except BaseException as exc:  # the call's error, whatever it is, fails this item
            report, error = None, exc
        flow = self.flow
        if error is None:
            free = flow.complete(stage, key, report.outputs, report.state)
        else:
            free = flow.fail(stage, key, error, getattr(fut, "attempts", 1))
        index = self._record(stage, key, fut, error, submitted, done, deps, report)
        if error is None:
            n = len(report.outputs)
            st = self.pipeline[stage]
            for j in range(n):
                self._producer[(stage, (*key, j) if st.fanout > 1 else key)] = index
            if st.stateful:
                self._last_state[stage] = index
                self.states[stage] = report.state
        self._free(free)
        for out in flow.outputs:
            if self.keep_outputs:
                self.outputs[out.stage][key_str(out.key)] = out.ref
        flow.outputs.clear()

    def _record(
        self, stage: str, key: Key, fut: Any, error: BaseException | None, submitted: int,
        done: int, deps: tuple[int, ...], report: TaskReport | None = None,
    ) -> int:  # fmt: skip
        timings = getattr(fut, "timings", None) if fut is not None else None
        usage = None
        with contextlib.suppress(Exception):
            usage = fut.usage if fut is not None else None
        started, finished, retry_s = submitted, done, 0.0
        worker, pid = "driver", os.getpid()
        if timings is not None:
            ran = timings.finished_ns - timings.started_ns
            if submitted <= timings.started_ns <= timings.finished_ns <= done:
                started, finished = timings.started_ns, timings.finished_ns  # the driver's clock
            elif timings.started_ns > 0 and ran >= 0:
                # an engine stamping another clock: its duration, placed before the hop back
                finished = max(submitted, done - int(timings.transfer_out_us * 1e3))
                started = max(submitted, finished - ran)
            retry_s = timings.retry_us / 1e6
            pid = timings.pid
            worker = (f"{timings.backend} w{timings.worker}" if timings.worker >= 0
                      else f"{timings.backend} pid {timings.pid}")  # fmt: skip
            if timings.gpus:
                worker += " gpu" + ",".join(map(str, timings.gpus))
        elif report is not None:
            pid, worker = report.pid, f"pid {report.pid}"
        rec = TaskRecord(
            len(self.tasks), stage, key_str(key), error is None,
            None if error is None else f"{type(error).__name__}: {error}",
            getattr(fut, "attempts", 1) if fut is not None else 1,
            submitted, done, started, finished, retry_s, worker, pid, deps=deps,
        )  # fmt: skip
        if report is not None:
            rec.bytes_in, rec.bytes_out = report.bytes_in, report.bytes_out
            rec.fetch_s, rec.compute_s, rec.put_s = report.fetch_s, report.compute_s, report.put_s
            rec.cpu_s, rec.peak_rss_mb = report.cpu_s, report.peak_rss_mb
            rec.emitted = len(report.outputs)
        if usage is not None:
            rec.cpu_s, rec.peak_rss_mb = usage.cpu_s, usage.peak_rss_mb
            rec.gpu_peak_mem_mb = usage.gpu_peak_mem_mb
            rec.gpu_util_percent = usage.gpu_util_percent
        self.tasks.append(rec)
        return rec.index

    def _free(self, refs: list[Any]) -> None:
        keys = [r.key for r in refs if isinstance(r, ItemRef) and r.key]
        if keys:
            open_store(self.url).delete(keys)

    def _summarise(self, t0: int) -> PipelineStats:
        flow, clock = self.flow, self.clock
        stages = {}
        for st in self.pipeline.stages:
            mine = [t for t in self.tasks if t.stage == st.name]
            res = st.resources
            desc = f"{res.cpus} cpu" + (f", {res.gpus:g} gpu" if res.gpus else "")
            stages[st.name] = stage_stats(
                st.name, desc, st.concurrency, mine, flow.stages[st.name],
                clock.seconds[st.name], clock.lifetime_s(st.name),
            )  # fmt: skip
        from .stats import EdgeStats

        edges = [EdgeStats(e.producer, e.consumer, e.bound, e.peak_in_flight, e.peak, e.items)
                 for e in flow.edges.values()]  # fmt: skip
        path, length = critical_path(self.tasks)
        _, span = critical_path(self.tasks, lambda t: t.span_s)
        return PipelineStats(
            self.pipeline.name, self.url, self.wall_s, flow.pulled, stages, edges,
            list(self.tasks), path, length, span, list(flow.failures), list(flow.skipped), t0,
        )  # fmt: skip

    # ------------------------------------------------------------------ reading the run

    @property
    def failures(self) -> list[fl.Failure]:
        """Items that failed, after their retries: (stage, key, error, attempts)."""
        return list(self.flow.failures)

    @property
    def skipped(self) -> list[fl.Skipped]:
        """Items never run because an upstream item failed: (stage, key, failed stage, key)."""
        return list(self.flow.skipped)

    def stats(self) -> PipelineStats:
        if self._stats is None:
            raise PipelineError("the run has not finished")
        return self._stats

    def check(self) -> PipelineRun:
        """Raise :class:`ItemsFailed` if any item failed; else return the run."""
        if self.flow.failures:
            fails = ", ".join(f"{f.stage}[{f.key}]: {type(f.error).__name__}: {f.error}"
                              for f in self.flow.failures[:5])  # fmt: skip
            more = len(self.flow.failures) - 5
            tail = f", {more} more" if more > 0 else ""
            raise ItemsFailed(
                f"{len(self.flow.failures)} item(s) failed ({fails}{tail}); "
                f"{len(self.flow.skipped)} downstream item key(s) skipped",
                self.failures, self.skipped,
            )  # fmt: skip
        return self

    def _sink(self, stage: str | None) -> str:
        sinks = list(self.outputs)
        if stage is None:
            if len(sinks) != 1:
                raise PipelineConfigError(f"the pipeline has sinks {sinks}: name one as stage=")
            return sinks[0]
        if stage not in self.outputs:
            raise PipelineConfigError(f"{stage!r} is not a sink stage; sinks: {sinks}")
        return stage

    def result(self, key: str | Key, stage: str | None = None) -> Any:
        """The item ``key`` of a sink stage (read from the data plane now). Raises the item's
        error if it failed there, :class:`UpstreamFailed` if it was skipped."""
        name = self._sink(stage)
        k = key if isinstance(key, tuple) else parse_key(key)
        ks = key_str(k)
        ref = self.outputs[name].get(ks)
        if ref is not None:
            return get_value(ref)
        for f in self.flow.failures:
            if f.stage == name and f.key == ks:
                raise f.error
        for s in self.flow.skipped:
            if s.stage == name and ks.startswith(s.key) and ks[len(s.key) :][:1] in ("", "."):
                raise UpstreamFailed(name, ks, s.failed_stage, s.failed_key)
        raise KeyError(f"no item {ks} at stage {name!r}")

    def results(self, stage: str | None = None) -> dict[str, Any]:
        """The items of a sink stage that succeeded, by key (in key order), read now."""
        name = self._sink(stage)
        refs = self.outputs[name]
        return {k: get_value(refs[k]) for k in sorted(refs, key=parse_key)}

    def state(self, stage: str) -> Any:
        """A stateful stage's state after its last call (its initial state if none ran)."""
        st = self.pipeline[stage]
        if not st.stateful:
            raise PipelineConfigError(f"stage {stage!r} keeps no state")
        ref = self.states.get(stage)
        return st.state if ref is None else get_value(ref)

    def close(self) -> None:
        """Free everything this run still holds in the data plane (idempotent)."""
        if not self._closed:
            self._closed = True
            self._finalizer()

    def __enter__(self) -> PipelineRun:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return (f"<PipelineRun {self.pipeline.name!r} {self.flow.pulled} items, "
                f"{len(self.flow.failures)} failed, {self.wall_s:.2f} s>")  # fmt: skip


__all__ = ["PipelineRun", "run"]
