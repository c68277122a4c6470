"""The Submitit surface on hetfaas: code written for Submitit runs after changing its import.

``import submitit`` becomes ``from hetfaas import submitit``::

    executor = submitit.AutoExecutor(folder="log_test")
    executor.update_parameters(timeout_min=1, slurm_partition="dev")
    job = executor.submit(add, 5, 7)
    print(job.job_id)
    assert job.result() == 12

``AutoExecutor`` runs on the warm local pool here (no Slurm engine is registered in this
build; the ``slurm_*`` parameters are recorded and reported by ``executor.parameters``). Each
job's stdout and stderr are captured and written to ``folder`` as Submitit does
(``<job_id>_0_log.out`` / ``.err``).
"""

from __future__ import annotations

import contextlib
import os
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

    def __init__(self, future: Future, folder: Path) -> None:
        self._future = future
        self._folder = folder
        self._written = False

    @property
    def job_id(self) -> str:
        return self._future.invocation_id

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
        if not self._future.done():
            return None
        self._write_logs()
        return self._future.stdout

    def stderr(self) -> str | None:
        if not self._future.done():
            return None
        self._write_logs()
        return self._future.stderr

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
    """Submitit's ``AutoExecutor``: ``update_parameters``, ``submit``, ``map_array``, ``batch``."""

    def __init__(
        self, folder: str | os.PathLike[str], cluster: str | None = None, **options: Any
    ) -> None:
        if cluster not in (None, "local", "debug"):
            raise ConfigurationError(
                f"cluster={cluster!r} is not available in this build; use None or 'local'"
            )
        self.folder = Path(folder).expanduser().absolute()
        self.cluster = "local"
        self.parameters: dict[str, Any] = {}
        self._resources = Resources()
        self._executor = Executor("local", capture_output=True, **options)

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
        return self._executor.options(resources=self._resources)

    def submit(self, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Job:
        return Job(self._view().submit(fn, *args, **kwargs), self.folder)

    def map_array(self, fn: Callable[..., Any], *iterables: Iterable[Any]) -> list[Job]:
        return [Job(f, self.folder) for f in self._view().map_futures(fn, *iterables)]

    @contextlib.contextmanager
    def batch(self) -> Iterator[None]:
        with self._executor.batch():
            yield

    def shutdown(self) -> None:
        self._executor.shutdown()

    def __enter__(self) -> AutoExecutor:
        return self

    def __exit__(self, *exc: object) -> None:
        self.shutdown()


LocalExecutor = AutoExecutor

__all__ = ["AutoExecutor", "Job", "JobPaths", "LocalExecutor"]
