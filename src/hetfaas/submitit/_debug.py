"""Submitit's ``DebugJob``: a job run in the submitting process when its result is needed,
so that breakpoints stop in it. A failing job's error is raised as it is (not wrapped), and
``pdb.post_mortem`` opens on it when the process has a terminal (Submitit opens it always;
without a terminal it would stop a script or a CI run)."""

from __future__ import annotations

import itertools
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from ._environment import task_variables, variables
from ._job import Job
from .core.utils import UncompletedJobError

_ids = itertools.count(1)


class DebugJob(Job):
    """A job of the ``debug`` cluster. States: ``QUEUED``, ``DONE``, ``CANCELLED``."""

    def __init__(
        self,
        folder: Path,
        fn: Callable[..., Any],
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
        num_tasks: int,
        parameters: dict[str, Any],
    ) -> None:
        super().__init__("debug", folder, f"DEBUG_{next(_ids)}", 1, str(parameters.get("name", "")))
        self._call = (fn, args, kwargs)
        self._ran = False

    def _run(self) -> None:
        if self._ran:
            return
        if self._cancelled:
            raise UncompletedJobError(f"Job {self.job_id} was cancelled")
        self._ran = True
        fn, args, kwargs = self._call
        env = task_variables(self.job_id, self._folder, cluster="debug")
        with variables(env):
            try:
                self._final.set_result(fn(*args, **kwargs))
            except Exception as exc:
                self._final.set_exception(exc)
                if sys.stdin is not None and sys.stdin.isatty():
                    import pdb

                    pdb.post_mortem(exc.__traceback__)

    @property
    def state(self) -> str:
        if self._final.done():
            return "DONE"
        return "CANCELLED" if self._cancelled else "QUEUED"

    def done(self, force_check: bool = False) -> bool:
        self._run()
        return True

    def wait(self) -> None:
        self._run()

    def results(self) -> list[Any]:
        self._run()
        return [self._final.result()]

    def exception(self) -> BaseException | None:
        self._run()
        return self._final.exception()

    def cancel(self, check: bool = True) -> bool:
        self._cancelled = True
        return not self._ran

    def stdout(self) -> str | None:
        return None  # printed to this process's own stdout

    def stderr(self) -> str | None:
        return None


__all__ = ["DebugJob"]
