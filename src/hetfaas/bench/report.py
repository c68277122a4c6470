"""Turn the raw results of ``hetfaas bench bmm`` into ``results.json``, ``report.md`` and plots.

Everything in the report is computed from the results dict: the tables, the overhead
breakdown per phase of :class:`~hetfaas.Timings`, the throughput against the in-process
``torch.bmm`` rate, and a discussion whose every sentence is built from a measured value.
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
    """Seconds with three significant digits (ms/us below a second are still shown in s)."""
    if x is None or not math.isfinite(x):
        return "n/a"
    if x == 0:
        return "0"
    if x >= 100:
        return f"{x:.1f}"
    return f"{x:.3g}" if x >= 0.001 else f"{x:.2e}"


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
# discussion: every sentence carries a number measured in this run


def _phase_medians(entry: dict[str, Any]) -> dict[str, float]:
    return {p: entry["phases"][p]["median"] for p in PHASES}


def cold_summary(cold: dict[str, Any]) -> dict[str, Any] | None:
    """What the warm-up calls (a worker's first calls) cost, or None without any."""
    calls = cold.get("warm_calls") or []
    if not calls or cold.get("pool_warmup_s") is None:
        return None
    slowest = max(calls, key=lambda c: c.get("total_us", 0.0))
    phase = max(PHASES, key=lambda p: slowest.get(p, 0.0))
    return {
        "n": len(calls),
        "max_total_us": slowest.get("total_us", math.nan),
        "median_total_us": statistics.median(c.get("total_us", 0.0) for c in calls),
        "median_cold_start_us": statistics.median(c.get("cold_start_us", 0.0) for c in calls),
        "slowest_phase": phase,
        "slowest_phase_us": slowest.get(phase, math.nan),
    }


def discuss_table1(results: dict[str, Any], summary: dict[str, Any]) -> list[str]:
    cfg = results["config"]
    out: list[str] = []
    pairs = [
        (
            sh,
            _get(summary, "bare_cpu", sh, cfg["repeat"]),
            _get(summary, "single_cpu", sh, cfg["repeat"]),
        )
        for sh in cfg["table1_shapes"]
    ]
    pairs = [(sh, b, s) for sh, b, s in pairs if b and s]
    if not pairs:
        return ["Table 1 has no measurements."]
    for sh, b, s in pairs:
        bm, sm = b["stats"]["median"], s["stats"]["median"]
        ph = _phase_medians(s)
        extra = sm - bm
        layer = s["overhead_us"]["median"] / 1e6
        comp_gap = ph["compute_us"] / 1e6 - bm
        biggest = max((p for p in PHASES if p != "compute_us"), key=lambda p: ph[p])
        out.append(
            f"- {label(sh)}: the serverless call took {fmt_s(sm)} s against {fmt_s(bm)} s bare "
            f"metal (median), {fmt_s(extra)} s more (+{pct(extra / bm)}). Inside "
            f"the call the function itself ran {fmt_s(ph['compute_us'] / 1e6)} s, "
            f"a difference of {fmt_s(comp_gap)} s from bare metal, and the serverless layer "
            f"around it (total minus compute) took {fmt_ms(layer * 1e6)} ms, of which "
            f"{PHASE_NAMES[biggest]} was the largest part ({fmt_ms(ph[biggest])} ms median)."
        )
    layers = [s["overhead_us"]["median"] / 1e3 for _, _, s in pairs]
    ratios = [
        (s["stats"]["median"] - b["stats"]["median"]) / b["stats"]["median"] for _, b, s in pairs
    ]
    out.append(
        f"- Across the {len(pairs)} shapes the serverless layer cost between {min(layers):.3g} "
        f"and {max(layers):.3g} ms per call while the work grew with bs, so the relative "
        f"difference went from {pct(ratios[0])} at {label(pairs[0][0])} to {pct(ratios[-1])} "
        f"at {label(pairs[-1][0])}: the fixed cost is shipping A and B in and C out and the "
        f"hand-off between processes; the rest of the gap is the compute itself running in a "
        f"different process (see the compute rows above)."
    )
    return out


def discuss_variance(results: dict[str, Any], summary: dict[str, Any]) -> list[str]:
    cfg = results["config"]
    out: list[str] = []
    entries = [e for e in summary["series"].values() if len(e["times"]) > 1]
    if not entries:
        return [f"- Only {cfg['runs']} run per configuration: no run-to-run spread to discuss."]
    for sh in cfg["table1_shapes"]:
        b = _get(summary, "bare_cpu", sh, cfg["repeat"])
        s = _get(summary, "single_cpu", sh, cfg["repeat"])
        if not (b and s):
            continue
        out.append(
            f"- {label(sh)}: bare metal ranged {fmt_s(b['stats']['min'])}-"
            f"{fmt_s(b['stats']['max'])} s "
            f"(CV {pct(b['stats']['cv'])}), serverless {fmt_s(s['stats']['min'])}-"
            f"{fmt_s(s['stats']['max'])} s (CV {pct(s['stats']['cv'])})."
        )
    worst = max(entries, key=lambda e: e["stats"]["cv"])
    best = min(entries, key=lambda e: e["stats"]["cv"])
    out.append(
        f"- The most variable configuration was {worst['mode']} at {label(worst['shape'])} "
        f"(CV {pct(worst['stats']['cv'])}), the steadiest {best['mode']} at "
        f"{label(best['shape'])} (CV {pct(best['stats']['cv'])})."
    )
    srv = [e for e in entries if e["mode"] == "single_cpu" and e["stats"]["median"] > 0]
    if srv:
        big = max(srv, key=lambda e: e["stats"]["median"])
        stds = {p: big["phases"][p]["std"] for p in PHASES}
        top = max(stds, key=lambda p: stds[p] if math.isfinite(stds[p]) else -1)
        out.append(
            f"- For single_cpu at {label(big['shape'])} the phase that moved most between runs "
            f"was {PHASE_NAMES[top]} (standard deviation {fmt_ms(stds[top])} ms, against "
            f"{fmt_ms(big['phases']['compute_us']['median'])} ms median compute): the spread "
            + (
                "comes from the computation itself (other processes, caches, frequency, "
                "a shared virtual machine) rather than from the serverless layer."
                if top == "compute_us"
                else "comes from the serverless layer (scheduling and data movement between "
                "processes) more than from the computation."
            )
        )
    load = results.get("load_avg_start")
    flags = results.get("machine", {}).get("cpu_flags", [])
    if load:
        out.append(
            f"- The 1-minute load average was {load[0]} when the study started on "
            f"{results['capacity']['cpus']} cores"
            + (
                ", and the CPU reports the `hypervisor` flag (a virtual machine whose host may "
                "run other tenants)."
                if "hypervisor" in flags
                else "."
            )
        )
    return out


def discuss_multi(results: dict[str, Any], summary: dict[str, Any]) -> list[str]:
    cfg = results["config"]
    slots = summary["slots"]
    out: list[str] = []
    rows = []
    for sh in cfg["shapes"]:
        s = _get(summary, "single_cpu", sh, cfg["repeat"])
        m = _get(summary, "multi_cpu", sh, cfg["repeat"])
        if s and m and m["stats"]["median"] > 0:
            rows.append((sh, s, m, s["stats"]["median"] / m["stats"]["median"]))
    if not rows:
        return ["- No single/multi CPU pairs were measured."]
    best = max(rows, key=lambda r: r[3])
    worst = min(rows, key=lambda r: r[3])
    out.append(
        f"- This machine gave the executor {slots} CPU slots, so bs calls ran in at most "
        f"{slots} at a time (most seen at once: "
        f"{max(r[2]['max_concurrency'] for r in rows)}); the ideal speedup is min(bs, {slots})."
    )
    out.append(
        f"- Best speedup: {best[3]:.2f}x at {label(best[0])} (ideal {min(best[0][0], slots)}, "
        f"efficiency {pct(best[3] / min(best[0][0], slots))}); worst: {worst[3]:.2f}x at "
        f"{label(worst[0])}."
    )
    for sh, _, m, sp in rows:
        if sp < 1:
            per_call = m["overhead_us"]["median"]
            comp = m["phases"]["compute_us"]["median"]
            out.append(
                f"- At {label(sh)} parallel calls were slower ({sp:.2f}x): each of the "
                f"{sh[0]} calls spent {fmt_ms(per_call)} ms outside the function (median) for "
                f"{fmt_ms(comp)} ms of compute, so the per-call cost outweighed the parallelism."
            )
    m_all = [r[2] for r in rows]
    q = statistics.median(e["phases"]["queue_us"]["median"] for e in m_all)
    out.append(
        f"- The multi-CPU calls waited a median {fmt_ms(q)} ms in the queue per call "
        f"(medians over shapes): with bs above {slots} the calls run in waves of {slots}."
    )
    return out


def discuss_gpu(results: dict[str, Any], summary: dict[str, Any]) -> list[str]:
    cfg = results["config"]
    gpu = results.get("gpu", {})
    if not gpu.get("available"):
        return [
            f"- {NO_GPU}: this machine has no GPU (capacity.gpus = "
            f"{results['capacity']['gpus']}), so the GPU column of table 3 and table 4 "
            "were not measured; the comparisons below cover the CPU designs only."
        ]
    out = []
    for sh in cfg["shapes"]:
        s = _get(summary, "single_cpu", sh, cfg["repeat"])
        g = _get(summary, "gpu", sh, cfg["repeat"])
        if s and g and g["stats"]["median"] > 0:
            out.append(
                f"- {label(sh)}: GPU {fmt_s(g['stats']['median'])} s vs single CPU "
                f"{fmt_s(s['stats']['median'])} s "
                f"({s['stats']['median'] / g['stats']['median']:.1f}x);"
                f" the GPU call spent {fmt_ms(g['overhead_us']['median'])} ms outside the function."
            )
    return out


def discuss_pros_cons(results: dict[str, Any], summary: dict[str, Any]) -> list[str]:
    modes = summary["modes"]
    out = []
    if "single_cpu" in modes:
        m = modes["single_cpu"]
        out.append(
            f"- Single CPU: one call, so the serverless cost is paid once "
            f"({fmt_ms(m['overhead_us']['median'])} ms median outside the function), but the "
            "whole batch runs on one core."
        )
    if "multi_cpu" in modes:
        m = modes["multi_cpu"]
        best = max(
            (e for e in summary["series"].values() if e["mode"] == "multi_cpu"),
            key=lambda e: e["fraction_of_inproc"] or 0,
        )
        out.append(
            f"- Multiple CPUs: uses up to {summary['slots']} cores "
            f"(best {pct(best['fraction_of_inproc'])} "
            f"of the ideal in-process rate x cores at {label(best['shape'])}), but pays the "
            f"serverless cost once per matrix ({fmt_ms(m['overhead_us']['median'])} ms median per "
            f"call, {m['calls']} calls in all) and waits in the queue when bs exceeds the cores."
        )
    if "gpu" in modes:
        m = modes["gpu"]
        out.append(
            f"- GPU: the fastest per product once the data is on the device, but each call "
            f"also moves A, B and C over PCIe and pays {fmt_ms(m['overhead_us']['median'])} ms "
            "median outside the function."
        )
    else:
        out.append(f"- GPU: {NO_GPU} on this machine; not measured.")
    return out


def discuss_when(results: dict[str, Any], summary: dict[str, Any]) -> list[str]:
    cfg = results["config"]
    out = []
    m = summary["modes"].get("single_cpu")
    if m:
        o = m["overhead_us"]["median"]
        out.append(
            f"- A warm call cost {fmt_ms(o)} ms beyond its function here; for that to stay "
            f"under 10% of a call the function must compute for at least {fmt_ms(9 * o)} ms."
        )
    cold = results.get("cold_start", {})
    cs = cold_summary(cold)
    if cs:
        warm_med = m["phases"]["total_us"]["median"] if m else math.nan
        out.append(
            f"- Starting {cold.get('cpu_workers')} workers took {fmt_s(cold['pool_warmup_s'])} s "
            f"and a worker's first calls took up to {fmt_ms(cs['max_total_us'])} ms, against "
            f"{fmt_ms(warm_med)} ms for a warm single-CPU call (median, compute included): a pool "
            "kept warm pays the start once, a call that finds no warm worker pays it every time."
        )
    wins = []
    for sh in cfg["shapes"]:
        s = _get(summary, "single_cpu", sh, cfg["repeat"])
        mm = _get(summary, "multi_cpu", sh, cfg["repeat"])
        if s and mm and mm["stats"]["median"] < s["stats"]["median"]:
            wins.append(sh)
    if wins:
        smallest = min(wins, key=lambda sh: _flops(sh, 1))
        out.append(
            f"- Splitting into parallel calls paid off in {len(wins)} of {len(cfg['shapes'])} "
            f"shapes, the smallest being {label(smallest)} "
            f"({_flops(smallest, cfg['repeat']) / 1e9:.3g} GFLOP per batch at repeat "
            f"{cfg['repeat']}): serverless parallelism helps when each call carries enough work "
            "and there are idle cores (or GPUs) to run the calls."
        )
    else:
        out.append(
            f"- Splitting into parallel calls paid off in none of the {len(cfg['shapes'])} "
            f"shapes at repeat {cfg['repeat']}: each call carried too little work for its cost."
        )
    return out


def discuss_table4(results: dict[str, Any], summary: dict[str, Any]) -> list[str]:
    cfg = results["config"]
    gpu = results.get("gpu", {})
    if not gpu.get("available"):
        return [f"- {NO_GPU}: table 4 was skipped (capacity.gpus = {results['capacity']['gpus']})."]
    shape, rep = cfg["gpu_shape"], cfg["gpu_repeat"]
    entries = {m: _get(summary, m, shape, rep) for m in ("bare_gpu", "gpu", "multi_gpu")}
    out = [f"- {gpu.get('note', '')}."]
    bare = entries["bare_gpu"]
    for m in ("gpu", "multi_gpu"):
        e = entries[m]
        if e and bare:
            out.append(
                f"- {m}: {fmt_s(e['stats']['median'])} s median vs "
                f"{fmt_s(bare['stats']['median'])} s "
                f"bare metal ({pct(e['stats']['median'] / bare['stats']['median'] - 1)} more); "
                f"{fmt_ms(e['overhead_us']['median'])} ms per call outside the function "
                f"(transfer in {fmt_ms(e['phases']['transfer_in_us']['median'])} ms, transfer out "
                f"{fmt_ms(e['phases']['transfer_out_us']['median'])} ms)."
            )
    if entries["gpu"] and entries["multi_gpu"]:
        sp = entries["gpu"]["stats"]["median"] / entries["multi_gpu"]["stats"]["median"]
        out.append(f"- Two half-batch calls vs one call: {sp:.2f}x.")
    return out


# --------------------------------------------------------------------------------------------
# the documents


def render_markdown(
    results: dict[str, Any], summary: dict[str, Any], plot_files: dict[str, str] | None = None
) -> str:
    """The report as Markdown."""
    from hetfaas import machine

    cfg = results["config"]
    cap = results["capacity"]
    plots = plot_files or {}
    parts: list[str] = ["# Batched matrix multiplication as serverless calls\n\n"]
    parts.append(
        f"Backend `{results['backend']}`, {cap['cpus']} CPUs and {cap['gpus']} GPUs available to "
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
    cs = cold_summary(cold)
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
    parts.append(throughput(results, summary))
    parts.append("\n## Discussion (numbers from this run)\n\n")
    sections = [
        ("Bare metal vs serverless (table 1)", discuss_table1),
        ("Variance across runs", discuss_variance),
        ("Single CPU vs multiple CPUs (table 2)", discuss_multi),
        ("GPU (table 3)", discuss_gpu),
        ("Pros and cons of the three designs", discuss_pros_cons),
        ("When serverless computing helps", discuss_when),
        ("Single vs multiple GPUs (table 4)", discuss_table4),
    ]
    for title, fn in sections:
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
