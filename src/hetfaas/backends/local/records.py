"""Records the local pool keeps: one per call in flight, one per worker process."""

from __future__ import annotations

import contextlib
import signal
import weakref
from collections import deque

from ...exceptions import CallCancelled, CallTimeout, WorkerDied

STARTING, IDLE, BUSY, DEAD = "starting", "idle", "busy", "dead"


class CallRecord:
    """One call from submit to its result."""

    __slots__ = (
        "cancelled", "capture", "cold_ns", "data", "descs", "digest", "fn_name", "future", "leases",
        "payload", "resources", "started", "t_bind", "t_disp", "t_ser", "t_submit",
    )  # fmt: skip

    def __init__(self) -> None:
        self.cold_ns = 0
        self.started = False
        self.cancelled = False


class WorkerHandle:
    """One worker process, as the pool sees it."""

    __slots__ = (
        "__weakref__",
        "conn",
        "cpus",
        "fd",
        "gpu_share",
        "gpus",
        "idle_since",
        "index",
        "inflight",
        "kill_at",
        "killed",
        "memory_mb",
        "pid",
        "proc",
        "ready_ns",
        "releases",
        "replaces_ns",
        "shipped",
        "spawn_ns",
        "state",
        "timed_out",
        "timed_seq",
        "timeout_ns",
    )  # fmt: skip

    def __init__(self, index: int, gpus: tuple[int, ...]) -> None:
        self.index = index
        self.gpus = gpus
        self.gpu_share = 0.0
        self.memory_mb = 0
        self.cpus: tuple[int, ...] = ()
        self.state = STARTING
        self.inflight: deque[CallRecord] = deque()
        self.shipped: set[bytes] = set()
        self.releases: deque[str] = deque()
        self.timeout_ns = 0  # the timeout_s of the timed call it runs, and that call's seq
        self.timed_seq = 0
        self.kill_at = 0  # a cancelled call's grace ends
        self.killed = False  # the pool sent SIGKILL
        self.timed_out = False
        self.replaces_ns = 0  # started to replace a worker that died then
        self.spawn_ns = 0  # asked for (a fork server's own start included)
        self.pid = 0
        self.ready_ns = 0
        self.idle_since = 0


def death_error(w: WorkerHandle, call: CallRecord, code: int | None) -> BaseException:
    """The error for the call a dead worker was running: timeout or crash, said plainly."""
    iid = call.future.invocation_id
    if call.cancelled:
        return CallCancelled(f"call {iid} ({call.fn_name}) was cancelled", iid)
    if w.timed_out:
        return CallTimeout(
            f"call {iid} ({call.fn_name}) ran past its timeout_s={call.resources.timeout_s}"
            f"; its worker (pid {w.pid}) was killed",
            iid,
        )
    how = f"exit code {code}"
    if code is not None and code < 0:
        with contextlib.suppress(ValueError):
            how = f"killed by {signal.Signals(-code).name}"
    return WorkerDied(
        f"the worker running call {iid} ({call.fn_name}) died ({how}); the pool replaced "
        "it. A segfault, os._exit or the kernel's OOM killer can cause this.",
        iid,
        code,
    )


def release_result(ref: weakref.ref[WorkerHandle], pid: int, name: str) -> None:
    w = ref()
    if w is not None and w.pid == pid and w.state != DEAD:
        w.releases.append(name)
