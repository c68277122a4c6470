"""What one call did with its GPUs, measured in the process that runs it.

- **Peak GPU memory**: PyTorch's caching allocator's peak of reserved memory over the call,
  summed over the devices the process sees, when the call used torch on CUDA (its peak
  statistics are reset at the call's start; reserved is what the driver and ``nvidia-smi``
  count for the process); else NVML's per-process used memory at the call's end.
- **Mean GPU utilisation**: NVML's per-process utilisation samples (the driver keeps them for
  each process, at its own sampling period) over the call, averaged over the call's devices;
  None when the driver gave none (a call shorter than its sampling period, or a GPU that
  does not report per-process figures).

Everything here is best effort: a missing driver, library or permission gives None, never an
error in the call. NVML is initialised once per process, the first time a call holding a GPU
is measured.
"""

from __future__ import annotations

import contextlib
import os
import sys
import time
from typing import Any

_nvml: list[Any] = []  # [pynvml, handles of the devices this process sees], or [None, []]


def _handles() -> tuple[Any, list[Any]]:
    if not _nvml:
        try:
            import pynvml

            pynvml.nvmlInit()
            handles = []
            for token in os.environ.get("CUDA_VISIBLE_DEVICES", "").split(","):
                token = token.strip()
                if not token:
                    continue
                if token.isdigit():
                    handles.append(pynvml.nvmlDeviceGetHandleByIndex(int(token)))
                else:  # a UUID (GPU-..., MIG-...)
                    handles.append(pynvml.nvmlDeviceGetHandleByUUID(token))
            _nvml.extend([pynvml, handles])
        except Exception:
            _nvml[:] = [None, []]
    return _nvml[0], _nvml[1]


def _torch_cuda() -> Any:
    torch = sys.modules.get("torch")
    if torch is None:
        return None
    with contextlib.suppress(Exception):
        if torch.cuda.is_initialized():
            return torch.cuda
    return None


class GpuMeter:
    """``start()`` before the call's function, ``stop()`` after it: (mean utilisation %, peak
    memory MiB), either None when not known."""

    def __init__(self) -> None:
        self._t0_us = 0

    def start(self) -> None:
        self._t0_us = time.time_ns() // 1000
        cuda = _torch_cuda()
        if cuda is not None:
            with contextlib.suppress(Exception):
                for d in range(cuda.device_count()):
                    cuda.reset_peak_memory_stats(d)

    def stop(self) -> tuple[float | None, float | None]:
        nv, handles = _handles()
        pid = os.getpid()
        utils: list[float] = []
        nvml_mem = 0.0
        for h in handles:
            with contextlib.suppress(Exception):
                samples = nv.nvmlDeviceGetProcessUtilization(h, self._t0_us)
                mine = [s.smUtil for s in samples if s.pid == pid and s.timeStamp >= self._t0_us]
                if mine:
                    utils.append(sum(mine) / len(mine))
            with contextlib.suppress(Exception):
                procs = nv.nvmlDeviceGetComputeRunningProcesses(h)
                nvml_mem += sum((p.usedGpuMemory or 0) for p in procs if p.pid == pid) / 2**20
        mem: float | None = nvml_mem if handles and nvml_mem > 0 else None
        cuda = _torch_cuda()
        if cuda is not None:
            with contextlib.suppress(Exception):
                peak = sum(cuda.max_memory_reserved(d) for d in range(cuda.device_count()))
                if peak > 0:
                    mem = peak / 2**20
        return (sum(utils) / len(utils) if utils else None), mem


__all__ = ["GpuMeter"]
