"""The public contract between a backend and the futures of its calls.

A backend never writes a :class:`~hetfaas.Future`'s fields; it calls these functions::

    prepare(spec)                      # Backend.prepare, at submit: keep spec.future
      attach(fut, waiter=..., canceller=...)   # optional hooks
    dispatch([...])
      start(fut) -> bool               # PENDING -> RUNNING when the engine takes the call;
                                       # False: it was cancelled meanwhile, drop it
      complete(fut, value, timings=Stamps(...))          # the result, or
      complete(fut, error=exc, timings=Timings(...))     # the error
      complete(..., usage=CallUsage(...))                # and, if measured, what it used
                                       # -> False when the future had already ended

``timings`` is a :class:`Stamps` (nanoseconds, cheap to make on a hot path) or a
:class:`Timings` (microseconds). Its phases should sum to its total; ``submitted_ns`` and the
other stamps are on whatever clock the backend documents.

Hooks:

- ``waiter(fut, deadline)``: called in a thread that waits on ``fut.result()`` before it
  blocks, so the backend can deliver results in that thread (saving a thread hop); it returns
  when ``fut`` is done or at ``deadline`` (``time.monotonic()``, or None).
- ``canceller(fut) -> bool``: called by ``fut.cancel()`` while the call runs. It asks the
  engine to stop the call and returns True if it will; the future is then cancelled at once
  (its ``result()`` raises :class:`~hetfaas.exceptions.CallCancelled`), and a later
  ``complete`` of it is ignored. A call still queued is cancelled without the hook; the
  backend drops it when ``start`` returns False.

``complete`` drops both hooks, so a settled future holds nothing of the backend.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from .._future import Future
from .._invocation import CallUsage, Stamps, Timings

Waiter = Callable[[Future, "float | None"], None]
Canceller = Callable[[Future], bool]


def attach(
    future: Future, *, waiter: Waiter | None = None, canceller: Canceller | None = None
) -> None:
    """Give ``future`` the backend's hooks (either may be None: no hook)."""
    future._waiter_hook = waiter
    future._canceller = canceller


def detach(future: Future) -> None:
    """Drop the backend's hooks (the call ended in a way ``complete`` does not see)."""
    future._waiter_hook = future._canceller = None


def start(future: Future) -> bool:
    """Mark the call RUNNING; False if it was cancelled before the engine took it."""
    return future.set_running_or_notify_cancel()


def complete(
    future: Future,
    result: Any = None,
    *,
    error: BaseException | None = None,
    timings: Stamps | Timings | None = None,
    usage: CallUsage | None = None,
) -> bool:
    """Settle ``future`` with ``result`` (or ``error``), its ``timings`` and, where the
    backend measured it, its ``usage``. Returns False, changing nothing, when the future had
    already ended (cancelled)."""
    if not isinstance(future, Future):
        raise TypeError(f"complete() needs a hetfaas Future, got {type(future).__name__}")
    if error is not None and not isinstance(error, BaseException):
        raise TypeError(f"error must be an exception, got {type(error).__name__}")
    if usage is not None:
        future._usage = usage
    return future._settle(result, error, timings)


__all__ = ["CallUsage", "Canceller", "Stamps", "Timings", "Waiter", "attach", "complete", "detach",
           "start"]  # fmt: skip
