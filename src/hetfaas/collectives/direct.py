"""Collectives over point-to-point links (TCP): binomial trees, recursive doubling, a ring.

Trees work on ranks relative to the root (``vr = (rank - root) % size``). Only ops that are
commutative and associative are regrouped; any other op is gathered and folded left to right
in rank order (reduce, allreduce) or passed along a chain (scan).
"""

from __future__ import annotations

import sys
from typing import TYPE_CHECKING, Any

import numpy as np

from .ops import ReduceOp, fold

if TYPE_CHECKING:
    from .comm import _Call


def _top(size: int) -> int:
    """The smallest power of two >= size."""
    top = 1
    while top < size:
        top <<= 1
    return top


def bcast(c: _Call, obj: Any, root: int, tag: str = "b") -> Any:
    size, vr = c.size, (c.rank - root) % c.size
    mask = 1
    while mask < size:
        if vr & mask:
            obj = c.recv((vr - mask + root) % size, tag)
            break
        mask <<= 1
    mask >>= 1
    frame = None
    while mask > 0:
        if vr + mask < size:
            frame = frame or c.encode(obj)  # pickled once for every child
            c.send((vr + mask + root) % size, tag, obj, frame)
        mask >>= 1
    return obj


def gather(c: _Call, obj: Any, root: int, tag: str = "g") -> list[Any] | None:
    size, vr = c.size, (c.rank - root) % c.size
    items = [obj]  # objects of relative ranks vr, vr+1, ...
    mask = 1
    while mask < size:
        if vr & mask:
            c.send((vr - mask + root) % size, tag, items)
            return None
        if vr + mask < size:
            items.extend(c.recv((vr + mask + root) % size, tag))
        mask <<= 1
    return [items[(r - root) % size] for r in range(size)]


def scatter(c: _Call, objs: list[Any] | None, root: int, tag: str = "s") -> Any:
    size, vr = c.size, (c.rank - root) % c.size
    if vr == 0:
        items = [objs[(i + root) % size] for i in range(size)] if objs is not None else []
        mask = _top(size) >> 1
    else:
        low = vr & -vr
        items = c.recv((vr - low + root) % size, tag)
        mask = low >> 1
    while mask > 0:  # items[i] is for relative rank vr + i
        if vr + mask < size:
            c.send((vr + mask + root) % size, tag, items[mask : 2 * mask])
            items = items[:mask]
        mask >>= 1
    return items[0]


def reduce(c: _Call, obj: Any, op: ReduceOp, root: int) -> Any:
    if not op.reorderable:
        values = gather(c, obj, root)
        return None if values is None else fold(op, values)
    size, vr = c.size, (c.rank - root) % c.size
    acc = obj
    mask = 1
    while mask < size:
        if vr & mask:
            c.send((vr - mask + root) % size, "r", acc)
            return None
        if vr + mask < size:
            acc = op(acc, c.recv((vr + mask + root) % size, "r"))
        mask <<= 1
    return acc


def allreduce(c: _Call, obj: Any, op: ReduceOp) -> Any:
    if not op.reorderable:
        return bcast(c, reduce(c, obj, op, 0), 0)
    if c.size > 1 and op.elementwise and _ring_bytes(obj) >= c.comm.ring_min_bytes:
        return _ring_allreduce(c, obj, op)
    return _recursive_doubling(c, obj, op)


def _recursive_doubling(c: _Call, obj: Any, op: ReduceOp) -> Any:
    """Exchange with partner rank ^ 2^k for log2 steps. With size not a power of two, the
    first 2*rem ranks pair up first (even into odd), and the evens get the result at the end.
    Both partners compute op(lower, higher), so every rank ends with the same bits."""
    rank, size = c.rank, c.size
    pof2 = 1 << (size.bit_length() - 1)
    rem = size - pof2
    acc = obj
    if rank < 2 * rem:
        if rank % 2 == 0:
            c.send(rank + 1, "f", acc)
            return c.recv(rank + 1, "u")
        acc = op(c.recv(rank - 1, "f"), acc)
        newrank = rank // 2
    else:
        newrank = rank - rem
    mask = 1
    while mask < pof2:
        pn = newrank ^ mask
        partner = pn * 2 + 1 if pn < rem else pn + rem
        c.send(partner, f"d{mask}", acc)
        other = c.recv(partner, f"d{mask}")
        acc = op(acc, other) if rank < partner else op(other, acc)
        mask <<= 1
    if rank < 2 * rem:
        c.send(rank - 1, "u", acc)
    return acc


def _ring_bytes(obj: Any) -> int:
    """The size of an array the ring can carry as raw numbers, else -1."""
    if isinstance(obj, np.ndarray):
        return obj.nbytes if obj.dtype.kind in "biuf" else -1
    torch = sys.modules.get("torch")
    if (
        torch is not None
        and isinstance(obj, torch.Tensor)
        and obj.device.type == "cpu"
        and obj.layout == torch.strided
        and not obj.is_complex()
        and obj.dtype != torch.bfloat16
    ):
        return obj.element_size() * obj.numel()
    return -1


def _ring_allreduce(c: _Call, obj: Any, op: ReduceOp) -> Any:
    """Reduce-scatter then allgather around the ring: each rank sends 2(P-1)/P of the array
    instead of log2(P) whole copies. Chunks travel as raw bytes and each phase posts its
    receive buffers up front, so chunks land in the result in place: the only new memory is
    the result itself."""
    is_tensor = not isinstance(obj, np.ndarray)
    src = obj.detach().contiguous().numpy() if is_tensor else np.ascontiguousarray(obj)
    shape, src = src.shape, src.reshape(-1)
    acc = np.empty_like(src)
    rank, size = c.rank, c.size
    bounds = [i * src.size // size for i in range(size + 1)]

    def part(a: np.ndarray, i: int) -> np.ndarray:
        i %= size
        return a[bounds[i] : bounds[i + 1]]

    right, left = (rank + 1) % size, (rank - 1) % size
    # Reduce-scatter: step s receives the left's partial of chunk r-s-1 into that chunk of
    # the result (untouched until then), adds our own part, and passes it on at step s+1.
    for step in range(size - 1):
        c.post(left, f"rs{step}", part(acc, rank - step - 1))
    for step in range(size - 1):
        outgoing = part(src if step == 0 else acc, rank - step)
        into = part(acc, rank - step - 1)
        c.exchange(right, left, f"rs{step}", outgoing, into)
        if op.ufunc is not None:
            op.ufunc(into, part(src, rank - step - 1), out=into)
        else:
            into[...] = op(into, part(src, rank - step - 1))
    # Allgather: chunk r+1 is complete here; the others come round from the left.
    for step in range(size - 1):
        c.post(left, f"ag{step}", part(acc, rank - step))
    for step in range(size - 1):
        c.exchange(right, left, f"ag{step}", part(acc, rank + 1 - step), part(acc, rank - step))
    out = acc.reshape(shape)
    if is_tensor:
        import torch

        return torch.from_numpy(out)
    return out


def barrier(c: _Call, obj: Any) -> None:
    gather(c, None, 0)
    bcast(c, None, 0)


def allgather(c: _Call, obj: Any) -> list[Any]:
    return bcast(c, gather(c, obj, 0), 0)


def scan(c: _Call, obj: Any, op: ReduceOp) -> Any:
    rank, size = c.rank, c.size
    if not op.reorderable:  # a chain: ((x0 op x1) op x2) ... exactly
        acc = op(c.recv(rank - 1, "p"), obj) if rank > 0 else obj
        if rank + 1 < size:
            c.send(rank + 1, "p", acc)
        return acc
    acc, dist = obj, 1  # Hillis-Steele: log2(size) steps
    while dist < size:
        if rank + dist < size:
            c.send(rank + dist, f"h{dist}", acc)
        if rank - dist >= 0:
            acc = op(c.recv(rank - dist, f"h{dist}"), acc)
        dist <<= 1
    return acc
