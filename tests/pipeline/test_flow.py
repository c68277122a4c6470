"""The flow's decisions as pure functions of state: no processes, no stores."""

from __future__ import annotations

import random

import pytest

from hetfaas import Resources
from hetfaas.pipeline import SOURCE, Pipeline
from hetfaas.pipeline import flow as fl


def f(*args):  # never called: the flow only sees names
    return args


def chain(bound=2, **stage_kw):
    p = Pipeline("t", max_in_flight=bound)
    p.stage(f, name="a", **stage_kw)
    p.stage(f, name="b")
    return p


def pull_all(flow, values):
    """Pull as many source items as the flow takes; returns those left."""
    values = list(values)
    for _ in range(fl.items_to_pull(flow)):
        if not values:
            flow.source_exhausted()
            break
        flow.pull(values.pop(0))
    return values


def test_source_is_pulled_only_while_its_edge_has_room():
    flow = fl.Flow(chain(bound=2))
    assert fl.items_to_pull(flow) == 2
    flow.pull("x0")
    flow.pull("x1")
    assert fl.items_to_pull(flow) == 0
    assert flow.stages["a"].ready == [(0,), (1,)]
    # starting a call does not free the source edge: the item is in flight until a finishes
    inputs, state = flow.start("a", (0,))
    assert inputs == ["x0"] and state is None
    assert fl.items_to_pull(flow) == 0
    flow.complete("a", (0,), ["a0"])
    assert fl.items_to_pull(flow) == 1


def test_a_producer_stops_when_its_consumer_edge_is_full():
    flow = fl.Flow(chain(bound=2))
    pull_all(flow, ["x0", "x1", "x2", "x3"])
    plan = fl.plan_starts(flow)
    # a's out edge has bound 2: two running calls reserve it whole; b has nothing ready yet
    assert plan == [("a", (0,)), ("a", (1,))]
    for s, k in plan:
        flow.start(s, k)
    assert fl.plan_starts(flow) == []
    assert flow.edges[("a", "b")].in_flight == 2
    flow.complete("a", (0,), ["a0"])
    flow.complete("a", (1,), ["a1"])
    pull_all(flow, ["x2", "x3"])
    # b is downstream: it is served first, and a may not start (a->b holds 2 of 2)
    assert fl.plan_starts(flow) == [("b", (0,)), ("b", (1,))]
    assert fl.condition(flow, "a") == fl.BACKPRESSURE
    assert fl.condition(flow, "b") == fl.QUEUED


def test_in_flight_never_exceeds_the_bound_in_random_schedules():
    """Random completion orders, fan-out counts and failures: every edge stays within its
    bound, every item is freed exactly once after its last consumer, and the run ends."""
    for seed in range(40):
        rng = random.Random(seed)
        p = Pipeline("r", max_in_flight=rng.choice([3, 4, 6]))
        p.stage(f, name="a", concurrency=(0, rng.choice([1, 2, 3])))
        p.stage(f, name="shard", fanout=3)
        p.stage(f, name="b", inputs=["shard"], concurrency=(1, 2))
        p.stage(f, name="c", inputs=["shard"])
        p.stage(f, name="join", inputs=["b", "c"])
        flow = fl.Flow(p, fl.Budget(slots=rng.choice([1, 2, 4, None])))
        source = list(range(rng.randint(1, 12)))
        running: list[tuple[str, tuple]] = []
        alive: dict[str, int] = {}  # ref -> consumers left (or -1: an output)
        freed: list[str] = []
        n = 0
        for _ in range(10_000):
            source = pull_all(flow, source)
            if not source and not flow.source_done:
                flow.source_exhausted()
            for s, k in fl.plan_starts(flow):
                flow.start(s, k)
                running.append((s, k))
            for e in flow.edges.values():
                assert e.in_flight <= e.bound, (seed, e)
            if flow.finished:
                break
            assert running, (seed, fl.describe(flow))
            s, k = running.pop(rng.randrange(len(running)))
            if rng.random() < 0.1:
                out = flow.fail(s, k, ValueError("x"))
            else:
                k_out = rng.randint(0, 3) if s == "shard" else 1
                refs = []
                for _ in range(k_out):
                    ref = f"r{n}"
                    n += 1
                    alive[ref] = len(flow.stages[s].consumers) or -1
                    refs.append(ref)
                out = flow.complete(s, k, refs)
            for ref in out:
                assert ref not in freed, "freed twice"
                freed.append(ref)
        assert flow.finished, (seed, fl.describe(flow))
        outputs = {o.ref for o in flow.outputs}
        # every stored item is freed once, or is an output of the sink
        assert set(freed) | outputs == set(alive)
        assert not set(freed) & outputs
        assert all(e.stored == 0 and e.reserved == 0 for e in flow.edges.values())


def test_broadcast_item_is_freed_after_its_last_consumer():
    p = Pipeline("b")
    p.stage(f, name="pre")
    p.stage(f, name="m1", inputs=["pre"])
    p.stage(f, name="m2", inputs=["pre"])
    flow = fl.Flow(p)
    flow.pull("x")
    flow.start("pre", (0,))
    assert flow.complete("pre", (0,), ["item"]) == []
    assert flow.stages["m1"].ready == [(0,)] and flow.stages["m2"].ready == [(0,)]
    flow.start("m1", (0,))
    flow.start("m2", (0,))
    assert flow.complete("m1", (0,), ["o1"]) == []  # m2 still reads it
    assert flow.complete("m2", (0,), ["o2"]) == ["item"]
    assert flow.stages["pre"].started == 1


def test_a_failure_skips_its_descendants_and_frees_the_join_partner():
    p = Pipeline("d")
    p.stage(f, name="a")
    p.stage(f, name="b", inputs=[SOURCE])
    p.stage(f, name="c", inputs=["a"])
    p.stage(f, name="j", inputs=["c", "b"])
    p.stage(f, name="after", inputs=["j"])
    flow = fl.Flow(p)
    flow.pull("x")
    flow.start("b", (0,))
    assert flow.complete("b", (0,), ["b0"]) == []  # waits in j for c's item
    flow.start("a", (0,))
    freed = flow.fail("a", (0,), ValueError("bad"))
    assert freed == ["b0"]
    assert [(s.stage, s.key, s.failed_stage) for s in flow.skipped] == [
        ("c", "0", "a"), ("j", "0", "a"), ("after", "0", "a"),
    ]  # fmt: skip
    assert [(x.stage, x.key) for x in flow.failures] == [("a", "0")]
    flow.source_exhausted()
    assert flow.finished
    assert all(e.stored == 0 for e in flow.edges.values())


def test_an_item_arriving_for_a_dead_key_is_dropped():
    p = Pipeline("d")
    p.stage(f, name="a")
    p.stage(f, name="b", inputs=[SOURCE])
    p.stage(f, name="j", inputs=["a", "b"])
    flow = fl.Flow(p)
    flow.pull("x")
    flow.start("a", (0,))
    flow.start("b", (0,))
    flow.fail("a", (0,), ValueError("bad"))
    assert flow.complete("b", (0,), ["b0"]) == ["b0"]
    assert flow.edges[("b", "j")].stored == 0


def test_unmatched_join_fails_when_its_inputs_end():
    p = Pipeline("u")
    p.stage(f, name="x", fanout=3)
    p.stage(f, name="y", inputs=[SOURCE], fanout=3)
    p.stage(f, name="j", inputs=["x", "y"])
    flow = fl.Flow(p)
    flow.pull("s")
    flow.source_exhausted()
    flow.start("x", (0,))
    flow.start("y", (0,))
    flow.complete("x", (0,), ["x0", "x1", "x2"])
    freed = flow.complete("y", (0,), ["y0", "y1"])
    assert freed == ["x2"]  # y's last call ended: (0, 2) can never match
    assert [(x.stage, x.key) for x in flow.failures] == [("j", "0.2")]
    assert "never from y" in str(flow.failures[0].error)


def test_budget_min_first_then_downstream_first_within_cores_and_gpus():
    p = Pipeline("g", max_in_flight=8)
    p.stage(f, name="pre", concurrency=(1, None), resources=Resources(cpus=1))
    p.stage(f, name="gpu", concurrency=(0, 2), resources=Resources(cpus=1, gpus=1))
    flow = fl.Flow(p, fl.Budget(cpus=3, gpus=1, slots=8))
    pull_all(flow, range(8))
    starts = fl.plan_starts(flow)
    assert starts == [("pre", (0,)), ("pre", (1,)), ("pre", (2,))]  # 3 cores
    for s, k in starts:
        flow.start(s, k)
    for i in range(3):
        flow.complete("pre", (i,), [f"p{i}"])
    pull_all(flow, range(8))
    # pre is below its min (0 running): it gets a core first; gpu (downstream) gets one call:
    # one GPU; the last core goes to pre
    assert fl.plan_starts(flow) == [("pre", (3,)), ("gpu", (0,)), ("pre", (4,))]


def test_stateful_stage_carries_its_state_ref():
    p = Pipeline("s")
    p.stage(f, name="acc", state=0.0)
    flow = fl.Flow(p)
    pull_all(flow, ["x0", "x1"])
    assert fl.plan_starts(flow) == [("acc", (0,))]  # one call at a time
    _, state = flow.start("acc", (0,))
    assert state is None
    assert flow.complete("acc", (0,), ["o0"], state="s0") == []
    _, state = flow.start("acc", (1,))
    assert state == "s0"
    assert flow.complete("acc", (1,), ["o1"], state="s1") == ["s0"]


def test_stage_clock_splits_time_by_condition():
    flow = fl.Flow(chain(bound=1))
    clock = fl.StageClock(flow, 0)
    flow.pull("x")
    flow.start("a", (0,))
    clock.observe(flow, 0)
    clock.observe(flow, 2_000_000_000)  # a worked 2 s; b was blocked
    flow.complete("a", (0,), ["a0"])
    flow.source_exhausted()
    assert fl.condition(flow, "a") == fl.DONE
    flow.start("b", (0,))
    clock.observe(flow, 2_000_000_000)  # as the driver does: after the events and the starts
    flow.complete("b", (0,), ["b0"])
    clock.observe(flow, 3_000_000_000)
    assert fl.condition(flow, "b") == fl.DONE
    assert clock.seconds["a"]["working"] == pytest.approx(2.0)
    assert clock.seconds["b"]["blocked"] == pytest.approx(2.0)
    assert clock.seconds["b"]["working"] == pytest.approx(1.0)
    assert clock.lifetime_s("a") == pytest.approx(2.0)
    assert clock.lifetime_s("b") == pytest.approx(3.0)


def test_describe_names_each_stage():
    flow = fl.Flow(chain(bound=1))
    flow.pull("x")
    text = fl.describe(flow)
    assert "a: queued, 1 ready" in text and "b: blocked" in text
