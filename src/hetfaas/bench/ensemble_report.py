"""The report of ``hetfaas bench ensemble``: its targets, the markdown tables, the JSON.

Everything here is computed from the result of :func:`hetfaas.bench.ensemble.run_ensemble`;
the targets are issue 13's, per scale, each shown met or missed with the figure measured.
"""

from __future__ import annotations

from typing import Any

TARGETS: dict[str, list[tuple[str, str, float, bool]]] = {
    "ci": [
        ("prep_vs_step", "preprocessing a batch / a training step", 3.0, True),
        ("cpu_ratio", "private / shared preprocessing CPU-seconds", 3.0, True),
        ("speedup", "shared wall-clock speedup over private", 1.3, True),
        ("command_s", "the whole command, seconds", 90.0, False),
    ],
    "digits": [],
    "gpu": [
        ("blocked", "trainer blocked fraction (shared)", 0.10, False),
        ("busy", "device busy fraction (shared)", 0.70, True),
        ("speedup", "shared wall-clock speedup over private", 1.5, True),
        ("command_s", "the whole command, seconds", 300.0, False),
    ],
}
MEMBER_FLOOR = 0.93  # digits: every member at least this accurate
ENSEMBLE_FLOOR = 0.96  # digits: the soft vote at least this, and the member mean + 1 point
ENSEMBLE_GAIN = 0.01


def evaluate_targets(res: dict[str, Any]) -> list[dict[str, Any]]:
    """Every target of the scale, met or missed, with the figure measured (per seed where the
    figure is per seed; the worst seed decides)."""
    out: list[dict[str, Any]] = []
    rows = res["seeds"]
    for key, what, threshold, higher in TARGETS.get(res["scale"], []):
        values = [res.get(key)] if key == "command_s" else [r.get(key) for r in rows]
        if any(v is None for v in values) or not values:
            out.append({"target": what, "threshold": threshold, "value": None, "met": None})
            continue
        worst = min(values) if higher else max(values)
        met = worst >= threshold if higher else worst <= threshold
        out.append(
            {
                "target": what,
                "threshold": threshold,
                "value": worst,
                "met": met,
                "higher_is_better": higher,
                "per_seed": values,
            }
        )
    bound = all(m["bound_ok"] for r in rows for m in r["modes"].values())
    items = all(m["items_ok"] for r in rows for m in r["modes"].values())
    out.append({"target": "in-flight items never above the bound", "met": bound})
    out.append({"target": "items at every stage = the inputs", "met": items})
    if res["scale"] == "digits":
        accs = [_accuracy_of(r) for r in rows]
        out.append(
            {
                "target": f"every member >= {MEMBER_FLOOR} (the worst member of any seed)",
                "value": min(a["min"] for a in accs),
                "met": all(a["members_ok"] for a in accs),
            }
        )
        out.append(
            {
                "target": f"ensemble >= max({ENSEMBLE_FLOOR}, member mean + 1 point) (the least "
                "gain of any seed, points)",
                "value": 100 * min(a["gain"] for a in accs),
                "met": all(a["ensemble_ok"] for a in accs),
            }
        )
    return out


def _accuracy_of(row: dict[str, Any]) -> dict[str, Any]:
    """The accuracies of a seed: the shared mode's members, else the first mode's, else the
    baseline's."""
    modes = row["modes"]
    if "shared" in modes:
        return modes["shared"]["accuracy"]
    if modes:
        return next(iter(modes.values()))["accuracy"]
    return row["baseline"]["accuracy"]


def _f(x: float | None, fmt: str = ".2f") -> str:
    return "n/a" if x is None else format(x, fmt)


def _pct(x: float | None) -> str:
    return "n/a" if x is None else f"{x:.0%}"


def format_report(res: dict[str, Any]) -> str:
    """The markdown report: per seed the modes and the members, then accuracy over the seeds
    and the targets."""
    cfg = res["config"]
    data = cfg["data"]
    lines = [
        f"## ensemble training, scale {res['scale']}: K={res['members']} members "
        f"(widths {', '.join(map(str, cfg['widths']))}, depth {cfg['depth']}, bag "
        f"{cfg['bag']:g}), {data['name']} data, batch {cfg['batch']}, {cfg['epochs']} epochs",
        f"trainers on {res['device']} ({res['trainer_resources']}), preprocessing up to "
        f"{res['prep_workers']} calls per stage, {res['cores']} cores, edge bound "
        f"{cfg['bound']}; balance: {res['balance']} (steps per batch "
        f"{', '.join(map(str, res['steps']))})",
    ]
    if res.get("step_s"):
        lines[-1] += "; measured step " + ", ".join(f"{s * 1e3:.2f}" for s in res["step_s"]) + " ms"
    for row in res["seeds"]:
        lines += ["", f"### seed {row['seed']}: {row['batches']} batches", ""]
        lines += [
            "| mode | wall s | prep CPU-s | prep calls | prep/batch ms | step/batch ms | "
            "trainer blocked | trainer busy | GPU util | peak in flight / bound | items = inputs "
            "| weights = single process |",
            "|---|---|---|---|---|---|---|---|---|---|---|---|",
        ]
        for mode, m in row["modes"].items():
            peak = max(e["peak_in_flight"] for e in m["edges"])
            diff = m.get("max_weight_diff_vs_baseline")
            same = "n/a" if diff is None else ("yes" if diff == 0 else f"max diff {diff:.1e}")
            lines.append(
                f"| {mode} | {m['wall_s']:.2f} | {m['prep_cpu_s']:.2f} | {m['prep_calls']} | "
                f"{m['prep_per_batch_s'] * 1e3:.1f} | {m['step_per_batch_s'] * 1e3:.1f} | "
                f"{_pct(m['trainer_blocked_fraction'])} | {_pct(m['trainer_busy_fraction'])} | "
                f"{_f(m['gpu_util_percent'], '.0f')} | {peak} / {cfg['bound']} | "
                f"{'yes' if m['items_ok'] else 'NO'} | {same} |"
            )
        if "baseline" in row:
            b = row["baseline"]
            lines.append(
                f"| single process | {b['wall_s']:.2f} | {b['preprocess_cpu_s']:.2f} | "
                f"{row['batches']} | {b['preprocess_s'] / row['batches'] * 1e3:.1f} | "
                f"{b['train_s'] / row['batches'] / res['members'] * 1e3:.1f} | | | | | | |"
            )
        if "cpu_ratio" in row:
            lines.append(
                f"\nprivate / shared: preprocessing CPU-seconds {_f(row['cpu_ratio'])}x (ideal "
                f"{res['members'] * min(1.0, cfg['bag']):g}), wall {_f(row['speedup'])}x; "
                f"preprocessing a batch costs {_f(row.get('prep_vs_step'), '.1f')}x a training step"
            )
        for mode, m in row["modes"].items():
            lines.append(
                f"{mode}: a trainer call runs {m['trainer_call_s'] * 1e3:.1f} ms: "
                f"{m['step_per_batch_s'] * 1e3:.1f} ms in the function (training), "
                f"{m['trainer_plane_s'] * 1e3:.1f} ms getting the batch and the state and "
                "putting the state back (the data plane)"
            )
        lines += [
            "",
            "| member | width | steps/batch | "
            + " | ".join(
                f"{mode} acc | {mode} working s | {mode} idle s (blocked) | {mode} queued s"
                for mode in row["modes"]
            )
            + " | single process acc |",
        ]
        lines.append("|---" * (4 + 4 * len(row["modes"])) + "|")
        for k, spec in enumerate(row["members"]):
            cells = [spec["name"], str(spec["width"]), str(spec["steps"])]
            for m in row["modes"].values():
                s = m["stages"][spec["name"]]
                cells += [
                    f"{m['accuracy']['members'][k]:.3f}",
                    f"{s['working_s']:.2f}",
                    f"{s['idle_s']:.2f}",
                    f"{s['queued_s']:.2f}",
                ]
            base = row.get("baseline", {}).get("accuracy")
            cells.append(f"{base['members'][k]:.3f}" if base else "n/a")
            lines.append("| " + " | ".join(cells) + " |")
        cells = ["soft vote", "", ""]
        for m in row["modes"].values():
            cells += [f"**{m['accuracy']['ensemble']:.3f}**", "", "", ""]
        base = row.get("baseline", {}).get("accuracy")
        cells.append(f"**{base['ensemble']:.3f}**" if base else "n/a")
        lines.append("| " + " | ".join(cells) + " |")
    lines += [
        "",
        "### accuracy over the seeds",
        "",
        "| seed | members | member mean | soft vote | gain (points) |",
        "|---|---|---|---|---|",
    ]
    for row in res["seeds"]:
        a = _accuracy_of(row)
        lines.append(
            f"| {row['seed']} | {', '.join(f'{x:.3f}' for x in a['members'])} | {a['mean']:.3f} "
            f"| {a['ensemble']:.3f} | {(a['gain']) * 100:+.1f} |"
        )
    lines += ["", "### targets", ""]
    for t in res["targets"]:
        verdict = {True: "met", False: "MISSED", None: "not measured"}[t["met"]]
        value = t.get("value")
        shown = "" if value is None else f": {value:.3g}"
        if "threshold" in t:
            shown += f" ({'>=' if t.get('higher_is_better', True) else '<='} {t['threshold']:g})"
        lines.append(f"- {t['target']}{shown}: **{verdict}**")
    lines.append(f"\nwhole command {res.get('command_s', res['run_s']):.1f} s")
    return "\n".join(lines)


def plain(res: dict[str, Any], keep_tasks: bool = True) -> dict[str, Any]:
    """``res`` as JSON-ready data: the pipeline stats as dicts (their calls only for the
    first seed), the member states left out."""
    out = dict(res)
    out["seeds"] = []
    for i, row in enumerate(res["seeds"]):
        r = dict(row)
        r["modes"] = {}
        for mode, m in row["modes"].items():
            d = {k: v for k, v in m.items() if k not in ("states", "stats")}
            stats = m["stats"].as_dict()
            if not (keep_tasks and i == 0):
                stats.pop("tasks", None)
            d["pipeline_stats"] = stats
            r["modes"][mode] = d
        out["seeds"].append(r)
    return out


__all__ = [
    "ENSEMBLE_FLOOR",
    "ENSEMBLE_GAIN",
    "MEMBER_FLOOR",
    "TARGETS",
    "evaluate_targets",
    "format_report",
    "plain",
]
