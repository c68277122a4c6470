"""Where a call runs on this machine: pure functions of the free cores, GPUs and memory."""

from __future__ import annotations

from dataclasses import dataclass

from ..._resources import Resources

EPS = 1e-9


@dataclass(frozen=True)
class Placement:
    cpus: tuple[int, ...]
    gpus: tuple[int, ...]
    gpu_share: float  # per device in ``gpus``: 1.0 for whole devices


def choose_gpus(req: Resources, gpu_free: dict[int, float]) -> tuple[tuple[int, ...], float] | None:
    """Devices for ``req``: whole devices wholly free, or one device with room for a share.

    A share goes to the fullest device that still fits it, so whole devices stay free.
    """
    if req.gpus == 0:
        return (), 0.0
    if req.gpus >= 1:
        free = [d for d, f in sorted(gpu_free.items()) if f >= 1.0 - EPS]
        if len(free) < req.whole_gpus:
            return None
        return tuple(free[: req.whole_gpus]), 1.0
    fits = [(f, d) for d, f in gpu_free.items() if f + EPS >= req.gpu_share]
    if not fits:
        return None
    return (min(fits)[1],), req.gpu_share


def choose_cpus(n: int, free: set[int], prefer: tuple[int, ...] = ()) -> tuple[int, ...] | None:
    """``n`` free cores; the ``prefer``red set (a worker's current pinning) when it fits."""
    if len(free) < n:
        return None
    if len(prefer) == n and free.issuperset(prefer):
        return prefer
    return tuple(sorted(free)[:n])


def place(
    req: Resources,
    free_cpus: set[int],
    gpu_free: dict[int, float],
    free_memory_mb: int,
    prefer_cpus: tuple[int, ...] = (),
) -> Placement | None:
    """A placement for ``req`` on the free resources, or None when it must wait."""
    if req.memory_mb is not None and req.memory_mb > free_memory_mb:
        return None
    gpus = choose_gpus(req, gpu_free)
    if gpus is None:
        return None
    cpus = choose_cpus(req.cpus, free_cpus, prefer_cpus)
    if cpus is None:
        return None
    return Placement(cpus, gpus[0], gpus[1])


def impossible(req: Resources, cpus: int, gpus: int, memory_mb: int) -> str | None:
    """Why ``req`` can never run on a machine of this size, or None."""
    if req.cpus > cpus:
        return f"requested cpus={req.cpus} but this pool has {cpus} core(s)"
    if req.gpus > 0 and gpus == 0:
        return f"requested gpus={req.gpus} but no GPU is visible to this pool"
    if req.whole_gpus > gpus:
        return f"requested gpus={req.gpus} but this pool has {gpus} GPU(s)"
    if req.memory_mb is not None and req.memory_mb > memory_mb:
        return f"requested memory_mb={req.memory_mb} but this pool has {memory_mb} MB"
    return None
