"""``tcp://rendezvous-host:port``: direct peer-to-peer sockets (TCP_NODELAY).

Each rank listens on an ephemeral port, registers (group, rank, size, host, port) with the
rendezvous server and gets the peer table back; then every rank connects to the ranks below it
and accepts the ranks above it, so the group is a full mesh.

No threads: a rank moves bytes only inside its own send and recv calls. Both poll every link
(epoll): while a send waits for room it also reads what peers send, into per-link inboxes, so
two ranks sending to each other at once never deadlock. Small messages arrive through a reused
per-link buffer; a large one is read straight into a buffer of its own size.
"""

from __future__ import annotations

import contextlib
import json
import os
import selectors
import socket
import struct
import time
from collections import deque
from typing import Any, ClassVar

from ...exceptions import (
    ChannelClosed,
    ChannelUnavailable,
    ConfigurationError,
    GroupMismatch,
    PeerTimeout,
)
from ..payload import join
from .base import DirectChannel, register_channel, split_uri
from .rendezvous import DEFAULT_PORT

_HEAD = struct.Struct("<IQ")  # key length, body length
_RX = 1 << 18
_HELLO = struct.Struct("<I")


class _Link:
    """One peer's socket, what has been read from it, and the messages not yet asked for.

    A receiver may post a buffer for a key (``posted``): that message is then read straight
    into it (``filled`` once complete) instead of into a new buffer."""

    __slots__ = ("body", "body_got", "body_key", "ended", "filled", "inbox", "peer", "posted",
                 "rx", "rx_len", "sock")  # fmt: skip

    def __init__(self, peer: int, sock: socket.socket) -> None:
        self.peer = peer
        self.sock = sock
        self.rx = bytearray(_RX)
        self.rx_len = 0
        self.body: memoryview | None = None
        self.body_got = 0
        self.body_key = ""
        self.inbox: deque[tuple[str, Any]] = deque()
        self.posted: dict[str, memoryview] = {}
        self.filled: set[str] = set()
        self.ended: ChannelClosed | None = None  # the peer closed; what it sent stays readable

    def take(self, key: str) -> Any | None:
        for i, (k, data) in enumerate(self.inbox):
            if k == key:
                del self.inbox[i]
                return data
        return None

    def on_readable(self) -> None:
        """Read what the socket has; complete messages go to the inbox (or are filled)."""
        try:
            if self.body is not None:
                n = self.sock.recv_into(self.body[self.body_got :])
                if n == 0:
                    raise self.closed()
                self.body_got += n
                if self.body_got == self.body.nbytes:
                    self._complete(self.body_key, self.body)
                    self.body = None
                return
            n = self.sock.recv_into(memoryview(self.rx)[self.rx_len :])
        except (BlockingIOError, InterruptedError):
            return
        except OSError as exc:
            raise self.closed(exc) from exc
        if n == 0:
            raise self.closed()
        self.rx_len += n
        self._parse()

    def _complete(self, key: str, body: Any) -> None:
        if key not in self.posted:
            self.inbox.append((key, body))
            return
        if body is not None and body is not self.posted[key]:
            # it started arriving before its buffer was posted
            self._target(key, body.nbytes)[:] = body
        self.posted.pop(key)
        self.filled.add(key)

    def _target(self, key: str, blen: int) -> memoryview:
        """Where a message's body goes: the posted buffer, or a new one of its size."""
        out = self.posted.get(key)
        if out is None:
            return memoryview(bytearray(blen))
        if out.nbytes != blen:
            self.posted.pop(key)
            raise GroupMismatch(
                f"rank {self.peer} sent {blen} bytes for {key!r} where {out.nbytes} were expected"
            )
        return out

    def _parse(self) -> None:
        rx, pos = self.rx, 0
        while self.rx_len - pos >= _HEAD.size:
            klen, blen = _HEAD.unpack_from(rx, pos)
            start = pos + _HEAD.size + klen
            if start > self.rx_len:
                break
            key = rx[pos + _HEAD.size : start].decode()
            have = self.rx_len - start
            if have >= blen:
                if key in self.posted:
                    self._target(key, blen)[:] = rx[start : start + blen]
                    self._complete(key, None)
                else:
                    self.inbox.append((key, bytearray(rx[start : start + blen])))
                pos = start + blen
                continue
            if start + blen <= len(rx) and key not in self.posted:
                break  # fits the buffer: wait for the rest
            body = self._target(key, blen)  # read the rest straight into its destination
            body[:have] = rx[start : self.rx_len]
            self.body, self.body_got, self.body_key = body, have, key
            pos = self.rx_len
            break
        if pos:
            rest = self.rx_len - pos
            rx[:rest] = rx[pos : self.rx_len]
            self.rx_len = rest

    def closed(self, exc: BaseException | None = None) -> ChannelClosed:
        why = f": {exc}" if exc else ""
        return ChannelClosed(f"rank {self.peer} closed its connection{why}")


class TcpChannel(DirectChannel):
    """Direct sockets between the ranks, paired through a rendezvous server."""

    scheme: ClassVar[str] = "tcp"
    limits = 1 << 36
    spin_s: float = 50e-6

    def __init__(self, host: str, port: int = DEFAULT_PORT) -> None:
        self.rendezvous = (host, port)
        self._links: dict[int, _Link] = {}
        self._self = _Link(-1, None)  # type: ignore[arg-type]
        self._sel: selectors.BaseSelector | None = None

    @classmethod
    def from_uri(cls, uri: str) -> TcpChannel:
        parts = split_uri(uri, "tcp")
        if not parts.hostname:
            raise ConfigurationError(f"tcp:// needs the rendezvous server's host:port: {uri!r}")
        return cls(parts.hostname, parts.port or DEFAULT_PORT)

    # ----------------------------------------------------------------- joining

    def connect(self, group: str, rank: int, size: int, deadline: float) -> None:
        self.group, self.rank, self.size = group, rank, size
        self._sel = selectors.DefaultSelector()
        if size == 1:
            return
        host, port = self.rendezvous
        try:
            rv = socket.create_connection(
                (host, port), timeout=max(0.05, min(5.0, deadline - time.monotonic()))
            )
        except OSError as exc:
            raise ChannelUnavailable(
                f"the rendezvous server at {host}:{port} is not reachable ({exc}); start one "
                f"with `hetfaas rendezvous --port {port}`"
            ) from exc
        try:
            self._join(rv, deadline)
        except BaseException:
            self.close()  # no half-built mesh left open
            raise

    def _join(self, rv: socket.socket, deadline: float) -> None:
        group, rank, size = self.group, self.rank, self.size
        with rv:
            my_host = rv.getsockname()[0]  # the address the others can reach us on
            listener = socket.create_server((my_host, 0), backlog=size)
            try:
                rv.sendall(json.dumps({"group": group, "rank": rank, "size": size,
                                       "host": my_host, "port": listener.getsockname()[1]}
                                      ).encode() + b"\n")  # fmt: skip
                peers = self._await_peers(rv, deadline)
                self._mesh(listener, peers, deadline)
            finally:
                listener.close()

    def _await_peers(self, rv: socket.socket, deadline: float) -> list[tuple[str, int]]:
        joined: list[int] = [self.rank]
        reader = rv.makefile("rb")
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                missing = sorted(set(range(self.size)) - set(joined))
                raise PeerTimeout(
                    f"group {self.group!r} over tcp: peers did not register with the "
                    f"rendezvous server before the deadline",
                    missing,
                )
            rv.settimeout(left)
            try:
                line = reader.readline()
            except TimeoutError:
                line = None  # the deadline passed: a timed-out socket file cannot be read again
            except OSError as exc:
                raise ChannelUnavailable(f"lost the rendezvous server: {exc}") from exc
            if line is None:
                raise PeerTimeout(
                    f"group {self.group!r} over tcp: peers did not register with the "
                    f"rendezvous server before the deadline",
                    sorted(set(range(self.size)) - set(joined)),
                )
            if not line:
                raise ChannelUnavailable(
                    f"the rendezvous server at {self.rendezvous[0]}:{self.rendezvous[1]} "
                    "closed the connection before the group was complete"
                )
            msg = json.loads(line)
            if "error" in msg:
                raise GroupMismatch(f"rendezvous refused rank {self.rank}: {msg['error']}")
            if "joined" in msg:
                joined = msg["joined"]
            if "peers" in msg:
                return [(str(h), int(p)) for h, p in msg["peers"]]

    def _mesh(self, listener: socket.socket, peers: list[tuple[str, int]], deadline: float) -> None:
        names = f"{self.group}\n".encode()
        for peer in range(self.rank):
            try:
                sock = socket.create_connection(peers[peer], timeout=self._left(deadline))
            except OSError as exc:
                raise ChannelClosed(
                    f"cannot connect to rank {peer} at {peers[peer]}: {exc}"
                ) from exc
            sock.sendall(_HELLO.pack(self.rank) + names)
            self._add(peer, sock)
        for _ in range(self.rank + 1, self.size):
            listener.settimeout(self._left(deadline))
            try:
                sock, _ = listener.accept()
            except TimeoutError:
                missing = sorted(set(range(self.rank + 1, self.size)) - set(self._links))
                raise PeerTimeout(
                    f"group {self.group!r}: peers did not connect to rank {self.rank}", missing
                ) from None
            sock.settimeout(self._left(deadline))
            head = _recv_exact(sock, _HELLO.size + len(names))
            (peer,) = _HELLO.unpack_from(head)
            if head[_HELLO.size :] != names or not self.rank < peer < self.size:
                sock.close()
                raise GroupMismatch(f"group {self.group!r}: a peer of another group connected")
            self._add(peer, sock)

    def _add(self, peer: int, sock: socket.socket) -> None:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        sock.setblocking(False)
        link = _Link(peer, sock)
        self._links[peer] = link
        assert self._sel is not None
        self._sel.register(sock, selectors.EVENT_READ, link)

    @staticmethod
    def _left(deadline: float) -> float:
        return max(0.01, deadline - time.monotonic())

    # ----------------------------------------------------------------- messages

    def _link(self, peer: int) -> _Link:
        try:
            return self._links[peer]
        except KeyError:
            raise ChannelClosed(f"no connection to rank {peer} (channel closed?)") from None

    def _progress(self, timeout: float, write: socket.socket | None = None) -> bool:
        """Read whatever has arrived on any link; True when ``write`` has room."""
        sel = self._sel
        assert sel is not None
        if write is not None:
            sel.modify(write, selectors.EVENT_READ | selectors.EVENT_WRITE, sel.get_key(write).data)
        try:
            writable = False
            for key, events in sel.select(timeout):
                if events & selectors.EVENT_READ:
                    try:
                        key.data.on_readable()
                    except ChannelClosed as exc:
                        # Only an error for whoever needs this link: a peer that finished
                        # and closed must not fail the ranks still working with others.
                        key.data.ended = exc
                        sel.unregister(key.fileobj)
                        continue
                if events & selectors.EVENT_WRITE:
                    writable = True
            return writable
        finally:
            if write is not None and write in sel.get_map():
                sel.modify(write, selectors.EVENT_READ, sel.get_key(write).data)

    def send(self, dest: int, key: str, segments: list[Any], total: int, deadline: float) -> None:
        if dest == self.rank:  # to itself: straight into its own inbox
            self._self.inbox.append((key, join(segments, total)))
            return
        link = self._link(dest)
        if link.ended is not None:
            raise link.ended
        kb = key.encode()
        head = _HEAD.pack(len(kb), total) + kb
        n = 0
        if len(segments) < 500:  # most messages go in one call (IOV_MAX is 1024)
            try:
                n = link.sock.sendmsg([head, *segments])
            except (BlockingIOError, InterruptedError):
                n = 0
            except OSError as exc:
                raise link.closed(exc) from exc
            if n == len(head) + total:
                return
        views = [memoryview(head)] + [memoryview(s).cast("B") for s in segments]
        while views:
            while n:
                first = views[0]
                if n >= first.nbytes:
                    n -= first.nbytes
                    views.pop(0)
                else:
                    views[0] = first[n:]
                    n = 0
            if views:
                left = deadline - time.monotonic()
                if left <= 0:
                    raise PeerTimeout(
                        f"group {self.group!r}: rank {dest} did not take a message "
                        f"({key!r}) before the deadline",
                        [dest],
                    )
                self._progress(left, link.sock)
                if link.ended is not None:
                    raise link.ended
                try:
                    n = link.sock.sendmsg(views[:512])
                except (BlockingIOError, InterruptedError):
                    n = 0
                except OSError as exc:
                    raise link.closed(exc) from exc

    def recv(self, source: int, key: str, deadline: float) -> Any:
        link = self._self if source == self.rank else self._link(source)
        data = link.take(key)
        if data is None and link.body is None and link.ended is None and link.sock is not None:
            try:  # fast path: it is often in the socket already
                link.on_readable()
            except ChannelClosed as exc:
                link.ended = exc
            data = link.take(key)
        if data is None:
            self._wait(link, lambda: any(k == key for k, _ in link.inbox), key, deadline)
            data = link.take(key)
        return data

    def exchange(
        self, dest: int, send_key: str, segments: list[Any], total: int,
        source: int, recv_key: str, out: Any, deadline: float,
    ) -> None:  # fmt: skip
        """Send to ``dest`` while ``out`` is already posted for ``source``'s message, so that
        what arrives during the send lands in place."""
        self.post(source, recv_key, out)
        self.send(dest, send_key, segments, total, deadline)
        self.recv_into(source, recv_key, out, deadline)

    def post(self, source: int, key: str, out: Any) -> None:
        if source != self.rank:
            link = self._link(source)
            if all(k != key for k, _ in link.inbox):  # not here yet: land in place
                link.posted.setdefault(key, memoryview(out).cast("B"))

    def recv_into(self, source: int, key: str, out: Any, deadline: float) -> None:
        """Read the message under ``key`` straight into ``out`` (a writable buffer of exactly
        its size): no new buffer, no copy (the ring's chunks)."""
        view = memoryview(out).cast("B")
        link = self._self if source == self.rank else self._link(source)
        data = link.take(key)
        if data is None and link is not self._self:
            link.posted.setdefault(key, view)
            try:
                self._wait(
                    link, lambda: key in link.filled or any(k == key for k, _ in link.inbox),
                    key, deadline,
                )  # fmt: skip
            finally:
                link.posted.pop(key, None)
            if key in link.filled:
                link.filled.discard(key)
                return
            data = link.take(key)
        if data is None:
            self._wait(link, lambda: False, key, deadline)  # raises: a message to itself
        if memoryview(data).nbytes != view.nbytes:
            raise GroupMismatch(
                f"rank {source} sent {memoryview(data).nbytes} bytes for {key!r} where "
                f"{view.nbytes} were expected"
            )
        view[:] = data

    def _wait(self, link: _Link, done: Any, key: str, deadline: float) -> None:
        """Move bytes until ``done()``, or raise: the peer closed, or the deadline passed."""
        spin = self.spin_s > 0
        while not done():
            if link.ended is not None:
                raise link.ended
            if link is self._self:  # nothing else can send it while this thread waits
                raise PeerTimeout(
                    f"group {self.group!r}: rank {self.rank} waits for a message {key!r} from "
                    "itself that it has not sent",
                    [self.rank],
                )
            if spin:
                spin = False
                if self._spin(link, done):
                    continue
            left = deadline - time.monotonic()
            if left <= 0:
                raise PeerTimeout(
                    f"group {self.group!r}: no message {key!r} from rank {link.peer} before "
                    "the deadline",
                    [link.peer],
                )
            self._progress(left)

    def _spin(self, link: _Link, done: Any) -> bool:
        """Poll the awaited link for up to ``spin_s`` before sleeping in epoll: on a VM a
        reply often comes sooner than a halted vCPU wakes up. True when it is done (or the
        link ended, or a large message started arriving)."""
        end = time.perf_counter() + self.spin_s
        while time.perf_counter() < end:
            try:
                link.on_readable()
            except ChannelClosed as exc:
                link.ended = exc
                return True
            if done() or link.body is not None:
                return True
            os.sched_yield()  # a peer on this same CPU gets it at once
        return False

    def close(self) -> None:
        for link in self._links.values():
            with contextlib.suppress(OSError):
                link.sock.shutdown(socket.SHUT_RDWR)
            link.sock.close()
        self._links.clear()
        if self._sel is not None:
            self._sel.close()
            self._sel = None


def _recv_exact(sock: socket.socket, n: int) -> bytes:
    buf = bytearray()
    while len(buf) < n:
        chunk = sock.recv(n - len(buf))
        if not chunk:
            raise ChannelClosed("a peer closed its connection while joining")
        buf += chunk
    return bytes(buf)


register_channel(TcpChannel)
