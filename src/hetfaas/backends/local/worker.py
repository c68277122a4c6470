"""A warm worker of the local pool: ``python -m hetfaas.backends.local.worker FD INDEX CONTROL``.

Started with ``subprocess`` rather than ``multiprocessing`` so the caller's ``__main__`` is
never re-imported. It owns the cores it is pinned to for each call and the GPUs in its
``CUDA_VISIBLE_DEVICES``; it keeps functions by digest and shared-memory mappings across calls.
"""

from __future__ import annotations

import contextlib
import importlib
import io
import os
import pickle
import resource
import signal
import struct
import sys
import threading
import time
import weakref
from typing import Any

from ... import serialize
from ..._threads import ThreadPools
from ...shm import AttachCache, Segment, SegmentPool
from .. import errors
from . import protocol as P

FLUSH_NS = 2_000_000  # a reply waits at most this long for the next ones of its batch
LONG_NS = 100_000  # the reply of a call that took longer than this is sent at once
FLUSH_COUNT = 256


def _watch_parent(parent: int) -> None:
    """Exit when the caller is gone, even while a call is running."""
    while True:
        time.sleep(1.0)
        if os.getppid() != parent:
            os._exit(0)


class Worker:
    def __init__(self, conn: P.Channel, index: int, control: Segment) -> None:
        self.conn = conn
        self.index = index
        self.control = control.mmap
        self.functions: dict[bytes, Any] = {}
        self.attach = AttachCache()
        self.results = SegmentPool(f"r{index}", max_idle_bytes=2 << 30)
        self.cpus: tuple[int, ...] = tuple(sorted(os.sched_getaffinity(0)))
        self.pools = ThreadPools()
        self.running = 0  # the seq of the call being run
        self.in_fn = False  # inside the user's function: a cancel may interrupt it
        self.n_modules = len(sys.modules)  # libraries are looked up again when this grows
        self.spin_ns = int(float(os.environ.get("HETFAAS_SPIN_US", "0")) * 1000)
        self.gpu_meter: Any = None  # a GpuMeter, made for the first measured call on a GPU
        self.has_gpus = bool(os.environ.get("CUDA_VISIBLE_DEVICES", "").strip())

    def pin(self, cpus: tuple[int, ...], for_call: bool = True) -> None:
        """Own these cores: affinity, and as many threads as cores in every thread pool
        (torch's inter-op pool: those of the first call, as it can be sized only once)."""
        if cpus and cpus != self.cpus:
            # OSError: cores this process may not use (a cgroup shrank): it keeps its own
            with contextlib.suppress(OSError):
                os.sched_setaffinity(0, cpus)
            self.cpus = cpus
        self.pools.size(len(self.cpus), interop=for_call)

    def on_cancel(self, signum: int, frame: Any) -> None:
        """SIGUSR1: the caller cancelled a call. Interrupt the function if it is the one
        running; a signal that comes late (the function already returned) is ignored."""
        if self.in_fn and self.cancel_seq() == self.running:
            raise CallInterrupted

    def cancel_seq(self) -> int:
        return struct.unpack_from("<q", self.control, self.index * P.CONTROL_SLOT + 16)[0]

    def run(self) -> None:
        recv, pack, spin = self.conn.recv, struct.pack_into, self.conn.spin
        while True:
            spin(self.spin_ns)
            try:
                data = recv()
            except (EOFError, OSError):
                return
            recv_ns = time.perf_counter_ns()
            msg = pickle.loads(data)
            if msg[0] == P.EXIT:
                return
            _, calls, releases = msg
            for name in releases:  # result segments free again, argument segments given up
                seg = self.results.get(name)
                if seg is not None:
                    self.results.release(seg)
                else:
                    self.attach.forget(name)
            pending: list[tuple[Any, ...]] = []
            first = 0
            slot = self.index * P.CONTROL_SLOT
            for call in calls:
                t_call = time.perf_counter_ns()
                self.running = call[0]
                pack("<qq", self.control, slot, call[0], 0)
                if self.cancel_seq() == call[0]:  # cancelled before it began: do not run it
                    pending.append((call[0], P.CANCELLED, b"", (), t_call, t_call, t_call, 0,
                                    "", "", [], -1, 0, None, None, recv_ns))  # fmt: skip
                else:
                    pending.append((*self.execute(call), recv_ns))
                now = time.perf_counter_ns()
                if not first:
                    first = now
                # Short calls share a message; a reply never waits behind a long call.
                if len(pending) >= FLUSH_COUNT or now - first >= FLUSH_NS or now - t_call > LONG_NS:
                    self.conn.send(pickle.dumps((P.RESULTS, pending), protocol=5))
                    pending, first = [], 0
            if pending:
                self.conn.send(pickle.dumps((P.RESULTS, pending), protocol=5))
            self.running = 0
            pack("<qq", self.control, slot, 0, 0)

    def execute(self, call: tuple[Any, ...]) -> tuple[Any, ...]:
        seq, digest, payload, data, descs, cpus, capture, measure = call
        deser_ns = time.perf_counter_ns()
        fn_load_ns = start_ns = 0
        views: list[tuple[weakref.ref[Any], str]] = []
        out = err = ""
        cpu0 = cpu_ns = -1  # -1: not measured (a short call: the clocks cost more than it)
        meter: Any = None
        gpu_util = gpu_mem = None  # a call holding GPUs: mean utilisation %, peak memory MiB
        try:
            fn = self.functions.get(digest)
            if fn is None:
                if payload is None:
                    raise RuntimeError("worker has no function for this digest (protocol error)")
                fn = serialize.load_function(payload)
                self.functions[digest] = fn
                fn_load_ns = time.perf_counter_ns() - deser_ns
            n_modules, t_args = len(sys.modules), time.perf_counter_ns()
            if descs:
                args, kwargs = serialize.loads(
                    data, descs, self.attach, lambda v, name: views.append((weakref.ref(v), name))
                )
            else:
                args, kwargs = pickle.loads(data)
            if len(sys.modules) != n_modules:  # unpickling imported modules: a cold start
                fn_load_ns += time.perf_counter_ns() - t_args
            if cpus != self.cpus or len(sys.modules) != self.n_modules:
                self.n_modules = len(sys.modules)
                self.pin(cpus)
            start_ns = time.perf_counter_ns()
            struct.pack_into("<q", self.control, self.index * P.CONTROL_SLOT + 8, start_ns)
            self.in_fn = True  # from here SIGUSR1 may interrupt (see on_cancel)
            meter = self._meter() if measure and self.has_gpus else None
            if meter is not None:
                meter.start()
            if measure:
                cpu0 = time.process_time_ns()
            if capture:
                so, se = io.StringIO(), io.StringIO()
                with contextlib.redirect_stdout(so), contextlib.redirect_stderr(se):
                    try:
                        value = fn(*args, **kwargs)
                    finally:
                        out, err = so.getvalue(), se.getvalue()
            else:
                value = fn(*args, **kwargs)
            self.in_fn = False
            end_ns = time.perf_counter_ns()
            if measure:
                cpu_ns = time.process_time_ns() - cpu0
            if meter is not None:
                gpu_util, gpu_mem = meter.stop()
            del args, kwargs
            if serialize.plain(value):
                reply = (seq, P.VALUE, pickle.dumps(value, protocol=5), ())
            else:
                sink = serialize.BufferSink(self.results)
                try:
                    rdata = serialize.dumps(value, sink, what=f"the result of {_name(fn)}")
                finally:
                    del value
                reply = (seq, P.VALUE, rdata, sink.descs)
        except CallInterrupted:
            self.in_fn = False
            end_ns = time.perf_counter_ns()
            start_ns = start_ns or end_ns
            reply = (seq, P.CANCELLED, b"", ())
        except BaseException as exc:  # everything the function raises goes back to the caller
            self.in_fn = False
            end_ns = time.perf_counter_ns()
            if cpu0 >= 0:
                cpu_ns = time.process_time_ns() - cpu0
            if meter is not None:
                gpu_util, gpu_mem = meter.stop()
            start_ns = start_ns or end_ns
            reply = (seq, P.EXCEPTION, errors.encode(exc), ())
            exc.__traceback__ = None
            del exc
        retained = [name for ref, name in views if ref() is not None and "-a-" in name]
        maxrss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss if cpu_ns >= 0 else 0
        return (*reply, deser_ns, start_ns, end_ns, fn_load_ns, out, err, retained, cpu_ns, maxrss,
                gpu_util, gpu_mem)  # fmt: skip

    def _meter(self) -> Any:
        if self.gpu_meter is None:
            from ...monitor.gpucall import GpuMeter

            self.gpu_meter = GpuMeter()
        return self.gpu_meter


class CallInterrupted(BaseException):
    """Raised inside the user's function by :meth:`Worker.on_cancel`."""


def _name(fn: Any) -> str:
    return getattr(fn, "__qualname__", None) or repr(fn)


def main(argv: list[str]) -> int:
    fd, index, control_name = int(argv[0]), int(argv[1]), argv[2]
    preload = [m for m in argv[3].split(",") if m] if len(argv) > 3 else []
    if len(argv) > 4:
        with contextlib.suppress(OSError):  # a core this process may not use: keep its own
            os.sched_setaffinity(0, {int(argv[4])})
    conn = P.Channel(fd)
    threading.Thread(target=_watch_parent, args=(os.getppid(),), daemon=True).start()
    t0 = time.perf_counter_ns()
    for module in preload:
        with contextlib.suppress(Exception):
            importlib.import_module(module)
    worker = Worker(conn, index, Segment.attach(control_name))
    signal.signal(signal.SIGUSR1, worker.on_cancel)
    worker.pin(worker.cpus, for_call=False)
    try:
        ready_ns = time.perf_counter_ns()
        conn.send(pickle.dumps((P.READY, os.getpid(), ready_ns, ready_ns - t0)))
        worker.run()
    except (BrokenPipeError, ConnectionResetError):
        pass  # the caller went away or shut the pool down while this worker started
    finally:
        worker.results.close()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
