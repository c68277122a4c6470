"""Pipelines on the real local pool: data by reference, fan-out and fan-in, broadcast,
backpressure, retries and failures, state, and every data plane."""

from __future__ import annotations

import functools
import itertools
import os
import pickle

import numpy as np
import pytest

import hetfaas
from hetfaas.pipeline import (
    SOURCE,
    ItemsFailed,
    Pipeline,
    PipelineStalled,
    UpstreamFailed,
)

from . import funcs as fx
from .conftest import shm_items


def test_two_stage_chain_moves_items_by_reference(pool):
    p = Pipeline("chain")
    p.stage(fx.make, concurrency=(1, 2))
    p.stage(fx.double)
    with p.run(range(12), pool) as run:
        assert [s.items for s in run.stats().stages.values()] == [12, 12]
        refs = run.outputs["double"]
        assert sorted(refs, key=int) == [str(i) for i in range(12)]
        for ref in refs.values():
            # the driver holds references of a few hundred bytes to items of 200 KB
            assert ref.inline is None and ref.nbytes > fx.N * 4
            assert len(pickle.dumps(ref)) < 300
        # only the sink's items are left in shared memory: make's were freed when read
        assert len(shm_items(run.namespace)) == 12
        out = run.results()
        assert all(np.array_equal(out[str(i)], np.full(fx.N, 2.0 * i)) for i in range(12))
        assert run.result("5")[0] == 10.0
        stats = run.stats()
    assert shm_items(run.namespace) == []  # closing frees the rest
    assert stats.stages["make"].bytes_out == stats.stages["double"].bytes_in > 12 * fx.N * 4
    assert p.stats() is stats


def test_fanout_and_fanin(pool):
    p = Pipeline("shards", max_in_flight=6)
    p.stage(fx.make, name="load")
    p.stage(fx.split3, name="split", fanout=3)
    p.stage(fx.scale, name="scale", inputs=["split"])
    p.stage(fx.shift, name="shift", inputs=["split"])
    p.stage(fx.combine, name="combine", inputs=["scale", "shift"])
    with p.run(range(5), pool) as run:
        got = run.results()
    # piece k of item i starts with i + k: scale gives 10(i+k), shift i+k+1
    assert got == {f"{i}.{k}": 11.0 * (i + k) + 1 for i in range(5) for k in range(3)}
    s = run.stats().stages
    assert (s["load"].items, s["split"].items, s["split"].emitted) == (5, 5, 15)
    assert s["scale"].items == s["shift"].items == s["combine"].items == 15
    assert all(e.peak_in_flight <= e.bound for e in run.stats().edges)


def test_broadcast_is_computed_once_and_read_by_each_consumer(pool, tmp_path):
    calls = str(tmp_path / "calls")
    p = Pipeline("bcast")
    p.stage(functools.partial(fx.counted, calls, "pre", "make"), name="pre")
    p.stage(fx.zero_in_place, name="zero", inputs=["pre"])
    p.stage(fx.total, name="total", inputs=["pre"])
    p.stage(fx.first, name="first", inputs=["pre"])
    with p.run(range(6), pool) as run:
        zeros, totals, firsts = (run.results(s) for s in ("zero", "total", "first"))
        left = shm_items(run.namespace)
    assert fx.count(calls, "pre") == 6  # not 18: one call per item for three consumers
    assert zeros == {str(i): 0.0 for i in range(6)}
    # a consumer that zeroed its input in place changed nothing the others read
    assert totals == {str(i): float(i) * fx.N for i in range(6)}
    assert firsts == {str(i): float(i) for i in range(6)}
    assert left == []  # every pre item freed once its three consumers were done
    edges = {(e.producer, e.consumer): e for e in run.stats().edges}
    assert {edges[("pre", c)].items for c in ("zero", "total", "first")} == {6}


def test_backpressure_holds_the_bound_with_a_slow_consumer(pool):
    bound = 3
    p = Pipeline("slow", max_in_flight=bound)
    p.stage(fx.make, name="fast", concurrency=(1, 2))
    p.stage(functools.partial(fx.items_in_shm, os.getpid(), 0.05), name="slow", concurrency=1)
    with p.run(range(16), pool) as run:
        seen = run.results()
        stats = run.stats()
    edge = next(e for e in stats.edges if e.producer == "fast")
    assert edge.peak_in_flight == bound  # reached, and never above
    # what the consumer found in shared memory, independently of the driver's counters
    assert max(seen.values()) <= bound and max(seen.values()) >= 2
    fast, slow = stats.stages["fast"], stats.stages["slow"]
    assert fast.backpressure_s > 0.3  # the producer waited for room most of the run
    assert slow.blocked_s < 0.5 * slow.lifetime_s
    assert fast.items == slow.items == 16


def test_retry_of_a_killed_worker_and_of_a_transient_error(pool, tmp_path):
    marks = str(tmp_path)
    p = Pipeline("retry")
    p.stage(fx.make)
    p.stage(functools.partial(fx.die_once, marks), name="dies",
            retry=hetfaas.Retry(max_attempts=3))  # fmt: skip
    p.stage(functools.partial(fx.transient_once, marks), name="flaky",
            retry=hetfaas.Retry(max_attempts=2, on=(fx.Transient,)))  # fmt: skip
    p.stage(fx.first)
    with p.run(range(6), pool) as run:
        assert run.check() is run
        assert run.results() == {str(i): float(i) for i in range(6)}
    stats = run.stats()
    assert stats.stages["dies"].retries == 1 and stats.stages["flaky"].retries == 2
    attempts = {(t.stage, t.key): t.attempts for t in stats.tasks if t.attempts > 1}
    assert attempts == {("dies", "2"): 2, ("flaky", "1"): 2, ("flaky", "4"): 2}
    assert all(s.items == 6 and s.failed == 0 for s in stats.stages.values())


def test_a_permanent_failure_is_reported_and_its_dependents_never_run(pool, tmp_path):
    calls = str(tmp_path / "calls")
    p = Pipeline("fail")
    p.stage(fx.make)
    p.stage(functools.partial(fx.bad_at_3, calls), name="check", retry=hetfaas.Retry())
    p.stage(functools.partial(fx.counted, calls, "after", "first"), name="after")
    p.stage(fx.make, name="side", inputs=[SOURCE])
    p.stage(fx.combine, name="both", inputs=["after", "side"])
    with p.run(range(6), pool) as run:
        assert [(f.stage, f.key, type(f.error)) for f in run.failures] == [
            ("check", "3", ValueError)
        ]
        assert run.failures[0].attempts == 1  # ValueError is not retried: not WorkerDied
        assert [tuple(s) for s in run.skipped] == [
            ("after", "3", "check", "3"),
            ("both", "3", "check", "3"),
        ]
        with pytest.raises(UpstreamFailed, match="item 3 of stage 'both' was skipped"):
            run.result("3")
        with pytest.raises(ItemsFailed, match=r"1 item\(s\) failed \(check\[3\]: ValueError"):
            run.check()
        assert sorted(run.results()) == ["0", "1", "2", "4", "5"]
        left = shm_items(run.namespace)
    assert fx.count(calls, "bad") == 6 and fx.count(calls, "after") == 5  # never on item 3
    s = run.stats().stages
    for name in ("make", "check", "after", "side", "both"):  # every input accounted for
        assert s[name].items + s[name].failed + s[name].skipped == 6, name
    assert left == []  # both's items travel inline; side's item 3 was freed with its partner


def test_stateful_stage_sees_every_item_once_in_order(pool):
    p = Pipeline("state")
    p.stage(fx.make, concurrency=1)
    p.stage(fx.accumulate, name="acc", state=100.0)
    with p.run(range(5), pool) as run:
        assert run.results() == {"0": 100.0, "1": 101.0, "2": 103.0, "3": 106.0, "4": 110.0}
        assert run.state("acc") == 110.0
    stats = run.stats()
    acc = sorted((t for t in stats.tasks if t.stage == "acc"), key=lambda t: t.started_ns)
    assert [t.key for t in acc] == ["0", "1", "2", "3", "4"]
    # each call depends on the one before it through the state, and on its input's producer
    for prev, t in itertools.pairwise(acc):
        assert prev.index in t.deps and len(t.deps) == 2
    path = [t.key for t in stats.critical_path if t.stage == "acc"]
    assert path and path[-1] == "4" and path == [str(k) for k in range(int(path[0]), 5)]


def test_joins_that_never_match_stall_with_a_description(pool):
    p = Pipeline("stall", max_in_flight=3)
    p.stage(fx.split3, name="x", inputs=[SOURCE], fanout=3)
    p.stage(fx.split1, name="y", inputs=[SOURCE], fanout=3)
    p.stage(fx.combine, name="j", inputs=["x", "y"])
    # x's pieces 1 and 2 of the first item wait for partners y never emits, and hold x->j so
    # that x cannot start its next item: nothing can move, and the run says why
    with pytest.raises(PipelineStalled, match=r"j: blocked, .* 3 partial joins \(0.1 has \['x'\]"):
        p.run([np.zeros(9)] * 3, pool, timeout_s=30)


@pytest.mark.parametrize("scheme", ["file", "redis", "s3"])
def test_the_same_pipeline_on_every_data_plane(pool, scheme, tmp_path, request):
    url = {
        "file": f"file://{tmp_path / 'plane'}",
        "redis": request.getfixturevalue("redis_server") if scheme == "redis" else "",
        "s3": request.getfixturevalue("s3_url") if scheme == "s3" else "",
    }[scheme]
    p = Pipeline(f"on-{scheme}", store=url, inline_bytes=0)
    p.stage(fx.make)
    p.stage(fx.double, name="m1", inputs=["make"])
    p.stage(fx.total, name="m2", inputs=["make"])
    with p.run(range(4), pool) as run:
        assert run.results("m2") == {str(i): float(i) * fx.N for i in range(4)}
        assert run.result("3", stage="m1")[0] == 6.0
        assert run.stats().store == url
    store = hetfaas.pipeline.open_store(url)
    with pytest.raises(hetfaas.pipeline.ItemLost):
        store.get(f"{run.namespace}-1-0")  # closed: nothing of the run is left


def test_sink_items_can_be_counted_and_dropped(pool):
    p = Pipeline("drop")
    p.stage(fx.make)
    p.stage(fx.double)
    with p.run(range(5), pool, keep_outputs=False) as run:
        assert run.results() == {}
        assert shm_items(run.namespace) == []
        assert run.stats().stages["double"].items == 5


def test_a_run_past_its_timeout_is_cancelled_and_cleaned_up(pool):
    p = Pipeline("late")
    p.stage(fx.make)
    p.stage(functools.partial(fx.slow_total, 0.5), name="slow", concurrency=1)
    before = {
        n for n in os.listdir(hetfaas.shm.SHM_DIR) if n.startswith(f"hetfaas-{os.getpid()}-pl")
    }
    with pytest.raises(hetfaas.pipeline.PipelineTimeout, match=r"ran past timeout_s=0\.4"):
        p.run(range(10), pool, timeout_s=0.4)
    after = {
        n for n in os.listdir(hetfaas.shm.SHM_DIR) if n.startswith(f"hetfaas-{os.getpid()}-pl")
    }
    assert after <= before
    assert isinstance(hetfaas.pipeline.PipelineTimeout("x"), TimeoutError)


def test_a_stage_that_can_never_fit_is_refused_before_it_runs(pool):
    p = Pipeline("big")
    p.stage(fx.make, resources=hetfaas.Resources(gpus=1))
    if pool.capacity.gpus:
        pytest.skip("this machine has a GPU")
    with pytest.raises(hetfaas.ResourceError, match="stage 'make' asks for 1 core"):
        p.run(range(2), pool)


def test_an_item_refused_at_submit_fails_alone(pool):
    import threading

    p = Pipeline("refused")
    p.stage(fx.ident)
    with p.run([1, 2, threading.Lock(), 4], pool) as run:
        assert run.results() == {"0": 1, "1": 2, "3": 4}
        assert [(f.stage, f.key, type(f.error)) for f in run.failures] == [
            ("ident", "2", hetfaas.SerializationError)
        ]


def test_the_same_pipeline_on_another_engine(tmp_path):
    """Only the public Executor API is used: Submitit's local executor (each call a job in a
    fresh process, its stamps on another clock) runs it unchanged."""
    pytest.importorskip("submitit")
    p = Pipeline("engine")
    p.stage(fx.make, concurrency=(1, 2))
    p.stage(fx.total)
    ex = hetfaas.Executor("submitit-local", folder=tmp_path / "jobs")
    with ex, p.run(range(2), ex, timeout_s=120) as run:
        assert run.results() == {"0": 0.0, "1": float(fx.N)}
    stats = run.stats()
    assert {t.worker.split()[0] for t in stats.tasks} == {"submitit-local"}
    for s in stats.stages.values():  # the calls' own run time, not the jobs' seconds of start
        assert s.items == 2 and 0 < s.busy_s < 0.5 * s.working_s
