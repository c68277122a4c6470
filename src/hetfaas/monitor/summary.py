"""Efficiencies as HPC users know them (Slurm's ``seff``, Princeton's ``jobstats``), and the
advice they give: pure functions of samples and of what was requested.

- CPU efficiency = CPU time / (wall time x cores requested);
- memory efficiency = peak RSS / memory requested;
- GPU utilisation = mean utilisation over the run; GPU memory = its peak.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from .sampler import Sample

LOW = 0.5  # below this efficiency, advise asking for less
HIGH_MEM = 0.9  # above this share of the memory requested, warn of the OOM killer


@dataclass(frozen=True)
class Usage:
    """What a run (a command, or a call) used, against what it requested."""

    wall_s: float
    cpu_s: float
    cpus: int
    peak_rss_mb: float
    memory_mb: float | None = None  # requested (None: nothing was)
    gpus: int = 0
    gpu_util_percent: float | None = None  # mean
    gpu_peak_mem_mb: float | None = None
    advice: tuple[str, ...] = field(default=())

    @property
    def cpu_efficiency(self) -> float:
        denom = self.wall_s * max(1, self.cpus)
        return self.cpu_s / denom if denom > 0 else 0.0

    @property
    def memory_efficiency(self) -> float | None:
        return self.peak_rss_mb / self.memory_mb if self.memory_mb else None


def usage_of(
    samples: Sequence[Sample],
    cpus: int,
    memory_mb: float | None = None,
    gpus: int = 0,
    cpu_s: float | None = None,
    wall_s: float | None = None,
    peak_rss_mb: float | None = None,
) -> Usage:
    """The run's usage from its samples; exact ``cpu_s``, ``wall_s`` and ``peak_rss_mb``
    (from the OS, when the run is over) win over the sampled ones."""
    wall = wall_s if wall_s is not None else (samples[-1].t_s - samples[0].t_s if samples else 0.0)
    cpu = cpu_s if cpu_s is not None else (samples[-1].cpu_s if samples else 0.0)
    peak = max([s.rss_mb for s in samples] + [peak_rss_mb or 0.0])
    utils = [s.gpu_util_percent for s in samples if s.gpu_util_percent is not None]
    mems = [s.gpu_mem_mb for s in samples if s.gpu_mem_mb is not None]
    base = Usage(wall, cpu, cpus, peak, memory_mb, gpus,
                 sum(utils) / len(utils) if utils else None,
                 max(mems) if mems else None)  # fmt: skip
    return Usage(**{**base.__dict__, "advice": tuple(advise(base))})


def usage_of_call(raw: Any) -> Usage:
    """A call's :class:`Usage` from a backend's ``CallUsage``."""
    base = Usage(raw.wall_s, raw.cpu_s, raw.cpus, raw.peak_rss_mb, raw.memory_mb, raw.gpus,
                 raw.gpu_util_percent, raw.gpu_peak_mem_mb)  # fmt: skip
    return Usage(**{**base.__dict__, "advice": tuple(advise(base))})


def advise(u: Usage) -> list[str]:
    """jobstats-style lines: what was used of what was asked, and what to ask for next."""
    out = []
    eff = u.cpu_efficiency
    if u.wall_s > 0:
        line = f"CPU: used {eff:.0%} of {u.cpus} core(s) ({u.cpu_s:.1f} CPU-s in {u.wall_s:.1f} s)"
        if u.cpus > 1 and eff < LOW:
            need = max(1, math.ceil(u.cpu_s / u.wall_s))
            line += f"; request {need} core(s) instead"
        out.append(line)
    mem_eff = u.memory_efficiency
    if mem_eff is not None and u.memory_mb:
        line = (f"memory: used {mem_eff:.0%} of the requested memory (peak "
                f"{_size(u.peak_rss_mb)} of {_size(u.memory_mb)})")  # fmt: skip
        if mem_eff < LOW:
            line += f"; request about {_size(max(u.peak_rss_mb * 1.25, 1.0))}"
        elif mem_eff > HIGH_MEM:
            line += "; close to the limit: request more to stay clear of the OOM killer"
        out.append(line)
    else:
        out.append(f"memory: peak {_size(u.peak_rss_mb)} (nothing requested)")
    if u.gpus:
        if u.gpu_util_percent is None:
            out.append(f"GPU: {u.gpus} requested, no utilisation could be read")
        else:
            line = f"GPU: utilisation averaged {u.gpu_util_percent:.0f}%"
            if u.gpu_util_percent < 100 * LOW:
                line += "; the GPUs waited: feed them faster, or share them (gpus=0.5)"
            out.append(line)
        if u.gpu_peak_mem_mb is not None:
            out.append(f"GPU memory: peak {_size(u.gpu_peak_mem_mb)}")
    return out


def _size(mb: float) -> str:
    return f"{mb / 1024:.2f} GiB" if mb >= 1024 else f"{mb:.0f} MiB"


__all__ = ["Usage", "advise", "usage_of", "usage_of_call"]
