"""``hetfaas bench bmm --monitor``: what bare metal and serverless use over time, side by side.

One :class:`~hetfaas.monitor.Sampler` samples the study's whole process tree (this process,
where the bare-metal products run, and the pool's fork server and workers, where the
serverless ones run) while the study records when each configuration ran. The samples are
then split by what ran at their time: *bare metal* (``bare_cpu``, ``bare_gpu``) or
*serverless* (every other mode). The report gets:

- ``monitor.csv``: every sample, with the mode that ran at its time;
- ``monitor.png``: the monitor's four panels (CPU, memory, GPU, GPU memory), bare metal above
  and serverless below, each over the time its own configurations ran (warm-up and
  calibration left out);
- a table per side and per mode: seconds, CPU-seconds (the tree's cumulative CPU time,
  interpolated between samples, at the ends of the mode's intervals), mean and peak CPU,
  peak memory, mean GPU utilisation, peak GPU memory; and the sampler's own cost.
"""

from __future__ import annotations

import bisect
import contextlib
import csv
import os
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from ..monitor import Sampler
from ..monitor.sampler import Sample

BARE = "bare metal"
SERVERLESS = "serverless"


def side_of(mode: str) -> str:
    return BARE if mode.startswith("bare") else SERVERLESS


class StudyMonitor:
    """Samples the study's process tree and records which mode ran when."""

    def __init__(self, interval_s: float = 0.25) -> None:
        self.sampler = Sampler(os.getpid(), interval_s)
        self.intervals: list[tuple[str, float, float]] = []  # (mode, start, end), sampler time
        self._t0 = 0.0

    def start(self) -> StudyMonitor:
        self._t0 = time.monotonic()
        self.sampler.start()
        return self

    @contextlib.contextmanager
    def mark(self, mode: str) -> Iterator[None]:
        start = time.monotonic() - self._t0
        try:
            yield
        finally:
            self.intervals.append((mode, start, time.monotonic() - self._t0))

    def finish(self) -> dict[str, Any]:
        samples = self.sampler.stop()
        return {
            "interval_s": self.sampler.interval_s,
            "cost_fraction": self.sampler.cost_fraction,
            "gpus_sampled": self.sampler.gpu_count,
            "intervals": self.intervals,
            "samples": samples,
        }


def _mode_at(intervals: list[tuple[str, float, float]], t: float) -> str | None:
    for mode, start, end in intervals:
        if start <= t <= end:
            return mode
    return None


def _cpu_at(samples: list[Sample], t: float) -> float:
    """The tree's cumulative CPU seconds at ``t``, interpolated between the samples around
    it (a configuration shorter than the interval still gets its share)."""
    times = [s.t_s for s in samples]
    i = bisect.bisect_left(times, t)
    if i == 0:
        return samples[0].cpu_s if samples else 0.0
    if i == len(samples):
        return samples[-1].cpu_s
    a, b = samples[i - 1], samples[i]
    span = b.t_s - a.t_s
    return a.cpu_s + (b.cpu_s - a.cpu_s) * ((t - a.t_s) / span if span > 0 else 1.0)


def summarize(mon: dict[str, Any]) -> dict[str, dict[str, float | None]]:
    """Per side and per mode: seconds, CPU-seconds, CPU mean/peak, peak memory, GPU."""
    samples: list[Sample] = mon["samples"]
    groups: dict[str, list[tuple[str, float, float]]] = {}
    for mode, start, end in mon["intervals"]:
        groups.setdefault(mode, []).append((mode, start, end))
        groups.setdefault(side_of(mode), []).append((mode, start, end))
    out: dict[str, dict[str, float | None]] = {}
    for name, spans in groups.items():
        inside = [s for s in samples if _mode_at(spans, s.t_s) is not None]
        seconds = sum(end - start for _, start, end in spans)
        cpu_s = sum(_cpu_at(samples, end) - _cpu_at(samples, start) for _, start, end in spans)
        util = [s.gpu_util_percent for s in inside if s.gpu_util_percent is not None]
        gmem = [s.gpu_mem_mb for s in inside if s.gpu_mem_mb is not None]
        out[name] = {
            "seconds": seconds,
            "samples": len(inside),
            "cpu_s": cpu_s,
            "cpu_mean_percent": sum(s.cpu_percent for s in inside) / len(inside) if inside else 0,
            "cpu_peak_percent": max((s.cpu_percent for s in inside), default=0.0),
            "mem_peak_mb": max((s.rss_mb for s in inside), default=0.0),
            "gpu_util_mean_percent": sum(util) / len(util) if util else None,
            "gpu_mem_peak_mb": max(gmem) if gmem else None,
        }
    return out


def _side_series(mon: dict[str, Any], side: str) -> list[Sample]:
    """The samples taken while ``side`` ran, on a time axis of that side's own run time."""
    spans = sorted((s, e) for m, s, e in mon["intervals"] if side_of(m) == side)
    out, offset = [], 0.0
    for start, end in spans:
        for s in mon["samples"]:
            if start <= s.t_s <= end:
                out.append((offset + s.t_s - start, s))
        offset += end - start
    return [
        Sample(t, s.cpu_percent, s.cpu_s, s.rss_mb, s.threads, s.processes,
               s.machine_cpu_percent, s.machine_mem_mb, s.gpu_util_percent, s.gpu_mem_mb)
        for t, s in out
    ]  # fmt: skip


def write(mon: dict[str, Any], out: Path, plots: bool = True) -> dict[str, Path]:
    """``monitor.csv`` and ``monitor.png`` in ``out``; their paths."""
    out.mkdir(parents=True, exist_ok=True)
    paths = {"monitor_csv": out / "monitor.csv"}
    with paths["monitor_csv"].open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["mode", *Sample.columns()])
        for s in mon["samples"]:
            w.writerow([_mode_at(mon["intervals"], s.t_s) or "", *s.__dict__.values()])
    if plots:
        paths["monitor_png"] = _plot(mon, out / "monitor.png")
    return paths


def _plot(mon: dict[str, Any], path: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(2, 4, figsize=(16, 6), sharey="col")
    names = ("CPU (% of one core)", "memory (MiB, PSS)", "GPU utilisation (%)", "GPU memory (MiB)")
    for row, side in enumerate((BARE, SERVERLESS)):
        series = _side_series(mon, side)
        t = [s.t_s for s in series]
        columns = (
            [s.cpu_percent for s in series],
            [s.rss_mb for s in series],
            [s.gpu_util_percent for s in series],
            [s.gpu_mem_mb for s in series],
        )
        for col, (name, ys) in enumerate(zip(names, columns, strict=True)):
            ax = axes[row][col]
            ax.set_title(f"{side}: {name}", fontsize=9)
            if any(y is not None for y in ys):
                ax.plot(t, [0.0 if y is None else y for y in ys], lw=1.0)
            else:
                ax.text(0.5, 0.5, "no GPU sampled", ha="center", va="center",
                        transform=ax.transAxes)  # fmt: skip
            ax.grid(alpha=0.3)
            if row == 1:
                ax.set_xlabel("run time of this side's configurations (s)")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def markdown(mon: dict[str, Any], summary: dict[str, dict[str, float | None]]) -> str:
    """The report's section."""

    def num(v: float | None, fmt: str = ".1f") -> str:
        return "n/a" if v is None else format(v, fmt)

    lines = [
        "## Resources over time: bare metal and serverless (`--monitor`)",
        "",
        f"One sampler over the study's process tree every {mon['interval_s']:g} s; each sample "
        "is counted for the mode that ran at its time. The sampler itself used "
        f"{100 * mon['cost_fraction']:.2f}% of one core. GPUs sampled: {mon['gpus_sampled']}.",
        "",
        "![bare metal and serverless over time](monitor.png)",
        "",
        "| side / mode | seconds | CPU-s | CPU mean % | CPU peak % | peak memory MiB "
        "| GPU util mean % | GPU memory peak MiB |",
        "|---|---|---|---|---|---|---|---|",
    ]
    order = [BARE, SERVERLESS, *sorted(k for k in summary if k not in (BARE, SERVERLESS))]
    for name in order:
        if name not in summary:
            continue
        r = summary[name]
        label = f"**{name}**" if name in (BARE, SERVERLESS) else name
        lines.append(
            f"| {label} | {num(r['seconds'], '.2f')} | {num(r['cpu_s'], '.2f')} "
            f"| {num(r['cpu_mean_percent'])} "
            f"| {num(r['cpu_peak_percent'])} | {num(r['mem_peak_mb'], '.0f')} "
            f"| {num(r['gpu_util_mean_percent'])} | {num(r['gpu_mem_peak_mb'], '.0f')} |"
        )
    return "\n".join(lines) + "\n"
