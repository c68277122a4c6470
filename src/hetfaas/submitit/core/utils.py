"""Submitit's ``core.utils`` names that user code meets: its errors and ``DelayedSubmission``.

``FailedJobError`` is raised by ``job.result()`` when the function raised (the original
exception is its ``__cause__``, its traceback in the message and in ``job.stderr()``).
``UncompletedJobError`` is raised when a job ended without a result: it ran past its time
limit (and was not requeued), its worker or its Slurm job died, or it was cancelled.
Both are hetfaas errors as well as ``RuntimeError`` (Submitit's base for them).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from ...exceptions import HetfaasError


class FailedJobError(HetfaasError, RuntimeError):
    """The submitted function raised; the message holds its traceback."""


class UncompletedJobError(HetfaasError, RuntimeError):
    """The job ended without producing a result (timeout, a dead worker or job, cancel)."""


class DelayedSubmission:
    """A call to make later, ``function(*args, **kwargs)``: what a ``checkpoint`` method
    returns to be requeued with (Submitit's contract)."""

    def __init__(self, function: Callable[..., Any], *args: Any, **kwargs: Any) -> None:
        self.function = function
        self.args = args
        self.kwargs = kwargs
        self._result: Any = None
        self._done = False

    def result(self) -> Any:
        """Run the call here (once) and return its result."""
        if not self._done:
            self._result = self.function(*self.args, **self.kwargs)
            self._done = True
        return self._result

    def done(self) -> bool:
        return self._done

    def __repr__(self) -> str:
        name = getattr(self.function, "__qualname__", type(self.function).__name__)
        return f"DelayedSubmission({name}, args={self.args!r}, kwargs={self.kwargs!r})"


__all__ = ["DelayedSubmission", "FailedJobError", "UncompletedJobError"]
