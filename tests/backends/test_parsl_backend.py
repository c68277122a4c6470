"""The parsl backend on Parsl's HighThroughputExecutor: LocalProvider blocks on this machine,
and SlurmProvider blocks on the real Slurm of scripts/slurm-up."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
from pathlib import Path

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
from ..conftest import start_slurm
from . import parsl_funcs as pf
from . import slurm_funcs as sf

pytest.importorskip("parsl")


def wait_for(predicate, timeout_s: float, every_s: float = 0.05) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(every_s)
    return predicate()


def alive(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.Error:
        return False


def pid_of(folder: Path, name: str, timeout_s: float = 60) -> int:
    path = folder / f"{name}.pid"
    assert wait_for(path.exists, timeout_s), f"{name} never started"
    return int(path.read_text())


def parsl_processes(ex: hetfaas.Executor) -> list[psutil.Process]:
    """The executor's Parsl processes still running: its blocks' worker pools (their
    command names the run dir) and its interchange."""
    htex = ex.backend.executor
    run_dir = ex.backend.dfk.run_dir
    found = []
    for proc in psutil.process_iter(["cmdline"]):
        try:
            if proc.status() != psutil.STATUS_ZOMBIE and run_dir in " ".join(
                proc.info["cmdline"] or ()
            ):
                found.append(proc)
        except psutil.Error:
            continue
    ix = htex.interchange_proc
    if ix is not None and ix.poll() is None:
        found.append(psutil.Process(ix.pid))
    return found


def pools(ex: hetfaas.Executor) -> list[psutil.Process]:
    return [p for p in parsl_processes(ex) if "process_worker_pool" in " ".join(p.cmdline())]


def assert_nothing_left(ex: hetfaas.Executor) -> None:
    ex.shutdown(wait=False, cancel_futures=True)
    left = parsl_processes(ex)
    assert not left, f"left behind: {[p.cmdline() for p in left]}"


@pytest.fixture(scope="module")
def pex():
    ex = hetfaas.Executor("parsl", max_workers_per_node=2, heartbeat_period=1)
    run_dir = ex.backend.dfk.run_dir
    yield ex
    assert_nothing_left(ex)
    assert not os.path.exists(run_dir)  # the temporary run dir made for it is gone


def test_submit_result_capacity_and_engine_id(pex):
    fut = pex.submit(fx.add, 40, 2)
    assert fut.result(timeout=120) == 42
    assert fut.state == hetfaas.State.COMPLETED
    assert fut.engine_id and fut.engine_id.isdigit()  # HTEX's task id
    cap = pex.capacity
    assert cap.max_workers == 2 and cap.cpus == 2 and cap.gpus == 0 and cap.memory_mb > 0
    assert isinstance(pex.backend.executor, __import__("parsl").HighThroughputExecutor)


def test_timings_and_usage_against_independent_clocks(pex):
    t0 = time.perf_counter()
    fut = pex.submit(fx.sleepy, 0.1)
    assert fut.result(timeout=60) == 0.1
    wall_us = (time.perf_counter() - t0) * 1e6
    t = fut.timings
    assert t.backend == "parsl"
    assert t.compute_us >= 100_000  # the function slept 0.1 s
    assert t.compute_us <= t.total_us <= wall_us + 2_000
    assert min(getattr(t, p) for p in PHASES) >= 0
    assert t.pid > 0 and t.pid != os.getpid()
    assert len(t.cpus) == 1  # cpu_affinity="block": each worker pinned to its own core
    usage = fut.usage
    assert usage is not None and usage.cpus == 1 and 0 <= usage.cpu_s < 0.1


def test_map_and_batch_keep_their_order(pex):
    assert list(pex.map(fx.add, range(30), range(100, 130))) == [2 * i + 100 for i in range(30)]
    with pex.batch():
        futs = [pex.submit(fx.add, i, i) for i in range(5)]
    assert [f.result(timeout=60) for f in futs] == [0, 2, 4, 6, 8]


def test_remote_exceptions(pex):
    with pytest.raises(ValueError, match="bad input") as info:
        pex.submit(fx.boom, "bad input").result(timeout=60)
    assert isinstance(info.value.__cause__, RemoteTraceback)
    assert "boom" in info.value.__cause__.tb
    with pytest.raises(RemoteError, match="cannot travel") as info:
        pex.submit(fx.boom_unpicklable).result(timeout=60)
    assert info.value.type_name.endswith("Unpicklable")


def test_timeout_stops_the_call_in_its_worker(pex):
    t0 = time.monotonic()
    fut = pex.options(timeout_s=0.5).submit(fx.sleepy, 60)
    with pytest.raises(CallTimeout) as info:
        fut.result(timeout=30)
    assert time.monotonic() - t0 < 5
    assert info.value.invocation_id == fut.invocation_id
    assert 500_000 <= fut.timings.compute_us < 1_500_000  # stopped at its deadline
    assert pex.submit(fx.add, 1, 1).result(timeout=60) == 2  # the backend goes on
    fine = pex.options(timeout_s=5).submit(fx.sleepy, 0.05)  # a timed call in time
    assert fine.result(timeout=60) == 0.05


def test_timeout_of_c_code_holding_the_gil_ends_its_worker(pex):
    t0 = time.monotonic()
    fut = pex.options(timeout_s=0.5).submit(pf.hold_gil)
    with pytest.raises(CallTimeout, match="did not stop") as info:
        fut.result(timeout=60)
    elapsed = time.monotonic() - t0
    assert 2.5 <= elapsed < 15  # the deadline plus the backstop's 2 s, plus Parsl's notice
    assert "hold_gil" in str(info.value)  # the traceback where the backstop found it
    assert pex.submit(fx.add, 2, 2).result(timeout=60) == 4  # Parsl restarted the worker


def test_worker_crash_is_worker_died(pex):
    fut = pex.submit(fx.exit_now, 3)
    with pytest.raises(WorkerDied, match="worker") as info:
        fut.result(timeout=60)
    assert info.value.invocation_id == fut.invocation_id
    assert pex.submit(fx.add, 3, 3).result(timeout=60) == 6


def test_cancel_kills_the_running_call(pex, tmp_path):
    fut = pex.submit(sf.marked_sleep, str(tmp_path), "c", 60)
    pid = pid_of(tmp_path, "c")
    t0 = time.monotonic()
    assert fut.cancel()
    with pytest.raises(CallCancelled):
        fut.result(timeout=1)
    assert time.monotonic() - t0 < 1.0
    assert wait_for(lambda: not alive(pid), 10), "the cancelled call's worker still runs"
    assert pex.submit(fx.add, 4, 4).result(timeout=60) == 8


def test_cancel_pending_stops_queued_calls(pex, tmp_path):
    holds = [pex.submit(sf.marked_sleep, str(tmp_path), f"h{i}", 60) for i in range(2)]
    queued = pex.submit(sf.marked_sleep, str(tmp_path), "q", 0)
    pids = [pid_of(tmp_path, f"h{i}") for i in range(2)]
    pex.backend.cancel_pending()
    for fut in [*holds, queued]:
        with pytest.raises(CallCancelled):
            fut.result(timeout=1)
    assert wait_for(lambda: not any(alive(p) for p in pids), 10)
    assert pex.submit(fx.add, 5, 5).result(timeout=60) == 10
    assert wait_for(lambda: pex.backend.executor.outstanding() == 0, 30)  # Parsl is done
    assert not (tmp_path / "q.runs").exists()  # with them: the queued call never ran


def test_impossible_resources_fail_at_submit(pex):
    with pytest.raises(ResourceError, match="cores_per_worker"):
        pex.options(cpus=2).submit(fx.add, 1, 2)
    with pytest.raises(ResourceError, match="no accelerator"):
        pex.options(gpus=1).submit(fx.add, 1, 2)
    with pytest.raises(ResourceError, match="one accelerator"):
        pex.options(gpus=2).submit(fx.add, 1, 2)
    with pytest.raises(ResourceError, match="MB at most"):
        pex.options(memory_mb=pex.capacity.memory_mb * 10).submit(fx.add, 1, 2)
    assert pex.options(memory_mb=64).submit(fx.add, 3, 4).result(timeout=60) == 7


def test_unpicklable_argument_fails_at_submit(pex):
    with pytest.raises(SerializationError):
        pex.submit(fx.ident, threading.Lock())


def test_options_are_checked():
    from parsl.executors import HighThroughputExecutor

    with pytest.raises(ConfigurationError, match="unknown option"):
        hetfaas.Executor("parsl", cores=4)
    with pytest.raises(ConfigurationError, match="not both"):
        hetfaas.Executor("parsl", config=object(), executor=object())
    with pytest.raises(ConfigurationError, match="HighThroughputExecutor"):
        hetfaas.Executor("parsl", executor=HighThroughputExecutor(), max_blocks=3)
    with pytest.raises(ConfigurationError, match="provider must be"):
        hetfaas.Executor("parsl", provider="pbs")


def test_without_parsl_installed_is_a_configuration_error(monkeypatch):
    monkeypatch.setitem(sys.modules, "parsl", None)  # what a machine without Parsl shows
    with pytest.raises(ConfigurationError, match="pip install parsl"):
        hetfaas.Executor("parsl")


def test_a_ready_htex_scales_from_zero_blocks_and_back(tmp_path):
    from parsl.executors import HighThroughputExecutor
    from parsl.providers import LocalProvider

    from hetfaas.backends.parsl_backend import launch_commands

    pool, interchange = launch_commands()
    htex = HighThroughputExecutor(
        label="zero", address="127.0.0.1", max_workers_per_node=1, heartbeat_period=1,
        provider=LocalProvider(init_blocks=0, min_blocks=0, max_blocks=1),
        launch_cmd=pool, interchange_launch_cmd=interchange,
    )  # fmt: skip
    run_dir = str(tmp_path / "runinfo")
    ex = hetfaas.Executor("parsl", executor=htex, run_dir=run_dir, max_idletime=1.0)
    try:
        time.sleep(1.0)  # a few strategy periods: still no block without a call
        assert not htex.blocks_to_job_id and not pools(ex)
        fut = ex.submit(fx.add, 1, 2)
        assert fut.result(timeout=120) == 3
        t = fut.timings
        assert t.queue_us > 0 and t.cold_start_us > 0  # the block's start; the worker's start
        assert len(htex.blocks_to_job_id) == 1
        first = pools(ex)
        assert first
        # idle for max_idletime: Parsl's strategy ends the block
        assert wait_for(lambda: not any(alive(p.pid) for p in first), 30), "idle block lives"
        assert ex.submit(fx.add, 2, 3).result(timeout=120) == 5  # a new block
        assert len(htex.blocks_to_job_id) == 2
        slow = [ex.submit(fx.sleepy, 0.3) for _ in range(2)]
        ex.shutdown(wait=True)  # waits for the calls
        assert [f.result(timeout=0) for f in slow] == [0.3, 0.3]
        with pytest.raises(ExecutorShutdownError):
            ex.submit(fx.add, 1, 1)
    finally:
        assert_nothing_left(ex)


# ---------------------------------------------------------------------- on Slurm


def squeue(job_ids) -> list[str]:
    out = subprocess.run(["squeue", "-h", "-o", "%i %T", "-j", ",".join(job_ids)],
                         capture_output=True, text=True)  # fmt: skip
    return out.stdout.split("\n") if out.stdout.strip() else []


def test_slurm_blocks_run_calls_and_leave_nothing_behind(tmp_path):
    start_slurm()
    ex = hetfaas.Executor(
        "parsl", provider="slurm", partition="debug", init_blocks=0, cores_per_node=1,
        heartbeat_period=1, heartbeat_threshold=3, run_dir=str(tmp_path / "runinfo"),
    )  # fmt: skip
    htex = ex.backend.executor
    try:
        assert ex.capacity.max_workers == 1
        t0 = time.perf_counter()
        fut = ex.submit(pf.job_and_pid)
        job, pid = fut.result(timeout=180)
        wall_us = (time.perf_counter() - t0) * 1e6
        assert job and list(htex.blocks_to_job_id.values()) == [job]  # the block's job
        t = fut.timings
        assert t.queue_us > 0 and t.cold_start_us > 0 and t.total_us <= wall_us + 2_000
        assert ex.submit(pf.job_and_pid).result(timeout=60) == (job, pid)  # a warm worker
        assert list(ex.map(fx.add, range(5), range(5))) == [0, 2, 4, 6, 8]
        # scancel of the block while a call runs: Parsl loses its manager -> WorkerDied
        running = ex.submit(sf.marked_sleep, str(tmp_path), "s", 60)
        pid_of(tmp_path, "s")
        subprocess.run(["scancel", job], check=True)
        with pytest.raises(WorkerDied, match="block"):
            running.result(timeout=60)
    finally:
        ex.shutdown(wait=False, cancel_futures=True)
    jobs = list(htex.blocks_to_job_id.values())
    assert jobs and not squeue(jobs), f"still in squeue: {squeue(jobs)}"
    assert not parsl_processes(ex)


def test_calls_as_parsl_function_tasks(pex, monkeypatch):
    """Parsl before 2025.10 has no task executors: each call is then ``run_call(blob)`` as an
    ordinary HTEX function task (forced here: this Parsl takes the direct path)."""
    monkeypatch.setattr(pex.backend, "_direct", False)
    assert pex.submit(fx.add, 6, 7).result(timeout=60) == 13
    with pytest.raises(ValueError, match="as a task"):
        pex.submit(fx.boom, "as a task").result(timeout=60)


def test_slurm_gpus_become_one_accelerator_per_worker(tmp_path):
    start_slurm()
    from hetfaas.backends.parsl_backend import _smallest_node

    gpus = _smallest_node("debug").gpus
    if gpus < 2:
        pytest.skip("slurm-up declared fewer than 2 GPUs")
    ex = hetfaas.Executor(
        "parsl", provider="slurm", partition="debug", init_blocks=0, gpus_per_node=2,
        run_dir=str(tmp_path / "runinfo"),
    )  # fmt: skip
    try:
        assert ex.capacity.gpus == 2 and ex.capacity.max_workers == 2
        gpu = ex.options(gpus=1)
        futs = [gpu.submit(pf.visible_devices, 0.5) for _ in range(2)]  # at once: two workers
        assert sorted(f.result(timeout=180) for f in futs) == ["0", "1"]
        assert futs[0].timings.gpus in ((0,), (1,))
        with pytest.raises(ResourceError, match="one accelerator"):
            ex.options(gpus=2).submit(fx.add, 1, 1)
    finally:
        ex.shutdown(wait=False, cancel_futures=True)
    assert not squeue(list(ex.backend.executor.blocks_to_job_id.values()))
