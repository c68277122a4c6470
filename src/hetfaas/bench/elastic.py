"""``hetfaas bench elastic``: an autoscaled pool against a fixed one on a bursty trace.

The trace is phases of Poisson arrivals (default: idle 3 s, a burst of 4 s, idle 6 s, a burst
of 3 s, idle 4 s), the same arrivals (one seed) for both pools. Each call spins a core for
``--work-ms``. Two pools run it, one after the other, with the same policy windows:

- *fixed*: ``min_workers = max_workers = N``, warmed up before the trace;
- *elastic*: ``min_workers = 0, max_workers = N``; it starts with no worker.

Reported side by side: latency p50/p99/max (submit to result, ``future.timings.total_us``),
the calls that waited for a worker to start (``cold_start_us`` over 1 ms) and the workers
started, and the worker-seconds used. Worker-seconds are measured by a sampler that counts the
pool's live worker processes every 10 ms over the trace (starting workers count; the fork
server, one idle process that forks them, with this module imported, does not). The targets:
elastic worker-seconds at most 50% of fixed, elastic p99 at most 1.5x fixed.

The policy's windows are scaled to the trace: its phases last seconds, so the stable window
is 1 s (the panic window a tenth of it) and scale to zero comes 0.5 s after the last call
(Knative's defaults, 60 s and 30 s, suit phases of minutes; ``--stable-window`` and
``--scale-to-zero`` set them). Longer windows hold workers longer after each burst.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import random
import statistics
import sys
import threading
import time
from pathlib import Path
from typing import Any

from .. import machine

DEFAULT_TRACE = "3:0,4:R,6:0,3:R,4:0"


def spin(ms: float) -> float:
    """Keep one core busy for ``ms`` milliseconds."""
    end = time.perf_counter() + ms / 1e3
    x = 0.0
    while time.perf_counter() < end:
        x += 1.0
    return x


def parse_trace(text: str, rate: float, scale: float = 1.0) -> list[tuple[float, float]]:
    """``"3:0,4:R,6:0"`` -> ``[(3.0, 0.0), (4.0, rate), (6.0, 0.0)]`` (durations times
    ``scale``); ``R`` is the burst rate, a number is a rate in calls/s."""
    phases = []
    for part in text.split(","):
        try:
            dur, _, r = part.strip().partition(":")
            value = rate if r.strip().upper() == "R" else float(r)
            phases.append((float(dur) * scale, value))
        except ValueError:
            raise ValueError(f"bad trace phase {part!r}: want DURATION_S:RATE (or :R)") from None
        if phases[-1][0] <= 0 or phases[-1][1] < 0:
            raise ValueError(f"bad trace phase {part!r}: duration > 0 and rate >= 0 wanted")
    return phases


def arrivals(phases: list[tuple[float, float]], seed: int) -> list[float]:
    """Poisson arrival times (s from the trace's start) over the phases."""
    rng, out, start = random.Random(seed), [], 0.0
    for dur, rate in phases:
        t = start
        while rate > 0:
            t += rng.expovariate(rate)
            if t >= start + dur:
                break
            out.append(t)
        start += dur
    return out


class _Sampler(threading.Thread):
    """Counts the pool's live workers every ``period_s``; integrates worker-seconds."""

    def __init__(self, backend: Any, period_s: float = 0.01) -> None:
        super().__init__(daemon=True)
        self.backend, self.period_s = backend, period_s
        self.samples: list[tuple[float, int]] = []
        self.pids: set[int] = set()
        self.stop = threading.Event()

    def run(self) -> None:
        while not self.stop.is_set():
            pids = self.backend.worker_pids()
            self.pids.update(pids)
            self.samples.append((time.perf_counter(), len(pids)))
            self.stop.wait(self.period_s)

    def worker_seconds(self, t0: float, t1: float) -> float:
        total, prev = 0.0, None
        for t, n in self.samples:
            if prev is not None and t0 <= prev[0] < t1:
                total += prev[1] * (min(t, t1) - prev[0])
            prev = (t, n)
        return total


def run_pool(
    kind: str,
    times: list[float],
    span_s: float,
    work_ms: float,
    workers: int,
    policy: dict[str, float],
) -> dict[str, Any]:
    """Replay ``times`` (a trace ``span_s`` long) on one pool; its latencies, cold starts and
    worker-seconds over the trace."""
    from .. import Executor

    low = workers if kind == "fixed" else 0
    # the function's module is in the fork server, as a deployed function's code is in a
    # warm image: a cold start forks a worker, it does not import the code
    preload = [m for m in ("numpy", "torch") if m in sys.modules] + [__name__]
    with Executor(
        "local", min_workers=low, max_workers=workers, autoscale=policy, preload=preload
    ) as ex:
        backend = ex.backend
        if low:
            ex.warmup(workers)
        ex.submit(spin, 0.0).result()  # the function shipped once, as a deployed one is
        if not low:  # let the scaler see the pool idle again, as the trace's start is
            time.sleep(policy["scale_to_zero_s"] + policy["stable_window_s"] + 0.5)
        sampler = _Sampler(backend)
        sampler.start()
        futures = []
        t0 = time.perf_counter()
        for at in times:
            delay = t0 + at - time.perf_counter()
            if delay > 0:
                time.sleep(delay)
            futures.append(ex.submit(spin, work_ms))
        for f in futures:
            f.result()
        left = t0 + span_s - time.perf_counter()
        if left > 0:  # the trace's closing idle phase counts too
            time.sleep(left)
        t1 = time.perf_counter()
        sampler.stop.set()
        sampler.join()
    lat = sorted(f.timings.total_us / 1e3 for f in futures)
    cold = [f.timings.cold_start_us / 1e3 for f in futures if f.timings.cold_start_us > 1000]
    started = sampler.pids | {f.timings.pid for f in futures}
    q = statistics.quantiles(lat, n=100, method="inclusive") if len(lat) > 1 else lat * 99
    return {
        "pool": kind,
        "calls": len(futures),
        "p50_ms": q[49],
        "p99_ms": q[98],
        "max_ms": lat[-1] if lat else 0.0,
        "cold_calls": len(cold),
        "cold_mean_ms": statistics.fmean(cold) if cold else 0.0,
        "workers_started": len(started),
        "worker_s": sampler.worker_seconds(t0, t1),
        "span_s": t1 - t0,
        "timeline": [(t - t0, n) for t, n in sampler.samples if t0 <= t <= t1],
    }


def run_elastic(
    trace: str = DEFAULT_TRACE,
    rate: float = 200.0,
    work_ms: float = 5.0,
    workers: int | None = None,
    seed: int = 0,
    scale: float = 1.0,
    stable_window_s: float = 1.0,
    scale_to_zero_s: float = 0.5,
) -> dict[str, Any]:
    phases = parse_trace(trace, rate, scale)
    span = sum(d for d, _ in phases)
    times = arrivals(phases, seed)
    n = workers or len(os.sched_getaffinity(0))
    policy = {
        "stable_window_s": stable_window_s,
        "panic_window_s": stable_window_s / 10,
        "scale_to_zero_s": scale_to_zero_s,
        "tick_s": min(0.05, stable_window_s / 20),
    }
    rows = [run_pool(kind, times, span, work_ms, n, policy) for kind in ("fixed", "elastic")]
    fixed, elastic = rows
    return {
        "machine": machine.describe(),
        "trace": phases,
        "work_ms": work_ms,
        "workers": n,
        "policy": policy,
        "rows": rows,
        "worker_s_ratio": elastic["worker_s"] / fixed["worker_s"] if fixed["worker_s"] else 0.0,
        "p99_ratio": elastic["p99_ms"] / fixed["p99_ms"] if fixed["p99_ms"] else 0.0,
    }


def format_report(res: dict[str, Any]) -> str:
    m = res["machine"]
    phases = ", ".join(f"{d:g} s @ {r:g}/s" for d, r in res["trace"])
    lines = [
        f"# elastic vs fixed pool: {m.get('cpu_model', '?')}, {os.cpu_count()} cores",
        "",
        f"trace: {phases}; each call spins {res['work_ms']:g} ms; max_workers={res['workers']}; "
        f"policy: {res['policy']}",
        "",
        "| pool | calls | p50 ms | p99 ms | max ms | calls with a cold start | mean cold ms "
        "| workers started | worker-s |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in res["rows"]:
        lines.append(
            f"| {r['pool']} | {r['calls']} | {r['p50_ms']:.2f} | {r['p99_ms']:.2f} | "
            f"{r['max_ms']:.1f} | {r['cold_calls']} | {r['cold_mean_ms']:.1f} | "
            f"{r['workers_started']} | {r['worker_s']:.1f} |"
        )
    ws, p99 = res["worker_s_ratio"], res["p99_ratio"]
    lines += [
        "",
        f"elastic/fixed worker-seconds: {ws:.2f} (target <= 0.50: {_verdict(ws <= 0.5)})",
        f"elastic/fixed p99: {p99:.2f}x (target <= 1.5x: {_verdict(p99 <= 1.5)})",
    ]
    return "\n".join(lines)


def _verdict(ok: bool) -> str:
    return "met" if ok else "MISSED"


def write_out(res: dict[str, Any], out: Path) -> list[Path]:
    """The workers-over-time CSV of both pools, and a plot when matplotlib is there."""
    out.mkdir(parents=True, exist_ok=True)
    paths = [out / "elastic_workers.csv"]
    with paths[0].open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["pool", "t_s", "workers"])
        for r in res["rows"]:
            w.writerows((r["pool"], f"{t:.3f}", n) for t, n in r["timeline"])
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return paths
    fig, ax = plt.subplots(figsize=(8, 3))
    for r in res["rows"]:
        ts = [t for t, _ in r["timeline"]]
        ax.step(ts, [n for _, n in r["timeline"]], where="post", label=r["pool"])
    start = 0.0
    for dur, rate in res["trace"]:
        if rate:
            ax.axvspan(start, start + dur, color="0.9", zorder=0)
        start += dur
    ax.set_xlabel("s (grey: bursts)")
    ax.set_ylabel("workers")
    ax.legend()
    fig.tight_layout()
    paths.append(out / "elastic_workers.png")
    fig.savefig(paths[-1], dpi=100)
    plt.close(fig)
    return paths


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--trace", default=DEFAULT_TRACE,
                   help=f"phases DURATION_S:RATE, R = --rate ({DEFAULT_TRACE})")  # fmt: skip
    p.add_argument("--rate", type=float, default=200.0, help="burst arrivals per s (200)")
    p.add_argument("--work-ms", type=float, default=5.0, help="each call spins this long (5)")
    p.add_argument("--workers", type=int, default=None, help="max_workers (default: cores)")
    p.add_argument("--stable-window", type=float, default=1.0, help="stable window, s (1)")
    p.add_argument("--scale-to-zero", type=float, default=0.5,
                   help="scale to zero this long after the last call, s (0.5)")  # fmt: skip
    p.add_argument("--quick", action="store_true", help="the trace at half length")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", type=Path, default=None, help="write the timeline CSV and plot here")
    p.add_argument("--json", action="store_true", help="print the result as JSON")


def run(args: argparse.Namespace) -> int:
    res = run_elastic(
        args.trace, args.rate, args.work_ms, args.workers, args.seed,
        0.5 if args.quick else 1.0, args.stable_window, args.scale_to_zero,
    )  # fmt: skip
    if args.out is not None:
        for path in write_out(res, args.out):
            print(f"wrote {path}")
    if args.json:
        print(json.dumps({k: v for k, v in res.items() if k != "machine"}, indent=2))
    else:
        print(format_report(res))
    return 0
