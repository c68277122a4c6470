"""Future: a concurrent.futures.Future that also knows its call id, state and timings.

Backends settle a future only through :mod:`hetfaas.backends.contract` (``complete``,
``attach``); the fields below are this module's own.

The condition variable of ``concurrent.futures.Future`` costs a few microseconds to make; most
futures of a large ``map`` are never waited on while pending, so it is made only when a thread
first waits (or ``concurrent.futures.wait`` looks at the future).
"""

from __future__ import annotations

import concurrent.futures as cf
import dataclasses
import threading
import time
from collections.abc import Callable
from typing import Any

from ._invocation import Stamps, State, Timings

_LAZY = threading.Lock()
_FINISHED = "FINISHED"
_DONE = frozenset({"CANCELLED", "CANCELLED_AND_NOTIFIED", _FINISHED})
_STATES = {
    "PENDING": State.PENDING,
    "RUNNING": State.RUNNING,
    "CANCELLED": State.CANCELLED,
    "CANCELLED_AND_NOTIFIED": State.CANCELLED,
}


class Future(cf.Future):  # type: ignore[type-arg]
    """The handle of one call. Works with ``concurrent.futures.wait``/``as_completed``.

    Adds ``invocation_id``, ``state`` (a :class:`State`), ``timings`` (a :class:`Timings`, set
    when the call ends), the captured ``stdout``/``stderr`` when the executor captures them,
    ``engine_id`` where an engine names the call itself (a Slurm job id), and ``attempts``
    (runs of the call; above 1 only for an idempotent function retried, see
    :mod:`hetfaas.retry`; such a call's future stays PENDING until its last attempt ends).
    """

    def __init__(self, prefix: str, seq: int) -> None:  # no super().__init__: lazy condition
        self._cond: threading.Condition | None = None
        self._state = "PENDING"
        self._result: Any = None
        self._exception: BaseException | None = None
        self._waiters: list[Any] = []
        self._done_callbacks: list[Callable[[Future], object]] = []
        self._prefix = prefix
        self.seq = seq
        self._timings: Timings | None = None
        self._stamps: Stamps | None = None
        self._usage: Any = None  # a CallUsage, set by the backend contract's complete
        self._waiter_hook: Callable[[Future, float | None], None] | None = None  # (fut, deadline)
        self._canceller: Callable[[Future], bool] | None = None  # stops a running call
        self.stdout = ""
        self.stderr = ""
        self.engine_id: str | None = None  # the engine's own id (a Slurm job id, ...)
        self.attempts = 1  # runs of the call: more than 1 for a retried idempotent function

    @property
    def _condition(self) -> threading.Condition:  # type: ignore[override]
        cond = self._cond
        if cond is None:
            with _LAZY:
                cond = self._cond
                if cond is None:
                    cond = self._cond = threading.Condition()
        return cond

    # -------------------------------------------------------------- identity and timings

    @property
    def usage(self) -> Any:
        """What the call used (a :class:`hetfaas.monitor.Usage`: CPU seconds, CPU efficiency,
        peak RSS, memory efficiency, advice), or None where the backend did not measure it
        (the local pool measures calls of functions that run 1 ms or more)."""
        raw = self._usage
        if raw is None:
            return None
        from .monitor.summary import usage_of_call

        return usage_of_call(raw)

    @property
    def invocation_id(self) -> str:
        return f"{self._prefix}-{self.seq}"

    @property
    def timings(self) -> Timings | None:
        """Where the call's time went; None until it ends."""
        if self._timings is None and self._stamps is not None:
            self._timings = self._stamps.to_timings()
        return self._timings

    @property
    def state(self) -> State:
        raw = self._state
        if raw == _FINISHED:
            if self._exception is None:
                return State.COMPLETED
            return State.CANCELLED if _is_cancel(self._exception) else State.FAILED
        return _STATES[raw]

    def __repr__(self) -> str:
        return f"<hetfaas.Future {self.invocation_id} {self.state}>"

    # -------------------------------------------------------------- fast paths

    def done(self) -> bool:
        return self._state in _DONE

    def cancelled(self) -> bool:
        if self._state == _FINISHED:  # a running call the backend stopped on cancel()
            return _is_cancel(self._exception)
        return self._state in ("CANCELLED", "CANCELLED_AND_NOTIFIED")

    def cancel(self) -> bool:
        """Cancel the call: a queued call is dropped; a running one is stopped by its backend
        (the local pool interrupts or kills its worker, Slurm cancels its job with
        ``scancel``, Ray cancels its task) and raises
        :class:`~hetfaas.exceptions.CallCancelled`. False if it already ended or its backend
        cannot stop it."""
        if self._state == "PENDING" and super().cancel():
            return True
        canceller = self._canceller
        if self._state != "RUNNING" or canceller is None:
            return self.cancelled()
        if not canceller(self):
            return self.cancelled()
        with self._condition:
            if self._state == "RUNNING":
                self._state = "CANCELLED_AND_NOTIFIED"
                for waiter in self._waiters:
                    waiter.add_cancelled(self)
                self._condition.notify_all()
            else:
                return self.cancelled()
        self._waiter_hook = self._canceller = None
        self._invoke_callbacks()
        return True

    def running(self) -> bool:
        return self._state == "RUNNING"

    def set_running_or_notify_cancel(self) -> bool:
        if self._cond is None:
            with _LAZY:
                if self._cond is None and self._state == "PENDING":
                    self._state = "RUNNING"
                    return True
        return super().set_running_or_notify_cancel()

    def _finish_fast(self, result: Any, exception: BaseException | None) -> bool:
        with _LAZY:
            if self._cond is not None:
                return False
            if self._state in _DONE:
                raise cf.InvalidStateError(f"{self._state}: {self!r}")
            self._result = result
            self._exception = exception
            self._state = _FINISHED
        self._invoke_callbacks()
        return True

    def _settle(
        self, result: Any, error: BaseException | None, stamps: Stamps | Timings | None
    ) -> bool:
        """The backend contract's ``complete``: timings, then the outcome. False when the
        future had already ended (a call cancelled meanwhile)."""
        if self._state in _DONE:
            return False
        if stamps is not None:
            if isinstance(stamps, Timings):
                self._timings = stamps
            else:
                self._stamps = stamps
        self._waiter_hook = self._canceller = None
        try:
            if error is None:
                self.set_result(result)
            else:
                self.set_exception(error)
        except cf.InvalidStateError:
            return False
        return True

    def _adopt(self, attempt: Future, retry_us: float, attempts: int) -> bool:
        """End this call as its last ``attempt`` ended (see :mod:`hetfaas._retrying`)."""
        timings = attempt.timings
        if timings is not None and attempts > 1:
            timings = dataclasses.replace(
                timings,
                retry_us=timings.retry_us + retry_us,
                total_us=timings.total_us + retry_us,
                attempts=attempts,
            )
        self.stdout, self.stderr, self.engine_id = attempt.stdout, attempt.stderr, attempt.engine_id
        self._usage = attempt._usage
        self.attempts = attempts
        return self._settle(attempt._result, attempt._exception, timings)

    def _adopt_error(self, error: BaseException, attempts: int) -> bool:
        """End this call with ``error``: its next attempt could not be started."""
        self.attempts = attempts
        return self._settle(None, error, None)

    def set_result(self, result: Any) -> None:
        if self._cond is None and self._finish_fast(result, None):
            return
        super().set_result(result)

    def set_exception(self, exception: BaseException | None) -> None:
        if self._cond is None and self._finish_fast(None, exception):
            return
        super().set_exception(exception)

    def result(self, timeout: float | None = None) -> Any:
        if self._state != _FINISHED:
            timeout = self._help(timeout)
        if self._state != _FINISHED:
            try:
                return super().result(timeout)
            except cf.CancelledError:
                from .exceptions import CallCancelled

                raise CallCancelled(
                    f"call {self.invocation_id} was cancelled", self.invocation_id
                ) from None
        if self._exception is not None:
            try:
                raise self._exception
            finally:
                self = None  # type: ignore[assignment]  # break the reference cycle
        return self._result

    def exception(self, timeout: float | None = None) -> BaseException | None:
        if self._state != _FINISHED:
            timeout = self._help(timeout)
        try:
            return super().exception(timeout)
        except cf.CancelledError:
            from .exceptions import CallCancelled

            raise CallCancelled(
                f"call {self.invocation_id} was cancelled", self.invocation_id
            ) from None

    def _help(self, timeout: float | None) -> float | None:
        """Let the backend deliver results in this thread while it waits; the time left."""
        hook = self._waiter_hook
        if hook is None or self._state in _DONE:
            return timeout
        deadline = None if timeout is None else time.monotonic() + timeout
        hook(self, deadline)
        return None if deadline is None else max(0.0, deadline - time.monotonic())


def _is_cancel(exc: BaseException | None) -> bool:
    from .exceptions import CallCancelled

    return isinstance(exc, CallCancelled)
