"""Binary bodies (raw with X-Dtype/X-Shape, .npy, safetensors) through a real gateway over a
real local pool: what the function receives, the errors of bad bodies, input files removed
when the call ends, and a queued binary call that a restart runs with its input."""

from __future__ import annotations

import io
import json
import struct
import threading
import time

import numpy as np
import pytest

import hetfaas

pytest.importorskip("fastapi")
httpx = pytest.importorskip("httpx")

from hetfaas.gateway import BackgroundServer, Engine, Store, create_app  # noqa: E402
from hetfaas.gateway.binary import FileArray, input_json, sweep  # noqa: E402
from hetfaas.gateway.records import to_json  # noqa: E402

FUNCS = "tests.gateway.arrayfuncs"
OCTET = "application/octet-stream"


@pytest.fixture(scope="module")
def gw(tmp_path_factory):
    store = Store(tmp_path_factory.mktemp("binary") / "g.db")
    executor = hetfaas.Executor(max_workers=2)
    app = create_app(store, executor, allowed_modules=[FUNCS], purge_every_s=None, grace_s=1.0,
                     max_body_bytes=10_000, max_binary_bytes=50_000_000)  # fmt: skip
    server = BackgroundServer(app)
    server.start()
    _, token = store.create_token("bin")
    http = httpx.Client(base_url=server.url, headers={"Authorization": f"Bearer {token}"},
                        timeout=60)  # fmt: skip
    for fn in ("describe", "tensors", "nbytes"):
        r = http.post("/v1/functions", json={"import_path": f"{FUNCS}:{fn}"})
        assert r.status_code in (200, 201), r.text
    yield store, http
    http.close()
    server.stop()
    executor.shutdown(wait=False, cancel_futures=True)
    store.close()


def _invoke(http, body, headers, fn="describe", route="invoke"):
    return http.post(f"/v1/functions/{fn}/{route}?wait=30", content=body, headers=headers)


def _inputs(store) -> list[str]:
    folder = store.results_dir / "inputs"
    return sorted(p.name for p in folder.iterdir()) if folder.is_dir() else []


def _safetensors(named: dict[str, np.ndarray]) -> bytes:
    """A safetensors file as its format is documented: u64 header size, JSON header, data."""
    codes = {np.dtype("<f4"): "F32", np.dtype("<i8"): "I64", np.dtype("u1"): "U8"}
    header, blobs, at = {"__metadata__": {"made": "test"}}, [], 0
    for name, arr in named.items():
        data = np.ascontiguousarray(arr).tobytes()
        header[name] = {"dtype": codes[arr.dtype], "shape": list(arr.shape),
                        "data_offsets": [at, at + len(data)]}  # fmt: skip
        blobs.append(data)
        at += len(data)
    text = json.dumps(header).encode()
    return struct.pack("<Q", len(text)) + text + b"".join(blobs)


def test_a_raw_array_reaches_the_function_as_an_array_by_reference(gw):
    store, http = gw
    x = np.arange(200_000, dtype=np.float32).reshape(400, 500)
    r = _invoke(http, x.tobytes(), {"Content-Type": OCTET, "X-Dtype": "float32",
                                    "X-Shape": "400x500", "X-Hetfaas-Args": "[2.0]",
                                    "X-Hetfaas-Kwargs": '{"offset": 1}'})  # fmt: skip
    assert r.status_code == 200, r.text
    rec = r.json()
    assert rec["state"] == "COMPLETED", rec["error"]
    out = rec["result"]
    assert out["kind"] == "numpy.memmap" and out["dtype"] == "float32"
    assert out["shape"] == [400, 500] and out["first"] == [0.0, 1.0, 2.0]
    assert out["sum"] == pytest.approx(float(x.astype(np.float64).sum()) * 2 + 1)
    assert _inputs(store) == []  # removed once the end was recorded


def test_npy_fortran_order_and_torch_tensors(gw):
    _, http = gw
    x = np.asfortranarray(np.arange(12, dtype=np.int64).reshape(3, 4))
    buf = io.BytesIO()
    np.save(buf, x)
    r = _invoke(http, buf.getvalue(), {"Content-Type": "application/x-npy"})
    out = r.json()["result"]
    assert out["shape"] == [3, 4] and out["dtype"] == "int64" and out["f_contiguous"]
    assert out["first"] == [0.0, 1.0, 2.0]  # the same matrix, kept in column-major order
    pytest.importorskip("torch")
    torch_x = {"Content-Type": "application/x-npy", "X-Hetfaas-Array": "torch",
               "X-Hetfaas-Param": "x"}  # fmt: skip
    r = _invoke(http, buf.getvalue(), torch_x)
    out = r.json()["result"]
    assert out["kind"] == "torch.Tensor" and out["sum"] == 66.0


def test_safetensors_tensors_arrive_as_keywords(gw):
    _, http = gw
    named = {"w": np.ones((3, 5), np.float32), "ids": np.arange(7, dtype=np.int64),
             "mask": np.array([1, 0, 1], np.uint8)}  # fmt: skip
    r = _invoke(http, _safetensors(named), {"Content-Type": "application/x-safetensors"},
                fn="tensors")  # fmt: skip
    out = r.json()["result"]
    assert out == {
        "ids": {"kind": "memmap", "dtype": "int64", "shape": [7], "sum": 21.0},
        "mask": {"kind": "memmap", "dtype": "uint8", "shape": [3], "sum": 2.0},
        "w": {"kind": "memmap", "dtype": "float32", "shape": [3, 5], "sum": 15.0},
    }


def test_async_binary_call_with_its_result_fetched_later(gw):
    _, http = gw
    x = np.zeros(1000, np.uint8)
    head = {"Content-Type": OCTET, "X-Dtype": "uint8", "X-Shape": "1000"}
    r = http.post("/v1/functions/nbytes/async", content=x.tobytes(), headers=head)
    assert r.status_code == 202, r.text
    rec = http.get(f"/v1/invocations/{r.json()['id']}?wait=30").json()
    assert rec["state"] == "COMPLETED" and rec["result"] == 1000


@pytest.mark.parametrize(
    "body, headers, status, needle",
    [
        (b"\0" * 8, {"X-Shape": "2"}, 422, "X-Dtype"),
        (b"\0" * 8, {"X-Dtype": "float32"}, 422, "X-Shape"),
        (b"\0" * 8, {"X-Dtype": "object", "X-Shape": "1"}, 422, "plain numeric"),
        (b"\0" * 8, {"X-Dtype": "float32", "X-Shape": "3"}, 422, "12 bytes"),
        (b"\0" * 8, {"X-Dtype": "float32", "X-Shape": "-2"}, 422, "non-negative"),
        (b"\0" * 8, {"X-Dtype": "float32", "X-Shape": "2", "X-Hetfaas-Args": "{"}, 422, "JSON"),
        (b"\0" * 8, {"X-Dtype": "f4", "X-Shape": "2", "X-Hetfaas-Array": "jax"}, 422, "numpy"),
    ],
)
def test_a_raw_body_that_is_not_what_its_headers_say_is_refused(gw, body, headers, status, needle):
    store, http = gw
    r = _invoke(http, body, {"Content-Type": OCTET, **headers})
    assert r.status_code == status and needle in r.json()["detail"], r.text
    assert _inputs(store) == []


def test_bad_npy_and_safetensors_bodies_are_refused_with_what_is_wrong(gw):
    store, http = gw
    buf = io.BytesIO()
    np.save(buf, np.array([{"a": 1}], dtype=object), allow_pickle=True)
    r = _invoke(http, buf.getvalue(), {"Content-Type": "application/x-npy"})
    assert r.status_code == 422 and "never unpickles" in r.json()["detail"]
    r = _invoke(http, b"not an npy file", {"Content-Type": "application/x-npy"})
    assert r.status_code == 422 and ".npy" in r.json()["detail"]
    good = _safetensors({"w": np.ones(4, np.float32)})
    r = _invoke(http, good[:-4], {"Content-Type": "application/x-safetensors"}, fn="tensors")
    assert r.status_code == 422 and "data_offsets" in r.json()["detail"]
    r = _invoke(http, struct.pack("<Q", 10**9) + b"{}", {"Content-Type": "application/safetensors"})
    assert r.status_code == 422 and "header size" in r.json()["detail"]
    assert _inputs(store) == []


def test_the_guard_wants_a_length_a_known_function_and_a_size_within_the_limit(gw):
    store, http = gw
    r = _invoke(http, b"\0" * 8, {"Content-Type": OCTET, "X-Dtype": "u1", "X-Shape": "8"},
                fn="nosuch")  # fmt: skip
    assert r.status_code == 404
    r = _invoke(http, iter([b"\0" * 8]), {"Content-Type": OCTET, "X-Dtype": "u1", "X-Shape": "8"})
    assert r.status_code == 411 and "Content-Length" in r.json()["detail"]
    big = b"\0" * 50_000_001
    r = _invoke(http, big, {"Content-Type": OCTET, "X-Dtype": "u1", "X-Shape": str(len(big))})
    assert r.status_code == 413 and r.json()["limit_bytes"] == 50_000_000
    r = http.post("/v1/functions/describe/batch", content=b"\0", headers={"Content-Type": OCTET})
    assert r.status_code == 415  # binary bodies only where one call takes one array
    r = http.post("/v1/functions/describe/invoke", content=b"\0" * 20_000,
                  headers={"Content-Type": "application/json"})  # fmt: skip
    assert r.status_code == 413  # JSON keeps its own, smaller limit
    assert _inputs(store) == []


def test_a_queued_binary_call_runs_after_a_restart_with_its_input(tmp_path):
    """A binary call accepted but not handed over when the gateway stopped: the next start
    runs it from the store, its input file still there, then removes the file."""
    ex = hetfaas.Executor(max_workers=1)
    store = Store(tmp_path / "g.db")
    try:
        first = Engine(store, ex, allowed_modules=[FUNCS, "time"], max_inflight=1)
        first.start(purge_every_s=None)
        first.deploy("ns", "time:sleep")
        first.deploy("ns", f"{FUNCS}:describe")
        blocker, _ = first.accept("ns", "sleep", [([1.0], {})])
        path = store.results_dir / "inputs" / "restart.bin"
        path.parent.mkdir(parents=True, exist_ok=True)
        np.arange(10, dtype=np.float64).tofile(path)
        arg = FileArray(str(path), "<f8", (10,))
        ids, states = first.accept("ns", "describe", [([arg], {})], files=[str(path)])
        assert states.result(10) == ["QUEUED"]  # behind the sleeping call
        first.stop(grace_s=0)  # as a crash: it stays QUEUED in the store
        assert store.invocation(ids[0])["state"] == "QUEUED" and path.exists()
        second = Engine(store, ex, allowed_modules=[FUNCS, "time"], max_inflight=1)
        second.start(purge_every_s=None)
        rec = second.wait(ids, 30)[ids[0]]
        assert rec["state"] == "COMPLETED", rec
        assert json.loads(store.invocation(ids[0])["result"])["sum"] == 45.0
        deadline = time.monotonic() + 5
        while path.exists() and time.monotonic() < deadline:
            time.sleep(0.02)
        assert not path.exists()
        second.wait(blocker, 30)
        second.stop(grace_s=1)
    finally:
        ex.shutdown(wait=False, cancel_futures=True)
        store.close()


def test_stored_input_keeps_arrays_apart_and_sweep_removes_only_orphans(tmp_path):
    store = Store(tmp_path / "g.db")
    try:
        folder = store.results_dir / "inputs"
        folder.mkdir(parents=True)
        live, dead = folder / "live.bin", folder / "dead.bin"
        for p in (live, dead):
            p.write_bytes(b"\0" * 8)
        text = input_json([FileArray(str(live), "<f8", (1,)), 3], {"k": 1}, to_json)
        data = json.loads(text)
        assert data["args"] == [None, 3] and data["arrays"][0]["file"] == "live.bin"
        sql = ("INSERT INTO invocations (id, namespace, function, state, attempts, input,"
               " submitted_at) VALUES ('q', 'ns', 'f', 'QUEUED', 0, ?, ?)")  # fmt: skip
        store.write(lambda c: c.execute(sql, (text, time.time())))
        assert sweep(store, older_than_s=3600) == 0  # both too young
        assert sweep(store, older_than_s=0) == 1
        assert live.exists() and not dead.exists()
    finally:
        store.close()


def test_a_json_body_cannot_forge_an_array_reference(gw):
    _, http = gw
    forged = {"args": [1], "arrays": [{"arg": 0, "file": "../../etc/passwd", "dtype": "u1",
                                       "shape": [4], "offset": 0}]}  # fmt: skip
    r = http.post("/v1/functions/describe/invoke", json=forged)
    assert r.status_code == 422 and "unknown field" in r.json()["detail"]


def test_concurrent_binary_invokes_each_get_their_own_input(gw):
    store, http = gw
    results: dict[int, float] = {}

    def one(k: int) -> None:
        x = np.full(5000, k, np.float32)
        r = _invoke(http, x.tobytes(), {"Content-Type": OCTET, "X-Dtype": "float32",
                                        "X-Shape": "5000"})  # fmt: skip
        results[k] = r.json()["result"]["sum"]

    threads = [threading.Thread(target=one, args=(k,)) for k in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert results == {k: 5000.0 * k for k in range(8)}
    assert _inputs(store) == []
