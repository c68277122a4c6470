"""How many workers the local pool wants: a pure function of what it observed, Knative style.

The pool records its *concurrency* (calls running plus calls queued) over time. Every
evaluation turns the recent history into a worker count:

- **stable window** (default 60 s): the mean concurrency over it, divided by the target
  concurrency per worker (default 1: a worker runs one call at a time) times the target
  utilisation (default 0.7, Knative's: a pool busy 100% of the time queues every call that
  arrives, so it keeps headroom), rounded up;
- **panic window** (default 6 s, a tenth of the stable one): the same over a short window.
  When it asks for at least ``panic_threshold`` (default 2x) the workers ready now, the policy
  *panics*: it scales up to the panic figure at once and does not scale down until a whole
  stable window has passed without that condition -- so a burst is met within seconds and a
  short lull inside a burst releases nothing;
- scale down is bounded to ``max_scale_down`` (default 2x) per evaluation, scale up is not
  (bursts are what a serverless pool is for);
- zero workers only after ``scale_to_zero_s`` (default 30 s) without any concurrency;
- the result stays within ``[min_workers, max_workers]``.

Nothing here reads a clock or touches a process: :meth:`Autoscaler.observe` and
:meth:`Autoscaler.decide` take the time as an argument, so the policy is tested on synthetic
queues and the pool applies its decisions at the edge.
"""

from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass
from typing import Any

from ...exceptions import ConfigurationError


@dataclass(frozen=True)
class ScalePolicy:
    min_workers: int = 0
    max_workers: int = 1
    target: float = 1.0  # concurrency per worker
    utilization: float = 0.7  # of the target, aimed at (headroom for the next arrivals)
    stable_window_s: float = 60.0
    panic_window_s: float = 6.0
    panic_threshold: float = 2.0
    max_scale_down: float = 2.0  # at most this factor fewer workers per evaluation
    scale_to_zero_s: float = 30.0
    tick_s: float = 1.0  # how often the pool observes its concurrency and decides

    def __post_init__(self) -> None:
        if self.min_workers < 0 or self.max_workers < max(1, self.min_workers):
            raise ConfigurationError(
                f"need 0 <= min_workers <= max_workers and max_workers >= 1, got "
                f"min_workers={self.min_workers}, max_workers={self.max_workers}"
            )
        if self.target <= 0:
            raise ConfigurationError(f"target concurrency must be > 0, got {self.target}")
        if not 0 < self.utilization <= 1:
            raise ConfigurationError(f"utilization must be in (0, 1], got {self.utilization}")
        if not 0 < self.panic_window_s <= self.stable_window_s:
            raise ConfigurationError(
                f"need 0 < panic_window_s <= stable_window_s, got {self.panic_window_s} and "
                f"{self.stable_window_s}"
            )
        if self.tick_s <= 0 or self.tick_s > self.panic_window_s:
            raise ConfigurationError(f"need 0 < tick_s <= panic_window_s, got tick_s={self.tick_s}")
        if self.panic_threshold <= 1 or self.max_scale_down < 1 or self.scale_to_zero_s < 0:
            raise ConfigurationError(
                "panic_threshold must be > 1, max_scale_down >= 1 and scale_to_zero_s >= 0"
            )


@dataclass(frozen=True)
class Decision:
    workers: int
    panic: bool
    stable_wants: int
    panic_wants: int


class Autoscaler:
    """The policy's memory: observations of one stable window, and the panic state."""

    def __init__(self, policy: ScalePolicy) -> None:
        self.policy = policy
        self._obs: deque[tuple[float, float]] = deque()
        self._panic_since: float | None = None  # when the panic condition last held
        self._last_busy: float | None = None
        self._desired = policy.min_workers

    def observe(self, t: float, concurrency: float) -> None:
        """Record the pool's concurrency (running + queued calls) at time ``t``."""
        if concurrency < 0:
            raise ValueError(f"concurrency must be >= 0, got {concurrency}")
        if self._obs and t < self._obs[-1][0]:
            raise ValueError(f"observations must come in time order ({t} < {self._obs[-1][0]})")
        self._obs.append((t, float(concurrency)))
        if concurrency > 0:
            self._last_busy = t
        horizon = t - self.policy.stable_window_s
        while self._obs and self._obs[0][0] < horizon:
            self._obs.popleft()

    def _mean(self, t: float, window: float) -> float:
        values = [c for (ts, c) in self._obs if ts >= t - window]
        return sum(values) / len(values) if values else 0.0

    def decide(self, t: float, ready: int) -> Decision:
        """The worker count wanted at ``t``, with ``ready`` workers up now."""
        p = self.policy
        per_worker = p.target * p.utilization
        stable = math.ceil(self._mean(t, p.stable_window_s) / per_worker - 1e-9)
        panic = math.ceil(self._mean(t, p.panic_window_s) / per_worker - 1e-9)
        if panic >= p.panic_threshold * max(1, ready) and panic > ready:
            self._panic_since = t
        panicking = self._panic_since is not None and t - self._panic_since < p.stable_window_s
        if not panicking:
            self._panic_since = None
        if panicking:
            want = max(self._desired, panic, stable)  # never down while panicking
        else:
            want = stable
            floor = math.floor(self._desired / p.max_scale_down)
            want = max(want, floor)  # a bounded step down
        if want == 0:
            idle_for = math.inf if self._last_busy is None else t - self._last_busy
            if idle_for < p.scale_to_zero_s:
                want = 1  # busy a moment ago: keep one worker warm until the grace ends
        want = min(p.max_workers, max(p.min_workers, want))
        self._desired = want
        return Decision(want, panicking, stable, panic)


def policy_from(
    min_workers: int | None,
    max_workers: int | None,
    autoscale: ScalePolicy | dict[str, Any] | None,
    default_max: int,
) -> ScalePolicy | None:
    """The pool's policy from its options, or None (no autoscaling) when neither
    ``min_workers`` nor ``autoscale`` is given. ``max_workers`` defaults to ``default_max``."""
    if min_workers is None and autoscale is None:
        return None
    if isinstance(autoscale, ScalePolicy):
        fields = dict(autoscale.__dict__)
    elif autoscale is None or isinstance(autoscale, dict):
        fields = dict(autoscale or {})
    else:
        raise ConfigurationError(
            f"autoscale must be a ScalePolicy or a dict of its fields, got {autoscale!r}"
        )
    for name, given in (("min_workers", min_workers), ("max_workers", max_workers)):
        if given is not None and name in fields and fields[name] != given:
            raise ConfigurationError(
                f"{name} is given twice, {given} to the pool and {fields[name]} in autoscale"
            )
        if given is not None:
            fields[name] = given
    fields.setdefault("max_workers", default_max)
    fields.setdefault("min_workers", 0)
    try:
        return ScalePolicy(**fields)
    except TypeError as exc:
        raise ConfigurationError(f"autoscale: {exc}") from None


__all__ = ["Autoscaler", "Decision", "ScalePolicy", "policy_from"]
