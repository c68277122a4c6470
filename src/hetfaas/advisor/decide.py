"""The advisor's decisions: pure functions from measurements to choices and break-even sizes.

Nothing here starts a process, reads a clock or touches a device, so every rule is tested on
synthetic measurements whose answer is known. :func:`decide` takes the measured cells (one
per device option and input size) and returns, per size, the fastest and the cheapest
serverless option, and the sizes at which one option starts to beat another.

A break-even size is *bracketed*: it lies between two measured sizes, the last one where the
verdict was one way and the first where it was the other. Nothing between them was measured.
Each bracket also carries a log-log interpolation of the time ratio, labelled as such (an
estimate, not a measurement), for whoever wants one number.
"""

from __future__ import annotations

import itertools
import math
import statistics
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

MEASURED = "measured"
NOT_MEASURED = "not measured"
FAILED = "failed"


@dataclass(frozen=True, slots=True)
class Option:
    """One way to run the function.

    ``cpus`` and ``gpus`` are what the option holds for its whole wall time (a split over N
    calls holds N cores); ``calls`` is how many calls it makes; ``serverless`` is False for
    the bare-metal references, which are shown beside the choices but never chosen.
    """

    key: str
    label: str
    cpus: int
    gpus: int = 0
    calls: int = 1
    serverless: bool = True


@dataclass(frozen=True, slots=True)
class Trial:
    """One timed run of an option at one size.

    ``wall_s``: from the first submit to the combined result in the caller's hands (the
    caller's clock). ``compute_s``: the longest run of the function among the option's calls,
    as the runtime stamped it (``Future.timings.compute_us``); ``compute_total_s``: the sum
    over its calls. ``cpus``/``gpus``: what was held for ``wall_s``.
    """

    wall_s: float
    compute_s: float
    cpus: int
    gpus: int = 0
    calls: int = 1
    compute_total_s: float | None = None

    @property
    def overhead_s(self) -> float:
        """What the serverless layer (and, for a split, splitting and combining) added to the
        function's own time on the critical path: wall minus the longest compute."""
        return self.wall_s - self.compute_s

    @property
    def core_s(self) -> float:
        """Core-seconds held: the cores the option holds times its wall time."""
        return self.wall_s * self.cpus

    @property
    def gpu_s(self) -> float:
        """GPU-seconds held: the GPUs the option holds times its wall time."""
        return self.wall_s * self.gpus


@dataclass(frozen=True, slots=True)
class Spread:
    """The median of some repeats, with the lowest and highest."""

    median: float
    low: float
    high: float
    n: int

    @classmethod
    def of(cls, values: Iterable[float]) -> Spread:
        vals = sorted(float(v) for v in values)
        if not vals:
            raise ValueError("a spread needs at least one value")
        return cls(statistics.median(vals), vals[0], vals[-1], len(vals))

    def overlaps(self, other: Spread) -> bool:
        """Whether the two ranges [low, high] share a point (the medians may be noise)."""
        return self.low <= other.high and other.low <= self.high


@dataclass(frozen=True, slots=True)
class Prices:
    """What a core-hour and a GPU-hour cost (any currency; the defaults are placeholders to
    replace with your own prices, not a quote)."""

    core_hour: float = 0.05
    gpu_hour: float = 2.50

    def __post_init__(self) -> None:
        for name in ("core_hour", "gpu_hour"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                raise ValueError(f"price {name} must be a number, got {value!r}")
            if not math.isfinite(value) or value < 0:
                raise ValueError(f"price {name} must be >= 0, got {value}")

    def cost(self, core_s: float, gpu_s: float) -> float:
        return core_s * self.core_hour / 3600 + gpu_s * self.gpu_hour / 3600


@dataclass(frozen=True, slots=True)
class Cell:
    """What was measured for one option at one size.

    ``status`` is :data:`MEASURED`, :data:`NOT_MEASURED` (with ``note`` saying why: no GPU,
    a function that does not split, ...) or :data:`FAILED` (``note``: the error).
    ``verified``: whether the result matched the in-process reference (None: not compared).
    """

    option: str
    size: int
    trials: tuple[Trial, ...] = ()
    status: str = MEASURED
    note: str = ""
    verified: bool | None = None

    @property
    def measured(self) -> bool:
        return self.status == MEASURED and bool(self.trials)

    @property
    def wall(self) -> Spread:
        return Spread.of(t.wall_s for t in self.trials)

    @property
    def compute(self) -> Spread:
        return Spread.of(t.compute_s for t in self.trials)

    @property
    def overhead(self) -> Spread:
        return Spread.of(t.overhead_s for t in self.trials)

    @property
    def core_s(self) -> Spread:
        return Spread.of(t.core_s for t in self.trials)

    @property
    def gpu_s(self) -> Spread:
        return Spread.of(t.gpu_s for t in self.trials)

    def cost(self, prices: Prices) -> float:
        """The price of the median run: median core-seconds and GPU-seconds at ``prices``."""
        return prices.cost(self.core_s.median, self.gpu_s.median)


# --------------------------------------------------------------------------------------------
# verdicts over sizes


@dataclass(frozen=True, slots=True)
class Crossing:
    """The verdict changed between two consecutive measured sizes ``lower`` < ``upper``:
    ``before`` won at ``lower``, ``after`` at ``upper``. ``overlap``: at one of the two sizes
    the spreads of the two sides overlapped, so the bracket may be noise. ``interpolated``:
    where a log-log line through the two time ratios crosses 1 (an estimate, not measured;
    None when it cannot be drawn)."""

    lower: int
    upper: int
    before: str
    after: str
    overlap: bool = False
    interpolated: float | None = None


ALWAYS = "always"
NEVER = "never"
ABOVE = "above"
BELOW = "below"
MIXED = "mixed"


@dataclass(frozen=True, slots=True)
class BreakEven:
    """Where ``subject`` starts (or stops) beating ``versus`` on ``metric`` ("wall" time).

    ``status``: :data:`ABOVE` (subject wins above one bracketed size), :data:`BELOW` (wins
    only below it), :data:`ALWAYS` / :data:`NEVER` (at every / no measured size: the
    break-even, if any, lies outside the sweep), :data:`MIXED` (more than one change), or
    :data:`NOT_MEASURED` (no size where both were measured). ``sizes``: where both were.
    """

    subject: str
    versus: str
    metric: str
    status: str
    crossings: tuple[Crossing, ...] = ()
    sizes: tuple[int, ...] = ()

    def text(self) -> str:
        """One line saying what was measured, bracketed between measured sizes."""
        who = f"{self.subject} beats {self.versus}"
        if self.status == NOT_MEASURED:
            return f"{who}: not measured (no size where both ran)"
        lo, hi = (self.sizes[0], self.sizes[-1]) if self.sizes else (0, 0)
        if self.status == ALWAYS:
            return (
                f"{who} at every measured size (n={lo}..{hi}): "
                f"any break-even lies below n={lo}, not measured"
            )
        if self.status == NEVER:
            return f"{who} at no measured size (n={lo}..{hi}): not reached up to n={hi}"
        parts = []
        for c in self.crossings:
            side = "from" if c.after == self.subject else "until"
            part = f"{side} between n={c.lower} and n={c.upper} (bracketed)"
            if c.interpolated is not None:
                part += f", ~n={c.interpolated:.4g} if interpolated (log-log, not measured)"
            if c.overlap:
                part += "; the spreads overlap there"
            parts.append(part)
        return f"{who} " + "; ".join(parts)


def _interpolate(s0: int, r0: float, s1: int, r1: float) -> float | None:
    """Size where ``log(ratio)`` linear in ``log(size)`` crosses 0, between s0 and s1."""
    if min(s0, s1, r0, r1) <= 0:
        return None
    l0, l1 = math.log(r0), math.log(r1)
    if l0 == l1:
        return None
    x0, x1 = math.log(s0), math.log(s1)
    return math.exp(x0 + (0.0 - l0) * (x1 - x0) / (l1 - l0))


def compare(
    subject: str,
    versus: str,
    a: Mapping[int, Spread],
    b: Mapping[int, Spread],
    metric: str = "wall",
) -> BreakEven:
    """Where ``a`` (the subject's spreads by size) beats ``b`` by median, and where that
    changes. A tie counts as ``versus`` keeping the win. Only sizes present in both count."""
    sizes = tuple(sorted(set(a) & set(b)))
    if not sizes:
        return BreakEven(subject, versus, metric, NOT_MEASURED)
    wins = [a[s].median < b[s].median for s in sizes]
    if all(wins):
        return BreakEven(subject, versus, metric, ALWAYS, sizes=sizes)
    if not any(wins):
        return BreakEven(subject, versus, metric, NEVER, sizes=sizes)
    crossings = []
    for i in range(len(sizes) - 1):
        if wins[i] == wins[i + 1]:
            continue
        s0, s1 = sizes[i], sizes[i + 1]
        overlap = a[s0].overlaps(b[s0]) or a[s1].overlaps(b[s1])
        est = _interpolate(
            s0,
            a[s0].median / b[s0].median if b[s0].median > 0 else 0.0,
            s1,
            a[s1].median / b[s1].median if b[s1].median > 0 else 0.0,
        )
        before, after = (subject, versus) if wins[i] else (versus, subject)
        crossings.append(Crossing(s0, s1, before, after, overlap, est))
    status = MIXED if len(crossings) > 1 else ABOVE if crossings[0].after == subject else BELOW
    return BreakEven(subject, versus, metric, status, tuple(crossings), sizes)


# --------------------------------------------------------------------------------------------
# the choice per size


@dataclass(frozen=True, slots=True)
class SizeChoice:
    """The serverless options chosen at one size.

    ``fastest``: the smallest median wall time; ``close``: its spread overlaps the
    runner-up's. ``cheapest``: the smallest cost at the prices (ties go to the faster one).
    ``bare``: the bare-metal reference's key and whether ``fastest`` beat it.
    """

    size: int
    fastest: str | None
    fastest_wall_s: float | None
    runner_up: str | None
    close: bool
    cheapest: str | None
    cheapest_cost: float | None
    bare: str | None = None
    beats_bare: bool | None = None


@dataclass(frozen=True, slots=True)
class Decision:
    """Everything :func:`decide` concludes from one set of measurements."""

    choices: tuple[SizeChoice, ...]
    versus_baseline: tuple[BreakEven, ...]
    fastest_changes: tuple[Crossing, ...]
    cheapest_changes: tuple[Crossing, ...]
    versus_bare: BreakEven | None = None
    baseline: str | None = None
    bare: str | None = None


def _rank(option: Option, order: int) -> tuple[int, int, int]:
    # among equals, prefer the option that holds less, then the one listed first
    return (option.gpus, option.cpus, order)


def choose(
    options: Sequence[Option], cells: Mapping[str, Cell], prices: Prices
) -> tuple[str | None, str | None, bool, str | None]:
    """(fastest, runner-up, close, cheapest) among the measured serverless ``options`` at one
    size; ``cells`` maps an option key to its cell at that size."""
    ranked = []
    for order, opt in enumerate(options):
        cell = cells.get(opt.key)
        if opt.serverless and cell is not None and cell.measured:
            ranked.append((opt, order, cell))
    if not ranked:
        return None, None, False, None
    by_wall = sorted(ranked, key=lambda r: (r[2].wall.median, _rank(r[0], r[1])))
    fastest = by_wall[0]
    runner = by_wall[1] if len(by_wall) > 1 else None
    close = runner is not None and fastest[2].wall.overlaps(runner[2].wall)
    by_cost = sorted(ranked, key=lambda r: (r[2].cost(prices), r[2].wall.median, _rank(r[0], r[1])))
    return (
        fastest[0].key,
        runner[0].key if runner is not None else None,
        close,
        by_cost[0][0].key,
    )


def _changes(sizes: Sequence[int], picks: Sequence[str | None]) -> tuple[Crossing, ...]:
    out = []
    known = [(s, p) for s, p in zip(sizes, picks, strict=True) if p is not None]
    for (s0, p0), (s1, p1) in itertools.pairwise(known):
        if p0 != p1:
            out.append(Crossing(s0, s1, p0, p1))
    return tuple(out)


def decide(
    options: Sequence[Option],
    cells: Iterable[Cell],
    prices: Prices | None = None,
    *,
    baseline: str | None = None,
    bare: str | None = None,
) -> Decision:
    """Choices and break-even sizes from measured cells.

    ``baseline``: the serverless option every other one is compared with (default: the
    first serverless option, one call on one CPU). ``bare``: the bare-metal reference the
    fastest serverless choice is compared with (default: the first non-serverless option).
    Cells that were not measured, or failed, take no part.
    """
    prices = prices or Prices()
    known = {o.key: o for o in options}
    by_size: dict[int, dict[str, Cell]] = {}
    for cell in cells:
        if cell.option not in known:
            raise ValueError(f"cell for unknown option {cell.option!r}; known: {sorted(known)}")
        by_size.setdefault(cell.size, {})[cell.option] = cell
    sizes = sorted(by_size)
    serverless = [o for o in options if o.serverless]
    if baseline is None and serverless:
        baseline = serverless[0].key
    if bare is None:
        bare = next((o.key for o in options if not o.serverless), None)

    choices = []
    fastest_spreads: dict[int, Spread] = {}
    for size in sizes:
        row = by_size[size]
        fastest, runner, close, cheapest = choose(options, row, prices)
        wall = row[fastest].wall if fastest is not None else None
        cheap_cost = row[cheapest].cost(prices) if cheapest is not None else None
        bare_cell = row.get(bare) if bare is not None else None
        beats = None
        if wall is not None and bare_cell is not None and bare_cell.measured:
            beats = wall.median < bare_cell.wall.median
        if wall is not None:
            fastest_spreads[size] = wall
        choices.append(
            SizeChoice(
                size,
                fastest,
                wall.median if wall is not None else None,
                runner,
                close,
                cheapest,
                cheap_cost,
                bare if bare_cell is not None and bare_cell.measured else None,
                beats,
            )
        )

    def spreads(key: str) -> dict[int, Spread]:
        return {s: row[key].wall for s, row in by_size.items() if key in row and row[key].measured}

    versus = []
    if baseline is not None:
        base = spreads(baseline)
        for opt in serverless:
            if opt.key != baseline:
                versus.append(compare(opt.key, baseline, spreads(opt.key), base))
    versus_bare = None
    if bare is not None:
        versus_bare = compare("fastest serverless", bare, fastest_spreads, spreads(bare))
    return Decision(
        choices=tuple(choices),
        versus_baseline=tuple(versus),
        fastest_changes=_changes(sizes, [c.fastest for c in choices]),
        cheapest_changes=_changes(sizes, [c.cheapest for c in choices]),
        versus_bare=versus_bare,
        baseline=baseline,
        bare=bare,
    )


__all__ = [
    "ABOVE",
    "ALWAYS",
    "BELOW",
    "FAILED",
    "MEASURED",
    "MIXED",
    "NEVER",
    "NOT_MEASURED",
    "BreakEven",
    "Cell",
    "Crossing",
    "Decision",
    "Option",
    "Prices",
    "SizeChoice",
    "Spread",
    "Trial",
    "choose",
    "compare",
    "decide",
]
