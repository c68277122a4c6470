"""``hetfaas bench bmm``: batched matrix multiplication as serverless calls, against bare metal.

The study has four tables:

1. bare metal vs one serverless call on one CPU, at [5|10|15, 1000, 1000, 1000], every run;
2. one single-CPU call (``bmm_single``) vs ``bs`` parallel calls (``mm_single``, one matrix
   each), median over runs, for nine shapes;
3. table 2 plus one call on a GPU (``bmm_gpu``);
4. bare-metal GPU vs one GPU call vs two half-batch GPU calls at [200, 1000, 1000, 1000].

Every serverless result is checked against ``torch.bmm`` computed in the caller. Measurements
are taken round-robin (run 1 of every configuration, then run 2, ...) so that a slow drift of
the machine spreads over all configurations instead of biasing one. The pool is warmed before
anything is measured; the cold start is measured and reported on its own.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any

from .kernels import (
    ATOL_PER_SQRT_N,
    RTOL,
    bmm_gpu,
    bmm_single,
    cuda_devices,
    flops,
    mm_single,
    verify,
)

Shape = tuple[int, int, int, int]

SIZES = (100, 500, 1000)
BATCHES = (5, 10, 15)
DEFAULT_SHAPES: tuple[Shape, ...] = tuple((bs, n, n, n) for n in SIZES for bs in BATCHES)
DEFAULT_TABLE1_SHAPES: tuple[Shape, ...] = tuple((bs, 1000, 1000, 1000) for bs in BATCHES)
DEFAULT_GPU_SHAPE: Shape = (200, 1000, 1000, 1000)

QUICK_SHAPES: tuple[Shape, ...] = (
    (2, 16, 16, 16),
    (3, 16, 16, 16),
    (2, 48, 48, 48),
    (3, 48, 48, 48),
)
QUICK_TABLE1_SHAPES: tuple[Shape, ...] = ((2, 48, 48, 48), (3, 48, 48, 48))
QUICK_GPU_SHAPE: Shape = (4, 64, 64, 64)
QUICK_REPEAT = 3
QUICK_RUNS = 2
QUICK_GPU_REPEAT = 5

MODES: dict[str, str] = {
    "bare_cpu": "bare metal, 1 CPU thread",
    "single_cpu": "serverless, 1 call on 1 CPU",
    "multi_cpu": "serverless, bs calls (1 matrix each) on 1 CPU each",
    "bare_gpu": "bare metal, 1 GPU",
    "gpu": "serverless, 1 call on 1 GPU",
    "multi_gpu": "serverless, 2 half-batch calls",
}
"""Each measured configuration, and what it means."""

NO_GPU = "no GPU"


# --------------------------------------------------------------------------------------------
# shapes and inputs


def parse_shape(text: str) -> Shape:
    """``"5x1000x1000x1000"`` (or ``[5,1000,1000,1000]``) -> ``(5, 1000, 1000, 1000)``."""
    cleaned = text.strip().strip("[]()").replace(",", "x").replace(" ", "")
    parts = [p for p in cleaned.lower().split("x") if p]
    try:
        dims = tuple(int(p) for p in parts)
    except ValueError:
        raise ValueError(
            f"bad shape {text!r}: expected bs x M x N x K, e.g. 5x100x100x100"
        ) from None
    if len(dims) != 4 or min(dims) < 1:
        raise ValueError(f"bad shape {text!r}: expected four positive ints bs x M x N x K")
    return dims  # type: ignore[return-value]


def parse_shapes(text: str) -> list[Shape]:
    """A comma-separated list of ``bsxMxNxK`` shapes."""
    shapes = [parse_shape(s) for s in text.split(",") if s.strip()]
    if not shapes:
        raise ValueError("no shapes given")
    return shapes


def shape_key(shape: Sequence[int]) -> str:
    return "x".join(str(int(d)) for d in shape)


def shape_label(shape: Sequence[int]) -> str:
    return "[" + ", ".join(str(int(d)) for d in shape) + "]"


def make_inputs(shape: Sequence[int], seed: int = 0) -> tuple[Any, Any]:
    """Standard-normal fp32 A [bs, M, N] and B [bs, N, K] from a fixed seed."""
    import torch

    bs, m, n, k = (int(d) for d in shape)
    gen = torch.Generator().manual_seed(seed)
    A = torch.randn((bs, m, n), generator=gen, dtype=torch.float32)
    B = torch.randn((bs, n, k), generator=gen, dtype=torch.float32)
    return A, B


def reference(A: Any, B: Any) -> Any:
    """The product every serverless result is checked against, computed in the caller."""
    import torch

    return torch.bmm(A, B)


# --------------------------------------------------------------------------------------------
# one measurement each


def call_record(fut: Any, index: int = 0) -> dict[str, Any]:
    """All :class:`~hetfaas.Timings` fields of a finished call, with its id and position."""
    rec: dict[str, Any] = {"index": index, "invocation_id": getattr(fut, "invocation_id", None)}
    timings = getattr(fut, "timings", None)
    if timings is not None:
        rec.update(timings.as_dict())
    return rec


def _trial(t0: int, t1: int, C: Any, ref: Any, n: int, calls: list[dict[str, Any]]) -> dict:
    ok, err = verify(C, ref, n)
    return {
        "wall_s": (t1 - t0) / 1e9,
        "t0_ns": t0,
        "t1_ns": t1,
        "verified": ok,
        "max_abs_err": err if math.isfinite(err) else None,
        "calls": calls,
    }


def _resources(cpus: int = 1, gpus: float = 0) -> Any:
    from hetfaas import Resources

    return Resources(cpus=cpus, gpus=gpus)


def _bare(kernel: Any, A: Any, B: Any, repeat: int, ref: Any) -> dict[str, Any]:
    import hetfaas

    t0 = time.perf_counter_ns()
    C, timings = hetfaas.bare_metal(kernel, A, B, cpus=1, repeat=repeat)
    t1 = time.perf_counter_ns()
    rec = {"index": 0, "invocation_id": None, **timings.as_dict()}
    trial = _trial(t0, t1, C, ref, int(A.shape[2]), [rec])
    trial["time_s"] = timings.compute_us / 1e6
    return trial


def bare_cpu(A: Any, B: Any, repeat: int, ref: Any) -> dict[str, Any]:
    """``bmm_single`` run by ``hetfaas.bare_metal`` in this process on one pinned thread."""
    return _bare(bmm_single, A, B, repeat, ref)


def bare_gpu(A: Any, B: Any, repeat: int, ref: Any) -> dict[str, Any]:
    """``bmm_gpu`` run by ``hetfaas.bare_metal`` in this process (copies included)."""
    return _bare(bmm_gpu, A, B, repeat, ref)


def _one_call(
    ex: Any, kernel: Any, resources: Any, A: Any, B: Any, repeat: int, ref: Any
) -> dict[str, Any]:
    runner = ex.options(resources=resources)
    t0 = time.perf_counter_ns()
    fut = runner.submit(kernel, A, B, repeat=repeat)
    C = fut.result()
    t1 = time.perf_counter_ns()
    trial = _trial(t0, t1, C, ref, int(A.shape[2]), [call_record(fut)])
    trial["time_s"] = trial["wall_s"]
    return trial


def call_single_cpu(ex: Any, A: Any, B: Any, repeat: int, ref: Any) -> dict[str, Any]:
    """One serverless ``bmm_single`` call on one CPU; time from submit to C in hand."""
    return _one_call(ex, bmm_single, _resources(cpus=1), A, B, repeat, ref)


def call_multi_cpu(ex: Any, A: Any, B: Any, repeat: int, ref: Any) -> dict[str, Any]:
    """``bs`` parallel ``mm_single`` calls, one matrix each, on one CPU each; the results are
    stacked. Splitting the batch into separate tensors happens before the clock starts (like
    generating the inputs); submitting, waiting and stacking are timed."""
    import torch

    bs = int(A.shape[0])
    a_parts = [A[i].clone() for i in range(bs)]
    b_parts = [B[i].clone() for i in range(bs)]
    runner = ex.options(resources=_resources(cpus=1))
    t0 = time.perf_counter_ns()
    futs = runner.map_futures(mm_single, a_parts, b_parts, [repeat] * bs)
    C = torch.stack([f.result() for f in futs])
    t1 = time.perf_counter_ns()
    trial = _trial(t0, t1, C, ref, int(A.shape[2]), [call_record(f, i) for i, f in enumerate(futs)])
    trial["time_s"] = trial["wall_s"]
    return trial


def call_gpu(ex: Any, A: Any, B: Any, repeat: int, ref: Any) -> dict[str, Any]:
    """One serverless ``bmm_gpu`` call holding one whole GPU."""
    return _one_call(ex, bmm_gpu, _resources(cpus=1, gpus=1), A, B, repeat, ref)


def multi_gpu_share(gpus: int) -> float:
    """What each of the two half-batch calls asks for: a whole GPU each when there are two,
    half of the one device otherwise (both calls then run together on it)."""
    return 1.0 if gpus >= 2 else 0.5


def call_multi_gpu(ex: Any, A: Any, B: Any, repeat: int, ref: Any) -> dict[str, Any]:
    """Two parallel ``bmm_gpu`` calls on the two halves of the batch; results concatenated.
    The split happens before the clock starts."""
    import torch

    share = multi_gpu_share(int(ex.capacity.gpus))
    h = int(A.shape[0]) // 2
    halves = [(A[:h].clone(), B[:h].clone()), (A[h:].clone(), B[h:].clone())]
    runner = ex.options(resources=_resources(cpus=1, gpus=share))
    t0 = time.perf_counter_ns()
    futs = [runner.submit(bmm_gpu, a, b, repeat=repeat) for a, b in halves]
    C = torch.cat([f.result() for f in futs])
    t1 = time.perf_counter_ns()
    trial = _trial(t0, t1, C, ref, int(A.shape[2]), [call_record(f, i) for i, f in enumerate(futs)])
    trial["time_s"] = trial["wall_s"]
    trial["gpu_share"] = share
    return trial


MEASURE: dict[str, Callable[..., dict[str, Any]]] = {
    "single_cpu": call_single_cpu,
    "multi_cpu": call_multi_cpu,
    "gpu": call_gpu,
    "multi_gpu": call_multi_gpu,
}


# --------------------------------------------------------------------------------------------
# the study


@dataclass
class Series:
    """One configuration (mode, shape, repeat) measured ``runs`` times."""

    mode: str
    shape: Shape
    repeat: int
    tables: list[int] = field(default_factory=list)
    trials: list[dict[str, Any]] = field(default_factory=list)

    @property
    def key(self) -> str:
        return f"{self.mode}:{shape_key(self.shape)}:r{self.repeat}"

    def as_dict(self) -> dict[str, Any]:
        return {
            "key": self.key,
            "mode": self.mode,
            "description": MODES[self.mode],
            "shape": list(self.shape),
            "repeat": self.repeat,
            "gflop": flops(self.shape, self.repeat) / 1e9,
            "tables": sorted(self.tables),
            "trials": self.trials,
        }


@dataclass
class Config:
    repeat: int
    runs: int
    gpu_repeat: int
    shapes: list[Shape]
    table1_shapes: list[Shape]
    gpu_shape: Shape
    quick: bool
    seed: int
    backend: str
    backend_options: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def from_args(cls, args: argparse.Namespace) -> Config:
        quick = bool(getattr(args, "quick", False))

        def pick(name: str, quick_value: Any, default: Any) -> Any:
            value = getattr(args, name, None)
            if value is not None:
                return value
            return quick_value if quick else default

        shapes_arg = getattr(args, "shapes", None)
        t1_arg = getattr(args, "table1_shapes", None)
        gpu_arg = getattr(args, "gpu_shape", None)
        cfg = cls(
            repeat=int(pick("repeat", QUICK_REPEAT, 1000)),
            runs=int(pick("runs", QUICK_RUNS, 5)),
            gpu_repeat=int(pick("gpu_repeat", QUICK_GPU_REPEAT, 5000)),
            shapes=parse_shapes(shapes_arg)
            if shapes_arg
            else list(QUICK_SHAPES if quick else DEFAULT_SHAPES),
            table1_shapes=parse_shapes(t1_arg)
            if t1_arg
            else list(QUICK_TABLE1_SHAPES if quick else DEFAULT_TABLE1_SHAPES),
            gpu_shape=parse_shape(gpu_arg)
            if gpu_arg
            else (QUICK_GPU_SHAPE if quick else DEFAULT_GPU_SHAPE),
            quick=quick,
            seed=int(getattr(args, "seed", 0) or 0),
            backend=str(getattr(args, "backend", "local") or "local"),
            backend_options=parse_options(getattr(args, "option", None) or []),
        )
        for name in ("repeat", "runs", "gpu_repeat"):
            if getattr(cfg, name) < 1:
                raise ValueError(f"--{name.replace('_', '-')} must be >= 1")
        if cfg.gpu_shape[0] < 2:
            raise ValueError("the GPU shape needs a batch of at least 2 to split in halves")
        return cfg

    def as_dict(self) -> dict[str, Any]:
        return {
            "repeat": self.repeat,
            "runs": self.runs,
            "gpu_repeat": self.gpu_repeat,
            "shapes": [list(s) for s in self.shapes],
            "table1_shapes": [list(s) for s in self.table1_shapes],
            "gpu_shape": list(self.gpu_shape),
            "quick": self.quick,
            "seed": self.seed,
            "backend": self.backend,
            "backend_options": self.backend_options,
            "rtol": RTOL,
            "atol": f"{ATOL_PER_SQRT_N} * sqrt(N)",
            "reference": "torch.bmm in the caller process (fp32)",
        }


def plan(cfg: Config, gpus: int) -> list[Series]:
    """Every configuration the study measures, each once per run."""
    series: dict[str, Series] = {}

    def add(mode: str, shape: Shape, repeat: int, table: int) -> None:
        s = Series(mode, tuple(shape), repeat)  # type: ignore[arg-type]
        s = series.setdefault(s.key, s)
        if table not in s.tables:
            s.tables.append(table)

    for shape in cfg.table1_shapes:
        add("bare_cpu", shape, cfg.repeat, 1)
        add("single_cpu", shape, cfg.repeat, 1)
    for shape in cfg.shapes:
        add("single_cpu", shape, cfg.repeat, 2)
        add("multi_cpu", shape, cfg.repeat, 2)
        if gpus:
            add("gpu", shape, cfg.repeat, 3)
    if gpus:
        add("bare_gpu", cfg.gpu_shape, cfg.gpu_repeat, 4)
        add("gpu", cfg.gpu_shape, cfg.gpu_repeat, 4)
        add("multi_gpu", cfg.gpu_shape, cfg.gpu_repeat, 4)
    return list(series.values())


def estimate_seconds(cfg: Config, slots: int, gflops_per_core: float = 90.0) -> float:
    """A rough compute-only estimate of the CPU part of the study (GPU series not included)."""
    total = 0.0
    for s in plan(cfg, gpus=0):
        t = flops(s.shape, s.repeat) / (gflops_per_core * 1e9)
        if s.mode == "multi_cpu":
            t /= max(1, min(s.shape[0], slots))
        total += t
    return total * cfg.runs


def _timed(fn: Callable[[], Any]) -> tuple[Any, float]:
    t0 = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - t0


def warm_up(ex: Any, cfg: Config, slots: int, gpus: int) -> dict[str, Any]:
    """Start the workers and load every kernel in them before anything is measured; return
    what that cost (this is the cold start the measurements leave out)."""
    cold: dict[str, Any] = {"cpu_workers": slots}
    _, cold["pool_warmup_s"] = _timed(lambda: ex.warmup(slots))
    A, B = make_inputs((2, 8, 8, 8), cfg.seed)
    runner = ex.options(resources=_resources(cpus=1))
    calls: list[dict[str, Any]] = []
    for fn, args in ((bmm_single, (A, B)), (mm_single, (A[0].clone(), B[0].clone()))):
        futs = [runner.submit(fn, *args, repeat=1) for _ in range(2 * slots)]
        for i, f in enumerate(futs):
            f.result()
            rec = call_record(f, i)
            rec["function"] = fn.__name__
            calls.append(rec)
    cold["warm_calls"] = calls
    if gpus:
        gpu_workers = min(max(gpus, 1), 2)
        _, cold["gpu_pool_warmup_s"] = _timed(
            lambda: ex.warmup(gpu_workers, resources=_resources(cpus=1, gpus=1))
        )
        gcalls: list[dict[str, Any]] = []
        for share in sorted({1.0, multi_gpu_share(gpus)}):
            r = ex.options(resources=_resources(cpus=1, gpus=share))
            futs = [r.submit(bmm_gpu, A, B, repeat=1) for _ in range(2)]
            for i, f in enumerate(futs):
                f.result()
                rec = call_record(f, i)
                rec["function"] = f"bmm_gpu (gpus={share})"
                gcalls.append(rec)
        cold["gpu_warm_calls"] = gcalls
        import hetfaas

        _, cold["bare_gpu_init_s"] = _timed(
            lambda: hetfaas.bare_metal(bmm_gpu, A, B, cpus=1, repeat=1)
        )
    return cold


def calibrate(shapes: Sequence[Shape], seed: int, budget_s: float, tries: int = 3) -> dict:
    """The in-process single-thread ``torch.bmm`` rate per shape: ``hetfaas.bare_metal`` on one
    pinned thread, the best of ``tries`` short runs of about ``budget_s`` seconds each (the
    best, because on a shared machine noise only ever slows a run down). The yardstick for
    the GFLOP/s fractions of the report."""
    import hetfaas

    out: dict[str, Any] = {}
    for shape in shapes:
        A, B = make_inputs(shape, seed)
        _, t1 = hetfaas.bare_metal(bmm_single, A, B, cpus=1, repeat=1)
        one = max(t1.compute_us / 1e6, 1e-7)
        reps = max(1, min(100_000, int(budget_s / one)))
        per_runs = []
        for _ in range(tries):
            _, t = hetfaas.bare_metal(bmm_single, A, B, cpus=1, repeat=reps)
            per_runs.append(max(t.compute_us / 1e6 / reps, 1e-9))
        per = min(per_runs)
        out[shape_key(shape)] = {
            "repeat": reps,
            "tries": tries,
            "threads": 1,
            "seconds_per_bmm": per,
            "seconds_per_bmm_all": per_runs,
            "gflops": flops(shape, 1) / per / 1e9,
        }
    return out


def _progress(enabled: bool) -> Any:
    from rich.console import Console
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeElapsedColumn,
    )

    return Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        console=Console(stderr=True),
        disable=not enabled,
        transient=False,
    )


def run_study(
    cfg: Config,
    ex: Any,
    *,
    progress: bool = False,
    log: Callable[[str], None] | None = None,
    monitor: Any = None,
) -> dict[str, Any]:
    """Measure every configuration of :func:`plan` ``cfg.runs`` times on executor ``ex``;
    ``monitor`` (a :class:`hetfaas.bench.bmm_monitor.StudyMonitor`) is told what runs when."""
    from hetfaas import machine

    say = log or (lambda _msg: None)
    started = time.perf_counter()
    started_at = datetime.now(timezone.utc).isoformat(timespec="seconds")
    try:
        load_start = [round(x, 2) for x in os.getloadavg()]
    except OSError:
        load_start = None
    cap = ex.capacity
    gpus = declared_gpus = int(cap.gpus)
    if gpus:
        # An engine may declare GPUs that torch cannot use there (Slurm GRES on device nodes
        # made for scheduling tests): ask a call that holds one.
        usable = ex.options(resources=_resources(cpus=1, gpus=1)).submit(cuda_devices).result()
        if not usable:
            say(f"{ex.backend.name} declares {gpus} GPU(s) but torch sees no CUDA device in a "
                "call holding one: the GPU tables are left out")  # fmt: skip
            gpus = 0
    slots = max(1, min(int(cap.cpus), int(cap.max_workers)))
    say(f"capacity: {cap.cpus} CPUs, {gpus} GPUs, {cap.max_workers} workers; warming up")
    cold = warm_up(ex, cfg, slots, gpus)
    desc = machine.describe()  # after warm-up: workers exist before CUDA is touched here
    series = plan(cfg, gpus)
    all_shapes = list(dict.fromkeys(s.shape for s in series if s.mode.endswith("cpu")))
    say(f"calibrating in-process torch.bmm on {len(all_shapes)} shapes")
    calib = calibrate(all_shapes, cfg.seed, 0.01 if cfg.quick else 0.15)

    inputs: dict[Shape, tuple[Any, Any, Any]] = {}

    def get(shape: Shape) -> tuple[Any, Any, Any]:
        if shape not in inputs:
            A, B = make_inputs(shape, cfg.seed)
            inputs[shape] = (A, B, reference(A, B))
        return inputs[shape]

    def measure(mode: str, A: Any, B: Any, repeat: int, ref: Any) -> dict[str, Any]:
        if mode == "bare_cpu":
            return bare_cpu(A, B, repeat, ref)
        if mode == "bare_gpu":
            return bare_gpu(A, B, repeat, ref)
        return MEASURE[mode](ex, A, B, repeat, ref)

    total = cfg.runs * len(series)
    with _progress(progress) as bar:
        task = bar.add_task("bmm study", total=total)
        for run_index in range(cfg.runs):
            run_started = time.perf_counter()
            for s in series:
                bar.update(
                    task,
                    description=f"run {run_index + 1}/{cfg.runs} {s.mode} {shape_key(s.shape)}",
                )
                A, B, ref = get(s.shape)
                with monitor.mark(s.mode) if monitor is not None else contextlib.nullcontext():
                    trial = measure(s.mode, A, B, s.repeat, ref)
                trial["run"] = run_index
                s.trials.append(trial)
                if not trial["verified"]:
                    err = trial["max_abs_err"]
                    say(f"VERIFICATION FAILED: {s.key} run {run_index} max|err|={err}")
                bar.advance(task)
            if not progress:
                say(
                    f"run {run_index + 1}/{cfg.runs}: {len(series)} configurations in "
                    f"{time.perf_counter() - run_started:.1f} s"
                )
    gpu_note = (
        NO_GPU
        if gpus == 0
        else (
            f"{gpus} GPUs: the two half-batch calls each held a whole device"
            if gpus >= 2
            else "1 GPU: the two half-batch calls asked for gpus=0.5 each and shared device 0"
        )
    )
    return {
        "schema": "hetfaas.bench.bmm/1",
        "started_at": started_at,
        "elapsed_s": time.perf_counter() - started,
        "load_avg_start": load_start,
        "machine": desc,
        "backend": cfg.backend,
        "capacity": {
            "cpus": int(cap.cpus),
            "gpus": gpus,
            "gpus_declared": declared_gpus,
            "gpu_names": list(getattr(cap, "gpu_names", ()) or ()),
            "max_workers": int(cap.max_workers),
            "cpu_slots": slots,
        },
        "config": cfg.as_dict(),
        "gpu": {
            "available": gpus > 0,
            "count": gpus,
            "note": gpu_note,
            "multi_gpu_share": multi_gpu_share(gpus) if gpus else None,
            "shared_device": gpus == 1,
        },
        "cold_start": cold,
        "calibration": calib,
        "series": [s.as_dict() for s in series],
    }


# --------------------------------------------------------------------------------------------
# command line


def parse_options(items: Sequence[str]) -> dict[str, Any]:
    """``KEY=VALUE`` strings as backend options; ints, floats and true/false are converted."""
    out: dict[str, Any] = {}
    for item in items:
        key, sep, raw = item.partition("=")
        if not sep or not key.strip():
            raise ValueError(f"--option {item!r}: expected KEY=VALUE")
        value: Any = raw
        if raw.lower() in ("true", "false"):
            value = raw.lower() == "true"
        else:
            for kind in (int, float):
                try:
                    value = kind(raw)
                    break
                except ValueError:
                    pass
        out[key.strip()] = value
    return out


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of ``hetfaas bench bmm``."""
    parser.add_argument("--repeat", type=int, default=None, help="products per call (default 1000)")
    parser.add_argument("--runs", type=int, default=None, help="runs per configuration (default 5)")
    parser.add_argument(
        "--shapes",
        default=None,
        help="tables 2/3 shapes, comma-separated bsxMxNxK "
        "(default: bs 5,10,15 x M=N=K 100,500,1000)",
    )
    parser.add_argument(
        "--table1-shapes",
        dest="table1_shapes",
        default=None,
        help="table 1 shapes (default 5x1000x1000x1000,10x1000x1000x1000,15x1000x1000x1000)",
    )
    parser.add_argument(
        "--gpu-repeat",
        dest="gpu_repeat",
        type=int,
        default=None,
        help="table 4 repeat (default 5000)",
    )
    parser.add_argument(
        "--gpu-shape",
        dest="gpu_shape",
        default=None,
        help="table 4 shape (default 200x1000x1000x1000)",
    )
    parser.add_argument("--quick", action="store_true", help="tiny shapes and repeat (seconds)")
    parser.add_argument("--out", default="results/bmm", help="output folder (default results/bmm)")
    parser.add_argument("--json", action="store_true", help="print the results JSON to stdout")
    parser.add_argument("--backend", default="local", help="executor backend (default local)")
    parser.add_argument(
        "--option",
        action="append",
        metavar="KEY=VALUE",
        help="a backend option, repeatable (e.g. --option pack=15 --option partition=debug)",
    )
    parser.add_argument("--seed", type=int, default=0, help="seed of the random inputs (default 0)")
    parser.add_argument(
        "--no-plots", dest="no_plots", action="store_true", help="skip the PNG plots"
    )
    parser.add_argument(
        "--monitor",
        action="store_true",
        help="sample CPU, memory, GPU and GPU memory of bare metal and serverless over time",
    )
    parser.add_argument(
        "--monitor-interval",
        dest="monitor_interval",
        type=float,
        default=0.25,
        help="seconds between the monitor's samples (default 0.25)",
    )


def run(args: argparse.Namespace) -> int:
    """Run the study, write ``report.md``, ``results.json`` and plots into ``--out``.

    Returns 0 when every result verified, 2 when one did not, 1 on a usage error."""
    import hetfaas

    from . import report

    try:
        cfg = Config.from_args(args)
    except ValueError as exc:
        print(f"hetfaas bench bmm: {exc}", file=sys.stderr)
        return 1
    as_json = bool(getattr(args, "json", False))

    def log(msg: str) -> None:
        print(msg, file=sys.stderr)

    show = sys.stderr.isatty() and not as_json
    with hetfaas.Executor(cfg.backend, **cfg.backend_options) as ex:
        slots = max(1, min(int(ex.capacity.cpus), int(ex.capacity.max_workers)))
        log(
            f"bmm study: repeat={cfg.repeat} runs={cfg.runs} on {cfg.backend}; compute alone is "
            f"about {estimate_seconds(cfg, slots):.0f} s on the CPU at ~90 GFLOP/s per core"
        )
        monitor = None
        if getattr(args, "monitor", False):
            from .bmm_monitor import StudyMonitor

            monitor = StudyMonitor(getattr(args, "monitor_interval", 0.25)).start()
        try:
            results = run_study(cfg, ex, progress=show, log=log, monitor=monitor)
        finally:
            mon = monitor.finish() if monitor is not None else None
    plots = not getattr(args, "no_plots", False)
    paths = report.write_report(results, getattr(args, "out", "results/bmm"), plots=plots)
    if mon is not None:
        from . import bmm_monitor

        summary = bmm_monitor.summarize(mon)
        results["monitor"] = {k: v for k, v in mon.items() if k != "samples"} | {"summary": summary}
        paths |= bmm_monitor.write(mon, paths["report"].parent, plots=plots)
        with open(paths["report"], "a", encoding="utf-8") as fh:
            fh.write("\n" + bmm_monitor.markdown(mon, summary))
        with open(paths["results"], "w", encoding="utf-8") as fh:
            json.dump(results, fh, indent=1, default=report.json_default)
            fh.write("\n")
    if as_json:
        json.dump(results, sys.stdout, indent=1, default=report.json_default)
        sys.stdout.write("\n")
    else:
        print(report.console_summary(results))
        print(f"report: {paths['report']}")
        print(f"raw results: {paths['results']}")
    failed = [
        (s["key"], t["run"]) for s in results["series"] for t in s["trials"] if not t["verified"]
    ]
    if failed:
        log(f"{len(failed)} result(s) did not verify: {failed[:5]}")
        return 2
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="hetfaas bench bmm", description=__doc__.splitlines()[0])
    add_arguments(parser)
    return run(parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
