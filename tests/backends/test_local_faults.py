"""The local pool under faults: deaths at any moment, cancel, timeouts, threads, scale."""

import os
import signal
import time

import pytest

import hetfaas
from hetfaas.backends.local import faults
from hetfaas.bench.chaos import run_chaos

from .. import pool_funcs as fx
from ..conftest import CORES

# ------------------------------------------------------------------ pure decisions


def test_split_dead_calls_by_the_running_seq():
    calls, seqs = ["a", "b", "c", "d"], [11, 12, 13, 14]
    split = faults.split_dead_calls(calls, seqs, 13)
    assert split == (["a", "b"], "c", ["d"])
    assert faults.split_dead_calls(calls, seqs, 0) == ([], None, calls)  # between calls
    assert faults.split_dead_calls(calls, seqs, 9) == ([], None, calls)  # answered already
    assert faults.split_dead_calls([], [], 5) == ([], None, [])


def test_give_up_only_on_workers_that_keep_failing_to_start():
    assert not faults.give_up_starting(faults.MAX_START_EXITS - 1, 0)
    assert faults.give_up_starting(faults.MAX_START_EXITS, 0)
    assert not faults.give_up_starting(0, faults.MAX_START_KILLS - 1)
    assert faults.give_up_starting(0, faults.MAX_START_KILLS)


# ------------------------------------------------------------------ deaths


def test_chaos_at_ci_scale_loses_nothing():
    row = run_chaos("local", 600, 20.0, seed=3, deadline_s=120)
    assert row["kills"] > 5
    assert row["hung"] == 0 and row["lost"] == 0 and row["ran_twice"] == 0
    assert set(row["failed"]) <= {"WorkerDied"}
    assert row["completed"] + sum(row["failed"].values()) == 600
    assert row["after_ok"] == 100  # 2 workers killed > 5 times and still serving: replaced


def test_chaos_with_retries_of_an_idempotent_function_fails_nothing():
    row = run_chaos("local", 600, 20.0, seed=4, deadline_s=120, retries=5)
    assert row["kills"] > 5 and row["retried"] > 0  # kills ended runs, and they ran again
    assert row["failed"] == {} and row["completed"] == 600
    assert row["hung"] == row["lost"] == row["ran_more_than_attempts"] == 0
    assert 2 <= row["attempts_max"] <= 6


def test_workers_killed_while_starting_are_replaced_and_calls_run():
    with hetfaas.Executor(max_workers=1, cpus=1) as ex:
        kills = 0
        futs = [ex.submit(fx.add, i, 1) for i in range(20)]
        deadline = time.monotonic() + 30
        while kills < 5 and time.monotonic() < deadline:  # kill each new worker at once
            for pid in ex.backend.worker_pids():
                try:
                    os.kill(pid, signal.SIGKILL)
                    kills += 1
                except ProcessLookupError:
                    pass
            time.sleep(0.002)
        results = []
        for f in futs:
            try:
                results.append(f.result(timeout=60))
            except hetfaas.WorkerDied:
                results.append(None)
        assert kills >= 5
        assert all(r in (None, i + 1) for i, r in enumerate(results))
        assert ex.submit(fx.add, 1, 1).result(timeout=60) == 2


def test_idle_worker_death_is_replaced_without_a_new_call():
    with hetfaas.Executor(max_workers=1, cpus=1) as ex:
        ex.warmup(1)
        (pid,) = ex.backend.worker_pids()
        os.kill(pid, signal.SIGKILL)
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            pids = ex.backend.worker_pids()
            if pids and pids[0] != pid and ex.backend.replacement_ns:
                break
            time.sleep(0.01)
        assert ex.backend.replacement_ns, "no replacement was started"
        assert ex.submit(fx.add, 2, 2).result(timeout=60) == 4


def test_pool_whose_workers_cannot_start_fails_calls_instead_of_hanging(tmp_path, monkeypatch):
    (tmp_path / "exits_on_import.py").write_text("import os\nos._exit(3)\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    for method in ("spawn", "forkserver"):
        with hetfaas.Executor(preload=["exits_on_import"], start_method=method) as ex:
            fut = ex.submit(fx.add, 1, 1)
            with pytest.raises(hetfaas.WorkerDied, match=r"start|dying"):
                fut.result(timeout=60)


@pytest.mark.parametrize("preload", [["numpy"], ["numpy", "numpy.random"]])
def test_forked_workers_draw_different_random_numbers(preload):
    # numpy alone: numpy.random is loaded in each worker (seeded from the OS there);
    # numpy.random preloaded: the server's generator state is in every fork, reseeded
    with hetfaas.Executor(max_workers=2, cpus=min(2, CORES), preload=preload) as ex:
        ex.warmup(2)
        # the first draw of each of two fresh workers (held, so that both run at once)
        firsts = [f.result(timeout=60) for f in [ex.submit(fx.random_draw, 0.3) for _ in "ab"]]
        assert len({pid for pid, _ in firsts}) == 2
        assert firsts[0][1] != firsts[1][1]


# ------------------------------------------------------------------ cancel and timeouts


def test_cancel_interrupts_a_running_call_and_the_worker_stays():
    with hetfaas.Executor(max_workers=1, cpus=1) as ex:
        pid = ex.submit(fx.where).result(timeout=60)["pid"]
        fut = ex.submit(fx.sleepy, 30)
        time.sleep(0.3)
        assert fut.running()
        t0 = time.monotonic()
        assert fut.cancel()
        assert fut.cancelled() and fut.state == hetfaas.State.CANCELLED
        with pytest.raises(hetfaas.CallCancelled):
            fut.result(timeout=5)
        assert ex.submit(fx.where).result(timeout=10)["pid"] == pid  # interrupted, not killed
        assert time.monotonic() - t0 < 5


def test_cancel_of_a_call_deaf_to_signals_kills_its_worker():
    with hetfaas.Executor(max_workers=1, cpus=1) as ex:
        pid = ex.submit(fx.where).result(timeout=60)["pid"]
        fut = ex.submit(fx.sleep_signals_blocked, 30)
        time.sleep(0.3)
        assert fut.cancel()
        after = ex.submit(fx.where).result(timeout=30)
        assert after["pid"] != pid  # killed after the grace, replaced


def test_cancel_drops_a_queued_call_and_returns_false_once_done():
    with hetfaas.Executor(max_workers=1, cpus=1) as ex:
        blocker = ex.submit(fx.sleepy, 0.5)
        queued = ex.submit(fx.add, 1, 1)
        assert queued.cancel()
        assert blocker.result(timeout=60) == 0.5
        assert not blocker.cancel()
        with pytest.raises(hetfaas.CallCancelled):
            queued.result()


def test_timeout_counts_run_time_not_queue():
    with hetfaas.Executor(max_workers=1, cpus=1) as ex:
        ex.warmup(1)
        blocker = ex.submit(fx.sleepy, 1.5)
        timed = ex.options(timeout_s=1.0).submit(fx.sleepy, 0.5)  # queued 1.5 s, runs 0.5 s
        assert blocker.result(timeout=60) == 1.5
        assert timed.result(timeout=60) == 0.5
        t0 = time.monotonic()
        late = ex.options(timeout_s=0.5).submit(fx.sleepy, 10)
        with pytest.raises(hetfaas.CallTimeout):
            late.result(timeout=30)
        assert 0.5 <= time.monotonic() - t0 < 3.0


# ------------------------------------------------------------------ threads and scale


@pytest.mark.skipif(CORES < 2, reason="needs 2 cores")
def test_cpus_n_reaches_every_thread_pool():
    with hetfaas.Executor() as ex:
        one = ex.submit(fx.pool_threads).result(timeout=60)
        two = ex.options(cpus=2).submit(fx.pool_threads).result(timeout=60)
    for lib in ("torch", "openblas", "openmp"):
        assert one[lib] == 1, one
        assert two[lib] == 2, two


def test_512_workers_on_a_fake_core_list(monkeypatch):
    """More workers than the old 4 KiB control segment held (256): every slot works."""
    real = os.sched_getaffinity
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: set(range(512)))
    ex = hetfaas.Executor(max_workers=512, preload=[])
    monkeypatch.setattr(os, "sched_getaffinity", real)
    try:
        assert ex.capacity.max_workers == 512
        ex.warmup(512)
        futs = [ex.submit(fx.started_at, 5.0) for _ in range(512)]  # long enough to overlap
        # all 512, even when handing them over takes seconds on a loaded machine
        out = [f.result(timeout=300) for f in futs]
        assert len({pid for pid, _ in out}) == 512  # all 512 at once, one per worker
        workers = {f.timings.worker for f in futs}
        assert workers == set(range(512))
        starts = sorted(t for _, t in out)
        assert (starts[-1] - starts[0]) / 1e9 < 5.0  # they overlapped
    finally:
        ex.shutdown(wait=False, cancel_futures=True)


def test_every_waiter_sees_a_workers_exit_status():
    """The pool's reader and a shutdown may wait for the same worker at once: each must get
    its status (one taking it from the other left a shutdown waiting forever)."""
    import socket
    import threading

    from hetfaas.backends.local.forkserver import ForkServer

    server = ForkServer("no-such-control-segment", dict(os.environ), [])
    mine, theirs = socket.socketpair()
    try:
        proc = server.fork(0, -1, {}, theirs.fileno())  # cannot attach the segment: exits
        got: list[int | None] = []
        waiters = [
            threading.Thread(target=lambda: got.append(server.exit_code(proc.pid, 20)))
            for _ in range(3)
        ]
        for t in waiters:
            t.start()
        for t in waiters:
            t.join(30)
        assert len(got) == 3 and got[0] is not None and got == [got[0]] * 3
        again = server.fork(0, -1, {}, theirs.fileno())
        assert again.wait(20) is not None  # a new process, its own status
    finally:
        mine.close()
        theirs.close()
        server.close()
