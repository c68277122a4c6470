"""``hetfaas bench elastic-train``: data-parallel SGD that loses a member and takes one in.

An MLP (64-64-10, ReLU, softmax cross-entropy) learns scikit-learn's digits (8x8 images,
a fixed 80/20 split by a seeded permutation) by synchronous data-parallel SGD with momentum.
Each step's global batch (``--batch`` samples drawn by the step number) is split over the
members by rank; each sums the gradient of its part, and one allreduce gives every member the
sum. A step's batch depends only on the step, so the training does not depend on how many
members share it: losing or gaining one changes only the order of a float sum.

The members are calls on the local pool, one elastic group
(:class:`~hetfaas.collectives.elastic_group.ElasticGroup`), over each channel in turn
(``tcp://`` with an in-process rendezvous server, ``redis://`` with a redis-server started
here), two runs each:

- (a) ``--members`` members, no fault;
- (b) the same, but once step ``--kill-at`` is committed the driver sends SIGKILL to the
  worker process of the member of rank ``--kill-rank`` (half a commit interval later, so that
  steps are rolled back), and once step ``--join-at`` is committed it adds one member, which
  is taken in at the next commit.

Reported: the test accuracy of (a), (b) and of the same SGD in this process; the steps rolled
back and run in all; each re-formation of (b) with its cause and sizes, the time from the
kill (or the join request, which includes the joiner's worker starting) to the first step of
the new group by the driver's clock, and the members' own time from noticing it to that step.
The target: (b) finishes and its accuracy is within 1 point of (a).

``--step-ms`` pads each step to at least that long (the forward and backward pass of this MLP
take about 2 ms here): it stands in for a larger model, so that the kill lands mid-training
and a re-formation is seen against a step of realistic length.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
import time
from typing import Any

import numpy as np

HIDDEN = 64
CLASSES = 10
FEATURES = 64
SPLIT_SEED = 0  # the fixed 80/20 split


def load_split() -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Digits scaled to [0, 1]: train X, y (80%), test X, y (20%), by a fixed permutation."""
    from sklearn.datasets import load_digits

    digits = load_digits()
    x, y = digits.data / 16.0, digits.target
    perm = np.random.default_rng(SPLIT_SEED).permutation(len(y))
    n = int(0.8 * len(y))
    return x[perm[:n]], y[perm[:n]], x[perm[n:]], y[perm[n:]]


def init_params(seed: int) -> np.ndarray:
    """He-initialised weights and zero biases, as one flat vector (one allreduce a step)."""
    rng = np.random.default_rng(seed)
    w1 = rng.normal(0.0, np.sqrt(2.0 / FEATURES), (FEATURES, HIDDEN))
    w2 = rng.normal(0.0, np.sqrt(2.0 / HIDDEN), (HIDDEN, CLASSES))
    return np.concatenate([w1.ravel(), np.zeros(HIDDEN), w2.ravel(), np.zeros(CLASSES)])


def _unpack(flat: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    a, b = FEATURES * HIDDEN, FEATURES * HIDDEN + HIDDEN
    c = b + HIDDEN * CLASSES
    w1, w2 = flat[:a].reshape(FEATURES, HIDDEN), flat[b:c].reshape(HIDDEN, CLASSES)
    return w1, flat[a:b], w2, flat[c:]


def grad_sum(flat: np.ndarray, x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """The gradient of the summed cross-entropy over the samples ``x``, ``y``."""
    if len(y) == 0:
        return np.zeros_like(flat)
    w1, b1, w2, b2 = _unpack(flat)
    h = x @ w1 + b1
    a = np.maximum(h, 0.0)
    z = a @ w2 + b2
    z -= z.max(1, keepdims=True)
    p = np.exp(z)
    p /= p.sum(1, keepdims=True)
    p[np.arange(len(y)), y] -= 1.0
    dh = (p @ w2.T) * (h > 0)
    return np.concatenate([(x.T @ dh).ravel(), dh.sum(0), (a.T @ p).ravel(), p.sum(0)])


def accuracy(flat: np.ndarray, x: np.ndarray, y: np.ndarray) -> float:
    w1, b1, w2, b2 = _unpack(flat)
    return float(((np.maximum(x @ w1 + b1, 0.0) @ w2 + b2).argmax(1) == y).mean())


def batch_of(step: int, n: int, batch: int, seed: int) -> np.ndarray:
    """The global batch of ``step``: the same whoever computes it."""
    return np.random.default_rng([seed, step]).choice(n, batch, replace=False)


def sgd(state: dict[str, np.ndarray], g: np.ndarray, lr: float, momentum: float) -> None:
    state["mom"] = momentum * state["mom"] + g
    state["params"] = state["params"] - lr * state["mom"]


def single_process(cfg: dict[str, Any]) -> np.ndarray:
    """The same SGD in this process on the whole batch (the reference)."""
    x, y = cfg["x"], cfg["y"]
    state = {"params": init_params(cfg["seed"]), "mom": np.zeros(0)}
    state["mom"] = np.zeros_like(state["params"])
    for i in range(cfg["steps"]):
        idx = batch_of(i, len(y), cfg["batch"], cfg["seed"])
        sgd(state, grad_sum(state["params"], x[idx], y[idx]) / cfg["batch"], cfg["lr"], 0.9)
    return state["params"]


def train_member(cfg: dict[str, Any], comm: Any) -> dict[str, Any]:
    """One member: its part of each step's batch, one allreduce, the same update everywhere."""
    x, y = cfg["x"], cfg["y"]
    pace = cfg["step_ms"] / 1e3
    steps_seen: list[tuple[int, int]] = []  # (step, group size) of each step this member ran

    def step(state: dict[str, np.ndarray], i: int) -> dict[str, np.ndarray]:
        t0 = time.perf_counter()
        idx = batch_of(i, len(y), cfg["batch"], cfg["seed"])[comm.rank :: comm.size]
        total = comm.allreduce(grad_sum(state["params"], x[idx], y[idx]))
        sgd(state, total / cfg["batch"], cfg["lr"], 0.9)
        steps_seen.append((i, comm.size))
        time.sleep(max(0.0, pace - (time.perf_counter() - t0)))
        return state

    params = init_params(cfg["seed"])
    final = comm.run(step, {"params": params, "mom": np.zeros_like(params)}, cfg["steps"],
                     commit_every=cfg["commit_every"])  # fmt: skip
    return {
        "member": comm.member,
        "pid": os.getpid(),
        "params": None if final is None else final["params"],
        "steps_run": comm.steps_run,
        "first_step": steps_seen[0][0] if steps_seen else None,
        "reformations": [r.as_dict() for r in comm.reformations],
    }


def run_once(ex: Any, uri: str, cfg: dict[str, Any], faults: bool) -> dict[str, Any]:
    """One training run over ``uri``; with ``faults``, the kill and the join."""
    from ..collectives import GroupSpec
    from ..collectives.elastic_group import ElasticGroup
    from ..exceptions import WorkerDied

    spec = GroupSpec("elastic-train", channel=uri, timeout_s=30, min_size=1,
                     max_size=cfg["members"])  # fmt: skip
    events: dict[str, float] = {}
    t0 = time.perf_counter()
    with ElasticGroup(ex, train_member, spec) as group:
        group.add(cfg, n=cfg["members"])
        if faults:
            group.wait_for_step(cfg["kill_at"], timeout=60)
            time.sleep(cfg["commit_every"] / 2 * cfg["step_ms"] / 1e3)
            victim = group.members()[cfg["kill_rank"]]
            events["kill"] = time.time()
            os.kill(victim.pid, signal.SIGKILL)
            group.wait_for_step(cfg["join_at"], timeout=60)
            events["join"] = time.time()
            group.add(cfg)
        results = group.results(timeout=120)
        gens = group.generations()
    wall = time.perf_counter() - t0
    done = [r for r in results if isinstance(r, dict) and r["params"] is not None]
    died = [r for r in results if isinstance(r, WorkerDied)]
    other = [r for r in results if isinstance(r, BaseException) and not isinstance(r, WorkerDied)]
    if other:
        raise other[0]
    if not done:
        raise RuntimeError(f"no member finished the run over {uri}: {results}")
    params = done[0]["params"]
    agree = all(np.array_equal(r["params"], params) for r in done)
    reforms = []
    for g in gens[1:]:
        seen = [rec for r in done for rec in r["reformations"] if rec["generation"] == g.number]
        if not seen:
            continue
        start = events.get("kill") if g.cause == "failure" else events.get("join")
        resumed = max(rec["resumed_at"] for rec in seen)
        rolled = [rec["rolled_back_steps"] for rec in seen if rec["rolled_back_steps"]]
        reforms.append({
            "generation": g.number, "cause": g.cause, "size_before": seen[0]["size_before"],
            "size": len(g.members), "event_to_first_step_s": None if start is None
            else resumed - start, "member_s": max(rec["duration_s"] for rec in seen),
            "rolled_back_steps": max(rolled, default=0),
        })  # fmt: skip
    joiners = [r for r in done if r["reformations"] and r["reformations"][0]["joined"]]
    return {
        "accuracy": accuracy(params, cfg["x_test"], cfg["y_test"]),
        "params": params,
        "wall_s": wall,
        "members_agree": agree,
        "finished": len(done),
        "killed": len(died),
        "generations": len(gens),
        "steps_run": sum(r["steps_run"] for r in done),
        "rolled_back_steps": sum(r["rolled_back_steps"] for r in reforms),
        "joiner_first_step": joiners[0]["first_step"] if joiners else None,
        "reformations": reforms,
    }


def run_bench(channels: list[str], cfg: dict[str, Any], log: Any = print) -> dict[str, Any]:
    import hetfaas

    from . import servers as srv

    x, y, x_test, y_test = load_split()
    cfg = {**cfg, "x": x, "y": y, "x_test": x_test, "y_test": y_test}
    ref = single_process(cfg)
    res: dict[str, Any] = {
        "config": {k: v for k, v in cfg.items() if not k.startswith(("x", "y"))},
        "train": len(y), "test": len(y_test),
        "single_process_accuracy": accuracy(ref, x_test, y_test),
        "channels": {}, "skipped": {},
    }  # fmt: skip
    with hetfaas.Executor() as ex, srv.start(channels) as up:
        res["skipped"].update(up.skipped)
        ex.warmup(cfg["members"])
        for name, uri in up.uris.items():
            row: dict[str, Any] = {}
            for label, faults in (("no_faults", False), ("faults", True)):
                log(f"elastic-train over {name}: {label.replace('_', ' ')} ...")
                row[label] = run_once(ex, uri, cfg, faults)
            a, b = row["no_faults"], row["faults"]
            row["matches_single_process"] = bool(np.allclose(a["params"], ref, atol=1e-8))
            row["delta_points"] = abs(a["accuracy"] - b["accuracy"]) * 100
            row["ok"] = bool(
                b["finished"] >= 2 and b["killed"] == 1 and b["joiner_first_step"] is not None
                and row["delta_points"] <= 1.0 and a["members_agree"] and b["members_agree"]
            )  # fmt: skip
            for run in (a, b):
                run.pop("params")
            res["channels"][name] = row
    return res


def format_report(res: dict[str, Any]) -> str:
    c = res["config"]
    lines = [
        f"elastic-train: MLP {FEATURES}-{HIDDEN}-{CLASSES} on digits ({res['train']} train / "
        f"{res['test']} test), {c['steps']} steps of batch {c['batch']}, commit every "
        f"{c['commit_every']}, steps padded to {c['step_ms']:g} ms; {c['members']} members; "
        f"(b) kills rank {c['kill_rank']} after step {c['kill_at']}, adds one after step "
        f"{c['join_at']}; single process: {res['single_process_accuracy']:.2%}",
        "",
        "| channel | run | accuracy | wall | generations | members killed | steps run by "
        "the members that finished | steps rolled back |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for name, row in res["channels"].items():
        for label, key in (("(a) no faults", "no_faults"), ("(b) kill + join", "faults")):
            r = row[key]
            lines.append(
                f"| {name} | {label} | {r['accuracy']:.2%} | {r['wall_s']:.1f} s | "
                f"{r['generations']} | {r['killed']} | {r['steps_run']} | "
                f"{r['rolled_back_steps']} |"
            )
    lines += ["", "Re-formations of (b):", "",
              "| channel | generation | cause | size | kill or join request -> first step "
              "| noticed -> first step (members) |", "|---|---|---|---|---|---|"]  # fmt: skip
    for name, row in res["channels"].items():
        for f in row["faults"]["reformations"]:
            since = f["event_to_first_step_s"]
            what = "kill" if f["cause"] == "failure" else "join request"
            lines.append(
                f"| {name} | {f['generation']} | {f['cause']} | {f['size_before']} -> "
                f"{f['size']} | {'-' if since is None else f'{since * 1e3:.0f} ms'} ({what}) | "
                f"{f['member_s'] * 1e3:.0f} ms |"
            )
    lines.append("")
    for name, row in res["channels"].items():
        lines.append(
            f"{name}: accuracy (b) within 1 point of (a): "
            f"{'yes' if row['delta_points'] <= 1.0 else 'NO'} ({row['delta_points']:.2f} points); "
            f"joiner's first step {row['faults']['joiner_first_step']}; (a) = single process: "
            f"{'yes' if row['matches_single_process'] else 'NO'}; "
            f"target met: {'yes' if row['ok'] else 'NO'}"
        )
    for k, v in res["skipped"].items():
        lines.append(f"skipped {k}: {v}")
    return "\n".join(lines)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    cores = len(os.sched_getaffinity(0))
    parser.add_argument("--channels", default="tcp,redis", help="comma list of tcp, redis")
    parser.add_argument(
        "--members", type=int, default=min(3, cores),
        help="members at the start (default: 3, or the cores if fewer)",
    )  # fmt: skip
    parser.add_argument("--steps", type=int, default=300, help="SGD steps (default 300)")
    parser.add_argument("--batch", type=int, default=64, help="global batch (default 64)")
    parser.add_argument("--lr", type=float, default=0.1, help="learning rate (default 0.1)")
    parser.add_argument("--commit-every", type=int, default=10, help="steps per commit")
    parser.add_argument(
        "--step-ms", type=float, default=10.0,
        help="pad each step to this long (default 10 ms; 0: no padding)",
    )  # fmt: skip
    parser.add_argument("--kill-at", type=int, default=None, help="default: steps / 5")
    parser.add_argument("--join-at", type=int, default=None, help="default: steps / 3")
    parser.add_argument("--kill-rank", type=int, default=0, help="rank killed (default 0)")
    parser.add_argument("--seed", type=int, default=0, help="weights and batches (default 0)")
    parser.add_argument("--json", action="store_true", help="print one JSON object")


def run(args: argparse.Namespace) -> int:
    from ..exceptions import ConfigurationError

    channels = [c.strip() for c in args.channels.split(",") if c.strip()]
    unknown = sorted(set(channels) - {"tcp", "redis"})
    if unknown:
        raise ConfigurationError(f"unknown channel(s) {', '.join(unknown)}; known: tcp, redis")
    cores = len(os.sched_getaffinity(0))
    if not 2 <= args.members <= cores:
        raise ConfigurationError(
            f"--members must be in [2, {cores}] (one core per member on the local pool; a "
            "member is killed and one added, so at least two)"
        )
    kill_at = args.steps // 5 if args.kill_at is None else args.kill_at
    join_at = args.steps // 3 if args.join_at is None else args.join_at
    if not 0 < kill_at < join_at < args.steps - args.commit_every:
        raise ConfigurationError(
            "need 0 < --kill-at < --join-at < steps - commit-every (so the joiner takes part)"
        )
    if not 0 <= args.kill_rank < args.members:
        raise ConfigurationError(f"--kill-rank must be in [0, {args.members})")
    cfg = {
        "members": args.members, "steps": args.steps, "batch": args.batch, "lr": args.lr,
        "commit_every": args.commit_every, "step_ms": args.step_ms, "kill_at": kill_at,
        "join_at": join_at, "kill_rank": args.kill_rank, "seed": args.seed,
    }  # fmt: skip
    log = (lambda msg: print(msg, file=sys.stderr)) if args.json else print
    res = run_bench(channels, cfg, log)
    if args.json:
        json.dump(res, sys.stdout, indent=1, default=str)
        sys.stdout.write("\n")
    else:
        print(format_report(res))
    return 0 if res["channels"] and all(r["ok"] for r in res["channels"].values()) else 1
