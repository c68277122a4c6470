"""What the calls of the Submitit surface run, in the engine's worker.

- :func:`run_task`: one task, with its ``JobEnvironment`` variables set for the call. A
  failing function's traceback is printed to the job's stderr (as Submitit's runner does).
  With ``checkpoint_after_s`` (a ``checkpoint``-able callable with a time limit, on the local
  pool) an alarm at the limit calls the callable's ``checkpoint`` with the call's arguments --
  on the running object, with its state so far, as Slurm's pre-limit signal does -- and the
  call ends with :class:`Requeue` carrying the ``DelayedSubmission`` to run next.
- :func:`run_local_tasks`: a multi-task job on the local pool. One pool call forks one
  process per task (as ``srun`` starts a step's tasks): all tasks run at once, whatever the
  pool's free cores, so tasks that meet (``torch.distributed``) never wait for a slot. Each
  task has its ranks in ``JobEnvironment``, writes Submitit's per-task logs and result file,
  and dies with the call (cancel, timeout, a killed worker).
- :func:`run_slurm_task`: a multi-task job on Slurm: every ``srun`` task runs it; each writes
  its outcome to the job's folder, and task 0 returns all of them in rank order.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import pickle
import signal
import sys
import threading
import time
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any, NamedTuple

import cloudpickle

from ..backends import errors
from ._environment import variables

_PR_SET_PDEATHSIG = 1
_PEER_POLL_S = 0.02


class Outcome(NamedTuple):
    """One task's end: its value, or its error (encoded) and traceback text."""

    ok: bool
    value: Any = None
    error: bytes = b""
    trace: str = ""

    def exception(self) -> BaseException | None:
        return None if self.ok else errors.decode(self.error)


class Requeue(NamedTuple):
    """A checkpointed call's next run (None: its ``checkpoint`` declined to be requeued)."""

    delayed: Any


class _Alarm(BaseException):
    """Raised in the function by the time limit's alarm, after its checkpoint was taken."""


def _checkpoint_of(fn: Any) -> Callable[..., Any] | None:
    return getattr(fn, "__submitit_checkpoint__", None) or getattr(fn, "checkpoint", None)


def run_task(
    fn: Callable[..., Any],
    env: dict[str, str],
    args: tuple[Any, ...],
    kwargs: dict[str, Any],
    checkpoint_after_s: float | None = None,
    stderr_to_stdout: bool = False,
) -> Any:
    """Run one task of a job with its environment (see the module's docstring)."""
    merge = contextlib.redirect_stderr(sys.stdout) if stderr_to_stdout else contextlib.nullcontext()
    with variables(env), merge:
        try:
            if checkpoint_after_s is not None:
                return _run_checkpointable(fn, args, kwargs, checkpoint_after_s)
            return fn(*args, **kwargs)
        except Exception:
            traceback.print_exc()
            raise


def _run_checkpointable(
    fn: Callable[..., Any], args: tuple[Any, ...], kwargs: dict[str, Any], after_s: float
) -> Any:
    checkpoint = _checkpoint_of(fn)
    if checkpoint is None or threading.current_thread() is not threading.main_thread():
        return fn(*args, **kwargs)  # no checkpoint, or no signals here: the limit kills it
    taken: list[Any] = []

    def on_alarm(signum: int, frame: Any) -> None:
        print(f"time limit of {after_s:g} s reached: checkpointing", file=sys.stderr)
        taken.append(checkpoint(*args, **kwargs))
        raise _Alarm

    previous = signal.signal(signal.SIGALRM, on_alarm)
    signal.setitimer(signal.ITIMER_REAL, after_s)
    try:
        return fn(*args, **kwargs)
    except _Alarm:
        return Requeue(taken[0] if taken else None)
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


# ------------------------------------------------------------------ multi-task, local


def run_local_tasks(
    fn: Callable[..., Any],
    args: tuple[Any, ...],
    kwargs: dict[str, Any],
    envs: list[dict[str, str]],
    logs: list[tuple[str, str]],
    results: list[str],
) -> list[Outcome]:
    """Fork one process per task, wait for all, return their outcomes in rank order."""
    pids = []
    try:
        for env, (out, err), result in zip(envs, logs, results, strict=True):
            Path(result).unlink(missing_ok=True)
            pid = os.fork()
            if pid == 0:  # the task
                _task_process(fn, args, kwargs, env, out, err, result)
            pids.append(pid)
        statuses = [os.waitpid(pid, 0)[1] for pid in pids]
    except BaseException:  # cancelled (the pool's interrupt) or failed: no task outlives it
        for pid in pids:
            with contextlib.suppress(OSError):
                os.kill(pid, signal.SIGKILL)
        for pid in pids:
            with contextlib.suppress(OSError):
                os.waitpid(pid, 0)
        raise
    return [_read_outcome(result, status) for result, status in zip(results, statuses, strict=True)]


def _task_process(
    fn: Callable[..., Any],
    args: tuple[Any, ...],
    kwargs: dict[str, Any],
    env: dict[str, str],
    out: str,
    err: str,
    result: str,
) -> None:
    code = 0
    try:
        with contextlib.suppress(Exception):  # die with the pool's worker (Linux)
            ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)
        for sig in (signal.SIGUSR1, signal.SIGALRM, signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, signal.SIG_DFL)
        os.environ.update(env)
        sys.stdout = open(out, "a", buffering=1)  # noqa: SIM115 (the process ends here)
        sys.stderr = sys.stdout if err == out else open(err, "a", buffering=1)  # noqa: SIM115
        for fd, stream in ((1, sys.stdout), (2, sys.stderr)):  # subprocesses' output too
            os.dup2(stream.fileno(), fd)
        _write_outcome(result, _outcome_of(fn, args, kwargs))
    except BaseException:
        code = 1
    finally:
        for stream in (sys.stdout, sys.stderr):
            with contextlib.suppress(Exception):
                stream.flush()
        os._exit(code)


def _outcome_of(fn: Callable[..., Any], args: tuple[Any, ...], kwargs: dict[str, Any]) -> Outcome:
    """Run one task; its value, or its error with the traceback (also printed to stderr)."""
    try:
        return Outcome(True, fn(*args, **kwargs))
    except BaseException as exc:
        trace = traceback.format_exc()
        sys.stderr.write(trace)
        return Outcome(False, None, errors.encode(exc), trace)


def _write_outcome(path: str, outcome: Outcome) -> None:
    try:
        data = cloudpickle.dumps(outcome, protocol=5)
    except Exception as exc:
        trace = f"the result cannot be pickled: {type(exc).__name__}: {exc}"
        data = pickle.dumps(Outcome(False, None, errors.encode_text(exc, trace), trace))
    tmp = f"{path}.tmp"
    with open(tmp, "wb") as f:
        f.write(data)
    os.replace(tmp, path)  # atomic: a reader never sees half a result


def _read_outcome(path: str, status: int | None = None) -> Outcome:
    try:
        with open(path, "rb") as f:
            return pickle.loads(f.read())
    except (OSError, EOFError, pickle.UnpicklingError) as exc:
        why = f"exit status {os.waitstatus_to_exitcode(status)}" if status is not None else exc
        text = f"the task ended without a result ({why})"
        return Outcome(False, None, errors.encode_text(RuntimeError(text), text), text)


# ------------------------------------------------------------------ multi-task, Slurm


def run_slurm_task(
    fn: Callable[..., Any], args: tuple[Any, ...], kwargs: dict[str, Any], folder: str
) -> list[Outcome] | None:
    """One ``srun`` task of a multi-task Slurm job. Task 0 returns every task's outcome."""
    job_id = os.environ.get("SLURM_JOB_ID", "0")
    rank, ntasks = int(os.environ.get("SLURM_PROCID", 0)), int(os.environ.get("SLURM_NTASKS", 1))
    path = Path(folder) / f"{job_id}_{rank}_tasks.pkl"
    _write_outcome(str(path), _outcome_of(fn, args, kwargs))
    if rank:
        return None
    paths = [Path(folder) / f"{job_id}_{i}_tasks.pkl" for i in range(ntasks)]
    while not all(p.exists() for p in paths):  # the job's time limit bounds this wait
        time.sleep(_PEER_POLL_S)
    outcomes = [_read_outcome(str(p)) for p in paths]
    for p in paths:
        p.unlink(missing_ok=True)
    return outcomes


__all__ = ["Outcome", "Requeue", "run_local_tasks", "run_slurm_task", "run_task"]
