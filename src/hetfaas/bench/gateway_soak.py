"""``hetfaas bench gateway --soak``: many concurrent clients on one gateway for a while, and
every invocation they were given an id for found, ended and right in the store afterwards.

``--clients`` (200) keep-alive connections for ``--duration`` (60 s), each sending its next
request when the last is answered, a mix of:

- blocking invokes of a no-op (``POST /v1/functions/noop/invoke?wait=60``), 60%;
- blocking invokes of a short sleep (1-10 ms, ``nap``), 20%;
- non-blocking invokes (``/async``, the no-op or the sleep), each then fetched with
  ``GET /v1/invocations/{id}?wait=60``, 20%.

Every call carries a tag of its own that the function returns, so a result is checked against
the call that asked for it. At the end (the gateway drained, then stopped), the store is read:
each id a client got back must have a record, ended ``COMPLETED``, whose result is its tag
(``lost``: no record; ``not_final``, ``wrong``: the others). Reported: the statuses (5xx
apart), the requests/s and invocations/s, and p50/p99 of each kind of request.

The gateway is ``hetfaas serve`` in its own process, on a fresh store, with the local backend;
the clients are asyncio over raw sockets in this one (as ``hetfaas bench gateway``'s load), so
that their own cost stays small beside the gateway's.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import random
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Collection, Iterator
from pathlib import Path
from typing import Any

from .. import machine
from .gateway import _env, _free_port, _pct, _wait_up

MODULE = "hetfaas.bench.gateway_soak"  # the functions' module, deployed by import path
WAIT_S = 60.0
REQUEST_TIMEOUT_S = 120.0
MIX = (("invoke_noop", 0.6), ("invoke_nap", 0.2), ("async", 0.2))
FUNCTIONS = ("noop", "nap")


def noop(x: Any = None) -> Any:
    return x


def nap(seconds: float, tag: Any = None) -> Any:
    """Sleeps ``seconds``, returns ``tag``."""
    time.sleep(seconds)
    return tag


class GivenAction(argparse.Action):
    """Stores the value and notes that it was given (``args.given``): the soak's own defaults
    apply to the options left out."""

    def __call__(
        self,
        parser: argparse.ArgumentParser,
        namespace: argparse.Namespace,
        values: Any,
        option_string: str | None = None,
    ) -> None:
        setattr(namespace, self.dest, values)
        given = set(getattr(namespace, "given", None) or ())
        namespace.given = given | {self.dest}


@contextlib.contextmanager
def gateway_process(argv: list[str], port: int, log: Path) -> Iterator[subprocess.Popen[bytes]]:
    """``argv`` (a ``hetfaas serve``) running and answering on ``port``, its output in
    ``log``; stopped (SIGTERM, then SIGKILL) on the way out."""
    with log.open("ab") as out:
        proc = subprocess.Popen(argv, env=_env(), stdout=out, stderr=subprocess.STDOUT)
    try:
        _wait_up(proc, port)
        yield proc
    finally:
        if proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


def log_tail(log: Path, n: int = 4000) -> str:
    with contextlib.suppress(OSError):
        return log.read_text(errors="replace")[-n:]
    return ""


# --------------------------------------------------------------------- the client


class Conn:
    """One keep-alive HTTP/1.1 connection, reopened when the server closes it."""

    def __init__(self, port: int, token: str) -> None:
        self.port = port
        self.auth = f"Authorization: Bearer {token}\r\n".encode()
        self.reader: asyncio.StreamReader | None = None
        self.writer: asyncio.StreamWriter | None = None

    async def request(self, method: str, path: str, body: bytes | None = None) -> tuple[int, bytes]:
        if self.writer is None:
            self.reader, self.writer = await asyncio.open_connection("127.0.0.1", self.port)
        assert self.reader is not None
        head = f"{method} {path} HTTP/1.1\r\nHost: 127.0.0.1\r\n".encode() + self.auth
        if body is not None:
            head += (b"Content-Type: application/json\r\nContent-Length: "
                     + str(len(body)).encode() + b"\r\n")  # fmt: skip
        self.writer.write(head + b"\r\n" + (body or b""))
        try:
            line = await self.reader.readline()
            if not line:
                raise ConnectionResetError("the server closed the connection")
            status = int(line.split()[1])
            length, close = 0, False
            while True:
                line = await self.reader.readline()
                if line in (b"\r\n", b""):
                    break
                key, _, value = line.partition(b":")
                key = key.strip().lower()
                if key == b"content-length":
                    length = int(value)
                elif key == b"connection" and value.strip().lower() == b"close":
                    close = True
            data = await self.reader.readexactly(length)
        except BaseException:
            self.close()
            raise
        if close:
            self.close()
        return status, data

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
        self.reader = self.writer = None


class Tally:
    """What the clients saw."""

    def __init__(self) -> None:
        self.latency: dict[str, list[float]] = {}
        self.status: Counter[int] = Counter()
        self.errors: Counter[str] = Counter()  # no answer: by exception type
        self.accepted: dict[str, str] = {}  # invocation id -> the tag its result must be
        self.wrong: list[str] = []  # a record the client got with the wrong state or result

    def seen(self, kind: str, t0: float, status: int) -> None:
        self.latency.setdefault(kind, []).append(time.perf_counter() - t0)
        self.status[status] += 1


async def _call(conn: Conn, tally: Tally, kind: str, method: str, path: str,
                body: bytes | None = None) -> tuple[int, Any]:  # fmt: skip
    t0 = time.perf_counter()
    status, data = await asyncio.wait_for(conn.request(method, path, body), REQUEST_TIMEOUT_S)
    tally.seen(kind, t0, status)
    try:
        return status, json.loads(data) if data else None
    except ValueError:
        return status, None


async def _until_ended(conn: Conn, tally: Tally, inv: str, kind: str) -> dict[str, Any] | None:
    """The record of ``inv`` once ended (``GET ?wait``, again while it runs)."""
    for _ in range(10):
        status, rec = await _call(
            conn, tally, kind, "GET", f"/v1/invocations/{inv}?wait={WAIT_S:g}"
        )
        if status != 200 or not isinstance(rec, dict):
            return None
        if rec.get("state") in ("COMPLETED", "FAILED", "CANCELLED"):
            return rec
    return None


def _check(tally: Tally, inv: str, rec: dict[str, Any] | None, tag: str) -> None:
    """The record a client got for ``inv``: ended, completed, with its own result."""
    if rec is None:
        tally.wrong.append(f"{inv}: no ended record from the gateway")
    elif rec.get("id") != inv or rec.get("state") != "COMPLETED" or rec.get("result") != tag:
        tally.wrong.append(f"{inv}: {rec.get('state')} {str(rec.get('result'))[:80]}")


async def _client(port: int, token: str, k: int, end: float, seed: int, tally: Tally) -> None:
    rng = random.Random(seed * 100_003 + k)
    kinds, weights = zip(*MIX, strict=True)
    conn = Conn(port, token)
    seq = 0
    try:
        while time.perf_counter() < end:
            seq += 1
            tag = f"c{k}-{seq}"
            kind = rng.choices(kinds, weights)[0]
            fn = "noop" if kind == "invoke_noop" else "nap"
            if kind == "async":
                fn = rng.choice(FUNCTIONS)
            args = [tag] if fn == "noop" else [rng.uniform(0.001, 0.01), tag]
            body = json.dumps({"args": args}).encode()
            try:
                if kind == "async":
                    status, out = await _call(conn, tally, "async_accept", "POST",
                                              f"/v1/functions/{fn}/async", body)  # fmt: skip
                    if status != 202 or not isinstance(out, dict):
                        continue
                    tally.accepted[out["id"]] = tag
                    t0 = time.perf_counter()
                    rec = await _until_ended(conn, tally, out["id"], "async_fetch")
                    tally.latency.setdefault("async_end_to_end", []).append(
                        time.perf_counter() - t0
                    )
                    _check(tally, out["id"], rec, tag)
                    continue
                path = f"/v1/functions/{fn}/invoke?wait={WAIT_S:g}"
                status, out = await _call(conn, tally, kind, "POST", path, body)
                if status not in (200, 202) or not isinstance(out, dict):
                    continue
                tally.accepted[out["id"]] = tag
                inv = out["id"]
                if status == 202:
                    out = await _until_ended(conn, tally, inv, "blocking_fetch")
                _check(tally, inv, out, tag)
            except (OSError, asyncio.IncompleteReadError, asyncio.TimeoutError, ValueError) as exc:
                tally.errors[type(exc).__name__] += 1
    finally:
        conn.close()


async def _load(port: int, token: str, clients: int, duration: float, seed: int) -> Tally:
    tally = Tally()
    end = time.perf_counter() + duration
    await asyncio.gather(*(_client(port, token, k, end, seed, tally) for k in range(clients)))
    return tally


async def _drain(port: int, token: str, ids: list[str], timeout: float) -> int:
    """Wait through the API until every id ended (or ``timeout``); how many still had not."""
    conn = Conn(port, token)
    pending = list(ids)
    end = time.monotonic() + timeout
    try:
        while pending and time.monotonic() < end:
            left: list[str] = []
            for i in range(0, len(pending), 5000):
                chunk = pending[i : i + 5000]
                body = json.dumps({"ids": chunk, "timeout": 5}).encode()
                status, data = await conn.request("POST", "/v1/invocations/wait", body)
                if status != 200:
                    raise RuntimeError(f"wait: HTTP {status}: {data[:300]!r}")
                out = json.loads(data)
                left += out["pending"] + out["missing"]
            pending = left
    finally:
        conn.close()
    return len(pending)


def _account(
    store_path: Path, accepted: dict[str, str], others: Collection[str] = ()
) -> dict[str, Any]:
    """Each accepted id in the store: ended, completed, with its tag as the result
    (``others``: the ids of calls made apart, as the warm-up)."""
    from ..gateway.store import Store

    with Store(store_path) as s:
        rows = {r["id"]: dict(r) for r in s.read(
            "SELECT id, state, result, result_path, error_type, error_message, attempts"
            " FROM invocations"
        )}  # fmt: skip
    out: Counter[str] = Counter()
    examples: list[str] = []
    for inv, tag in accepted.items():
        row = rows.get(inv)
        if row is None:
            out["lost"] += 1
            examples.append(f"{inv}: no record")
            continue
        if row["state"] not in ("COMPLETED", "FAILED", "CANCELLED"):
            out["not_final"] += 1
            examples.append(f"{inv}: {row['state']}")
            continue
        text = row["result"]
        if text is None and row["result_path"]:
            text = Path(row["result_path"]).read_text()
        if row["state"] == "COMPLETED" and text is not None and json.loads(text) == tag:
            out["completed_right"] += 1
        else:
            out["wrong"] += 1
            examples.append(f"{inv}: {row['state']} {row['error_type']} {str(text)[:60]}")
    states = Counter(r["state"] for r in rows.values())
    return {
        "accepted": len(accepted),
        "completed_right": out["completed_right"],
        "lost": out["lost"],
        "not_final": out["not_final"],
        "wrong": out["wrong"],
        "store_records": len(rows),
        "store_states": dict(states),
        "not_acknowledged": len(set(rows) - set(accepted) - set(others)),
        "examples": examples[:10],
    }


def _summary(values: list[float], wall: float) -> dict[str, float]:
    if not values:
        return {"n": 0}
    return {
        "n": len(values),
        "per_s": len(values) / wall,
        "p50_ms": _pct(values, 0.5) * 1e3,
        "p99_ms": _pct(values, 0.99) * 1e3,
        "max_ms": max(values) * 1e3,
    }


def run_soak(
    clients: int = 200,
    duration: float = 60.0,
    backend: str = "local",
    max_inflight: int | None = None,
    seed: int = 0,
    drain_timeout: float = 120.0,
) -> dict[str, Any]:
    """The soak of the module's doc; its figures and accounting as a dict."""
    from ..gateway.store import Store

    res: dict[str, Any] = {
        "machine": machine.describe(), "clients": clients, "duration_s": duration,
        "backend": backend, "max_inflight": max_inflight, "seed": seed,
    }  # fmt: skip
    with tempfile.TemporaryDirectory(prefix="hetfaas-bench-soak-") as tmp:
        store_path = Path(tmp) / "gateway.db"
        with Store(store_path) as s:
            _, token = s.create_token("soak")
        port = _free_port()
        argv = [sys.executable, "-m", "hetfaas.gateway", "serve", "--port", str(port),
                "--store", str(store_path), "--backend", backend,
                "--allow-module", MODULE, "--log-level", "warning"]  # fmt: skip
        if max_inflight:
            argv += ["--max-inflight", str(max_inflight)]
        log = Path(tmp) / "gateway.log"
        with gateway_process(argv, port, log) as proc:
            warm: list[str] = []

            async def deploy_and_load() -> tuple[Tally, float, int]:
                conn = Conn(port, token)
                for fn in FUNCTIONS:
                    body = json.dumps({"import_path": f"{MODULE}:{fn}"})
                    status, data = await conn.request("POST", "/v1/functions", body.encode())
                    if status not in (200, 201):
                        raise RuntimeError(f"deploy {fn}: HTTP {status}: {data[:300]!r}")
                    status, data = await conn.request(  # warm: the pool's first call
                        "POST", f"/v1/functions/{fn}/invoke?wait=60",
                        json.dumps({"args": [0.0] if fn == "nap" else []}).encode(),
                    )  # fmt: skip
                    if status != 200:
                        raise RuntimeError(f"warm-up {fn}: HTTP {status}: {data[:300]!r}")
                    warm.append(json.loads(data)["id"])
                conn.close()
                t0 = time.perf_counter()
                tally = await _load(port, token, clients, duration, seed)
                wall = time.perf_counter() - t0
                left = await _drain(port, token, list(tally.accepted), drain_timeout)
                return tally, wall, left

            tally, wall, left = asyncio.run(deploy_and_load())
            proc.terminate()  # a graceful stop (uvicorn's, then SIGTERM again): -15
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(30)
        res["gateway_exit"] = proc.returncode
        trouble = proc.returncode not in (0, -15) or any(k >= 500 for k in tally.status)
        trouble = trouble or bool(tally.errors)
        res["gateway_log_tail"] = log_tail(log) if trouble else ""
        res["wall_s"] = wall
        res["not_ended_after_drain"] = left
        res["accounting"] = _account(store_path, tally.accepted, warm)
    blocking = tally.latency.get("invoke_noop", []) + tally.latency.get("invoke_nap", [])
    requests = sum(len(v) for k, v in tally.latency.items() if k != "async_end_to_end")
    res.update({
        "requests": requests,
        "requests_per_s": requests / wall,
        "invocations_per_s": len(tally.accepted) / wall,
        "status": {str(k): v for k, v in sorted(tally.status.items())},
        "http_5xx": sum(v for k, v in tally.status.items() if k >= 500),
        "http_other": sum(v for k, v in tally.status.items() if k not in (200, 202) and k < 500),
        "no_answer": dict(tally.errors),
        "wrong_in_response": len(tally.wrong),
        "wrong_examples": tally.wrong[:10],
        "blocking": _summary(blocking, wall),
        "kinds": {k: _summary(v, wall) for k, v in sorted(tally.latency.items())},
    })  # fmt: skip
    acc = res["accounting"]
    res["ok"] = (res["http_5xx"] == 0 and res["http_other"] == 0 and not tally.errors
                 and acc["lost"] == 0 and acc["not_final"] == 0 and acc["wrong"] == 0
                 and res["wrong_in_response"] == 0 and left == 0)  # fmt: skip
    return res


def format_table(res: dict[str, Any]) -> str:
    acc = res["accounting"]
    lines = [
        f"# hetfaas bench gateway --soak: {res['clients']} clients for {res['duration_s']:g} s "
        f"(loopback; backend {res['backend']}; gateway --max-inflight "
        f"{res.get('max_inflight') or 'default (max_workers)'})",
        "",
        "| requests | n | per s | p50 ms | p99 ms | max ms |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    names = {
        "invoke_noop": "blocking invoke, no-op", "invoke_nap": "blocking invoke, 1-10 ms sleep",
        "async_accept": "async invoke (202)", "async_fetch": "fetch, GET ?wait=60",
        "async_end_to_end": "async: 202 to its record (fetch included)",
        "blocking_fetch": "fetch after a 202 from a blocking invoke",
    }  # fmt: skip
    rows = [("all blocking invokes", res["blocking"])]
    rows += [(names.get(k, k), v) for k, v in res["kinds"].items()]
    for name, s in rows:
        if s.get("n"):
            lines.append(f"| {name} | {s['n']:,} | {s['per_s']:,.0f} | {s['p50_ms']:.1f} | "
                         f"{s['p99_ms']:.1f} | {s['max_ms']:.0f} |")  # fmt: skip
    lines += [
        "",
        f"- {res['requests']:,} requests in {res['wall_s']:.1f} s: {res['requests_per_s']:,.0f}"
        f"/s; {acc['accepted']:,} invocations accepted ({res['invocations_per_s']:,.0f}/s)",
        f"- statuses: {res['status']}; 5xx: {res['http_5xx']}; other errors: "
        f"{res['http_other']}; no answer: {sum(res['no_answer'].values())} "
        f"{res['no_answer'] or ''}",
        f"- in the store after the run: {acc['completed_right']:,} of {acc['accepted']:,} "
        f"accepted invocations completed with their own result; lost {acc['lost']}, not ended "
        f"{acc['not_final']}, wrong {acc['wrong']} (wrong in a response: "
        f"{res['wrong_in_response']}); records not acknowledged to a client: "
        f"{acc['not_acknowledged']}",
        f"- verdict: {'OK: zero 5xx, zero lost' if res['ok'] else 'FAILED'}",
    ]
    if acc["examples"] or res["wrong_examples"]:
        lines.append(f"- examples: {acc['examples'] + res['wrong_examples']}")
    return "\n".join(lines)


def write_json(res: dict[str, Any], out: str | Path | None, name: str) -> Path | None:
    if not out:
        return None
    path = Path(out)
    path.mkdir(parents=True, exist_ok=True)
    path = path / name
    path.write_text(json.dumps(res, indent=1, default=str) + "\n")
    return path


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The soak's options, beside those of ``hetfaas bench gateway`` (``--clients``,
    ``--backend``, ``--max-inflight``, ``--json`` are shared)."""
    parser.add_argument("--soak", action="store_true",
                        help="the soak: --clients (200) for --duration s, none lost")  # fmt: skip
    parser.add_argument("--duration", type=float, default=60.0,
                        help="--soak: seconds of load (60)")  # fmt: skip
    parser.add_argument("--seed", type=int, default=0, help="--soak: the clients' mix")
    parser.add_argument("--out", default=None, metavar="DIR",
                        help="write the results JSON here (gateway_soak.json)")  # fmt: skip
    parser.set_defaults(given=frozenset())  # the options given, by GivenAction


def run(args: argparse.Namespace) -> int:
    clients = args.clients if "clients" in args.given else 200
    res = run_soak(clients, args.duration, args.backend, args.max_inflight, args.seed)
    if args.json:
        json.dump(res, sys.stdout, indent=1, default=str)
        sys.stdout.write("\n")
    else:
        print(format_table(res))
    path = write_json(res, args.out, "gateway_soak.json")
    if path is not None and not args.json:
        print(f"\nresults: {path}")
    return 0 if res["ok"] else 1


__all__ = [
    "GivenAction", "add_arguments", "format_table", "gateway_process", "log_tail", "nap", "noop",
    "run", "run_soak", "write_json",
]  # fmt: skip
