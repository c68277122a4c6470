"""What the jobs of the ``submitit-local`` and ``slurm`` backends run, inside the job.

- :func:`run_call`: one call per job. With the payload's ``timeout_s``, a watchdog thread
  stops the call ``timeout_s`` after the function started (unpickling and imports not
  counted): it writes the job's result itself -- a reply carrying
  :class:`~hetfaas.exceptions.CallTimeout` -- and ends the job's process (``os._exit``), so
  the caller raises ``CallTimeout`` within the submitter's polling interval of the deadline.
  The engine's own time limit stays as a backstop. A function holding the GIL in C code for
  long delays the watchdog until it lets go (the backstop catches what never does).
- :func:`run_packed`: many calls in one job, on a warm local pool inside the allocation.
  Each call's ``timeout_s`` is the local pool's (its worker is killed at the deadline), a call
  whose local worker dies fails alone with ``WorkerDied``, and each reply is streamed to the
  submitter as soon as the call ends. The submitter cancels one call of a pack by writing
  ``<index>.cancel`` in the pack's stream folder; the job cancels that call on its local pool
  and the pack's other calls go on.
- Both let SIGTERM end the job (Submitit ignores it in its jobs), so that ``scancel`` ends a
  running job at once.
- :class:`Requeueable`: a checkpointable call (Submitit's ``checkpoint`` contract), requeued
  by Submitit on the engine's time limit or preemption; it has no watchdog (its ``timeout_s``
  is the engine's time limit, which requeues it).
"""

from __future__ import annotations

import contextlib
import os
import pickle
import signal
import sys
import threading
import time
from pathlib import Path
from typing import Any

from ..exceptions import CallTimeout
from .remote import Payload, Reply, error_reply, run_payload

CANCEL_SUFFIX = ".cancel"
_POLL_S = 0.02  # how often a pack looks for cancel markers


class _Watchdog:
    """Stops this job's call at its deadline: writes a CallTimeout reply as the job's result
    and ends the process. The lock makes the call's own end and the deadline exclusive."""

    def __init__(self, payload: Payload) -> None:
        self.payload = payload
        self.timeout_s = float(payload.timeout_s or 0)
        self.lock = threading.Lock()
        self.finished = False
        self.ended = threading.Event()
        self.start_ns = 0

    def arm(self, start_ns: int) -> None:
        self.start_ns = start_ns
        threading.Thread(target=self._run, name="hetfaas-watchdog", daemon=True).start()

    def disarm(self) -> None:
        with self.lock:
            self.finished = True
        self.ended.set()

    def _run(self) -> None:
        if self.ended.wait(self.timeout_s):
            return
        with self.lock:
            if self.finished:
                return
            exc = CallTimeout(
                f"{self.payload.fn_name} ran past its timeout_s={self.timeout_s:g} "
                "and was stopped in its job"
            )
            reply = error_reply(exc, self.start_ns)
            with contextlib.suppress(Exception):
                _write_result(reply)
            for stream in (sys.stdout, sys.stderr):
                with contextlib.suppress(Exception):
                    stream.flush()
            os._exit(0)  # the lock stays held: the call's own result is never written


def _write_result(reply: Reply) -> None:
    """Write ``reply`` as this Submitit job's result, as Submitit's ``process_job`` does."""
    from submitit.core import job_environment, utils

    path = job_environment.JobEnvironment().paths.result_pickle
    tmp = path.with_suffix(path.suffix + ".hetfaas_tmp")
    utils.cloudpickle_dump(("success", reply), tmp)
    os.replace(tmp, path)  # atomic: the submitter never reads half a result


def _die_on_sigterm() -> None:
    """Let SIGTERM end the job again. Submitit ignores it in jobs (a checkpointable call waits
    for the signal that checkpoints it), so ``scancel`` of a running job took Slurm's
    ``KillWait`` and then its ``MessageTimeout`` (7.5 s here) instead of a few milliseconds.
    A call that is not checkpointable has nothing to save."""
    if threading.current_thread() is threading.main_thread():
        with contextlib.suppress(ValueError, OSError):
            signal.signal(signal.SIGTERM, signal.SIG_DFL)


def run_call(payload: Payload) -> Reply:
    """Run one call as a whole job; with ``payload.timeout_s``, under a watchdog."""
    _die_on_sigterm()
    if not payload.timeout_s:
        return run_payload(payload)
    dog = _Watchdog(payload)
    try:
        return run_payload(payload, on_start=dog.arm)
    finally:
        dog.disarm()


class Requeueable:
    """What a job runs for a call whose function has a ``checkpoint`` method (Submitit's
    ``helpers.Checkpointable`` contract). On a timeout or preemption signal Submitit calls
    ``checkpoint``: this one asks the user's function -- the very object that is running, with
    its state so far -- for its own, ``DelayedSubmission(function, *args, **kwargs)`` (or None:
    no requeue), and Submitit requeues the job with that call in place of the first."""

    def __init__(self) -> None:
        self.requeued = False

    def __call__(self, payload: Payload) -> Reply:
        reply = run_payload(payload)
        if self.requeued:
            # Submitit leaves by SystemExit once the job is requeued; run_payload caught it
            # as the call's error. Leave without a result: the requeued job writes it.
            raise SystemExit(-1)
        return reply

    def checkpoint(self, payload: Payload) -> Any:
        from submitit.helpers import DelayedSubmission

        fn = _loaded_function(payload)
        args, kwargs = pickle.loads(payload.args)
        delayed = fn.checkpoint(*args, **kwargs)
        if delayed is None:
            return None
        self.requeued = True
        again = payload.with_call(delayed.function, delayed.args, delayed.kwargs)
        return DelayedSubmission(Requeueable(), again)


def _loaded_function(payload: Payload) -> Any:
    from . import remote

    fn = remote._loaded.get(payload.digest)
    return fn if fn is not None else pickle.loads(payload.fn)


def run_packed(payloads: list[Payload], cpus: int, stream: str | None = None) -> list[Reply]:
    """Inside one allocation: run many calls on a warm local pool of ``cpus`` cores. With
    ``stream`` (a folder the submitter watches), each reply is also written there as soon as
    its call ends, so the caller has it before the whole pack is done, and ``<i>.cancel``
    markers written there by the submitter cancel call ``i`` alone."""
    import concurrent.futures as cf

    from .._executor import Executor

    _die_on_sigterm()
    have = max(1, min(cpus, len(os.sched_getaffinity(0))))
    folder = Path(stream) if stream else None
    replies: list[Reply | None] = [None] * len(payloads)
    with Executor("local", cpus=have) as ex:
        futures = []
        for p in payloads:
            view = ex.options(cpus=max(1, min(p.cpus, have)), timeout_s=p.timeout_s)
            futures.append(view.submit(run_payload, p))
        index = {id(f): i for i, f in enumerate(futures)}
        pending = set(futures)
        while pending:
            done, pending = cf.wait(pending, timeout=_POLL_S, return_when=cf.FIRST_COMPLETED)
            for f in done:
                i = index[id(f)]
                replies[i] = reply = _reply_of(f, payloads[i])
                if folder is not None:
                    with contextlib.suppress(OSError):  # the submitter may have gone
                        _write_reply(folder, i, reply)
            if folder is not None and pending:
                for i in _cancel_markers(folder):
                    futures[i].cancel()
    return [r if r is not None else error_reply(RuntimeError("lost")) for r in replies]


def _reply_of(f: Any, payload: Payload) -> Reply:
    """The reply of a packed call's local future: its own, or the pool's error for it (a
    timeout, a dead worker, a cancellation) as a reply."""
    try:
        exc = f.exception()
    except BaseException as err:  # cancelled (CallCancelled)
        exc = err
    if exc is None:
        return f.result()
    end = time.time_ns()
    t = f.timings
    ran_s = t.compute_us / 1e6 if t is not None else 0.0
    if not ran_s and isinstance(exc, CallTimeout) and payload.timeout_s:
        ran_s = payload.timeout_s  # the pool killed it at its deadline
    return error_reply(exc, end - int(ran_s * 1e9), end)


def _cancel_markers(folder: Path) -> list[int]:
    out = []
    try:
        names = [n for n in os.listdir(folder) if n.endswith(CANCEL_SUFFIX)]
    except OSError:
        return out
    for name in names:
        with contextlib.suppress(ValueError, OSError):
            out.append(int(name[: -len(CANCEL_SUFFIX)]))
            os.unlink(folder / name)
    return out


def _write_reply(folder: Path, index: int, reply: Reply) -> None:
    tmp = folder / f".{index}.tmp"
    tmp.write_bytes(pickle.dumps(reply, protocol=5))
    tmp.rename(folder / f"{index}.reply")  # atomic: the watcher never sees half a reply


def cancel_marker(folder: Path, index: int) -> None:
    """Ask a running pack to cancel its call ``index`` (the submitter's side)."""
    (folder / f"{index}{CANCEL_SUFFIX}").touch()


__all__ = ["Requeueable", "cancel_marker", "run_call", "run_packed"]
