"""``kill -9`` a real gateway (``python -m hetfaas.gateway serve``, as ``hetfaas serve``) with
calls queued and running, restart it on the same store, and account for every accepted call:
completed, or failed with the restart's reason; none run twice for a non-idempotent function
(each run appends a line to a log with O_APPEND, from inside the function)."""

from __future__ import annotations

import collections
import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from hetfaas.gateway import RESTART_REASON, Store

ROOT = Path(__file__).resolve().parents[2]
N_PLAIN, N_IDEMPOTENT = 120, 40


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _start(store: Path, port: int, out: Path) -> subprocess.Popen:
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(ROOT / "src"), str(ROOT)]))
    proc = subprocess.Popen(
        [sys.executable, "-m", "hetfaas.gateway", "serve", "--port", str(port),
         "--store", str(store), "--allow-module", "tests.gateway.funcs",
         "--log-level", "warning"],
        env=env, cwd=ROOT, stdout=out.open("ab"), stderr=subprocess.STDOUT,
        start_new_session=True,
    )  # fmt: skip
    url = f"http://127.0.0.1:{port}"
    end = time.monotonic() + 30
    while time.monotonic() < end:
        assert proc.poll() is None, out.read_text()
        with contextlib.suppress(httpx.HTTPError):
            if httpx.get(url + "/healthz", timeout=1).status_code == 200:
                return proc
        time.sleep(0.05)
    raise AssertionError(f"the gateway did not start:\n{out.read_text()}")


def _starts(log: Path) -> collections.Counter:
    if not log.exists():
        return collections.Counter()
    return collections.Counter(
        line.split()[1] for line in log.read_text().splitlines() if line.startswith("start ")
    )


@pytest.mark.timeout(120)
def test_kill_9_loses_no_accepted_call_and_runs_none_twice(tmp_path):
    store_path, log, out = tmp_path / "g.db", tmp_path / "runs.log", tmp_path / "gateway.out"
    with Store(store_path) as s:
        _, token = s.create_token("restart")
    port = _free_port()
    url = f"http://127.0.0.1:{port}"
    http = httpx.Client(base_url=url, headers={"Authorization": f"Bearer {token}"}, timeout=30)
    first = _start(store_path, port, out)
    groups = [first.pid]
    try:
        for fn in ("logged", "logged_idempotent"):
            resp = http.post("/v1/functions", json={"import_path": f"tests.gateway.funcs:{fn}"})
            assert resp.status_code == 201, resp.text
        accepted: dict[str, tuple[str, str]] = {}  # invocation id -> (function, tag)
        for k in range(N_PLAIN + N_IDEMPOTENT):
            fn = "logged_idempotent" if k % 4 == 3 else "logged"
            tag = f"{'i' if fn == 'logged_idempotent' else 'p'}{k}"
            resp = http.post(f"/v1/functions/{fn}/async", json={"args": [str(log), tag, 0.03]})
            assert resp.status_code == 202, resp.text
            accepted[resp.json()["id"]] = (fn, tag)
        while sum(_starts(log).values()) < 40:  # some done, two running, the rest queued
            time.sleep(0.01)
        os.kill(first.pid, signal.SIGKILL)
        first.wait(10)

        with Store(store_path) as s:  # what the crash left
            at_kill = {r["id"]: r["state"] for r in s.read("SELECT id, state FROM invocations")}
        assert set(at_kill) == set(accepted)  # every 202 was durable
        states = collections.Counter(at_kill.values())
        assert states["COMPLETED"] >= 30 and states["QUEUED"] >= 50 and states["RUNNING"] >= 1, (
            states,
            sum(_starts(log).values()),
        )
        assert states["RUNNING"] <= 2  # --max-inflight: the pool's max_workers
        done_before = {i for i, st in at_kill.items() if st == "COMPLETED"}
        time.sleep(0.3)  # the orphaned workers notice and leave
        starts_at_kill = _starts(log)

        second = _start(store_path, port, out)
        groups.append(second.pid)
        pending, records = list(accepted), {}
        end = time.monotonic() + 60
        while pending and time.monotonic() < end:
            body = http.post("/v1/invocations/wait", json={"ids": pending, "timeout": 5}).json()
            for rec in body["done"]:
                records[rec["id"]] = rec
            pending = body["pending"] + body["missing"]
            assert not body["missing"], body["missing"]
        assert not pending, f"{len(pending)} calls never ended"
    finally:
        for pgid in groups:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(pgid, signal.SIGKILL)

    starts = _starts(log)
    failed = []
    for inv, (fn, tag) in accepted.items():
        rec = records[inv]
        if fn == "logged":
            assert starts[tag] <= 1, f"{tag} ran {starts[tag]} times"
            if rec["state"] == "FAILED":
                assert rec["error"]["message"] == RESTART_REASON
                assert rec["error"]["type"] == "hetfaas.gateway.errors.GatewayRestarted"
                assert at_kill[inv] == "RUNNING"
                failed.append(tag)
            else:
                assert rec["state"] == "COMPLETED" and rec["result"] == tag, rec
                assert starts[tag] == 1
        else:  # idempotent: rerun if it was running, never failed by the restart
            assert rec["state"] == "COMPLETED" and rec["result"] == tag, rec
            assert starts[tag] >= 1
            if at_kill[inv] == "RUNNING":
                assert rec["attempts"] == 2
    assert failed == [] or all(starts_at_kill[t] <= 1 for t in failed)
    assert len(failed) == sum(
        1 for i, st in at_kill.items() if st == "RUNNING" and accepted[i][0] == "logged"
    )
    print(f"at the kill: {dict(states)}; failed by the restart: {failed}")
    for inv in done_before:  # finished results stay readable, unchanged
        assert records[inv]["state"] == "COMPLETED"
        assert records[inv]["result"] == accepted[inv][1]
