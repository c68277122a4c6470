"""Functions the binary-body tests deploy (they receive arrays the gateway passes by file)."""

from __future__ import annotations

from typing import Any

import numpy as np


def describe(x: Any, scale: float = 1.0, *, offset: float = 0.0) -> dict[str, Any]:
    """What the function received: its type, dtype, shape, a checksum; then it writes to it
    (a copy-on-write map: the gateway's file must not change)."""
    kind = type(x).__module__.split(".")[0] + "." + type(x).__name__
    arr = x.numpy() if hasattr(x, "numpy") and not isinstance(x, np.ndarray) else np.asarray(x)
    out = {
        "kind": kind, "dtype": str(arr.dtype), "shape": list(arr.shape),
        "sum": float(arr.astype(np.float64).sum()) * scale + offset,
        "first": arr.reshape(-1)[:3].astype(np.float64).tolist(),
        "f_contiguous": bool(arr.flags.f_contiguous) and arr.ndim > 1,
    }  # fmt: skip
    if arr.size and arr.flags.writeable:
        arr.reshape(-1)[0] = 12345
    return out


def tensors(**named: Any) -> dict[str, Any]:
    return {k: {"kind": type(v).__name__, "dtype": str(v.dtype), "shape": list(v.shape),
                "sum": float(v.astype(np.float64).sum()) if isinstance(v, np.ndarray)
                else float(v.double().sum())} for k, v in sorted(named.items())}  # fmt: skip


def nbytes(x: Any) -> int:
    return int(x.nbytes)
