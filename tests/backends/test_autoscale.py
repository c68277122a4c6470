"""The local pool's autoscaling policy on synthetic queues (no processes, no clock)."""

import itertools

import pytest

import hetfaas
from hetfaas.backends.local.autoscale import Autoscaler, ScalePolicy


def run(policy: ScalePolicy, trace: list[tuple[float, float]], step: float = 1.0) -> list[int]:
    """Feed ``(duration_s, concurrency)`` segments, one observation and one decision per
    ``step``; the workers ready are the previous decision's (instant starts)."""
    scaler, ready, out, t = Autoscaler(policy), policy.min_workers, [], 0.0
    for duration, conc in trace:
        end = t + duration
        while t < end - 1e-9:
            scaler.observe(t, conc)
            ready = scaler.decide(t, ready).workers
            out.append(ready)
            t += step
    return out


def test_steady_load_gets_its_concurrency_over_the_target():
    p = ScalePolicy(min_workers=0, max_workers=16, target=2.0, utilization=1.0)
    workers = run(p, [(120, 6.0)])
    assert workers[-1] == 3  # 6 calls at once, 2 per worker


def test_target_utilisation_keeps_headroom():
    # one call running all the time: a single worker would be busy 100% (every arrival
    # queues); at the default 70% target the pool keeps a second one
    assert run(ScalePolicy(max_workers=8), [(120, 1.0)])[-1] == 2
    assert run(ScalePolicy(max_workers=8, utilization=1.0), [(120, 1.0)])[-1] == 1
    assert run(ScalePolicy(max_workers=16), [(120, 7.0)])[-1] == 10  # ceil(7 / 0.7)


def test_a_burst_panics_and_is_met_within_seconds():
    p = ScalePolicy(min_workers=1, max_workers=32, utilization=1.0)
    workers = run(p, [(60, 1.0), (10, 20.0)])
    burst = workers[60:]
    assert max(burst[:3]) >= 6  # the panic window sees it at once, the stable one would not
    assert burst[-1] == 20


def test_no_scale_down_while_panicking_and_bounded_steps_after():
    p = ScalePolicy(min_workers=1, max_workers=32, utilization=1.0)
    workers = run(p, [(30, 1.0), (10, 16.0), (20, 1.0), (120, 1.0)])
    burst_end = 40
    lull = workers[burst_end : burst_end + 20]
    assert min(lull) == max(lull) == 16  # a lull inside a stable window of the burst keeps all
    after = workers[burst_end + 20 :]
    drops = [a / b for a, b in itertools.pairwise(after) if b < a]
    assert drops and max(drops) <= 2.0  # at most halved per evaluation
    assert workers[-1] == 1


def test_scale_to_zero_only_after_the_idle_grace():
    p = ScalePolicy(min_workers=0, max_workers=4, stable_window_s=10, panic_window_s=2,
                    scale_to_zero_s=30)  # fmt: skip
    workers = run(p, [(5, 1.0), (60, 0.0)])
    idle = workers[5:]
    assert all(w >= 1 for w in idle[:20])  # busy less than 30 s ago: one stays warm
    assert idle[-1] == 0
    first_zero = idle.index(0)
    assert 25 <= first_zero <= 31  # idle since t=4 (the last busy observation)


def test_bounds_and_a_pool_that_never_saw_a_call():
    assert run(ScalePolicy(min_workers=0, max_workers=4), [(30, 0.0)]) == [0] * 30
    assert max(run(ScalePolicy(min_workers=2, max_workers=3), [(30, 50.0)])) == 3
    assert min(run(ScalePolicy(min_workers=2, max_workers=3), [(90, 0.0)])) == 2


def test_bad_policies_and_observations_are_refused():
    with pytest.raises(hetfaas.ConfigurationError, match="min_workers <= max_workers"):
        ScalePolicy(min_workers=3, max_workers=2)
    with pytest.raises(hetfaas.ConfigurationError, match="target"):
        ScalePolicy(max_workers=2, target=0)
    with pytest.raises(hetfaas.ConfigurationError, match="panic_window_s"):
        ScalePolicy(max_workers=2, panic_window_s=90)
    with pytest.raises(hetfaas.ConfigurationError, match="utilization"):
        ScalePolicy(max_workers=2, utilization=1.5)
    with pytest.raises(hetfaas.ConfigurationError, match="tick_s"):
        ScalePolicy(max_workers=2, tick_s=10)
    scaler = Autoscaler(ScalePolicy(max_workers=2))
    scaler.observe(5.0, 1)
    with pytest.raises(ValueError, match="time order"):
        scaler.observe(4.0, 1)
    with pytest.raises(ValueError, match=">= 0"):
        scaler.observe(6.0, -1)
