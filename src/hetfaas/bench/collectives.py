"""``hetfaas bench collectives``: latency and bandwidth of each channel next to raw baselines.

One run, side by side: every channel (file, direct TCP, Redis, S3, MPI) against the floor
under it, measured the same way in the same run:

- point to point: a ping-pong between two peer processes (``send`` then ``recv`` of ``bytes``
  below 64 KiB, of a uint8 array from 64 KiB up), next to a raw TCP ping-pong (``TCP_NODELAY``
  sockets, the same bytes), a raw Redis SET+GET and a raw S3 put+get (one client, the hand-off
  without a second process);
- allreduce of float32 arrays vs message size and vs the number of peers, next to mpi4py's
  ``Allreduce`` on OpenMPI restricted to TCP (``--mca btl tcp,self``), which also runs our
  ``mpi://`` channel in the same launch.

Peers are processes (forked; ``mpirun`` for MPI). Times are medians. The targets of issue 4
are printed as ratios: direct TCP small send/recv within 1.5x the raw ping-pong, Redis within
1.5x raw SET+GET (one message: half our round trip), allreduce of 64 MB at P=4 over TCP within
1.5x OpenMPI's. ``--calibrate`` fits each channel's per-message overhead and bandwidth
(:func:`hetfaas.collectives.model.fit_profile`) and writes the file the cost model loads.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import multiprocessing as mp
import os
import shutil
import socket
import statistics
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from typing import Any

import numpy as np

from .. import machine

CHANNELS = ("file", "tcp", "redis", "s3", "mpi")
_UNITS = {"": 1, "B": 1, "K": 1 << 10, "KB": 1 << 10, "M": 1 << 20, "MB": 1 << 20}


def parse_size(text: str) -> int:
    t = text.strip().upper()
    for unit in sorted(_UNITS, key=len, reverse=True):
        if unit and t.endswith(unit):
            return int(float(t[: -len(unit)]) * _UNITS[unit])
    return int(t)


def fmt_size(n: int) -> str:
    for unit, scale in (("M", 1 << 20), ("K", 1 << 10)):
        if n >= scale and n % scale == 0:
            return f"{n // scale}{unit}"
    return f"{n}B"


def iterations(nbytes: int, quick: bool) -> tuple[int, int]:
    """(warm-up, measured) repetitions: many for small messages, few for large ones."""
    if nbytes <= 64 << 10:
        n = 200
    elif nbytes <= 1 << 20:
        n = 30
    elif nbytes <= 16 << 20:
        n = 8
    else:
        n = 4
    if quick:
        n = max(3, n // 5)
    return (1 if nbytes > 1 << 20 else 3), n


_CPUS = sorted(os.sched_getaffinity(0))


def pin(rank: int) -> None:
    """Put rank ``r`` of a benchmark on core ``r mod cores`` (ours and the raw baselines alike):
    two processes on one vCPU hand off in ~15 µs, on two in ~90 µs on a VM, so unpinned
    runs mix both and ratios between them mean little."""
    if PIN:
        os.sched_setaffinity(0, {_CPUS[rank % len(_CPUS)]})


PIN = True


@contextlib.contextmanager
def pinned(rank: int) -> Iterator[None]:
    """This process on rank ``rank``'s core for the block."""
    before = os.sched_getaffinity(0)
    pin(rank)
    try:
        yield
    finally:
        os.sched_setaffinity(0, before)


def _median_s(fn: Any, warm: int, n: int) -> float:
    for _ in range(warm):
        fn()
    times = []
    for _ in range(n):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


# --- our channels: peer processes ---------------------------------------------------------------


def pingpong_payload(nbytes: int) -> Any:
    """What a ping-pong moves: ``bytes`` below 64 KiB (the raw ping-pong's payload: the
    channel's own cost, not an array's pickling), a uint8 array from 64 KiB up (bulk data as
    users send it, out of band without a copy into the pickle stream)."""
    if nbytes < 64 << 10:
        return bytes(nbytes)
    return np.ones(nbytes, dtype=np.uint8)


def _peer(
    rank: int, size: int, uri: str, group: str, plan: list[Any], conn: Any, timeout_s: float
) -> None:
    from ..collectives import Communicator

    pin(rank)
    out: dict[str, float] = {}
    try:
        with Communicator(rank, size, group, uri, timeout_s=timeout_s) as comm:
            for op, nbytes, warm, n in plan:
                comm.barrier()
                if op == "pingpong":
                    buf = pingpong_payload(nbytes)
                    if rank == 0:

                        def step(buf: Any = buf) -> None:
                            comm.send(buf, 1)
                            comm.recv(1)

                        out[f"pingpong/{nbytes}"] = _median_s(step, warm, n)
                    elif rank == 1:
                        for _ in range(warm + n):
                            comm.send(comm.recv(0), 0)
                else:
                    arr = np.ones(max(nbytes // 4, 1), dtype=np.float32)
                    t = _median_s(lambda arr=arr: comm.allreduce(arr), warm, n)
                    out[f"allreduce/{nbytes}"] = t
        conn.send(("ok", out) if rank == 0 else ("ok", {}))
    except BaseException as exc:
        conn.send(("error", f"rank {rank}: {type(exc).__name__}: {exc}"))


def run_peers(uri: str, size: int, plan: list[Any], op_timeout_s: float = 120) -> dict[str, float]:
    """Run ``plan`` on ``size`` forked peer processes over ``uri``; rank 0's medians. Each
    operation has ``op_timeout_s``; the whole plan at most as long as all of them in a row."""
    timeout_s = op_timeout_s * (2 + sum(warm + n for _, _, warm, n in plan))
    ctx = mp.get_context("fork")
    group = f"bench-{uuid.uuid4().hex[:10]}"
    pipes = [ctx.Pipe(duplex=False) for _ in range(size)]
    procs = [
        ctx.Process(
            target=_peer, args=(r, size, uri, group, plan, pipes[r][1], op_timeout_s), daemon=True
        )
        for r in range(size)
    ]
    for p in procs:
        p.start()
    results: dict[str, float] = {}
    errors = []
    deadline = time.monotonic() + timeout_s
    for r, (recv_end, _) in enumerate(pipes):
        if not recv_end.poll(max(deadline - time.monotonic(), 0.1)):
            errors.append(f"rank {r}: no answer within {timeout_s:.0f} s")
            continue
        status, value = recv_end.recv()
        if status == "ok":
            results.update(value)
        else:
            errors.append(value)
    for p in procs:
        p.join(5)
        if p.is_alive():
            p.kill()
    if errors:
        raise RuntimeError("; ".join(errors))
    return results


# --- raw baselines ------------------------------------------------------------------------------


def _recv_exact(sock: socket.socket, buf: memoryview) -> None:
    got = 0
    while got < len(buf):
        n = sock.recv_into(buf[got:])
        if n == 0:
            raise ConnectionError("peer closed")
        got += n


def _echo(port: int, sizes: list[int]) -> None:
    pin(1)
    with socket.create_connection(("127.0.0.1", port)) as s:
        s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        for nbytes, warm, n in sizes:
            buf = memoryview(bytearray(nbytes))
            for _ in range(warm + n):
                _recv_exact(s, buf)
                s.sendall(buf)


def raw_tcp(sizes: list[int], quick: bool) -> dict[int, float]:
    """Round trip of ``n`` bytes over loopback TCP between two processes (the floor)."""
    plan = [(n, *iterations(n, quick)) for n in sizes]
    with socket.socket() as lsock:
        lsock.bind(("127.0.0.1", 0))
        lsock.listen(1)
        port = lsock.getsockname()[1]
        proc = mp.get_context("fork").Process(target=_echo, args=(port, plan), daemon=True)
        proc.start()
        conn, _ = lsock.accept()
    out = {}
    with conn, pinned(0):
        conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        for nbytes, warm, n in plan:
            data = bytes(nbytes)
            buf = memoryview(bytearray(nbytes))

            def step(data: bytes = data, buf: memoryview = buf) -> None:
                conn.sendall(data)
                _recv_exact(conn, buf)

            out[nbytes] = _median_s(step, warm, n)
    proc.join(10)
    return out


def raw_redis(uri: str, sizes: list[int], quick: bool) -> dict[int, float]:
    """SET then GET of ``n`` bytes by one redis-py client."""
    import redis

    client = redis.Redis.from_url(uri)
    out = {}
    for nbytes in sizes:
        value = bytes(nbytes)

        def step(value: bytes = value) -> None:
            client.set("bench:raw", value)
            client.get("bench:raw")

        with pinned(0):
            out[nbytes] = _median_s(step, *iterations(nbytes, quick))
    client.delete("bench:raw")
    client.close()
    return out


def raw_s3(info: dict[str, str], sizes: list[int], quick: bool) -> dict[int, float]:
    """put_object then get_object (body read) of ``n`` bytes by one boto3 client."""
    from .servers import s3_client

    client = s3_client(info)
    out = {}
    for nbytes in sizes:
        value = bytes(nbytes)

        def step(value: bytes = value) -> None:
            client.put_object(Bucket=info["bucket"], Key="bench-raw", Body=value)
            client.get_object(Bucket=info["bucket"], Key="bench-raw")["Body"].read()

        warm, n = iterations(nbytes, quick)
        with pinned(0):
            out[nbytes] = _median_s(step, warm, max(3, n // 4))
    return out


def run_mpi(size: int, sizes: list[int], quick: bool, ours: bool = True) -> dict[str, float]:
    """mpi4py ``Allreduce`` under ``mpirun --mca btl tcp,self`` (and our ``mpi://`` channel in
    the same launch): rank 0's medians, keyed ``raw/<bytes>`` and ``ours/<bytes>``."""
    cmd = [
        "timeout",
        "600",
        "mpirun",
        "--allow-run-as-root",
        "--oversubscribe",
        "--mca",
        "btl",
        "tcp,self",
        "-np",
        str(size),
        sys.executable,
        "-m",
        "hetfaas.bench.collectives",
        "--mpi-worker",
        ",".join(map(str, sizes)),
    ]
    if quick:
        cmd.append("--quick")
    if not ours:
        cmd.append("--raw-only")
    if not PIN:
        cmd.append("--no-pin")
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=660)
    if proc.returncode != 0:
        raise RuntimeError(f"mpirun failed ({proc.returncode}): {proc.stderr[-1500:]}")
    for line in proc.stdout.splitlines():
        if line.startswith("{"):
            return {k: float(v) for k, v in json.loads(line).items()}
    raise RuntimeError(f"mpirun printed no result: {proc.stdout[-500:]}")


def _mpi_worker(sizes: list[int], quick: bool, ours: bool) -> None:
    from mpi4py import MPI

    world = MPI.COMM_WORLD
    pin(world.rank)
    out: dict[str, float] = {}
    for nbytes in sizes:
        arr = np.ones(max(nbytes // 4, 1), dtype=np.float32)
        res = np.empty_like(arr)
        world.Barrier()
        out[f"raw/{nbytes}"] = _median_s(
            lambda arr=arr, res=res: world.Allreduce(arr, res, MPI.SUM), *iterations(nbytes, quick)
        )
    if ours:
        from ..collectives import Communicator

        with Communicator(world.rank, world.size, "bench-mpi", "mpi://", 300) as comm:
            for nbytes in sizes:
                arr = np.ones(max(nbytes // 4, 1), dtype=np.float32)
                comm.barrier()
                out[f"ours/{nbytes}"] = _median_s(
                    lambda arr=arr: comm.allreduce(arr), *iterations(nbytes, quick)
                )
    if world.rank == 0:
        print(json.dumps(out), flush=True)


# --- the run ------------------------------------------------------------------------------------


def run_collectives(
    channels: list[str],
    sizes: list[int],
    peers: list[int],
    quick: bool = False,
    log: Any = print,
    op_timeout_s: float = 120.0,
) -> dict[str, Any]:
    """Measure everything; a plain dict (JSON-ready) with the medians in seconds. A case that
    fails (a peer timing out after ``op_timeout_s``) is recorded under ``failed``."""
    from . import servers as srv

    res: dict[str, Any] = {
        "machine": machine.describe(),
        "sizes": sizes,
        "peers": peers,
        "pingpong": {},
        "allreduce": {},
        "raw": {},
        "skipped": {},
        "failed": {},
    }
    with srv.start(channels) as up:
        res["skipped"].update(up.skipped)
        log(
            f"channels: {', '.join(up.uris) or 'none'}"
            + "".join(f"; {k} skipped ({v})" for k, v in up.skipped.items())
        )
        log("raw TCP ping-pong ...")
        res["raw"]["tcp_pingpong"] = raw_tcp(sizes, quick)
        if "redis" in up.uris:
            log("raw Redis SET+GET ...")
            res["raw"]["redis_set_get"] = raw_redis(up.uris["redis"], sizes, quick)
        if "s3" in up.uris:
            log("raw S3 put+get ...")
            res["raw"]["s3_put_get"] = raw_s3(up.s3, sizes, quick)
        for name, uri in up.uris.items():
            if name == "mpi":
                continue
            log(f"{name}: ping-pong ...")
            plan = [("pingpong", n, *iterations(n, quick)) for n in sizes]
            try:
                got = run_peers(uri, 2, plan, op_timeout_s)
                res["pingpong"][name] = {n: got[f"pingpong/{n}"] for n in sizes}
            except RuntimeError as exc:
                res["failed"][f"{name} ping-pong"] = str(exc)
                log(f"  failed: {exc}")
            for p in peers:
                log(f"{name}: allreduce, P={p} ...")
                plan = [("allreduce", n, *iterations(n, quick)) for n in sizes]
                try:
                    got = run_peers(uri, p, plan, op_timeout_s)
                except RuntimeError as exc:
                    res["failed"][f"{name} allreduce P={p}"] = str(exc)
                    log(f"  failed: {exc}")
                    continue
                res["allreduce"].setdefault(name, {})[p] = {n: got[f"allreduce/{n}"] for n in sizes}
        if shutil.which("mpirun"):
            for p in peers:
                log(f"OpenMPI (btl tcp,self) Allreduce and mpi://, P={p} ...")
                try:
                    got = run_mpi(p, sizes, quick, ours="mpi" in up.uris)
                except (RuntimeError, subprocess.TimeoutExpired) as exc:
                    res["skipped"][f"openmpi P={p}"] = str(exc)
                    continue
                res["allreduce"].setdefault("openmpi-tcp", {})[p] = {
                    n: got[f"raw/{n}"] for n in sizes
                }
                if "mpi" in up.uris:
                    res["allreduce"].setdefault("mpi", {})[p] = {n: got[f"ours/{n}"] for n in sizes}
        else:
            res["skipped"]["openmpi"] = "no mpirun (apt-get install openmpi-bin)"
    res["ratios"], res["targets"] = ratios(res)
    return res


def ratios(res: dict[str, Any]) -> tuple[dict[str, float], dict[str, bool]]:
    """The issue's targets, from the smallest size measured (and 64 MB at P=4)."""
    out: dict[str, float] = {}
    targets: dict[str, bool] = {}
    sizes = res["sizes"]
    small = min(sizes)
    raw, pp = res["raw"], res["pingpong"]
    if "tcp" in pp and "tcp_pingpong" in raw:
        r = pp["tcp"][small] / raw["tcp_pingpong"][small]
        out[f"tcp send/recv {fmt_size(small)} vs raw TCP ping-pong"] = r
        targets["direct TCP small send/recv <= 1.5x raw ping-pong"] = r <= 1.5
    if "redis" in pp and "redis_set_get" in raw:
        r = pp["redis"][small] / 2 / raw["redis_set_get"][small]
        out[f"redis one message {fmt_size(small)} vs raw SET+GET"] = r
        targets["Redis <= 1.5x raw SET+GET"] = r <= 1.5
    if "s3" in pp and "s3_put_get" in raw:
        out[f"s3 one message {fmt_size(small)} vs raw put+get"] = (
            pp["s3"][small] / 2 / raw["s3_put_get"][small]
        )
    ar = res["allreduce"]
    big = max(sizes)
    p = 4 if 4 in res["peers"] else max(res["peers"])
    if "tcp" in ar and "openmpi-tcp" in ar and p in ar["tcp"] and p in ar["openmpi-tcp"]:
        r = ar["tcp"][p][big] / ar["openmpi-tcp"][p][big]
        out[f"tcp allreduce {fmt_size(big)} P={p} vs OpenMPI TCP"] = r
        if big == 64 << 20 and p == 4:
            targets["allreduce 64 MB at P=4 over TCP <= 1.5x OpenMPI TCP"] = r <= 1.5
    if "mpi" in ar and "openmpi-tcp" in ar and p in ar["mpi"]:
        out[f"mpi:// allreduce {fmt_size(big)} P={p} vs raw mpi4py"] = (
            ar["mpi"][p][big] / ar["openmpi-tcp"][p][big]
        )
    return out, targets


def calibrate(res: dict[str, Any]) -> dict[str, Any]:
    """Per-channel overhead and bandwidth fitted on the measured one-way times."""
    from ..collectives import model

    profiles: dict[str, model.ChannelProfile] = {}
    for name, times in res["pingpong"].items():
        one_way = [(n, t / 2) for n, t in times.items()]
        multi = []
        ar = res["allreduce"].get(name, {})
        if model.KINDS.get(name) == "mediated" and ar:
            p = max(ar)  # P-1 readers fetch concurrently during the broadcast half
            multi = [(n * (p - 1), t / 2) for n, t in ar[p].items()]
        profiles[name] = model.fit_profile(one_way, multi, "calibrated")
    mpi = res["allreduce"].get("mpi", {})
    if 2 in mpi:  # P=2 allreduce: one exchange, o + n/B
        profiles["mpi"] = model.fit_profile(list(mpi[2].items()), (), "calibrated")
    return profiles


def format_table(res: dict[str, Any]) -> str:
    sizes = res["sizes"]
    head = "| channel | " + " | ".join(fmt_size(n) for n in sizes) + " |"
    sep = "|---" * (len(sizes) + 1) + "|"

    def us(t: float) -> str:
        return f"{t * 1e6:,.0f} µs" if t < 0.01 else f"{t * 1e3:,.1f} ms"

    lines = [
        "Point to point, median round trip (ours: send+recv between two processes)",
        "",
        head,
        sep,
    ]
    labels = {
        "tcp_pingpong": "raw TCP ping-pong",
        "redis_set_get": "raw Redis SET+GET",
        "s3_put_get": "raw S3 put+get",
    }
    for key, row in res["raw"].items():
        lines.append(f"| {labels[key]} | " + " | ".join(us(row[n]) for n in sizes) + " |")
    for name, row in res["pingpong"].items():
        lines.append(f"| {name} ping-pong | " + " | ".join(us(row[n]) for n in sizes) + " |")
    lines += [
        "",
        "Allreduce (float32), median per operation",
        "",
        "| channel | P | " + " | ".join(fmt_size(n) for n in sizes) + " | GB/s at "
        f"{fmt_size(max(sizes))} |",
        "|---" * (len(sizes) + 3) + "|",
    ]
    for name, by_p in res["allreduce"].items():
        for p, row in sorted(by_p.items()):
            bw = max(sizes) / row[max(sizes)] / 1e9
            lines.append(
                f"| {name} | {p} | " + " | ".join(us(row[n]) for n in sizes) + f" | {bw:.2f} |"
            )
    lines += ["", "Ratios (one run):"]
    lines += [f"  {k}: {v:.2f}x" for k, v in res["ratios"].items()]
    lines += [f"  target {k}: {'met' if v else 'MISSED'}" for k, v in res["targets"].items()]
    for k, v in res["skipped"].items():
        lines.append(f"  skipped {k}: {v}")
    for k, v in res.get("failed", {}).items():
        lines.append(f"  FAILED {k}: {v}")
    return "\n".join(lines)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--channels",
        default=",".join(CHANNELS),
        help=f"comma list of {', '.join(CHANNELS)} (default: all)",
    )
    parser.add_argument(
        "--sizes",
        default="8,1K,64K,1M,16M,64M",
        help="message sizes, e.g. 8,1K,1M,64M (default 8 B to 64 MB)",
    )
    parser.add_argument("--peers", default="2,4,8,16", help="peer counts (default 2,4,8,16)")
    parser.add_argument(
        "--quick",
        action="store_true",
        help="8 B and 1 MB, P=2 and 4, file/tcp/redis, few repetitions (< 1 min)",
    )
    parser.add_argument(
        "--calibrate",
        action="store_true",
        help="fit each channel's overhead and bandwidth and write the model file",
    )
    parser.add_argument(
        "--model-file",
        default=None,
        help="where --calibrate writes (default: the model's default path)",
    )
    parser.add_argument(
        "--no-pin",
        action="store_true",
        help="leave peers unpinned (default: rank r on core r mod cores, raw baselines too)",
    )
    parser.add_argument(
        "--timeout", type=float, default=120.0, help="deadline of each operation (default 120 s)"
    )
    parser.add_argument("--json", action="store_true", help="print one JSON object")


def _positive_list(text: str, parse: Any, what: str) -> list[int]:
    from ..exceptions import ConfigurationError

    try:
        values = [parse(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise ConfigurationError(f"bad {what} list {text!r}") from None
    if not values or any(v < 1 for v in values):
        raise ConfigurationError(f"{what} must be positive, got {text!r}")
    return sorted(set(values))


def run(args: argparse.Namespace) -> int:
    from ..exceptions import ConfigurationError

    channels = [c.strip() for c in args.channels.split(",") if c.strip()]
    sizes = _positive_list(args.sizes, parse_size, "size")
    peers = _positive_list(args.peers, int, "peer")
    if args.quick:
        if args.channels == ",".join(CHANNELS):
            channels = ["file", "tcp", "redis"]
        if args.sizes == "8,1K,64K,1M,16M,64M":
            sizes = [8, 1 << 20]
        if args.peers == "2,4,8,16":
            peers = [2, 4]
    unknown = sorted(set(channels) - set(CHANNELS))
    if unknown:
        raise ConfigurationError(
            f"unknown channel(s) {', '.join(unknown)}; known: {', '.join(CHANNELS)}"
        )
    if any(p < 2 for p in peers):
        raise ConfigurationError("peers must be >= 2")
    log = (lambda msg: print(msg, file=sys.stderr)) if args.json else print
    global PIN
    PIN = not args.no_pin
    if not args.timeout > 0:
        raise ConfigurationError("--timeout must be > 0 seconds")
    res = run_collectives(channels, sizes, peers, args.quick, log, args.timeout)
    if args.calibrate:
        from ..collectives import model

        path = model.save_profiles(
            calibrate(res),
            args.model_file,
            {"cpus": os.cpu_count(), "cpu": machine.describe().get("cpu_model")},
        )
        res["calibration"] = str(path)
        log(f"calibration written to {path}")
    if args.json:
        json.dump(res, sys.stdout, indent=1, default=str)
        sys.stdout.write("\n")
    else:
        print(format_table(res))
    return 0


if __name__ == "__main__":  # the rank program of run_mpi, under mpirun
    _argv = sys.argv[1:]
    if _argv and _argv[0] == "--mpi-worker":
        PIN = "--no-pin" not in _argv
        _mpi_worker(
            [int(x) for x in _argv[1].split(",")], "--quick" in _argv, "--raw-only" not in _argv
        )
