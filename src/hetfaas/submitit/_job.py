"""Submitit's ``Job`` on hetfaas futures: one class for every cluster but ``debug``.

A job settles once, into its *final* outcome, held in a ``concurrent.futures.Future`` of its
own (``_final``): so ``done()``, ``result()``, ``awaitable()`` and ``helpers.as_completed``
wait on an event, never by polling with a sleep as Submitit does. A checkpointed local call
that reached its time limit comes back as :class:`~._tasks.Requeue`: the job resubmits the
call its ``checkpoint`` returned (up to ``max_requeues`` times) and stays unsettled meanwhile.

Errors as Submitit raises them: a function that raised gives ``FailedJobError`` (the
original exception as ``__cause__``, its traceback in the message and in ``stderr()``); a job
that ended without a result (time limit, dead worker or Slurm job, cancel) gives
``UncompletedJobError``.
"""

from __future__ import annotations

import asyncio
import concurrent.futures as cf
import contextlib
import os
import subprocess
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, NamedTuple

from .._future import Future
from .._invocation import State
from ..exceptions import CallCancelled, CallError, ConfigurationError, RemoteTraceback
from ._tasks import Requeue
from .core.utils import FailedJobError, UncompletedJobError

# Submitit's state names per cluster (its LocalJob's and Slurm's)
_LOCAL_STATES = {State.PENDING: "QUEUED", State.RUNNING: "RUNNING", State.COMPLETED: "FINISHED",
                 State.FAILED: "FAILED", State.CANCELLED: "CANCELLED"}  # fmt: skip
_SLURM_STATES = {State.PENDING: "PENDING", State.RUNNING: "RUNNING", State.COMPLETED: "COMPLETED",
                 State.FAILED: "FAILED", State.CANCELLED: "CANCELLED"}  # fmt: skip


class JobPaths(NamedTuple):
    """Where a job's (or task's) logs are written, as Submitit's ``job.paths``."""

    folder: Path
    stdout: Path
    stderr: Path
    result_pickle: Path


def resolve_folder(template: str | os.PathLike[str], job_id: str) -> Path:
    """``%j`` (job id), ``%A`` (array job id) and ``%a`` (array task) of a folder, filled."""
    text = str(template)
    array, _, index = job_id.partition("_")
    if "%a" in text and not index:
        raise ConfigurationError(
            f"%a is in the folder {text!r} but job {job_id} is not in an array"
        )
    return Path(text.replace("%j", job_id).replace("%A", array).replace("%a", index))


def job_paths(template: str | os.PathLike[str], job_id: str, task: int) -> JobPaths:
    """Submitit's paths of task ``task`` of job ``job_id``, its folder's tags filled."""
    folder = resolve_folder(template, job_id)
    base = folder / f"{job_id}_{task}"
    return JobPaths(folder, Path(f"{base}_log.out"), Path(f"{base}_log.err"),
                    Path(f"{base}_result.pkl"))  # fmt: skip


class Job:
    """A submitted job: ``job_id``, ``state``, ``done()``, ``result()``, ``results()``,
    ``exception()``, ``wait()``, ``cancel()``, ``task(i)``, ``stdout()``, ``stderr()``,
    ``paths``, ``awaitable()``, ``get_info()``, and hetfaas's ``timings`` and ``future``.

    A job of ``num_tasks > 1`` tasks returns the list of its tasks' results from
    ``result()`` and ``results()`` (Submitit's documented behaviour); ``task(i)`` is task
    ``i`` as a job of its own.
    """

    def __init__(
        self,
        cluster: str,
        folder: Path,
        job_id: str | None = None,
        num_tasks: int = 1,
        name: str = "",
        launch: Callable[[], Future] | None = None,
        resubmit: Callable[[Any], Future] | None = None,
        max_requeues: int = 0,
        merged_logs: bool = False,
    ) -> None:
        """``launch`` submits the job's first run; ``resubmit(delayed)`` a requeued one (a
        checkpoint's ``DelayedSubmission``)."""
        self.cluster = cluster
        self._folder = folder
        self._job_id = job_id  # None on Slurm: the engine's id, once it is known
        self.num_tasks = num_tasks
        self.name = name
        self._launch = launch
        self._resubmit = resubmit
        self._requeues_left = max_requeues
        self.requeues = 0  # how many times a checkpoint requeued it
        self._merged = merged_logs
        self._future: Future | None = None
        self._final: cf.Future[Any] = cf.Future()
        self._lock = threading.Lock()
        self._logs: list[tuple[str, str]] = []  # each run's captured (stdout, stderr), local
        self._cancelled = False

    # ------------------------------------------------------------------ life cycle

    def begin(self) -> None:
        """Submit the job's first run (the executor calls it, at once or when an array's
        parallelism lets it start)."""
        assert self._launch is not None
        try:
            self._start(self._launch())
        except BaseException as exc:
            self._settle(exc=exc)
            raise

    def _start(self, future: Future) -> None:
        """Follow ``future`` (the job's first run, or a requeued one)."""
        with self._lock:
            self._future = future
            cancelled = self._cancelled
        if cancelled:
            future.cancel()
        future.add_done_callback(self._on_done)

    def _on_done(self, fut: Future) -> None:
        if self.cluster == "local" and self.num_tasks == 1:
            self._logs.append((fut.stdout, fut.stderr))
        try:
            value = fut.result()
        except BaseException as exc:
            self._settle(exc=exc)
            return
        if isinstance(value, Requeue):
            if value.delayed is not None and self._requeues_left > 0 and not self._cancelled:
                self._requeues_left -= 1
                self.requeues += 1
                assert self._resubmit is not None
                # not from this callback's thread (a backend's): submit from a thread of its own
                threading.Thread(target=self._requeue, args=(value.delayed,), daemon=True).start()
                return
            why = "its checkpoint declined a requeue" if value.delayed is None else (
                f"it was requeued {self.requeues} times, the most allowed")  # fmt: skip
            self._settle(exc=UncompletedJobError(
                f"Job {self.job_id} timed-out and was not requeued ({why})"))  # fmt: skip
            return
        self._settle(value=value)

    def _requeue(self, delayed: Any) -> None:
        assert self._resubmit is not None
        try:
            self._start(self._resubmit(delayed))
        except BaseException as exc:
            self._settle(exc=exc)

    def _settle(self, value: Any = None, exc: BaseException | None = None) -> None:
        self._write_logs()
        if exc is not None:
            self._final.set_exception(exc)
        else:
            self._final.set_result(value)

    def _write_logs(self) -> None:
        if self.cluster != "local" or self.num_tasks != 1 or not self._logs:
            return  # Slurm, and a local job's tasks, write their own
        out = "".join(o for o, _ in self._logs)
        err = "".join(e for _, e in self._logs)
        with contextlib.suppress(OSError):
            self._folder.mkdir(parents=True, exist_ok=True)
            self.paths.stdout.write_text(out + err if self._merged else out)
            if not self._merged:
                self.paths.stderr.write_text(err)

    # ------------------------------------------------------------------ Submitit's API

    @property
    def job_id(self) -> str:
        if self._job_id is None:
            engine = self._future.engine_id if self._future is not None else None
            return engine or "(not submitted yet)"
        return self._job_id

    @property
    def future(self) -> Future | None:
        """The hetfaas future of the job's current run."""
        return self._future

    @property
    def timings(self) -> Any:
        """The current run's :class:`~hetfaas.Timings` (queue, transfer, compute...)."""
        return self._future.timings if self._future is not None else None

    @property
    def paths(self) -> JobPaths:
        return job_paths(self._folder, self.job_id, 0)

    @property
    def state(self) -> str:
        names = _SLURM_STATES if self.cluster == "slurm" else _LOCAL_STATES
        if not self._final.done():
            if self._future is None or self._future.state is State.PENDING:
                return names[State.PENDING]
            return names[State.RUNNING]
        exc = self._final.exception()
        if exc is None:
            return names[State.COMPLETED]
        if isinstance(exc, CallCancelled):
            return names[State.CANCELLED]
        if isinstance(exc, CallError) and "timeout" in type(exc).__name__.lower():
            return "TIMEOUT" if self.cluster == "slurm" else "INTERRUPTED"
        return names[State.FAILED]

    def get_info(self, mode: str = "force") -> dict[str, str]:
        info = {"JobID": self.job_id, "State": self.state, "JobName": self.name}
        if self._future is not None and self._future.engine_id:
            info["EngineID"] = self._future.engine_id
        return info

    def done(self, force_check: bool = False) -> bool:
        return self._final.done()

    def wait(self) -> None:
        cf.wait([self._final])

    def results(self) -> list[Any]:
        """Every task's result, in rank order (raises the first failing task's error)."""
        outcome = self._outcome()
        if self.num_tasks == 1:
            return [outcome]
        for i, o in enumerate(outcome):
            if not o.ok:
                raise _failed(self.job_id, i, o.trace, o.exception(), self.task(i).paths)
        return [o.value for o in outcome]

    def result(self) -> Any:
        """The job's result; for a multi-task job, the list of its tasks' results."""
        values = self.results()
        return values if self.num_tasks > 1 else values[0]

    def exception(self) -> BaseException | None:
        """The error ``result()`` would raise, or None."""
        try:
            self.results()
        except (FailedJobError, UncompletedJobError) as exc:
            return exc
        return None

    def cancel(self, check: bool = True) -> bool:
        """Cancel the job: a queued job never runs; a running one is stopped (its worker
        killed locally, ``scancel`` on Slurm)."""
        with self._lock:
            self._cancelled = True
            fut = self._future
        return fut.cancel() if fut is not None else True

    def task(self, task_id: int) -> Job:
        if not 0 <= task_id < self.num_tasks:
            raise ValueError(f"task_id {task_id} must be between 0 and {self.num_tasks - 1}")
        return self if self.num_tasks == 1 else TaskJob(self, task_id)

    def stdout(self) -> str | None:
        """The job's printed output (all tasks', joined), or None while there is none."""
        return self._logs_of("stdout")

    def stderr(self) -> str | None:
        return self._logs_of("stderr")

    def _logs_of(self, stream: str) -> str | None:
        if self.num_tasks > 1:
            texts = [t for i in range(self.num_tasks) if (t := self.task(i)._logs_of(stream))]
            return "\n".join(texts) if texts else None
        path = getattr(self.paths, stream)  # written by the job when it settled (local)
        return path.read_text() if path.exists() else None

    def awaitable(self) -> AsyncJobProxy:
        return AsyncJobProxy(self)

    def as_future(self) -> cf.Future[Any]:
        """The job's final outcome as a ``concurrent.futures.Future`` (for ``cf.wait``,
        ``asyncio.wrap_future``); its result is the raw outcome, not ``result()``'s."""
        return self._final

    def add_done_callback(self, fn: Callable[[Job], Any]) -> None:
        """Call ``fn(job)`` once the job has ended (at once if it has)."""
        self._final.add_done_callback(lambda _: fn(self))

    def _interrupt(self) -> None:
        """Send the job what Slurm sends before a time limit or a preemption (``USR2``), to
        try a checkpointable job's requeue (Submitit's test hook; Slurm only)."""
        if self.cluster != "slurm":
            raise ConfigurationError("_interrupt() sends Slurm's signal: Slurm jobs only")
        subprocess.run(["scancel", "--signal", "USR2", self.job_id], check=True, timeout=30)

    # ------------------------------------------------------------------ internals

    def _outcome(self) -> Any:
        """The final value (the tasks' outcomes for a multi-task job), or the job's error."""
        try:
            return self._final.result()
        except BaseException as exc:
            raise self._translate(exc) from exc

    def _translate(self, exc: BaseException) -> BaseException:
        if isinstance(exc, FailedJobError | UncompletedJobError):
            return exc
        if isinstance(exc.__cause__, RemoteTraceback):  # the function raised
            return _failed(self.job_id, 0, exc.__cause__.tb, exc, self.paths)
        if isinstance(exc, CallError):  # the engine's: no result was produced
            return UncompletedJobError(
                f"Job {self.job_id} has not produced any output (state: {self.state}): {exc}"
            )
        return _failed(self.job_id, 0, f"{type(exc).__name__}: {exc}", exc, self.paths)

    def __repr__(self) -> str:
        return f'{type(self).__name__}<job_id={self.job_id}, state="{self.state}">'


class TaskJob(Job):
    """Task ``task_id`` of a multi-task job, with the ``Job`` methods."""

    def __init__(self, parent: Job, task_id: int) -> None:  # no super().__init__: a view
        self._parent = parent
        self.task_id = task_id
        self.cluster = parent.cluster
        self.num_tasks = 1
        self.name = parent.name
        self._merged = parent._merged
        self._logs = []

    def __getattr__(self, name: str) -> Any:
        return getattr(self._parent, name)

    @property
    def job_id(self) -> str:
        return self._parent.job_id

    @property
    def paths(self) -> JobPaths:
        return job_paths(self._parent._folder, self.job_id, self.task_id)

    @property
    def state(self) -> str:
        return self._parent.state

    def done(self, force_check: bool = False) -> bool:
        return self._parent.done()

    def wait(self) -> None:
        self._parent.wait()

    def results(self) -> list[Any]:
        o = self._parent._outcome()[self.task_id]
        if not o.ok:
            raise _failed(self.job_id, self.task_id, o.trace, o.exception(), self.paths)
        return [o.value]

    def cancel(self, check: bool = True) -> bool:
        return self._parent.cancel(check)

    def as_future(self) -> cf.Future[Any]:
        return self._parent.as_future()

    def awaitable(self) -> AsyncJobProxy:
        return AsyncJobProxy(self)

    def __repr__(self) -> str:
        return f'Job<job_id={self.job_id}, task_id={self.task_id}, state="{self.state}">'


def _failed(
    job_id: str, task: int, trace: str, cause: BaseException | None, paths: JobPaths
) -> FailedJobError:
    err = FailedJobError(
        f"Job (task={task}) failed during processing with trace:\n----------------------\n"
        f"{trace.rstrip()}\n----------------------\nYou can check full logs with "
        f"'job.stderr()' and 'job.stdout()' or at paths:\n  - {paths.stderr}\n  - {paths.stdout}"
    )
    err.__cause__ = cause
    return err


class AsyncJobProxy:
    """``job.awaitable()``: asyncio versions of ``wait``, ``result`` and ``results``. They
    await the job's completion itself (``poll_interval`` is accepted for Submitit's
    signature; nothing polls)."""

    def __init__(self, job: Job) -> None:
        self.job = job

    async def wait(self, poll_interval: float = 1) -> None:
        with contextlib.suppress(BaseException):
            await asyncio.wrap_future(self.job.as_future())

    async def result(self, poll_interval: float = 1) -> Any:
        await self.wait(poll_interval)
        return self.job.result()

    async def results(self, poll_interval: float = 1) -> list[Any]:
        await self.wait(poll_interval)
        return self.job.results()

    def results_as_completed(self, poll_interval: float = 1) -> Iterator[Any]:
        """Awaitables of each task's result, in the order they come back."""
        tasks = [self.job.task(i).awaitable().result() for i in range(self.job.num_tasks)]
        yield from asyncio.as_completed(tasks)


__all__ = ["AsyncJobProxy", "Job", "JobPaths", "TaskJob", "job_paths", "resolve_folder"]
