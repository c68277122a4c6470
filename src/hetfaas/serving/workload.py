"""Request traces: which model each request wants and when it arrives; seeded.

Popularity over a working set of ``n`` models is ``"zipf"`` (the model of rank ``k`` is asked
for with weight ``1 / k**zipf_s``; which model gets which rank is drawn from the seed, so the
hot ones are not always the first family) or ``"uniform"``. Arrivals are ``"poisson"``
(exponential gaps at ``rate`` per second) or ``"bursty"`` (gamma gaps of the same mean and a
squared coefficient of variation ``burstiness``: long lulls and dense bursts).
"""

from __future__ import annotations

from dataclasses import dataclass

from ..exceptions import ConfigurationError

POPULARITIES = ("zipf", "uniform")
ARRIVALS = ("poisson", "bursty")


@dataclass(frozen=True)
class Trace:
    arrivals: list[float]  # seconds, non-decreasing
    models: list[int]  # index into the catalog
    working_set: int

    def __len__(self) -> int:
        return len(self.models)


def make_trace(
    n_requests: int,
    working_set: int,
    rate: float,
    popularity: str = "zipf",
    arrival: str = "poisson",
    seed: int = 0,
    zipf_s: float = 1.0,
    burstiness: float = 4.0,
) -> Trace:
    import numpy as np

    if not isinstance(n_requests, int) or n_requests < 1:
        raise ConfigurationError(f"n_requests must be an int >= 1, not {n_requests!r}")
    if not isinstance(working_set, int) or working_set < 1:
        raise ConfigurationError(f"working_set must be an int >= 1, not {working_set!r}")
    if not rate > 0:
        raise ConfigurationError(f"rate must be > 0 requests per second, not {rate!r}")
    if popularity not in POPULARITIES:
        raise ConfigurationError(
            f"unknown popularity {popularity!r}; known: {', '.join(POPULARITIES)}"
        )
    if arrival not in ARRIVALS:
        raise ConfigurationError(f"unknown arrival {arrival!r}; known: {', '.join(ARRIVALS)}")
    rng = np.random.default_rng(seed)
    if popularity == "zipf":
        weights = 1.0 / np.arange(1, working_set + 1) ** zipf_s
        weights = weights[rng.permutation(working_set)]
        weights /= weights.sum()
        models = rng.choice(working_set, size=n_requests, p=weights)
    else:
        models = rng.integers(0, working_set, size=n_requests)
    if arrival == "poisson":
        gaps = rng.exponential(1.0 / rate, size=n_requests)
    else:
        if not burstiness > 0:
            raise ConfigurationError(f"burstiness must be > 0, not {burstiness!r}")
        shape = 1.0 / burstiness
        gaps = rng.gamma(shape, 1.0 / (rate * shape), size=n_requests)
    return Trace(np.cumsum(gaps).tolist(), models.tolist(), working_set)
