"""Scheduler state: devices, their caches, queues and loads, as plain data indexed by int.

Devices are ``0..n-1``, models are ``0..m-1`` (the catalog's order) and requests are ints the
caller chooses. The simulator and the real runtime both mutate it only through the methods
here (``enqueue``, ``start``, ``finish``, ``fail``), so the accounting is the same in both
modes; policies only read it.

Two indexes keep the policies cheap at a thousand devices: a heap of ``(load, stamp, device)``
for the least loaded device, and one such heap per model over the devices that hold it (the
model is resident, or a request for it is queued or running there). Entries are never
removed when a load changes; a new one is pushed and stale ones are skipped when they surface.
``stamp`` is the dispatch count when the device last received a request, so ties between
equally loaded devices go to the one that waited longest (round robin among equals).
"""

from __future__ import annotations

import heapq
from collections import Counter
from collections.abc import Sequence

from ..exceptions import ConfigurationError, ServingError
from .cache import ModelCache


class SchedulerState:
    """Everything a policy may look at, and the only mutations the modes may make."""

    def __init__(
        self,
        capacities: Sequence[int],
        sizes: Sequence[int],
        load_times: Sequence[float],
        infer_times: Sequence[float],
        eviction: str = "lru",
        nodes: Sequence[int] | None = None,
    ) -> None:
        n = len(capacities)
        if n == 0:
            raise ConfigurationError("a cluster needs at least one device")
        if not (len(sizes) == len(load_times) == len(infer_times)):
            raise ConfigurationError("sizes, load_times and infer_times must be of equal length")
        if nodes is not None and len(nodes) != n:
            raise ConfigurationError("nodes must name one node per device")
        self.n_devices = n
        self.nodes = list(nodes) if nodes is not None else [0] * n
        self.capacity = [int(c) for c in capacities]
        self.eviction = eviction
        self.caches = [ModelCache(c, eviction) for c in self.capacity]
        self.sizes = [int(s) for s in sizes]
        self.load_times = [float(t) for t in load_times]
        self.infer_times = [float(t) for t in infer_times]
        self.queues: list[list[int]] = [[] for _ in range(n)]
        self.running = [-1] * n
        self.load = [0] * n  # queued + running
        self.failed = [False] * n
        self.stamp = [0] * n
        # model -> references on the device: 1 if resident, plus 1 per queued/running request
        self.held: list[dict[int, int]] = [{} for _ in range(n)]
        # model -> {device: requests for it queued (not running) there}
        self.queued: list[dict[int, int]] = [{} for _ in sizes]
        self.req_model: dict[int, int] = {}
        self.overtaken: dict[int, int] = {}
        self.max_overtaken = 0
        self._dispatches = 0
        self._heap: list[tuple[int, int, int]] = [(0, 0, d) for d in range(n)]
        self._mheaps: list[list[tuple[int, int, int]]] = [[] for _ in sizes]
        self._track_holders = False  # turned on by the first least_loaded_holder()
        self._live_min_capacity = min(self.capacity)
        self._live_max_capacity = max(self.capacity)

    # -- queries (what policies use) -------------------------------------------------------
    @property
    def n_models(self) -> int:
        return len(self.sizes)

    @property
    def max_capacity(self) -> int:
        """The largest memory of a device that still works (0 when none does)."""
        return self._live_max_capacity

    def holds(self, device: int, model: int) -> bool:
        """Whether ``model`` is resident on ``device`` or a request for it is queued there."""
        return model in self.held[device]

    def least_loaded(self, size: int = 0) -> int:
        """The working device with the fewest requests that can hold ``size`` bytes, or -1."""
        if size > self._live_min_capacity:
            best, key = -1, None
            for d in range(self.n_devices):
                if not self.failed[d] and self.capacity[d] >= size:
                    k = (self.load[d], self.stamp[d])
                    if key is None or k < key:
                        best, key = d, k
            return best
        heap, load, stamp, failed = self._heap, self.load, self.stamp, self.failed
        while heap:
            ld, st, d = heap[0]
            if load[d] == ld and stamp[d] == st and not failed[d]:
                return d
            heapq.heappop(heap)
        return -1

    def least_loaded_holder(self, model: int) -> int:
        """The working device holding ``model`` with the fewest requests, or -1."""
        if not self._track_holders:
            self._track_holders = True
            for m in range(self.n_models):
                self._rebuild_mheap(m)
        heap = self._mheaps[model]
        load, stamp, failed, held = self.load, self.stamp, self.failed, self.held
        while heap:
            ld, st, d = heap[0]
            if load[d] == ld and stamp[d] == st and not failed[d] and model in held[d]:
                return d
            heapq.heappop(heap)
        return -1

    # -- mutations (what the modes do) -----------------------------------------------------
    def _changed(self, d: int) -> None:
        entry = (self.load[d], self.stamp[d], d)
        heapq.heappush(self._heap, entry)
        if self._track_holders:
            mheaps = self._mheaps
            for m in self.held[d]:
                heapq.heappush(mheaps[m], entry)
        if len(self._heap) > 4 * self.n_devices + 1024:
            self._heap = [(self.load[x], self.stamp[x], x) for x in range(self.n_devices)]
            heapq.heapify(self._heap)

    def enqueue(self, device: int, request: int, model: int) -> None:
        """Queue ``request`` (for ``model``) on ``device``."""
        held = self.held[device]
        refs = held.get(model, 0)
        held[model] = refs + 1
        qd = self.queued[model]
        qd[device] = qd.get(device, 0) + 1
        self.queues[device].append(request)
        self.req_model[request] = model
        self.load[device] += 1
        self._dispatches += 1
        self.stamp[device] = self._dispatches
        if self._track_holders and len(self._mheaps[model]) > 4 * self.n_devices + 1024:
            self._rebuild_mheap(model)
        self._changed(device)

    def _rebuild_mheap(self, model: int) -> None:
        heap = [
            (self.load[d], self.stamp[d], d)
            for d in range(self.n_devices)
            if model in self.held[d] and not self.failed[d]
        ]
        heapq.heapify(heap)
        self._mheaps[model] = heap

    def start(self, device: int, index: int = 0) -> tuple[int, bool, list[int]]:
        """Run the request at ``index`` of the device's queue; returns (request, hit, evicted).

        Requests ahead of it count one overtaking each. On a miss the model is made resident
        (evicting by the cache's order) and pinned, as it is on a hit.
        """
        if self.running[device] >= 0:
            raise ServingError(f"device {device} is already running request {self.running[device]}")
        queue = self.queues[device]
        if index:
            ov = self.overtaken
            for r in queue[:index]:
                c = ov.get(r, 0) + 1
                ov[r] = c
                if c > self.max_overtaken:
                    self.max_overtaken = c
            request = queue.pop(index)
        else:
            request = queue.pop(0)
        self.running[device] = request
        model = self.req_model[request]
        self._unqueue(model, device)
        cache = self.caches[device]
        if model in cache:
            cache.touch(model, self.load_times[model])
            cache.pin(model)
            return request, True, []
        evicted = cache.admit(model, self.sizes[model], self.load_times[model])
        for v in evicted:
            self._drop_hold(device, v)
        self.held[device][model] += 1
        cache.pin(model)
        return request, False, evicted

    def _unqueue(self, model: int, device: int) -> None:
        qd = self.queued[model]
        c = qd[device] - 1
        if c:
            qd[device] = c
        else:
            del qd[device]

    def move(self, source: int, index: int, device: int) -> None:
        """Take the request at ``index`` of ``source``'s queue to the end of ``device``'s."""
        request = self.queues[source].pop(index)
        model = self.req_model.pop(request)
        self._unqueue(model, source)
        self._drop_hold(source, model)
        self.load[source] -= 1
        self._changed(source)
        self.enqueue(device, request, model)

    def finish(self, device: int) -> int:
        """The running request ended (done, or failed without harming the device)."""
        request = self.running[device]
        if request < 0:
            raise ServingError(f"device {device} is running no request")
        self.running[device] = -1
        model = self.req_model.pop(request)
        self.caches[device].unpin(model)
        self._drop_hold(device, model)
        self.load[device] -= 1
        self.overtaken.pop(request, None)
        self._changed(device)
        return request

    def drop(self, device: int, model: int) -> None:
        """Make ``model`` no longer resident on ``device`` (its load failed); not pinned."""
        cache = self.caches[device]
        if model in cache:
            cache.evict(model)
            self._drop_hold(device, model)

    def _drop_hold(self, device: int, model: int) -> None:
        """One reference fewer to ``model`` on ``device`` (queued, running or cached)."""
        held = self.held[device]
        refs = held[model] - 1
        if refs:
            held[model] = refs
        else:
            del held[model]

    def fail(self, device: int) -> list[tuple[int, int]]:
        """Take ``device`` out of service; returns its requests (running first) with models."""
        if self.failed[device]:
            return []
        out = []
        if self.running[device] >= 0:
            r = self.running[device]
            out.append((r, self.req_model[r]))
        out.extend((r, self.req_model[r]) for r in self.queues[device])
        for r in self.queues[device]:
            self._unqueue(self.req_model[r], device)
        for r, _ in out:
            del self.req_model[r]
            self.overtaken.pop(r, None)
        self.failed[device] = True
        self.running[device] = -1
        self.queues[device] = []
        self.caches[device].clear()
        self.held[device] = {}
        self.load[device] = 0
        live = [c for c, f in zip(self.capacity, self.failed, strict=True) if not f]
        self._live_min_capacity = min(live) if live else 1 << 62
        self._live_max_capacity = max(live) if live else 0
        return out

    def check_invariants(self) -> None:
        """Raise ServingError unless every count and byte is where it should be."""
        problems = []
        for d in range(self.n_devices):
            cache = self.caches[d]
            cache.check_invariants()
            running = self.running[d]
            queue = self.queues[d]
            if self.load[d] != len(queue) + (running >= 0):
                problems.append(f"device {d}: load {self.load[d]} != queued + running")
            refs: dict[int, int] = {m: 1 for m in cache}
            for r in [*queue, *([running] if running >= 0 else [])]:
                m = self.req_model[r]
                refs[m] = refs.get(m, 0) + 1
            if refs != self.held[d]:
                problems.append(f"device {d}: held {self.held[d]} != {refs}")
            pinned = [m for m in cache if cache.pinned(m)]
            expect = [self.req_model[running]] if running >= 0 else []
            if pinned != expect:
                problems.append(f"device {d}: pinned {pinned}, running {expect}")
            for m, n_queued in Counter(map(self.req_model.__getitem__, queue)).items():
                if self.queued[m].get(d, 0) != n_queued:
                    problems.append(f"device {d}: queued count of model {m} is wrong")
            if self.failed[d] and (len(cache) or self.load[d]):
                problems.append(f"device {d}: failed but holds work or models")
        listed = sum(sum(qd.values()) for qd in self.queued)
        if listed != sum(len(q) for q in self.queues):
            problems.append(f"{listed} queued requests indexed, not {sum(map(len, self.queues))}")
        if problems:
            raise ServingError("scheduler state broken: " + "; ".join(problems))
