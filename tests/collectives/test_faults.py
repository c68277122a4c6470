"""Faults on every channel: missing peers, mismatched groups, payloads over the limit, servers
that are down, closed sockets; and a group leaves no keys or objects behind."""

from __future__ import annotations

import os
import subprocess
import threading
import time
import uuid

import numpy as np
import pytest

from hetfaas import (
    ChannelClosed,
    ChannelUnavailable,
    CollectiveError,
    ConfigurationError,
    GroupMismatch,
    PayloadTooLarge,
    PeerTimeout,
)
from hetfaas.collectives import Communicator, open_channel

from .conftest import free_port, run_ranks


def run_some(uri, size, ranks, body, timeout_s=1.0, sizes=None, group=None):
    """Start only ``ranks`` of a group (each with its own ``sizes[rank]``); their exceptions
    (or results) by rank."""
    group = group or f"g-{uuid.uuid4().hex[:12]}"
    out: dict = {}

    def main(rank):
        try:
            n = sizes[rank] if sizes else size
            with Communicator(rank, n, group, channel=uri, timeout_s=timeout_s) as comm:
                out[rank] = body(comm)
        except BaseException as exc:
            out[rank] = exc

    threads = [threading.Thread(target=main, args=(r,), daemon=True) for r in ranks]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout_s * 6 + 10)
    assert not any(t.is_alive() for t in threads), "a rank hung past its deadline"
    return out


def test_a_peer_that_never_arrives_is_named(channel_uri):
    out = run_some(channel_uri, 3, [0, 2], lambda c: c.allreduce(np.ones(2)))
    for rank in (0, 2):
        assert isinstance(out[rank], PeerTimeout), out[rank]
        assert out[rank].missing == [1]
        assert "missing ranks: 1" in str(out[rank])


def test_mismatched_sizes_raise_group_mismatch(channel_uri):
    out = run_some(channel_uri, 2, [0, 1], lambda c: c.allgather(c.rank), sizes={0: 2, 1: 3})
    assert all(isinstance(e, CollectiveError) for e in out.values()), out
    assert any(isinstance(e, GroupMismatch) for e in out.values()), out


def test_mismatched_operations_raise_group_mismatch(channel_uri):
    def body(comm):
        return comm.bcast("x") if comm.rank == 0 else comm.allgather(comm.rank)

    out = run_some(channel_uri, 2, [0, 1], body)
    assert isinstance(out[1], GroupMismatch), out
    assert "bcast" in str(out[1]) and "allgather" in str(out[1])


def test_payload_over_the_limit(channel_uri):
    def body(comm):
        comm.channel.limits = 10_000
        with pytest.raises(PayloadTooLarge, match=r"over the \w+ channel.s limit of 10000 bytes"):
            comm.send(np.zeros(20_000, dtype=np.uint8), (comm.rank + 1) % comm.size)
        return comm.allreduce(1)  # the group still works

    assert run_ranks(channel_uri, 2, body) == [2, 2]


def test_channel_limits():
    assert open_channel("redis://127.0.0.1:1/0").limits == 512 * 1024**2
    assert open_channel("s3://b?endpoint=http://127.0.0.1:1").limits == 5 * 1024**3


@pytest.mark.parametrize(
    "uri",
    ["redis://127.0.0.1:{port}/0", "s3://bucket?endpoint=http://127.0.0.1:{port}",
     "tcp://127.0.0.1:{port}"],
    ids=["redis", "s3", "tcp"],
)  # fmt: skip
def test_server_down_is_channel_unavailable(uri, monkeypatch):
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "x")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "y")
    port = free_port()
    with pytest.raises(ChannelUnavailable, match=f"127.0.0.1:{port}"):
        Communicator(0, 2, "down", channel=uri.format(port=port), timeout_s=2)


def test_redis_going_away_mid_group_is_channel_unavailable(tmp_path):
    port = free_port()
    proc = subprocess.Popen(
        ["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--save", "",
         "--dir", str(tmp_path)], stdout=subprocess.DEVNULL,
    )  # fmt: skip
    try:
        for _ in range(100):
            try:
                comm = Communicator(0, 1, "going", f"redis://127.0.0.1:{port}/0", timeout_s=2)
                break
            except ChannelUnavailable:
                time.sleep(0.05)
        assert comm.allreduce(5) == 5
        proc.terminate()
        proc.wait(10)
        with pytest.raises(ChannelUnavailable, match=f"127.0.0.1:{port}"):
            comm.send(1, 0)
        comm.close()  # closing after the server left does not raise
    finally:
        proc.kill()
        proc.wait()


def test_closed_socket_is_channel_closed(tcp_uri):
    def body(comm):
        if comm.rank == 1:
            return None  # leaves (closes its sockets) at once
        with pytest.raises(ChannelClosed, match="rank 1 closed"):
            comm.recv(1)
        return "ok"

    assert run_ranks(tcp_uri, 2, body, timeout_s=5) == ["ok", None]


def test_rendezvous_refuses_a_rank_taken_twice(tcp_uri):
    group = f"g-{uuid.uuid4().hex[:8]}"
    out = run_some(tcp_uri, 3, [0, 1], lambda c: c.rank, group=group)  # rank 2 never comes
    assert all(isinstance(e, PeerTimeout) and e.missing == [2] for e in out.values()), out
    errors = []

    def twice():
        try:
            Communicator(1, 2, group + "b", tcp_uri, timeout_s=1)
        except CollectiveError as exc:
            errors.append(exc)

    threads = [threading.Thread(target=twice) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(10)
    assert any(isinstance(e, GroupMismatch) and "twice" in str(e) for e in errors), errors


def _leftovers(uri, group):
    if uri.startswith("file://"):
        return os.listdir(uri[len("file://") :]) if os.path.isdir(uri[len("file://") :]) else []
    if uri.startswith("redis://"):
        import redis

        return list(redis.Redis.from_url(uri).scan_iter(match=f"hetfaas:{group}:*"))
    if uri.startswith("s3://"):
        ch = open_channel(uri)
        ch.connect("probe", 0, 1, time.monotonic() + 5)
        keys = ch._list(f"hetfaas/{group}/")
        ch.close()
        return keys
    return []


def test_cleanup_leaves_no_keys_or_objects(channel_uri):
    group = f"clean-{uuid.uuid4().hex[:8]}"

    def body(comm):
        comm.send(np.arange(3), (comm.rank + 1) % comm.size)
        comm.recv((comm.rank - 1) % comm.size)
        return comm.bcast("x"), comm.allreduce(comm.rank), comm.scan(1), comm.allgather(1)

    run_ranks(channel_uri, 3, body, group=group)
    assert _leftovers(channel_uri, group) == []


def test_bad_inputs_are_configuration_errors(file_uri):
    with pytest.raises(ConfigurationError, match="known schemes: file, mpi, redis, s3, tcp"):
        Communicator(0, 1, "g", channel="gopher://x")
    with pytest.raises(ConfigurationError, match="rank must be"):
        Communicator(2, 2, "g", channel=file_uri)
    with pytest.raises(ConfigurationError, match="group must be"):
        Communicator(0, 1, "a/b", channel=file_uri)
    with Communicator(0, 1, "g", channel=file_uri) as comm:
        with pytest.raises(ConfigurationError, match="root must be"):
            comm.bcast(1, root=1)
        with pytest.raises(ConfigurationError, match="needs a list of 1 objects"):
            comm.scatter([1, 2])
        with pytest.raises(ConfigurationError, match="unknown reduction"):
            comm.allreduce(1, op="mean")
        with pytest.raises(ConfigurationError, match="tag"):
            comm.send(1, 0, tag=-1)
    with pytest.raises(CollectiveError, match="closed"):
        comm.allreduce(1)


def test_file_messages_are_removed_once_read_by_all(file_uri):
    def body(comm):
        for i in range(10):
            comm.allreduce(i)
            comm.bcast(i)
        comm.gather(None)  # at root: every rank is past the loop, so has read everything
        if comm.rank == 0:
            return sorted(n for n in os.listdir(comm.channel.dir) if n.startswith("c"))
        return None

    assert run_ranks(file_uri, 3, body)[0] == []
