"""Plots of the bmm study (matplotlib, Agg backend, PNG files).

- ``times.png``: time per shape with the spread over runs: bare metal vs serverless (table 1)
  and single vs multiple CPUs (and GPU when there is one) for tables 2/3;
- ``timeline.png``: one multi-CPU run as a Gantt chart, one row per worker slot, a bar per call
  from ``started_ns`` to ``finished_ns``;
- ``overhead.png``: the median of each non-compute phase per call, per serverless mode.
"""

from __future__ import annotations

import math
import statistics
from pathlib import Path
from typing import Any

from .report import PHASE_NAMES, PHASES, label

COLORS = {
    "bare_cpu": "#4c72b0",
    "single_cpu": "#dd8452",
    "multi_cpu": "#55a868",
    "gpu": "#c44e52",
    "bare_gpu": "#8172b3",
    "multi_gpu": "#937860",
}


def _pyplot() -> Any:
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    return plt


def _series(results: dict[str, Any], mode: str, shape: list[int], repeat: int) -> dict | None:
    for s in results["series"]:
        if s["mode"] == mode and list(s["shape"]) == list(shape) and s["repeat"] == repeat:
            return s
    return None


def _times(s: dict[str, Any] | None) -> list[float]:
    return [t["time_s"] for t in s["trials"]] if s else []


def _spread_panel(
    ax: Any,
    results: dict[str, Any],
    shapes: list[list[int]],
    modes: list[str],
    repeat: int,
    title: str,
) -> None:
    width = 0.8 / max(1, len(modes))
    for j, mode in enumerate(modes):
        xs, meds, lo, hi = [], [], [], []
        for i, shape in enumerate(shapes):
            ts = _times(_series(results, mode, shape, repeat))
            if not ts:
                continue
            x = i + (j - (len(modes) - 1) / 2) * width
            med = statistics.median(ts)
            xs.append(x)
            meds.append(med)
            lo.append(med - min(ts))
            hi.append(max(ts) - med)
            ax.scatter([x] * len(ts), ts, s=10, color=COLORS.get(mode, "k"), alpha=0.6, zorder=3)
        if xs:
            ax.bar(
                xs,
                meds,
                width=width * 0.9,
                color=COLORS.get(mode, "k"),
                alpha=0.45,
                label=mode.replace("_", " "),
            )
            ax.errorbar(xs, meds, yerr=[lo, hi], fmt="none", ecolor="black", capsize=3, lw=1)
    ax.set_xticks(range(len(shapes)))
    ax.set_xticklabels([label(s) for s in shapes], rotation=35, ha="right", fontsize=7)
    ax.set_ylabel("time (s)")
    ax.set_title(title, fontsize=9)
    if any(_times(_series(results, m, s, repeat)) for m in modes for s in shapes):
        ax.set_yscale("log")
    ax.legend(fontsize=7)
    ax.grid(axis="y", alpha=0.3, which="both")


def plot_times(results: dict[str, Any], path: Path) -> Path:
    """Bars: median over runs; dots: every run; whiskers: min to max."""
    plt = _pyplot()
    cfg = results["config"]
    fig, axes = plt.subplots(1, 2, figsize=(12, 4.5), gridspec_kw={"width_ratios": [1, 2.5]})
    _spread_panel(
        axes[0],
        results,
        cfg["table1_shapes"],
        ["bare_cpu", "single_cpu"],
        cfg["repeat"],
        f"Table 1: bare metal vs serverless (repeat {cfg['repeat']})",
    )
    modes = ["single_cpu", "multi_cpu"] + (["gpu"] if results["gpu"]["available"] else [])
    _spread_panel(
        axes[1],
        results,
        cfg["shapes"],
        modes,
        cfg["repeat"],
        f"Tables 2/3: single vs multiple CPUs{' vs GPU' if len(modes) > 2 else ''}"
        f" (repeat {cfg['repeat']}, {cfg['runs']} runs)",
    )
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def pick_timeline_trial(results: dict[str, Any]) -> tuple[dict, dict] | None:
    """The median-time run of the largest multi-CPU configuration."""
    multi = [s for s in results["series"] if s["mode"] == "multi_cpu" and s["trials"]]
    if not multi:
        return None
    s = max(multi, key=lambda s: (math.prod(s["shape"]) * s["repeat"], s["shape"][0]))
    trials = sorted(s["trials"], key=lambda t: t["time_s"])
    return s, trials[len(trials) // 2]


def plot_timeline(results: dict[str, Any], path: Path) -> Path | None:
    picked = pick_timeline_trial(results)
    if picked is None:
        return None
    s, trial = picked
    plt = _pyplot()
    calls = [c for c in trial["calls"] if c.get("started_ns") and c.get("finished_ns")]
    workers = sorted({int(c.get("worker", -1)) for c in calls})
    row = {w: i for i, w in enumerate(workers)}
    t0 = trial["t0_ns"]
    fig, ax = plt.subplots(figsize=(10, 1.2 + 0.6 * max(1, len(workers))))
    cmap = plt.get_cmap("tab20")
    for c in calls:
        y = row[int(c.get("worker", -1))]
        start = (c["started_ns"] - t0) / 1e6
        end = (c["finished_ns"] - t0) / 1e6
        ax.barh(
            y,
            end - start,
            left=start,
            height=0.6,
            color=cmap(c["index"] % 20),
            edgecolor="black",
            lw=0.5,
        )
        ax.text((start + end) / 2, y, str(c["index"]), ha="center", va="center", fontsize=7)
    ax.axvline((trial["t1_ns"] - t0) / 1e6, color="red", ls="--", lw=1, label="result in hand")
    labels = []
    for w in workers:
        cpus = sorted({tuple(c.get("cpus") or ()) for c in calls if int(c.get("worker", -1)) == w})
        where = ";".join(",".join(str(x) for x in cp) for cp in cpus if cp) or "?"
        labels.append(f"worker {w} (cpu {where})")
    ax.set_yticks(range(len(workers)))
    ax.set_yticklabels(labels, fontsize=8)
    ax.set_xlabel("ms since the first submit")
    waits = [(c["started_ns"] - c.get("submitted_ns", c["started_ns"])) / 1e6 for c in calls]
    ax.set_title(
        f"multi-CPU run {trial.get('run', 0) + 1}: {len(calls)} mm_single calls at "
        f"{label(s['shape'])}, repeat {s['repeat']}; bars: started to finished, "
        f"longest wait for a slot {max(waits, default=0.0):.0f} ms",
        fontsize=9,
    )
    ax.legend(fontsize=7, loc="lower right")
    ax.invert_yaxis()
    ax.grid(axis="x", alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def plot_overhead(results: dict[str, Any], summary: dict[str, Any], path: Path) -> Path | None:
    """Median of each non-compute phase per call, per serverless mode (log scale)."""
    modes = summary.get("modes", {})
    if not modes:
        return None
    plt = _pyplot()
    phases = [p for p in PHASES if p != "compute_us"]
    names = list(modes)
    fig, ax = plt.subplots(figsize=(8, 1.5 + 0.9 * len(names)))
    height = 0.8 / len(phases)
    smallest = math.inf
    for j, p in enumerate(phases):
        vals = [modes[m]["phases"][p]["median"] / 1000.0 for m in names]
        vals = [v if math.isfinite(v) and v > 0 else 0.0 for v in vals]
        smallest = min([smallest, *(v for v in vals if v > 0)])
        ys = [i + (j - (len(phases) - 1) / 2) * height for i in range(len(names))]
        ax.barh(ys, vals, height=height * 0.9, label=PHASE_NAMES[p])
        for y, v in zip(ys, vals, strict=True):
            if v > 0:
                ax.text(v, y, f" {v:.3g}", va="center", fontsize=6)
    ax.set_yticks(range(len(names)))
    ax.set_yticklabels(names)
    ax.set_xscale("log")
    if math.isfinite(smallest):
        ax.set_xlim(left=smallest / 3)
    ax.set_xlabel("median ms per call (log scale; 0 not drawn)")
    ax.set_title("Where the serverless time goes besides compute (all measured calls)", fontsize=9)
    ax.legend(fontsize=7, loc="lower right")
    ax.invert_yaxis()
    ax.grid(axis="x", alpha=0.3, which="both")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def make_plots(results: dict[str, Any], summary: dict[str, Any], out_dir: Path) -> dict[str, Path]:
    """Write every plot that has data into ``out_dir``; returns name -> path."""
    out: dict[str, Path] = {"times": plot_times(results, out_dir / "times.png")}
    tl = plot_timeline(results, out_dir / "timeline.png")
    if tl is not None:
        out["timeline"] = tl
    ov = plot_overhead(results, summary, out_dir / "overhead.png")
    if ov is not None:
        out["overhead"] = ov
    return out


__all__ = ["make_plots", "plot_overhead", "plot_timeline", "plot_times"]
