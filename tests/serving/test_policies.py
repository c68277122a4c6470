"""Policies as pure functions: hand-built states, exact decisions."""

import pytest

from hetfaas.exceptions import ConfigurationError
from hetfaas.serving.policies import (
    DISPATCH,
    POLICIES,
    Policy,
    PolicyParams,
    dispatch_rule,
    get_policy,
    lalb,
    lalb_coldest,
    lb,
    o3,
)
from hetfaas.serving.state import SchedulerState

P = PolicyParams(threshold=2, starvation_bound=2, window=8)


def make_state(n_devices=3, capacity=100, sizes=(40, 40, 40, 40), eviction="lru"):
    k = len(sizes)
    return SchedulerState([capacity] * n_devices, list(sizes), [1.0] * k, [0.1] * k, eviction)


def resident(state, device, *models):
    """Make models resident on a device the way a run would: queue, start, finish."""
    for m in models:
        r = 10_000 + 100 * device + m + len(state.req_model)
        state.enqueue(device, r, m)
        state.start(device, len(state.queues[device]) - 1)
        state.finish(device)


def test_lb_takes_the_least_loaded_and_rotates_among_equals():
    s = make_state()
    s.enqueue(0, 1, 0)
    assert lb(s, 0, P) == 1  # device 0 has one request
    s.enqueue(1, 2, 0)
    assert lb(s, 0, P) == 2
    s.enqueue(2, 3, 0)
    # all at load 1: the one that received a request longest ago
    assert lb(s, 0, P) == 0


def test_lb_ignores_the_cache():
    s = make_state()
    resident(s, 2, 1)
    s.enqueue(2, 5, 3)
    assert lb(s, 1, P) in (0, 1)


def test_lalb_prefers_a_holder_until_it_is_overloaded():
    s = make_state()
    resident(s, 2, 1)
    assert lalb(s, 1, P) == 2  # resident on 2, nobody loaded
    s.enqueue(2, 1, 1)
    assert lalb(s, 1, P) == 2  # load 1 < 0 + threshold 2
    s.enqueue(2, 2, 1)
    assert lalb(s, 1, P) == 0  # load 2 is threshold past the least loaded (0): overloaded
    assert lalb(s, 0, P) == 0  # no holder: least loaded


def test_lalb_counts_a_queued_request_as_holding():
    s = make_state()
    s.enqueue(1, 1, 3)  # model 3 not resident anywhere, but coming to device 1
    assert lalb(s, 3, P) == 1


def test_lalb_coldest_picks_the_device_whose_victims_are_coldest():
    s = make_state(sizes=(50, 50, 50, 50, 50, 50, 60))
    resident(s, 0, 0, 1)  # device 0 full with models 0, 1
    resident(s, 1, 2, 3)
    resident(s, 2, 4, 5)
    resident(s, 0, 0, 1)  # models of device 0 used again: now the hottest
    resident(s, 2, 4)  # device 2: 5 is now older than 4, but 2 and 3 are the coldest
    # model 6 (60 bytes) needs one victim everywhere: device 1's model 2 is the coldest
    assert lalb_coldest(s, 6, P) == 1


def test_lalb_coldest_prefers_a_device_with_room():
    s = make_state(sizes=(50, 50, 50, 50, 50, 50))
    resident(s, 2, 4)  # device 2: oldest use, but 50 bytes free
    resident(s, 0, 0, 1)
    resident(s, 1, 2, 3)
    assert lalb_coldest(s, 5, P) == 2  # nothing to evict there
    assert lalb_coldest(s, 0, P) == 0  # a holder still wins


def test_lalb_coldest_stays_near_the_least_load():
    s = make_state(sizes=(50, 50, 50, 50, 50, 50, 50))
    resident(s, 1, 2, 3)  # device 1 has the coldest models...
    resident(s, 0, 0, 1)
    resident(s, 2, 4, 5)
    s.enqueue(1, 1, 2)
    s.enqueue(1, 2, 2)  # ...but is two requests above the least load
    assert lalb_coldest(s, 6, P) == 0


def test_o3_runs_the_first_hit_and_respects_the_window():
    s = make_state(n_devices=1, capacity=100, sizes=(60, 60, 60))
    resident(s, 0, 2)
    for r, m in enumerate([0, 1, 2, 2]):
        s.enqueue(0, r, m)
    assert o3(s, 0, P) == 2  # requests 0, 1 would miss; request 2 hits
    assert o3(s, 0, PolicyParams(window=2)) == 0  # the hit is past the window


def test_o3_never_overtakes_a_request_past_the_starvation_bound():
    s = make_state(n_devices=1, capacity=100, sizes=(60, 60))
    resident(s, 0, 1)
    s.enqueue(0, 0, 0)  # a miss at the head
    r = 1
    for round_ in range(5):
        s.enqueue(0, r, 1)
        r += 1
        i = o3(s, 0, P)
        if round_ < P.starvation_bound:
            assert i == 1  # the hit overtakes the miss
        else:
            assert i == 0  # the miss has been overtaken twice: it runs
            break
        s.start(0, i)
        s.finish(0)
    assert s.overtaken[0] == P.starvation_bound
    assert s.max_overtaken == P.starvation_bound


def test_registry_one_function_adds_a_rule():
    @dispatch_rule("first-device")
    def first(state, model, params):
        return 0

    try:
        pol = Policy("first", "first-device", "o3")
        s = make_state()
        s.enqueue(0, 1, 0)
        assert DISPATCH[pol.dispatch](s, 0, P) == 0
    finally:
        del DISPATCH["first-device"]


def test_unknown_names_list_the_known_ones():
    with pytest.raises(ConfigurationError, match="known policies: lb, lalb"):
        get_policy("nope")
    with pytest.raises(ConfigurationError, match="unknown dispatch rule"):
        Policy("x", "nope")
    with pytest.raises(ConfigurationError, match="unknown pick rule"):
        Policy("x", "lb", "nope")
    with pytest.raises(ConfigurationError, match="unknown eviction"):
        Policy("x", "lb", "fifo", "mru")
    with pytest.raises(ConfigurationError, match="threshold"):
        PolicyParams(threshold=0)
    assert set(POLICIES) >= {"lb", "lalb", "lalb+o3", "ours"}


def test_o3_steal_takes_a_hit_queued_on_the_busiest_other_device():
    from hetfaas.serving.policies import o3_steal

    s = make_state(n_devices=3, capacity=100, sizes=(40, 40, 40))
    resident(s, 0, 0, 1)
    resident(s, 1, 1)
    resident(s, 2, 2)
    assert o3_steal(s, 0, P) is None  # nothing queued anywhere
    for r, (d, m) in enumerate([(1, 2), (1, 1), (2, 2), (2, 2), (2, 1), (2, 0)]):
        s.enqueue(d, r, m)
    assert o3_steal(s, 0, P) is None  # devices 1 and 2 are idle: they start their own queues
    s.start(1, 0)
    s.start(2, 0)
    # device 0 holds 0 and 1; queued behind running requests: model 1 on 1 (load 2) and on
    # 2 (load 4), model 0 on 2
    assert o3_steal(s, 0, P) == (2, 1)  # busiest device 2, its first request for 0 or 1
    s.move(2, 1, 0)
    s.check_invariants()
    assert s.queues[0] == [4] and s.load[2] == 3
