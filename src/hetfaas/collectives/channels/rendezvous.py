"""The rendezvous server that pairs TCP peers by group name (``hetfaas rendezvous --port``).

Protocol: one JSON line per message. A rank sends ``{"group", "rank", "size", "host",
"port"}``; the server answers ``{"joined": [ranks]}`` whenever the group grows (so a rank that
times out can name who never came), then ``{"peers": [[host, port], ...]}`` once all ``size``
ranks are in, or ``{"error": "..."}`` for a mismatched size or a rank taken twice. A complete
group is forgotten, so its name can be used again; a rank whose connection drops before the
group completes is removed. A connection whose first line is ``{"kv": group}`` reads and
writes an elastic group's membership tables instead (:mod:`hetfaas.collectives.membership_store`).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import socket
import socketserver
import threading
from typing import Any

DEFAULT_PORT = 7355


class _Group:
    def __init__(self, size: int) -> None:
        self.size = size
        self.members: dict[int, tuple[str, int, socket.socket]] = {}


class _Handler(socketserver.StreamRequestHandler):
    server: _TCPServer

    def handle(self) -> None:
        line = self.rfile.readline(65536)
        if line.startswith(b'{"kv":'):  # an elastic group's membership tables
            self.server.owner.stores.serve(line, self.rfile, self.request)
            return
        try:
            hello = json.loads(line)
            group, rank, size = str(hello["group"]), int(hello["rank"]), int(hello["size"])
            host, port = str(hello["host"]), int(hello["port"])
        except (ValueError, KeyError, TypeError):
            _reply(self.request, {"error": f"bad registration {line[:200]!r}"})
            return
        if not self.server.owner.register(group, rank, size, host, port, self.request):
            return
        # Wait for the group to complete (the server closes us) or for the peer to leave.
        while True:
            try:
                if not self.request.recv(1):
                    break
            except OSError:
                break
        self.server.owner.leave(group, rank, self.request)


class _TCPServer(socketserver.ThreadingTCPServer):
    daemon_threads = True
    allow_reuse_address = True
    owner: RendezvousServer


def _reply(sock: socket.socket, msg: dict[str, Any]) -> None:
    with contextlib.suppress(OSError):
        sock.sendall(json.dumps(msg).encode() + b"\n")


class RendezvousServer:
    """Pairs peers by group name; run in-process (``start()``/``stop()`` or ``with``) or as
    ``hetfaas rendezvous --port N``. ``port=0`` picks a free port (see ``address``)."""

    def __init__(self, host: str = "127.0.0.1", port: int = DEFAULT_PORT) -> None:
        self._server = _TCPServer((host, port), _Handler)
        self._server.owner = self
        self._lock = threading.Lock()
        self._groups: dict[str, _Group] = {}
        self._thread: threading.Thread | None = None
        from ..membership_store import StoreService

        self.stores = StoreService()  # elastic groups keep their membership here (tcp://)

    @property
    def address(self) -> tuple[str, int]:
        host, port = self._server.server_address[:2]
        return str(host), int(port)

    @property
    def uri(self) -> str:
        host, port = self.address
        return f"tcp://{host}:{port}"

    def register(
        self, group: str, rank: int, size: int, host: str, port: int, sock: socket.socket
    ) -> bool:
        with self._lock:
            g = self._groups.setdefault(group, _Group(size))
            if size != g.size:
                _reply(sock, {"error": f"group {group!r} has size {g.size}; rank {rank} "
                                       f"registered with size {size}"})  # fmt: skip
                return False
            if not 0 <= rank < size:
                _reply(sock, {"error": f"rank {rank} is not in [0, {size})"})
                return False
            if rank in g.members:
                _reply(sock, {"error": f"rank {rank} of group {group!r} registered twice"})
                return False
            g.members[rank] = (host, port, sock)
            joined = {"joined": sorted(g.members)}
            for _, _, member in g.members.values():
                _reply(member, joined)
            if len(g.members) < size:
                return True
            del self._groups[group]
            peers = {"peers": [[g.members[r][0], g.members[r][1]] for r in range(size)]}
            for _, _, member in g.members.values():
                _reply(member, peers)
                with contextlib.suppress(OSError):
                    member.shutdown(socket.SHUT_RDWR)
            return False

    def leave(self, group: str, rank: int, sock: socket.socket) -> None:
        with self._lock:
            g = self._groups.get(group)
            if g is not None and rank in g.members and g.members[rank][2] is sock:
                del g.members[rank]
                if not g.members:
                    del self._groups[group]

    def start(self) -> RendezvousServer:
        self._thread = threading.Thread(
            target=self._server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        )
        self._thread.start()
        return self

    def serve_forever(self) -> None:
        self._server.serve_forever(poll_interval=0.2)

    def stop(self) -> None:
        if self._thread is not None:
            self._server.shutdown()
            self._thread.join()
            self._thread = None
        self._server.server_close()

    def __enter__(self) -> RendezvousServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--port", type=int, default=DEFAULT_PORT, help="port to listen on")
    parser.add_argument(
        "--host", default="0.0.0.0", help="address to listen on (default: all interfaces)"
    )


def run(args: argparse.Namespace) -> int:
    server = RendezvousServer(args.host, args.port)
    host, port = server.address
    print(f"hetfaas rendezvous: listening on {host}:{port} (tcp://<this host>:{port})", flush=True)
    try:
        server.serve_forever()
    finally:
        server.stop()
    return 0
