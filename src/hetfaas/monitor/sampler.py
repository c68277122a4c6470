"""What a process tree uses over time: CPU, memory, threads, GPUs, sampled at an interval.

:class:`Sampler` runs one thread that samples, every ``interval_s`` (default 1 s, down to
50 ms), a root process and all its descendants with psutil -- CPU time, RSS, threads -- the
machine's CPU and memory, and, where NVML answers (``nvidia-ml-py``), each GPU's utilisation
and the GPU memory of the tree's processes (the device's used memory where the driver does not
report per-process figures). Memory is the tree's RSS, or, when the tree has more than one
process (forked children share pages, which RSS would count in each), the sum of their
proportional set sizes (PSS, from ``/proc/<pid>/smaps_rollup``: a few ms per process, so only
then). CPU time is cumulative over every process ever seen in the tree,
so processes that come and go between samples still count up to their last sample. The
sampler measures its own cost: the CPU time of its thread against the wall time it ran.
"""

from __future__ import annotations

import contextlib
import os
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, fields
from typing import Any

import psutil

from ..exceptions import ConfigurationError

MIN_INTERVAL_S = 0.05


@dataclass(frozen=True)
class Sample:
    """One sample. CPU in percent of one core (200 = two cores busy); memory in MiB (RSS, or
    PSS for a tree of several processes)."""

    t_s: float  # seconds since the sampler started
    cpu_percent: float
    cpu_s: float  # cumulative CPU seconds of the tree
    rss_mb: float
    threads: int
    processes: int
    machine_cpu_percent: float  # 0-100, all cores
    machine_mem_mb: float  # used
    gpu_util_percent: float | None = None  # mean over the GPUs sampled
    gpu_mem_mb: float | None = None

    @classmethod
    def columns(cls) -> list[str]:
        return [f.name for f in fields(cls)]


class _Gpus:
    """NVML, if it answers here; else nothing (no driver, no GPU, no nvidia-ml-py)."""

    def __init__(self) -> None:
        self.nvml: Any = None
        self.handles: list[Any] = []
        try:
            import pynvml

            pynvml.nvmlInit()
            count = pynvml.nvmlDeviceGetCount()
            self.handles = [pynvml.nvmlDeviceGetHandleByIndex(i) for i in range(count)]
            self.nvml = pynvml
        except Exception:
            self.handles = []

    def sample(self, pids: set[int]) -> tuple[float | None, float | None]:
        if not self.handles:
            return None, None
        nv = self.nvml
        utils, mem = [], 0.0
        for h in self.handles:
            with contextlib.suppress(Exception):
                utils.append(float(nv.nvmlDeviceGetUtilizationRates(h).gpu))
            try:
                procs = nv.nvmlDeviceGetComputeRunningProcesses(h)
                mem += sum((p.usedGpuMemory or 0) for p in procs if p.pid in pids) / 2**20
            except Exception:  # no per-process figures: the device's used memory
                with contextlib.suppress(Exception):
                    mem += nv.nvmlDeviceGetMemoryInfo(h).used / 2**20
        return (sum(utils) / len(utils) if utils else None), mem

    @property
    def count(self) -> int:
        return len(self.handles)

    def close(self) -> None:
        if self.nvml is not None:
            with contextlib.suppress(Exception):
                self.nvml.nvmlShutdown()


def _pss_mb(pid: int) -> float | None:
    """The process's proportional set size (its share of pages it shares), Linux; ~ms."""
    try:
        with open(f"/proc/{pid}/smaps_rollup") as f:
            for line in f:
                if line.startswith("Pss:"):
                    return int(line.split()[1]) / 1024
    except (OSError, ValueError):
        pass
    return None


class Sampler:
    """Sample the process tree of ``pid`` (default: this process) every ``interval_s``.

    ``with Sampler(pid, 0.1) as s: ...`` then ``s.samples``; or ``start()``/``stop()``.
    ``pids``: a callable giving the roots to sample instead of one fixed pid (a pool's
    workers). ``cost`` is the sampler's own CPU seconds and wall seconds."""

    def __init__(
        self,
        pid: int | None = None,
        interval_s: float = 1.0,
        gpus: bool = True,
        pids: Callable[[], list[int]] | None = None,
    ) -> None:
        if not interval_s >= MIN_INTERVAL_S:
            raise ConfigurationError(
                f"interval_s={interval_s}: the sampler samples at most every {MIN_INTERVAL_S} s"
            )
        self.interval_s = float(interval_s)
        self._roots = pids if pids is not None else (lambda: [pid or os.getpid()])
        self._gpus = _Gpus() if gpus else None
        self.samples: list[Sample] = []
        self._procs: dict[int, psutil.Process] = {}
        self._cpu: dict[int, float] = {}  # last CPU seconds seen per process
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._t0 = 0.0
        self._last = (0.0, 0.0)  # (t, cumulative cpu) of the previous sample
        self.cost_cpu_s = 0.0
        self.cost_wall_s = 0.0
        psutil.cpu_percent(None)  # the machine's CPU % counts from here

    @property
    def gpu_count(self) -> int:
        return self._gpus.count if self._gpus is not None else 0

    def _tree(self) -> list[psutil.Process]:
        out = []
        for root in self._roots():
            try:
                proc = self._procs.get(root) or psutil.Process(root)
                family = [proc, *proc.children(recursive=True)]
            except psutil.Error:
                continue
            for p in family:
                out.append(self._procs.setdefault(p.pid, p))
        return out

    def sample_once(self) -> Sample:
        """Take one sample now (the thread calls this every interval)."""
        now = time.monotonic() - self._t0
        rss = 0.0
        threads = 0
        alive: set[int] = set()
        tree = self._tree()
        shared = len(tree) > 1  # forked processes share pages: RSS would count them twice
        for p in tree:
            try:
                with p.oneshot():
                    t = p.cpu_times()
                    self._cpu[p.pid] = t.user + t.system
                    rss += (_pss_mb(p.pid) if shared else None) or p.memory_info().rss / 2**20
                    threads += p.num_threads()
                alive.add(p.pid)
            except psutil.Error:
                self._procs.pop(p.pid, None)
        cpu_s = sum(self._cpu.values())
        t_prev, cpu_prev = self._last
        dt = now - t_prev
        cpu_pct = 100.0 * (cpu_s - cpu_prev) / dt if dt > 0 and self.samples else 0.0
        self._last = (now, cpu_s)
        gpu_util, gpu_mem = self._gpus.sample(alive) if self._gpus is not None else (None, None)
        vm = psutil.virtual_memory()
        sample = Sample(round(now, 4), round(max(0.0, cpu_pct), 2), round(cpu_s, 4),
                        round(rss, 2), threads, len(alive), psutil.cpu_percent(None),
                        round((vm.total - vm.available) / 2**20, 1), gpu_util,
                        None if gpu_mem is None else round(gpu_mem, 1))  # fmt: skip
        self.samples.append(sample)
        return sample

    def _run(self) -> None:
        c0 = time.thread_time()
        w0 = time.monotonic()
        try:
            while True:
                self.sample_once()
                if self._stop.wait(self.interval_s):
                    break
            self.sample_once()  # the last state, at stop
        finally:
            self.cost_cpu_s = time.thread_time() - c0
            self.cost_wall_s = time.monotonic() - w0

    def start(self) -> Sampler:
        if self._thread is not None:
            raise ConfigurationError("this sampler is already running")
        self._t0 = time.monotonic()
        self._thread = threading.Thread(target=self._run, name="hetfaas-monitor", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> list[Sample]:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        if self._gpus is not None:
            self._gpus.close()
        return self.samples

    @property
    def cost_fraction(self) -> float:
        """The sampler's CPU seconds per wall second (0.01 = 1% of one core)."""
        return self.cost_cpu_s / self.cost_wall_s if self.cost_wall_s else 0.0

    def __enter__(self) -> Sampler:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


__all__ = ["MIN_INTERVAL_S", "Sample", "Sampler"]
