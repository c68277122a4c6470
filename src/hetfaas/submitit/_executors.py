"""Submitit's executors on hetfaas: ``AutoExecutor``, ``LocalExecutor``, ``SlurmExecutor``,
``DebugExecutor``.

Parameters (``update_parameters``), as Submitit's ``AutoExecutor`` takes them:

- common: ``timeout_min``, ``cpus_per_task``, ``gpus_per_node``, ``mem_gb``, ``name``,
  ``nodes``, ``tasks_per_node``, ``stderr_to_stdout``;
- ``slurm_*``: Slurm's, passed to Submitit's Slurm executor on Slurm. On the local cluster
  they are ignored, as Submitit ignores another cluster's options, except the two that apply
  there too: ``slurm_array_parallelism`` (at most that many tasks of a ``map_array`` run at
  once) and ``slurm_max_num_timeout`` (how many times a checkpointable call is requeued after
  its time limit; ``local_max_num_timeout`` wins locally);
- ``local_*``: the local cluster's (``local_max_num_timeout``), ignored on Slurm.

Unknown parameters fail with the list of known ones. Locally, ``nodes`` > 1 simulates nodes:
task ``r`` of a job is on node ``r // tasks_per_node`` (Submitit's local executor refuses).
"""

from __future__ import annotations

import contextlib
import functools
import itertools
import os
import shutil
import socket
import subprocess
import threading
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any

from .._executor import Executor as _Pool
from .._resources import Resources
from ..backends.submitit_backend import id_independent_folder
from ..exceptions import ConfigurationError
from ._debug import DebugJob
from ._environment import task_variables
from ._job import Job, job_paths, resolve_folder
from ._tasks import _checkpoint_of, run_local_tasks, run_slurm_task, run_task

COMMON = frozenset({"timeout_min", "cpus_per_task", "gpus_per_node", "mem_gb", "name", "nodes",
                    "tasks_per_node", "stderr_to_stdout"})  # fmt: skip
# Submitit's common parameters that Slurm takes as job options, by their Slurm names
_SLURM_GENERIC = {"name": "slurm_job_name", "nodes": "slurm_nodes",
                  "tasks_per_node": "slurm_ntasks_per_node",
                  "stderr_to_stdout": "slurm_stderr_to_stdout"}  # fmt: skip
_CHECKPOINT_GRACE_S = 30.0  # a checkpoint that does not return in this time is killed
_ids = itertools.count(1)


def slurm_reachable() -> bool:
    """Whether a Slurm cluster answers here: ``sbatch`` on the PATH and ``sinfo`` working."""
    if shutil.which("sbatch") is None or shutil.which("sinfo") is None:
        return False
    try:
        proc = subprocess.run(["sinfo", "-h"], capture_output=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return False
    return proc.returncode == 0


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Executor:
    """What Submitit's executors share: ``update_parameters``, ``submit``, ``map_array``,
    ``submit_array``, ``batch``, ``shutdown``. Subclasses run jobs on one cluster."""

    cluster = "local"

    def __init__(self, folder: str | os.PathLike[str], **options: Any) -> None:
        self.folder = Path(folder).expanduser().absolute()  # may hold %j, %A, %a
        id_independent_folder(self.folder).mkdir(parents=True, exist_ok=True)
        self.parameters: dict[str, Any] = {}
        self._options = options
        self._resources = Resources()

    # ------------------------------------------------------------------ parameters

    def update_parameters(self, **kwargs: Any) -> None:
        """Set Submitit's parameters (see the module's docstring)."""
        kwargs = {k: v for k, v in kwargs.items() if v is not None}
        unknown = [k for k in kwargs if k not in COMMON and not k.startswith(("slurm_", "local_"))]
        if unknown:
            raise ConfigurationError(
                f"unknown parameter(s) {sorted(unknown)}; known: {sorted(COMMON)} and "
                "slurm_*/local_* options"
            )
        for key in ("nodes", "tasks_per_node"):
            if key in kwargs and int(kwargs[key]) < 1:
                raise ConfigurationError(f"{key} must be >= 1, got {kwargs[key]}")
        self.parameters.update(kwargs)
        changes: dict[str, Any] = {}
        if "timeout_min" in kwargs:
            changes["timeout_s"] = float(kwargs["timeout_min"]) * 60
        if "cpus_per_task" in kwargs:
            changes["cpus"] = int(kwargs["cpus_per_task"])
        if "gpus_per_node" in kwargs:
            changes["gpus"] = kwargs["gpus_per_node"]
        if "mem_gb" in kwargs:
            changes["memory_mb"] = int(float(kwargs["mem_gb"]) * 1024)
        if changes:
            self._resources = self._resources.replace(**changes)

    @property
    def num_tasks(self) -> int:
        return int(self.parameters.get("nodes", 1)) * int(self.parameters.get("tasks_per_node", 1))

    @property
    def _max_requeues(self) -> int:
        p = self.parameters
        opts = self._options
        for key in ("local_max_num_timeout", "slurm_max_num_timeout"):
            if key in p:
                return int(p[key])
            if key in opts:
                return int(opts[key])
        return 3

    # ------------------------------------------------------------------ submission

    def submit(self, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Job:
        return self._submit_one(fn, args, kwargs)

    def map_array(self, fn: Callable[..., Any], *iterables: Iterable[Any]) -> list[Job]:
        """One job per element (zipped as ``map`` does), as one job array."""
        columns = [list(it) for it in iterables]
        if len({len(c) for c in columns}) > 1:
            raise ConfigurationError(
                f"map_array needs iterables of one length, got {[len(c) for c in columns]}"
            )
        return self._submit_array([(fn, tuple(c), {}) for c in zip(*columns, strict=True)])

    def submit_array(self, fns: Iterable[Callable[[], Any]]) -> list[Job]:
        """One job per callable (called without arguments), as one job array."""
        return self._submit_array([(f, (), {}) for f in fns])

    def _submit_one(self, fn: Callable[..., Any], args: tuple[Any, ...], kwargs: dict[str, Any],
                    job_id: str | None = None) -> Job:  # fmt: skip
        raise NotImplementedError

    def _submit_array(self, calls: list[tuple[Callable[..., Any], tuple[Any, ...], dict[str, Any]]]
                      ) -> list[Job]:  # fmt: skip
        raise NotImplementedError

    @contextlib.contextmanager
    def batch(self) -> Iterator[None]:
        yield

    def shutdown(self) -> None:
        pass

    def __enter__(self) -> Executor:
        return self

    def __exit__(self, *exc: object) -> None:
        self.shutdown()


class _PoolExecutor(Executor):
    """Jobs as calls of a hetfaas executor: the warm local pool, or the ``slurm`` backend."""

    def __init__(self, folder: str | os.PathLike[str], **options: Any) -> None:
        super().__init__(folder, **options)
        self._engine_params: dict[str, Any] = {}
        self._retired: list[_Pool] = []
        self._pool = self._make_pool()

    def _make_pool(self) -> _Pool:
        raise NotImplementedError

    def _view(self, resources: Resources | None = None) -> _Pool:
        return self._pool.options(resources=resources or self._resources)

    @contextlib.contextmanager
    def batch(self) -> Iterator[None]:
        with self._pool.batch():
            yield

    def shutdown(self) -> None:
        for ex in [*self._retired, self._pool]:
            ex.shutdown()

    @property
    def _merged(self) -> bool:
        return bool(self.parameters.get("stderr_to_stdout", False))


class LocalExecutor(_PoolExecutor):
    """Submitit's ``LocalExecutor`` on the warm local pool: each job a call to a warm worker
    (no new process), its stdout and stderr captured and written to Submitit's log files.
    Other keyword options go to the pool (e.g. ``max_workers``); ``max_num_timeout``: how
    many times a checkpointable call is requeued after its time limit (default 3)."""

    cluster = "local"

    def __init__(self, folder: str | os.PathLike[str], max_num_timeout: int | None = None,
                 **options: Any) -> None:  # fmt: skip
        if max_num_timeout is not None:
            options["local_max_num_timeout"] = max_num_timeout
        super().__init__(folder, **options)

    def _make_pool(self) -> _Pool:
        opts = {k: v for k, v in self._options.items() if not k.startswith(("slurm_", "local_"))}
        return _Pool("local", capture_output=True, **opts)

    def _new_id(self) -> str:
        return f"local-{os.getpid()}-{next(_ids)}"

    def _submit_one(self, fn: Callable[..., Any], args: tuple[Any, ...], kwargs: dict[str, Any],
                    job_id: str | None = None, start: bool = True) -> Job:  # fmt: skip
        job_id = job_id or self._new_id()
        folder = resolve_folder(self.folder, job_id)
        array = (job_id.partition("_")[0], int(job_id.partition("_")[2])) if "_" in job_id else None
        ntasks, per_node = self.num_tasks, int(self.parameters.get("tasks_per_node", 1))
        nodes = int(self.parameters.get("nodes", 1))
        res = self._resources
        merged = self._merged
        resubmit = None
        if ntasks == 1:
            env = task_variables(job_id, folder, array=array)
            after = res.timeout_s if res.timeout_s and _checkpoint_of(fn) is not None else None
            view = self._view(res.replace(timeout_s=after + _CHECKPOINT_GRACE_S) if after else res)

            def run(f: Any, a: tuple[Any, ...], kw: dict[str, Any]) -> Any:
                return view.submit(run_task, f, env, a, kw, after, merged)

            def resubmit(d: Any) -> Any:
                return run(d.function, tuple(d.args), dict(d.kwargs))

            launch = functools.partial(run, fn, args, kwargs)
        else:
            folder.mkdir(parents=True, exist_ok=True)
            port = _free_port()
            envs = [task_variables(job_id, folder, r, per_node, nodes, array=array,
                                   master_port=port) for r in range(ntasks)]  # fmt: skip
            logs, results = [], []
            for r in range(ntasks):
                p = job_paths(folder, job_id, r)
                logs.append((str(p.stdout), str(p.stdout if merged else p.stderr)))
                results.append(str(p.result_pickle))
            cores = self._pool.capacity.cpus or 1
            view = self._view(res.replace(cpus=max(1, min(res.cpus * ntasks, cores))))
            launch = functools.partial(
                view.submit, run_local_tasks, fn, args, kwargs, envs, logs, results
            )
        job = Job("local", folder, job_id, ntasks, str(self.parameters.get("name", "")),
                  launch, resubmit, self._max_requeues, merged)  # fmt: skip
        if start:
            job.begin()
        return job

    def _submit_array(self, calls: list[tuple[Callable[..., Any], tuple[Any, ...], dict[str, Any]]]
                      ) -> list[Job]:  # fmt: skip
        array = self._new_id()
        cap = self.parameters.get("slurm_array_parallelism")
        jobs = [self._submit_one(f, a, kw, f"{array}_{i}", start=cap is None)
                for i, (f, a, kw) in enumerate(calls)]  # fmt: skip
        if cap is not None and jobs:
            _Feeder(jobs, int(cap)).start()
        return jobs


class _Feeder(threading.Thread):
    """Starts the jobs of an array at most ``cap`` at a time (``slurm_array_parallelism``)."""

    def __init__(self, jobs: list[Job], cap: int) -> None:
        super().__init__(name="hetfaas-array", daemon=True)
        if cap < 1:
            raise ConfigurationError(f"slurm_array_parallelism must be >= 1, got {cap}")
        self.jobs = jobs
        self.slots = threading.Semaphore(cap)

    def run(self) -> None:
        for job in self.jobs:
            self.slots.acquire()
            job.add_done_callback(lambda _: self.slots.release())
            with contextlib.suppress(Exception):  # the job holds its submission's error
                job.begin()


class SlurmExecutor(_PoolExecutor):
    """Jobs on Slurm through hetfaas's ``slurm`` backend (Submitit's Slurm executor beneath,
    completion seen within milliseconds instead of Submitit's one-second polls).

    ``update_parameters`` takes Submitit's ``SlurmExecutor`` names (``partition``, ``time``,
    ``ntasks_per_node``, ``nodes``, ``cpus_per_task``, ``gpus_per_node``, ``mem``,
    ``job_name``, ``array_parallelism``, ``stderr_to_stdout``, ``additional_parameters``...)
    or the ``AutoExecutor``'s (``timeout_min``, ``slurm_partition``...)."""

    cluster = "slurm"
    _RENAMES = {"time": "timeout_min", "ntasks_per_node": "tasks_per_node", "job_name": "name"}

    def __init__(self, folder: str | os.PathLike[str], max_num_timeout: int | None = None,
                 **options: Any) -> None:  # fmt: skip
        if not slurm_reachable():
            raise ConfigurationError(
                "no Slurm cluster answers here (sbatch and sinfo); use cluster='local' or start "
                "one with scripts/slurm-up"
            )
        if max_num_timeout is not None:
            options["slurm_max_num_timeout"] = max_num_timeout
        super().__init__(folder, **options)

    def update_parameters(self, **kwargs: Any) -> None:
        plain = {}
        for k, v in kwargs.items():
            if k in COMMON or k.startswith(("slurm_", "local_")):
                plain[k] = v
            elif k in self._RENAMES:
                plain[self._RENAMES[k]] = v
            elif k == "mem":
                plain["slurm_mem"] = v
            else:
                plain[f"slurm_{k}"] = v
        super().update_parameters(**plain)

    def _wanted(self) -> dict[str, Any]:
        p = self.parameters
        wanted = {k: v for k, v in p.items() if k.startswith("slurm_")}
        wanted.update({slurm: p[k] for k, slurm in _SLURM_GENERIC.items() if k in p})
        wanted.update({k: v for k, v in self._options.items() if k.startswith("slurm_")})
        return wanted

    def _make_pool(self) -> _Pool:
        params = self._wanted()
        self._engine_params = dict(params)
        partition = params.pop("slurm_partition", None)
        opts = {k: v for k, v in self._options.items() if not k.startswith(("slurm_", "local_"))}
        return _Pool("slurm", folder=self.folder, partition=partition, **opts, **params)

    def _view(self, resources: Resources | None = None) -> _Pool:
        if self._wanted() != self._engine_params:  # new Slurm parameters: a new Slurm executor
            self._retired.append(self._pool)
            self._pool = self._make_pool()
        return super()._view(resources)

    def _prepared(self, fn: Callable[..., Any], args: tuple[Any, ...], kwargs: dict[str, Any]
                  ) -> tuple[Callable[..., Any], tuple[Any, ...]]:  # fmt: skip
        if self.num_tasks > 1:
            tasks = id_independent_folder(self.folder) / "tasks"
            tasks.mkdir(parents=True, exist_ok=True)
            return run_slurm_task, (fn, args, kwargs, str(tasks))
        if _checkpoint_of(fn) is not None:  # the backend requeues it (Submitit's checkpoint)
            return fn, args
        return run_task, (fn, {}, args, kwargs, None, False)

    def _submit_one(self, fn: Callable[..., Any], args: tuple[Any, ...], kwargs: dict[str, Any],
                    job_id: str | None = None) -> Job:  # fmt: skip
        target, targs = self._prepared(fn, args, kwargs)
        kw = kwargs if target is fn else {}
        launch = functools.partial(self._view().submit, target, *targs, **kw)
        job = Job("slurm", self.folder, None, self.num_tasks, str(self.parameters.get("name", "")),
                  launch)  # fmt: skip
        job.begin()
        return job

    def _submit_array(self, calls: list[tuple[Callable[..., Any], tuple[Any, ...], dict[str, Any]]]
                      ) -> list[Job]:  # fmt: skip
        view = self._view()
        jobs = []
        with view.batch():
            for fn, args, kwargs in calls:
                target, targs = self._prepared(fn, args, kwargs)
                kw = kwargs if target is fn else {}
                launch = functools.partial(view.submit, target, *targs, **kw)
                job = Job("slurm", self.folder, None, self.num_tasks,
                          str(self.parameters.get("name", "")), launch)  # fmt: skip
                job.begin()
                jobs.append(job)
        return jobs


class DebugExecutor(Executor):
    """Submitit's ``DebugExecutor``: jobs run in this process, when their result is asked
    for (``result()``, ``done()``, ``wait()``), so breakpoints and ``pdb`` work."""

    cluster = "debug"

    def _submit_one(self, fn: Callable[..., Any], args: tuple[Any, ...], kwargs: dict[str, Any],
                    job_id: str | None = None) -> Job:  # fmt: skip
        return DebugJob(self.folder, fn, args, kwargs, self.num_tasks, self.parameters)

    def _submit_array(self, calls: list[tuple[Callable[..., Any], tuple[Any, ...], dict[str, Any]]]
                      ) -> list[Job]:  # fmt: skip
        return [self._submit_one(f, a, kw) for f, a, kw in calls]


class AutoExecutor:
    """Submitit's ``AutoExecutor``: Slurm when a Slurm cluster answers here (``sbatch`` on the
    PATH and ``sinfo`` working), else the warm local pool. ``cluster="slurm"``, ``"local"``
    or ``"debug"`` forces one. ``slurm_max_num_timeout`` / ``local_max_num_timeout``: how
    many times a checkpointable call is requeued after its time limit (default 3). Other
    keyword options go to the hetfaas backend (``max_workers`` locally, ``pack`` on Slurm)."""

    _CLASSES: dict[str, type[Executor]] = {"local": LocalExecutor, "slurm": SlurmExecutor,
                                           "debug": DebugExecutor}  # fmt: skip

    def __init__(self, folder: str | os.PathLike[str], cluster: str | None = None,
                 **options: Any) -> None:  # fmt: skip
        if cluster not in (None, "slurm", "local", "debug"):
            raise ConfigurationError(
                f"unknown cluster {cluster!r}; known: None (pick), 'slurm', 'local', 'debug'"
            )
        self.cluster = cluster or ("slurm" if slurm_reachable() else "local")
        self._executor = self._CLASSES[self.cluster](folder, **options)

    @staticmethod
    def which() -> str:
        """The cluster an ``AutoExecutor`` without ``cluster`` would pick here."""
        return "slurm" if slurm_reachable() else "local"

    @property
    def folder(self) -> Path:
        return self._executor.folder

    @property
    def parameters(self) -> dict[str, Any]:
        return self._executor.parameters

    @property
    def executor(self) -> Executor:
        """The cluster's executor that runs this one's jobs."""
        return self._executor

    def update_parameters(self, **kwargs: Any) -> None:
        self._executor.update_parameters(**kwargs)

    def submit(self, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Job:
        return self._executor.submit(fn, *args, **kwargs)

    def map_array(self, fn: Callable[..., Any], *iterables: Iterable[Any]) -> list[Job]:
        return self._executor.map_array(fn, *iterables)

    def submit_array(self, fns: Iterable[Callable[[], Any]]) -> list[Job]:
        return self._executor.submit_array(fns)

    def batch(self) -> contextlib.AbstractContextManager[None]:
        return self._executor.batch()

    def shutdown(self) -> None:
        self._executor.shutdown()

    def __enter__(self) -> AutoExecutor:
        return self

    def __exit__(self, *exc: object) -> None:
        self.shutdown()


__all__ = ["AutoExecutor", "DebugExecutor", "Executor", "LocalExecutor", "SlurmExecutor",
           "resolve_folder", "slurm_reachable"]  # fmt: skip
