"""Several channels behind one communicator: the ``hint`` (fast or cheap) picks one per operation.

FMI lets a function open several channels at once (a Redis instance, an S3 bucket, direct TCP)
and chooses, per operation and message size, the fastest or the cheapest under a performance
and price model. :class:`ChannelChoice` does that for a :class:`~hetfaas.collectives.
Communicator`: it is a native channel (the communicator hands it each collective) that holds
one sub-communicator per channel and asks :func:`hetfaas.collectives.model.choose`.

Every rank must pick the same channel for the same operation. Where all ranks know the
message size (reductions of equal-shaped data, barriers) they compute the same choice and no
message is added. Where only the sender knows it (send, bcast, scatter, gather of unequal
objects), the sender decides and tells the receivers over the *control* channel, the one the
hint prefers for small messages: a small payload travels inline on that same message, a large
one follows on the chosen channel, so a choice costs at most one small extra message.
"""

from __future__ import annotations

import pickle
import sys
import time
from collections.abc import Mapping, Sequence
from typing import Any, ClassVar

import numpy as np

from ..exceptions import ConfigurationError
from . import model
from .channels.base import Channel, NativeChannel, open_channel
from .ops import SUM, ReduceOp

_INLINE, _VIA = "i", "v"


def payload_nbytes(obj: Any) -> int:
    """The bytes ``obj`` puts on the wire, estimated the same way on every rank: exact for
    arrays and tensors, 8 per element for lists of numbers and for scalars."""
    if isinstance(obj, np.ndarray):
        return int(obj.nbytes)
    torch = sys.modules.get("torch")
    if torch is not None and isinstance(obj, torch.Tensor):
        return int(obj.element_size() * obj.numel())
    if isinstance(obj, (bytes, bytearray, memoryview)):
        return len(obj)
    if obj is None or isinstance(obj, (int, float, complex, bool)):
        return 8
    if isinstance(obj, (list, tuple)) and all(isinstance(x, (int, float)) for x in obj):
        return 8 * len(obj)
    try:
        return len(pickle.dumps(obj, protocol=5))
    except Exception:
        return 1 << 20


class ChannelChoice(NativeChannel):
    """A native channel over several channels, choosing one per operation by ``hint``.

    ``channels``: URIs or :class:`Channel` objects, at most one per scheme. ``hint``: "fast"
    or "cheap" (changeable later through :attr:`hint`). ``profiles`` and ``prices`` default to
    the calibrated model (:func:`~hetfaas.collectives.model.load_profiles`) and published
    prices; ``memory_gb`` is the functions' memory, which the cost of waiting scales with.
    """

    scheme: ClassVar[str] = "choice"

    def __init__(
        self,
        channels: Sequence[str | Channel],
        hint: str = "fast",
        profiles: Mapping[str, model.ChannelProfile] | None = None,
        prices: model.Prices | None = None,
        memory_gb: float = 1.0,
    ) -> None:
        opened = [open_channel(c) for c in channels]
        if not opened:
            raise ConfigurationError("a ChannelChoice needs at least one channel")
        schemes = [c.scheme for c in opened]
        if len(set(schemes)) != len(schemes):
            raise ConfigurationError(f"one channel per scheme, got {', '.join(schemes)}")
        if any(isinstance(c, ChannelChoice) for c in opened):
            raise ConfigurationError("a ChannelChoice cannot contain another one")
        self._channels = dict(zip(schemes, opened, strict=True))
        self._profiles = dict(profiles) if profiles is not None else model.load_profiles()
        self._prices = prices or model.Prices()
        self.memory_gb = memory_gb
        self._selector = model.ChannelSelector(
            self._channels, hint, self._profiles, self._prices, memory_gb,
            {s: c.limits for s, c in self._channels.items()},
        )  # fmt: skip
        self._comms: dict[str, Any] = {}
        self._cache: dict[tuple[str, str, int, float], str] = {}
        self.limits = max(c.limits for c in opened)
        self.timeout_s = 60.0

    @property
    def hint(self) -> str:
        return self._selector.hint

    @hint.setter
    def hint(self, value: str) -> None:
        if value not in model.HINTS:
            raise ConfigurationError(f"unknown hint {value!r}; known: fast, cheap")
        self._selector.hint = value

    @property
    def schemes(self) -> list[str]:
        return sorted(self._channels)

    @classmethod
    def from_uri(cls, uri: str) -> ChannelChoice:
        raise ConfigurationError(
            "a ChannelChoice has no URI: give the Communicator a list of channel URIs"
        )

    def connect(self, group: str, rank: int, size: int, deadline: float) -> None:
        from .comm import Communicator

        self.group, self.rank, self.size = group, rank, size
        self.timeout_s = max(deadline - time.monotonic(), 0.001)
        try:
            for scheme, channel in self._channels.items():
                left = max(deadline - time.monotonic(), 0.001)
                self._comms[scheme] = Communicator(
                    rank, size, f"{group}.{scheme}", channel, timeout_s=left
                )
                self._comms[scheme].timeout_s = self.timeout_s
        except BaseException:
            self.close()
            raise

    def close(self) -> None:
        comms, self._comms = self._comms, {}
        for comm in comms.values():
            comm.close()

    # --- choosing ---------------------------------------------------------------------------

    def scheme_for(self, op: str, nbytes: float) -> str:
        """The scheme the hint picks for ``op`` with ``nbytes`` per rank (same on every rank)."""
        key = (self._selector.hint, op, self.size, nbytes)
        scheme = self._cache.get(key)
        if scheme is None:
            if len(self._cache) > 4096:  # sizes vary; keep the memo small
                self._cache.clear()
            scheme = self._cache[key] = self._selector.scheme_for(op, self.size, nbytes)
        return scheme

    def _pick(self, op: str, nbytes: float) -> Any:
        return self._comms[self.scheme_for(op, nbytes)]

    @property
    def _control(self) -> Any:
        return self._comms[self.scheme_for("send", 8)]

    def _wrap(self, op: str, obj: Any) -> tuple[tuple[str, Any], Any]:
        """(what goes on the control channel, the communicator the payload takes or None)."""
        scheme = self.scheme_for(op, payload_nbytes(obj))
        comm = self._comms[scheme]
        if comm is self._control:
            return (_INLINE, obj), None
        return (_VIA, scheme), comm

    # --- point to point ---------------------------------------------------------------------

    def send(self, obj: Any, dest: int, tag: int = 0) -> None:
        head, comm = self._wrap("send", obj)
        self._control.send(head, dest, 2 * tag)
        if comm is not None:
            comm.send(obj, dest, 2 * tag)

    def recv(self, source: int, tag: int = 0) -> Any:
        kind, value = self._control.recv(source, 2 * tag)
        if kind == _INLINE:
            return value
        return self._comms[value].recv(source, 2 * tag)

    # --- collectives ------------------------------------------------------------------------

    def barrier(self) -> None:
        self._pick("barrier", 0).barrier()

    def bcast(self, obj: Any = None, root: int = 0) -> Any:
        if self.rank == root:
            head, comm = self._wrap("bcast", obj)
            self._control.bcast(head, root)
            return obj if comm is None else comm.bcast(obj, root)
        kind, value = self._control.bcast(None, root)
        return value if kind == _INLINE else self._comms[value].bcast(None, root)

    def reduce(self, obj: Any, op: ReduceOp | Any = SUM, root: int = 0) -> Any:
        return self._pick("reduce", payload_nbytes(obj)).reduce(obj, op, root)

    def allreduce(self, obj: Any, op: ReduceOp | Any = SUM) -> Any:
        return self._pick("allreduce", payload_nbytes(obj)).allreduce(obj, op)

    def scan(self, obj: Any, op: ReduceOp | Any = SUM) -> Any:
        return self._pick("scan", payload_nbytes(obj)).scan(obj, op)

    def gather(self, obj: Any, root: int = 0) -> list[Any] | None:
        head, comm = self._wrap("gather", obj)
        heads = self._control.gather(head, root)
        if self.rank != root:
            if comm is not None:
                comm.send(obj, root, 1)  # odd tags: the choice's own messages
            return None
        out = []
        for r, (kind, value) in enumerate(heads):
            if r == root or kind == _INLINE:
                out.append(obj if r == root else value)
            else:
                out.append(self._comms[value].recv(r, 1))
        return out

    def allgather(self, obj: Any) -> list[Any]:
        return self.bcast(self.gather(obj, 0), 0)

    def scatter(self, objs: list[Any] | None = None, root: int = 0) -> Any:
        if self.rank != root:
            kind, value = self._control.scatter(None, root)
            return value if kind == _INLINE else self._comms[value].recv(root, 1)
        items = list(objs or [])
        wrapped = [self._wrap("scatter", x) for x in items]
        mine = self._control.scatter([h for h, _ in wrapped], root)
        for r, ((_, comm), x) in enumerate(zip(wrapped, items, strict=True)):
            if r != root and comm is not None:
                comm.send(x, r, 1)
        return mine[1] if mine[0] == _INLINE else items[root]


__all__ = ["ChannelChoice", "payload_nbytes"]
