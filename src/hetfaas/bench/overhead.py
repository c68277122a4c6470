"""``hetfaas bench overhead``: what one call costs, side by side in one run.

Systems: a raw ``multiprocessing`` Pipe round trip (the floor for a process boundary),
``concurrent.futures.ProcessPoolExecutor`` and the hetfaas local backend. For each: warm no-op
latency p50/p99 (sequential), individual-submit throughput and ``map`` throughput (1M items;
ProcessPoolExecutor at the best of three chunksizes, ours with its automatic chunks). Then the
time to move a 100 MB tensor argument into a worker, next to one in-process ``copy_`` of it
into an existing buffer (the physical floor), and from a tensor already in shared memory.
"""

from __future__ import annotations

import argparse
import concurrent.futures as cf
import json
import multiprocessing as mp
import os
import statistics
import sys
import time
from typing import Any

from .. import machine


def noop(x: Any = None) -> Any:
    return x


def touch(t: Any) -> int:
    """Receives a tensor and returns its size: the tensor's transfer is the cost."""
    return int(t.numel())


def _pct(values: list[float], q: float) -> float:
    values = sorted(values)
    return values[min(len(values) - 1, int(q * len(values)))]


def _echo(conn: Any) -> None:
    while True:
        try:
            msg = conn.recv()
        except EOFError:
            return
        conn.send(msg)


def bench_pipe(n: int) -> dict[str, Any]:
    ctx = mp.get_context("fork")
    a, b = ctx.Pipe()
    proc = ctx.Process(target=_echo, args=(b,), daemon=True)
    proc.start()
    for _ in range(200):
        a.send(None)
        a.recv()
    lat = []
    for _ in range(n):
        t0 = time.perf_counter_ns()
        a.send(None)
        a.recv()
        lat.append((time.perf_counter_ns() - t0) / 1e3)
    a.close()
    proc.join(timeout=5)
    p50 = _pct(lat, 0.5)
    return {"name": "raw mp.Pipe round trip", "p50_us": p50, "p99_us": _pct(lat, 0.99),
            "calls_per_s": 1e6 / statistics.mean(lat), "map_calls_per_s": None}  # fmt: skip


def _latency(submit: Any, n: int, keep: list[Any] | None = None) -> list[float]:
    lat = []
    for _ in range(n):
        t0 = time.perf_counter_ns()
        fut = submit(noop, None)
        fut.result()
        lat.append((time.perf_counter_ns() - t0) / 1e3)
        if keep is not None:
            keep.append(fut)
    return lat


def _throughput(submit: Any, n: int) -> float:
    t0 = time.perf_counter()
    futures = [submit(noop, i) for i in range(n)]
    for f in futures:
        f.result()
    return n / (time.perf_counter() - t0)


def bench_ppe(n_lat: int, n_tp: int, n_map: int, workers: int) -> dict[str, Any]:
    with cf.ProcessPoolExecutor(workers, mp_context=mp.get_context("fork")) as pool:
        list(pool.map(noop, range(200)))
        lat = _latency(pool.submit, n_lat)
        tp = _throughput(pool.submit, n_tp)
        mp_rate = 0.0
        for chunk in (100, 1000, max(1, n_map // (4 * workers))):  # PPE at its best chunksize
            t0 = time.perf_counter()
            list(pool.map(noop, range(n_map), chunksize=chunk))
            mp_rate = max(mp_rate, n_map / (time.perf_counter() - t0))
    return {"name": f"ProcessPoolExecutor({workers})", "p50_us": _pct(lat, 0.5),
            "p99_us": _pct(lat, 0.99), "calls_per_s": tp, "map_calls_per_s": mp_rate}  # fmt: skip


def bench_hetfaas(
    n_lat: int, n_tp: int, n_map: int, backend: str = "local", **options: Any
) -> tuple[dict[str, Any], Any]:
    """Latency, submit and map throughput of one executor; returns the row and the executor."""
    from .._executor import Executor

    ex = Executor(backend, **options)
    ex.warmup()
    list(ex.map(noop, range(500)))
    futs: list[Any] = []
    lat = _latency(ex.submit, n_lat, futs)
    phases = {
        k: statistics.median(getattr(f.timings, k) for f in futs)
        for k in ("queue_us", "transfer_in_us", "compute_us", "transfer_out_us", "total_us")
    }
    tp = _throughput(ex.submit, n_tp)
    map_rate = None
    if n_map:
        t0 = time.perf_counter()
        for _ in ex.map(noop, range(n_map)):
            pass
        map_rate = n_map / (time.perf_counter() - t0)
    label = ", ".join(f"{k}={v}" for k, v in options.items())
    row = {
        "name": f"hetfaas {backend}" + (f" ({label})" if label else ""),
        "p50_us": _pct(lat, 0.5), "p99_us": _pct(lat, 0.99),
        "calls_per_s": tp, "map_calls_per_s": map_rate, "median_phases_us": phases,
    }  # fmt: skip
    return row, ex


def bench_tensor(ex: Any, mb: int, reps: int) -> dict[str, float]:
    import torch

    import hetfaas

    n = mb * 1_000_000 // 4
    t = torch.randn(n)
    dst = torch.empty_like(t)
    dst.copy_(t)  # touch the destination once: the floor is a copy into existing pages
    copies = []
    for _ in range(reps):
        t0 = time.perf_counter_ns()
        dst.copy_(t)
        copies.append((time.perf_counter_ns() - t0) / 1e6)
    moves = []
    for i in range(reps + 2):
        f = ex.submit(touch, t)
        f.result()
        if i >= 2:  # the first calls create the shared-memory segments (fresh pages)
            moves.append(f.timings.transfer_in_us / 1e3)
    shared = hetfaas.share(t)
    zero = []
    for i in range(reps + 2):
        f = ex.submit(touch, shared)
        f.result()
        if i >= 2:  # each worker maps the segment once
            zero.append(f.timings.transfer_in_us / 1e3)
    return {
        "copy_100mb_ms": statistics.median(copies),
        "tensor_100mb_ms": statistics.median(moves),
        "tensor_100mb_shared_ms": statistics.median(zero),
    }


def run_overhead(quick: bool = False, backend: str = "local") -> dict[str, Any]:
    scale = 0.1 if quick else 1.0
    n_lat, n_tp, n_map = int(3000 * scale), int(20000 * scale), int(1_000_000 * scale)
    cores = len(os.sched_getaffinity(0))
    rows = [bench_pipe(n_lat), bench_ppe(n_lat, n_tp, n_map, int(cores))]
    if backend == "local":  # the same pool without spinning, to show what the spin buys
        plain, plain_ex = bench_hetfaas(n_lat, n_tp, 0, backend, spin_us=0)
        plain_ex.shutdown()
        rows.append(plain)
    ours, ex = bench_hetfaas(n_lat, n_tp, n_map, backend)
    rows.append(ours)
    try:
        tensor = bench_tensor(ex, 100, 3 if quick else 7)
    finally:
        ex.shutdown()
    pipe, ppe = rows[0], rows[1]
    out: dict[str, Any] = {
        "machine": machine.describe(),
        "quick": quick,
        "rows": rows,
        **tensor,
        "ratios": {
            "p50_vs_pipe": ours["p50_us"] / pipe["p50_us"],
            "ppe_p50_vs_ours": ppe["p50_us"] / ours["p50_us"],
            "tensor_vs_copy": tensor["tensor_100mb_ms"] / tensor["copy_100mb_ms"],
        },
    }
    out["targets"] = {
        "p50 <= 2x raw pipe": out["ratios"]["p50_vs_pipe"] <= 2.0,
        ">= 3x faster than ProcessPoolExecutor": out["ratios"]["ppe_p50_vs_ours"] >= 3.0,
        ">= 10,000 individual submits/s": ours["calls_per_s"] >= 10_000,
        ">= 1,000,000 items/s via map": ours["map_calls_per_s"] >= 1_000_000,
        "map >= ProcessPoolExecutor's best chunked map": (
            ours["map_calls_per_s"] >= ppe["map_calls_per_s"]
        ),
        "100 MB tensor <= 1.5x one copy": out["ratios"]["tensor_vs_copy"] <= 1.5,
        "100 MB shared tensor < 1 ms": tensor["tensor_100mb_shared_ms"] < 1.0,
    }
    return out


def format_table(res: dict[str, Any]) -> str:
    lines = [
        "| system | p50 (µs) | p99 (µs) | submits/s | map calls/s |",
        "|---|---|---|---|---|",
    ]
    for r in res["rows"]:
        m = r.get("map_calls_per_s")
        lines.append(
            f"| {r['name']} | {r['p50_us']:.1f} | {r['p99_us']:.1f} | {r['calls_per_s']:,.0f} | "
            f"{'—' if m is None else f'{m:,.0f}'} |"
        )
    lines += [
        "",
        f"100 MB tensor argument into a worker: {res['tensor_100mb_ms']:.2f} ms; one in-process "
        f"copy_ into an existing buffer: {res['copy_100mb_ms']:.2f} ms "
        f"(ratio {res['ratios']['tensor_vs_copy']:.2f}); from shared memory: "
        f"{res['tensor_100mb_shared_ms']:.3f} ms.",
        f"p50 vs raw pipe: {res['ratios']['p50_vs_pipe']:.2f}x; ProcessPoolExecutor p50 / ours: "
        f"{res['ratios']['ppe_p50_vs_ours']:.2f}x.",
        "",
        "Targets: "
        + "; ".join(f"{k}: {'met' if v else 'MISSED'}" for k, v in res["targets"].items()),
    ]
    return "\n".join(lines)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--quick", action="store_true", help="10x fewer calls (seconds)")
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    parser.add_argument("--backend", default="local", help="hetfaas backend (default local)")
    parser.add_argument(
        "--backends",
        default=None,
        help="compare engines instead, each next to the raw engine in the same run: a comma "
        "list of local, submitit-local, slurm, slurm-pilot, ray, parsl",
    )
    parser.add_argument(
        "--calls", default="20,1000", help="map sizes for --backends (default 20,1000)"
    )
    parser.add_argument("--partition", default=None, help="Slurm partition for --backends")


def run(args: argparse.Namespace) -> int:
    if args.backends:
        from .engines import format_engines, run_engines

        backends = [b.strip() for b in args.backends.split(",") if b.strip()]
        sizes = [int(n) for n in args.calls.split(",") if n.strip()]
        log = (lambda msg: print(msg, file=sys.stderr)) if args.json else print
        res = run_engines(backends, sizes, args.quick, args.partition, log)
        text = format_engines(res)
    else:
        res = run_overhead(quick=args.quick, backend=args.backend)
        text = format_table(res)
    if args.json:
        json.dump(res, sys.stdout, indent=1, default=str)
        sys.stdout.write("\n")
    else:
        print(text)
    return 0
