"""Messages between ranks: pickle protocol 5 with large buffers out of band.

A frame is a small header, the pickle stream, then the raw buffers of numpy arrays and CPU
tensors, each 64-byte aligned. The sender hands the channel a list of segments (no join, so
a large array is not copied on the way out); the receiver rebuilds arrays and tensors as views
over the received bytes instead of copying them out again.
"""

from __future__ import annotations

import pickle
import struct
import sys
from typing import Any

import numpy as np

from ..exceptions import SerializationError

_MAGIC = b"HFC1"
_HEAD = struct.Struct("<4sIQ")  # magic, number of buffers, pickle length
_LEN = struct.Struct("<Q")
_ALIGN = 64
_PAD = bytes(_ALIGN)


def _rebuild_tensor(buf: Any, dtype: str, shape: tuple[int, ...]) -> Any:
    import torch

    arr = np.frombuffer(buf, dtype=np.dtype(dtype)).reshape(shape)
    return torch.from_numpy(arr)


class _Pickler(pickle.Pickler):
    """Sends CPU tensors' memory out of band too (torch's own pickling copies it in band)."""

    def reducer_override(self, obj: Any) -> Any:
        torch = sys.modules.get("torch")
        if (
            torch is not None
            and type(obj) is torch.Tensor
            and obj.device.type == "cpu"
            and obj.layout == torch.strided
            and not obj.requires_grad
            and obj.dtype not in (torch.bfloat16,)
            and not obj.is_complex()
        ):
            try:
                arr = obj.contiguous().numpy()
            except (TypeError, RuntimeError):
                return NotImplemented
            return _rebuild_tensor, (pickle.PickleBuffer(arr), arr.dtype.str, tuple(arr.shape))
        return NotImplemented


def _padding(n: int) -> int:
    return -n % _ALIGN


def encode(obj: Any) -> tuple[list[Any], int]:
    """The frame's segments and their total length in bytes."""
    import io

    buffers: list[pickle.PickleBuffer] = []
    try:
        if "torch" in sys.modules:
            stream = io.BytesIO()
            _Pickler(stream, protocol=5, buffer_callback=buffers.append).dump(obj)
            body: Any = stream.getbuffer()
        else:  # no tensors possible: the plain C pickler, a few times faster for small ones
            body = pickle.dumps(obj, protocol=5, buffer_callback=buffers.append)
    except Exception as exc:
        raise SerializationError(f"cannot send {type(obj).__name__}: {exc}") from exc
    raws = [b.raw() for b in buffers]
    head = _HEAD.pack(_MAGIC, len(raws), len(body)) + b"".join(_LEN.pack(r.nbytes) for r in raws)
    segments: list[Any] = [head, body]
    total = len(head) + len(body)
    for raw in raws:
        pad = _padding(total)
        if pad:
            segments.append(_PAD[:pad])
            total += pad
        segments.append(raw)
        total += raw.nbytes
    return segments, total


def decode(data: Any) -> Any:
    """The object of one frame. Arrays come back as writable views over ``data`` when it is
    writable (a bytearray); a read-only frame is copied once so that results can be written."""
    view = memoryview(data)
    if view.readonly:
        view = memoryview(bytearray(view))
    if view.nbytes < _HEAD.size:
        raise SerializationError(f"truncated message ({view.nbytes} bytes)")
    magic, nbuf, body_len = _HEAD.unpack_from(view, 0)
    if magic != _MAGIC:
        raise SerializationError("not a hetfaas collective message (bad magic)")
    pos = _HEAD.size
    lengths = [_LEN.unpack_from(view, pos + i * _LEN.size)[0] for i in range(nbuf)]
    pos += nbuf * _LEN.size
    body = view[pos : pos + body_len]
    pos += body_len
    buffers = []
    for n in lengths:
        pos += _padding(pos)
        buffers.append(view[pos : pos + n])
        pos += n
    try:
        return pickle.loads(body, buffers=buffers)
    except Exception as exc:
        raise SerializationError(f"cannot read a received message: {exc}") from exc


def join(segments: list[Any], total: int) -> bytearray:
    """One contiguous copy of a frame, for stores that take a single value."""
    out = bytearray(total)
    pos = 0
    for seg in segments:
        n = memoryview(seg).nbytes
        out[pos : pos + n] = seg
        pos += n
    return out
