"""The data plane: where items live between stages, chosen by URL scheme.

A stage's worker puts each output item into a store and hands the driver only an
:class:`ItemRef` (store, key, size); the next stage's worker gets the item by that reference.
The driver never reads item bytes: it frees an item (``delete``) once every consumer stage is
done with it, and removes a run's leftovers at its end (``clear``).

Stores (one small base class, :class:`ItemStore`, registered by scheme):

- ``shm://``: shared memory on this machine (files under ``/dev/shm``, named after the
  driver's process so that a killed driver's items are swept as orphans, see
  :func:`hetfaas.shm.sweep_orphans`). A reader maps the item copy-on-write: arrays are views
  over the mapping, not copies, and a consumer writing to its input never changes what
  another consumer of the same item reads.
- ``file:///dir``: a directory every worker sees (a shared file system across machines);
- ``redis://[:password@]host:port/db``: a Redis server;
- ``s3://bucket?endpoint=http://host:port``: an S3 bucket.

The last three reuse the clients of the mediated collective channels
(:mod:`hetfaas.collectives.channels`): their URI parsing, credentials, timeouts and error
translation, with the channel's group ``hetfaas-pipeline``. redis-py and boto3 are imported
only when their scheme is first used.

Items are encoded as collective messages are (:mod:`hetfaas.collectives.payload`: pickle
protocol 5, the buffers of arrays and CPU tensors out of band, 64-byte aligned), so a reader
rebuilds arrays as views over what it read.
"""

from __future__ import annotations

import contextlib
import mmap
import os
import re
import threading
import time
from abc import ABC, abstractmethod
from typing import Any, ClassVar, NamedTuple
from urllib.parse import urlsplit

from ..collectives import payload
from ..exceptions import ChannelUnavailable
from ..shm import PREFIX, SHM_DIR
from .errors import ItemLost, PipelineConfigError

CHANNEL_GROUP = "hetfaas-pipeline"  # the collective group whose keys a store's items share
CONNECT_TIMEOUT_S = 10.0  # a store server that does not answer within this fails the item
_KEY = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")


class ItemRef(NamedTuple):
    """Where an item is: the store's URL and key, and its encoded size. An item small enough
    travels inside its reference instead (``inline``; ``url`` and ``key`` empty)."""

    url: str
    key: str
    nbytes: int
    inline: bytes | None = None


class ItemStore(ABC):
    """Where items live: ``put`` once, ``get`` by any number of readers, ``delete``.

    ``scheme`` names it in URLs; ``from_url`` builds one. Keys are ``[A-Za-z0-9._-]``, and
    every key of a run starts with the run's namespace (which ``clear`` removes).
    """

    scheme: ClassVar[str] = ""

    @classmethod
    @abstractmethod
    def from_url(cls, url: str) -> ItemStore:
        """A store from its URL."""

    @abstractmethod
    def put(self, key: str, segments: list[Any], total: int) -> None:
        """Store ``total`` bytes, given as ``segments``, under ``key`` (replacing any item
        there: a retried call writes its outputs again)."""

    @abstractmethod
    def get(self, key: str) -> Any:
        """The bytes under ``key`` (bytes-like); :class:`ItemLost` when there are none."""

    @abstractmethod
    def delete(self, keys: list[str]) -> None:
        """Remove these items (absent ones are ignored)."""

    @abstractmethod
    def clear(self, namespace: str) -> None:
        """Remove every item whose key starts with ``namespace``."""

    def close(self) -> None:  # noqa: B027 - optional hook
        """Release connections."""


# ---------------------------------------------------------------------------- registry

_REGISTRY: dict[str, type[ItemStore]] = {}
_OPEN: dict[str, ItemStore] = {}
_OPEN_LOCK = threading.Lock()


def register_store(cls: type[ItemStore]) -> type[ItemStore]:
    """Register an ItemStore class under its ``scheme`` (checked now, usable as a decorator)."""
    if not (isinstance(cls, type) and issubclass(cls, ItemStore)):
        raise PipelineConfigError(f"register_store needs an ItemStore subclass, got {cls!r}")
    if not cls.scheme or not cls.scheme.isidentifier():
        raise PipelineConfigError(f"{cls.__name__}.scheme must be a URL scheme, got {cls.scheme!r}")
    abstract = sorted(getattr(cls, "__abstractmethods__", ()))
    if abstract:
        raise PipelineConfigError(f"store {cls.__name__} does not implement {', '.join(abstract)}")
    _REGISTRY[cls.scheme] = cls
    return cls


def known_schemes() -> list[str]:
    return sorted(_REGISTRY)


def store_class(scheme: str) -> type[ItemStore]:
    """The class registered for ``scheme``."""
    try:
        return _REGISTRY[scheme]
    except KeyError:
        raise PipelineConfigError(
            f"unknown data plane scheme {scheme!r}; known: {', '.join(known_schemes())}"
        ) from None


def check_url(url: str) -> str:
    """``url`` if it names a known store, else a :class:`PipelineConfigError` saying why."""
    if not isinstance(url, str) or "://" not in url:
        raise PipelineConfigError(
            f"a data plane is a URL like 'shm://', 'file:///dir', 'redis://host:6379/0' or "
            f"'s3://bucket?endpoint=...', got {url!r}; known schemes: {', '.join(known_schemes())}"
        )
    store_class(urlsplit(url).scheme)
    return url


def open_store(url: str) -> ItemStore:
    """The store for ``url``, opened once per process and kept (a worker connects once)."""
    store = _OPEN.get(url)
    if store is not None:
        return store
    with _OPEN_LOCK:
        store = _OPEN.get(url)
        if store is None:
            store = store_class(urlsplit(check_url(url)).scheme).from_url(url)
            _OPEN[url] = store
    return store


def forget_store(url: str) -> None:
    """Close and drop this process's store for ``url`` (the next ``open_store`` reconnects)."""
    with _OPEN_LOCK:
        store = _OPEN.pop(url, None)
    if store is not None:
        with contextlib.suppress(Exception):
            store.close()


def _check_key(key: str) -> str:
    if not _KEY.match(key):
        raise PipelineConfigError(f"a store key is [A-Za-z0-9._-], got {key!r}")
    return key


# ---------------------------------------------------------------------------- values


def put_value(url: str, key: str, value: Any, inline_bytes: int = 0) -> ItemRef:
    """Encode ``value`` and store it under ``key`` of the store at ``url``; small values
    (at most ``inline_bytes`` encoded, no out-of-band buffer) travel in the reference."""
    segments, total = payload.encode(value)
    if total <= inline_bytes and len(segments) == 2:  # header and pickle: no large buffers
        return ItemRef("", "", total, bytes(payload.join(segments, total)))
    open_store(url).put(_check_key(key), segments, total)
    return ItemRef(url, key, total)


def get_value(ref: ItemRef) -> Any:
    """The item ``ref`` points to, rebuilt (arrays as views over the bytes read)."""
    if ref.inline is not None:
        return payload.decode(bytearray(ref.inline))
    return payload.decode(open_store(ref.url).get(ref.key))


# ---------------------------------------------------------------------------- shm://


class ShmStore(ItemStore):
    """Items as files in shared memory (``/dev/shm``) on this machine: ``shm://``.

    Written to a temporary name and renamed into place (a reader sees an item whole or not
    at all; a retry replaces it); read through a private copy-on-write mapping.
    """

    scheme: ClassVar[str] = "shm"

    def __init__(self, root: str = SHM_DIR) -> None:
        self.root = root

    @classmethod
    def from_url(cls, url: str) -> ShmStore:
        parts = urlsplit(url)
        if parts.netloc or parts.path not in ("", "/"):
            raise PipelineConfigError(f"shm:// takes no host or path, got {url!r}")
        return cls()

    def _path(self, key: str) -> str:
        return os.path.join(self.root, PREFIX + key)

    def put(self, key: str, segments: list[Any], total: int) -> None:
        path = self._path(key)
        tmp = f"{path}.tmp{os.getpid()}-{threading.get_ident()}"
        try:
            with open(tmp, "wb") as f:
                for seg in segments:
                    f.write(seg)
            os.replace(tmp, path)
        except OSError as exc:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
            raise ChannelUnavailable(f"cannot write item {key!r} to {self.root}: {exc}") from exc

    def get(self, key: str) -> Any:
        try:
            fd = os.open(self._path(key), os.O_RDONLY)
        except FileNotFoundError:
            raise ItemLost(
                f"item {key!r} is not in shared memory (freed, or never written)"
            ) from None
        try:
            return memoryview(mmap.mmap(fd, os.fstat(fd).st_size, access=mmap.ACCESS_COPY))
        finally:
            os.close(fd)

    def delete(self, keys: list[str]) -> None:
        for key in keys:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(self._path(key))

    def clear(self, namespace: str) -> None:
        start = PREFIX + namespace
        for name in os.listdir(self.root):
            if name.startswith(start):
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(os.path.join(self.root, name))


# ---------------------------------------------------------------------------- channel stores


def _connected(uri: str) -> Any:
    """A mediated channel for ``uri``, connected as the one member of the pipeline group."""
    from ..collectives.channels import open_channel

    channel = open_channel(uri)
    channel.connect(CHANNEL_GROUP, 0, 1, time.monotonic() + CONNECT_TIMEOUT_S)
    return channel


class FileStore(ItemStore):
    """Items as files in a directory every worker sees: ``file:///dir`` (the file channel's
    atomic writes, in ``dir/hetfaas-pipeline``)."""

    scheme: ClassVar[str] = "file"

    def __init__(self, url: str) -> None:
        self.url = url
        self._channel = _connected(url)

    @classmethod
    def from_url(cls, url: str) -> FileStore:
        return cls(url)

    @property
    def dir(self) -> str:
        return str(self._channel.dir)

    def put(self, key: str, segments: list[Any], total: int) -> None:
        self._channel.put(key, segments, total, 0)

    def get(self, key: str) -> Any:
        data = self._channel.try_get(key)  # 0 readers declared: the read removes nothing
        if data is None:
            raise ItemLost(f"item {key!r} is not in {self.dir}")
        return data

    def delete(self, keys: list[str]) -> None:
        for key in keys:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(os.path.join(self.dir, key))

    def clear(self, namespace: str) -> None:
        with contextlib.suppress(FileNotFoundError):
            for name in os.listdir(self.dir):
                if name.startswith(namespace):
                    with contextlib.suppress(FileNotFoundError):
                        os.unlink(os.path.join(self.dir, name))


class RedisStore(ItemStore):
    """Items as Redis values: ``redis://host:port/db`` (the Redis channel's client)."""

    scheme: ClassVar[str] = "redis"

    def __init__(self, url: str) -> None:
        self.url = url
        self._channel = _connected(url)
        self._client = self._channel.client
        self.prefix = str(self._channel.prefix)

    @classmethod
    def from_url(cls, url: str) -> RedisStore:
        return cls(url)

    def _do(self, fn: Any, *args: Any) -> Any:
        import redis

        try:
            return fn(*args)
        except redis.RedisError as exc:
            raise self._channel.unavailable(exc) from exc

    def put(self, key: str, segments: list[Any], total: int) -> None:
        self._do(self._client.set, self.prefix + key, memoryview(payload.join(segments, total)))

    def get(self, key: str) -> Any:
        data = self._do(self._client.get, self.prefix + key)
        if data is None:
            raise ItemLost(f"item {key!r} is not in {self.url}")
        return data

    def delete(self, keys: list[str]) -> None:
        if keys:
            self._do(self._client.unlink, *(self.prefix + k for k in keys))

    def clear(self, namespace: str) -> None:
        keys = self._do(lambda: list(self._client.scan_iter(match=f"{self.prefix}{namespace}*")))
        for i in range(0, len(keys), 1000):
            self._do(self._client.unlink, *keys[i : i + 1000])

    def close(self) -> None:
        self._client.close()  # not the channel's close: that would clear the whole group


class S3Store(ItemStore):
    """Items as S3 objects: ``s3://bucket?endpoint=...`` (the S3 channel's client)."""

    scheme: ClassVar[str] = "s3"

    def __init__(self, url: str) -> None:
        self.url = url
        self._channel = _connected(url)

    @classmethod
    def from_url(cls, url: str) -> S3Store:
        return cls(url)

    def put(self, key: str, segments: list[Any], total: int) -> None:
        self._channel.put(key, segments, total, 0)

    def get(self, key: str) -> Any:
        data = self._channel.try_get(key)  # 0 readers declared: nothing is deleted
        if data is None:
            raise ItemLost(f"item {key!r} is not in {self._channel.address}")
        return data

    def delete(self, keys: list[str]) -> None:
        if keys:
            self._channel.delete_keys([self._channel.prefix + k for k in keys])

    def clear(self, namespace: str) -> None:
        ch = self._channel
        keys = ch.list_keys(ch.prefix + namespace)
        if keys:
            ch.delete_keys(keys)


for _cls in (ShmStore, FileStore, RedisStore, S3Store):
    register_store(_cls)

__all__ = [
    "CHANNEL_GROUP",
    "FileStore",
    "ItemRef",
    "ItemStore",
    "RedisStore",
    "S3Store",
    "ShmStore",
    "check_url",
    "forget_store",
    "get_value",
    "known_schemes",
    "open_store",
    "put_value",
    "register_store",
    "store_class",
]
