"""What runs in a worker for one stage call: get the inputs by reference, run the stage's
function, put the outputs into the data plane, hand back references and measurements.

:class:`StageCall` is the callable a run submits for each item; it is made once per stage and
run, so an executor ships it (with the user's function) once per worker. Its calls carry only
the item key, the input references (or a source item, as an ordinary argument) and the state
reference of a stateful stage. Errors of the user's function propagate as they were raised;
the executor's retry policy (``Stage.retry``) decides whether the call runs again. Output keys
depend only on the run, the stage and the item, so an attempt that runs again replaces what an
earlier attempt stored instead of leaking it. Tensors a stage leaves on a GPU are copied to
host memory before they are stored (:func:`to_host`), so any stage can read them.
"""

from __future__ import annotations

import copy
import os
import resource
import sys
import time
from collections.abc import Callable
from typing import Any, NamedTuple

from .dataplane import ItemRef, get_value, put_value
from .errors import FanoutExceeded
from .graph import NO_STATE


class SourceItem(NamedTuple):
    """A source item, passed to the first stage as an ordinary call argument."""

    value: Any


class TaskReport(NamedTuple):
    """What one call sends back to the driver: references and measurements, no item bytes
    (except items small enough to travel inline)."""

    outputs: tuple[ItemRef, ...]
    state: ItemRef | None
    bytes_in: int
    bytes_out: int
    fetch_s: float  # getting the inputs (and state) from the data plane
    compute_s: float  # the stage's function
    put_s: float  # putting the outputs (and state) into the data plane
    cpu_s: float  # CPU time of the worker process over the call
    peak_rss_mb: float  # the worker process's high-water mark at the end of the call
    pid: int


def to_host(obj: Any) -> Any:
    """``obj`` with its torch tensors on a GPU copied to host memory (in lists, tuples and
    dicts too), so that any stage, on any worker, can read the item; other objects as they are.
    A no-op where torch was never imported or CUDA never initialised."""
    torch = sys.modules.get("torch")
    if torch is None or not torch.cuda.is_initialized():
        return obj
    return _host(obj, torch)


def _host(obj: Any, torch: Any) -> Any:
    if isinstance(obj, torch.Tensor):
        return obj.detach().cpu() if obj.device.type != "cpu" else obj
    if isinstance(obj, dict):
        return {k: _host(v, torch) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)) and not hasattr(obj, "_fields"):
        return type(obj)(_host(v, torch) for v in obj)
    return obj


def _peak_rss_mb() -> float:
    kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return kb / 1024 if sys.platform != "darwin" else kb / 2**20


class StageCall:
    """One stage of one run, as workers run it (see the module's doc)."""

    def __init__(
        self,
        fn: Callable[..., Any],
        *,
        stage: str,
        index: int,
        url: str,
        namespace: str,
        fanout: int,
        inline_bytes: int,
        keep: bool = True,
        state: Any = NO_STATE,
    ) -> None:
        self.fn = fn
        self.stage = stage
        self.index = index
        self.url = url
        self.namespace = namespace
        self.fanout = fanout
        self.inline_bytes = inline_bytes
        self.keep = keep  # False: a sink whose items are only counted, never stored
        self.state = state
        self.__qualname__ = f"pipeline stage {stage!r} ({getattr(fn, '__qualname__', fn)!r})"

    def store_key(self, item: str, what: str = "") -> str:
        """The data plane key of an item of this stage (``what``: ``s`` for the state)."""
        return f"{self.namespace}-{self.index}{what}-{item}"

    def __call__(self, key: str, inputs: tuple[Any, ...], state: ItemRef | None) -> TaskReport:
        t0 = time.perf_counter()
        cpu0 = time.process_time()
        bytes_in = 0
        args = []
        for x in inputs:
            if isinstance(x, ItemRef):
                bytes_in += x.nbytes
                args.append(get_value(x))
            else:
                args.append(x.value)
        stateful = self.state is not NO_STATE
        if stateful:
            if state is None:
                current = copy.deepcopy(self.state)  # an attempt that mutates it, then fails
            else:
                bytes_in += state.nbytes
                current = get_value(state)
        t1 = time.perf_counter()
        if stateful:
            out = self.fn(current, *args)
            if not (isinstance(out, tuple) and len(out) == 2):
                raise TypeError(
                    f"stateful stage {self.stage!r} must return (new_state, output), "
                    f"got {type(out).__name__}"
                )
            new_state, result = out
        else:
            result = self.fn(*args)
        if stateful:
            new_state = to_host(new_state)
        if self.fanout > 1:
            items = [to_host(x) for x in result]
            if len(items) > self.fanout:
                raise FanoutExceeded(
                    f"stage {self.stage!r} returned {len(items)} items for item {key}, more "
                    f"than its fanout={self.fanout}"
                )
        else:
            items = [to_host(result)]
        t2 = time.perf_counter()
        refs = []
        for j, item in enumerate(items):
            name = f"{key}.{j}" if self.fanout > 1 else key
            if self.keep:
                refs.append(put_value(self.url, self.store_key(name), item, self.inline_bytes))
            else:
                refs.append(ItemRef("", "", 0))
        state_ref = None
        if stateful:
            state_ref = put_value(self.url, self.store_key(key, "s"), new_state, 0)
        t3 = time.perf_counter()
        bytes_out = sum(r.nbytes for r in refs) + (state_ref.nbytes if state_ref else 0)
        return TaskReport(
            tuple(refs), state_ref, bytes_in, bytes_out, t1 - t0, t2 - t1, t3 - t2,
            time.process_time() - cpu0, _peak_rss_mb(), os.getpid(),
        )  # fmt: skip


__all__ = ["SourceItem", "StageCall", "TaskReport"]
