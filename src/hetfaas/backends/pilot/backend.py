"""The submitter's side of the pilot: ``Executor("slurm", pilot=...)`` (backend ``slurm-pilot``).

The executor holds warm allocations. It listens on a TCP port (127.0.0.1 by default), writes
a per-executor secret (:mod:`.wire`) in its job folder and starts *blocks* (:mod:`.launch`):
Slurm jobs that each run a warm local pool (:mod:`.agent`), connect back, prove the secret
and take calls as they come, so a warm call costs a network hop, not a batch launch.

One call, end to end: ``prepare`` pickles it once (:class:`~hetfaas.backends.remote.Payload`)
and checks it fits a block; ``dispatch`` queues it and sends what fits to the connected
blocks at once, batched in frames (a function's bytes go once per block). A block takes a
call while it has the call's cores and GPUs free; calls of a function measured short (under
``SHORT_NS``) are also sent ahead, ``AHEAD_NS`` of work per core, so that the block's pool
always has work and chunks it (as the local pool does). The block runs each call on its pool
under the call's ``Resources`` and streams back which calls began and their replies;
``future.timings`` splits the time as for the other engines, the wait for a block's launch
counting as cold start.

Blocks (:mod:`.strategy`): added from the queue's depth, released after ``idle_s`` without
calls. **Before walltime** a block takes no call whose ``timeout_s`` (plus ``margin_s``)
would carry it past its end, and no call without ``timeout_s`` in its last ``drain_s``; such
calls wait for, or go to, other blocks (a replacement is launched). **Faults**: a block whose
connection ends (``scancel``, a crash, its node lost, silent for ``wire.DEAD_AFTER_S``)
fails the calls that had begun there with :class:`~hetfaas.exceptions.WorkerDied`; the calls
it held that had not begun go back to the queue and run elsewhere. A block that starts late
is used the moment it connects.
"""

from __future__ import annotations

import atexit
import contextlib
import functools
import itertools
import logging
import math
import os
import shutil
import socket
import tempfile
import threading
import time
import weakref
from collections import deque
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from ..._future import Future
from ...exceptions import (
    CallCancelled,
    ConfigurationError,
    EngineError,
    ExecutorShutdownError,
    JobFailed,
    ResourceError,
    WorkerDied,
)
from ..base import Backend, CallSpec, Capacity
from ..contract import attach, start
from ..remote import Payload, fail
from . import wire
from .launch import Launcher, agent_command, make_launcher
from .reader import BlockReader
from .records import GONE, Block, Call, settle_reply
from .strategy import DRAINING, PENDING, RUNNING, Observed, Pilot, decide, pilot_from

_log = logging.getLogger("hetfaas.backends.pilot")
SHORT_NS = 1_000_000  # calls of functions shorter than this (their mean) are sent ahead
AHEAD_NS = 20_000_000  # ... this much of their work per core of the block
MAX_AHEAD = 1024  # at most this many calls per core sent ahead
FRAME_CALLS = 512  # calls per frame at most (the block starts on the first while more come)
POLL_S = 0.5  # how often the engine is asked about blocks that have not joined
RELEASE_GRACE_S = 10.0  # a released block still in the engine after this is cancelled
MIN_TICK_S = 0.02  # the strategy runs at most this often
FAILED_LAUNCHES = 3  # blocks ending before they connect, in a row: the queued calls fail
_live: weakref.WeakSet[SlurmPilotBackend] = weakref.WeakSet()


class SlurmPilotBackend(Backend):
    """Warm pilot blocks on Slurm (see the module).

    Options: ``pilot`` (a :class:`~hetfaas.backends.pilot.strategy.Pilot`, a dict of its
    fields, or True for the defaults), ``folder`` (the job folder: the blocks' logs and the
    secret; on a real cluster one that the nodes see too), ``partition``, ``sbatch_options``
    (more ``sbatch`` options: a list, or a dict such as ``{"account": "x"}``),
    ``listen_host`` (where the submitter listens; 127.0.0.1 by default, the login node's
    address on a real cluster, whose nodes connect to ``connect_host``: by default the
    listen address, or this host's name when listening on all addresses), ``python`` (the
    blocks' interpreter; default this one) and ``launcher`` (``"slurm"``; ``"process"`` runs
    blocks as local processes, without a scheduler).
    """

    name = "slurm-pilot"

    def __init__(
        self,
        pilot: Pilot | dict[str, Any] | bool = True,
        folder: str | os.PathLike[str] | None = None,
        partition: str | None = None,
        sbatch_options: Sequence[str] | dict[str, object] | None = None,
        listen_host: str = "127.0.0.1",
        connect_host: str | None = None,
        python: str | None = None,
        launcher: str | Launcher = "slurm",
        job_name: str = "hetfaas-pilot",
    ) -> None:
        self.pilot = pilot_from(pilot)
        self.launcher = make_launcher(launcher, partition, sbatch_options, job_name)
        self._own_folder = folder is None
        self.folder = Path(folder) if folder else Path(tempfile.mkdtemp(prefix="hetfaas-pilot-"))
        self.folder.mkdir(parents=True, exist_ok=True)
        self.secret_path = Path(tempfile.mkdtemp(prefix="pilot-", dir=self.folder)) / "secret"
        self._key = wire.write_secret(self.secret_path)
        family = socket.AF_INET6 if ":" in listen_host else socket.AF_INET
        self._listener = socket.socket(family, socket.SOCK_STREAM)
        self._listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._listener.bind((listen_host, 0))
        self._listener.listen(64)
        self.port = self._listener.getsockname()[1]
        if connect_host is None:
            wildcard = listen_host in ("0.0.0.0", "::", "")
            connect_host = socket.gethostname() if wildcard else listen_host
        self.address = f"{connect_host}:{self.port}"
        self.python = python or _python()
        self._lock = threading.RLock()
        self._queue: deque[Call] = deque()
        self._blocks: dict[int, Block] = {}
        self._block_ids = itertools.count(1)
        self._call_ids = itertools.count(1)
        self._fn_ns: dict[bytes, float] = {}  # mean compute time per function
        self._stranded = 0  # queued calls no connected block has the time left for
        self._failures = 0  # blocks that ended before they joined, in a row
        self._launch_after = 0.0  # back off launches after failures
        self._closing = False
        self._closed = False
        self._wake = threading.Event()
        self._threads = [
            threading.Thread(target=self._accept_loop, name="pilot-accept", daemon=True),
            threading.Thread(target=self._manage_loop, name="pilot-manager", daemon=True),
        ]
        for t in self._threads:
            t.start()
        _live.add(self)
        if self.pilot.min_blocks:
            self._wake.set()  # the warm blocks start now

    # ------------------------------------------------------------------ Backend API

    def capacity(self) -> Capacity:
        p = self.pilot
        return Capacity(p.cpus * p.max_blocks, p.gpus * p.max_blocks, (), p.cpus * p.max_blocks,
                        (p.memory_mb or 0) * p.max_blocks)  # fmt: skip

    def prepare(self, spec: CallSpec) -> Call:
        res, p = spec.resources, self.pilot
        if res.cpus > p.cpus:
            raise ResourceError(f"cpus={res.cpus}: the pilot's blocks have {p.cpus} core(s)")
        if res.gpus > p.gpus:
            raise ResourceError(f"gpus={res.gpus}: the pilot's blocks have {p.gpus} GPU(s)")
        if res.memory_mb is not None and p.memory_mb is not None and res.memory_mb > p.memory_mb:
            raise ResourceError(f"memory_mb={res.memory_mb}: the pilot's blocks have "
                                f"{p.memory_mb} MB")  # fmt: skip
        if res.timeout_s is not None and res.timeout_s + p.margin_s >= p.walltime_s:
            raise ResourceError(
                f"timeout_s={res.timeout_s:g} (+ margin_s={p.margin_s:g}) does not fit in a "
                f"block's walltime_s={p.walltime_s:g}: such a call could never start"
            )
        payload = Payload.build(spec.fn, spec.args, spec.kwargs, res)
        call = Call(spec.future, payload, res, next(self._call_ids))
        attach(spec.future, waiter=functools.partial(self._wait_for, call),
               canceller=functools.partial(self._cancel, call))  # fmt: skip
        return call

    def dispatch(self, prepared: list[Any]) -> None:
        with self._lock:
            if self._closing:
                raise ExecutorShutdownError("this executor is shut down; it accepts no calls")
            self._queue.extend(prepared)
            todo = self._schedule()
            if self._queue:
                self._wake.set()  # the strategy decides now, not at its next tick
        self._flush(todo)

    def warmup(self, n: int, resources: Any) -> None:
        """Launch blocks for ``n`` calls of ``resources`` (up to ``max_blocks``) and wait
        until they joined. They are released after ``idle_s`` like any block."""
        per_block = max(1, self.pilot.cpus // max(1, resources.cpus))
        want = min(self.pilot.max_blocks, max(1, math.ceil(n / per_block)))
        with self._lock:
            have = sum(1 for b in self._blocks.values() if b.state in (PENDING, RUNNING)
                       and not b.released)  # fmt: skip
        self._launch(want - have)
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline:
            with self._lock:
                up = sum(1 for b in self._blocks.values() if b.state in (RUNNING, DRAINING))
                coming = sum(1 for b in self._blocks.values() if b.state == PENDING)
            if up >= want:
                return
            if not coming:  # they ended before they joined (logged), or were refused
                break
            time.sleep(0.01)
        raise EngineError(f"pilot: {want} block(s) did not join in time; see {self.folder}")

    def cancel_pending(self) -> None:
        with self._lock:
            queued = list(self._queue)
            self._queue.clear()
        for call in queued:
            _cancel_queued(call)

    def stats(self) -> dict[str, int]:
        """Blocks as workers (starting: pending in the engine; idle; busy), blocks draining,
        calls queued here, running (begun in a block) and sent ahead (in a block, not begun)."""
        with self._lock:
            blocks = [b for b in self._blocks.values() if b.state != GONE]
            return {
                "workers_starting": sum(b.state == PENDING for b in blocks),
                "workers_idle": sum(b.state != PENDING and not b.calls for b in blocks),
                "workers_busy": sum(bool(b.calls) for b in blocks),
                "blocks_draining": sum(b.state == DRAINING or bool(b.released) for b in blocks),
                "queued": len(self._queue),
                "running": sum(c.started for b in blocks for c in b.calls.values()),
                "sent_ahead": sum(not c.started for b in blocks for c in b.calls.values()),
            }

    def blocks(self) -> list[dict[str, Any]]:
        """The blocks now: ``id``, ``job_id``, ``state`` (pending, running, draining,
        released), ``host``, ``cores``, ``calls``, ``left_s`` (to its walltime) and, once it
        joined, ``joined_at`` (``time.time()``), ``ready_s`` (its launch, in seconds) and
        ``frames`` (received from it)."""
        now = time.monotonic()
        with self._lock:
            return [
                {
                    "id": b.id,
                    "job_id": b.job_id,
                    "state": "released" if b.released else b.phase(now, self.pilot.drain_s),
                    "host": b.info.get("host", ""),
                    "cores": b.info.get("cpus", []),
                    "calls": len(b.calls),
                    "left_s": b.deadline - now,
                    "joined_at": b.ready_ns / 1e9 if b.ready else None,
                    "ready_s": b.ready - b.launched if b.ready else None,
                    "frames": b.frames,
                }
                for b in self._blocks.values()
                if b.state != GONE
            ]

    # ------------------------------------------------------------------ scheduling

    def _schedule(self) -> list[Block]:
        """Send queued calls to blocks that can take them (lock held); the blocks whose
        outbox this thread must flush once it let go of the lock. The queue is FIFO, but a
        call no block could take before its walltime is stepped over (it waits for a new
        block) so that it does not hold back calls that fit."""
        q = self._queue
        self._stranded = 0
        if not q:
            return []
        blocks = [b for b in self._blocks.values() if b.state in (RUNNING, DRAINING)
                  and b.conn is not None and not b.released]  # fmt: skip
        if not blocks:
            return []
        now = time.monotonic()
        p = self.pilot
        out: dict[int, list[tuple[Any, ...]]] = {}
        held: list[Call] = []
        wall = time.time_ns()
        while q and len(held) < 4096:
            call = q[0]
            fut = call.future
            if fut.done() or (not call.taken and fut.cancelled()):
                q.popleft()
                continue
            res = call.res
            mean = self._fn_ns.get(call.payload.digest)
            short = mean is not None and mean < SHORT_NS
            need = (res.timeout_s + p.margin_s) if res.timeout_s is not None else p.drain_s
            ahead = 0
            if short:
                need += AHEAD_NS / 1e9
                ahead = min(MAX_AHEAD, int(AHEAD_NS // max(mean, 1_000.0)))  # type: ignore[arg-type]
            best, best_key = None, (2, 0)
            timely = False
            for b in blocks:
                if now + need > b.deadline:
                    continue
                timely = True
                if b.load + res.cpus <= b.cpus and b.gload + res.gpus <= b.gpus:
                    key = (0, b.load)  # cores free now: the least loaded block
                elif short and len(b.calls) < b.cpus * (1 + ahead):
                    key = (1, len(b.calls))  # sent ahead: the shortest backlog
                else:
                    continue
                if key < best_key:
                    best, best_key = b, key
            if best is None:
                if timely:
                    break  # it fits a block once that block frees cores: FIFO
                held.append(q.popleft())  # no block now has the time left it needs
                continue
            q.popleft()
            if not call.taken:
                if not start(fut):
                    continue
                call.taken = True
            b = best
            call.block = b
            call.started = False
            call.sent_ns = wall
            fut.engine_id = b.job_id
            b.calls[call.id] = call
            b.load += res.cpus
            b.gload += res.gpus
            pl = call.payload
            fn = None if pl.digest in b.shipped else pl.fn
            b.shipped.add(pl.digest)
            out.setdefault(b.id, []).append(
                (call.id, pl.digest, fn, pl.args, pl.fn_name, res.cpus, res.gpus,
                 res.memory_mb, res.timeout_s, pl.sys_path))  # fmt: skip
        q.extendleft(reversed(held))
        self._stranded = len(held)
        todo = []
        for block_id, calls in out.items():
            b = self._blocks[block_id]
            with b.send_lock:
                b.outbox += calls
                if not b.sending:
                    b.sending = True
                    todo.append(b)
        return todo

    def _flush(self, blocks: list[Block]) -> None:
        """Write the blocks' outboxes (no lock held; one thread per block at a time)."""
        for b in blocks:
            while True:
                with b.send_lock:
                    calls, b.outbox = b.outbox, []
                    if not calls or b.conn is None:
                        b.sending = False
                        break
                conn = b.conn
                b.last_sent = time.monotonic()
                try:
                    for i in range(0, len(calls), FRAME_CALLS):
                        conn.send((wire.CALLS, calls[i : i + FRAME_CALLS]))
                except OSError:  # the block is gone: its reader requeues these calls
                    with b.send_lock:
                        b.sending = False
                        b.outbox = []
                    break

    def _wait_for(self, call: Call, fut: Future, deadline: float | None) -> None:
        """Waiter hook: a caller waiting on a call that is at a block reads that block's
        replies itself (:mod:`.reader`); else (queued here) it waits as usual."""
        while not fut.done():
            b = call.block
            reader = b.reader if b is not None else None
            if reader is None or reader.lost:
                return
            reader.wait_for(fut.done, deadline)
            if call.block is b or (deadline is not None and time.monotonic() >= deadline):
                return

    def _cancel(self, call: Call, fut: Future) -> bool:
        """The canceller of a call that is RUNNING here: dropped from the queue, or its block
        asked to stop it."""
        with self._lock:
            b = call.block
            if b is None:  # queued: _schedule drops it once the future is cancelled
                return True
            conn = b.conn
        if conn is None:
            return False
        try:
            conn.send((wire.CANCEL, [call.id]))
        except OSError:
            return False
        return True

    # ------------------------------------------------------------------ blocks joining

    def _accept_loop(self) -> None:
        while not self._closed:
            try:
                sock, addr = self._listener.accept()
            except OSError:
                if self._closed:
                    return
                time.sleep(0.05)
                continue
            threading.Thread(target=self._join, args=(sock, addr), name="pilot-join",
                             daemon=True).start()  # fmt: skip

    def _join(self, sock: socket.socket, addr: Any) -> None:
        peer = f"{addr[0]}:{addr[1]}" if isinstance(addr, tuple) else str(addr)
        try:
            block_id = wire.server_handshake(sock, self._key)
            sock.settimeout(wire.HANDSHAKE_TIMEOUT_S)
            conn = wire.Connection(sock)
            hello = conn.recv()
            sock.settimeout(None)
        except (wire.AuthenticationFailed, OSError, EOFError) as exc:
            _log.warning("pilot: refused a connection from %s: %s", peer, exc)
            with contextlib.suppress(OSError):
                sock.close()
            return
        now = time.monotonic()
        with self._lock:
            b = self._blocks.get(block_id)
            if b is None or b.state != PENDING or hello[0] != wire.HELLO or self._closed:
                why = "unknown" if b is None else b.state
                _log.warning("pilot: refused block %d from %s (%s)", block_id, peer, why)
                conn.close()
                return
            info = hello[1]
            b.info = info
            b.job_id = b.job_id or str(info.get("job_id", ""))
            b.conn = conn
            reader = b.reader = BlockReader(conn, functools.partial(self._on_frame, b),
                                            functools.partial(self._on_lost, b),
                                            f"pilot-block{block_id}")  # fmt: skip
            b.ready, b.ready_ns, b.last_recv = now, time.time_ns(), now
            b.idle_since = now
            b.deadline = now + float(info["left_s"])
            b.state = DRAINING if now + self.pilot.drain_s > b.deadline else RUNNING
            self._failures = 0
            todo = self._schedule()
        reader.start()
        _log.info("pilot: block %d (job %s) joined from %s after %.2f s", block_id, b.job_id,
                  peer, now - b.launched)  # fmt: skip
        self._flush(todo)
        self._wake.set()

    # ------------------------------------------------------------------ blocks serving

    def _on_frame(self, b: Block, msg: tuple[Any, ...]) -> None:
        """One frame from ``b`` (in its reader thread, or a caller holding its read role)."""
        b.last_recv = time.monotonic()
        b.frames += 1
        kind = msg[0]
        try:
            if kind == wire.EVENTS:
                self._on_events(b, msg[1], msg[2])
            elif kind == wire.BYE:
                b.bye = str(msg[1])
        except Exception:  # delivery must go on: every accepted call must end
            _log.exception("pilot: block %d: a message could not be handled", b.id)

    def _on_events(self, b: Block, started: list[int], results: list[tuple[Any, ...]]) -> None:
        done = []
        now = time.monotonic()
        with self._lock:
            calls = b.calls
            for call_id in started:
                call = calls.get(call_id)
                if call is not None:
                    call.started = True
            for item in results:
                call = calls.pop(item[0], None)
                if call is None:
                    continue
                b.load -= call.res.cpus
                b.gload -= call.res.gpus
                reply = item[1]
                ran = reply.end_ns - reply.start_ns
                digest = call.payload.digest
                prev = self._fn_ns.get(digest)
                self._fn_ns[digest] = ran if prev is None else (prev * 7 + ran) / 8
                done.append((call, item))
            if not calls:
                b.idle_since = now
            todo = self._schedule()
        self._flush(todo)  # the block's next calls before these are delivered
        for call, (_, reply, cold_ns, tin_ns, recv_ns) in done:
            settle_reply(call, b, reply, cold_ns, tin_ns, recv_ns, self.name)

    def _on_lost(self, b: Block) -> None:
        """``b``'s connection ended: its calls that had begun fail, the others run elsewhere."""
        with self._lock:
            b.state = GONE
            b.conn = None
            with b.send_lock:
                unsent = {item[0] for item in b.outbox}  # never written to the block
                b.outbox = []
            calls = sorted(b.calls.values(), key=lambda c: c.id)
            b.calls.clear()
            b.load, b.gload = 0, 0.0
            # A block that said BYE (its walltime, SIGTERM) reported every call that began
            # before it went. One lost abruptly (SIGKILL, its node) may have begun calls it
            # had no time to report: those sent to it are not run again (at most once; an
            # idempotent function's are retried by the executor).
            graceful = bool(b.bye) or b.released or self._closed
            running = [c for c in calls if c.started]
            unsure = [c for c in calls if not c.started and not graceful and c.id not in unsent]
            unsure_ids = {c.id for c in unsure}
            again = [c for c in calls if not c.started and c.id not in unsure_ids]
            for c in again:
                c.block = None
            closed = self._closed
            if not closed:
                self._queue.extendleft(reversed(again))
            todo = self._schedule()
        if closed:
            why = "was stopped: the executor shut down"
        elif b.released:
            why = "was released"
        else:
            why = b.bye or "was lost (cancelled, killed, or its node failed)"
        host = b.info.get("host", "?")
        for c in running:
            iid = c.future.invocation_id
            msg = (f"call {iid}: pilot block {b.id} (job {b.job_id} on {host}) {why} "
                   "while the call ran")  # fmt: skip
            fail(c.future, c.payload, WorkerDied(msg, iid), self.name)
        for c in unsure:
            iid = c.future.invocation_id
            msg = (f"call {iid}: pilot block {b.id} (job {b.job_id} on {host}) {why} with the "
                   "call sent to it; it may have begun, so it is not run again (declare the "
                   "function idempotent to have it retried)")  # fmt: skip
            fail(c.future, c.payload, WorkerDied(msg, iid), self.name)
        if closed:
            for c in again:
                _cancel_queued(c)
        elif calls or not b.released:
            _log.warning("pilot: block %d (job %s) %s; %d call(s) failed, %d requeued", b.id,
                         b.job_id, why, len(running) + len(unsure), len(again))  # fmt: skip
        self._flush(todo)
        if not (b.released or b.bye or closed):
            self.launcher.cancel([b.job_id])  # whatever is left of it in the engine
        self._wake.set()

    # ------------------------------------------------------------------ the strategy

    def _manage_loop(self) -> None:
        last_poll = 0.0
        while not self._closed:
            self._wake.wait(self.pilot.tick_s)
            self._wake.clear()
            if self._closed:
                return
            try:
                now = time.monotonic()
                self._tick(now)
                if now - last_poll >= POLL_S:
                    last_poll = now
                    self._poll(now)
            except Exception:  # the strategy must go on: every accepted call must end
                _log.exception("pilot: the block manager hit an error")
                time.sleep(0.1)
            time.sleep(MIN_TICK_S)  # a stream of submits wakes it at most this often

    def _tick(self, now: float) -> None:
        lost, release, exits, pings = [], [], [], []
        with self._lock:
            for b in self._blocks.values():
                if b.state == RUNNING and now + self.pilot.drain_s > b.deadline:
                    b.state = DRAINING
                if b.conn is not None and now - b.last_recv > wire.DEAD_AFTER_S:
                    lost.append(b)
                elif b.conn is not None and now - b.last_sent > wire.HEARTBEAT_S:
                    pings.append(b)
            for block_id in [k for k, b in self._blocks.items() if b.state == GONE]:
                del self._blocks[block_id]  # its reader has settled its calls
            live = [b for b in self._blocks.values() if b.state != GONE]
            views = tuple(b.view(now, self.pilot.drain_s) for b in live)
            obs = Observed(now, len(self._queue), views,
                           min(self._stranded, len(self._queue)))  # fmt: skip
            d = decide(self.pilot, obs)
            launch = d.launch if not (self._closing and not self._queue) else 0
            if launch and now < self._launch_after:
                launch = 0
            for block_id in d.release:
                b = self._blocks[block_id]
                if b.calls or b.released:
                    continue
                b.released = now
                if b.conn is None:
                    b.state = GONE
                    release.append(b)
                else:
                    exits.append(b)
            stale = [b for b in live if b.released and b.conn is not None
                     and now - b.released > RELEASE_GRACE_S]  # fmt: skip
        for b in lost:
            _log.warning("pilot: block %d (job %s) silent for %.0f s: lost", b.id, b.job_id,
                         now - b.last_recv)  # fmt: skip
            if b.conn is not None:
                b.conn.close()
        for b in exits:
            with contextlib.suppress(OSError):
                if b.conn is not None:
                    b.conn.send((wire.EXIT,))
        for b in pings:
            b.last_sent = now
            with contextlib.suppress(OSError, AttributeError):  # (conn None: gone meanwhile)
                b.conn.send((wire.PING,))  # type: ignore[union-attr]
        cancel = [b.job_id for b in release + stale if b.job_id]
        if cancel:
            self.launcher.cancel(cancel)
        self._launch(launch)

    def _launch(self, n: int) -> None:
        for _ in range(max(0, n)):
            with self._lock:
                if self._closed:
                    return
                b = Block(next(self._block_ids), self.pilot)
                self._blocks[b.id] = b
            command = agent_command(self.python, self.address, self.secret_path, b.id,
                                    self.pilot)  # fmt: skip
            log = self.folder / f"block-{b.id}.log"
            try:
                job = self.launcher.launch(b.id, command, self.pilot, log)
            except EngineError as exc:  # the engine refuses: the queued calls cannot run
                with self._lock:
                    b.state = GONE
                    queued = list(self._queue)
                    self._queue.clear()
                    self._launch_after = time.monotonic() + 2.0
                _log.error("pilot: %s", exc)
                for call in queued:
                    fail(call.future, call.payload, EngineError(str(exc)), self.name)
                return
            with self._lock:
                b.job_id = b.job_id or job
                closed = self._closed
            if closed:  # shut down while sbatch ran
                self.launcher.cancel([job])
                return
            _log.info("pilot: launched block %d (job %s)", b.id, job)

    def _poll(self, now: float) -> None:
        """Ask the engine about blocks that have not joined: one that ended failed to start;
        one running too long without joining is cancelled."""
        with self._lock:
            waiting = [b for b in self._blocks.values()
                       if b.state == PENDING and b.job_id and not b.released]  # fmt: skip
        if not waiting:
            return
        try:
            states = self.launcher.states([b.job_id for b in waiting])
        except EngineError as exc:
            _log.warning("pilot: %s", exc)
            return
        failed = []
        for b in waiting:
            state = states.get(b.job_id)
            if state == "RUNNING" and not b.engine_running:
                b.engine_running = now
            late = b.engine_running and now - b.engine_running > self.pilot.connect_timeout_s
            if state is None or late:
                failed.append((b, state or "ENDED"))
        if failed:
            self.launcher.cancel([b.job_id for b, _ in failed])
        for b, state in failed:
            self._failed_start(b, state)

    def _failed_start(self, b: Block, state: str) -> None:
        time.sleep(0.05)  # its joining may be under way in another thread
        tail = _tail(self.folder / f"block-{b.id}.log")
        # scancel'led from outside before it joined (Slurm writes that to the job's log): not
        # a block that cannot start, so it does not count towards giving up
        cancelled = "CANCELLED AT" in tail
        with self._lock:
            if b.state != PENDING:
                return
            b.state = GONE
            if cancelled:
                _log.warning("pilot: block %d (job %s) was cancelled before it joined; "
                             "another is launched if calls wait", b.id, b.job_id)  # fmt: skip
                self._wake.set()
                return
            self._failures += 1
            self._launch_after = time.monotonic() + min(30.0, 0.25 * 2.0**self._failures)
            give_up = self._failures >= FAILED_LAUNCHES and not any(
                b2.state in (RUNNING, DRAINING) for b2 in self._blocks.values())  # fmt: skip
            queued = []
            if give_up:
                queued = list(self._queue)
                self._queue.clear()
                self._failures = 0
        if "cannot join" in tail and self.address.startswith(("127.", "localhost", "::1")):
            tail += ("\n(the submitter listens on a loopback address, which blocks on other "
                     "nodes cannot reach: give listen_host)")  # fmt: skip
        _log.error("pilot: block %d (job %s) ended before it joined (%s)%s", b.id, b.job_id,
                   state, f":\n{tail}" if tail else "")  # fmt: skip
        for call in queued:
            iid = call.future.invocation_id
            exc = JobFailed(f"call {iid}: pilot blocks keep ending before they join (last: job "
                            f"{b.job_id}, {state}); their log: {self.folder}", iid, b.job_id,
                            state, tail)  # fmt: skip
            fail(call.future, call.payload, exc, self.name)

    # ------------------------------------------------------------------ the end

    def shutdown(self, wait: bool = True, cancel_futures: bool = False) -> None:
        with self._lock:
            if self._closed:
                return
            self._closing = True
        if cancel_futures:
            self.cancel_pending()
        if wait:
            while True:
                with self._lock:
                    busy = bool(self._queue) or any(b.calls for b in self._blocks.values())
                if not busy:
                    break
                time.sleep(0.005)
        with self._lock:
            self._closed = True
        self._wake.set()
        with contextlib.suppress(OSError):
            self._listener.shutdown(socket.SHUT_RDWR)
        with contextlib.suppress(OSError):
            self._listener.close()
        for t in self._threads:  # a launch under way ends first (then nothing else starts)
            if t is not threading.current_thread():
                t.join(timeout=60)
        with self._lock:
            blocks = [b for b in self._blocks.values() if b.state != GONE]
            joined = [b for b in blocks if b.conn is not None]
        for b in joined:
            with contextlib.suppress(OSError):
                if b.conn is not None:
                    b.conn.send((wire.EXIT,))
        jobs = [b.job_id for b in blocks if b.job_id]
        self.launcher.cancel([b.job_id for b in blocks if b.conn is None and b.job_id])
        until = time.monotonic() + 3.0
        while time.monotonic() < until and any(b.conn is not None for b in joined):
            time.sleep(0.01)
        for b in joined:  # what did not leave by itself
            if b.conn is not None:
                b.conn.close()
        self.launcher.cancel(jobs)
        with self._lock:
            left = [c for b in self._blocks.values() for c in b.calls.values()]
        for c in left:
            iid = c.future.invocation_id
            fail(c.future, c.payload, WorkerDied("executor shut down while the call ran", iid),
                 self.name)  # fmt: skip
        self.cancel_pending()
        if wait:
            until = time.monotonic() + 30.0
            with contextlib.suppress(EngineError):
                while jobs and time.monotonic() < until and self.launcher.states(jobs):
                    time.sleep(0.1)
        self.launcher.close()
        with contextlib.suppress(OSError):
            self.secret_path.unlink()
            self.secret_path.parent.rmdir()
        if self._own_folder and wait:
            shutil.rmtree(self.folder, ignore_errors=True)
        _live.discard(self)


def _cancel_queued(call: Call) -> None:
    """A call the executor will not run: cancelled (or, if a block had it, CallCancelled)."""
    if not call.taken:
        call.future.cancel()
    elif not call.future.done():
        iid = call.future.invocation_id
        fail(call.future, call.payload, CallCancelled(f"call {iid} was cancelled", iid),
             "slurm-pilot")  # fmt: skip


def _tail(path: Path, lines: int = 20) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return ""


def _python() -> str:
    import sys

    if not sys.executable:
        raise ConfigurationError("no Python interpreter to start the blocks with")
    return sys.executable


@atexit.register
def _shutdown_all() -> None:
    for backend in list(_live):
        with contextlib.suppress(Exception):
            backend.shutdown(wait=False, cancel_futures=True)


__all__ = ["SlurmPilotBackend"]
