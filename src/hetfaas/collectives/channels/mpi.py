"""``mpi://``: when the functions run as MPI ranks, MPI runs the collectives.

Under ``mpirun`` or ``srun`` (mpi4py over OpenMPI, MPICH, ...) a group is the world
communicator (duplicated, so the group's traffic never mixes with the application's own MPI
calls), and every collective of the :class:`~hetfaas.collectives.Communicator` maps onto MPI's:

- numpy arrays and CPU torch tensors with sum, prod, max or min go through MPI's buffer
  collectives (``Iallreduce``, ``Ireduce``, ``Iscan``, ``Ibcast``) straight from and into
  their memory; a custom op declared associative becomes an ``MPI.Op.Create`` user op (with
  ``commute`` from the op), which MPI applies in rank order when it is not commutative.
- other objects (and arrays under an op that is not associative) are pickled (protocol 5,
  buffers out of band) and moved with ``Iallgatherv``/``Igatherv``/``Iscatterv``; reductions
  of them are folded left to right in rank order, exactly as the op's contract asks.

Every call is non-blocking underneath and waited on under the communicator's deadline, so no
collective hangs: on timeout the ranks that are still waiting ask the others which operation
they are in, and the :class:`~hetfaas.exceptions.PeerTimeout` names the ranks that did not
answer from the same operation or a later one. An MPI collective cannot be cancelled, so a
channel that timed out refuses further operations (:class:`ChannelClosed`).

URI: ``mpi://`` (the world communicator). ``rank`` and ``size`` given to the communicator must
be the MPI rank and world size (or ``-1`` to take them from MPI).
"""

from __future__ import annotations

import os
import time
from typing import Any, ClassVar

import numpy as np

from ...exceptions import (
    ChannelClosed,
    ChannelUnavailable,
    ConfigurationError,
    GroupMismatch,
    PayloadTooLarge,
    PeerTimeout,
)
from .. import payload
from ..ops import MAX, MIN, PROD, SUM, ReduceOp, as_op, fold
from .base import NativeChannel, register_channel, split_uri

_TAG_OFFSET = 16  # user tags map above the channel's own
_TAG_CENSUS = 1
_TAG_CENSUS_REPLY = 2
_TAG_SCATTER_ERROR = 3
_SPIN_S = 1e-3
_SLEEP_MAX_S = 1e-3
_CENSUS_AFTER_S = 2e-3  # a wait shorter than this never looks at census questions


_MPI: Any = None
_MPI_DTYPES: dict[np.dtype, bool] = {}  # numpy dtypes MPI's buffer calls take


def _mpi() -> Any:
    global _MPI
    if _MPI is not None:
        return _MPI
    try:
        from mpi4py import MPI
    except ImportError as exc:  # the package, or the MPI library under it
        raise ChannelUnavailable(
            f"the mpi:// channel needs mpi4py and an MPI library ({exc}); "
            "pip install 'hetfaas[collectives]' and apt-get install openmpi-bin libopenmpi-dev"
        ) from exc
    _MPI = MPI
    return MPI


def _mpi_knows(dtype: np.dtype) -> bool:
    known = _MPI_DTYPES.get(dtype)
    if known is None and dtype.kind not in "iuf":  # MPI's MAX/SUM do not take bool, complex
        known = _MPI_DTYPES[dtype] = False
    if known is None:
        from mpi4py.util import dtlib

        try:
            dtlib.from_numpy_dtype(dtype)
            known = True
        except (ValueError, KeyError, TypeError):
            known = False
        _MPI_DTYPES[dtype] = known
    return known


def _as_array(obj: Any) -> tuple[np.ndarray, bool] | None:
    """A contiguous numpy view of an array or CPU tensor whose dtype MPI knows, else None."""
    is_tensor = False
    if isinstance(obj, np.ndarray):
        arr = obj
    else:
        import sys

        torch = sys.modules.get("torch")
        if torch is None or not isinstance(obj, torch.Tensor) or obj.device.type != "cpu":
            return None
        try:
            arr = obj.detach().contiguous().numpy()
        except (TypeError, RuntimeError):
            return None
        is_tensor = True
    if not arr.flags.c_contiguous:
        arr = np.ascontiguousarray(arr)
    if not _mpi_knows(arr.dtype):
        return None
    return arr, is_tensor


def _back(arr: np.ndarray, is_tensor: bool) -> Any:
    if is_tensor:
        import torch

        return torch.from_numpy(arr)
    return arr


@register_channel
class MPIChannel(NativeChannel):
    """One rank's end of a group that is an MPI world."""

    scheme: ClassVar[str] = "mpi"
    limits: int = 2**31 - 1  # MPI counts are C ints (one message, in bytes)

    def __init__(self) -> None:
        self._comm: Any = None
        self._seq = 0
        self._broken: str | None = None
        self._pending: list[Any] = []  # census messages in flight
        self.timeout_s = 60.0

    @classmethod
    def from_uri(cls, uri: str) -> MPIChannel:
        parts = split_uri(uri, "mpi")
        if parts.netloc or parts.path not in ("", "/") or parts.query:
            raise ConfigurationError(
                f"mpi:// takes no host, path or options (the group is MPI's world), got {uri!r}"
            )
        return cls()

    # --- joining ---------------------------------------------------------------------------

    def connect(self, group: str, rank: int, size: int, deadline: float) -> None:
        MPI = _mpi()
        world = MPI.COMM_WORLD
        if rank == -1:
            rank = world.Get_rank()
        if size == -1:
            size = world.Get_size()
        if (rank, size) != (world.Get_rank(), world.Get_size()):
            raise GroupMismatch(
                f"mpi:// groups are MPI's world: this process is rank {world.Get_rank()} of "
                f"{world.Get_size()}, but the communicator was given rank {rank} of {size}"
            )
        self.group, self.rank, self.size = group, rank, size
        self.timeout_s = max(deadline - time.monotonic(), 0.001)
        # Dup is collective: wait for it under the deadline (MPI cannot say who is absent yet)
        deadline = time.monotonic() + self.timeout_s
        comm, req = world.Idup()
        self._wait(req, deadline, "joining the group (MPI_Comm_idup)", [])
        self._comm = comm
        names = {bytes(n) for n in self._allgather_bytes(group.encode(), "joining the group")}
        if len(names) != 1:
            by_name = sorted(n.decode(errors="replace") for n in names)
            raise GroupMismatch(f"mpi:// ranks joined different groups: {', '.join(by_name)}")

    def set_timeout(self, timeout_s: float) -> None:
        """The deadline of each following operation, in seconds from its start."""
        if not timeout_s > 0:
            raise ConfigurationError(f"timeout_s must be > 0, got {timeout_s!r}")
        self.timeout_s = float(timeout_s)

    def close(self) -> None:
        comm, self._comm = self._comm, None
        if comm is None:
            return
        self._drain_census(comm)
        self._pending.clear()
        try:
            if self._broken is None:
                comm.Free()
        except Exception:  # MPI is finalizing: nothing left to free
            pass

    # --- waiting under the deadline --------------------------------------------------------

    def _start(self, what: str) -> float:
        if self._comm is None:
            raise ChannelClosed(f"mpi:// channel of group {self.group!r} is closed ({what})")
        if self._broken:
            raise ChannelClosed(
                f"mpi:// group {self.group!r} is unusable after {self._broken}; "
                "MPI cannot cancel a collective in flight: start a new group"
            )
        self._seq += 1
        return time.monotonic() + self.timeout_s

    def _wait(self, req: Any, deadline: float, what: str, peers: list[int] | None = None) -> None:
        """Wait for one request (or a list) until ``deadline``, answering census questions.

        MPI progresses only inside MPI calls: test in a loop that yields the CPU (ranks are
        often oversubscribed), then sleep with back-off once the wait is long."""
        MPI = _mpi()
        reqs = req if isinstance(req, list) else [req]
        testall = MPI.Request.Testall
        if testall(reqs):
            return
        started = time.monotonic()
        sleep = 0.0
        while not testall(reqs):
            now = time.monotonic()
            if now - started < _SPIN_S:
                os.sched_yield()
                continue
            if self._comm is not None and now - started > _CENSUS_AFTER_S:
                self._answer_census()
            if now >= deadline:
                self._timeout(what, peers)
            sleep = min(max(sleep * 2, 20e-6), _SLEEP_MAX_S, max(deadline - now, 0.0))
            time.sleep(sleep)

    def _answer_census(self) -> None:
        MPI = _mpi()
        status = MPI.Status()
        while self._comm.Iprobe(MPI.ANY_SOURCE, _TAG_CENSUS, status):
            src = status.Get_source()
            self._comm.recv(source=src, tag=_TAG_CENSUS)
            self._pending.append(self._comm.isend(self._seq, dest=src, tag=_TAG_CENSUS_REPLY))

    def _drain_census(self, comm: Any) -> None:
        try:
            MPI = _mpi()
            status = MPI.Status()
            for tag in (_TAG_CENSUS, _TAG_CENSUS_REPLY):
                while comm.Iprobe(MPI.ANY_SOURCE, tag, status):
                    comm.recv(source=status.Get_source(), tag=tag)
        except Exception:
            pass

    def _timeout(self, what: str, peers: list[int] | None) -> None:
        """Find out who is absent (ranks that do not answer from this operation or a later
        one within a short grace period), mark the channel unusable, raise PeerTimeout."""
        MPI = _mpi()
        seq = self._seq
        self._broken = f"a timeout in {what}"
        others = [r for r in range(self.size) if r != self.rank]
        if peers is None:
            for r in others:
                self._pending.append(self._comm.isend(seq, dest=r, tag=_TAG_CENSUS))
            grace_end = time.monotonic() + min(1.0, max(0.2, 0.1 * self.timeout_s))
            answered: dict[int, int] = {}
            status = MPI.Status()
            while time.monotonic() < grace_end and len(answered) < len(others):
                self._answer_census()
                while self._comm.Iprobe(MPI.ANY_SOURCE, _TAG_CENSUS_REPLY, status):
                    src = status.Get_source()
                    answered[src] = self._comm.recv(source=src, tag=_TAG_CENSUS_REPLY)
                time.sleep(1e-3)
            peers = [r for r in others if answered.get(r, -1) < seq]
        raise PeerTimeout(
            f"group {self.group!r} (rank {self.rank} of {self.size}) over mpi: {what} "
            f"did not finish within {self.timeout_s:.3g} s",
            peers,
        )

    # --- pickled objects -------------------------------------------------------------------

    @staticmethod
    def _pickle(obj: Any) -> np.ndarray:
        segments, total = payload.encode(obj)
        if total > MPIChannel.limits:
            raise PayloadTooLarge(f"{total} bytes is over mpi://'s limit of {MPIChannel.limits}")
        return np.frombuffer(payload.join(segments, total), dtype=np.uint8)

    def _allgather_bytes(self, data: bytes | np.ndarray, what: str) -> list[memoryview]:
        deadline = self._start(what)
        return self._allgatherv(np.frombuffer(data, dtype=np.uint8), deadline, what)

    def _allgatherv(self, mine: np.ndarray, deadline: float, what: str) -> list[memoryview]:
        MPI = _mpi()
        counts = np.zeros(self.size, dtype=np.int64)
        mine_n = np.array([mine.nbytes], dtype=np.int64)
        self._wait(self._comm.Iallgather(mine_n, counts), deadline, what)
        displs = np.concatenate(([0], np.cumsum(counts)[:-1]))
        out = np.empty(int(counts.sum()), dtype=np.uint8)
        recv = [out, counts.tolist(), displs.tolist(), MPI.BYTE]
        self._wait(self._comm.Iallgatherv([mine, MPI.BYTE], recv), deadline, what)
        view = memoryview(out)
        return [view[int(d) : int(d) + int(c)] for d, c in zip(displs, counts, strict=True)]

    def _gatherv(self, mine: np.ndarray, root: int, deadline: float, what: str) -> list[Any]:
        MPI = _mpi()
        counts = np.zeros(self.size, dtype=np.int64) if self.rank == root else None
        self._wait(
            self._comm.Igather(np.array([mine.nbytes], dtype=np.int64), counts, root=root),
            deadline, what,
        )  # fmt: skip
        if self.rank != root:
            self._wait(self._comm.Igatherv([mine, MPI.BYTE], None, root=root), deadline, what)
            return []
        displs = np.concatenate(([0], np.cumsum(counts)[:-1]))
        out = np.empty(int(counts.sum()), dtype=np.uint8)
        recv = [out, counts.tolist(), displs.tolist(), MPI.BYTE]
        self._wait(self._comm.Igatherv([mine, MPI.BYTE], recv, root=root), deadline, what)
        view = memoryview(out)
        return [view[int(d) : int(d) + int(c)] for d, c in zip(displs, counts, strict=True)]

    def _bcast_bytes(self, data: np.ndarray | None, root: int, deadline: float, what: str) -> Any:
        n = np.array([data.nbytes if data is not None else 0], dtype=np.int64)
        self._wait(self._comm.Ibcast(n, root=root), deadline, what)
        buf = data if self.rank == root else np.empty(int(n[0]), dtype=np.uint8)
        self._wait(self._comm.Ibcast(buf, root=root), deadline, what)
        return memoryview(buf)

    # --- the collectives -------------------------------------------------------------------

    def _check_rank(self, rank: int, role: str) -> None:
        if not (isinstance(rank, int) and 0 <= rank < self.size):
            raise ConfigurationError(f"{role} must be a rank in 0..{self.size - 1}, got {rank!r}")

    def _tag(self, tag: int) -> int:
        MPI = _mpi()
        top = MPI.COMM_WORLD.Get_attr(MPI.TAG_UB) - _TAG_OFFSET
        if not (isinstance(tag, int) and 0 <= tag <= top):
            raise ConfigurationError(f"tag must be an int in 0..{top} over mpi://, got {tag!r}")
        return tag + _TAG_OFFSET

    def send(self, obj: Any, dest: int, tag: int = 0) -> None:
        self._check_rank(dest, "dest")
        mtag = self._tag(tag)
        deadline = self._start(f"send to rank {dest}")
        found = _as_array(obj)
        if found is not None:
            arr, is_tensor = found
            head = self._pickle(("array", arr.dtype.str, arr.shape, is_tensor))
            reqs = [self._comm.Isend(head, dest, mtag), self._comm.Isend(arr, dest, mtag)]
        else:
            reqs = [self._comm.Isend(self._pickle(("object",)), dest, mtag),
                    self._comm.Isend(self._pickle(obj), dest, mtag)]  # fmt: skip
        self._wait(reqs, deadline, f"send to rank {dest}", [dest])

    def _recv_frame(self, source: int, mtag: int, deadline: float, what: str) -> np.ndarray:
        MPI = _mpi()
        status = MPI.Status()
        sleep = 0.0
        while not self._comm.Iprobe(source, mtag, status):
            now = time.monotonic()
            if now >= deadline:
                self._timeout(what, [source])
            self._answer_census()
            sleep = min(max(sleep * 2, 20e-6), _SLEEP_MAX_S)
            time.sleep(sleep)
        buf = np.empty(status.Get_count(MPI.BYTE), dtype=np.uint8)
        self._wait(self._comm.Irecv(buf, source, mtag), deadline, what, [source])
        return buf

    def recv(self, source: int, tag: int = 0) -> Any:
        self._check_rank(source, "source")
        mtag = self._tag(tag)
        what = f"recv from rank {source}"
        deadline = self._start(what)
        head = payload.decode(self._recv_frame(source, mtag, deadline, what))
        if head[0] == "array":
            _, dtype, shape, is_tensor = head
            arr = np.empty(shape, dtype=np.dtype(dtype))
            self._wait(self._comm.Irecv(arr, source, mtag), deadline, what, [source])
            return _back(arr, is_tensor)
        return payload.decode(self._recv_frame(source, mtag, deadline, what))

    def barrier(self) -> None:
        deadline = self._start("barrier")
        self._wait(self._comm.Ibarrier(), deadline, "barrier")

    def bcast(self, obj: Any = None, root: int = 0) -> Any:
        self._check_rank(root, "root")
        deadline = self._start("bcast")
        head = None
        found = _as_array(obj) if self.rank == root else None
        if self.rank == root:
            if found is not None:
                arr, is_tensor = found
                head = self._pickle(("array", arr.dtype.str, arr.shape, is_tensor))
            else:
                head = self._pickle(("object", obj))
        meta = payload.decode(self._bcast_bytes(head, root, deadline, "bcast"))
        if meta[0] == "object":
            return meta[1]
        _, dtype, shape, is_tensor = meta
        arr = found[0] if found is not None else np.empty(shape, dtype=np.dtype(dtype))
        self._wait(self._comm.Ibcast(arr, root=root), deadline, "bcast")
        if self.rank == root:
            return obj
        return _back(arr, is_tensor)

    def _mpi_op(self, op: ReduceOp, dtype: np.dtype, is_tensor: bool) -> tuple[Any, bool]:
        """MPI's own op for a built-in, else a user op (and True: free it after use)."""
        MPI = _mpi()
        builtin = {id(SUM): MPI.SUM, id(PROD): MPI.PROD, id(MAX): MPI.MAX, id(MIN): MPI.MIN}
        if id(op) in builtin:
            return builtin[id(op)], False
        fn = op.fn

        def apply(inbuf: Any, inoutbuf: Any, datatype: Any) -> None:
            # MPI hands the lower ranks' operand as inbuf: inout = in op inout keeps rank order
            a = np.frombuffer(inbuf, dtype=dtype)
            b = np.frombuffer(inoutbuf, dtype=dtype)
            res = fn(_back(a, is_tensor), _back(b.copy(), is_tensor))
            b[...] = np.asarray(res)

        return MPI.Op.Create(apply, commute=op.commutative), True

    def _reduce(self, obj: Any, op: Any, root: int | None, what: str) -> Any:
        rop = as_op(op)
        deadline = self._start(what)
        found = _as_array(obj)
        # Every rank must take the same path: arrays (same dtype everywhere) or pickles.
        if found is not None and rop.associative:
            arr, is_tensor = found
            flat = arr.reshape(-1)
            out = np.empty_like(flat) if (root is None or self.rank == root) else None
            mop, free = self._mpi_op(rop, arr.dtype, is_tensor)
            try:
                if what == "scan":
                    req = self._comm.Iscan(flat, out, op=mop)
                elif root is None:
                    req = self._comm.Iallreduce(flat, out, op=mop)
                else:
                    req = self._comm.Ireduce(flat, out, op=mop, root=root)
                self._wait(req, deadline, what)
            finally:
                if free:
                    mop.Free()
            return None if out is None else _back(out.reshape(arr.shape), is_tensor)
        mine = self._pickle(obj)
        if root is None:  # allreduce, scan: everyone folds the same list in rank order
            values = [payload.decode(b) for b in self._allgatherv(mine, deadline, what)]
            if what == "scan":
                values = values[: self.rank + 1]
            return fold(rop, values)
        parts = self._gatherv(mine, root, deadline, what)
        if self.rank != root:
            return None
        return fold(rop, [payload.decode(b) for b in parts])

    def reduce(self, obj: Any, op: Any = SUM, root: int = 0) -> Any:
        self._check_rank(root, "root")
        return self._reduce(obj, op, root, "reduce")

    def allreduce(self, obj: Any, op: Any = SUM) -> Any:
        return self._reduce(obj, op, None, "allreduce")

    def scan(self, obj: Any, op: Any = SUM) -> Any:
        return self._reduce(obj, op, None, "scan")

    def gather(self, obj: Any, root: int = 0) -> list[Any] | None:
        self._check_rank(root, "root")
        deadline = self._start("gather")
        parts = self._gatherv(self._pickle(obj), root, deadline, "gather")
        if self.rank != root:
            return None
        return [payload.decode(b) for b in parts]

    def allgather(self, obj: Any) -> list[Any]:
        deadline = self._start("allgather")
        return [
            payload.decode(b) for b in self._allgatherv(self._pickle(obj), deadline, "allgather")
        ]

    def scatter(self, objs: Any = None, root: int = 0) -> Any:
        self._check_rank(root, "root")
        MPI = _mpi()
        deadline = self._start("scatter")
        error = None
        if self.rank == root:
            try:
                items = list(objs)
            except TypeError:
                items = None
            if items is None or len(items) != self.size:
                got = "nothing iterable" if items is None else f"{len(items)} items"
                error = f"scatter at root {root} needs one item per rank ({self.size}), got {got}"
                items = [("error", error)] * self.size
            else:
                items = [("ok", x) for x in items]
            frames = [self._pickle(x) for x in items]
            counts = np.array([f.nbytes for f in frames], dtype=np.int64)
            send = np.concatenate(frames) if frames else np.empty(0, np.uint8)
        else:
            counts, send = None, None
        n = np.zeros(1, dtype=np.int64)
        self._wait(self._comm.Iscatter(counts, n, root=root), deadline, "scatter")
        buf = np.empty(int(n[0]), dtype=np.uint8)
        if self.rank == root:
            displs = np.concatenate(([0], np.cumsum(counts)[:-1]))
            sendspec = [send, counts.tolist(), displs.tolist(), MPI.BYTE]
        else:
            sendspec = None
        self._wait(self._comm.Iscatterv(sendspec, buf, root=root), deadline, "scatter")
        status, value = payload.decode(buf)
        if status == "error":
            raise GroupMismatch(value) if error is None else ConfigurationError(value)
        return value


__all__ = ["MPIChannel"]
