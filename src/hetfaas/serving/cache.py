"""ModelCache: the models resident in one device's memory, accounted in bytes.

Pure bookkeeping (no torch, no I/O): the simulator and the real runtime keep one per device and
ask it the same questions, so a hit in one is a hit in the other. Two rules are never broken:
the bytes held never exceed the capacity, and a pinned model (one a request is using) is never
chosen as a victim. ``check_invariants()`` verifies both and that the byte count is exact.

Eviction order is chosen by name:

- ``"lru"``: least recently used first (the paper's Cache Manager).
- ``"gdsf"``: Greedy-Dual-Size-Frequency. Each entry's priority is ``clock + hits * cost /
  size``; the lowest goes first and the clock rises to the victim's priority, so entries age.
  A model that is often used and slow to reload stays; a large one used once goes. Under a
  skewed (Zipf) popularity this keeps the hot models that LRU lets a burst of cold ones push out.
"""

from __future__ import annotations

import itertools
from collections.abc import Hashable, Iterator

from ..exceptions import ConfigurationError, ModelTooLarge, ServingError

EVICTIONS = ("lru", "gdsf")
# one clock for every cache in the process, so recencies compare across devices
_TICKS = itertools.count(1)


class ModelCache:
    """Models held in one device's memory: sizes in bytes, pins, and an eviction order."""

    __slots__ = (
        "_clock",
        "_entries",
        "_hits",
        "_last",
        "_pins",
        "_prio",
        "capacity",
        "eviction",
        "used",
    )

    def __init__(self, capacity: int, eviction: str = "lru") -> None:
        if not isinstance(capacity, int) or capacity <= 0:
            raise ConfigurationError(
                f"cache capacity must be a positive int of bytes, not {capacity!r}"
            )
        if eviction not in EVICTIONS:
            raise ConfigurationError(
                f"unknown eviction {eviction!r}; known evictions: {', '.join(EVICTIONS)}"
            )
        self.capacity = capacity
        self.eviction = eviction
        self.used = 0
        # insertion order is recency order: a touch moves an entry to the end
        self._entries: dict[Hashable, int] = {}
        self._pins: dict[Hashable, int] = {}
        self._hits: dict[Hashable, int] = {}
        self._prio: dict[Hashable, float] = {}
        self._last: dict[Hashable, int] = {}
        self._clock = 0.0

    # -- queries ---------------------------------------------------------------------------
    def __contains__(self, model: Hashable) -> bool:
        return model in self._entries

    def __len__(self) -> int:
        return len(self._entries)

    def __iter__(self) -> Iterator[Hashable]:
        return iter(self._entries)

    @property
    def free(self) -> int:
        return self.capacity - self.used

    def size_of(self, model: Hashable) -> int:
        return self._entries[model]

    def last_use(self, model: Hashable) -> int:
        """When ``model`` was last used, on a clock shared by all caches (larger is later)."""
        return self._last[model]

    def pinned(self, model: Hashable) -> bool:
        return model in self._pins

    def victims(self, size: int) -> list[Hashable]:
        """The models to evict, in order, so that ``size`` more bytes fit.

        Raises ModelTooLarge when ``size`` exceeds the capacity, and ServingError when only
        pinned models stand in the way (the caller waits for a request to finish).
        """
        if size > self.capacity:
            raise ModelTooLarge(
                f"a model of {size} bytes does not fit a device of {self.capacity} bytes"
            )
        need = size - self.free
        if need <= 0:
            return []
        order = self._entries if self.eviction == "lru" else self._by_priority()
        out: list[Hashable] = []
        for model in order:
            if model in self._pins:
                continue
            out.append(model)
            need -= self._entries[model]
            if need <= 0:
                return out
        raise ServingError(
            f"{size} bytes cannot be freed now: the models in use hold "
            f"{sum(self._entries[m] for m in self._pins)} of {self.capacity} bytes"
        )

    def _by_priority(self) -> list[Hashable]:
        prio = self._prio
        return sorted(self._entries, key=prio.__getitem__)

    # -- updates ---------------------------------------------------------------------------
    def touch(self, model: Hashable, cost: float = 1.0) -> None:
        """Record a use of a resident model (a hit)."""
        entries = self._entries
        entries[model] = entries.pop(model)
        self._last[model] = next(_TICKS)
        if self.eviction == "gdsf":
            hits = self._hits[model] + 1
            self._hits[model] = hits
            self._prio[model] = self._clock + hits * cost / entries[model]

    def admit(self, model: Hashable, size: int, cost: float = 1.0) -> list[Hashable]:
        """Evict what must go and make ``model`` resident; returns the evicted models.

        ``cost`` is what a reload would cost (seconds); only ``"gdsf"`` uses it.
        """
        if model in self._entries:
            raise ServingError(f"model {model!r} is already resident")
        if not isinstance(size, int) or size <= 0:
            raise ConfigurationError(f"model size must be a positive int of bytes, not {size!r}")
        evicted = self.victims(size)
        for victim in evicted:
            self.evict(victim)
        self._entries[model] = size
        self._last[model] = next(_TICKS)
        self.used += size
        if self.eviction == "gdsf":
            self._hits[model] = 1
            self._prio[model] = self._clock + cost / size
        return evicted

    def evict(self, model: Hashable) -> None:
        if model in self._pins:
            raise ServingError(f"model {model!r} is in use and cannot be evicted")
        self.used -= self._entries.pop(model)
        del self._last[model]
        if self.eviction == "gdsf":
            self._clock = max(self._clock, self._prio.pop(model))
            del self._hits[model]

    def pin(self, model: Hashable) -> None:
        if model not in self._entries:
            raise ServingError(f"model {model!r} is not resident and cannot be pinned")
        self._pins[model] = self._pins.get(model, 0) + 1

    def unpin(self, model: Hashable) -> None:
        count = self._pins.get(model, 0)
        if count <= 0:
            raise ServingError(f"model {model!r} is not pinned")
        if count == 1:
            del self._pins[model]
        else:
            self._pins[model] = count - 1

    def clear(self) -> None:
        """Forget everything (the device failed and its memory is gone)."""
        self._entries.clear()
        self._pins.clear()
        self._hits.clear()
        self._prio.clear()
        self._last.clear()
        self.used = 0

    def check_invariants(self) -> None:
        """Raise ServingError unless the accounting is exact and within the two rules."""
        total = sum(self._entries.values())
        problems = []
        if total != self.used:
            problems.append(f"used {self.used} but entries sum to {total}")
        if self.used > self.capacity:
            problems.append(f"used {self.used} over capacity {self.capacity}")
        if any(size <= 0 for size in self._entries.values()):
            problems.append("an entry of non-positive size")
        stray = [m for m in self._pins if m not in self._entries]
        if stray:
            problems.append(f"pinned but not resident: {stray}")
        if any(count <= 0 for count in self._pins.values()):
            problems.append("a pin count <= 0")
        if self.eviction == "gdsf" and set(self._prio) != set(self._entries):
            problems.append("priorities out of step with entries")
        if problems:
            raise ServingError("cache accounting broken: " + "; ".join(problems))

    def __repr__(self) -> str:
        return (
            f"ModelCache({self.used}/{self.capacity} bytes, {len(self._entries)} models, "
            f"{self.eviction})"
        )
