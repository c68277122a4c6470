"""``redis://[:password@]host:port/db``: Redis as the store (redis-py, imported lazily).

No polling: a message for one reader is a list the reader pops with BLPOP (which also removes
it); a message for several readers is one value plus a list of tokens, one per reader. Each
reader pops a token (BLPOP) and then, in one script, gets the value and counts itself; the
last reader deletes it. So a group leaves only its membership keys, removed when the last rank
closes. Values are capped by Redis at 512 MB.
"""

from __future__ import annotations

import time
from typing import Any, ClassVar
from urllib.parse import unquote

from ...exceptions import ChannelUnavailable, ConfigurationError, GroupMismatch
from ..payload import join
from .base import MediatedChannel, register_channel, split_uri

_FETCH = """
local v = redis.call('GET', KEYS[1])
if redis.call('INCR', KEYS[2]) >= tonumber(ARGV[1]) then redis.call('DEL', KEYS[1], KEYS[2]) end
return v
"""


class RedisChannel(MediatedChannel):
    """A group is the keys under ``hetfaas:<group>:`` in one Redis database."""

    scheme: ClassVar[str] = "redis"
    limits = 512 * 1024 * 1024

    def __init__(self, host: str = "127.0.0.1", port: int = 6379, db: int = 0,
                 password: str | None = None) -> None:  # fmt: skip
        self.host, self.port, self.db, self.password = host, port, db, password
        self._client: Any = None
        self._fetch: Any = None
        self.prefix = ""
        self._closed = False

    @classmethod
    def from_uri(cls, uri: str) -> RedisChannel:
        parts = split_uri(uri, "redis")
        path = parts.path.strip("/") or "0"
        if not path.isdigit():
            raise ConfigurationError(f"redis:// database must be a number, got {path!r} in {uri!r}")
        password = unquote(parts.password) if parts.password else None
        return cls(parts.hostname or "127.0.0.1", parts.port or 6379, int(path), password)

    @property
    def address(self) -> str:
        return f"redis://{self.host}:{self.port}/{self.db}"

    def _unavailable(self, exc: BaseException) -> ChannelUnavailable:
        return ChannelUnavailable(f"Redis at {self.address} is not reachable: {exc}")

    def unavailable(self, exc: BaseException) -> ChannelUnavailable:
        """The error to raise for a Redis error of this server (for users of :attr:`client`)."""
        return self._unavailable(exc)

    @property
    def client(self) -> Any:
        """The connected redis-py client (after :meth:`connect`), for stores of other keys
        beside the group's (under their own prefix; closing it is theirs)."""
        return self._client

    def connect(self, group: str, rank: int, size: int, deadline: float) -> None:
        try:
            import redis
        except ImportError as exc:
            raise ConfigurationError(
                "the redis:// channel needs redis-py: pip install 'hetfaas[collectives]'"
            ) from exc
        self.group, self.rank, self.size = group, rank, size
        self.prefix = f"hetfaas:{group}:"
        from redis.backoff import ExponentialBackoff
        from redis.retry import Retry

        # A few quick retries for a dropped connection, not redis-py's seconds of back-off:
        # a server that is down should fail the operation now, with our error.
        self._client = redis.Redis(
            host=self.host, port=self.port, db=self.db, password=self.password,
            socket_connect_timeout=max(0.1, min(5.0, deadline - time.monotonic())),
            retry=Retry(ExponentialBackoff(cap=0.1, base=0.01), 2),
        )  # fmt: skip
        try:
            self._client.set(f"{self.prefix}hello:{rank}", size)
            sizes = self._hellos()
        except redis.RedisError as exc:
            raise self._unavailable(exc) from exc
        self._fetch = self._client.register_script(_FETCH)
        for peer, peer_size in sizes.items():
            if peer_size != size:
                raise GroupMismatch(
                    f"group {group!r}: rank {peer} joined with size {peer_size}, "
                    f"rank {rank} with size {size}"
                )

    def _hellos(self) -> dict[int, int]:
        values = self._client.mget([f"{self.prefix}hello:{r}" for r in range(self.size)])
        return {r: int(v) for r, v in enumerate(values) if v is not None}

    def present(self) -> set[int]:
        return set(self._hellos())

    def _put(self, key: str, segments: list[Any], total: int, readers: int) -> None:
        import redis

        k = self.prefix + key
        data = memoryview(join(segments, total))
        try:
            if readers == 1:
                self._client.rpush(k, data)
            else:
                pipe = self._client.pipeline(transaction=False)
                pipe.set(k, data)
                pipe.rpush(k + ":t", *([1] * readers))
                pipe.execute()
        except redis.RedisError as exc:
            raise self._unavailable(exc) from exc

    def get(self, key: str, deadline: float, readers: int, waiting_for: int) -> Any:
        import redis

        k = self.prefix + key
        waited = k if readers == 1 else k + ":t"
        try:
            while True:
                left = deadline - time.monotonic()
                if left <= 0:
                    raise self.timeout(f"no message {key!r}", [waiting_for])
                # BLPOP's 0 means forever: never ask for less than a millisecond.
                popped = self._client.blpop([waited], timeout=max(left, 0.001))
                if popped is None:
                    continue
                if readers == 1:
                    return popped[1]
                return self._fetch(keys=[k, k + ":n"], args=[readers])
        except redis.RedisError as exc:
            raise self._unavailable(exc) from exc

    def _try_get(self, key: str, readers: int) -> Any | None:  # get() blocks instead
        raise NotImplementedError

    def close(self) -> None:
        if self._closed or self._client is None:
            return
        self._closed = True
        try:
            self._client.set(f"{self.prefix}bye:{self.rank}", 1)
            byes = self._client.mget([f"{self.prefix}bye:{r}" for r in range(self.size)])
            if all(b is not None for b in byes):
                keys = list(self._client.scan_iter(match=f"{self.prefix}*", count=1000))
                for i in range(0, len(keys), 1000):
                    self._client.unlink(*keys[i : i + 1000])
        except Exception:  # closing must not fail on a server that went away
            pass
        finally:
            self._client.close()


register_channel(RedisChannel)
