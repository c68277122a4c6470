"""``hetfaas bench overhead --backends ...``: the same no-op call on each engine, next to the
raw engine in the same run.

For each backend named: sequential no-op latency p50/p99 through ``hetfaas.Executor``, and the
rate of ``map`` over 20 and over 1,000 calls (end to end: submit until the last result). Next to
it, the raw engine doing the same: plain Submitit (``executor.submit(f).result()``,
``map_array`` then ``result()`` on each job) for ``submitit-local`` and ``slurm``, plain Ray
(``ray.get(f.remote())``) for ``ray``, in the same Ray session with the latency samples of
the two interleaved. On Slurm, calls are also run packed (``pack=N``: all calls
of a map in one allocation on a warm pool) and unpacked (one array task per call).

Submitit's ``LocalExecutor`` starts one process per job at once, so 1,000 unpacked calls on
``submitit-local`` (ours or plain) would start 1,000 Python processes together: that size runs
packed only there.
"""

from __future__ import annotations

import contextlib
import shutil
import statistics
import tempfile
import time
from collections.abc import Callable, Iterator
from typing import Any

from .. import machine
from .overhead import _pct, noop

ENGINES = ("local", "submitit-local", "slurm", "ray")
# Sequential latency samples per engine (full run; --quick divides by 4, at least 3).
LATENCY_CALLS = {"local": 2000, "ray": 300, "submitit-local": 12, "slurm": 12}
_BLOCK = 25  # ray: ours and plain Ray alternate in blocks of this many sequential calls


def _timed(fn: Callable[[], Any]) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def _latencies(call: Callable[[], Any], n: int) -> list[float]:
    out = []
    for _ in range(n):
        t0 = time.perf_counter()
        call()
        out.append(time.perf_counter() - t0)
    return out


def _row(engine: str, system: str, lat: list[float], rates: dict[str, float | None]) -> dict:
    return {
        "engine": engine,
        "system": system,
        "p50_ms": _pct(lat, 0.5) * 1e3 if lat else None,
        "p99_ms": _pct(lat, 0.99) * 1e3 if lat else None,
        "rates": rates,
    }


@contextlib.contextmanager
def _folder() -> Iterator[str]:
    path = tempfile.mkdtemp(prefix="hetfaas-bench-")
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


def _ours(engine: str, n_lat: int, sizes: list[int], **options: Any) -> dict[str, Any]:
    """Our executor on ``engine``: latency, then ``map`` over each size."""
    from .._executor import Executor

    with Executor(engine, **options) as ex:
        ex.warmup()
        ex.submit(noop, None).result()
        lat = _latencies(lambda: ex.submit(noop, None).result(), n_lat)
        phases = _phases(ex, min(n_lat, 20))
        rates: dict[str, float | None] = {}
        for n in sizes:
            rates[str(n)] = n / _timed(lambda n=n: list(ex.map(noop, range(n))))
    label = ", ".join(f"{k}={v}" for k, v in options.items() if k not in ("folder",))
    row = _row(engine, f"hetfaas {engine}" + (f" ({label})" if label else ""), lat, rates)
    row["median_phases_ms"] = phases
    return row


def _phases(ex: Any, n: int) -> dict[str, float]:
    futs = [ex.submit(noop, None) for _ in range(n)]
    return {
        k.replace("_us", "_ms"): statistics.median(getattr(f.timings, k) for f in futs) / 1e3
        for k in ("queue_us", "cold_start_us", "transfer_in_us", "compute_us", "total_us")
        if all(f.result() is None for f in futs)
    }


def _ours_packed(engine: str, sizes: list[int], **options: Any) -> dict[str, Any]:
    from .._executor import Executor

    rates: dict[str, float | None] = {}
    for n in sizes:
        with Executor(engine, pack=n, **options) as ex:
            rates[str(n)] = n / _timed(lambda n=n, ex=ex: list(ex.map(noop, range(n))))
    return _row(engine, f"hetfaas {engine} (pack=N: one allocation per map)", [], rates)


def _plain_submitit(engine: str, n_lat: int, sizes: list[int], folder: str, **params: Any) -> dict:
    """Plain Submitit, as its README shows: submit, then ``job.result()``."""
    import submitit

    if engine == "slurm":
        ex = submitit.AutoExecutor(folder=folder, cluster="slurm")
        ex.update_parameters(timeout_min=5, cpus_per_task=1, **params)
    else:
        ex = submitit.LocalExecutor(folder=folder)
        ex.update_parameters(timeout_min=5)
    ex.submit(noop, None).result()
    lat = _latencies(lambda: ex.submit(noop, None).result(), n_lat)
    rates: dict[str, float | None] = {}
    for n in sizes:
        if engine == "submitit-local" and n > 100:
            rates[str(n)] = None  # one process per job, all at once: see the module docstring

            continue

        def array(n: int = n) -> None:
            jobs = ex.map_array(noop, range(n))
            for j in jobs:
                j.result()

        rates[str(n)] = n / _timed(array)
    return _row(engine, "plain Submitit (job.result())", lat, rates)


def _ray_side_by_side(n_lat: int, sizes: list[int]) -> list[dict[str, Any]]:
    """Ours and plain Ray (``ray.get(f.remote())``) in one Ray session, their latency samples
    taken in alternating blocks of 25 calls, so that both see the same machine: on a shared VM
    the load drifts by more than the difference within seconds."""
    import ray

    from .._executor import Executor

    with Executor("ray") as ex:  # starts Ray (unless it runs) and stops what it started
        ex.warmup()
        task = ray.remote(noop)
        ray.get([task.remote(None) for _ in range(50)])
        ex.submit(noop, None).result()
        calls = {
            "ours": lambda: ex.submit(noop, None).result(),
            "raw": lambda: ray.get(task.remote(None)),
        }
        lat: dict[str, list[float]] = {"ours": [], "raw": []}
        for i, start in enumerate(range(0, n_lat, _BLOCK)):
            order = ("ours", "raw") if i % 2 == 0 else ("raw", "ours")
            for who in order:
                lat[who] += _latencies(calls[who], min(_BLOCK, n_lat - start))
        phases = _phases(ex, min(n_lat, 20))
        rates: dict[str, dict[str, float | None]] = {"ours": {}, "raw": {}}
        for n in sizes:
            rates["ours"][str(n)] = n / _timed(lambda n=n: list(ex.map(noop, range(n))))
            rates["raw"][str(n)] = n / _timed(
                lambda n=n: ray.get([task.remote(i) for i in range(n)])
            )
    ours = _row("ray", "hetfaas ray", lat["ours"], rates["ours"])
    ours["median_phases_ms"] = phases
    return [ours, _row("ray", "plain Ray (ray.get(f.remote()))", lat["raw"], rates["raw"])]


def run_engines(
    backends: list[str],
    sizes: list[int],
    quick: bool = False,
    partition: str | None = None,
    log: Callable[[str], None] = print,
) -> dict[str, Any]:
    """Every engine named, ours and raw, in one run."""
    from ..exceptions import ConfigurationError

    unknown = [b for b in backends if b not in ENGINES]
    if unknown:
        raise ConfigurationError(f"unknown engine(s) {unknown}; this bench knows {list(ENGINES)}")
    rows: list[dict[str, Any]] = []
    for engine in backends:
        n_lat = LATENCY_CALLS[engine] if not quick else max(3, LATENCY_CALLS[engine] // 4)
        log(f"{engine}: {n_lat} sequential calls, then map over {sizes} calls")
        if engine == "local":
            rows.append(_ours("local", n_lat, sizes))
        elif engine == "ray":
            rows += _ray_side_by_side(n_lat, sizes)
        else:
            params = {"partition": partition} if partition and engine == "slurm" else {}
            with _folder() as folder:
                unpacked = [n for n in sizes if engine == "slurm" or n <= 100]
                rows.append(_ours(engine, n_lat, unpacked, folder=folder, **params))
                rows.append(_ours_packed(engine, sizes, folder=folder, **params))
                raw = {"slurm_partition": partition} if partition and engine == "slurm" else {}
                rows.append(_plain_submitit(engine, n_lat, sizes, folder, **raw))
    return {"machine": machine.describe(), "quick": quick, "sizes": sizes, "rows": rows,
            "ratios": _ratios(rows)}  # fmt: skip


def _ratios(rows: list[dict[str, Any]]) -> dict[str, float]:
    """Ours against the raw engine, per engine: p50 latency and rates."""
    out: dict[str, float] = {}
    by_engine: dict[str, list[dict[str, Any]]] = {}
    for r in rows:
        by_engine.setdefault(r["engine"], []).append(r)
    for engine, group in by_engine.items():
        ours = group[0]
        raw = next((r for r in group if not r["system"].startswith("hetfaas")), None)
        if raw is None or ours["p50_ms"] is None or not raw["p50_ms"]:
            continue
        out[f"{engine} p50 ours/raw"] = ours["p50_ms"] / raw["p50_ms"]
        for r in group:
            for n, rate in r["rates"].items():
                base = raw["rates"].get(n)
                if rate and base and r is not raw:
                    tag = "packed" if "pack=" in r["system"] else "ours"
                    out[f"{engine} {n} calls/s {tag}/raw"] = rate / base
    return out


def format_engines(res: dict[str, Any]) -> str:
    sizes = res["sizes"]
    head = "| engine | system | p50 | p99 | " + " | ".join(f"{n} calls: calls/s" for n in sizes)
    lines = [head + " |", "|---" * (4 + len(sizes)) + "|"]

    def ms(v: float | None) -> str:
        if v is None:
            return "—"
        return f"{v * 1e3:.0f} µs" if v < 1 else f"{v:.1f} ms" if v < 1000 else f"{v / 1e3:.2f} s"

    for r in res["rows"]:
        rates = [r["rates"].get(str(n)) for n in sizes]
        cells = " | ".join("—" if v is None else f"{v:,.1f}" for v in rates)
        lines.append(
            f"| {r['engine']} | {r['system']} | {ms(r['p50_ms'])} | {ms(r['p99_ms'])} | {cells} |"
        )
    lines.append("")
    lines += [f"- {k}: {v:.2f}" for k, v in res["ratios"].items()]
    return "\n".join(lines)
