"""The local pool's workers over their life with autoscaling on: out under load, in when idle,
to zero, never under a running call; min_workers kept warm (real processes)."""

import time

import pytest

import hetfaas
from hetfaas.backends.local.autoscale import ScalePolicy

from .. import pool_funcs as fx
from ..conftest import CORES

FAST = {"stable_window_s": 0.6, "panic_window_s": 0.1, "scale_to_zero_s": 0.3, "tick_s": 0.02}


def _wait_for(check, timeout=20.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return True
        time.sleep(0.02)
    return False


def _live(ex):
    s = ex.backend.stats()
    return s["workers_starting"] + s["workers_idle"] + s["workers_busy"]


@pytest.mark.skipif(CORES < 2, reason="needs two cores")
def test_scales_out_under_load_then_to_zero_and_a_cold_start_shows():
    with hetfaas.Executor(min_workers=0, max_workers=2, autoscale=FAST) as ex:
        assert _live(ex) == 0  # min_workers=0: nothing runs before the first call
        futs = [ex.submit(fx.pid_after, 0.05) for _ in range(20)]
        pids = {f.result(timeout=60) for f in futs}
        assert len(pids) == 2  # the queue brought a second worker
        assert any(f.timings.cold_start_us > 0 for f in futs)
        assert _wait_for(lambda: _live(ex) == 0), ex.backend.stats()
        assert ex.backend.stats()["workers_desired"] == 0
        again = ex.submit(fx.pid_after)
        assert again.result(timeout=60) not in pids  # a new worker: scaled to zero
        assert again.timings.cold_start_us > 1000  # its start is in the call's timings


def test_min_workers_stay_warm_through_idle_time():
    with hetfaas.Executor(min_workers=1, max_workers=2, autoscale=FAST) as ex:
        assert _wait_for(lambda: ex.backend.stats()["workers_idle"] == 1)
        (pid,) = ex.backend.worker_pids()
        time.sleep(1.5)  # past the stable window and the scale-to-zero grace
        assert ex.backend.worker_pids() == [pid]
        assert ex.submit(fx.pid_after).result(timeout=60) == pid


@pytest.mark.skipif(CORES < 2, reason="needs two cores")
def test_scaling_in_never_stops_a_worker_that_runs_a_call():
    # utilization 1: one call running wants one worker (at 0.7 it would keep a second)
    policy = {**FAST, "utilization": 1.0}
    with hetfaas.Executor(min_workers=0, max_workers=2, autoscale=policy) as ex:
        long = ex.submit(fx.pid_after, 2.5)
        short = [ex.submit(fx.pid_after, 0.02) for _ in range(10)]
        for f in short:
            f.result(timeout=60)
        assert _wait_for(lambda: _live(ex) == 1, timeout=2.0)  # the idle one retired ...
        assert long.running()  # ... while the other still runs its call
        assert long.result(timeout=60) not in {f.result() for f in short}
        assert long.exception() is None


@pytest.mark.skipif(CORES < 2, reason="needs two cores")
def test_the_policy_starts_workers_ahead_of_the_calls():
    # one call running, utilisation target 0.5: the policy wants a second worker, which the
    # pool starts idle (no call asked for it), ready for the next arrival
    policy = {**FAST, "utilization": 0.5}
    with hetfaas.Executor(min_workers=0, max_workers=2, autoscale=policy) as ex:
        long = ex.submit(fx.pid_after, 1.5)
        assert _wait_for(lambda: ex.backend.stats()["workers_idle"] == 1, timeout=1.2)
        assert long.running()
        assert len(ex.backend.worker_pids()) == 2
        assert long.result(timeout=60) in ex.backend.worker_pids()


def test_autoscale_options_are_checked():
    with pytest.raises(hetfaas.ConfigurationError, match="min_workers <= max_workers"):
        hetfaas.Executor(min_workers=3, max_workers=2)
    with pytest.raises(hetfaas.ConfigurationError, match="given twice"):
        hetfaas.Executor(max_workers=2, autoscale={"max_workers": 4})
    with pytest.raises(hetfaas.ConfigurationError, match="ScalePolicy or a dict"):
        hetfaas.Executor(autoscale=5)
    with pytest.raises(hetfaas.ConfigurationError, match="autoscale"):
        hetfaas.Executor(autoscale={"windw": 3})
    policy = ScalePolicy(min_workers=0, max_workers=1, **FAST)
    with hetfaas.Executor(autoscale=policy) as ex:
        assert ex.capacity.max_workers == 1  # the policy's bound is the pool's
        assert ex.submit(fx.add, 1, 2).result(timeout=60) == 3
