"""The local backend against real worker processes."""

import os
import threading
import time

import numpy as np
import psutil
import pytest
import torch

import hetfaas
from hetfaas import Resources
from hetfaas._invocation import PHASES

from .. import pool_funcs as fx
from ..conftest import CORES, thread_switches


def _alive(pid):
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def test_submit_returns_result_state_and_timings(ex):
    fut = ex.submit(fx.add, 2, 3)
    assert fut.result(timeout=60) == 5
    assert fut.state == hetfaas.State.COMPLETED
    t = fut.timings
    assert all(getattr(t, p) >= 0 for p in PHASES)
    # against clocks the pool did not write: the sleep inside, the caller's wall clock around
    t0 = time.perf_counter_ns()
    slow = ex.submit(fx.sleepy, 0.05)
    slow.result(timeout=60)
    wall_us = (time.perf_counter_ns() - t0) / 1e3
    ts = slow.timings
    assert ts.compute_us >= 50_000
    assert ts.total_us <= wall_us
    assert ts.compute_us <= ts.total_us
    assert t.cpus and t.pid != os.getpid()
    other = ex.submit(fx.add, 1, 1)
    assert other.invocation_id != fut.invocation_id
    other.result()


def test_cold_start_counted_apart_from_warm_calls(ex):
    first = ex.submit(fx.add, 1, 2)
    first.result(timeout=60)
    assert first.timings.cold_start_us > 1000  # spawning and importing took time
    warm = ex.submit(fx.add, 1, 2)
    warm.result()
    assert warm.timings.cold_start_us == 0


def test_map_keeps_order_and_batch_dispatches_on_exit(ex):
    assert list(ex.map(fx.add, range(500), range(500))) == [2 * i for i in range(500)]
    with ex.batch():
        futs = [ex.submit(fx.add, i, 1) for i in range(10)]
        time.sleep(0.05)
        assert all(f.state == hetfaas.State.PENDING for f in futs)
    assert [f.result(timeout=60) for f in futs] == list(range(1, 11))


def test_batch_that_raises_submits_nothing(ex):
    with pytest.raises(RuntimeError), ex.batch():
        fut = ex.submit(fx.add, 1, 1)
        raise RuntimeError("user error")
    assert fut.cancelled()


def test_worker_is_pinned_and_sized(ex):
    info = ex.submit(fx.where).result(timeout=60)
    assert len(info["cpus"]) == 1 and info["threads"] == 1
    if CORES >= 2:
        info2 = ex.options(cpus=2).submit(fx.where).result(timeout=60)
        assert len(info2["cpus"]) == 2 and info2["threads"] == 2


def test_queue_never_oversubscribes_cores(ex):
    ex.warmup()  # all slots ready, so that a slow cold start cannot serialize the calls
    n = CORES * 3
    futs = [ex.submit(fx.where, 0.15) for _ in range(n)]
    runs = [f.result(timeout=60) for f in futs]
    events = sorted(
        [(r["start"], 1, r["cpus"]) for r in runs] + [(r["end"], -1, r["cpus"]) for r in runs]
    )
    busy: list[tuple[int, ...]] = []
    peak = 0
    for _, kind, cpus in events:
        if kind == 1:
            assert not any(set(cpus) & set(b) for b in busy), "two calls shared a core"
            busy.append(cpus)
        else:
            busy.remove(cpus)
        peak = max(peak, len(busy))
    assert peak <= CORES
    assert peak == CORES  # and the cores were all used


def test_impossible_requests_fail_at_submit(ex):
    with pytest.raises(hetfaas.ResourceError, match="core"):
        ex.options(cpus=CORES + 1).submit(fx.add, 1, 1)
    if ex.capacity.gpus == 0:
        with pytest.raises(hetfaas.ResourceError, match="GPU"):
            ex.options(gpus=1).submit(fx.add, 1, 1)
    with pytest.raises(hetfaas.ResourceError, match="memory"):
        ex.options(memory_mb=10**9).submit(fx.add, 1, 1)


def test_remote_exception_keeps_type_and_traceback(ex):
    with pytest.raises(ValueError, match="bad input 7") as info:
        ex.submit(fx.boom, "bad input 7").result(timeout=60)
    assert isinstance(info.value.__cause__, hetfaas.RemoteTraceback)
    assert "boom" in info.value.__cause__.tb
    fut = ex.submit(fx.boom_unpicklable)
    with pytest.raises(hetfaas.RemoteError, match="cannot travel"):
        fut.result(timeout=60)
    assert fut.state == hetfaas.State.FAILED


def test_timeout_kills_the_worker_and_pool_recovers(ex):
    t0 = time.monotonic()
    with pytest.raises(hetfaas.CallTimeout, match=r"timeout_s=0\.3"):
        ex.options(timeout_s=0.3).submit(fx.sleepy, 30).result(timeout=60)
    assert time.monotonic() - t0 < 10
    assert ex.submit(fx.add, 1, 1).result(timeout=60) == 2


@pytest.mark.parametrize(
    "killer,match",
    [
        (lambda ex: ex.submit(fx.exit_now, 7), "exit code 7"),
        (lambda ex: ex.submit(fx.segfault), "SIGSEGV"),
    ],
)
def test_dead_worker_raises_and_is_replaced(ex, killer, match):
    ex.warmup()
    behind = [ex.submit(fx.sleepy, 0.05) for _ in range(CORES * 2)]
    with pytest.raises(hetfaas.WorkerDied, match=match):
        killer(ex).result(timeout=60)
    assert [f.result(timeout=60) for f in behind] == [0.05] * len(behind)  # nothing lost
    assert ex.submit(fx.add, 2, 2).result(timeout=60) == 4


def test_killed_worker_by_signal(ex):
    info = ex.submit(fx.where).result(timeout=60)
    fut = ex.submit(fx.sleepy, 30)
    time.sleep(0.3)
    os.kill(fut.timings.pid if fut.timings else info["pid"], 9)
    with pytest.raises(hetfaas.WorkerDied, match="SIGKILL"):
        fut.result(timeout=60)


def test_unpicklable_function_and_argument_fail_at_submit(ex):
    lock = threading.Lock()
    with pytest.raises(hetfaas.SerializationError, match="function"):
        ex.submit(lambda: lock)
    with pytest.raises(hetfaas.SerializationError, match="argument 1"):
        ex.submit(fx.add, 1, lock)
    with pytest.raises(hetfaas.SerializationError, match="keyword argument 'b'"):
        ex.submit(fx.add, 1, b=lock)
    with pytest.raises(hetfaas.SerializationError, match="result of returns_lock"):
        ex.submit(fx.returns_lock).result(timeout=60)


def test_tensor_100mb_round_trip(ex):
    t = torch.randn(25_000_000)
    back = ex.submit(fx.ident, t).result(timeout=120)
    assert torch.equal(back, t)
    arr = np.random.default_rng(0).standard_normal(12_500_000)
    assert np.array_equal(ex.submit(fx.ident, arr).result(timeout=120), arr)


def test_results_stay_valid_while_held(ex):
    results = [ex.submit(fx.scaled_range, 1_000_000, k).result(timeout=60) for k in range(1, 5)]
    for k, r in enumerate(results, start=1):
        assert r[-1] == (1_000_000 - 1) * k


def test_shared_tensor_passes_without_copy(ex):
    s = hetfaas.shared_tensor((1000, 1000))
    assert ex.submit(fx.fill, s, 2.0).result(timeout=60) == 2_000_000.0
    assert float(s.sum()) == 2_000_000.0  # the worker wrote into the caller's memory


def test_cancel_pending_call():
    with hetfaas.Executor(max_workers=1, cpus=1) as ex:
        running = ex.submit(fx.sleepy, 0.5)
        waiting = ex.submit(fx.sleepy, 0)
        assert waiting.cancel()
        with pytest.raises(hetfaas.CallCancelled):
            waiting.result()
        assert running.result(timeout=60) == 0.5


def test_keep_alive_retires_idle_workers():
    with hetfaas.Executor(keep_alive_s=0.2, max_workers=1) as ex:
        pid = ex.submit(fx.where).result(timeout=60)["pid"]
        deadline = time.monotonic() + 20
        while _alive(pid) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert not _alive(pid)
        fut = ex.submit(fx.add, 1, 1)
        fut.result(timeout=60)
        assert fut.timings.cold_start_us > 0


def test_capture_output():
    with hetfaas.Executor(capture_output=True) as ex:
        fut = ex.submit(fx.chatty, 5)
        assert fut.result(timeout=60) == 5
        assert fut.stdout == "hello 5\n"


def test_shutdown_leaves_nothing_behind():
    ex = hetfaas.Executor()
    pids = {ex.submit(fx.where, 0.05).result(timeout=60)["pid"] for _ in range(4)}
    ex.shutdown()
    for pid in pids:
        assert not _alive(pid)
    leftovers = [n for n in os.listdir("/dev/shm") if n.startswith(f"hetfaas-{os.getpid()}-a")]
    assert leftovers == []
    with pytest.raises(hetfaas.ExecutorShutdownError):
        ex.submit(fx.add, 1, 1)


def test_unknown_backend_lists_known():
    with pytest.raises(hetfaas.UnknownBackendError, match="local"):
        hetfaas.Executor("nope")


def test_resources_validated_once():
    for bad in (
        dict(cpus=0),
        dict(cpus=1.5),
        dict(gpus=-1),
        dict(gpus=1.5),
        dict(timeout_s=0),
        dict(memory_mb=-5),
    ):
        with pytest.raises(hetfaas.ResourceError):
            Resources(**bad)
    assert Resources(gpus=0.5).gpu_share == 0.5
    with pytest.raises(hetfaas.ResourceError, match="unknown"):
        Resources().replace(disk=3)


def test_concurrent_futures_helpers_and_callbacks(ex):
    import concurrent.futures as cf

    seen = []
    futs = ex.map_futures(fx.add, range(20), range(20))
    futs[0].add_done_callback(lambda f: seen.append(f.result()))
    done, pending = cf.wait(futs, timeout=60)
    assert not pending and sorted(f.result() for f in done) == [2 * i for i in range(20)]
    assert sorted(f.result() for f in cf.as_completed(ex.map_futures(fx.add, [1], [2]))) == [3]
    assert seen == [0]


def test_memory_reservations_are_returned_and_respected():
    with hetfaas.Executor(memory_mb=1000) as ex:
        big = ex.options(memory_mb=600)
        assert [big.submit(fx.add, i, 1).result(timeout=60) for i in range(4)] == [1, 2, 3, 4]
        runs = [f.result(timeout=60) for f in [big.submit(fx.where, 0.2) for _ in range(2)]]
        a, b = runs
        assert a["end"] <= b["start"] or b["end"] <= a["start"]  # 2 x 600 MB never together


def test_workers_unmap_argument_segments_the_caller_gave_up():
    with hetfaas.Executor(max_workers=1, cpus=1) as ex:
        ex.backend._args.max_idle_bytes = 0  # give every argument segment up after its call
        t = torch.randn(2_000_000)
        fut = ex.submit(fx.where)
        pid = fut.result(timeout=60)["pid"]
        ex.submit(fx.ident, t).result(timeout=60)

        def mapped():
            with open(f"/proc/{pid}/maps") as f:
                return [line for line in f if f"hetfaas-{os.getpid()}-a-" in line]

        assert mapped()  # still mapped: the worker has not heard yet
        ex.submit(fx.add, 1, 1).result(timeout=60)  # carries the news
        assert mapped() == []


def test_chunked_map_keeps_each_items_result_and_error(ex):
    from hetfaas._chunks import auto_chunksize

    assert auto_chunksize(8, 2) == 1  # a small map: one call per item
    assert auto_chunksize(100_000, 2) > 1
    items = list(range(-5, 3000))
    it = ex.map(fx.inverse_or_raise, items, chunksize=250)
    assert len(it.chunks) == -(-len(items) // 250)
    got = []
    with pytest.raises(ZeroDivisionError):
        for v in it:
            got.append(v)
    assert got == [1 / i for i in range(-5, 0)]  # in order, up to the item that raised
    # the items after the failing one still ran: a map of the rest is whole
    assert list(ex.map(fx.add, range(5000), range(5000))) == [2 * i for i in range(5000)]
    assert list(ex.map(fx.add, range(10), range(10), chunksize=3)) == [2 * i for i in range(10)]
    first, second = it.chunks[0].result(), it.chunks[1].result()
    assert list(first.errors) == [5] and first.values[6] == 1.0  # after the error: ran
    assert second.errors is None and second.values == [1 / i for i in range(245, 495)]
    assert it.chunks[1].timings.compute_us * 1e3 >= second.compute_ns * 0.99
    with pytest.raises(ValueError, match="chunksize"):
        ex.map(fx.add, [1], [2], chunksize=0)


def test_usage_of_a_call_cpu_seconds_and_peak_memory(ex):
    view = ex.options(cpus=1, memory_mb=1024)
    fut = view.submit(fx.burn_and_hold, 0.3, 150)
    assert fut.result() == 150
    u = fut.usage
    assert u is not None and u.cpus == 1 and u.memory_mb == 1024
    assert 0.25 <= u.cpu_s <= fut.timings.compute_us / 1e6 * 1.05  # its own burn, no more
    assert u.cpu_efficiency > 0.5  # busy on its one core
    assert u.peak_rss_mb >= 150  # the 150 MiB it held
    assert u.memory_efficiency == pytest.approx(u.peak_rss_mb / 1024)
    assert any("of the requested memory" in a for a in u.advice)
    sleeper = ex.submit(fx.sleepy, 0.3)
    sleeper.result()
    assert sleeper.usage.cpu_efficiency < 0.2  # waited, did not compute


def test_short_calls_are_not_measured_once_known_short(ex):
    first = ex.submit(fx.add, 1, 2)
    first.result()
    assert first.usage is not None  # a function never seen is measured once
    later = [ex.submit(fx.add, i, i) for i in range(5)]
    [f.result() for f in later]
    assert later[-1].usage is None  # known to run in under 1 ms: the clocks would cost more


def test_a_call_dispatched_to_an_idle_pool_does_not_wake_its_reader_thread():
    # The parked reader thread polls the workers' sockets already: it wakes for the reply
    # alone, not also for each call handed to the pool (a thread switch on a core the call
    # may need). Nobody waits on these futures, so the thread delivers every reply.
    with hetfaas.Executor("local", max_workers=1) as ex:
        ex.submit(fx.add, 1, 1).result(timeout=60)
        time.sleep(0.3)  # nothing in flight: the thread parks
        reader = ex.backend._reader
        before = thread_switches(reader)
        for i in range(200):
            done = threading.Event()
            fut = ex.submit(fx.add, i, 1)
            fut.add_done_callback(lambda _f, done=done: done.set())
            assert done.wait(10) and fut.result() == i + 1
        per_call = (thread_switches(reader) - before) / 200
        assert per_call < 1.5, per_call  # woken twice per call, it was 2.1 here
        time.sleep(0.3)
        slow = ex.options(timeout_s=0.3).submit(fx.sleepy, 10)  # a time limit: woken for it
        ended = threading.Event()
        slow.add_done_callback(lambda _f: ended.set())
        assert ended.wait(5)  # the thread ended it at its time limit, not at its next wake
        with pytest.raises(hetfaas.CallTimeout):
            slow.result(timeout=0)
