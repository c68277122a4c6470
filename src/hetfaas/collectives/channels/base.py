"""The extension point for transports: a Channel moves one group's messages.

Three kinds, and the communicator picks its algorithms by kind:

- ``"mediated"`` (:class:`MediatedChannel`): a store between the functions (a shared
  directory, Redis, S3). A message is uploaded once under a key and its readers fetch it.
  Subclasses implement ``_put``, ``_try_get`` (one non-blocking attempt) and the group's
  bookkeeping; the base class polls with bounded exponential back-off under a deadline, or a
  store with blocking reads overrides ``get``.
- ``"direct"`` (:class:`DirectChannel`): point-to-point links (TCP). ``send``/``recv`` of
  keyed messages; the communicator builds trees, recursive doubling and rings on top.
- ``"native"`` (:class:`NativeChannel`): the transport runs the collectives itself (MPI); the
  communicator delegates each collective to the channel's method of the same name.

Channels are chosen by URI scheme through a registry; the built-in ones are imported only when
their scheme is first used, so optional clients (redis, boto3, mpi4py) load lazily.
"""

from __future__ import annotations

import importlib
import time
from abc import ABC, abstractmethod
from typing import Any, ClassVar
from urllib.parse import SplitResult, urlsplit

from ...exceptions import ConfigurationError, GroupMismatch, PeerTimeout

KINDS = ("mediated", "direct", "native")

_BUILTIN = {
    "file": "hetfaas.collectives.channels.file",
    "tcp": "hetfaas.collectives.channels.tcp",
    "redis": "hetfaas.collectives.channels.redis",
    "s3": "hetfaas.collectives.channels.s3",
    "mpi": "hetfaas.collectives.channels.mpi",
}
_REGISTRY: dict[str, type[Channel]] = {}


class Channel(ABC):
    """One rank's end of a group's transport.

    ``scheme`` names it in URIs, ``kind`` is one of :data:`KINDS`, ``limits`` is the largest
    message in bytes it carries. A channel is usable after ``connect(group, rank, size,
    deadline)``; ``close()`` ends this rank's part and, once every rank has closed, removes the
    group's keys or objects from the store.
    """

    scheme: ClassVar[str] = ""
    kind: ClassVar[str] = ""
    limits: int = 1 << 62

    group: str = ""
    rank: int = -1
    size: int = 0

    @classmethod
    @abstractmethod
    def from_uri(cls, uri: str) -> Channel:
        """A channel from its URI (``redis://host:port/db``, ``file:///dir``, ...)."""

    @abstractmethod
    def connect(self, group: str, rank: int, size: int, deadline: float) -> None:
        """Join ``group`` as ``rank`` of ``size`` before ``deadline`` (``time.monotonic()``)."""

    @abstractmethod
    def close(self) -> None:
        """Leave the group; idempotent."""

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.group!r} rank {self.rank}/{self.size}>"


class MediatedChannel(Channel):
    """A store between the functions: upload once under a key, readers fetch it."""

    kind: ClassVar[str] = "mediated"
    poll_min_s: float = 50e-6
    poll_max_s: float = 5e-3

    def put(self, key: str, segments: list[Any], total: int, readers: int) -> None:
        """Store one message under ``key`` for ``readers`` readers."""
        self._put(key, segments, total, readers)

    def get(self, key: str, deadline: float, readers: int, waiting_for: int) -> Any:
        """The message under ``key`` (bytes-like), waiting for it until ``deadline``.

        ``readers`` is the number the writer declared (1: this reader consumes the key).
        On timeout, :class:`PeerTimeout` names the ranks that never joined the group, or else
        ``waiting_for``, the rank whose message did not come.
        """
        delay = self.poll_min_s
        while True:
            data = self._try_get(key, readers)
            if data is not None:
                return data
            now = time.monotonic()
            if now >= deadline:
                raise self.timeout(f"no message {key!r}", [waiting_for])
            time.sleep(min(delay, max(0.0, deadline - now)))
            delay = min(delay * 2, self.poll_max_s)

    def try_get(self, key: str, readers: int = 0) -> Any | None:
        """The message under ``key``, or None when it is not there (one attempt). With
        ``readers=0`` the read consumes nothing: how a store of items (the pipeline's data
        plane) reads keys it removes itself."""
        return self._try_get(key, readers)

    def timeout(self, what: str, waited_on: list[int]) -> PeerTimeout:
        """A PeerTimeout naming the absent ranks when some never joined, else ``waited_on``."""
        try:
            absent = sorted(set(range(self.size)) - self.present())
        except Exception:  # the store itself failing is not what this error is about
            absent = []
        missing = absent or waited_on
        return PeerTimeout(
            f"group {self.group!r} (rank {self.rank} of {self.size}) over {self.scheme}: "
            f"{what} before the deadline",
            missing,
        )

    @abstractmethod
    def _put(self, key: str, segments: list[Any], total: int, readers: int) -> None: ...

    @abstractmethod
    def _try_get(self, key: str, readers: int) -> Any | None:
        """The message, or None when it is not there yet (one attempt, no waiting)."""

    @abstractmethod
    def present(self) -> set[int]:
        """The ranks that have joined the group."""


class DirectChannel(Channel):
    """Point-to-point links between the ranks; messages carry a key and arrive in order per
    link. ``send`` must not deadlock when both ends send at once (buffer what arrives)."""

    kind: ClassVar[str] = "direct"

    @abstractmethod
    def send(self, dest: int, key: str, segments: list[Any], total: int, deadline: float) -> None:
        """Hand one message to ``dest``."""

    @abstractmethod
    def recv(self, source: int, key: str, deadline: float) -> Any:
        """The next message from ``source`` under ``key`` (bytes-like), waiting until
        ``deadline`` (then :class:`PeerTimeout` naming ``source``)."""

    def recv_into(self, source: int, key: str, out: Any, deadline: float) -> None:
        """The message under ``key`` written into ``out`` (a writable buffer of its exact
        size); a channel that can read straight into it overrides this."""
        data = memoryview(self.recv(source, key, deadline)).cast("B")
        view = memoryview(out).cast("B")
        if data.nbytes != view.nbytes:
            raise GroupMismatch(
                f"rank {source} sent {data.nbytes} bytes for {key!r} where {view.nbytes} "
                "were expected"
            )
        view[:] = data

    def post(self, source: int, key: str, out: Any) -> None:
        """Announce that ``source``'s message under ``key`` goes into ``out``, so a channel
        that can may read it in place as it arrives; ``recv_into`` collects it."""

    def exchange(
        self, dest: int, send_key: str, segments: list[Any], total: int,
        source: int, recv_key: str, out: Any, deadline: float,
    ) -> None:  # fmt: skip
        """Send one message and receive one into ``out`` (a ring's step)."""
        self.send(dest, send_key, segments, total, deadline)
        self.recv_into(source, recv_key, out, deadline)


class NativeChannel(Channel):
    """A transport with collectives of its own (MPI). The communicator calls the method of the
    same name and signature as its own (``bcast(obj, root)``, ``allreduce(obj, op)``, ...)."""

    kind: ClassVar[str] = "native"
    OPERATIONS: ClassVar[tuple[str, ...]] = (
        "send", "recv", "bcast", "barrier", "reduce", "allreduce", "gather", "scatter",
        "allgather", "scan",
    )  # fmt: skip


def register_channel(cls: type[Channel]) -> type[Channel]:
    """Register a Channel class under its ``scheme`` (usable as a class decorator).

    Checked now rather than at first use: a Channel subclass with a scheme, a known kind and,
    for native channels, every collective.
    """
    if not (isinstance(cls, type) and issubclass(cls, Channel)):
        raise ConfigurationError(f"register_channel needs a Channel subclass, got {cls!r}")
    if not cls.scheme or not cls.scheme.isidentifier():
        raise ConfigurationError(f"{cls.__name__}.scheme must be a URI scheme, got {cls.scheme!r}")
    if cls.kind not in KINDS:
        raise ConfigurationError(
            f"{cls.__name__}.kind must be one of {', '.join(KINDS)}, got {cls.kind!r}"
        )
    if cls.kind == "native":
        lacking = [m for m in NativeChannel.OPERATIONS if not callable(getattr(cls, m, None))]
        if lacking:
            raise ConfigurationError(f"native channel {cls.__name__} lacks {', '.join(lacking)}")
    _REGISTRY[cls.scheme] = cls
    return cls


def known_schemes() -> list[str]:
    return sorted(set(_BUILTIN) | set(_REGISTRY))


def channel_class(scheme: str) -> type[Channel]:
    """The class registered for ``scheme``, importing a built-in channel's module on demand."""
    if scheme not in _REGISTRY and scheme in _BUILTIN:
        importlib.import_module(_BUILTIN[scheme])
    try:
        return _REGISTRY[scheme]
    except KeyError:
        raise ConfigurationError(
            f"unknown channel scheme {scheme!r}; known schemes: {', '.join(known_schemes())}"
        ) from None


def open_channel(uri: str | Channel) -> Channel:
    """A channel from a URI such as ``file:///shared/dir``, ``tcp://host:port``,
    ``redis://host:port/0``, ``s3://bucket?endpoint=http://host:8333`` or ``mpi://``."""
    if isinstance(uri, Channel):
        return uri
    if not isinstance(uri, str) or "://" not in uri:
        raise ConfigurationError(
            f"a channel is a URI like 'file:///dir' or 'redis://host:6379/0', got {uri!r}; "
            f"known schemes: {', '.join(known_schemes())}"
        )
    return channel_class(urlsplit(uri).scheme).from_uri(uri)


def split_uri(uri: str, scheme: str) -> SplitResult:
    """``urlsplit`` that says which part of a malformed URI is wrong."""
    parts = urlsplit(uri)
    if parts.scheme != scheme:
        raise ConfigurationError(f"not a {scheme}:// URI: {uri!r}")
    try:
        parts.port  # noqa: B018 - raises ValueError on a bad port
    except ValueError as exc:
        raise ConfigurationError(f"bad port in {uri!r}: {exc}") from None
    return parts
