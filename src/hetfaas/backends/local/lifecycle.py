"""The local pool's workers over their life: start (forked or spawned), stop, timers, scaling.

:class:`WorkerLifecycle` is the part of :class:`~hetfaas.backends.local.pool.LocalBackend`
that starts and stops worker processes: on demand (a call finds no idle worker), to replace
one that died, and at the autoscaler's word. The timers live here too: a timed call's kill, a
cancelled call's grace, keep-alive, and the autoscaler's tick.

With autoscaling on (``min_workers`` or ``autoscale`` given to the pool) the pool observes its
concurrency (calls running plus queued) every ``tick_s`` and applies the pure decision of
:class:`~hetfaas.backends.local.autoscale.Autoscaler`: it starts idle workers up to the count
wanted (ahead of the calls, so a burst meets warm workers), and retires idle workers beyond it
(never one that runs a call). Keep-alive is then the policy's: ``scale_to_zero_s`` after the
last call, and the stable window's mean in between. A call that finds no idle worker still
starts one at once, up to ``max_workers`` (the reactive path, Knative's activator): the
policy decides how many stay warm, it never makes a call wait for a tick.
"""

from __future__ import annotations

import contextlib
import itertools
import logging
import os
import pickle
import signal
import socket
import struct
import subprocess
import sys
import threading
import time
from collections import deque
from typing import Any

from ...exceptions import ResourceError
from . import protocol as P
from .autoscale import Autoscaler, Decision
from .forkserver import ForkedProcess, ForkServer
from .records import DEAD, IDLE, STARTING, CallRecord, WorkerHandle

_log = logging.getLogger(__name__)
TIMER_POLL_NS = 2_000_000  # how often a timed call that has not begun is looked at again


def default_preload(preload: list[str] | None) -> list[str]:
    """What a new worker imports while it starts: the user's list, else numpy/torch when the
    caller has imported them."""
    if preload is None:
        return [m for m in ("numpy", "torch") if m in sys.modules]
    return list(preload)


class WorkerLifecycle:
    """Starting, stopping and scaling the pool's workers (a part of ``LocalBackend``, which
    owns the state named below)."""

    cores: tuple[int, ...]
    max_workers: int
    keep_alive_ns: int
    spin_ns: int
    preload: list[str] | None
    start_method: str
    _workers: dict[int, WorkerHandle]
    _by_fd: dict[int, WorkerHandle]
    _queues: dict[bool, deque[CallRecord]]
    _servers: dict[tuple[str, ...], ForkServer]
    _gpu_tokens: dict[int, str]
    _poller: Any
    _control: Any
    _attach: Any
    _lock: Any
    _closing: bool
    _parked: bool
    _unpark: threading.Event
    _max_index: int
    _scaler: Autoscaler | None
    _scale_tick_ns: int
    _scale_next: int
    _scale_key: tuple[int, ...]
    scale_log: deque[tuple[int, Decision, int]]

    def _poke(self) -> None:
        raise NotImplementedError

    def _drain(self) -> None:
        raise NotImplementedError

    def _spawn(self, gpus: tuple[int, ...]) -> WorkerHandle:
        used = {w.index for w in self._workers.values()}
        index = next(i for i in itertools.count() if i not in used)
        if index >= self._max_index:
            raise ResourceError("too many workers for the control segment")
        w = WorkerHandle(index, gpus)
        # Start pinned to a core no other worker sits on, so that workers spread out.
        taken = {c for other in self._workers.values() for c in other.cpus}
        w.cpus = (next((c for c in self.cores if c not in taken), self.cores[0]),)
        w.spawn_ns = time.perf_counter_ns()
        own = {
            "CUDA_VISIBLE_DEVICES": ",".join(self._gpu_tokens[d] for d in gpus),
            "HETFAAS_SPIN_US": str(self.spin_ns / 1000),
        }
        preload = default_preload(self.preload)
        parent, child = socket.socketpair()
        try:
            if self.start_method == "forkserver":
                w.proc = self._fork(index, w.cpus[0], own, child.fileno(), tuple(preload))
            else:
                w.proc = subprocess.Popen(
                    [
                        sys.executable, "-m", "hetfaas.backends.local.worker",
                        str(child.fileno()), str(index), self._control.name,
                        ",".join(preload), str(w.cpus[0]),
                    ],
                    pass_fds=(child.fileno(),), env={**self._base_env(), **own},
                    stdin=subprocess.DEVNULL, start_new_session=True,
                )  # fmt: skip
        except BaseException:
            parent.close()
            raise
        finally:
            child.close()
        w.conn = P.Channel(parent.detach())
        w.fd = w.conn.fd
        w.pid = w.proc.pid
        self._workers[index] = w
        self._by_fd[w.fd] = w
        self._poller.register(w.fd)
        self._poke()
        if self._parked:  # someone must read its READY message
            self._parked = False
            self._unpark.set()
        return w

    def _base_env(self) -> dict[str, str]:
        env = dict(os.environ)
        env["OMP_NUM_THREADS"] = env["MKL_NUM_THREADS"] = "1"  # sized per call in the worker
        paths = [p or os.getcwd() for p in sys.path]
        env["PYTHONPATH"] = os.pathsep.join(dict.fromkeys(paths))
        return env

    def _fork_server(self, preload: tuple[str, ...]) -> ForkServer:
        """This pool's fork server for ``preload``: started on first use, and again if it
        died."""
        server = self._servers.get(preload)
        if server is None or not server.alive():
            if server is not None:
                server.close()
            server = ForkServer(self._control.name, self._base_env(), list(preload))
            self._servers[preload] = server
        return server

    def _fork(
        self, index: int, cpu: int, env: dict[str, str], fd: int, preload: tuple[str, ...]
    ) -> ForkedProcess:
        """A worker forked by the fork server for ``preload`` (a server that fails to fork
        is replaced once)."""
        for attempt in range(2):
            server = self._fork_server(preload)
            try:
                return server.fork(index, cpu, env, fd)
            except OSError:
                if attempt:
                    raise
                server.close()
                self._servers.pop(preload, None)
        raise AssertionError("unreachable")

    def _stop_worker(self, w: WorkerHandle) -> None:
        if w.state == DEAD:
            return
        with contextlib.suppress(OSError):
            w.conn.send(pickle.dumps((P.EXIT,)))
        w.state = DEAD
        self._forget_worker(w)

    def _forget_worker(self, w: WorkerHandle) -> None:
        self._workers.pop(w.index, None)
        if self._by_fd.pop(w.fd, None) is not None:
            with contextlib.suppress(OSError, ValueError):
                self._poller.unregister(w.fd)
        with contextlib.suppress(OSError):
            w.conn.close()
        self._attach.forget_prefix(f"hetfaas-{w.pid}-")

    def _unmap_everywhere(self, name: str) -> None:
        """An argument segment was given up: workers drop their mappings with their next
        message, so its memory is freed."""
        for w in list(self._workers.values()):
            w.releases.append(name)

    def _evict_idle(self, keep: tuple[int, ...]) -> bool:
        for w in self._workers.values():
            if w.gpus != keep and not w.inflight and w.state == IDLE:
                self._stop_worker(w)
                return True
        return False

    def _retire(self, w: WorkerHandle) -> None:
        """Stop an idle worker (keep-alive ran out, or the autoscaler wants fewer)."""
        self._stop_worker(w)
        if isinstance(w.proc, subprocess.Popen):  # a fork server reaps its own
            threading.Thread(target=w.proc.wait, daemon=True).start()

    def _autoscale(self, now: int) -> None:
        """One tick of the autoscaler (lock held): observe, decide, start or retire."""
        scaler = self._scaler
        assert scaler is not None
        self._scale_next = now + self._scale_tick_ns
        live = [w for w in self._workers.values() if w.state != DEAD]
        concurrency = sum(len(q) for q in self._queues.values())
        concurrency += sum(len(w.inflight) for w in live)
        t = now / 1e9
        scaler.observe(t, concurrency)
        decision = scaler.decide(t, sum(w.state != STARTING for w in live))
        self.scale_log.append((now, decision, len(live)))
        if self._closing:
            return
        want = decision.workers
        for _ in range(want - len(live)):
            if len(self._workers) >= self.max_workers:
                break
            try:
                self._spawn(self._scale_key)
            except OSError as exc:  # no process to be had now: the next tick tries again
                _log.warning("hetfaas: the autoscaler cannot start a worker now: %s", exc)
                break
        if want < len(live):
            idle = [w for w in live if w.state == IDLE and not w.inflight]
            idle.sort(key=lambda w: w.index, reverse=True)  # keep the low indices
            for w in idle[: len(live) - want]:
                self._retire(w)

    def _deadline(self, w: WorkerHandle, now: int) -> int:
        """When ``w`` must be killed (0: never): its timed call's start + timeout_s, or a
        cancelled call's grace. A timed call that has not begun is looked at again soon."""
        due = w.kill_at
        if w.timeout_ns:
            slot = w.index * P.CONTROL_SLOT
            seq, start = struct.unpack_from("<qq", self._control.mmap, slot)
            t = start + w.timeout_ns if seq == w.timed_seq and start else now + TIMER_POLL_NS
            due = min(due, t) if due else t
        return due

    def _next_timer(self) -> float | None:
        now = time.perf_counter_ns()
        due = []
        for w in self._workers.values():
            if w.timeout_ns or w.kill_at:
                due.append(self._deadline(w, now))
            elif w.state == IDLE and self.keep_alive_ns and self._scaler is None:
                due.append(w.idle_since + self.keep_alive_ns)
        if self._scaler is not None and (self._workers or any(self._queues.values())):
            due.append(self._scale_next)
        if self._stalled():
            due.append(now + TIMER_POLL_NS)
        if not due:
            return None
        return max(0.0, (min(due) - now) / 1e9) + 0.001

    def _stalled(self) -> bool:
        """Calls wait but nothing is running or starting that would ever drain them."""
        return (
            not self._closing
            and any(self._queues.values())
            and not any(w.inflight or w.state == STARTING for w in self._workers.values())
        )

    def _check_timers(self) -> None:
        now = time.perf_counter_ns()
        with self._lock:
            for w in list(self._workers.values()):
                if (w.timeout_ns or w.kill_at) and not w.killed:
                    due = self._deadline(w, now)
                    if now >= due:
                        w.killed = True
                        w.timed_out = bool(w.timeout_ns) and not w.kill_at
                        with contextlib.suppress(ProcessLookupError):
                            os.kill(w.pid, signal.SIGKILL)
                elif (
                    w.state == IDLE
                    and self._scaler is None
                    and now - w.idle_since >= self.keep_alive_ns
                ):
                    self._retire(w)
            if self._scaler is not None and now >= self._scale_next:
                self._autoscale(now)
            if self._stalled():  # a safety net: never leave accepted calls without a worker
                self._drain()
