"""What runs inside a Parsl HighThroughputExecutor worker for :mod:`hetfaas.backends.parsl_backend`.

:func:`run_call` is the task every call becomes: it runs :func:`remote.run_payload` on the
call's :class:`remote.Payload` and returns its :class:`remote.Reply`, both pickled here (see
:func:`pack_call`).
The HTEX worker runs its tasks in its process's main thread, which the two mechanisms below
rely on.

- ``timeout_s``, from the function's start (unpickling and imports not counted): a real-time
  interval timer (``SIGALRM``) raises an exception inside the call at its deadline, which stops
  Python code and interrupts blocking system calls (``time.sleep``, socket reads); the reply is
  a :class:`~hetfaas.exceptions.CallTimeout` and the worker goes on with the next call. C code
  that holds the GIL (or a call that swallows the exception) is stopped ``GRACE_S`` later by
  :mod:`faulthandler`'s watchdog, a C thread that needs no GIL: it writes the call's traceback to
  ``<folder>/<invocation>.alarm`` and ends the worker's process, which Parsl reports as
  ``WorkerLost``; the caller finds the file and raises ``CallTimeout`` with that traceback.
- cancel: the caller writes ``<folder>/<invocation>`` (an empty marker). A call that finds its
  marker when it starts does not run; while a call runs, one thread per worker process looks
  for its marker every ``_POLL_S`` and, once it appears, kills the worker (``SIGKILL``): Parsl
  starts a fresh one. ``folder`` lies in the Parsl run directory, which the submitting host and
  the workers share on a cluster (as Parsl's own logs assume); where they do not, cancel of a
  running call and the backstop's diagnosis fall back to what Parsl reports.
"""

from __future__ import annotations

import contextlib
import faulthandler
import os
import pickle
import signal
import sys
import threading
import time
from types import FrameType
from typing import IO, Any

from ..exceptions import CallCancelled, CallTimeout
from .remote import Payload, Reply, error_reply, run_payload

GRACE_S = 2.0  # the backstop ends a worker this long after a timed call's deadline
ALARM_SUFFIX = ".alarm"
_POLL_S = 0.1  # how often a running call's cancel marker is looked for


class _Deadline(BaseException):
    """Raised inside a timed call at its deadline (not an Exception: ``except Exception``
    in the function does not swallow it)."""


class _Alarm:
    """A timed call's deadline: ``SIGALRM`` at ``timeout_s``, faulthandler's exit later."""

    def __init__(self, payload: Payload, invocation_id: str, folder: str) -> None:
        self.payload = payload
        self.invocation_id = invocation_id
        self.timeout_s = float(payload.timeout_s or 0)
        self.path = os.path.join(folder, invocation_id + ALARM_SUFFIX) if folder else ""
        self.file: IO[str] | None = None
        self.start_ns = 0
        self.fired_ns = 0
        self.done = False
        self.previous: Any = None

    def _on_alarm(self, signum: int, frame: FrameType | None) -> None:
        if self.done or self.fired_ns:
            return
        self.fired_ns = time.time_ns()
        raise _Deadline

    def arm(self, start_ns: int) -> None:
        self.start_ns = start_ns
        # Signals reach the main thread only: a worker that runs calls in another thread
        # (not Parsl's HTEX) gets the backstop alone, at the deadline itself.
        main = threading.current_thread() is threading.main_thread()
        file: IO[str] = sys.stderr
        if self.path:
            try:
                self.file = file = open(self.path, "w")  # noqa: SIM115 - closed in disarm
            except OSError:
                self.path = ""
        grace = GRACE_S if main else 0.0
        faulthandler.dump_traceback_later(self.timeout_s + grace, exit=True, file=file)
        if main:
            self.previous = signal.signal(signal.SIGALRM, self._on_alarm)
            signal.setitimer(signal.ITIMER_REAL, self.timeout_s)

    def disarm(self) -> None:
        self.done = True
        if not self.start_ns:
            return
        faulthandler.cancel_dump_traceback_later()
        if self.previous is not None:
            signal.setitimer(signal.ITIMER_REAL, 0)
            signal.signal(signal.SIGALRM, self.previous)
            self.previous = None
        if self.file is not None:
            self.file.close()
            self.file = None
            with contextlib.suppress(OSError):
                os.unlink(self.path)

    def reply(self) -> Reply:
        exc = CallTimeout(
            f"call {self.invocation_id} ({self.payload.fn_name}) ran past its "
            f"timeout_s={self.timeout_s:g} and was stopped in its Parsl worker",
            self.invocation_id or None,
        )
        end = self.fired_ns or self.start_ns + int(self.timeout_s * 1e9)
        return error_reply(exc, self.start_ns, end)


def _run_timed(payload: Payload, invocation_id: str, folder: str) -> Reply:
    alarm = _Alarm(payload, invocation_id, folder)
    reply: Reply | None = None
    try:
        reply = run_payload(payload, on_start=alarm.arm)
    except _Deadline:  # the deadline came after run_payload's own error handling
        reply = None
    while True:  # the alarm may still strike while it is being disarmed
        try:
            alarm.disarm()
            break
        except _Deadline:
            continue
    if alarm.fired_ns or reply is None:
        return alarm.reply()
    return reply


class _CancelWatch:
    """This worker process's watch on the marker of the call it runs: a thread that looks
    every ``_POLL_S`` (waking it at each call's start would cost a thread switch per call)."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.marker = ""
        threading.Thread(target=self._run, name="hetfaas-cancel-watch", daemon=True).start()

    def watch(self, marker: str) -> None:
        self.marker = marker  # one store: atomic under the GIL

    def unwatch(self) -> None:
        with self.lock:  # not while the thread looks (it would kill the next call)
            self.marker = ""

    def _run(self) -> None:
        while True:
            time.sleep(_POLL_S)
            with self.lock:
                if self.marker and os.path.exists(self.marker):
                    os.kill(os.getpid(), signal.SIGKILL)


_watch: list[_CancelWatch] = []


def pack_call(payload: Payload, invocation_id: str = "", folder: str = "") -> bytes:
    """What a call's task carries: one ``bytes`` (Parsl pickles task arguments with dill, in
    Python, which takes ten times as long on a payload's fields as pickle does on one blob)."""
    return pickle.dumps((payload, invocation_id, folder), protocol=5)


def run_call(blob: bytes) -> bytes:
    """The Parsl task of one hetfaas call (see the module docstring): ``blob`` from
    :func:`pack_call`, the pickled :class:`Reply` back. Never raises for the call's own
    errors: they travel back in the reply."""
    payload, invocation_id, folder = pickle.loads(blob)
    return pickle.dumps(_run(payload, invocation_id, folder), protocol=5)


def _run(payload: Payload, invocation_id: str, folder: str) -> Reply:
    marker = os.path.join(folder, invocation_id) if folder and invocation_id else ""
    if marker:
        if os.path.exists(marker):  # cancelled while it waited in Parsl
            exc = CallCancelled(f"call {invocation_id} was cancelled", invocation_id)
            return error_reply(exc)
        if not _watch:
            _watch.append(_CancelWatch())
        _watch[0].watch(marker)
    try:
        if payload.timeout_s:
            return _run_timed(payload, invocation_id, folder)
        return run_payload(payload)
    finally:
        if marker:
            _watch[0].unwatch()


def touch(seconds: float) -> int:
    """A warm-up call: hold the worker a moment (so that each worker takes one), say who ran."""
    time.sleep(seconds)
    return os.getpid()


__all__ = ["ALARM_SUFFIX", "GRACE_S", "pack_call", "run_call", "touch"]
