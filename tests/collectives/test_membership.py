"""The membership decision of elastic groups, on synthetic states: no process, no store."""

from __future__ import annotations

import pytest

import hetfaas
from hetfaas.collectives import GroupSpec
from hetfaas.collectives.membership import (
    Candidate,
    Ended,
    Fail,
    Form,
    Generation,
    MembershipPolicy,
    View,
    Wait,
    decide,
    wants_to_grow,
)

POLICY = MembershipPolicy(min_size=2, max_size=4, settle_s=1.0, form_timeout_s=30.0)


def cand(member, target, since=100.0, version=-1, first_since=None, rank=-1):
    return Candidate(member, target, since, since if first_since is None else first_since,
                     version, rank)  # fmt: skip


def gen(number, *members, version=5):
    return Generation(number, tuple(members), members[0], version, 50.0)


def view(generation, waiting, alive, now=100.0, **kw):
    return View(generation, tuple(waiting), frozenset(alive), now, **kw)


# ----------------------------------------------------------------- start


def test_start_waits_for_the_expected_founders_then_forms_in_arrival_order():
    waiting = [cand("b", 0, since=100.2), cand("a", 0, since=100.0)]
    d = decide(view(None, waiting, {"a", "b", "c"}, now=100.3, expected=3), POLICY)
    assert isinstance(d, Wait) and "2 of 3" in d.reason
    waiting.append(cand("c", 0, since=100.4))
    d = decide(view(None, waiting, {"a", "b", "c"}, now=100.5, expected=3), POLICY)
    assert isinstance(d, Form)
    g = d.generation
    assert (g.number, g.members, g.cause, g.source, g.version) == (0, ("a", "b", "c"), "start",
                                                                    None, -1)  # fmt: skip
    assert g.added == ("a", "b", "c") and g.lost == ()


def test_start_with_min_size_once_settled_and_never_below_it():
    two = [cand("a", 0, since=100.0), cand("b", 0, since=100.1)]
    assert isinstance(decide(view(None, two, {"a", "b"}, now=100.5, expected=3), POLICY), Wait)
    d = decide(view(None, two, {"a", "b"}, now=101.01, expected=3), POLICY)
    assert isinstance(d, Form) and d.generation.members == ("a", "b")
    one = two[:1]
    assert isinstance(decide(view(None, one, {"a"}, now=110.0, expected=3), POLICY), Wait)
    d = decide(view(None, one, {"a"}, now=130.0, expected=3), POLICY)
    assert isinstance(d, Fail) and "min_size=2" in d.reason


def test_start_is_cut_at_max_size_and_ignores_the_dead_and_other_targets():
    waiting = [cand(m, 0, since=100.0 + i / 10) for i, m in enumerate("abcdef")]
    waiting.append(cand("z", 3))  # a stale registration for another generation
    alive = set("abcdefz") - {"c"}
    d = decide(view(None, waiting, alive, now=100.6, expected=6), POLICY)
    assert isinstance(d, Form) and d.generation.members == ("a", "b", "d", "e")


def test_unknown_founder_count_forms_after_settle():
    waiting = [cand("a", 0), cand("b", 0, since=100.1)]
    assert isinstance(decide(view(None, waiting, {"a", "b"}, now=100.5), POLICY), Wait)
    assert isinstance(decide(view(None, waiting, {"a", "b"}, now=101.2), POLICY), Form)


# ----------------------------------------------------------------- running and failures


def test_joiners_wait_while_the_generation_runs():
    g = gen(3, "a", "b", "c")
    d = decide(view(g, [cand("j", 4)], {"a", "b", "c", "j"}, now=500.0), POLICY)
    assert isinstance(d, Wait) and "running" in d.reason


def test_failure_forms_at_once_when_every_live_member_registered():
    g = gen(3, "a", "b", "c")
    waiting = [cand("c", 4, version=7, rank=2), cand("a", 4, version=7, rank=0)]
    d = decide(view(g, waiting, {"a", "c"}, now=100.01), POLICY)  # b is gone
    assert isinstance(d, Form)
    new = d.generation
    assert new.members == ("a", "c")  # old order kept: c moves from rank 2 to rank 1
    assert (new.number, new.cause, new.lost, new.added) == (4, "failure", ("b",), ())
    assert (new.source, new.version) == ("a", 7)


def test_failure_rolls_to_the_newest_commit_of_any_survivor():
    g = gen(1, "a", "b", "c")
    waiting = [cand("a", 2, version=4), cand("c", 2, version=5), cand("b", 2, version=5)]
    d = decide(view(g, waiting, {"a", "b", "c"}), POLICY)
    assert isinstance(d, Form)
    assert d.generation.source == "b" and d.generation.version == 5  # first of the newest


def test_a_live_member_that_has_not_noticed_is_waited_for_up_to_settle_s():
    g = gen(1, "a", "b", "c")
    waiting = [cand("a", 2, since=100.0), cand("b", 2, since=100.2)]
    d = decide(view(g, waiting, {"a", "b", "c"}, now=100.5), POLICY)
    assert isinstance(d, Wait) and "settle" in d.reason
    d = decide(view(g, waiting, {"a", "b", "c"}, now=101.0), POLICY)
    assert isinstance(d, Form) and d.generation.members == ("a", "b")
    assert d.generation.lost == ("c",)  # it joins again at a later commit


def test_survivors_first_then_joiners_by_arrival_up_to_max_size():
    g = gen(2, "a", "b", "c", "d")
    waiting = [
        cand("a", 3, version=9), cand("c", 3, version=9), cand("d", 3, version=9),
        cand("j2", 3, since=100.0, first_since=40.0), cand("j1", 3, since=100.0, first_since=30.0),
    ]  # fmt: skip
    d = decide(view(g, waiting, {"a", "c", "d", "j1", "j2"}), POLICY)
    assert isinstance(d, Form)
    assert d.generation.members == ("a", "c", "d", "j1")  # j2 stays a spare
    assert d.generation.lost == ("b",) and d.generation.added == ("j1",)


def test_when_every_member_died_the_joiners_go_on_from_the_store():
    g = gen(2, "a", "b")
    waiting = [cand("j", 3, since=80.0)]
    d = decide(view(g, waiting, {"j"}, stored_version=6), MembershipPolicy(min_size=1))
    assert isinstance(d, Form)
    assert (d.generation.members, d.generation.source, d.generation.version) == (("j",), None, 6)
    d = decide(view(g, waiting, {"j"}), MembershipPolicy(min_size=1))
    assert isinstance(d, Form) and d.generation.version == -1  # nothing left: from scratch


def test_below_min_size_waits_for_joiners_then_fails():
    g = gen(2, "a", "b")
    waiting = [cand("a", 3, since=100.0, version=3)]
    assert isinstance(decide(view(g, waiting, {"a"}, now=105.0), POLICY), Wait)
    d = decide(view(g, [*waiting, cand("j", 3, since=106.0)], {"a", "j"}, now=106.1), POLICY)
    assert isinstance(d, Form) and d.generation.members == ("a", "j")
    d = decide(view(g, waiting, {"a"}, now=131.0), POLICY)
    assert isinstance(d, Fail) and "min_size=2" in d.reason


def test_a_newer_store_copy_wins_over_the_members():
    g = gen(1, "a", "b")
    waiting = [cand("a", 2, version=3), cand("b", 2, version=3)]
    d = decide(view(g, waiting, {"a", "b"}, stored_version=4), POLICY)
    assert isinstance(d, Form) and (d.generation.source, d.generation.version) == (None, 4)


def test_ended_stops_every_waiting_member():
    assert isinstance(decide(view(gen(1, "a", "b"), [cand("j", 2)], {"j"}, ended=True), POLICY),
                      Ended)  # fmt: skip


def test_wants_to_grow():
    g = gen(1, "a", "b")
    alive = {"a", "b", "j"}
    assert wants_to_grow(view(g, [cand("j", 2)], alive), POLICY)
    assert not wants_to_grow(view(g, [cand("j", 2)], {"a", "b"}), POLICY)  # the joiner died
    assert not wants_to_grow(view(g, [cand("j", 1)], alive), POLICY)  # a stale registration
    assert not wants_to_grow(view(g, [cand("a", 2)], alive), POLICY)  # a member, not a joiner
    assert not wants_to_grow(view(g, [cand("j", 2)], alive, ended=True), POLICY)
    full = gen(1, "a", "b", "c", "d")
    assert not wants_to_grow(view(full, [cand("j", 2)], set("abcdj")), POLICY)
    assert not wants_to_grow(view(None, [cand("j", 0)], alive), POLICY)


# ----------------------------------------------------------------- records and options


def test_records_round_trip():
    g = Generation(4, ("a", "c"), "a", 7, 12.5, lost=("b",), added=())
    assert Generation.from_json(g.to_json()) == g
    assert (g.cause, g.rank_of("c")) == ("failure", 1)
    assert Generation(5, ("a", "c", "j"), "a", 8, added=("j",)).cause == "grow"
    c = cand("a", 4, since=3.0, version=2, first_since=1.0, rank=1)
    assert Candidate.from_json(c.to_json()) == c


@pytest.mark.parametrize(
    ("kw", "match"),
    [({"min_size": 0}, "min_size"), ({"min_size": 3, "max_size": 2}, "max_size"),
     ({"settle_s": 0}, "settle_s"), ({"heartbeat_s": 2.0, "heartbeat_ttl_s": 1.0}, "longer")],
)  # fmt: skip
def test_policy_rejects_bad_knobs(kw, match):
    with pytest.raises(hetfaas.ConfigurationError, match=match):
        MembershipPolicy(**kw)


def test_group_spec_elastic_sizes():
    assert not GroupSpec("x").elastic
    assert GroupSpec("x", min_size=2, max_size=3).elastic
    assert GroupSpec("x", max_size=3).elastic
    with pytest.raises(hetfaas.ConfigurationError, match="max_size"):
        GroupSpec("x", min_size=3, max_size=2)
    with pytest.raises(hetfaas.ConfigurationError, match="min_size"):
        GroupSpec("x", min_size=0)
