"""``hetfaas bench overhead --backends ...``: the same no-op call on each engine, next to the
raw engine in the same run.

For each backend named: sequential no-op latency p50/p99 through ``hetfaas.Executor``, and the
rate of ``map`` over 20 and over 1,000 calls (end to end: submit until the last result). Next to
it, the raw engine doing the same: plain Submitit (``executor.submit(f).result()``,
``map_array`` then ``result()`` on each job) for ``submitit-local`` and ``slurm``, plain Ray
(``ray.get(f.remote())``) for ``ray``, in the same Ray session with the latency samples of
the two interleaved. On Slurm, calls are also run packed (``pack=N``: all calls
of a map in one allocation on a warm pool) and unpacked (one array task per call). For
``parsl``, plain Parsl is a bare ``python_app`` no-op under a DataFlowKernel of its own, on the
same kind of HighThroughputExecutor as ours (LocalProvider, one block of one worker per core,
the same heartbeats and strategy), both warm, their latency samples interleaved as for Ray;
ours also runs its maps with one call per item (``chunksize=1``), and each measures the time
from zero blocks (``init_blocks=0``) to its first result: Parsl's strategy starting a block,
the block's worker pool starting, the call (the median of 5 setups each, 1 with ``--quick``).

Submitit's ``LocalExecutor`` starts one process per job at once, so 1,000 unpacked calls on
``submitit-local`` (ours or plain) would start 1,000 Python processes together: that size runs
packed only there.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import statistics
import tempfile
import time
from collections.abc import Callable, Iterator
from typing import Any

from .. import machine
from .overhead import _pct, noop

ENGINES = ("local", "submitit-local", "slurm", "slurm-pilot", "ray", "parsl")
# Sequential latency samples per engine (full run; --quick divides by 4, at least 3).
LATENCY_CALLS = {"local": 2000, "ray": 300, "parsl": 400, "submitit-local": 12, "slurm": 12,
                 "slurm-pilot": 1000}  # fmt: skip
PILOT = {"max_blocks": 1, "cpus": 1, "memory_mb": 1000}  # one warm one-core block
_BLOCK = 25  # ray, parsl: ours and the plain engine alternate in blocks of this many calls


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


def _plain_parsl(
    init_blocks: int, run_dir: str, slurm: bool = False, partition: str | None = None
) -> tuple[Any, Any]:
    """A DataFlowKernel of plain Parsl on the same kind of HTEX as ``Executor("parsl")``'s
    default, and a bare no-op ``python_app`` on it. ``slurm``: its block is a Slurm job of one
    core (SlurmProvider, not exclusive), as a pilot block is."""
    from parsl import python_app
    from parsl.config import Config
    from parsl.dataflow.dflow import DataFlowKernel
    from parsl.executors import HighThroughputExecutor
    from parsl.providers import LocalProvider, SlurmProvider

    from ..backends.parsl_backend import launch_commands

    pool, interchange = launch_commands()
    workers = len(os.sched_getaffinity(0))
    provider: Any = LocalProvider(init_blocks=init_blocks, min_blocks=0, max_blocks=1)
    if slurm:
        workers = 1
        provider = SlurmProvider(
            partition=partition, nodes_per_block=1, cores_per_node=1, mem_per_node=1,
            init_blocks=init_blocks, min_blocks=0, max_blocks=1, walltime="00:20:00",
            exclusive=False,
        )  # fmt: skip
    htex = HighThroughputExecutor(
        label="plain", address="127.0.0.1", max_workers_per_node=workers,
        cpu_affinity="block", heartbeat_period=2, heartbeat_threshold=10,
        provider=provider, launch_cmd=pool, interchange_launch_cmd=interchange,
    )  # fmt: skip
    config = Config(executors=[htex], run_dir=run_dir, strategy="simple", strategy_period=0.5,
                    initialize_logging=False)  # fmt: skip
    dfk = DataFlowKernel(config)
    return dfk, python_app(noop, data_flow_kernel=dfk, executors=["plain"])


def _pilot_side_by_side(
    n_lat: int, sizes: list[int], zero_reps: int, partition: str | None
) -> list[dict[str, Any]]:
    """Warm pilot blocks on Slurm next to plain Submitit on the same Slurm: latency, maps,
    and the time from zero blocks to the first result."""
    from .._executor import Executor

    params = {"partition": partition} if partition else {}
    with _folder() as folder:
        ours = _ours("slurm-pilot", n_lat, sizes, folder=folder, pilot=PILOT, **params)
        ours["system"] = "hetfaas slurm-pilot (one warm block of 1 core)"
        zero = [
            _zero_to_first(
                lambda: Executor("slurm", pilot=PILOT, folder=folder, **params),
                lambda ex: ex.submit(noop, None).result(),
                lambda ex: ex.shutdown(),
            )
            for _ in range(zero_reps)
        ]
        ours["zero_blocks_to_first_s"] = statistics.median(zero)
        ours["zero_blocks_to_first_samples_s"] = zero
        raw = {"slurm_partition": partition} if partition else {}
        plain = _plain_submitit("slurm", min(n_lat, 12), sizes, folder, **raw)
        plain["engine"] = "slurm-pilot"
        rows = [ours, plain]
        with contextlib.suppress(ImportError):  # no Parsl here: the Submitit peer only
            rows.append(_pilot_and_parsl_on_slurm(n_lat, folder, partition))
    return rows


def _pilot_and_parsl_on_slurm(n_lat: int, folder: str, partition: str | None) -> dict[str, Any]:
    """Plain Parsl HTEX with its block on the same Slurm (one core), warm, its latency
    interleaved with a warm pilot block's in blocks of calls; the Parsl row (the pilot's
    interleaved figures go on it as ``pilot_p50_ms``)."""
    from .._executor import Executor

    params = {"partition": partition} if partition else {}
    dfk, app = _plain_parsl(1, os.path.join(folder, "plain-parsl"), True, partition)
    try:
        with Executor("slurm", pilot=PILOT, folder=folder, **params) as ex:
            ex.submit(noop, None).result()
            [f.result() for f in [app(None) for _ in range(20)]]  # its block and worker up
            calls = {"pilot": lambda: ex.submit(noop, None).result(),
                     "raw": lambda: app(None).result()}  # fmt: skip
            lat: dict[str, list[float]] = {"pilot": [], "raw": []}
            n = min(n_lat, 400)
            for i, start in enumerate(range(0, n, _BLOCK)):
                order = ("pilot", "raw") if i % 2 == 0 else ("raw", "pilot")
                for who in order:
                    lat[who] += _latencies(calls[who], min(_BLOCK, n - start))
    finally:
        dfk.cleanup()
    row = _row("slurm-pilot", "plain Parsl HTEX on Slurm (SlurmProvider, 1 core)", lat["raw"], {})
    row["pilot_p50_ms"] = _pct(lat["pilot"], 0.5) * 1e3
    return row


def _zero_to_first(start: Callable[[], Any], call: Callable[[Any], Any],
                   stop: Callable[[Any], Any]) -> float:  # fmt: skip
    """Seconds from the first call on a setup with no block yet to its result."""
    handle = start()
    try:
        t0 = time.perf_counter()
        call(handle)
        return time.perf_counter() - t0
    finally:
        stop(handle)


def _parsl_side_by_side(n_lat: int, sizes: list[int], zero_reps: int) -> list[dict[str, Any]]:
    """Ours and plain Parsl, warm and interleaved; then each from zero blocks (the median of
    ``zero_reps`` setups each, alternating)."""
    from .._executor import Executor

    rows: list[dict[str, Any]] = []
    with _folder() as folder, Executor("parsl") as ex:
        ex.warmup()
        dfk, app = _plain_parsl(1, os.path.join(folder, "plain"))
        try:
            [f.result() for f in [app(None) for _ in range(20)]]  # its block and workers up
            ex.submit(noop, None).result()
            calls = {
                "ours": lambda: ex.submit(noop, None).result(),
                "raw": lambda: app(None).result(),
            }
            lat: dict[str, list[float]] = {"ours": [], "raw": []}
            for i, start in enumerate(range(0, n_lat, _BLOCK)):
                order = ("ours", "raw") if i % 2 == 0 else ("raw", "ours")
                for who in order:
                    lat[who] += _latencies(calls[who], min(_BLOCK, n_lat - start))
            phases = _phases(ex, min(n_lat, 20))
            rates: dict[str, dict[str, float | None]] = {"ours": {}, "one": {}, "raw": {}}
            for n in sizes:
                rates["ours"][str(n)] = n / _timed(lambda n=n: list(ex.map(noop, range(n))))
                rates["one"][str(n)] = n / _timed(
                    lambda n=n: list(ex.map(noop, range(n), chunksize=1))
                )
                rates["raw"][str(n)] = n / _timed(
                    lambda n=n: [f.result() for f in [app(i) for i in range(n)]]
                )
        finally:
            dfk.cleanup()
        ours = _row("parsl", "hetfaas parsl", lat["ours"], rates["ours"])
        ours["median_phases_ms"] = phases
        one = _row("parsl", "hetfaas parsl (chunksize=1)", [], rates["one"])
        raw = _row("parsl", "plain Parsl HTEX (python_app)", lat["raw"], rates["raw"])
        rows += [ours, one, raw]
    with _folder() as folder:
        zero: dict[str, list[float]] = {"ours": [], "raw": []}
        for i in range(zero_reps):  # the strategy's period makes single samples jumpy
            zero["ours"].append(_zero_to_first(
                lambda: Executor("parsl", init_blocks=0),
                lambda e: e.submit(noop, None).result(),
                lambda e: e.shutdown(),
            ))  # fmt: skip
            zero["raw"].append(_zero_to_first(
                lambda i=i: _plain_parsl(0, os.path.join(folder, f"zero{i}")),
                lambda pair: pair[1](None).result(),
                lambda pair: pair[0].cleanup(),
            ))  # fmt: skip
    for row, who in ((ours, "ours"), (raw, "raw")):
        row["zero_blocks_to_first_s"] = statistics.median(zero[who])
        row["zero_blocks_to_first_samples_s"] = zero[who]
    return rows


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
        elif engine == "parsl":
            rows += _parsl_side_by_side(n_lat, sizes, 1 if quick else 5)
        elif engine == "slurm-pilot":
            rows += _pilot_side_by_side(n_lat, sizes, 1 if quick else 3, partition)
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
                    if "chunksize=1" in r["system"]:
                        tag = "one call per item"
                    out[f"{engine} {n} calls/s {tag}/raw"] = rate / base
        for peer in group:  # a peer measured interleaved with ours, in the same run
            if peer.get("pilot_p50_ms") and peer["p50_ms"]:
                out[f"{engine} p50 pilot/{peer['system']}"] = peer["pilot_p50_ms"] / peer["p50_ms"]
        if ours.get("zero_blocks_to_first_s") and raw.get("zero_blocks_to_first_s"):
            out[f"{engine} zero blocks to first result ours/raw"] = (
                ours["zero_blocks_to_first_s"] / raw["zero_blocks_to_first_s"]
            )
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
    for r in res["rows"]:
        if r.get("zero_blocks_to_first_s") is not None:
            lines.append(f"- {r['system']}: zero blocks to first result "
                         f"{r['zero_blocks_to_first_s']:.2f} s (median)")  # fmt: skip
    lines += [f"- {k}: {v:.3g}" for k, v in res["ratios"].items()]
    return "\n".join(lines)
