"""The local backend: a warm pool of worker processes on this machine.

One call, end to end:

1. ``prepare`` (caller's thread): validate the resources against the machine, pickle the
   function once (by digest) and the arguments (large buffers into shared memory).
2. ``dispatch`` (caller's thread): queue the call and, when cores/GPUs are free and a worker
   is idle, write it straight to that worker's socket; no dispatcher thread on the way.
3. The worker pins itself to the call's cores, runs it, writes the reply.
4. One reader thread receives replies, completes futures with timings, frees the resources
   and sends queued calls to the worker that just became free (several per message when many
   calls of the same kind wait).
"""

from __future__ import annotations

import atexit
import contextlib
import logging
import os
import pickle
import signal
import struct
import subprocess
import threading
import time
import weakref
from collections import deque
from typing import Any

import psutil

from ... import serialize
from ..._future import Future
from ..._resources import Resources
from ...exceptions import (
    ConfigurationError,
    ExecutorShutdownError,
    ResourceError,
    WorkerDied,
)
from ...shm import AttachCache, Segment, SegmentPool, segment_name, sweep, sweep_orphans
from ..base import Backend, CallSpec, Capacity
from ..contract import attach
from . import protocol as P
from .autoscale import Autoscaler, ScalePolicy, policy_from
from .delivery import ReplyDelivery
from .faults import give_up_starting, split_dead_calls
from .forkserver import ForkServer
from .gpus import detect_gpus
from .lifecycle import WorkerLifecycle, default_preload
from .placement import impossible, place
from .records import (
    BUSY,
    DEAD,
    IDLE,
    STARTING,
    CallRecord,
    WorkerHandle,
    death_error,
)

_log = logging.getLogger(__name__)
MAX_CHUNK = 512
BATCH_NS = 2_000_000
CANCEL_GRACE_NS = 1_000_000_000  # a cancelled call not back this long after SIGUSR1 (stuck in
# C code that never checks for signals): its worker is killed
# Calls of functions that ran at least this long (their mean so far), or never ran yet, are
# measured (CPU time, peak RSS: future.usage). Reading the clocks costs 10-20 us on a VM
# (clock_gettime(CPUTIME) and getrusage are system calls there), too much for short calls.
USAGE_MIN_NS = 1_000_000
_live_pools: weakref.WeakSet[LocalBackend] = weakref.WeakSet()


class LocalBackend(ReplyDelivery, WorkerLifecycle, Backend):
    """Warm worker processes on this machine, each pinned to the cores of the call it runs.

    Options: ``cpus`` (count or list of core ids; default: this process's affinity),
    ``gpus`` (count or list of device ids; default: all visible), ``memory_mb`` (default:
    the machine's), ``max_workers`` (default: the number of cores), ``keep_alive_s`` (idle
    workers retire after this; default 300), ``capture_output`` (keep each call's stdout and
    stderr on its future instead of printing them), ``preload`` (modules a new worker
    imports while it cold-starts; default: torch/numpy when the caller has imported them),
    ``start_method`` (``"forkserver"``, the default: workers are forked by a server process
    that imported hetfaas and the preloads once, in milliseconds; ``"spawn"``: a new
    interpreter per worker),
    ``spin_us`` (how long a worker that just replied, and a caller that waits, poll before
    they sleep; waking a sleeping CPU costs more than a small call on a VM; 0 turns it off),
    ``min_workers`` and ``autoscale`` (either turns autoscaling on: a
    :class:`~hetfaas.backends.local.autoscale.ScalePolicy` or a dict of its fields; the pool
    keeps between ``min_workers`` and ``max_workers`` workers as the policy decides from its
    queue depth, see :mod:`.lifecycle`).
    """

    name = "local"

    def __init__(
        self,
        cpus: int | list[int] | None = None,
        gpus: int | list[int] | None = None,
        memory_mb: int | None = None,
        max_workers: int | None = None,
        keep_alive_s: float = 300.0,
        capture_output: bool = False,
        preload: list[str] | None = None,
        spin_us: float = 100.0,
        start_method: str = "forkserver",
        min_workers: int | None = None,
        autoscale: ScalePolicy | dict[str, Any] | None = None,
    ) -> None:
        affinity = sorted(os.sched_getaffinity(0))
        if cpus is None:
            cores = affinity
        elif isinstance(cpus, int):
            if not 1 <= cpus <= len(affinity):
                raise ConfigurationError(f"cpus={cpus}: this process may use {len(affinity)}")
            cores = affinity[:cpus]
        else:
            cores = sorted(set(cpus))
            if not cores or not set(cores) <= set(affinity):
                raise ConfigurationError(f"cpus={cpus} must be a subset of {affinity}")
        self.cores = tuple(cores)
        self.gpu_ids, self.gpu_names, self._gpu_tokens = detect_gpus(gpus)
        total_mb = psutil.virtual_memory().total // (1 << 20)
        self.memory_mb = memory_mb or total_mb
        policy = policy_from(min_workers, max_workers, autoscale, len(self.cores))
        self.max_workers = policy.max_workers if policy else max_workers or len(self.cores)
        if self.max_workers < 1:
            raise ConfigurationError(f"max_workers must be >= 1, got {max_workers}")
        self.keep_alive_ns = int(keep_alive_s * 1e9)
        self.capture_output = capture_output
        if spin_us < 0:
            raise ConfigurationError(f"spin_us must be >= 0, got {spin_us}")
        self.spin_ns = int(spin_us * 1000)
        self.preload = preload
        if start_method not in ("forkserver", "spawn"):
            raise ConfigurationError(
                f"start_method must be 'forkserver' or 'spawn', got {start_method!r}"
            )
        self.start_method = start_method
        self._servers: dict[tuple[str, ...], ForkServer] = {}
        self._free_cpus = set(self.cores)
        self._gpu_free = dict.fromkeys(self.gpu_ids, 1.0)
        self._mem_free = self.memory_mb
        self._queues: dict[bool, deque[CallRecord]] = {True: deque(), False: deque()}
        self._workers: dict[int, WorkerHandle] = {}
        self._fn_ns: dict[bytes, float] = {}  # compute time per function (moving average)
        self._by_fd: dict[int, WorkerHandle] = {}
        self._poller = P.Poller()
        self._lock = threading.RLock()
        self._closing = False
        self._closed = False
        self._gave_up = False
        self._args = SegmentPool(
            "a", max_idle_bytes=min(4 << 30, (total_mb << 20) // 10), on_drop=self._unmap_everywhere
        )
        self._attach = AttachCache()
        self._max_index = self.max_workers
        size = -(-self.max_workers * P.CONTROL_SLOT // 4096) * 4096
        self._control = Segment.create(segment_name("c"), size)
        self._start_exits = self._start_kills = 0  # workers that died before ready, in a row
        self.deaths = 0
        self.replacement_ns: deque[int] = deque(maxlen=10_000)  # death seen -> replacement ready
        self._wake_r, self._wake_w = os.pipe()
        os.set_blocking(self._wake_w, False)
        self._poller.register(self._wake_r)
        self._role = threading.Lock()  # who may read the workers' sockets
        self._role_owner: object = None
        self._waiting = 0
        self._parked = False
        self._unpark = threading.Event()
        self._last_wait = 0.0
        self._loop: Any = None  # an asyncio loop that reads the replies (see deliver_on)
        self._loop_thread: int | None = None
        self._loop_timer: Any = None
        self._loop_reader = False
        self._loop_off = threading.Event()
        self._scaler: Autoscaler | None = None
        self._scale_key: tuple[int, ...] = ()  # the GPUs of the workers the autoscaler starts
        self.scale_log: deque[tuple[int, Any, int]] = deque(maxlen=100_000)
        if policy is not None:
            self._scaler = Autoscaler(policy)
            self._scale_tick_ns = int(policy.tick_s * 1e9)
            self._scale_next = 0
            if start_method == "forkserver":  # ready before the first call needs a worker
                self._fork_server(tuple(default_preload(preload)))
            with self._lock:
                for _ in range(policy.min_workers):
                    self._spawn(())
        self._reader = threading.Thread(target=self._read_loop, name="hetfaas-reader", daemon=True)
        self._reader.start()
        sweep_orphans()
        _live_pools.add(self)

    # ------------------------------------------------------------------ Backend API

    def capacity(self) -> Capacity:
        return Capacity(
            len(self.cores), len(self.gpu_ids), self.gpu_names, self.max_workers, self.memory_mb
        )

    def prepare(self, spec: CallSpec) -> CallRecord:
        res = spec.resources
        why = impossible(res, len(self.cores), len(self.gpu_ids), self.memory_mb)
        if why is not None:
            raise ResourceError(why)
        call = CallRecord()
        call.t_submit = time.perf_counter_ns()
        fn = spec.fn
        call.fn_name = getattr(fn, "__qualname__", None) or repr(fn)
        call.digest, call.payload = serialize.dump_function(fn)
        sink = serialize.BufferSink(self._args)
        call.data = serialize.dumps_call_args(call.fn_name, spec.args, spec.kwargs, sink)
        call.descs = sink.descs
        call.leases = sink.leases
        call.resources = res
        call.future = spec.future
        attach(spec.future, waiter=self._wait_for, canceller=self._cancel_running)
        call.capture = self.capture_output
        call.t_ser = time.perf_counter_ns()
        return call

    def dispatch(self, prepared: list[Any]) -> None:
        with self._lock:
            if self._closing:
                for call in prepared:
                    self._release_args(call, ())
                raise ExecutorShutdownError("this executor is shut down; it accepts no calls")
            for call in prepared:
                self._queues[call.resources.gpus > 0].append(call)
            self._drain()
            parked, self._parked = self._parked, False
            if parked:
                self._unpark.set()
            # A parked reader, or a delivering loop, polls the workers' sockets already, so it
            # hears these calls' replies: it is woken (a thread switch on a core the calls may
            # need) only when its poll's timeout must change: a call with a time limit, or
            # calls left waiting. (A worker started for them pokes it in _spawn.)
            if (parked or self._loop is not None) and (
                any(self._queues.values())
                or any(c.resources.timeout_s is not None for c in prepared)
            ):
                self._poke()

    def warmup(self, n: int, resources: Resources) -> None:
        """Start workers for ``resources`` until ``n`` exist, and wait until they are ready."""
        why = impossible(resources, len(self.cores), len(self.gpu_ids), self.memory_mb)
        if why is not None:
            raise ResourceError(why)
        n = min(n, self.max_workers)
        # The device sets n such calls would get side by side (wrapping around the GPUs).
        keys: list[tuple[int, ...]] = []
        gpu_free = dict.fromkeys(self.gpu_ids, 1.0)
        for _ in range(n):
            p = place(resources, set(self.cores), gpu_free, 1 << 40)
            if p is None:
                gpu_free = dict.fromkeys(self.gpu_ids, 1.0)
                p = place(resources, set(self.cores), gpu_free, 1 << 40)
            assert p is not None  # impossible() said it fits an empty machine
            for d in p.gpus:
                gpu_free[d] -= p.gpu_share
            keys.append(p.gpus)
        have: list[WorkerHandle] = []
        with self._lock:
            for key in dict.fromkeys(keys):
                mine = [w for w in self._workers.values() if w.gpus == key]
                for _ in range(keys.count(key) - len(mine)):
                    if len(self._workers) >= self.max_workers and not self._evict_idle(key):
                        break
                    mine.append(self._spawn(key))
                have += mine
        deadline = time.monotonic() + 120
        while any(w.state == STARTING for w in have) and time.monotonic() < deadline:
            time.sleep(0.005)
        dead = [w for w in have if w.state == DEAD]
        if dead:
            raise WorkerDied(f"{len(dead)} worker(s) died while starting")

    def _cancel_running(self, fut: Future) -> bool:
        """Canceller hook: stop ``fut``'s call. One the pool had queued again after a death is
        dropped; one a worker holds is skipped if it has not begun, or interrupted (SIGUSR1,
        then SIGKILL after ``CANCEL_GRACE_NS`` if the function does not return)."""
        with self._lock:
            for q in self._queues.values():
                for call in q:
                    if call.future is fut:
                        q.remove(call)
                        self._release_args(call, ())
                        return True
            for w in self._workers.values():
                for call in w.inflight:
                    if call.future is fut:
                        return self._interrupt(w, call)
        return False

    def _interrupt(self, w: WorkerHandle, call: CallRecord) -> bool:
        if w.state == DEAD:
            return False
        slot = w.index * P.CONTROL_SLOT
        struct.pack_into("<q", self._control.mmap, slot + 16, call.future.seq)
        call.cancelled = True
        if struct.unpack_from("<q", self._control.mmap, slot)[0] == call.future.seq:
            with contextlib.suppress(ProcessLookupError):
                os.kill(w.pid, signal.SIGUSR1)
            w.kill_at = time.perf_counter_ns() + CANCEL_GRACE_NS
            self._poke()
        return True

    def worker_pids(self) -> list[int]:
        """The pids of this pool's worker processes (starting ones included)."""
        with self._lock:
            return [w.pid for w in self._workers.values() if w.state != DEAD]

    def stats(self) -> dict[str, int]:
        """Workers by state and calls queued and running, now (and the autoscaler's wish)."""
        with self._lock:
            workers = [w for w in self._workers.values() if w.state != DEAD]
            extra = {"workers_desired": self.scale_log[-1][1].workers} if self.scale_log else {}
            return extra | {
                "workers_starting": sum(w.state == STARTING for w in workers),
                "workers_idle": sum(w.state == IDLE for w in workers),
                "workers_busy": sum(w.state == BUSY for w in workers),
                "queued": sum(len(q) for q in self._queues.values()),
                "running": sum(len(w.inflight) for w in workers),
            }

    def cancel_pending(self) -> None:
        with self._lock:
            for q in self._queues.values():
                while q:
                    call = q.popleft()
                    call.future.cancel()
                    self._release_args(call, ())

    def shutdown(self, wait: bool = True, cancel_futures: bool = False) -> None:
        with self._lock:
            if self._closed:
                return
            self._closing = True
            loop = self._loop
        if loop is not None:  # the reader thread delivers what is left
            self._release_loop(loop)
        if cancel_futures:
            self.cancel_pending()
        if wait:
            while True:
                with self._lock:
                    busy = any(self._queues.values()) or any(
                        w.inflight for w in self._workers.values()
                    )
                if not busy:
                    break
                time.sleep(0.002)
        with self._lock:
            self._closed = True
            workers = list(self._workers.values())
            for w in workers:
                self._stop_worker(w)
            self._poke()
            self._unpark.set()
        for w in workers:
            with contextlib.suppress(Exception):
                w.proc.wait(timeout=2)
            if w.proc.poll() is None:
                w.proc.kill()
                w.proc.wait()
            sweep(f"hetfaas-{w.pid}-")
        self._reader.join(timeout=5)
        with self._lock:
            for w in workers:
                for call in w.inflight:
                    self._fail(call, WorkerDied("executor shut down while the call ran"))
            self.cancel_pending()
        for server in self._servers.values():
            server.close()
        self._servers.clear()
        self._args.close()
        self._control.unlink()
        for fd in (self._wake_r, self._wake_w):
            with contextlib.suppress(OSError):
                os.close(fd)
        with self._lock:
            if not self._loop_reader:  # else the loop closes it once it stopped watching it
                self._poller.close()
        _live_pools.discard(self)

    # ------------------------------------------------------------------ scheduling

    def _drain(self) -> None:
        """Send queued calls to free workers (lock held). Each queue is strict FIFO."""
        for q in (self._queues[True], self._queues[False]):
            while q:
                call = q[0]
                if call.future.cancelled():
                    q.popleft()
                    self._release_args(call, ())
                    continue
                got = self._place(call.resources)
                if got is None:
                    break
                worker, placement = got
                batch = [q.popleft()]
                chunk = self._chunk(call, len(q))
                while len(batch) < chunk and q and q[0].resources == call.resources:
                    batch.append(q.popleft())
                self._bind(worker, batch, placement)

    def _chunk(self, call: CallRecord, queued: int) -> int:
        """How many queued calls like ``call`` to send in one message: enough to fill about
        ``BATCH_NS`` of the worker's time, judged from the function's measured compute time."""
        if call.resources.timeout_s is not None or not queued:
            return 1
        per_call = self._fn_ns.get(call.digest)
        if per_call is None:
            return 1
        by_time = int(BATCH_NS // max(per_call, 1_000))
        by_share = queued // (2 * max(1, len(self._workers))) + 1
        return max(1, min(MAX_CHUNK, by_time, by_share))

    def _place(self, res: Resources) -> tuple[WorkerHandle, Any] | None:
        key_any = place(res, self._free_cpus, self._gpu_free, self._mem_free)
        if key_any is None:
            return None
        gpus = key_any.gpus
        candidates = [
            w for w in self._workers.values()
            if w.gpus == gpus and not w.inflight and w.state in (IDLE, STARTING)
        ]  # fmt: skip
        worker = None
        if candidates:
            candidates.sort(key=lambda w: (w.state != IDLE, w.index))
            worker = candidates[0]
        elif len(self._workers) < self.max_workers or self._evict_idle(gpus):
            try:
                worker = self._spawn(gpus)
                self._scale_key = gpus
            except OSError as exc:  # fork/exec failed (out of processes or memory): retried
                _log.warning("hetfaas: cannot start a worker now: %s", exc)
                self._start_exits += 1
                if give_up_starting(self._start_exits, self._start_kills):
                    self._give_up([], None)
                return None
        if worker is None:
            return None
        placement = place(res, self._free_cpus, self._gpu_free, self._mem_free, worker.cpus)
        return worker, placement

    def _bind(self, w: WorkerHandle, batch: list[CallRecord], placement: Any) -> None:
        res = batch[0].resources
        self._free_cpus.difference_update(placement.cpus)
        for d in placement.gpus:
            self._gpu_free[d] -= placement.gpu_share
        w.memory_mb = res.memory_mb or 0
        self._mem_free -= w.memory_mb
        w.cpus = placement.cpus
        w.gpu_share = placement.gpu_share
        now = time.perf_counter_ns()
        for call in batch:
            call.t_bind = now
        w.inflight.extend(batch)
        if w.state == IDLE:
            w.state = BUSY
            self._send(w, batch)

    def _top_up(self, w: WorkerHandle) -> None:
        """Send a busy worker more calls like the ones it runs before it runs dry, so short
        calls stream without a round trip between batches (lock held)."""
        last = w.inflight[-1]
        q = self._queues[last.resources.gpus > 0]
        if not q or q[0].resources != last.resources:
            return
        chunk = self._chunk(q[0], len(q))
        if chunk < 2 or len(w.inflight) > chunk // 2:
            return
        batch = [q.popleft()]
        while len(batch) < chunk and q and q[0].resources == last.resources:
            batch.append(q.popleft())
        now = time.perf_counter_ns()
        for call in batch:
            call.t_bind = now
        w.inflight.extend(batch)
        self._send(w, batch)

    def _send(self, w: WorkerHandle, batch: list[CallRecord] | deque[CallRecord]) -> None:
        calls, sent = [], []
        for call in batch:
            if not call.started:
                if not call.future.set_running_or_notify_cancel():
                    w.inflight.remove(call)
                    self._release_args(call, ())
                    continue
                call.started = True
            payload = None if call.digest in w.shipped else call.payload
            w.shipped.add(call.digest)
            mean = self._fn_ns.get(call.digest)
            calls.append((call.future.seq, call.digest, payload, call.data, call.descs, w.cpus,
                          call.capture, mean is None or mean >= USAGE_MIN_NS))  # fmt: skip
            sent.append(call)
        if not calls:
            if not w.inflight:
                self._finish_worker(w)
            return
        releases = [w.releases.popleft() for _ in range(len(w.releases))]
        data = pickle.dumps((P.CALLS, calls, releases), protocol=5)
        timeout_s = sent[0].resources.timeout_s
        t = time.perf_counter_ns()
        for call in sent:
            call.t_disp = t
        if timeout_s is not None:  # run time: counted from the start the worker writes
            w.timeout_ns = int(timeout_s * 1e9)
            w.timed_seq = sent[0].future.seq
        with contextlib.suppress(OSError):  # a dead worker is seen and settled by the reader
            w.conn.send(data)

    def _finish_worker(self, w: WorkerHandle) -> None:
        """``w`` has no more calls: free what it held (lock held)."""
        self._free_cpus.update(w.cpus)
        for d in w.gpus:
            if d in self._gpu_free:
                self._gpu_free[d] = min(1.0, self._gpu_free[d] + w.gpu_share)
        w.gpu_share = 0.0
        self._mem_free += w.memory_mb
        w.memory_mb = 0
        w.timeout_ns = w.timed_seq = w.kill_at = 0
        if w.state != DEAD:
            w.state = IDLE
            w.idle_since = time.perf_counter_ns()

    def _release_args(self, call: CallRecord, retained: Any) -> None:
        for seg in call.leases:
            if seg.name in retained:
                self._args.forget(seg)
            else:
                self._args.release(seg)
        call.leases = []

    def _poke(self) -> None:
        with contextlib.suppress(OSError):
            os.write(self._wake_w, b"x")

    def _fail(self, call: CallRecord, exc: BaseException) -> None:
        self._release_args(call, ())
        fut = call.future
        if not fut.done():
            if not call.started and not fut.set_running_or_notify_cancel():
                return
            fut.set_exception(exc)

    def _on_death(self, w: WorkerHandle) -> None:
        """``w``'s socket closed: settle its calls (see :mod:`.faults`), start another."""
        with contextlib.suppress(subprocess.TimeoutExpired):
            w.proc.wait(timeout=5)
        code = w.proc.poll()
        with self._lock:
            stopped = w.state == DEAD  # the pool told it to exit
            slot = w.index * P.CONTROL_SLOT
            running_seq = struct.unpack_from("<q", self._control.mmap, slot)[0]
            self._control.mmap[slot : slot + P.CONTROL_SLOT] = bytes(P.CONTROL_SLOT)
            calls = list(w.inflight)
            w.inflight.clear()
            w.state = DEAD
            self._finish_worker(w)
            self._forget_worker(w)
            sweep(f"hetfaas-{w.pid}-")
            if not stopped:
                self.deaths += 1
            if not w.ready_ns:  # died starting: no call began
                if code is not None and code < 0:
                    self._start_kills += 1
                else:
                    self._start_exits += 1
                if give_up_starting(self._start_exits, self._start_kills):
                    self._give_up(calls, code)
                    calls = []
                split = split_dead_calls(calls, [], 0)
            else:
                split = split_dead_calls(calls, [c.future.seq for c in calls], running_seq)
            for call in split.finished:
                iid = call.future.invocation_id
                self._fail(call, WorkerDied(
                    f"worker {w.index} (pid {w.pid}) finished call {iid} but died before "
                    "returning its result", iid, code))  # fmt: skip
            if split.running is not None:
                self._fail(split.running, death_error(w, split.running, code))
            for call in reversed(split.requeue):
                self._queues[call.resources.gpus > 0].appendleft(call)
            if not self._closing and not stopped:
                if len(self._workers) < self.max_workers and not self._gave_up:
                    with contextlib.suppress(OSError):  # no process to be had: _drain retries
                        self._spawn(w.gpus).replaces_ns = time.perf_counter_ns()
                self._gave_up = False
                self._drain()

    def _give_up(self, calls: list[CallRecord], code: int | None) -> None:
        """Workers keep dying before they are ready: fail the calls that wait for one."""
        self._start_exits = self._start_kills = 0
        self._gave_up = True
        waiting = calls + [c for q in self._queues.values() for c in q]
        for q in self._queues.values():
            q.clear()
        for call in waiting:
            iid = call.future.invocation_id
            self._fail(call, WorkerDied(
                f"call {iid}: the pool's workers keep dying before they are ready (last exit "
                f"code {code}); see their stderr above", iid, code))  # fmt: skip


@atexit.register
def _shutdown_all() -> None:
    for pool in list(_live_pools):
        with contextlib.suppress(Exception):
            pool.shutdown(wait=False, cancel_futures=True)
