"""Messages between the caller and a local worker (pickled tuples; the first item is the kind).

caller -> worker
    (CALLS, [call, ...], releases)   call = (seq, digest, fn_payload | None, data, descs, cpus,
                                     capture_output, measure); releases: result segments the
                                     caller no longer uses, and argument segments it gave up
    (EXIT,)
worker -> caller
    (READY, pid, ready_ns, preload_ns)
    (RESULTS, [reply, ...])          reply = (seq, status, data, descs, deser_ns, start_ns,
                                     end_ns, fn_load_ns, stdout, stderr, retained, cpu_ns,
                                     maxrss_kb, gpu_util, gpu_mem_mb, recv_ns)

``measure``: the worker reads its CPU time around the function and its peak RSS after it
(``cpu_ns`` -1 and ``maxrss_kb`` 0 when it did not), and, for a worker holding GPUs, the
call's mean GPU utilisation and peak GPU memory (:mod:`hetfaas.monitor.gpucall`; None when
not known).

``status`` is VALUE, EXCEPTION (data: what ``hetfaas.backends.errors.encode`` made) or
CANCELLED (the call was cancelled: interrupted, or skipped before it began).

Each worker has a slot of CONTROL_SLOT bytes in the pool's control segment: int64 seq of the
call it runs (0 between messages), int64 start_ns (0 until the function itself starts: the
run-time clock of ``timeout_s``), int64 cancel_seq (written by the caller: the call to skip
or, with SIGUSR1, to interrupt). So the caller knows which call a dead worker was running.
"""

import os
import select
import struct
import time

CALLS = 1
EXIT = 2
READY = 3
RESULTS = 4

VALUE = 0
EXCEPTION = 1
CANCELLED = 2

CONTROL_SLOT = 32  # bytes per worker in the control segment (see above)


_HEADER = struct.Struct("!Q")


class Poller:
    """The set of sockets the caller reads (the workers' and a wake-up pipe): an epoll, so
    one descriptor, :meth:`fileno`, is readable when any of them is (an asyncio loop can
    watch the whole pool with one reader). ``poll`` takes milliseconds, -1 to block."""

    __slots__ = ("_ep",)

    def __init__(self) -> None:
        self._ep = select.epoll()

    def register(self, fd: int) -> None:
        self._ep.register(fd, select.EPOLLIN)

    def unregister(self, fd: int) -> None:
        self._ep.unregister(fd)

    def poll(self, ms: int) -> list[tuple[int, int]]:
        return self._ep.poll(-1 if ms < 0 else ms / 1000)

    def fileno(self) -> int:
        return self._ep.fileno()

    def close(self) -> None:
        self._ep.close()


class Channel:
    """Length-prefixed messages over a stream socket (one per worker).

    Cheaper than ``multiprocessing.connection.Connection`` on the hot path: a small message is
    one ``writev`` and, on the other side, usually one ``read`` that may also bring the next
    messages, which stay buffered.
    """

    __slots__ = ("_buf", "_poller", "fd")

    def __init__(self, fd: int) -> None:
        self.fd = fd
        self._buf = bytearray()
        self._poller: select.poll | None = None

    def spin(self, ns: int) -> None:
        """Busy-wait up to ``ns`` for data before a blocking read. On a VM, waking a halted
        vCPU costs more than a small call; a short spin after each reply catches the next
        request while this CPU is still awake."""
        if ns <= 0 or self.has_message():
            return
        if self._poller is None:
            self._poller = select.poll()
            self._poller.register(self.fd, select.POLLIN)
        poll, clock = self._poller.poll, time.perf_counter_ns
        until = clock() + ns
        while not poll(0) and clock() < until:
            pass

    def has_message(self) -> bool:
        buf = self._buf
        return len(buf) >= 8 and len(buf) >= 8 + _HEADER.unpack_from(buf)[0]

    def fileno(self) -> int:
        return self.fd

    def send(self, data: bytes) -> None:
        parts = [memoryview(_HEADER.pack(len(data))), memoryview(data)]
        while parts:
            n = os.writev(self.fd, parts)
            while parts and n >= len(parts[0]):
                n -= len(parts[0])
                parts.pop(0)
            if parts and n:
                parts[0] = parts[0][n:]

    def _take(self) -> bytes | None:
        buf = self._buf
        if len(buf) < 8:
            return None
        (size,) = _HEADER.unpack_from(buf)
        end = 8 + size
        if len(buf) < end:
            return None
        msg = bytes(buf[8:end])
        del buf[:end]
        return msg

    def _fill(self, at_least: int) -> None:
        chunk = os.read(self.fd, max(1 << 16, at_least))
        if not chunk:
            raise EOFError("channel closed")
        self._buf += chunk

    def recv(self) -> bytes:
        """Block until one whole message is here."""
        while True:
            msg = self._take()
            if msg is not None:
                return msg
            need = 8 if len(self._buf) < 8 else 8 + _HEADER.unpack_from(self._buf)[0]
            self._fill(need - len(self._buf))

    def recv_ready(self) -> list[bytes]:
        """After poll said readable: one read, and every whole message now buffered."""
        need = 8 if len(self._buf) < 8 else 8 + _HEADER.unpack_from(self._buf)[0]
        self._fill(need - len(self._buf))
        out = []
        while (msg := self._take()) is not None:
            out.append(msg)
        return out

    def close(self) -> None:
        """Close once: a second close (a death seen while the pool stops the worker) must not
        close a descriptor the process has opened since under the same number."""
        fd, self.fd = self.fd, -1
        if fd >= 0:
            os.close(fd)
