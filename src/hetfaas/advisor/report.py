"""The advisor's answer: :class:`Advice`, its table (``str(advice)``) and its JSON."""

from __future__ import annotations

import json
import math
import os
import textwrap
from dataclasses import dataclass, field
from typing import Any

from .decide import (
    ALWAYS,
    MEASURED,
    NEVER,
    BreakEven,
    Cell,
    Crossing,
    Decision,
    Option,
    Prices,
    SizeChoice,
    Spread,
)

SCHEMA = "hetfaas.advise/1"
WIDTH = 100
"""Columns of the text table."""


@dataclass(frozen=True, slots=True)
class SizeInfo:
    """One size of the sweep: ``n`` rows along axis 0 of the batched arguments (0 when the
    function has none to scale), the shapes of the arguments, and their bytes."""

    n: int
    shapes: tuple[tuple[int, ...] | None, ...]
    nbytes: int


@dataclass
class Advice:
    """Where a function should run, from measurements: what :func:`hetfaas.advise` returns.

    ``cells`` hold every trial (one per option and size); ``decision`` the choices and the
    break-even sizes derived from them by :func:`hetfaas.advisor.decide.decide`. ``notes``
    say what was not measured and why. ``str(advice)`` is the table; ``as_dict()`` the JSON.
    """

    function: str
    sizes: list[SizeInfo]
    options: list[Option]
    cells: list[Cell]
    decision: Decision
    prices: Prices
    cpus: int
    repeats: int
    warmup: int
    batched: tuple[int, ...]
    notes: list[str] = field(default_factory=list)
    gpu_note: str | None = None
    cold: dict[str, dict[str, float]] = field(default_factory=dict)
    machine: dict[str, Any] = field(default_factory=dict)
    elapsed_s: float = 0.0

    def cell(self, option: str, size: int) -> Cell | None:
        """The cell of ``option`` at size ``n``, or None."""
        for c in self.cells:
            if c.option == option and c.size == size:
                return c
        return None

    def choice(self, size: int) -> SizeChoice | None:
        """The choice at size ``n``, or None."""
        for c in self.decision.choices:
            if c.size == size:
                return c
        return None

    def __str__(self) -> str:
        return format_table(self)

    def as_dict(self) -> dict[str, Any]:
        """Everything, JSON-ready: options, every trial, medians, costs, choices, break-evens."""
        return advice_dict(self)

    def write_json(self, path: str | os.PathLike[str]) -> None:
        """Write :meth:`as_dict` to ``path`` (its folder is created)."""
        folder = os.path.dirname(os.fspath(path))
        if folder:
            os.makedirs(folder, exist_ok=True)
        with open(path, "w", encoding="utf-8") as fh:
            json.dump(self.as_dict(), fh, indent=1, default=_json_default)
            fh.write("\n")


# --------------------------------------------------------------------------------------------
# JSON


def _json_default(value: Any) -> Any:
    if isinstance(value, (set, frozenset, tuple)):
        return list(value)
    return str(value)


def _finite(x: float | None) -> float | None:
    return x if x is not None and math.isfinite(x) else None


def _spread(s: Spread) -> dict[str, float | int]:
    return {"median": s.median, "min": s.low, "max": s.high, "n": s.n}


def _cell_dict(c: Cell, prices: Prices) -> dict[str, Any]:
    d: dict[str, Any] = {
        "option": c.option,
        "size": c.size,
        "status": c.status,
        "note": c.note,
        "verified": c.verified,
        "trials": [
            {
                "wall_s": t.wall_s,
                "compute_s": t.compute_s,
                "compute_total_s": t.compute_total_s,
                "overhead_s": t.overhead_s,
                "cpus": t.cpus,
                "gpus": t.gpus,
                "calls": t.calls,
                "core_s": t.core_s,
                "gpu_s": t.gpu_s,
            }
            for t in c.trials
        ],
    }
    if c.measured:
        d.update(
            wall_s=_spread(c.wall),
            compute_s=_spread(c.compute),
            overhead_s=_spread(c.overhead),
            core_s=_spread(c.core_s),
            gpu_s=_spread(c.gpu_s),
            cost=c.cost(prices),
        )
    return d


def _crossing_dict(c: Crossing) -> dict[str, Any]:
    return {
        "lower": c.lower,
        "upper": c.upper,
        "before": c.before,
        "after": c.after,
        "bracketed": True,
        "spreads_overlap": c.overlap,
        "interpolated_loglog": _finite(c.interpolated),
    }


def _break_even_dict(b: BreakEven) -> dict[str, Any]:
    return {
        "subject": b.subject,
        "versus": b.versus,
        "metric": b.metric,
        "status": b.status,
        "sizes": list(b.sizes),
        "crossings": [_crossing_dict(c) for c in b.crossings],
        "text": b.text(),
    }


def advice_dict(a: Advice) -> dict[str, Any]:
    d = a.decision
    return {
        "schema": SCHEMA,
        "function": a.function,
        "cpus": a.cpus,
        "repeats": a.repeats,
        "warmup": a.warmup,
        "batched": list(a.batched),
        "prices": {"core_hour": a.prices.core_hour, "gpu_hour": a.prices.gpu_hour},
        "definitions": {
            "wall_s": "caller's clock, first submit to the (joined) result in hand",
            "compute_s": "longest function run among the option's calls (runtime stamps)",
            "overhead_s": "wall_s - compute_s",
            "core_s": "wall_s x cores held (as the runtime pinned them)",
            "gpu_s": "wall_s x GPUs held",
            "cost": "median core_s x core_hour/3600 + median gpu_s x gpu_hour/3600",
            "break_even": "bracketed between two measured sizes; interpolated_loglog is an "
            "estimate, not a measurement",
        },
        "sizes": [
            {"n": s.n, "shapes": [list(x) if x else None for x in s.shapes], "nbytes": s.nbytes}
            for s in a.sizes
        ],
        "options": [
            {
                "key": o.key,
                "label": o.label,
                "cpus": o.cpus,
                "gpus": o.gpus,
                "calls": o.calls,
                "serverless": o.serverless,
            }
            for o in a.options
        ],
        "cells": [_cell_dict(c, a.prices) for c in a.cells],
        "choices": [
            {
                "size": c.size,
                "fastest": c.fastest,
                "fastest_wall_s": c.fastest_wall_s,
                "runner_up": c.runner_up,
                "close": c.close,
                "cheapest": c.cheapest,
                "cheapest_cost": c.cheapest_cost,
                "bare": c.bare,
                "fastest_beats_bare": c.beats_bare,
            }
            for c in d.choices
        ],
        "baseline": d.baseline,
        "break_even": [_break_even_dict(b) for b in d.versus_baseline],
        "fastest_changes": [_crossing_dict(c) for c in d.fastest_changes],
        "cheapest_changes": [_crossing_dict(c) for c in d.cheapest_changes],
        "versus_bare": _break_even_dict(d.versus_bare) if d.versus_bare else None,
        "notes": list(a.notes),
        "gpu": {
            "measured": any(o.gpus for o in a.options),
            "note": a.gpu_note,
        },
        "cold": a.cold,
        "machine": a.machine,
        "elapsed_s": a.elapsed_s,
    }


# --------------------------------------------------------------------------------------------
# the table


def _ms(seconds: float) -> str:
    ms = seconds * 1e3
    if ms == 0:
        return "0"
    if abs(ms) >= 100:
        return f"{ms:.0f}"
    if abs(ms) >= 10:
        return f"{ms:.1f}"
    if abs(ms) >= 1:
        return f"{ms:.2f}"
    return f"{ms:.3f}"


def _sci(x: float) -> str:
    return "0" if x == 0 else f"{x:.3g}"


def _size_label(a: Advice, n: int) -> str:
    return "example" if n == 0 and not a.batched else str(n)


def _changes_text(what: str, sizes: list[int], picks: list[str | None], ch: tuple) -> str:
    known = [p for p in picks if p is not None]
    if not known:
        return f"{what}: nothing measured"
    if not ch:
        return f"{what}: {known[0]} at every measured size (n={sizes[0]}..{sizes[-1]})"
    steps = [f"{c.before} -> {c.after} between n={c.lower} and n={c.upper}" for c in ch]
    return f"{what}: " + "; ".join(steps) + " (bracketed)"


def _row(cols: list[str]) -> str:
    widths = (7, 13, 26, 10, 11, 9, 8, 9)
    left = (False, True, True, False, False, False, False, False)
    cells = [
        c.ljust(w) if lft else c.rjust(w) for c, w, lft in zip(cols, widths, left, strict=True)
    ]
    return " ".join(cells).rstrip()


def _machine_line(m: dict[str, Any]) -> str:
    gpus = m.get("gpus") or []
    gpu = ", ".join(str(g.get("name")) for g in gpus) if gpus else "no GPU"
    cores = m.get("affinity_cores") or m.get("logical_cores")
    return f"{m.get('cpu_model') or 'unknown CPU'}, {cores} cores usable, {gpu}"


def format_table(a: Advice) -> str:
    """The advice as text: options, a row per size and option, the choices, the break-even."""
    d = a.decision
    sizes = [s.n for s in a.sizes]
    by_key = {o.key: o for o in a.options}
    where = (
        f"n = rows along axis 0 of argument {', '.join(str(i) for i in a.batched)}"
        if a.batched
        else "the example arguments as given (none to scale)"
    )
    lines = [
        f"hetfaas advise: {a.function} on N = {a.cpus} CPUs; {where}",
        *([f"machine: {_machine_line(a.machine)}"] if a.machine else []),
        f"{a.repeats} timed runs per option and size, after {a.warmup} warm-up run(s); "
        "median [min, max]",
        "wall: submit to result in hand, serverless overhead included; overhead: wall - compute",
        f"prices (given): {a.prices.core_hour:g}/core-hour, {a.prices.gpu_hour:g}/GPU-hour; "
        "core-s = wall x cores held",
        *(line for note in a.notes for line in textwrap.wrap(note, WIDTH, subsequent_indent="  ")),
        "",
        "options:",
        *(f"  {o.key:<14} {o.label}" for o in a.options),
        "",
    ]
    head = _row(["n", "option", "wall ms", "compute ms", "overhead ms", "core-s", "GPU-s", "cost"])
    lines += [head, "-" * len(head)]
    for s in a.sizes:
        for c in (c for c in a.cells if c.size == s.n):
            label = _size_label(a, s.n)
            if c.status != MEASURED or not c.trials:
                lines.append(f"{label:>7} {c.option:<13} {c.status}: {c.note}")
                continue
            w = c.wall
            wall = f"{_ms(w.median)} [{_ms(w.low)}, {_ms(w.high)}]"
            if c.verified is False:
                wall += " !"
            gpu = _sci(c.gpu_s.median) if by_key[c.option].gpus else "-"
            lines.append(
                _row(
                    [
                        label,
                        c.option,
                        wall,
                        _ms(c.compute.median),
                        _ms(c.overhead.median),
                        _sci(c.core_s.median),
                        gpu,
                        _sci(c.cost(a.prices)),
                    ]
                )
            )
    if any(c.verified is False for c in a.cells):
        lines.append("  ! the result differs from the in-process reference beyond rtol")
    ref = d.bare or "bare metal"
    lines += ["", "choice per size (serverless options only; bare metal is the reference):"]
    head = f"{'n':>7} {'fastest':<13} {'runner-up':<31} {'cheapest':<13} vs {ref}"
    lines += [head, "-" * len(head)]
    for ch in d.choices:
        runner = ch.runner_up or "-"
        if ch.runner_up and ch.close:
            runner += " (spreads overlap)"
        versus = "-" if ch.beats_bare is None else "faster" if ch.beats_bare else "slower"
        lines.append(
            f"{_size_label(a, ch.size):>7} {ch.fastest or '-':<13} {runner:<31} "
            f"{ch.cheapest or '-':<13} {versus}"
        )
    lines += ["", "break-even (bracketed between measured sizes; nothing between was measured):"]
    if len(sizes) < 2:
        lines.append("  one size only: no break-even can be bracketed")
    said = [
        _changes_text("fastest", sizes, [c.fastest for c in d.choices], d.fastest_changes),
        _changes_text("cheapest", sizes, [c.cheapest for c in d.choices], d.cheapest_changes),
        *(b.text() for b in d.versus_baseline),
    ]
    if d.versus_bare is not None:
        said.append(d.versus_bare.text())
    if len(sizes) > 1 and any(b.status in (ALWAYS, NEVER) for b in d.versus_baseline):
        said.append("(a break-even outside the sweep: widen the sizes to bracket it)")
    for text in said:
        lines += textwrap.wrap(
            text, WIDTH, initial_indent="  ", subsequent_indent="    ", break_on_hyphens=False
        )
    cold = [f"{k} {_ms(v['wall_s'])} ms" for k, v in a.cold.items() if by_key[k].serverless]
    if cold:
        text = "first call per option (its warm-up run, not in the table): " + ", ".join(cold)
        lines += ["", *textwrap.wrap(text, WIDTH, subsequent_indent="  ", break_on_hyphens=False)]
    return "\n".join(lines) + "\n"


__all__ = ["SCHEMA", "Advice", "SizeInfo", "advice_dict", "format_table"]
