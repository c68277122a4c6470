"""What runs inside a Ray worker for :mod:`hetfaas.backends.ray_backend`: the tasks of calls
(a function's own runner, or the generic ones whose function travels with the call), replies
packed as ``bytes``, and the watchdog that ends a worker whose timed call passes its
``timeout_s`` (see ``ray_backend``'s docstring for the protocol with the caller)."""

from __future__ import annotations

import os
import pickle
import signal
import sys
import threading
import time
from typing import Any

from .remote import Payload, Reply, run_payload

PACK_MAX = 1 << 20  # payloads and replies smaller than this travel through Ray as bytes
KV_NS = "hetfaas"  # the namespace of the timeout markers in Ray's key-value store
_EXIT_TIMEOUT = 124  # a worker that stopped itself for a call's timeout_s exits with this
_MARK_AFTER_S = 1.0  # a timed call running this long (or half its timeout_s) marks its start
_ALARM_GRACE_S = 2.0  # SIGALRM kills a worker whose watchdog thread could not act by then


def kv_store() -> Any:
    from ray.experimental import internal_kv

    return internal_kv


def _pack(reply: Reply) -> bytes | Reply:
    """Ray (de)serializes ``bytes`` faster than a Python object: a small reply travels as its
    fields (a tuple: half the bytes of the dataclass, a third of the time) pickled here; a
    large one as itself (no extra copy)."""
    if len(reply.data) < PACK_MAX:
        return pickle.dumps(tuple(reply.__dict__.values()), protocol=5)
    return reply


def run_call(shipped: bytes | Payload) -> bytes | Reply:
    """The Ray task of a call whose function travels with it (see ``_pack``)."""
    return _pack(run_payload(pickle.loads(shipped) if isinstance(shipped, bytes) else shipped))


def run_call_timed(shipped: bytes | Payload, timeout_s: float, marker: bytes) -> bytes | Reply:
    payload = pickle.loads(shipped) if isinstance(shipped, bytes) else shipped
    return _timed(payload, timeout_s, marker)


def _timed(payload: Payload, timeout_s: float, marker: bytes) -> bytes | Reply:
    """A timed call under its worker's watchdog (module-level, so that cloudpickle ships the
    runners that use it by reference, not the watchdog object)."""
    alarm = _watchdog.arm(marker, timeout_s)
    try:
        reply = run_payload(payload)
    finally:
        _watchdog.disarm(alarm)
    return _pack(reply)


def make_runner(
    digest: bytes, fn: bytes, fn_name: str, sys_path: tuple[str, ...], cpus: int, gpus: float,
    timed: bool,
) -> Any:  # fmt: skip
    """A Ray task for one function: Ray ships the function (in this closure) to each worker
    once, as it does a user's ``@ray.remote`` function; each call then carries only its
    arguments (and, if timed, its timeout and marker key)."""

    def run(args: bytes) -> bytes | Reply:
        return _pack(run_payload(Payload(digest, fn, args, cpus, gpus, fn_name, 0, 0, sys_path)))

    def run_timed(args: bytes, timeout_s: float, marker: bytes) -> bytes | Reply:
        payload = Payload(digest, fn, args, cpus, gpus, fn_name, 0, 0, sys_path)
        return _timed(payload, timeout_s, marker)

    task = run_timed if timed else run
    task.__qualname__ = task.__name__ = f"hetfaas:{fn_name}"
    return task


class _Watchdog:
    """In a Ray worker: ends the process when the timed call it runs passes its timeout_s
    (see the module docstring). One thread per worker process, started by its first timed call."""

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._job: tuple[bytes, int, float, float, float] | None = None
        self._marked: bytes | None = None  # whose start marker this process wrote last
        self._thread: threading.Thread | None = None

    def arm(self, marker: bytes, timeout_s: float) -> tuple[Any] | None:
        now = time.monotonic()
        mark_at = now + min(_MARK_AFTER_S, timeout_s / 2)
        with self._cond:
            self._job = (marker, time.time_ns(), mark_at, now + timeout_s, timeout_s)
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name="hetfaas-watchdog")
                self._thread.daemon = True
                self._thread.start()
            self._cond.notify()
        if threading.current_thread() is not threading.main_thread():
            return None  # signals only there: the watchdog thread alone
        previous = signal.signal(signal.SIGALRM, signal.SIG_DFL)
        signal.setitimer(signal.ITIMER_REAL, timeout_s + _ALARM_GRACE_S)
        return (previous,)

    def disarm(self, alarm: tuple[Any] | None) -> None:
        if alarm is not None:
            signal.setitimer(signal.ITIMER_REAL, 0)
            signal.signal(signal.SIGALRM, signal.SIG_DFL if alarm[0] is None else alarm[0])
        with self._cond:
            self._job = None
            if self._marked is not None:  # its start marker goes
                self._cond.notify()

    def _run(self) -> None:
        cond, kv = self._cond, kv_store()
        with cond:
            while True:
                job = self._job
                if self._marked is not None and (job is None or job[0] != self._marked):
                    stale, self._marked = self._marked, None
                    self._outside(kv._internal_kv_del, stale)
                    continue
                if job is None:
                    cond.wait()
                    continue
                marker, start_ns, mark_at, expire_at, timeout_s = job
                now = time.monotonic()
                if now >= expire_at:
                    _expire(kv, marker, start_ns, timeout_s)
                if now >= mark_at and self._marked != marker:
                    self._marked = marker
                    self._outside(kv._internal_kv_put, marker, b"S%d" % start_ns)
                    continue
                cond.wait((expire_at if self._marked == marker else mark_at) - now)

    def _outside(self, fn: Any, *args: Any) -> None:
        """A call to Ray's store without holding the lock (the call may end meanwhile)."""
        self._cond.release()
        try:
            fn(*args, namespace=KV_NS)
        except Exception:
            pass
        finally:
            self._cond.acquire()


def _expire(kv: Any, marker: bytes, start_ns: int, timeout_s: float) -> None:
    """The call ran past its timeout_s: say so where the caller looks, and end this worker."""
    try:
        sys.stderr.write(f"hetfaas: call ran past its timeout_s={timeout_s}; ending its worker\n")
        sys.stderr.flush()
        kv._internal_kv_put(marker, b"X%d" % start_ns, namespace=KV_NS)
    finally:
        os._exit(_EXIT_TIMEOUT)


_watchdog = _Watchdog()


def touch(hold_s: float) -> int:
    """A task that keeps its worker busy a moment, so that ``warmup`` starts several."""
    time.sleep(hold_s)
    return os.getpid()
