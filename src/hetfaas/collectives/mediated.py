"""Collectives over a store (files, Redis, S3): every message is uploaded once and fetched by
its readers, so a collective costs one or two store round trips per rank, not log P.

Keys are ``c<seq>.<from>.<to|all>``; ``readers`` tells the store how many fetches a message
gets (one: the reader consumes it). Reductions fold in rank order, so any op is exact.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from .ops import ReduceOp, fold

if TYPE_CHECKING:
    from .comm import _Call


def bcast(c: _Call, obj: Any, root: int, tag: str = "") -> Any:
    if c.rank == root:
        c.put(f"{root}.all{tag}", obj, c.size - 1)
        return obj
    return c.get(f"{root}.all{tag}", root, c.size - 1)


def gather(c: _Call, obj: Any, root: int, tag: str = "") -> list[Any] | None:
    if c.rank != root:
        c.put(f"{c.rank}.{root}{tag}", obj, 1)
        return None
    return [obj if r == root else c.get(f"{r}.{root}{tag}", r, 1) for r in range(c.size)]


def reduce(c: _Call, obj: Any, op: ReduceOp, root: int) -> Any:
    values = gather(c, obj, root)
    return None if values is None else fold(op, values)


def allreduce(c: _Call, obj: Any, op: ReduceOp) -> Any:
    return bcast(c, reduce(c, obj, op, 0), 0, ".b")


def barrier(c: _Call, obj: Any) -> None:
    gather(c, None, 0)
    bcast(c, None, 0, ".b")


def scatter(c: _Call, objs: list[Any] | None, root: int) -> Any:
    if c.rank == root and objs is not None:  # Communicator.scatter checked objs
        for r in range(c.size):
            if r != root:
                c.put(f"{root}.{r}", objs[r], 1)
        return objs[root]
    return c.get(f"{root}.{c.rank}", root, 1)


def allgather(c: _Call, obj: Any) -> list[Any]:
    c.put(f"{c.rank}.all", obj, c.size - 1)
    return [obj if r == c.rank else c.get(f"{r}.all", r, c.size - 1) for r in range(c.size)]


def scan(c: _Call, obj: Any, op: ReduceOp) -> Any:
    # Rank r's value is read by the ranks after it; each folds its own prefix in rank order.
    c.put(f"{c.rank}.all", obj, c.size - 1 - c.rank)
    values = [c.get(f"{r}.all", r, c.size - 1 - r) for r in range(c.rank)]
    return fold(op, [*values, obj])
