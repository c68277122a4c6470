"""The Submitit surface on hetfaas: code written for Submitit runs after changing its import.

``import submitit`` becomes ``from hetfaas import submitit``::

    executor = submitit.AutoExecutor(folder="log_test")
    executor.update_parameters(timeout_min=1, slurm_partition="debug")
    job = executor.submit(add, 5, 7)
    print(job.job_id)
    assert job.result() == 12

As Submitit's, ``AutoExecutor`` picks Slurm when a Slurm cluster answers here (``sbatch`` on
the PATH and ``sinfo`` working), else the local machine -- here the warm local pool instead of
one new process per job. ``cluster="slurm"`` or ``cluster="local"`` forces one. On Slurm, jobs
are hetfaas ``"slurm"`` backend jobs (fast completion, arrays for ``map_array``/``batch``),
``job.job_id`` is Slurm's and ``job.stdout()``/``stderr()`` read Submitit's log files in
``folder``. Locally, each job's stdout and stderr are captured and written to ``folder`` as
Submitit does (``<job_id>_0_log.out`` / ``.err``).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any, NamedTuple

from ._executor import Executor
from ._future import Future
from ._invocation import State
from ._resources import Resources
from .exceptions import ConfigurationError

# Submitit's common parameters and what they become here.
_COMMON = {"timeout_min", "cpus_per_task", "gpus_per_node", "mem_gb", "name", "nodes",
           "tasks_per_node", "stderr_to_stdout"}  # fmt: skip

_STATE_NAMES = {
    State.PENDING: "PENDING",
    State.RUNNING: "RUNNING",
    State.COMPLETED: "COMPLETED",
    State.FAILED: "FAILED",
    State.CANCELLED: "CANCELLED",
}


class JobPaths(NamedTuple):
    """Where a job's logs are written, as Submitit's ``job.paths``."""

    folder: Path
    stdout: Path
    stderr: Path


class Job:
    """A submitted call, with Submitit's ``Job`` methods."""

    def __init__(self, future: Future, folder: Path, on_slurm: bool = False) -> None:
        self._future = future
        self._folder = folder
        self._on_slurm = on_slurm  # Submitit writes the logs; else they are written here
        self._written = on_slurm

    @property
    def job_id(self) -> str:
        return self._future.engine_id if self._on_slurm else self._future.invocation_id

    @property
    def state(self) -> str:
        return _STATE_NAMES[self._future.state]

    @property
    def future(self) -> Future:
        return self._future

    @property
    def timings(self) -> Any:
        return self._future.timings

    def done(self, force_check: bool = False) -> bool:
        return self._future.done()

    def result(self) -> Any:
        try:
            return self._future.result()
        finally:
            self._write_logs()

    def results(self) -> list[Any]:
        return [self.result()]

    def exception(self) -> BaseException | None:
        exc = self._future.exception()
        self._write_logs()
        return exc

    def wait(self) -> None:
        with contextlib.suppress(Exception):
            self._future.exception()
        self._write_logs()

    def cancel(self, check: bool = True) -> bool:
        return self._future.cancel()

    @property
    def paths(self) -> JobPaths:
        return JobPaths(
            self._folder,
            self._folder / f"{self.job_id}_0_log.out",
            self._folder / f"{self.job_id}_0_log.err",
        )

    def stdout(self) -> str | None:
        """What the job printed (None while it has not finished)."""
        return self._log(self.paths.stdout, "stdout")

    def stderr(self) -> str | None:
        return self._log(self.paths.stderr, "stderr")

    def _log(self, path: Path, stream: str) -> str | None:
        if not self._future.done():
            return None
        if self._on_slurm:
            return path.read_text() if path.exists() else None
        self._write_logs()
        return str(getattr(self._future, stream))

    def _write_logs(self) -> None:
        if self._written or not self._future.done():
            return
        self._written = True
        self._folder.mkdir(parents=True, exist_ok=True)
        self.paths.stdout.write_text(self._future.stdout)
        self.paths.stderr.write_text(self._future.stderr)

    def __repr__(self) -> str:
        return f'Job<job_id="{self.job_id}", state="{self.state}">'


class AutoExecutor:
    """Submitit's ``AutoExecutor``: ``update_parameters``, ``submit``, ``map_array``, ``batch``.

    ``cluster``: None picks Slurm when it answers here, else the local pool; ``"slurm"``
    requires Slurm; ``"local"`` or ``"debug"`` run on the local pool. Other keyword options
    go to the hetfaas backend (e.g. ``max_workers`` locally, ``pack`` on Slurm).
    """

    def __init__(
        self, folder: str | os.PathLike[str], cluster: str | None = None, **options: Any
    ) -> None:
        if cluster not in (None, "slurm", "local", "debug"):
            raise ConfigurationError(
                f"unknown cluster {cluster!r}; known: None (pick), 'slurm', 'local', 'debug'"
            )
        self.folder = Path(folder).expanduser().absolute()
        if cluster is None:
            cluster = "slurm" if slurm_reachable() else "local"
        self.cluster = "slurm" if cluster == "slurm" else "local"
        self.parameters: dict[str, Any] = {}
        self._resources = Resources()
        self._options = options
        self._engine_params: dict[str, Any] = {}  # slurm_* parameters the executor was made with
        self._retired: list[Executor] = []
        self._executor = self._make_executor()

    def _make_executor(self) -> Executor:
        if self.cluster == "local":
            return Executor("local", capture_output=True, **self._options)
        params = {k: v for k, v in self.parameters.items() if k.startswith("slurm_")}
        self._engine_params = params
        partition = params.pop("slurm_partition", None)
        return Executor("slurm", folder=self.folder, partition=partition, **self._options, **params)

    def update_parameters(self, **kwargs: Any) -> None:
        """Submitit's parameters: timeout_min, cpus_per_task, gpus_per_node, mem_gb, name,
        and ``slurm_*`` / ``local_*`` options (kept for the record)."""
        unknown = [k for k in kwargs if k not in _COMMON and not k.startswith(("slurm_", "local_"))]
        if unknown:
            raise ConfigurationError(
                f"unknown parameter(s) {sorted(unknown)}; known: {sorted(_COMMON)} and "
                "slurm_*/local_* options"
            )
        self.parameters.update(kwargs)
        res = self._resources
        changes: dict[str, Any] = {}
        if "timeout_min" in kwargs:
            changes["timeout_s"] = float(kwargs["timeout_min"]) * 60
        if "cpus_per_task" in kwargs:
            changes["cpus"] = int(kwargs["cpus_per_task"])
        if "gpus_per_node" in kwargs:
            changes["gpus"] = kwargs["gpus_per_node"]
        if "mem_gb" in kwargs:
            changes["memory_mb"] = int(float(kwargs["mem_gb"]) * 1024)
        self._resources = res.replace(**changes) if changes else res

    def _view(self) -> Executor:
        if self.cluster == "slurm":
            wanted = {k: v for k, v in self.parameters.items() if k.startswith("slurm_")}
            if wanted != self._engine_params:  # new slurm_* parameters: a new Slurm executor
                self._retired.append(self._executor)
                self._executor = self._make_executor()
        return self._executor.options(resources=self._resources)

    def submit(self, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Job:
        on_slurm = self.cluster == "slurm"
        return Job(self._view().submit(fn, *args, **kwargs), self.folder, on_slurm)

    def map_array(self, fn: Callable[..., Any], *iterables: Iterable[Any]) -> list[Job]:
        on_slurm = self.cluster == "slurm"
        return [Job(f, self.folder, on_slurm) for f in self._view().map_futures(fn, *iterables)]

    @contextlib.contextmanager
    def batch(self) -> Iterator[None]:
        with self._executor.batch():
            yield

    def shutdown(self) -> None:
        for ex in [*self._retired, self._executor]:
            ex.shutdown()

    def __enter__(self) -> AutoExecutor:
        return self

    def __exit__(self, *exc: object) -> None:
        self.shutdown()


def slurm_reachable() -> bool:
    """Whether a Slurm cluster answers here: ``sbatch`` on the PATH and ``sinfo`` working."""
    if shutil.which("sbatch") is None or shutil.which("sinfo") is None:
        return False
    try:
        proc = subprocess.run(["sinfo", "-h"], capture_output=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return False
    return proc.returncode == 0


class LocalExecutor(AutoExecutor):
    """Submitit's ``LocalExecutor``: always this machine (the warm local pool)."""

    def __init__(self, folder: str | os.PathLike[str], **options: Any) -> None:
        super().__init__(folder, cluster="local", **options)


__all__ = ["AutoExecutor", "Job", "JobPaths", "LocalExecutor", "slurm_reachable"]
