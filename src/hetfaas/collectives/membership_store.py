"""Where an elastic group keeps its membership: Redis, or the tcp:// rendezvous server.

A :class:`MembershipStore` holds one group's small tables of byte values (``put``, ``get``,
``cas``, ``entries``) and who is alive (``beat``, ``alive``). The store is chosen by the
scheme of the group's channel, so an elastic group needs nothing the plain group does not:

- ``redis://host:port/db``: :class:`RedisStore`, hashes under ``hetfaas:<group>:elastic:``.
- ``tcp://host:port``: :class:`RendezvousStore`, a client of the rendezvous server that pairs
  the TCP peers; the server keeps the tables in memory (:class:`StoreService`).
- :class:`MemoryStore`: the same in one process (what the rendezvous server serves).

Liveness is tied to the beating process twice: each beat lasts ``ttl_s`` (a hung process, a
partition), and a beat is forgotten at once when the store connection that made it closes,
which the kernel does when a process is killed (Redis: ``CLIENT LIST``; the rendezvous server:
its socket). So a killed member is seen as gone within a store round trip, not a TTL.

Every table expires once its group is abandoned (``RETENTION_S``); ``drop()`` removes a
finished group's tables, and its data channel's leftovers in Redis, keeping only ``meta``
(which says the run ended, for members that come late).
"""

from __future__ import annotations

import base64
import contextlib
import json
import socket
import threading
import time
from abc import ABC, abstractmethod
from typing import Any, BinaryIO
from urllib.parse import unquote, urlsplit

from ..exceptions import ChannelUnavailable, ConfigurationError

RETENTION_S = 24 * 3600.0  # a group abandoned by every process leaves nothing past a day
META = "meta"  # the table drop() keeps
BEATS_KEPT_MS = 60_000  # Redis: a table of beats outlives its last beat by at least this


class MembershipStore(ABC):
    """One group's tables of byte values and its live members."""

    @abstractmethod
    def put(self, table: str, field: str, value: bytes, ttl_s: float | None = None) -> None:
        """Set ``table[field]`` (for ``ttl_s`` seconds when given)."""

    @abstractmethod
    def get(self, table: str, field: str) -> bytes | None:
        """``table[field]``, or None."""

    @abstractmethod
    def cas(self, table: str, field: str, expected: bytes | None, value: bytes) -> bool:
        """Set ``table[field]`` to ``value`` only if it holds ``expected`` (None: absent)."""

    @abstractmethod
    def entries(self, table: str) -> dict[str, bytes]:
        """Every live field of ``table``."""

    @abstractmethod
    def beat(self, member: str, ttl_s: float) -> None:
        """``member`` is alive for ``ttl_s``, or until this store's connection closes."""

    @abstractmethod
    def alive(self) -> set[str]:
        """The members whose beat is fresh and whose connection is open."""

    @abstractmethod
    def drop(self) -> None:
        """Remove the group's tables but ``meta``."""

    @abstractmethod
    def close(self) -> None:
        """Release the connection (its beats end with it)."""


# --------------------------------------------------------------------------- in memory


class MemoryStore(MembershipStore):
    """The tables in this process (thread-safe); beats may name an ``owner`` (a connection of
    the rendezvous server), all forgotten together by :meth:`forget`."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._tables: dict[str, dict[str, tuple[bytes, float | None]]] = {}
        self._beats: dict[str, tuple[float, object]] = {}
        self.touched = time.monotonic()

    def _live(self, table: str, now: float) -> dict[str, tuple[bytes, float | None]]:
        rows = self._tables.get(table, {})
        for k in [k for k, (_, exp) in rows.items() if exp is not None and exp <= now]:
            del rows[k]
        return rows

    def put(self, table: str, field: str, value: bytes, ttl_s: float | None = None) -> None:
        now = time.monotonic()
        with self._lock:
            self.touched = now
            expires = now + ttl_s if ttl_s else None
            self._tables.setdefault(table, {})[field] = (bytes(value), expires)

    def get(self, table: str, field: str) -> bytes | None:
        with self._lock:
            row = self._live(table, time.monotonic()).get(field)
        return None if row is None else row[0]

    def cas(self, table: str, field: str, expected: bytes | None, value: bytes) -> bool:
        now = time.monotonic()
        with self._lock:
            self.touched = now
            rows = self._live(table, now)
            held = rows.get(field)
            if (held[0] if held is not None else None) != expected:
                return False
            self._tables.setdefault(table, {})[field] = (bytes(value), None)
            return True

    def entries(self, table: str) -> dict[str, bytes]:
        with self._lock:
            return {k: v for k, (v, _) in self._live(table, time.monotonic()).items()}

    def beat(self, member: str, ttl_s: float, owner: object = None) -> None:
        now = time.monotonic()
        with self._lock:
            self.touched = now
            self._beats[member] = (now + ttl_s, owner)

    def alive(self) -> set[str]:
        now = time.monotonic()
        with self._lock:
            return {m for m, (exp, _) in self._beats.items() if exp > now}

    def forget(self, owner: object) -> None:
        """Every beat made by ``owner`` ends now (its connection closed)."""
        with self._lock:
            for m in [m for m, (_, o) in self._beats.items() if o is owner]:
                del self._beats[m]

    def drop(self) -> None:
        with self._lock:
            for table in [t for t in self._tables if t != META]:
                del self._tables[table]
            self._beats.clear()

    def close(self) -> None:
        """Nothing to release: the tables live as long as this object."""


# --------------------------------------------------------------------------- Redis

_PUT = """
redis.call('HSET', KEYS[1], ARGV[1], ARGV[2])
local ttl = tonumber(ARGV[3])
if ttl > 0 then
  local t = redis.call('TIME')
  local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
  redis.call('ZADD', KEYS[2], now + ttl, ARGV[1])
  redis.call('PEXPIRE', KEYS[2], ARGV[4])
else
  redis.call('ZREM', KEYS[2], ARGV[1])
end
redis.call('PEXPIRE', KEYS[1], ARGV[4])
"""
_ENTRIES = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local dead = redis.call('ZRANGEBYSCORE', KEYS[2], '-inf', now)
if #dead > 0 then
  redis.call('HDEL', KEYS[1], unpack(dead))
  redis.call('ZREMRANGEBYSCORE', KEYS[2], '-inf', now)
end
if ARGV[1] ~= '' then return redis.call('HGET', KEYS[1], ARGV[1]) end
return redis.call('HGETALL', KEYS[1])
"""
_CAS = """
local v = redis.call('HGET', KEYS[1], ARGV[1])
if ARGV[2] == '1' then
  if v then return 0 end
elseif v ~= ARGV[3] then
  return 0
end
redis.call('HSET', KEYS[1], ARGV[1], ARGV[4])
redis.call('PEXPIRE', KEYS[1], ARGV[5])
return 1
"""


class RedisStore(MembershipStore):
    """Tables as hashes ``hetfaas:<group>:elastic:<table>``; fields with a TTL have their
    expiry (by the server's clock) in a sorted set next to the hash."""

    def __init__(self, host: str, port: int, db: int, password: str | None, group: str) -> None:
        try:
            import redis
        except ImportError as exc:
            raise ConfigurationError(
                "an elastic group over redis:// needs redis-py: pip install 'hetfaas[collectives]'"
            ) from exc
        self.address = f"redis://{host}:{port}/{db}"
        self.group = group
        self.prefix = f"hetfaas:{group}:elastic:"
        # one connection, so that CLIENT ID names the connection this process's beats ride on
        self._client = redis.Redis(
            host=host, port=port, db=db, password=password, socket_connect_timeout=5,
            socket_timeout=10, single_connection_client=True,  # short commands only: no BLPOP
        )  # fmt: skip
        self._lock = threading.Lock()
        scripts = (("put", _PUT), ("entries", _ENTRIES), ("cas", _CAS))
        self._scripts = {name: self._client.register_script(text) for name, text in scripts}
        self._client_list = True  # CLIENT LIST may be refused (ACLs): then beats' TTL only

    @classmethod
    def from_uri(cls, uri: str, group: str) -> RedisStore:
        parts = urlsplit(uri)
        path = parts.path.strip("/") or "0"
        if not path.isdigit():
            raise ConfigurationError(f"redis:// database must be a number, got {path!r} in {uri!r}")
        password = unquote(parts.password) if parts.password else None
        return cls(parts.hostname or "127.0.0.1", parts.port or 6379, int(path), password, group)

    def _do(self, fn: Any, *args: Any, **kw: Any) -> Any:
        import redis

        with self._lock:
            try:
                return fn(*args, **kw)
            except redis.RedisError as exc:
                raise self._unavailable(exc) from exc

    def _unavailable(self, exc: BaseException) -> ChannelUnavailable:
        return ChannelUnavailable(f"Redis at {self.address} is not reachable: {exc}")

    def _keys(self, table: str) -> list[str]:
        return [self.prefix + table, self.prefix + table + ":exp"]

    def put(self, table: str, field: str, value: bytes, ttl_s: float | None = None) -> None:
        ttl_ms = int(ttl_s * 1000) if ttl_s else 0
        # a table of short-lived fields (beats) goes soon after its last write, others last
        keep_ms = max(ttl_ms * 10, BEATS_KEPT_MS) if ttl_ms else int(RETENTION_S * 1000)
        self._do(self._scripts["put"], keys=self._keys(table), args=[field, value, ttl_ms, keep_ms])

    def get(self, table: str, field: str) -> bytes | None:
        return self._do(self._scripts["entries"], keys=self._keys(table), args=[field])

    def cas(self, table: str, field: str, expected: bytes | None, value: bytes) -> bool:
        args = [field, "1" if expected is None else "0", expected or b"", value,
                int(RETENTION_S * 1000)]  # fmt: skip
        return bool(self._do(self._scripts["cas"], keys=self._keys(table), args=args))

    def entries(self, table: str) -> dict[str, bytes]:
        flat = self._do(self._scripts["entries"], keys=self._keys(table), args=[""])
        return {flat[i].decode(): flat[i + 1] for i in range(0, len(flat), 2)}

    def beat(self, member: str, ttl_s: float) -> None:
        cid = self._do(self._client.client_id)
        self.put("alive", member, str(cid).encode(), ttl_s)

    def alive(self) -> set[str]:
        beats = {m: v.decode() for m, v in self.entries("alive").items()}
        if not beats or not self._client_list:
            return set(beats)
        import redis

        with self._lock:
            try:
                listing = self._client.client_list(client_id=list(beats.values()))
            except redis.ResponseError:  # not allowed here: the TTL alone decides
                self._client_list = False
                return set(beats)
            except redis.RedisError as exc:
                raise self._unavailable(exc) from exc
        open_ids = {str(c.get("id")) for c in listing}
        return {m for m, cid in beats.items() if cid in open_ids}

    def drop(self) -> None:
        def unlink_all() -> None:
            doomed = [k for k in self._client.scan_iter(match=self.prefix + "*", count=1000)
                      if k.decode() != self.prefix + META]  # fmt: skip
            # the generations' channels (hetfaas:<group>.g<n>:...) left by members that died
            doomed += list(self._client.scan_iter(match=f"hetfaas:{self.group}.g*", count=1000))
            for i in range(0, len(doomed), 1000):
                self._client.unlink(*doomed[i : i + 1000])

        self._do(unlink_all)

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self._client.close()


# --------------------------------------------------------------------------- rendezvous


def _b64(value: bytes | None) -> str | None:
    return None if value is None else base64.b64encode(value).decode()


def _unb64(value: str | None) -> bytes | None:
    return None if value is None else base64.b64decode(value)


class RendezvousStore(MembershipStore):
    """A client of the tables the tcp:// rendezvous server keeps (one JSON line per request
    and per answer); its beats end when its connection does."""

    def __init__(self, host: str, port: int, group: str) -> None:
        self.address = (host, port)
        self.group = group
        self._lock = threading.Lock()
        self._sock: socket.socket | None = None
        self._reader: BinaryIO | None = None

    @classmethod
    def from_uri(cls, uri: str, group: str) -> RendezvousStore:
        from .channels.rendezvous import DEFAULT_PORT

        parts = urlsplit(uri)
        if not parts.hostname:
            raise ConfigurationError(f"tcp:// needs the rendezvous server's host:port: {uri!r}")
        return cls(parts.hostname, parts.port or DEFAULT_PORT, group)

    def _unavailable(self, exc: BaseException | str) -> ChannelUnavailable:
        host, port = self.address
        return ChannelUnavailable(
            f"the rendezvous server at {host}:{port} is not reachable ({exc}); start one with "
            f"`hetfaas rendezvous --port {port}`"
        )

    def _call(self, **request: Any) -> dict[str, Any]:
        with self._lock:
            try:
                if self._sock is None:
                    self._sock = socket.create_connection(self.address, timeout=10)
                    self._sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                    self._reader = self._sock.makefile("rb")
                    self._sock.sendall(json.dumps({"kv": self.group}).encode() + b"\n")
                assert self._reader is not None
                self._sock.sendall(json.dumps(request).encode() + b"\n")
                line = self._reader.readline()
            except OSError as exc:
                self._reset()
                raise self._unavailable(exc) from exc
            if not line:
                self._reset()
                raise self._unavailable("it closed the connection")
        answer = json.loads(line)
        if "error" in answer:
            raise ConfigurationError(f"the rendezvous server refused {request['op']}: "
                                     f"{answer['error']}")  # fmt: skip
        return answer

    def _reset(self) -> None:
        if self._sock is not None:
            with contextlib.suppress(OSError):
                self._sock.close()
        self._sock, self._reader = None, None

    def put(self, table: str, field: str, value: bytes, ttl_s: float | None = None) -> None:
        self._call(op="put", t=table, f=field, v=_b64(value), ttl=ttl_s)

    def get(self, table: str, field: str) -> bytes | None:
        return _unb64(self._call(op="get", t=table, f=field)["v"])

    def cas(self, table: str, field: str, expected: bytes | None, value: bytes) -> bool:
        return bool(self._call(op="cas", t=table, f=field, x=_b64(expected), v=_b64(value))["v"])

    def entries(self, table: str) -> dict[str, bytes]:
        rows = self._call(op="entries", t=table)["v"]
        return {k: base64.b64decode(v) for k, v in rows.items()}

    def beat(self, member: str, ttl_s: float) -> None:
        self._call(op="beat", m=member, ttl=ttl_s)

    def alive(self) -> set[str]:
        return set(self._call(op="alive")["v"])

    def drop(self) -> None:
        self._call(op="drop")

    def close(self) -> None:
        with self._lock:
            self._reset()


class StoreService:
    """The server side of :class:`RendezvousStore`: one :class:`MemoryStore` per group,
    served on the rendezvous server's connections whose first line is ``{"kv": group}``."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._stores: dict[str, MemoryStore] = {}

    def store(self, group: str) -> MemoryStore:
        now = time.monotonic()
        with self._lock:
            for name in [n for n, s in self._stores.items() if now - s.touched > RETENTION_S]:
                del self._stores[name]
            return self._stores.setdefault(group, MemoryStore())

    def serve(self, first_line: bytes, rfile: BinaryIO, sock: socket.socket) -> None:
        """Answer one client's requests until it disconnects; then its beats end."""
        try:
            group = str(json.loads(first_line)["kv"])
        except (ValueError, KeyError, TypeError):
            with contextlib.suppress(OSError):
                sock.sendall(b'{"error": "bad store greeting"}\n')
            return
        store, owner = self.store(group), object()
        try:
            for line in rfile:
                try:
                    answer = self._answer(store, owner, json.loads(line))
                except (ValueError, KeyError, TypeError) as exc:
                    answer = {"error": f"bad request {line[:200]!r}: {exc}"}
                sock.sendall(json.dumps(answer).encode() + b"\n")
        except OSError:
            pass
        finally:
            store.forget(owner)

    @staticmethod
    def _answer(store: MemoryStore, owner: object, req: dict[str, Any]) -> dict[str, Any]:
        op = req["op"]
        if op == "put":
            value = _unb64(req["v"])
            if value is None:
                raise ValueError("put needs a value")
            store.put(str(req["t"]), str(req["f"]), value, req.get("ttl"))
            return {"v": None}
        if op == "get":
            return {"v": _b64(store.get(str(req["t"]), str(req["f"])))}
        if op == "cas":
            value = _unb64(req["v"])
            if value is None:
                raise ValueError("cas needs a value")
            return {"v": store.cas(str(req["t"]), str(req["f"]), _unb64(req.get("x")), value)}
        if op == "entries":
            return {"v": {k: _b64(v) for k, v in store.entries(str(req["t"])).items()}}
        if op == "beat":
            store.beat(str(req["m"]), float(req["ttl"]), owner)
            return {"v": None}
        if op == "alive":
            return {"v": sorted(store.alive())}
        if op == "drop":
            store.drop()
            return {"v": None}
        raise ValueError(f"unknown op {op!r}")


# --------------------------------------------------------------------------- by scheme

_STORES: dict[str, Any] = {"redis": RedisStore, "tcp": RendezvousStore}


def store_schemes() -> list[str]:
    return sorted(_STORES)


def open_store(channel: str, group: str) -> MembershipStore:
    """The membership store of ``group`` for a channel URI (``redis://``, ``tcp://``)."""
    scheme = urlsplit(channel).scheme if isinstance(channel, str) else ""
    cls = _STORES.get(scheme)
    if cls is None:
        raise ConfigurationError(
            f"an elastic group keeps its membership where its channel meets: it needs a channel "
            f"of scheme {' or '.join(store_schemes())}, got {channel!r}"
        )
    store: MembershipStore = cls.from_uri(channel, group)
    return store


__all__ = [
    "MembershipStore",
    "MemoryStore",
    "RedisStore",
    "RendezvousStore",
    "StoreService",
    "open_store",
    "store_schemes",
]
