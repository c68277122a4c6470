"""``hetfaas.advise(fn, *example_args)``: where should this function run? Measured."""

from __future__ import annotations

import os
import platform
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from ..exceptions import ConfigurationError
from .decide import Option, Prices, decide
from .inputs import (
    Combiner,
    Splitter,
    check_batched,
    concat_axis0,
    default_batched,
    is_tensor,
    sizes_from,
    split_axis0,
)
from .measure import SETTLE_S, Runner, cuda_devices, sweep
from .report import Advice, SizeInfo

NO_GPU = "no GPU on this machine: not measured"
DEFAULT_TIMEOUT_S = 600.0
"""Run-time limit of each call, so that a size too large for a device fails instead of
hanging the sweep."""


def plan(cpus: int, *, gpu: bool, split: bool) -> list[Runner]:
    """The options measured with ``cpus`` = N cores: the in-process reference first (bare
    metal, 1 core), one call on 1 core (the baseline), then when N > 1 a split over N calls of
    one core each (if the function splits) and one call of N cores with N threads, bare metal
    on N cores, and when ``gpu`` one call holding a GPU and bare metal on it."""
    n = cpus
    runners = [
        Runner(Option("bare-1cpu", "bare metal in this process, 1 core", 1, serverless=False), 1),
        Runner(Option("1cpu", "serverless, 1 call on 1 core", 1), 1),
    ]
    if n > 1:
        if split:
            label = f"serverless, {n} parallel calls of 1 core on axis-0 parts"
            runners.append(Runner(Option(f"{n}cpu-split", label, n, calls=n), 1, split=True))
        label = f"serverless, 1 call on {n} cores ({n} threads)"
        runners.append(Runner(Option(f"{n}cpu-threads", label, n), n))
        label = f"bare metal in this process, {n} cores ({n} threads)"
        runners.append(Runner(Option(f"bare-{n}cpu", label, n, serverless=False), n))
    if gpu:
        label = "serverless, 1 call on 1 GPU + 1 core (copies included)"
        runners.append(Runner(Option("gpu", label, 1, gpus=1), 1, gpu=True))
        label = "bare metal in this process, 1 GPU (copies included)"
        runners.append(Runner(Option("bare-gpu", label, 1, gpus=1, serverless=False), 1, True))
    return runners


def _positive_int(name: str, value: Any, least: int = 1) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < least:
        raise ConfigurationError(f"{name} must be an int >= {least}, got {value!r}")
    return value


def _gpu_state(ex: Any, want: bool | None, args: tuple[Any, ...]) -> tuple[bool, str | None]:
    """Whether to measure the GPU options, and the note saying why not."""
    if want is False:
        return False, "GPU: not measured (turned off)"
    cap = ex.capacity
    if int(cap.gpus) < 1:
        return False, NO_GPU
    if not any(is_tensor(x) for x in args):
        return False, (
            "GPU: not measured: no torch tensor argument to place on the device (a numpy "
            "function runs on the CPU; pass torch tensors)"
        )
    usable = ex.options(cpus=1, gpus=1).submit(cuda_devices).result()
    if not usable:
        return False, (
            f"GPU: {ex.backend.name} declares {cap.gpus} GPU(s) but torch sees no CUDA device "
            "in a call holding one: not measured"
        )
    return True, None


def advise(
    fn: Callable[..., Any],
    /,
    *example_args: Any,
    kwargs: Mapping[str, Any] | None = None,
    sizes: Sequence[int] | None = None,
    scales: Sequence[float] | None = None,
    batched: Sequence[int] | None = None,
    cpus: int | None = None,
    gpu: bool | None = None,
    split: Splitter | None = None,
    combine: Combiner | None = None,
    repeats: int = 5,
    warmup: int = 1,
    price_core_hour: float = 0.05,
    price_gpu_hour: float = 2.50,
    timeout_s: float | None = DEFAULT_TIMEOUT_S,
    settle_s: float = SETTLE_S,
    executor: Any = None,
    name: str | None = None,
    log: Callable[[str], None] | None = None,
) -> Advice:
    """Measure ``fn(*example_args, **kwargs)`` on 1 core, on N cores (N parallel calls on
    axis-0 parts, and one call with N threads) and on a GPU when there is one, as serverless
    calls through a real Executor with bare metal beside them, over a sweep of input sizes;
    return the times, the costs, the choice per size and the break-even sizes.

    - ``sizes``: rows along axis 0 of the batched arguments, or ``scales``: factors of the
      example's axis 0 (default 1/8, 1/4, 1/2, 1). Fewer rows are the first ones; more are
      the rows repeated.
    - ``batched``: positions of the arguments whose axis 0 is the data axis (default: every
      numpy array and torch tensor); the others go whole to every call.
    - ``split(args, n)`` / ``combine(results)``: how to cut the arguments into parts and join
      the parts' results (default: contiguous axis-0 parts, joined along axis 0). A split
      whose joined result differs from one call's is reported as not measured.
    - ``cpus``: N (default: the executor's cores, at most its workers). ``gpu=False`` skips
      the GPU; without one the advice says so and measures nothing there.
    - ``repeats`` timed runs per option and size after ``warmup`` untimed ones (the first of
      which checks the result against the in-process run).
    - Prices are per core-hour and per GPU-hour (placeholders by default: give yours).
    - ``settle_s``: pause before each option's runs, so that the thread pools of the option
      before stop spinning on the cores (see :data:`hetfaas.advisor.measure.SETTLE_S`).
    - ``executor``: an Executor to use (default: a fresh local pool, shut down after).
    - ``name``: what the report calls the function (default: its module and name).
    - ``log``: called with a line of progress per size.
    """
    if not callable(fn):
        raise ConfigurationError(f"advise() needs a callable, got {type(fn).__name__}")
    _positive_int("repeats", repeats)
    _positive_int("warmup", warmup)
    if isinstance(settle_s, bool) or not isinstance(settle_s, (int, float)) or settle_s < 0:
        raise ConfigurationError(f"settle_s must be a number >= 0, got {settle_s!r}")
    prices = Prices(price_core_hour, price_gpu_hour)
    args = tuple(example_args)
    kw = dict(kwargs or {})
    pos = check_batched(args, batched) if batched is not None else default_batched(args)
    grid = sizes_from(args, pos, sizes, scales)
    say = log or (lambda _msg: None)
    started = time.perf_counter()

    from .._executor import Executor

    own = executor is None
    ex = Executor("local") if own else executor
    try:
        cap = ex.capacity
        n = _positive_int("cpus", cpus) if cpus is not None else None
        n = n or max(1, min(int(cap.cpus), int(cap.max_workers)))
        if n > int(cap.cpus):
            raise ConfigurationError(f"cpus={n}: the executor has {cap.cpus} core(s)")
        notes: list[str] = []
        can_split = split is not None or bool(pos)
        if n == 1:
            notes.append("N CPUs: the executor has 1 core: the N-CPU options are not measured")
        elif not can_split:
            notes.append(
                f"{n}cpu-split: not measured: no batched argument to split along axis 0 "
                "(give split= and combine=)"
            )
        use_gpu, gpu_note = _gpu_state(ex, gpu, args)
        if gpu_note:
            notes.append(gpu_note)
        runners = plan(n, gpu=use_gpu, split=can_split)
        # start the workers now: their start is a cold start, not the function's time
        ex.warmup(n)
        if use_gpu:
            ex.warmup(1, ex.resources.replace(gpus=1))
        say(f"advise {name or _name(fn)}: sizes {grid}, {len(runners)} options, N={n}")
        result = sweep(
            ex,
            runners,
            fn,
            args,
            kw,
            pos,
            grid,
            split=split or split_axis0(pos),
            combine=combine or concat_axis0,
            repeats=repeats,
            warmup=warmup,
            timeout_s=timeout_s,
            settle_s=settle_s,
            log=say,
        )
        desc = _machine(use_gpu)
        desc["capacity"] = {
            "cpus": int(cap.cpus),
            "gpus": int(cap.gpus),
            "max_workers": int(cap.max_workers),
            "backend": ex.backend.name,
        }
    finally:
        if own:
            ex.shutdown(wait=False, cancel_futures=True)
    options = [r.option for r in runners]
    infos = [SizeInfo(s, *result.inputs[s]) for s in grid]
    return Advice(
        function=name or _name(fn),
        sizes=infos,
        options=options,
        cells=result.cells,
        decision=decide(options, result.cells, prices, baseline="1cpu", bare="bare-1cpu"),
        prices=prices,
        cpus=n,
        repeats=repeats,
        warmup=warmup,
        batched=pos,
        notes=notes,
        gpu_note=gpu_note,
        cold=result.cold,
        machine=desc,
        elapsed_s=time.perf_counter() - started,
    )


def _machine(with_gpus: bool) -> dict[str, Any]:
    """What the advice ran on. :func:`hetfaas.machine.describe` when torch is loaded already;
    else the CPU facts alone (describing torch would import it, seconds for a numpy
    function that never needed it)."""
    from .. import machine

    if "torch" in sys.modules:
        return machine.describe(with_gpus=with_gpus)
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as fh:
            info = machine.parse_cpuinfo(fh.read())
    except OSError:
        info = {"model": "", "flags": set()}
    numpy = sys.modules.get("numpy")
    return {
        "cpu_model": info["model"] or platform.processor() or platform.machine(),
        "arch": platform.machine(),
        "logical_cores": os.cpu_count(),
        "affinity_cores": len(os.sched_getaffinity(0)),
        "cpu_flags": [f for f in machine.INTERESTING_FLAGS if f in info["flags"]],
        "os": platform.platform(),
        "python": f"{platform.python_implementation()} {platform.python_version()}",
        "numpy": getattr(numpy, "__version__", None),
        "torch": "not loaded (not described)",
        "gpus": [],
    }


def _name(fn: Callable[..., Any]) -> str:
    module = getattr(fn, "__module__", None) or type(fn).__module__
    name = getattr(fn, "__qualname__", None) or getattr(fn, "__name__", None) or repr(fn)
    return f"{module}.{name}" if module else str(name)


__all__ = ["DEFAULT_TIMEOUT_S", "NO_GPU", "advise", "plan"]
