"""``kill -9`` a real gateway (``python -m hetfaas.gateway serve``, as ``hetfaas serve``) with
1,000 calls queued and running, restart it on the same store, and account for every accepted
call: completed, rerun (idempotent) or failed with the restart's reason; none run twice for a
non-idempotent function (each run appends a line to a log with O_APPEND, from inside the
function)."""

from __future__ import annotations

import collections
import concurrent.futures as cf
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
N_PLAIN, N_IDEMPOTENT = 750, 250
SLEEP_S = 0.03  # each call's run
MAX_INFLIGHT = 4  # handed to the pool at once (the pool has max_workers of its own)
SUBMITTERS = 8  # concurrent clients accepting the calls


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _start(store: Path, port: int, out: Path) -> subprocess.Popen:
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(ROOT / "src"), str(ROOT)]))
    proc = subprocess.Popen(
        [sys.executable, "-m", "hetfaas.gateway", "serve", "--port", str(port),
         "--store", str(store), "--allow-module", "tests.gateway.funcs",
         "--max-inflight", str(MAX_INFLIGHT), "--log-level", "warning"],
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


def _submit_all(url: str, token: str, log: Path) -> dict[str, tuple[str, str]]:
    """Accept the calls from concurrent clients: invocation id -> (function, tag)."""
    calls = []
    for k in range(N_PLAIN + N_IDEMPOTENT):
        fn = "logged_idempotent" if k % 4 == 3 else "logged"
        calls.append((fn, f"{'i' if fn == 'logged_idempotent' else 'p'}{k}"))

    def submit(part: list[tuple[str, str]]) -> list[tuple[str, str, str]]:
        out = []
        with httpx.Client(base_url=url, headers={"Authorization": f"Bearer {token}"},
                          timeout=30) as http:  # fmt: skip
            for fn, tag in part:
                resp = http.post(f"/v1/functions/{fn}/async", json={"args": [str(log), tag,
                                                                             SLEEP_S]})  # fmt: skip
                assert resp.status_code == 202, resp.text
                out.append((resp.json()["id"], fn, tag))
        return out

    with cf.ThreadPoolExecutor(SUBMITTERS) as pool:
        parts = pool.map(submit, [calls[i::SUBMITTERS] for i in range(SUBMITTERS)])
        return {inv: (fn, tag) for part in parts for inv, fn, tag in part}


@pytest.mark.timeout(150)
def test_kill_9_with_1000_calls_loses_none_and_runs_none_twice(tmp_path):
    t0 = time.monotonic()
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
        accepted = _submit_all(url, token, log)
        assert len(accepted) == N_PLAIN + N_IDEMPOTENT
        while sum(_starts(log).values()) < 40:  # some done, some running, the rest queued
            time.sleep(0.01)
        os.kill(first.pid, signal.SIGKILL)
        first.wait(10)
        t_kill = time.monotonic() - t0

        with Store(store_path) as s:  # what the crash left
            at_kill = {r["id"]: r["state"] for r in s.read("SELECT id, state FROM invocations")}
        assert set(at_kill) == set(accepted)  # every 202 was durable
        states = collections.Counter(at_kill.values())
        assert states["COMPLETED"] >= 30 and states["QUEUED"] >= 300, (
            states,
            sum(_starts(log).values()),
        )
        assert 1 <= states["RUNNING"] <= MAX_INFLIGHT, states  # what the pool was handed
        done_before = {i for i, st in at_kill.items() if st == "COMPLETED"}
        time.sleep(0.3)  # the orphaned workers notice and leave
        starts_at_kill = _starts(log)

        second = _start(store_path, port, out)
        groups.append(second.pid)
        pending, records = list(accepted), {}
        end = time.monotonic() + 90
        while pending and time.monotonic() < end:
            body = http.post("/v1/invocations/wait", json={"ids": pending, "timeout": 5}).json()
            assert not body["missing"], body["missing"]
            for rec in body["done"]:
                records[rec["id"]] = rec
            pending = body["pending"]
            if pending:
                time.sleep(0.25)  # poll, rather than a request per call that ends
        assert not pending, f"{len(pending)} calls never ended"
    finally:
        for pgid in groups:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(pgid, signal.SIGKILL)

    starts = _starts(log)
    failed, rerun = [], []
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
                rerun.append(tag)
    assert all(starts_at_kill[t] <= 1 for t in failed)
    running_plain = [
        i for i, st in at_kill.items() if st == "RUNNING" and accepted[i][0] == "logged"
    ]
    assert len(failed) == len(running_plain)
    for inv in done_before:  # finished results stay readable, unchanged
        assert records[inv]["state"] == "COMPLETED"
        assert records[inv]["result"] == accepted[inv][1]
    twice = [t for t, n in starts.items() if t.startswith("p") and n > 1]
    assert twice == []
    completed = sum(1 for r in records.values() if r["state"] == "COMPLETED")
    assert completed + len(failed) == len(accepted)
    print(
        f"\n{len(accepted)} calls accepted; at the kill ({t_kill:.1f} s in): {dict(states)}; "
        f"after the restart: {completed} completed ({len(done_before)} before the kill; "
        f"{len(rerun)} idempotent ones rerun), {len(failed)} failed with the restart's "
        f"reason, {len(twice)} non-idempotent run twice; {time.monotonic() - t0:.1f} s in all"
    )
