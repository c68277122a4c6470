"""Reading a block's connection on the submitter: a reader thread, or the caller itself.

Each joined block has one :class:`BlockReader`. Its thread reads the block's frames and hands
them to the backend; a reply then settles its future, and the thread waiting on that future
wakes: two thread switches on the way back. A caller waiting on a call that is at this block
takes the *read role* instead (leader/follower, as the local pool does with its workers'
pipes): the reader thread steps aside while any caller waits, and the caller reads the
socket, handles every frame that comes (other calls' replies too) and returns once its own
future is done, saving one switch per call. The thread takes the role back only ``NAP_S``
after the last caller left, so a caller that waits call after call neither pokes it aside nor
wakes it each time (two more switches per call, both on the caller's way).

Only the holder of the role reads (the connection's buffer is not shared between threads);
frames are handled one at a time, in order. Whoever meets the connection's end reports it to
the backend, once.
"""

from __future__ import annotations

import contextlib
import os
import pickle
import select
import threading
import time
from collections.abc import Callable
from typing import Any

from . import wire

ROLE_WAIT_S = 0.001  # a caller asks again this often for the role it was refused
SELECT_S = 0.05  # a role holder looks up from the socket this often (its future, a deadline)
NAP_S = 0.02  # the reader thread reads again this long after the last caller left


class BlockReader:
    """The read side of one block's connection (see the module). ``handle`` takes each frame;
    ``on_lost`` is called once when the connection ends (EOF, a broken link, a bad frame)."""

    def __init__(
        self,
        conn: wire.Connection,
        handle: Callable[[tuple[Any, ...]], None],
        on_lost: Callable[[], None],
        name: str,
    ) -> None:
        self.conn = conn
        self._handle = handle
        self._on_lost = on_lost
        self._role = threading.Lock()
        self._cond = threading.Condition()
        self._waiting = 0  # callers that want the role
        self._left = 0.0  # when the last caller left (time.monotonic())
        self._reading = False  # the reader thread holds the role (a caller pokes it aside)
        self._wake_r, self._wake_w = os.pipe()  # a caller's poke: the thread steps aside
        os.set_blocking(self._wake_r, False)
        os.set_blocking(self._wake_w, False)
        self._fds_closed = False
        self.lost = False
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)

    def start(self) -> None:
        self._thread.start()

    # ------------------------------------------------------------------ the reader thread

    def _run(self) -> None:
        try:
            while not self.lost:
                with self._cond:  # callers read meanwhile: wait until none is left for NAP_S
                    while not self.lost:
                        nap = NAP_S if self._waiting else self._left + NAP_S - time.monotonic()
                        if nap <= 0:
                            break
                        self._cond.wait(nap)
                    if self.lost:
                        break
                    self._reading = True  # (with no caller waiting, under the condition)
                try:
                    with self._role:
                        self._drain_wake()  # (a poke drained here was counted in _waiting first)
                        while not self.lost and not self._waiting:
                            self._read_one(None, wake=True)
                finally:
                    self._reading = False
        finally:
            with self._cond:  # no caller writes to the pipe once it is closed
                while self._waiting:
                    self._cond.wait(0.5)
                self._fds_closed = True
                for fd in (self._wake_r, self._wake_w):
                    with contextlib.suppress(OSError):
                        os.close(fd)

    def _drain_wake(self) -> None:
        with contextlib.suppress(OSError):
            os.read(self._wake_r, 4096)

    # ------------------------------------------------------------------ a caller

    def wait_for(self, done: Callable[[], bool], deadline: float | None) -> None:
        """Read this block's frames in the calling thread until ``done()``, the ``deadline``
        (``time.monotonic()``) or the connection's end."""
        with self._cond:
            if self.lost or self._fds_closed:
                return
            self._waiting += 1
            if self._reading:
                with contextlib.suppress(OSError):
                    os.write(self._wake_w, b"\0")  # the reader thread steps aside
        try:
            while not done() and not self.lost:
                if deadline is not None and time.monotonic() >= deadline:
                    return
                if not self._role.acquire(timeout=ROLE_WAIT_S):
                    continue  # another caller reads: it may settle this future too
                try:
                    while not done() and not self.lost:
                        left = None if deadline is None else deadline - time.monotonic()
                        if left is not None and left <= 0:
                            return
                        self._read_one(SELECT_S if left is None else min(left, SELECT_S))
                finally:
                    self._role.release()
        finally:
            with self._cond:
                self._waiting -= 1
                self._left = time.monotonic()
                if self.lost and not self._waiting:  # the reader thread closes the pipe
                    self._cond.notify_all()

    # ------------------------------------------------------------------ the role holder

    def _read_one(self, timeout: float | None, wake: bool = False) -> None:
        """Handle the next frame, waiting up to ``timeout`` for it (the role held). With
        ``wake`` a caller's poke ends the wait too."""
        conn = self.conn
        if not conn.buffered():
            fds: list[Any] = [conn.sock, self._wake_r] if wake else [conn.sock]
            try:
                ready, _, _ = select.select(fds, [], [], timeout)
            except (OSError, ValueError):  # closed under us: the end of the connection
                self._lose()
                return
            if self._wake_r in ready:
                self._drain_wake()
            if conn.sock not in ready:
                return
        try:
            msg = conn.recv()
        except (EOFError, OSError, ValueError, pickle.UnpicklingError):
            self._lose()
            return
        self._handle(msg)

    def _lose(self) -> None:
        with self._cond:
            if self.lost:
                return
            self.lost = True
            self._cond.notify_all()
        self._on_lost()


__all__ = ["BlockReader"]
