"""Scheduler: a policy applied to the scheduler state; the same object in both modes.

The simulator calls it from its event loop, the runtime from its device threads (under one
lock). It validates each request once (unknown model, too large for every device, no device
left), asks the policy's dispatch rule for a device, and, when a device is free, asks the pick
rule which of its queued requests runs. A failed device's requests come back to be dispatched
again elsewhere.
"""

from __future__ import annotations

from typing import NamedTuple

from ..exceptions import DeviceFailed, ModelTooLarge, UnknownModel
from .policies import DISPATCH, PICK, STEAL, Policy, PolicyParams, get_policy
from .state import SchedulerState


class Start(NamedTuple):
    """A request a device should run now."""

    request: int
    model: int
    hit: bool
    evicted: list[int]


class Scheduler:
    """Where each request goes, and what each free device runs next."""

    def __init__(
        self,
        capacities: list[int],
        sizes: list[int],
        load_times: list[float],
        infer_times: list[float],
        policy: str | Policy = "lalb+o3",
        params: PolicyParams | None = None,
        nodes: list[int] | None = None,
    ) -> None:
        self.policy = get_policy(policy)
        self.params = params if params is not None else PolicyParams()
        self.state = SchedulerState(
            capacities, sizes, load_times, infer_times, self.policy.eviction, nodes
        )
        self._dispatch = DISPATCH[self.policy.dispatch]
        self._pick = PICK[self.policy.pick]
        self._steal = STEAL[self.policy.steal] if self.policy.steal else None

    def check(self, model: int) -> None:
        """Raise the error a request for ``model`` would get (UnknownModel, ModelTooLarge...)."""
        state = self.state
        if not isinstance(model, int) or not 0 <= model < state.n_models:
            raise UnknownModel(f"unknown model {model!r}")
        if state.max_capacity == 0:
            raise DeviceFailed("no working device is left")
        if state.sizes[model] > state.max_capacity:
            raise ModelTooLarge(
                f"model {model} needs {state.sizes[model]} bytes; the largest working device "
                f"holds {state.max_capacity}"
            )

    def submit(self, request: int, model: int) -> int:
        """Queue a request on the device the policy picks; returns that device."""
        state = self.state
        sizes = state.sizes
        if not (type(model) is int and 0 <= model < len(sizes)) or (
            sizes[model] > state._live_max_capacity
        ):
            self.check(model)  # raises the specific error
        device = self._dispatch(self.state, model, self.params)
        self.state.enqueue(device, request, model)
        return device

    def next(self, device: int) -> Start | None:
        """The request ``device`` runs now, or None when it is busy, failed or has none."""
        state = self.state
        if state.running[device] >= 0 or state.failed[device]:
            return None
        if not state.queues[device]:
            if self._steal is None:
                return None
            found = self._steal(state, device, self.params)
            if found is None:
                return None
            state.move(found[0], found[1], device)
            index = 0
        else:
            index = self._pick(state, device, self.params)
        request, hit, evicted = state.start(device, index)
        return Start(request, state.req_model[request], hit, evicted)

    def complete(self, device: int) -> int:
        """The running request of ``device`` ended; returns it."""
        return self.state.finish(device)

    def fail(self, device: int) -> list[tuple[int, int]]:
        """Take ``device`` out; returns its (request, model) pairs, the running one first."""
        return self.state.fail(device)
