"""``hetfaas bench inference``: the paper's experiment (seed 004) in the simulator, and a check
that the real runtime makes the same cache decisions.

1. **Sweep.** Working sets of 5..50 models (the default catalog: seven model families, see
   ``serving/catalog.py``) on a cluster of 2 nodes x 2 GPUs x 2 GiB for models, one Zipf
   trace per working set (Poisson arrivals), run by LB, LALB, LALB+O3 and ours. Average and
   p99 latency and the miss ratio per policy, and the reductions against LB at working set 35
   beside the paper's (LALB: -79.43% average latency, -65.21% miss ratio; LALB+O3: -96.93%,
   -81.16%).
2. **Speed.** 1,000 GPUs and 1,000,000 requests through the simulator (wall time per policy).
3. **Real mode.** The same kind of trace replayed in real time on CPU "devices" (torch MLPs
   standing in for the families at 1/1000 of their size, devices with 1/1000 of the memory),
   then simulated with the times measured in that run: the miss ratios must agree within
   ``REAL_TOLERANCE`` (timing jitter reorders a few completions, so a few decisions differ;
   one request at a time they agree exactly, which the tests check).
4. ``--profile`` measures the catalog's load and inference times on this machine (the GPU when
   there is one) and runs the sweep with them.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from .. import machine
from ..serving import catalog as cat_mod
from ..serving.catalog import FAMILIES, Catalog, Family, ModelProfile, default_catalog
from ..serving.policies import POLICIES
from ..serving.simulator import GIB, Cluster, simulate
from ..serving.workload import make_trace

PAPER = {  # reductions against LB at working set 35, in percent (arXiv 2303.05601)
    "lalb": {"avg_latency_s": -79.43, "miss_ratio": -65.21},
    "lalb+o3": {"avg_latency_s": -96.93, "miss_ratio": -81.16},
}
PAPER_WS = 35
DEFAULT_POLICIES = ("lb", "lalb", "lalb+o3", "ours", "ours+gdsf")
REAL_TOLERANCE = 0.05  # absolute difference of miss ratios, real vs simulated
REAL_SCALE = 1000  # real-mode models and devices are this many times smaller


def _pct(new: float, base: float) -> float:
    return 100.0 * (new - base) / base if base else float("nan")


# -- 1. the sweep --------------------------------------------------------------------------------
def run_sweep(
    working_sets: Sequence[int],
    policies: Sequence[str] = DEFAULT_POLICIES,
    n_requests: int = 20_000,
    rate: float = 30.0,
    cluster: Cluster | None = None,
    seed: int = 1,
    popularity: str = "zipf",
    arrival: str = "poisson",
    families: Sequence[Family] = FAMILIES,
    log: Callable[[str], None] = lambda _m: None,
) -> dict[str, Any]:
    cluster = cluster or Cluster(2, 2, 2 * GIB)
    rows = []
    for ws in working_sets:
        catalog = default_catalog(ws, families)
        trace = make_trace(n_requests, ws, rate, popularity, arrival, seed)
        for policy in policies:
            res = simulate(trace, catalog, cluster, policy)
            row = {"working_set": ws, "policy": policy, **res.summary(), "sim_s": res.wall_s}
            rows.append(row)
            log(
                f"ws {ws:3d} {policy:10s} avg {row['avg_latency_s']:9.4f} s  p99 "
                f"{row['p99_latency_s']:9.3f} s  miss {row['miss_ratio']:.4f}"
            )
    return {
        "rows": rows,
        "config": {
            "cluster": f"{cluster.nodes} nodes x {cluster.gpus_per_node} GPUs x "
            f"{cluster.memory_bytes / GIB:g} GiB",
            "requests": n_requests,
            "rate_per_s": rate,
            "popularity": popularity,
            "arrival": arrival,
            "seed": seed,
            "families": [
                {
                    "name": f.name,
                    "size_mb": f.size_bytes / 1e6,
                    "load_s": f.load_s,
                    "infer_s": f.infer_s,
                }
                for f in families
            ],
        },
    }


def reductions(rows: list[dict], ws: int, base: str = "lb") -> dict[str, dict[str, float]]:
    """Per policy, the percent change of each metric against ``base`` at working set ``ws``."""
    at = {r["policy"]: r for r in rows if r["working_set"] == ws}
    if base not in at:
        return {}
    out = {}
    for p, r in at.items():
        out[p] = {
            k: _pct(r[k], at[base][k]) for k in ("avg_latency_s", "p99_latency_s", "miss_ratio")
        }
    return out


# -- 2. speed -------------------------------------------------------------------------------------
def run_speed(
    n_gpus: int = 1000,
    n_requests: int = 1_000_000,
    policies: Sequence[str] = ("lb", "lalb+o3"),
    working_set: int = 500,
    log: Callable[[str], None] = lambda _m: None,
) -> list[dict[str, Any]]:
    gpus_per_node = 8 if n_gpus % 8 == 0 else 1
    cluster = Cluster(n_gpus // gpus_per_node, gpus_per_node, 16 * GIB)
    rate = 40.0 * n_gpus  # about half of what hits alone could serve
    t0 = time.perf_counter()
    trace = make_trace(n_requests, working_set, rate, seed=1)
    trace_s = time.perf_counter() - t0
    out = []
    for policy in policies:
        res = simulate(trace, default_catalog(working_set), cluster, policy)
        row = {
            "policy": policy,
            "gpus": n_gpus,
            "requests": n_requests,
            "working_set": working_set,
            "trace_s": trace_s,
            "sim_s": res.wall_s,
            "events": res.events,
            "events_per_s": res.events / res.wall_s,
            **res.summary(),
        }
        out.append(row)
        log(f"speed {policy:10s} {n_gpus} GPUs x {n_requests} requests: {res.wall_s:.1f} s")
    return out


# -- 3. real mode ---------------------------------------------------------------------------------
def _mlp_factory(hidden: int) -> Callable[[], Any]:
    def factory() -> Any:
        import torch

        return torch.nn.Sequential(
            torch.nn.Linear(64, hidden), torch.nn.ReLU(), torch.nn.Linear(hidden, 10)
        )

    return factory


def run_real(
    working_sets: Sequence[int] = (5, 20, 35),
    policies: Sequence[str] = ("lb", "lalb", "lalb+o3", "ours"),
    n_requests: int = 200,
    rate: float = 150.0,
    seed: int = 1,
    log: Callable[[str], None] = lambda _m: None,
) -> list[dict[str, Any]]:
    """Replay traces in real time on 4 devices, then simulate them with the measured times.

    The devices are CPU devices, or, when there is a GPU, four shares of the first one (each
    with its memory budget), so the cluster's shape is the same either way.
    """
    import torch

    from ..serving.functions import InferenceFunction, save_weights
    from ..serving.runtime import GPUManager, Runtime

    torch.set_num_threads(1)
    device = "cuda:0" if torch.cuda.is_available() else "cpu"
    rows = []
    with tempfile.TemporaryDirectory(prefix="hetfaas-infer-") as store:
        infer = InferenceFunction()
        for i in range(max(working_sets)):
            fam = FAMILIES[i % len(FAMILIES)]
            hidden = max(4, round(fam.size_bytes / REAL_SCALE / 300))
            uri = Path(store, f"m{i}.pt").as_uri()
            save_weights(_mlp_factory(hidden)(), uri)
            infer.register(f"{fam.name}-like-{i}", _mlp_factory(hidden), weights=uri)
        names = list(infer.specs)
        memory = 2 * GIB // REAL_SCALE
        batch = torch.randn(8, 64)
        for ws in working_sets:
            trace = make_trace(n_requests, ws, rate, seed=seed)
            for policy in policies:
                managers = [
                    GPUManager([(device, memory)] * 2, node=0),
                    GPUManager([(device, memory)] * 2, node=1),
                ]
                with Runtime(infer, managers, policy) as rt:
                    t0 = time.perf_counter()
                    futs = []
                    for t, m in zip(trace.arrivals, trace.models, strict=True):
                        delay = t - (time.perf_counter() - t0)
                        if delay > 0:
                            time.sleep(delay)
                        futs.append(rt.submit(names[m], batch))
                    for f in futs:
                        f.result(timeout=120)
                    recs = list(rt.records)
                    real = rt.summary()
                # the simulator on the same trace, with this run's measured times per model
                loads: dict[int, list[float]] = {}
                infers: dict[int, list[float]] = {}
                for rec in recs:
                    m = names.index(rec.model)
                    infers.setdefault(m, []).append(rec.infer_s)
                    if not rec.hit:
                        loads.setdefault(m, []).append(rec.load_s)
                all_loads = [x for v in loads.values() for x in v] or [1e-3]
                all_infers = [x for v in infers.values() for x in v] or [1e-4]
                profiles = []
                for m in range(ws):
                    spec = infer.specs[names[m]]
                    ld = loads.get(m, all_loads)
                    inf = infers.get(m, all_infers)
                    profiles.append(
                        ModelProfile(
                            spec.name,
                            spec.size_bytes,
                            sum(ld) / len(ld),
                            max(1e-6, sum(inf) / len(inf)),
                        )
                    )
                sim = simulate(trace, Catalog(profiles), [memory] * 4, policy)
                s = sim.summary()
                agree = sum(a == b.hit for a, b in zip(sim.hit, recs, strict=True)) / len(recs)
                row = {
                    "working_set": ws,
                    "policy": policy,
                    "requests": n_requests,
                    "real_miss_ratio": real["miss_ratio"],
                    "sim_miss_ratio": s["miss_ratio"],
                    "real_avg_latency_s": real["avg_latency_s"],
                    "sim_avg_latency_s": s["avg_latency_s"],
                    "same_decision": agree,
                    "within_tolerance": abs(real["miss_ratio"] - s["miss_ratio"]) <= REAL_TOLERANCE,
                    "device": device,
                }
                rows.append(row)
                log(
                    f"real ws {ws:3d} {policy:10s} miss real {row['real_miss_ratio']:.3f} sim "
                    f"{row['sim_miss_ratio']:.3f}  same hit/miss per request {agree:.1%}"
                )
    return rows


# -- 4. profile -----------------------------------------------------------------------------------
def run_profile(scale: float = 0.1) -> list[Family]:
    return cat_mod.profile(FAMILIES, scale=scale)


# -- report ---------------------------------------------------------------------------------------
def _fmt_s(x: float) -> str:
    if math.isnan(x):
        return "—"
    return f"{x * 1000:.1f} ms" if x < 1 else f"{x:.2f} s"


def format_report(res: dict[str, Any]) -> str:
    out = []
    sweep = res.get("sweep")
    if sweep:
        cfg = sweep["config"]
        out.append(
            f"### Sweep: {cfg['cluster']}, {cfg['requests']} requests per point at "
            f"{cfg['rate_per_s']:g}/s ({cfg['popularity']}, {cfg['arrival']}, seed {cfg['seed']})"
        )
        policies = list(dict.fromkeys(r["policy"] for r in sweep["rows"]))
        out.append("")
        out.append(
            "| working set | " + " | ".join(f"{p} avg / p99 / miss" for p in policies) + " |"
        )
        out.append("|---|" + "---|" * len(policies))
        by = {(r["working_set"], r["policy"]): r for r in sweep["rows"]}
        for ws in dict.fromkeys(r["working_set"] for r in sweep["rows"]):
            cells = []
            for p in policies:
                r = by.get((ws, p))
                cells.append(
                    f"{_fmt_s(r['avg_latency_s'])} / {_fmt_s(r['p99_latency_s'])} / "
                    f"{r['miss_ratio']:.3f}"
                    if r
                    else "—"
                )
            out.append(f"| {ws} | " + " | ".join(cells) + " |")
        ws_list = [r["working_set"] for r in sweep["rows"]]
        ws = PAPER_WS if PAPER_WS in ws_list else ws_list[-1]
        red = reductions(sweep["rows"], ws)
        if red:
            out.append("")
            out.append(f"Against LB at working set {ws} (percent change; the paper's beside):")
            out.append("")
            out.append("| policy | avg latency | paper | p99 latency | miss ratio | paper |")
            out.append("|---|---|---|---|---|---|")
            for p, v in red.items():
                if p == "lb":
                    continue
                paper = PAPER.get(p, {})
                pa = f"{paper['avg_latency_s']:+.2f}%" if paper else "—"
                pm = f"{paper['miss_ratio']:+.2f}%" if paper else "—"
                out.append(
                    f"| {p} | {v['avg_latency_s']:+.2f}% | {pa} | {v['p99_latency_s']:+.2f}% | "
                    f"{v['miss_ratio']:+.2f}% | {pm} |"
                )
            gains = ours_vs(sweep["rows"], "lalb+o3")
            if gains:
                out.append("")
                out.append(
                    "Ours against LALB+O3 per working set (percent change of avg latency "
                    "/ miss ratio; negative is better):"
                )
                out.append("")
                out.append("| working set | " + " | ".join(gains[0]["policies"]) + " |")
                out.append("|---|" + "---|" * len(gains[0]["policies"]))
                for g in gains:
                    out.append(
                        f"| {g['working_set']} | "
                        + " | ".join(f"{a:+.1f}% / {m:+.1f}%" for a, m in g["values"])
                        + " |"
                    )
    if res.get("speed"):
        out.append("")
        out.append("### Simulator speed")
        out.append("")
        out.append("| policy | GPUs | requests | working set | wall | events/s |")
        out.append("|---|---|---|---|---|---|")
        for r in res["speed"]:
            out.append(
                f"| {r['policy']} | {r['gpus']} | {r['requests']:,} | {r['working_set']} | "
                f"{r['sim_s']:.1f} s | {r['events_per_s']:,.0f} |"
            )
    if res.get("real"):
        out.append("")
        out.append(
            f"### Real mode on {res['real'][0]['device']} devices vs the simulator (tolerance: "
            f"miss ratios within {REAL_TOLERANCE})"
        )
        out.append("")
        out.append(
            "| working set | policy | real miss | sim miss | same hit/miss | within | "
            "real avg latency |"
        )
        out.append("|---|---|---|---|---|---|---|")
        for r in res["real"]:
            out.append(
                f"| {r['working_set']} | {r['policy']} | {r['real_miss_ratio']:.3f} | "
                f"{r['sim_miss_ratio']:.3f} | {r['same_decision']:.1%} | "
                f"{'yes' if r['within_tolerance'] else 'NO'} | {_fmt_s(r['real_avg_latency_s'])} |"
            )
    if res.get("profile"):
        out.append("")
        out.append(f"### Catalog measured here ({res.get('profile_device', 'cpu')})")
        out.append("")
        out.append("| family | size | load | inference |")
        out.append("|---|---|---|---|")
        for f in res["profile"]:
            out.append(
                f"| {f['name']} | {f['size_mb']:.0f} MB | {_fmt_s(f['load_s'])} | "
                f"{_fmt_s(f['infer_s'])} |"
            )
    return "\n".join(out) + "\n"


def ours_vs(rows: list[dict], base: str) -> list[dict[str, Any]]:
    """Per working set, each of our policies' change against ``base`` (avg latency, misses)."""
    ours = [p for p in dict.fromkeys(r["policy"] for r in rows) if p.startswith("ours")]
    out = []
    by = {(r["working_set"], r["policy"]): r for r in rows}
    for ws in dict.fromkeys(r["working_set"] for r in rows):
        b = by.get((ws, base))
        if b is None or not ours:
            continue
        vals = []
        for p in ours:
            r = by[(ws, p)]
            vals.append(
                (
                    _pct(r["avg_latency_s"], b["avg_latency_s"]),
                    _pct(r["miss_ratio"], b["miss_ratio"]),
                )
            )
        out.append({"working_set": ws, "policies": ours, "values": vals})
    return out


def plot(res: dict[str, Any], out_dir: Path) -> list[Path]:
    """Average latency, p99 and miss ratio against the working set, one line per policy."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = res["sweep"]["rows"]
    policies = list(dict.fromkeys(r["policy"] for r in rows))
    paths = []
    for key, label, log in (
        ("avg_latency_s", "average latency (s)", True),
        ("p99_latency_s", "p99 latency (s)", True),
        ("miss_ratio", "cache miss ratio", False),
    ):
        fig, ax = plt.subplots(figsize=(6, 4))
        for p in policies:
            pts = [(r["working_set"], r[key]) for r in rows if r["policy"] == p]
            ax.plot([x for x, _ in pts], [y for _, y in pts], marker="o", label=p)
        ax.set_xlabel("working set (models)")
        ax.set_ylabel(label)
        if log:
            ax.set_yscale("log")
        ax.axvline(PAPER_WS, color="grey", lw=0.5, ls="--")
        base = next(
            (r[key] for r in rows if r["policy"] == "lb" and r["working_set"] == PAPER_WS), None
        )
        if base and key in PAPER["lalb"]:  # the paper's reductions applied to our LB
            for p, marker in (("lalb", "x"), ("lalb+o3", "+")):
                y = base * (1 + PAPER[p][key] / 100)
                ax.plot(
                    [PAPER_WS],
                    [y],
                    marker=marker,
                    ms=11,
                    color="black",
                    ls="none",
                    label=f"paper {p} (vs our lb)",
                )
        ax.legend(fontsize=8)
        ax.set_title(f"{label} — {res['sweep']['config']['cluster']}")
        fig.tight_layout()
        path = out_dir / f"inference_{key}.png"
        fig.savefig(path, dpi=110)
        plt.close(fig)
        paths.append(path)
    return paths


# -- CLI ------------------------------------------------------------------------------------------
def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--working-sets",
        default="5,10,15,20,25,30,35,40,45,50",
        help="comma list of working-set sizes (default 5..50 by 5)",
    )
    parser.add_argument(
        "--policies",
        default=",".join(DEFAULT_POLICIES),
        help=f"comma list of {', '.join(POLICIES)}",
    )
    parser.add_argument("--requests", type=int, default=20_000, help="requests per point")
    parser.add_argument("--rate", type=float, default=30.0, help="arrivals per second")
    parser.add_argument("--nodes", type=int, default=2)
    parser.add_argument("--gpus-per-node", type=int, default=2)
    parser.add_argument("--memory-gib", type=float, default=2.0, help="model memory per GPU")
    parser.add_argument("--popularity", default="zipf", choices=("zipf", "uniform"))
    parser.add_argument("--arrival", default="poisson", choices=("poisson", "bursty"))
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument(
        "--speed",
        action="store_true",
        help="also time 1,000 GPUs x 1,000,000 requests in the simulator",
    )
    parser.add_argument(
        "--real",
        action="store_true",
        help="also replay traces on CPU devices and compare with the simulator",
    )
    parser.add_argument(
        "--profile",
        action="store_true",
        help="measure the catalog here and sweep with the measured times",
    )
    parser.add_argument("--quick", action="store_true", help="small sizes (seconds)")
    parser.add_argument("--out", default=None, help="write report.md, results.json, PNGs here")
    parser.add_argument("--json", action="store_true", help="print one JSON object")


def run(args: argparse.Namespace) -> int:
    from ..exceptions import ConfigurationError

    log = (lambda m: print(m, file=sys.stderr)) if args.json else print
    try:
        working_sets = [int(x) for x in args.working_sets.split(",") if x.strip()]
    except ValueError:
        raise ConfigurationError(
            f"--working-sets takes a comma list of ints: {args.working_sets!r}"
        ) from None
    policies = [p.strip() for p in args.policies.split(",") if p.strip()]
    for p in policies:
        if p not in POLICIES:
            raise ConfigurationError(f"unknown policy {p!r}; known policies: {', '.join(POLICIES)}")
    n_requests = 2000 if args.quick else args.requests
    desc = machine.describe()
    desc.pop("python_executable", None)  # a path on this machine, not a property of it
    res: dict[str, Any] = {"machine": desc}
    families: Sequence[Family] = FAMILIES
    if args.profile:
        families = run_profile(0.02 if args.quick else 0.1)
        res["profile"] = [
            {
                "name": f.name,
                "size_mb": f.size_bytes / 1e6,
                "load_s": f.load_s,
                "infer_s": f.infer_s,
            }
            for f in families
        ]
        res["profile_device"] = "cuda" if _cuda() else "cpu"
    cluster = Cluster(args.nodes, args.gpus_per_node, int(args.memory_gib * GIB))
    res["sweep"] = run_sweep(
        working_sets,
        policies,
        n_requests,
        args.rate,
        cluster,
        args.seed,
        args.popularity,
        args.arrival,
        families,
        log,
    )
    if args.speed:
        res["speed"] = run_speed(
            100 if args.quick else 1000, 50_000 if args.quick else 1_000_000, log=log
        )
    if args.real:
        res["real"] = run_real(
            (5, 20) if args.quick else (5, 20, 35), n_requests=60 if args.quick else 200, log=log
        )
    text = format_report(res)
    if args.out:
        out = Path(args.out)
        out.mkdir(parents=True, exist_ok=True)
        (out / "report.md").write_text(text)
        (out / "results.json").write_text(json.dumps(res, indent=1, default=str))
        for path in plot(res, out):
            log(f"wrote {path}")
    if args.json:
        json.dump(res, sys.stdout, indent=1, default=str)
        sys.stdout.write("\n")
    else:
        print(text)
    return 0


def _cuda() -> bool:
    try:
        import torch

        return bool(torch.cuda.is_available())
    except ImportError:
        return False


__all__ = ["format_report", "run_real", "run_speed", "run_sweep"]
