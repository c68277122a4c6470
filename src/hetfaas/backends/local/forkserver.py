"""A fork server for the local pool's workers: a new worker in milliseconds, not an interpreter.

Starting a worker with ``subprocess`` costs an interpreter start and the imports (~0.1-0.3 s
here); a pool whose workers die often (a crashing function, the OOM killer, a cluster that
kills processes) would spend its time starting them. The pool therefore starts one server
process per pool, once, with hetfaas and the preloaded modules (numpy, torch) imported, and
asks it to fork each worker. The server runs no thread and no computation, so forking it is
safe; each child reseeds the random generators it inherited.

The server is the workers' parent: it reaps them and reports each one's exit status, which
the pool reads when it handles a death. It exits when the pool's process is gone or closes
its socket; workers exit when the server is gone (they watch their parent).

Protocol over a Unix socketpair (pickled tuples, length-prefixed by ``protocol.Channel``):
the pool sends ``(FORK, index, cpu, env)`` with the worker's end of its socketpair attached
(SCM_RIGHTS); the server answers ``(FORKED, pid)`` and, whenever a child ends,
``(EXITED, pid, returncode)`` (negative: killed by that signal).
"""

from __future__ import annotations

import array
import contextlib
import os
import pickle
import select
import signal
import socket
import subprocess
import sys
import threading
import time
from typing import Any

from . import protocol as P

FORK, FORKED, EXITED = 1, 2, 3
# run as -c, not -m: the package imports this module, and runpy warns about running it twice
_SERVER_MAIN = (
    "import sys; from hetfaas.backends.local.forkserver import main; sys.exit(main(sys.argv[1:]))"
)
_CODES_KEPT = 10_000  # exit statuses nobody asked for yet are kept this many at most


class ForkedProcess:
    """A worker forked by the server, with the part of ``subprocess.Popen`` the pool uses."""

    def __init__(self, server: ForkServer, pid: int) -> None:
        self.server, self.pid = server, pid
        self.returncode: int | None = None

    def poll(self) -> int | None:
        if self.returncode is None:
            self.returncode = self.server.exit_code(self.pid, 0.0)
        return self.returncode

    def wait(self, timeout: float | None = None) -> int | None:
        if self.returncode is None:
            self.returncode = self.server.exit_code(self.pid, timeout)
            if self.returncode is None and timeout is not None and self.server.alive():
                raise subprocess.TimeoutExpired(f"worker {self.pid}", timeout)
        return self.returncode

    def kill(self) -> None:
        with contextlib.suppress(ProcessLookupError):
            os.kill(self.pid, signal.SIGKILL)


class ForkServer:
    """The pool's side of the fork server."""

    def __init__(self, control: str, env: dict[str, str], preload: list[str]) -> None:
        parent, child = socket.socketpair()
        self.proc = subprocess.Popen(
            [sys.executable, "-c", _SERVER_MAIN, str(child.fileno()), control, ",".join(preload)],
            pass_fds=(child.fileno(),), env=env, stdin=subprocess.DEVNULL,
            start_new_session=True,
        )  # fmt: skip
        child.close()
        self.sock = parent
        self.conn = P.Channel(parent.fileno())
        self.codes: dict[int, int | None] = {}
        self.lock = threading.Lock()

    def alive(self) -> bool:
        return self.proc.poll() is None

    def fork(self, index: int, cpu: int, env: dict[str, str], fd: int) -> ForkedProcess:
        """A new worker on ``fd`` (the worker's end of its socketpair); OSError if the server
        is gone (the pool then starts another)."""
        with self.lock:
            data = pickle.dumps((FORK, index, cpu, env))
            header = len(data).to_bytes(8, "big")
            self.sock.sendmsg(
                [header + data], [(socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array("i", [fd]))]
            )
            while True:
                msg = self._read(30.0)
                if msg is None:
                    raise OSError("the fork server did not answer")
                if msg[0] == FORKED:
                    self.codes.pop(msg[1], None)  # a status kept for an earlier process of that pid
                    return ForkedProcess(self, msg[1])

    def _read(self, timeout: float | None) -> tuple[Any, ...] | None:
        """One message (EXITED ones are filed), or None at the timeout (lock held)."""
        if not self.conn.has_message():
            r, _, _ = select.select([self.sock], [], [], timeout)
            if not r:
                return None
        try:
            msg = pickle.loads(self.conn.recv())
        except (EOFError, OSError):
            self.proc.poll()
            raise OSError("the fork server is gone") from None
        if msg[0] == EXITED:
            self.codes[msg[1]] = msg[2]
            while len(self.codes) > _CODES_KEPT:
                self.codes.pop(next(iter(self.codes)))
        return msg

    def exit_code(self, pid: int, timeout: float | None) -> int | None:
        """``pid``'s exit status once the server reports it; None if not within ``timeout``
        (or the server is gone, taking its children's statuses with it). A status is kept,
        not taken, so that every thread waiting for the same process sees it (the pool's
        reader and a shutdown may wait at once); it is dropped when the pid is forked again."""
        end = None if timeout is None else time.monotonic() + timeout
        while True:
            with self.lock:  # in slices, so that forks are not held up meanwhile
                if pid in self.codes:
                    return self.codes[pid]
                left = 0.05 if end is None else min(0.05, end - time.monotonic())
                try:
                    got = self._read(max(0.0, left))
                except OSError:
                    return None
            if got is None and end is not None and time.monotonic() >= end:
                with self.lock:
                    return self.codes.get(pid)

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self.sock.close()
        with contextlib.suppress(Exception):
            self.proc.wait(timeout=2)
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()


# ------------------------------------------------------------------ the server process


def _child(fd: int, index: int, control: str, cpu: int, env: dict[str, str]) -> None:
    """In the forked child: become a worker (never returns)."""
    code = 1
    try:
        signal.set_wakeup_fd(-1)
        signal.signal(signal.SIGCHLD, signal.SIG_DFL)
        os.setsid()
        os.environ.update(env)
        _reseed()
        from . import worker

        code = worker.main([str(fd), str(index), control, "", str(cpu)])
    except BaseException:
        import traceback

        traceback.print_exc()
    finally:
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)


def _reseed() -> None:
    """The generators the server had seeded would give every worker the same numbers."""
    # numpy.random only if the server imported it: numpy loads it lazily on first use (10 ms
    # here, in every worker's cold start), and a fresh import seeds itself from the OS.
    np_random = sys.modules.get("numpy.random")
    if np_random is not None:
        with contextlib.suppress(Exception):
            np_random.seed()
    torch = sys.modules.get("torch")
    if torch is not None:
        with contextlib.suppress(Exception):
            torch.seed()


def serve(fd: int, control: str) -> int:
    sock = socket.socket(fileno=fd)
    conn = P.Channel(fd)
    parent = os.getppid()
    wake_r, wake_w = os.pipe()
    os.set_blocking(wake_w, False)
    signal.set_wakeup_fd(wake_w)
    signal.signal(signal.SIGCHLD, lambda *_: None)
    buf = bytearray()
    pending_fds: list[int] = []
    while True:
        r, _, _ = select.select([sock, wake_r], [], [], 1.0)
        if os.getppid() != parent:
            return 0
        if wake_r in r:
            with contextlib.suppress(OSError):
                os.read(wake_r, 4096)
        while True:  # reap every child that ended
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                break
            if not pid:
                break
            with contextlib.suppress(OSError):
                conn.send(pickle.dumps((EXITED, pid, os.waitstatus_to_exitcode(status))))
        if sock not in r:
            continue
        try:
            data, fds, _, _ = socket.recv_fds(sock, 1 << 16, 4)
        except OSError:
            return 0
        if not data:
            return 0
        buf += data
        pending_fds += fds
        while len(buf) >= 8 and len(buf) >= 8 + int.from_bytes(buf[:8], "big"):
            size = int.from_bytes(buf[:8], "big")
            msg = pickle.loads(bytes(buf[8 : 8 + size]))
            del buf[: 8 + size]
            _, index, cpu, env = msg
            child_fd = pending_fds.pop(0)
            pid = os.fork()
            if pid == 0:
                sock.close()
                for f in (wake_r, wake_w, *pending_fds):
                    with contextlib.suppress(OSError):
                        os.close(f)
                _child(child_fd, index, control, cpu, env)
            os.close(child_fd)
            conn.send(pickle.dumps((FORKED, pid)))


def main(argv: list[str]) -> int:
    import importlib

    fd, control = int(argv[0]), argv[1]
    preload = [m for m in argv[2].split(",") if m] if len(argv) > 2 else []
    # threadpoolctl: every worker sizes its thread pools as it starts (4 ms to import)
    for module in ("hetfaas.backends.local.worker", "threadpoolctl", *preload):
        with contextlib.suppress(Exception):
            importlib.import_module(module)
    return serve(fd, control)
