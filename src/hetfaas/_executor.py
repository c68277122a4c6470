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
from ._chunks import ChunkCall, auto_chunksize, chunk_items
from ._future import Future
from ._resources import DEFAULT_RESOURCES, Resources
from ._retrying import RetryingCall
from .backends.base import Backend, CallSpec, Capacity
from .exceptions import ConfigurationError, ResourceError
from .retry import Retry, policy_of

_executor_ids = itertools.count(1)


class _Shared:
    """What every view of one executor shares: the backend, the call counter, open batches."""

    def __init__(self, backend: Backend) -> None:
        self.backend = backend
        self.prefix = f"{backend.name}-{os.getpid()}-{next(_executor_ids)}"
        self.seq = itertools.count(1)
        self.batch = threading.local()


class MapIterator:
    """The results of a chunked ``map``, in order; ``chunks`` are the calls that carry them."""

    def __init__(self, chunks: list[Future], end: float | None) -> None:
        self.chunks = chunks
        self._end = end
        self._gen = self._results()

    def __iter__(self) -> Iterator[Any]:
        return self

    def __next__(self) -> Any:
        return next(self._gen)

    def _results(self) -> Iterator[Any]:
        from .backends import errors

        end = self._end
        for fut in self.chunks:
            left = None if end is None else max(0.0, end - time.monotonic())
            values, errs, _ = fut.result(left)
            if errs is None:
                yield from values
                continue
            for i, value in enumerate(values):
                if i in errs:
                    raise errors.decode(errs[i], fut.invocation_id)
                yield value


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
        self._retry: Retry | None = None

    # ----------------------------------------------------------------- views and info

    def options(
        self, resources: Resources | None = None, *, retry: Retry | None = None, **fields: Any
    ) -> Executor:
        """A view of this executor whose calls use other resources, or another retry policy
        for idempotent functions (see :mod:`hetfaas.retry`).

        ``ex.options(cpus=2, timeout_s=60)``, ``ex.options(resources=Resources(gpus=1))``,
        ``ex.options(retry=Retry(max_attempts=6))``.
        """
        res = resources if resources is not None else self._resources
        if not isinstance(res, Resources):
            raise ResourceError(f"resources must be a hetfaas.Resources, got {res!r}")
        if retry is not None and not isinstance(retry, Retry):
            raise ConfigurationError(f"retry must be a hetfaas.retry.Retry, got {retry!r}")
        if fields:
            res = res.replace(**fields)
        view = object.__new__(Executor)
        view._shared = self._shared
        view._resources = res
        view._retry = retry if retry is not None else self._retry
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
        self,
        fn: Callable[..., Any],
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
        policy_fn: Callable[..., Any] | None = None,
    ) -> tuple[Any, Future]:
        """The call as the backend prepared it (to dispatch), and the caller's future (the
        same one, unless the function is retried: see :mod:`hetfaas._retrying`).
        ``policy_fn``: the function whose retry policy applies (``fn`` itself by default)."""
        if not callable(fn):
            raise TypeError(f"submit() needs a callable, got {type(fn).__name__}")
        shared = self._shared
        policy = policy_of(fn if policy_fn is None else policy_fn, self._retry)
        if policy is not None:
            call = RetryingCall(
                shared.backend, lambda: Future(shared.prefix, next(shared.seq)),
                fn, args, kwargs, self._resources, policy,
            )  # fmt: skip
            return call.prepared, call.future
        future = Future(shared.prefix, next(shared.seq))
        return shared.backend.prepare(CallSpec(fn, args, kwargs, self._resources, future)), future

    def submit(self, fn: Callable[..., Any], /, *args: Any, **kwargs: Any) -> Future:
        """Run ``fn(*args, **kwargs)`` as one call; the future holds its result and timings."""
        prepared, future = self._prepare(fn, args, kwargs)
        pending = getattr(self._shared.batch, "calls", None)
        if pending is not None:
            pending.append(prepared)
        else:
            self._shared.backend.dispatch([prepared])
        return future

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
        pairs = [self._prepare(fn, args, {}) for args in calls]
        self._hand_over([p for p, _ in pairs])
        return [f for _, f in pairs]

    def map(
        self,
        fn: Callable[..., Any],
        *iterables: Iterable[Any],
        timeout: float | None = None,
        group: Any = None,
        chunksize: int | None = None,
    ) -> Iterator[Any]:
        """Like ``concurrent.futures.Executor.map``: results in order, the first error raised;
        ``timeout`` bounds the whole map, counted from this call. ``group``: see
        ``map_futures`` (a grouped map is never chunked).

        ``chunksize`` items travel per call (``None``: chosen from the map's size and the
        workers, see :func:`hetfaas._chunks.auto_chunksize`; 1: one call per item). Each
        item's result or error is kept: an item that raises is raised when the iteration
        reaches it, and the items after it still ran. The calls of the chunks are in
        ``.chunks`` of the returned iterator, with their timings."""
        end = None if timeout is None else time.monotonic() + timeout
        if chunksize is not None and (not isinstance(chunksize, int) or chunksize < 1):
            raise ValueError(f"chunksize must be a positive int or None, got {chunksize!r}")
        if group is None and chunksize != 1:
            items: list[Any] = (
                list(iterables[0]) if len(iterables) == 1 else list(zip(*iterables, strict=False))
            )
            size = chunksize or auto_chunksize(len(items), self._workers())
            if size > 1:
                return self._map_chunks(fn, items, len(iterables) != 1, size, end)
            futures = (
                self.map_futures(fn, items)
                if len(iterables) == 1
                else (self._map_tuples(fn, items))
            )
        else:
            futures = self.map_futures(fn, *iterables, group=group)

        def results() -> Iterator[Any]:
            for fut in futures:
                fut_timeout = None if end is None else max(0.0, end - time.monotonic())
                yield fut.result(fut_timeout)

        return results()

    def _map_tuples(self, fn: Callable[..., Any], items: list[tuple[Any, ...]]) -> list[Future]:
        pairs = [self._prepare(fn, args, {}) for args in items]
        self._hand_over([p for p, _ in pairs])
        return [f for _, f in pairs]

    def _workers(self) -> int:
        try:
            return self.capacity.max_workers
        except Exception:  # an engine that cannot say
            return 1

    def _map_chunks(
        self, fn: Callable[..., Any], items: list[Any], star: bool, size: int, end: float | None
    ) -> MapIterator:
        if not callable(fn):
            raise TypeError(f"map() needs a callable, got {type(fn).__name__}")
        call = ChunkCall(fn, star)
        # a chunk of an idempotent function's items is retried as its items would be
        chunks = chunk_items(items, size)
        pairs = [self._prepare(call, (chunk,), {}, policy_fn=fn) for chunk in chunks]
        self._hand_over([p for p, _ in pairs])
        return MapIterator([f for _, f in pairs], end)

    def _hand_over(self, prepared: list[Any]) -> None:
        pending = getattr(self._shared.batch, "calls", None)
        if pending is not None:
            pending.extend(prepared)
        elif prepared:
            self._shared.backend.dispatch(prepared)

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
