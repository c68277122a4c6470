"""The submitter's records of the pilot's calls and blocks, and how a block's reply settles a
call's future with its timings."""

from __future__ import annotations

import math
import threading
import time
from typing import Any

from ..._future import Future
from ..._invocation import Stamps
from ..contract import complete as settle
from ..remote import Payload, Reply, outcome, reply_gpus, usage_of_reply
from . import wire
from .reader import BlockReader
from .strategy import DRAINING, PENDING, RUNNING, BlockView, Pilot

GONE = "gone"


class Call:
    """One call of the pilot, from ``prepare`` until its future is settled."""

    __slots__ = ("block", "future", "id", "payload", "res", "sent_ns", "started", "taken")

    def __init__(self, future: Future, payload: Payload, res: Any, call_id: int) -> None:
        self.future = future
        self.payload = payload
        self.res = res
        self.id = call_id
        self.block: Block | None = None  # where it is now (None: in the submitter's queue)
        self.taken = False  # RUNNING (contract.start) since it first went to a block
        self.started = False  # its block says it began
        self.sent_ns = 0


class Block:
    """One block: a job in the engine and, once it joined, its connection."""

    def __init__(self, block_id: int, pilot: Pilot) -> None:
        self.id = block_id
        self.job_id = ""
        self.state = PENDING
        self.cpus = pilot.cpus
        self.gpus = pilot.gpus
        self.conn: wire.Connection | None = None
        self.reader: BlockReader | None = None  # reads conn once the block joined
        self.calls: dict[int, Call] = {}
        self.load = 0  # cores of its calls
        self.gload = 0.0  # GPUs of its calls
        self.launched = time.monotonic()
        self.launched_ns = time.time_ns()
        self.ready = 0.0
        self.ready_ns = 0
        self.deadline = math.inf
        self.idle_since = self.launched
        self.last_recv = 0.0
        self.frames = 0  # received since it joined (HELLO aside)
        self.last_sent = 0.0
        self.shipped: set[bytes] = set()
        self.outbox: list[tuple[Any, ...]] = []
        self.sending = False
        self.send_lock = threading.Lock()
        self.released = 0.0  # when it was released (0: not)
        self.engine_running = 0.0  # when Slurm first said RUNNING while it had not joined
        self.info: dict[str, Any] = {}
        self.bye = ""

    def phase(self, now: float, drain_s: float) -> str:
        """PENDING, RUNNING, DRAINING (released, or within ``drain_s`` of its walltime)."""
        if self.released or (self.state == RUNNING and now + drain_s > self.deadline):
            return DRAINING
        return self.state

    def view(self, now: float, drain_s: float) -> BlockView:
        idle = None if self.calls else self.idle_since
        return BlockView(self.id, self.phase(now, drain_s), len(self.calls), idle)


def settle_reply(
    call: Call, b: Block, reply: Reply, cold_ns: int, tin_ns: int, recv_ns: int, backend: str
) -> None:
    """Settle ``call`` from its block's reply, with timings on wall clocks (as
    :func:`hetfaas.backends.remote.complete`: exact on one machine, with the clocks' skew
    across machines). Cold start: the wait for the block's launch (a call submitted before
    its block joined), the block pool's wait for a worker (``cold_ns``) and loading the
    function. Transfer in: pickling, the hop to the block, the pool's hop to its worker
    (``tin_ns``) and unpickling. Queue: the rest before the call began (the submitter's queue
    and the block pool's)."""
    fut = call.future
    done = time.time_ns()
    value, exc = outcome(reply, fut.invocation_id)
    p = call.payload
    t0 = p.submitted_ns
    total = done - t0
    compute = reply.end_ns - reply.start_ns
    launch_wait = b.ready_ns - max(t0, b.launched_ns) if t0 < b.ready_ns else 0
    cold = max(0, launch_wait) + cold_ns + reply.load_ns
    t_in = (p.pickled_ns - t0) + max(0, recv_ns - call.sent_ns) + tin_ns + max(
        0, reply.start_ns - reply.begin_ns - reply.load_ns)  # fmt: skip
    t_out = max(0, done - reply.end_ns)
    queue = total - cold - t_in - compute - t_out
    if queue < 0:  # clocks of two machines, or coarse stamps: take it from the others
        short = -queue
        cut = min(cold, short)
        cold, short = cold - cut, short - cut
        cut = min(t_in, short)
        t_in, short = t_in - cut, short - cut
        t_out, queue = max(0, t_out - short), 0
    stamps = Stamps(queue, cold, t_in, compute, t_out, queue + cold + t_in + compute + t_out,
                    t0, reply.start_ns, reply.end_ns, done, -1, reply.pid, reply.cpus,
                    reply_gpus(reply), backend)  # fmt: skip
    settle(fut, value, error=exc, timings=stamps, usage=usage_of_reply(reply, p))


__all__ = ["GONE", "Block", "Call", "settle_reply"]
