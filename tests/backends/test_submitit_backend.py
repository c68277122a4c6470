"""The Submitit engines: submitit-local for real here; Slurm's tests live with its daemons."""

import os
import random
import signal
import threading
import time
from pathlib import Path

import pytest

import hetfaas

from .. import pool_funcs as fx
from . import slurm_funcs as sf

pytest.importorskip("submitit")


def alive(pid: int) -> bool:
    """Whether process ``pid`` still runs (a zombie does not)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def wait_for(predicate, timeout_s: float, every_s: float = 0.02) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(every_s)
    return predicate()


def pid_of(folder: Path, name: str, timeout_s: float = 60) -> int:
    path = folder / f"{name}.pid"
    assert wait_for(path.exists, timeout_s), f"{name} never started"
    return int(path.read_text())


@pytest.fixture(scope="module")
def sex(tmp_path_factory):
    ex = hetfaas.Executor("submitit-local", folder=tmp_path_factory.mktemp("jobs"))
    yield ex
    ex.shutdown(wait=False, cancel_futures=True)


def test_submit_result_and_timings(sex):
    w0 = time.perf_counter()
    fut = sex.submit(sf.timed_sleep, 0.1)
    slept_ns = fut.result(timeout=120)
    wall_us = (time.perf_counter() - w0) * 1e6
    t = fut.timings
    assert t.backend == "submitit-local"
    # against clocks the backend does not own: the sleep measured inside the call, and the
    # caller's own clock around the whole call
    assert slept_ns >= 100_000_000 and t.compute_us >= slept_ns / 1000 - 1_000
    assert t.compute_us <= t.total_us <= wall_us + 2_000
    assert t.queue_us > 0  # launching a process per job is the engine's queue


def test_map_keeps_order(sex):
    assert list(sex.map(fx.add, range(5), range(5))) == [0, 2, 4, 6, 8]


def test_remote_exception(sex):
    with pytest.raises(ValueError, match="no good") as info:
        sex.submit(fx.boom, "no good").result(timeout=120)
    assert isinstance(info.value.__cause__, hetfaas.RemoteTraceback)


def test_bad_input_fails_at_submit(sex):
    with pytest.raises(hetfaas.SerializationError, match=r"argument 1 \(lock\) of add"):
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


# ------------------------------------------------------------------ cancel, timeouts


def test_cancel_stops_the_running_job(sex, tmp_path):
    fut = sex.submit(sf.marked_sleep, str(tmp_path), "c", 60)
    pid = pid_of(tmp_path, "c")
    t0 = time.monotonic()
    assert fut.cancel()
    with pytest.raises(hetfaas.CallCancelled):
        fut.result(timeout=5)
    assert time.monotonic() - t0 < 1.0
    assert fut.cancelled() and fut.state == hetfaas.State.CANCELLED
    assert wait_for(lambda: not alive(pid), 10), "the job's process outlived its cancel"
    assert not fut.cancel() or fut.cancelled()  # a second cancel changes nothing


def test_cancelling_one_call_of_a_pack_leaves_the_others(tmp_path):
    with hetfaas.Executor("submitit-local", folder=tmp_path / "jobs", pack=3) as ex:
        slow, a, b = ex.map_futures(
            sf.marked_sleep, [str(tmp_path)] * 3, ["slow", "a", "b"], [60, 2, 3]
        )
        assert slow.engine_id == a.engine_id == b.engine_id
        pid = pid_of(tmp_path, "slow")
        t0 = time.monotonic()
        assert slow.cancel()
        with pytest.raises(hetfaas.CallCancelled):
            slow.result(timeout=5)
        assert time.monotonic() - t0 < 1.0
        assert (a.result(timeout=60), b.result(timeout=60)) == ("a", "b")
        assert wait_for(lambda: not alive(pid), 10), "the cancelled call's worker still runs"


def test_timeout_counts_run_time_from_the_call_start(sex):
    t0 = time.monotonic()
    late = sex.options(timeout_s=3).submit(fx.sleepy, 30)
    fine = sex.options(timeout_s=5).submit(fx.sleepy, 1)
    with pytest.raises(hetfaas.CallTimeout, match="timeout_s=3"):
        late.result(timeout=60)
    took = time.monotonic() - t0
    assert 3 <= took < 15
    assert 3_000_000 <= late.timings.compute_us < 3_500_000
    assert fine.result(timeout=60) == 1


def test_timeout_of_packed_calls(tmp_path):
    with hetfaas.Executor("submitit-local", folder=tmp_path, pack=2) as ex:
        t0 = time.monotonic()
        late, fine = ex.options(timeout_s=3).map_futures(fx.sleepy, [30, 0.5])
        assert fine.result(timeout=60) == 0.5
        with pytest.raises(hetfaas.CallTimeout):
            late.result(timeout=60)
        assert 3 <= time.monotonic() - t0 < 15


# ------------------------------------------------------------------ threads


class _FakeJob:
    def __init__(self, params):
        self.params = params
        self.job_id = str(id(self))
        self.paths = type("P", (), {"result_pickle": Path("/nonexistent/result.pkl")})()
        self.state = "RUNNING"

    def cancel(self, check=True):
        self.state = "CANCELLED"


class _RacyExecutor:
    """Submitit's executor as it is: parameters kept in the object, read by submit."""

    def __init__(self):
        self.parameters = {}

    def update_parameters(self, **kw):
        self.parameters = dict(kw)
        time.sleep(0.001)  # a thread switch here used to hand another call these parameters

    def submit(self, fn, *args):
        params = dict(self.parameters)
        time.sleep(0.001)
        return _FakeJob(params)

    def batch(self):
        raise AssertionError("one call per dispatch here")


def test_concurrent_submits_keep_their_own_parameters(tmp_path):
    ex = hetfaas.Executor("submitit-local", folder=tmp_path)
    backend = ex.backend
    backend._executor = _RacyExecutor()
    futs: dict[int, list] = {}

    def submit_many(timeout_s):
        view = ex.options(timeout_s=timeout_s)
        futs[timeout_s] = [view.submit(fx.add, 1, 1) for _ in range(25)]

    threads = [threading.Thread(target=submit_many, args=(t,)) for t in (10, 20, 30, 40)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    with backend._lock:
        jobs = {id(f): p.job for p in backend._pending for f in p.futures}
    for timeout_s, fs in futs.items():
        want = backend._engine_parameters(hetfaas.Resources(timeout_s=timeout_s))["timeout_min"]
        assert {jobs[id(f)].params["timeout_min"] for f in fs} == {want}
    ex.shutdown(wait=False, cancel_futures=True)


def test_concurrent_submits_to_real_jobs(sex):
    out: dict[int, list] = {}

    def submit(timeout_s):
        view = sex.options(timeout_s=timeout_s)
        out[timeout_s] = [view.submit(sf.job_parameters) for _ in range(2)]

    threads = [threading.Thread(target=submit, args=(t,)) for t in (100, 200, 300)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for timeout_s, fs in out.items():
        limits = {f.result(timeout=120)["SUBMITIT_LOCAL_TIMEOUT_S"] for f in fs}
        assert limits == {str(timeout_s + 60)}  # the job's own backstop: timeout_s + 60 s


# ------------------------------------------------------------------ chaos


def test_chaos_killing_job_processes(tmp_path):
    """Calls run while their job processes are SIGKILLed at random: every call ends, with
    its result or a specific error, none hangs, none runs twice."""
    rng = random.Random(9)
    specific = (hetfaas.WorkerDied, hetfaas.JobCancelled, hetfaas.JobFailed)
    names = [f"k{i}" for i in range(16)]
    sleeps = [rng.uniform(0.5, 2.0) for _ in names]
    with hetfaas.Executor("submitit-local", folder=tmp_path / "jobs") as ex:
        futs = ex.map_futures(sf.marked_sleep, [str(tmp_path)] * len(names), names, sleeps)
        killed: set[str] = set()
        deadline = time.monotonic() + 60
        while len(killed) < 5 and time.monotonic() < deadline:
            running = [
                n for n, f in zip(names, futs, strict=True)
                if not f.done() and n not in killed and (tmp_path / f"{n}.pid").exists()
            ]  # fmt: skip
            if running:
                victim = rng.choice(running)
                try:
                    os.kill(int((tmp_path / f"{victim}.pid").read_text()), signal.SIGKILL)
                except ProcessLookupError:  # it ended between the look and the kill
                    continue
                killed.add(victim)
            time.sleep(rng.uniform(0.05, 0.3))
        done, errors = 0, {}
        for n, f in zip(names, futs, strict=True):
            try:
                assert f.result(timeout=30) == n  # none hangs
                done += 1
            except specific as exc:
                errors[n] = type(exc).__name__
        assert killed and set(errors) <= killed, (killed, errors)
        assert done + len(errors) == len(names)
        runs = [len((tmp_path / f"{n}.runs").read_text().splitlines()) for n in names]
        assert runs == [1] * len(names)  # counted inside the calls: none ran twice


def test_usage_of_a_job(sex):
    fut = sex.submit(fx.burn_and_hold, 0.2, 40)
    assert fut.result(timeout=120) == 40
    u = fut.usage
    # the job process's CPU time over the call: the function's, and the engine's own threads
    # (Submitit's, the result poller) a little; a loaded machine has seen 110%
    assert 0.15 <= u.cpu_s <= fut.timings.compute_us / 1e6 * 1.3 + 0.02
    assert u.peak_rss_mb >= 40 and u.cpu_efficiency > 0.5
