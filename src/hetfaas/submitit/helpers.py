"""Submitit's ``helpers``: ``DelayedSubmission``, ``Checkpointable``, ``FunctionSequence``,
``CommandFunction``, ``as_completed``, ``monitor_jobs``, ``TorchDistributedEnvironment``,
``clean_env``.

``as_completed`` and ``monitor_jobs`` wait on the jobs' completion events instead of
Submitit's sleeps between polls (``poll_frequency`` is accepted and bounds nothing).
"""

from __future__ import annotations

import concurrent.futures as cf
import contextlib
import os
import random
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from typing import Any

from ._environment import MASTER_PORT, JobEnvironment
from ._job import Job
from .core.utils import DelayedSubmission, FailedJobError

_CLUSTER_PREFIXES = ("SLURM_", "SLURMD_", "SRUN_", "SBATCH_", "SUBMITIT_", "HETFAAS_JOB_")
_DISTRIBUTED = ("MASTER_ADDR", "MASTER_PORT", "RANK", "WORLD_SIZE", "LOCAL_RANK",
                "LOCAL_WORLD_SIZE")  # fmt: skip


class Checkpointable:
    """Base of callables that are requeued, with their state, after a time limit or a
    preemption: the default ``checkpoint`` resubmits this very object (its attributes as they
    are at that moment) with the call's arguments. Override it to save state elsewhere."""

    def __new__(cls, *args: Any, **kwargs: Any) -> Checkpointable:
        self = super().__new__(cls)
        if not callable(self):
            raise TypeError(f"{cls.__name__} is Checkpointable but has no __call__ method")
        return self

    def checkpoint(self, *args: Any, **kwargs: Any) -> DelayedSubmission:
        return DelayedSubmission(self, *args, **kwargs)


class FunctionSequence(Checkpointable):
    """Several calls in one job, run in order; their results as a list. Each call's result
    is kept once computed, so a requeued sequence runs only the calls that had not finished."""

    def __init__(self, verbose: bool = False) -> None:
        self.verbose = verbose
        self.delayed_functions: list[DelayedSubmission] = []

    def add(self, func: Callable[..., Any], *args: Any, **kwargs: Any) -> None:
        self.delayed_functions.append(DelayedSubmission(func, *args, **kwargs))

    def __len__(self) -> int:
        return len(self.delayed_functions)

    def __iter__(self) -> Iterator[DelayedSubmission]:
        return iter(self.delayed_functions)

    def __call__(self) -> list[Any]:
        if self.verbose:
            done = sum(d.done() for d in self.delayed_functions)
            print(f"{done} of {len(self)} calls already done", flush=True)
        return [d.result() for d in self.delayed_functions]


class CommandFunction:
    """A command (a list, run without a shell) as a function returning its stdout, stripped.

    Positional arguments of a call are appended to the command, keyword arguments as
    ``--key=value``. A non-zero exit raises ``FailedJobError`` with the command's stderr (the
    ``CalledProcessError`` as its cause). ``verbose`` prints the command and its output."""

    def __init__(
        self,
        command: list[str],
        verbose: bool = True,
        cwd: str | os.PathLike[str] | None = None,
        env: dict[str, str] | None = None,
    ) -> None:
        if not isinstance(command, list):
            raise TypeError(
                f"the command must be a list of arguments, got {type(command).__name__}"
            )
        self.command = command
        self.verbose = verbose
        self.cwd = None if cwd is None else str(cwd)
        self.env = env

    def __call__(self, *args: Any, **kwargs: Any) -> str:
        cmd = [*self.command, *map(str, args), *(f"--{k}={v}" for k, v in kwargs.items())]
        if self.verbose:
            print(f"running: {' '.join(cmd)}", flush=True)
        proc = subprocess.run(cmd, capture_output=True, text=True, cwd=self.cwd, env=self.env)
        if self.verbose and proc.stdout:
            print(proc.stdout, end="" if proc.stdout.endswith("\n") else "\n", flush=True)
        if proc.returncode:
            if proc.stderr:
                print(proc.stderr, file=sys.stderr, end="", flush=True)
            error = subprocess.CalledProcessError(proc.returncode, cmd, proc.stdout, proc.stderr)
            raise FailedJobError(proc.stderr.strip() or str(error)) from error
        return proc.stdout.strip()


def as_completed(
    jobs: Sequence[Job], timeout: float | None = None, poll_frequency: float = 10
) -> Iterator[Job]:
    """Yield the jobs as they end (finished, failed or cancelled); ``TimeoutError`` if some
    have not ended ``timeout`` seconds after the call."""
    for job in jobs:
        job.done()  # a debug job runs here
    by_future: dict[cf.Future[Any], list[Job]] = {}
    for job in jobs:
        if not isinstance(job, Job):
            raise TypeError(f"not a hetfaas.submitit job: {job!r}")
        by_future.setdefault(job.as_future(), []).append(job)
    try:
        for fut in cf.as_completed(by_future, timeout=timeout):
            yield from by_future[fut]
    except cf.TimeoutError:
        raise TimeoutError(f"jobs still running after {timeout} s") from None


def monitor_jobs(
    jobs: Sequence[Job],
    poll_frequency: float = 30,
    test_mode: bool = False,
    custom_logging: Callable[..., Any] | None = None,
) -> None:
    """Wait for all ``jobs``, printing how many ended and failed as they end."""
    if not jobs:
        return
    start = time.monotonic()
    failed = 0
    for n, job in enumerate(as_completed(jobs), 1):
        failed += job.exception() is not None
        if custom_logging is not None:
            custom_logging(start, len(jobs), {"done": n, "failed": failed})
        else:
            print(f"{n}/{len(jobs)} jobs ended ({failed} failed), "
                  f"{time.monotonic() - start:.1f} s", flush=True)  # fmt: skip


@contextlib.contextmanager
def clean_env(extra_names: Sequence[str] = ()) -> Iterator[None]:
    """Hide the variables of the job this process runs in (Slurm's, Submitit's, hetfaas's,
    ``torch.distributed``'s) inside the block, so that a job submitted from a job does not
    inherit them."""
    hidden = {
        k: os.environ.pop(k)
        for k in list(os.environ)
        if k.startswith(_CLUSTER_PREFIXES) or k in _DISTRIBUTED or k in extra_names
    }
    try:
        yield
    finally:
        os.environ.update(hidden)


class TorchDistributedEnvironment:
    """What ``torch.distributed``'s ``env://`` initialisation needs, for the tasks of one
    job: ``master_addr`` (the job's first node; 127.0.0.1 on the local pool),
    ``master_port`` (``MASTER_PORT`` if set; locally a port free when the job was submitted;
    on Slurm one drawn from the job id, the same in every task), ``rank``, ``world_size``,
    ``local_rank``, ``local_world_size``."""

    def __init__(self) -> None:
        env = JobEnvironment()
        self.job_environment = env
        local = env.cluster != "slurm"
        self.master_addr = "127.0.0.1" if local else env.hostnames[0]
        self.master_port = self._master_port(env)
        self.rank = env.global_rank
        self.world_size = env.num_tasks
        self.local_rank = env.local_rank
        self.local_world_size = env.num_tasks // max(1, env.num_nodes)

    @staticmethod
    def _master_port(env: JobEnvironment) -> int:
        if "MASTER_PORT" in os.environ:
            return int(os.environ["MASTER_PORT"])
        if MASTER_PORT in os.environ:
            return int(os.environ[MASTER_PORT])
        return random.Random(env.raw_job_id).randint(20000, 60000)

    def export(
        self, set_cuda_visible_devices: bool = True, overwrite: bool = False
    ) -> TorchDistributedEnvironment:
        """Set ``MASTER_ADDR``, ``MASTER_PORT``, ``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK`` and
        ``LOCAL_WORLD_SIZE`` (and ``CUDA_VISIBLE_DEVICES`` to the local rank's GPU when
        ``set_cuda_visible_devices`` and GPUs are visible). Refuses to replace variables
        already set unless ``overwrite``."""
        values = {
            "MASTER_ADDR": self.master_addr,
            "MASTER_PORT": str(self.master_port),
            "RANK": str(self.rank),
            "WORLD_SIZE": str(self.world_size),
            "LOCAL_RANK": str(self.local_rank),
            "LOCAL_WORLD_SIZE": str(self.local_world_size),
        }
        if not overwrite:
            already = [k for k in values if k in os.environ]
            if already:
                raise RuntimeError(
                    f"cannot export {', '.join(already)}: already set (overwrite=True replaces)"
                )
        visible = os.environ.get("CUDA_VISIBLE_DEVICES")
        if set_cuda_visible_devices and visible:
            devices = visible.split(",")
            values["CUDA_VISIBLE_DEVICES"] = devices[self.local_rank % len(devices)]
        os.environ.update(values)
        return self


__all__ = ["Checkpointable", "CommandFunction", "DelayedSubmission", "FunctionSequence",
           "TorchDistributedEnvironment", "as_completed", "clean_env", "monitor_jobs"]  # fmt: skip
