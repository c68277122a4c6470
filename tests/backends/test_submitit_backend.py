"""The Submitit engines: submitit-local for real here; Slurm's tests live with its daemons."""

import threading
import time

import pytest

import hetfaas
from hetfaas._invocation import PHASES

from .. import pool_funcs as fx

pytest.importorskip("submitit")


@pytest.fixture(scope="module")
def sex(tmp_path_factory):
    ex = hetfaas.Executor("submitit-local", folder=tmp_path_factory.mktemp("jobs"))
    yield ex
    ex.shutdown(wait=False, cancel_futures=True)


def test_submit_result_and_timings(sex):
    fut = sex.submit(fx.sleepy, 0.1)
    assert fut.result(timeout=120) == 0.1
    t = fut.timings
    assert t.backend == "submitit-local" and t.compute_us >= 100_000
    assert abs(sum(getattr(t, p) for p in PHASES) - t.total_us) < 1.0
    assert t.queue_us > 0  # launching a process per job is the engine's queue


def test_map_keeps_order(sex):
    assert list(sex.map(fx.add, range(5), range(5))) == [0, 2, 4, 6, 8]


def test_remote_exception(sex):
    with pytest.raises(ValueError, match="no good") as info:
        sex.submit(fx.boom, "no good").result(timeout=120)
    assert isinstance(info.value.__cause__, hetfaas.RemoteTraceback)


def test_bad_input_fails_at_submit(sex):
    with pytest.raises(hetfaas.SerializationError, match="arguments of add"):
        sex.submit(fx.add, 1, threading.Lock())
    with pytest.raises(hetfaas.ResourceError, match="whole GPUs"):
        sex.options(gpus=0.5).submit(fx.add, 1, 1)


def test_completion_is_seen_fast(sex):
    sex.submit(fx.add, 0, 0).result(timeout=120)
    t0 = time.monotonic()
    fut = sex.submit(fx.add, 1, 2)
    assert fut.result(timeout=120) == 3
    # Submitit's own result() sleeps a whole second between checks; the watcher does not.
    assert fut.timings.transfer_out_us < 500_000
    assert time.monotonic() - t0 < 5


def test_slurm_backend_says_when_slurm_is_missing(monkeypatch):
    monkeypatch.setenv("PATH", "/nonexistent")
    with pytest.raises(hetfaas.ConfigurationError, match="sbatch"):
        hetfaas.Executor("slurm")


def test_packing_runs_many_calls_per_job_with_their_own_results(tmp_path):
    with hetfaas.Executor("submitit-local", folder=tmp_path, pack=100) as ex:
        futs = ex.map_futures(fx.add, range(250), range(250))
        assert [f.result(timeout=120) for f in futs] == [2 * i for i in range(250)]
        assert len({f.engine_id for f in futs}) == 3  # 100 + 100 + 50 calls
        assert all(f.timings.compute_us >= 0 for f in futs)
        bad = ex.map_futures(fx.boom, ["first", "second"])
        for f, msg in zip(bad, ["first", "second"], strict=True):
            with pytest.raises(ValueError, match=msg):
                f.result(timeout=120)
    with pytest.raises(hetfaas.ConfigurationError, match="pack"):
        hetfaas.Executor("submitit-local", folder=tmp_path, pack=0)


def test_packed_results_arrive_as_each_call_ends(tmp_path):
    # One job of a quick call and a slow one: the quick call's result is streamed out of the
    # allocation while the slow call still runs.
    with hetfaas.Executor("submitit-local", folder=tmp_path, pack=2) as ex:
        quick, slow = ex.map_futures(fx.sleepy, [0.0, 8.0])
        assert quick.engine_id == slow.engine_id
        assert quick.result(timeout=60) == 0.0
        assert not slow.done()
        assert slow.result(timeout=60) == 8.0
    assert not any((tmp_path / "replies").iterdir())  # the stream folder is cleaned up
