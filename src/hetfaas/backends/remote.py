"""What engines that run a call in a process of their own (Submitit/Slurm, Ray) share.

A call travels as one :class:`Payload`: the function and its arguments pickled with
cloudpickle in the caller. The engine runs :func:`run_payload` in its worker process, which
unpickles, sizes the thread pools to the call's cores, runs the function and returns a
:class:`Reply` with wall-clock stamps (``time.time_ns``: the caller and the engine's worker may
be on different machines, so a monotonic clock cannot be shared; on one machine the stamps
are exact, across machines they carry the clocks' skew). :func:`complete` turns a reply into
the future's result or exception and its timings.
"""

from __future__ import annotations

import functools
import hashlib
import os
import pickle
import resource
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field, fields, replace
from typing import Any

import cloudpickle

from .._future import Future
from .._invocation import CallUsage, Stamps
from .._resources import Resources
from .._threads import ThreadPools
from ..exceptions import SerializationError
from ..serialize import dump_function, dumps_call_args
from . import errors
from .contract import complete as settle

_loaded: dict[bytes, Any] = {}  # functions already unpickled in this engine process
_paths: dict[tuple[str, ...], tuple[str, ...]] = {}  # sys.path as shipped, by sys.path
_added: list[tuple[tuple[str, ...], int]] = [((), 0)]  # the caller's path last added here
_pools = ThreadPools()  # this engine process's thread pools, sized to each call's cores


@dataclass
class Payload:
    """One call as shipped to an engine."""

    digest: bytes
    fn: bytes
    args: bytes
    cpus: int
    gpus: float
    fn_name: str
    submitted_ns: int = 0  # wall clock, caller
    pickled_ns: int = 0
    sys_path: tuple[str, ...] = ()  # the caller's, so modules it can import resolve there too
    timeout_s: float | None = None  # run time allowed from the function's start, for engines
    # whose job enforces it itself (hetfaas.backends.slurm_job.run_call); None: no limit there
    memory_mb: float | None = None  # requested (for the call's usage)

    @classmethod
    def build(
        cls, fn: Any, args: tuple[Any, ...], kwargs: dict[str, Any], resources: Resources
    ) -> Payload:
        t0 = time.time_ns()
        digest, fn_bytes = dump_function(fn)
        name = getattr(fn, "__qualname__", None) or repr(fn)
        data = dumps_call_args(name, args, kwargs)
        paths = _caller_path()
        return cls(
            digest,
            fn_bytes,
            data,
            resources.cpus,
            resources.gpus,
            name,
            t0,
            time.time_ns(),
            paths,
            memory_mb=resources.memory_mb,
        )

    def with_call(self, fn: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Payload:
        """This call with another function and arguments (a checkpointed call's next run),
        pickled afresh: the function may carry state it did not have when first pickled."""
        try:
            fn_bytes = cloudpickle.dumps(fn, protocol=5)
            data = cloudpickle.dumps((tuple(args), dict(kwargs)), protocol=5)
        except Exception as exc:
            raise SerializationError(
                f"the checkpoint of {self.fn_name} cannot be pickled: {type(exc).__name__}: {exc}"
            ) from exc
        digest = hashlib.blake2b(fn_bytes, digest_size=16).digest()
        return replace(self, digest=digest, fn=fn_bytes, args=data)


def _caller_path() -> tuple[str, ...]:
    """This process's ``sys.path`` as a call ships it (the current directory for '')."""
    key = tuple(sys.path)
    got = _paths.get(key)
    if got is None:
        if len(_paths) > 64:
            _paths.clear()
        got = _paths[key] = tuple(dict.fromkeys(p or os.getcwd() for p in key))
    return got


@dataclass
class Reply:
    """What :func:`run_payload` returns to the caller."""

    ok: bool
    data: bytes  # the pickled value, or the exception as errors.encode made it
    begin_ns: int = 0  # the wrapper started (wall clock, engine side)
    start_ns: int = 0
    end_ns: int = 0
    load_ns: int = 0  # cold: unpickling the function the first time in this process, and
    # unpickling arguments that imported modules (torch, ...) the first time
    proc_start_ns: int = 0  # when this engine process started (wall clock, ~10 ms resolution)
    pid: int = 0
    host: str = ""
    cpus: tuple[int, ...] = field(default_factory=tuple)
    gpus: str = ""
    cpu_ns: int = -1  # CPU time of the engine process while the function ran (-1: unknown)
    maxrss_kb: int = 0  # the engine process's peak RSS at the function's end
    gpu_util: float | None = None  # a call holding GPUs: mean utilisation % (None: unknown)
    gpu_mem_mb: float | None = None  # and peak GPU memory


def run_payload(payload: Payload, on_start: Callable[[int], None] | None = None) -> Reply:
    """Run one call inside an engine's worker process. Never raises: errors travel back.
    ``on_start(start_ns)`` is called just before the function starts (a watchdog arms there,
    so that unpickling and imports do not count against the call's ``timeout_s``)."""
    begin = time.time_ns()
    load_ns = start = 0
    cpu0 = cpu_ns = -1
    meter = _gpu_meter() if payload.gpus else None
    gpu: tuple[float | None, float | None] = (None, None)
    if (payload.sys_path, len(sys.path)) != _added[0]:  # (the same call after call)
        sys.path.extend(p for p in payload.sys_path if p not in sys.path)
        _added[0] = (payload.sys_path, len(sys.path))
    try:
        fn = _loaded.get(payload.digest)
        if fn is None:
            t = time.time_ns()
            fn = pickle.loads(payload.fn)
            _loaded[payload.digest] = fn
            load_ns = time.time_ns() - t
        known = len(sys.modules)
        t = time.time_ns()
        args, kwargs = pickle.loads(payload.args)
        if len(sys.modules) != known:  # the arguments imported modules: a cold start's cost
            load_ns += time.time_ns() - t
        _pools.size(payload.cpus)
        start = time.time_ns()
        if on_start is not None:
            on_start(start)
        if meter is not None:
            meter.start()
        cpu0 = time.process_time_ns()
        value = fn(*args, **kwargs)
        end = time.time_ns()
        cpu_ns = time.process_time_ns() - cpu0
        if meter is not None:
            gpu = meter.stop()
        try:
            data = cloudpickle.dumps(value, protocol=5)
        except Exception as exc:
            raise SerializationError(
                f"the result of {payload.fn_name} cannot be pickled: {type(exc).__name__}: {exc}"
            ) from exc
        ok = True
    except BaseException as exc:  # every error of the call goes back to the caller
        end = time.time_ns()
        if start and cpu0 >= 0 and cpu_ns < 0:
            cpu_ns = time.process_time_ns() - cpu0
            if meter is not None:
                gpu = meter.stop()
        start = start or end
        ok, data = False, errors.encode(exc)
    maxrss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss if cpu_ns >= 0 else 0
    return Reply(
        ok, data, begin, start, end, load_ns, _process_start_ns(), os.getpid(),
        _host(), tuple(sorted(os.sched_getaffinity(0))),
        os.environ.get("CUDA_VISIBLE_DEVICES", ""), cpu_ns, maxrss, *gpu,
    )  # fmt: skip


def run_shipped(
    digest: bytes, fn: bytes, args: bytes, cpus: int, gpus: float, fn_name: str,
    sys_path: tuple[str, ...], memory_mb: float | None,
) -> tuple[Any, ...]:  # fmt: skip
    """:func:`run_payload` for a call whose parts come as plain values, its :class:`Reply`
    as a plain tuple (``Reply(*t)``): a pilot block hands these to its pool, which pickles
    them both ways without cloudpickle."""
    reply = run_payload(Payload(digest, fn, args, cpus, gpus, fn_name, sys_path=sys_path,
                                memory_mb=memory_mb))  # fmt: skip
    return tuple(getattr(reply, name) for name in _REPLY_FIELDS)


_REPLY_FIELDS = tuple(f.name for f in fields(Reply))


@functools.cache
def _host() -> str:
    return os.uname().nodename


_meters: list[Any] = []


def _gpu_meter() -> Any:
    """This engine process's GPU meter (one per process: NVML is initialised once)."""
    if not _meters:
        from ..monitor.gpucall import GpuMeter

        _meters.append(GpuMeter())
    return _meters[0]


def error_reply(exc: BaseException, start_ns: int = 0, end_ns: int = 0, tb: str = "") -> Reply:
    """A reply carrying ``exc`` for a call that the engine's side stopped or lost (a timeout
    watchdog, a packed call whose worker died): ``start_ns``/``end_ns`` bound its run."""
    end = end_ns or time.time_ns()
    start = start_ns or end
    return Reply(
        False, errors.encode(exc, tb or None), start, start, end, 0, _process_start_ns(),
        os.getpid(), _host(), tuple(sorted(os.sched_getaffinity(0))),
        os.environ.get("CUDA_VISIBLE_DEVICES", ""),
    )  # fmt: skip


_proc_start: list[int] = []


def _process_start_ns() -> int:
    """When this process started, on the wall clock. From its start in clock ticks since boot
    against CLOCK_BOOTTIME now (10 ms resolution): psutil's create_time adds the boot time,
    which Linux reports in whole seconds, and would be off by up to a second."""
    if not _proc_start:
        try:
            with open("/proc/self/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
            age_s = time.clock_gettime(time.CLOCK_BOOTTIME) - int(fields[19]) / os.sysconf(
                "SC_CLK_TCK"
            )
            _proc_start.append(time.time_ns() - int(age_s * 1e9))
        except (OSError, ValueError, IndexError, AttributeError):
            _proc_start.append(0)  # not Linux: no cold-start split
    return _proc_start[0]


def complete(fut: Future, payload: Payload, reply: Reply, backend: str) -> None:
    """Settle ``fut`` from ``reply``, with timings: the engine's part (submitting, pending,
    launching a process) is the queue phase."""
    done = time.time_ns()
    value, exc = outcome(reply, fut.invocation_id)
    t0 = payload.submitted_ns
    total = done - t0
    compute = reply.end_ns - reply.start_ns
    # A process the engine started for this call (a Slurm job, a new Ray worker): its start-up
    # (interpreter, imports) is cold start; the engine's part before it stays queue.
    boot = reply.begin_ns - reply.proc_start_ns if reply.proc_start_ns > t0 else 0
    cold = reply.load_ns + max(0, boot)
    t_in = (payload.pickled_ns - t0) + max(0, reply.start_ns - reply.begin_ns - reply.load_ns)
    t_out = done - reply.end_ns
    queue = total - cold - t_in - compute - t_out  # the engine: submit, pending, launch
    if queue < 0:  # the process start time's coarse clock: take it from the cold start
        cold, queue = max(0, cold + queue), 0
    gpus = reply_gpus(reply)
    stamps = Stamps(
        queue, cold, t_in, compute, t_out, total, t0, reply.start_ns, reply.end_ns, done,
        -1, reply.pid, reply.cpus, gpus, backend,
    )  # fmt: skip
    settle(fut, value, error=exc, timings=stamps, usage=usage_of_reply(reply, payload))


def outcome(reply: Reply, invocation_id: str) -> tuple[Any, BaseException | None]:
    """The call's value, or its exception (also one this process cannot unpickle the result
    with: a missing module, ...), from ``reply``."""
    try:
        if reply.ok:
            return pickle.loads(reply.data), None
        return None, errors.decode(reply.data, invocation_id)
    except Exception as exc:
        return None, exc


def reply_gpus(reply: Reply) -> tuple[int, ...]:
    """The devices the engine's process saw (its CUDA_VISIBLE_DEVICES, as ints)."""
    return tuple(int(g) for g in reply.gpus.split(",") if g.strip().isdigit())


def usage_of_reply(reply: Reply, payload: Payload) -> CallUsage | None:
    """What the call used, as run_payload measured it (None: not measured)."""
    if reply.cpu_ns < 0:
        return None
    return CallUsage((reply.end_ns - reply.start_ns) / 1e9, reply.cpu_ns / 1e9, payload.cpus,
                     reply.maxrss_kb / 1024, payload.memory_mb, len(reply_gpus(reply)),
                     reply.gpu_util, reply.gpu_mem_mb)  # fmt: skip


def fail(fut: Future, payload: Payload, exc: BaseException, backend: str) -> None:
    """Settle ``fut`` with ``exc`` for a call that produced no reply: the time from its submit
    until now counts as the engine's (queue), so even a failed call has its timings."""
    done = time.time_ns()
    t0 = payload.submitted_ns
    total = max(0, done - t0)
    stamps = Stamps(total, 0, 0, 0, 0, total, t0, 0, 0, done, backend=backend)
    settle(fut, error=exc, timings=stamps)
