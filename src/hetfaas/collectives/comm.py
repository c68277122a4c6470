"""Communicator: MPI-like collectives between running functions, over any Channel.

The communicator owns what every channel shares: message keys, the frame (operation name,
group size, payload), deadlines, size limits and mismatch checks. The algorithms depend on the
channel's kind: over mediated stores a message is uploaded once and fetched by its readers
(:mod:`.mediated`); over direct links it runs binomial trees, recursive doubling and a ring
(:mod:`.direct`); a native channel (MPI) runs each collective itself.
"""

from __future__ import annotations

import contextvars
import re
import time
from collections import defaultdict
from typing import Any

from ..exceptions import (
    CollectiveError,
    ConfigurationError,
    GroupMismatch,
    PayloadTooLarge,
)
from . import direct, mediated
from .channels.base import Channel, DirectChannel, MediatedChannel, open_channel
from .channels.file import default_root
from .ops import SUM, ReduceOp, as_op
from .payload import decode, encode

_GROUP_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,199}$")
_current: contextvars.ContextVar[Communicator | None] = contextvars.ContextVar(
    "hetfaas_communicator", default=None
)


def current() -> Communicator:
    """The communicator of the running call (set for calls of ``ex.map(..., group=...)``)."""
    comm = _current.get()
    if comm is None:
        raise CollectiveError(
            "no communicator here: collectives.current() works inside the calls of "
            "ex.map(fn, items, group=...)"
        )
    return comm


class Communicator:
    """One rank of a group of ``size`` functions that exchange data.

    ``channel`` is a URI (``file:///dir``, ``tcp://rendezvous:port``, ``redis://host:port/db``,
    ``s3://bucket?endpoint=...``, ``mpi://``) or a :class:`Channel`; the default is a
    directory under the system's temporary directory, which every process of this machine
    sees. Every operation ends by ``timeout_s``; peers that do not take part by then end it in
    :class:`~hetfaas.PeerTimeout` naming them. All ranks must call the collectives in the same
    order, and one thread at a time uses a communicator (a thread per rank is fine).
    ``channel`` may also be a list of URIs or channels, one per scheme: then ``hint`` ("fast",
    the default, or "cheap") picks one per operation from the calibrated cost model
    (:class:`~hetfaas.collectives.selector.ChannelChoice`).

    >>> with Communicator(0, 1, "doc") as comm:
    ...     comm.allreduce(3)
    3
    """

    ring_min_bytes: int = 1 << 20
    """Arrays from this size up are allreduced around a ring (reduce-scatter, allgather)
    over direct links, for commutative and associative elementwise ops."""

    def __init__(
        self,
        rank: int,
        size: int,
        group: str,
        channel: str | Channel | list[str | Channel] | None = None,
        timeout_s: float = 60.0,
        hint: str | None = None,
    ) -> None:
        if isinstance(size, bool) or not isinstance(size, int) or size < 1:
            raise ConfigurationError(f"size must be a positive int, got {size!r}")
        if isinstance(rank, bool) or not isinstance(rank, int) or not 0 <= rank < size:
            raise ConfigurationError(f"rank must be an int in [0, {size}), got {rank!r}")
        if not isinstance(group, str) or not _GROUP_NAME.match(group):
            raise ConfigurationError(
                f"group must be a name of letters, digits, '.', '_' or '-', got {group!r}"
            )
        if not isinstance(timeout_s, (int, float)) or timeout_s <= 0:
            raise ConfigurationError(f"timeout_s must be a positive number, got {timeout_s!r}")
        self._rank, self._size, self._group = rank, size, group
        self.timeout_s = float(timeout_s)
        self.hint = hint
        self._seq = 0
        self._p2p_sent: dict[tuple[int, int], int] = defaultdict(int)
        self._p2p_recv: dict[tuple[int, int], int] = defaultdict(int)
        self._closed = False
        if channel is None:
            channel = f"file://{default_root()}"
        if hint not in (None, "fast", "cheap"):
            raise ConfigurationError(f"hint must be 'fast' or 'cheap', got {hint!r}")
        if isinstance(channel, (list, tuple)):
            from .selector import ChannelChoice

            channel = ChannelChoice(channel, hint or "fast")
        self._channel = open_channel(channel)
        self._channel.connect(group, rank, size, self._deadline())

    # ----------------------------------------------------------------- properties

    @property
    def rank(self) -> int:
        return self._rank

    @property
    def size(self) -> int:
        return self._size

    @property
    def group(self) -> str:
        return self._group

    @property
    def channel(self) -> Channel:
        return self._channel

    def __repr__(self) -> str:
        return (
            f"<Communicator {self._group!r} rank {self._rank}/{self._size} "
            f"over {self._channel.scheme}>"
        )

    # ----------------------------------------------------------------- point to point

    def send(self, obj: Any, dest: int, tag: int = 0) -> None:
        """Send ``obj`` to rank ``dest``; messages with the same (dest, tag) arrive in order."""
        self._check_peer(dest, "dest")
        tag = self._check_tag(tag)
        if self._native:
            return self._channel.send(obj, dest, tag)  # type: ignore[attr-defined]
        n = self._p2p_sent[(dest, tag)]
        self._p2p_sent[(dest, tag)] = n + 1
        deadline = self._deadline()
        frame = self._encode("send", obj)
        if isinstance(self._channel, DirectChannel):
            self._channel.send(dest, f"p{tag}.{n}", *frame, deadline)
        else:
            self._mediated.put(f"p{self._rank}.{dest}.{tag}.{n}", *frame, 1)
        return None

    def recv(self, source: int, tag: int = 0) -> Any:
        """The next message from rank ``source`` with ``tag``."""
        self._check_peer(source, "source")
        tag = self._check_tag(tag)
        if self._native:
            return self._channel.recv(source, tag)  # type: ignore[attr-defined]
        n = self._p2p_recv[(source, tag)]
        self._p2p_recv[(source, tag)] = n + 1
        deadline = self._deadline()
        if isinstance(self._channel, DirectChannel):
            data = self._channel.recv(source, f"p{tag}.{n}", deadline)
        else:
            key = f"p{source}.{self._rank}.{tag}.{n}"
            data = self._mediated.get(key, deadline, 1, source)
        return self._decode("send", data, source)

    # ----------------------------------------------------------------- collectives

    def bcast(self, obj: Any = None, root: int = 0) -> Any:
        """``obj`` of rank ``root``, on every rank."""
        self._check_peer(root, "root")
        return self._run("bcast", obj, root=root)

    def barrier(self) -> None:
        """Returns once every rank has entered it."""
        self._run("barrier", None)

    def reduce(self, obj: Any, op: ReduceOp | Any = SUM, root: int = 0) -> Any:
        """The reduction of every rank's ``obj`` at ``root``; None on the other ranks."""
        self._check_peer(root, "root")
        return self._run("reduce", obj, op=as_op(op), root=root)

    def allreduce(self, obj: Any, op: ReduceOp | Any = SUM) -> Any:
        """The reduction of every rank's ``obj``, on every rank."""
        return self._run("allreduce", obj, op=as_op(op))

    def gather(self, obj: Any, root: int = 0) -> list[Any] | None:
        """Every rank's ``obj`` in rank order at ``root``; None on the other ranks."""
        self._check_peer(root, "root")
        return self._run("gather", obj, root=root)

    def scatter(self, objs: list[Any] | None = None, root: int = 0) -> Any:
        """Element ``rank`` of ``root``'s list ``objs`` (of ``size`` elements), on each rank."""
        self._check_peer(root, "root")
        if self._rank == root:
            if not isinstance(objs, (list, tuple)) or len(objs) != self._size:
                got = f"{len(objs)} objects" if isinstance(objs, (list, tuple)) else repr(objs)
                raise ConfigurationError(
                    f"scatter at root {root} needs a list of {self._size} objects, got {got}"
                )
            objs = list(objs)
        return self._run("scatter", objs, root=root)

    def allgather(self, obj: Any) -> list[Any]:
        """Every rank's ``obj`` in rank order, on every rank."""
        return self._run("allgather", obj)

    def scan(self, obj: Any, op: ReduceOp | Any = SUM) -> Any:
        """Inclusive prefix reduction: rank r gets ``x0 op x1 op ... op xr``."""
        return self._run("scan", obj, op=as_op(op))

    # ----------------------------------------------------------------- lifetime

    def close(self) -> None:
        """Leave the group; the last rank out removes the group's keys or objects."""
        if not self._closed:
            self._closed = True
            self._channel.close()

    def __enter__(self) -> Communicator:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ----------------------------------------------------------------- plumbing

    @property
    def _native(self) -> bool:
        self._check_open()
        return self._channel.kind == "native"

    @property
    def _mediated(self) -> MediatedChannel:
        return self._channel  # type: ignore[return-value]

    def _run(self, name: str, obj: Any, **kw: Any) -> Any:
        if self._native:  # the channel runs it: same name, same arguments
            method = getattr(self._channel, name)
            return method() if name == "barrier" else method(obj, **kw)
        self._seq += 1
        call = _Call(self, name, f"c{self._seq}", self._deadline())
        algorithms = direct if isinstance(self._channel, DirectChannel) else mediated
        return getattr(algorithms, name)(call, obj, **kw)

    def _deadline(self) -> float:
        return time.monotonic() + self.timeout_s

    def _check_open(self) -> None:
        if self._closed:
            raise CollectiveError(f"communicator of group {self._group!r} is closed")

    def _check_peer(self, r: Any, what: str) -> None:
        if isinstance(r, bool) or not isinstance(r, int) or not 0 <= r < self._size:
            raise ConfigurationError(f"{what} must be a rank in [0, {self._size}), got {r!r}")

    @staticmethod
    def _check_tag(tag: Any) -> int:
        if isinstance(tag, bool) or not isinstance(tag, int) or tag < 0:
            raise ConfigurationError(f"tag must be a non-negative int, got {tag!r}")
        return tag

    def _encode(self, name: str, obj: Any) -> tuple[list[Any], int]:
        segments, total = encode((name, self._size, obj))
        limit = self._channel.limits
        if total > limit:
            raise PayloadTooLarge(
                f"a {name} message of {total} bytes is over the {self._channel.scheme} "
                f"channel's limit of {limit} bytes"
            )
        return segments, total

    def _decode(self, name: str, data: Any, source: int) -> Any:
        their_name, their_size, obj = decode(data)
        if their_size != self._size:
            raise GroupMismatch(
                f"group {self._group!r}: rank {source} runs with size {their_size}, "
                f"rank {self._rank} with size {self._size}"
            )
        if their_name != name:
            raise GroupMismatch(
                f"group {self._group!r}: rank {source} ran {their_name} where rank "
                f"{self._rank} ran {name} (collectives must be called in the same order)"
            )
        return obj


class _Call:
    """One collective in flight: its keys, its deadline, and the moves the algorithms use."""

    __slots__ = ("comm", "deadline", "key", "name", "rank", "size")

    def __init__(self, comm: Communicator, name: str, key: str, deadline: float) -> None:
        self.comm = comm
        self.name = name
        self.key = key
        self.deadline = deadline
        self.rank = comm._rank
        self.size = comm._size

    def encode(self, obj: Any) -> tuple[list[Any], int]:
        return self.comm._encode(self.name, obj)

    # direct links
    def send(self, dest: int, step: str, obj: Any, frame: tuple[list[Any], int] | None = None):
        segments, total = frame or self.encode(obj)
        self.comm._channel.send(dest, f"{self.key}.{step}", segments, total, self.deadline)  # type: ignore[attr-defined]

    def recv(self, source: int, step: str) -> Any:
        data = self.comm._channel.recv(source, f"{self.key}.{step}", self.deadline)  # type: ignore[attr-defined]
        return self.comm._decode(self.name, data, source)

    def post(self, source: int, step: str, into: Any) -> None:
        """Where ``source``'s raw message of this step will land (read in place on arrival)."""
        self.comm._channel.post(source, f"{self.key}.{step}", into)  # type: ignore[attr-defined]

    def exchange(self, dest: int, source: int, step: str, outgoing: Any, into: Any) -> None:
        """Raw numbers out to ``dest`` and from ``source`` straight into ``into`` (a ring's
        step: no frame, the receiver knows the chunk's dtype and size)."""
        view = memoryview(outgoing).cast("B")
        if view.nbytes > self.comm._channel.limits:
            raise PayloadTooLarge(
                f"a chunk of {view.nbytes} bytes is over the {self.comm._channel.scheme} "
                f"channel's limit of {self.comm._channel.limits} bytes"
            )
        key = f"{self.key}.{step}"
        self.comm._channel.exchange(  # type: ignore[attr-defined]
            dest, key, [view], view.nbytes, source, key, into, self.deadline
        )

    # mediated stores
    def put(self, suffix: str, obj: Any, readers: int) -> None:
        if readers > 0:
            self.comm._mediated.put(f"{self.key}.{suffix}", *self.encode(obj), readers)

    def get(self, suffix: str, source: int, readers: int) -> Any:
        data = self.comm._mediated.get(f"{self.key}.{suffix}", self.deadline, readers, source)
        return self.comm._decode(self.name, data, source)
