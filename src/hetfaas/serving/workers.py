"""Warm worker processes as the Runtime's devices: models live in the workers, not the caller.

``WorkerManager`` is a ``GPUManager`` whose devices are warm workers of the local pool, one
single-worker pool per device (so a request placed on device ``d`` runs in the one process
that holds ``d``'s models). The Runtime drives it as it drives a ``GPUManager``: its
scheduler decides hits, misses and evictions over the devices' memory budgets; ``load`` makes
the worker read the weights from their store and build the module, ``run`` makes it run a
batch through the resident module, ``evict`` makes it drop one (sent with the worker's next
call, which is the load that needed the room).

Every reply says where the time went, as measured in the worker (``WorkerReply``): its own
count of loads (a counter the caller never writes, so a hit that loaded would show), the
load, the activation (from the call's start until the module is ready to run) and the run.
A worker that lost a module behind the scheduler's back (the pool replaced a dead or retired
worker) loads it again inside ``run`` and says so (``load_s > 0``). A worker that dies during
a call fails its device (``DeviceFailed``): the Runtime retries the request on another one.
"""

from __future__ import annotations

import functools
import io
import os
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from .._executor import Executor
from .._future import Future
from .._resources import Resources
from ..exceptions import ConfigurationError, DeviceFailed, WorkerDied
from .functions import ModelSpec, load_model
from .runtime import GPUManager, _device_error

# Idle workers of these pools retire after this long (the pool's default is 300 s): a retired
# worker takes its models with it, so keep them for as long as a serving session plausibly is.
KEEP_ALIVE_S = 3600.0


# -- the worker side ------------------------------------------------------------------------------
@dataclass
class _Resident:
    """One worker process's models of one manager, and its own counters."""

    modules: dict[str, Any] = field(default_factory=dict)
    loads: int = 0
    evictions: int = 0


# per worker process: manager id -> its models there
_RESIDENT: dict[str, _Resident] = {}


@dataclass(frozen=True)
class WorkerReply:
    """What one call did in the worker (seconds, measured there)."""

    output: Any
    pid: int
    load_s: float  # the load done in this call (0: the module was resident)
    activate_s: float  # from the call's start until the module was ready to run
    run_s: float
    loads: int  # loads this worker process has done so far, by its own count
    evictions: int
    resident: tuple[str, ...]  # the models resident in the worker after the call


def _torch_device(device: str) -> Any:
    import torch

    return torch.device(device)


def _sync(device: str) -> None:
    if device.startswith("cuda"):
        import torch

        torch.cuda.synchronize()


def _apply_evictions(res: _Resident, evict: Sequence[str]) -> None:
    for name in evict:
        if res.modules.pop(name, None) is not None:
            res.evictions += 1


def _reply(
    res: _Resident, output: Any, load_s: float, activate_s: float, run_s: float
) -> WorkerReply:
    return WorkerReply(
        output, os.getpid(), load_s, activate_s, run_s, res.loads, res.evictions,
        tuple(sorted(res.modules)),
    )  # fmt: skip


def _load(res: _Resident, spec: ModelSpec, device: str) -> tuple[Any, float]:
    t0 = time.perf_counter()
    module = load_model(spec, _torch_device(device))
    _sync(device)
    res.loads += 1
    return module, time.perf_counter() - t0


def worker_warm(device: str) -> int:
    """Import torch, make ``device`` ready (a CUDA context) and take a small module through
    save, load and the move to the device once (torch imports parts of itself on first use),
    so that the first load of a task pays only for the task."""
    import torch

    dev = _torch_device(device)
    buf = io.BytesIO()
    torch.save(torch.nn.Linear(4, 4).state_dict(), buf)
    module = torch.nn.Linear(4, 4)
    module.load_state_dict(torch.load(io.BytesIO(buf.getvalue()), map_location="cpu"))
    with torch.inference_mode():
        module.to(dev)(torch.ones(2, 4, device=dev)).sum().item()
    _sync(device)
    return os.getpid()


def worker_forget(key: str) -> int:
    """Drop every model of manager ``key`` in this worker; returns how many there were."""
    res = _RESIDENT.pop(key, None)
    return len(res.modules) if res is not None else 0


def worker_load(key: str, spec: ModelSpec, device: str, evict: Sequence[str]) -> WorkerReply:
    """Drop ``evict``, then read ``spec``'s weights and build its module on ``device``."""
    res = _RESIDENT.setdefault(key, _Resident())
    _apply_evictions(res, evict)
    res.modules.pop(spec.name, None)
    module, load_s = _load(res, spec, device)
    res.modules[spec.name] = module
    return _reply(res, None, load_s, load_s, 0.0)


def worker_run(
    key: str, spec: ModelSpec, device: str, evict: Sequence[str], batch: Any, keep: bool = True
) -> WorkerReply:
    """Run ``batch`` through ``spec``'s module: the resident one, else loaded now (kept when
    ``keep``; ``keep=False`` is a call that loads on every call and keeps nothing)."""
    t0 = time.perf_counter()
    res = _RESIDENT.setdefault(key, _Resident())
    _apply_evictions(res, evict)
    module = res.modules.get(spec.name)
    load_s = 0.0
    if module is None:
        module, load_s = _load(res, spec, device)
        if keep:
            res.modules[spec.name] = module
    t1 = time.perf_counter()
    out = spec.handler(module, batch)
    _sync(device)
    t2 = time.perf_counter()
    return _reply(res, out, load_s, t1 - t0, t2 - t1)


def worker_resident(key: str) -> WorkerReply:
    """The worker's models and counters, running nothing."""
    return _reply(_RESIDENT.setdefault(key, _Resident()), None, 0.0, 0.0, 0.0)


# -- the caller side ------------------------------------------------------------------------------
@dataclass(frozen=True)
class Tagged:
    """A batch with a tag: the manager keeps the worker's reply for it in ``replies[tag]``."""

    batch: Any
    tag: int


class WorkerManager(GPUManager):
    """Warm local-pool workers as devices of a Runtime, each with ``memory_bytes`` for models.

    ``n_workers`` single-worker pools, worker ``i`` pinned to core ``i mod cores``; models run
    on ``device`` in the workers (``"cuda"`` or ``"cpu"``; default: CUDA when this process sees
    a GPU, each worker then given GPU ``i mod GPUs`` of its own). ``pool_options`` go to each
    pool (``hetfaas.Executor("local", ...)``); ``warm`` starts the workers and makes the
    device ready now, so the first load does not pay a cold start.
    """

    def __init__(
        self,
        n_workers: int = 2,
        memory_bytes: int = 256 << 20,
        device: str = "",
        node: int = 0,
        warm: bool = True,
        **pool_options: Any,
    ) -> None:
        if isinstance(n_workers, bool) or not isinstance(n_workers, int) or n_workers < 1:
            raise ConfigurationError(f"n_workers must be an int >= 1, not {n_workers!r}")
        import torch

        if not device:
            device = "cuda" if torch.cuda.is_available() else "cpu"
        if device not in ("cpu", "cuda"):
            raise ConfigurationError(f"device must be 'cpu' or 'cuda', not {device!r}")
        n_gpus = torch.cuda.device_count() if device == "cuda" else 0
        if device == "cuda" and n_gpus == 0:
            raise ConfigurationError("device='cuda' but this process sees no GPU")
        super().__init__([(f"worker{i}:{device}", memory_bytes) for i in range(n_workers)], node)
        self.device = device
        cores = sorted(os.sched_getaffinity(0))
        options = {"keep_alive_s": KEEP_ALIVE_S, **pool_options}
        self.executors: list[Executor] = []
        try:
            for i in range(n_workers):
                gpus = [i % n_gpus] if n_gpus else []
                ex = Executor(
                    "local", max_workers=1, cpus=[cores[i % len(cores)]], gpus=gpus, **options
                )
                self.executors.append(ex.options(Resources(gpus=1 if gpus else 0)))
        except BaseException:
            self.close()
            raise
        self.pids = [0] * n_workers
        self.key = ""  # the namespace of this manager's models in the workers: set by reset
        self.reset()
        if warm:
            self.warm()

    def reset(self, memory_bytes: int | None = None) -> None:
        """Forget every model (the workers drop theirs) and zero the counters, so that a new
        Runtime starts on empty workers, with ``memory_bytes`` each when given; the workers
        themselves stay warm."""
        if memory_bytes is not None:
            if isinstance(memory_bytes, bool) or not isinstance(memory_bytes, int):
                raise ConfigurationError(f"memory_bytes must be an int, not {memory_bytes!r}")
            if memory_bytes <= 0:
                raise ConfigurationError(f"memory_bytes must be > 0, not {memory_bytes}")
            self.memory = [memory_bytes] * len(self.memory)
        if self.key:
            for f in [self.call(i, worker_forget, self.key) for i in range(len(self.executors))]:
                f.result()
        self.key = uuid.uuid4().hex
        n = len(self.executors)
        self.pending_evictions: list[list[str]] = [[] for _ in range(n)]
        self.loads = [0] * n  # loads this manager asked for, per worker
        self.evictions = [0] * n
        self.replies: dict[int, WorkerReply] = {}
        # calls bound to one model, pickled once: a call then carries only its batch
        self._bound: dict[tuple[str, str], functools.partial[WorkerReply]] = {}
        for local in range(n):
            super().drop_all(local)

    def call(self, local: int, fn: Callable[..., Any], *args: Any) -> Future:
        """Run ``fn(*args)`` in worker ``local``'s process."""
        return self.executors[local].submit(fn, *args)

    def bound(self, fn: Callable[..., WorkerReply], spec: ModelSpec) -> Callable[..., WorkerReply]:
        """``fn`` (``worker_load`` or ``worker_run``) with this manager's key, ``spec`` and
        device bound, one object per pair: the pool pickles a function once and workers keep
        it, so the factory and handler are not pickled again at every call."""
        k = (fn.__name__, spec.name)
        part = self._bound.get(k)
        if part is None:
            part = self._bound[k] = functools.partial(fn, self.key, spec, self.device)
        return part

    def warm(self) -> list[int]:
        """Start every worker and make its device ready; returns their pids."""
        futs = [self.call(i, worker_warm, self.device) for i in range(len(self.executors))]
        self.pids = [f.result() for f in futs]
        return self.pids

    def resident(self) -> list[WorkerReply]:
        """Per worker: the models its process holds now and its own counters."""
        futs = [self.call(i, worker_resident, self.key) for i in range(len(self.executors))]
        return [f.result() for f in futs]

    # -- the GPUManager surface the Runtime drives -------------------------------------------------
    def evict(self, local: int, name: str) -> None:
        if name in self.models[local]:
            self.pending_evictions[local].append(name)
            self.evictions[local] += 1
        super().evict(local, name)

    def load(self, local: int, spec: ModelSpec) -> float:
        evict, self.pending_evictions[local] = self.pending_evictions[local], []
        reply = self._result(local, self.call(local, self.bound(worker_load, spec), evict))
        self.loads[local] += 1
        self.pids[local] = reply.pid
        self.models[local][spec.name] = reply.pid  # the module itself lives in that process
        self.model_bytes[local][spec.name] = spec.size_bytes
        return reply.load_s

    def run(self, local: int, spec: ModelSpec, batch: Any) -> tuple[Any, float]:
        if self._fail_next[local]:
            self._fail_next[local] = False
            raise DeviceFailed(f"worker {local} of node {self.node} failed")
        tag = batch.tag if isinstance(batch, Tagged) else None
        data = batch.batch if isinstance(batch, Tagged) else batch
        evict, self.pending_evictions[local] = self.pending_evictions[local], []
        fut = self.call(local, self.bound(worker_run, spec), evict, data)
        reply = self._result(local, fut)
        self.pids[local] = reply.pid
        if tag is not None:
            self.replies[tag] = reply
        return reply.output, reply.run_s

    def drop_all(self, local: int) -> None:
        self.pending_evictions[local] = list(self.models[local])
        super().drop_all(local)

    def _result(self, local: int, fut: Future) -> WorkerReply:
        try:
            return fut.result()
        except WorkerDied as exc:
            raise DeviceFailed(f"worker {local} ({self.devices[local]}) died: {exc}") from exc
        except RuntimeError as exc:
            if _device_error(exc):
                raise DeviceFailed(f"worker {local} ({self.devices[local]}) failed: {exc}") from exc
            raise

    def close(self) -> None:
        """Stop the workers (their models go with them)."""
        for ex in self.executors:
            ex.shutdown(wait=False, cancel_futures=True)

    def __repr__(self) -> str:
        return f"WorkerManager({len(self.devices)} workers on {self.device}, pids {self.pids})"
