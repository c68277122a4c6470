"""Groups among the calls of one map: ``ex.map(fn, items, group=...)``.

Each call runs inside a :class:`GroupCall`, which opens the call's communicator (rank = its
index in the map, size = the number of items) before ``fn`` runs and closes it after, so the
last call out cleans the group's keys. ``fn`` gets it as ``comm=`` when it has a parameter of
that name (or ``**kwargs``); :func:`hetfaas.collectives.current` returns it in any case.
"""

from __future__ import annotations

import inspect
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from .._resources import Resources
from ..backends.base import Capacity
from ..exceptions import ConfigurationError, ResourceError


@dataclass(frozen=True)
class GroupSpec:
    """How the calls of one map talk: the group's ``name``, its ``channel`` URI (None: a
    directory under the system's temporary directory, seen by every process of one machine;
    use a shared path, Redis, S3 or a rendezvous server across machines) and the deadline of
    each operation. Each map gets a group of its own, named ``<name>-<random suffix>``, so a
    name can be used again and a crashed map's leftovers are never read.

    ``min_size`` or ``max_size`` make the group elastic (:mod:`.elastic`): it starts with the
    members that arrive (at least ``min_size``), goes on when one dies and takes in joiners
    up to ``max_size``; its channel is one ``tcp://`` or ``redis://`` URI."""

    name: str = "map"
    channel: str | tuple[str, ...] | None = None  # several URIs: ``hint`` picks per operation
    timeout_s: float = 60.0
    hint: str | None = None  # "fast" or "cheap", with several channels (the cost model's)
    min_size: int | None = None  # elastic: the fewest members it runs with
    max_size: int | None = None  # elastic: the most (None: no cap)

    @property
    def elastic(self) -> bool:
        return self.min_size is not None or self.max_size is not None

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or not self.name:
            raise ConfigurationError(f"GroupSpec.name must be a non-empty str, got {self.name!r}")
        channel = self.channel
        if isinstance(channel, list):
            channel = tuple(channel)
            object.__setattr__(self, "channel", channel)  # frozen: hashable and picklable
        uris = channel if isinstance(channel, tuple) else (channel,)
        if channel is not None and (not uris or not all(isinstance(u, str) for u in uris)):
            raise ConfigurationError(
                f"GroupSpec.channel must be a URI or a list of URIs, got {self.channel!r}"
            )
        if self.hint not in (None, "fast", "cheap"):
            raise ConfigurationError(f"GroupSpec.hint must be 'fast' or 'cheap', got {self.hint!r}")
        if self.elastic:
            from .membership import MembershipPolicy

            min_size = 1 if self.min_size is None else self.min_size
            MembershipPolicy(min_size, self.max_size)  # checks the sizes


def as_spec(group: str | GroupSpec) -> GroupSpec:
    if isinstance(group, GroupSpec):
        return group
    if isinstance(group, str):
        return GroupSpec(group)
    raise ConfigurationError(f"group must be a name or a GroupSpec, got {group!r}")


def _takes_comm(fn: Callable[..., Any]) -> bool:
    try:
        params = inspect.signature(fn).parameters.values()
    except (TypeError, ValueError):
        return False
    return any(
        (p.name == "comm" and p.kind in (p.KEYWORD_ONLY, p.POSITIONAL_OR_KEYWORD))
        or p.kind == p.VAR_KEYWORD
        for p in params
    )


def concurrent_calls(cap: Capacity, res: Resources) -> int | None:
    """How many calls of ``res`` the executor runs at once, or None when it cannot say."""
    if cap.max_workers <= 0 or cap.cpus <= 0:
        return None
    n = min(cap.max_workers, cap.cpus // res.cpus)
    if res.whole_gpus:
        n = min(n, cap.gpus // res.whole_gpus)
    elif res.gpu_share:
        n = min(n, int(cap.gpus / res.gpu_share + 1e-9))
    return n


def check_fits(size: int, cap: Capacity | None, res: Resources) -> None:
    """All calls of a group must run at once: fail at submit rather than deadlock."""
    n = None if cap is None else concurrent_calls(cap, res)
    if cap is not None and n is not None and size > n:
        raise ResourceError(
            f"a group of {size} calls must run at the same time, but this executor runs at "
            f"most {n} calls of cpus={res.cpus}, gpus={res.gpus} at once ({cap.cpus} cores, "
            f"{cap.gpus} GPUs, {cap.max_workers} workers); use fewer items or fewer resources "
            "per call"
        )


class GroupCall:
    """The function of every call of a grouped map, called as ``GroupCall(rank, *args)``."""

    def __init__(self, fn: Callable[..., Any], spec: GroupSpec, size: int) -> None:
        self.fn = fn
        self.name = f"{spec.name}-{uuid.uuid4().hex[:12]}"
        self.channel = list(spec.channel) if isinstance(spec.channel, tuple) else spec.channel
        self.timeout_s = spec.timeout_s
        self.hint = spec.hint
        self.size = size
        self.pass_comm = _takes_comm(fn)
        self.__qualname__ = getattr(fn, "__qualname__", "GroupCall")
        self.elastic: Callable[..., Any] | None = None
        if spec.elastic:
            from .elastic_group import ElasticCall

            self.elastic = ElasticCall.for_map(fn, spec, self.name, size)

    def __call__(self, rank: int, *args: Any) -> Any:
        from .comm import Communicator, _current

        if self.elastic is not None:  # ranks come from the group's generations, not the map
            return self.elastic(*args)

        with Communicator(
            rank, self.size, self.name, self.channel, self.timeout_s, self.hint
        ) as comm:
            token = _current.set(comm)
            try:
                return self.fn(*args, comm=comm) if self.pass_comm else self.fn(*args)
            finally:
                _current.reset(token)
