"""Executor: submit, map and batch over one Backend, chosen by name."""

from __future__ import annotations

import contextlib
import itertools
import os
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from typing import Any

from . import backends
from ._future import Future
from ._resources import DEFAULT_RESOURCES, Resources
from .backends.base import Backend, CallSpec, Capacity
from .exceptions import ConfigurationError, ResourceError

_executor_ids = itertools.count(1)


class _Shared:
    """What every view of one executor shares: the backend, the call counter, open batches."""

    def __init__(self, backend: Backend) -> None:
        self.backend = backend
        self.prefix = f"{backend.name}-{os.getpid()}-{next(_executor_ids)}"
        self.seq = itertools.count(1)
        self.batch = threading.local()


class Executor:
    """Runs Python functions as serverless calls on a backend chosen by name.

    ``Executor()`` is a warm pool of worker processes on this machine (``"local"``); other
    names select other engines. Options go to the backend. ``resources`` is the default
    :class:`Resources` of each call; ``options(...)`` gives a view with other defaults.

    >>> with Executor() as ex:
    ...     ex.submit(pow, 2, 10).result()
    1024
    """

    def __init__(
        self, backend: str = "local", *, resources: Resources | None = None, **options: Any
    ) -> None:
        if resources is not None and not isinstance(resources, Resources):
            raise ConfigurationError(f"resources must be a hetfaas.Resources, got {resources!r}")
        self._shared = _Shared(backends.create(backend, **options))
        self._resources = resources or DEFAULT_RESOURCES

    # ----------------------------------------------------------------- views and info

    def options(self, resources: Resources | None = None, **fields: Any) -> Executor:
        """A view of this executor whose calls use other resources.

        ``ex.options(cpus=2, timeout_s=60)`` or ``ex.options(resources=Resources(gpus=1))``.
        """
        res = resources if resources is not None else self._resources
        if not isinstance(res, Resources):
            raise ResourceError(f"resources must be a hetfaas.Resources, got {res!r}")
        if fields:
            res = res.replace(**fields)
        view = object.__new__(Executor)
        view._shared = self._shared
        view._resources = res
        return view

    @property
    def resources(self) -> Resources:
        return self._resources

    @property
    def backend(self) -> Backend:
        return self._shared.backend

    @property
    def capacity(self) -> Capacity:
        return self._shared.backend.capacity()

    def warmup(self, n: int | None = None, resources: Resources | None = None) -> None:
        """Start workers now so that later calls find them warm (cold start out of the way)."""
        cap = self.capacity
        self._shared.backend.warmup(n or cap.max_workers, resources or self._resources)

    # ----------------------------------------------------------------- calls

    def _prepare(
        self, fn: Callable[..., Any], args: tuple[Any, ...], kwargs: dict[str, Any]
    ) -> Any:
        if not callable(fn):
            raise TypeError(f"submit() needs a callable, got {type(fn).__name__}")
        shared = self._shared
        future = Future(shared.prefix, next(shared.seq))
        return shared.backend.prepare(CallSpec(fn, args, kwargs, self._resources, future))

    def submit(self, fn: Callable[..., Any], /, *args: Any, **kwargs: Any) -> Future:
        """Run ``fn(*args, **kwargs)`` as one call; the future holds its result and timings."""
        prepared = self._prepare(fn, args, kwargs)
        pending = getattr(self._shared.batch, "calls", None)
        if pending is not None:
            pending.append(prepared)
        else:
            self._shared.backend.dispatch([prepared])
        return prepared.future

    def map_futures(
        self, fn: Callable[..., Any], *iterables: Iterable[Any], group: Any = None
    ) -> list[Future]:
        """One call per element (as the built-in ``map`` zips), all handed over at once.

        ``group`` (a name or a ``hetfaas.collectives.GroupSpec``) makes the calls one group:
        each gets a communicator (rank = its index), as ``comm=`` or through
        ``hetfaas.collectives.current()``; see :mod:`hetfaas.collectives.group`."""
        calls = list(zip(*iterables, strict=False))
        if group is not None:
            fn, calls = self._grouped(fn, calls, group)
        prepared = [self._prepare(fn, args, {}) for args in calls]
        pending = getattr(self._shared.batch, "calls", None)
        if pending is not None:
            pending.extend(prepared)
        elif prepared:
            self._shared.backend.dispatch(prepared)
        return [p.future for p in prepared]

    def map(
        self,
        fn: Callable[..., Any],
        *iterables: Iterable[Any],
        timeout: float | None = None,
        group: Any = None,
    ) -> Iterator[Any]:
        """Like ``concurrent.futures.Executor.map``: results in order, the first error raised;
        ``timeout`` bounds the whole map, counted from this call. ``group``: see
        ``map_futures``."""
        end = None if timeout is None else time.monotonic() + timeout
        futures = self.map_futures(fn, *iterables, group=group)

        def results() -> Iterator[Any]:
            for fut in futures:
                fut_timeout = None if end is None else max(0.0, end - time.monotonic())
                yield fut.result(fut_timeout)

        return results()

    def _grouped(
        self, fn: Callable[..., Any], calls: list[tuple[Any, ...]], group: Any
    ) -> tuple[Callable[..., Any], list[tuple[Any, ...]]]:
        from .collectives import group as groups

        if not callable(fn):
            raise TypeError(f"map() needs a callable, got {type(fn).__name__}")
        spec = groups.as_spec(group)
        try:
            cap = self.capacity
        except Exception:  # an engine that cannot say: nothing to check against
            cap = None
        groups.check_fits(len(calls), cap, self._resources)
        wrapped = groups.GroupCall(fn, spec, len(calls))
        return wrapped, [(rank, *args) for rank, args in enumerate(calls)]

    @contextlib.contextmanager
    def batch(self) -> Iterator[None]:
        """Calls submitted inside are handed to the backend together when the block ends.

        Bad input still fails at ``submit``; if the block raises, nothing is submitted.
        """
        local = self._shared.batch
        if getattr(local, "calls", None) is not None:
            raise RuntimeError("batch() blocks cannot be nested")
        local.calls = []
        try:
            yield
        except BaseException:
            calls, local.calls = local.calls, None
            for prepared in calls:
                prepared.future.cancel()
            raise
        calls, local.calls = local.calls, None
        if calls:
            self._shared.backend.dispatch(calls)

    # ----------------------------------------------------------------- lifetime

    def shutdown(self, wait: bool = True, *, cancel_futures: bool = False) -> None:
        """Stop the backend; with ``wait``, after accepted calls finish. No process stays."""
        self._shared.backend.shutdown(wait=wait, cancel_futures=cancel_futures)

    def __enter__(self) -> Executor:
        return self

    def __exit__(self, *exc: object) -> None:
        self.shutdown(wait=True)
