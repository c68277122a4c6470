"""``hetfaas bench ensemble``: ensemble training with the preprocessing shared (FLEET) or not.

Seed 003 (FLEET, MLSys'20; Pittman et al., SC'18): K small networks train in parallel
functions (a GPU share each where there is a GPU, a core each otherwise), fed by P CPU
functions that preprocess the training set (a shard of an epoch per batch, upsampled, rotated
and shifted at random, normalised; :mod:`.ensemble_model` holds that compute). Two modes of
the same training, side by side in one run, as :class:`hetfaas.Pipeline` runs:

- **shared**: one preprocessing stage (up to P calls at once) broadcast to K stateful trainer
  stages: each batch is preprocessed once and stored once;
- **private**: each member has its own preprocessing stage feeding its trainer (it preprocesses
  only the examples of its bag, the least a private stream must do);
- **single process**: the same code with no hetfaas, in this process (the baseline).

A member holds back a batch that arrives before the ones ahead of it, so each sees the stream
in its order and its final weights equal the baseline's: the bench checks that.

Reported: preprocessing CPU-seconds (the workers' own CPU time), wall time and the speedup;
per member its width, steps per batch, seconds working, blocked (no batch to train on),
queued (a batch, but no free core or GPU share), busy fraction; its accuracy, the soft vote's
and the baseline's; every edge's peak in flight against its bound; items at every stage.

Members of different widths do different work per batch. ``--balance steps`` measures one
training step of each (a call on a trainer's resources) and gives the faster ones more Adam
steps per batch (at most :data:`MAX_STEPS`), so that a slow member does not leave the others
waiting for the stream it holds back; ``none`` leaves one step each. The idle time of each
member is reported either way. A stateful stage's state (the weights and Adam moments) travels
through the data plane on every call (the executor keeps no worker affinity), so members are
small on a CPU.

Scales (``--scale``): ``ci`` (K=4 on digits, 6 epochs: a 2-core machine in well under 90 s),
``digits`` (K=5 members that each learn from a fixed half of the training set, 12 epochs,
seeds 0 1 2: the accuracy targets), ``gpu`` (100,000 generated 32x32 images, two hidden
layers, batches of 4,096, a quarter of the GPU per member and 8 steps per batch at least, so
that a call's compute outweighs its state's trip through the data plane; for
``scripts/gpu-check``, not yet run on a GPU).
"""

from __future__ import annotations

import argparse
import functools
import importlib.util
import json
import sys
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np

from . import ensemble_model as em
from .ensemble_report import (
    ENSEMBLE_FLOOR,
    ENSEMBLE_GAIN,
    MEMBER_FLOOR,
    evaluate_targets,
    format_report,
    plain,
)

MODES = ("shared", "private")
MAX_STEPS = 4  # the most steps per batch balancing gives a fast member
WARMUP_BATCHES_PER_WORKER = 2  # a discarded run first: imports and data loaded in each worker
# What each worker imports as it starts (those installed), so no call pays for the imports.
PRELOAD = ["numpy", "torch", "scipy.ndimage", "sklearn.datasets", "hetfaas.bench.ensemble_model"]


DIGITS = em.DataSpec()
UPSAMPLE_AND_AUGMENT = em.PrepSpec()


@dataclass(frozen=True)
class Scale:
    """One configuration of the bench (``--scale``; options override its fields): the
    members' ``widths`` (K of them), hidden ``depth``, ``bag`` fraction, learning rate and
    ``steps`` per batch; the stream (``data``, ``prep``, ``epochs``, ``batch``); the
    pipelines' edge ``bound`` and ``prep_workers`` (P, per preprocessing stage); ``balance``
    (``none`` or ``steps``); the trainers' ``device`` (``auto``: a GPU where the executor has
    one); which ``modes`` run and whether the single-process ``baseline`` does.
    """

    name: str
    widths: tuple[int, ...]
    depth: int = 1
    bag: float = 1.0
    epochs: int = 3
    batch: int = 64
    seeds: tuple[int, ...] = (0,)
    data: em.DataSpec = DIGITS
    prep: em.PrepSpec = UPSAMPLE_AND_AUGMENT
    lr: float = 3e-3
    steps: int = 1  # Adam steps per batch of every member (balancing multiplies them)
    balance: str = "none"
    bound: int = 4
    device: str = "auto"
    prep_workers: int | None = None  # None: the cores left by the trainers (all on a CPU)
    modes: tuple[str, ...] = MODES
    baseline: bool = True


SCALES = {
    "ci": Scale("ci", (32, 48, 64, 96), epochs=6),
    "digits": Scale("digits", (32, 48, 64, 96, 128), bag=0.5, epochs=12, seeds=(0, 1, 2)),
    "gpu": Scale(
        "gpu",
        (256, 384, 512, 768),
        depth=2,
        epochs=5,
        batch=4096,
        steps=8,
        balance="steps",
        bound=8,
        data=em.DataSpec("synthetic", 100_000, 32),
        prep=em.PrepSpec(upsample=1, rotate_deg=12.0, shift_px=2.0),
        lr=1e-3,
    ),
}


# ------------------------------------------------------------------------------ building


def trainer_resources(device: str, members: int) -> Any:
    """A core per trainer call on a CPU; a share of the GPU (1/K of it) on a GPU."""
    import hetfaas

    if device == "cuda":
        return hetfaas.Resources(gpus=1.0 / members if members > 1 else 1)
    return hetfaas.Resources(cpus=1)


def member_specs(cfg: Scale, seed: int, device: str, steps: list[int] | None = None) -> list[Any]:
    """The K members of a run of ``seed``: widths from ``cfg``, a seed each."""
    steps = steps or [1] * len(cfg.widths)
    return [
        em.MemberSpec(f"m{k}", w, cfg.depth, 1000 * seed + k, cfg.lr, cfg.bag, steps[k], device)
        for k, w in enumerate(cfg.widths)
    ]


def initial_states(cfg: Scale, specs: list[Any]) -> list[dict[str, Any]]:
    d = em.load_data(cfg.data)
    side = d.x_train.shape[1] * cfg.prep.upsample
    return [em.init_member(s, side * side, d.classes, len(d.y_train)) for s in specs]


def build_pipeline(
    mode: str,
    specs: list[Any],
    states: list[dict[str, Any]],
    prep_workers: int,
    resources: Any,
    bound: int,
) -> Any:
    """The pipeline of ``mode``: one preprocessing stage broadcast to the K trainers
    (``shared``), or one per trainer (``private``)."""
    from ..pipeline import SOURCE, Pipeline

    p = Pipeline(f"ensemble-{mode}", max_in_flight=bound)
    if mode == "shared":
        pre = p.stage(em.preprocess, name="pre", concurrency=(1, prep_workers))
        for spec, state in zip(specs, states, strict=True):
            p.stage(em.train_member, name=spec.name, inputs=[pre], state=state, resources=resources)
    elif mode == "private":
        for k, (spec, state) in enumerate(zip(specs, states, strict=True)):
            pre = p.stage(
                functools.partial(em.preprocess, member=spec),
                name=f"pre{k}",
                inputs=[SOURCE],
                concurrency=(1, prep_workers),
            )
            p.stage(em.train_member, name=spec.name, inputs=[pre], state=state, resources=resources)
    else:
        raise ValueError(f"unknown mode {mode!r}; known: {', '.join(MODES)}")
    return p


def balance_steps(ex: Any, cfg: Scale, specs: list[Any], resources: Any) -> list[float]:
    """Each member's training step, measured by one call on a trainer's resources."""
    batch = em.batch_plan(cfg.data, cfg.prep, 0, 1, cfg.batch)[0]
    return list(ex.options(resources=resources).submit(em.step_seconds, specs, batch).result())


def steps_for(step_s: list[float]) -> list[int]:
    """Steps per batch that even the members out: the slowest takes one, a member k times
    faster takes k (rounded, at most :data:`MAX_STEPS`)."""
    slowest = max(step_s)
    return [min(MAX_STEPS, max(1, round(slowest / s))) for s in step_s]


# ------------------------------------------------------------------------------ running


def _stage_row(s: Any) -> dict[str, Any]:
    items = max(1, s.items)
    return {
        "items": s.items,
        "failed": s.failed,
        "skipped": s.skipped,
        "cpu_s": s.cpu_s,
        "busy_s": s.busy_s,
        "compute_per_item_s": s.compute_s / items,
        "plane_per_item_s": (s.fetch_s + s.put_s) / items,
        "working_s": s.working_s,
        "blocked_s": s.blocked_s,
        "backpressure_s": s.backpressure_s,
        "queued_s": s.queued_s,
        "lifetime_s": s.lifetime_s,
        "utilisation": s.utilisation,
        "blocked_fraction": s.blocked_fraction,
        "idle_s": s.blocked_s + s.backpressure_s,
        "gpu_util_percent": s.gpu_util_percent,
        "peak_rss_mb": s.peak_rss_mb,
    }


def run_mode(
    ex: Any,
    mode: str,
    plan: list[Any],
    specs: list[Any],
    states: list[dict[str, Any]],
    prep_workers: int,
    resources: Any,
    bound: int,
    timeline: Path | None = None,
) -> dict[str, Any]:
    """One mode over the whole stream: its figures, checks and final member states."""
    p = build_pipeline(mode, specs, states, prep_workers, resources, bound)
    with p.run(plan, ex, keep_outputs=False) as run:
        run.check()
        stats = run.stats()
        finals = [run.state(s.name) for s in specs]
    n = len(plan)
    pre = [s.name for s in p.stages if s.name.startswith("pre")]
    stages = {name: _stage_row(s) for name, s in stats.stages.items()}
    trainers = [stages[s.name] for s in specs]
    pre_items = sum(stages[x]["items"] for x in pre)
    edges = [
        {
            "producer": e.producer,
            "consumer": e.consumer,
            "bound": e.bound,
            "peak_in_flight": e.peak_in_flight,
            "items": e.items,
        }
        for e in stats.edges
    ]
    gpu = [t["gpu_util_percent"] for t in trainers if t["gpu_util_percent"] is not None]
    row: dict[str, Any] = {
        "mode": mode,
        "wall_s": stats.wall_s,
        "items_in": stats.items_in,
        "prep_cpu_s": sum(stages[x]["cpu_s"] for x in pre),
        "prep_calls": pre_items,
        "prep_per_batch_s": sum(stats.stages[x].compute_s for x in pre) / max(1, pre_items),
        "step_per_batch_s": float(np.mean([t["compute_per_item_s"] for t in trainers])),
        "trainer_call_s": float(np.mean([t["busy_s"] / max(1, t["items"]) for t in trainers])),
        "trainer_plane_s": float(np.mean([t["plane_per_item_s"] for t in trainers])),
        "trainer_blocked_fraction": float(np.mean([t["blocked_fraction"] for t in trainers])),
        "trainer_busy_fraction": float(np.mean([t["utilisation"] for t in trainers])),
        "gpu_util_percent": float(np.mean(gpu)) if gpu else None,
        "critical_path_s": stats.critical_path_s,
        "stages": stages,
        "edges": edges,
        "bound_ok": all(e["peak_in_flight"] <= e["bound"] for e in edges),
        "items_ok": stats.items_in == n
        and all(s["items"] == n and not s["failed"] and not s["skipped"] for s in stages.values())
        and all(e["items"] == n for e in edges),
        "in_order": all(f["next"] == n and not f["pending"] for f in finals),
        "states": finals,
        "stats": stats,
    }
    if timeline is not None:
        row["timeline"] = stats.plot_timeline(
            timeline, f"ensemble, {mode} preprocessing: calls per worker ({stats.wall_s:.1f} s)"
        )
    return row


def max_weight_diff(a: list[dict[str, Any]], b: list[dict[str, Any]]) -> float:
    """The largest difference between the weights of two sets of members."""
    return max(
        float((pa.cpu() - pb.cpu()).abs().max())
        for sa, sb in zip(a, b, strict=True)
        for pa, pb in zip(sa["params"], sb["params"], strict=True)
    )


def accuracies(states: list[dict[str, Any]], x: np.ndarray, y: np.ndarray) -> dict[str, Any]:
    """Each member's test accuracy, the soft vote's, and the accuracy targets' verdict."""
    probs = [em.predict(s, x) for s in states]
    members = [em.accuracy(p, y) for p in probs]
    ens = em.accuracy(em.soft_vote(probs), y)
    mean = float(np.mean(members))
    return {
        "members": members,
        "mean": mean,
        "min": min(members),
        "ensemble": ens,
        "gain": ens - mean,
        "members_ok": min(members) >= MEMBER_FLOOR,
        "ensemble_ok": ens >= max(ENSEMBLE_FLOOR, mean + ENSEMBLE_GAIN) - 1e-12,
    }


def resolve_device(cfg: Scale, ex: Any) -> str:
    if cfg.device != "auto":
        return cfg.device
    return "cuda" if ex.capacity.gpus >= 1 else "cpu"


def run_ensemble(cfg: Scale, out: Path | None = None, log: Any = print) -> dict[str, Any]:
    """The whole bench for ``cfg``: per seed the baseline, then each mode (see the module's
    doc). Returns the figures; each mode's row also holds its ``stats`` (the pipeline's
    :class:`~hetfaas.pipeline.PipelineStats`) and the members' final ``states``
    (:func:`~hetfaas.bench.ensemble_report.plain` leaves those out for JSON)."""
    import torch  # imported here first so that the pool's workers preload it

    import hetfaas

    from .. import machine

    torch.set_num_threads(1)
    started = time.perf_counter()
    res: dict[str, Any] = {"scale": cfg.name, "config": asdict(cfg), "seeds": []}
    preload = [m for m in PRELOAD if importlib.util.find_spec(m.split(".")[0]) is not None]
    with hetfaas.Executor(preload=preload) as ex:
        ex.warmup()
        cap = ex.capacity
        device = resolve_device(cfg, ex)
        k = len(cfg.widths)
        resources = trainer_resources(device, k)
        cores = int(cap.cpus)
        pw = cfg.prep_workers or (max(1, cores - k) if device == "cuda" else cores)
        res.update(
            device=device,
            cores=cores,
            gpus=cap.gpus,
            prep_workers=pw,
            members=k,
            trainer_resources=repr(resources),
        )
        steps, step_s = [cfg.steps] * k, None
        if cfg.balance == "steps":
            step_s = balance_steps(ex, cfg, member_specs(cfg, 0, device), resources)
            steps = [cfg.steps * n for n in steps_for(step_s)]
        res.update(balance=cfg.balance, step_s=step_s, steps=steps)
        xt, yt = em.test_set(cfg.data, cfg.prep)
        warm = em.batch_plan(cfg.data, cfg.prep, 0, 1, cfg.batch)[
            : WARMUP_BATCHES_PER_WORKER * cores
        ]
        for i, seed in enumerate(cfg.seeds):
            specs = member_specs(cfg, seed, device, steps)
            plan = em.batch_plan(cfg.data, cfg.prep, seed, cfg.epochs, cfg.batch)
            row: dict[str, Any] = {
                "seed": seed,
                "batches": len(plan),
                "members": [asdict(s) for s in specs],
                "modes": {},
            }
            if cfg.baseline:
                log(f"seed {seed}: single process, {len(plan)} batches x {k} members ...")
                t0 = time.perf_counter()
                base, phases = em.train_single_process(plan, initial_states(cfg, specs))
                row["baseline"] = {
                    "wall_s": time.perf_counter() - t0,
                    **phases,
                    "accuracy": accuracies(base, xt, yt),
                }
            for mode in cfg.modes:
                log(f"seed {seed}: {mode} preprocessing through the pipeline ...")
                run_mode(
                    ex, mode, warm, specs, initial_states(cfg, specs), pw, resources, cfg.bound
                )  # a warm-up run, discarded
                png = out / f"ensemble_timeline_{mode}.png" if out is not None and i == 0 else None
                m = run_mode(
                    ex, mode, plan, specs, initial_states(cfg, specs), pw, resources, cfg.bound, png
                )
                m["accuracy"] = accuracies(m["states"], xt, yt)
                if cfg.baseline:
                    m["max_weight_diff_vs_baseline"] = max_weight_diff(m["states"], base)
                row["modes"][mode] = m
            derive(row)
            res["seeds"].append(row)
    res["run_s"] = time.perf_counter() - started
    res["machine"] = machine.describe(with_gpus=device == "cuda")
    return res


def derive(row: dict[str, Any]) -> None:
    """The figures of one seed that compare the modes."""
    modes = row["modes"]
    if "shared" in modes and "private" in modes:
        sh, pr = modes["shared"], modes["private"]
        row["cpu_ratio"] = pr["prep_cpu_s"] / sh["prep_cpu_s"] if sh["prep_cpu_s"] else None
        row["speedup"] = pr["wall_s"] / sh["wall_s"] if sh["wall_s"] else None
    first = modes.get("shared") or next(iter(modes.values()), None)
    if first is not None:
        step = first["step_per_batch_s"]
        row["prep_vs_step"] = first["prep_per_batch_s"] / step if step else None
        row["blocked"] = first["trainer_blocked_fraction"]
        busy = first["gpu_util_percent"]
        row["busy"] = busy / 100 if busy is not None else first["trainer_busy_fraction"]


# ------------------------------------------------------------------------------ command line


def _ints(text: str) -> tuple[int, ...]:
    return tuple(int(x) for x in text.replace(",", " ").split())


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--scale",
        choices=sorted(SCALES),
        default="ci",
        help="ci (K=4, 6 epochs), digits (K=5, 12 epochs, seeds 0 1 2) or gpu",
    )
    p.add_argument("--seeds", type=int, nargs="+", default=None, help="run seeds (the scale's)")
    p.add_argument("--widths", type=_ints, default=None, help="member widths, e.g. 32,64,128")
    p.add_argument("--depth", type=int, default=None, help="hidden layers per member")
    p.add_argument(
        "--bag",
        type=float,
        default=None,
        help="the fraction of the training set each member learns from (0, 1]",
    )
    p.add_argument("--epochs", type=int, default=None)
    p.add_argument("--batch", type=int, default=None, help="examples per batch")
    p.add_argument(
        "--steps",
        type=int,
        default=None,
        help="Adam steps per batch of every member (the scale's: 8 on a GPU, else 1)",
    )
    p.add_argument("--samples", type=int, default=None, help="size of the generated data set")
    p.add_argument(
        "--prep-workers",
        type=int,
        default=None,
        help="P: preprocessing calls at once per stage (the free cores)",
    )
    p.add_argument("--bound", type=int, default=None, help="items in flight per edge")
    p.add_argument(
        "--balance",
        choices=("none", "steps"),
        default=None,
        help="steps: faster members take more steps per batch",
    )
    p.add_argument("--device", choices=("auto", "cpu", "cuda"), default=None)
    p.add_argument("--modes", default=None, help="comma list of shared, private")
    p.add_argument("--no-baseline", action="store_true", help="skip the single-process run")
    p.add_argument(
        "--out", type=Path, default=None, help="write ensemble.json and the timeline PNGs there"
    )
    p.add_argument("--json", action="store_true", help="print the result as JSON")


def config_from(args: argparse.Namespace) -> Scale:
    """The scale with the options given on the command line."""
    from ..exceptions import ConfigurationError

    cfg = SCALES[args.scale]
    changes: dict[str, Any] = {}
    for name in (
        "widths",
        "depth",
        "bag",
        "epochs",
        "batch",
        "steps",
        "prep_workers",
        "bound",
        "balance",
        "device",
    ):
        value = getattr(args, name)
        if value is not None:
            changes[name] = value
    if args.seeds is not None:
        changes["seeds"] = tuple(args.seeds)
    if args.modes is not None:
        modes = tuple(m.strip() for m in args.modes.split(",") if m.strip())
        unknown = sorted(set(modes) - set(MODES))
        if unknown or not modes:
            raise ConfigurationError(f"--modes: unknown {unknown or modes}; known: shared, private")
        changes["modes"] = modes
    if args.samples is not None:
        if cfg.data.name != "synthetic":
            raise ConfigurationError("--samples sizes the generated data set (--scale gpu)")
        changes["data"] = replace(cfg.data, samples=args.samples)
    if args.no_baseline:
        changes["baseline"] = False
    cfg = replace(cfg, **changes)
    if not cfg.widths or min(cfg.widths) < 1:
        raise ConfigurationError("--widths: one positive width per member")
    for name in ("depth", "epochs", "batch", "steps", "bound"):
        if getattr(cfg, name) < 1:
            raise ConfigurationError(f"--{name} must be >= 1")
    if cfg.prep_workers is not None and cfg.prep_workers < 1:
        raise ConfigurationError("--prep-workers must be >= 1")
    if not 0 < cfg.bag <= 1:
        raise ConfigurationError(f"--bag must be in (0, 1], got {cfg.bag}")
    return cfg


def _command_s() -> float:
    """Seconds since this process started (the whole command, imports included)."""
    import psutil

    return time.time() - psutil.Process().create_time()


def run(args: argparse.Namespace) -> int:
    cfg = config_from(args)
    log = (
        (lambda msg: print(msg, file=sys.stderr, flush=True))
        if args.json
        else (lambda msg: print(msg, flush=True))
    )
    if args.out is not None:
        args.out.mkdir(parents=True, exist_ok=True)
    res = run_ensemble(cfg, args.out, log)
    res["command_s"] = _command_s()
    res["targets"] = evaluate_targets(res)
    data = plain(res)
    if args.out is not None:
        path = args.out / "ensemble.json"
        from .report import json_default

        path.write_text(json.dumps(data, indent=1, default=json_default))
        log(
            f"wrote {path}"
            + "".join(
                f", {m['timeline']}" for m in res["seeds"][0]["modes"].values() if "timeline" in m
            )
        )
    if args.json:
        from .report import json_default

        print(
            json.dumps(
                {k: v for k, v in data.items() if k != "machine"}, indent=1, default=json_default
            )
        )
    else:
        print(format_report(res))
    sound = all(
        m["items_ok"] and m["bound_ok"] and m["in_order"]
        for r in res["seeds"]
        for m in r["modes"].values()
    )
    return 0 if sound else 1


if __name__ == "__main__":
    parser = argparse.ArgumentParser(prog="python -m hetfaas.bench.ensemble")
    add_arguments(parser)
    sys.exit(run(parser.parse_args()))
