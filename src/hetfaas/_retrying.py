"""Driving the attempts of an idempotent function's call (the policy is :mod:`hetfaas.retry`).

The caller holds one future (the call's); each attempt is a call of its own on the backend,
with a future of its own that only this module sees. When an attempt ends with an error the
policy retries, the next attempt is prepared and dispatched after the backoff, from one
scheduler thread (never from the thread that delivered the failure: that may be a backend's
reader, holding its locks). When an attempt ends any other way, its outcome, timings, usage
and output become the call's, with the attempts counted and the time of the failed ones in
``timings.retry_us``.

Waiting on the call's future waits on the current attempt's (so the backend can deliver the
result in the waiting thread, as for any call); cancelling the call cancels the current
attempt and stops the retries.
"""

from __future__ import annotations

import concurrent.futures as cf
import contextlib
import heapq
import itertools
import threading
import time
from collections.abc import Callable
from typing import Any

from ._future import Future
from ._resources import Resources
from .backends.base import Backend, CallSpec
from .backends.contract import attach
from .retry import Retry


class RetryingCall:
    """One call of an idempotent function and its attempts."""

    def __init__(
        self,
        backend: Backend,
        new_future: Callable[[], Future],
        fn: Callable[..., Any],
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
        resources: Resources,
        policy: Retry,
    ) -> None:
        self.backend, self.new_future = backend, new_future
        self.fn, self.args, self.kwargs, self.resources = fn, args, kwargs, resources
        self.policy = policy
        self.future = new_future()  # the caller's
        self.attempt = 1
        self.stopped = False
        self.t_first = time.perf_counter_ns()
        self.t_current = self.t_first
        self.current = self.new_future()
        self.prepared = self._prepare(self.current)  # bad input fails here, at submit
        attach(self.future, waiter=self._wait)
        self.future.add_done_callback(self._call_done)

    def _prepare(self, attempt: Future) -> Any:
        attempt.add_done_callback(self._attempt_done)
        spec = CallSpec(self.fn, self.args, self.kwargs, self.resources, attempt)
        return self.backend.prepare(spec)

    # ------------------------------------------------------------------ attempts

    def _attempt_done(self, attempt: Future) -> None:
        fut = self.future
        if fut.done() or attempt is not self.current:
            return
        if attempt.cancelled():
            fut.cancel()  # a cancel of this attempt (a batch that raised, a shutdown)
            return
        error = attempt.exception(0)
        delay = None
        if error is not None and not self.stopped:
            delay = self.policy.delay(self.attempt, error)
        if delay is None:
            self._finish(attempt)
        else:
            _scheduler().at(time.monotonic() + delay, self._next_attempt)

    def _next_attempt(self) -> None:
        fut = self.future
        if fut.done() or self.stopped:
            return
        self.attempt += 1
        fut.attempts = self.attempt
        attempt = self.new_future()
        try:
            self.current = attempt
            self.t_current = time.perf_counter_ns()
            prepared = self._prepare(attempt)
            self.backend.dispatch([prepared])
        except Exception as exc:  # shut down meanwhile, or the engine refused it
            if not attempt.done():
                fut._adopt_error(exc, self.attempt)

    def _finish(self, attempt: Future) -> None:
        retry_us = (self.t_current - self.t_first) / 1e3
        self.future._adopt(attempt, retry_us, self.attempt)

    # ------------------------------------------------------------------ the caller's side

    def _wait(self, fut: Future, deadline: float | None) -> None:
        while not fut.done():
            left = None if deadline is None else deadline - time.monotonic()
            if left is not None and left <= 0:
                return
            attempt = self.current
            if not attempt.done():
                with contextlib.suppress(Exception):  # a timeout, an attempt cancelled
                    attempt.exception(left)
            else:  # between attempts
                cf.wait([fut], timeout=0.005 if left is None else min(0.005, left))

    def _call_done(self, fut: Future) -> None:
        if fut.cancelled():
            self.stopped = True
            self.current.cancel()


class _Scheduler(threading.Thread):
    """Runs functions at their due times (the next attempts after their backoff)."""

    def __init__(self) -> None:
        super().__init__(name="hetfaas-retries", daemon=True)
        self._heap: list[tuple[float, int, Callable[[], None]]] = []
        self._order = itertools.count()
        self._cond = threading.Condition()

    def at(self, when: float, fn: Callable[[], None]) -> None:
        with self._cond:
            heapq.heappush(self._heap, (when, next(self._order), fn))
            self._cond.notify()

    def run(self) -> None:
        while True:
            with self._cond:
                while not self._heap or self._heap[0][0] > time.monotonic():
                    timeout = self._heap[0][0] - time.monotonic() if self._heap else None
                    self._cond.wait(timeout)
                _, _, fn = heapq.heappop(self._heap)
            try:
                fn()
            except Exception:  # never let the thread die: every accepted call must end
                import logging

                logging.getLogger(__name__).exception("hetfaas: a retry could not be started")


_SCHEDULER: _Scheduler | None = None
_SCHEDULER_LOCK = threading.Lock()


def _scheduler() -> _Scheduler:
    global _SCHEDULER
    with _SCHEDULER_LOCK:
        if _SCHEDULER is None or not _SCHEDULER.is_alive():
            _SCHEDULER = _Scheduler()
            _SCHEDULER.start()
        return _SCHEDULER
