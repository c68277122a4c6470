"""``hetfaas bench gateway --binary-mb 100``: a large array argument through the gateway,
next to one in-process copy of it and the local backend's call, in one run.

Measured one after the other, each the median of ``--repeats``:

1. one in-process copy of the array (``numpy.copyto`` into a buffer made beforehand): the
   yardstick of the target ("a 100 MB argument moves through the gateway in <= 3x one copy");
2. the local backend's call with the array (``ex.submit(touch, x).result()``: the pool copies
   it into shared memory);
3. the same bytes POSTed to a bare FastAPI route on uvicorn that reads them as they stream in
   and drops them (``/drain`` of the echo server): HTTP's floor on this machine;
4. a blocking invoke through ``hetfaas serve`` (its own process, fresh store) with the array as
   the body, raw (``application/octet-stream`` + ``X-Dtype``/``X-Shape``) and as ``.npy``: the
   gateway streams the body into a file, the worker maps it (see
   :mod:`hetfaas.gateway.binary`).

The function reads one byte of every page of its argument, so each path's time includes the
argument reaching the function's memory, not only its reference. The client is the standard
library's ``http.client`` with the bytes ready in memory.
"""

from __future__ import annotations

import http.client
import io
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from .. import machine


def touch(x: Any) -> int:
    """Read one byte of each 4 KiB page of ``x`` (so its bytes reach this process)."""
    return int(np.asarray(x).reshape(-1).view(np.uint8)[::4096].sum(dtype=np.int64))


def _median_s(fn: Any, repeats: int) -> tuple[float, list[float]]:
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times), times


def run_binary_bench(mb: float = 100.0, repeats: int = 5) -> dict[str, Any]:
    from .._executor import Executor
    from ..gateway.store import Store
    from .gateway import _free_port, _server

    n = int(mb * 1e6) // 4
    x = np.random.default_rng(0).random(n, dtype=np.float32)
    want = touch(x)
    out: dict[str, Any] = {"machine": machine.describe(), "bytes": x.nbytes, "repeats": repeats}
    dst = np.empty_like(x)
    np.copyto(dst, x)  # fault its pages in first
    out["copy_s"], _ = _median_s(lambda: np.copyto(dst, x), repeats)
    with Executor() as ex:
        ex.submit(touch, x[:1024]).result()
        out["local_s"], _ = _median_s(lambda: ex.submit(touch, x).result(), repeats)
    buf = io.BytesIO()
    np.save(buf, x)
    npy = buf.getvalue()
    raw = x.tobytes()
    port = _free_port()
    echo = [
        sys.executable,
        "-c",
        f"from hetfaas.bench.gateway import _echo_main; _echo_main({port})",
    ]
    with _server(echo, port):  # the floor: the same bytes into a bare route that drops them
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=300)

        def drain() -> None:
            conn.request("POST", "/drain", body=raw,
                         headers={"Content-Type": "application/octet-stream"})  # fmt: skip
            resp = conn.getresponse()
            if json.loads(resp.read()) != len(raw):
                raise RuntimeError("the bare route did not get the whole body")

        drain()
        out["drain_s"], _ = _median_s(drain, repeats)
        conn.close()
    with tempfile.TemporaryDirectory(prefix="hetfaas-bench-binary-") as tmp:
        store_path = Path(tmp) / "gateway.db"
        with Store(store_path) as s:
            _, token = s.create_token("bench")
        port = _free_port()
        argv = [sys.executable, "-m", "hetfaas.gateway", "serve", "--port", str(port),
                "--store", str(store_path), "--allow-module", "hetfaas.bench.gateway_binary",
                "--max-binary-mb", str(2 * mb + 10), "--log-level", "warning"]  # fmt: skip
        with _server(argv, port):
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=300)
            auth = {"Authorization": f"Bearer {token}"}

            def post(path: str, body: bytes, headers: dict[str, str]) -> dict[str, Any]:
                conn.request("POST", path, body=body, headers={**auth, **headers})
                resp = conn.getresponse()
                data = resp.read()
                if resp.status not in (200, 201):
                    raise RuntimeError(f"{path}: HTTP {resp.status}: {data[:300]!r}")
                return json.loads(data)

            post("/v1/functions", b'{"import_path": "hetfaas.bench.gateway_binary:touch"}',
                 {"Content-Type": "application/json"})  # fmt: skip
            path = "/v1/functions/touch/invoke?wait=120"
            kinds = {
                "raw": (raw, {"Content-Type": "application/octet-stream", "X-Dtype": "float32",
                              "X-Shape": str(n)}),
                "npy": (npy, {"Content-Type": "application/x-npy"}),
            }  # fmt: skip
            for name, (body, headers) in kinds.items():
                records: list[dict[str, Any]] = []

                def once(
                    body: bytes = body,
                    headers: dict[str, str] = headers,
                    records: list[dict[str, Any]] = records,
                ) -> None:
                    rec = post(path, body, headers)
                    if rec["state"] != "COMPLETED" or rec["result"] != want:
                        raise RuntimeError(f"the call did not see the array: {rec}")
                    records.append(rec)

                once()  # warm: the worker and the route
                records.clear()
                out[f"gateway_{name}_s"], _ = _median_s(once, repeats)
                out[f"gateway_{name}_compute_ms"] = statistics.median(
                    r["timings"]["compute_us"] / 1e3 for r in records
                )
            conn.close()
    for key in ("local_s", "drain_s", "gateway_raw_s", "gateway_npy_s"):
        out[key.replace("_s", "_over_copy")] = out[key] / out["copy_s"]
    return out


def format_table(res: dict[str, Any]) -> str:
    mb = res["bytes"] / 1e6
    rows = [
        ("one in-process copy (numpy.copyto)", res["copy_s"], None),
        ("local backend: ex.submit(touch, x).result()", res["local_s"], res["local_over_copy"]),
        ("bare FastAPI route reading the body as it streams (the floor)", res["drain_s"],
         res["drain_over_copy"]),
        ("gateway blocking invoke, raw octet-stream", res["gateway_raw_s"],
         res["gateway_raw_over_copy"]),
        ("gateway blocking invoke, .npy", res["gateway_npy_s"], res["gateway_npy_over_copy"]),
    ]  # fmt: skip
    lines = [
        f"# hetfaas bench gateway --binary-mb {mb:g} (median of {res['repeats']}; loopback)",
        "",
        "| path | ms | GB/s | / one copy |",
        "|---|---:|---:|---:|",
    ]
    for name, s, ratio in rows:
        r = "1.0" if ratio is None else f"{ratio:.1f}"
        lines.append(f"| {name} | {s * 1e3:.1f} | {res['bytes'] / s / 1e9:.2f} | {r} |")
    lines.append(
        f"- the function's own time in the gateway calls (reading one byte per page of the "
        f"mapped file): raw {res['gateway_raw_compute_ms']:.1f} ms, .npy "
        f"{res['gateway_npy_compute_ms']:.1f} ms"
    )
    return "\n".join(lines)


__all__ = ["format_table", "run_binary_bench", "touch"]
