"""Reduction operators: SUM, PROD, MAX, MIN and custom ones.

A reduction works on ints, floats, lists (elementwise, nested), numpy arrays and CPU torch
tensors. Whether an algorithm may regroup or reorder the operands is a property of the
operator, not of the algorithm: an op not declared both commutative and associative is
applied strictly left to right in rank order, ``((x0 op x1) op x2) ...``.
"""

from __future__ import annotations

import operator
import sys
from collections.abc import Callable
from typing import Any

import numpy as np

from ..exceptions import ConfigurationError, GroupMismatch


def _is_tensor(x: Any) -> bool:
    torch = sys.modules.get("torch")
    return torch is not None and isinstance(x, torch.Tensor)


def _elementwise(name: str, scalar: Callable[[Any, Any], Any], ufunc: np.ufunc):
    def combine(a: Any, b: Any) -> Any:
        if isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)):
            if len(a) != len(b):
                raise GroupMismatch(
                    f"{name}: peers sent lists of different lengths ({len(a)} and {len(b)})"
                )
            return type(a)(combine(x, y) for x, y in zip(a, b, strict=True))
        if _is_tensor(a) or _is_tensor(b):
            torch = sys.modules["torch"]
            fn = {"sum": torch.add, "prod": torch.mul, "max": torch.maximum,
                  "min": torch.minimum}[name]  # fmt: skip
            return fn(torch.as_tensor(a), torch.as_tensor(b))
        if isinstance(a, np.ndarray) or isinstance(b, np.ndarray):
            if np.shape(a) != np.shape(b):
                raise GroupMismatch(
                    f"{name}: peers sent arrays of different shapes "
                    f"({np.shape(a)} and {np.shape(b)})"
                )
            return ufunc(a, b)
        return scalar(a, b)

    return combine


class ReduceOp:
    """A binary reduction ``fn(a, b) -> c``.

    ``commutative`` and ``associative`` say what the algorithms may do: only an op with both
    may be regrouped (trees, recursive doubling) or computed in arrival order; any other op is
    folded left to right in rank order. ``elementwise`` (an op that works chunk by chunk on
    flattened arrays, like the built-ins) lets large arrays go around a ring in pieces.
    """

    __slots__ = ("associative", "commutative", "elementwise", "fn", "name", "ufunc")

    def __init__(
        self,
        fn: Callable[[Any, Any], Any],
        commutative: bool = False,
        associative: bool = False,
        name: str | None = None,
        *,
        elementwise: bool = False,
    ) -> None:
        if not callable(fn):
            raise ConfigurationError(f"ReduceOp needs a callable, got {type(fn).__name__}")
        self.fn = fn
        self.commutative = bool(commutative)
        self.associative = bool(associative)
        self.elementwise = bool(elementwise)
        self.name = name or getattr(fn, "__name__", "custom")
        self.ufunc: np.ufunc | None = None

    @property
    def reorderable(self) -> bool:
        """Whether operands may be regrouped and reordered (commutative and associative)."""
        return self.commutative and self.associative

    def __call__(self, a: Any, b: Any) -> Any:
        return self.fn(a, b)

    def __repr__(self) -> str:
        return (
            f"ReduceOp({self.name}, commutative={self.commutative}, associative={self.associative})"
        )

    def __reduce__(self) -> Any:
        # The built-ins travel by name so that they stay the same objects in every process.
        if _BUILTINS.get(self.name) is self:
            return (builtin, (self.name,))
        return (_rebuild, (self.fn, self.commutative, self.associative, self.name,
                           self.elementwise))  # fmt: skip


def _rebuild(fn: Any, commutative: bool, associative: bool, name: str, elem: bool) -> ReduceOp:
    return ReduceOp(fn, commutative, associative, name, elementwise=elem)


def _builtin(name: str, scalar: Callable[[Any, Any], Any], ufunc: np.ufunc) -> ReduceOp:
    op = ReduceOp(_elementwise(name, scalar, ufunc), True, True, name, elementwise=True)
    op.ufunc = ufunc
    return op


SUM = _builtin("sum", operator.add, np.add)
PROD = _builtin("prod", operator.mul, np.multiply)
MAX = _builtin("max", max, np.maximum)
MIN = _builtin("min", min, np.minimum)
_BUILTINS = {op.name: op for op in (SUM, PROD, MAX, MIN)}


def builtin(name: str) -> ReduceOp:
    """The built-in op of that name (``"sum"``, ``"prod"``, ``"max"``, ``"min"``)."""
    try:
        return _BUILTINS[name]
    except KeyError:
        raise ConfigurationError(
            f"unknown reduction {name!r}; built-in ones: {', '.join(_BUILTINS)}"
        ) from None


def as_op(op: ReduceOp | Callable[[Any, Any], Any] | str) -> ReduceOp:
    """Accept a ReduceOp, a built-in's name, or a bare callable (taken as neither commutative
    nor associative, so applied in rank order)."""
    if isinstance(op, ReduceOp):
        return op
    if isinstance(op, str):
        return builtin(op)
    if callable(op):
        return ReduceOp(op)
    raise ConfigurationError(f"op must be a ReduceOp, a callable or a name, got {op!r}")


def fold(op: ReduceOp, values: list[Any]) -> Any:
    """Left fold in the given order: ((v0 op v1) op v2) ..."""
    acc = values[0]
    for v in values[1:]:
        acc = op(acc, v)
    return acc


__all__ = ["MAX", "MIN", "PROD", "SUM", "ReduceOp", "as_op", "builtin", "fold"]
