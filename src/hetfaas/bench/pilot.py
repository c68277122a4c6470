"""``hetfaas bench pilot``: warm pilot blocks on Slurm against a Slurm job per call, one run.

On the same Slurm, side by side:

- **Slurm's batch launch**: ``sbatch`` until the job's first command runs (the floor of any
  job-per-call engine);
- **pilot, zero blocks to first result**: a new ``Executor("slurm", pilot=...)``, one no-op
  call, its result (the block's launch, its agent and warm pool starting, the call); each
  right after a batch launch, and the pilot's own part as the paired difference (Slurm's
  launch time drifts with the node's load);
- **pilot, warm**: sequential no-op calls through a warm block (p50, p99);
- **pilot, throughput**: ``map_futures`` of 20 and of 10,000 no-op calls through one block,
  until every result is in (calls/s);
- **Executor("slurm")**: a no-op call as a Slurm job of its own (p50);
- **plain Submitit**: ``executor.submit(noop)`` then ``job.result()`` (p50).

Targets (the pilot's issue): warm p50 <= 2 ms, >= 5,000 calls/s through one block, zero
blocks to first result <= Slurm's batch launch + 1.5 s.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any

from .. import machine


def noop(*_: Any) -> None:
    """The call measured (importable by name in the blocks' workers; a map's item ignored)."""
    return None


def _pct(values: list[float], q: float) -> float:
    s = sorted(values)
    return s[min(len(s) - 1, int(q * len(s)))]


def batch_launch_s(folder: Path, partition: str | None, i: int) -> float:
    """``sbatch`` to the job's first command (wall clock, one machine)."""
    mark = folder / f"launch-{i}.t"
    cmd = ["sbatch", "--parsable", "--output=/dev/null", "--cpus-per-task=1", "--mem=100M",
           f"--wrap=date +%s.%N > {mark}.tmp && mv {mark}.tmp {mark}"]  # fmt: skip
    if partition:
        cmd.insert(1, f"--partition={partition}")
    t0 = time.time()
    subprocess.run(cmd, check=True, capture_output=True, text=True, timeout=60)
    deadline = time.monotonic() + 120
    while not mark.exists():
        if time.monotonic() > deadline:
            raise TimeoutError("a batch job did not start in 120 s")
        time.sleep(0.002)
    return float(mark.read_text()) - t0


def first_result_s(folder: Path, options: dict[str, Any]) -> float:
    """A new pilot executor (no block yet) until the result of its first no-op call."""
    import hetfaas

    t0 = time.perf_counter()
    ex = hetfaas.Executor("slurm", folder=folder, **options)
    try:
        ex.submit(noop).result(timeout=300)
        return time.perf_counter() - t0
    finally:
        ex.shutdown()


def pilot_rows(args: argparse.Namespace, folder: Path) -> dict[str, Any]:
    import hetfaas

    shape = {"max_blocks": 1, "cpus": args.cpus, "memory_mb": args.memory_mb, "idle_s": 600.0}
    options: dict[str, Any] = {"pilot": shape, "partition": args.partition}
    launch, cold = [], []
    for i in range(args.cold):  # in pairs: Slurm's launch time drifts with the node's load
        launch.append(batch_launch_s(folder, args.partition, i))
        cold.append(first_result_s(folder / f"cold-{i}", options))
    ex = hetfaas.Executor("slurm", folder=folder / "warm", **options)
    try:
        ex.warmup(1)
        for _ in range(50):  # the function loaded, the clocks and caches warm
            ex.submit(noop).result(timeout=60)
        warm = []
        for _ in range(args.calls):
            t0 = time.perf_counter()
            ex.submit(noop).result(timeout=60)
            warm.append(time.perf_counter() - t0)
        rates = {}
        for n in args.throughput:
            best = 0.0
            for _ in range(args.repeat):
                t0 = time.perf_counter()
                futs = ex.map_futures(noop, range(n))
                for f in futs:
                    f.result(timeout=300)
                best = max(best, n / (time.perf_counter() - t0))
            rates[n] = best
        jobs = {b["job_id"] for b in ex.backend.blocks()}
    finally:
        ex.shutdown()
    return {"launch_s": launch, "cold_s": cold, "warm_s": warm, "rates": rates,
            "blocks": len(jobs)}  # fmt: skip


def per_job_rows(args: argparse.Namespace, folder: Path) -> dict[str, Any]:
    import hetfaas

    rows: dict[str, Any] = {}
    ex = hetfaas.Executor("slurm", folder=folder / "per-job", partition=args.partition)
    try:
        ex.submit(noop).result(timeout=300)  # first job: Submitit's folder, imports
        times = []
        for _ in range(args.jobs):
            t0 = time.perf_counter()
            ex.submit(noop).result(timeout=300)
            times.append(time.perf_counter() - t0)
        rows["hetfaas_slurm_s"] = times
    finally:
        ex.shutdown()
    import submitit

    sub = submitit.AutoExecutor(folder=folder / "submitit", cluster="slurm")
    params: dict[str, Any] = {"timeout_min": 5, "cpus_per_task": 1, "mem_gb": 0.1}
    if args.partition:
        params["slurm_partition"] = args.partition
    sub.update_parameters(**params)
    sub.submit(noop).result()
    times = []
    for _ in range(args.jobs):
        t0 = time.perf_counter()
        sub.submit(noop).result()
        times.append(time.perf_counter() - t0)
    rows["submitit_s"] = times
    return rows


def run_bench(args: argparse.Namespace) -> dict[str, Any]:
    base = Path(args.folder) if args.folder else None
    with tempfile.TemporaryDirectory(prefix="bench-pilot-", dir=base) as tmp:
        folder = Path(tmp)
        res = pilot_rows(args, folder)
        if not args.no_baselines:
            res.update(per_job_rows(args, folder))
    return res


def _ms(s: float) -> str:
    return f"{s * 1e3:.2f} ms" if s < 1 else f"{s:.2f} s"


def format_report(res: dict[str, Any]) -> str:
    launch = statistics.median(res["launch_s"])
    cold = statistics.median(res["cold_s"])
    own = statistics.median(c - x for c, x in zip(res["cold_s"], res["launch_s"], strict=True))
    warm = res["warm_s"]
    lines = ["| system | measure | value |", "|---|---|---|",
             f"| Slurm | batch launch (sbatch to first command), p50 | {_ms(launch)} |",
             f"| pilot | zero blocks to first result, p50 of {len(res['cold_s'])} | "
             f"{_ms(cold)} |",
             f"| pilot | its own part of that (minus the paired batch launch), p50 | "
             f"{_ms(own)} |",
             f"| pilot | warm no-op call, p50 / p99 of {len(warm)} | "
             f"{_ms(statistics.median(warm))} / {_ms(_pct(warm, 0.99))} |"]  # fmt: skip
    for n, rate in res["rates"].items():
        lines.append(f"| pilot | {n} no-op calls through one block | {rate:,.0f} calls/s |")
    per_job = statistics.median(res["hetfaas_slurm_s"]) if "hetfaas_slurm_s" in res else None
    if per_job is not None:
        n = len(res["hetfaas_slurm_s"])
        lines.append(f'| Executor("slurm") | no-op call as its own job, p50 of {n} | '
                     f"{_ms(per_job)} |")  # fmt: skip
    if "submitit_s" in res:
        n, p50 = len(res["submitit_s"]), statistics.median(res["submitit_s"])
        lines.append(f"| plain Submitit | submit + job.result() no-op, p50 of {n} | {_ms(p50)} |")
    top = max(res["rates"].values()) if res["rates"] else 0.0
    p50_warm = statistics.median(warm)
    verdict = [
        f"warm p50 {_ms(p50_warm)} (target <= 2 ms): {'met' if p50_warm <= 0.002 else 'missed'}",
        f"one block {top:,.0f} calls/s (target >= 5,000): {'met' if top >= 5000 else 'missed'}",
        f"zero to first result {_ms(cold)} vs batch launch {_ms(launch)} + 1.5 s: "
        f"{'met' if cold <= launch + 1.5 else 'missed'} (the pilot's own part {_ms(own)})",
    ]
    if per_job is not None:
        verdict.append(
            f"a warm pilot call is {per_job / p50_warm:,.0f}x faster than a job per call"
        )
    return "\n".join(lines) + "\n\n" + "\n".join(f"- {v}" for v in verdict)


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--calls", type=int, default=1000, help="sequential warm calls (1000)")
    p.add_argument("--throughput", default="20,10000",
                   help="comma list of map sizes through one block (20,10000)")  # fmt: skip
    p.add_argument("--repeat", type=int, default=3, help="runs of each map, best kept (3)")
    p.add_argument("--cold", type=int, default=5,
                   help="new executors to first result, each after a batch launch (5)")  # fmt: skip
    p.add_argument("--jobs", type=int, default=5, help="per-job calls of each baseline (5)")
    p.add_argument("--cpus", type=int, default=1, help="cores per block (1)")
    p.add_argument("--memory-mb", type=int, default=1000, help="memory per block (1000)")
    p.add_argument("--partition", default=None, help="Slurm partition (the default one)")
    p.add_argument("--folder", default=None, help="where job folders go (shared with nodes)")
    p.add_argument("--no-baselines", action="store_true", help="skip Slurm jobs per call")
    p.add_argument("--json", action="store_true", help="print the measurements as JSON")


def run(args: argparse.Namespace) -> int:
    if isinstance(args.throughput, str):
        args.throughput = [int(n) for n in args.throughput.split(",") if n.strip()]
    res = run_bench(args)
    if args.json:
        print(json.dumps(res, indent=2))
    else:
        info = machine.describe()
        print(f"# pilot: {info.get('cpu_model', '?')}, {os.cpu_count()} CPUs\n")
        print(format_report(res))
    return 0


__all__ = ["add_arguments", "format_report", "noop", "run", "run_bench"]
