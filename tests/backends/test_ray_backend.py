"""The Ray backend against a real local Ray, started once for the module."""

from __future__ import annotations

import concurrent.futures as cf
import contextlib
import os
import random
import sys
import threading
import time

import psutil
import pytest

import hetfaas
from hetfaas._invocation import PHASES
from hetfaas.exceptions import (
    CallCancelled,
    CallTimeout,
    ConfigurationError,
    ExecutorShutdownError,
    RemoteError,
    RemoteTraceback,
    ResourceError,
    SerializationError,
    WorkerDied,
)

from .. import pool_funcs as fx

ray = pytest.importorskip("ray")

_RAY_DAEMONS = ("raylet", "gcs_server")


def _ray_daemons() -> list[psutil.Process]:
    found = []
    for proc in psutil.Process().children(recursive=True):
        try:
            if any(d in " ".join(proc.cmdline()) for d in _RAY_DAEMONS):
                found.append(proc)
        except psutil.Error:
            pass
    return found


@pytest.fixture(scope="module")
def rex():
    started_here = not ray.is_initialized()
    ex = hetfaas.Executor("ray")
    yield ex
    ex.shutdown(wait=False, cancel_futures=True)
    if started_here:
        assert not ray.is_initialized()
        deadline = time.monotonic() + 15
        while _ray_daemons() and time.monotonic() < deadline:
            time.sleep(0.1)
        assert not _ray_daemons(), "Ray's daemons outlived the executor"


def square_plus(x: int, k: int = 0) -> int:
    return x * x + k


def test_submit_result_and_capacity(rex):
    fut = rex.submit(square_plus, 7, k=1)
    assert fut.result(timeout=120) == 50
    assert fut.state == hetfaas.State.COMPLETED
    assert fut.engine_id  # Ray's task id
    cap = rex.capacity
    assert cap.cpus >= 1 and cap.max_workers == cap.cpus and cap.memory_mb > 0


def test_map_in_order(rex):
    assert list(rex.map(fx.add, range(20), range(100, 120))) == [
        a + b for a, b in zip(range(20), range(100, 120), strict=True)
    ]


def test_timings_against_independent_clocks(rex):
    # The phases sum to total by construction (queue is the remainder); check them against
    # clocks they are not computed from: the sleep inside the call and the caller's own wall.
    t0 = time.perf_counter()
    fut = rex.submit(fx.sleepy, 0.1)
    assert fut.result(timeout=60) == 0.1
    wall_us = (time.perf_counter() - t0) * 1e6
    t = fut.timings
    assert t.backend == "ray"
    assert t.compute_us >= 100_000  # the function slept 0.1 s
    assert t.total_us <= wall_us  # the call cannot take longer than the caller waited
    assert t.compute_us <= t.total_us
    assert min(getattr(t, p) for p in PHASES) >= 0
    assert t.pid > 0 and t.pid != os.getpid()


def test_remote_exception_keeps_its_type(rex):
    fut = rex.submit(fx.boom, "bad input")
    with pytest.raises(ValueError, match="bad input") as info:
        fut.result(timeout=60)
    assert isinstance(info.value.__cause__, RemoteTraceback)
    assert "boom" in info.value.__cause__.tb
    assert fut.state == hetfaas.State.FAILED


def test_unpicklable_remote_exception_is_a_remote_error(rex):
    with pytest.raises(RemoteError, match="cannot travel") as info:
        rex.submit(fx.boom_unpicklable).result(timeout=60)
    assert info.value.type_name.endswith("Unpicklable")


def test_timeout_cancels_the_task(rex):
    t0 = time.monotonic()
    fut = rex.options(timeout_s=1.0).submit(fx.sleepy, 60)
    with pytest.raises(CallTimeout) as info:
        fut.result(timeout=30)
    assert time.monotonic() - t0 < 10
    assert info.value.invocation_id == fut.invocation_id
    assert fut.timings is not None
    assert rex.submit(fx.add, 1, 1).result(timeout=60) == 2  # the backend goes on


def test_timeout_without_a_waiting_thread(rex):
    fut = rex.options(timeout_s=0.5).submit(fx.sleepy, 60)
    done, _ = cf.wait([fut], timeout=30)  # the watcher thread fires the deadline
    assert done and isinstance(fut.exception(), CallTimeout)


def test_worker_crash_is_worker_died(rex):
    fut = rex.submit(fx.exit_now, 1)
    with pytest.raises(WorkerDied) as info:
        fut.result(timeout=60)
    assert info.value.invocation_id == fut.invocation_id
    assert rex.submit(fx.add, 2, 2).result(timeout=60) == 4


def test_unpicklable_argument_fails_at_submit(rex):
    with pytest.raises(SerializationError):
        rex.submit(fx.ident, threading.Lock())


def test_impossible_resources_fail_at_submit(rex):
    cap = rex.capacity
    with pytest.raises(ResourceError, match="no node"):
        rex.options(cpus=cap.cpus + 1).submit(fx.add, 1, 2)
    with pytest.raises(ResourceError):
        rex.options(gpus=cap.gpus + 1).submit(fx.add, 1, 2)
    with pytest.raises(ResourceError):
        rex.options(memory_mb=cap.memory_mb * 1000).submit(fx.add, 1, 2)


def test_memory_request_that_fits(rex):
    assert rex.options(memory_mb=64).submit(fx.add, 3, 4).result(timeout=60) == 7


def test_torch_tensor_round_trip(rex):
    torch = pytest.importorskip("torch")
    t = torch.arange(1000, dtype=torch.float32).reshape(10, 100)
    back = rex.submit(fx.ident, t).result(timeout=60)
    assert isinstance(back, torch.Tensor) and torch.equal(back, t)
    assert rex.submit(fx.fill, torch.zeros(8), 2.0).result(timeout=60) == 16.0


def test_large_payload_and_result(rex):
    blob = bytes(range(256)) * 8192  # 2 MiB: travels as a Payload object, not packed bytes
    assert rex.submit(fx.ident, blob).result(timeout=60) == blob


def test_as_completed_without_waiting_on_result(rex):
    futs = [rex.submit(fx.sleepy, s) for s in (0.6, 0.05, 0.3)]
    seen = []
    for fut in futs:
        fut.add_done_callback(lambda f: seen.append(f.result()))
    order = [f.result() for f in cf.as_completed(futs, timeout=60)]  # no thread waits on one
    assert sorted(order) == [0.05, 0.3, 0.6]  # (their order depends on Ray's cold starts)
    assert sorted(seen) == [0.05, 0.3, 0.6]


def test_batch_dispatches_together(rex):
    with rex.batch():
        futs = [rex.submit(fx.add, i, i) for i in range(5)]
    assert [f.result(timeout=60) for f in futs] == [0, 2, 4, 6, 8]


def test_warmup(rex):
    rex.warmup(2)
    assert rex.submit(fx.add, 1, 2).result(timeout=60) == 3


def test_second_executor_shares_ray_and_shuts_down_alone(rex):
    other = hetfaas.Executor("ray")
    futs = [other.submit(fx.sleepy, 0.2) for _ in range(3)]
    other.shutdown(wait=True)
    assert all(f.done() and f.result() == 0.2 for f in futs)
    with pytest.raises(ExecutorShutdownError):
        other.submit(fx.add, 1, 1)
    assert ray.is_initialized()
    assert rex.submit(fx.add, 5, 5).result(timeout=60) == 10


def test_shutdown_cancel_futures(rex):
    other = hetfaas.Executor("ray")
    futs = [other.submit(fx.sleepy, 30) for _ in range(3)]
    t0 = time.monotonic()
    other.shutdown(wait=True, cancel_futures=True)
    assert time.monotonic() - t0 < 10
    for fut in futs:
        with pytest.raises(CallCancelled):
            fut.result(timeout=1)
    assert rex.submit(fx.add, 1, 2).result(timeout=60) == 3


def test_missing_ray_is_a_configuration_error(monkeypatch):
    monkeypatch.setitem(sys.modules, "ray", None)
    with pytest.raises(ConfigurationError, match="pip install 'ray"):
        hetfaas.Executor("ray")


def test_many_calls_in_flight_settle_in_batches(rex):
    # More calls than a waiting caller fetches itself: the watcher settles them in batches.
    futures = rex.map_futures(square_plus, range(300))
    assert [f.result(timeout=60) for f in futures] == [x * x for x in range(300)]
    assert all(f.timings.total_us > 0 for f in futures)


def test_a_function_over_a_megabyte_travels_with_each_call(rex):
    blob = bytes(range(256)) * 8192  # 2 MiB captured by value: not made a Ray task of its own

    def size_plus(k: int) -> int:
        return len(blob) + k

    assert list(rex.map(size_plus, [1, 2], timeout=60)) == [len(blob) + 1, len(blob) + 2]


# ------------------------------------------------------------------ cancel, timeout_s, chaos


def sleep_marked(path: str, s: float) -> float:
    with open(path, "w") as f:
        f.write(str(os.getpid()))
    time.sleep(s)
    return s


def _wait_for_file(path, timeout=60.0):
    deadline = time.monotonic() + timeout
    while not os.path.exists(path):
        assert time.monotonic() < deadline, "the call never started"
        time.sleep(0.02)


def test_cancel_a_running_call(rex, tmp_path):
    path = str(tmp_path / "started")
    fut = rex.submit(sleep_marked, path, 30)
    _wait_for_file(path)
    t0 = time.monotonic()
    assert fut.cancel()
    assert fut.cancelled() and fut.state == hetfaas.State.CANCELLED
    with pytest.raises(CallCancelled):
        fut.result(timeout=10)
    assert time.monotonic() - t0 < 5
    assert fut.cancel() and fut.cancelled()  # cancelled stays cancelled, as in concurrent.futures
    assert rex.submit(fx.add, 2, 3).result(timeout=60) == 5  # the executor goes on


def test_cancel_while_a_thread_waits_on_it(rex, tmp_path):
    path = str(tmp_path / "started")
    fut = rex.submit(sleep_marked, path, 30)
    _wait_for_file(path)
    caught = []

    def wait():
        try:
            fut.result(timeout=30)
        except BaseException as exc:
            caught.append(exc)

    waiter = threading.Thread(target=wait)
    waiter.start()
    time.sleep(0.2)  # the thread is inside ray.get on the task
    assert fut.cancel()
    waiter.join(timeout=10)
    assert not waiter.is_alive() and isinstance(caught[0], CallCancelled)


def test_cancel_a_call_queued_in_ray(rex):
    every = rex.options(cpus=rex.capacity.cpus)  # one such call at a time
    first = every.submit(fx.sleepy, 2)
    queued = every.submit(fx.sleepy, 30)
    time.sleep(0.3)
    assert queued.cancel()
    with pytest.raises(CallCancelled):
        queued.result(timeout=5)
    assert first.result(timeout=60) == 2
    assert not first.cancel()  # it ended: nothing to cancel


def test_cancel_after_the_end_is_false(rex):
    fut = rex.submit(fx.add, 1, 1)
    assert fut.result(timeout=60) == 2
    assert not fut.cancel() and not fut.cancelled()


def test_timeout_does_not_count_the_queue(rex):
    every = rex.options(cpus=rex.capacity.cpus)  # the second waits in Ray for the first
    first = every.submit(fx.sleepy, 2.0)
    second = every.options(timeout_s=1.5).submit(fx.sleepy, 0.5)
    assert second.result(timeout=60) == 0.5  # about 2 s after its submit: queue not counted
    assert first.result(timeout=60) == 2.0
    assert second.timings.compute_us >= 500_000


def test_timeout_counts_run_time(rex):
    rex.submit(fx.add, 0, 0).result(timeout=60)  # a warm worker
    t0 = time.monotonic()
    fut = rex.options(timeout_s=1).submit(fx.sleepy, 5)
    with pytest.raises(CallTimeout, match="timeout_s=1"):
        fut.result(timeout=30)
    assert time.monotonic() - t0 < 4
    assert fut.state == hetfaas.State.FAILED


def test_timed_call_that_ends_in_time_leaves_no_marker(rex):
    from ray.experimental import internal_kv

    backend = rex._shared.backend
    fut = rex.options(timeout_s=10).submit(fx.sleepy, 1.5)  # runs long enough to mark its start
    assert fut.result(timeout=60) == 1.5
    deadline = time.monotonic() + 10
    while internal_kv._internal_kv_list(backend._marker_prefix, namespace="hetfaas"):
        assert time.monotonic() < deadline, "the start marker stayed"
        time.sleep(0.05)


def hog_the_gil(python_s: float) -> None:
    end = time.monotonic() + python_s
    while time.monotonic() < end:  # plain Python: other threads get the GIL
        pass
    sum(range(10**13))  # C code that never lets the GIL go


def test_timeout_of_a_call_holding_the_gil(rex):
    # Its watchdog thread cannot run: SIGALRM (no Python involved) ends the worker 2 s later,
    # and the start marker it left while it still ran Python makes it a CallTimeout.
    rex.submit(fx.add, 0, 0).result(timeout=60)
    t0 = time.monotonic()
    fut = rex.options(timeout_s=1).submit(hog_the_gil, 0.8)
    with pytest.raises(CallTimeout):
        fut.result(timeout=60)
    assert time.monotonic() - t0 < 10


def hog_ignoring_alarms(python_s: float) -> None:
    import signal

    signal.signal(signal.SIGALRM, signal.SIG_IGN)
    hog_the_gil(python_s)


def test_timeout_backstop_when_the_worker_cannot_stop_itself(rex):
    # Neither the watchdog thread (GIL) nor SIGALRM (ignored) can stop it: the caller cancels
    # it 5 s past its start plus timeout_s, from the start marker it left.
    rex.submit(fx.add, 0, 0).result(timeout=60)
    t0 = time.monotonic()
    fut = rex.options(timeout_s=1).submit(hog_ignoring_alarms, 0.8)
    with pytest.raises(CallTimeout, match="did not stop"):
        fut.result(timeout=60)
    assert 5 < time.monotonic() - t0 < 15
    assert rex.submit(fx.add, 1, 1).result(timeout=60) == 2


def _ray_workers() -> list[psutil.Process]:
    """Ray's worker processes under this session ("ray::IDLE", "ray::hetfaas:sleepy", ...);
    not its agents ("ray::RuntimeEnvAgent", "ray::DashboardAgent"), whose death stops Ray."""
    found = []
    for proc in psutil.Process().children(recursive=True):
        try:
            name = proc.name()
            if name.startswith("ray::") and not name.endswith("Agent"):
                found.append(proc)
        except psutil.Error:
            pass
    return found


def test_chaos_killing_ray_workers(rex):
    rng = random.Random(9)
    futures = rex.map_futures(fx.sleepy, [0.01] * 200)
    kills = 0
    deadline = time.monotonic() + 60
    while kills < 4 and not all(f.done() for f in futures) and time.monotonic() < deadline:
        time.sleep(0.15)
        workers = _ray_workers()
        busy = [p for p in workers if "hetfaas:" in p.name()] or workers
        if busy:
            with contextlib.suppress(psutil.Error):
                rng.choice(busy).kill()
                kills += 1
    _, pending = cf.wait(futures, timeout=120)
    assert not pending, f"{len(pending)} calls hung"
    outcomes = {"ok": 0, "died": 0}
    for fut in futures:
        exc = fut.exception()
        if exc is None:
            assert fut.result() == 0.01
            outcomes["ok"] += 1
        else:
            assert isinstance(exc, WorkerDied), repr(exc)
            outcomes["died"] += 1
    assert kills and outcomes["ok"] > 0
    assert rex.submit(fx.add, 4, 4).result(timeout=60) == 8  # Ray serves on


def test_usage_of_a_ray_call(rex):
    fut = rex.options(memory_mb=512).submit(fx.burn_and_hold, 0.2, 40)
    assert fut.result(timeout=60) == 40
    u = fut.usage
    assert 0.15 <= u.cpu_s <= fut.timings.compute_us / 1e6 * 1.05 + 0.01
    assert u.peak_rss_mb >= 40 and u.memory_mb == 512
