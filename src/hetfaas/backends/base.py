"""The extension point for engines: a Backend turns prepared calls into running ones."""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, ClassVar, NamedTuple

from .._resources import Resources

if TYPE_CHECKING:
    import asyncio


class Capacity(NamedTuple):
    """What a backend can run at once."""

    cpus: int
    gpus: int
    gpu_names: tuple[str, ...]
    max_workers: int
    memory_mb: int


class CallSpec:
    """One accepted call, before the backend has seen it."""

    __slots__ = ("args", "fn", "future", "kwargs", "resources")

    def __init__(
        self,
        fn: Callable[..., Any],
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
        resources: Resources,
        future: Any,
    ) -> None:
        self.fn = fn
        self.args = args
        self.kwargs = kwargs
        self.resources = resources
        self.future = future


class Backend(ABC):
    """An engine that runs calls. ``prepare`` runs at submit (so bad input fails there, even
    inside ``batch()``); ``dispatch`` hands prepared calls over, in order."""

    name: ClassVar[str] = ""

    def prepare(self, spec: CallSpec) -> Any:
        """Validate and serialize one call; raise ResourceError/SerializationError here.
        What it returns must carry the call's ``future`` attribute."""
        return spec

    @abstractmethod
    def dispatch(self, prepared: list[Any]) -> None:
        """Start the prepared calls; each completes its own future."""

    @abstractmethod
    def capacity(self) -> Capacity:
        """What can run at once."""

    @abstractmethod
    def shutdown(self, wait: bool = True, cancel_futures: bool = False) -> None:
        """Stop; with ``wait``, after the accepted calls finish. Leaves no process behind."""

    def warmup(self, n: int, resources: Resources) -> None:  # noqa: B027 - optional hook
        """Start ``n`` workers for ``resources`` now, so later calls find them warm."""

    def cancel_pending(self) -> None:  # noqa: B027 - optional hook
        """Cancel the calls not yet started."""

    def stats(self) -> dict[str, int]:
        """What the engine holds now, for metrics and dashboards: any of ``workers_starting``,
        ``workers_idle``, ``workers_busy``, ``queued``, ``running`` it can tell (none here)."""
        return {}

    def deliver_on(self, loop: asyncio.AbstractEventLoop) -> Callable[[], None] | None:
        """Complete futures in ``loop``'s thread, from its own I/O wait, instead of a thread
        of the engine's (an asyncio server that submits calls saves the hops between threads).
        Returns the function that hands delivery back (call it before the loop stops), or
        None when this engine does not deliver that way (it goes on as before)."""
        return None
