"""``ex.map(fn, items, group=...)``: calls in real worker processes, one communicator each."""

from __future__ import annotations

import numpy as np
import pytest

import hetfaas
from hetfaas.collectives import GroupSpec

from . import group_funcs as gf


def test_map_group_allreduce_across_worker_processes(ex, file_uri):
    spec = GroupSpec("sum", channel=file_uri, timeout_s=20)
    out = list(ex.map(gf.allreduce_with_comm, [1, 2], group=spec))
    assert [(r, s) for r, s, _, _ in out] == [(0, 2), (1, 2)]
    assert out[0][2] != out[1][2]  # two processes
    for *_, total in out:
        np.testing.assert_array_equal(total, np.full(3, 3.0))


def test_map_group_by_name_and_current(ex):
    assert list(ex.map(gf.allgather_via_current, "ab", group="names")) == [
        [(0, "a"), (1, "b")],
        [(0, "a"), (1, "b")],
    ]
    # the same name again is a new group
    again = list(ex.map(gf.allgather_via_current, "cd", group="names"))
    assert again[0] == [(0, "c"), (1, "d")]


def test_group_larger_than_the_executor_fails_at_submit(ex):
    n = ex.capacity.cpus + 1
    with pytest.raises(hetfaas.ResourceError, match=f"group of {n} calls must run at the same"):
        ex.map(gf.allgather_via_current, range(n), group="big")


def test_a_failing_rank_ends_its_peers_with_peer_timeout(ex):
    futures = ex.map_futures(gf.fail_on_rank_one, [1, 2], group=GroupSpec("fail", timeout_s=1.0))
    with pytest.raises(ValueError, match="rank 1 gives up"):
        futures[1].result(30)
    with pytest.raises(hetfaas.PeerTimeout):
        futures[0].result(30)


def test_current_outside_a_group_is_a_clear_error(ex):
    with pytest.raises(hetfaas.CollectiveError, match=r"ex.map\(fn, items, group=...\)"):
        ex.submit(gf.no_group, 1).result(30)


def test_bad_group_argument(ex):
    with pytest.raises(hetfaas.ConfigurationError, match="group must be"):
        ex.map(gf.no_group, [1], group=3)


def test_map_group_over_direct_tcp(ex, rendezvous):
    spec = GroupSpec("tcp", channel=rendezvous.uri, timeout_s=20)
    out = list(ex.map(gf.allreduce_with_comm, [3, 4], group=spec))
    for *_, total in out:
        np.testing.assert_array_equal(total, np.full(3, 7.0))


def test_map_group_on_another_backend_unchanged(tmp_path):
    with hetfaas.Executor("submitit-local", folder=str(tmp_path / "jobs")) as sub:
        out = list(sub.map(gf.allgather_via_current, "xy", group=GroupSpec("sub", timeout_s=30)))
    assert out == [[(0, "x"), (1, "y")]] * 2


@pytest.mark.parametrize("hint", ["fast", "cheap"])
def test_map_group_over_several_channels_with_a_hint(ex, file_uri, rendezvous, hint):
    spec = GroupSpec("choice", channel=[file_uri, rendezvous.uri], timeout_s=20, hint=hint)
    assert spec.channel == (file_uri, rendezvous.uri)  # kept as a tuple: the spec is frozen
    out = list(ex.map(gf.allreduce_with_comm, [1, 2], group=spec))
    for *_, total in out:
        np.testing.assert_array_equal(total, np.full(3, 3.0))


def test_group_spec_rejects_bad_channels_and_hints():
    with pytest.raises(hetfaas.ConfigurationError, match="list of URIs"):
        GroupSpec("x", channel=[])
    with pytest.raises(hetfaas.ConfigurationError, match="list of URIs"):
        GroupSpec("x", channel=["file:///tmp/a", 3])
    with pytest.raises(hetfaas.ConfigurationError, match="'fast' or 'cheap'"):
        GroupSpec("x", hint="quick")
