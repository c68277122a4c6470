"""The PostgreSQL store on a real server (:mod:`tests.gateway.pg`): its dialect, leases and
takeover between stores, the real gateway app over it, and two gateway processes sharing one
store, one of them killed with ``kill -9`` while its calls are queued and running.

The store's own contract (tokens, functions, filters, purge, result files) runs on both
backends in tests/gateway/test_store.py."""

from __future__ import annotations

import collections
import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from hetfaas.gateway import RESTART_REASON, Store
from hetfaas.gateway.errors import StoreError
from hetfaas.gateway.store_pg import PgStore, is_dsn, redact, to_pg
from tests.gateway.pg import pg_server  # noqa: F401  (the session's PostgreSQL server)
from tests.gateway.test_restart import _starts  # the runs each tag made, from the O_APPEND log

ROOT = Path(__file__).resolve().parents[2]
FUNCS = "tests.gateway.funcs"


@pytest.fixture
def dsn(request):
    """A fresh database of the session's server."""
    return request.getfixturevalue("pg_server").database()


def _insert(store, id, ns="a", state="QUEUED", owner=None, submitted=None, **extra):
    cols = {"id": id, "namespace": ns, "function": "f", "state": state, "input": "{}",
            "submitted_at": submitted or time.time(), "owner": owner, **extra}  # fmt: skip
    marks = ", ".join("?" for _ in cols)
    store.write(lambda c: c.execute(
        f"INSERT INTO invocations ({', '.join(cols)}) VALUES ({marks})", tuple(cols.values())
    ))  # fmt: skip


def _owners(store):
    return dict(store.read("SELECT id, owner FROM invocations"))


# ---------------------------------------------------------------------- the dialect


def test_sqlites_placeholders_become_psycopgs_outside_literals():
    assert to_pg("SELECT a FROM t WHERE b = ? AND c LIKE '%x?%'") == (
        "SELECT a FROM t WHERE b = %s AND c LIKE '%%x?%%'"
    )
    assert to_pg("SELECT \"q?\", 'it''s ?' -- ?\n, ?") == "SELECT \"q?\", 'it''s ?' -- ?\n, %s"
    assert is_dsn("postgresql://u@h/db") and is_dsn("postgres://h/db") and not is_dsn("/a/b.db")
    assert redact("postgresql://me:s3cret@db:5432/x") == "postgresql://me:***@db:5432/x"
    assert "s3cret" not in redact("host=db password=s3cret dbname=x")


def test_one_query_gives_the_same_rows_on_sqlite_and_postgresql(dsn, tmp_path):
    sqlite, pg = Store(tmp_path / "s.db"), PgStore(dsn, results_dir=tmp_path / "r")
    try:
        for store in (sqlite, pg):
            for i, state in enumerate(["COMPLETED", "FAILED", "COMPLETED", "QUEUED"]):
                _insert(store, f"i{i}", state=state, submitted=1000.0 + i, attempts=i)
        sql = (
            "SELECT function, COUNT(*), SUM(attempts), SUM(state = 'COMPLETED'), MIN(COUNT(*), ?),"
            " MAX(MIN(submitted_at), ?), IFNULL(batch, 'none'), AVG(submitted_at), MIN(state)"
            " FROM invocations WHERE input LIKE '%{%' AND state <> ? GROUP BY function, batch"
        )
        params = (1, 1001.5, "QUEUED")
        rows = {s.dialect: [tuple(r) for r in s.read(sql, params)] for s in (sqlite, pg)}
        assert rows["postgresql"] == rows["sqlite"] == [("f", 3, 3, 2, 1, 1001.5, "none", 1001.0,
                                                         "COMPLETED")]  # fmt: skip
        assert [type(v) for v in rows["postgresql"][0]] == [type(v) for v in rows["sqlite"][0]]
        row = pg.read("SELECT id, state AS State FROM invocations WHERE id = ?", ("i1",))[0]
        assert (row[0], row["id"], row["state"], row["STATE"]) == ("i1", "i1", "FAILED", "FAILED")
        assert dict(row) == {"id": "i1", "state": "FAILED"} and row[:] == ("i1", "FAILED")
        with pytest.raises(IndexError):
            row["nope"]
    finally:
        sqlite.close()
        pg.close()


# ---------------------------------------------------------------------- leases


def test_a_live_gateways_calls_are_never_taken_a_dead_ones_are_taken_once(dsn, tmp_path):
    def make(gateway_id, **kw):
        return PgStore(dsn, results_dir=tmp_path, gateway_id=gateway_id, **kw)

    a, b, c = make("a", lease_s=1.0, heartbeat_s=0.1), make("b", lease_s=30), make("c", lease_s=30)
    lost = threading.Event()
    try:
        a.watch_peers(on_lost=lost.set)
        b.lock_for_gateway()
        c.lock_for_gateway()
        with pytest.raises(StoreError, match="in use by a live gateway"):
            make("a", lease_s=0.3).lock_for_gateway()  # one live process per id
        for i in range(120):
            _insert(a, f"a{i:03d}", owner="a", state="RUNNING" if i < 2 else "QUEUED")
        _insert(b, "b-old", owner="b")
        _insert(b, "nobody", owner=None)
        _insert(b, "gone", owner="a-gateway-long-gone")
        _insert(b, "ended", owner="a-gateway-long-gone", state="COMPLETED")
        # b's first take: its own id's calls from before, and those of no live gateway
        assert [r["id"] for r in b.write(b.take_orphans)] == ["b-old", "nobody", "gone"]
        time.sleep(0.4)  # a few of a's heartbeats
        assert not b.has_orphans() and b.write(b.take_orphans) == []
        assert c.write(c.take_orphans) == []  # a's lease is live
        assert {k for k, v in _owners(a).items() if v == "a"} == {f"a{i:03d}" for i in range(120)}

        with a._lease_lock:  # a stalls past its lease: it renews nothing
            time.sleep(1.3)
            assert b.has_orphans()
            taken: dict[str, list[str]] = {}
            start = threading.Barrier(2)

            def take(store):
                start.wait()
                taken[store.owner_id] = [r["id"] for r in store.write(store.take_orphans)]

            threads = [threading.Thread(target=take, args=(s,)) for s in (b, c)]
            for t in threads:
                t.start()
            for t in threads:
                t.join()
        both = taken["b"] + taken["c"]
        assert sorted(both) == [f"a{i:03d}" for i in range(120)]  # each once, by one of them
        assert len(set(both)) == 120
        owners = _owners(a)
        assert all(owners[i] == g for g in "bc" for i in taken[g])
        assert lost.wait(5) and a.lease_lost  # its next renewal learns it lost the lease
        assert [r[0] for r in b.read("SELECT id FROM gateways ORDER BY id")] == ["b", "c"]
        _insert(c, "c-own", owner="c")
        assert not b.has_orphans()
        c.close()  # gives its lease up: b takes what c held at once
        assert b.has_orphans()
        assert sorted(r["id"] for r in b.write(b.take_orphans)) == sorted([*taken["c"], "c-own"])
    finally:
        for s in (a, b, c):
            s.close()


def _cli(*args: str) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ, PYTHONPATH=str(ROOT / "src"))
    return subprocess.run([sys.executable, "-m", "hetfaas.gateway", *args], capture_output=True,
                          text=True, env=env, timeout=60, check=False)  # fmt: skip


def test_hetfaas_token_and_serve_take_a_postgresql_store(dsn, tmp_path):
    made = _cli("token", "create", "team-pg", "--label", "ci", "--store", dsn)
    assert made.returncode == 0, made.stderr
    token = made.stdout.strip()
    listed = _cli("token", "list", "--json", "--store", dsn)
    (row,) = json.loads(listed.stdout)
    assert (row["namespace"], row["label"]) == ("team-pg", "ci") and token not in listed.stdout
    with PgStore(dsn, results_dir=None) as s:
        assert s.verify_token(token).namespace == "team-pg"
        assert s.read("SELECT COUNT(*) FROM gateways")[0][0] == 0  # a tool holds no lease
    assert _cli("token", "revoke", row["id"], "--store", dsn).returncode == 0
    with PgStore(dsn, results_dir=None, gateway_id="taken") as live:
        live.lock_for_gateway()
        assert live.verify_token(token) is None
        no_dir = _cli("serve", "--port", "1", "--store", dsn)
        assert no_dir.returncode == 2 and "--results-dir is needed" in no_dir.stderr
        twice = _cli("serve", "--port", "1", "--store", dsn, "--results-dir", str(tmp_path),
                     "--gateway-id", "taken", "--lease-s", "0.5")  # fmt: skip
        assert twice.returncode == 2 and "in use by a live gateway" in twice.stderr


# ---------------------------------------------------------------------- the gateway app


def test_the_gateway_app_over_postgresql_deploys_invokes_and_keeps_results(dsn, tmp_path):
    pytest.importorskip("fastapi")
    httpx = pytest.importorskip("httpx")
    import hetfaas
    from hetfaas.client import Client
    from hetfaas.gateway import BackgroundServer, Unauthorized, create_app

    store = PgStore(dsn, results_dir=tmp_path / "results", gateway_id="app-test")
    store.lock_for_gateway()
    executor = hetfaas.Executor(capture_output=True)
    app = create_app(store, executor, allowed_modules=[FUNCS], max_inflight=2,
                     purge_every_s=None, grace_s=1.0)  # fmt: skip
    server = BackgroundServer(app)
    server.start()
    try:
        info, token = store.create_token("team")
        with Client(server.url, token) as client:
            client.deploy(f"{FUNCS}:add")
            client.deploy(f"{FUNCS}:big")
            client.deploy(f"{FUNCS}:echo")
            assert client.call("add", 2, b=3) == 5
            assert list(client.map("add", range(20), range(20))) == [2 * i for i in range(20)]
            fut = client.submit("big", 300_000)
            assert fut.result(timeout=30) == "x" * 300_000
            (row,) = store.read("SELECT result, result_path, owner FROM invocations WHERE id = ?",
                                (fut.invocation_id,))  # fmt: skip
            assert row["result"] is None and Path(row["result_path"]).parent == tmp_path / "results"
            assert row["owner"] == "app-test"
            assert client.invocation(fut.invocation_id)["result"] == "x" * 300_000
            listed = client.invocations(function="add")
            assert len(listed) == 21 and all(r["state"] == "COMPLETED" for r in listed)
            http = httpx.Client(base_url=server.url, headers={"Authorization": f"Bearer {token}"})
            resp = http.post(
                "/v1/functions/echo/invoke", content=bytes(range(12)),
                headers={"Content-Type": "application/octet-stream", "X-Dtype": "uint8",
                         "X-Shape": "3,4"},
            )  # fmt: skip
            assert resp.status_code == 200, resp.text
            assert resp.json()["result"]["args"] == [[[0, 1, 2, 3], [4, 5, 6, 7], [8, 9, 10, 11]]]
            store.revoke_token(info.id)
            time.sleep(1.2)  # the token cache rechecks revocations each second
            with pytest.raises(Unauthorized):
                client.functions()
        assert store.counts() == {"COMPLETED": 23}
    finally:
        server.stop()
        executor.shutdown(wait=False, cancel_futures=True)
        store.close()


# ---------------------------------------------------------------------- two gateways, one killed


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _spawn(dsn: str, results: Path, gateway_id: str, port: int, out: Path) -> subprocess.Popen:
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(ROOT / "src"), str(ROOT)]))
    return subprocess.Popen(
        [sys.executable, "-m", "hetfaas.gateway", "serve", "--port", str(port), "--store", dsn,
         "--results-dir", str(results), "--gateway-id", gateway_id, "--lease-s", "4",
         "--max-inflight", "2", "--allow-module", FUNCS, "--log-level", "warning"],
        env=env, cwd=ROOT, stdout=out.open("ab"), stderr=subprocess.STDOUT,
        start_new_session=True,
    )  # fmt: skip


def _wait_up(httpx, proc: subprocess.Popen, url: str, out: Path) -> None:
    end = time.monotonic() + 60
    while time.monotonic() < end:
        assert proc.poll() is None, out.read_text()
        with contextlib.suppress(httpx.HTTPError):
            if httpx.get(url + "/healthz", timeout=1).status_code == 200:
                return
        time.sleep(0.05)
    raise AssertionError(f"the gateway did not start:\n{out.read_text()}")


@pytest.mark.timeout(150)
def test_two_gateways_share_a_store_and_the_live_one_takes_over_a_killed_ones_calls(dsn, tmp_path):
    httpx = pytest.importorskip("httpx")
    pytest.importorskip("fastapi")
    results, log = tmp_path / "results", tmp_path / "runs.log"
    with PgStore(dsn, results_dir=None) as s:
        _, token = s.create_token("two")
    ports = {"gw-a": _free_port(), "gw-b": _free_port()}
    urls = {g: f"http://127.0.0.1:{p}" for g, p in ports.items()}
    outs = {g: tmp_path / f"{g}.out" for g in ports}
    procs = {g: _spawn(dsn, results, g, ports[g], outs[g]) for g in ports}
    auth = {"Authorization": f"Bearer {token}"}
    http = {g: httpx.Client(base_url=u, headers=auth, timeout=30) for g, u in urls.items()}
    watch = PgStore(dsn, results_dir=None)
    try:
        for g in ports:
            _wait_up(httpx, procs[g], urls[g], outs[g])
        for fn in ("logged", "logged_idempotent"):  # deployed through a only
            resp = http["gw-a"].post("/v1/functions", json={"import_path": f"{FUNCS}:{fn}"})
            assert resp.status_code == 201, resp.text
        end = time.monotonic() + 15  # b loads what a deployed at its next heartbeat
        while len(http["gw-b"].get("/v1/functions").json()["functions"]) < 2:
            assert time.monotonic() < end, "gateway b never saw the functions a deployed"
            time.sleep(0.1)

        accepted: dict[str, tuple[str, str, str]] = {}  # id -> (gateway, function, tag)
        for k in range(48 + 12):
            g = "gw-a" if k < 48 else "gw-b"
            fn = "logged_idempotent" if k % 4 == 3 else "logged"
            tag = f"{g[-1]}{'i' if fn == 'logged_idempotent' else 'p'}{k}"
            resp = http[g].post(
                f"/v1/functions/{fn}/async",
                json={"args": [str(log), tag, 0.3 if g == "gw-a" else 0.02]},
            )
            assert resp.status_code == 202, resp.text
            accepted[resp.json()["id"]] = (g, fn, tag)
        a_ids = {i for i, (g, _, _) in accepted.items() if g == "gw-a"}
        while sum(n for t, n in _starts(log).items() if t[0] == "a") < 6:
            time.sleep(0.01)
        for _ in range(3):  # b's heartbeats while a is alive: it takes none of a's calls
            time.sleep(0.5)
            rows = watch.read("SELECT id, state, owner FROM invocations")
            assert all(r["owner"] == "gw-a" for r in rows if r["id"] in a_ids), rows
            assert all(r["owner"] == "gw-b" for r in rows if r["id"] not in a_ids), rows
        os.killpg(procs["gw-a"].pid, signal.SIGKILL)  # the gateway and its workers
        procs["gw-a"].wait(10)
        killed_at = time.time()
        at_kill = {r["id"]: r["state"] for r in watch.read("SELECT id, state FROM invocations")}
        assert set(at_kill) == set(accepted)  # every 202 was durable
        states = collections.Counter(at_kill[i] for i in a_ids)
        assert states["COMPLETED"] >= 4 and states["QUEUED"] >= 5 and states["RUNNING"] >= 1, states
        time.sleep(0.5)  # a's lease (4 s) has not expired yet: its calls stay a's
        open_rows = watch.read("SELECT id, owner FROM invocations WHERE state IN ('QUEUED',"
                               " 'RUNNING')")  # fmt: skip
        assert {r["owner"] for r in open_rows if r["id"] in a_ids} == {"gw-a"}

        pending, records = list(accepted), {}
        end = time.monotonic() + 60
        while pending and time.monotonic() < end:  # b answers for every call of the store
            body = http["gw-b"].post("/v1/invocations/wait",
                                     json={"ids": pending, "timeout": 1}).json()  # fmt: skip
            for rec in body["done"]:
                records[rec["id"]] = rec
            assert not body["missing"], body["missing"]
            pending = body["pending"]
        assert not pending, f"{len(pending)} calls never ended"
        rows = {r["id"]: r for r in watch.read("SELECT id, owner, dispatched_at FROM invocations")}
        gateways = [r[0] for r in watch.read("SELECT id FROM gateways")]
    finally:
        watch.close()
        for proc in procs.values():
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)

    assert gateways == ["gw-b"]  # a's dead lease was buried by the takeover
    starts = _starts(log)
    for inv, (g, fn, tag) in accepted.items():
        rec = records[inv]
        if g == "gw-b":  # the live gateway's own calls
            assert rec["state"] == "COMPLETED" and starts[tag] == 1 and rows[inv]["owner"] == g
            continue
        if at_kill[inv] in ("QUEUED", "RUNNING"):  # taken over, after a's lease expired
            assert rows[inv]["owner"] == "gw-b"
            if rec["state"] != "FAILED":
                assert rows[inv]["dispatched_at"] >= killed_at + 1.5, (inv, killed_at)
        else:
            assert rows[inv]["owner"] == "gw-a"
        if fn == "logged":
            assert starts[tag] <= 1, f"{tag} ran {starts[tag]} times"
            if rec["state"] == "FAILED":
                assert rec["error"]["message"] == RESTART_REASON
                assert rec["error"]["type"] == "hetfaas.gateway.errors.GatewayRestarted"
                assert at_kill[inv] == "RUNNING"
            else:
                assert rec["state"] == "COMPLETED" and rec["result"] == tag, rec
                assert starts[tag] == 1
        else:  # idempotent: rerun if it was running
            assert rec["state"] == "COMPLETED" and rec["result"] == tag, rec
            if at_kill[inv] == "RUNNING":
                assert rec["attempts"] == 2
    failed = [i for i in a_ids if records[i]["state"] == "FAILED"]
    assert len(failed) == sum(
        1 for i in a_ids if at_kill[i] == "RUNNING" and accepted[i][1] == "logged"
    )
    print(f"gateway a at the kill: {dict(states)}; failed by the takeover: {len(failed)}")
