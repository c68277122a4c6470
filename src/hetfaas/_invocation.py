"""Call records: the state of a call and where its time went.

Every stamp is ``time.perf_counter_ns()``, which on Linux reads CLOCK_MONOTONIC, one clock
shared by the caller and its workers, so stamps taken on both sides of the process boundary
can be subtracted.
"""

from __future__ import annotations

import enum
from dataclasses import asdict, dataclass, field
from typing import NamedTuple


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
    - ``transfer_out_us``: pickling the result, the hop back, unpickling, delivering it;
    - ``retry_us``: the failed attempts and the backoff between them, for a call retried
      (see :mod:`hetfaas.retry`); ``attempts`` counts the runs, this one included. The other
      phases are the last attempt's.

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
    retry_us: float = 0.0
    attempts: int = 1

    @property
    def overhead_us(self) -> float:
        """Everything but the function itself."""
        return self.total_us - self.compute_us

    def as_dict(self) -> dict[str, object]:
        d = asdict(self)
        d["cpus"] = list(self.cpus)
        d["gpus"] = list(self.gpus)
        return d


class CallUsage(NamedTuple):
    """What a call used, as a backend measured it (raw; ``Future.usage`` reads it as a
    :class:`hetfaas.monitor.Usage` with efficiencies and advice)."""

    wall_s: float  # the function's run time
    cpu_s: float  # CPU seconds of the process that ran it, over that time (every thread)
    cpus: int  # cores requested
    peak_rss_mb: float  # the running process's peak RSS at the call's end (its high-water mark)
    memory_mb: float | None = None  # memory requested
    gpus: int = 0
    gpu_util_percent: float | None = None  # mean over the call (NVML, per process)
    gpu_peak_mem_mb: float | None = None


class Stamps(NamedTuple):
    """What a backend records of one call, in nanoseconds: the phases (which sum to
    ``total_ns``), the stamps and where it ran. Cheap to make on the hot path;
    ``Future.timings`` turns it into :class:`Timings` (µs) when first read."""

    queue_ns: int
    cold_start_ns: int
    transfer_in_ns: int
    compute_ns: int
    transfer_out_ns: int
    total_ns: int
    submitted_ns: int = 0
    started_ns: int = 0
    finished_ns: int = 0
    completed_ns: int = 0
    worker: int = -1
    pid: int = 0
    cpus: tuple[int, ...] = ()
    gpus: tuple[int, ...] = ()
    backend: str = "local"
    retry_ns: int = 0
    attempts: int = 1

    def to_timings(self) -> Timings:
        return Timings(
            self.queue_ns / 1e3, self.cold_start_ns / 1e3, self.transfer_in_ns / 1e3,
            self.compute_ns / 1e3, self.transfer_out_ns / 1e3, self.total_ns / 1e3,
            *self[6:15], self.retry_ns / 1e3, self.attempts,
        )  # fmt: skip


PHASES = (
    "queue_us", "cold_start_us", "transfer_in_us", "compute_us", "transfer_out_us", "retry_us",
)  # fmt: skip
