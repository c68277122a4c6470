"""The advisor's inputs: example arguments scaled along axis 0, split into parts, combined.

An argument is *batched* when its axis 0 is the data axis: the sweep scales it (fewer or more
rows) and a split over N calls slices it into N contiguous parts; the other arguments go
whole to every call. By default every numpy array and torch tensor with at least one
dimension is batched; for ``a @ b`` only ``a`` is (``batched=(0,)``). numpy and torch are
imported only when an argument is one of theirs.
"""

from __future__ import annotations

import math
import sys
from collections.abc import Callable, Sequence
from typing import Any

from .._imports import import_callable
from ..exceptions import ConfigurationError

Splitter = Callable[[tuple[Any, ...], int], Sequence[tuple[Any, ...]]]
"""``split(args, n) -> [args_1, ..., args_k]``: the arguments of each of up to n calls."""
Combiner = Callable[[list[Any]], Any]
"""``combine([result_1, ..., result_k]) -> result``: one result from the parts' results."""

RTOL = 1e-4
"""Relative tolerance when a result is compared with the in-process reference (float32)."""


def _torch() -> Any:
    return sys.modules.get("torch")


def is_tensor(x: Any) -> bool:
    torch = _torch()
    return torch is not None and isinstance(x, torch.Tensor)


def is_ndarray(x: Any) -> bool:
    np = sys.modules.get("numpy")
    return np is not None and isinstance(x, np.ndarray)


def is_array(x: Any) -> bool:
    """A numpy array or a torch tensor with at least one dimension."""
    return (is_ndarray(x) or is_tensor(x)) and len(x.shape) >= 1


def nbytes(args: Sequence[Any]) -> int:
    """Bytes of the array arguments (others count 0)."""
    total = 0
    for x in args:
        if is_ndarray(x):
            total += int(x.nbytes)
        elif is_tensor(x):
            total += int(x.element_size() * x.numel())
    return total


def shapes_of(args: Sequence[Any]) -> list[list[int] | None]:
    return [[int(d) for d in x.shape] if is_array(x) else None for x in args]


# --------------------------------------------------------------------------------------------
# shapes and random arguments


def parse_shape(text: str) -> tuple[int, ...]:
    """``"1000x1000"`` -> ``(1000, 1000)``; ``"8x200x200"`` -> ``(8, 200, 200)``."""
    parts = [p for p in text.strip().lower().replace(",", "x").split("x") if p]
    try:
        dims = tuple(int(p) for p in parts)
    except ValueError:
        dims = ()
    if not dims or min(dims) < 1:
        raise ConfigurationError(
            f"bad shape {text!r}: expected positive ints joined by x, e.g. 1000x1000"
        )
    return dims


def random_args(
    shapes: Sequence[Sequence[int]], array: str = "torch", seed: int = 0
) -> tuple[Any, ...]:
    """Standard-normal float32 arguments of these shapes, as torch tensors or numpy arrays."""
    if array == "torch":
        import torch

        gen = torch.Generator().manual_seed(seed)
        return tuple(torch.randn(tuple(s), generator=gen, dtype=torch.float32) for s in shapes)
    if array == "numpy":
        import numpy as np

        rng = np.random.default_rng(seed)
        return tuple(rng.standard_normal(tuple(s), dtype=np.float32) for s in shapes)
    raise ConfigurationError(f"array kind {array!r}: expected 'torch' or 'numpy'")


# --------------------------------------------------------------------------------------------
# which arguments are batched, and scaling them


def default_batched(args: Sequence[Any]) -> tuple[int, ...]:
    """Positions of the array arguments (numpy or torch, at least one dimension)."""
    return tuple(i for i, x in enumerate(args) if is_array(x))


def check_batched(args: Sequence[Any], batched: Sequence[int]) -> tuple[int, ...]:
    """``batched`` as a sorted tuple, each position an array argument."""
    out = []
    for i in batched:
        if isinstance(i, bool) or not isinstance(i, int) or not 0 <= i < len(args):
            raise ConfigurationError(
                f"batched position {i!r}: the function gets {len(args)} argument(s)"
            )
        if not is_array(args[i]):
            raise ConfigurationError(
                f"batched argument {i} is a {type(args[i]).__name__}, not an array or tensor "
                "with an axis 0"
            )
        out.append(i)
    return tuple(sorted(set(out)))


def axis0(args: Sequence[Any], batched: Sequence[int]) -> int:
    """The size of an input: axis 0 of the first batched argument (0 when none is)."""
    return int(args[batched[0]].shape[0]) if batched else 0


def resize_axis0(x: Any, n: int) -> Any:
    """``x`` with ``n`` rows along axis 0: its first ``n`` rows, or its rows repeated in
    turn when ``n`` is larger (contiguous, so it travels as one buffer)."""
    have = int(x.shape[0])
    if n < 1:
        raise ConfigurationError(f"a size must be >= 1 row, got {n}")
    if n <= have:
        part = x[:n]
        return part.contiguous() if is_tensor(part) else part.copy()
    if is_tensor(x):
        torch = _torch()
        return x[torch.arange(n) % have].contiguous()
    import numpy as np

    return np.ascontiguousarray(np.take(x, np.arange(n) % have, axis=0))


def scaled(args: Sequence[Any], batched: Sequence[int], n: int) -> tuple[Any, ...]:
    """The arguments at size ``n``: axis 0 of the first batched argument becomes ``n`` rows
    and every other batched argument is scaled by the same factor."""
    if not batched:
        return tuple(args)
    base = axis0(args, batched)
    out = list(args)
    for i in batched:
        have = int(args[i].shape[0])
        rows = n if have == base else max(1, round(have * n / base))
        out[i] = resize_axis0(args[i], rows)
    return tuple(out)


def sizes_from(
    args: Sequence[Any],
    batched: Sequence[int],
    sizes: Sequence[int] | None,
    scales: Sequence[float] | None,
) -> list[int]:
    """The sweep's sizes (axis-0 rows), ascending and distinct, from explicit ``sizes`` or
    ``scales`` of the example's axis 0 (default: 1/8, 1/4, 1/2 and 1 times it)."""
    if sizes is not None and scales is not None:
        raise ConfigurationError("give sizes or scales, not both")
    base = axis0(args, batched)
    if not batched:
        if sizes is not None or scales is not None:
            raise ConfigurationError(
                "no batched argument (an array with an axis 0) to scale: give array arguments "
                "or say which are batched"
            )
        return [0]
    if sizes is not None:
        out = []
        for s in sizes:
            if isinstance(s, bool) or not isinstance(s, int) or s < 1:
                raise ConfigurationError(f"a size is a number of rows >= 1, got {s!r}")
            out.append(s)
    else:
        factors = scales if scales is not None else (0.125, 0.25, 0.5, 1.0)
        out = []
        for f in factors:
            if isinstance(f, bool) or not isinstance(f, (int, float)) or not f > 0:
                raise ConfigurationError(f"a scale factor must be > 0, got {f!r}")
            out.append(max(1, round(base * f)))
    if not out:
        raise ConfigurationError("the sweep needs at least one size")
    return sorted(set(out))


# --------------------------------------------------------------------------------------------
# splitting and combining


def split_axis0(batched: Sequence[int]) -> Splitter:
    """A splitter that cuts every batched argument into up to ``n`` contiguous parts of
    nearly equal rows (as ``numpy.array_split`` does) and passes the others whole."""
    positions = tuple(batched)

    def split(args: tuple[Any, ...], n: int) -> list[tuple[Any, ...]]:
        if not positions:
            raise ConfigurationError("no batched argument to split along axis 0")
        rows = int(args[positions[0]].shape[0])
        k = max(1, min(n, rows))
        parts = []
        for j in range(k):
            part = list(args)
            for i in positions:
                have = int(args[i].shape[0])
                lo, hi = (have * j) // k, (have * (j + 1)) // k
                part[i] = args[i][lo:hi]
            parts.append(tuple(part))
        return parts

    return split


def concat_axis0(results: list[Any]) -> Any:
    """Join the parts' results along axis 0: numpy arrays, torch tensors or lists."""
    if not results:
        raise ConfigurationError("nothing to combine")
    first = results[0]
    if is_tensor(first):
        return _torch().cat(results, dim=0)
    if is_ndarray(first):
        import numpy as np

        return np.concatenate(results, axis=0)
    if isinstance(first, list):
        return [x for r in results for x in r]
    raise ConfigurationError(
        f"cannot join results of type {type(first).__name__} along axis 0: give combine="
    )


def _as_numpy(x: Any) -> Any:
    if is_tensor(x):
        return x.detach().cpu().numpy()
    return x


def same_result(value: Any, reference: Any) -> tuple[bool, float]:
    """Whether ``value`` matches ``reference`` (arrays within :data:`RTOL` of the largest
    entry, anything else by ``==``), and the largest relative error (nan if not arrays)."""
    a, b = _as_numpy(value), _as_numpy(reference)
    if is_ndarray(a) and is_ndarray(b):
        import numpy as np

        if a.shape != b.shape:
            return False, math.inf
        if a.size == 0:
            return True, 0.0
        scale = float(np.max(np.abs(b))) or 1.0
        err = float(np.max(np.abs(a.astype(np.float64) - b.astype(np.float64)))) / scale
        return bool(err <= RTOL), err
    try:
        return bool(a == b), math.nan
    except Exception:  # objects whose == raises or is not a truth value
        return False, math.nan


def resolve(spec: str) -> Callable[..., Any]:
    """``"pkg.mod:fn"`` (or ``"pkg.mod:Class.method"``) -> the callable it names."""
    return import_callable(spec, ConfigurationError)[1]


__all__ = [
    "RTOL",
    "Combiner",
    "Splitter",
    "axis0",
    "check_batched",
    "concat_axis0",
    "default_batched",
    "is_array",
    "nbytes",
    "parse_shape",
    "random_args",
    "resize_axis0",
    "resolve",
    "same_result",
    "scaled",
    "shapes_of",
    "sizes_from",
    "split_axis0",
]
