"""``hetfaas bench kmeans``: LambdaML-style k-means, one allreduce per epoch, over each channel.

The application of FMI's evaluation (seed 001, after LambdaML): ``P`` functions each hold a
shard of a HIGGS-shaped data set (28 float32 features; generated here with a fixed seed as a
mixture of Gaussian blobs, about 1 MB per function as in LambdaML) and run 10 epochs of
k-means. Each epoch assigns the shard's points to the nearest centroid, then one allreduce of
the per-cluster sums and counts (``k x 29`` float64) gives every function the next centroids.

The functions run as the calls of one ``Executor().map(..., group=...)`` (each gets its
communicator); when the local pool cannot run ``P`` calls at once (one pinned core per call),
they run as plain processes instead (pinned rank r to core r mod cores), and the report says
so. Over ``mpi://`` they are MPI ranks of ``mpirun -np P``. Reported per channel: time per
epoch, the communication share of it, the cost of a run from the cost model
(:func:`hetfaas.collectives.model.run_cost`), and whether the final centroids agree with the
other channels and with a single-process run of the same algorithm on the whole data set.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import statistics
import sys
import time
import uuid
from typing import Any

import numpy as np

FEATURES = 28  # HIGGS
BYTES_PER_FUNCTION = 1 << 20  # LambdaML: 1 MB of HIGGS per function
SEED = 20210620


def make_shard(rank: int, points: int, k: int, seed: int = SEED) -> np.ndarray:
    """Shard ``rank``: ``points`` x 28 float32 drawn around ``k`` fixed centres (the centres
    depend only on ``seed``, so every shard samples the same mixture)."""
    centres = np.random.default_rng(seed).normal(0.0, 4.0, size=(k, FEATURES))
    rng = np.random.default_rng([seed, rank + 1])
    labels = rng.integers(0, k, size=points)
    noise = rng.normal(0.0, 1.0, size=(points, FEATURES))
    return (centres[labels] + noise).astype(np.float32)


def initial_centroids(first_shard: np.ndarray, k: int) -> np.ndarray:
    """The first ``k`` points of shard 0 (rank 0 broadcasts them)."""
    return first_shard[:k].astype(np.float64)


def local_step(shard: np.ndarray, centroids: np.ndarray) -> np.ndarray:
    """Per-cluster sums and counts of this shard: ``k x (28 + 1)`` float64."""
    x = shard.astype(np.float64, copy=False)
    d = (x * x).sum(1)[:, None] - 2.0 * x @ centroids.T + (centroids * centroids).sum(1)[None, :]
    nearest = d.argmin(1)
    k = centroids.shape[0]
    out = np.zeros((k, FEATURES + 1))
    np.add.at(out[:, :FEATURES], nearest, x)
    out[:, FEATURES] = np.bincount(nearest, minlength=k)
    return out


def update(stats: np.ndarray, old: np.ndarray) -> np.ndarray:
    """New centroids from summed statistics; an empty cluster keeps its centroid."""
    counts = stats[:, FEATURES]
    new = old.copy()
    full = counts > 0
    new[full] = stats[full, :FEATURES] / counts[full, None]
    return new


def single_process(peers: int, points: int, k: int, epochs: int) -> np.ndarray:
    """The same k-means on the whole data set in one process (the reference)."""
    data = np.concatenate([make_shard(r, points, k) for r in range(peers)])
    cent = initial_centroids(data[:points], k)
    for _ in range(epochs):
        cent = update(local_step(data, cent), cent)
    return cent


def kmeans_rank(points: int, k: int, epochs: int, comm: Any = None) -> dict[str, Any]:
    """One function of the group: its shard, ``epochs`` epochs, one allreduce each."""
    if comm is None:
        from ..collectives import current

        comm = current()
    shard = make_shard(comm.rank, points, k)
    cent = comm.bcast(initial_centroids(shard, k) if comm.rank == 0 else None, root=0)
    comm.barrier()
    epoch_s, comm_s = [], []
    for _ in range(epochs):
        t0 = time.perf_counter()
        stats = local_step(shard, cent)
        t1 = time.perf_counter()
        stats = comm.allreduce(stats)
        t2 = time.perf_counter()
        cent = update(stats, cent)
        epoch_s.append(time.perf_counter() - t0)
        comm_s.append(t2 - t1)
    return {"rank": comm.rank, "centroids": cent, "epoch_s": epoch_s, "comm_s": comm_s}


def _process_rank(rank: int, size: int, uri: str, group: str, args: tuple, conn: Any) -> None:
    from ..collectives import Communicator
    from .collectives import pin

    pin(rank)
    try:
        with Communicator(rank, size, group, uri, timeout_s=300) as comm:
            conn.send(("ok", kmeans_rank(*args, comm=comm)))
    except BaseException as exc:
        conn.send(("error", f"rank {rank}: {type(exc).__name__}: {exc}"))


def run_processes(uri: str, peers: int, args: tuple) -> list[dict[str, Any]]:
    ctx = mp.get_context("fork")
    group = f"kmeans-{uuid.uuid4().hex[:10]}"
    pipes = [ctx.Pipe(duplex=False) for _ in range(peers)]
    procs = [
        ctx.Process(
            target=_process_rank, args=(r, peers, uri, group, args, pipes[r][1]), daemon=True
        )
        for r in range(peers)
    ]
    for p in procs:
        p.start()
    out, errors = [], []
    for recv_end, _ in pipes:
        status, value = recv_end.recv() if recv_end.poll(600) else ("error", "no answer")
        (out if status == "ok" else errors).append(value)
    for p in procs:
        p.join(5)
        if p.is_alive():
            p.kill()
    if errors:
        raise RuntimeError("; ".join(errors))
    return out


def run_mpirun(peers: int, args: tuple) -> list[dict[str, Any]]:
    """The same functions as MPI ranks over ``mpi://`` (``mpirun -np P``)."""
    import subprocess

    cmd = ["timeout", "900", "mpirun", "--allow-run-as-root", "--oversubscribe", "-np",
           str(peers), sys.executable, "-m", "hetfaas.bench.kmeans", "--mpi-rank",
           *map(str, args)]  # fmt: skip
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=960)
    if proc.returncode != 0:
        raise RuntimeError(f"mpirun failed ({proc.returncode}): {proc.stderr[-1500:]}")
    for line in proc.stdout.splitlines():
        if line.startswith("["):
            ranks = json.loads(line)
            for r in ranks:
                r["centroids"] = np.asarray(r["centroids"])
            return ranks
    raise RuntimeError(f"mpirun printed no result: {proc.stdout[-500:]}")


def _mpi_rank(points: int, k: int, epochs: int) -> None:
    from mpi4py import MPI

    from ..collectives import Communicator

    world = MPI.COMM_WORLD
    with Communicator(world.rank, world.size, "kmeans-mpi", "mpi://", 300) as comm:
        mine = kmeans_rank(points, k, epochs, comm=comm)
        mine["centroids"] = mine["centroids"].tolist()
        everyone = comm.gather(mine, root=0)
    if world.rank == 0:
        print(json.dumps(everyone), flush=True)


def run_executor(ex: Any, uri: str, peers: int, args: tuple) -> list[dict[str, Any]]:
    from ..collectives.group import GroupSpec

    spec = GroupSpec("kmeans", channel=uri, timeout_s=300)
    items = [[a] * peers for a in args]
    return list(ex.map(kmeans_rank, *items, group=spec, timeout=900))


def run_kmeans(
    channels: list[str],
    peers: int,
    points: int,
    k: int,
    epochs: int,
    memory_mb: int = 1024,
    log: Any = print,
) -> dict[str, Any]:
    from ..collectives import model
    from . import servers as srv

    args = (points, k, epochs)
    res: dict[str, Any] = {
        "peers": peers,
        "points_per_function": points,
        "k": k,
        "epochs": epochs,
        "features": FEATURES,
        "memory_mb": memory_mb,
        "channels": {},
        "skipped": {},
    }
    t0 = time.perf_counter()
    reference = single_process(peers, points, k, epochs)
    res["single_process_s"] = time.perf_counter() - t0
    ex = None
    try:
        import hetfaas

        ex = hetfaas.Executor()
        from ..collectives.group import concurrent_calls

        fits = (concurrent_calls(ex.capacity, ex.resources) or 0) >= peers
    except Exception as exc:  # no pool here: processes of our own
        fits, res["executor_note"] = False, str(exc)
    res["runner"] = "Executor.map(group=...)" if fits else "processes (pool too small)"
    finals: dict[str, np.ndarray] = {}
    try:
        with srv.start(channels) as up:
            res["skipped"].update(up.skipped)
            for name, uri in up.uris.items():
                log(f"k-means over {name}, P={peers} ...")
                t = time.perf_counter()
                if name == "mpi":  # MPI ranks are mpirun's processes
                    try:
                        ranks = run_mpirun(peers, args)
                    except RuntimeError as exc:
                        res["skipped"]["mpi"] = str(exc)
                        continue
                elif fits:
                    ranks = run_executor(ex, uri, peers, args)
                else:
                    ranks = run_processes(uri, peers, args)
                wall = time.perf_counter() - t
                ranks.sort(key=lambda r: r["rank"])
                epoch = [statistics.median(r["epoch_s"]) for r in ranks]
                comm = [statistics.median(r["comm_s"]) for r in ranks]
                run_s = max(sum(r["epoch_s"]) for r in ranks)
                cost = model.run_cost(
                    name,
                    peers,
                    run_s,
                    {"allreduce": epochs, "bcast": 1, "barrier": 1},
                    memory_gb=memory_mb / 1024,
                )
                same_everywhere = all(
                    np.array_equal(r["centroids"], ranks[0]["centroids"]) for r in ranks
                )
                finals[name] = ranks[0]["centroids"]
                res["channels"][name] = {
                    "epoch_s": max(epoch),
                    "comm_s": max(comm),
                    "comm_share": max(comm) / max(epoch),
                    "run_s": run_s,
                    "wall_s": wall,
                    "cost_usd": cost,
                    "ranks_agree": same_everywhere,
                    "matches_single_process": bool(
                        np.allclose(finals[name], reference, rtol=1e-9, atol=1e-9)
                    ),
                }
    finally:
        if ex is not None:
            ex.shutdown()
    names = list(finals)
    res["channels_agree"] = all(
        np.allclose(finals[a], finals[names[0]], rtol=1e-9, atol=1e-9) for a in names
    )
    res["reference_centroids"] = reference.round(6).tolist()
    return res


def format_table(res: dict[str, Any]) -> str:
    lines = [
        f"k-means: P={res['peers']} functions x {res['points_per_function']} points x "
        f"{res['features']} features, k={res['k']}, {res['epochs']} epochs; "
        f"functions via {res['runner']}; single process: {res['single_process_s']:.2f} s",
        "",
        "| channel | time/epoch | communication/epoch | comm. share | cost per run (USD) | "
        "centroids = single process |",
        "|---|---|---|---|---|---|",
    ]
    for name, row in res["channels"].items():
        lines.append(
            f"| {name} | {row['epoch_s'] * 1e3:.1f} ms | {row['comm_s'] * 1e3:.2f} ms | "
            f"{row['comm_share']:.0%} | {row['cost_usd']['total']:.3g} | "
            f"{'yes' if row['matches_single_process'] and row['ranks_agree'] else 'NO'} |"
        )
    lines.append(
        f"final centroids agree across channels: {'yes' if res['channels_agree'] else 'NO'}"
    )
    for k, v in res["skipped"].items():
        lines.append(f"skipped {k}: {v}")
    return "\n".join(lines)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--channels",
        default="file,tcp,redis,s3,mpi",
        help="comma list of file, tcp, redis, s3, mpi (default: all; mpi runs under mpirun)",
    )
    parser.add_argument("--peers", type=int, default=2, help="functions (default 2)")
    parser.add_argument(
        "--points",
        type=int,
        default=BYTES_PER_FUNCTION // (4 * FEATURES),
        help="points per function (default: 1 MB of float32, as LambdaML)",
    )
    parser.add_argument("--k", type=int, default=10, help="clusters (default 10)")
    parser.add_argument("--epochs", type=int, default=10, help="epochs (default 10)")
    parser.add_argument(
        "--memory-mb",
        type=int,
        default=1024,
        help="function memory for the cost (default 1024, LambdaML's)",
    )
    parser.add_argument("--quick", action="store_true", help="2,000 points, file and tcp")
    parser.add_argument("--json", action="store_true", help="print one JSON object")


def run(args: argparse.Namespace) -> int:
    from ..exceptions import ConfigurationError

    channels = [c.strip() for c in args.channels.split(",") if c.strip()]
    unknown = sorted(set(channels) - {"file", "tcp", "redis", "s3", "mpi"})
    if unknown:
        raise ConfigurationError(
            f"unknown channel(s) {', '.join(unknown)}; known: file, tcp, redis, s3, mpi"
        )
    for name in ("peers", "points", "k", "epochs", "memory_mb"):
        if getattr(args, name) < 1:
            raise ConfigurationError(f"--{name.replace('_', '-')} must be >= 1")
    if args.k > args.points:
        raise ConfigurationError("--k must not exceed --points (initial centroids are points)")
    points = args.points
    if args.quick:
        points = min(points, 2000)
        if args.channels == "file,tcp,redis,s3,mpi":
            channels = ["file", "tcp"]
    log = (lambda msg: print(msg, file=sys.stderr)) if args.json else print
    res = run_kmeans(channels, args.peers, points, args.k, args.epochs, args.memory_mb, log)
    if args.json:
        json.dump(res, sys.stdout, indent=1, default=str)
        sys.stdout.write("\n")
    else:
        print(format_table(res))
    ok = res["channels_agree"] and all(
        r["matches_single_process"] and r["ranks_agree"] for r in res["channels"].values()
    )
    return 0 if ok else 1


if __name__ == "__main__":  # one rank of run_mpirun, under mpirun
    if sys.argv[1:2] == ["--mpi-rank"]:
        _mpi_rank(*(int(x) for x in sys.argv[2:5]))
