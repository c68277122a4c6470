"""Elastic groups with real processes and servers: a member's worker is killed with SIGKILL
mid-training, the survivors re-form and finish from the last commit, and a member that joins
later receives the committed state and takes part in the steps after it. Over tcp:// (the
rendezvous server) and redis:// (a redis-server); the membership stores against each other."""

from __future__ import annotations

import os
import signal
import threading
import time
import uuid

import numpy as np
import pytest

import hetfaas
from hetfaas.collectives import GroupSpec
from hetfaas.collectives.elastic import ElasticCommunicator, GroupTooSmall
from hetfaas.collectives.elastic_group import ElasticGroup
from hetfaas.collectives.membership import MembershipPolicy
from hetfaas.collectives.membership_store import MemoryStore, open_store

STEPS, EVERY, PACE_S = 150, 5, 0.02  # the joiner is asked for at step 40: 2 s left


def counting_member(steps, every, pace_s, comm):
    """Each step adds allreduce(1) / size = 1 to every element, so the state after step i is
    i + 1 whoever computes it; each step's (state before it, size, allreduce) is recorded."""
    seen = {}

    def step(w, i):
        total = comm.allreduce(np.ones(3))
        seen[i] = (float(w[0]), comm.size, float(total[0]))
        time.sleep(pace_s)
        return w + total / comm.size

    final = comm.run(step, np.zeros(3), steps, commit_every=every)
    return {
        "member": comm.member,
        "pid": os.getpid(),
        "final": final,
        "seen": seen,
        "steps_run": comm.steps_run,
        "reformations": [r.as_dict() for r in comm.reformations],
    }


def pid_then_count(pid_dir, steps, every, pace_s, comm):
    """A map member: writes its pid once training is under way, for the test to kill."""
    from hetfaas.collectives import current

    assert current() is comm

    def step(w, i):
        if i == 20:  # written whole, then renamed: the test never reads half a pid
            path = os.path.join(pid_dir, f"{comm.rank}.pid")
            with open(path + ".tmp", "w") as f:
                f.write(str(os.getpid()))
            os.replace(path + ".tmp", path)
        total = comm.allreduce(np.ones(3))
        time.sleep(pace_s)
        return w + total / comm.size

    final = comm.run(step, np.zeros(3), steps, commit_every=every)
    return final, [r.as_dict() for r in comm.reformations]


# ----------------------------------------------------------------- the stores


@pytest.fixture(params=["memory", "tcp", "redis"])
def store_factory(request):
    group = f"st-{uuid.uuid4().hex[:8]}"
    if request.param == "memory":
        shared = MemoryStore()
        return lambda: shared
    uri = request.getfixturevalue(f"{request.param}_uri")
    return lambda: open_store(uri, group)


def test_membership_store_contract(store_factory):
    a, b = store_factory(), store_factory()
    assert a.get("t", "x") is None and a.entries("t") == {}
    a.put("t", "x", b"1")
    a.put("t", "y", b"\x00\xff")
    assert b.get("t", "x") == b"1" and b.entries("t") == {"x": b"1", "y": b"\x00\xff"}
    assert not b.cas("t", "x", b"0", b"2") and b.get("t", "x") == b"1"
    assert b.cas("t", "x", b"1", b"2") and a.get("t", "x") == b"2"
    assert a.cas("t", "new", None, b"3") and not b.cas("t", "new", None, b"4")
    a.put("t", "brief", b"5", ttl_s=0.3)
    assert b.get("t", "brief") == b"5"
    time.sleep(0.5)
    assert b.get("t", "brief") is None and "brief" not in b.entries("t")
    a.beat("m1", 0.3)
    assert b.alive() == {"m1"}
    time.sleep(0.5)
    assert b.alive() == set()  # the beat ran out
    a.put("meta", "ended", b"1")
    a.drop()
    assert b.entries("t") == {} and b.get("meta", "ended") == b"1"
    a.close()
    b.close()


@pytest.mark.parametrize("scheme", ["tcp", "redis"])
def test_a_beat_ends_when_its_connection_closes(scheme, request):
    uri = request.getfixturevalue(f"{scheme}_uri")
    group = f"st-{uuid.uuid4().hex[:8]}"
    beating, watching = open_store(uri, group), open_store(uri, group)
    beating.beat("m1", 60.0)
    assert watching.alive() == {"m1"}
    beating.close()  # what the kernel does for a killed process
    end = time.monotonic() + 2
    while watching.alive() and time.monotonic() < end:
        time.sleep(0.01)
    assert watching.alive() == set()  # long before the 60 s TTL
    watching.drop()
    watching.close()


# ----------------------------------------------------------------- kill and join, for real


def _kill_then_join(ex, uri):
    spec = GroupSpec("kill", channel=uri, timeout_s=20, min_size=1, max_size=2)
    with ElasticGroup(ex, counting_member, spec) as group:
        group.add(STEPS, EVERY, PACE_S, n=2)
        group.wait_for_step(20, timeout=60)
        time.sleep(PACE_S * 2.5)  # between two commits: steps are rolled back
        victim = group.members()[0]
        killed_at = time.time()
        os.kill(victim.pid, signal.SIGKILL)
        group.wait_for_step(40, timeout=60)
        group.add(STEPS, EVERY, PACE_S)
        out = group.results(timeout=90)
        generations = group.generations()
    return out, generations, victim, killed_at


@pytest.mark.parametrize("scheme", ["tcp", "redis"])
def test_a_killed_member_is_replaced_by_a_joiner_and_the_run_finishes(ex, scheme, request):
    uri = request.getfixturevalue(f"{scheme}_uri")
    out, generations, victim, killed_at = _kill_then_join(ex, uri)
    dead = [r for r in out if isinstance(r, hetfaas.WorkerDied)]
    assert len(dead) == 1 and dead[0].exitcode == -signal.SIGKILL, out  # a real worker, killed
    survivor, newcomer = (r for r in out if isinstance(r, dict))
    assert newcomer is out[2] and victim.pid not in (survivor["pid"], newcomer["pid"])
    for r in (survivor, newcomer):
        np.testing.assert_array_equal(r["final"], np.full(3, float(STEPS)))

    # the survivor: one failure (2 -> 1), rolled back to its last commit, never to zero
    fail = [f for f in survivor["reformations"] if f["cause"] == "failure"]
    assert len(fail) == 1 and (fail[0]["size_before"], fail[0]["size"]) == (2, 1), fail
    rolled, restored = fail[0]["rolled_back_steps"], fail[0]["version"] * EVERY
    assert 0 <= rolled < EVERY and restored >= 20
    assert survivor["steps_run"] == STEPS + rolled  # only the steps since the commit ran twice
    assert fail[0]["resumed_at"] > killed_at and fail[0]["duration_s"] < 10

    # the joiner: received the state committed at the step it started from ...
    join = newcomer["reformations"][0]
    assert join["joined"] and join["cause"] == "grow" and (join["size_before"], join["size"]) == (
        1, 2)  # fmt: skip
    first = min(newcomer["seen"])
    assert first % EVERY == 0 and first > 40
    assert newcomer["seen"][first][0] == float(first) == survivor["seen"][first][0]
    # ... and took part in every step after it: the survivor's allreduce counted two members
    assert newcomer["steps_run"] == STEPS - first
    assert all(survivor["seen"][i][1:] == (2, 2.0) for i in range(first, STEPS))
    assert all(survivor["seen"][i][1:] == (1, 1.0) for i in range(restored, first))
    assert [(g.number, g.cause, len(g.members)) for g in generations] == [
        (0, "start", 2), (1, "failure", 1), (2, "grow", 2),
    ]  # fmt: skip


def test_map_with_an_elastic_spec_survives_a_kill(ex, tcp_uri, tmp_path):
    spec = GroupSpec("map", channel=tcp_uri, timeout_s=20, min_size=1, max_size=2)
    futures = ex.map_futures(pid_then_count, [str(tmp_path)] * 2, [60] * 2, [EVERY] * 2,
                             [PACE_S] * 2, group=spec)  # fmt: skip
    pid_file = tmp_path / "1.pid"
    end = time.monotonic() + 60
    while not pid_file.exists() and time.monotonic() < end:
        time.sleep(0.01)
    time.sleep(0.05)
    os.kill(int(pid_file.read_text()), signal.SIGKILL)
    outcomes = []
    for f in futures:
        try:
            outcomes.append(f.result(60))
        except hetfaas.WorkerDied as exc:
            outcomes.append(exc)
    assert sum(isinstance(o, hetfaas.WorkerDied) for o in outcomes) == 1
    final, reformations = next(o for o in outcomes if not isinstance(o, BaseException))
    np.testing.assert_array_equal(final, np.full(3, 60.0))
    assert [(r["cause"], r["size"]) for r in reformations] == [("start", 2), ("failure", 1)]


def test_below_min_size_the_survivor_stops_with_group_too_small(ex, redis_uri, tmp_path):
    spec = GroupSpec("small", channel=redis_uri, timeout_s=1.5, min_size=2, max_size=2)
    futures = ex.map_futures(pid_then_count, [str(tmp_path)] * 2, [400] * 2, [EVERY] * 2,
                             [PACE_S] * 2, group=spec)  # fmt: skip
    pid_file = tmp_path / "1.pid"
    end = time.monotonic() + 60
    while not pid_file.exists() and time.monotonic() < end:
        time.sleep(0.01)
    t0 = time.monotonic()
    os.kill(int(pid_file.read_text()), signal.SIGKILL)
    errors = sorted((f.exception(60) for f in futures), key=lambda e: type(e).__name__)
    assert isinstance(errors[0], GroupTooSmall) and "min_size=2" in str(errors[0]), errors
    assert isinstance(errors[1], hetfaas.WorkerDied), errors
    assert 1.0 < time.monotonic() - t0 < 30  # it waited form_timeout_s (= timeout_s) for one


# ----------------------------------------------------------------- in one process


def test_a_run_whose_members_all_died_resumes_from_the_store(tcp_uri):
    group = f"st-{uuid.uuid4().hex[:8]}"
    policy = MembershipPolicy(min_size=1, settle_s=0.2)
    first = ElasticCommunicator(group, tcp_uri, policy, store_commits=True)

    class Crash(Exception):
        pass

    def crash_at_12(w, i):
        if i == 12:
            raise Crash
        return w + first.allreduce(1)

    with pytest.raises(Crash):
        first.run(crash_at_12, 0, 30, commit_every=5)
    first.close()  # its connections close as a killed process's would; no finish()
    with ElasticCommunicator(group, tcp_uri, policy, store_commits=True) as second:
        starts = []

        def step(w, i):
            starts.append((i, w))
            return w + second.allreduce(1)

        assert second.run(step, 0, 30, commit_every=5) == 30
    assert starts[0] == (10, 10)  # the last commit before the crash, not zero
    assert second.reformations[0].joined and second.reformations[0].lost == 1


def test_threads_grow_a_group_and_ranks_follow(tcp_uri):
    group = f"th-{uuid.uuid4().hex[:8]}"
    out, errors = {}, []

    def member(i):
        try:
            with ElasticCommunicator(group, tcp_uri, MembershipPolicy(min_size=2), expected=2,
                                     timeout_s=10) as comm:  # fmt: skip
                ranks = []

                def step(w, k):
                    ranks.append((k, comm.rank, comm.size))
                    time.sleep(0.01)
                    return w + comm.allreduce(1) // comm.size

                out[i] = (comm.run(step, 0, 40, commit_every=4), ranks)
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=member, args=(i,)) for i in range(2)]
    for t in threads:
        t.start()
    time.sleep(0.2)
    threads.append(threading.Thread(target=member, args=(2,)))
    threads[-1].start()
    for t in threads:
        t.join(60)
    assert not errors, errors
    assert all(final == 40 for final, _ in out.values())
    late = out[2][1]
    assert late[0][0] > 0 and late[0][0] % 4 == 0 and late[0][1:] == (2, 3)
    assert {r for _, r, s in out[0][1] if s == 2} | {r for _, r, s in out[1][1] if s == 2} == {0, 1}


def test_bad_elastic_configurations(ex, file_uri, tcp_uri):
    with pytest.raises(hetfaas.ConfigurationError, match="scheme redis or tcp"):
        ElasticGroup(ex, counting_member, GroupSpec("x", channel=file_uri, min_size=1))
    with pytest.raises(hetfaas.ConfigurationError, match="scheme redis or tcp"):
        ex.map(counting_member, [1, 2], group=GroupSpec("x", min_size=1))
    with pytest.raises(hetfaas.ConfigurationError, match="never reach min_size=3"):
        ex.map(counting_member, [1, 2], group=GroupSpec("x", channel=tcp_uri, min_size=3))
    with pytest.raises(hetfaas.ConfigurationError, match="over max_size=1"):
        ex.map(counting_member, [1, 2], group=GroupSpec("x", channel=tcp_uri, max_size=1))
    comm = ElasticCommunicator(f"x-{uuid.uuid4().hex[:6]}", tcp_uri)
    with pytest.raises(hetfaas.CollectiveError, match=r"begin\(state\)"):
        comm.allreduce(1)
    comm.close()
