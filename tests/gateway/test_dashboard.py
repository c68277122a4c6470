"""The dashboard's data model, panel by panel, through its JSON routes: a real gateway (uvicorn
on 127.0.0.1) over a real local pool and SQLite store (the ``gateway`` fixture)."""

from __future__ import annotations

import json
import time
from importlib import resources

import httpx
import pytest

from hetfaas.gateway import auth
from hetfaas.gateway.dashboard import PUBLIC_PATHS, STATIC_FILES, ResourceMonitor
from hetfaas.gateway.dashboard_data import PHASES, WORKER_ROWS, task_segments

ROUTES = ("summary", "workers", "queue", "stream", "batches", "resources", "serving")


def _wait(check, timeout=10.0, every=0.05):
    end = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        assert time.monotonic() < end, "timed out"
        time.sleep(every)


def _phases(task, stream):
    return [stream["phases"][k] for k, _, _ in task["g"]]


def test_the_shell_and_its_files_need_no_token_and_hold_no_data(gateway):
    assert set(PUBLIC_PATHS) == set(auth.PUBLIC_DASHBOARD)
    assert set(PUBLIC_PATHS) == {"/dashboard", *(f"/dashboard/static/{n}" for n in STATIC_FILES)}
    t = gateway.tenant()
    resp = httpx.get(gateway.url + "/dashboard")
    assert resp.status_code == 200 and resp.headers["content-type"].startswith("text/html")
    assert "script-src 'self'" in resp.headers["content-security-policy"]
    html = resp.text
    assert t.namespace not in html and t.token not in html
    for name, ctype in STATIC_FILES.items():
        resp = httpx.get(f"{gateway.url}/dashboard/static/{name}")
        assert resp.status_code == 200 and resp.headers["content-type"] == ctype
        assert f"/dashboard/static/{name}" in html
    folder = resources.files("hetfaas.gateway") / "static"
    for name in ("dashboard.html", *STATIC_FILES):  # shipped in the package, no CDN
        text = (folder / name).read_text()
        assert "http://" not in text and "https://" not in text, name
    # only the listed files are public; every data route needs a token
    assert httpx.get(gateway.url + "/dashboard/static/secrets.js").status_code == 401
    for route in ROUTES:
        assert httpx.get(f"{gateway.url}/v1/dashboard/{route}").status_code == 401, route
        assert t.http.get(f"/v1/dashboard/{route}").status_code == 200, route
    assert httpx.get(gateway.url + "/v1/dashboard/invocations/x").status_code == 401
    assert t.http.get("/v1/dashboard/summary").json()["namespace"] == t.namespace


def test_the_stream_shows_a_batch_per_worker_with_its_phases(gateway):
    t = gateway.tenant()
    t.deploy("sleep")
    t.deploy("shout")
    one = t.http.post("/v1/functions/shout/invoke?wait=30", json={"args": ["hi"]}).json()
    body = t.http.post("/v1/functions/sleep/batch?wait=30",
                       json={"inputs": [{"args": [0.05]}] * 12}).json()  # fmt: skip
    assert body["states"] == ["COMPLETED"] * 12
    s = t.http.get("/v1/dashboard/stream", params={"window": 120}).json()
    assert s["phases"] == list(PHASES)
    assert s["totals"] == {"sleep": 12, "shout": 1} and s["states"] == {"COMPLETED": 13}
    assert s["ended"] == 13 and s["shown"] == 13 and s["truncated"] is False
    assert s["functions"] == ["sleep", "shout"]
    assert sum(map(sum, s["buckets"]["counts"].values())) == 13
    mine = [x for x in s["tasks"] if x["b"] == body["batch"]]
    assert sorted(x["id"] for x in mine) == sorted(body["ids"])
    pids = set(gateway.executor.backend.worker_pids())
    for task in s["tasks"]:
        lane = s["lanes"][task["l"]]
        assert lane["worker"] is not None and lane["pid"] in pids
        assert lane["label"].startswith(f"worker {lane['worker']}")
        starts = [g[1] for g in task["g"]]
        assert starts == sorted(starts) and all(0 < g[1] <= 120 for g in task["g"])
        assert "compute" in _phases(task, s)
    for task in mine:  # each item of a chunk: its own slice of the chunk's compute
        compute = next(g for g in task["g"] if s["phases"][g[0]] == "compute")
        assert 0.04 < compute[2] < 1.0
    single = next(x for x in s["tasks"] if x["id"] == one["id"])
    assert {"transfer_in", "compute", "transfer_out"} <= set(_phases(single, s))
    # the lanes are the executor's workers, in order
    workers = [lane["worker"] for lane in s["lanes"]]
    assert workers == sorted(workers)


def test_task_segments_place_a_chunk_item_after_the_ones_before_it():
    timings = {"queue_us": 1000, "cold_start_us": 2000, "transfer_in_us": 500, "compute_us": 4e5,
               "transfer_out_us": 300, "chunk": {"size": 4, "index": 2,
                                                 "compute_per_item_us": 1e5}}  # fmt: skip
    row = {"submitted_at": 100.0, "dispatched_at": 100.5, "started_at": 101.0,
           "finished_at": 101.5, "timings": json.dumps(timings)}  # fmt: skip
    segs = task_segments(row, now=200.0)
    assert [k for k, _, _ in segs] == ["gateway_queue", "compute"]  # not first nor last
    assert segs[1][1] == pytest.approx(101.2) and segs[1][2] == pytest.approx(0.1)
    timings["chunk"]["index"] = 0
    first = task_segments({**row, "timings": json.dumps(timings)}, now=200.0)
    assert [k for k, _, _ in first] == [
        "gateway_queue", "queue", "cold_start", "transfer_in", "compute",
    ]  # fmt: skip
    assert first[-1][1] == pytest.approx(101.0) and first[3][1] == pytest.approx(100.9995)
    running = task_segments({"submitted_at": 100.0, "dispatched_at": 101.0}, now=104.0)
    assert running == [("gateway_queue", 100.0, 1.0), ("running", 101.0, 3.0)]


def test_workers_and_their_slots(gateway):
    t = gateway.tenant()
    t.deploy("add")
    body = t.http.post("/v1/functions/add/batch?wait=30",
                       json={"inputs": [{"args": [i, 1]} for i in range(8)]}).json()  # fmt: skip
    assert body["results"] == [i + 1 for i in range(8)]
    for i in range(3):
        t.http.post("/v1/functions/add/invoke?wait=30", json={"args": [i]})
    w = t.http.get("/v1/dashboard/workers").json()
    cap = gateway.executor.capacity
    assert w["backend"] == "local"
    assert w["capacity"]["cpus"] == cap.cpus and w["capacity"]["max_workers"] == cap.max_workers
    assert [c["id"] for c in w["cores"]] == list(gateway.executor.backend.cores)
    assert len(w["gpus"]) == cap.gpus
    assert sum(r["calls"] for r in w["workers"]) == 11
    assert sum(c["calls"] for c in w["cores"]) == 11  # one core per call
    pids = set(gateway.executor.backend.worker_pids())
    for rec in w["workers"]:
        assert rec["alive"] is True and rec["pid"] in pids
        assert rec["functions"] == {"add": rec["calls"]} and rec["last_function"] == "add"
        assert set(rec["cpus"]) <= set(cap_core for cap_core in gateway.executor.backend.cores)
    stats = w["stats"]
    assert sum(stats[k] for k in ("workers_idle", "workers_busy", "workers_starting")) >= 1
    assert w["machine"]["logical_cores"] >= cap.cpus and w["machine"]["memory_mb"] > 0


def test_queue_running_calls_and_batch_progress(gateway):
    t = gateway.tenant()
    t.deploy("sleep")
    ids = [t.http.post("/v1/functions/sleep/async", json={"args": [1.5]}).json()["id"]
           for _ in range(4)]  # fmt: skip

    def both():
        q = t.http.get("/v1/dashboard/queue").json()
        return q if q["namespace"] == {"QUEUED": 2, "RUNNING": 2} else None

    q = _wait(both, 5.0)  # max_inflight=2: two run, two wait in the gateway's queue
    assert q["by_function"] == {"QUEUED": {"sleep": 2}, "RUNNING": {"sleep": 2}}
    assert q["gateway"]["inflight"] == 2 and q["gateway"]["max_inflight"] == 2
    assert q["gateway"]["queued"] >= 2
    assert set(q["history"]) >= {"t", "gateway_queued", "gateway_inflight", "executor_running"}
    s = t.http.get("/v1/dashboard/stream").json()
    assert s["open"]["RUNNING"] == {"sleep": 2} and s["open"]["QUEUED"] == {"sleep": 2}
    running = [x for x in s["tasks"] if x["s"] == "RUNNING"]
    assert len(running) == 2 and {x["id"] for x in running} <= set(ids)
    assert s["lanes"][running[0]["l"]]["key"] == "running"
    assert _phases(running[0], s)[-1] == "running"
    batch = t.http.post("/v1/functions/sleep/batch",
                        json={"inputs": [{"args": [0.01]}] * 5}).json()["batch"]  # fmt: skip
    b = t.http.get("/v1/dashboard/batches").json()["batches"]
    assert [x["batch"] for x in b] == [batch]
    assert b[0]["total"] == 5 and b[0]["progress"] < 1 and b[0]["finished_at"] is None
    rows = t.http.post("/v1/invocations/wait", json={"ids": ids, "timeout": 0}).json()
    assert rows["pending"]  # still running: the batch waits behind them

    def ended():
        b = t.http.get("/v1/dashboard/batches").json()["batches"][0]
        return b if b["progress"] == 1.0 else None

    b = _wait(ended, 20.0, 0.2)
    assert (b["completed"], b["failed"], b["ended"]) == (5, 0, 5) and b["finished_at"]
    q = t.http.get("/v1/dashboard/queue").json()
    assert q["namespace"] == {"QUEUED": 0, "RUNNING": 0}


def test_resources_come_from_the_monitor_into_a_bounded_ring(gateway):
    t = gateway.tenant()

    def two():
        r = t.http.get("/v1/dashboard/resources").json()
        return r if r["count"] >= 2 else None

    r = _wait(two, 10.0, 0.2)
    assert r["running"] is True and r["interval_s"] == 1.0
    s = r["samples"]
    assert set(s) == set(r["columns"]) and len(s["t"]) == r["count"]
    assert s["t"] == sorted(s["t"]) and abs(s["t"][-1] - time.time()) < 5
    assert all(0 <= v <= 100 for v in s["machine_cpu_percent"])
    assert all(v > 0 for v in s["machine_mem_mb"]) and all(v > 0 for v in s["rss_mb"])
    assert all(p >= 1 for p in s["processes"])
    assert r["memory_total_mb"] > max(s["machine_mem_mb"])
    later = t.http.get("/v1/dashboard/resources", params={"after": s["t"][-1]}).json()
    assert all(x > s["t"][-1] for x in later["samples"]["t"])
    # the ring keeps the last `size` samples; the sampler keeps only its last one
    from hetfaas.monitor import Sampler

    mon = ResourceMonitor(lambda: {"queued": 1, "inflight": 2}, interval_s=1.0, size=3)
    sampler = Sampler(gpus=False)
    for _ in range(5):
        mon.sample(sampler)
    assert len(mon.ring) == 3 and len(sampler.samples) == 1
    cols = mon.columns()
    assert cols["gateway_queued"] == [1, 1, 1] and cols["gateway_inflight"] == [2, 2, 2]


def test_the_serving_panel_is_empty_without_a_runtime(gateway):
    t = gateway.tenant()
    body = t.http.get("/v1/dashboard/serving").json()
    assert body["runtimes"] == [] and "no serving runtime" in body["detail"]


def test_the_serving_panel_shows_a_runtime_s_model_caches(gateway):
    torch = pytest.importorskip("torch")
    from hetfaas.serving import GPUManager, InferenceFunction, Runtime

    fn = InferenceFunction()
    fn.register("tiny", lambda: torch.nn.Linear(4, 2))
    fn.register("small", lambda: torch.nn.Linear(16, 16))
    rt = Runtime(fn, [GPUManager.cpu(2, 1 << 20)], policy="lalb")
    dash = gateway.app.state.dashboard
    try:
        rt.infer("tiny", torch.zeros(1, 4))
        dash.add_serving(rt)
        body = gateway.tenant().http.get("/v1/dashboard/serving").json()
        (one,) = body["runtimes"]
        assert one["policy"] == "lalb" and one["models"] == ["tiny", "small"]
        assert one["requests"] == 1 and one["summary"]["requests"] == 1
        assert len(one["devices"]) == 2 and body["detail"] is None
        held = [d for d in one["devices"] if d["models"]]
        assert len(held) == 1 and held[0]["models"] == [{"name": "tiny", "bytes": 40}]
        assert held[0]["used_bytes"] == 40 and held[0]["memory_bytes"] == 1 << 20
        assert held[0]["free_bytes"] == (1 << 20) - 40
    finally:
        dash.remove_serving(rt)
        rt.close()


def test_an_invocation_s_detail(gateway):
    t = gateway.tenant()
    t.deploy("shout")
    t.deploy("fail")
    ok = t.http.post("/v1/functions/shout/invoke?wait=30", json={"args": ["hey"]}).json()
    bad = t.http.post("/v1/functions/fail/invoke?wait=30", json={"args": ["nope"]}).json()
    d = t.http.get(f"/v1/dashboard/invocations/{ok['id']}").json()
    assert (d["state"], d["function"], d["ended"]) == ("COMPLETED", "shout", True)
    assert "out: hey" in d["stdout"] and "err: hey" in d["stderr"]
    assert d["result_preview"] == '"HEY"' and d["result_truncated"] is False
    assert d["timings"]["compute_us"] > 0
    assert d["lane"] == f"worker {d['timings']['worker']} (pid {d['timings']['pid']})"
    kinds = [p["phase"] for p in d["phases"]]
    assert "compute" in kinds and [p["start_s"] for p in d["phases"]] == sorted(
        p["start_s"] for p in d["phases"]
    )
    t.deploy("sleep")  # the pool measures the usage of calls of 1 ms or more
    slow = t.http.post("/v1/functions/sleep/invoke?wait=30", json={"args": [0.02]}).json()
    d = t.http.get(f"/v1/dashboard/invocations/{slow['id']}").json()
    assert d["usage"]["wall_s"] >= 0.02 and d["usage"]["cpus"] == 1
    d = t.http.get(f"/v1/dashboard/invocations/{bad['id']}").json()
    assert d["state"] == "FAILED" and d["error"]["type"] == "ValueError"
    assert d["error"]["message"] == "nope" and "Traceback" in d["error"]["traceback"]
    assert d["result_preview"] is None
    other = gateway.tenant()
    assert other.http.get(f"/v1/dashboard/invocations/{ok['id']}").status_code == 404
    assert t.http.get("/v1/dashboard/invocations/nothing").status_code == 404


def test_a_token_of_another_namespace_sees_none_of_these_invocations(gateway):
    t, other = gateway.tenant(), gateway.tenant()
    t.deploy("add")
    body = t.http.post("/v1/functions/add/batch?wait=30",
                       json={"inputs": [{"args": [i]} for i in range(6)]}).json()  # fmt: skip
    assert body["states"] == ["COMPLETED"] * 6
    mine = t.http.get("/v1/dashboard/stream").json()
    assert mine["ended"] == 6
    s = other.http.get("/v1/dashboard/stream", params={"window": 3600}).json()
    assert s["tasks"] == [] and s["totals"] == {} and s["ended"] == 0 and s["lanes"] == []
    assert other.http.get("/v1/dashboard/batches").json()["batches"] == []
    assert other.http.get("/v1/dashboard/workers").json()["workers"] == []
    assert other.http.get("/v1/dashboard/queue").json()["namespace"] == {"QUEUED": 0, "RUNNING": 0}
    summary = other.http.get("/v1/dashboard/summary").json()
    assert summary["namespace"] == other.namespace and summary["functions"] == []
    for i in body["ids"]:
        assert other.http.get(f"/v1/dashboard/invocations/{i}").status_code == 404
    text = json.dumps([other.http.get(f"/v1/dashboard/{r}").json() for r in ROUTES])
    assert not any(i in text for i in body["ids"]) and body["batch"] not in text


def _insert(store, namespace, n, now, n_functions=1, batches=0):
    """``n`` ended invocations of ``namespace`` straight into the store (generated by SQLite
    itself: no executor, no Python loop), ending over the 50 s before ``now``: call ``i`` is of
    function ``f{k}`` (``k = i % n_functions``, or 0 when ``i % 3 == 0``), ran on worker
    ``i % 8``, failed when ``i % 50 == 0``; the counts per function."""
    sql = """
    WITH RECURSIVE n(i) AS (SELECT 0 UNION ALL SELECT i + 1 FROM n WHERE i < :n - 1),
    c AS (SELECT i, :now - 50.0 + 49.0 * i / :n AS fin,
                 CASE WHEN i % 3 = 0 THEN 0 ELSE i % :k END AS k FROM n)
    INSERT INTO invocations (id, namespace, function, state, submitted_at, dispatched_at,
                             started_at, finished_at, attempts, input, result, timings, batch)
    SELECT printf('%s-%08d', :ns, i), :ns, 'f' || k,
           CASE WHEN i % 50 = 0 THEN 'FAILED' ELSE 'COMPLETED' END,
           fin - 0.01, fin - 0.008, fin - 0.006, fin, 1, '{}', 'null',
           '{"queue_us":20.0,"cold_start_us":0.0,"transfer_in_us":30.0,"compute_us":'
             || (100 + (i * 37) % 4900) || ',"transfer_out_us":25.0,"total_us":6000.0,'
             || '"worker":' || (i % 8) || ',"pid":' || (10000 + i % 8) || ',"cpus":['
             || (i % 8) || '],"gpus":[],"backend":"local"}',
           CASE WHEN :b > 0 THEN printf('batch-%s-%d', :ns, i % :b) END
    FROM c"""
    params = {"n": n, "now": now, "k": n_functions, "ns": namespace, "b": batches}
    store.write(lambda conn: conn.execute(sql, params))
    counts: dict[str, int] = {}
    for i in range(n):
        key = f"f{0 if i % 3 == 0 else i % n_functions}"
        counts[key] = counts.get(key, 0) + 1
    return counts


def test_100k_invocations_answer_capped_and_aggregated(gateway):
    t, other = gateway.tenant(), gateway.tenant()
    now = time.time()
    counts = _insert(gateway.store, t.namespace, 100_000, now, n_functions=5, batches=40)
    _insert(gateway.store, other.namespace, 3000, now)
    t0 = time.perf_counter()
    window = {"window": 60, "until": now + 1}  # the rows ended in the 50 s before `now`
    resp = t.http.get("/v1/dashboard/stream", params={**window, "limit": 500, "buckets": 50})
    took = time.perf_counter() - t0
    assert resp.status_code == 200
    s = resp.json()
    assert len(resp.content) < 1_000_000 and took < 10.0, (len(resp.content), took)
    assert len(s["tasks"]) == s["shown"] == 500 and s["truncated"] is True
    assert s["ended"] == 100_000 and s["totals"] == counts
    assert sum(s["totals"].values()) == 100_000
    assert sum(s["states"].values()) == 100_000 and s["states"]["FAILED"] == 2000
    per_fn = {f: sum(c) for f, c in s["buckets"]["counts"].items()}
    assert per_fn == counts and all(len(c) == 50 for c in s["buckets"]["counts"].values())
    by_bucket = [sum(c[i] for c in s["buckets"]["counts"].values()) for i in range(50)]
    assert sum(by_bucket) == 100_000 and max(by_bucket) < 100_000 / 50 * 1.5
    latest = max(x["g"][-1][1] for x in s["tasks"])  # the tasks are the latest to end
    assert all(x["g"][-1][1] > latest - 1.0 for x in s["tasks"])
    assert len(s["lanes"]) == 8 and [lane["worker"] for lane in s["lanes"]] == list(range(8))
    # the other panels stay capped too
    w = t.http.get("/v1/dashboard/workers").json()
    assert len(w["workers"]) == 8 and sum(r["calls"] for r in w["workers"]) == WORKER_ROWS
    b = t.http.get("/v1/dashboard/batches").json()["batches"]
    assert len(b) == 20 and all(x["total"] == 2500 and x["progress"] == 1.0 for x in b)
    o = other.http.get("/v1/dashboard/stream", params=window).json()
    assert o["ended"] == 3000 and o["totals"] == {"f0": 3000}
