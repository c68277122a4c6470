"""The functions the batched-matrix-multiplication study ships to workers.

They live inside the package (not in ``examples/``) so that a worker can import them by name.
This module imports only torch, and only when a kernel runs, so loading it in a worker is cheap.
None of them sets a thread count: the caller (``hetfaas.bare_metal``) or the worker that runs
the call decides how many cores torch may use.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import torch

RTOL = 1e-4
"""Relative tolerance of every correctness check (fp32)."""

ATOL_PER_SQRT_N = 1e-4
"""Absolute tolerance per square root of the inner dimension N: ``atol = 1e-4 * sqrt(N)``.

Entries of A and B are standard normal, so an entry of C has a spread of ``sqrt(N)`` and the
rounding error of an fp32 dot product of length N grows roughly like ``eps * N``; with
``eps = 6e-8`` that is about 6e-5 at N = 1000, fifty times below ``atol = 3.2e-3``.
"""


def _check_repeat(repeat: int) -> int:
    if isinstance(repeat, bool) or not isinstance(repeat, int) or repeat < 1:
        raise ValueError(f"repeat must be a positive int, got {repeat!r}")
    return repeat


def bmm_single(A: torch.Tensor, B: torch.Tensor, repeat: int = 1000) -> torch.Tensor:
    """``torch.bmm(A, B)`` computed ``repeat`` times; returns C of shape [bs, M, K]."""
    import torch

    _check_repeat(repeat)
    if A.dim() != 3 or B.dim() != 3 or A.shape[0] != B.shape[0] or A.shape[2] != B.shape[1]:
        raise ValueError(f"bmm_single: shapes {tuple(A.shape)} and {tuple(B.shape)} do not match")
    C = torch.empty((A.shape[0], A.shape[1], B.shape[2]), dtype=A.dtype)
    for _ in range(repeat):
        torch.bmm(A, B, out=C)
    return C


def mm_single(a: torch.Tensor, b: torch.Tensor, repeat: int = 1000) -> torch.Tensor:
    """``torch.mm(a, b)`` computed ``repeat`` times; returns c of shape [M, K]."""
    import torch

    _check_repeat(repeat)
    if a.dim() != 2 or b.dim() != 2 or a.shape[1] != b.shape[0]:
        raise ValueError(f"mm_single: shapes {tuple(a.shape)} and {tuple(b.shape)} do not match")
    c = torch.empty((a.shape[0], b.shape[1]), dtype=a.dtype)
    for _ in range(repeat):
        torch.mm(a, b, out=c)
    return c


def cuda_devices() -> int:
    """How many CUDA devices torch can use in this process (0 when none, or no CUDA build)."""
    import torch

    return int(torch.cuda.device_count()) if torch.cuda.is_available() else 0


def bmm_gpu(
    A: torch.Tensor, B: torch.Tensor, repeat: int = 1000, device: str | int | None = None
) -> torch.Tensor:
    """Copies A and B to a CUDA device, runs ``torch.bmm`` ``repeat`` times, synchronizes,
    and returns C on the CPU. ``device`` defaults to the current CUDA device (the one the
    worker was given)."""
    import torch

    _check_repeat(repeat)
    if not torch.cuda.is_available():
        raise RuntimeError("bmm_gpu: no CUDA device is visible to this process")
    dev = torch.device("cuda" if device is None else device)
    A_d = A.to(dev)
    B_d = B.to(dev)
    C_d = torch.empty((A.shape[0], A.shape[1], B.shape[2]), dtype=A.dtype, device=dev)
    for _ in range(repeat):
        torch.bmm(A_d, B_d, out=C_d)
    torch.cuda.synchronize(dev)
    return C_d.cpu()


def flops(shape: tuple[int, int, int, int] | list[int], repeat: int) -> float:
    """Floating point operations of ``repeat`` batched products of shape [bs, M, N, K]."""
    bs, m, n, k = shape
    return 2.0 * bs * m * n * k * repeat


def tolerances(n: int) -> tuple[float, float]:
    """``(rtol, atol)`` used to compare fp32 products whose inner dimension is ``n``."""
    return RTOL, ATOL_PER_SQRT_N * math.sqrt(n)


def verify(C: Any, reference: torch.Tensor, n: int) -> tuple[bool, float]:
    """Whether C matches the reference under :func:`tolerances`, and the largest error."""
    import torch

    if not isinstance(C, torch.Tensor) or tuple(C.shape) != tuple(reference.shape):
        return False, math.inf
    rtol, atol = tolerances(n)
    C = C.to(reference.dtype)
    ok = bool(torch.allclose(C, reference, rtol=rtol, atol=atol))
    err = float((C - reference).abs().max()) if C.numel() else 0.0
    return ok, err


__all__ = [
    "ATOL_PER_SQRT_N",
    "RTOL",
    "bmm_gpu",
    "bmm_single",
    "flops",
    "mm_single",
    "tolerances",
    "verify",
]
