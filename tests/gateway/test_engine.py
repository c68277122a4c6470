"""The engine without HTTP, on a real local pool: results, errors, the in-flight bound,
cancel, and what a start finds in the store (the restart rules, on rows left as a crash
leaves them; tests/gateway/test_restart.py kills a real gateway)."""

from __future__ import annotations

import itertools
import json
import time

import pytest

import hetfaas
from hetfaas.gateway import RESTART_REASON, Conflict, Engine, Forbidden, NotFound, Store
from hetfaas.gateway.errors import BadInput

FUNCS = "tests.gateway.funcs"


@pytest.fixture(scope="module")
def executor():
    ex = hetfaas.Executor(capture_output=True)
    yield ex
    ex.shutdown(wait=False, cancel_futures=True)


@pytest.fixture
def make(tmp_path, executor):
    made = []

    def factory(**kw):
        store = Store(tmp_path / "e.db")
        engine = Engine(store, executor, allowed_modules=[FUNCS], **kw)
        made.append((store, engine))
        return store, engine

    yield factory
    for store, engine in made:
        engine.stop(grace_s=0)
        store.close()


def test_a_call_runs_and_its_record_holds_result_timings_usage_and_logs(make):
    store, eng = make()
    eng.start(purge_every_s=None)
    eng.deploy("ns", f"{FUNCS}:shout")
    ids, states = eng.accept("ns", "shout", [(["hi"], {})])
    assert states.result(10) == ["RUNNING"]
    row = eng.wait(ids, 30)[ids[0]]
    assert row["state"] == "COMPLETED" and json.loads(row["result"]) == "HI"
    stored = store.invocation(ids[0], "ns")
    assert json.loads(stored["result"]) == "HI" and stored["attempts"] == 1
    assert "out: hi" in stored["stdout"] and "err: hi" in stored["stderr"]
    timings = json.loads(stored["timings"])
    assert timings["total_us"] > timings["compute_us"] > 0
    assert json.loads(stored["usage"])["cpus"] == 1
    assert stored["submitted_at"] <= stored["dispatched_at"] <= stored["finished_at"]


def test_an_exception_is_recorded_with_its_type_and_remote_traceback(make):
    _, eng = make()
    eng.start(purge_every_s=None)
    eng.deploy("ns", f"{FUNCS}:fail")
    ids, _ = eng.accept("ns", "fail", [(["nope"], {})])
    row = eng.wait(ids, 30)[ids[0]]
    assert row["state"] == "FAILED"
    assert (row["error_type"], row["error_message"]) == ("ValueError", "nope")
    assert "raise ValueError(message)" in row["error_traceback"]


def test_deploy_checks_modules_paths_and_resources(make):
    _, eng = make()
    with pytest.raises(Forbidden, match="--allow-module os"):
        eng.deploy("ns", "os:system")
    with pytest.raises(BadInput, match="no attribute"):
        eng.deploy("ns", f"{FUNCS}:missing")
    with pytest.raises(BadInput, match=r"pkg\.mod:function"):
        eng.deploy("ns", FUNCS)
    with pytest.raises(BadInput, match="cpus"):
        eng.deploy("ns", f"{FUNCS}:add", resources={"cpus": 0})
    rec, created = eng.deploy("ns", f"{FUNCS}:logged_idempotent")
    assert created and rec.idempotent  # declared with @hetfaas.idempotent
    rec, created = eng.deploy("ns", f"{FUNCS}:logged_idempotent", name="again", idempotent=False)
    assert rec.name == "again" and rec.idempotent
    _, created = eng.deploy("ns", f"{FUNCS}:add", name="again")
    assert not created
    with pytest.raises(NotFound):
        eng.accept("other-ns", "again", [([], {})])


def test_no_more_calls_are_handed_over_than_max_inflight(make):
    store, eng = make(max_inflight=1)
    eng.start(purge_every_s=None)
    eng.deploy("ns", f"{FUNCS}:sleep")
    ids, states = eng.accept("ns", "sleep", [([0.15], {})] * 3)
    assert states.result(10) == ["RUNNING", "QUEUED", "QUEUED"]
    rows = eng.wait(ids, 30)
    assert [rows[i]["state"] for i in ids] == ["COMPLETED"] * 3
    stored = [store.invocation(i) for i in ids]
    for before, after in itertools.pairwise(stored):
        assert after["dispatched_at"] >= before["finished_at"]


def test_cancel_a_queued_call_a_running_one_and_an_ended_one(make):
    store, eng = make(max_inflight=1)
    eng.start(purge_every_s=None)
    eng.deploy("ns", f"{FUNCS}:sleep")
    (running, queued), states = eng.accept("ns", "sleep", [([30], {}), ([0], {})])
    assert states.result(10) == ["RUNNING", "QUEUED"]
    assert eng.cancel("ns", queued).result(10) == "cancelled"
    assert store.invocation(queued)["state"] == "CANCELLED"
    with pytest.raises(Conflict, match="already ended: CANCELLED"):
        eng.cancel("ns", queued).result(10)
    with pytest.raises(NotFound):
        eng.cancel("other", running).result(10)
    t0 = time.monotonic()
    assert eng.cancel("ns", running).result(10) == "cancelling"
    row = eng.wait([running], 10)[running]
    assert row["state"] == "CANCELLED" and time.monotonic() - t0 < 10
    assert row["error_type"] == "hetfaas.exceptions.CallCancelled"


def test_a_start_reruns_queued_calls_retries_idempotent_running_ones_fails_the_rest(make, tmp_path):
    log = tmp_path / "runs.log"
    store, first = make()
    first.deploy("ns", f"{FUNCS}:logged")
    first.deploy("ns", f"{FUNCS}:logged_idempotent")
    now = time.time()
    rows = [  # as a gateway killed mid-flight leaves them
        ("done", "logged", "COMPLETED", 0, '"kept"'),
        ("queued", "logged", "QUEUED", 0, None),
        ("running", "logged", "RUNNING", 1, None),
        ("running-idem", "logged_idempotent", "RUNNING", 1, None),
    ]
    for k, (id, fn, state, attempts, result) in enumerate(rows):
        inp = json.dumps({"args": [str(log), id, 0], "kwargs": {}})
        store.write(lambda c, a=(id, fn, state, attempts, result, inp, now + k): c.execute(
            "INSERT INTO invocations (id, namespace, function, state, attempts, result, input,"
            " submitted_at) VALUES (?, 'ns', ?, ?, ?, ?, ?, ?)", (a[0], a[1], a[2], a[3], a[4],
            a[5], a[6])))  # fmt: skip
    _, eng = make()
    assert eng.start(purge_every_s=None) == {"queued": 1, "retried": 1, "failed": 1}
    failed = store.invocation("running")
    assert failed["state"] == "FAILED" and failed["error_message"] == RESTART_REASON
    assert failed["error_type"] == "hetfaas.gateway.errors.GatewayRestarted"
    ended = eng.wait(["queued", "running-idem"], 30)
    assert {i: r["state"] for i, r in ended.items()} == {
        "queued": "COMPLETED", "running-idem": "COMPLETED",
    }  # fmt: skip
    assert store.invocation("running-idem")["attempts"] == 2
    assert store.invocation("done")["result"] == '"kept"'
    starts = [line.split()[1] for line in log.read_text().splitlines() if line.startswith("start")]
    assert sorted(starts) == ["queued", "running-idem"]  # the non-idempotent one never again
