"""Resources: what one call needs. Frozen and validated once, converted by each backend."""

from __future__ import annotations

import math
from dataclasses import dataclass

from .exceptions import ResourceError


@dataclass(frozen=True, slots=True)
class Resources:
    """What one call needs.

    ``cpus``: whole cores, pinned for the call (>= 1). ``gpus``: a whole number of devices, or a
    fraction in (0, 1) to share one device with other fractional calls (as Ray does).
    ``memory_mb``: a reservation counted against the machine's memory (None: no reservation).
    ``timeout_s``: the call is killed and raises ``CallTimeout`` past this (None: no limit).
    """

    cpus: int = 1
    gpus: float = 0
    memory_mb: int | None = None
    timeout_s: float | None = None

    def __post_init__(self) -> None:
        if isinstance(self.cpus, bool) or not isinstance(self.cpus, int):
            raise ResourceError(f"cpus must be a whole number of cores, got {self.cpus!r}")
        if self.cpus < 1:
            raise ResourceError(f"cpus must be >= 1, got {self.cpus}")
        if isinstance(self.gpus, bool) or not isinstance(self.gpus, (int, float)):
            raise ResourceError(f"gpus must be a number, got {self.gpus!r}")
        if not math.isfinite(self.gpus) or self.gpus < 0:
            raise ResourceError(f"gpus must be >= 0, got {self.gpus}")
        if self.gpus > 1 and self.gpus != int(self.gpus):
            raise ResourceError(
                f"gpus={self.gpus}: above 1, GPUs must be whole devices (fractions share one)"
            )
        if self.memory_mb is not None:
            if isinstance(self.memory_mb, bool) or not isinstance(self.memory_mb, int):
                raise ResourceError(f"memory_mb must be an int, got {self.memory_mb!r}")
            if self.memory_mb <= 0:
                raise ResourceError(f"memory_mb must be > 0, got {self.memory_mb}")
        if self.timeout_s is not None:
            if isinstance(self.timeout_s, bool) or not isinstance(self.timeout_s, (int, float)):
                raise ResourceError(f"timeout_s must be a number, got {self.timeout_s!r}")
            if not self.timeout_s > 0:
                raise ResourceError(f"timeout_s must be > 0, got {self.timeout_s}")

    @property
    def whole_gpus(self) -> int:
        """Devices owned outright (0 for a fractional share)."""
        return int(self.gpus) if self.gpus >= 1 else 0

    @property
    def gpu_share(self) -> float:
        """The share of one device for a fractional request, else 0."""
        return float(self.gpus) if 0 < self.gpus < 1 else 0.0

    def replace(self, **changes: object) -> Resources:
        """A copy with some fields changed (validated again)."""
        fields = {
            "cpus": self.cpus,
            "gpus": self.gpus,
            "memory_mb": self.memory_mb,
            "timeout_s": self.timeout_s,
        }
        unknown = set(changes) - set(fields)
        if unknown:
            raise ResourceError(
                f"unknown resource field(s) {sorted(unknown)}; known: {sorted(fields)}"
            )
        fields.update(changes)
        return Resources(**fields)  # type: ignore[arg-type]


DEFAULT_RESOURCES = Resources()
