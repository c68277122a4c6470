"""Scheduling policies: pure functions of the scheduler state.

A policy is up to four choices, each looked up by name:

- a **dispatch rule** ``(state, model, params) -> device``: which device's queue a new request
  joins (called once per request, on arrival);
- a **pick rule** ``(state, device, params) -> index``: which request of that device's queue
  runs next (called when the device is idle and its queue is not empty);
- a **steal rule** (optional) ``(state, device, params) -> (source, index) | None``: a
  request queued on another device that this idle device, its own queue empty, runs instead;
- an **eviction** order for the device caches (``"lru"`` or ``"gdsf"``, see ``cache.py``).

Adding a rule is one decorated function; adding a named policy is one line in ``POLICIES``.
Rules read the state and never change it (``least_loaded`` drops stale index entries, which
changes no answer).

Dispatch rules
  ``lb``     the least-loaded working device (fewest queued + running requests; ties go to the
             one that received a request longest ago). Blind to the caches.
  ``lalb``   the least-loaded device that *holds* the model (resident, or a request for it is
             already queued there), unless that device is overloaded: its load is at least
             ``threshold`` above the least-loaded device's, in which case ``lb``.
  ``lalb-coldest`` (ours) ``lalb``, but when the model must be loaded somewhere new, the
             device is not simply the least loaded: among the devices at most one request
             above the least load, it is the one whose eviction victims were used least
             recently (a device with room to spare evicts nothing and wins). Per-device LRU
             then behaves like one LRU over the cluster's memory, so a load does not push out
             a hot model on one device while a cold one sits on the next. Costs a scan of the
             devices, on loads only.

Pick rules
  ``fifo``   the head of the queue.
  ``o3``     out-of-order: the first request within ``window`` whose model is resident on the
             device (a hit) runs before the misses ahead of it. Starvation bound: a request
             that has been overtaken ``starvation_bound`` times can no longer be overtaken, so
             the scan stops at it and runs it. No request is ever overtaken more often.

Steal rules
  ``o3``     the other half of out-of-order dispatch: an idle device with nothing queued takes
             a request queued behind a running one elsewhere whose model it holds in memory
             (from the most loaded such device, the first such request there), so the
             request overtakes the queue it waited in and still hits. Requests it jumps are
             not delayed, so this counts no overtaking.

The paper's LALB+O3 is ``lalb`` dispatch, ``o3`` pick and ``o3`` steal; ours swaps in
``lalb-coldest`` placement.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from ..exceptions import ConfigurationError, ServingError
from .cache import EVICTIONS
from .state import SchedulerState


@dataclass(frozen=True)
class PolicyParams:
    """The knobs of the rules; defaults are what the benchmarks use."""

    threshold: int = 16
    starvation_bound: int = 8
    window: int = 32

    def __post_init__(self) -> None:
        for name in ("threshold", "starvation_bound", "window"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ConfigurationError(f"{name} must be an int >= 1, not {value!r}")


DispatchRule = Callable[[SchedulerState, int, PolicyParams], int]
PickRule = Callable[[SchedulerState, int, PolicyParams], int]

StealRule = Callable[[SchedulerState, int, PolicyParams], "tuple[int, int] | None"]

DISPATCH: dict[str, DispatchRule] = {}
PICK: dict[str, PickRule] = {}
STEAL: dict[str, StealRule] = {}


def dispatch_rule(name: str) -> Callable[[DispatchRule], DispatchRule]:
    """Register a dispatch rule under ``name``."""

    def register(fn: DispatchRule) -> DispatchRule:
        if not callable(fn):
            raise ConfigurationError(f"dispatch rule {name!r} must be callable")
        DISPATCH[name] = fn
        return fn

    return register


def pick_rule(name: str) -> Callable[[PickRule], PickRule]:
    """Register a pick rule under ``name``."""

    def register(fn: PickRule) -> PickRule:
        if not callable(fn):
            raise ConfigurationError(f"pick rule {name!r} must be callable")
        PICK[name] = fn
        return fn

    return register


def steal_rule(name: str) -> Callable[[StealRule], StealRule]:
    """Register a steal rule under ``name``."""

    def register(fn: StealRule) -> StealRule:
        if not callable(fn):
            raise ConfigurationError(f"steal rule {name!r} must be callable")
        STEAL[name] = fn
        return fn

    return register


@dispatch_rule("lb")
def lb(state: SchedulerState, model: int, params: PolicyParams) -> int:
    return state.least_loaded(state.sizes[model])


@dispatch_rule("lalb")
def lalb(state: SchedulerState, model: int, params: PolicyParams) -> int:
    best = state.least_loaded(state.sizes[model])
    holder = state.least_loaded_holder(model)
    if holder >= 0 and state.load[holder] < state.load[best] + params.threshold:
        return holder
    return best


@dispatch_rule("lalb-coldest")
def lalb_coldest(state: SchedulerState, model: int, params: PolicyParams) -> int:
    size = state.sizes[model]
    best = state.least_loaded(size)
    holder = state.least_loaded_holder(model)
    if holder >= 0 and state.load[holder] < state.load[best] + params.threshold:
        return holder
    # a load is coming: among the (nearly) least-loaded devices, evict the coldest models
    limit = state.load[best] + 1
    choice, key = best, None
    for d in range(state.n_devices):
        if state.failed[d] or state.load[d] > limit or state.capacity[d] < size:
            continue
        cache = state.caches[d]
        try:
            victims = cache.victims(size)
        except ServingError:
            continue
        k = (max((cache.last_use(v) for v in victims), default=0), state.load[d], state.stamp[d])
        if key is None or k < key:
            choice, key = d, k
    return choice


@pick_rule("fifo")
def fifo(state: SchedulerState, device: int, params: PolicyParams) -> int:
    return 0


@pick_rule("o3")
def o3(state: SchedulerState, device: int, params: PolicyParams) -> int:
    queue = state.queues[device]
    if len(queue) == 1:
        return 0
    cache = state.caches[device]
    req_model = state.req_model
    overtaken = state.overtaken
    bound = params.starvation_bound
    for i in range(min(len(queue), params.window)):
        r = queue[i]
        if req_model[r] in cache or overtaken.get(r, 0) >= bound:
            return i
    return 0


@steal_rule("o3")
def o3_steal(state: SchedulerState, device: int, params: PolicyParams) -> tuple[int, int] | None:
    best, best_load = -1, 0
    load, queued, running = state.load, state.queued, state.running
    cache = state.caches[device]
    for m in cache:
        for e in queued[m]:
            # only from a busy device: an idle one starts its queue at once anyway
            if e != device and load[e] > best_load and running[e] >= 0:
                best, best_load = e, load[e]
    if best < 0:
        return None
    req_model = state.req_model
    for i, r in enumerate(state.queues[best]):
        if req_model[r] in cache:
            return best, i
    return None  # unreachable while the index is exact


@dataclass(frozen=True)
class Policy:
    """A named combination of a dispatch rule, a pick rule and an eviction order."""

    name: str
    dispatch: str
    pick: str = "fifo"
    eviction: str = "lru"
    steal: str | None = None

    def __post_init__(self) -> None:
        if self.dispatch not in DISPATCH:
            raise ConfigurationError(
                f"unknown dispatch rule {self.dispatch!r}; known: {', '.join(sorted(DISPATCH))}"
            )
        if self.pick not in PICK:
            raise ConfigurationError(
                f"unknown pick rule {self.pick!r}; known: {', '.join(sorted(PICK))}"
            )
        if self.steal is not None and self.steal not in STEAL:
            raise ConfigurationError(
                f"unknown steal rule {self.steal!r}; known: {', '.join(sorted(STEAL))}"
            )
        if self.eviction not in EVICTIONS:
            raise ConfigurationError(
                f"unknown eviction {self.eviction!r}; known: {', '.join(EVICTIONS)}"
            )


POLICIES: dict[str, Policy] = {
    p.name: p
    for p in (
        Policy("lb", "lb"),
        Policy("lalb", "lalb"),
        Policy("lalb+o3", "lalb", "o3", steal="o3"),
        Policy("ours", "lalb-coldest", "o3", steal="o3"),
        Policy("ours+gdsf", "lalb-coldest", "o3", "gdsf", steal="o3"),
    )
}


def get_policy(policy: str | Policy) -> Policy:
    """A Policy by name (or passed through); unknown names list the known ones."""
    if isinstance(policy, Policy):
        return policy
    try:
        return POLICIES[policy]
    except (KeyError, TypeError):
        raise ConfigurationError(
            f"unknown policy {policy!r}; known policies: {', '.join(POLICIES)}"
        ) from None
