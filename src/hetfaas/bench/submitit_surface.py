"""``hetfaas bench submitit``: the same Submitit code, run with Submitit and with
``hetfaas.submitit``, side by side in one run, on the local machine and on Slurm.

Per cluster and system: the first job's turnaround (``submit`` to ``result()``, a cold start
for both), the turnaround of sequential jobs after it (p50, p90), and the wall time of a
``map_array`` of ``--array`` jobs until every result is in.
"""

from __future__ import annotations

import argparse
import importlib
import json
import statistics
import tempfile
import time
from operator import add
from typing import Any

from .. import machine


def _turnaround(executor: Any, a: int) -> float:
    t0 = time.perf_counter()
    assert executor.submit(add, a, a).result() == 2 * a
    return time.perf_counter() - t0


def measure(
    module_name: str, cluster: str, jobs: int, array: int, partition: str
) -> dict[str, Any]:
    mod = importlib.import_module(module_name)
    with tempfile.TemporaryDirectory(prefix="bench-submitit-", dir=".") as folder:
        executor = mod.AutoExecutor(folder=folder, cluster=cluster)
        executor.update_parameters(timeout_min=5, slurm_partition=partition)
        first = _turnaround(executor, 1)
        times = [_turnaround(executor, i) for i in range(jobs)]
        t0 = time.perf_counter()
        futs = executor.map_array(add, range(array), range(array))
        assert [j.result() for j in futs] == [2 * i for i in range(array)]
        array_s = time.perf_counter() - t0
        shutdown = getattr(executor, "shutdown", None)
        if shutdown is not None:
            shutdown()
    times.sort()
    return {
        "cluster": cluster,
        "system": "Submitit" if module_name == "submitit" else "hetfaas.submitit",
        "first_s": first,
        "p50_s": statistics.median(times),
        "p90_s": times[min(len(times) - 1, int(0.9 * len(times)))],
        "array": array,
        "array_s": array_s,
    }


def _fmt(s: float) -> str:
    return f"{s * 1e3:.1f} ms" if s < 1 else f"{s:.2f} s"


def format_table(rows: list[dict[str, Any]]) -> str:
    lines = ["| cluster | system | first job | turnaround p50 | p90 | map_array of N |",
             "|---|---|---|---|---|---|"]  # fmt: skip
    for r in rows:
        lines.append(f"| {r['cluster']} | {r['system']} | {_fmt(r['first_s'])} | "
                     f"{_fmt(r['p50_s'])} | {_fmt(r['p90_s'])} | {r['array']}: "
                     f"{_fmt(r['array_s'])} |")  # fmt: skip
    by = {(r["cluster"], r["system"]): r for r in rows}
    for cluster in dict.fromkeys(r["cluster"] for r in rows):
        theirs, ours = by.get((cluster, "Submitit")), by.get((cluster, "hetfaas.submitit"))
        if theirs and ours:
            lines.append(f"\n{cluster}: Submitit / ours, turnaround p50 "
                         f"{theirs['p50_s'] / ours['p50_s']:.1f}x, map_array "
                         f"{theirs['array_s'] / ours['array_s']:.1f}x")  # fmt: skip
    return "\n".join(lines)


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--clusters", default="local,slurm", help="comma list of local, slurm")
    p.add_argument("--jobs", type=int, default=10, help="sequential jobs after the first (10)")
    p.add_argument("--array", type=int, default=20, help="jobs in the map_array (20)")
    p.add_argument("--partition", default="debug", help="Slurm partition (debug)")
    p.add_argument("--json", action="store_true", help="print the rows as JSON")


def run(args: argparse.Namespace) -> int:
    rows = []
    for cluster in [c.strip() for c in args.clusters.split(",") if c.strip()]:
        for module in ("submitit", "hetfaas.submitit"):
            rows.append(measure(module, cluster, args.jobs, args.array, args.partition))
    if args.json:
        print(json.dumps(rows, indent=2))
    else:
        info = machine.describe()
        print(f"# submitit: {info.get('cpu_model', '?')}\n")
        print(format_table(rows))
    return 0
