"""The dashboard's data model: what each panel shows, from store rows and executor state.

Pure functions (rows in, JSON-ready dicts out) beside the few queries that fetch those rows
(:func:`query_stream` and friends, on a :class:`~hetfaas.gateway.store.Store`). Nothing here
needs a web framework, so each panel is testable on its own; :mod:`.dashboard` serves them.

Every view is capped, so the dashboard costs the same at 100 invocations as at 100,000:

- the task stream returns at most ``limit`` tasks (the latest that ended in the window, and
  those running), and counts *every* invocation that ended in the window per function in
  ``buckets`` time buckets (aggregated in SQL, one row per function, state and bucket);
- the workers panel reads the timings of the latest calls only (:data:`WORKER_ROWS`);
- the batches panel shows the latest :data:`BATCHES` batches.

Times are Unix seconds. A task's phases are placed on the wall clock from its record: the
gateway's queue runs from ``submitted_at`` to ``dispatched_at``; the compute starts at
``started_at`` (or ``finished_at`` less compute and transfer-out) with the executor's queue,
cold start and transfer-in before it and transfer-out after it (its ``timings``). A call that
ran in a chunk of a batch shows its own slice of the chunk's compute (items run in order).
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from typing import Any

from .records import to_api
from .store import FINAL, Store

PHASES = (
    "gateway_queue", "queue", "cold_start", "transfer_in", "compute", "transfer_out", "running",
)  # fmt: skip
"""Segment kinds of the task stream, by index (``running``: a call not ended yet)."""
_K = {name: i for i, name in enumerate(PHASES)}

STREAM_LIMIT = 1000
STREAM_MAX_LIMIT = 10_000
STREAM_BUCKETS = 60
STREAM_MAX_BUCKETS = 500
WORKER_ROWS = 2000
BATCHES = 20
RESULT_PREVIEW = 4096
OPEN_STATES = ("QUEUED", "RUNNING")

_STREAM_COLUMNS = (
    "id, function, state, submitted_at, dispatched_at, started_at, finished_at, timings, batch"
)


# ---------------------------------------------------------------------- queries
#
# ``namespace || '' = ?`` keeps SQLite from choosing the (namespace, ...) indexes where a time
# index (``inv_finished``) or the partial index of open calls (``inv_open``) is the fast one.


def query_stream(
    store: Store, namespace: str, since: float, until: float, limit: int, buckets: int
) -> tuple[list[dict[str, Any]], list[dict[str, Any]], list[tuple[Any, ...]], list[Any]]:
    """(latest ended rows, running rows, per-(function, state, bucket) counts of the ended,
    per-(function, state) counts of the open) of ``namespace`` in ``[since, until)``."""
    ended = store.read(
        f"SELECT {_STREAM_COLUMNS} FROM invocations WHERE finished_at >= ? AND finished_at < ?"
        " AND namespace || '' = ? ORDER BY finished_at DESC LIMIT ?",
        (since, until, namespace, limit),
    )
    running = store.read(
        f"SELECT {_STREAM_COLUMNS} FROM invocations WHERE state IN ('QUEUED', 'RUNNING')"
        " AND namespace || '' = ? AND state = 'RUNNING' ORDER BY dispatched_at LIMIT ?",
        (namespace, limit),
    )
    width = (until - since) / buckets
    agg = store.read(
        "SELECT function, state, MIN(CAST((finished_at - ?) / ? AS INTEGER), ?) AS b, COUNT(*)"
        " FROM invocations WHERE finished_at >= ? AND finished_at < ? AND namespace || '' = ?"
        " GROUP BY function, state, b",
        (since, width, buckets - 1, since, until, namespace),
    )
    return (
        [dict(r) for r in ended],
        [dict(r) for r in running],
        [tuple(r) for r in agg],
        [tuple(r) for r in query_open(store, namespace)],
    )


def query_open(store: Store, namespace: str) -> list[Any]:
    """Rows of (function, state, count) of the namespace's QUEUED and RUNNING calls."""
    return store.read(
        "SELECT function, state, COUNT(*) FROM invocations WHERE state IN ('QUEUED', 'RUNNING')"
        " AND namespace || '' = ? GROUP BY function, state",
        (namespace,),
    )


def query_worker_rows(store: Store, namespace: str, since: float) -> list[dict[str, Any]]:
    """The namespace's latest ended calls that ran on a worker (their timings), newest first."""
    rows = store.read(
        "SELECT function, finished_at, timings FROM invocations WHERE finished_at >= ?"
        " AND namespace || '' = ? AND timings IS NOT NULL ORDER BY finished_at DESC LIMIT ?",
        (since, namespace, WORKER_ROWS),
    )
    return [dict(r) for r in rows]


def query_batches(store: Store, namespace: str, since: float, limit: int = BATCHES) -> list[Any]:
    """Per batch submitted since ``since``: its calls by state and its first and last times."""
    return store.read(
        "SELECT batch, MIN(function), COUNT(*), SUM(state = 'COMPLETED'), SUM(state = 'FAILED'),"
        " SUM(state = 'CANCELLED'), SUM(state = 'RUNNING'), SUM(state = 'QUEUED'),"
        " MIN(submitted_at), MAX(finished_at) FROM invocations"
        " WHERE namespace = ? AND submitted_at >= ? AND batch IS NOT NULL"
        " GROUP BY batch ORDER BY MIN(submitted_at) DESC, batch DESC LIMIT ?",
        (namespace, since, limit),
    )


# ---------------------------------------------------------------------- the task stream


def _timings(row: dict[str, Any]) -> dict[str, Any] | None:
    text = row.get("timings")
    if not text:
        return None
    try:
        t = json.loads(text)
    except ValueError:
        return None
    return t if isinstance(t, dict) else None


def task_segments(
    row: dict[str, Any], now: float, timings: dict[str, Any] | None = None
) -> list[tuple[str, float, float]]:
    """A call's phases as (kind, start, seconds) on the wall clock (see the module)."""
    t = _timings(row) if timings is None else timings
    sub, disp, fin = row["submitted_at"], row.get("dispatched_at"), row.get("finished_at")
    segs: list[tuple[str, float, float]] = []
    if disp is not None and disp > sub:
        segs.append(("gateway_queue", sub, disp - sub))
    if fin is None:  # running (or queued: nothing ran yet)
        if disp is not None:
            segs.append(("running", disp, max(0.0, now - disp)))
        return segs
    if t is None:  # ended without running (cancelled while queued, failed to hand over)
        start = disp if disp is not None else sub
        segs.append(("gateway_queue" if disp is None else "running", start, max(0.0, fin - start)))
        return segs
    us = 1e-6
    compute = float(t.get("compute_us") or 0.0) * us
    t_out = float(t.get("transfer_out_us") or 0.0) * us
    chunk = t.get("chunk") if isinstance(t.get("chunk"), dict) else None
    start = row.get("started_at")
    if start is None or start > fin:
        start = fin - compute - t_out
    first = last = True
    if chunk and int(chunk.get("size") or 1) > 1:
        size, index = int(chunk["size"]), int(chunk.get("index") or 0)
        per = chunk.get("compute_per_item_us")
        per_s = float(per) * us if per is not None else compute / size
        first, last = index == 0, index == size - 1
        c_start, compute = start + index * per_s, per_s
    else:
        c_start = start
    if first:
        at = start
        for kind in ("transfer_in", "cold_start", "queue"):
            d = float(t.get(f"{kind}_us") or 0.0) * us
            if d > 0:
                at -= d
                segs.append((kind, at, d))
    segs.append(("compute", c_start, compute))
    if last and t_out > 0:
        segs.append(("transfer_out", start + float(t.get("compute_us") or 0.0) * us, t_out))
    segs.sort(key=lambda seg: seg[1])
    return segs


def lane_of(timings: dict[str, Any] | None) -> tuple[str, int | None, int | None]:
    """The stream's row of a call: (key, worker index, pid); calls that never reached a worker
    go to the ``gateway`` row."""
    if timings is None or int(timings.get("worker", -1)) < 0:
        return "gateway", None, None
    w = int(timings["worker"])
    return f"{timings.get('backend') or 'local'}:{w}", w, timings.get("pid")


def stream_view(
    ended: Sequence[dict[str, Any]],
    running: Sequence[dict[str, Any]],
    agg: Iterable[Sequence[Any]],
    open_counts: Iterable[Sequence[Any]],
    *,
    since: float,
    until: float,
    now: float,
    buckets: int,
) -> dict[str, Any]:
    """The task stream: capped tasks with their phases, and counts of every call in the window.

    ``tasks``: ``{"id", "f": function index, "l": lane index, "s": state, "b": batch,
    "g": [[phase index, start - since, seconds], ...]}``. ``buckets.counts[function][i]``:
    calls of that function that ended in bucket ``i``; ``totals`` and ``states`` add them up,
    so they count every call that ended in the window, however few tasks are returned.
    """
    counts: dict[str, list[int]] = {}
    states: dict[str, int] = {}
    for function, state, b, n in agg:
        row = counts.setdefault(function, [0] * buckets)
        row[max(0, min(buckets - 1, int(b)))] += n
        states[state] = states.get(state, 0) + n
    totals = {f: sum(c) for f, c in counts.items()}
    open_: dict[str, dict[str, int]] = {s: {} for s in OPEN_STATES}
    for function, state, n in open_counts:
        open_.setdefault(state, {})[function] = n
    names = sorted(totals, key=lambda f: (-totals[f], f))
    for row in (*ended, *running):
        if row["function"] not in totals:
            totals.setdefault(row["function"], 0)
            names.append(row["function"])
    findex = {f: i for i, f in enumerate(names)}
    lanes: dict[str, dict[str, Any]] = {}
    tasks = []
    for row in (*running, *ended):
        t = _timings(row)
        key, worker, pid = lane_of(t)
        if row.get("finished_at") is None:
            key, worker, pid = "running", None, None
        if key not in lanes:
            lanes[key] = {"key": key, "worker": worker, "pid": pid}
        segs = task_segments(row, now, t)
        tasks.append({
            "id": row["id"], "f": findex[row["function"]], "l": key, "s": row["state"],
            "b": row.get("batch"),
            "g": [[_K[k], round(s - since, 4), round(d, 6)] for k, s, d in segs],
        })  # fmt: skip
    order = sorted(lanes.values(), key=_lane_order)
    index = {lane["key"]: i for i, lane in enumerate(order)}
    for task in tasks:
        task["l"] = index[task["l"]]
    for lane in order:
        lane["label"] = _lane_label(lane)
    ended_total = sum(totals.values())
    return {
        "now": now, "since": since, "until": until, "window_s": until - since,
        "phases": list(PHASES), "functions": names, "lanes": order, "tasks": tasks,
        "shown": len(tasks), "ended": ended_total, "truncated": len(ended) < ended_total,
        "buckets": {"start": since, "width_s": (until - since) / buckets, "n": buckets,
                    "counts": {f: counts.get(f, [0] * buckets) for f in names}},
        "totals": totals, "states": states, "open": open_,
    }  # fmt: skip


def _lane_order(lane: dict[str, Any]) -> tuple[int, str, int]:
    if lane["key"] == "running":
        return (0, "", 0)
    if lane["worker"] is None:
        return (2, lane["key"], 0)
    return (1, lane["key"].partition(":")[0], lane["worker"])


def _lane_label(lane: dict[str, Any]) -> str:
    if lane["key"] == "running":
        return "running"
    if lane["worker"] is None:
        return "not run"
    return f"worker {lane['worker']}" + (f" (pid {lane['pid']})" if lane.get("pid") else "")


# ---------------------------------------------------------------------- workers and slots


def workers_view(
    rows: Iterable[dict[str, Any]],
    *,
    capacity: dict[str, Any] | None,
    stats: dict[str, Any],
    live_pids: Sequence[int] | None,
    cores: Sequence[int] | None,
    gpu_ids: Sequence[int] | None,
    machine: dict[str, Any],
    backend: str,
) -> dict[str, Any]:
    """Workers and their slots: the executor's capacity and counts, and per worker, core and
    GPU what the namespace's latest calls (``rows``, newest first) ran there."""
    cap = capacity or {}
    core_ids = list(cores) if cores is not None else list(range(int(cap.get("cpus") or 0)))
    gpus = list(gpu_ids) if gpu_ids is not None else list(range(int(cap.get("gpus") or 0)))
    names = list(cap.get("gpu_names") or ())
    workers: dict[int, dict[str, Any]] = {}
    core_use: dict[int, dict[str, Any]] = {c: _slot(c) for c in core_ids}
    gpu_use: dict[int, dict[str, Any]] = {
        g: {**_slot(g), "name": names[i] if i < len(names) else ""} for i, g in enumerate(gpus)
    }
    for row in rows:
        t = _timings(row)
        if t is None or int(t.get("worker", -1)) < 0:
            continue
        w = int(t["worker"])
        fin, fn = row.get("finished_at"), row["function"]
        compute_s = float(t.get("compute_us") or 0.0) / 1e6
        chunk = t.get("chunk")
        if isinstance(chunk, dict) and chunk.get("size"):
            compute_s /= int(chunk["size"])  # the chunk's compute, shared by its calls
        rec = workers.get(w)
        if rec is None:
            rec = workers[w] = {
                "worker": w, "pid": t.get("pid"), "cpus": list(t.get("cpus") or []),
                "gpus": list(t.get("gpus") or []), "calls": 0, "compute_s": 0.0,
                "last_at": fin, "last_function": fn, "functions": {},
            }  # fmt: skip
        rec["calls"] += 1
        rec["compute_s"] += compute_s
        rec["functions"][fn] = rec["functions"].get(fn, 0) + 1
        for use, ids in ((core_use, t.get("cpus") or ()), (gpu_use, t.get("gpus") or ())):
            for i in ids:
                slot = use.setdefault(int(i), _slot(int(i)))
                slot["calls"] += 1
                if slot["last_at"] is None:
                    slot["last_at"], slot["last_function"] = fin, fn
    live = set(live_pids or ())
    out = sorted(workers.values(), key=lambda r: r["worker"])
    for rec in out:
        rec["compute_s"] = round(rec["compute_s"], 6)
        rec["alive"] = rec["pid"] in live if live_pids is not None else None
    seen = {r["pid"] for r in out}
    idle = sorted(p for p in live if p not in seen)
    return {
        "backend": backend, "capacity": cap, "stats": stats, "machine": machine,
        "workers": out, "other_pids": idle, "live_workers": len(live) if live_pids else None,
        "cores": [core_use[c] for c in sorted(core_use)],
        "gpus": [gpu_use[g] for g in sorted(gpu_use)],
    }  # fmt: skip


def _slot(i: int) -> dict[str, Any]:
    return {"id": i, "calls": 0, "last_at": None, "last_function": None}


# ---------------------------------------------------------------------- queue, batches


def queue_view(
    *,
    gateway: dict[str, Any],
    executor: dict[str, Any],
    open_counts: Iterable[Sequence[Any]],
    history: dict[str, list[Any]],
) -> dict[str, Any]:
    """The queue: the gateway's (every namespace), the executor's, and this namespace's calls
    queued and running by function, with the gateway's recent depth over time."""
    mine: dict[str, dict[str, int]] = {s: {} for s in OPEN_STATES}
    for function, state, n in open_counts:
        mine.setdefault(state, {})[function] = n
    return {
        "gateway": gateway, "executor": executor,
        "namespace": {s: sum(mine[s].values()) for s in OPEN_STATES}, "by_function": mine,
        "history": history,
    }  # fmt: skip


def batches_view(rows: Iterable[Sequence[Any]], now: float) -> dict[str, Any]:
    """The latest batches, newest first, each with its calls by state and progress (0-1)."""
    out = []
    for batch, fn, total, done, failed, cancelled, running, queued, first, last in rows:
        ended = int(done or 0) + int(failed or 0) + int(cancelled or 0)
        out.append({
            "batch": batch, "function": fn, "total": total, "completed": int(done or 0),
            "failed": int(failed or 0), "cancelled": int(cancelled or 0),
            "running": int(running or 0), "queued": int(queued or 0), "ended": ended,
            "progress": round(ended / total, 4) if total else 1.0,
            "submitted_at": first, "finished_at": last if ended == total else None,
            "elapsed_s": round((last if ended == total and last else now) - first, 3),
        })  # fmt: skip
    return {"batches": out}


# ---------------------------------------------------------------------- serving, detail


def serving_view(runtimes: Iterable[Any]) -> dict[str, Any]:
    """The model caches of the serving runtimes (:class:`hetfaas.serving.Runtime`) registered
    with the dashboard: per device, its resident models and bytes; empty when none is."""
    out = []
    for rt in runtimes:
        devices = []
        for mgr in getattr(rt, "managers", ()):
            for local, st in enumerate(mgr.status()):
                sizes = dict(mgr.model_bytes[local])
                devices.append({
                    **st, "memory_bytes": mgr.memory[local],
                    "used_bytes": sum(sizes.values()),
                    "models": [{"name": m, "bytes": sizes.get(m, 0)} for m in st["models"]],
                })  # fmt: skip
        policy = getattr(getattr(rt, "scheduler", None), "policy", None)
        out.append({
            "policy": getattr(policy, "name", None), "models": list(getattr(rt, "names", ())),
            "requests": len(getattr(rt, "records", ())), "summary": rt.summary(),
            "devices": devices,
        })  # fmt: skip
    return {
        "runtimes": out,
        "detail": None if out else "no serving runtime is registered with this gateway",
    }


def invocation_detail(row: dict[str, Any], now: float) -> dict[str, Any]:
    """An invocation as the detail panel shows it: its record (timings, usage, logs, error),
    its phases from submission, its stream row and the head of its result."""
    api = to_api(row)
    t = _timings(row)
    sub = row["submitted_at"]
    api["phases"] = [
        {"phase": k, "start_s": round(s - sub, 6), "seconds": round(d, 6)}
        for k, s, d in task_segments(row, now, t)
    ]
    api["lane"] = _lane_label(dict(zip(("key", "worker", "pid"), lane_of(t), strict=True)))
    result = row.get("result")
    api["result_preview"] = None if result is None else result[:RESULT_PREVIEW]
    api["result_truncated"] = result is not None and len(result) > RESULT_PREVIEW
    api["ended"] = row["state"] in FINAL
    return api


__all__ = [
    "PHASES",
    "batches_view",
    "invocation_detail",
    "lane_of",
    "query_batches",
    "query_open",
    "query_stream",
    "query_worker_rows",
    "queue_view",
    "serving_view",
    "stream_view",
    "task_segments",
    "workers_view",
]
