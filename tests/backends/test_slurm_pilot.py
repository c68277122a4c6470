"""Pilot blocks on the real Slurm of this machine (scripts/slurm-up): warm calls, scaling out
and in, draining before walltime, a block scancelled mid-run, a late block, a wrong secret.

Each test makes its own executor with one-core blocks (the node's two cores are shared) and
leaves no job (squeue, by the executor's job name) and no agent process behind."""

import logging
import os
import socket
import subprocess
import sys
import time
import uuid

import psutil
import pytest

import hetfaas
from hetfaas.backends.pilot import wire

from .. import pool_funcs as fx
from ..conftest import start_slurm
from . import pilot_funcs as pf
from .test_submitit_backend import wait_for

pytest.importorskip("submitit")


@pytest.fixture(scope="module")
def slurm():
    start_slurm()


def jobs_named(name: str) -> list[str]:
    out = subprocess.run(["squeue", "-h", "-n", name, "-o", "%i"], capture_output=True,
                         text=True).stdout  # fmt: skip
    return out.split()


def squeue_state(job_id: str) -> str:
    return subprocess.run(["squeue", "-h", "-o", "%T", "-j", job_id], capture_output=True,
                          text=True).stdout.strip()  # fmt: skip


def agents_of(folder) -> list[int]:
    found = []
    for proc in psutil.process_iter(["cmdline"]):
        cmd = " ".join(proc.info["cmdline"] or ())
        if "hetfaas.backends.pilot.agent" in cmd and str(folder) in cmd:
            found.append(proc.pid)
    return found


@pytest.fixture
def pilot(slurm, tmp_path):
    made = []

    def make(sbatch_options=None, **shape):
        shape = {"max_blocks": 1, "cpus": 1, "memory_mb": 1000, "idle_s": 30.0, **shape}
        name = f"hetfaas-pilot-test-{uuid.uuid4().hex[:8]}"
        folder = tmp_path / f"pilot{len(made)}"
        ex = hetfaas.Executor("slurm", pilot=shape, folder=folder, job_name=name,
                              sbatch_options=sbatch_options)  # fmt: skip
        made.append((ex, name, folder))
        return ex

    yield make
    for ex, name, folder in made:
        ex.shutdown(wait=False, cancel_futures=True)
        assert wait_for(lambda name=name: not jobs_named(name), 30, 0.2), "a block job is left"
        assert wait_for(lambda folder=folder: not agents_of(folder), 10), "an agent is left"


def block(ex, job_id=None):
    blocks = [b for b in ex.backend.blocks() if job_id is None or b["job_id"] == job_id]
    assert len(blocks) == 1, ex.backend.blocks()
    return blocks[0]


def release_next(ex) -> str:
    """Let Slurm start the pending block of ``ex`` (launched with ``--hold``); its job id."""

    def pending():
        return [b["job_id"] for b in ex.backend.blocks() if b["state"] == "pending"]

    assert wait_for(lambda: any(pending()), 30), ex.backend.blocks()
    job = next(j for j in pending() if j)
    subprocess.run(["scontrol", "release", job], check=True)
    return job


def test_pilot_starts_and_serves_warm_calls(pilot):
    ex = pilot()
    first = ex.submit(pf.nap, 0)
    got = first.result(timeout=120)
    b = block(ex)
    assert got["job"] == first.engine_id == b["job_id"] and squeue_state(b["job_id"]) == "RUNNING"
    t = first.timings
    assert t.backend == "slurm-pilot"
    assert t.cold_start_us >= 0.9 * b["ready_s"] * 1e6  # it waited for the block's launch
    warm = [ex.submit(pf.nap, 0) for _ in range(30)]
    runs = [f.result(timeout=60) for f in warm]
    assert {r["job"] for r in runs} == {b["job_id"]}  # no job per call: one block serves all
    assert all(f.timings.cold_start_us == 0 for f in warm)
    assert warm[-1].usage is not None and len(ex.backend.blocks()) == 1
    with pytest.raises(ValueError, match="in a block"):
        ex.submit(fx.boom, "in a block").result(timeout=60)
    with pytest.raises(hetfaas.CallTimeout):
        ex.options(timeout_s=0.5).submit(fx.sleepy, 30).result(timeout=60)
    assert ex.submit(fx.add, 2, 3).result(timeout=60) == 5
    assert block(ex)["job_id"] == b["job_id"]  # the same block all along


def test_blocks_scale_out_by_queue_depth_and_in_when_idle(pilot):
    ex = pilot(max_blocks=2, idle_s=1.0, tick_s=0.2)
    futs = ex.map_futures(pf.nap, [3.0, 3.0])
    assert wait_for(lambda: len(ex.backend.blocks()) == 2, 5)  # one per queued call
    # and both have their Slurm job id (sbatch's answer can lag the block on a loaded node)
    assert wait_for(lambda: all(b["job_id"] for b in ex.backend.blocks()), 30)
    launched = {b["job_id"] for b in ex.backend.blocks()}
    a, b = (f.result(timeout=120) for f in futs)
    assert {a["job"], b["job"]} <= launched
    if a["job"] != b["job"]:  # both blocks started in time (the node is shared: not always)
        assert max(a["start"], b["start"]) < min(a["end"], b["end"])  # side by side
    assert wait_for(lambda: not ex.backend.blocks(), 20, 0.1), ex.backend.blocks()
    assert wait_for(lambda: not any(squeue_state(j) for j in launched), 20, 0.2)


def test_block_drains_before_its_walltime(pilot):
    ex = pilot(max_blocks=2, walltime_s=6.0, drain_s=2.0, margin_s=0.5, idle_s=60.0)
    a_job = ex.submit(pf.nap, 0).result(timeout=120)["job"]
    assert wait_for(lambda: block(ex, a_job)["left_s"] < 3.4, 20, 0.02)
    fits = ex.options(timeout_s=1.0).submit(pf.nap, 0.1)  # 1.5 s of the ~3.4 left: fits
    longer = ex.options(timeout_s=3.2).submit(pf.nap, 0.1)  # 3.7 s: never on this block
    assert fits.result(timeout=60)["job"] == a_job
    assert wait_for(lambda: block(ex, a_job)["left_s"] < 2.0, 10, 0.02)  # in its drain time
    assert block(ex, a_job)["state"] == "draining"
    untimed = ex.submit(pf.nap, 0.1)
    assert longer.result(timeout=120)["job"] != a_job  # on a new block
    assert untimed.result(timeout=120)["job"] != a_job  # not on the draining block
    # the block ends by itself at its walltime (Slurm's limit is a minute), nothing lost
    assert wait_for(lambda: squeue_state(a_job) == "", 15, 0.1)
    assert a_job not in [b["job_id"] for b in ex.backend.blocks()]


def test_scancelled_block_fails_running_calls_and_moves_the_queued(pilot, tmp_path):
    ex = pilot(max_blocks=2)
    assert [f.result(timeout=120) for f in ex.map_futures(pf.nap, [0] * 20)]  # nap is short
    # nap measured short: calls are sent ahead, a backlog in each block, one running in each
    view = ex.options(timeout_s=60)  # (a call with timeout_s goes to a worker alone)
    futs = [view.submit(pf.nap, 1.5, str(tmp_path), f"c{i}") for i in range(4)]
    victim = futs[0].engine_id
    held = [f for f in futs if f.engine_id == victim]
    assert len(held) >= 2  # c0 and at least one that waits behind it in the same block
    assert wait_for(lambda: (tmp_path / "c0.start").exists(), 60)
    blocks_used = len({f.engine_id for f in futs})  # each runs one of its calls at a time
    assert wait_for(lambda: ex.backend.stats()["running"] == blocks_used, 10)
    subprocess.run(["scancel", victim], check=True)
    with pytest.raises(hetfaas.WorkerDied):
        futs[0].result(timeout=60)
    rest = [f.result(timeout=120) for f in futs[1:]]  # no call lost: the queued ones moved
    assert all(r["job"] not in ("", victim) for r in rest)
    assert all(f.timings.compute_us >= 1.5e6 for f in futs[1:])
    assert wait_for(lambda: squeue_state(victim) == "", 15, 0.1)


def test_a_block_killed_abruptly_runs_nothing_twice(pilot, tmp_path):
    # kill -9: the block cannot say which of the calls sent ahead to it began, so none of
    # them runs again (nap is not idempotent); each call ends, with its value or WorkerDied
    ex = pilot(max_blocks=1)
    assert [f.result(timeout=120) for f in ex.map_futures(pf.nap, [0] * 20)]  # measured short
    futs = [ex.submit(pf.nap, 0.3, str(tmp_path), f"k{i}") for i in range(8)]  # sent ahead
    assert wait_for(lambda: (tmp_path / "k0.start").exists(), 60)
    for pid in agents_of(tmp_path):
        os.kill(pid, 9)
    died = 0
    for f in futs:
        try:
            f.result(timeout=120)
        except hetfaas.WorkerDied:
            died += 1
    assert died >= 1  # k0 at least: it ran when its block was killed
    for i in range(8):
        start = tmp_path / f"k{i}.start"
        assert not start.exists() or len(start.read_text().split()) == 1, f"k{i} ran twice"
    assert ex.submit(pf.nap, 0).result(timeout=120)["job"]  # a new block serves again


def test_late_block_is_used_at_once(pilot):
    ex = pilot(max_blocks=2, sbatch_options=["--hold"])  # blocks start when the test says
    long = ex.submit(pf.nap, 60.0)  # holds the first block (others' jobs may hold the node)
    a_job = release_next(ex)
    assert wait_for(lambda: ex.backend.stats()["running"] == 1, 60)
    short = ex.submit(pf.nap, 0.1)  # the block is busy: a second block is launched, held
    time.sleep(1.0)
    assert ex.backend.stats()["queued"] == 1 and not short.done()
    b_job = release_next(ex)
    got = short.result(timeout=60)
    assert got["job"] == b_job != a_job and not long.done()  # it did not wait for the first
    assert got["start"] - block(ex, b_job)["joined_at"] < 1.0  # taken the moment it joined
    assert long.engine_id == a_job and long.cancel()


def test_wrong_secret_is_refused_and_logged(pilot, caplog):
    caplog.set_level(logging.WARNING, logger="hetfaas.backends.pilot")
    ex = pilot(sbatch_options=["--hold"])
    fut = ex.submit(fx.add, 1, 2)  # waits for a block that Slurm holds
    host, port = ex.backend.address.rsplit(":", 1)
    for key, block_id, why in ((os.urandom(32), 1, "wrong secret"),
                               (ex.backend._key, 99, "refused block 99")):  # fmt: skip
        sock = socket.create_connection((host, int(port)), timeout=10)
        if why == "wrong secret":
            with pytest.raises(wire.AuthenticationFailed):
                wire.client_handshake(sock, key, block_id)
        else:  # the right secret, but no such block of this executor
            wire.client_handshake(sock, key, block_id)
            wire.Connection(sock).send((wire.HELLO, {"left_s": 60.0}))
        sock.settimeout(5)
        assert sock.recv(65536) == b""  # closed, and not a byte of the queued call
        sock.close()
        assert wait_for(lambda why=why: any(why in r.getMessage() for r in caplog.records), 5)
    assert ex.backend.stats()["queued"] == 1 and not fut.done()
    release_next(ex)
    assert fut.result(timeout=60) == 3  # the real block takes it


def test_gpu_blocks(pilot):
    gres = subprocess.run(["sinfo", "-h", "-o", "%G"], capture_output=True, text=True).stdout
    if "gpu" not in gres:
        pytest.skip("slurm-up declared no GPU")
    ex = pilot(gpus=1)
    got = ex.options(gpus=1).submit(pf.nap, 0).result(timeout=120)
    assert got["cuda"] not in (None, "")
    with pytest.raises(hetfaas.ResourceError, match="GPU"):
        ex.options(gpus=2).submit(pf.nap, 0)


SUBMITTER = """
import sys, time, hetfaas
ex = hetfaas.Executor("slurm", pilot={"cpus": 1, "memory_mb": 1000}, folder=sys.argv[1],
                      job_name=sys.argv[2])
fut = ex.submit(int, "7")
print(fut.result(timeout=120), fut.engine_id, flush=True)
time.sleep(600)
"""


def test_block_ends_when_its_submitter_is_killed(slurm, tmp_path):
    name = f"hetfaas-pilot-test-{uuid.uuid4().hex[:8]}"
    proc = subprocess.Popen([sys.executable, "-c", SUBMITTER, str(tmp_path), name],
                            stdout=subprocess.PIPE, text=True)  # fmt: skip
    try:
        value, job = proc.stdout.readline().split()
        assert value == "7" and jobs_named(name) == [job]
    finally:
        proc.kill()
        proc.wait()
    assert wait_for(lambda: not jobs_named(name), 20, 0.1), "the block outlived its executor"
    assert wait_for(lambda: not agents_of(tmp_path), 10)


def test_chaos_on_the_pilot_loses_nothing(slurm):
    # workers killed inside the blocks and blocks scancelled, at random: every call ends,
    # none runs more often than its attempts; with retries (idempotent) none fails
    from hetfaas.bench.chaos import run_chaos

    row = run_chaos("slurm-pilot", 2000, 200.0, seed=2, deadline_s=120, retries=3)
    assert row["kills"] >= 3
    assert row["hung"] == row["lost"] == row["ran_more_than_attempts"] == 0
    assert row["failed"] == {} and row["completed"] == 2000 and row["after_ok"] == 100
