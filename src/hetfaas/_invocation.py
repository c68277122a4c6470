"""Call records: the state of a call and where its time went.

Every stamp is ``time.perf_counter_ns()``, which on Linux reads CLOCK_MONOTONIC, one clock
shared by the caller and its workers, so stamps taken on both sides of the process boundary
can be subtracted.
"""

from __future__ import annotations

import enum
from dataclasses import asdict, dataclass, field


class State(str, enum.Enum):
    """Life cycle of a call."""

    PENDING = "PENDING"  # accepted, waiting for resources (or inside an open batch)
    RUNNING = "RUNNING"  # handed to a worker
    COMPLETED = "COMPLETED"
    FAILED = "FAILED"
    CANCELLED = "CANCELLED"

    def __str__(self) -> str:
        return self.value


@dataclass(slots=True)
class Timings:
    """Where one call's time went, in microseconds; the parts sum to ``total_us``.

    - ``queue_us``: waiting for free cores/GPUs (in the caller, or behind earlier calls of the
      same batch in the worker);
    - ``cold_start_us``: waiting for a worker to be spawned and to import, and loading the
      function in a worker the first time;
    - ``transfer_in_us``: pickling the arguments (copying large buffers into shared memory),
      the hop to the worker and unpickling there;
    - ``compute_us``: the function itself;
    - ``transfer_out_us``: pickling the result, the hop back, unpickling, delivering it.

    The raw stamps (ns, shared monotonic clock) and where the call ran are kept too, for
    timelines.
    """

    queue_us: float = 0.0
    cold_start_us: float = 0.0
    transfer_in_us: float = 0.0
    compute_us: float = 0.0
    transfer_out_us: float = 0.0
    total_us: float = 0.0
    submitted_ns: int = 0
    started_ns: int = 0
    finished_ns: int = 0
    completed_ns: int = 0
    worker: int = -1
    pid: int = 0
    cpus: tuple[int, ...] = field(default_factory=tuple)
    gpus: tuple[int, ...] = field(default_factory=tuple)
    backend: str = "local"

    @property
    def overhead_us(self) -> float:
        """Everything but the function itself."""
        return self.total_us - self.compute_us

    def as_dict(self) -> dict[str, object]:
        d = asdict(self)
        d["cpus"] = list(self.cpus)
        d["gpus"] = list(self.gpus)
        return d


PHASES = ("queue_us", "cold_start_us", "transfer_in_us", "compute_us", "transfer_out_us")
