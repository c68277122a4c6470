"""Retries, for functions declared idempotent only.

A call is run again only if its function says running it twice is harmless::

    @hetfaas.idempotent                      # Retry(): up to 4 attempts on WorkerDied/JobFailed
    def score(x): ...

    @hetfaas.idempotent(Retry(max_attempts=6, timeouts=True, backoff_s=0.05))
    def fetch(url): ...

    ex.submit(hetfaas.idempotent(np.linalg.norm), arr)       # a function you cannot decorate
    ex.options(retry=Retry(max_attempts=2)).submit(score, 1)  # another policy for these calls

A call whose function is not declared idempotent is never run again after it began, whatever
happens to its worker (a call that never began, queued behind a worker that died, is not a
retry: it runs once, elsewhere). ``ex.options(retry=...)`` on such a function is refused at
submit with a :class:`~hetfaas.exceptions.ConfigurationError`.

Which errors are retried: :class:`~hetfaas.exceptions.WorkerDied` and
:class:`~hetfaas.exceptions.JobFailed` (a Slurm job that failed, or was cancelled or
preempted by the engine), and :class:`~hetfaas.exceptions.CallTimeout` only with
``timeouts=True``. Never the function's own exceptions, never a cancel by the caller.

Between attempts the call waits ``backoff_s * backoff_factor ** (attempt - 1)`` (at most
``max_backoff_s``), with up to ``jitter`` of it added at random so that calls killed together
do not come back together. The decision is a pure function (:meth:`Retry.delay`); the attempts
are driven by :mod:`hetfaas._retrying`.

The future counts its attempts (``future.attempts``, ``timings.attempts``); the time spent in
failed attempts and backoff is ``timings.retry_us``, one of the phases that sum to
``total_us``.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, overload

from .exceptions import (
    CallCancelled,
    CallTimeout,
    ConfigurationError,
    JobFailed,
    WorkerDied,
)

RETRY_ATTR = "__hetfaas_retry__"


@dataclass(frozen=True)
class Retry:
    """How an idempotent function's calls are retried (see the module's doc)."""

    max_attempts: int = 4  # the first run and 3 retries (Ray's max_retries=3)
    timeouts: bool = False  # retry CallTimeout too
    backoff_s: float = 0.0
    backoff_factor: float = 2.0
    max_backoff_s: float = 30.0
    jitter: float = 0.1  # up to this fraction of the delay added at random
    on: tuple[type[BaseException], ...] = (WorkerDied, JobFailed)

    def __post_init__(self) -> None:
        if (
            isinstance(self.max_attempts, bool)
            or not isinstance(self.max_attempts, int)
            or self.max_attempts < 1
        ):
            raise ConfigurationError(f"max_attempts must be an int >= 1, got {self.max_attempts}")
        if self.backoff_s < 0 or self.backoff_factor < 1 or self.max_backoff_s < 0:
            raise ConfigurationError(
                "need backoff_s >= 0, backoff_factor >= 1 and max_backoff_s >= 0, got "
                f"{self.backoff_s}, {self.backoff_factor}, {self.max_backoff_s}"
            )
        if not 0 <= self.jitter <= 1:
            raise ConfigurationError(f"jitter must be in [0, 1], got {self.jitter}")
        if not self.on or not all(
            isinstance(t, type) and issubclass(t, BaseException) for t in self.on
        ):
            raise ConfigurationError(f"on must be a tuple of exception types, got {self.on!r}")

    def retries(self, error: BaseException) -> bool:
        """Whether ``error`` is one this policy retries (the attempt count aside)."""
        if isinstance(error, CallCancelled):
            return False  # the caller cancelled (JobCancelled is the engine's, a JobFailed)
        if isinstance(error, CallTimeout):
            return self.timeouts
        return isinstance(error, self.on)

    def delay(
        self, attempt: int, error: BaseException, rand: Callable[[], float] = random.random
    ) -> float | None:
        """After attempt number ``attempt`` (1 for the first run) failed with ``error``: the
        seconds to wait before the next one, or None when there is no next one."""
        if attempt >= self.max_attempts or not self.retries(error):
            return None
        base = min(self.max_backoff_s, self.backoff_s * self.backoff_factor ** (attempt - 1))
        return base * (1.0 + self.jitter * rand())


DEFAULT = Retry()


@overload
def idempotent(fn: Callable[..., Any], /) -> Callable[..., Any]: ...
@overload
def idempotent(
    policy: Retry | None = None, /
) -> Callable[[Callable[..., Any]], Callable[..., Any]]: ...


def idempotent(target: Any = None, /) -> Any:
    """Declare a function idempotent, so that its calls are retried per a :class:`Retry`
    policy (the default one, or the one given): ``@idempotent``, ``@idempotent(Retry(...))``
    or ``idempotent(fn)``. A function that takes no attribute (a builtin, a C function) is
    wrapped in a small picklable callable."""
    if target is None or isinstance(target, Retry):
        policy = target or DEFAULT
        return lambda fn: _mark(fn, policy)
    if not callable(target):
        raise TypeError(f"idempotent() takes a function or a Retry, got {target!r}")
    return _mark(target, DEFAULT)


class Idempotent:
    """``fn`` declared idempotent, for functions that take no attribute."""

    def __init__(self, fn: Callable[..., Any], policy: Retry) -> None:
        self.fn = fn
        setattr(self, RETRY_ATTR, policy)
        self.__qualname__ = getattr(fn, "__qualname__", repr(fn))

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        return self.fn(*args, **kwargs)

    def __reduce__(self) -> tuple[Any, ...]:
        return (Idempotent, (self.fn, getattr(self, RETRY_ATTR)))


def _mark(fn: Callable[..., Any], policy: Retry) -> Callable[..., Any]:
    if not callable(fn):
        raise TypeError(f"idempotent() needs a callable, got {fn!r}")
    try:
        setattr(fn, RETRY_ATTR, policy)
    except (AttributeError, TypeError):
        return Idempotent(fn, policy)
    return fn


def policy_of(fn: Callable[..., Any], override: Retry | None) -> Retry | None:
    """The retry policy of ``fn``'s calls: ``override`` (from ``options(retry=...)``) for an
    idempotent function, its declared one, or None (no retries)."""
    declared = getattr(fn, RETRY_ATTR, None)
    if override is None:
        return declared
    if declared is None:
        name = getattr(fn, "__qualname__", None) or repr(fn)
        raise ConfigurationError(
            f"retry given for {name}, which is not declared idempotent: a call that ran "
            "partly is never run again unless its function says that is harmless; declare it "
            "with @hetfaas.idempotent (or pass hetfaas.idempotent(fn))"
        )
    return override


__all__ = ["DEFAULT", "Idempotent", "Retry", "idempotent", "policy_of"]
