"""Binary request bodies: arrays and tensors that never go through JSON.

A blocking or async invoke may carry, instead of JSON, one of:

- ``application/octet-stream``: the raw bytes of one C-ordered array, with ``X-Dtype`` (a
  numpy dtype name: ``float32``, ``<i8``, ...) and ``X-Shape`` (``1000,1000``, ``1000x1000``
  or a JSON list);
- ``application/x-npy`` (or ``application/npy``): one ``.npy`` file (``numpy.save``'s format;
  object arrays are refused, the gateway never unpickles);
- ``application/x-safetensors`` (or ``application/safetensors``): a safetensors file, each of
  its tensors passed as a keyword argument by its name.

The body is streamed, as it arrives, into a file of the store (``<results_dir>/inputs``), so it
is as durable as the invocation that refers to it (a restart runs a queued binary call with its
input). The call's argument is a :class:`FileArray`: a reference (path, dtype, shape, offset)
that the worker opens as a copy-on-write ``numpy.memmap`` (or a ``torch`` tensor over it, with
``X-Hetfaas-Array: torch``): no copy of the bytes in the gateway, none through the executor's
pipe, and the worker reads the page cache the gateway wrote. That needs the worker to see the
gateway's file system: the local pool always does; Slurm and Ray workers do on a shared one.

Other headers: ``X-Hetfaas-Param: NAME`` passes the array as keyword ``NAME`` (for a
safetensors body: a dict of its tensors) instead of the first positional argument;
``X-Hetfaas-Args`` (a JSON list: positional arguments after the array) and
``X-Hetfaas-Kwargs`` (a JSON object) carry the rest; ``X-Hetfaas-Callback`` is an async
invoke's callback URL. A body must say its length (``Content-Length``; else 411).

The invocation's stored input is JSON with the array references apart (``"arrays"``), so a
JSON body can never forge one: the gateway's own routes are the only writers of that key.
An input file is removed when its call ends; :func:`sweep` removes those a crash left.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import re
import struct
import time
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import numpy as np

from .errors import BadInput

RAW, NPY, SAFETENSORS = "raw", "npy", "safetensors"
MEDIA: dict[str, str] = {
    "application/octet-stream": RAW,
    "application/x-npy": NPY,
    "application/npy": NPY,
    "application/x-safetensors": SAFETENSORS,
    "application/safetensors": SAFETENSORS,
}
BINARY_MEDIA = frozenset(m.encode() for m in MEDIA)
ARRAY_KINDS = ("numpy", "torch")
_SAFETENSORS_DTYPES = {
    "F64": "<f8", "F32": "<f4", "F16": "<f2", "I64": "<i8", "I32": "<i4", "I16": "<i2",
    "I8": "i1", "U64": "<u8", "U32": "<u4", "U16": "<u2", "U8": "u1", "BOOL": "?",
    "BF16": "<u2",  # no numpy bfloat16: read as uint16, viewed as torch.bfloat16
}  # fmt: skip
_MAX_SAFETENSORS_HEADER = 100_000_000
_SWEEP_AGE_S = 3600.0


class FileArray:
    """A reference to an array in a file: what a binary invoke passes to the function.

    It pickles as the reference; unpickled (in the worker) it is the array itself, a
    copy-on-write ``numpy.memmap`` of the file (the function may write to it; the file does
    not change), or a torch tensor over it for ``kind="torch"``."""

    __slots__ = ("bf16", "dtype", "fortran", "kind", "offset", "path", "shape")

    def __init__(
        self,
        path: str,
        dtype: str,
        shape: tuple[int, ...],
        offset: int = 0,
        *,
        fortran: bool = False,
        kind: str = "numpy",
        bf16: bool = False,
    ) -> None:
        self.path, self.dtype, self.shape, self.offset = path, dtype, tuple(shape), int(offset)
        self.fortran, self.kind, self.bf16 = fortran, kind, bf16

    @property
    def nbytes(self) -> int:
        return math.prod(self.shape) * np.dtype(self.dtype).itemsize

    def open(self) -> Any:
        return open_file_array(*self._args())

    def _args(self) -> tuple[Any, ...]:
        return (self.path, self.dtype, self.shape, self.offset, self.fortran, self.kind,
                self.bf16)  # fmt: skip

    def __reduce__(self) -> tuple[Any, tuple[Any, ...]]:
        return open_file_array, self._args()

    def as_json(self) -> dict[str, Any]:
        return {"file": os.path.basename(self.path), "dtype": self.dtype,
                "shape": list(self.shape), "offset": self.offset, "fortran": self.fortran,
                "kind": self.kind, "bf16": self.bf16}  # fmt: skip

    @classmethod
    def from_json(cls, d: dict[str, Any], folder: Path) -> FileArray:
        return cls(str(folder / d["file"]), d["dtype"], tuple(d["shape"]), d["offset"],
                   fortran=d["fortran"], kind=d["kind"], bf16=d["bf16"])  # fmt: skip

    def __repr__(self) -> str:
        return f"FileArray({self.path!r}, {self.dtype}, {self.shape})"


def open_file_array(
    path: str,
    dtype: str,
    shape: tuple[int, ...],
    offset: int,
    fortran: bool,
    kind: str,
    bf16: bool,
) -> Any:
    """The array a :class:`FileArray` refers to (in the process that runs the call)."""
    dt = np.dtype(dtype)
    if math.prod(shape) == 0:
        arr: Any = np.empty(shape, dt, order="F" if fortran else "C")
    else:
        arr = np.memmap(path, dt, mode="c", offset=offset, shape=tuple(shape),
                        order="F" if fortran else "C")  # fmt: skip
    if kind == "torch":
        import torch

        tensor = torch.from_numpy(arr)
        return tensor.view(torch.bfloat16) if bf16 else tensor
    return arr


# ---------------------------------------------------------------------- headers


def media_kind(content_type: str | None) -> str | None:
    """RAW, NPY or SAFETENSORS for a binary ``Content-Type``, else None."""
    if not content_type:
        return None
    return MEDIA.get(content_type.split(";")[0].strip().lower())


def _header_json(headers: Any, name: str, want: type) -> Any:
    raw = headers.get(name)
    if raw is None:
        return want()
    try:
        value = json.loads(raw)
    except ValueError:
        raise BadInput(f"{name} must be JSON ({want.__name__}), got {raw!r}") from None
    if not isinstance(value, want):
        raise BadInput(f"{name} must be a JSON {want.__name__}, got {type(value).__name__}")
    return value


def _dtype(raw: str | None) -> np.dtype:
    if not raw:
        raise BadInput("an application/octet-stream body needs X-Dtype (e.g. float32)")
    try:
        dt = np.dtype(raw.strip())
    except TypeError:
        raise BadInput(f"X-Dtype is not a numpy dtype: {raw!r}") from None
    if dt.hasobject or dt.kind in "OV" or dt.itemsize == 0:
        raise BadInput(f"X-Dtype must be a plain numeric dtype, got {raw!r}")
    return dt


def _shape(raw: str | None) -> tuple[int, ...]:
    if raw is None:
        raise BadInput("an application/octet-stream body needs X-Shape (e.g. 1000,1000)")
    text = raw.strip()
    try:
        if text.startswith("["):
            dims = json.loads(text)
        else:
            dims = [int(p) for p in re.split(r"[x,]", text) if p.strip()] if text else []
        if not isinstance(dims, list) or not all(isinstance(d, int) and d >= 0 for d in dims):
            raise ValueError
    except ValueError:
        raise BadInput(f"X-Shape must be non-negative integers (1000,1000), got {raw!r}") from None
    return tuple(dims)


# ---------------------------------------------------------------------- the body


def inputs_dir(store: Any) -> Path:
    """Where a store keeps binary inputs (made if missing)."""
    folder = Path(store.results_dir) / "inputs"
    folder.mkdir(parents=True, exist_ok=True)
    return folder


async def receive(
    chunks: AsyncIterator[bytes],
    kind: str,
    headers: Any,
    length: int,
    store: Any,
) -> tuple[list[Any], dict[str, Any], list[str]]:
    """Stream a binary body into a file of ``store``; (args, kwargs, files) of the call.
    A body that is not what its headers say is refused (BadInput) and its file removed."""
    array_kind = (headers.get("x-hetfaas-array") or "numpy").strip().lower()
    if array_kind not in ARRAY_KINDS:
        raise BadInput(f"X-Hetfaas-Array must be numpy or torch, got {array_kind!r}")
    extra_args = _header_json(headers, "x-hetfaas-args", list)
    kwargs = _header_json(headers, "x-hetfaas-kwargs", dict)
    param = headers.get("x-hetfaas-param")
    if kind == RAW:  # check the headers before a byte is read
        dt, shape = _dtype(headers.get("x-dtype")), _shape(headers.get("x-shape"))
        want = math.prod(shape) * dt.itemsize
        if want != length:
            raise BadInput(
                f"X-Shape {list(shape)} of {dt.name} is {want} bytes, the body is {length}"
            )
    path = inputs_dir(store) / f"{uuid.uuid4().hex}.bin"
    try:
        got = await _write(chunks, path)
        if got != length:
            raise BadInput(f"the body ended after {got} of its {length} bytes")
        if kind == RAW:
            arrays: Any = FileArray(str(path), dt.str, shape, 0, kind=array_kind)
        elif kind == NPY:
            arrays = _npy(path, array_kind)
        else:
            arrays = _safetensors(path, got, array_kind)
    except BaseException:
        with contextlib.suppress(OSError):
            path.unlink()
        raise
    if isinstance(arrays, dict) and param is None:
        clash = sorted(set(arrays) & set(kwargs))
        if clash:
            raise BadInput(f"tensor names {clash} clash with X-Hetfaas-Kwargs")
        kwargs = {**kwargs, **arrays}
        args = list(extra_args)
    elif param is not None:
        if not param.isidentifier() or param in kwargs:
            raise BadInput(f"X-Hetfaas-Param must be a new keyword name, got {param!r}")
        kwargs = {**kwargs, param: arrays}
        args = list(extra_args)
    else:
        args = [arrays, *extra_args]
    return args, kwargs, [str(path)]


async def _write(chunks: AsyncIterator[bytes], path: Path) -> int:
    got = 0
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        async for chunk in chunks:
            if chunk:
                view = memoryview(chunk)
                while view:
                    n = os.write(fd, view)
                    view = view[n:]
                got += len(chunk)
    finally:
        os.close(fd)
    return got


def _npy(path: Path, array_kind: str) -> FileArray:
    fmt = np.lib.format
    try:
        with open(path, "rb") as f:
            version = fmt.read_magic(f)
            if version == (1, 0):
                shape, fortran, dt = fmt.read_array_header_1_0(f)
            else:
                shape, fortran, dt = fmt.read_array_header_2_0(f)
            offset = f.tell()
    except (ValueError, OSError, SyntaxError) as exc:
        raise BadInput(f"the body is not a .npy file: {exc}") from None
    if dt.hasobject:
        raise BadInput("object arrays are refused: the gateway never unpickles")
    want = math.prod(shape) * dt.itemsize
    have = path.stat().st_size - offset
    if want != have:
        raise BadInput(f"the .npy header says {want} bytes of data, the body has {have}")
    return FileArray(str(path), dt.str, tuple(shape), offset, fortran=fortran, kind=array_kind)


def _safetensors(path: Path, size: int, array_kind: str) -> dict[str, FileArray]:
    with open(path, "rb") as f:
        head = f.read(8)
        if len(head) < 8:
            raise BadInput("the body is not a safetensors file: shorter than its header size")
        (n,) = struct.unpack("<Q", head)
        if n > min(size - 8, _MAX_SAFETENSORS_HEADER):
            raise BadInput(f"the safetensors header size {n} does not fit the body")
        try:
            header = json.loads(f.read(n))
        except (ValueError, UnicodeDecodeError):
            raise BadInput("the safetensors header is not JSON") from None
    if not isinstance(header, dict):
        raise BadInput("the safetensors header must be a JSON object")
    header.pop("__metadata__", None)
    base, out = 8 + n, {}
    for name, info in header.items():
        try:
            dtype, shape, (begin, end) = info["dtype"], info["shape"], info["data_offsets"]
        except (KeyError, TypeError, ValueError):
            raise BadInput(f"tensor {name!r}: needs dtype, shape and data_offsets") from None
        if dtype not in _SAFETENSORS_DTYPES:
            raise BadInput(f"tensor {name!r}: dtype {dtype!r} is not supported")
        if dtype == "BF16" and array_kind != "torch":
            raise BadInput(
                f"tensor {name!r} is BF16, which numpy lacks: send X-Hetfaas-Array: torch"
            )
        dt = np.dtype(_SAFETENSORS_DTYPES[dtype])
        if not (isinstance(shape, list) and all(isinstance(d, int) and d >= 0 for d in shape)):
            raise BadInput(f"tensor {name!r}: bad shape {shape!r}")
        if not (0 <= begin <= end <= size - base) or end - begin != math.prod(shape) * dt.itemsize:
            raise BadInput(f"tensor {name!r}: data_offsets {[begin, end]} do not fit its shape")
        if not str(name).isidentifier():
            raise BadInput(f"tensor name {name!r} is not a keyword argument name")
        out[name] = FileArray(str(path), dt.str, tuple(shape), base + begin, kind=array_kind,
                              bf16=dtype == "BF16")  # fmt: skip
    return out


# ---------------------------------------------------------------------- the stored input


def input_json(args: list[Any], kwargs: dict[str, Any], to_json: Any) -> str:
    """The stored input of a call: its JSON arguments, with the FileArrays apart."""
    arrays: list[dict[str, Any]] = []
    plain_args: list[Any] = []
    for i, a in enumerate(args):
        plain_args.append(_take(a, {"arg": i}, arrays))
    plain_kwargs = {k: _take(v, {"kwarg": k}, arrays) for k, v in kwargs.items()}
    data: dict[str, Any] = {"args": plain_args, "kwargs": plain_kwargs}
    if arrays:
        data["arrays"] = arrays
    return to_json(data)


def _take(value: Any, where: dict[str, Any], arrays: list[dict[str, Any]]) -> Any:
    if isinstance(value, FileArray):
        arrays.append({**where, **value.as_json()})
        return None
    if isinstance(value, dict) and value and all(isinstance(v, FileArray) for v in value.values()):
        arrays.append({**where, "dict": {k: v.as_json() for k, v in value.items()}})
        return None
    return value


def input_from(data: dict[str, Any], store: Any) -> tuple[list[Any], dict[str, Any], list[str]]:
    """(args, kwargs, files) of a stored input (see :func:`input_json`)."""
    args, kwargs = list(data.get("args", [])), dict(data.get("kwargs", {}))
    files: list[str] = []
    if not data.get("arrays"):
        return args, kwargs, files
    folder = inputs_dir(store)
    for ref in data["arrays"]:
        if "dict" in ref:
            value: Any = {k: FileArray.from_json(v, folder) for k, v in ref["dict"].items()}
            files += [v.path for v in value.values()]
        else:
            value = FileArray.from_json(ref, folder)
            files.append(value.path)
        if "arg" in ref:
            args[ref["arg"]] = value
        else:
            kwargs[ref["kwarg"]] = value
    return args, kwargs, sorted(set(files))


def remove(files: list[str]) -> None:
    for f in files:
        with contextlib.suppress(OSError):
            os.unlink(f)


def sweep(store: Any, older_than_s: float = _SWEEP_AGE_S) -> int:
    """Remove input files older than ``older_than_s`` that no unfinished invocation refers
    to (those of calls a crash ended); the number removed."""
    folder = Path(store.results_dir) / "inputs"
    if not folder.is_dir():
        return 0
    keep: set[str] = set()
    for row in store.read(
        "SELECT input FROM invocations WHERE state IN ('QUEUED', 'RUNNING')"
        " AND input LIKE '%\"arrays\"%'"
    ):
        with contextlib.suppress(ValueError, KeyError, TypeError):
            for ref in json.loads(row[0]).get("arrays", []):
                refs = ref["dict"].values() if "dict" in ref else [ref]
                keep.update(r["file"] for r in refs)
    now, removed = time.time(), 0
    for entry in os.scandir(folder):
        if entry.name in keep:
            continue
        with contextlib.suppress(OSError):
            if now - entry.stat().st_mtime >= older_than_s:
                os.unlink(entry.path)
                removed += 1
    return removed


__all__ = [
    "BINARY_MEDIA",
    "MEDIA",
    "FileArray",
    "input_from",
    "input_json",
    "media_kind",
    "open_file_array",
    "receive",
    "remove",
    "sweep",
]
