"""Turn the raw results of ``hetfaas bench bmm`` into ``results.json``, ``report.md`` and plots.

Everything in the report is computed from the results dict: the tables, the overhead
breakdown per phase of :class:`~hetfaas.Timings`, the throughput against the in-process
``torch.bmm`` rate, and a discussion (:mod:`hetfaas.bench.discussion`) whose every sentence is
built from a measured value.
"""

from __future__ import annotations

import json
import math
import statistics
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

PHASES = ("queue_us", "cold_start_us", "transfer_in_us", "compute_us", "transfer_out_us")
PHASE_NAMES = {
    "queue_us": "queue",
    "cold_start_us": "cold start",
    "transfer_in_us": "transfer in",
    "compute_us": "compute",
    "transfer_out_us": "transfer out",
}
SERVERLESS = ("single_cpu", "multi_cpu", "gpu", "multi_gpu")
NO_GPU = "no GPU"


# --------------------------------------------------------------------------------------------
# numbers


def json_default(obj: Any) -> Any:
    """Make tuples, paths, numpy scalars and dataclasses JSON-friendly."""
    if isinstance(obj, (set, tuple)):
        return list(obj)
    if isinstance(obj, Path):
        return str(obj)
    if hasattr(obj, "as_dict"):
        return obj.as_dict()
    if hasattr(obj, "item"):
        return obj.item()
    return str(obj)


def stats(values: Iterable[float]) -> dict[str, float]:
    """n, mean, median, min, max, standard deviation and coefficient of variation."""
    xs = [float(v) for v in values if v is not None and math.isfinite(float(v))]
    if not xs:
        return {
            "n": 0,
            "mean": math.nan,
            "median": math.nan,
            "min": math.nan,
            "max": math.nan,
            "std": math.nan,
            "cv": math.nan,
        }
    mean = statistics.fmean(xs)
    std = statistics.stdev(xs) if len(xs) > 1 else 0.0
    return {
        "n": len(xs),
        "mean": mean,
        "median": statistics.median(xs),
        "min": min(xs),
        "max": max(xs),
        "std": std,
        "cv": std / mean if mean else math.nan,
    }


def max_concurrency(calls: Sequence[dict[str, Any]]) -> int:
    """The most calls that were running at the same instant (started_ns..finished_ns)."""
    events: list[tuple[int, int]] = []
    for c in calls:
        s, f = int(c.get("started_ns") or 0), int(c.get("finished_ns") or 0)
        if s and f and f >= s:
            events.append((s, 1))
            events.append((f, -1))
    best = cur = 0
    for _, step in sorted(events, key=lambda e: (e[0], e[1])):
        cur += step
        best = max(best, cur)
    return best


def _flops(shape: Sequence[int], repeat: int) -> float:
    bs, m, n, k = shape
    return 2.0 * bs * m * n * k * repeat


def _layer(call: dict[str, Any]) -> float:
    """The serverless layer of one call without the wait for a free core: cold start and
    the two transfers."""
    return call["cold_start_us"] + call["transfer_in_us"] + call["transfer_out_us"]


def _skey(shape: Sequence[int]) -> str:
    return "x".join(str(int(d)) for d in shape)


def label(shape: Sequence[int]) -> str:
    return "[" + ", ".join(str(int(d)) for d in shape) + "]"


def summarize(results: dict[str, Any]) -> dict[str, Any]:
    """Per-series statistics, per-mode phase breakdowns and the index used by the tables."""
    slots = int(results["capacity"].get("cpu_slots") or results["capacity"]["cpus"] or 1)
    calib = results.get("calibration", {})
    series: dict[str, dict[str, Any]] = {}
    by_mode_shape: dict[tuple[str, str, int], str] = {}
    for s in results["series"]:
        times = [t["time_s"] for t in s["trials"]]
        st = stats(times)
        shape = s["shape"]
        par = min(int(shape[0]), slots) if s["mode"] == "multi_cpu" else 1
        gflops = _flops(shape, s["repeat"]) / st["median"] / 1e9 if st["median"] > 0 else math.nan
        cal = calib.get(_skey(shape), {}).get("gflops")
        frac = gflops / (cal * par) if cal and s["mode"].endswith("cpu") else None
        calls = [c for t in s["trials"] for c in t["calls"]]
        entry = {
            "key": s["key"],
            "mode": s["mode"],
            "shape": shape,
            "repeat": s["repeat"],
            "times": times,
            "stats": st,
            "gflops": gflops,
            "parallel_ideal": par,
            "inproc_gflops": cal,
            "fraction_of_inproc": frac,
            "verified": all(t["verified"] for t in s["trials"]) and bool(s["trials"]),
            "n_verified": sum(bool(t["verified"]) for t in s["trials"]),
            "verified_runs": [bool(t["verified"]) for t in s["trials"]],
            "max_abs_err": max((t["max_abs_err"] or 0.0) for t in s["trials"])
            if s["trials"]
            else None,
            "phases": {p: stats(c.get(p, math.nan) for c in calls) for p in (*PHASES, "total_us")},
            "overhead_us": stats(c["total_us"] - c["compute_us"] for c in calls if "total_us" in c),
            "layer_us": stats(_layer(c) for c in calls if "total_us" in c),
            "workers": sorted({int(c.get("worker", -1)) for c in calls}),
            "max_concurrency": max((max_concurrency(t["calls"]) for t in s["trials"]), default=0),
        }
        series[s["key"]] = entry
        by_mode_shape[(s["mode"], _skey(shape), int(s["repeat"]))] = s["key"]
    modes: dict[str, dict[str, Any]] = {}
    for mode in SERVERLESS:
        calls = [
            c
            for s in results["series"]
            if s["mode"] == mode
            for t in s["trials"]
            for c in t["calls"]
        ]
        if not calls:
            continue
        phases = {p: stats(c.get(p, math.nan) for c in calls) for p in (*PHASES, "total_us")}
        modes[mode] = {
            "calls": len(calls),
            "phases": phases,
            "overhead_us": stats(c["total_us"] - c["compute_us"] for c in calls),
            "layer_us": stats(_layer(c) for c in calls),
            "phase_sum_error_us": max(
                abs(sum(c[p] for p in PHASES) - c["total_us"]) for c in calls
            ),
        }
    return {"series": series, "index": by_mode_shape, "modes": modes, "slots": slots}


def _get(summary: dict[str, Any], mode: str, shape: Sequence[int], repeat: int) -> dict | None:
    key = summary["index"].get((mode, _skey(shape), int(repeat)))
    return summary["series"].get(key) if key else None


# --------------------------------------------------------------------------------------------
# formatting


def fmt_s(x: float | None) -> str:
    """Seconds with three significant digits (small values in scientific notation)."""
    if x is None or not math.isfinite(x):
        return "n/a"
    if x == 0:
        return "0"
    m = abs(x)
    if m >= 100:
        return f"{x:.1f}"
    return f"{x:.3g}" if m >= 0.001 else f"{x:.2e}"


def _mb(shape: Sequence[int]) -> float:
    """Megabytes of fp32 A, B and C for one batch."""
    bs, m, n, k = shape
    return 4.0 * bs * (m * n + n * k + m * k) / 1e6


def fmt_ms(us: float | None) -> str:
    if us is None or not math.isfinite(us):
        return "n/a"
    ms = us / 1000.0
    return f"{ms:.3f}" if ms < 10 else f"{ms:.1f}"


def pct(x: float | None) -> str:
    if x is None or not math.isfinite(x):
        return "n/a"
    return f"{100 * x:.1f}%"


def _ok(entry: dict[str, Any] | None) -> str:
    if not entry:
        return "n/a"
    n = len(entry["times"])
    return "yes" if entry["verified"] else f"NO ({entry['n_verified']}/{n})"


def _table(header: Sequence[str], rows: Iterable[Sequence[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines) + "\n"


def table1(results: dict[str, Any], summary: dict[str, Any]) -> str:
    cfg = results["config"]
    rows = []
    for shape in cfg["table1_shapes"]:
        bare = _get(summary, "bare_cpu", shape, cfg["repeat"])
        srv = _get(summary, "single_cpu", shape, cfg["repeat"])
        n = max(len(bare["times"]) if bare else 0, len(srv["times"]) if srv else 0)
        for i in range(n):
            b = bare["times"][i] if bare and i < len(bare["times"]) else None
            s = srv["times"][i] if srv and i < len(srv["times"]) else None
            over = s - b if (b is not None and s is not None) else None
            rows.append(
                [label(shape), str(i + 1), fmt_s(b), fmt_s(s), fmt_s(over), _trial_ok(srv, i)]
            )
        if bare and srv:
            rows.append(
                [
                    label(shape),
                    "**median**",
                    f"**{fmt_s(bare['stats']['median'])}**",
                    f"**{fmt_s(srv['stats']['median'])}**",
                    f"**{fmt_s(srv['stats']['median'] - bare['stats']['median'])}**",
                    _ok(srv),
                ]
            )
    return _table(
        [
            "[bs, M, N, K]",
            "Run",
            "Bare Metal Time (s)",
            "Serverless Call Time (s)",
            "Difference (s)",
            "Verified",
        ],
        rows,
    )


def _trial_ok(entry: dict[str, Any] | None, i: int) -> str:
    if not entry:
        return "n/a"
    runs = entry["verified_runs"]
    return ("yes" if runs[i] else "NO") if i < len(runs) else "n/a"


def table2(results: dict[str, Any], summary: dict[str, Any], with_gpu: bool) -> str:
    cfg = results["config"]
    slots = summary["slots"]
    gpu = results.get("gpu", {}).get("available", False)
    rows = []
    for shape in cfg["shapes"]:
        single = _get(summary, "single_cpu", shape, cfg["repeat"])
        multi = _get(summary, "multi_cpu", shape, cfg["repeat"])
        sm = single["stats"]["median"] if single else None
        mm = multi["stats"]["median"] if multi else None
        row = [label(shape), fmt_s(sm), fmt_s(mm)]
        if with_gpu:
            g = _get(summary, "gpu", shape, cfg["repeat"]) if gpu else None
            row.append(fmt_s(g["stats"]["median"]) if g else NO_GPU)
        else:
            speed = sm / mm if sm and mm else None
            ideal = min(int(shape[0]), slots)
            row += [
                f"{speed:.2f}x" if speed else "n/a",
                str(ideal),
                pct(speed / ideal) if speed else "n/a",
            ]
        verified = [_ok(single), _ok(multi)]
        if with_gpu and gpu:
            verified.append(_ok(_get(summary, "gpu", shape, cfg["repeat"])))
        row.append(" / ".join(verified))
        rows.append(row)
    header = ["[bs, M, N, K]", "Single CPU (s)", "Multiple (bs) CPUs (s)"]
    if with_gpu:
        header += ["GPU (s)", "Verified (single / multi" + (" / GPU)" if gpu else ")")]
    else:
        header += ["Speedup", "Ideal min(bs, cores)", "Efficiency", "Verified (single / multi)"]
    return _table(header, rows)


def table4(results: dict[str, Any], summary: dict[str, Any]) -> str:
    cfg = results["config"]
    shape, rep = cfg["gpu_shape"], cfg["gpu_repeat"]
    if not results.get("gpu", {}).get("available"):
        return _table(
            ["[bs, M, N, K]", "Bare Metal GPU (s)", "Single GPU (s)", "Multiple GPUs (s)"],
            [[label(shape), NO_GPU, NO_GPU, NO_GPU]],
        )
    bare = _get(summary, "bare_gpu", shape, rep)
    one = _get(summary, "gpu", shape, rep)
    two = _get(summary, "multi_gpu", shape, rep)
    n = max(len(e["times"]) for e in (bare, one, two) if e)
    rows = []
    for i in range(n):
        rows.append(
            [label(shape), str(i + 1)]
            + [
                fmt_s(e["times"][i]) if e and i < len(e["times"]) else "n/a"
                for e in (bare, one, two)
            ]
            + [" / ".join(_ok(e) if e else "n/a" for e in (one, two))]
        )
    rows.append(
        [label(shape), "**median**"]
        + [f"**{fmt_s(e['stats']['median'])}**" if e else "n/a" for e in (bare, one, two)]
        + [""]
    )
    return _table(
        [
            "[bs, M, N, K]",
            "Run",
            "Bare Metal GPU (s)",
            "Single GPU (s)",
            "Multiple GPUs (s)",
            "Verified (1 / 2 calls)",
        ],
        rows,
    )


def breakdown(summary: dict[str, Any]) -> str:
    rows = []
    for mode, m in summary["modes"].items():
        total = m["phases"]["total_us"]["mean"]
        for p in (*PHASES, "total_us"):
            st = m["phases"][p]
            share = st["mean"] / total if total else math.nan
            rows.append(
                [
                    mode,
                    PHASE_NAMES.get(p, "total"),
                    fmt_ms(st["mean"]),
                    fmt_ms(st["median"]),
                    fmt_ms(st["max"]),
                    pct(share) if p != "total_us" else "100%",
                ]
            )
        rows.append(
            [
                mode,
                "overhead (total - compute)",
                fmt_ms(m["overhead_us"]["mean"]),
                fmt_ms(m["overhead_us"]["median"]),
                fmt_ms(m["overhead_us"]["max"]),
                pct(m["overhead_us"]["mean"] / total if total else math.nan),
            ]
        )
    return _table(
        ["Mode", "Phase", "Mean (ms)", "Median (ms)", "Max (ms)", "Share of mean total"], rows
    )


def throughput(results: dict[str, Any], summary: dict[str, Any]) -> str:
    rows = []
    for e in summary["series"].values():
        rows.append(
            [
                e["mode"],
                label(e["shape"]),
                str(e["repeat"]),
                fmt_s(e["stats"]["median"]),
                f"{e['gflops']:.1f}",
                f"{e['inproc_gflops']:.1f}" if e["inproc_gflops"] else "n/a",
                str(e["parallel_ideal"]),
                pct(e["fraction_of_inproc"]) if e["fraction_of_inproc"] is not None else "n/a",
                pct(e["stats"]["cv"]),
            ]
        )
    return _table(
        [
            "Mode",
            "[bs, M, N, K]",
            "Repeat",
            "Median (s)",
            "GFLOP/s",
            "In-process 1-thread torch.bmm (GFLOP/s)",
            "Cores used (ideal)",
            "Fraction of in-process rate x cores",
            "CV over runs",
        ],
        rows,
    )


# --------------------------------------------------------------------------------------------
# the documents


def _tries(results: dict[str, Any]) -> str:
    tries = {c.get("tries") for c in results.get("calibration", {}).values()}
    tries.discard(None)
    return "/".join(str(t) for t in sorted(tries)) or "1"


def render_markdown(
    results: dict[str, Any], summary: dict[str, Any], plot_files: dict[str, str] | None = None
) -> str:
    """The report as Markdown."""
    from hetfaas import machine

    from . import discussion

    cfg = results["config"]
    cap = results["capacity"]
    plots = plot_files or {}
    parts: list[str] = ["# Batched matrix multiplication as serverless calls\n\n"]
    parts.append(
        f"Backend `{results['backend']}`"
        + "".join(f" {k}={v}" for k, v in (cfg.get("backend_options") or {}).items())
        + f", {cap['cpus']} CPUs and {cap['gpus']} GPUs available to "
        f"the executor ({cap['cpu_slots']} CPU slots used), repeat **{cfg['repeat']}** products "
        f"per call, **{cfg['runs']}** runs per configuration, GPU repeat {cfg['gpu_repeat']}"
        + (" (quick mode: tiny shapes)" if cfg.get("quick") else "")
        + f". Started {results['started_at']}, took {results['elapsed_s']:.1f} s. "
        f"Reported times are those measured at this repeat; nothing is extrapolated.\n\n"
    )
    parts.append(
        f"Every serverless result is compared with `torch.bmm` computed in the caller "
        f"(`torch.allclose`, rtol = {cfg['rtol']}, atol = {cfg['atol']}, fp32). Bare metal is "
        "`hetfaas.bare_metal` (the function in the caller's process, pinned, 1 thread); a "
        "serverless time is the caller's clock from submit to the result in hand. "
        "Measurements are interleaved run by run; the pool was warmed first.\n"
    )
    parts.append("\n## Machine\n\n")
    parts.append(machine.format_markdown(results["machine"]))
    parts.append("\n## Table 1: bare metal vs serverless call (single CPU), all runs\n\n")
    parts.append(table1(results, summary))
    if "times" in plots:
        parts.append(f"\n![times per shape]({plots['times']})\n")
    parts.append("\n## Table 2: single CPU vs multiple (bs) CPUs, median over runs\n\n")
    parts.append(table2(results, summary, with_gpu=False))
    parts.append("\n## Table 3: single CPU vs multiple CPUs vs GPU, median over runs\n\n")
    if not results["gpu"]["available"]:
        parts.append(f"{NO_GPU}: capacity.gpus = {cap['gpus']}; the GPU column is empty.\n\n")
    parts.append(table2(results, summary, with_gpu=True))
    parts.append(
        f"\n## Table 4: GPU, shape {label(cfg['gpu_shape'])}, "
        f"repeat {cfg['gpu_repeat']}, all runs\n\n"
    )
    if not results["gpu"]["available"]:
        parts.append(f"{NO_GPU}: skipped (capacity.gpus = {cap['gpus']}).\n\n")
    else:
        parts.append(f"{results['gpu']['note']}.\n\n")
    parts.append(table4(results, summary))
    if "timeline" in plots:
        parts.append("\n## Timeline of one multi-CPU run\n\n")
        parts.append(f"\n![timeline]({plots['timeline']})\n")
    parts.append("\n## Where the serverless time goes (per call, all runs)\n\n")
    parts.append(breakdown(summary))
    if "overhead" in plots:
        parts.append(f"\n![overhead per phase]({plots['overhead']})\n")
    ok = max((m["phase_sum_error_us"] for m in summary["modes"].values()), default=0.0)
    parts.append(f"\nThe five phases add up to the total of every call within {ok:.3g} us.\n")
    parts.append("\n## Cold start (excluded from the tables)\n\n")
    cold = results.get("cold_start", {})
    cs = discussion.cold_summary(cold)
    if cs:
        parts.append(
            f"Starting {cold.get('cpu_workers')} CPU workers (`ex.warmup`) took "
            f"{fmt_s(cold.get('pool_warmup_s'))} s. Then {cs['n']} calls on tiny inputs loaded "
            f"`bmm_single` and `mm_single` in the workers: they took up to "
            f"{fmt_ms(cs['max_total_us'])} ms each (median {fmt_ms(cs['median_total_us'])} ms); "
            f"the slowest spent most of it in {PHASE_NAMES[cs['slowest_phase']]} "
            f"({fmt_ms(cs['slowest_phase_us'])} ms), and the cold-start phase had a median of "
            f"{fmt_ms(cs['median_cold_start_us'])} ms. None of these calls is in the tables.\n"
        )
    if cold.get("gpu_pool_warmup_s") is not None:
        parts.append(
            f"\nGPU workers: {fmt_s(cold['gpu_pool_warmup_s'])} s to start; CUDA initialisation "
            f"for bare metal in the caller: {fmt_s(cold.get('bare_gpu_init_s'))} s.\n"
        )
    parts.append("\n## Throughput\n\n")
    parts.append(
        "GFLOP/s = 2 x bs x M x N x K x repeat / median time. The in-process rate is "
        "`torch.bmm` run by `hetfaas.bare_metal` on one pinned thread, the best of "
        f"{_tries(results)} short runs per shape taken before the study; the fraction divides "
        "by that rate times the cores a configuration can use.\n\n"
    )
    parts.append(throughput(results, summary))
    parts.append("\n## Discussion (numbers from this run)\n\n")
    for title, fn in discussion.SECTIONS:
        parts.append(f"\n### {title}\n\n")
        parts.append("\n".join(fn(results, summary)) + "\n")
    parts.append("\nRaw timings of every call: `results.json`.\n")
    return "".join(parts)


def console_summary(results: dict[str, Any]) -> str:
    """A short plain-text summary for the terminal."""
    summary = summarize(results)
    lines = [
        f"bmm study on {results['backend']}: repeat={results['config']['repeat']} "
        f"runs={results['config']['runs']} in {results['elapsed_s']:.1f} s"
    ]
    for e in summary["series"].values():
        lines.append(
            f"  {e['mode']:<10} {label(e['shape']):<24} median {fmt_s(e['stats']['median']):>8} s"
            f"  CV {pct(e['stats']['cv']):>6}  verified {_ok(e)}"
        )
    if not results["gpu"]["available"]:
        lines.append(f"  GPU: {NO_GPU}")
    return "\n".join(lines)


def write_report(
    results: dict[str, Any], out_dir: str | Path, plots: bool = True
) -> dict[str, Path]:
    """Write ``results.json``, the plots and ``report.md`` into ``out_dir``."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths: dict[str, Path] = {"results": out / "results.json", "report": out / "report.md"}
    with open(paths["results"], "w", encoding="utf-8") as fh:
        json.dump(results, fh, indent=1, default=json_default)
        fh.write("\n")
    summary = summarize(results)
    plot_files: dict[str, str] = {}
    if plots:
        from . import plots as plotting

        for name, path in plotting.make_plots(results, summary, out).items():
            paths[name] = path
            plot_files[name] = path.name
    paths["report"].write_text(render_markdown(results, summary, plot_files), encoding="utf-8")
    return paths


__all__ = [
    "console_summary",
    "json_default",
    "max_concurrency",
    "render_markdown",
    "stats",
    "summarize",
    "write_report",
]
