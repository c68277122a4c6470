"""The pilot's parts without Slurm: the block strategy (pure), the secret, handshake and frames,
and blocks run as local processes (the same agent Slurm runs), killed with SIGKILL."""

import logging
import os
import signal
import socket
import stat
import threading
import time

import pytest

import hetfaas
from hetfaas.backends.pilot import wire
from hetfaas.backends.pilot.strategy import (
    DRAINING,
    PENDING,
    RUNNING,
    BlockView,
    Observed,
    Pilot,
    decide,
    pilot_from,
)

from .. import pool_funcs as fx
from . import pilot_funcs as pf
from .test_submitit_backend import alive, wait_for

# ---------------------------------------------------------------------- strategy


def test_scale_out_from_zero_by_queue_depth():
    p = Pilot(max_blocks=4, cpus=2)
    assert decide(p, Observed(0.0, 0)).launch == 0
    assert decide(p, Observed(0.0, 1)).launch == 1  # any queued call wants a block
    assert decide(p, Observed(0.0, 5)).launch == 3  # ceil(5 / 2)
    assert decide(p, Observed(0.0, 50)).launch == 4  # max_blocks
    half = Pilot(max_blocks=4, cpus=2, parallelism=0.5)
    assert decide(half, Observed(0.0, 5)).launch == 2  # ceil(5 * 0.5 / 2)


def test_pending_and_busy_blocks_count_draining_ones_do_not():
    p = Pilot(max_blocks=3, cpus=1)
    pending = BlockView(1, PENDING, 0, 0.0)
    busy = BlockView(2, RUNNING, 1)
    assert decide(p, Observed(1.0, 1, (pending,))).launch == 0  # on its way
    assert decide(p, Observed(1.0, 2, (pending, busy))).launch == 1  # 3 calls, 2 blocks
    draining = BlockView(3, DRAINING, 1)
    d = decide(p, Observed(1.0, 1, (draining,)))
    assert d.launch == 1 and d.release == ()  # replaced; released once its call ended
    d = decide(p, Observed(1.0, 0, (BlockView(3, DRAINING, 0, 0.5),)))
    assert d.release == (3,) and d.launch == 0


def test_stranded_calls_want_fresh_blocks_within_max_blocks():
    p = Pilot(max_blocks=2, cpus=1)
    idle = BlockView(1, RUNNING, 0, 0.0)
    assert decide(p, Observed(1.0, 1, (idle,))).launch == 0  # the idle block takes it
    assert decide(p, Observed(1.0, 1, (idle,), stranded=1)).launch == 1  # it has no time left
    late = BlockView(2, PENDING, 0, 0.5)
    assert decide(p, Observed(1.0, 1, (idle, late), stranded=1)).launch == 0
    assert decide(Pilot(max_blocks=1), Observed(1.0, 1, (idle,), stranded=1)).launch == 0
    with pytest.raises(ValueError):
        decide(p, Observed(1.0, 1, stranded=2))


def test_idle_blocks_are_released_after_idle_s_down_to_min_blocks():
    p = Pilot(min_blocks=1, max_blocks=4, idle_s=10.0)
    blocks = (BlockView(1, RUNNING, 0, 0.0), BlockView(2, RUNNING, 0, 5.0),
              BlockView(3, PENDING, 0, 2.0), BlockView(4, RUNNING, 2))  # fmt: skip
    assert decide(p, Observed(9.0, 0, blocks)).release == ()  # none idle 10 s yet
    assert decide(p, Observed(12.0, 0, blocks)).release == (3, 1)  # pending first
    assert decide(p, Observed(20.0, 0, blocks)).release == (3, 1, 2)  # block 4 stays (busy)
    assert decide(p, Observed(20.0, 1, blocks)).release == ()  # a queued call: keep them
    keep_two = Pilot(min_blocks=3, max_blocks=4, idle_s=10.0)
    assert decide(keep_two, Observed(20.0, 0, blocks)).release == (3,)
    assert decide(Pilot(min_blocks=2, max_blocks=2), Observed(0.0, 0)).launch == 2


def test_pilot_options_are_checked():
    assert pilot_from(True) == Pilot()
    assert pilot_from({"max_blocks": 3}).max_blocks == 3
    assert Pilot(walltime_s=61).slurm_minutes == 2
    for bad in ({"max_blocks": 0}, {"min_blocks": 3, "max_blocks": 2}, {"cpus": 0},
                {"parallelism": 0}, {"walltime_s": 10, "drain_s": 10}, {"idle_s": -1},
                {"memory_mb": 0}, {"nodes": 2}):  # fmt: skip
        with pytest.raises(hetfaas.ConfigurationError):
            pilot_from(bad)
    with pytest.raises(hetfaas.ConfigurationError):
        pilot_from("big")


# ---------------------------------------------------------------------- wire


def test_secret_file_is_private_and_checked(tmp_path):
    path = tmp_path / "secret"
    key = wire.write_secret(path)
    assert len(key) == 32 and stat.S_IMODE(os.stat(path).st_mode) == 0o600
    assert wire.read_secret(path) == key
    with pytest.raises(FileExistsError):
        wire.write_secret(path)  # never overwritten
    os.chmod(path, 0o640)
    with pytest.raises(wire.AuthenticationFailed, match="readable by others"):
        wire.read_secret(path)


def _handshake(server_key, client_key):
    a, b = socket.socketpair()
    got = {}

    def serve():
        try:
            got["block"] = wire.server_handshake(a, server_key)
        except wire.AuthenticationFailed as exc:
            got["error"] = exc
            a.close()  # as the submitter does: nothing more is sent

    t = threading.Thread(target=serve)
    t.start()
    try:
        wire.client_handshake(b, client_key, 7)
        got["client"] = "ok"
    except wire.AuthenticationFailed as exc:
        got["client"] = exc
    t.join(10)
    return got, a, b


def test_handshake_proves_both_sides_and_frames_travel():
    key = os.urandom(32)
    got, a, b = _handshake(key, key)
    assert got == {"block": 7, "client": "ok"}
    server, client = wire.Connection(a), wire.Connection(b)
    big = os.urandom(3 << 20)  # more than the socket holds: sent while the other side reads
    sender = threading.Thread(target=client.send, args=((wire.EVENTS, [1, 2], [("r", big)]),))
    sender.start()
    server.send((wire.PING,))
    assert server.recv() == (wire.EVENTS, [1, 2], [("r", big)])
    assert client.recv() == (wire.PING,)
    sender.join(10)
    client.close()
    with pytest.raises(EOFError):
        server.recv()
    server.close()


def test_wrong_secret_is_refused_before_any_frame():
    got, _, b = _handshake(os.urandom(32), os.urandom(32))
    assert isinstance(got["error"], wire.AuthenticationFailed) and "wrong secret" in str(
        got["error"]
    )
    assert isinstance(got["client"], wire.AuthenticationFailed)
    b.settimeout(2)
    assert b.recv(1024) == b""  # closed: no byte after the greeting
    b.close()


# ---------------------------------------------------------------------- blocks as processes


@pytest.fixture
def local_pilot(tmp_path):
    made = []

    def make(options=None, **pilot):
        pilot = {"max_blocks": 1, "idle_s": 30.0, **pilot}
        ex = hetfaas.Executor("slurm-pilot", launcher="process", pilot=pilot,
                              folder=tmp_path / f"pilot{len(made)}", **(options or {}))  # fmt: skip
        made.append(ex)
        return ex

    yield make
    for ex in made:
        launcher = ex.backend.launcher
        pids = [p.pid for p in launcher._procs.values()]
        ex.shutdown(wait=False, cancel_futures=True)
        assert wait_for(lambda pids=pids: not any(alive(p) for p in pids), 10), "agent left"


def test_process_blocks_serve_calls_with_resources_and_errors(local_pilot):
    ex = local_pilot()
    first = ex.submit(fx.add, 1, 2)
    assert first.result(timeout=60) == 3
    t = first.timings
    assert t.backend == "slurm-pilot" and t.cold_start_us > 0  # it waited for the block
    assert abs(t.queue_us + t.cold_start_us + t.transfer_in_us + t.compute_us
               + t.transfer_out_us - t.total_us) < 1.0  # fmt: skip
    assert [f.result(timeout=30) for f in ex.map_futures(fx.add, range(300), range(300))] == [
        2 * i for i in range(300)
    ]
    warm = ex.submit(fx.add, 2, 2)
    assert warm.result(timeout=30) == 4 and warm.timings.cold_start_us == 0
    with pytest.raises(ValueError, match="from a block"):
        ex.submit(fx.boom, "from a block").result(timeout=30)
    with pytest.raises(hetfaas.CallTimeout):
        ex.options(timeout_s=0.5).submit(fx.sleepy, 10).result(timeout=30)
    with pytest.raises(hetfaas.ResourceError, match="core"):
        ex.options(cpus=2).submit(fx.add, 1, 1)
    with pytest.raises(hetfaas.ResourceError, match="walltime"):
        ex.options(timeout_s=4000).submit(fx.add, 1, 1)
    slow = ex.submit(fx.sleepy, 30)
    assert wait_for(lambda: ex.backend.stats()["running"] == 1, 10)
    time.sleep(0.3)
    assert slow.cancel()
    with pytest.raises(hetfaas.CallCancelled):
        slow.result(timeout=5)
    assert ex.submit(fx.add, 5, 5).result(timeout=30) == 10  # the block goes on
    (block,) = ex.backend.blocks()
    (agent,) = [p.pid for p in ex.backend.launcher._procs.values()]
    assert os.sched_getaffinity(agent) == set(block["cores"])  # its threads on its cores


def test_killed_block_fails_every_call_it_was_sent(local_pilot, tmp_path, caplog):
    ex = local_pilot(max_blocks=1)
    assert [f.result(timeout=60) for f in ex.map_futures(pf.nap, [0] * 20)]  # nap is short
    (block,) = ex.backend.blocks()
    # the queued ones are sent ahead (nap is short), one begins; timeout_s: one call a message
    view = ex.options(timeout_s=60)
    futs = [view.submit(pf.nap, 1.5, str(tmp_path), f"c{i}") for i in range(3)]
    assert wait_for(lambda: (tmp_path / "c0.start").exists(), 30)

    def begun_and_ahead():
        stats = ex.backend.stats()
        return stats["running"], stats["sent_ahead"]

    assert wait_for(lambda: begun_and_ahead() == (1, 2), 10)  # all in the block, one begun
    caplog.set_level(logging.WARNING, logger="hetfaas.backends.pilot")
    os.kill(ex.backend.launcher.pid(block["job_id"]), signal.SIGKILL)
    with pytest.raises(hetfaas.WorkerDied, match="pilot block"):
        futs[0].result(timeout=30)
    # SIGKILL: the block could not say which of the calls sent ahead began, so none is run
    # again (nap is not idempotent: at most once)
    for f in futs[1:]:
        with pytest.raises(hetfaas.WorkerDied, match="may have begun"):
            f.result(timeout=30)
    assert [len((tmp_path / f"c{i}.start").read_text().split()) for i in (0,)] == [1]
    assert not (tmp_path / "c1.start").exists() and not (tmp_path / "c2.start").exists()
    assert any("3 call(s) failed, 0 requeued" in r.message for r in caplog.records)
    assert ex.submit(pf.nap, 0).result(timeout=60)  # a new block serves again


def test_blocks_that_never_join_fail_the_queued_calls(local_pilot):
    ex = local_pilot({"python": "/bin/sh"})  # the agent's command line makes sh refuse
    fut = ex.submit(fx.add, 1, 1)
    with pytest.raises(hetfaas.JobFailed, match="keep ending before they join") as info:
        fut.result(timeout=60)
    assert "hetfaas.backends.pilot.agent" in info.value.stderr_tail  # from the blocks' log
    assert ex.backend.stats()["queued"] == 0


def test_min_blocks_are_held_warm_without_calls(local_pilot):
    ex = local_pilot(min_blocks=1, max_blocks=2, idle_s=0.2, tick_s=0.1)
    assert wait_for(lambda: [b["state"] for b in ex.backend.blocks()] == ["running"], 30)
    time.sleep(0.6)  # idle past idle_s: min_blocks keeps it
    (b,) = ex.backend.blocks()
    got = ex.submit(pf.nap, 0)
    assert got.result(timeout=30)["pid"] and got.engine_id == b["job_id"]
    assert got.timings.cold_start_us < 0.5 * b["ready_s"] * 1e6  # it found the block warm


def test_a_short_call_comes_back_in_one_frame_and_a_long_ones_start_is_heard(local_pilot):
    ex = local_pilot(min_blocks=1)
    assert ex.submit(fx.add, 0, 0).result(timeout=60) == 0
    (before,) = ex.backend.blocks()
    for i in range(100):
        assert ex.submit(fx.add, i, 1).result(timeout=30) == i + 1
    (after,) = ex.backend.blocks()
    # the block reports a call's start with its reply when the call ends within its report
    # interval (a frame for each would be 200); a heartbeat or a late start may add a few
    assert after["frames"] - before["frames"] <= 120
    slow = ex.submit(pf.nap, 3)
    t0 = time.monotonic()
    assert wait_for(lambda: ex.backend.stats()["running"] == 1, 10)
    assert time.monotonic() - t0 < 1.0  # heard within the report interval, not at its end
    assert slow.result(timeout=30)["pid"]
