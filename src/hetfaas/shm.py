"""Shared memory for large buffers: named segments under /dev/shm, reused, never per call.

Touching fresh pages costs about 15x a copy into pages already mapped, so the pools below keep
segments (and each process keeps its mappings) across calls:

- :class:`SegmentPool` hands out segments of at least the asked size (power-of-two classes)
  and takes them back; the caller copies large arguments into one, a worker copies large
  results into one of its own.
- :class:`AttachCache` maps a segment by name once per process and keeps the mapping.
- :func:`shared_array` / :func:`shared_tensor` / :func:`share` allocate buffers that already
  live in shared memory: passing them to a call copies nothing.

A buffer handed to user code is built on a *lease view* of a mapping (:meth:`Segment.view`);
a finalizer on that view tells the owner when every array or tensor built on it is gone.
"""

from __future__ import annotations

import bisect
import contextlib
import ctypes
import itertools
import mmap
import os
import threading
import weakref
from collections import OrderedDict
from collections.abc import Callable
from typing import Any

import numpy as np

SHM_DIR = "/dev/shm" if os.path.isdir("/dev/shm") else "/tmp"
PREFIX = "hetfaas-"
MIN_SEGMENT = 1 << 20
_counter = itertools.count()


def segment_name(tag: str) -> str:
    """A new segment name, unique in this process; ``tag`` scopes it to an owner."""
    return f"{PREFIX}{os.getpid()}-{tag}-{next(_counter)}"


def _path(name: str) -> str:
    return os.path.join(SHM_DIR, name)


def size_class(nbytes: int) -> int:
    """Segments come in power-of-two sizes from 1 MiB, so they can be reused across calls."""
    size = MIN_SEGMENT
    while size < nbytes:
        size <<= 1
    return size


class Segment:
    """A named shared-memory file mapped into this process."""

    __slots__ = ("__weakref__", "addr", "array", "mmap", "name", "size")

    def __init__(self, name: str, mm: mmap.mmap) -> None:
        self.name = name
        self.mmap = mm
        self.size = len(mm)
        self.array = np.frombuffer(mm, dtype=np.uint8)
        self.addr: int = self.array.ctypes.data

    @classmethod
    def create(cls, name: str, size: int) -> Segment:
        fd = os.open(_path(name), os.O_CREAT | os.O_EXCL | os.O_RDWR, 0o600)
        try:
            os.ftruncate(fd, size)
            mm = mmap.mmap(fd, size)
        finally:
            os.close(fd)
        return cls(name, mm)

    @classmethod
    def attach(cls, name: str) -> Segment:
        fd = os.open(_path(name), os.O_RDWR)
        try:
            mm = mmap.mmap(fd, os.fstat(fd).st_size)
        finally:
            os.close(fd)
        return cls(name, mm)

    def view(self, offset: int, nbytes: int) -> Any:
        """A lease view: a new buffer object over part of the mapping.

        A ctypes array, not a numpy view: numpy collapses chains of views onto the array that
        holds the memory, which would let a numpy lease die while arrays built on it live on.
        Arrays, tensors and memoryviews made from this object keep it alive.
        """
        return (ctypes.c_ubyte * nbytes).from_buffer(self.mmap, offset)

    def unlink(self) -> None:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(_path(self.name))


class SegmentPool:
    """Reusable segments owned by one process; idle bytes above ``max_idle_bytes`` are freed."""

    def __init__(
        self,
        tag: str,
        max_idle_bytes: int = 4 << 30,
        on_drop: Callable[[str], None] | None = None,
    ) -> None:
        self.tag = tag
        self.max_idle_bytes = max_idle_bytes
        self.on_drop = on_drop  # told the name of each segment given up (others may map it)
        self._free: list[Segment] = []  # sorted by size
        self._all: dict[str, Segment] = {}
        self._lock = threading.Lock()

    def lease(self, nbytes: int) -> Segment:
        with self._lock:
            sizes = [s.size for s in self._free]
            i = bisect.bisect_left(sizes, nbytes)
            # Reuse a segment up to 4x too large before making a new one: its pages are warm.
            if i < len(sizes) and sizes[i] <= 4 * size_class(nbytes):
                return self._free.pop(i)
        seg = Segment.create(segment_name(self.tag), size_class(nbytes))
        with self._lock:
            self._all[seg.name] = seg
        return seg

    def release(self, seg: Segment) -> None:
        with self._lock:
            if seg.name not in self._all:
                return
            sizes = [s.size for s in self._free]
            self._free.insert(bisect.bisect_right(sizes, seg.size), seg)
            idle = sum(sizes) + seg.size
            while idle > self.max_idle_bytes and self._free:
                victim = self._free.pop()  # the largest
                idle -= victim.size
                self._drop(victim)

    def forget(self, seg: Segment) -> None:
        """Stop reusing ``seg`` (someone kept a reference to it); it is unlinked now."""
        with self._lock:
            self._drop(seg)

    def _drop(self, seg: Segment) -> None:
        self._all.pop(seg.name, None)
        seg.unlink()
        if self.on_drop is not None:
            self.on_drop(seg.name)

    def get(self, name: str) -> Segment | None:
        return self._all.get(name)

    @property
    def names(self) -> list[str]:
        return list(self._all)

    def close(self) -> None:
        with self._lock:
            for seg in list(self._all.values()):
                seg.unlink()
            self._all.clear()
            self._free.clear()


class AttachCache:
    """Segments of other processes mapped by name, kept mapped (LRU, bounded by count)."""

    def __init__(self, max_segments: int = 1024) -> None:
        self.max_segments = max_segments
        self._maps: OrderedDict[str, Segment] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, name: str) -> Segment:
        with self._lock:
            seg = self._maps.get(name)
            if seg is not None:
                self._maps.move_to_end(name)
                return seg
        seg = Segment.attach(name)
        with self._lock:
            self._maps[name] = seg
            while len(self._maps) > self.max_segments:
                self._maps.popitem(last=False)
        return seg

    def forget(self, name: str) -> None:
        with self._lock:
            self._maps.pop(name, None)

    def forget_prefix(self, prefix: str) -> None:
        with self._lock:
            for name in [n for n in self._maps if n.startswith(prefix)]:
                del self._maps[name]


class SharedRegistry:
    """Address ranges of buffers that already live in shared memory, for zero-copy passing."""

    def __init__(self) -> None:
        self._starts: list[int] = []
        self._entries: list[tuple[int, int, str]] = []  # (start, end, segment name)
        self._lock = threading.Lock()

    def add(self, seg: Segment) -> None:
        with self._lock:
            i = bisect.bisect_left(self._starts, seg.addr)
            self._starts.insert(i, seg.addr)
            self._entries.insert(i, (seg.addr, seg.addr + seg.size, seg.name))

    def remove(self, name: str) -> None:
        with self._lock:
            for i, entry in enumerate(self._entries):
                if entry[2] == name:
                    del self._entries[i]
                    del self._starts[i]
                    return

    def find(self, addr: int, nbytes: int) -> tuple[str, int] | None:
        """(segment name, offset) when ``[addr, addr + nbytes)`` lies inside a known segment."""
        if not self._starts:
            return None
        with self._lock:
            i = bisect.bisect_right(self._starts, addr) - 1
            if i < 0:
                return None
            start, end, name = self._entries[i]
        if addr + nbytes <= end:
            return name, addr - start
        return None


#: Buffers allocated by :func:`shared_array` in this process, found by address.
REGISTRY = SharedRegistry()


def _free_shared(name: str) -> None:
    REGISTRY.remove(name)
    with contextlib.suppress(FileNotFoundError):
        os.unlink(_path(name))


def shared_array(shape: int | tuple[int, ...], dtype: Any = np.float32) -> np.ndarray:
    """A numpy array in shared memory: passing it to a call copies nothing.

    The worker sees the same memory, so its writes are visible to the caller (as with
    ``torch.multiprocessing``). Freed when the array and every view of it are gone.
    """
    dt = np.dtype(dtype)
    shape_t = (shape,) if isinstance(shape, int) else tuple(shape)
    nbytes = int(np.prod(shape_t, dtype=np.int64)) * dt.itemsize
    if nbytes == 0:
        return np.empty(shape_t, dt)
    lease = _shared_lease(nbytes)
    return np.frombuffer(lease, dtype=dt).reshape(shape_t)


def _shared_lease(nbytes: int) -> Any:
    seg = Segment.create(segment_name("user"), nbytes)
    REGISTRY.add(seg)
    lease = seg.view(0, nbytes)
    weakref.finalize(lease, _free_shared, seg.name)
    return lease


def shared_tensor(shape: int | tuple[int, ...], dtype: Any = None) -> Any:
    """A CPU torch tensor in shared memory (see :func:`shared_array`)."""
    import torch

    dtype = dtype or torch.float32
    shape_t = (shape,) if isinstance(shape, int) else tuple(shape)
    itemsize = torch.empty((), dtype=dtype).element_size()
    nbytes = int(np.prod(shape_t, dtype=np.int64)) * itemsize
    if nbytes == 0:
        return torch.empty(shape_t, dtype=dtype)
    lease = _shared_lease(nbytes)
    return torch.frombuffer(lease, dtype=torch.uint8).view(dtype).reshape(shape_t)


def share(x: Any) -> Any:
    """A copy of a numpy array or CPU tensor in shared memory, to pass to many calls."""
    if isinstance(x, np.ndarray):
        out = shared_array(x.shape, x.dtype)
        np.copyto(out, x)
        return out
    out = shared_tensor(tuple(x.shape), x.dtype)
    out.copy_(x)
    return out


def sweep(prefix: str, keep: Callable[[str], bool] = lambda name: False) -> int:
    """Unlink leftover segments whose name starts with ``prefix``; returns how many."""
    n = 0
    for name in os.listdir(SHM_DIR):
        if name.startswith(prefix) and not keep(name):
            try:
                os.unlink(_path(name))
                n += 1
            except FileNotFoundError:
                pass
    return n


def sweep_orphans() -> int:
    """Unlink segments left by hetfaas processes that no longer exist (killed callers)."""

    def alive(name: str) -> bool:
        try:
            pid = int(name[len(PREFIX) :].split("-", 1)[0])
        except ValueError:
            return True
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return False
        except PermissionError:
            return True
        return True

    return sweep(PREFIX, keep=alive)
