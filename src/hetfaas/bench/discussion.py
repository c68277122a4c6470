"""The discussion of the bmm report: one function per question of the study.

Sentences are assembled from values measured in this run (medians, ranges, coefficients of
variation, phase medians of :class:`~hetfaas.Timings`, speedups against min(bs, cores)), and
conditions on those values pick which statement applies.
"""

from __future__ import annotations

import math
import statistics
from typing import Any

from .report import (
    NO_GPU,
    PHASE_NAMES,
    PHASES,
    _flops,
    _get,
    _mb,
    fmt_ms,
    fmt_s,
    label,
    pct,
)


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
        biggest = max((p for p in PHASES if p != "compute_us"), key=lambda p: ph[p])
        b_range = b["stats"]["max"] - b["stats"]["min"]
        s_range = s["stats"]["max"] - s["stats"]["min"]
        if abs(extra) < max(b_range, s_range):
            verdict = (
                f"That is less than the run-to-run range of the runs themselves (bare metal "
                f"{fmt_s(b['stats']['min'])} to {fmt_s(b['stats']['max'])} s, serverless "
                f"{fmt_s(s['stats']['min'])} to {fmt_s(s['stats']['max'])} s), so at this size "
                "the two cannot be told apart."
            )
        else:
            verdict = (
                f"That is more than the run-to-run range of either column ({fmt_s(b_range)} s "
                f"bare metal, {fmt_s(s_range)} s serverless)."
            )
        out.append(
            f"- {label(sh)}: the serverless call took {fmt_s(sm)} s against {fmt_s(bm)} s bare "
            f"metal (medians), {fmt_s(abs(extra))} s {'more' if extra >= 0 else 'less'} "
            f"({'+' if extra >= 0 else '-'}{pct(abs(extra) / bm)}). {verdict} Inside the call "
            f"the function ran {fmt_s(ph['compute_us'] / 1e6)} s; the serverless layer around "
            f"it (total minus compute) took {fmt_ms(layer * 1e6)} ms "
            f"({pct(layer / sm)} of the call), its largest part {PHASE_NAMES[biggest]} "
            f"({fmt_ms(ph[biggest])} ms median)."
        )
    layers = [s["overhead_us"]["median"] / 1e3 for _, _, s in pairs]
    shares = [s["overhead_us"]["median"] / 1e6 / s["stats"]["median"] for _, _, s in pairs]
    gaps = [s["phases"]["compute_us"]["median"] / 1e6 - b["stats"]["median"] for _, b, s in pairs]
    out.append(
        f"- The serverless layer went from {layers[0]:.3g} ms at {label(pairs[0][0])} "
        f"({_mb(pairs[0][0]):.0f} MB of A, B and C to move) to {layers[-1]:.3g} ms at "
        f"{label(pairs[-1][0])} ({_mb(pairs[-1][0]):.0f} MB), between {pct(min(shares))} and "
        f"{pct(max(shares))} of the call: it is the price of moving the matrices between "
        "processes and handing the call over. The rest of any difference is the computation "
        f"itself: the function's median time in the worker minus bare metal ranged from "
        f"{fmt_s(min(gaps))} to {fmt_s(max(gaps))} s over these shapes."
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
    for sh, single, m, sp in rows:
        ideal = min(sh[0], slots)
        if sp > ideal:
            cal = single.get("inproc_gflops")
            head = (
                f"- At {label(sh)} the speedup ({sp:.2f}x) is above the ideal {ideal}, which "
                f"parallelism alone cannot give. The single-CPU runs there reached "
                f"{single['gflops']:.1f} GFLOP/s (CV {pct(single['stats']['cv'])})"
            )
            if cal and single["gflops"] < cal:
                tail = f" against {cal:.1f} GFLOP/s in process: noise slowed them."
            elif cal:
                tail = (
                    f", no slower than the {cal:.1f} GFLOP/s in-process yardstick, so the "
                    f"excess is run-to-run noise (CV {pct(m['stats']['cv'])} for the parallel "
                    "calls) or a machine that was slower while the yardstick was taken."
                )
            else:
                tail = ": run-to-run noise."
            out.append(head + tail)
        if sp < 1:
            per_call = m["overhead_us"]["median"]
            comp = m["phases"]["compute_us"]["median"]
            out.append(
                f"- At {label(sh)} parallel calls were slower ({sp:.2f}x): each of the "
                f"{sh[0]} calls spent {fmt_ms(per_call)} ms outside the function (median; "
                f"{fmt_ms(m['phases']['queue_us']['median'])} ms of it waiting for a core) for "
                f"{fmt_ms(comp)} ms of compute, so the per-call cost outweighed the parallelism."
            )
    m_all = [r[2] for r in rows]
    q = statistics.median(e["phases"]["queue_us"]["median"] for e in m_all)
    lay = statistics.median(e["layer_us"]["median"] for e in m_all)
    waves = [(r[0], math.ceil(r[0][0] / slots)) for r in rows if r[0][0] > slots]
    text = (
        f"- A multi-CPU call waited a median {fmt_ms(q)} ms for a free core and spent "
        f"{fmt_ms(lay)} ms in cold start and transfers (medians over shapes)"
    )
    if waves:
        sh, w = max(waves, key=lambda x: x[1])
        text += (
            f"; with more calls than the {slots} slots they ran in waves ({w} waves of up to "
            f"{slots} at {label(sh)}; the timeline plot shows one such run)"
        )
    out.append(text + ".")
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
            f"whole batch runs on one core of the {summary['slots']}."
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
            f"serverless cost once per matrix ({fmt_ms(m['layer_us']['median'])} ms median per "
            f"call in cold start and transfers, {m['calls']} calls in all) and waits for a core "
            f"when bs exceeds the cores ({fmt_ms(m['phases']['queue_us']['median'])} ms median "
            "wait)."
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
        singles = sorted(
            (e for e in summary["series"].values() if e["mode"] == "single_cpu"),
            key=lambda e: _mb(e["shape"]),
        )
        span = ""
        if len(singles) > 1:
            lo, hi = singles[0], singles[-1]
            span = (
                f" (it grows with the data: {fmt_ms(lo['overhead_us']['median'])} ms for "
                f"{_mb(lo['shape']):.2g} MB at {label(lo['shape'])}, "
                f"{fmt_ms(hi['overhead_us']['median'])} ms for {_mb(hi['shape']):.3g} MB at "
                f"{label(hi['shape'])})"
            )
        out.append(
            f"- A warm single-CPU call cost a median {fmt_ms(o)} ms beyond its function"
            f"{span}; for that to stay under 10% of a call the function must compute for at "
            f"least {fmt_ms(9 * o)} ms."
        )
    cold = results.get("cold_start", {})
    cs = cold_summary(cold)
    if cs:
        layer = m["overhead_us"]["median"] if m else math.nan
        out.append(
            f"- Starting {cold.get('cpu_workers')} workers took {fmt_s(cold['pool_warmup_s'])} s "
            f"and a worker's first calls, on tiny inputs, took up to "
            f"{fmt_ms(cs['max_total_us'])} ms, {cs['max_total_us'] / layer:.0f} times the "
            f"{fmt_ms(layer)} ms median layer of a warm single-CPU call: a pool kept warm pays "
            "the start once, a call that finds no warm worker pays it every time."
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


SECTIONS = (
    ("Bare metal vs serverless (table 1)", discuss_table1),
    ("Variance across runs", discuss_variance),
    ("Single CPU vs multiple CPUs (table 2)", discuss_multi),
    ("GPU (table 3)", discuss_gpu),
    ("Pros and cons of the three designs", discuss_pros_cons),
    ("When serverless computing helps", discuss_when),
    ("Single vs multiple GPUs (table 4)", discuss_table4),
)
"""Title and generator of each part of the discussion, in the order of the study."""

__all__ = ["SECTIONS", "cold_summary"]
