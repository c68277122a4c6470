"""A monitored run written down: the samples as CSV, the four plots of seed 002 (CPU, memory,
GPU, GPU memory) as PNG, and a summary with jobstats-style advice. :func:`monitor_command`
runs any command bare metal under the sampler (``hetfaas monitor -- CMD``)."""

from __future__ import annotations

import csv
import os
import resource
import subprocess
import time
from collections.abc import Sequence
from dataclasses import asdict
from pathlib import Path

from .sampler import Sample, Sampler
from .summary import Usage, usage_of


def write_csv(samples: Sequence[Sample], path: Path) -> Path:
    with open(path, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=Sample.columns())
        w.writeheader()
        for s in samples:
            w.writerow({k: ("" if v is None else v) for k, v in asdict(s).items()})
    return path


def read_csv(path: Path) -> list[Sample]:
    out = []
    types = {"threads": int, "processes": int}
    with open(path) as f:
        for row in csv.DictReader(f):
            values = {}
            for k, v in row.items():
                if v == "":
                    values[k] = None
                else:
                    values[k] = types.get(k, float)(v)
            out.append(Sample(**values))
    return out


def plot(samples: Sequence[Sample], path: Path, title: str = "") -> Path:
    """Four panels over time: CPU (% of one core), memory (MiB), GPU utilisation (%), GPU
    memory (MiB); a GPU panel says so when no GPU was sampled."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    t = [s.t_s for s in samples]
    fig, axes = plt.subplots(2, 2, figsize=(10, 6), sharex=True)
    panels = [
        ("CPU (% of one core)", [s.cpu_percent for s in samples]),
        ("memory (MiB; PSS for several processes)", [s.rss_mb for s in samples]),
        ("GPU utilisation (%)", [s.gpu_util_percent for s in samples]),
        ("GPU memory (MiB)", [s.gpu_mem_mb for s in samples]),
    ]
    for ax, (label, ys) in zip(axes.flat, panels, strict=True):
        ax.set_title(label, fontsize=10)
        if any(y is not None for y in ys):
            ax.plot(t, [0.0 if y is None else y for y in ys], lw=1.2)
        else:
            ax.text(0.5, 0.5, "no GPU sampled", ha="center", va="center", transform=ax.transAxes)
        ax.grid(alpha=0.3)
    for ax in axes[1]:
        ax.set_xlabel("time (s)")
    if title:
        fig.suptitle(title, fontsize=11)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def summary_text(usage: Usage, sampler: Sampler, command: str, returncode: int | None) -> str:
    lines = [f"# hetfaas monitor: {command}", ""]
    if returncode is not None:
        lines.append(f"- exit status: {returncode}")
    lines += [
        f"- wall time: {usage.wall_s:.2f} s; CPU time: {usage.cpu_s:.2f} s; "
        f"CPU efficiency: {usage.cpu_efficiency:.1%} of {usage.cpus} core(s)",
        f"- peak memory (RSS of the process tree): {usage.peak_rss_mb:.1f} MiB",
    ]
    if usage.memory_efficiency is not None:
        lines.append(f"- memory efficiency: {usage.memory_efficiency:.1%}")
    if usage.gpus:
        util = "n/a" if usage.gpu_util_percent is None else f"{usage.gpu_util_percent:.0f}%"
        lines.append(f"- GPUs: {usage.gpus}, mean utilisation {util}")
    lines += [
        f"- samples: {len(sampler.samples)} at {sampler.interval_s:g} s; monitor cost: "
        f"{sampler.cost_fraction:.2%} of one core ({sampler.cost_cpu_s:.3f} CPU-s in "
        f"{sampler.cost_wall_s:.1f} s)",
        "",
        "## Advice",
        "",
        *[f"- {a}" for a in usage.advice],
    ]
    return "\n".join(lines) + "\n"


def monitor_command(
    command: Sequence[str],
    interval_s: float = 1.0,
    out: Path | None = None,
    cpus: int | None = None,
    memory_mb: float | None = None,
) -> tuple[int, Usage, Sampler]:
    """Run ``command`` bare metal under the sampler; write ``samples.csv``, ``usage.png`` and
    ``summary.md`` to ``out`` (when given). CPU time and the largest process's peak RSS come
    from the OS once the command has ended (``getrusage`` of the reaped children; the peak only
    when it rose during the run, as it is the largest child this process ever reaped)."""
    cpus = cpus or len(os.sched_getaffinity(0))
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    t0 = time.monotonic()
    proc = subprocess.Popen(list(command))
    sampler = Sampler(proc.pid, interval_s).start()
    try:
        code = proc.wait()
    except BaseException:
        proc.kill()
        proc.wait()
        raise
    finally:
        sampler.stop()
    wall = time.monotonic() - t0
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu_s = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    # ru_maxrss of the children is the largest child this process ever reaped: the command's
    # only when it rose during the run
    reaped_peak = after.ru_maxrss / 1024 if after.ru_maxrss > before.ru_maxrss else None
    usage = usage_of(sampler.samples, cpus, memory_mb, sampler.gpu_count, cpu_s=cpu_s,
                     wall_s=wall, peak_rss_mb=reaped_peak)  # fmt: skip
    if out is not None:
        out.mkdir(parents=True, exist_ok=True)
        write_csv(sampler.samples, out / "samples.csv")
        text = " ".join(command)
        plot(sampler.samples, out / "usage.png", title=text[:80])
        (out / "summary.md").write_text(summary_text(usage, sampler, text, code))
    return code, usage, sampler


__all__ = ["monitor_command", "plot", "read_csv", "summary_text", "write_csv"]
