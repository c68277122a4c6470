"""The Submitit surface on hetfaas: code written for Submitit runs after changing its import.

``import submitit`` becomes ``from hetfaas import submitit``::

    executor = submitit.AutoExecutor(folder="log_test/%j")
    executor.update_parameters(timeout_min=1, slurm_partition="debug")
    job = executor.submit(add, 5, 7)
    print(job.job_id)
    assert job.result() == 12

As Submitit's, ``AutoExecutor`` picks Slurm when a Slurm cluster answers here (``sbatch`` on
the PATH and ``sinfo`` working), else the local machine -- here the warm local pool instead of
one new process per job. ``cluster="slurm"``, ``"local"`` or ``"debug"`` forces one.

- On Slurm, jobs are hetfaas ``"slurm"`` backend jobs (completion seen within milliseconds,
  arrays for ``map_array``/``batch``); ``job.job_id`` is Slurm's and the logs are Submitit's.
- Locally, each job is a call to a warm worker; its stdout and stderr are captured and
  written where Submitit writes them (``<folder>/<job_id>_<task>_log.out`` / ``.err``). A
  multi-task job's tasks run as processes of their own, all at once.
- Every job keeps hetfaas's per-call ``timings``.

The names: ``AutoExecutor``, ``LocalExecutor``, ``SlurmExecutor``, ``DebugExecutor``,
``Executor``, ``Job``, ``DebugJob``, ``JobEnvironment``, ``helpers``, ``core.utils``
(``FailedJobError``, ``UncompletedJobError``, ``DelayedSubmission``).
"""

from __future__ import annotations

from . import core as core
from . import helpers as helpers
from ._debug import DebugJob
from ._environment import JobEnvironment
from ._executors import (
    AutoExecutor,
    DebugExecutor,
    Executor,
    LocalExecutor,
    SlurmExecutor,
    slurm_reachable,
)
from ._job import Job, JobPaths

__all__ = ["AutoExecutor", "DebugExecutor", "DebugJob", "Executor", "Job", "JobEnvironment",
           "JobPaths", "LocalExecutor", "SlurmExecutor", "core", "helpers",
           "slurm_reachable"]  # fmt: skip
