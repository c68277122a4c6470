"""``hetfaas bench multitask``: per-task weights in a store, over a task-switching trace.

K tasks share one architecture (an MLP of a few MB on a CPU, larger on a GPU), each with its
own weights in a store (``file://`` by default; ``redis://`` or ``s3://`` on a server started
for the run). A trace of calls whose task ids follow a Zipf law over the K tasks (Poisson
arrivals, seeded: ``serving.workload.make_trace``) is replayed in real time twice on the same
warm workers, fewer task slots than tasks so that tasks are evicted:

- **cached**: ``MultiTask`` with a serving policy (LALB+O3 by default): a call goes where its
  task is resident, else its weights are loaded there;
- **naive**: every call loads its task's weights into the least-busy worker and drops them.

Per call it reports the cold load, the cached activation and the run, measured in the
worker, and the latency measured by the caller; per kind the totals, mean, p50 and p99; the
hit rate, the evictions, and every output checked against its task's weights computed here.
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import shutil
import tempfile
import time
from contextlib import ExitStack
from pathlib import Path
from typing import Any

from .. import machine
from ..exceptions import ConfigurationError
from ..serving.functions import save_weights
from ..serving.multitask import MultiTask, summarize, task_uri
from ..serving.workers import WorkerManager
from ..serving.workload import make_trace
from .report import json_default

STORES = ("file", "redis", "s3")
IN_FEATURES = 256
OUT_FEATURES = 10
DEPTH = 2  # hidden layers of width ``width``
BATCH = 16
ATOL = 1e-4  # outputs vs the reference computed here (the same fp32 kernels, other processes)


def make_net(width: int, depth: int = DEPTH) -> Any:
    """The shared architecture: ``IN_FEATURES`` -> ``depth`` x ``width`` -> ``OUT_FEATURES``."""
    import torch

    layers: list[Any] = []
    prev = IN_FEATURES
    for _ in range(depth):
        layers += [torch.nn.Linear(prev, width), torch.nn.ReLU()]
        prev = width
    layers.append(torch.nn.Linear(prev, OUT_FEATURES))
    return torch.nn.Sequential(*layers)


def width_for(size_mb: float, depth: int = DEPTH) -> int:
    """The hidden width that makes ``make_net`` about ``size_mb`` megabytes of fp32."""
    if not size_mb > 0:
        raise ConfigurationError(f"size_mb must be > 0, not {size_mb!r}")
    params = size_mb * 1e6 / 4
    # params ~ (depth - 1) w^2 + (IN + OUT + depth) w
    a, b = max(depth - 1, 0), IN_FEATURES + OUT_FEATURES + depth
    if a == 0:
        return max(1, round(params / b))
    return max(1, round((-b + (b * b + 4 * a * params) ** 0.5) / (2 * a)))


def _store(kind: str, stack: ExitStack, workdir: Path) -> str:
    """The base URL of a weight store of ``kind``, with its server started for the run."""
    from . import servers

    if kind == "file":
        path = workdir / "weights"
        path.mkdir()
        return path.as_uri()
    if kind == "redis":
        return servers.start_redis(workdir, stack) + "/multitask"
    if kind == "s3":
        info = servers.start_seaweedfs(workdir, stack)
        base = servers.s3_uri(info)
        return base.replace(f"s3://{info['bucket']}?", f"s3://{info['bucket']}/multitask?")
    raise ConfigurationError(f"unknown store {kind!r}; known: {', '.join(STORES)}")


def _replay(
    mt: MultiTask, tasks: list[str], trace: Any, x: Any, refs: dict[str, Any]
) -> dict[str, Any]:
    """Submit the trace's calls at their arrival times; wait for all; check every output."""
    import torch

    futs = []
    t0 = time.perf_counter()
    for at, m in zip(trace.arrivals, trace.models, strict=True):
        delay = t0 + at - time.perf_counter()
        if delay > 0:
            time.sleep(delay)
        futs.append((tasks[m], mt.submit(tasks[m], x)))
    correct = 0
    for task, fut in futs:
        correct += bool(torch.allclose(fut.result(timeout=600), refs[task], atol=ATOL))
    wall = time.perf_counter() - t0
    calls = sorted(mt.records, key=lambda c: c.call)
    return {
        "policy": mt.policy,
        "wall_s": wall,
        "correct": correct,
        "stats": mt.stats(),
        "summary": summarize(calls),
        "calls": [c.as_dict() for c in calls],
    }


def run_multitask(
    n_tasks: int = 8,
    workers: int = 2,
    per_worker: int = 2,
    n_calls: int = 200,
    rate: float = 25.0,
    zipf_s: float = 1.0,
    size_mb: float | None = None,
    store: str = "file",
    device: str = "",
    policy: str = "lalb+o3",
    seed: int = 0,
    log: Any = None,
    manager: WorkerManager | None = None,
) -> dict[str, Any]:
    """The trace on ``policy`` and on the naive policy, on the same warm workers (``manager``'s
    when given: then ``workers`` and ``device`` are its own)."""
    import torch

    say = log or (lambda _m: None)
    if not isinstance(n_tasks, int) or n_tasks < 2:
        raise ConfigurationError(f"n_tasks must be an int >= 2, not {n_tasks!r}")
    if manager is not None:
        workers, device = len(manager.devices), manager.device
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    if size_mb is None:
        size_mb = 64.0 if device == "cuda" else 4.0
    width = width_for(size_mb)
    factory = functools.partial(make_net, width)
    tasks = [f"task{i}" for i in range(n_tasks)]
    trace = make_trace(n_calls, n_tasks, rate, "zipf", "poisson", seed, zipf_s)
    torch.manual_seed(seed)
    x = torch.randn(BATCH, IN_FEATURES)
    workdir = Path(tempfile.mkdtemp(prefix="hetfaas-multitask-"))
    rows = []
    try:
        with ExitStack() as stack:
            base = _store(store, stack, workdir)
            t = time.perf_counter()
            if manager is None:
                manager = WorkerManager(workers, 1, device)  # budgets set by each MultiTask
                stack.callback(manager.close)
            start_s = time.perf_counter() - t
            say(f"{workers} warm workers in {start_s:.1f} s")
            refs = {}
            size_bytes = 0
            for i, task in enumerate(tasks):
                torch.manual_seed(1000 + i)
                net = make_net(width)
                with torch.inference_mode():
                    refs[task] = net(x)
                size_bytes = save_weights(net, task_uri(base, task))
            for pol in (policy, "naive"):
                mt = MultiTask(factory, base, tasks, tasks_per_worker=per_worker, policy=pol,
                               manager=manager)  # fmt: skip
                try:
                    row = _replay(mt, tasks, trace, x, refs)
                finally:
                    mt.close()
                rows.append(row)
                s = row["summary"]
                say(f"{pol}: hit rate {s['hit_rate']:.2f}, mean latency "
                    f"{s['latency']['mean_s'] * 1e3:.1f} ms, {row['wall_s']:.1f} s")  # fmt: skip
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    return {
        "machine": machine.describe(with_gpus=device == "cuda"),
        "tasks": n_tasks,
        "workers": workers,
        "per_worker": per_worker,
        "calls": n_calls,
        "rate": rate,
        "zipf_s": zipf_s,
        "width": width,
        "weights_bytes": size_bytes,
        "store": store,
        "device": device,
        "seed": seed,
        "start_s": start_s,
        "rows": rows,
    }


def _ms(x: float) -> str:
    return "-" if x != x else f"{x * 1e3:.2f}"  # NaN: no such calls


KIND_ROWS = (
    ("cold load", "cold_load"),
    ("cached activation", "cached_activation"),
    ("run", "run"),
    ("latency, cold calls", "latency_cold"),
    ("latency, cached calls", "latency_cached"),
    ("latency, all calls", "latency"),
)


def format_report(res: dict[str, Any]) -> str:
    m = res["machine"]
    mb = res["weights_bytes"] / 1e6
    lines = [
        f"# multi-task weights: {m.get('cpu_model', '?')}, {os.cpu_count()} cores, "
        f"device {res['device']}",
        "",
        f"{res['tasks']} tasks of {mb:.1f} MB (MLP {IN_FEATURES}-{res['width']}x{DEPTH}-"
        f"{OUT_FEATURES}) in {res['store']}://; {res['workers']} warm workers x "
        f"{res['per_worker']} tasks (started in {res['start_s']:.1f} s); {res['calls']} calls, "
        f"Zipf s={res['zipf_s']:g} task ids, Poisson arrivals at {res['rate']:g}/s, "
        f"seed {res['seed']}",
        "",
        "| policy | calls | correct | hit rate | cold loads | evictions | load s total "
        "| mean latency ms | p99 latency ms | wall s |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in res["rows"]:
        s, st = r["summary"], r["stats"]
        lines.append(
            f"| {r['policy']} | {s['calls']} | {r['correct']} | {s['hit_rate']:.3f} | "
            f"{st['cold']} | {sum(st['evictions'])} | {s['cold_load']['total_s']:.3f} | "
            f"{_ms(s['latency']['mean_s'])} | {_ms(s['latency']['p99_s'])} | {r['wall_s']:.1f} |"
        )
    lines += [
        "",
        "Per call (ms; load, activation and run measured in the worker, latency by the caller):",
        "",
        "| policy | kind | n | total s | mean | p50 | p99 |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in res["rows"]:
        for label, key in KIND_ROWS:
            d = r["summary"][key]
            if not d["n"]:
                continue
            lines.append(
                f"| {r['policy']} | {label} | {d['n']} | {d['total_s']:.3f} | "
                f"{_ms(d['mean_s'])} | {_ms(d['p50_s'])} | {_ms(d['p99_s'])} |"
            )
    cached, naive = res["rows"][0]["summary"], res["rows"][-1]["summary"]
    if cached is not naive and naive["latency"]["mean_s"] > 0:

        def cut(key: str, field: str) -> str:
            new, old = cached[key][field], naive[key][field]
            return f"{100 * (new - old) / old:+.1f}%" if old else "-"

        act = cached["cached_activation"]["p50_s"]
        load = cached["cold_load"]["p50_s"]
        lines += [
            "",
            f"{res['rows'][0]['policy']} against naive: mean latency "
            f"{cut('latency', 'mean_s')}, p99 latency {cut('latency', 'p99_s')}, load seconds "
            f"{cut('cold_load', 'total_s')}; a cached activation (p50 {_ms(act)} ms) against a "
            f"cold load (p50 {_ms(load)} ms)"
            + (f": {load / act:,.0f}x" if act > 0 and load == load else ""),
        ]
    return "\n".join(lines)


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--tasks", type=int, default=8, help="tasks K (8)")
    p.add_argument("--workers", type=int, default=2, help="warm workers (2)")
    p.add_argument("--per-worker", type=int, default=2, help="tasks each worker keeps (2)")
    p.add_argument("--calls", type=int, default=200, help="calls in the trace (200)")
    p.add_argument("--rate", type=float, default=25.0, help="arrivals per second (25)")
    p.add_argument("--zipf", type=float, default=1.0, help="Zipf exponent of task ids (1.0)")
    p.add_argument("--size-mb", type=float, default=None,
                   help="weights per task, MB (4 on a CPU, 64 on a GPU)")  # fmt: skip
    p.add_argument("--store", choices=STORES, default="file", help="weight store (file)")
    p.add_argument("--device", choices=("cpu", "cuda"), default=None,
                   help="where models run (cuda when there is a GPU)")  # fmt: skip
    p.add_argument("--policy", default="lalb+o3", help="the cached policy (lalb+o3)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", type=Path, default=None, help="write multitask.json (every call)")
    p.add_argument("--json", action="store_true", help="print the result as JSON")


def run(args: argparse.Namespace) -> int:
    res = run_multitask(
        args.tasks, args.workers, args.per_worker, args.calls, args.rate, args.zipf,
        args.size_mb, args.store, args.device or "", args.policy, args.seed,
        log=lambda msg: print(msg, flush=True),
    )  # fmt: skip
    if args.out is not None:
        args.out.mkdir(parents=True, exist_ok=True)
        path = args.out / "multitask.json"
        path.write_text(json.dumps(res, indent=1, default=json_default))
        print(f"wrote {path}")
    if args.json:
        out = {k: v for k, v in res.items() if k != "machine"}
        out["rows"] = [{k: v for k, v in r.items() if k != "calls"} for r in res["rows"]]
        print(json.dumps(out, indent=1, default=json_default))
    else:
        print(format_report(res))
    return 0
