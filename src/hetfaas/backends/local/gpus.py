"""Which GPUs this machine shows, without importing torch when it is not loaded yet."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys

from ...exceptions import ConfigurationError


def _nvidia_smi(query: str) -> list[str]:
    exe = shutil.which("nvidia-smi")
    if exe is None:
        return []
    try:
        out = subprocess.run(
            [exe, f"--query-gpu={query}", "--format=csv,noheader"],
            capture_output=True, text=True, timeout=10, check=True,
        ).stdout  # fmt: skip
    except (OSError, subprocess.SubprocessError):
        return []
    return [line.strip() for line in out.splitlines() if line.strip()]


def _count_devices() -> int:
    torch = sys.modules.get("torch")
    if torch is not None:
        try:
            return int(torch.cuda.device_count())
        except Exception:
            return 0
    names = _nvidia_smi("name")
    if names:
        return len(names)
    proc = "/proc/driver/nvidia/gpus"
    return len(os.listdir(proc)) if os.path.isdir(proc) else 0


def detect_gpus(
    gpus: int | list[int] | None,
) -> tuple[tuple[int, ...], tuple[str, ...], dict[int, str]]:
    """(device indices, names, CUDA_VISIBLE_DEVICES token per index) for the pool."""
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    if visible is not None:
        tokens = [t.strip() for t in visible.split(",") if t.strip() and t.strip() != "-1"]
    else:
        tokens = [str(i) for i in range(_count_devices())]
    ids = list(range(len(tokens)))
    if isinstance(gpus, int):
        if not 0 <= gpus <= len(ids):
            raise ConfigurationError(f"gpus={gpus}: this machine shows {len(ids)} GPU(s)")
        ids = ids[:gpus]
    elif gpus is not None:
        if not set(gpus) <= set(ids):
            raise ConfigurationError(f"gpus={gpus} must be a subset of {ids}")
        ids = sorted(set(gpus))
    names: tuple[str, ...] = ()
    if ids:
        all_names = _nvidia_smi("name")
        names = tuple(all_names[i] if i < len(all_names) else f"gpu{i}" for i in ids)
    return tuple(ids), names, {i: tokens[i] for i in ids}
