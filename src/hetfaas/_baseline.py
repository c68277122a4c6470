"""The bare-metal baseline: the same function in the caller's process, same thread count."""

from __future__ import annotations

import contextlib
import os
import sys
import time
from collections.abc import Callable, Iterator
from typing import Any

from ._invocation import Timings


@contextlib.contextmanager
def pinned(cpus: int, pin: bool = True) -> Iterator[tuple[int, ...]]:
    """Run the block on ``cpus`` cores of this process with as many torch threads."""
    before = os.sched_getaffinity(0)
    cores = tuple(sorted(before)[:cpus])
    torch = sys.modules.get("torch")
    threads = torch.get_num_threads() if torch is not None else None
    try:
        if pin:
            os.sched_setaffinity(0, cores)
        if torch is not None:
            torch.set_num_threads(cpus)
        yield cores
    finally:
        if pin:
            os.sched_setaffinity(0, before)
        if torch is not None and threads is not None:
            torch.set_num_threads(threads)


def bare_metal(
    fn: Callable[..., Any], /, *args: Any, cpus: int = 1, pin: bool = True, **kwargs: Any
) -> tuple[Any, Timings]:
    """Run ``fn`` here, on ``cpus`` pinned cores with ``cpus`` torch threads.

    Returns the result and a :class:`Timings` whose only part is ``compute_us``: the baseline
    the serverless calls are compared with.
    """
    with pinned(cpus, pin) as cores:
        t0 = time.perf_counter_ns()
        value = fn(*args, **kwargs)
        t1 = time.perf_counter_ns()
    us = (t1 - t0) / 1e3
    return value, Timings(
        compute_us=us, total_us=us, submitted_ns=t0, started_ns=t0, finished_ns=t1,
        completed_ns=t1, pid=os.getpid(), cpus=cores, backend="bare-metal",
    )  # fmt: skip
