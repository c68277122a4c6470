"""The submitter's reading of a block's connection (pilot/reader.py), over a real socket pair:
frames are handled in order by the reader thread or by a waiting caller that takes the read
role, and the connection's end is reported once, whoever meets it."""

import socket
import threading
import time

from hetfaas.backends.pilot import wire
from hetfaas.backends.pilot.reader import NAP_S, BlockReader

from ..conftest import thread_switches
from .test_submitit_backend import wait_for


class _Seen:
    def __init__(self) -> None:
        self.frames: list[tuple[str, tuple]] = []
        self.lost: list[str] = []
        self.changed = threading.Event()

    def handle(self, msg: tuple) -> None:
        self.frames.append((threading.current_thread().name, msg))
        self.changed.set()

    def on_lost(self) -> None:
        self.lost.append(threading.current_thread().name)

    def has(self, n: int) -> bool:
        return any(msg == (wire.PING, n) for _, msg in self.frames)


def _pair(seen: _Seen) -> tuple[BlockReader, wire.Connection]:
    a, b = socket.socketpair()
    reader = BlockReader(wire.Connection(a), seen.handle, seen.on_lost, "reader-thread")
    reader.start()
    return reader, wire.Connection(b)


def test_the_reader_thread_handles_frames_when_no_caller_waits():
    seen = _Seen()
    reader, peer = _pair(seen)
    for n in range(3):
        peer.send((wire.PING, n))
    assert wait_for(lambda: len(seen.frames) == 3, 5)
    assert seen.frames == [("reader-thread", (wire.PING, n)) for n in range(3)]
    peer.close()
    assert wait_for(lambda: seen.lost == ["reader-thread"], 5)
    assert reader.lost


def test_a_waiting_caller_reads_its_reply_itself_and_the_thread_resumes_after():
    seen = _Seen()
    reader, peer = _pair(seen)
    peer.send((wire.PING, 0))
    assert wait_for(lambda: seen.has(0), 5)
    threading.Timer(0.2, lambda: [peer.send((wire.PING, n)) for n in (1, 2)]).start()
    reader.wait_for(lambda: seen.has(2), time.monotonic() + 10)  # this thread reads
    assert [name for name, msg in seen.frames if msg[1] in (1, 2)] == ["MainThread"] * 2
    peer.send((wire.PING, 3))  # no caller waits now: the thread takes it
    assert wait_for(lambda: seen.has(3), 5)
    assert seen.frames[-1][0] == "reader-thread"
    assert [msg[1] for _, msg in seen.frames] == [0, 1, 2, 3]  # in order, none twice
    peer.close()
    assert wait_for(lambda: len(seen.lost) == 1, 5)


def test_frames_read_in_one_chunk_are_all_handled():
    seen = _Seen()
    reader, peer = _pair(seen)
    # two frames in one write: the holder of the role reads both with one recv, and the one
    # left in the buffer is handled without waiting for the socket
    bodies = [wire.pickle.dumps((wire.PING, n), protocol=5) for n in (1, 2)]
    peer.sock.sendall(b"".join(wire._HEADER.pack(len(b)) + b for b in bodies))
    reader.wait_for(lambda: seen.has(1), time.monotonic() + 10)
    assert wait_for(lambda: seen.has(2), 5)
    peer.close()


def test_a_caller_gives_up_at_its_deadline_and_the_end_is_reported_once():
    seen = _Seen()
    reader, peer = _pair(seen)
    t0 = time.monotonic()
    reader.wait_for(lambda: False, t0 + 0.3)
    assert 0.25 <= time.monotonic() - t0 < 3
    waiters = [threading.Thread(target=reader.wait_for, args=(lambda: False, None))
               for _ in range(3)]  # fmt: skip
    for t in waiters:
        t.start()
    time.sleep(0.1)
    peer.close()  # met by whichever holds the role
    for t in waiters:
        t.join(5)
        assert not t.is_alive(), "a caller waited on past the connection's end"
    assert wait_for(lambda: len(seen.lost) == 1, 5)
    time.sleep(0.2)
    assert len(seen.lost) == 1
    reader.wait_for(lambda: False, None)  # returns at once: the connection is gone


def test_a_caller_that_waits_call_after_call_leaves_the_thread_asleep():
    # Between one wait and the next the reader thread does not take the role back (it would
    # be poked aside again at once: two thread switches per call on the caller's way), so
    # each reply that comes meanwhile is read by the caller that waits for it.
    seen = _Seen()
    reader, peer = _pair(seen)
    peer.send((wire.PING, 0))
    reader.wait_for(lambda: seen.has(0), time.monotonic() + 10)
    before = thread_switches(reader._thread)
    t0 = time.monotonic()
    for n in range(1, 201):
        peer.send((wire.PING, n))  # the reply is on its way before the caller waits
        reader.wait_for(lambda n=n: seen.has(n), time.monotonic() + 10)
    woke = thread_switches(reader._thread) - before
    naps = (time.monotonic() - t0) / NAP_S  # it looks up once per NAP_S while callers wait
    assert woke <= naps + 5, (woke, naps)  # not once or twice per call (200)
    assert [name for name, msg in seen.frames if msg[1] >= 1] == ["MainThread"] * 200
    assert [msg[1] for _, msg in seen.frames] == list(range(201))
    peer.send((wire.PING, 201))  # and once no caller waits, the thread reads again
    assert wait_for(lambda: seen.has(201), 5)
    assert seen.frames[-1][0] == "reader-thread"
    peer.close()
    assert wait_for(lambda: len(seen.lost) == 1, 5)
