"""Parsl as a hetfaas backend: ``Executor("parsl", ...)``.

Calls run on Parsl's ``HighThroughputExecutor`` (HTEX): its interchange hands tasks to worker
pools that Parsl starts as *blocks* through a provider -- a ``LocalProvider`` on this machine,
a ``SlurmProvider`` on Slurm, or any other provider Parsl has (PBS Pro, LSF, Kubernetes, cloud).
Blocks come and go by Parsl's own scaling strategy, between ``min_blocks`` and ``max_blocks``
(``"simple"``, Parsl's default: blocks are added while calls wait for workers, and ended down
to ``min_blocks`` once no call has been in flight for ``max_idletime``; ``"htex_auto_scale"``
also ends single idle blocks, but in Parsl 2026.10 it cancels a block that is still starting
whenever it finds less than a block's worth of spare slots, so it is not the default). The
backend owns a ``DataFlowKernel`` of its own (``parsl.load`` is not used, so a user's own Parsl
setup in the same process is left alone), which runs that strategy, and cleans it up at
shutdown: the blocks are cancelled (their processes killed, ``scancel`` on Slurm) and the
interchange stopped; shutdown waits until they are gone.

Each call is one HTEX task running :func:`parsl_worker.run_call` on the call's pickled
:class:`remote.Payload`, submitted to the HTEX directly (the DataFlowKernel's own task layer --
dependencies, retries, memoization -- is not needed for a call that is already a future).
Its result, a :class:`remote.Reply`, settles the hetfaas future in HTEX's result thread, with the
timings and usage of the other engines: Parsl's part (the interchange, a block's submission and
start) is queue, a worker process started for the call is cold start.

Resources: a call gets one HTEX worker, which has ``cores_per_worker`` cores (pinned by HTEX's
``cpu_affinity``) and, with ``available_accelerators``, one accelerator of its own. HTEX takes no
per-task core count (its resource specification carries only a priority), so a call asking for
more cores than a worker has, more than one GPU, a GPU where workers have none, or more memory
than a worker or node has raises :class:`ResourceError` at submit.

Errors: ``timeout_s`` is enforced in the worker (see :mod:`parsl_worker`) and raises
:class:`CallTimeout`; a worker that dies mid-call (Parsl's ``WorkerLost``, seen within
``heartbeat_period``) or a block lost with its calls (``ManagerLost``, after
``heartbeat_threshold``) raise :class:`WorkerDied`; blocks that keep failing to start (three in a
row: Parsl's windowed error handler, so that one block ended from outside -- ``scancel``, its
walltime -- does not fail the executor) fail the calls with :class:`JobFailed`. ``cancel()`` of
a running call kills its worker and raises :class:`CallCancelled`.
"""

from __future__ import annotations

import atexit
import contextlib
import functools
import math
import os
import pickle
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import weakref
from typing import Any

from .._future import Future
from .._resources import Resources
from ..exceptions import (
    CallCancelled,
    CallTimeout,
    ConfigurationError,
    EngineError,
    ExecutorShutdownError,
    JobFailed,
    RemoteError,
    ResourceError,
    WorkerDied,
)
from . import contract
from .base import Backend, CallSpec, Capacity
from .parsl_worker import ALARM_SUFFIX, GRACE_S, pack_call, run_call, touch
from .remote import Payload, complete, fail
from .slurm_cli import require_slurm, slurm_command
from .slurm_info import SINFO_COMMAND, Node, parse_sinfo

_MiB = 1 << 20
# A task whose buffer is our own pickled call, run by parsl_worker.run_call in the worker
# (HTEX's submit_payload with a task executor, Parsl 2025.10 on): no dill on either side.
_TASK_CONTEXT = {"task_executor": {"f": f"{run_call.__module__}.{run_call.__qualname__}"}}
_LABEL = "hetfaas-parsl"
_GONE_S = 15.0  # shutdown waits this long for the blocks' processes (or Slurm jobs) to end

# The simple options (see ParslBackend) and their defaults.
_OPTIONS: dict[str, Any] = {
    "provider": "local",  # "local", "slurm", or a parsl ExecutionProvider
    "label": _LABEL,
    "partition": None,
    "account": None,
    "qos": None,
    "nodes_per_block": 1,
    "init_blocks": 1,
    "min_blocks": 0,
    "max_blocks": 1,
    "parallelism": 1.0,
    "walltime": "01:00:00",
    "worker_init": "",
    "scheduler_options": "",
    "exclusive": False,
    "launcher": None,
    "cores_per_node": None,
    "mem_per_node": None,  # GB, as Parsl counts it
    "gpus_per_node": None,
    "cores_per_worker": 1,
    "max_workers_per_node": None,
    "mem_per_worker": None,  # GB
    "available_accelerators": (),
    "cpu_affinity": None,  # None: "block" where every worker gets its own cores, else "none"
    "heartbeat_period": 2,
    "heartbeat_threshold": 10,
    "poll_period": 10,
    "encrypted": True,
    "address": None,
    "htex_options": None,  # anything else for HighThroughputExecutor(...)
}
_CONFIG_OPTIONS: dict[str, Any] = {  # the DataFlowKernel's, allowed with executor= too
    "run_dir": None,  # None: a temporary folder, removed at shutdown
    "strategy": "simple",
    "strategy_period": 0.5,
    "max_idletime": 120.0,
}


def _import_parsl() -> Any:
    try:
        import parsl
        from parsl.executors import HighThroughputExecutor  # noqa: F401 - the engine itself
    except ImportError as exc:
        raise ConfigurationError("backend 'parsl' needs Parsl: pip install parsl") from exc
    return parsl


def _takes_task_executor(htex: Any) -> bool:
    """Whether this Parsl's HTEX workers run a task's own executor function (the feature has
    no flag of its own: the worker's code is read)."""
    if not hasattr(htex, "submit_payload"):
        return False
    try:
        import inspect

        from parsl.executors.high_throughput import process_worker_pool

        return "task_executor" in inspect.getsource(process_worker_pool.worker)
    except (ImportError, OSError, TypeError, AttributeError):
        return False


def launch_commands(executable: str = sys.executable) -> tuple[str, list[str]]:
    """HTEX's worker-pool and interchange commands with this interpreter, so that neither
    depends on the virtual environment's ``bin`` being on ``PATH``."""
    from parsl.executors.high_throughput.executor import DEFAULT_LAUNCH_CMD

    py = shlex.quote(executable)
    pool = f"{py} -m parsl.executors.high_throughput.process_worker_pool"
    return (
        DEFAULT_LAUNCH_CMD.replace("process_worker_pool.py", pool, 1),
        [executable, "-m", "parsl.executors.high_throughput.interchange"],
    )


class _Call:
    __slots__ = ("future", "payload", "timed")

    def __init__(self, future: Future, payload: Payload) -> None:
        self.future = future
        self.payload = payload
        self.timed = bool(payload.timeout_s)


class ParslBackend(Backend):
    """Calls as tasks of a Parsl ``HighThroughputExecutor``.

    Give either a ready Parsl setup or the simple options:

    - ``config``: a ``parsl.config.Config``; its HTEX (the one labelled ``label`` where it has
      several) runs the calls, under a DataFlowKernel made here from that config.
    - ``executor``: a ``HighThroughputExecutor``, with any of the DataFlowKernel's options
      ``run_dir``, ``strategy``, ``strategy_period``, ``max_idletime``.
    - or options: ``provider`` (``"local"``, ``"slurm"`` or a Parsl ``ExecutionProvider``),
      ``partition``/``account``/``qos``/``walltime``/``scheduler_options``/``exclusive``
      (Slurm), ``nodes_per_block``, ``init_blocks`` (1), ``min_blocks`` (0), ``max_blocks`` (1),
      ``parallelism``, ``worker_init`` (shell lines run before a block's workers start),
      ``launcher``, ``cores_per_node`` (default: this machine's cores, or the smallest node of
      the Slurm partition), ``mem_per_node`` (GB), ``gpus_per_node`` (Slurm: requested and
      given one to each worker), ``cores_per_worker`` (1), ``max_workers_per_node`` (default
      ``cores_per_node // cores_per_worker``), ``mem_per_worker`` (GB),
      ``available_accelerators`` (a count or names: one per worker), ``cpu_affinity``,
      ``heartbeat_period`` (2 s: how soon a dead worker is noticed), ``heartbeat_threshold``
      (10 s: how soon a lost block is), ``poll_period``, ``encrypted``, ``address``,
      ``htex_options`` (anything else for ``HighThroughputExecutor``) and the DataFlowKernel's
      ``run_dir``, ``strategy`` (``"simple"``), ``strategy_period`` (0.5 s),
      ``max_idletime`` (120 s).

    With Slurm on a cluster, ``run_dir`` must be on a file system the nodes share (it holds
    the markers that cancel running calls, and Parsl's logs).
    """

    name = "parsl"

    def __init__(self, config: Any = None, executor: Any = None, **options: Any) -> None:
        _import_parsl()
        from parsl.executors import HighThroughputExecutor

        known = set(_OPTIONS) | set(_CONFIG_OPTIONS)
        unknown = sorted(set(options) - known)
        if unknown:
            raise ConfigurationError(
                f"unknown option(s) {unknown} for backend 'parsl'; it takes: config, executor, "
                f"{', '.join(sorted(known))}"
            )
        if config is not None and executor is not None:
            raise ConfigurationError("give the parsl backend config= or executor=, not both")
        if config is not None and set(options) - {"label"}:
            raise ConfigurationError(
                f"with config= the options {sorted(set(options) - {'label'})} do not apply: "
                "set them in the Parsl Config"
            )
        if executor is not None and set(options) - set(_CONFIG_OPTIONS):
            raise ConfigurationError(
                f"with executor= only {sorted(_CONFIG_OPTIONS)} apply; set "
                f"{sorted(set(options) - set(_CONFIG_OPTIONS))} on the HighThroughputExecutor"
            )
        opts = {**_OPTIONS, **_CONFIG_OPTIONS, **options}
        self._node: Node | None = None  # a Slurm partition's smallest node, when asked
        self._own_run_dir: str | None = None
        self._local_cores = len(os.sched_getaffinity(0))
        if config is None:
            if executor is None:
                executor = self._build_executor(opts)
            elif not isinstance(executor, HighThroughputExecutor):
                raise ConfigurationError(
                    f"executor= must be a parsl HighThroughputExecutor, got {executor!r}"
                )
            config = self._build_config(executor, opts)
        self._htex = self._pick_executor(config, options.get("label"))
        self._direct = _takes_task_executor(self._htex)
        self._lock = threading.Lock()
        self._submit_lock = threading.Lock()  # HTEX's submit is not thread-safe (its ZMQ queue)
        self._idle = threading.Condition(self._lock)
        self._live: dict[str, _Call] = {}  # invocation id -> call, until it is settled
        self._closing = False
        self._closed = False
        self._fitting: set[tuple[int, float, int | None]] = set()
        self._pgids: dict[str, int] = {}  # LocalProvider blocks: job id -> process group
        from parsl.dataflow.dflow import DataFlowKernel

        try:
            self._dfk = DataFlowKernel(config)
        except (TypeError, ValueError) as exc:
            self._drop_run_dir()
            raise ConfigurationError(f"Parsl rejected the configuration: {exc}") from exc
        except Exception as exc:
            self._drop_run_dir()
            raise EngineError(f"could not start Parsl: {type(exc).__name__}: {exc}") from exc
        self._folder = os.path.join(self._dfk.run_dir, "hetfaas")  # cancel and alarm markers
        os.makedirs(self._folder, exist_ok=True)
        atexit.register(_shutdown_at_exit, weakref.ref(self))

    # -------------------------------------------------------------- configuration

    def _build_executor(self, o: dict[str, Any]) -> Any:
        from parsl.executors import HighThroughputExecutor
        from parsl.jobs.error_handlers import windowed_error_handler  # see the module docstring
        from parsl.launchers import SingleNodeLauncher, SrunLauncher
        from parsl.providers import LocalProvider, SlurmProvider
        from parsl.providers.base import ExecutionProvider

        cpw = o["cores_per_worker"]
        if not isinstance(cpw, (int, float)) or isinstance(cpw, bool) or cpw <= 0:
            raise ConfigurationError(f"cores_per_worker must be a positive number, got {cpw!r}")
        blocks = {k: o[k] for k in ("init_blocks", "min_blocks", "max_blocks", "parallelism")}
        kind = o["provider"]
        address = o["address"]
        accelerators = o["available_accelerators"]
        launcher = o["launcher"]
        if kind == "local":
            cores = o["cores_per_node"] or self._local_cores
            provider = LocalProvider(
                nodes_per_block=o["nodes_per_block"], worker_init=o["worker_init"],
                launcher=launcher or SingleNodeLauncher(), **blocks,
            )  # fmt: skip
            address = address or "127.0.0.1"
        elif kind == "slurm":
            require_slurm()
            self._node = _smallest_node(o["partition"])
            cores = o["cores_per_node"] or self._node.cpus
            gpus = o["gpus_per_node"]
            if gpus and not accelerators:
                accelerators = int(gpus)
            if launcher is None:
                launcher = SrunLauncher() if o["nodes_per_block"] > 1 else SingleNodeLauncher()
            provider = SlurmProvider(
                partition=o["partition"], account=o["account"], qos=o["qos"],
                nodes_per_block=o["nodes_per_block"], cores_per_node=cores,
                mem_per_node=o["mem_per_node"], gpus_per_node=gpus, walltime=o["walltime"],
                scheduler_options=o["scheduler_options"], worker_init=o["worker_init"],
                exclusive=o["exclusive"], launcher=launcher, **blocks,
            )  # fmt: skip
        elif isinstance(kind, ExecutionProvider):
            provider = kind
            cores = o["cores_per_node"] or getattr(provider, "cores_per_node", None)
            cores = cores or self._local_cores
        else:
            raise ConfigurationError(
                f"provider must be 'local', 'slurm' or a parsl ExecutionProvider, got {kind!r}"
            )
        workers = o["max_workers_per_node"] or max(1, int(cores // cpw))
        n_acc = accelerators if isinstance(accelerators, int) else len(accelerators)
        if n_acc:
            workers = min(workers, n_acc)
        affinity = o["cpu_affinity"]
        if affinity is None:
            affinity = "block" if workers * cpw <= cores and cpw == int(cpw) else "none"
        launch_cmd, interchange_cmd = launch_commands()
        extra = dict(o["htex_options"] or {})
        extra.setdefault("launch_cmd", launch_cmd)
        extra.setdefault("interchange_launch_cmd", interchange_cmd)
        try:
            return HighThroughputExecutor(
                label=o["label"], provider=provider, address=address, cores_per_worker=cpw,
                max_workers_per_node=workers, mem_per_worker=o["mem_per_worker"],
                available_accelerators=accelerators, cpu_affinity=affinity,
                heartbeat_period=o["heartbeat_period"],
                heartbeat_threshold=o["heartbeat_threshold"], poll_period=o["poll_period"],
                encrypted=o["encrypted"], block_error_handler=windowed_error_handler,
                **extra,
            )  # fmt: skip
        except (TypeError, ValueError) as exc:  # typeguard's checks of the options
            raise ConfigurationError(f"HighThroughputExecutor rejected an option: {exc}") from exc

    def _build_config(self, executor: Any, o: dict[str, Any]) -> Any:
        from parsl.config import Config

        run_dir = o["run_dir"]
        if run_dir is None:
            run_dir = self._own_run_dir = tempfile.mkdtemp(prefix="hetfaas-parsl-")
        try:
            return Config(
                executors=[executor], run_dir=str(run_dir), strategy=o["strategy"],
                strategy_period=o["strategy_period"], max_idletime=o["max_idletime"],
                initialize_logging=False, usage_tracking=0,
            )  # fmt: skip
        except (TypeError, ValueError) as exc:
            self._drop_run_dir()
            raise ConfigurationError(f"Parsl's Config rejected an option: {exc}") from exc

    def _pick_executor(self, config: Any, label: str | None) -> Any:
        from parsl.executors import HighThroughputExecutor

        found = [e for e in config.executors if isinstance(e, HighThroughputExecutor)]
        if label is not None:
            found = [e for e in found if e.label == label]
        if len(found) != 1:
            self._drop_run_dir()
            which = f" labelled {label!r}" if label is not None else ""
            raise ConfigurationError(
                f"the Parsl config needs exactly one HighThroughputExecutor{which} for hetfaas, "
                f"found {len(found)} (pass label= to pick one)"
            )
        return found[0]

    def _drop_run_dir(self) -> None:
        if self._own_run_dir is not None:
            shutil.rmtree(self._own_run_dir, ignore_errors=True)

    # -------------------------------------------------------------- what a worker has

    @property
    def executor(self) -> Any:
        """The Parsl ``HighThroughputExecutor`` running the calls."""
        return self._htex

    @property
    def dfk(self) -> Any:
        """The ``DataFlowKernel`` this backend made (a plain Parsl app may use it too)."""
        return self._dfk

    def _worker_cores(self) -> float:
        return float(self._htex.cores_per_worker)

    def _worker_memory_mb(self) -> int | None:
        htex = self._htex
        if htex.mem_per_worker:
            return int(htex.mem_per_worker * 1024)
        per_node = getattr(htex.provider, "mem_per_node", None)
        if per_node:
            return int(per_node * 1024)
        if self._node is not None:
            return self._node.memory_mb or None
        from parsl.providers import LocalProvider

        if isinstance(htex.provider, LocalProvider):
            import psutil

            return int(psutil.virtual_memory().total // _MiB)
        return None

    def _fits(self, res: Resources) -> str:
        """Why ``res`` can never run on these workers ('' when it can)."""
        cores = self._worker_cores()
        if res.cpus > cores:
            return (
                f"cpus={res.cpus}: each Parsl worker has cores_per_worker={cores:g} core(s) "
                "(HTEX takes no per-call core count); raise cores_per_worker"
            )
        accelerators = len(self._htex.available_accelerators)
        if res.gpus > 1:
            return f"gpus={res.gpus}: a Parsl worker is pinned to one accelerator"
        if res.gpus and not accelerators:
            return (
                f"gpus={res.gpus}: these Parsl workers have no accelerator "
                "(available_accelerators, or gpus_per_node on Slurm)"
            )
        mem = self._worker_memory_mb()
        if res.memory_mb is not None and mem is not None and res.memory_mb > mem:
            return f"memory_mb={res.memory_mb}: a Parsl worker has {mem} MB at most"
        return ""

    # -------------------------------------------------------------- Backend API

    def capacity(self) -> Capacity:
        htex = self._htex
        provider = htex.provider
        per_block = float(htex.workers_per_node) * provider.nodes_per_block
        workers = max(1, int(per_block * max(1, provider.max_blocks)))
        names = tuple(str(a) for a in htex.available_accelerators)
        gpus = len(names) * provider.nodes_per_block * max(1, provider.max_blocks)
        mem = self._worker_memory_mb() or 0
        if not htex.mem_per_worker:  # per node: as many as there are nodes
            mem *= provider.nodes_per_block * max(1, provider.max_blocks)
        else:
            mem *= workers
        cpus = math.ceil(workers * self._worker_cores())
        return Capacity(cpus, gpus, names * (gpus // max(1, len(names))), workers, mem)

    def prepare(self, spec: CallSpec) -> _Call:
        res = spec.resources
        key = (res.cpus, float(res.gpus), res.memory_mb)
        if key not in self._fitting:
            why = self._fits(res)
            if why:
                raise ResourceError(why)
            self._fitting.add(key)
        payload = Payload.build(spec.fn, spec.args, spec.kwargs, res)
        payload.timeout_s = res.timeout_s
        call = _Call(spec.future, payload)
        contract.attach(spec.future, canceller=functools.partial(self._cancel, call))
        return call

    def dispatch(self, prepared: list[Any]) -> None:
        if self._closing:
            raise ExecutorShutdownError("this executor is shut down; it accepts no calls")
        for i, call in enumerate(prepared):
            fut = call.future
            if not contract.start(fut):
                continue  # cancelled while it waited in a batch
            iid = fut.invocation_id
            blob = pack_call(call.payload, iid, self._folder)
            with self._lock:
                self._live[iid] = call
            try:
                with self._submit_lock:
                    task = self._submit(blob)
            except Exception as exc:
                err = self._refused(exc)
                for rest in prepared[i:]:
                    if rest is call or contract.start(rest.future):
                        with self._lock:
                            self._live.pop(rest.future.invocation_id, None)
                        fail(rest.future, rest.payload, err, self.name)
                raise err from exc
            fut.engine_id = str(getattr(task, "parsl_executor_task_id", "")) or None
            task.add_done_callback(functools.partial(self._done, call))

    def _submit(self, blob: bytes) -> Any:
        """One task on HTEX (under the submit lock): the pickled call as the task's buffer
        where the workers take it so, else ``run_call(blob)`` as a Parsl function task."""
        if self._direct:
            return self._htex.submit_payload(_TASK_CONTEXT, blob)
        return self._htex.submit(run_call, {}, blob)

    def _refused(self, exc: BaseException) -> BaseException:
        if self._htex.bad_state_is_set:
            return EngineError(f"Parsl's executor is in a failed state: {exc}")
        if isinstance(exc, TypeError):  # Parsl could not serialize the task
            return EngineError(f"Parsl could not serialize the call: {exc}")
        return EngineError(f"Parsl refused the task: {type(exc).__name__}: {exc}")

    def warmup(self, n: int, resources: Resources) -> None:
        """Start blocks for up to ``n`` workers now (Parsl's strategy ends them again after
        ``max_idletime`` idle) and run a short call on each, so that later calls find warm
        workers."""
        why = self._fits(resources)
        if why:
            raise ResourceError(why)
        htex = self._htex
        per_block = max(1, int(float(htex.workers_per_node) * htex.provider.nodes_per_block))
        n = max(1, min(n, self.capacity().max_workers))
        from parsl.jobs.states import TERMINAL_STATES

        active = sum(1 for s in htex.status_facade.values() if s.state not in TERMINAL_STATES)
        want = min(math.ceil(n / per_block), htex.provider.max_blocks)
        if want > active:
            htex.scale_out_facade(want - active)
        deadline = time.monotonic() + 600
        while self._connected_workers() < n and time.monotonic() < deadline:
            if htex.bad_state_is_set:
                raise EngineError(f"Parsl could not start its blocks: {htex.executor_exception}")
            time.sleep(0.05)
        blob = pack_call(Payload.build(touch, (0.2,), {}, resources))
        with self._submit_lock:
            tasks = [self._submit(blob) for _ in range(n)]
        for task in tasks:
            task.result(timeout=600)

    def _connected_workers(self) -> int:
        try:
            managers = self._htex.connected_managers()
        except Exception:
            return 0
        return sum(int(m.get("worker_count", 0)) for m in managers if m.get("active", True))

    def stats(self) -> dict[str, int]:
        try:
            managers = [m for m in self._htex.connected_managers() if m.get("active", True)]
        except Exception:
            return {}
        workers = sum(int(m.get("worker_count", 0)) for m in managers)
        busy = min(workers, sum(int(m.get("tasks", 0)) for m in managers))
        outstanding = self._htex.outstanding()
        return {"workers_idle": workers - busy, "workers_busy": busy, "running": busy,
                "queued": max(0, outstanding - busy)}  # fmt: skip

    # -------------------------------------------------------------- completion

    def _claim(self, call: _Call) -> bool:
        with self._lock:
            return self._live.pop(call.future.invocation_id, None) is not None

    def _settled(self) -> None:
        with self._idle:
            if not self._live:
                self._idle.notify_all()

    def _done(self, call: _Call, task: Any) -> None:
        """HTEX's future of ``call`` is done (in HTEX's result thread)."""
        iid = call.future.invocation_id
        if not self._claim(call):  # cancelled, or failed by shutdown: only clean up
            self._drop_markers(iid)
            return
        try:
            try:
                reply = pickle.loads(task.result())
            except BaseException as err:
                fail(call.future, call.payload, self._translate(call, err), self.name)
            else:
                complete(call.future, call.payload, reply, self.name)
        finally:
            if call.timed:
                self._drop_markers(iid)
            self._settled()

    def _translate(self, call: _Call, err: BaseException) -> BaseException:
        from parsl.executors.errors import BadStateException
        from parsl.executors.high_throughput.errors import ManagerLost, WorkerLost

        iid = call.future.invocation_id
        name = call.payload.fn_name
        if isinstance(err, WorkerLost):
            if call.timed:
                trace = self._alarm_trace(iid)
                limit = f"timeout_s={call.payload.timeout_s:g}"
                if trace is not None:
                    return CallTimeout(
                        f"call {iid} ({name}) ran past its {limit} and did not stop (C code "
                        f"holding the GIL?): its Parsl worker was ended {GRACE_S:g} s later, "
                        f"in:\n{trace}",
                        iid,
                    )
                hint = f"; if it held the GIL past its {limit}, its backstop ended it"
            else:
                hint = ""
            return WorkerDied(f"call {iid} ({name}): its Parsl worker died ({err}){hint}", iid)
        if isinstance(err, ManagerLost):
            return WorkerDied(
                f"call {iid} ({name}): the Parsl block running it was lost ({err})", iid
            )
        if isinstance(err, BadStateException):
            return JobFailed(
                f"call {iid} ({name}): Parsl's blocks failed to start: {err}", iid, state="FAILED"
            )
        if isinstance(err, CallCancelled):
            return err
        tb = getattr(err, "__traceback__", None)
        import traceback

        text = "".join(traceback.format_exception(type(err), err, tb))
        return RemoteError(type(err).__qualname__, str(err), text, iid)

    def _alarm_trace(self, iid: str) -> str | None:
        path = os.path.join(self._folder, iid + ALARM_SUFFIX)
        try:
            with open(path) as f:
                text = f.read()
        except OSError:
            return None
        return text.strip() or None

    def _drop_markers(self, iid: str) -> None:
        for path in (
            os.path.join(self._folder, iid),
            os.path.join(self._folder, iid + ALARM_SUFFIX),
        ):
            with contextlib.suppress(OSError):
                os.unlink(path)

    # -------------------------------------------------------------- cancel

    def _mark_cancelled(self, iid: str) -> bool:
        try:
            with open(os.path.join(self._folder, iid), "w"):
                pass
        except OSError:
            return False
        return True

    def _cancel(self, call: _Call, fut: Future) -> bool:
        """The future's canceller: a call still in Parsl's queue will not start; a running
        one's worker is killed (Parsl starts a fresh one)."""
        iid = fut.invocation_id
        with self._lock:
            if iid not in self._live or not self._mark_cancelled(iid):
                return False
            del self._live[iid]
        self._settled()
        return True

    def cancel_pending(self) -> None:
        """Cancel every call still in Parsl (it cannot tell waiting calls from running ones:
        running ones are stopped too)."""
        self._fail_live(lambda iid: CallCancelled(f"call {iid} was cancelled in Parsl", iid))

    def _fail_live(self, error: Any) -> None:
        with self._lock:
            calls = list(self._live.values())
            self._live.clear()
        for call in calls:
            self._mark_cancelled(call.future.invocation_id)
            fail(call.future, call.payload, error(call.future.invocation_id), self.name)
        self._settled()

    # -------------------------------------------------------------- shutdown

    def shutdown(self, wait: bool = True, cancel_futures: bool = False) -> None:
        with self._lock:
            if self._closing:
                return
            self._closing = True
        if cancel_futures:
            self.cancel_pending()
        if wait:
            with self._idle:
                while self._live and not self._htex.bad_state_is_set:
                    self._idle.wait(0.5)
        if threading.current_thread() is getattr(self._htex, "_result_queue_thread", None):
            # called from a call's done-callback: HTEX's shutdown joins this very thread
            threading.Thread(target=self._stop, name="hetfaas-parsl-stop").start()
        else:
            self._stop()

    def _stop(self) -> None:
        htex = self._htex
        provider = htex.provider
        self._remember_groups()
        jobs = list(getattr(provider, "resources", {}) or {})
        with contextlib.suppress(Exception):
            self._dfk.cleanup()
        if htex.bad_state_is_set and jobs:  # Parsl does not scale in an executor in bad state
            with contextlib.suppress(Exception):
                provider.cancel(jobs)
        self._wait_gone(jobs)
        self._fail_live(lambda iid: WorkerDied(f"call {iid}: the executor shut down while it ran",
                                               iid))  # fmt: skip
        self._closed = True
        shutil.rmtree(self._folder, ignore_errors=True)
        self._drop_run_dir()

    def _remember_groups(self) -> None:
        """The process groups of LocalProvider blocks (their shells made one each)."""
        for job_id, info in list((getattr(self._htex.provider, "resources", None) or {}).items()):
            pid = info.get("remote_pid") if isinstance(info, dict) else None
            if pid and job_id not in self._pgids:
                with contextlib.suppress(OSError):
                    self._pgids[job_id] = os.getpgid(int(pid))

    def _wait_gone(self, jobs: list[str]) -> None:
        """Until the blocks' processes are gone: SIGKILL for local ones that linger, squeue
        for Slurm jobs (scancel again if one lingers)."""
        from parsl.providers import LocalProvider, SlurmProvider

        provider = self._htex.provider
        deadline = time.monotonic() + _GONE_S
        if isinstance(provider, LocalProvider):
            groups = {g for g in self._pgids.values() if g != os.getpgid(0)}
            while groups:
                groups = {g for g in groups if _group_alive(g)}
                if not groups:
                    break
                if time.monotonic() > deadline - _GONE_S / 2:
                    for g in groups:
                        with contextlib.suppress(OSError):
                            os.killpg(g, signal.SIGKILL)
                if time.monotonic() > deadline:
                    break
                time.sleep(0.05)
        elif isinstance(provider, SlurmProvider) and jobs:
            scancelled = False
            while time.monotonic() < deadline:
                try:
                    out = subprocess.run(
                        ["squeue", "-h", "-o", "%i", "-j", ",".join(jobs)],
                        capture_output=True, text=True, timeout=15,
                    ).stdout.split()  # fmt: skip
                except (OSError, subprocess.SubprocessError):
                    return
                if not out:
                    return
                if not scancelled and time.monotonic() > deadline - _GONE_S / 2:
                    subprocess.run(["scancel", *out], capture_output=True, timeout=15)
                    scancelled = True
                time.sleep(0.2)


def _group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # a group of zombies only is gone too: nobody reaped them yet
    import psutil

    for proc in psutil.process_iter(["pid"]):
        try:
            if os.getpgid(proc.pid) == pgid and proc.status() != psutil.STATUS_ZOMBIE:
                return True
        except (OSError, psutil.Error):
            continue
    return False


def _shutdown_at_exit(ref: weakref.ref[ParslBackend]) -> None:
    backend = ref()
    if backend is not None and not backend._closed:
        with contextlib.suppress(Exception):
            backend.shutdown(wait=False, cancel_futures=True)


def _smallest_node(partition: str | None) -> Node:
    """The usable node of ``partition`` (or of any) with the fewest cores: a block that fits
    it fits any of them."""
    nodes = parse_sinfo(slurm_command(list(SINFO_COMMAND)))
    if partition is not None:
        nodes = [n for n in nodes if partition in n.partitions]
    live = [n for n in nodes if n.usable] or nodes
    if not live:
        where = f"partition {partition!r}" if partition else "this Slurm"
        raise ConfigurationError(f"sinfo lists no node in {where}")
    return min(live, key=lambda n: (n.cpus, n.memory_mb))


__all__ = ["ParslBackend", "launch_commands"]
