"""The simulator drives the real Scheduler: accounting after every event, faults, bounds."""

import math

import pytest

from hetfaas.exceptions import (
    ConfigurationError,
    DeviceFailed,
    ModelTooLarge,
    UnknownModel,
)
from hetfaas.serving.catalog import MB, Catalog, ModelProfile, default_catalog
from hetfaas.serving.policies import POLICIES, PolicyParams
from hetfaas.serving.scheduler import Scheduler
from hetfaas.serving.simulator import GIB, Cluster, simulate
from hetfaas.serving.workload import make_trace


@pytest.mark.parametrize("policy", sorted(POLICIES))
def test_invariants_after_every_event_of_a_long_random_run_with_faults(policy):
    cat = default_catalog(30)
    trace = make_trace(3000, 30, 100.0, arrival="bursty", seed=3)
    params = PolicyParams(threshold=4, starvation_bound=3, window=16)
    faults = [(trace.arrivals[1000], 1), (trace.arrivals[2000], 4)]
    res = simulate(trace, cat, Cluster(3, 2, GIB), policy, params, faults=faults, check=True)
    assert all(not math.isnan(x) and x > 0 for x in res.latency)  # every request finished
    assert res.retried > 0  # the failed devices had work, and it ran elsewhere
    assert res.max_overtaken <= params.starvation_bound
    assert 1 not in res.device[1100:] and 4 not in res.device[2100:]
    assert res.events >= 2 * len(trace)


def test_locality_cuts_misses_and_latency():
    cat = default_catalog(35)
    trace = make_trace(5000, 35, 30.0, seed=1)
    out = {p: simulate(trace, cat, Cluster(2, 2, 2 * GIB), p).summary() for p in POLICIES}
    assert out["lalb"]["miss_ratio"] < out["lb"]["miss_ratio"] / 3
    assert out["lalb+o3"]["avg_latency_s"] < out["lb"]["avg_latency_s"] / 3
    assert out["ours"]["miss_ratio"] <= out["lalb+o3"]["miss_ratio"]


def test_same_trace_same_result():
    cat = default_catalog(10)
    trace = make_trace(500, 10, 50.0, seed=5)
    a = simulate(trace, cat, Cluster(1, 2, GIB), "ours")
    b = simulate(trace, cat, Cluster(1, 2, GIB), "ours")
    assert a.latency == b.latency and a.hit == b.hit


def test_bad_requests_raise_the_specific_error():
    sched = Scheduler([100, 200], [50, 300], [1.0, 1.0], [0.1, 0.1], "lalb")
    with pytest.raises(UnknownModel):
        sched.submit(0, 7)
    with pytest.raises(ModelTooLarge, match="largest working device holds 200"):
        sched.submit(0, 1)
    assert sched.submit(0, 0) in (0, 1)
    sched.fail(0)
    sched.fail(1)
    with pytest.raises(DeviceFailed, match="no working device"):
        sched.submit(1, 0)


def test_a_model_only_the_big_device_can_hold_goes_there():
    sched = Scheduler([100, 100, 400], [50, 300], [1.0, 1.0], [0.1, 0.1], "lb")
    for r in range(5):
        assert sched.submit(r, 1) == 2
    sched.state.check_invariants()


def test_fail_returns_the_running_request_first():
    sched = Scheduler([100], [50], [1.0], [0.1], "lb")
    sched.submit(1, 0)
    sched.submit(2, 0)
    assert sched.next(0).request == 1
    assert sched.fail(0) == [(1, 0), (2, 0)]
    sched.state.check_invariants()


def test_bad_configuration():
    with pytest.raises(ConfigurationError):
        Cluster(0, 1, 1)
    with pytest.raises(ConfigurationError, match="working set"):
        default_catalog(0)
    with pytest.raises(ConfigurationError, match="unknown popularity"):
        make_trace(10, 5, 1.0, popularity="pareto")
    with pytest.raises(ConfigurationError, match="rate"):
        make_trace(10, 5, 0.0)
    with pytest.raises(ConfigurationError, match="catalog has 2"):
        cat = Catalog([ModelProfile("a", MB, 0.1, 0.01), ModelProfile("b", MB, 0.1, 0.01)])
        simulate(make_trace(10, 5, 1.0), cat, Cluster())
    with pytest.raises(UnknownModel, match="unknown model 'x'"):
        default_catalog(3).index("x")


def test_profile_measures_the_families_here():
    pytest.importorskip("torch")
    from hetfaas.serving.catalog import FAMILIES, profile

    fams = profile(FAMILIES[-1:], scale=0.05, device="cpu")
    assert fams[0].name == "mobilenet" and fams[0].load_s > 0 and fams[0].infer_s > 0
    assert default_catalog(2, fams).models[0].load_s == fams[0].load_s
    with pytest.raises(ConfigurationError, match="scale"):
        profile(FAMILIES[:1], scale=2.0)
