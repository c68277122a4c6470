"""Thread pools sized to a call's cores, in every library a user meets.

A call with ``cpus=N`` runs with N threads in torch's intra-op pool, OpenBLAS, MKL, BLIS and
OpenMP. Environment variables (``OMP_NUM_THREADS``) only reach a library that has not loaded
yet, so the pools already loaded are resized with threadpoolctl, which talks to each library
directly. torch's inter-op pool can be sized only once per process, before its first use: it
gets the core count of the first call that sizes it.
"""

from __future__ import annotations

import contextlib
import os
import sys
from typing import Any

_ENV = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS", "BLIS_NUM_THREADS")


class ThreadPools:
    """Resizes this process's thread pools; cheap when nothing changed since the last call."""

    def __init__(self) -> None:
        self.threads = 0
        self._controller: Any = None
        self._modules = -1  # len(sys.modules) when the libraries were last looked up
        self._interop_done = False

    def size(self, n: int, interop: bool = True) -> None:
        """Make every pool of this process use ``n`` threads. ``interop=False`` leaves
        torch's inter-op pool for a later call to size (it can be sized only once)."""
        n = max(1, int(n))
        modules = len(sys.modules)
        if n == self.threads and modules == self._modules:
            return
        for var in _ENV:
            os.environ[var] = str(n)
        torch = sys.modules.get("torch")
        if torch is not None:
            if torch.get_num_threads() != n:
                torch.set_num_threads(n)
            if interop and not self._interop_done:
                self._interop_done = True
                # RuntimeError: inter-op work already ran in this process
                with contextlib.suppress(RuntimeError):
                    torch.set_num_interop_threads(n)
        if modules != self._modules:  # a module imported since may have loaded a library
            self._modules = modules
            self._controller = _controller()
        if self._controller is not None:
            # a library threadpoolctl cannot drive: the env vars are all it gets
            with contextlib.suppress(Exception):
                self._controller.limit(limits=n)
        self.threads = n


def _controller() -> Any:
    try:
        from threadpoolctl import ThreadpoolController
    except ImportError:
        return None
    try:
        return ThreadpoolController()
    except Exception:
        return None


def pool_sizes() -> dict[str, int]:
    """What this process's pools use now (for tests and reports): library -> threads."""
    out: dict[str, int] = {}
    torch = sys.modules.get("torch")
    if torch is not None:
        out["torch"] = torch.get_num_threads()
        out["torch-interop"] = torch.get_num_interop_threads()
    ctl = _controller()
    if ctl is not None:
        for info in ctl.info():
            out[info["internal_api"]] = info["num_threads"]
    return out


__all__ = ["ThreadPools", "pool_sizes"]
