"""One contract, every channel: each collective for P in {1, 2, 3, 4, 7} with ints, floats,
lists, numpy arrays, torch tensors and custom ops (non-commutative ones in rank order)."""

from __future__ import annotations

import numpy as np
import pytest

from hetfaas.collectives import MAX, MIN, PROD, SUM, ReduceOp

from .conftest import run_ranks

torch = pytest.importorskip("torch")

SIZES = [1, 2, 3, 4, 7]
concat = ReduceOp(lambda a, b: a + b, name="concat")  # strings: order shows


def every_collective(comm):
    r, p = comm.rank, comm.size
    out = {}
    # point to point around a ring, two tags, two messages each
    comm.send(("hello", r), (r + 1) % p, tag=1)
    comm.send(("again", r), (r + 1) % p, tag=1)
    comm.send(r * 10, (r + 1) % p, tag=2)
    prev = (r - 1) % p
    out["p2p"] = (comm.recv(prev, tag=2), comm.recv(prev, 1), comm.recv(prev, 1))
    out["bcast0"] = comm.bcast({"x": [1, 2]} if r == 0 else None)
    out["bcast_last"] = comm.bcast(np.arange(5) * 2 if r == p - 1 else None, root=p - 1)
    comm.barrier()
    out["reduce"] = comm.reduce(np.full(3, r, dtype=np.int64), root=p - 1)
    out["reduce_concat"] = comm.reduce(str(r), op=concat, root=p // 2)
    out["ar_int"] = comm.allreduce(r + 1)
    out["ar_float"] = comm.allreduce(0.5 * r, op=MAX)
    out["ar_list"] = comm.allreduce([r, 1, [r, 2]])
    out["ar_np"] = comm.allreduce(np.arange(4, dtype=np.float64) + r, op=MIN)
    out["ar_torch"] = comm.allreduce(torch.full((2, 3), float(r + 1)), op=PROD)
    out["ar_concat"] = comm.allreduce(str(r), op=concat)
    out["ar_callable"] = comm.allreduce([r], op=lambda a, b: a + b)  # a bare callable: in order
    out["gather"] = comm.gather((r, "x" * r), root=p - 1)
    out["scatter"] = comm.scatter([i * i for i in range(p)] if r == p // 2 else None, root=p // 2)
    out["allgather"] = comm.allgather(torch.tensor([r]))
    out["scan"] = comm.scan(r + 1)
    out["scan_concat"] = comm.scan(str(r), op=concat)
    out["scan_np"] = comm.scan(np.ones(2) * r, op=SUM)
    return out


@pytest.mark.parametrize("size", SIZES)
def test_every_collective(channel_uri, size):
    results = run_ranks(channel_uri, size, every_collective)
    p = size
    order = "".join(str(i) for i in range(p))
    for r, out in enumerate(results):
        prev = (r - 1) % p
        assert out["p2p"] == (prev * 10, ("hello", prev), ("again", prev))
        assert out["bcast0"] == {"x": [1, 2]}
        np.testing.assert_array_equal(out["bcast_last"], np.arange(5) * 2)
        if r == p - 1:
            np.testing.assert_array_equal(out["reduce"], np.full(3, p * (p - 1) // 2))
        else:
            assert out["reduce"] is None
        assert out["reduce_concat"] == (order if r == p // 2 else None)
        assert out["ar_int"] == p * (p + 1) // 2
        assert out["ar_float"] == 0.5 * (p - 1)
        assert out["ar_list"] == [p * (p - 1) // 2, p, [p * (p - 1) // 2, 2 * p]]
        np.testing.assert_array_equal(out["ar_np"], np.arange(4, dtype=np.float64))
        assert torch.equal(out["ar_torch"], torch.full((2, 3), float(np.prod(range(1, p + 1)))))
        assert out["ar_concat"] == order
        assert out["ar_callable"] == list(range(p))
        assert out["gather"] == ([(i, "x" * i) for i in range(p)] if r == p - 1 else None)
        assert out["scatter"] == r * r
        assert [int(t) for t in out["allgather"]] == list(range(p))
        assert out["scan"] == (r + 1) * (r + 2) // 2
        assert out["scan_concat"] == order[: r + 1]
        np.testing.assert_array_equal(out["scan_np"], np.ones(2) * r * (r + 1) / 2)


def test_received_arrays_are_writable_views(channel_uri):
    def body(comm):
        a = comm.bcast(np.arange(100_000, dtype=np.float32) if comm.rank == 0 else None)
        t = comm.bcast(torch.arange(10, dtype=torch.int32) if comm.rank == 0 else None)
        a[0] = 7
        t[0] = 7
        return a, t

    for a, t in run_ranks(channel_uri, 2, body):
        assert a[0] == 7 and a[-1] == 99_999 and a.dtype == np.float32
        assert t.dtype == torch.int32 and int(t[0]) == 7 and int(t[-1]) == 9


@pytest.mark.parametrize("size", [2, 3, 4])
def test_large_allreduce_takes_the_ring_on_direct_links(channel_uri, size):
    def body(comm):
        small = comm.allreduce(np.arange(10, dtype=np.float64) * (comm.rank + 1))  # ring too
        big = comm.allreduce(np.ones((300, 1000)) * comm.rank, op=MAX)  # 2.4 MB
        t = comm.allreduce(torch.arange(7, dtype=torch.int64) + comm.rank)
        tiny = comm.allreduce(np.arange(2.0))  # fewer elements than ranks: empty chunks
        return small, big, t, tiny

    def ring_always(comm):
        comm.ring_min_bytes = 0

    p = size
    for small, big, t, tiny in run_ranks(channel_uri, p, body, setup=ring_always):
        np.testing.assert_array_equal(tiny, np.arange(2.0) * p)
        np.testing.assert_array_equal(small, np.arange(10) * p * (p + 1) / 2)
        assert big.shape == (300, 1000) and (big == p - 1).all()
        assert torch.equal(t, torch.arange(7) * p + p * (p - 1) // 2)
