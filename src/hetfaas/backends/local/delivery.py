"""The local pool's delivery of replies: who reads the workers' sockets, and what a reply does.

:class:`ReplyDelivery` is the part of :class:`~hetfaas.backends.local.pool.LocalBackend` that
reads what workers write (a started worker's ``READY``, a batch of ``RESULTS``) and settles the
calls' futures with their timings and usage.

Reading is leader/follower: whoever holds the pool's *read role* polls the workers' sockets
and handles every message, in order. A caller blocked in ``Future.result()`` takes the role
(the waiter hook :meth:`ReplyDelivery._wait_for`), so its reply costs two process wake-ups as
a raw pipe round trip; the background reader thread steps in when nobody has waited for
``READER_NAP_S`` (for callbacks, ``as_completed``, timers and queued calls). With nothing in
flight the thread parks in a poll of the sockets, so that a worker that dies while idle is
replaced at once.

An asyncio server (the gateway) can take the read role for good with :meth:`deliver_on`:
its loop watches the pool's epoll descriptor and reads the replies itself, timers run as
the loop's own, and other threads that wait on a future let the loop deliver it. Every hop
between threads on a call's way back is gone then (a reply, its end written to the store,
the response sent: one thread). The reader thread stays as a watchman: if the loop stops
without handing delivery back, it takes over.
"""

from __future__ import annotations

import contextlib
import logging
import os
import pickle
import threading
import time
import weakref
from collections import deque
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from ... import serialize
from ..._future import Future
from ..._invocation import CallUsage, Stamps
from ...exceptions import CallCancelled
from .. import errors
from ..contract import complete
from . import protocol as P
from .records import BUSY, IDLE, STARTING, CallRecord, WorkerHandle, release_result

if TYPE_CHECKING:
    import asyncio

_log = logging.getLogger("hetfaas.backends.local.pool")
_READER = "reader-thread"
_LOOP = "event-loop"
READER_NAP_S = 0.05  # the background reader steps in this long after the last waiter left
LOOP_CHECK_S = 1.0  # how often the reader thread checks that a delivering loop still runs


def _running_loop() -> asyncio.AbstractEventLoop | None:
    import asyncio  # only where a loop delivers (the pool's import stays light)

    try:
        return asyncio.get_running_loop()
    except RuntimeError:
        return None


class ReplyDelivery:
    """Reading the workers' replies and settling futures (a part of ``LocalBackend``, which
    owns the state named below)."""

    spin_ns: int
    replacement_ns: list[int]
    _lock: Any
    _role: threading.Lock
    _role_owner: Any
    _waiting: int
    _last_wait: float
    _parked: bool
    _unpark: threading.Event
    _closed: bool
    _poller: Any
    _wake_r: int
    _wake_w: int
    _workers: dict[int, WorkerHandle]
    _by_fd: dict[int, WorkerHandle]
    _queues: dict[bool, deque[CallRecord]]
    _fn_ns: dict[bytes, float]
    _start_exits: int
    _start_kills: int
    _attach: Any
    _loop: asyncio.AbstractEventLoop | None
    _loop_thread: int | None
    _loop_timer: asyncio.TimerHandle | None
    _loop_reader: bool  # the loop still watches the poller (its removal is pending)
    _loop_off: threading.Event

    if TYPE_CHECKING:  # the pool's own, and its lifecycle's

        def _poke(self) -> None: ...
        def _next_timer(self) -> float | None: ...
        def _check_timers(self) -> None: ...
        def _drain(self) -> None: ...
        def _top_up(self, w: WorkerHandle) -> None: ...
        def _send(self, w: WorkerHandle, batch: list[CallRecord]) -> None: ...
        def _finish_worker(self, w: WorkerHandle) -> None: ...
        def _release_args(self, call: CallRecord, retained: Any) -> None: ...
        def _on_death(self, w: WorkerHandle) -> None: ...

    def _read_loop(self) -> None:
        """Background delivery, for when no caller thread waits and reads for itself.

        It wakes rarely: each wake-up of a thread costs as much as a small call on a loaded
        CPU, so it parks while nothing is in flight and naps while callers read themselves.
        """
        while True:
            try:
                if self._read_step():
                    return
            except Exception:  # never let delivery stop: every accepted call must end
                _log.exception("hetfaas: the local pool's reader thread hit an error")
                time.sleep(0.01)

    def _read_step(self) -> bool:
        """One round of the reader thread; True when the pool is closed and drained."""
        if self._closed and not self._by_fd:
            return True
        loop = self._loop
        if loop is not None:  # the loop delivers: only check that it still runs
            if not self._loop_off.wait(LOOP_CHECK_S) and (
                loop.is_closed() or not loop.is_running()
            ):
                _log.warning("hetfaas: the loop that read the pool's replies stopped")
                self._release_loop(loop)
            return False
        with self._lock:
            idle = not any(self._queues.values()) and not any(
                w.inflight or w.state == STARTING for w in self._workers.values()
            )
            self._parked = idle and not self._closed
            timer = self._next_timer()  # keep-alive of idle workers
        if self._parked:
            # Nothing in flight: still watch the sockets (an idle worker that dies is
            # replaced now, not when the next call finds it dead), holding the read role
            # as when active; a waiter or a dispatch pokes it awake.
            if self._role.acquire(blocking=False):
                try:
                    self._role_owner = _READER
                    self._unpark.clear()
                    self._poll_once(timer)
                finally:
                    self._role_owner = None
                    self._role.release()
            else:
                self._unpark.wait(timer)
                self._unpark.clear()
            self._check_timers()
            return False
        if self._waiting or time.monotonic() - self._last_wait < READER_NAP_S:
            time.sleep(READER_NAP_S)
            return False
        if not self._role.acquire(blocking=False):
            time.sleep(0.001)
            return False
        try:
            if not self._waiting:
                self._role_owner = _READER
                self._poll_once(None)
        finally:
            self._role_owner = None
            self._role.release()
        return False

    def _wait_for(self, fut: Future, deadline: float | None) -> None:
        """Waiter hook: the thread waiting on ``fut`` reads replies itself (leader/follower),
        which saves the hop through the reader thread. While a loop delivers (see
        :meth:`deliver_on`), other threads leave the reading to it."""
        if self._loop is not None and self._loop_thread != threading.get_ident():
            return  # Future.result waits on its condition; the loop completes it
        with self._lock:
            self._waiting += 1
        try:
            while not fut.done():
                if deadline is not None and time.monotonic() >= deadline:
                    return
                if self._role_owner is _READER:
                    self._poke()  # ask the reader thread to step aside
                if not self._role.acquire(timeout=0.001):
                    continue
                try:
                    self._role_owner = threading.get_ident()
                    if self.spin_ns:  # see Channel.spin: catch a quick reply awake
                        until = time.perf_counter_ns() + self.spin_ns
                        poll = self._poller.poll
                        while not fut.done() and time.perf_counter_ns() < until:
                            if poll(0):
                                self._poll_once(0)
                    while not fut.done():
                        left = None if deadline is None else deadline - time.monotonic()
                        if left is not None and left <= 0:
                            return
                        self._poll_once(left)
                finally:
                    self._role_owner = None
                    self._role.release()
        finally:
            with self._lock:
                self._waiting -= 1
                self._last_wait = time.monotonic()

    def deliver_on(self, loop: asyncio.AbstractEventLoop) -> Callable[[], None] | None:
        """Read the workers' replies in ``loop`` (call this in the loop's thread): futures
        complete there, and so do their callbacks. Returns the function that hands
        delivery back to the pool's own thread (call it before the loop stops); None when
        another loop delivers already or the pool is shut down."""
        running = _running_loop()
        if running is not loop:
            raise RuntimeError("deliver_on(loop) must be called in the loop's thread")
        with self._lock:
            if self._loop is not None or self._loop_reader or self._closing:
                return None
            self._loop, self._loop_thread, self._loop_reader = loop, threading.get_ident(), True
            self._loop_off.clear()
            self._parked = False  # a parked reader thread steps aside (a poke wakes it)
            self._unpark.set()
        loop.add_reader(self._poller.fileno(), self._loop_pump)
        self._poke()
        loop.call_soon(self._loop_pump)
        return lambda: self._release_loop(loop)

    def _loop_pump(self) -> None:
        """In the loop: the pool's poller is readable, or a timer is due."""
        loop = self._loop
        if loop is None:
            return  # handed back (the reader's removal is queued)
        if self._role.acquire(blocking=False):
            try:
                self._role_owner = _LOOP
                self._poll_once(0)
                with self._lock:
                    timer = self._next_timer()
            finally:
                self._role_owner = None
                self._role.release()
        else:  # a thread reads now (a waiter from before, the reader thread stepping
            timer = 0.001  # aside): what it read may change the timers, so look again soon
        handle = self._loop_timer
        if timer is None:
            if handle is not None:
                handle.cancel()
                self._loop_timer = None
            return
        due = loop.time() + timer
        if handle is not None:
            if abs(handle.when() - due) < 0.0005:
                return
            handle.cancel()
        self._loop_timer = loop.call_at(due, self._loop_tick)

    def _loop_tick(self) -> None:
        self._loop_timer = None  # this one has run
        self._loop_pump()

    def _release_loop(self, loop: asyncio.AbstractEventLoop) -> None:
        """Hand delivery back from ``loop`` to the reader thread (any thread)."""
        with self._lock:
            if self._loop is not loop:
                return
            self._loop = self._loop_thread = None
            timer, self._loop_timer = self._loop_timer, None
            self._loop_off.set()

        def drop() -> None:  # in the loop
            with contextlib.suppress(Exception):
                loop.remove_reader(self._poller.fileno())
            if timer is not None:
                timer.cancel()
            self._dropped_loop()

        running = _running_loop()
        if running is loop:
            drop()
        else:
            try:
                loop.call_soon_threadsafe(drop)
            except RuntimeError:  # the loop is closed: it watches nothing any more
                self._dropped_loop()
        self._poke()

    def _dropped_loop(self) -> None:
        with self._lock:
            self._loop_reader = False
            if self._closed:  # the pool shut down meanwhile: its poller can go now
                self._poller.close()

    def _poll_once(self, timeout: float | None) -> None:
        """Wait for replies and handle them (only the holder of ``_role`` calls this)."""
        with self._lock:
            timer = self._next_timer()
        if timer is not None:
            timeout = timer if timeout is None else min(timeout, timer)
        ms = -1 if timeout is None else max(0, int(timeout * 1000 + 0.999))
        try:
            events = self._poller.poll(ms)
        except (OSError, RuntimeError):
            events = []
        for fd, _ in events:
            if fd == self._wake_r:
                with contextlib.suppress(OSError):
                    os.read(self._wake_r, 4096)
                continue
            w = self._by_fd.get(fd)
            if w is None:
                continue
            try:
                messages = w.conn.recv_ready()
            except (EOFError, OSError):
                self._on_death(w)
                continue
            for data in messages:
                msg = pickle.loads(data)
                if msg[0] == P.RESULTS:
                    self._on_results(w, msg[1])
                elif msg[0] == P.READY:
                    self._on_ready(w, msg)
        self._check_timers()

    def _on_ready(self, w: WorkerHandle, msg: tuple[Any, ...]) -> None:
        with self._lock:
            w.ready_ns = msg[2]
            self._start_exits = self._start_kills = 0
            if w.replaces_ns:
                self.replacement_ns.append(time.perf_counter_ns() - w.replaces_ns)
            if w.state != STARTING:
                return
            if w.inflight:
                now = time.perf_counter_ns()
                for call in w.inflight:
                    call.cold_ns = now - min(call.t_bind, max(w.spawn_ns, call.t_submit))
                w.state = BUSY
                self._send(w, list(w.inflight))
            else:
                w.state = IDLE
                w.idle_since = time.perf_counter_ns()
            self._drain()

    def _on_results(self, w: WorkerHandle, replies: list[tuple[Any, ...]]) -> None:
        done: list[tuple[CallRecord, tuple[Any, ...]]] = []
        with self._lock:
            for reply in replies:
                call = w.inflight.popleft()
                done.append((call, reply))
                if call.cancelled:
                    w.kill_at = 0
            if not w.inflight:
                self._finish_worker(w)
                self._drain()  # hand the freed worker its next calls before delivering these
            elif w.state == BUSY:
                self._top_up(w)
        for call, reply in done:
            self._complete(w, call, reply)

    def _complete(self, w: WorkerHandle, call: CallRecord, reply: tuple[Any, ...]) -> None:
        (_, status, data, descs, deser_ns, start_ns, end_ns, fn_load_ns, out, err, retained,
         cpu_ns, maxrss_kb, gpu_util, gpu_mem, recv_ns) = reply  # fmt: skip
        fut = call.future
        fut.stdout, fut.stderr = out, err
        exc: BaseException | None = None
        value = None
        try:
            if status == P.VALUE:
                track = self._track(w) if descs else None
                value = serialize.loads(data, descs, self._attach, track)
            elif status == P.EXCEPTION:
                exc = errors.decode(data, fut.invocation_id)
            else:
                exc = CallCancelled(f"call {fut.invocation_id} was cancelled", fut.invocation_id)
        except Exception as e:  # a result the caller cannot unpickle
            exc = e
        t_done = time.perf_counter_ns()
        self._release_args(call, retained)
        compute = end_ns - start_ns
        prev = self._fn_ns.get(call.digest)
        self._fn_ns[call.digest] = compute if prev is None else (prev * 7 + compute) / 8
        cold = call.cold_ns + fn_load_ns
        # pickling in the caller + the hop + unpickling in the worker
        t_in = call.t_ser - call.t_submit + recv_ns - call.t_disp + start_ns - deser_ns - fn_load_ns
        t_out = t_done - end_ns
        total = t_done - call.t_submit
        stamps = Stamps(
            total - cold - t_in - compute - t_out, cold, t_in, compute, t_out, total,
            call.t_submit, start_ns, end_ns, t_done, w.index, w.pid, w.cpus, w.gpus,
        )  # fmt: skip
        usage = None
        if cpu_ns >= 0:
            res = call.resources
            usage = CallUsage(compute / 1e9, cpu_ns / 1e9, res.cpus, maxrss_kb / 1024,
                              res.memory_mb, len(w.gpus), gpu_util, gpu_mem)  # fmt: skip
        complete(fut, value, error=exc, timings=stamps, usage=usage)

    def _track(self, w: WorkerHandle) -> Any:
        pid, ref = w.pid, weakref.ref(w)

        def on_view(view: Any, name: str) -> None:
            weakref.finalize(view, release_result, ref, pid, name)

        return on_view
