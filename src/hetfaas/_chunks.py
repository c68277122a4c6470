"""Bulk ``map``: many items per call, each item's result or error kept apart.

``Executor.map(fn, items, chunksize=...)`` ships the items in chunks: one call runs ``fn``
over a chunk in a C-level loop (``map``/``starmap``), so an item costs about what the
function costs, not a call's overhead. An item that raises does not stop its chunk: its
error is encoded (as any remote error) in its place and raised, in order, when the caller's
iteration reaches it; the items after it still ran and keep their results.

A chunk is one call with its own :class:`~hetfaas.Timings` (the chunk future's); its
``compute_us`` covers the chunk's items, and :class:`ChunkResult` carries the compute time
per item on average (timing each item separately would cost more than a no-op item).
"""

from __future__ import annotations

import math
import time
from itertools import starmap
from typing import Any, NamedTuple

from .backends import errors

MAX_CHUNK = 16_384  # items per chunk at most (bounds a chunk's memory and its lost work)
CHUNKS_PER_WORKER = 4  # automatic chunks: at least this many per worker, for balance
SMALL_MAP_PER_WORKER = 4  # a map of at most this many items per worker is not chunked


def auto_chunksize(n_items: int, workers: int) -> int:
    """The chunk size ``map`` uses when none is given: 1 (no chunks) for a small map, else
    enough chunks for every worker to get several, so that they end close together."""
    workers = max(1, workers)
    if n_items <= SMALL_MAP_PER_WORKER * workers:
        return 1
    return max(1, min(MAX_CHUNK, math.ceil(n_items / (CHUNKS_PER_WORKER * workers))))


class ChunkResult(NamedTuple):
    values: list[Any]  # None where the item raised
    errors: dict[int, bytes] | None  # index in the chunk -> the error, as errors.encode made it
    compute_ns: int  # the whole chunk's function time

    @property
    def per_item_ns(self) -> float:
        return self.compute_ns / max(1, len(self.values))


class ChunkCall:
    """``fn`` over a chunk: ``ChunkCall(fn)(items)``. With ``star`` each item is a tuple of
    arguments (a map over several iterables); otherwise each item is the one argument."""

    __slots__ = ("fn", "star")

    def __init__(self, fn: Any, star: bool) -> None:
        self.fn, self.star = fn, star

    def __getstate__(self) -> tuple[Any, bool]:
        return self.fn, self.star

    def __setstate__(self, state: tuple[Any, bool]) -> None:
        self.fn, self.star = state

    def __repr__(self) -> str:
        return f"map({getattr(self.fn, '__qualname__', repr(self.fn))})"

    def __call__(self, items: list[Any]) -> ChunkResult:
        fn = self.fn
        it = iter(items)
        out: list[Any] = []
        errs: dict[int, bytes] | None = None
        t0 = time.perf_counter_ns()
        while True:
            try:
                # extend keeps what it appended before an item raised; the iterator goes on
                out.extend(starmap(fn, it) if self.star else map(fn, it))
                break
            except Exception as exc:
                if errs is None:
                    errs = {}
                errs[len(out)] = errors.encode(exc)
                out.append(None)
        return ChunkResult(out, errs, time.perf_counter_ns() - t0)


def chunk_items(items: list[Any], size: int) -> list[list[Any]]:
    return [items[i : i + size] for i in range(0, len(items), size)]


__all__ = ["ChunkCall", "ChunkResult", "auto_chunksize", "chunk_items"]
