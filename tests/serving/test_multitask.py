"""Multi-task models on real warm workers: per-task weights in file:// and redis:// stores."""

import os
import signal
import statistics

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("redis")

from hetfaas.exceptions import ConfigurationError, ModelLoadError, UnknownModel  # noqa: E402
from hetfaas.serving.functions import save_weights  # noqa: E402
from hetfaas.serving.multitask import MultiTask, percentile, summarize, task_uri  # noqa: E402
from hetfaas.serving.workers import WorkerManager  # noqa: E402
from tests.collectives.conftest import redis_server  # noqa: E402, F401


def net():
    return torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.ReLU(), torch.nn.Linear(16, 4))


X = torch.randn(5, 8, generator=torch.Generator().manual_seed(7))


@pytest.fixture(scope="module")
def manager():
    """Two warm CPU workers, shared by the tests of this module (each MultiTask resets them)."""
    mgr = WorkerManager(2, 1, "cpu")
    yield mgr
    mgr.close()


def write_tasks(store_url, tasks):
    """Distinct weights per task in the store; the output each task must give for X."""
    refs = {}
    for i, task in enumerate(tasks):
        torch.manual_seed(100 + i)
        model = net()
        save_weights(model, task_uri(store_url, task))
        with torch.inference_mode():
            refs[task] = model(X)
    return refs


def test_task_uris_keep_the_query_and_check_names():
    assert task_uri("file:///w/", "a") == "file:///w/a.pt"
    assert task_uri("/w", "a") == "/w/a.pt"
    assert task_uri("redis://h:1/0/p", "t-1") == "redis://h:1/0/p/t-1.pt"
    assert task_uri("s3://b?endpoint=http://h:9", "t") == "s3://b/t.pt?endpoint=http://h:9"
    with pytest.raises(ConfigurationError, match="task name"):
        task_uri("file:///w", "../x")


def test_each_call_runs_the_weights_of_its_task_and_a_cached_one_loads_nothing(manager, tmp_path):
    tasks = ["a", "b", "c"]
    store = tmp_path.as_uri()
    refs = write_tasks(store, tasks)
    assert not torch.allclose(refs["a"], refs["b"])  # the tasks differ, so a mix-up would show
    with MultiTask(net, store, tasks, tasks_per_worker=1, manager=manager) as mt:
        for task in ["a", "b", "a", "b", "a"]:
            assert torch.allclose(mt.run(task, X), refs[task], atol=1e-6)
        calls = mt.records
        assert [c.kind for c in calls] == ["cold", "cold", "cached", "cached", "cached"]
        assert calls[0].worker != calls[1].worker  # one slot each: b went to the other worker
        for c in calls[2:]:  # a cached call: no load, by the worker's own counter too
            assert c.load_s == 0 and c.worker_loads == 1
            assert c.worker == calls[0 if c.task == "a" else 1].worker
        for c in calls[:2]:  # the caller's clock covers the worker's load and run
            assert c.worker_loads == 1 and c.load_s > 0
            assert c.latency_s >= c.load_s + c.run_s
        # a cached task does not touch the store: its weights can be gone
        os.unlink(tmp_path / "a.pt")
        assert torch.allclose(mt.run("a", X), refs["a"], atol=1e-6)
        assert mt.records[-1].kind == "cached"
        # c is cold: it evicts b or a, and the worker that evicted a cannot bring it back
        assert torch.allclose(mt.run("c", X), refs["c"], atol=1e-6)
        assert mt.records[-1].kind == "cold" and mt.records[-1].worker_loads == 2
        s = mt.stats()
        assert s["cold"] == 3 and s["cached"] == 4 and sum(s["evictions"]) == 1
        assert sorted(t for r in mt.resident() for t in r) in (["a", "c"], ["b", "c"])
        if "a" not in {t for r in mt.resident() for t in r}:
            with pytest.raises(ModelLoadError, match="'a'"):
                mt.run("a", X)
        with pytest.raises(UnknownModel, match="tasks: a, b, c"):
            mt.submit("d", X)


def test_tasks_beyond_capacity_are_evicted_from_a_redis_store(manager, redis_server):  # noqa: F811
    import redis

    tasks = [f"t{i}" for i in range(5)]
    store = redis_server + "/multitask-test"
    refs = write_tasks(store, tasks)
    assert redis.Redis.from_url(redis_server).exists("multitask-test/t3.pt")
    order = [0, 1, 2, 3, 4, 0, 0, 1, 4, 2, 2, 3, 0]
    with MultiTask(net, store, tasks, tasks_per_worker=2, manager=manager) as mt:
        futs = [(tasks[i], mt.submit(tasks[i], X)) for i in order]
        for task, fut in futs:
            assert torch.allclose(fut.result(timeout=60), refs[task], atol=1e-6)
        s = mt.stats()
        replies = manager.resident()
        state = mt.runtime.scheduler.state
        state.check_invariants()
        for d, reply in enumerate(replies):
            # the worker's own models are the scheduler's cache, and within the budget
            assert set(reply.resident) == {mt.runtime.names[m] for m in state.caches[d]}
            assert len(reply.resident) <= 2
            assert reply.loads == s["loads"][d]  # the worker counted the loads we recorded
            assert reply.evictions == s["evictions"][d]
        held = sum(len(r.resident) for r in replies)
        assert s["cold"] > 4 and sum(s["evictions"]) == s["cold"] - held
        assert s["cached"] > 0 and s["calls"] == len(order) and s["errors"] == 0
        summary = mt.summary()
        assert summary["cold_load"]["n"] == s["cold"]
        assert summary["cached_activation"]["n"] == s["cached"]
        cold = [c.load_s for c in mt.records if c.kind == "cold"]
        hot = [c.activate_s for c in mt.records if c.kind == "cached"]
        assert statistics.median(hot) * 10 < statistics.median(cold)


def test_the_naive_policy_loads_on_every_call(manager, tmp_path):
    store = tmp_path.as_uri()
    refs = write_tasks(store, ["a", "b"])
    with MultiTask(net, store, ["a", "b"], policy="naive", manager=manager) as mt:
        for task in ["a", "a", "b", "a"]:
            assert torch.allclose(mt.run(task, X), refs[task], atol=1e-6)
        assert [c.kind for c in mt.records] == ["cold"] * 4
        assert all(c.load_s > 0 for c in mt.records)
        assert sum(r.loads for r in manager.resident()) == 4  # the workers' own counters
        assert mt.resident() == [(), ()]
        assert mt.summary()["hit_rate"] == 0


def test_a_killed_worker_is_replaced_and_its_task_loaded_again(manager, tmp_path):
    store = tmp_path.as_uri()
    refs = write_tasks(store, ["a"])
    with MultiTask(net, store, ["a"], manager=manager) as mt:
        mt.run("a", X)
        first = mt.records[0]
        os.kill(first.pid, signal.SIGKILL)
        assert torch.allclose(mt.run("a", X), refs["a"], atol=1e-6)
        again = mt.records[1]
        assert again.pid != first.pid and again.kind == "cold" and again.worker_loads == 1


def test_bad_arguments(manager, tmp_path):
    with pytest.raises(ConfigurationError, match="naive"):
        MultiTask(net, tmp_path.as_uri(), ["a"], policy="fastest", manager=manager)
    with pytest.raises(ConfigurationError, match="unknown weight store 'ftp'"):
        MultiTask(net, "ftp://h/w", ["a"], manager=manager)
    with pytest.raises(ConfigurationError, match="unique"):
        MultiTask(net, tmp_path.as_uri(), ["a", "a"], manager=manager)
    with pytest.raises(ConfigurationError, match="database number"):
        save_weights(net(), "redis://127.0.0.1:1/x.pt")
    assert percentile([3.0, 1.0, 2.0], 50) == 2.0 and percentile([1.0, 2.0], 100) == 2.0
    assert summarize([])["hit_rate"] == 0


def test_the_bench_reports_the_three_kinds_side_by_side(manager):
    from hetfaas.bench import multitask as bench

    res = bench.run_multitask(n_tasks=4, per_worker=1, n_calls=40, rate=200.0, size_mb=0.2,
                              manager=manager)  # fmt: skip
    assert [r["policy"] for r in res["rows"]] == ["lalb+o3", "naive"]
    cached, naive = res["rows"]
    assert cached["correct"] == naive["correct"] == 40
    assert naive["summary"]["hit_rate"] == 0 and naive["stats"]["cold"] == 40
    assert 0 < cached["summary"]["hit_rate"] < 1 and sum(cached["stats"]["evictions"]) > 0
    text = bench.format_report(res)
    for kind in ("cold load", "cached activation", "| run |"):
        assert kind in text
    assert "lalb+o3 against naive" in text
