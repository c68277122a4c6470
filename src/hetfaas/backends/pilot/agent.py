"""What a pilot block runs inside its Slurm job: a warm local pool serving the submitter.

``python -m hetfaas.backends.pilot.agent --connect HOST:PORT --secret FILE --block N
--walltime S --cpus C [--gpus G] [--memory-mb M]``

1. Starts a :class:`~hetfaas.backends.local.LocalBackend` on the job's cores and GPUs (the
   warm pool: fork server, pinning, timeouts, usage) and warms a worker per core, while it
2. connects back to the submitter and proves the executor's secret (:mod:`.wire`), then says
   hello: its job, host, cores, GPUs and the time left to its walltime.
3. Serves: each call arrives pickled by the submitter (function and arguments as
   :class:`~hetfaas.backends.remote.Payload` bytes: the agent never unpickles user code) and
   runs on the pool as :func:`~hetfaas.backends.remote.run_shipped` under the call's own
   ``Resources``. The pool's start of each call and each reply go back in batched frames: an
   ``EVENTS`` frame carries every call that began and every reply since the last one.
4. Ends at its walltime (it says ``BYE`` first), on the submitter's ``EXIT``, when the
   submitter's connection is lost, or on SIGTERM (``scancel``). Its pool's processes end with
   it.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import logging
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from typing import Any

from ..._future import Future
from ..._resources import Resources
from ...exceptions import CallCancelled, CallTimeout
from ..base import CallSpec
from ..remote import Reply, _process_start_ns, error_reply, run_shipped
from . import wire

_log = logging.getLogger("hetfaas.backends.pilot.agent")
CONNECT_FOR_S = 30.0  # how long a block retries reaching the submitter
SLURM_END_MARGIN_S = 2.0  # a block ends this long before Slurm's own limit, at the latest
START_EVERY_S = 0.005  # the calls that began are reported this often (see Agent.on_start)
IDLE_TICK_S = 0.1  # ... at the least often, while calls run; the sender sleeps after this idle


class _BlockFuture(Future):
    """A call's future in the block: tells the agent when the pool starts and ends it."""

    def __init__(self, agent: Agent, call_id: int, timeout_s: float | None, recv_ns: int) -> None:
        super().__init__(agent.prefix, call_id)
        self.agent = agent
        self.timeout_s = timeout_s
        self.recv_ns = recv_ns

    def set_running_or_notify_cancel(self) -> bool:
        if self.agent._closing and self._state == "PENDING":
            # the block is ending (SIGTERM reaches its workers too, and the pool would start
            # the calls it requeues on a new one): nothing more begins here, the submitter
            # runs it elsewhere
            self.cancel()
            return False
        ok = super().set_running_or_notify_cancel()
        if ok:
            self.agent.on_start(self.seq)
        return ok

    def _invoke_callbacks(self) -> None:  # every way a future ends comes through here
        self.agent.on_done(self)
        super()._invoke_callbacks()


class Agent:
    """One block's side of the connection (the reader runs in the caller's thread)."""

    def __init__(self, conn: wire.Connection, pool: Any, block_id: int, left_s: float) -> None:
        self.conn = conn
        self.pool = pool
        self.block_id = block_id
        self.prefix = f"block{block_id}"
        self.deadline = time.monotonic() + left_s
        self._fns: dict[bytes, bytes] = {}  # the functions this block has, by digest
        self._futures: dict[int, _BlockFuture] = {}
        self._res: dict[tuple[Any, ...], Resources] = {}
        self._lock = threading.Lock()
        self._started: list[int] = []
        self._results: list[tuple[Any, ...]] = []
        self._wake = threading.Event()
        self._out = threading.Lock()  # one thread at a time takes the events and sends them
        self._ticking = False  # the sender wakes every START_EVERY_S (calls run here)
        self._closing = False
        self.reason = ""
        self._said_bye = False
        self._sender = threading.Thread(target=self._send_loop, name="pilot-send", daemon=True)

    # ------------------------------------------------------------------ events out

    def on_start(self, call_id: int) -> None:
        # Not sent at once: the sender reports the calls that began within START_EVERY_S,
        # and a call that ends sooner has its start go with its reply in one frame. Waking
        # the sender for each start would cost a thread switch on the block's cores while
        # the call runs, and a frame more per call on the submitter. (The submitter needs a
        # start to know, when a block ends, which of its calls may have begun: one it did not
        # hear of is failed, not run again, unless the block said BYE after its last events.)
        with self._lock:
            self._started.append(call_id)
            if not self._ticking:  # the sender sleeps long: it ticks again from now on
                self._ticking = True
                self._wake.set()

    def on_done(self, fut: _BlockFuture) -> None:
        self._futures.pop(fut.seq, None)
        if self._closing:
            return
        reply = _reply_of(fut)
        st = fut._stamps
        cold, t_in = (st.cold_start_ns, st.transfer_in_ns) if st is not None else (0, 0)
        with self._lock:
            self._results.append((fut.seq, reply, cold, t_in, fut.recv_ns))
        # The block's last call in flight: send from this thread (the pool's delivery) when no
        # one else is sending, as waking the sender thread costs a thread switch on the
        # result's way, more than the send itself. With more in flight, the sender thread
        # batches the results that come meanwhile into one frame.
        if not self._futures and self._out.acquire(blocking=False):
            try:
                if not self._closing:
                    self._send_events()
                    return
            except OSError:
                return  # the reader sees the connection end too
            finally:
                self._out.release()
        self._wake.set()

    def _send_events(self) -> bool:
        """Send what began and ended since the last frame (``_out`` held); whether any."""
        with self._lock:
            started, self._started = self._started, []
            results, self._results = self._results, []
        if started or results:
            self.conn.send((wire.EVENTS, started, results))
        return bool(started or results)

    def _send_loop(self) -> None:
        last = time.monotonic()
        busy = last  # when calls last ran here
        tick = START_EVERY_S  # while calls run: longer (to IDLE_TICK_S) while none is reported
        while not self._closing:
            self._wake.wait(tick if self._ticking else wire.HEARTBEAT_S)
            self._wake.clear()
            now = time.monotonic()
            with self._lock:
                if self._futures or self._started:
                    busy = now
                elif now - busy > IDLE_TICK_S:
                    self._ticking = False  # nothing ran for a while: sleep until a call starts
            try:
                with self._out:
                    if self._closing:
                        return
                    if self._send_events():
                        last = time.monotonic()
                        tick = START_EVERY_S
                    else:
                        tick = min(2 * tick, IDLE_TICK_S)
                    if time.monotonic() - last >= wire.HEARTBEAT_S:
                        self.conn.send((wire.PING,))
                        last = time.monotonic()
            except OSError:
                return  # the reader sees the connection end too

    # ------------------------------------------------------------------ calls in

    def serve(self) -> str:
        """Take calls until the block ends; why it ended."""
        self._sender.start()
        timer = threading.Timer(max(0.0, self.deadline - time.monotonic()), self._walltime)
        timer.daemon = True
        timer.start()
        try:
            while True:
                try:
                    msg = self.conn.recv()
                except (EOFError, OSError):
                    return self.reason or "the submitter's connection was lost"
                kind = msg[0]
                if kind == wire.CALLS:
                    self._calls(msg[1])
                elif kind == wire.CANCEL:
                    for call_id in msg[1]:
                        fut = self._futures.get(call_id)
                        if fut is not None:
                            fut.cancel()
                elif kind == wire.EXIT:
                    return "released by the submitter"
        finally:
            timer.cancel()
            self.stop()

    def _calls(self, calls: list[tuple[Any, ...]]) -> None:
        recv_ns = time.time_ns()
        prepared = []
        for call_id, digest, fn, args, fn_name, cpus, gpus, memory_mb, timeout_s, path in calls:
            if fn is None:
                fn = self._fns[digest]
            else:
                self._fns[digest] = fn
            key = (cpus, gpus, memory_mb, timeout_s)
            res = self._res.get(key)
            if res is None:
                res = self._res[key] = Resources(cpus, gpus, memory_mb, timeout_s)
            fut = _BlockFuture(self, call_id, timeout_s, recv_ns)
            self._futures[call_id] = fut
            try:
                fields = (digest, fn, args, cpus, gpus, fn_name, path, memory_mb)
                prepared.append(self.pool.prepare(CallSpec(run_shipped, fields, {}, res, fut)))
            except Exception as exc:  # this block cannot take it (a ResourceError)
                fut.set_running_or_notify_cancel()
                fut.set_exception(exc)
        if prepared:
            try:
                self.pool.dispatch(prepared)
            except Exception as exc:  # the pool is shutting down: the block ends
                for p in prepared:
                    with contextlib.suppress(Exception):
                        p.future.set_exception(exc)

    # ------------------------------------------------------------------ the end

    def _walltime(self) -> None:
        """The replies so far, then BYE, then the end: calls that ended before the walltime
        keep their results; those still running are the submitter's to fail."""
        self.reason = "the block reached its walltime"
        with self._out, contextlib.suppress(OSError):
            self._closing = True
            self._send_events()
            self.conn.send((wire.BYE, self.reason))
            self._said_bye = True
        self.close_connection()

    def close_connection(self) -> None:
        """Make the reader's ``recv`` return (from another thread or a signal handler); what
        is still to send can be sent."""
        with contextlib.suppress(OSError):
            self.conn.sock.shutdown(socket.SHUT_RD)

    def halt(self) -> None:
        """SIGTERM (``scancel``): the calls that end from now on were stopped with the block
        (the submitter fails those that began); what ended before still goes back."""
        self._closing = True
        self.reason = "stopped by SIGTERM (scancel)"
        self.close_connection()

    def stop(self) -> None:
        """The connection first (the last events, then closed: the submitter settles the
        calls that were running here), then the pool and its processes."""
        self._closing = True  # from here on_done reports nothing: the submitter settles
        with contextlib.suppress(Exception):
            # nothing more begins (not even a call its pool requeued after a worker died, as
            # SIGTERM reaches the workers too): the events below are complete
            self.pool.shutdown(wait=False, cancel_futures=True)
        with self._out, contextlib.suppress(OSError):
            self._send_events()
            if self.reason and not self._said_bye:  # ending on its own (SIGTERM): the
                # submitter may run elsewhere what it was sent and did not hear began
                self.conn.send((wire.BYE, self.reason))
                self._said_bye = True
        self._wake.set()
        with contextlib.suppress(OSError):
            self.conn.close()
        self.pool.shutdown(wait=False, cancel_futures=True)


def _reply_of(fut: _BlockFuture) -> Reply:
    """The reply the submitter gets for a call the pool ended: run_payload's own, or the
    pool's error (a timeout, a worker that died, a cancellation) as one."""
    if fut._state != "FINISHED":  # cancelled while queued in the pool
        exc: BaseException | None = CallCancelled(f"call {fut.invocation_id} was cancelled")
    else:
        exc = fut._exception
    if exc is None and type(fut._result) is tuple:
        return Reply(*fut._result)
    if exc is None:
        exc = RuntimeError(f"the block's pool returned {type(fut._result).__name__}")
    end = time.time_ns()
    st = fut._stamps
    ran_ns = st.compute_ns if st is not None else 0
    if not ran_ns and isinstance(exc, CallTimeout) and fut.timeout_s:
        ran_ns = int(fut.timeout_s * 1e9)  # the pool killed it at its deadline
    return error_reply(exc, end - ran_ns, end)


# ---------------------------------------------------------------------- start-up


def block_cores(cpus: int) -> list[int]:
    """The cores of this block: its affinity when Slurm confines it (task/affinity, cgroup),
    else the CPU ids Slurm gave the job on this node (``scontrol show job -d``), else the
    first ``cpus`` cores."""
    affinity = sorted(os.sched_getaffinity(0))
    if len(affinity) <= cpus:
        return affinity
    job = os.environ.get("SLURM_JOB_ID")
    if job:
        with contextlib.suppress(OSError, subprocess.SubprocessError, ValueError):
            out = subprocess.run(["scontrol", "show", "job", "-d", job], capture_output=True,
                                 text=True, timeout=10).stdout  # fmt: skip
            node = os.environ.get("SLURMD_NODENAME", "")
            for line in out.splitlines():
                m = re.search(r"Nodes=(\S+)\s+CPU_IDs=([\d,\-]+)", line)
                if m and (not node or node in m.group(1) or "[" in m.group(1)):
                    ids = _parse_ids(m.group(2))
                    if len(ids) == cpus and set(ids) <= set(affinity):
                        return ids
    return affinity[:cpus]


def _parse_ids(text: str) -> list[int]:
    ids: list[int] = []
    for part in text.split(","):
        lo, _, hi = part.partition("-")
        ids += range(int(lo), int(hi or lo) + 1)
    return sorted(set(ids))


def slurm_left_s() -> float | None:
    """Seconds to this job's end in Slurm (``squeue %e``), or None outside a Slurm job."""
    job = os.environ.get("SLURM_JOB_ID")
    if not job:
        return None
    try:
        out = subprocess.run(["squeue", "-h", "-j", job, "-o", "%e"], capture_output=True,
                             text=True, timeout=10).stdout.strip()  # fmt: skip
        end = dt.datetime.fromisoformat(out.splitlines()[0].strip()).timestamp()
    except (OSError, subprocess.SubprocessError, ValueError, IndexError):
        return None
    return end - time.time()


def connect(host: str, port: int, key: bytes, block_id: int) -> wire.Connection:
    """Reach the submitter and prove both sides; retries while it cannot be reached."""
    until = time.monotonic() + CONNECT_FOR_S
    while True:
        try:
            sock = socket.create_connection((host, port), timeout=10)
            break
        except OSError:
            if time.monotonic() >= until:
                raise
            time.sleep(0.2)
    try:
        wire.client_handshake(sock, key, block_id)
    except BaseException:
        sock.close()
        raise
    sock.settimeout(wire.DEAD_AFTER_S)  # the submitter pings: silence this long, it is gone
    return wire.Connection(sock)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m hetfaas.backends.pilot.agent")
    p.add_argument("--connect", required=True, help="HOST:PORT of the submitter")
    p.add_argument("--secret", required=True, help="the executor's secret file (mode 0600)")
    p.add_argument("--block", type=int, required=True, help="this block's id")
    p.add_argument("--walltime", type=float, required=True, help="seconds this block lives")
    p.add_argument("--cpus", type=int, default=1)
    p.add_argument("--gpus", type=int, default=0)
    p.add_argument("--memory-mb", type=int, default=None)
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s pilot %(levelname)s %(message)s")
    args = parse_args(argv)
    host, _, port = args.connect.rpartition(":")
    key = wire.read_secret(args.secret)
    age_s = max(0.0, (time.time_ns() - (_process_start_ns() or time.time_ns())) / 1e9)
    left: list[float | None] = [None]
    probe = threading.Thread(target=lambda: left.__setitem__(0, slurm_left_s()), daemon=True)
    probe.start()
    from ..local import LocalBackend

    cores = block_cores(args.cpus)
    # The agent's own threads run on the block's cores too, as a task plug-in of Slurm
    # would confine them: they work while the block's calls wait for them, a hand-off there
    # is a switch on a core that is awake, and no core outside the block is taken.
    with contextlib.suppress(OSError):
        os.sched_setaffinity(0, cores)
    pool = LocalBackend(cpus=cores, gpus=args.gpus, memory_mb=args.memory_mb,
                        max_workers=len(cores), keep_alive_s=args.walltime)  # fmt: skip
    warm = threading.Thread(target=pool.warmup, args=(len(cores), Resources()), daemon=True)
    warm.start()
    try:
        conn = connect(host.strip("[]"), int(port), key, args.block)
    except (OSError, wire.AuthenticationFailed) as exc:
        _log.error("block %d cannot join the pool at %s: %s", args.block, args.connect, exc)
        pool.shutdown(wait=False, cancel_futures=True)
        return 3
    probe.join(15)
    left_s = args.walltime - age_s
    if left[0] is not None:
        left_s = min(left_s, left[0] - SLURM_END_MARGIN_S)
    agent = Agent(conn, pool, args.block, left_s)

    signal.signal(signal.SIGTERM, lambda *_: agent.halt())
    info = {"job_id": os.environ.get("SLURM_JOB_ID", ""), "host": socket.gethostname(),
            "pid": os.getpid(), "cpus": list(cores), "gpus": list(pool.gpu_ids),
            "left_s": left_s, "python": sys.version.split()[0]}  # fmt: skip
    conn.send((wire.HELLO, info))
    _log.info("block %d joined %s: cores %s, %.0f s to its walltime", args.block, args.connect,
              cores, left_s)  # fmt: skip
    reason = agent.serve()
    _log.info("block %d ends: %s", args.block, reason)
    return 0


if __name__ == "__main__":
    sys.exit(main())
