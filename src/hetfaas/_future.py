"""Future: a concurrent.futures.Future that also knows its call id, state and timings."""

from __future__ import annotations

import concurrent.futures as cf
from typing import Any

from ._invocation import State, Timings

_STATES = {
    "PENDING": State.PENDING,
    "RUNNING": State.RUNNING,
    "CANCELLED": State.CANCELLED,
    "CANCELLED_AND_NOTIFIED": State.CANCELLED,
}


class Future(cf.Future):  # type: ignore[type-arg]
    """The handle of one call. Works with ``concurrent.futures.wait``/``as_completed``.

    Adds ``invocation_id``, ``state`` (a :class:`State`), ``timings`` (a :class:`Timings`, set
    when the call ends) and the captured ``stdout``/``stderr`` when the executor captures them.
    """

    def __init__(self, prefix: str, seq: int) -> None:
        super().__init__()
        self._prefix = prefix
        self.seq = seq
        self.timings: Timings | None = None
        self.stdout: str = ""
        self.stderr: str = ""

    @property
    def invocation_id(self) -> str:
        return f"{self._prefix}-{self.seq}"

    @property
    def state(self) -> State:
        with self._condition:
            raw = self._state
            if raw == "FINISHED":
                return State.FAILED if self._exception is not None else State.COMPLETED
        return _STATES[raw]

    def __repr__(self) -> str:
        return f"<hetfaas.Future {self.invocation_id} {self.state}>"

    def result(self, timeout: float | None = None) -> Any:
        try:
            return super().result(timeout)
        except cf.CancelledError:
            from .exceptions import CallCancelled

            raise CallCancelled(
                f"call {self.invocation_id} was cancelled before it ran", self.invocation_id
            ) from None
