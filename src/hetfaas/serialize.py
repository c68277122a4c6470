"""Pickling for calls: code once by digest, data with large buffers out of band.

- Functions are pickled with cloudpickle once per function object (as Ray pickles a remote
  function once) and named by the digest of their bytes; a worker keeps them by digest, so a
  call carries only its arguments.
- Arguments and results are pickled with protocol 5. Buffers of numpy arrays and CPU torch
  tensors from ``OUT_OF_BAND_MIN`` bytes up travel out of band: in place when they already live
  in shared memory, else copied once into a reusable shared-memory segment. A buffer descriptor
  is ``(segment name, offset, nbytes)``.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import pickle
import sys
import weakref
from collections import ChainMap
from collections.abc import Callable
from typing import Any

import cloudpickle
import numpy as np

from .exceptions import SerializationError
from .shm import REGISTRY, AttachCache, Segment, SegmentPool

OUT_OF_BAND_MIN = 64 * 1024
PROTOCOL = 5

BufferDesc = tuple[str, int, int]

# ---------------------------------------------------------------------------- functions

_fn_cache: weakref.WeakKeyDictionary[Any, tuple[bytes, bytes]] = weakref.WeakKeyDictionary()


def dump_function(fn: Callable[..., Any]) -> tuple[bytes, bytes]:
    """(digest, payload) of ``fn``, pickled once per function object."""
    try:
        return _fn_cache[fn]
    except (KeyError, TypeError):
        pass
    try:
        payload = cloudpickle.dumps(fn, protocol=PROTOCOL)
    except Exception as exc:
        name = getattr(fn, "__qualname__", repr(fn))
        raise SerializationError(
            f"function {name!r} cannot be pickled: {type(exc).__name__}: {exc}. Functions are "
            "shipped to workers with cloudpickle; what they refer to (globals, closures, "
            "default arguments) must be picklable too."
        ) from exc
    entry = (hashlib.blake2b(payload, digest_size=16).digest(), payload)
    with contextlib.suppress(TypeError):  # not weak-referenceable: pickled at each submit
        _fn_cache[fn] = entry
    return entry


def load_function(payload: bytes) -> Callable[..., Any]:
    return pickle.loads(payload)


# ---------------------------------------------------------------------------- tensors


def _rebuild_tensor(buf: Any, dtype: str, shape: tuple[int, ...], requires_grad: bool) -> Any:
    import torch

    tdtype = getattr(torch, dtype)
    raw = memoryview(buf)
    if raw.nbytes == 0:
        t = torch.empty(shape, dtype=tdtype)
    else:
        if raw.readonly:
            raw = memoryview(bytearray(raw))
        t = torch.frombuffer(raw, dtype=torch.uint8).view(tdtype).reshape(shape)
    if requires_grad:
        t.requires_grad_(True)
    return t


def _reduce_tensor(t: Any) -> Any:
    if (
        t.device.type != "cpu"
        or t.layout is not sys.modules["torch"].strided
        or t.is_quantized
        or getattr(t, "is_nested", False)
    ):
        return t.__reduce_ex__(PROTOCOL)
    c = t.detach().resolve_conj().resolve_neg()
    if not c.is_contiguous():
        c = c.contiguous()
    flat = c.reshape(-1).view(sys.modules["torch"].uint8)
    dtype = str(c.dtype).rsplit(".", 1)[-1]
    return (
        _rebuild_tensor,
        (pickle.PickleBuffer(flat.numpy()), dtype, tuple(c.shape), bool(t.requires_grad)),
    )


_pickler_classes: dict[bool, type[cloudpickle.CloudPickler]] = {}


def _pickler_class() -> type[cloudpickle.CloudPickler]:
    """cloudpickle's pickler (by value for __main__ and local code), CPU tensors out of band."""
    torch = sys.modules.get("torch")
    cls = _pickler_classes.get(torch is not None)
    if cls is None:
        table: dict[type, Any] = {}
        if torch is not None:
            table = {torch.Tensor: _reduce_tensor, torch.nn.Parameter: _reduce_tensor}
        cls = type(
            "HetfaasPickler",
            (cloudpickle.CloudPickler,),
            {"dispatch_table": ChainMap(table, cloudpickle.CloudPickler.dispatch_table)},
        )
        _pickler_classes[torch is not None] = cls
    return cls


# ---------------------------------------------------------------------------- data


class BufferSink:
    """Decides where each out-of-band buffer goes; collects the descriptors and leases."""

    __slots__ = ("descs", "leases", "pool")

    def __init__(self, pool: SegmentPool | None) -> None:
        self.pool = pool
        self.descs: list[BufferDesc] = []
        self.leases: list[Segment] = []

    def __call__(self, pb: pickle.PickleBuffer) -> bool:
        raw = pb.raw()
        n = raw.nbytes
        if n < OUT_OF_BAND_MIN or self.pool is None:
            return True  # in band
        src = np.frombuffer(raw, dtype=np.uint8)
        addr = src.ctypes.data
        found = REGISTRY.find(addr, n)
        if found is not None:  # already in shared memory: pass it in place
            self.descs.append((found[0], found[1], n))
            return False
        seg = self.pool.lease(n)
        _copy(seg.array[:n], src)
        self.leases.append(seg)
        self.descs.append((seg.name, 0, n))
        return False

    def release(self) -> None:
        if self.pool is not None:
            for seg in self.leases:
                self.pool.release(seg)
        self.leases = []


def _copy(dst: np.ndarray, src: np.ndarray) -> None:
    """One copy into shared memory; torch's copy uses all of this process's threads."""
    torch = sys.modules.get("torch")
    if torch is not None and src.nbytes >= 1 << 22:
        # Wide elements: torch copies int64 faster than bytes.
        for wide in (np.int64, np.int32):
            size = np.dtype(wide).itemsize
            if src.nbytes % size == 0 and src.ctypes.data % size == 0:
                dst, src = dst.view(wide), src.view(wide)
                break
        torch.from_numpy(dst).copy_(torch.from_numpy(src))
    else:
        np.copyto(dst, src)


def dumps(obj: Any, sink: BufferSink, what: str = "value") -> bytes:
    """Pickle ``obj``; large buffers go to ``sink``. Raises SerializationError naming ``what``."""
    buf = io.BytesIO()
    try:
        _pickler_class()(buf, protocol=PROTOCOL, buffer_callback=sink).dump(obj)
    except Exception as exc:
        sink.release()
        sink.descs.clear()
        raise SerializationError(f"{what} cannot be pickled: {type(exc).__name__}: {exc}") from exc
    return buf.getvalue()


_SIMPLE = frozenset({int, float, str, bytes, bool, type(None)})
_PLAIN_LEN = 32  # a longer tuple is not looked through (cloudpickle's own speed then)


def plain(obj: Any) -> bool:
    """Whether the standard pickler makes the same bytes as ours for ``obj``, faster: a
    scalar of a built-in type, or a short tuple of such scalars and of short tuples of them
    (no function, no buffer to place out of band, nothing cloudpickle pickles by value)."""
    t = type(obj)
    if t in _SIMPLE:
        return True
    if t is not tuple or len(obj) > _PLAIN_LEN:
        return False
    for x in obj:
        tx = type(x)
        if tx not in _SIMPLE and not (
            tx is tuple and len(x) <= _PLAIN_LEN and all(type(y) in _SIMPLE for y in x)
        ):
            return False
    return True


def dumps_call_args(
    fn_name: str,
    args: tuple[Any, ...],
    kwargs: dict[str, Any],
    sink: BufferSink | None = None,
) -> bytes:
    """Pickle (args, kwargs): plain values (:func:`plain`) with the standard pickler, others
    with cloudpickle, their large buffers out of band to ``sink`` (None: all in band, for
    bytes that leave this machine). A failure names the argument that cannot be pickled."""
    if not kwargs and plain(args):
        return pickle.dumps((args, kwargs), protocol=PROTOCOL)
    what = f"the arguments of {fn_name}"
    try:
        if sink is not None:
            return dumps((args, kwargs), sink, what=what)
        try:
            return cloudpickle.dumps((args, kwargs), protocol=PROTOCOL)
        except Exception as exc:
            raise SerializationError(
                f"{what} cannot be pickled: {type(exc).__name__}: {exc}"
            ) from exc
    except SerializationError as exc:
        culprit = _find_unpicklable(args, kwargs)
        if culprit is None:
            raise
        raise SerializationError(
            f"{culprit} of {fn_name} cannot be pickled: {exc.__cause__}"
        ) from exc.__cause__


def _find_unpicklable(args: tuple[Any, ...], kwargs: dict[str, Any]) -> str | None:
    items = [(f"argument {i} ({type(a).__name__})", a) for i, a in enumerate(args)]
    items += [(f"keyword argument {k!r} ({type(v).__name__})", v) for k, v in kwargs.items()]
    for label, value in items:
        try:
            cloudpickle.dumps(value, protocol=PROTOCOL)
        except Exception:
            return label
    return None


def loads(
    data: bytes,
    descs: list[BufferDesc] | tuple[BufferDesc, ...],
    attach: AttachCache,
    on_view: Callable[[Any, str], None] | None = None,
) -> Any:
    """Unpickle, mapping out-of-band buffers from shared memory (no copy).

    ``on_view(view, segment_name)`` sees each lease view (:meth:`Segment.view`), to learn when
    nothing uses it any more.
    """
    if not descs:
        return pickle.loads(data)
    buffers = []
    for name, offset, nbytes in descs:
        view = attach.get(name).view(offset, nbytes)
        if on_view is not None:
            on_view(view, name)
        buffers.append(view)
    return pickle.loads(data, buffers=buffers)
