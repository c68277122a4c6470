"""How many pilot blocks the executor wants: a pure function of what it observed.

The shape of a pilot (:class:`Pilot`: blocks, cores and GPUs per block, walltime, idle time)
and the block strategy, after Parsl's: each tick the backend describes what it sees -- calls
queued in the submitter, and each block with its state, its calls and how long it has been
idle -- as an :class:`Observed`, and :func:`decide` answers with the blocks to launch and the
blocks to release. Nothing here reads a clock, starts a job or touches a socket, so the
policy is tested on synthetic states and the backend applies its decisions at the edge.

The rules:

- **demand** is the calls queued plus the calls on blocks that take calls (pending or
  running, not draining); the blocks wanted are ``ceil(demand * parallelism / cpus)``, within
  ``[min_blocks, max_blocks]`` -- Parsl's ``parallelism``: 1 gives each call a core of its
  own, 0.5 half as many blocks. Any queued call wants at least one block.
- **scale out**: launch the blocks wanted beyond those that take calls. Pending blocks count
  (they are on their way), draining blocks do not: a draining block is being replaced, so
  ``max_blocks`` bounds the blocks that take calls and a draining block may outlive its
  replacement's start by its last calls.
- **stranded calls**: queued calls that no connected block could take before its walltime
  (their ``timeout_s`` is longer than what the blocks have left) want fresh blocks, beyond
  the pending ones, as far as ``max_blocks`` allows.
- **scale in**: with no call queued, a block without calls for ``idle_s`` (a pending one:
  since its launch) is released, pending blocks first, then the longest idle, as long as
  ``min_blocks`` blocks stay.
- **drain**: a draining block with no call left is released at once (it takes nothing more:
  its walltime is too close).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, fields
from typing import Any

from ...exceptions import ConfigurationError

PENDING = "pending"  # launched, not connected yet
RUNNING = "running"  # connected: takes calls
DRAINING = "draining"  # near its walltime or released: takes no call that would run past it


@dataclass(frozen=True)
class Pilot:
    """The shape of a pilot pool on Slurm (``Executor("slurm", pilot=Pilot(...))`` or a dict
    of these fields).

    ``min_blocks``/``max_blocks``: Slurm jobs held (``max_blocks`` bounds those that take
    calls). ``cpus``, ``gpus``, ``memory_mb``: what each block asks of Slurm (one node, one
    task); its warm pool runs that many one-core calls side by side. ``walltime_s``: a block's
    life; it asks Slurm for ``ceil(walltime_s / 60)`` minutes and ends itself at
    ``walltime_s``. ``idle_s``: a block without calls this long is released (down to
    ``min_blocks``). ``drain_s``: calls without ``timeout_s`` stop going to a block this long
    before its walltime; a call with ``timeout_s`` goes while ``timeout_s + margin_s`` fits in
    the time the block has left. ``parallelism``: Parsl's (see the module). ``tick_s``: how
    often the strategy runs (a call that finds no block wakes it at once).
    ``connect_timeout_s``: a block that runs in Slurm this long without connecting back is
    cancelled.
    """

    min_blocks: int = 0
    max_blocks: int = 1
    cpus: int = 1
    gpus: int = 0
    memory_mb: int | None = None
    walltime_s: float = 3600.0
    idle_s: float = 60.0
    drain_s: float = 60.0
    margin_s: float = 2.0
    parallelism: float = 1.0
    tick_s: float = 0.5
    connect_timeout_s: float = 120.0

    def __post_init__(self) -> None:
        ints = {"min_blocks": self.min_blocks, "max_blocks": self.max_blocks, "cpus": self.cpus,
                "gpus": self.gpus}  # fmt: skip
        for name, value in ints.items():
            if isinstance(value, bool) or not isinstance(value, int):
                raise ConfigurationError(f"pilot {name} must be an int, got {value!r}")
        if self.min_blocks < 0 or self.max_blocks < max(1, self.min_blocks):
            raise ConfigurationError(
                f"pilot: need 0 <= min_blocks <= max_blocks and max_blocks >= 1, got "
                f"min_blocks={self.min_blocks}, max_blocks={self.max_blocks}"
            )
        if self.cpus < 1 or self.gpus < 0:
            raise ConfigurationError(f"pilot: need cpus >= 1 and gpus >= 0, got {self.cpus}, "
                                     f"{self.gpus}")  # fmt: skip
        if self.memory_mb is not None and (
            isinstance(self.memory_mb, bool) or not isinstance(self.memory_mb, int)
            or self.memory_mb <= 0
        ):  # fmt: skip
            raise ConfigurationError(f"pilot memory_mb must be an int > 0, got {self.memory_mb!r}")
        for name in ("walltime_s", "tick_s", "connect_timeout_s"):
            if not getattr(self, name) > 0:
                raise ConfigurationError(f"pilot {name} must be > 0, got {getattr(self, name)}")
        for name in ("idle_s", "drain_s", "margin_s"):
            if not getattr(self, name) >= 0:
                raise ConfigurationError(f"pilot {name} must be >= 0, got {getattr(self, name)}")
        if not 0 < self.parallelism <= 1:
            raise ConfigurationError(f"pilot parallelism must be in (0, 1], got "
                                     f"{self.parallelism}")  # fmt: skip
        if self.drain_s >= self.walltime_s:
            raise ConfigurationError(
                f"pilot drain_s={self.drain_s} leaves no time of walltime_s={self.walltime_s} "
                "for calls without timeout_s"
            )

    @property
    def slurm_minutes(self) -> int:
        """The time limit a block asks Slurm for, in Slurm's whole minutes."""
        return max(1, math.ceil(self.walltime_s / 60))


def pilot_from(value: Pilot | dict[str, Any] | bool) -> Pilot:
    """The :class:`Pilot` of a ``pilot=`` option: a Pilot, a dict of its fields, or True."""
    if isinstance(value, Pilot):
        return value
    if value is True:
        return Pilot()
    if isinstance(value, dict):
        known = {f.name for f in fields(Pilot)}
        unknown = sorted(set(value) - known)
        if unknown:
            raise ConfigurationError(f"unknown pilot field(s) {unknown}; known: {sorted(known)}")
        return Pilot(**value)
    raise ConfigurationError(f"pilot must be a Pilot, a dict of its fields or True, got {value!r}")


@dataclass(frozen=True)
class BlockView:
    """One block as the backend sees it now (times on one monotonic clock, seconds)."""

    id: int
    state: str  # PENDING, RUNNING or DRAINING
    calls: int = 0  # calls it holds (running, or queued in the block)
    idle_since: float | None = None  # when it last became empty (pending: its launch); None
    # while it holds calls


@dataclass(frozen=True)
class Observed:
    """What the strategy decides from."""

    now: float
    queued: int  # calls in the submitter waiting for a block
    blocks: tuple[BlockView, ...] = ()
    stranded: int = 0  # of the queued calls, those no connected block has the time left for


@dataclass(frozen=True)
class Decision:
    launch: int  # blocks to start
    release: tuple[int, ...]  # ids of blocks to end
    wanted: int  # blocks wanted that take calls


def decide(policy: Pilot, obs: Observed) -> Decision:
    """The blocks to launch and to release, from ``obs`` alone (see the module's rules)."""
    if not 0 <= obs.stranded <= obs.queued:
        raise ValueError(f"need 0 <= stranded <= queued, got {obs.stranded}, {obs.queued}")
    active = [b for b in obs.blocks if b.state in (PENDING, RUNNING)]
    release = [b.id for b in obs.blocks if b.state == DRAINING and b.calls == 0]
    demand = obs.queued + sum(b.calls for b in active)
    wanted = math.ceil(demand * policy.parallelism / policy.cpus - 1e-9)
    if obs.queued:
        wanted = max(wanted, 1)
    wanted = min(policy.max_blocks, max(policy.min_blocks, wanted))
    launch = max(0, wanted - len(active))
    if obs.stranded:
        fresh = math.ceil(obs.stranded * policy.parallelism / policy.cpus - 1e-9)
        pending = sum(b.state == PENDING for b in active)
        launch = max(launch, min(fresh - pending, policy.max_blocks - len(active)))
    if obs.queued == 0 and launch == 0:
        idle = [b for b in active if b.calls == 0 and b.idle_since is not None
                and obs.now - b.idle_since >= policy.idle_s]  # fmt: skip
        # pending blocks first (nothing of them is warm yet), then the longest idle
        idle.sort(key=lambda b: (b.state != PENDING, b.idle_since))
        spare = len(active) - policy.min_blocks
        release += [b.id for b in idle[: max(0, spare)]]
    return Decision(launch, tuple(release), wanted)


__all__ = ["DRAINING", "PENDING", "RUNNING", "BlockView", "Decision", "Observed", "Pilot",
           "decide", "pilot_from"]  # fmt: skip
