"""Between the submitter and its blocks: a per-executor secret, the handshake, the frames.

**The secret.** :func:`write_secret` makes 32 random bytes (``secrets.token_bytes``) in a file
only its owner can read (0600, created exclusively), in the job folder that the submitter and
the nodes share; a block reads it (:func:`read_secret`, which refuses a file that others may
read). No other user can read it, so no other user's process can join the pool or take calls.

**The handshake** (raw bytes, nothing unpickled before both sides are proven)::

    submitter -> block   MAGIC VERSION nonce_s(32)
    block -> submitter   MAGIC VERSION block_id(u64) nonce_c(32) mac_c(32)
    submitter -> block   mac_s(32)

with ``mac_c = HMAC-SHA256(secret, "hetfaas-pilot-block" nonce_s nonce_c block_id)`` and
``mac_s = HMAC-SHA256(secret, "hetfaas-pilot-submitter" nonce_c nonce_s block_id)``, compared
with :func:`hmac.compare_digest`. Fresh nonces on both sides: a recorded handshake cannot be
replayed, and the block proves the submitter too before it runs anything it sends (a process
that took the submitter's port cannot feed calls to a block). A peer that fails is refused,
logged by the submitter, and its connection closed before any call's bytes move.

**Frames**, once authenticated: an 8-byte big-endian length, then a pickled tuple whose
first item is the kind. The channel is authenticated, not encrypted: on a network others can
read or write, tunnel it (ssh, TLS).

submitter -> block
    (CALLS, [(call_id, digest, fn | None, args, fn_name, cpus, gpus, memory_mb, timeout_s,
    sys_path), ...])  ``fn`` None: the block has this digest's function already
    (CANCEL, [call_id, ...])
    (EXIT,)           end the block (released, or the executor shuts down)
block -> submitter
    (HELLO, info)     a dict: job_id, host, pid, cpus, gpus, left_s (to its walltime), ...
    (EVENTS, started, results)  call ids that began running; results: [(call_id, Reply,
                      cold_ns, transfer_in_ns, recv_ns), ...] (see the agent)
    (BYE, reason)     the block ends on its own (walltime)
both ways
    (PING,)           nothing else to say for HEARTBEAT_S: still alive (a side that hears
                      nothing for DEAD_AFTER_S takes the other as lost)
"""

from __future__ import annotations

import contextlib
import hashlib
import hmac
import os
import pickle
import secrets
import socket
import stat
import struct
import threading
from pathlib import Path
from typing import Any

from ...exceptions import EngineError

MAGIC = b"HFPL"
VERSION = 1
NONCE = 32
MAC = 32
SECRET_BYTES = 32
HANDSHAKE_TIMEOUT_S = 5.0
HEARTBEAT_S = 2.0  # each side sends a PING when it sent nothing else for this long
DEAD_AFTER_S = 30.0  # a peer silent this long is lost (its host died without closing)

CALLS, CANCEL, EXIT, HELLO, EVENTS, PING, BYE = range(1, 8)

_HEADER = struct.Struct("!Q")
_BLOCK = struct.Struct("!Q")
_CLIENT_HELLO = len(MAGIC) + 1 + _BLOCK.size + NONCE + MAC


class AuthenticationFailed(EngineError):
    """A pilot peer did not prove it holds the executor's secret (or spoke another protocol)."""


# ---------------------------------------------------------------------- the secret


def write_secret(path: str | os.PathLike[str]) -> bytes:
    """A fresh secret, written to ``path`` (which must not exist) readable by its owner only."""
    key = secrets.token_bytes(SECRET_BYTES)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        os.fchmod(fd, 0o600)  # whatever the umask
        os.write(fd, key)
    finally:
        os.close(fd)
    return key


def read_secret(path: str | os.PathLike[str]) -> bytes:
    """The secret in ``path``; refuses a file that its group or others may read or write."""
    st = os.stat(path)
    if st.st_mode & (stat.S_IRWXG | stat.S_IRWXO):
        raise AuthenticationFailed(f"the pilot secret {path} is readable by others "
                                   f"(mode {stat.S_IMODE(st.st_mode):o}); refusing it")  # fmt: skip
    if st.st_uid != os.getuid():
        raise AuthenticationFailed(f"the pilot secret {path} belongs to another user")
    key = Path(path).read_bytes()
    if len(key) != SECRET_BYTES:
        raise AuthenticationFailed(f"the pilot secret {path} is not {SECRET_BYTES} bytes")
    return key


def _mac(key: bytes, label: bytes, *parts: bytes) -> bytes:
    return hmac.new(key, label + b"".join(parts), hashlib.sha256).digest()


def _recv_exact(sock: socket.socket, n: int) -> bytes:
    buf = bytearray()
    while len(buf) < n:
        chunk = sock.recv(n - len(buf))
        if not chunk:
            raise AuthenticationFailed(f"the peer closed the connection after {len(buf)} of "
                                       f"{n} handshake bytes")  # fmt: skip
        buf += chunk
    return bytes(buf)


def server_handshake(sock: socket.socket, key: bytes) -> int:
    """Prove the peer of an accepted connection (the submitter's side); its block id. Raises
    :class:`AuthenticationFailed` (the caller closes the socket: nothing else was sent)."""
    sock.settimeout(HANDSHAKE_TIMEOUT_S)
    nonce_s = secrets.token_bytes(NONCE)
    sock.sendall(MAGIC + bytes([VERSION]) + nonce_s)
    try:
        hello = _recv_exact(sock, _CLIENT_HELLO)
    except TimeoutError:
        raise AuthenticationFailed("the peer sent no handshake in time") from None
    if hello[:4] != MAGIC or hello[4] != VERSION:
        raise AuthenticationFailed("the peer does not speak the hetfaas pilot protocol")
    block = hello[5 : 5 + _BLOCK.size]
    nonce_c = hello[5 + _BLOCK.size : 5 + _BLOCK.size + NONCE]
    mac_c = hello[-MAC:]
    if not hmac.compare_digest(mac_c, _mac(key, b"hetfaas-pilot-block", nonce_s, nonce_c, block)):
        raise AuthenticationFailed("wrong secret")
    sock.sendall(_mac(key, b"hetfaas-pilot-submitter", nonce_c, nonce_s, block))
    sock.settimeout(None)
    return int(_BLOCK.unpack(block)[0])


def client_handshake(sock: socket.socket, key: bytes, block_id: int) -> None:
    """Prove this block to the submitter, and the submitter to this block (the block's
    side). Raises :class:`AuthenticationFailed` when either proof fails."""
    sock.settimeout(HANDSHAKE_TIMEOUT_S)
    try:
        greeting = _recv_exact(sock, len(MAGIC) + 1 + NONCE)
        if greeting[:4] != MAGIC or greeting[4] != VERSION:
            raise AuthenticationFailed("the server does not speak the hetfaas pilot protocol")
        nonce_s = greeting[5:]
        nonce_c = secrets.token_bytes(NONCE)
        block = _BLOCK.pack(block_id)
        mac_c = _mac(key, b"hetfaas-pilot-block", nonce_s, nonce_c, block)
        sock.sendall(MAGIC + bytes([VERSION]) + block + nonce_c + mac_c)
        mac_s = _recv_exact(sock, MAC)
    except TimeoutError:
        raise AuthenticationFailed("the submitter did not answer the handshake in time") from None
    except AuthenticationFailed as exc:
        raise AuthenticationFailed(f"the submitter refused this block: {exc}") from None
    expected = _mac(key, b"hetfaas-pilot-submitter", nonce_c, nonce_s, block)
    if not hmac.compare_digest(mac_s, expected):
        raise AuthenticationFailed("the submitter did not prove the secret")
    sock.settimeout(None)


# ---------------------------------------------------------------------- frames


class Connection:
    """Length-prefixed pickled frames over an authenticated stream socket. ``send`` may be
    called from several threads (a lock keeps frames whole); one thread receives."""

    def __init__(self, sock: socket.socket) -> None:
        if sock.family in (socket.AF_INET, socket.AF_INET6):
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
        self.sock = sock
        self._buf = bytearray()
        self._send_lock = threading.Lock()
        self.closed = False

    def send(self, msg: tuple[Any, ...]) -> int:
        """Write one frame; its size. Raises OSError when the peer is gone."""
        body = pickle.dumps(msg, protocol=5)
        return self.send_bytes(body)

    def send_bytes(self, body: bytes) -> int:
        with self._send_lock:
            if len(body) < 65536:
                self.sock.sendall(_HEADER.pack(len(body)) + body)
            else:
                self.sock.sendall(_HEADER.pack(len(body)))
                self.sock.sendall(body)
        return len(body)

    def recv(self) -> tuple[Any, ...]:
        """The next frame; raises EOFError when the peer closed, OSError on a broken link."""
        buf = self._buf
        while len(buf) < _HEADER.size:
            self._fill()
        (size,) = _HEADER.unpack_from(buf)
        end = _HEADER.size + size
        while len(buf) < end:
            self._fill(end - len(buf))
        with memoryview(buf) as view, view[_HEADER.size : end] as body:
            msg = pickle.loads(body)
        del buf[:end]
        return msg  # type: ignore[no-any-return]

    def buffered(self) -> bool:
        """Whether a whole frame is already read (``recv`` returns it without the socket)."""
        buf = self._buf
        if len(buf) < _HEADER.size:
            return False
        return len(buf) >= _HEADER.size + _HEADER.unpack_from(buf)[0]

    def _fill(self, want: int = 0) -> None:
        chunk = self.sock.recv(max(want, 1 << 18))
        if not chunk:
            raise EOFError("the peer closed the connection")
        self._buf += chunk

    def close(self) -> None:
        self.closed = True
        with contextlib.suppress(OSError):
            self.sock.shutdown(socket.SHUT_RDWR)
        self.sock.close()


__all__ = ["BYE", "CALLS", "CANCEL", "EVENTS", "EXIT", "HELLO", "PING", "AuthenticationFailed",
           "Connection", "client_handshake", "read_secret", "server_handshake",
           "write_secret"]  # fmt: skip
