"""``hetfaas bench gateway``: what the HTTP gateway costs, next to its floors, in one run.

Measured on loopback, one after the other:

1. the local backend's call, ``ex.submit(noop).result()`` in this process (warm);
2. a bare FastAPI echo route on the same uvicorn (its own process): the framework's floor;
3. a blocking invoke of a no-op through the gateway (``hetfaas serve`` in its own process,
   on a fresh store, with the local backend): ``POST /v1/functions/noop/invoke``;
4. the same gateway with ``--thread-delivery`` (results reach the server from the pool's
   reader thread, not read by its event loop), side by side;

each as sequential request latency (p50/p99), then blocking invokes/s from ``--clients``
concurrent keep-alive connections for ``--seconds`` (and the echo route's requests/s under
the same load), and items/s through a batch invoke of 1,000 no-ops with ``wait``.

The HTTP client is a few lines over raw sockets (a blocking one for latency, asyncio for
load), so its own cost is small and the same for the echo route and the gateway.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from .. import machine

NOOP_BODY = b'{"args":[null]}'


def noop(x: Any = None) -> Any:
    return x


def _pct(values: list[float], q: float) -> float:
    values = sorted(values)
    return values[min(len(values) - 1, int(q * len(values)))]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# --------------------------------------------------------------------- the servers


def _echo_main(port: int) -> None:
    from ..gateway.server import echo_app, serve

    serve(echo_app(), "127.0.0.1", port, "warning")


def _env() -> dict[str, str]:
    src = str(Path(__file__).resolve().parents[2])
    return dict(os.environ, PYTHONPATH=os.pathsep.join(p for p in (src, os.environ.get(
        "PYTHONPATH")) if p))  # fmt: skip


def _wait_up(proc: subprocess.Popen[bytes], port: int, timeout: float = 60.0) -> None:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if proc.poll() is not None:
            raise RuntimeError(f"a benchmark server exited with {proc.returncode}")
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 0.2):
            return
        time.sleep(0.05)
    raise RuntimeError("a benchmark server did not start")


@contextlib.contextmanager
def _server(argv: list[str], port: int) -> Any:
    proc = subprocess.Popen(argv, env=_env(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        _wait_up(proc, port)
        yield proc
    finally:
        proc.terminate()
        try:
            proc.wait(20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


# --------------------------------------------------------------------- the clients


class _Sync:
    """A keep-alive HTTP/1.1 client over one blocking socket."""

    def __init__(self, port: int, token: str | None = None) -> None:
        self.sock = socket.create_connection(("127.0.0.1", port))
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.file = self.sock.makefile("rb")
        self.auth = f"Authorization: Bearer {token}\r\n".encode() if token else b""

    def post(self, path: str, body: bytes) -> tuple[int, bytes]:
        head = (f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
                f"Content-Length: {len(body)}\r\n").encode()  # fmt: skip
        self.sock.sendall(head + self.auth + b"\r\n" + body)
        status = int(self.file.readline().split()[1])
        length = 0
        while True:
            line = self.file.readline()
            if line in (b"\r\n", b""):
                break
            if line[:15].lower() == b"content-length:":
                length = int(line[15:])
        return status, self.file.read(length)

    def close(self) -> None:
        self.file.close()
        self.sock.close()


async def _async_post(
    reader: asyncio.StreamReader, writer: asyncio.StreamWriter, request: bytes
) -> int:
    writer.write(request)
    status = int((await reader.readline()).split()[1])
    length = 0
    while True:
        line = await reader.readline()
        if line in (b"\r\n", b""):
            break
        if line[:15].lower() == b"content-length:":
            length = int(line[15:])
    await reader.readexactly(length)
    return status


def _request(path: str, body: bytes, token: str | None) -> bytes:
    auth = f"Authorization: Bearer {token}\r\n" if token else ""
    return (f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
            f"Content-Length: {len(body)}\r\n{auth}\r\n").encode() + body  # fmt: skip


def latency(port: int, path: str, n: int, token: str | None = None) -> dict[str, float]:
    """Sequential requests on one connection: p50/p99 in µs (after a warm-up)."""
    c = _Sync(port, token)
    try:
        for _ in range(max(50, n // 10)):
            status, body = c.post(path, NOOP_BODY)
            if status != 200:
                raise RuntimeError(f"{path}: HTTP {status}: {body[:300]!r}")
        lat = []
        for _ in range(n):
            t0 = time.perf_counter_ns()
            c.post(path, NOOP_BODY)
            lat.append((time.perf_counter_ns() - t0) / 1e3)
    finally:
        c.close()
    return {"p50_us": _pct(lat, 0.5), "p99_us": _pct(lat, 0.99), "n": n}


def load(
    port: int, path: str, clients: int, seconds: float, token: str | None = None
) -> dict[str, float]:
    """``clients`` connections, each sending its next request when the last is answered."""
    request = _request(path, NOOP_BODY, token)

    async def client(end: float, lat: list[float], errors: list[int]) -> None:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        try:
            while time.perf_counter() < end:
                t0 = time.perf_counter_ns()
                status = await _async_post(reader, writer, request)
                lat.append((time.perf_counter_ns() - t0) / 1e3)
                if status != 200:
                    errors.append(status)
        finally:
            writer.close()

    async def main() -> tuple[list[float], list[int], float]:
        lat: list[float] = []
        errors: list[int] = []
        t0 = time.perf_counter()
        await asyncio.gather(*(client(t0 + seconds, lat, errors) for _ in range(clients)))
        return lat, errors, time.perf_counter() - t0

    lat, errors, wall = asyncio.run(main())
    return {
        "clients": clients, "requests": len(lat), "per_s": len(lat) / wall,
        "p50_us": _pct(lat, 0.5), "p99_us": _pct(lat, 0.99), "non_200": len(errors),
    }  # fmt: skip


# --------------------------------------------------------------------- the study


def bench_local(n: int, backend: str = "local") -> dict[str, float]:
    from .._executor import Executor

    with Executor(backend) as ex:
        ex.warmup()
        for _ in range(max(50, n // 10)):
            ex.submit(noop).result()
        lat = []
        for _ in range(n):
            t0 = time.perf_counter_ns()
            ex.submit(noop, None).result()
            lat.append((time.perf_counter_ns() - t0) / 1e3)
    return {"p50_us": _pct(lat, 0.5), "p99_us": _pct(lat, 0.99), "n": n}


def run_gateway_bench(
    calls: int = 2000, clients: int = 32, seconds: float = 5.0, backend: str = "local",
    batch: int = 1000, batches: int = 5, max_inflight: int | None = None,
) -> dict[str, Any]:  # fmt: skip
    """The figures of the module's doc, as a dict."""
    out: dict[str, Any] = {"machine": machine.describe(), "calls": calls}
    out["local"] = bench_local(calls, backend)
    port = _free_port()
    echo = [
        sys.executable,
        "-c",
        f"from hetfaas.bench.gateway import _echo_main; _echo_main({port})",
    ]
    with _server(echo, port):
        out["echo"] = latency(port, "/echo", calls)
        out["echo_load"] = load(port, "/echo", clients, seconds)
    out["max_inflight"] = max_inflight
    out.update(_gateway(calls, clients, seconds, backend, batch, batches, max_inflight, []))
    out["thread"] = _gateway(
        calls, clients, seconds, backend, batch, batches, max_inflight, ["--thread-delivery"]
    )
    g, loc, e = out["gateway"], out["local"], out["echo"]
    out["ratios"] = {
        "gateway_minus_local_p50_us": g["p50_us"] - loc["p50_us"],
        "gateway_over_local_p50": g["p50_us"] / loc["p50_us"],
        "echo_over_local_p50": e["p50_us"] / loc["p50_us"],
        "gateway_minus_echo_p50_us": g["p50_us"] - e["p50_us"],
    }
    return out


def _gateway(
    calls: int, clients: int, seconds: float, backend: str, batch: int, batches: int,
    max_inflight: int | None, extra: list[str],
) -> dict[str, Any]:  # fmt: skip
    """One gateway on a fresh store: sequential latency, load, batch."""
    from ..gateway.store import Store

    out: dict[str, Any] = {}
    with tempfile.TemporaryDirectory(prefix="hetfaas-bench-gateway-") as tmp:
        store_path = Path(tmp) / "gateway.db"
        with Store(store_path) as s:
            _, token = s.create_token("bench")
        port = _free_port()
        argv = [sys.executable, "-m", "hetfaas.gateway", "serve", "--port", str(port),
                "--store", str(store_path), "--backend", backend,
                "--allow-module", "hetfaas.bench.gateway", "--log-level", "warning",
                *extra]  # fmt: skip
        if max_inflight:
            argv += ["--max-inflight", str(max_inflight)]
        with _server(argv, port):
            c = _Sync(port, token)
            status, body = c.post("/v1/functions", b'{"import_path": "hetfaas.bench.gateway:noop"}')
            if status not in (200, 201):
                raise RuntimeError(f"deploy: HTTP {status}: {body[:300]!r}")
            path = "/v1/functions/noop/invoke?wait=60"
            out["gateway"] = latency(port, path, calls, token)
            out["gateway_load"] = load(port, path, clients, seconds, token)
            c.close()
            c = _Sync(port, token)  # the first one idled past the keep-alive
            inputs = json.dumps({"inputs": [{"args": [i]} for i in range(batch)]}).encode()
            rates = []
            for _ in range(batches):
                t0 = time.perf_counter()
                status, body = c.post("/v1/functions/noop/batch?wait=120", inputs)
                if status != 200:
                    raise RuntimeError(f"batch: HTTP {status}: {body[:300]!r}")
                rates.append(batch / (time.perf_counter() - t0))
            out["batch"] = {"items": batch, "items_per_s": statistics.median(rates)}
            c.close()
    return out


def format_table(res: dict[str, Any]) -> str:
    r = res["ratios"]
    t = res["thread"]
    rows = [
        ("local backend: ex.submit(noop).result()", res["local"]),
        ("bare FastAPI echo route (uvicorn, HTTP)", res["echo"]),
        ("gateway blocking invoke (HTTP, store, pool)", res["gateway"]),
        ("the same, --thread-delivery", t["gateway"]),
    ]
    lines = [
        f"# hetfaas bench gateway ({res['calls']} sequential calls each; loopback; gateway "
        f"--max-inflight {res.get('max_inflight') or 'default (max_workers)'})",
        "",
        "| path | p50 µs | p99 µs |",
        "|---|---:|---:|",
        *(f"| {name} | {row['p50_us']:.0f} | {row['p99_us']:.0f} |" for name, row in rows),
        "",
        f"- gateway - local backend, p50: {r['gateway_minus_local_p50_us']:.0f} µs "
        f"(gateway/local {r['gateway_over_local_p50']:.1f}x; the echo floor alone is "
        f"{r['echo_over_local_p50']:.1f}x local)",
        f"- gateway - bare echo, p50: {r['gateway_minus_echo_p50_us']:.0f} µs (what the "
        "gateway adds over the framework: auth, store writes, the pool)",
    ]
    loads = (("gateway blocking invokes", res["gateway_load"]),
             ("the same, --thread-delivery", t["gateway_load"]),
             ("bare echo", res["echo_load"]))  # fmt: skip
    for name, ld in loads:
        lines.append(
            f"- {name}: {ld['per_s']:,.0f}/s from {ld['clients']} clients (p50 "
            f"{ld['p50_us'] / 1e3:.2f} ms, p99 {ld['p99_us'] / 1e3:.2f} ms, "
            f"{ld['non_200']} not 200)"
        )
    b, tb = res["batch"], t["batch"]
    lines.append(
        f"- batch invoke, {b['items']} no-ops with wait: {b['items_per_s']:,.0f} items/s "
        f"({tb['items_per_s']:,.0f} with --thread-delivery)"
    )
    return "\n".join(lines)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from . import gateway_soak

    parser.add_argument("--quick", action="store_true", help="fewer calls, shorter load")
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    parser.add_argument("--calls", type=int, default=2000, help="sequential calls per path")
    parser.add_argument("--clients", type=int, default=32, action=gateway_soak.GivenAction,
                        help="concurrent connections (32; --soak: 200)")  # fmt: skip
    parser.add_argument("--seconds", type=float, default=5.0, help="load duration per server")
    parser.add_argument("--backend", default="local", help="the gateway's backend (local)")
    parser.add_argument("--max-inflight", type=int, default=None, metavar="N",
                        help="the gateway's --max-inflight (default: max_workers)")  # fmt: skip
    gateway_soak.add_arguments(parser)  # --soak and its options
    parser.add_argument("--binary-mb", type=float, default=None, metavar="MB",
                        help="instead: an array argument of MB megabytes through the gateway, "
                        "beside one in-process copy and a bare route")  # fmt: skip
    parser.add_argument("--repeats", type=int, default=5, help="--binary-mb: runs per path")


def run(args: argparse.Namespace) -> int:
    if getattr(args, "soak", False):
        from . import gateway_soak

        return gateway_soak.run(args)
    if args.binary_mb is not None:
        from . import gateway_binary

        res = gateway_binary.run_binary_bench(args.binary_mb, args.repeats)
        if args.json:
            json.dump(res, sys.stdout, indent=1, default=str)
            sys.stdout.write("\n")
        else:
            print(gateway_binary.format_table(res))
        return 0
    calls, seconds = args.calls, args.seconds
    if args.quick:
        calls, seconds = max(50, calls // 10), min(seconds, 1.0)
    res = run_gateway_bench(
        calls, args.clients, seconds, args.backend, batches=2 if args.quick else 5,
        max_inflight=args.max_inflight,
    )  # fmt: skip
    if args.json:
        json.dump(res, sys.stdout, indent=1, default=str)
        sys.stdout.write("\n")
    else:
        print(format_table(res))
    return 0


__all__ = ["add_arguments", "format_table", "noop", "run", "run_gateway_bench"]
