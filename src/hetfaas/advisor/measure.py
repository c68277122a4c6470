"""The advisor's I/O edge: every device option timed through a real Executor or in-process.

A serverless option is timed on the caller's clock from the first ``submit`` to the
(combined) result in hand, so its wall time includes the serverless overhead: shipping the
arguments, the hops, queueing, pickling the result and, for a split, splitting and joining.
The function's own time comes from the runtime's stamps (``Future.timings.compute_us``); the
cores and GPUs an option held are those the runtime says each call was pinned to
(``Future.timings.cpus``/``gpus``). A bare-metal option is :func:`hetfaas.bare_metal` in this
process, with the BLAS/OpenMP pools sized to the same cores (threadpoolctl) as a worker does.

On a GPU the function runs wrapped in :class:`OnDevice`: torch tensor arguments are copied to
the device, the result back, and the device synchronised, all inside ``compute_us``.
"""

from __future__ import annotations

import contextlib
import sys
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from .._baseline import bare_metal
from .._resources import Resources
from ..exceptions import ConfigurationError
from .decide import FAILED, MEASURED, NOT_MEASURED, Cell, Option, Trial
from .inputs import Combiner, Splitter, is_tensor, nbytes, same_result, scaled, shapes_of


def cuda_devices() -> int:
    """CUDA devices torch can use in this process (0 when none or no CUDA build). Run inside
    a call holding a GPU, it says whether that GPU is usable there."""
    try:
        import torch
    except ImportError:
        return 0
    return int(torch.cuda.device_count()) if torch.cuda.is_available() else 0


def _to(value: Any, device: Any) -> Any:
    if is_tensor(value):
        return value.to(device)
    if isinstance(value, tuple):
        return tuple(_to(v, device) for v in value)
    if isinstance(value, list):
        return [_to(v, device) for v in value]
    if isinstance(value, dict):
        return {k: _to(v, device) for k, v in value.items()}
    return value


class OnDevice:
    """``fn`` on a CUDA device: tensor arguments copied there, the device synchronised, tensor
    results copied back to the CPU (the copies count as the function's time)."""

    def __init__(self, fn: Callable[..., Any], device: str = "cuda") -> None:
        self.fn = fn
        self.device = device
        self.__name__ = f"on_{device}({getattr(fn, '__name__', 'fn')})"

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        import torch

        dev = torch.device(self.device)
        out = self.fn(*_to(args, dev), **_to(kwargs, dev))
        torch.cuda.synchronize(dev)
        return _to(out, "cpu")


@dataclass(frozen=True, slots=True)
class Runner:
    """How one :class:`Option` is run: as serverless calls of ``per_call_cpus`` cores each
    (split into ``option.calls`` parts when ``split``), or bare metal in this process when
    the option is not serverless; on a GPU when ``gpu``."""

    option: Option
    per_call_cpus: int
    gpu: bool = False
    split: bool = False

    @property
    def serverless(self) -> bool:
        return self.option.serverless


@dataclass(frozen=True, slots=True)
class Run:
    """One run of a runner: the trial, the result, and the longest cold start among its
    calls (a worker started or the function loaded for it)."""

    trial: Trial
    value: Any
    cold_start_s: float


def _held(timings: Sequence[Any], field: str, asked: int) -> int:
    got = [len(getattr(t, field)) for t in timings]
    # an engine that does not say which devices a call had: count what was asked for
    return sum(g if g else asked for g in got)


def serverless_run(
    ex: Any,
    runner: Runner,
    fn: Callable[..., Any],
    args: tuple[Any, ...],
    kwargs: Mapping[str, Any],
    split: Splitter,
    combine: Combiner,
    timeout_s: float | None,
) -> Run:
    """One timed run of a serverless option through executor ``ex``."""
    gpus = 1 if runner.gpu else 0
    view = ex.options(
        resources=Resources(cpus=runner.per_call_cpus, gpus=gpus, timeout_s=timeout_s)
    )
    target = OnDevice(fn) if runner.gpu else fn
    if runner.split:
        t0 = time.perf_counter_ns()
        parts = split(args, runner.option.calls)
        with view.batch():
            futs = [view.submit(target, *part, **kwargs) for part in parts]
        value = combine([f.result() for f in futs])
        t1 = time.perf_counter_ns()
    else:
        t0 = time.perf_counter_ns()
        fut = view.submit(target, *args, **kwargs)
        value = fut.result()
        t1 = time.perf_counter_ns()
        futs = [fut]
    timings = [f.timings for f in futs]
    computes = [t.compute_us / 1e6 for t in timings]
    trial = Trial(
        wall_s=(t1 - t0) / 1e9,
        compute_s=max(computes),
        cpus=_held(timings, "cpus", runner.per_call_cpus),
        gpus=_held(timings, "gpus", gpus) if gpus else 0,
        calls=len(futs),
        compute_total_s=sum(computes),
    )
    return Run(trial, value, max(t.cold_start_us for t in timings) / 1e6)


@contextlib.contextmanager
def bare_threads(cpus: int) -> Iterator[None]:
    """This process's thread pools (torch, BLAS, OpenMP) sized to ``cpus`` for a block of
    bare-metal runs, restored after. Sized once per block, outside the timed runs: resizing a
    pool costs milliseconds, which a worker pays once per call size, not per call."""
    from threadpoolctl import threadpool_limits

    torch = sys.modules.get("torch")
    before = torch.get_num_threads() if torch is not None else None
    try:
        if torch is not None:
            torch.set_num_threads(cpus)
        with threadpool_limits(limits=cpus):
            yield
    finally:
        if torch is not None and before is not None:
            torch.set_num_threads(before)


def bare_run(
    runner: Runner, fn: Callable[..., Any], args: tuple[Any, ...], kwargs: Mapping[str, Any]
) -> Run:
    """One timed run of a bare-metal option in this process (inside :func:`bare_threads`)."""
    cpus = runner.per_call_cpus
    target = OnDevice(fn) if runner.gpu else fn
    t0 = time.perf_counter_ns()
    value, timings = bare_metal(target, *args, cpus=cpus, **kwargs)
    t1 = time.perf_counter_ns()
    trial = Trial(
        wall_s=(t1 - t0) / 1e9,
        compute_s=timings.compute_us / 1e6,
        cpus=len(timings.cpus) or cpus,
        gpus=1 if runner.gpu else 0,
        calls=1,
        compute_total_s=timings.compute_us / 1e6,
    )
    return Run(trial, value, 0.0)


@dataclass
class Sweep:
    """What :func:`sweep` measured: a cell per option and size, each option's first (cold)
    run, and per size the arguments' shapes and bytes."""

    cells: list[Cell]
    cold: dict[str, dict[str, float]]
    inputs: dict[int, tuple[tuple[tuple[int, ...] | None, ...], int]]


_NO_REFERENCE = object()
"""The reference run has not happened yet (None is a result a function may return)."""


def _error(exc: BaseException) -> str:
    text = f"{type(exc).__name__}: {exc}".strip()
    first = text.splitlines()[0] if text else type(exc).__name__
    return first[:200]


SETTLE_S = 0.2
"""Pause before each option's runs. BLAS and OpenMP pools keep their threads spinning for a
while after work (OpenBLAS for about 2**28 cycles, ~0.1 s): measured right after another
option, an option shares its cores with the previous option's spinning threads and reads
up to 100x slower at small sizes. The pause lets them go to sleep."""


def sweep(
    ex: Any,
    runners: Sequence[Runner],
    fn: Callable[..., Any],
    args: tuple[Any, ...],
    kwargs: Mapping[str, Any],
    batched: Sequence[int],
    sizes: Sequence[int],
    *,
    split: Splitter,
    combine: Combiner,
    repeats: int,
    warmup: int,
    timeout_s: float | None,
    settle_s: float = SETTLE_S,
    log: Callable[[str], None] = lambda _msg: None,
) -> Sweep:
    """Measure every runner at every size, sizes ascending. Per size and runner: a pause of
    ``settle_s``, ``warmup`` untimed runs (the first result is checked against the first
    runner's, which must be the in-process reference), then ``repeats`` timed runs back to
    back (an option's steady state, as a stream of calls would see it). A runner that raises
    is a failed cell at that size; the reference raising is the function failing: raised."""
    cells: list[Cell] = []
    cold: dict[str, dict[str, float]] = {}
    inputs: dict[int, tuple[tuple[tuple[int, ...] | None, ...], int]] = {}

    def once(runner: Runner, sargs: tuple[Any, ...]) -> Run:
        if runner.serverless:
            return serverless_run(ex, runner, fn, sargs, kwargs, split, combine, timeout_s)
        return bare_run(runner, fn, sargs, kwargs)

    def block(runner: Runner, size: int, sargs: tuple[Any, ...], reference: Any) -> Run:
        """The warm-up and timed runs of one runner at one size; its cell goes in ``row``."""
        pools = bare_threads(runner.per_call_cpus) if not runner.serverless else None
        with pools if pools is not None else contextlib.nullcontext():
            first = once(runner, sargs)
            first_run = {"wall_s": first.trial.wall_s, "size": size}
            cold.setdefault(runner.option.key, first_run | {"cold_start_s": first.cold_start_s})
            verified: bool | None = None
            if reference is not _NO_REFERENCE:
                verified, err = same_result(first.value, reference)
                if not verified and runner.split:
                    note = (
                        f"the joined parts differ from one call (max rel. error {err:.3g}): "
                        "the function does not split along axis 0; give split= and combine="
                    )
                    row.append(Cell(runner.option.key, size, (), NOT_MEASURED, note, False))
                    return first
                if not verified:
                    log(f"n={size}: {runner.option.key}: result differs from the reference")
            for _ in range(warmup - 1):
                once(runner, sargs)
            trials = tuple(once(runner, sargs).trial for _ in range(repeats))
        row.append(Cell(runner.option.key, size, trials, MEASURED, "", verified))
        return first

    for size in sizes:
        sargs = scaled(args, batched, size) if batched else tuple(args)
        shapes = tuple(tuple(x) if x is not None else None for x in shapes_of(sargs))
        inputs[size] = (shapes, nbytes(sargs))
        reference: Any = _NO_REFERENCE
        row: list[Cell] = []
        for index, runner in enumerate(runners):
            if settle_s > 0:
                time.sleep(settle_s)
            try:
                first = block(runner, size, sargs, reference)
            except Exception as exc:
                if index == 0:
                    name = getattr(fn, "__name__", type(fn).__name__)
                    raise ConfigurationError(
                        f"{name} raised {_error(exc)} in this process at n={size} (the "
                        "reference run): the advisor needs a function that runs on its example "
                        "arguments at every size"
                    ) from exc
                log(f"n={size}: {runner.option.key} failed: {_error(exc)}")
                row.append(Cell(runner.option.key, size, (), FAILED, _error(exc)))
                continue
            if index == 0:
                reference = first.value
        cells.extend(row)
        done = [c for c in row if c.measured]
        log(f"n={size}: " + ", ".join(f"{c.option} {c.wall.median * 1e3:.3g} ms" for c in done))
    return Sweep(cells, cold, inputs)


__all__ = [
    "SETTLE_S",
    "OnDevice",
    "Run",
    "Runner",
    "Sweep",
    "bare_run",
    "cuda_devices",
    "serverless_run",
    "sweep",
]
